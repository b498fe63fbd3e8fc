//! Replication between real storage nodes (`fdfs_storage::run`) registered with a real tracker
//! (`fdfs_tracker::run`), all in-process on 127.0.0.1:0 with tempdirs: uploads, deletes and metadata travel,
//! `write_quorum` holds at acknowledgement, a stopped member converges after a restart, a wiped or new member
//! catches up. Replication lag and catch-up rate are printed (measurements, not assertions).
//!
//! `FDFS_JOIN_FILES` sets how many files the joining-member test starts from (default below), and
//! `FDFS_JOIN_FILE_BYTES` their size (default: 512 B to 4.5 KiB).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{config, tracker_config};
use fdfs_common::config::Size;
use fdfs_common::wire::{ClusterView, MemberState, Metadata, UploadResult};
use fdfs_testkit::inproc::{storage_on, tracker};
use fdfs_testkit::{
    client, content, eventually, eventually_ok, stored_files, stored_path, wait_until, RequestExt,
    Server,
};
use futures_util::StreamExt as _;
use reqwest::StatusCode;

const DEADLINE: Duration = Duration::from_secs(60);
/// Files the joining member starts from, unless `FDFS_JOIN_FILES` says otherwise.
const DEFAULT_JOIN_FILES: usize = 10_000;

/// The group's tracker.
struct Tracker(Server);

impl Tracker {
    async fn start() -> Tracker {
        Tracker(
            tracker(fdfs_tracker::Config {
                heartbeat_timeout_ms: 1500,
                ..tracker_config()
            })
            .await,
        )
    }

    async fn state_of(&self, node: &Node) -> Option<MemberState> {
        let view: ClusterView = client().get(self.0.url("/cluster")).ok_json().await;
        view.groups
            .iter()
            .flat_map(|g| &g.members)
            .find(|m| m.addr == node.addr)
            .map(|m| m.state)
    }

    async fn wait_state(&self, node: &Node, state: MemberState) {
        let what = format!("{} to become {state:?}", node.addr);
        eventually(DEADLINE, &what, || async {
            (self.state_of(node).await == Some(state)).then_some(())
        })
        .await;
    }
}

/// One storage node, restartable on its address and store path.
struct Node {
    addr: String,
    dir: PathBuf,
    server: Option<Server>,
}

#[derive(Clone)]
struct Opts {
    write_quorum: u32,
    max_file_size: u64,
    binlog_segment_bytes: u64,
}

impl Opts {
    /// These options with `write_quorum` set.
    fn quorum(self, write_quorum: u32) -> Opts {
        Opts {
            write_quorum,
            ..self
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            write_quorum: 1,
            max_file_size: 1 << 30,
            binlog_segment_bytes: 64 << 20,
        }
    }
}

impl Node {
    /// Start a node on `addr` (`127.0.0.1:0` for a new port) with its single store path in `dir`.
    async fn start(tracker: &Tracker, dir: &Path, addr: &str, opts: &Opts) -> Node {
        let trackers = vec![tracker.0.addr.to_string()];
        let server = storage_on(
            addr,
            fdfs_storage::Config {
                heartbeat_interval_ms: 200,
                write_quorum: opts.write_quorum,
                max_file_size: Size::Bytes(opts.max_file_size),
                binlog_segment_bytes: Size::Bytes(opts.binlog_segment_bytes),
                ..config(trackers, &[dir.to_owned()])
            },
        )
        .await;
        Node {
            addr: server.addr.to_string(),
            dir: dir.to_owned(),
            server: Some(server),
        }
    }

    /// Shut down through the shutdown future and wait for `run` to return.
    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Stop, then start again on the same address and store path.
    async fn restart(&mut self, tracker: &Tracker, opts: &Opts) {
        self.stop().await;
        *self = Node::start(tracker, &self.dir.clone(), &self.addr.clone(), opts).await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn upload(&self, body: Vec<u8>) -> UploadResult {
        fdfs_testkit::json_ok(self.try_upload(body).await).await
    }

    /// Upload `content(i, len)`; its file ID.
    async fn upload_id(&self, i: usize, len: usize) -> String {
        self.upload(content(i, len)).await.file_id.to_string()
    }

    async fn try_upload(&self, body: Vec<u8>) -> reqwest::Response {
        let url = self.url("/v1/upload?ext=bin");
        client().post(url).secret().body(body).go().await
    }

    async fn delete(&self, id: &str) {
        let r = client().delete(self.url(&format!("/v1/files/{id}")));
        let r = r.secret().go().await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    async fn put_meta(&self, id: &str, meta: &Metadata) {
        let r = client().put(self.url(&format!("/v1/meta/{id}"))).json(meta);
        assert_eq!(r.secret().go().await.status(), StatusCode::OK);
    }

    async fn meta(&self, id: &str) -> Option<Metadata> {
        let r = client().get(self.url(&format!("/v1/meta/{id}")));
        let r = r.secret().go().await;
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        Some(r.json().await.unwrap())
    }

    /// `GET /v1/sync/status`.
    async fn sync_status(&self) -> serde_json::Value {
        let r = client().get(self.url("/v1/sync/status"));
        r.secret().ok_json().await
    }

    /// Poll until this node's peer list shows `other` in `state`.
    async fn wait_sees(&self, other: &Node, state: MemberState) {
        let want = serde_json::to_value(state).unwrap();
        let what = format!("{} to see {} {state:?}", self.addr, other.addr);
        eventually_ok(DEADLINE, &what, || async {
            let st = self.sync_status().await;
            let seen = st["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["addr"] == other.addr.as_str() && p["state"] == want);
            seen.then_some(()).ok_or_else(|| st.to_string())
        })
        .await;
    }

    /// Path of a file on this node's disk.
    fn disk(&self, file_id: &str) -> PathBuf {
        stored_path(&self.dir, file_id)
    }

    /// Every file on disk: relative path -> (size, mtime in unix seconds, crc32); a file removed while this
    /// reads (a delete replicating) is left out.
    fn files(&self) -> BTreeMap<String, (u64, u64, u32)> {
        stored_files(&self.dir)
            .into_iter()
            .filter_map(|rel| {
                let path = self.dir.join("data").join(&rel);
                let m = std::fs::metadata(&path).ok()?;
                let crc = crc32fast::hash(&std::fs::read(&path).ok()?);
                let mtime = m
                    .modified()
                    .unwrap()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                Some((rel, (m.len(), mtime, crc)))
            })
            .collect()
    }

    /// The files on disk, `XX/YY/name` (cheap: no hashing).
    fn names(&self) -> Vec<String> {
        stored_files(&self.dir).into_iter().collect()
    }

    /// `GET /{file_id}` served from this node's own disk (no proxying): status, ETag, Last-Modified, body.
    async fn public_get(
        &self,
        file_id: &str,
    ) -> (StatusCode, Option<String>, Option<String>, Vec<u8>) {
        let r = client()
            .get(self.url(&format!("/{file_id}")))
            .header("x-fdfs-no-proxy", "1")
            .go()
            .await;
        let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        let (etag, lm) = (h("etag"), h("last-modified"));
        (r.status(), etag, lm, r.bytes().await.unwrap().to_vec())
    }
}

/// Poll until `what` holds (a condition on the nodes' disks or answers), within [`DEADLINE`].
async fn converge<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(DEADLINE, what, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await;
}

async fn cluster_of(n: usize, opts: &Opts) -> (Tracker, Vec<Node>, Vec<tempfile::TempDir>) {
    fdfs_common::telemetry::init();
    let tracker = Tracker::start().await;
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        nodes.push(Node::start(&tracker, dir.path(), "127.0.0.1:0", opts).await);
        dirs.push(dir);
    }
    for node in &nodes {
        tracker.wait_state(node, MemberState::Active).await;
    }
    // Every node knows every other as active (its own heartbeat reply) before the test starts.
    for n in &nodes {
        for other in nodes.iter().filter(|o| o.addr != n.addr) {
            n.wait_sees(other, MemberState::Active).await;
        }
    }
    (tracker, nodes, dirs)
}

/// Stop every node, then the tracker.
async fn shut_down(tracker: Tracker, nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        n.stop().await;
    }
    tracker.0.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_deletes_and_metadata_propagate() {
    let (tracker, mut nodes, _dirs) = cluster_of(2, &Opts::default()).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    let mut lags = Vec::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = content(i, 1000 + i * 100);
        let up = a.upload(body.clone()).await;
        assert_eq!(up.replicas, 1, "write_quorum = 1 acknowledges alone");
        let id = up.file_id.to_string();
        let path = b.disk(&id);
        lags.push(wait_until(DEADLINE, "the replica", || path.exists()).await);
        ids.push((id, body));
    }
    lags.sort();
    println!(
        "replication lag (upload ack -> file on peer, async): median {:?}, max {:?} over {} uploads",
        lags[lags.len() / 2],
        lags[lags.len() - 1],
        lags.len()
    );
    // Identical bytes, mtime, ETag and Last-Modified.
    for (id, body) in &ids {
        let (sa, ea, la, ba) = a.public_get(id).await;
        let (sb, eb, lb, bb) = b.public_get(id).await;
        assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
        assert_eq!(&ba, body);
        assert_eq!(bb, ba);
        assert_eq!(eb, ea);
        assert_eq!(lb, la);
    }
    assert_eq!(
        a.files(),
        b.files(),
        "same names, sizes, mtimes and contents"
    );

    // Metadata set on A reaches B.
    let (id0, _) = &ids[0];
    let meta: Metadata = [("author".into(), "ada".into()), ("w".into(), "640".into())].into();
    a.put_meta(id0, &meta).await;
    converge("metadata to reach B", || async {
        b.meta(id0).await.as_ref() == Some(&meta)
    })
    .await;

    // Operations on B travel to A too (every member logs its own).
    let up = b.upload(content(99, 5000)).await;
    let on_a = a.disk(&up.file_id.to_string());
    wait_until(DEADLINE, "B's upload on A", || on_a.exists()).await;

    // Deletes travel, and a deleted file does not come back.
    for (id, _) in &ids[..5] {
        a.delete(id).await;
    }
    for (id, _) in &ids[..5] {
        let p = b.disk(id);
        wait_until(DEADLINE, "the delete on B", || !p.exists()).await;
    }
    b.delete(&up.file_id.to_string()).await;
    wait_until(DEADLINE, "B's delete on A", || !on_a.exists()).await;

    assert_eq!(a.names(), b.names());
    shut_down(tracker, &mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_quorum_two_holds_at_acknowledgement() {
    let opts = Opts::default().quorum(2);
    let (tracker, mut nodes, _dirs) = cluster_of(2, &opts).await;
    for i in 0..10 {
        let up = nodes[0].upload(content(i, 20_000)).await;
        assert_eq!(up.replicas, 2);
        // The replica is on B's disk when the upload is acknowledged: no waiting.
        let id = up.file_id.to_string();
        assert!(nodes[1].disk(&id).exists(), "replica missing at ack");
        assert_eq!(
            std::fs::read(nodes[1].disk(&id)).unwrap(),
            std::fs::read(nodes[0].disk(&id)).unwrap()
        );
    }

    // With B gone, the quorum is capped by the live members: uploads still succeed, with one replica, even
    // before the tracker notices (B refuses connections: it is not live).
    nodes[1].stop().await;
    let up = nodes[0].upload(content(76, 3000)).await;
    assert_eq!(up.replicas, 1);
    nodes[0].wait_sees(&nodes[1], MemberState::Offline).await;
    let up = nodes[0].upload(content(77, 3000)).await;
    assert_eq!(up.replicas, 1);
    // B comes back and gets it from A's worker.
    nodes[1].restart(&tracker, &opts).await;
    let p = nodes[1].disk(&up.file_id.to_string());
    wait_until(DEADLINE, "the missed upload after restart", || p.exists()).await;

    // A member that refuses the replica (here: its size limit is smaller) makes the quorum fail: 503 JSON, and
    // the file stays on the node that took it.
    let strict = Opts {
        max_file_size: 100,
        ..Opts::default().quorum(2)
    };
    nodes[1].restart(&tracker, &strict).await;
    tracker.wait_state(&nodes[1], MemberState::Active).await;
    nodes[0].wait_sees(&nodes[1], MemberState::Active).await;
    let r = nodes[0].try_upload(content(5, 1000)).await;
    assert_eq!(
        fdfs_testkit::error_of(r).await,
        (503, "unavailable".to_owned())
    );
    shut_down(tracker, &mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_member_converges_after_restart() {
    let opts = Opts::default();
    let (tracker, mut nodes, _dirs) = cluster_of(2, &opts).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(nodes[0].upload_id(i, 2000 + i).await);
    }
    wait_until(DEADLINE, "B to hold every file", || {
        nodes[0].names() == nodes[1].names()
    })
    .await;

    nodes[1].stop().await;
    // While B is down: new uploads, deletes, a metadata change.
    for i in 30..50 {
        ids.push(nodes[0].upload_id(i, 1500).await);
    }
    for id in &ids[..10] {
        nodes[0].delete(id).await;
    }
    let meta: Metadata = [("k".into(), "v".into())].into();
    nodes[0].put_meta(&ids[20], &meta).await;

    nodes[1].restart(&tracker, &opts).await;
    let t0 = Instant::now();
    let (a, b) = (&nodes[0], &nodes[1]);
    eventually_ok(DEADLINE, "B to converge", || async {
        let (fa, fb) = (a.files(), b.files());
        if fa == fb {
            return Ok(());
        }
        let only_a: Vec<_> = fa.iter().filter(|(k, v)| fb.get(*k) != Some(v)).collect();
        let only_b: Vec<_> = fb.iter().filter(|(k, v)| fa.get(*k) != Some(v)).collect();
        Err(format!("A only {only_a:?}, B only {only_b:?}"))
    })
    .await;
    println!("stopped member converged {:?} after restart", t0.elapsed());
    assert_eq!(b.names().len(), 40);
    converge("the metadata change missed while down", || async {
        b.meta(&ids[20]).await.as_ref() == Some(&meta)
    })
    .await;
    shut_down(tracker, &mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_member_catches_up_and_deletes_stay_deleted() {
    let opts = Opts::default();
    let (tracker, mut nodes, dirs) = cluster_of(3, &opts).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let on = &nodes[i % 3];
        ids.push(on.upload_id(i, 3000).await);
    }
    wait_until(DEADLINE, "every member to hold the 40 files", || {
        nodes[0].names().len() == 40
            && nodes[0].names() == nodes[1].names()
            && nodes[1].names() == nodes[2].names()
    })
    .await;
    // C goes down; files uploaded on B meanwhile; B then dies for good: only A has them, and their source's
    // binlog can't reach C. A delete made on A while C is down must not come back from C either.
    nodes[2].stop().await;
    let mut late = Vec::new();
    for i in 40..50 {
        late.push(nodes[1].upload_id(i, 3000).await);
    }
    wait_until(DEADLINE, "B's late files on A", || {
        late.iter().all(|id| nodes[0].disk(id).exists())
    })
    .await;
    nodes[1].stop().await;
    nodes[0].delete(&ids[0]).await;

    // Wipe C's whole data folder and restart it on the same address (same node id).
    std::fs::remove_dir_all(dirs[2].path()).unwrap();
    std::fs::create_dir_all(dirs[2].path()).unwrap();
    nodes[2].restart(&tracker, &opts).await;
    wait_until(DEADLINE, "the wiped member to catch up", || {
        nodes[2].files() == nodes[0].files()
    })
    .await;
    tracker.wait_state(&nodes[2], MemberState::Active).await;
    assert_eq!(nodes[2].names().len(), 49);
    assert!(!nodes[2].disk(&ids[0]).exists());

    // B returns with the deleted file still on its disk: A's worker pushes the delete; it never comes back.
    nodes[1].restart(&tracker, &opts).await;
    wait_until(DEADLINE, "the returning member to converge", || {
        !nodes[1].disk(&ids[0]).exists() && nodes[1].files() == nodes[0].files()
    })
    .await;
    shut_down(tracker, &mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binlog_segments_are_removed_once_every_peer_acknowledged() {
    // ~90-byte records, 1000-byte segments: a new segment every ~11 records.
    let opts = Opts {
        binlog_segment_bytes: 1000,
        ..Opts::default()
    };
    let (tracker, mut nodes, _dirs) = cluster_of(2, &opts).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(nodes[0].upload_id(i, 100).await);
    }
    let st = nodes[0].sync_status().await;
    assert_eq!(st["binlog_last_seq"], 60, "{st}");
    // B down: A must keep what B has not acknowledged.
    nodes[1].stop().await;
    for id in &ids[..30] {
        nodes[0].delete(id).await;
    }
    let a = &nodes[0];
    // Everything up to 60 was acknowledged before B stopped: those segments go, the deletes stay.
    let st = eventually_ok(DEADLINE, "the acknowledged segments pruned", || async {
        let st = a.sync_status().await;
        let first = st["binlog_first_seq"].as_u64().unwrap();
        (first > 1)
            .then_some(first)
            .ok_or(format!("nothing pruned: {st}"))
    })
    .await;
    assert!(st <= 61, "first sequence kept: {st}");
    // B returns and takes the deletes; then only the segment being written remains.
    nodes[1].restart(&tracker, &opts).await;
    let a = &nodes[0];
    eventually_ok(DEADLINE, "the binlog pruned to one segment", || async {
        let st = a.sync_status().await;
        let done =
            st["binlog_segments"].as_u64().unwrap() == 1 && st["peers"][0]["pending_records"] == 0;
        done.then_some(()).ok_or(format!("{st}"))
    })
    .await;
    assert_eq!(nodes[1].names().len(), 30);
    shut_down(tracker, &mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_member_joins_with_identical_files() {
    let n: usize = std::env::var("FDFS_JOIN_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_JOIN_FILES);
    // File size: 512 B - 4.5 KiB by default, or `FDFS_JOIN_FILE_BYTES` each (to measure MB/s).
    let size: Option<usize> = std::env::var("FDFS_JOIN_FILE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok());
    let opts = Opts::default();
    let (tracker, mut nodes, _dirs) = cluster_of(1, &opts).await;
    let a = &nodes[0];
    let t0 = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| a.upload(content(i, size.unwrap_or(512 + (i % 64) * 64))))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!("seeded {n} files in {:?}", t0.elapsed());
    let total_bytes: u64 = a.files().values().map(|v| v.0).sum();

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let joiner = Node::start(&tracker, dir.path(), "127.0.0.1:0", &opts).await;
    let saw_syncing = std::cell::Cell::new(false);
    eventually(DEADLINE * 5, "the joiner to become active", || async {
        match tracker.state_of(&joiner).await {
            Some(MemberState::Syncing) => saw_syncing.set(true),
            Some(MemberState::Active) => return Some(()),
            _ => {}
        }
        None
    })
    .await;
    let elapsed = t0.elapsed();
    let have = joiner.names().len();
    let report = joiner.sync_status().await["last_catchup"].clone();
    println!("joiner's own catch-up report: {report}");
    println!(
        "catch-up: {have} of {n} files ({:.1} MB) in {:.2?}: {:.0} files/s, {:.2} MB/s (saw syncing: {})",
        total_bytes as f64 / 1e6,
        elapsed,
        n as f64 / elapsed.as_secs_f64(),
        total_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        saw_syncing.get()
    );
    assert_eq!(have, n, "active before holding every file");
    assert_eq!(joiner.files(), nodes[0].files());
    nodes.push(joiner);
    shut_down(tracker, &mut nodes).await;
}
