//! `fdfs up`: a whole local cluster on loopback, as child processes of this same executable
//! (`fdfs tracker|storage|gateway ...`). Trackers start first, then the storage nodes (group1..groupN, each with
//! its own store path under the data dir), then the gateway; each child's `listening on ADDR` stdout line gives
//! its address. Ready when the gateway's `/cluster` shows every member active. ctrl-c / SIGTERM stops the
//! children in reverse order (SIGTERM, then SIGKILL after a grace period). A child that dies is restarted on
//! the same address with backoff (1 s, doubling up to 30 s; back to 1 s once it has run for a minute), each
//! restart logged, unless `--no-restart`.
//!
//! The cluster secret (`--cluster-secret`, else `FDFS_CLUSTER_SECRET`, else the one kept in
//! `<data>/cluster-secret`, else a new one written there with mode 0600) reaches every child through its
//! environment; the layout prints the file's path, so a second gateway or `fdfs verify` can be given it.
//!
//! Children run in their own process group (so a terminal's ctrl-c reaches only us and the shutdown is
//! ordered) and, on Linux, get SIGTERM if this process dies.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use fdfs_common::sys;
use fdfs_common::wire::{ClusterView, MemberState};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{CliError, Result};

/// How long a child may take to print its `listening on` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// First wait before restarting a child that died; doubled per quick death up to [`RESTART_MAX`].
const RESTART_MIN: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long before dying is restarted after [`RESTART_MIN`] again.
const RESTART_RESET: Duration = Duration::from_secs(60);
/// Name of the file in the data dir that keeps the cluster secret.
pub const SECRET_FILE: &str = "cluster-secret";

/// `fdfs up` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory for all node data and logs (created if missing).
    #[arg(long, default_value = "./fdfs-data", value_name = "DIR")]
    pub data: PathBuf,
    /// Number of storage groups (group1, group2, ...).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub groups: u16,
    /// Storage nodes per group (replicas of each file).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub members: u16,
    /// Base port: gateway on PORT, trackers on PORT+1.., storage nodes on PORT+10..; 0 picks free ports.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub port: u16,
    /// Number of trackers (storage nodes heartbeat to all of them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub trackers: u16,
    /// Seconds to wait for the whole cluster to become ready.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub timeout: u64,
    /// Space every store path keeps free (the trackers' `reserved_storage_space`). A local cluster shares one
    /// disk with everything else on the machine, so the production default (10% of the disk) would refuse
    /// uploads on a dev machine whose disk is merely busy; this keeps a fixed margin instead.
    #[arg(long, default_value = "512MiB", value_name = "SIZE")]
    pub reserved_storage_space: String,
    /// Also speak the FastDFS protocol: the (first) tracker on PORT (FastDFS's is 22122; 0 picks a free one),
    /// other trackers and every storage node on free ports, all printed in the layout.
    #[arg(long, value_name = "PORT")]
    pub fastdfs_port: Option<u16>,
    /// API key the gateway asks of uploads, deletes and metadata changes (`x-api-key`); none: open.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Cluster secret of the internal routes (default: `FDFS_CLUSTER_SECRET`, else the one kept in
    /// `<data>/cluster-secret`, else a new one written there, mode 0600).
    #[arg(long, value_name = "SECRET")]
    pub cluster_secret: Option<String>,
    /// Thumbnail sizes the storage nodes render on first read, e.g. `150x150,300x300,100x100c` (default: the
    /// nodes' own, 150x150,300x300,600x600).
    #[arg(long, value_name = "SIZES")]
    pub thumbnail_sizes: Option<String>,
    /// Leave a server that dies dead (default: restart it with backoff).
    #[arg(long)]
    pub no_restart: bool,
    /// Open the gateway's S3-compatible door on this port (0 picks a free one); its namespace lives in
    /// `<data>/s3`.
    #[arg(long, value_name = "PORT")]
    pub s3_port: Option<u16>,
    /// Keep the S3 door's namespace in this PostgreSQL database (`postgres://user:password@host:port/db`)
    /// instead of `<data>/s3`: other gateways given the same URL share it.
    #[arg(long, value_name = "URL", requires = "s3_port")]
    pub s3_postgres: Option<String>,
    /// Access key of the S3 door (default: the one kept in `<data>/s3-keys`, else a new pair written there).
    #[arg(long, value_name = "KEY", requires = "s3_secret_key")]
    pub s3_access_key: Option<String>,
    /// Secret key of the S3 door, with --s3-access-key.
    #[arg(long, value_name = "SECRET", requires = "s3_access_key")]
    pub s3_secret_key: Option<String>,
}

/// The S3 door `fdfs up` opens: its address and key pair.
#[derive(Debug, Clone)]
struct S3Door {
    addr: SocketAddr,
    access_key: String,
    secret_key: String,
}

/// Name of the file in the data dir that keeps the S3 door's generated key pair.
pub const S3_KEYS_FILE: &str = "s3-keys";

/// The S3 door's address and keys: from the flags, else kept in `<data>/s3-keys`, else generated there.
fn s3_door(a: &Args) -> Result<Option<S3Door>> {
    let Some(port) = a.s3_port else {
        return Ok(None);
    };
    // Port 0: the gateway binds a free one and prints it (`s3 listening on`); `run` takes it from there.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let (Some(k), Some(s)) = (&a.s3_access_key, &a.s3_secret_key) {
        return Ok(Some(S3Door {
            addr,
            access_key: k.clone(),
            secret_key: s.clone(),
        }));
    }
    let path = a.data.join(S3_KEYS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut lines = text.lines().map(str::trim);
            if let (Some(k), Some(s)) = (lines.next(), lines.next()) {
                if !k.is_empty() && !s.is_empty() {
                    return Ok(Some(S3Door {
                        addr,
                        access_key: k.to_owned(),
                        secret_key: s.to_owned(),
                    }));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CliError::io(&path, e)),
    }
    use rand::distr::{Alphanumeric, SampleString as _};
    let access_key = format!(
        "FDFS{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 16)
            .to_ascii_uppercase()
    );
    let secret_key = Alphanumeric.sample_string(&mut rand::rng(), 40);
    write_private(&path, &format!("{access_key}\n{secret_key}\n"))?;
    Ok(Some(S3Door {
        addr,
        access_key,
        secret_key,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Tracker,
    Storage,
    Gateway,
}

/// One child server.
#[derive(Debug)]
struct Proc {
    name: String,
    role: Role,
    /// Storage nodes: group name and store path.
    group: Option<String>,
    data: Option<PathBuf>,
    addr: SocketAddr,
    log: PathBuf,
    child: tokio::process::Child,
    exited: Option<ExitStatus>,
    /// Address of its FastDFS protocol listener (`--fastdfs-port`).
    fastdfs: Option<SocketAddr>,
    /// The gateway's S3 door (`--s3-port`).
    s3: Option<SocketAddr>,
    /// Its command-line arguments, with the listen addresses it got (a restart keeps them).
    args: Vec<OsString>,
    /// When it was (re)started, how many times it was restarted, when the next restart is due.
    started: Instant,
    restarts: u32,
    restart_at: Option<Instant>,
    /// The wait before its last restart (zero before the first).
    backoff: Duration,
}

impl Proc {
    /// A child [`spawn`] just started with `args`, which are kept with the addresses it bound (a restart binds
    /// them again).
    fn started(
        name: String,
        role: Role,
        group: Option<String>,
        data: Option<PathBuf>,
        args: Vec<OsString>,
        (child, bound, log): (tokio::process::Child, Bound, PathBuf),
    ) -> Proc {
        Proc {
            name,
            role,
            group,
            data,
            addr: bound.addr,
            log,
            child,
            exited: None,
            fastdfs: bound.fastdfs,
            s3: bound.s3,
            args: pinned(args, bound),
            started: Instant::now(),
            restarts: 0,
            restart_at: None,
            backoff: Duration::ZERO,
        }
    }
}

/// Replace the value after `flag` (its bound address, so a restart keeps it).
fn pin_addr(args: &mut [OsString], flag: &str, addr: SocketAddr) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        if let Some(v) = args.get_mut(i + 1) {
            *v = addr.to_string().into();
        }
    }
}

/// Port for the n-th process of a role (all 0 when the base is 0).
fn port_for(base: u16, offset: u32) -> Result<u16> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(u32::from(base) + offset).map_err(|_| {
        CliError::Usage(format!(
            "--port {base} leaves no room for {offset} more ports"
        ))
    })
}

/// Last lines of a child's log, for error reports.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut tail: VecDeque<&str> = VecDeque::new();
    for l in text.lines() {
        if tail.len() == lines {
            tail.pop_front();
        }
        tail.push_back(l);
    }
    tail.into_iter().map(|l| format!("    | {l}\n")).collect()
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// The addresses a child bound, from its stdout lines.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// `listening on ADDR`: its HTTP listener.
    addr: SocketAddr,
    /// `fastdfs listening on ADDR`, when it runs with `--fastdfs-listen`.
    fastdfs: Option<SocketAddr>,
    /// `s3 listening on ADDR`, the gateway's S3 door, when it runs with `--s3-listen`.
    s3: Option<SocketAddr>,
}

/// Start one child and wait for its `listening on ADDR` line (and those of the other listeners its flags open).
async fn spawn(
    exe: &Path,
    name: &str,
    role: Role,
    args: &[OsString],
    logs: &Path,
    secret: &str,
) -> Result<(tokio::process::Child, Bound, PathBuf)> {
    let want_fastdfs = args.iter().any(|a| a == "--fastdfs-listen");
    let want_s3 = args.iter().any(|a| a == "--s3-listen");
    let log = logs.join(format!("{name}.log"));
    // Appended to: a restarted child's log keeps what its previous run said before it died.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| CliError::io(&log, e))?;
    let sub = match role {
        Role::Tracker => "tracker",
        Role::Storage => "storage",
        Role::Gateway => "gateway",
    };
    let mut std_cmd = std::process::Command::new(exe);
    std_cmd
        .arg(sub)
        .args(args)
        .env_remove("FDFS_CONFIG")
        .env("FDFS_CLUSTER_SECRET", secret)
        // Logs go to files: no colour codes.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .process_group(0);
    sys::die_with_parent(&mut std_cmd, sys::Signal::TERM);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::Up(format!("cannot start {name} ({}): {e}", exe.display())))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    let (mut http, mut fastdfs, mut s3) = (None, None, None);
    let bound = loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                return Err(CliError::Up(format!(
                    "{name} did not report `listening on` within {}s; log {}:\n{}",
                    LISTEN_TIMEOUT.as_secs(),
                    log.display(),
                    log_tail(&log, 20)
                )))
            }
            Ok(Ok(Some(line))) => {
                let line = line.trim();
                let parse = |a: &str| {
                    a.trim().parse::<SocketAddr>().map_err(|_| {
                        CliError::Up(format!("{name} printed a bad address: {line:?}"))
                    })
                };
                if let Some(a) = line.strip_prefix("listening on ") {
                    http = Some(parse(a)?);
                } else if let Some(a) = line.strip_prefix("fastdfs listening on ") {
                    fastdfs = Some(parse(a)?);
                } else if let Some(a) = line.strip_prefix("s3 listening on ") {
                    s3 = Some(parse(a)?);
                }
                if let Some(addr) = http {
                    if fastdfs.is_some() == want_fastdfs && s3.is_some() == want_s3 {
                        break Bound { addr, fastdfs, s3 };
                    }
                }
            }
            Ok(Ok(None) | Err(_)) => {
                let status = child.wait().await.ok().map(describe).unwrap_or_default();
                return Err(CliError::Up(format!(
                    "{name} exited ({status}) before listening; log {}:\n{}",
                    log.display(),
                    log_tail(&log, 20)
                )));
            }
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, bound, log))
}

fn arg(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// `args` with the addresses the child bound instead of port 0.
fn pinned(mut args: Vec<OsString>, bound: Bound) -> Vec<OsString> {
    pin_addr(&mut args, "--listen", bound.addr);
    if let Some(f) = bound.fastdfs {
        pin_addr(&mut args, "--fastdfs-listen", f);
    }
    if let Some(d) = bound.s3 {
        pin_addr(&mut args, "--s3-listen", d);
    }
    args
}

/// Start every child (pushed onto `procs` as they come up).
async fn start(a: &Args, procs: &mut Vec<Proc>, secret: &str, s3: Option<&S3Door>) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Up(format!("cannot find my own executable: {e}")))?;
    let logs = a.data.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| CliError::io(&logs, e))?;

    for t in 1..=a.trackers {
        let name = format!("tracker-{t}");
        let port = port_for(a.port, u32::from(t))?;
        let mut args = vec![
            arg("--listen"),
            arg(format!("127.0.0.1:{port}")),
            arg("--reserved-storage-space"),
            arg(&a.reserved_storage_space),
            // The tracker remembers its members, so a wiped member waits for its group after a restart.
            arg("--data-dir"),
            arg(a.data.join(&name)),
        ];
        if let Some(p) = a.fastdfs_port {
            let p = if t == 1 { p } else { 0 };
            args.extend([arg("--fastdfs-listen"), arg(format!("127.0.0.1:{p}"))]);
        }
        let spawned = spawn(&exe, &name, Role::Tracker, &args, &logs, secret).await?;
        procs.push(Proc::started(
            name,
            Role::Tracker,
            None,
            None,
            args,
            spawned,
        ));
    }
    let trackers: Vec<String> = procs.iter().map(|p| p.addr.to_string()).collect();
    let trackers = trackers.join(",");

    for g in 1..=a.groups {
        for m in 1..=a.members {
            let name = format!("storage-g{g}-m{m}");
            let offset = 10 + u32::from(g - 1) * u32::from(a.members) + u32::from(m - 1);
            let port = port_for(a.port, offset)?;
            let dir = a.data.join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| CliError::io(&dir, e))?;
            let group = format!("group{g}");
            let mut args = vec![
                arg("--listen"),
                arg(format!("127.0.0.1:{port}")),
                arg("--group"),
                arg(&group),
                arg("--tracker"),
                arg(&trackers),
                arg("--store-path"),
                arg(&dir),
            ];
            if port != 0 {
                args.extend([arg("--public-url"), arg(format!("http://127.0.0.1:{port}"))]);
            }
            if a.fastdfs_port.is_some() {
                args.extend([arg("--fastdfs-listen"), arg("127.0.0.1:0")]);
            }
            if let Some(sizes) = &a.thumbnail_sizes {
                args.extend([arg("--thumbnail-sizes"), arg(sizes)]);
            }
            let spawned = spawn(&exe, &name, Role::Storage, &args, &logs, secret).await?;
            procs.push(Proc::started(
                name,
                Role::Storage,
                Some(group),
                Some(dir),
                args,
                spawned,
            ));
        }
    }

    let port = port_for(a.port, 0)?;
    let mut args = vec![
        arg("--listen"),
        arg(format!("127.0.0.1:{port}")),
        arg("--tracker"),
        arg(&trackers),
    ];
    if let Some(key) = &a.api_key {
        args.extend([arg("--api-key"), arg(key)]);
    }
    if let Some(door) = s3 {
        args.extend([arg("--s3-listen"), arg(door.addr.to_string())]);
        match &a.s3_postgres {
            Some(url) => args.extend([arg("--s3-postgres"), arg(url)]),
            None => args.extend([arg("--s3-data-dir"), arg(a.data.join("s3"))]),
        }
        args.extend([
            arg("--s3-access-key"),
            arg(&door.access_key),
            arg("--s3-secret-key"),
            arg(&door.secret_key),
        ]);
    }
    let spawned = spawn(&exe, "gateway", Role::Gateway, &args, &logs, secret).await?;
    procs.push(Proc::started(
        "gateway".into(),
        Role::Gateway,
        None,
        None,
        args,
        spawned,
    ));
    Ok(())
}

/// Count of storage members the view shows active in the expected groups.
fn active_members(view: &ClusterView, procs: &[Proc]) -> usize {
    procs
        .iter()
        .filter(|p| p.role == Role::Storage)
        .filter(|p| {
            view.groups.iter().any(|g| {
                Some(g.name.as_str()) == p.group.as_deref()
                    && g.members
                        .iter()
                        .any(|m| m.state == MemberState::Active && addr_matches(&m.addr, p.addr))
            })
        })
        .count()
}

fn addr_matches(reported: &str, addr: SocketAddr) -> bool {
    reported
        .parse::<SocketAddr>()
        .is_ok_and(|r| r.port() == addr.port())
        || reported.ends_with(&format!(":{}", addr.port()))
}

/// Fail if any child has exited.
fn check_alive(procs: &mut [Proc]) -> Result<()> {
    for p in procs.iter_mut() {
        if let Ok(Some(st)) = p.child.try_wait() {
            p.exited = Some(st);
            return Err(CliError::Up(format!(
                "{} exited ({}) during start-up; log {}:\n{}",
                p.name,
                describe(st),
                p.log.display(),
                log_tail(&p.log, 20)
            )));
        }
    }
    Ok(())
}

/// Poll the gateway's `/cluster` until every storage member is active.
async fn wait_ready(client: &Client, procs: &mut [Proc], timeout: Duration) -> Result<ClusterView> {
    let want = procs.iter().filter(|p| p.role == Role::Storage).count();
    let deadline = Instant::now() + timeout;
    let mut last_report = usize::MAX;
    let mut last_err = String::new();
    loop {
        check_alive(procs)?;
        match client.cluster().await {
            Ok(view) => {
                let n = active_members(&view, procs);
                if n == want {
                    return Ok(view);
                }
                if n != last_report {
                    eprintln!("fdfs up: {n}/{want} storage nodes active");
                    last_report = n;
                }
            }
            Err(e) => last_err = e.to_string(),
        }
        if Instant::now() >= deadline {
            let why = if last_err.is_empty() {
                String::new()
            } else {
                format!(" (last error: {last_err})")
            };
            return Err(CliError::Up(format!(
                "cluster not ready after {}s: {last_report}/{want} storage nodes active{why}; logs in {}",
                timeout.as_secs(),
                procs.first().map_or_else(String::new, |p| p
                    .log
                    .parent()
                    .map_or_else(String::new, |d| d.display().to_string()))
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stop the children: gateway, then storage nodes, then trackers; SIGTERM, wait, SIGKILL after the grace.
async fn stop(procs: &mut [Proc]) {
    for role in [Role::Gateway, Role::Storage, Role::Tracker] {
        let tier: Vec<&mut Proc> = procs
            .iter_mut()
            .filter(|p| p.role == role && p.exited.is_none())
            .collect();
        for p in &tier {
            if let Some(pid) = p.child.id() {
                let _ = sys::kill(pid, sys::Signal::TERM);
            }
        }
        let waits = tier.into_iter().map(|p| async move {
            let status = match tokio::time::timeout(STOP_GRACE, p.child.wait()).await {
                Ok(Ok(st)) => Some(st),
                _ => {
                    eprintln!(
                        "fdfs up: {} did not stop within {}s, killing it",
                        p.name,
                        STOP_GRACE.as_secs()
                    );
                    let _ = p.child.start_kill();
                    p.child.wait().await.ok()
                }
            };
            if let Some(st) = status {
                if !st.success() {
                    eprintln!("fdfs up: {} stopped with {}", p.name, describe(st));
                }
                p.exited = Some(st);
            }
        });
        futures_util::future::join_all(waits).await;
    }
}

/// `  fastdfs ADDR` for a process with a FastDFS listener (`--fastdfs-port`), else nothing.
fn fastdfs_column(p: &Proc) -> String {
    p.fastdfs
        .map_or_else(String::new, |a| format!("  fastdfs {a}"))
}

/// Where the cluster secret came from.
enum SecretSource {
    Flag,
    Env,
    /// Read from, or generated into, this file.
    File(PathBuf, bool),
}

/// The cluster secret: `--cluster-secret`, `FDFS_CLUSTER_SECRET`, `<data>/cluster-secret`, or a new one written
/// there (mode 0600, readable by the operator only).
fn resolve_secret(a: &Args) -> Result<(String, SecretSource)> {
    if let Some(s) = a.cluster_secret.as_ref().filter(|s| !s.is_empty()) {
        return Ok((s.clone(), SecretSource::Flag));
    }
    if let Some(s) = std::env::var("FDFS_CLUSTER_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return Ok((s, SecretSource::Env));
    }
    let path = a.data.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => {
            return Ok((s.trim().to_owned(), SecretSource::File(path, false)))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CliError::io(&path, e)),
    }
    let secret = format!("{:032x}", rand::random::<u128>());
    write_private(&path, &format!("{secret}\n"))?;
    Ok((secret, SecretSource::File(path, true)))
}

/// Write `text` to `path`, readable by its owner only (mode 0600).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| CliError::io(path, e))
}

fn print_layout(
    a: &Args,
    gateway: &str,
    procs: &[Proc],
    view: &ClusterView,
    secret: &SecretSource,
    s3: Option<&S3Door>,
) {
    let mut s = format!(
        "fdfs cluster is up: {} group(s) x {} member(s), {} tracker(s); data in {}\n\n",
        a.groups,
        a.members,
        a.trackers,
        a.data.display()
    );
    s.push_str(&format!("  gateway   {gateway}\n"));
    if let Some(door) = s3 {
        s.push_str(&format!(
            "  s3        http://{}  (path-style; access key {}, secret key {}; keys in {})\n",
            door.addr,
            door.access_key,
            door.secret_key,
            a.data.join(S3_KEYS_FILE).display()
        ));
    }
    for p in procs.iter().filter(|p| p.role == Role::Tracker) {
        s.push_str(&format!("  tracker   {}{}\n", p.addr, fastdfs_column(p)));
    }
    let mut last_group = None;
    for p in procs.iter().filter(|p| p.role == Role::Storage) {
        let node = view
            .groups
            .iter()
            .flat_map(|g| &g.members)
            .find(|m| addr_matches(&m.addr, p.addr))
            .map_or_else(String::new, |m| format!("node {:<10}", m.node_id));
        let label = if last_group == p.group.as_ref() {
            String::new()
        } else {
            p.group.clone().unwrap_or_default()
        };
        last_group = p.group.as_ref();
        s.push_str(&format!(
            "  {label:<9} http://{}  {node}  {}{}\n",
            p.addr,
            p.data
                .as_deref()
                .map_or_else(String::new, |d| d.display().to_string()),
            fastdfs_column(p)
        ));
    }
    s.push_str(&match secret {
        SecretSource::Flag => "  secret    from --cluster-secret\n".to_owned(),
        SecretSource::Env => "  secret    from FDFS_CLUSTER_SECRET\n".to_owned(),
        SecretSource::File(p, generated) => format!(
            "  secret    {} ({}, mode 0600; FDFS_CLUSTER_SECRET=$(cat {}) for another server or fdfs verify)\n",
            p.display(),
            if *generated { "generated" } else { "kept" },
            p.display()
        ),
    });
    if a.api_key.is_some() {
        s.push_str("  api key   required on uploads, deletes and metadata changes (x-api-key)\n");
    }
    let exe = std::env::current_exe().map_or_else(|_| "fdfs".into(), |p| p.display().to_string());
    s.push_str(&format!(
        "  logs      {}\n\nTry:\n  curl -F file=@photo.jpg {gateway}/upload\n  curl -T notes.txt {gateway}/upload/notes.txt\n  {exe} --gateway {gateway} monitor\n\nctrl-c stops the cluster.\n",
        a.data.join("logs").display()
    ));
    print!("{s}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

/// Notice a child that died, and restart it when its backoff has passed (`restart` false: report only).
async fn supervise(p: &mut Proc, restart: bool, exe: &Path, logs: &Path, secret: &str) {
    let now = Instant::now();
    if p.exited.is_none() {
        let Ok(Some(st)) = p.child.try_wait() else {
            return;
        };
        p.exited = Some(st);
        if !restart {
            eprintln!(
                "fdfs up: {} ({}) died unexpectedly ({}); last log lines from {}:\n{}",
                p.name,
                p.addr,
                describe(st),
                p.log.display(),
                log_tail(&p.log, 10)
            );
            return;
        }
        p.backoff = if p.backoff.is_zero() || p.started.elapsed() >= RESTART_RESET {
            RESTART_MIN
        } else {
            (p.backoff * 2).min(RESTART_MAX)
        };
        p.restart_at = Some(now + p.backoff);
        eprintln!(
            "fdfs up: {} ({}) died ({}); restarting it in {}s; last log lines from {}:\n{}",
            p.name,
            p.addr,
            describe(st),
            p.backoff.as_secs(),
            p.log.display(),
            log_tail(&p.log, 10)
        );
        return;
    }
    if p.restart_at.is_none_or(|t| t > now) {
        return;
    }
    match spawn(exe, &p.name, p.role, &p.args, logs, secret).await {
        Ok((child, Bound { addr, .. }, _)) => {
            p.child = child;
            p.exited = None;
            p.restart_at = None;
            p.started = Instant::now();
            p.restarts += 1;
            eprintln!(
                "fdfs up: {} restarted on {addr} (restart {})",
                p.name, p.restarts
            );
        }
        Err(e) => {
            p.backoff = (p.backoff * 2).min(RESTART_MAX);
            p.restart_at = Some(Instant::now() + p.backoff);
            eprintln!(
                "fdfs up: restarting {} failed, trying again in {}s: {e}",
                p.name,
                p.backoff.as_secs()
            );
        }
    }
}

/// Run the local cluster until ctrl-c / SIGTERM.
pub async fn run(a: Args) -> Result<()> {
    std::fs::create_dir_all(&a.data).map_err(|e| CliError::io(&a.data, e))?;
    let (secret, secret_source) = resolve_secret(&a)?;
    let mut s3 = s3_door(&a)?;
    let mut procs: Vec<Proc> = Vec::new();
    let shutdown = fdfs_common::shutdown_signal();
    tokio::pin!(shutdown);

    let started = tokio::select! {
        r = async {
            start(&a, &mut procs, &secret, s3.as_ref()).await?;
            let gw = procs.last().map(|p| p.addr).expect("gateway started");
            if let (Some(door), Some(bound)) = (s3.as_mut(), procs.last().and_then(|p| p.s3)) {
                door.addr = bound;
            }
            let gateway = format!("http://{gw}");
            let client = Client::new(&gateway)?;
            let view = wait_ready(&client, &mut procs, Duration::from_secs(a.timeout)).await?;
            Ok::<_, CliError>((gateway, view))
        } => Some(r),
        () = &mut shutdown => None,
    };
    let (gateway, view) = match started {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            stop(&mut procs).await;
            return Err(e);
        }
        None => {
            eprintln!("fdfs up: interrupted during start-up, stopping");
            stop(&mut procs).await;
            return Ok(());
        }
    };
    print_layout(&a, &gateway, &procs, &view, &secret_source, s3.as_ref());

    let exe = std::env::current_exe()
        .map_err(|e| CliError::Up(format!("cannot find my own executable: {e}")))?;
    let logs = a.data.join("logs");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                for p in &mut procs {
                    supervise(p, !a.no_restart, &exe, &logs, &secret).await;
                }
                if procs.iter().all(|p| p.exited.is_some() && p.restart_at.is_none()) {
                    return Err(CliError::Up("every node has died".into()));
                }
            }
        }
    }
    eprintln!("fdfs up: stopping");
    stop(&mut procs).await;
    eprintln!("fdfs up: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(port_for(8080, 10).unwrap(), 8090);
        assert_eq!(port_for(0, 10).unwrap(), 0);
        assert!(port_for(65530, 10).is_err());
        assert!(addr_matches(
            "127.0.0.1:8090",
            "127.0.0.1:8090".parse().unwrap()
        ));
        assert!(!addr_matches(
            "127.0.0.1:8091",
            "127.0.0.1:8090".parse().unwrap()
        ));
    }
}
