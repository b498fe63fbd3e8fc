//! Network partitions for process-level tests: one Linux network namespace per server, each joined by a veth
//! pair to a hub namespace that routes between them, plus a link from the hub to the test process (root
//! namespace), which is never cut. [`Net::cut`] drops every packet between two servers in both directions in
//! the hub (`ip rule ... blackhole`: silently, like a dead switch port, so connections time out instead of
//! being refused) and [`Net::heal`] lets them through again. Servers start inside their namespace with
//! [`Net::spawn`] (again after a kill with [`Net::restart`]; [`NetNode::freeze`] / [`NetNode::thaw`] stop and resume
//! one) and are killed when their [`NetNode`] is dropped; the namespaces (and with them every veth)
//! are deleted when the [`Net`] is dropped, even when the test panics. Namespaces left by a test process that
//! died without unwinding (kill -9) are deleted by the next [`Net::new`].
//!
//! Needs root and iproute2 (`ip netns`); [`Net::check`] says why it cannot run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use fdfs_common::sys::{self, Signal};

use crate::node::{launch_with, signal, tail, Role};

/// Namespace names start with this, then `<pid>-<n>-`.
const PREFIX: &str = "fdfsnet-";

/// Run `ip <args>`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip <args>`, panicking on failure.
fn ip_ok(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The output of `ip <args>` (empty on failure).
fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Delete the namespaces of test processes that are gone (they died without running their `Drop`).
fn remove_stale() {
    for line in ip_out(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Whether a test needing namespaces can run here; panics (saying how to skip) when it cannot, unless
/// `FDFS_SKIP_NETNS_TESTS` is set (then the skip is printed and `false` returned).
pub fn netns_or_skip(test: &str) -> bool {
    match Net::check() {
        Ok(()) => true,
        Err(why) if std::env::var_os("FDFS_SKIP_NETNS_TESTS").is_some() => {
            eprintln!("SKIPPED {test}: {why} (FDFS_SKIP_NETNS_TESTS is set)");
            false
        }
        Err(why) => panic!(
            "{test} needs network namespaces: {why}. Run the tests as root with iproute2 installed, or set \
             FDFS_SKIP_NETNS_TESTS=1 to skip the partition tests on purpose."
        ),
    }
}

/// A set of network namespaces: one per named host, a hub routing between them, a link to the test process.
#[derive(Debug)]
pub struct Net {
    /// `fdfsnet-<pid>-<n>-`: every namespace name starts with it.
    prefix: String,
    /// Second octet of every address: host `i` is `10.<subnet>.<i+1>.2`, the test process `10.<subnet>.0.2`.
    subnet: u8,
    hosts: Vec<String>,
}

impl Net {
    /// Why partition tests cannot run here (not root, no `ip netns`), if they cannot.
    pub fn check() -> Result<(), String> {
        if !sys::is_root() {
            return Err("network namespaces need root".into());
        }
        ip(&["netns", "list"]).map_err(|e| format!("iproute2 `ip netns` does not work: {e}"))
    }

    /// Create a namespace per host (named as given), the hub, and the test process's link to the hub.
    pub fn new(hosts: &[&str]) -> Net {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // One allocation at a time: parallel tests of one process pick distinct subnets.
        static ALLOC: Mutex<()> = Mutex::new(());
        let _guard = ALLOC.lock().unwrap_or_else(|p| p.into_inner());
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}-", std::process::id());
        // A subnet no route of the root namespace uses yet (another test process may hold one).
        let routes = ip_out(&["-4", "route", "show"]);
        let subnet = (0..200u32)
            .map(|k| (20 + (std::process::id() + n + k) % 200) as u8)
            .find(|s| !routes.contains(&format!("10.{s}.")))
            .expect("a free 10.x.0.0/16 subnet");
        let net = Net {
            prefix,
            subnet,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        };
        net.build();
        net
    }

    fn build(&self) {
        let hub = self.ns_name("hub");
        ip_ok(&["netns", "add", &hub]);
        let forward = Command::new("ip")
            .args([
                "netns",
                "exec",
                &hub,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .expect("running sysctl in the hub");
        assert!(forward.success(), "enabling forwarding in {hub}");
        for (i, host) in self.hosts.iter().enumerate() {
            let ns = self.ns_name(host);
            let link = format!("h{}", i + 1);
            let (inner, outer) = (self.ip_at(i + 1, 2), self.ip_at(i + 1, 1));
            ip_ok(&["netns", "add", &ns]);
            ip_ok(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &link,
                "netns", &hub,
            ]);
            ip_ok(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{inner}/24"),
                "dev",
                "eth0",
            ]);
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            ip_ok(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &outer.to_string(),
            ]);
            ip_ok(&[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{outer}/24"),
                "dev",
                &link,
            ]);
            ip_ok(&["-n", &hub, "link", "set", &link, "up"]);
        }
        // The test process's side lives in the root namespace: a name unique there (at most 15 bytes).
        let root_link = self.root_link();
        let (mine, theirs) = (self.ip_at(0, 2), self.ip_at(0, 1));
        ip_ok(&[
            "link", "add", &root_link, "type", "veth", "peer", "name", "h0", "netns", &hub,
        ]);
        ip_ok(&["addr", "add", &format!("{mine}/24"), "dev", &root_link]);
        ip_ok(&["link", "set", &root_link, "up"]);
        ip_ok(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{theirs}/24"),
            "dev",
            "h0",
        ]);
        ip_ok(&["-n", &hub, "link", "set", "h0", "up"]);
        ip_ok(&[
            "route",
            "add",
            &format!("10.{}.0.0/16", self.subnet),
            "via",
            &theirs.to_string(),
        ]);
    }

    fn ns_name(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn root_link(&self) -> String {
        format!("fnet{}", self.subnet)
    }

    fn ip_at(&self, link: usize, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            self.subnet,
            u8::try_from(link).expect("few hosts"),
            last,
        )
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host} in {:?}", self.hosts))
    }

    /// The address of `host`.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        self.ip_at(self.index(host) + 1, 2)
    }

    /// The namespace of `host` (for `ip netns exec`).
    pub fn namespace(&self, host: &str) -> String {
        self.ns_name(&self.hosts[self.index(host)])
    }

    fn rules(&self, a: &str, b: &str, verb: &str) -> Result<(), String> {
        let hub = self.ns_name("hub");
        let (a, b) = (self.ip(a).to_string(), self.ip(b).to_string());
        for (from, to) in [(&a, &b), (&b, &a)] {
            ip(&[
                "-n",
                &hub,
                "rule",
                verb,
                "from",
                from,
                "to",
                to,
                "blackhole",
            ])?;
        }
        Ok(())
    }

    /// Drop every packet between `a` and `b`, both ways (open connections hang, new ones time out).
    pub fn cut(&self, a: &str, b: &str) {
        self.rules(a, b, "add").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Let packets between `a` and `b` through again.
    pub fn heal(&self, a: &str, b: &str) {
        self.rules(a, b, "del").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Make `cmd` run inside `host`'s namespace (it enters the namespace between fork and exec).
    pub fn enter(&self, host: &str, cmd: &mut Command) {
        let path = format!("/run/netns/{}", self.namespace(host));
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        sys::in_net_namespace(cmd, ns);
    }

    /// Start `fdfs <role> --listen <host's address>:<port> <args>` inside `host`'s namespace, its stderr in
    /// `log`; returns once it prints `listening on`. Call it from the test's thread: the child dies with the
    /// thread that started it.
    pub fn spawn(
        &self,
        host: &str,
        role: Role,
        port: u16,
        args: &[String],
        dir: &Path,
        log: &Path,
    ) -> NetNode {
        std::fs::create_dir_all(dir).expect("create node dir");
        let listen = format!("{}:{port}", self.ip(host));
        let (child, addr) = launch_with(role, &listen, args, log, |cmd| self.enter(host, cmd))
            .wait()
            .unwrap_or_else(|e| panic!("in {host}: {e}"));
        NetNode {
            name: host.to_owned(),
            role,
            addr,
            dir: dir.to_owned(),
            args: args.to_vec(),
            log: log.to_owned(),
            child: Some(child),
        }
    }

    /// Start `node` again in its namespace, on the same address with the same flags and data dir (after a
    /// [`NetNode::kill9`]); while the old socket lingers the bind is retried for up to 10 s. Call it from a
    /// thread that outlives the node (a test thread or a runtime worker, not `spawn_blocking`).
    pub fn restart(&self, node: &mut NetNode) {
        assert!(node.child.is_none(), "{} is still running", node.name);
        let listen = node.addr.to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let launched = launch_with(node.role, &listen, &node.args, &node.log, |cmd| {
                self.enter(&node.name, cmd);
            })
            .wait();
            match launched {
                Ok((child, addr)) => {
                    assert_eq!(addr, node.addr, "{} came back elsewhere", node.name);
                    node.child = Some(child);
                    return;
                }
                Err(e) if e.contains("in use") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("restarting {} in its namespace: {e}", node.name),
            }
        }
    }

    /// Cut `host` off from every other host of the set (the test process still reaches it).
    pub fn isolate(&self, host: &str) {
        for other in self.hosts.iter().filter(|h| *h != host) {
            self.cut(host, other);
        }
    }

    /// Undo [`Net::isolate`].
    pub fn rejoin(&self, host: &str) {
        for other in self.hosts.iter().filter(|h| *h != host) {
            self.heal(host, other);
        }
    }
}

impl Drop for Net {
    /// Delete every namespace (their veths go with them, the test process's link included).
    fn drop(&mut self) {
        for host in self.hosts.iter().map(String::as_str).chain(["hub"]) {
            let ns = self.ns_name(host);
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

/// A server process inside a namespace; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NetNode {
    /// The host (namespace) it runs in.
    pub name: String,
    /// Which server it is.
    pub role: Role,
    /// Address it listens on: the host's address in the namespace, port as bound.
    pub addr: SocketAddr,
    /// Its data directory.
    pub dir: PathBuf,
    /// Flags other than `--listen` (a restart passes them again).
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NetNode {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// SIGKILL the process and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freeze the process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        crate::node::freeze(self.pid().expect("node is running"));
    }

    /// Resume a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid().expect("node is running"), Signal::CONT);
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
