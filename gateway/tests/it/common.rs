//! Test harness: real trackers, storage nodes and gateways in-process on 127.0.0.1:0 (servers, polling and
//! error helpers from `fdfs-testkit`).

#![allow(dead_code, unused_imports)]

pub use fdfs_testkit::{client, closed_addr, error_of, eventually, Server};

pub async fn tracker(config: fdfs_tracker::Config) -> Server {
    Server::start(|l, stop| fdfs_tracker::run(l, config, stop)).await
}

pub async fn gateway(config: fdfs_gateway::Config) -> Server {
    Server::start(|l, stop| fdfs_gateway::run(l, config, stop)).await
}

pub async fn storage(config: fdfs_storage::Config) -> Server {
    Server::start(|l, stop| fdfs_storage::run(l, config, stop)).await
}

/// Tracker + storage members + gateway, all in this process.
pub struct Cluster {
    pub gateway: Server,
    pub storages: Vec<Server>,
    pub tracker: Server,
    pub dirs: Vec<tempfile::TempDir>,
}

/// Settings of the test cluster; the closures adjust each server's config.
pub struct Setup {
    pub members: usize,
    pub gateway: Box<dyn FnOnce(&mut fdfs_gateway::Config)>,
    pub storage: Box<dyn Fn(&mut fdfs_storage::Config)>,
    pub tracker: Box<dyn FnOnce(&mut fdfs_tracker::Config)>,
    /// Put a closed tracker address first in the gateway's list.
    pub dead_tracker_first: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            members: 1,
            gateway: Box::new(|_| {}),
            storage: Box::new(|_| {}),
            tracker: Box::new(|_| {}),
            dead_tracker_first: false,
        }
    }
}

pub async fn cluster(setup: Setup) -> Cluster {
    let mut tc = fdfs_tracker::Config {
        // Test disks may be nearly full; keep no space in reserve.
        reserved_storage_space: fdfs_common::config::Size::Bytes(0),
        // The members beat every 200 ms: a short warm-up (one timeout) after the tracker starts.
        heartbeat_timeout_ms: 1000,
        ..fdfs_tracker::Config::default()
    };
    (setup.tracker)(&mut tc);
    let tracker = tracker(tc).await;
    let mut dirs = Vec::new();
    let mut storages = Vec::new();
    for _ in 0..setup.members {
        let dir = tempfile::tempdir().unwrap();
        let mut c = fdfs_storage::Config {
            group: "group1".parse().unwrap(),
            trackers: vec![tracker.addr.to_string()],
            store_paths: vec![dir.path().to_owned()],
            heartbeat_interval_ms: 200,
            write_quorum: 1,
            ..fdfs_storage::Config::default()
        };
        (setup.storage)(&mut c);
        storages.push(storage(c).await);
        dirs.push(dir);
    }
    let mut trackers = vec![tracker.addr.to_string()];
    if setup.dead_tracker_first {
        trackers.insert(0, closed_addr());
    }
    let mut gc = fdfs_gateway::Config {
        trackers,
        ..fdfs_gateway::Config::default()
    };
    (setup.gateway)(&mut gc);
    let gateway = gateway(gc).await;
    let c = client();
    let want = setup.members;
    let url = gateway.url("/cluster");
    let tracker_health = format!("{}/health", tracker.base());
    eventually(
        20,
        "storage members active, the tracker past its warm-up",
        || {
            let c = c.clone();
            let url = url.clone();
            let tracker_health = tracker_health.clone();
            async move {
                let ready = c.get(&tracker_health).send().await.ok()?;
                if ready.status() != 200 {
                    return None;
                }
                let v: serde_json::Value = c.get(&url).send().await.ok()?.json().await.ok()?;
                let active = v["groups"]
                    .as_array()?
                    .iter()
                    .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
                    .filter(|m| m["state"] == "active")
                    .count();
                (active >= want).then_some(())
            }
        },
    )
    .await;
    Cluster {
        gateway,
        storages,
        tracker,
        dirs,
    }
}
