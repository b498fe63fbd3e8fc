//! The nemesis's cluster: every server a process in its own network namespace ([`crate::netns`]), so that any
//! link can be cut: trackers `t1`, `t2`; storage members `g1m1`..`g2m3` (group `groupG`, member `m`); gateways
//! `gw1`, `gw2`. Every server listens on [`HTTP_PORT`] of its address; trackers and storage nodes also speak
//! FastDFS on [`DOOR_PORT`]. With power cuts on, member 3 of each group keeps its store on the power-cut
//! simulator's disk ([`crate::powercut::Disk`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fdfs_common::wire::{ClusterView, MemberState};

use crate::dirs::{tempdir, TestDir};
use crate::http::RequestExt;
use crate::netns::{Net, NetNode};
use crate::node::{args, Role};
use crate::powercut::Disk;

/// HTTP port of every server on its own address.
pub const HTTP_PORT: u16 = 8000;
/// FastDFS door port of trackers and storage nodes.
pub const DOOR_PORT: u16 = 9000;
/// Trackers.
pub const TRACKERS: [&str; 2] = ["t1", "t2"];
/// Gateways.
pub const GATEWAYS: [&str; 2] = ["gw1", "gw2"];
/// Groups and members per group.
pub const GROUPS: usize = 2;
/// Members per group (`write_quorum` is the default 2: one member may be lost at a time).
pub const MEMBERS: usize = 3;
/// A member is offline after this much silence.
const HEARTBEAT_TIMEOUT_MS: &str = "2000";
/// Deadline for the cluster to come up.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Host name of member `m` (1-based) of group `g` (1-based).
pub fn member(g: usize, m: usize) -> String {
    format!("g{g}m{m}")
}

/// Every storage host, group by group.
pub fn members() -> Vec<String> {
    (1..=GROUPS)
        .flat_map(|g| (1..=MEMBERS).map(move |m| member(g, m)))
        .collect()
}

/// The storage hosts of group `groupG` (by its name).
pub fn members_of(group: &str) -> Vec<String> {
    let g: usize = group
        .strip_prefix("group")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (1..=MEMBERS).map(|m| member(g, m)).collect()
}

/// The running cluster.
pub struct NsCluster {
    /// Host name -> its server process.
    pub nodes: BTreeMap<String, NetNode>,
    /// Host name -> its simulated disk (members with power cuts).
    pub disks: BTreeMap<String, Disk>,
    /// The namespaces (dropped after the processes: field order).
    pub net: Net,
    /// Every node's data and logs.
    pub dir: TestDir,
    /// No redirects, a bound on every request.
    pub http: reqwest::Client,
}

impl NsCluster {
    /// Start every server and wait until both trackers see every member active and both gateways are ready.
    pub async fn start(power_cuts: bool) -> NsCluster {
        let mut hosts: Vec<String> = TRACKERS.iter().map(|h| (*h).to_owned()).collect();
        hosts.extend(members());
        hosts.extend(GATEWAYS.iter().map(|h| (*h).to_owned()));
        let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let net = Net::new(&host_refs);
        let dir = tempdir(4 << 30);
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let trackers = TRACKERS
            .iter()
            .map(|t| format!("{}:{HTTP_PORT}", net.ip(t)))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        let mut disks = BTreeMap::new();
        let spawn = |net: &Net, host: &str, role: Role, a: Vec<String>| {
            net.spawn(
                host,
                role,
                HTTP_PORT,
                &a,
                &dir.path().join(host),
                &logs.join(format!("{host}.log")),
            )
        };
        for t in TRACKERS {
            let door = format!("{}:{DOOR_PORT}", net.ip(t));
            // With a data dir, as `fdfs up` and the compose file run them: a restarted tracker remembers its
            // members (a wiped member then waits for its group instead of seeding it).
            let data = dir.path().join(t);
            let a = args(&[
                "--data-dir",
                &data.display().to_string(),
                "--heartbeat-timeout-ms",
                HEARTBEAT_TIMEOUT_MS,
                "--fastdfs-listen",
                &door,
            ]);
            nodes.insert(t.to_owned(), spawn(&net, t, Role::Tracker, a));
        }
        for g in 1..=GROUPS {
            for m in 1..=MEMBERS {
                let host = member(g, m);
                let store = dir.path().join(&host);
                std::fs::create_dir_all(&store).expect("store dir");
                if power_cuts && m == MEMBERS {
                    let state = dir.path().join(format!("disk-{host}"));
                    std::fs::create_dir_all(&state).expect("disk state dir");
                    let disk = Disk::mount(&state, &store).expect("mount the simulated disk");
                    disks.insert(host.clone(), disk);
                }
                let door = format!("{}:{DOOR_PORT}", net.ip(&host));
                let a = args(&[
                    "--group",
                    &format!("group{g}"),
                    "--tracker",
                    &trackers,
                    "--store-path",
                    &store.display().to_string(),
                    "--heartbeat-interval-ms",
                    "200",
                    "--peer-stall-timeout-ms",
                    "1500",
                    "--fastdfs-listen",
                    &door,
                ]);
                nodes.insert(host.clone(), spawn(&net, &host, Role::Storage, a));
            }
        }
        for gw in GATEWAYS {
            let a = args(&["--tracker", &trackers]);
            nodes.insert(gw.to_owned(), spawn(&net, gw, Role::Gateway, a));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("reqwest client");
        let c = NsCluster {
            nodes,
            disks,
            net,
            dir,
            http,
        };
        let t0 = std::time::Instant::now();
        crate::eventually_ok(START_TIMEOUT, "the nemesis cluster to come up", || async {
            c.all_active().await.and(c.gateways_ready().await)
        })
        .await;
        eprintln!(
            "nemesis: cluster of {} processes up in {:.1} s (data in {})",
            c.nodes.len(),
            t0.elapsed().as_secs_f64(),
            c.dir.path().display()
        );
        c
    }

    /// `http://ADDR` of `host`.
    pub fn url(&self, host: &str) -> String {
        self.nodes[host].url()
    }

    /// The FastDFS door of `host`.
    pub fn door(&self, host: &str) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.net.ip(host)), DOOR_PORT)
    }

    /// The host an address belongs to.
    pub fn host_of(&self, ip: IpAddr) -> Option<String> {
        self.nodes
            .keys()
            .find(|h| IpAddr::V4(self.net.ip(h)) == ip)
            .cloned()
    }

    /// `GET /cluster` of tracker `t`.
    pub async fn view(&self, t: &str) -> Result<ClusterView, String> {
        let r = self.http.get(format!("{}/cluster", self.url(t))).secret();
        r.timeout(Duration::from_secs(5)).try_json().await
    }

    /// `Ok` when both trackers list every member as active.
    pub async fn all_active(&self) -> Result<(), String> {
        for t in TRACKERS {
            let v = self.view(t).await.map_err(|e| format!("{t}: {e}"))?;
            for host in members() {
                let addr = format!("{}:{HTTP_PORT}", self.net.ip(&host));
                let state = v
                    .groups
                    .iter()
                    .flat_map(|g| &g.members)
                    .find(|m| m.addr == addr)
                    .map(|m| m.state);
                if state != Some(MemberState::Active) {
                    return Err(format!("{t} sees {host} as {state:?}"));
                }
            }
        }
        Ok(())
    }

    /// `Ok` when both gateways answer `/health` with 2xx.
    pub async fn gateways_ready(&self) -> Result<(), String> {
        for gw in GATEWAYS {
            let r = self.http.get(format!("{}/health", self.url(gw)));
            let r = r.timeout(Duration::from_secs(5)).send().await;
            match r {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Err(format!("{gw}: /health {}", r.status())),
                Err(e) => return Err(format!("{gw}: /health: {e}")),
            }
        }
        Ok(())
    }

    /// `GET /v1/sync/status` of storage member `host`.
    pub async fn sync_status(&self, host: &str) -> Result<serde_json::Value, String> {
        let r = self.http.get(format!("{}/v1/sync/status", self.url(host)));
        r.secret().timeout(Duration::from_secs(5)).try_json().await
    }

    /// `Ok` when member `host` is caught up: not syncing, each of its peers active, reachable and owed nothing.
    pub async fn caught_up(&self, host: &str) -> Result<(), String> {
        let s = self.sync_status(host).await?;
        let peers = s["peers"].as_array().cloned().unwrap_or_default();
        let ok = s["syncing"] == false
            && peers.len() == MEMBERS - 1
            && peers.iter().all(|p| {
                p["pending_records"] == 0 && p["state"] == "active" && p["unreachable"].is_null()
            });
        if ok {
            Ok(())
        } else {
            Err(format!("{host} not caught up: {s}"))
        }
    }

    /// The bytes member `host` itself holds for `id` (`/v1/replica`: never proxied); `Ok(None)` when it
    /// answers that it does not hold it (404, or 410: deleted).
    pub async fn held(&self, host: &str, id: &str) -> Result<Option<Vec<u8>>, String> {
        let r = self.http.get(format!("{}/v1/replica/{id}", self.url(host)));
        let r = r.secret().timeout(Duration::from_secs(30)).send().await;
        let r = r.map_err(|e| format!("{host}: {e}"))?;
        match r.status().as_u16() {
            200 => r
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| format!("{host}: {e}")),
            404 | 410 => Ok(None),
            s => Err(format!("{host}: {s} for {id}")),
        }
    }

    /// The metadata member `host` holds for `id` (`Ok(None)`: 404).
    pub async fn meta_on(&self, host: &str, id: &str) -> Result<Option<serde_json::Value>, String> {
        let r = self.http.get(format!("{}/v1/meta/{id}", self.url(host)));
        let r = r.secret().timeout(Duration::from_secs(10)).send().await;
        let r = r.map_err(|e| format!("{host}: {e}"))?;
        match r.status().as_u16() {
            200 => r.json().await.map(Some).map_err(|e| format!("{host}: {e}")),
            404 | 410 => Ok(None),
            s => Err(format!("{host}: {s} for the metadata of {id}")),
        }
    }

    /// Print the tail of every node's log (after a failed run).
    pub fn print_logs(&self) {
        for (name, n) in &self.nodes {
            eprintln!(
                "----- {name} ({}) log tail -----\n{}",
                n.addr,
                n.log_tail(40)
            );
        }
        eprintln!("data in {}", self.dir.path().display());
    }
}

impl Drop for NsCluster {
    /// Processes first, then the disks they use (unmounted), then the namespaces and the data.
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            n.kill9();
        }
        self.disks.clear();
        if std::thread::panicking() && std::env::var_os("FDFS_KEEP_TEST_DIR").is_some() {
            self.dir.keep();
        }
    }
}
