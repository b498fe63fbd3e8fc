//! The gateway tests' harness: a gateway in front of given trackers ([`gateway_for`]), and a small cluster of a
//! real tracker, storage nodes and a gateway, all in this process on 127.0.0.1:0 ([`fdfs_testkit::inproc`]),
//! with the requests the tests make of its gateway ([`Cluster`]).

use fdfs_testkit::inproc::{gateway, storage, tracker};
use fdfs_testkit::{client, closed_addr, eventually, redirected, RequestExt, Server};
use serde_json::Value;

/// A gateway in front of `trackers` (nobody need listen there), with `adjust` applied to its config.
pub async fn gateway_for(
    trackers: Vec<String>,
    adjust: impl FnOnce(&mut fdfs_gateway::Config),
) -> Server {
    let mut config = fdfs_gateway::Config {
        trackers,
        ..fdfs_gateway::Config::default()
    };
    adjust(&mut config);
    gateway(config).await
}

/// `GET <gateway><path>`, which must answer 200 with an HTML page; its text.
pub async fn html(gw: &Server, path: &str) -> String {
    let page = client().get(gw.url(path)).go().await;
    assert_eq!(page.status(), 200, "{path}");
    let ct = page.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{path}: {ct}");
    page.text().await.unwrap()
}

/// Tracker + storage members + gateway, all in this process.
pub struct Cluster {
    pub gateway: Server,
    pub storages: Vec<Server>,
    pub tracker: Server,
    pub dirs: Vec<tempfile::TempDir>,
    /// Does not follow redirects.
    pub http: reqwest::Client,
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

impl Setup {
    /// The default setup with the gateway's config adjusted.
    pub fn gateway(adjust: impl FnOnce(&mut fdfs_gateway::Config) + 'static) -> Setup {
        Setup {
            gateway: Box::new(adjust),
            ..Setup::default()
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
    let gateway = gateway_for(trackers, setup.gateway).await;
    let c = Cluster {
        gateway,
        storages,
        tracker,
        dirs,
        http: client(),
    };
    let want = setup.members;
    let tracker_health = format!("{}/health", c.tracker.base());
    eventually(
        20,
        "storage members active, the tracker past its warm-up",
        || async {
            let ready = c.http.get(&tracker_health).send().await.ok()?;
            if ready.status() != 200 {
                return None;
            }
            let v: Value = c.get("/cluster").send().await.ok()?.json().await.ok()?;
            let active = v["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
                .filter(|m| m["state"] == "active")
                .count();
            (active >= want).then_some(())
        },
    )
    .await;
    c
}

impl Cluster {
    /// `GET <gateway><path>`.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.gateway.url(path))
    }

    /// `PUT <gateway>/upload/<name>` (a query may follow the name), asserting 200; the JSON answer.
    pub async fn upload(&self, name: &str, body: impl Into<reqwest::Body>) -> Value {
        self.http
            .put(self.gateway.url(&format!("/upload/{name}")))
            .body(body)
            .ok_json()
            .await
    }

    /// `POST <gateway>/upload` with a multipart form.
    pub async fn post_form(&self, form: reqwest::multipart::Form) -> reqwest::Response {
        self.http
            .post(self.gateway.url("/upload"))
            .multipart(form)
            .go()
            .await
    }

    /// The gateway's redirect for `id`, and the bytes there: (location, bytes).
    pub async fn download(&self, id: &str) -> (String, Vec<u8>) {
        redirected(&self.http, &self.gateway.url(&format!("/{id}"))).await
    }

    /// `GET <gateway>/<path>` answered with 200 and JSON (`/info/{id}`, `/meta/{id}`, `/cluster`).
    pub async fn json(&self, path: &str) -> Value {
        self.get(path).ok_json().await
    }
}

/// The `file_id` of an upload answer.
pub fn file_id(up: &Value) -> String {
    up["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no file_id in {up}"))
        .to_owned()
}
