//! The real tracker on 127.0.0.1:0, driven over HTTP with the wire protocol storage nodes and gateways use.

use std::time::{Duration, Instant};

use fdfs_common::wire::{
    Assignment, ClusterView, Heartbeat, HeartbeatReply, Locations, MemberState, PeerSync,
    StorePathStat, CLUSTER_SECRET_HEADER,
};
use fdfs_common::{FileName, NameInfo};
use fdfs_testkit::{eventually, metrics, RequestExt, Server};
use fdfs_tracker::{Config, StoreLookup};
use reqwest::{Client, StatusCode};

const GB: u64 = 1 << 30;

struct Tracker {
    base: String,
    client: Client,
    server: Server,
}

impl Tracker {
    async fn start(config: Config) -> Tracker {
        let server = fdfs_testkit::inproc::tracker(config).await;
        Tracker {
            base: server.base(),
            client: Client::new(),
            server,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    async fn beat(&self, hb: &Heartbeat) -> HeartbeatReply {
        let r = self.client.post(format!("{}/v1/heartbeat", self.base));
        r.json(hb).ok_json().await
    }

    /// `GET path`, answered with 200 and JSON.
    async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.get(path).ok_json().await
    }

    async fn cluster(&self) -> ClusterView {
        self.json("/cluster").await
    }

    /// The status and `error.code` of `GET path`'s JSON error.
    async fn error(&self, path: &str) -> (StatusCode, String) {
        error_code(self.get(path).go().await).await
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn hb(group: &str, node_id: u32, free: u64) -> Heartbeat {
    Heartbeat {
        node_id,
        group: group.parse().unwrap(),
        addr: format!("127.0.0.1:{}", 30000 + node_id),
        public_url: format!("http://127.0.0.1:{}", 30000 + node_id),
        syncing: false,
        store_paths: vec![StorePathStat {
            index: 0,
            total_bytes: 100 * GB,
            free_bytes: free,
            failed: None,
        }],
        sync: Vec::new(),
        file_count: 0,
        version: fdfs_common::VERSION.into(),
        fastdfs_port: None,
        instance: u64::from(node_id),
    }
}

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let (status, code) = fdfs_testkit::error_of(r).await;
    (StatusCode::from_u16(status).unwrap(), code)
}

fn file_id(group: &str, source_id: u32, created: u32) -> String {
    let info = NameInfo {
        source_id,
        created,
        size: 3,
        crc32: 1,
    };
    let name = FileName::generate(&info, Some("txt")).unwrap();
    format!("{group}/M00/00/00/{}", name.as_str())
}

#[tokio::test]
async fn assigns_round_robin_and_locates_holders_first() {
    let t = Tracker::start(Config {
        heartbeat_timeout_ms: 3000,
        ..Config::default()
    })
    .await;
    // Just started: "no storage" may only mean no member has beaten here yet; gateways ask another tracker.
    let r = t.get("/v1/assign?size=1").send().await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        t.error("/v1/assign?size=1").await,
        (StatusCode::SERVICE_UNAVAILABLE, "tracker_warming_up".into())
    );
    fdfs_testkit::eventually(20, "the warm-up over", || async {
        let r = t.get("/health").send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        t.error("/v1/assign?size=1").await,
        (StatusCode::SERVICE_UNAVAILABLE, "no_storage".into())
    );

    let mut source = hb("g1", 1, 50 * GB);
    source.sync = vec![PeerSync {
        peer_id: 2,
        pending_records: 0,
        synced_until: 2_000,
    }];
    assert!(t.beat(&source).await.peers.is_empty());
    let peers = t.beat(&hb("g1", 2, 50 * GB)).await.peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node_id, 1);
    t.beat(&hb("g2", 3, 50 * GB)).await;
    t.beat(&hb("g1", 4, 50 * GB)).await;

    let mut seen = Vec::new();
    for _ in 0..6 {
        let a: Assignment = t.json("/v1/assign?size=1024").await;
        seen.push((a.group.to_string(), a.node_id));
    }
    let g1: Vec<u32> = seen.iter().filter(|s| s.0 == "g1").map(|s| s.1).collect();
    assert_eq!(seen.iter().filter(|s| s.0 == "g2").count(), 3, "{seen:?}");
    assert_eq!(g1, [1, 2, 4], "{seen:?}");

    // A batch is the next N single assignments: the same round robin over groups and members.
    let batch: Vec<Assignment> = t.json("/v1/assign/batch?count=6&size=1024").await;
    let batched: Vec<(String, u32)> = batch
        .iter()
        .map(|a| (a.group.to_string(), a.node_id))
        .collect();
    assert_eq!(batched, seen, "a batch continues the round robin exactly");
    let many: Vec<Assignment> = t.json("/v1/assign/batch?count=100000").await;
    assert_eq!(many.len(), 64, "a batch is capped");

    let a: Assignment = t.json("/v1/assign?group=g2&size=1").await;
    assert_eq!((a.node_id, a.addr.as_str()), (3, "127.0.0.1:30003"));
    let too_big = 60 * GB;
    for (path, status, code) in [
        (
            "/v1/assign/batch?count=2&group=nope".to_owned(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            format!("/v1/assign/batch?count=3&size={too_big}"),
            StatusCode::INSUFFICIENT_STORAGE,
            None,
        ),
        (
            "/v1/assign?group=nope".to_owned(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/v1/assign?size=-1".to_owned(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            format!("/v1/assign?size={too_big}"),
            StatusCode::INSUFFICIENT_STORAGE,
            Some("insufficient_storage"),
        ),
        (
            "/v1/locate/g1/M00/00/00/short.txt".to_owned(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            format!("/v1/locate/{}", file_id("g7", 1, 1)),
            StatusCode::NOT_FOUND,
            None,
        ),
    ] {
        let (got, got_code) = t.error(&path).await;
        assert_eq!(got, status, "{path}: {got_code}");
        if let Some(code) = code {
            assert_eq!(got_code, code, "{path}");
        }
    }

    // Node 1 created the file at t=1500 and has synced it to node 2, not yet to node 4.
    let id = file_id("g1", 1, 1_500);
    let loc: Locations = t.json(&format!("/v1/locate/{id}")).await;
    let order: Vec<u32> = loc.members.iter().map(|m| m.node_id).collect();
    assert_eq!(order, [1, 2, 4]);

    let view = t.cluster().await;
    let names: Vec<&str> = view.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["g1", "g2"]);
    let ids: Vec<u32> = view.groups[0].members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, [1, 2, 4]);
    t.stop().await;
}

#[tokio::test]
async fn silent_members_go_offline_and_stay_listed() {
    let config = Config {
        heartbeat_timeout_ms: 300,
        store_lookup: StoreLookup::MostFree,
        ..Config::default()
    };
    let t = Tracker::start(config).await;
    t.beat(&hb("g1", 1, 50 * GB)).await;
    let alive = Instant::now();
    // Keep node 2 alive while node 1 goes silent.
    let view = eventually(10, "node 1 to go offline", || async {
        t.beat(&hb("g1", 2, 40 * GB)).await;
        let view = t.cluster().await;
        (view.groups[0].members[0].state == MemberState::Offline).then_some(view)
    })
    .await;
    assert!(alive.elapsed() >= Duration::from_millis(300));
    let members = &view.groups[0].members;
    assert_eq!(members.len(), 2);
    assert_eq!(members[1].state, MemberState::Active);
    assert_eq!(view.groups[0].free_bytes, 40 * GB);
    let a: Assignment = t.json("/v1/assign").await;
    assert_eq!(a.node_id, 2);
    t.stop().await;
}

#[tokio::test]
async fn internal_routes_need_the_cluster_secret() {
    let config = Config {
        cluster_secret: Some("s3cret".into()),
        ..Config::default()
    };
    let t = Tracker::start(config).await;
    let beat = |secret: Option<&str>| {
        let mut req = t
            .client
            .post(format!("{}/v1/heartbeat", t.base))
            .json(&hb("g1", 1, 50 * GB));
        if let Some(s) = secret {
            req = req.header(CLUSTER_SECRET_HEADER, s);
        }
        req.send()
    };
    for secret in [None, Some("wrong")] {
        let r = beat(secret).await.unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
    }
    let locate = format!("/v1/locate/{}", file_id("g1", 1, 1));
    for path in ["/v1/assign", &locate] {
        assert_eq!(t.error(path).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(beat(Some("s3cret")).await.unwrap().status(), StatusCode::OK);
    let r = t.get("/v1/assign").header(CLUSTER_SECRET_HEADER, "s3cret");
    assert_eq!(r.go().await.status(), StatusCode::OK);

    // Public routes stay open.
    assert_eq!(t.cluster().await.groups.len(), 1);
    let health: serde_json::Value = t.json("/livez").await;
    assert_eq!(health["role"], "tracker");
    assert_eq!(health["status"], "ok");
    let metrics = metrics(&t.client, &t.base).await;
    assert!(metrics.contains("fdfs_http_requests_total"), "{metrics}");
    assert_eq!(t.error("/nothing/here").await.0, StatusCode::NOT_FOUND);
    t.stop().await;
}

#[tokio::test]
async fn bad_heartbeats_are_json_errors() {
    let t = Tracker::start(Config::default()).await;
    let r = t
        .client
        .post(format!("{}/v1/heartbeat", t.base))
        .header("content-type", "application/json")
        .body(r#"{"node_id": 1}"#)
        .go()
        .await;
    assert!(r.status().is_client_error());
    error_code(r).await;
    let r = t.client.delete(format!("{}/cluster", t.base)).go().await;
    assert_eq!(error_code(r).await.0, StatusCode::METHOD_NOT_ALLOWED);
    t.stop().await;
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fdfs-tracker"));
    fdfs_testkit::node::clean_env(&mut cmd);
    let mut child = tokio::process::Command::from(cmd)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").expect(&line);
    let r = Client::new().get(format!("http://{addr}/livez")).go().await;
    assert_eq!(r.status(), StatusCode::OK);
    // SIGTERM stops it gracefully with status 0.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn health_waits_out_the_warmup_and_cluster_hides_internal_addresses_without_the_secret() {
    let config = Config {
        heartbeat_timeout_ms: 400,
        cluster_secret: Some("s3cret".into()),
        ..Config::default()
    };
    let t = Tracker::start(config).await;
    let live = t.get("/livez").send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let r = t.get("/health").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"].as_str().unwrap().contains("warming up"),
        "{body}"
    );

    let mut node = hb("g1", 1, 50 * GB);
    node.addr = "10.9.9.9:23100".into();
    node.public_url = "http://files.example.com:8888".into();
    let r = t
        .client
        .post(format!("{}/v1/heartbeat", t.base))
        .header(CLUSTER_SECRET_HEADER, "s3cret")
        .json(&node)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    fdfs_testkit::eventually(10, "the tracker ready", || async {
        let r = t.get("/health").send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;

    let public = t.cluster().await;
    assert_eq!(public.groups[0].members[0].addr, "files.example.com:8888");
    let full: ClusterView = t
        .get("/cluster")
        .header(CLUSTER_SECRET_HEADER, "s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full.groups[0].members[0].addr, "10.9.9.9:23100");
    t.stop().await;
}

#[tokio::test]
async fn a_member_leaving_is_offline_at_once_and_a_drained_one_gets_no_uploads() {
    let t = Tracker::start(Config::default()).await;
    t.beat(&hb("g1", 1, 50 * GB)).await;
    t.beat(&hb("g1", 2, 50 * GB)).await;
    let drain = t
        .client
        .put(format!("{}/v1/members/g1/1/drain", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), StatusCode::OK);
    assert!(t.beat(&hb("g1", 1, 50 * GB)).await.draining);
    for _ in 0..4 {
        let a: Assignment = t
            .get("/v1/assign")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(a.node_id, 2);
    }
    assert!(t.cluster().await.groups[0].members[0].draining);

    let remove = || {
        t.client
            .delete(format!("{}/v1/members/g1/1", t.base))
            .send()
    };
    let r = remove().await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "member_live".into())
    );
    let r = t
        .client
        .post(format!("{}/v1/members/g1/1/leave?instance=1", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        t.cluster().await.groups[0].members[0].state,
        MemberState::Offline
    );
    assert_eq!(remove().await.unwrap().status(), StatusCode::OK);
    let ids: Vec<u32> = t.cluster().await.groups[0]
        .members
        .iter()
        .map(|m| m.node_id)
        .collect();
    assert_eq!(ids, [2]);
    t.stop().await;
}
