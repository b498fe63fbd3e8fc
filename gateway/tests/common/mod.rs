//! Test harness: real trackers, storage nodes and gateways in-process on 127.0.0.1:0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A server running in this process; stopped (gracefully) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn bind() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn stopper() -> (
    oneshot::Sender<()>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

pub async fn tracker(config: fdfs_tracker::Config) -> Server {
    let (listener, addr) = bind().await;
    let (tx, shutdown) = stopper();
    tokio::spawn(async move {
        if let Err(e) = fdfs_tracker::run(listener, config, shutdown).await {
            panic!("tracker failed: {e:#}");
        }
    });
    Server {
        addr,
        stop: Some(tx),
    }
}

pub async fn gateway(config: fdfs_gateway::Config) -> Server {
    let (listener, addr) = bind().await;
    let (tx, shutdown) = stopper();
    tokio::spawn(async move {
        if let Err(e) = fdfs_gateway::run(listener, config, shutdown).await {
            panic!("gateway failed: {e:#}");
        }
    });
    Server {
        addr,
        stop: Some(tx),
    }
}

/// An address where nothing listens.
pub fn closed_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Poll `check` until it returns `Some`, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `error.code` of a JSON error answer, with its status.
pub async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.expect("JSON error body");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

pub async fn storage(config: fdfs_storage::Config) -> Server {
    let (listener, addr) = bind().await;
    let (tx, shutdown) = stopper();
    tokio::spawn(async move {
        if let Err(e) = fdfs_storage::run(listener, config, shutdown).await {
            panic!("storage failed: {e:#}");
        }
    });
    Server {
        addr,
        stop: Some(tx),
    }
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
    eventually(20, "storage members active", || {
        let c = c.clone();
        let url = url.clone();
        async move {
            let v: serde_json::Value = c.get(&url).send().await.ok()?.json().await.ok()?;
            let active = v["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
                .filter(|m| m["state"] == "active")
                .count();
            (active >= want).then_some(())
        }
    })
    .await;
    Cluster {
        gateway,
        storages,
        tracker,
        dirs,
    }
}
