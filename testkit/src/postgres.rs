//! A PostgreSQL server of a test's own ([`Postgres`]): Debian's binaries (`/usr/lib/postgresql/<ver>/bin`,
//! installed with apt-get when missing and the test runs as root), a cluster made by `initdb` in a temp dir, and
//! `postgres` on a free loopback port with its socket in that dir. As root the server runs as the `postgres`
//! user (it refuses root). A missing server is a failure, never a skip.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dirs::{tempdir, TestDir};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server, stopped (fast shutdown) when dropped.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: TestDir,
    port: u16,
    child: Option<Child>,
}

/// Debian's PostgreSQL server binaries, installed when missing (as root).
fn bindir() -> PathBuf {
    let found = || -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|b| b.join("postgres").exists())
            .collect();
        v.sort();
        v.pop()
    };
    if let Some(b) = found() {
        return b;
    }
    if rustix::process::geteuid().is_root() {
        let apt = |args: &[&str]| {
            let _ = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        };
        apt(&["update", "-qq"]);
        apt(&["install", "-y", "-qq", "postgresql"]);
    }
    found().expect("no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql")
}

/// `cmd` run as the `postgres` user when this process is root.
fn as_owner(program: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// A new cluster (user `fdfs`, trust authentication on loopback), started.
    pub fn start() -> Postgres {
        let bin = bindir();
        let dir = tempdir(0);
        if rustix::process::geteuid().is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the PostgreSQL dir to postgres");
        }
        let out = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "fdfs",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut pg = Postgres {
            bin,
            dir,
            port,
            child: None,
        };
        pg.restart();
        pg
    }

    /// Its URL (database `postgres`, user `fdfs`).
    pub fn url(&self) -> String {
        format!("postgres://fdfs@127.0.0.1:{}/postgres", self.port)
    }

    /// (Re)start the server on its port and data; returns once it accepts connections (after a SIGKILL the old
    /// server's backends may hold its shared memory a moment: tried again until the deadline).
    pub fn restart(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("postgres.log"))
                .expect("the PostgreSQL log");
            let mut child = as_owner(&self.bin.join("postgres"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start postgres");
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                if self.accepts() {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Whether the server answers `pg_isready`.
    fn accepts(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
    }

    /// SIGKILL the server (as a crash: no shutdown checkpoint; its backends notice and exit).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).expect("a pid"),
                rustix::process::Signal::INT,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
