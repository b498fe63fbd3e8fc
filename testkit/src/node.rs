//! One server process of the `fdfs` binary under test (`fdfs tracker|storage|gateway`): finding the binary,
//! a clean environment for it, starting it on an address and waiting for its `listening on ADDR` line, and
//! then, as a [`Node`], kill -9, SIGSTOP/SIGCONT, SIGTERM, a restart on the same address and data dir, its log
//! and its peak RSS. Whole clusters of nodes are in [`crate::cluster`].
//!
//! Every child is started with `PR_SET_PDEATHSIG` (Linux): it dies with the thread that started it, so a test
//! that panics or is killed leaves no server behind. Start nodes from the test's own thread (or its runtime).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fdfs_common::sys::{self, Signal};

/// Cluster secret every test cluster uses (so internal routes are exercised with auth on).
pub const SECRET: &str = "test-cluster-secret";
/// How long a child may take to print `listening on`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restart keeps retrying while the old socket still holds the port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

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

/// `&["a", "b"]` as owned strings.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// `fdfs` (the binary under test) with [`clean_env`]: for the client commands a user runs (`fdfs upload`, ...).
/// `tokio::process::Command::from(command())` makes it async.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd);
    cmd
}

/// [`command`] with the test cluster's [`SECRET`] in `FDFS_CLUSTER_SECRET`: for the tools that call internal
/// routes (`fdfs verify`, `fdfs import-fastdfs`, `fdfs monitor delete`).
pub fn command_with_secret() -> Command {
    let mut cmd = command();
    cmd.env("FDFS_CLUSTER_SECRET", SECRET);
    cmd
}

/// No `FDFS_*` variable of the developer's environment leaks in, no colours, and the child dies with the test
/// thread (`PR_SET_PDEATHSIG`).
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FDFS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1");
    sys::die_with_parent(cmd, Signal::KILL);
}

/// [`clean_env`] plus the test cluster's [`SECRET`] and `RUST_LOG=info` (unless set): what servers, and the
/// tools that call their internal routes (`fdfs verify`, `fdfs import-fastdfs`), run with.
pub fn hermetic_env(cmd: &mut Command) {
    clean_env(cmd);
    cmd.env("FDFS_CLUSTER_SECRET", SECRET);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
}

/// Which server a process is.
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
    /// The `fdfs` subcommand that runs it.
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Tracker => "tracker",
            Role::Storage => "storage",
            Role::Gateway => "gateway",
        }
    }
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

/// Start `fdfs <role> --listen <listen> <args>` with [`hermetic_env`], its stderr appended to `log`, without
/// waiting for it to listen.
pub fn launch(role: Role, listen: &str, args: &[String], log: &Path) -> Launch {
    launch_with(role, listen, args, log, |_| {})
}

/// [`launch`], with `adjust` applied to the command last (other environment, entering a network namespace).
pub fn launch_with(
    role: Role,
    listen: &str,
    args: &[String],
    log: &Path,
    adjust: impl FnOnce(&mut Command),
) -> Launch {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let log_start = log_file.metadata().map_or(0, |m| m.len());
    let mut cmd = Command::new(bin());
    cmd.arg(role.subcommand())
        .args(["--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    hermetic_env(&mut cmd);
    adjust(&mut cmd);
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
        self.wait_all(false, false).map(|(c, a, _, _)| (c, a))
    }

    /// Wait for the `listening on` line and, when `internal`, the storage node's `internal listening on` line
    /// (printed when it runs with `--internal-listen`), when `s3` the gateway's `s3 listening on` line (printed
    /// when it runs with `--s3-listen`): the child, its address, its internal address, its S3 door's address. On
    /// failure the child is killed and the error carries what it logged.
    #[allow(clippy::type_complexity)]
    pub fn wait_all(
        mut self,
        internal: bool,
        s3: bool,
    ) -> Result<(Child, SocketAddr, Option<SocketAddr>, Option<SocketAddr>), String> {
        let other = |prefix: &str, wanted: bool| {
            if wanted {
                wait_prefixed(&self.lines, prefix, LISTEN_TIMEOUT).map(Some)
            } else {
                Ok(None)
            }
        };
        let found = wait_listening(&self.lines, LISTEN_TIMEOUT).and_then(|addr| {
            Ok((
                addr,
                other("internal listening on ", internal)?,
                other("s3 listening on ", s3)?,
            ))
        });
        match found {
            Ok((addr, internal, s3)) => Ok((self.child, addr, internal, s3)),
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

/// Every line of a child's stdout (or stderr), on a channel, read by a background thread until EOF.
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

/// Send `sig` to a child we have not reaped; panics if that fails.
pub fn signal(pid: u32, sig: Signal) {
    sys::kill(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig:?}): {e}"));
}

/// Freeze process `pid` (SIGSTOP) and wait until it is frozen: `kill` returns once the signal is queued, and one
/// thread of the process takes it and then stops the others, so on a busy machine another thread can still
/// answer a request for some milliseconds (seen: a "frozen" member took a metadata change 3 ms after `kill`).
/// Returns once every thread is stopped (or the process is gone); after 5 s it says so and returns anyway (a
/// thread in uninterruptible sleep, on a hung disk, stops only when that ends).
pub fn freeze(pid: u32) {
    signal(pid, Signal::STOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(pid) {
        if Instant::now() > deadline {
            eprintln!("process {pid}: some threads still running 5 s after SIGSTOP");
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/<pid>/task/<tid>/stat`); true when the
/// process is gone.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
            // `tid (comm) S ...`: the state follows the last ')' (comm may contain anything).
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

/// Poll a child until it exits; kills it and panics after `timeout`.
pub fn wait_exit(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One server process, with what it takes to start it again.
#[derive(Debug)]
pub struct Node {
    /// `tracker-1`, `storage-g1-m2`, `gateway`, ... (its log is `logs/<name>.log` in a cluster).
    pub name: String,
    /// Which server it is.
    pub role: Role,
    /// Bound address (stays the same across [`Node::restart`]).
    pub addr: SocketAddr,
    /// Address of the internal routes of a storage node started with `--internal-listen` (a restart binds
    /// what the flag says again).
    pub internal: Option<SocketAddr>,
    /// Address of the S3 door of a gateway started with `--s3-listen` (port 0 allowed; a restart binds the same
    /// address again).
    pub s3: Option<SocketAddr>,
    /// Data directory (the store path for storage nodes).
    pub dir: PathBuf,
    /// Flags other than `--listen`.
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Start `fdfs <role>` on `127.0.0.1:0` with its data in `dir` (created) and its log in `log`; returns once
    /// it listens.
    pub fn start(name: String, role: Role, dir: PathBuf, args: Vec<String>, log: PathBuf) -> Node {
        Node::launch(name, role, dir, args, log).finish()
    }

    /// Start the process; [`PendingNode::finish`] waits for it to listen (so that several start at once).
    pub fn launch(
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
        freeze(self.pid().expect("node is running"));
    }

    /// Resume a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid().expect("node is running"), Signal::CONT);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (not exited, not killed).
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

    /// SIGTERM and wait for the exit (panics after `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        signal(c.id(), Signal::TERM);
        wait_exit(&mut c, &format!("{} after SIGTERM", self.name), timeout)
    }

    /// Wait for the process to exit on its own (e.g. at a fail point); panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        wait_exit(&mut c, &self.name, timeout)
    }

    /// Start the node again on the same address with the same data dir and flags.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// [`Node::restart`] with `extra` flags after its own, for this run only (e.g. a hidden `--fail-point`).
    pub fn restart_with(&mut self, extra: &[String]) {
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
        if let (Some(s3), Some(i)) = (self.s3, args.iter().position(|a| a == "--s3-listen")) {
            args[i + 1] = s3.to_string();
        }
        args.extend(extra.iter().cloned());
        // The old socket may linger briefly; retry the bind for a while.
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match launch(self.role, &listen, &args, &self.log)
                .wait_all(self.internal.is_some(), self.s3.is_some())
            {
                Ok((child, addr, internal, s3)) => {
                    assert_eq!(addr, self.addr);
                    assert_eq!(internal, self.internal);
                    assert_eq!(s3, self.s3);
                    self.child = Some(child);
                    return;
                }
                Err(e) if e.contains("in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restarting {}: {e}", self.name),
            }
        }
    }

    /// Wait until `GET /health` answers 2xx (a storage node prints `listening on` before it opens and replays
    /// its store); panics after `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let url = format!("{}/health", self.url());
        let client = crate::client();
        crate::eventually(
            timeout,
            &format!("{} to answer {url}", self.name),
            || async {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }

    /// The last `n` lines of this node's log (every run of it).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Node {
    /// A node never outlives its test: kill -9 (a [`crate::Cluster`] prints the logs first when a test fails).
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A node whose process started but whose address is not known yet.
pub struct PendingNode {
    name: String,
    role: Role,
    dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    launch: Launch,
}

impl PendingNode {
    /// Wait until it listens; panics with its log if it does not.
    pub fn finish(self) -> Node {
        let internal = self.args.iter().any(|a| a == "--internal-listen");
        let s3 = self.args.iter().any(|a| a == "--s3-listen");
        let (child, addr, internal, s3) = self
            .launch
            .wait_all(internal, s3)
            .unwrap_or_else(|e| panic!("{e}"));
        Node {
            name: self.name,
            role: self.role,
            addr,
            internal,
            s3,
            dir: self.dir,
            args: self.args,
            log: self.log,
            child: Some(child),
        }
    }
}
