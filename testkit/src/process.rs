//! A real fdfs cluster made of child processes of the `fdfs` binary (`fdfs tracker|storage|
//! gateway`), each on `127.0.0.1:0` with its data in a tempdir. The port of each child comes from its
//! `listening on ADDR` stdout line; its stderr goes to a log file that is printed when a test fails.
//! Helpers: kill -9 / restart a node on the same port and data dir, wait for member states via `/cluster`
//! (polling with a deadline), and read a child's peak RSS (`VmHWM`).
//!
//! Children are killed when the [`Cluster`] is dropped, and (Linux) also if the test thread dies first.
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fdfs_common::sys;
use fdfs_common::wire::{ClusterView, MemberInfo, MemberState};

/// The `fdfs` binary under test: `FDFS_TEST_BIN` if set, else `fdfs` in the directory above the running test
/// executable (`target/<profile>/deps/<test>` -> `target/<profile>/fdfs`), which `cargo test -p fdfs` builds.
pub fn bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FDFS_TEST_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().expect("test exe dir");
        let dir = if dir.ends_with("deps") {
            dir.parent().expect("profile dir")
        } else {
            dir
        };
        let p = dir.join("fdfs");
        assert!(
            p.is_file(),
            "{} is missing: build it (`cargo build -p fdfs`) or set FDFS_TEST_BIN",
            p.display()
        );
        p
    })
    .clone()
}
/// Cluster secret every test cluster uses (so internal routes are exercised with auth on).
pub const SECRET: &str = "test-cluster-secret";
/// How long a child may take to print `listening on`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline for cluster state changes.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Storage groups, named `group1`, `group2`...
    pub groups: usize,
    /// Storage nodes per group.
    pub members: usize,
    /// Trackers; every storage node and the gateway get them all.
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

/// `&["a", "b"]` as owned strings.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// Which server a [`Node`] runs (the `fdfs` subcommand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `fdfs tracker`.
    Tracker,
    /// `fdfs storage`.
    Storage,
    /// `fdfs gateway`.
    Gateway,
}

impl Role {
    fn subcommand(self) -> &'static str {
        match self {
            Role::Tracker => "tracker",
            Role::Storage => "storage",
            Role::Gateway => "gateway",
        }
    }
}

/// One server process.
#[derive(Debug)]
pub struct Node {
    /// `tracker-N`, `storage-gG-mM` or `gateway`: names its directory and log, and shows in panics.
    pub name: String,
    /// What it runs.
    pub role: Role,
    /// Bound address (stays the same across [`Node::restart`]).
    pub addr: SocketAddr,
    /// Address of the internal routes of a storage node started with `--internal-listen` (a restart binds
    /// what the flag says again).
    pub internal: Option<SocketAddr>,
    /// Data directory (the store path for storage nodes).
    pub dir: PathBuf,
    /// Flags other than `--listen`.
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// How many times the node was restarted.
    restarts: u32,
}

/// Spawn `fdfs <role> --listen <listen> <args>` and wait for its `listening on` line; panics on failure.
pub fn spawn_server(role: Role, listen: &str, args: &[String], log: &Path) -> (Child, SocketAddr) {
    try_spawn_server(role, listen, args, log).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`spawn_server`], returning the failure (with the log) instead of panicking.
pub fn try_spawn_server(
    role: Role,
    listen: &str,
    args: &[String],
    log: &Path,
) -> Result<(Child, SocketAddr), String> {
    launch(role, listen, args, log).wait()
}

/// A child that has been started but may not be listening yet.
pub struct Launch {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
    log: PathBuf,
    log_start: u64,
}

/// Start `fdfs <role> --listen <listen> <args>` without waiting. Must run on the thread that owns the
/// cluster: with `PR_SET_PDEATHSIG` the child dies with the thread that forked it.
pub fn launch(role: Role, listen: &str, args: &[String], log: &Path) -> Launch {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let log_start = log_file.metadata().map_or(0, |m| m.len());
    let mut cmd = Command::new(bin());
    cmd.arg(role.subcommand())
        .args(["--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    hermetic_env(&mut cmd);
    let mut child = cmd.spawn().expect("spawn fdfs");
    let lines = read_lines(child.stdout.take().expect("piped stdout"));
    Launch {
        child,
        lines,
        what: format!("fdfs {} --listen {listen} {args:?}", role.subcommand()),
        log: log.to_owned(),
        log_start,
    }
}

impl Launch {
    /// Wait for the `listening on` line.
    pub fn wait(self) -> Result<(Child, SocketAddr), String> {
        self.wait_internal(false).map(|(c, a, _)| (c, a))
    }

    /// Wait for the `listening on` line and, when `internal`, the storage node's `internal listening on` line
    /// (printed when it runs with `--internal-listen`).
    pub fn wait_internal(
        mut self,
        internal: bool,
    ) -> Result<(Child, SocketAddr, Option<SocketAddr>), String> {
        let found = wait_listening(&self.lines, LISTEN_TIMEOUT).and_then(|addr| {
            if !internal {
                return Ok((addr, None));
            }
            wait_prefixed(&self.lines, "internal listening on ", LISTEN_TIMEOUT)
                .map(|i| (addr, Some(i)))
        });
        match found {
            Ok((addr, internal)) => Ok((self.child, addr, internal)),
            Err(e) => {
                let _ = self.child.kill();
                let status = self.child.wait().ok();
                let log = std::fs::read(&self.log).unwrap_or_default();
                let new = String::from_utf8_lossy(&log[(self.log_start as usize).min(log.len())..]);
                Err(format!(
                    "{}: {e} (status {status:?}); log:\n{new}",
                    self.what
                ))
            }
        }
    }
}

/// Clean `FDFS_*` environment (so a developer's settings do not leak in), the test secret, and death of
/// the child with the test thread.
pub fn hermetic_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FDFS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FDFS_CLUSTER_SECRET", SECRET).env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    sys::die_with_parent(cmd, sys::Signal::KILL);
}

/// Wait for a `listening on ADDR` line among a child's stdout lines.
pub fn wait_listening(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    wait_prefixed(rx, "listening on ", timeout)
}

/// Wait for a `<prefix>ADDR` line among a child's stdout lines.
pub fn wait_prefixed(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.trim().strip_prefix(prefix) {
                    return a
                        .trim()
                        .parse()
                        .map_err(|e| format!("bad address in {line:?}: {e}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no `{prefix}` line within {timeout:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("exited before printing `{prefix}`"))
            }
        }
    }
}

/// Every stdout line of a child, on a channel, read by a background thread until EOF.
pub fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The receiver may be gone; keep draining anyway so the child never blocks.
            let _ = tx.send(line);
        }
    });
    rx
}

/// A fresh temp directory for node data, on tmpfs (`/dev/shm`) when it has `min_free` bytes free: storage
/// nodes create 256x256 directories per store path, which a disk-backed /tmp makes slow to create and remove.
/// `FDFS_TEST_TMPDIR` overrides the base directory.
pub fn tempdir(min_free: u64) -> tempfile::TempDir {
    let base = std::env::var_os("FDFS_TEST_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            (free_bytes(&shm).is_some_and(|f| f >= min_free)).then_some(shm)
        })
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("fdfs-test-")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("tempdir in {}: {e}", base.display()))
}

/// Free bytes of the filesystem holding `path`, if it is a writable directory.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() || meta.permissions().readonly() {
        return None;
    }
    sys::free_bytes(path).ok()
}

/// Last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut q = VecDeque::new();
    for l in text.lines() {
        if q.len() == n {
            q.pop_front();
        }
        q.push_back(l);
    }
    q.into_iter().collect::<Vec<_>>().join("\n")
}

/// Peak resident set size (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Node {
    fn start(name: String, role: Role, dir: PathBuf, args: Vec<String>, log: PathBuf) -> Node {
        Node::launch(name, role, dir, args, log).finish()
    }

    /// Start the process; [`PendingNode::finish`] waits for it to listen.
    fn launch(
        name: String,
        role: Role,
        dir: PathBuf,
        args: Vec<String>,
        log: PathBuf,
    ) -> PendingNode {
        std::fs::create_dir_all(&dir).expect("create node dir");
        let launch = launch(role, "127.0.0.1:0", &args, &log);
        PendingNode {
            name,
            role,
            dir,
            args,
            log,
            launch,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR` of the internal routes: the internal listener when there is one, else the public one.
    pub fn internal_url(&self) -> String {
        format!("http://{}", self.internal.unwrap_or(self.addr))
    }

    /// Freeze the process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.signal(sys::Signal::STOP);
    }

    /// Resume a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal(sys::Signal::CONT);
    }

    fn signal(&self, sig: sys::Signal) {
        let pid = self.pid().expect("node is running");
        sys::kill(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig:?}): {e}"));
    }

    /// Process id of the running child; `None` after [`Node::kill9`] or [`Node::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child is still alive (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Peak RSS of the running process, in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        self.pid().and_then(peak_rss)
    }

    /// SIGKILL the process and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (panics after `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        let _ = sys::kill(c.id(), sys::Signal::TERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the node again on the same address with the same data dir and flags.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let listen = self.addr.to_string();
        // The internal listener (if any) comes back on its old address too.
        let mut args = self.args.clone();
        if let (Some(internal), Some(i)) = (
            self.internal,
            args.iter().position(|a| a == "--internal-listen"),
        ) {
            args[i + 1] = internal.to_string();
        }
        // The old socket may linger briefly; retry the bind for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match launch(self.role, &listen, &args, &self.log)
                .wait_internal(self.internal.is_some())
            {
                Ok((child, addr, internal)) => {
                    assert_eq!(addr, self.addr);
                    assert_eq!(internal, self.internal);
                    self.child = Some(child);
                    self.restarts += 1;
                    return;
                }
                Err(e) if e.contains("in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restarting {}: {e}", self.name),
            }
        }
    }

    /// The last lines of this node's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

/// A node whose process started but whose address is not known yet.
struct PendingNode {
    name: String,
    role: Role,
    dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    launch: Launch,
}

impl PendingNode {
    fn finish(self) -> Node {
        let internal = self.args.iter().any(|a| a == "--internal-listen");
        let (child, addr, internal) = self
            .launch
            .wait_internal(internal)
            .unwrap_or_else(|e| panic!("{e}"));
        Node {
            name: self.name,
            role: self.role,
            addr,
            internal,
            dir: self.dir,
            args: self.args,
            log: self.log,
            child: Some(child),
            restarts: 0,
        }
    }
}

/// A running cluster.
pub struct Cluster {
    /// Holds every node's directory and `logs/`; removed when the cluster is dropped.
    pub dir: tempfile::TempDir,
    /// `trackers[t]` is `tracker-{t+1}`.
    pub trackers: Vec<Node>,
    /// `storage[g][m]` is member m+1 of group g+1 (named `group{g+1}`).
    pub storage: Vec<Vec<Node>>,
    /// The one gateway, configured with every tracker.
    pub gateway: Node,
    /// Does not follow redirects (to inspect the gateway's 302s).
    pub http: reqwest::Client,
    /// Follows redirects.
    pub follow: reqwest::Client,
    /// What the cluster was started with (for nodes added later).
    pub spec: ClusterSpec,
}

impl Cluster {
    /// Start trackers, storage nodes, then the gateway; return once every tracker sees every member active.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        Cluster::start_in(spec, tempdir(1 << 30)).await
    }

    /// [`Cluster::start`] with node data under `dir`.
    pub async fn start_in(spec: ClusterSpec, dir: tempfile::TempDir) -> Cluster {
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
        let tracker_list = trackers
            .iter()
            .map(|t| t.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        // Storage nodes start in parallel (each creates its 256x256 directories first); all are spawned from
        // this thread (see `launch`), then awaited.
        let pending: Vec<Vec<PendingNode>> = (1..=spec.groups)
            .map(|g| {
                (1..=spec.members)
                    .map(|m| {
                        let name = format!("storage-g{g}-m{m}");
                        let data = dir.path().join(&name);
                        let mut a = args(&["--group", &format!("group{g}"), "--tracker"]);
                        a.push(tracker_list.clone());
                        a.push("--store-path".into());
                        a.push(data.display().to_string());
                        a.extend(spec.storage_args.iter().cloned());
                        let log = logs.join(format!("{name}.log"));
                        Node::launch(name, Role::Storage, data, a, log)
                    })
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
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let follow = reqwest::Client::new();
        let cluster = Cluster {
            dir,
            trackers,
            storage,
            gateway,
            http,
            follow,
            spec,
        };
        for t in 0..cluster.trackers.len() {
            cluster
                .wait_tracker(t, "every member active", STATE_TIMEOUT, |c, v| {
                    c.all_storage()
                        .all(|n| member_in(v, n).is_some_and(|m| m.state == MemberState::Active))
                })
                .await;
        }
        eprintln!(
            "cluster of {} process(es) ready in {:.1}s",
            cluster.all_nodes().count(),
            t0.elapsed().as_secs_f64()
        );
        cluster
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

    /// Every process, mutably (to kill or restart them all).
    pub fn all_nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.trackers
            .iter_mut()
            .chain(self.storage.iter_mut().flatten())
            .chain(std::iter::once(&mut self.gateway))
    }

    /// `GET {base}/cluster` parsed.
    pub async fn view_at(&self, base: &str) -> Result<ClusterView, String> {
        let resp = self
            .http
            .get(format!("{base}/cluster"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("/cluster answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// The cluster as the gateway shows it.
    pub async fn view(&self) -> ClusterView {
        self.view_at(&self.gateway_url())
            .await
            .expect("gateway /cluster")
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
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.view_at(base).await;
            if let Ok(v) = &last {
                if pred(self, v) {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what} at {base}; last view: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until tracker 0 reports member (g, m) in `state`.
    pub async fn wait_state(&self, g: usize, m: usize, state: MemberState) -> MemberInfo {
        let node = &self.storage[g][m];
        let what = format!("{} to be {state:?}", node.name);
        let v = self
            .wait_tracker(0, &what, STATE_TIMEOUT, |_, v| {
                member_in(v, node).is_some_and(|i| i.state == state)
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
        let name = format!("storage-g{}-m{}", g + 1, m + 1);
        let data = self.dir.path().join(&name);
        let tracker_list = self
            .trackers
            .iter()
            .map(|t| t.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut a = args(&["--group", &Cluster::group_name(g), "--tracker"]);
        a.push(tracker_list);
        a.push("--store-path".into());
        a.push(data.display().to_string());
        a.extend(self.spec.storage_args.iter().cloned());
        a.extend(extra.iter().cloned());
        let log = self.dir.path().join("logs").join(format!("{name}.log"));
        let node = Node::start(name, Role::Storage, data, a, log);
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

    /// Peak RSS of every running process, by name.
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        self.all_nodes()
            .filter_map(|n| n.peak_rss().map(|r| (n.name.clone(), r)))
            .collect()
    }
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
                let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
                std::mem::forget(dir);
            }
        }
        for n in self.all_nodes_mut() {
            n.kill9();
        }
    }
}

/// `PUT /upload/{name}` on the cluster's gateway, asserting 200; the JSON answer.
pub async fn upload(c: &Cluster, name: &str, body: Vec<u8>) -> serde_json::Value {
    let r = c
        .http
        .put(format!("{}/upload/{name}", c.gateway_url()))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::OK, "upload {name}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}
