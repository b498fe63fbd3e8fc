//! A whole fdfs cluster of real processes ([`crate::node::Node`]s: trackers, storage nodes in groups, a gateway),
//! each on `127.0.0.1:0` with its data in one temp dir: started from a [`ClusterSpec`], grown with
//! [`Cluster::add_storage`], watched through `/cluster` until members reach a state (polling with a deadline),
//! and asked what its storage nodes hold (`/v1/sync/status`, `/v1/replica/{id}`). Every process is killed
//! when the [`Cluster`] is dropped; if the test failed, the tail of every node's log is printed first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdfs_common::wire::{ClusterView, MemberInfo, MemberState};
use serde_json::Value;

use crate::dirs::{tempdir, TestDir};
use crate::http::{client, follow_client, RequestExt};
use crate::node::{args, peak_rss, Node, PendingNode, Role};

/// Default deadline for cluster state changes.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Groups (`group1`, `group2`, ...).
    pub groups: usize,
    /// Storage members per group.
    pub members: usize,
    /// Trackers (every storage node and the gateway know them all).
    pub trackers: usize,
    /// Extra flags for every storage node.
    pub storage_args: Vec<String>,
    /// Extra flags for the gateway.
    pub gateway_args: Vec<String>,
    /// Extra flags for every tracker.
    pub tracker_args: Vec<String>,
}

impl Default for ClusterSpec {
    /// `fdfs up` shape: 1 tracker, 2 groups x 2 members, with fast heartbeats so state changes show quickly.
    fn default() -> Self {
        ClusterSpec {
            groups: 2,
            members: 2,
            trackers: 1,
            storage_args: args(&["--heartbeat-interval-ms", "200"]),
            gateway_args: Vec::new(),
            tracker_args: args(&["--heartbeat-timeout-ms", "2000"]),
        }
    }
}

impl ClusterSpec {
    /// One group of `members`, one tracker, the default flags.
    pub fn group(members: usize) -> ClusterSpec {
        ClusterSpec {
            groups: 1,
            members,
            ..ClusterSpec::default()
        }
    }

    /// These flags added to every storage node's.
    pub fn storage(mut self, flags: &[&str]) -> ClusterSpec {
        self.storage_args.extend(args(flags));
        self
    }

    /// These flags added to the gateway's.
    pub fn gateway(mut self, flags: &[&str]) -> ClusterSpec {
        self.gateway_args.extend(args(flags));
        self
    }

    /// These flags added to every tracker's.
    pub fn tracker(mut self, flags: &[&str]) -> ClusterSpec {
        self.tracker_args.extend(args(flags));
        self
    }
}

/// A running cluster.
pub struct Cluster {
    /// Every node's data and logs (`logs/<name>.log`).
    pub dir: TestDir,
    /// `trackers[t]` is `tracker-{t+1}`.
    pub trackers: Vec<Node>,
    /// `storage[g][m]` is member m+1 of group g+1 (named `group{g+1}`).
    pub storage: Vec<Vec<Node>>,
    /// The one gateway.
    pub gateway: Node,
    /// Does not follow redirects (to inspect the gateway's 302s).
    pub http: reqwest::Client,
    /// Follows redirects.
    pub follow: reqwest::Client,
    /// What the cluster was started with (for nodes added later).
    pub spec: ClusterSpec,
    /// A big transfer's turn ([`crate::big_transfer`]), given back after the processes and their data are gone.
    turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Cluster {
    /// Start trackers, storage nodes, then the gateway; return once every tracker sees every member active.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        Cluster::start_in(spec, tempdir(1 << 30)).await
    }

    /// [`Cluster::start`] with node data under `dir`.
    pub async fn start_in(spec: ClusterSpec, dir: TestDir) -> Cluster {
        let t0 = Instant::now();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let trackers: Vec<Node> = (1..=spec.trackers)
            .map(|t| {
                let name = format!("tracker-{t}");
                Node::start(
                    name.clone(),
                    Role::Tracker,
                    dir.path().join(&name),
                    spec.tracker_args.clone(),
                    logs.join(format!("{name}.log")),
                )
            })
            .collect();
        let tracker_list = tracker_list(&trackers);
        // Storage nodes start in parallel (each creates its 256x256 directories first); all are spawned from
        // this thread (see `node`), then awaited.
        let pending: Vec<Vec<PendingNode>> = (0..spec.groups)
            .map(|g| {
                (0..spec.members)
                    .map(|m| launch_storage(&dir, &tracker_list, &spec, g, m, &[]))
                    .collect()
            })
            .collect();
        let storage: Vec<Vec<Node>> = pending
            .into_iter()
            .map(|g| g.into_iter().map(PendingNode::finish).collect())
            .collect();
        let mut ga = vec!["--tracker".to_owned(), tracker_list];
        ga.extend(spec.gateway_args.iter().cloned());
        let gateway = Node::start(
            "gateway".into(),
            Role::Gateway,
            dir.path().join("gateway"),
            ga,
            logs.join("gateway.log"),
        );
        let cluster = Cluster {
            dir,
            trackers,
            storage,
            gateway,
            http: client(),
            follow: follow_client(),
            spec,
            turn: None,
        };
        for t in 0..cluster.trackers.len() {
            cluster
                .wait_tracker(t, "every member active", STATE_TIMEOUT, |c, v| {
                    c.all_storage()
                        .all(|n| c.state_in(v, n) == Some(MemberState::Active))
                })
                .await;
        }
        // Then each tracker past its warm-up (one heartbeat timeout; ready: it has heard every member, so its
        // "no storage" or "no room" is final), unless a test set a timeout longer than any wait here (to keep
        // a killed member listed): that test does not ask for a final "no storage".
        let warmup = cluster
            .spec
            .tracker_args
            .iter()
            .position(|a| a == "--heartbeat-timeout-ms")
            .and_then(|i| cluster.spec.tracker_args.get(i + 1)?.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        if warmup < STATE_TIMEOUT {
            for t in &cluster.trackers {
                t.wait_healthy(STATE_TIMEOUT).await;
            }
        }
        eprintln!(
            "cluster of {} process(es) ready in {:.1}s",
            cluster.all_nodes().count(),
            t0.elapsed().as_secs_f64()
        );
        cluster
    }

    /// For the big-file tests: one group of two members taking files and uploads up to 4 GiB, with room for
    /// `copies` copies of a file of [`crate::big_file_size`] (plus 1 GiB); the cluster and that size. The
    /// cluster holds a [`crate::big_transfer`] turn while it lives.
    pub async fn for_big_files(copies: u64) -> (Cluster, u64) {
        let turn = crate::big_transfer().await;
        let size = crate::big_file_size();
        let spec = ClusterSpec::group(2)
            .storage(&["--max-file-size", "4GiB"])
            .gateway(&["--max-upload-size", "4GiB"]);
        let mut c = Cluster::start_in(spec, tempdir(copies * size + (1 << 30))).await;
        c.turn = Some(turn);
        (c, size)
    }

    /// Gateway base URL.
    pub fn gateway_url(&self) -> String {
        self.gateway.url()
    }

    /// `groupN` name of group index `g` (0-based).
    pub fn group_name(g: usize) -> String {
        format!("group{}", g + 1)
    }

    /// Every storage node, group by group.
    pub fn all_storage(&self) -> impl Iterator<Item = &Node> {
        self.storage.iter().flatten()
    }

    /// Every process: trackers, storage nodes, gateway.
    pub fn all_nodes(&self) -> impl Iterator<Item = &Node> {
        self.trackers
            .iter()
            .chain(self.all_storage())
            .chain(std::iter::once(&self.gateway))
    }

    /// [`Cluster::all_nodes`], mutably.
    pub fn all_nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.trackers
            .iter_mut()
            .chain(self.storage.iter_mut().flatten())
            .chain(std::iter::once(&mut self.gateway))
    }

    /// `GET {base}/cluster` parsed.
    pub async fn view_at(&self, base: &str) -> Result<ClusterView, String> {
        // With the secret: the operator's view, internal addresses included.
        let r = self.http.get(format!("{base}/cluster")).secret();
        r.timeout(Duration::from_secs(5)).try_json().await
    }

    /// The cluster as the gateway shows it.
    pub async fn view(&self) -> ClusterView {
        self.view_at(&self.gateway_url())
            .await
            .expect("gateway /cluster")
    }

    /// The state a view gives storage node `n`.
    pub fn state_in(&self, v: &ClusterView, n: &Node) -> Option<MemberState> {
        member_in(v, n).map(|m| m.state)
    }

    /// Poll tracker `t`'s `/cluster` until `pred` holds; panics with the last view after `timeout`.
    pub async fn wait_tracker(
        &self,
        t: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Cluster, &ClusterView) -> bool,
    ) -> ClusterView {
        let base = self.trackers[t].url();
        self.wait_at(&base, what, timeout, pred).await
    }

    /// Poll the gateway's `/cluster` until `pred` holds.
    pub async fn wait_gateway(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Cluster, &ClusterView) -> bool,
    ) -> ClusterView {
        let base = self.gateway_url();
        self.wait_at(&base, what, timeout, pred).await
    }

    async fn wait_at(
        &self,
        base: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Cluster, &ClusterView) -> bool,
    ) -> ClusterView {
        crate::eventually_ok(timeout, &format!("{what} at {base}"), || async {
            let v = self.view_at(base).await?;
            if pred(self, &v) {
                Ok(v)
            } else {
                Err(format!("last view: {v:#?}"))
            }
        })
        .await
    }

    /// Wait until tracker 0 reports member (g, m) in `state`.
    pub async fn wait_state(&self, g: usize, m: usize, state: MemberState) -> MemberInfo {
        let node = &self.storage[g][m];
        let what = format!("{} to be {state:?}", node.name);
        let v = self
            .wait_tracker(0, &what, STATE_TIMEOUT, |c, v| {
                c.state_in(v, node) == Some(state)
            })
            .await;
        member_in(&v, node).cloned().expect("member present")
    }

    /// Start one more storage member of group index `g` (named `group{g+1}`, which may be a new group) against
    /// the cluster's trackers, with the spec's storage flags then `extra`; returns its member index. Groups
    /// between the last one and `g` stay empty. Does not wait for the tracker to see it.
    pub fn add_storage(&mut self, g: usize, extra: &[String]) -> usize {
        if self.storage.len() <= g {
            self.storage.resize_with(g + 1, Vec::new);
        }
        let m = self.storage[g].len();
        let list = tracker_list(&self.trackers);
        let node = launch_storage(&self.dir, &list, &self.spec, g, m, extra).finish();
        self.storage[g].push(node);
        m
    }

    /// kill -9 storage member (g, m).
    pub fn kill9(&mut self, g: usize, m: usize) {
        self.storage[g][m].kill9();
    }

    /// Restart storage member (g, m) on the same port and data dir.
    pub fn restart(&mut self, g: usize, m: usize) {
        self.storage[g][m].restart();
    }

    /// kill -9 storage member (g, m), wipe its whole data dir (a lost disk), and leave it down.
    pub fn wipe(&mut self, g: usize, m: usize) {
        let n = &mut self.storage[g][m];
        n.kill9();
        std::fs::remove_dir_all(&n.dir).unwrap();
        std::fs::create_dir_all(&n.dir).unwrap();
    }

    /// Peak RSS of every running process, by name.
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        self.all_nodes()
            .filter_map(|n| n.peak_rss().map(|r| (n.name.clone(), r)))
            .collect()
    }

    /// Sample every process's peak RSS in the background until [`RssSampler::finish`].
    pub fn sample_rss(&self) -> RssSampler {
        RssSampler::start(self)
    }

    /// `PUT /upload/{name}` on the gateway (a query may follow the name), asserting 200; the JSON answer.
    pub async fn upload(&self, name: &str, body: impl Into<reqwest::Body>) -> Value {
        self.http
            .put(format!("{}/upload/{name}", self.gateway_url()))
            .body(body)
            .ok_json()
            .await
    }

    /// Upload [`crate::content`]`(i, len)` as `name` through the gateway (asserting 200).
    pub async fn upload_content(&self, name: &str, i: usize, len: usize) -> Uploaded {
        let body = crate::content(i, len);
        let answer = self.upload(name, body.clone()).await;
        let id = answer["file_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no file_id in {answer}"))
            .to_owned();
        Uploaded { id, body, answer }
    }

    /// `GET /{id}` through the gateway, following its redirect, asserting 200; the bytes.
    pub async fn download(&self, id: &str) -> Vec<u8> {
        self.follow
            .get(format!("{}/{id}", self.gateway_url()))
            .ok_bytes()
            .await
    }

    /// `DELETE /{id}` through the gateway, asserting 200.
    pub async fn delete(&self, id: &str) {
        let r = self.http.delete(format!("{}/{id}", self.gateway_url()));
        let v: Value = r.ok_json().await;
        assert_eq!(v["deleted"], true, "delete {id}: {v}");
    }

    /// Storage node `n`'s `GET /v1/sync/status`.
    pub async fn sync_status(&self, n: &Node) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}/v1/sync/status", n.internal_url()));
        r.secret().timeout(Duration::from_secs(10)).try_json().await
    }

    /// Poll storage node `n`'s sync status until `pred` holds (panics with the last one after `timeout`).
    pub async fn wait_sync(
        &self,
        n: &Node,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("{}: {what}", n.name);
        crate::eventually_ok(timeout, &what, || async {
            let st = self.sync_status(n).await?;
            if pred(&st) {
                Ok(st)
            } else {
                Err(format!("sync status {st}"))
            }
        })
        .await
    }

    /// [`Cluster::wait_sync`] on every storage node in turn, with [`STATE_TIMEOUT`].
    pub async fn wait_sync_all(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        for n in self.all_storage() {
            self.wait_sync(n, what, STATE_TIMEOUT, &pred).await;
        }
    }

    /// Wait until every storage node sees each of its peers active (a node learns that from heartbeat replies,
    /// a beat after the tracker): from then on uploads reach `write_quorum` members.
    pub async fn wait_peers_active(&self) {
        self.wait_sync_all("every peer active", |st| peers_all(st, "state", "active"))
            .await;
    }

    /// The bytes storage node `n` itself holds for `id` (`GET /v1/replica/{id}`: never proxied to a peer);
    /// `None` when it does not hold it (or does not answer).
    pub async fn held(&self, n: &Node, id: &str) -> Option<Vec<u8>> {
        let r = self
            .http
            .get(format!("{}/v1/replica/{id}", n.internal_url()));
        r.secret()
            .timeout(Duration::from_secs(10))
            .try_bytes()
            .await
            .ok()
    }

    /// Poll until every storage member holds exactly `want` for `id` (`None`: none holds it).
    pub async fn wait_held(&self, id: &str, want: Option<&[u8]>, what: &str) {
        let what = format!(
            "{what}: every member to hold {:?} bytes of {id}",
            want.map(<[u8]>::len)
        );
        crate::eventually_ok(STATE_TIMEOUT, &what, || async {
            let mut seen = Vec::new();
            let mut all = true;
            for n in self.all_storage() {
                let got = self.held(n, id).await;
                all &= got.as_deref() == want;
                seen.push(format!("{}: {:?}", n.name, got.map(|b| b.len())));
            }
            if all {
                Ok(())
            } else {
                Err(seen.join(", "))
            }
        })
        .await;
    }
}

/// A file uploaded through the gateway ([`Cluster::upload_content`]).
pub struct Uploaded {
    /// Its file ID.
    pub id: String,
    /// The bytes sent.
    pub body: Vec<u8>,
    /// The gateway's JSON answer.
    pub answer: Value,
}

/// Whether a sync status lists at least one peer, each with `field` equal to `value`.
pub fn peers_all(st: &Value, field: &str, value: impl Into<Value>) -> bool {
    let value = value.into();
    st["peers"]
        .as_array()
        .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p[field] == value))
}

/// `T1,T2,...`: the addresses of the trackers.
fn tracker_list(trackers: &[Node]) -> String {
    trackers
        .iter()
        .map(|t| t.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Launch storage member `m` of group index `g` under `dir` (`storage-g{g+1}-m{m+1}`).
fn launch_storage(
    dir: &TestDir,
    trackers: &str,
    spec: &ClusterSpec,
    g: usize,
    m: usize,
    extra: &[String],
) -> PendingNode {
    let name = format!("storage-g{}-m{}", g + 1, m + 1);
    let data = dir.path().join(&name);
    let mut a = args(&["--group", &Cluster::group_name(g), "--tracker", trackers]);
    a.push("--store-path".into());
    a.push(data.display().to_string());
    a.extend(spec.storage_args.iter().cloned());
    a.extend(extra.iter().cloned());
    let log = dir.path().join("logs").join(format!("{name}.log"));
    Node::launch(name, Role::Storage, data, a, log)
}

/// The member entry for a storage node in a view (matched by the port of the address it announces: the
/// internal one when it has one).
pub fn member_in<'a>(v: &'a ClusterView, node: &Node) -> Option<&'a MemberInfo> {
    let port = format!(":{}", node.internal.unwrap_or(node.addr).port());
    v.groups
        .iter()
        .flat_map(|g| &g.members)
        .find(|m| m.addr.ends_with(&port))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in self.all_nodes() {
                eprintln!(
                    "----- {} ({}) log tail -----\n{}",
                    n.name,
                    n.addr,
                    n.log_tail(40)
                );
            }
            if std::env::var_os("FDFS_KEEP_TEST_DIR").is_some() {
                eprintln!("keeping {}", self.dir.path().display());
                self.dir.keep();
            }
        }
        for n in self.all_nodes_mut() {
            n.kill9();
        }
    }
}

/// Every process's peak RSS (VmHWM), sampled every 250 ms while a transfer runs (VmHWM is itself a high-water
/// mark; the samples also catch a process that exits before the end).
pub struct RssSampler {
    pids: Vec<(String, u32)>,
    peaks: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(c: &Cluster) -> RssSampler {
        let pids: Vec<(String, u32)> = c
            .all_nodes()
            .map(|n| (n.name.clone(), n.pid().expect("running")))
            .collect();
        let peaks = Arc::new(Mutex::new(vec![0u64; pids.len()]));
        let task = {
            let (peaks, pids) = (peaks.clone(), pids.clone());
            tokio::spawn(async move {
                loop {
                    for (i, (_, pid)) in pids.iter().enumerate() {
                        if let Some(r) = peak_rss(*pid) {
                            let mut p = peaks.lock().unwrap();
                            p[i] = p[i].max(r);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        RssSampler { pids, peaks, task }
    }

    /// Stop sampling and assert that every process stayed under `limit` bytes; `name: N MiB` per process.
    pub fn finish(self, limit: u64) -> String {
        self.task.abort();
        let peaks = self.peaks.lock().unwrap().clone();
        let mut report = Vec::new();
        for ((name, pid), sampled) in self.pids.iter().zip(peaks) {
            let peak = peak_rss(*pid).unwrap_or(0).max(sampled);
            report.push(format!("{name}: {:.1} MiB", peak as f64 / (1 << 20) as f64));
            assert!(
                peak < limit,
                "{name} peaked at {peak} bytes (limit {limit}); all: {report:?}"
            );
        }
        report.join(", ")
    }
}
