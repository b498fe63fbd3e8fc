//! The nemesis: faults drawn from a seeded generator (processes killed, frozen, restarted; nodes cut off; a
//! member's disk wiped, power-cut, failing or slow), a new one every 1 to 4 s, each held for 2 to 8 s then
//! healed (a storage group takes no new fault until its members have caught up again after the last one); up to
//! `NEMESIS_OVERLAP` (2) held at once, in different failure domains (never more than the design
//! promises to survive: with `write_quorum` 2 of 3, one member of a group may be lost; with two trackers and two
//! gateways, one of each). Every fault is logged with when it began and ended, and which host's process it
//! disturbed (the checker accepts a client's connection failure only against a host disturbed meanwhile).

use std::fmt;
use std::time::{Duration, Instant};

use super::cluster::{member, members_of, NsCluster, GATEWAYS, GROUPS, MEMBERS, TRACKERS};
use super::Rng;
use crate::powercut::{Cut, Faults};

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 the process, start it again at the heal.
    Kill(String),
    /// SIGSTOP, SIGCONT at the heal.
    Freeze(String),
    /// Cut a host off from every other server (the clients still reach it).
    Isolate(String),
    /// Cut a storage member off from the other members of its group only (trackers and gateways reach it).
    SplitGroup(String),
    /// kill -9 a member, delete its store, start it again empty at the heal.
    Wipe(String),
    /// kill -9 a member on the simulated disk and drop whatever it never synced; start it again at the heal.
    PowerCut(String),
    /// A member's simulated disk fails every read and change with EIO until the heal.
    FailingDisk(String),
    /// A member's simulated disk waits 100 ms before every read and change until the heal.
    SlowDisk(String),
}

impl Fault {
    /// The kind, for counting: `kill -9 storage`, `isolate tracker`, ...
    pub fn kind(&self) -> String {
        let (what, host) = match self {
            Fault::Kill(h) => ("kill -9 + restart", h),
            Fault::Freeze(h) => ("SIGSTOP/SIGCONT", h),
            Fault::Isolate(h) => ("partition: one node cut off", h),
            Fault::SplitGroup(h) => ("partition: group split", h),
            Fault::Wipe(h) => ("disk wiped + restart", h),
            Fault::PowerCut(h) => ("power cut (unsynced writes lost)", h),
            Fault::FailingDisk(h) => ("failing disk (EIO)", h),
            Fault::SlowDisk(h) => ("slow disk (100 ms a call)", h),
        };
        format!("{what} ({})", role(host))
    }

    /// The failure domain it hits: a storage group (`group1`), the trackers, or the gateways. Faults held at
    /// once are in different domains: at most one member of a group, one tracker, one gateway.
    pub fn domain(&self) -> String {
        let host = self.host();
        match role(host) {
            "storage" => format!("group{}", &host[1..2]),
            other => other.to_owned(),
        }
    }

    /// The host it hits.
    pub fn host(&self) -> &str {
        match self {
            Fault::Kill(h)
            | Fault::Freeze(h)
            | Fault::Isolate(h)
            | Fault::SplitGroup(h)
            | Fault::Wipe(h)
            | Fault::PowerCut(h)
            | Fault::FailingDisk(h)
            | Fault::SlowDisk(h) => h,
        }
    }

    /// The host whose process the fault stops (a client's connection to it may fail meanwhile).
    pub fn disturbs(&self) -> Option<&str> {
        match self {
            Fault::Kill(h) | Fault::Freeze(h) | Fault::Wipe(h) | Fault::PowerCut(h) => Some(h),
            Fault::Isolate(_)
            | Fault::SplitGroup(_)
            | Fault::FailingDisk(_)
            | Fault::SlowDisk(_) => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host();
        let kind = self.kind();
        let what = kind.split(" (").next().unwrap_or_default();
        write!(f, "{what} {host}")
    }
}

/// `tracker`, `gateway` or `storage` by host name.
fn role(host: &str) -> &'static str {
    if host.starts_with("gw") {
        "gateway"
    } else if host.starts_with('t') {
        "tracker"
    } else {
        "storage"
    }
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The fault.
    pub fault: Fault,
    /// When it began, from the start of the run.
    pub start: Duration,
    /// When it was healed (the process running again, the links back).
    pub end: Duration,
}

/// The fault scheduler.
pub struct Nemesis {
    rng: Rng,
}

impl Nemesis {
    /// A scheduler drawing from `rng`.
    pub fn new(rng: Rng) -> Nemesis {
        Nemesis { rng }
    }

    /// Draw the next fault.
    fn draw(&mut self, power_cuts: bool) -> Fault {
        let rng = &mut self.rng;
        let storage = member(
            rng.range(1, GROUPS as u64 + 1) as usize,
            rng.range(1, MEMBERS as u64 + 1) as usize,
        );
        let tracker = TRACKERS[rng.index(TRACKERS.len())].to_owned();
        let gateway = GATEWAYS[rng.index(GATEWAYS.len())].to_owned();
        loop {
            return match rng.range(0, 100) {
                0..=17 => Fault::Kill(storage),
                18..=27 => Fault::Kill(tracker),
                28..=33 => Fault::Kill(gateway),
                34..=45 => Fault::Freeze(storage),
                46..=49 => Fault::Freeze(tracker),
                50..=63 => Fault::Isolate(storage),
                64..=71 => Fault::Isolate(tracker),
                72..=81 => Fault::SplitGroup(storage),
                82..=89 => {
                    // A wipe on an ordinary disk (member 3 keeps the simulated one).
                    let g = rng.range(1, GROUPS as u64 + 1) as usize;
                    Fault::Wipe(member(g, rng.range(1, MEMBERS as u64) as usize))
                }
                90..=93 if power_cuts => {
                    let g = rng.range(1, GROUPS as u64 + 1) as usize;
                    Fault::PowerCut(member(g, MEMBERS))
                }
                94..=96 if power_cuts => {
                    let g = rng.range(1, GROUPS as u64 + 1) as usize;
                    Fault::FailingDisk(member(g, MEMBERS))
                }
                _ if power_cuts => {
                    let g = rng.range(1, GROUPS as u64 + 1) as usize;
                    Fault::SlowDisk(member(g, MEMBERS))
                }
                _ => continue,
            };
        }
    }

    /// Inject faults for `duration` from `t0`, at most `overlap` at a time and never two in one failure domain
    /// ([`Fault::domain`]), healing each after its hold; every fault is healed when this returns. The faults as
    /// they happened, in the order they began.
    pub async fn run(
        mut self,
        c: &mut NsCluster,
        t0: Instant,
        duration: Duration,
        overlap: usize,
    ) -> Vec<Injected> {
        let mut log = Vec::new();
        let power_cuts = !c.disks.is_empty();
        // Held faults: the fault, when it began, when to heal it.
        let mut held: Vec<(Fault, Duration, Duration)> = Vec::new();
        // Groups whose last fault is healed but whose members have not caught up again (a wiped member still
        // copying, records still owed to a member that was away): no new fault there until they have, or
        // two faults in a row would be two at once for the group's redundancy (write quorum 2 survives one).
        let mut recovering: Vec<String> = Vec::new();
        let mut checked = Duration::ZERO;
        // Let the load get going first.
        let mut next = Duration::from_secs(3).min(duration);
        loop {
            let now = t0.elapsed();
            let over = now + Duration::from_secs(2) >= duration;
            // Heal what is due (everything once the run is over).
            let mut k = 0;
            while k < held.len() {
                if over || held[k].2 <= now {
                    let (fault, start, _) = held.swap_remove(k);
                    heal(c, &fault, &mut self.rng);
                    if fault.domain().starts_with("group") && !recovering.contains(&fault.domain())
                    {
                        recovering.push(fault.domain());
                    }
                    let end = t0.elapsed();
                    eprintln!("nemesis: {:>6.1}s healed {fault}", end.as_secs_f64());
                    log.push(Injected { fault, start, end });
                } else {
                    k += 1;
                }
            }
            if over {
                log.sort_by_key(|f| f.start);
                return log;
            }
            if !recovering.is_empty() && now >= checked + Duration::from_secs(1) {
                checked = now;
                let mut still = Vec::new();
                for group in recovering.drain(..) {
                    let mut caught_up = true;
                    for m in members_of(&group) {
                        caught_up &= c.caught_up(&m).await.is_ok();
                    }
                    if caught_up {
                        eprintln!(
                            "nemesis: {:>6.1}s {group} caught up",
                            t0.elapsed().as_secs_f64()
                        );
                    } else {
                        still.push(group);
                    }
                }
                recovering = still;
            }
            if now >= next && held.len() < overlap.max(1) {
                // A fault in a domain nothing else holds nor is recovering from (a few draws, else wait for the
                // next turn).
                let fault = (0..20).map(|_| self.draw(power_cuts)).find(|f| {
                    held.iter().all(|(h, _, _)| h.domain() != f.domain())
                        && !recovering.contains(&f.domain())
                });
                let hold = Duration::from_millis(self.rng.range(2000, 8001));
                let quiet = Duration::from_millis(self.rng.range(1000, 4001));
                if let Some(fault) = fault {
                    // Heals above take a moment (a restart, `ip` commands): the fault begins now.
                    let now = t0.elapsed();
                    eprintln!(
                        "nemesis: {:>6.1}s {fault} for {:.1}s",
                        now.as_secs_f64(),
                        hold.as_secs_f64()
                    );
                    inject(c, &fault);
                    held.push((fault, now, now + hold));
                }
                next = now + quiet;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn inject(c: &mut NsCluster, fault: &Fault) {
    match fault {
        Fault::Kill(h) | Fault::Wipe(h) | Fault::PowerCut(h) => {
            c.nodes.get_mut(h).expect("host").kill9();
        }
        Fault::Freeze(h) => c.nodes[h].freeze(),
        Fault::Isolate(h) => c.net.isolate(h),
        Fault::SplitGroup(h) => {
            for peer in peers(h) {
                c.net.cut(h, &peer);
            }
        }
        Fault::FailingDisk(h) => c.disks[h].inject(Faults {
            fail_reads: true,
            fail_changes: true,
            ..Faults::default()
        }),
        Fault::SlowDisk(h) => c.disks[h].inject(Faults {
            delay: Duration::from_millis(100),
            ..Faults::default()
        }),
    }
}

fn heal(c: &mut NsCluster, fault: &Fault, rng: &mut Rng) {
    match fault {
        Fault::Kill(h) => restart(c, h),
        Fault::Wipe(h) => {
            let dir = c.nodes[h].dir.clone();
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("wiping {}: {e}", dir.display()));
            std::fs::create_dir_all(&dir).expect("recreate the store dir");
            restart(c, h);
        }
        Fault::PowerCut(h) => {
            let seed = rng.next_u64();
            let disk = c.disks.get_mut(h).expect("a simulated disk");
            let dropped = disk.cut(Cut::Random(seed)).expect("cut the power");
            eprintln!("nemesis: power cut of {h} dropped {dropped:?}");
            restart(c, h);
        }
        Fault::Freeze(h) => c.nodes[h].thaw(),
        Fault::Isolate(h) => c.net.rejoin(h),
        Fault::SplitGroup(h) => {
            for peer in peers(h) {
                c.net.heal(h, &peer);
            }
        }
        Fault::FailingDisk(h) | Fault::SlowDisk(h) => c.disks[h].inject(Faults::default()),
    }
}

fn restart(c: &mut NsCluster, h: &str) {
    let node = c.nodes.get_mut(h).expect("host");
    c.net.restart(node);
}

/// The other members of storage member `h`'s group.
fn peers(h: &str) -> Vec<String> {
    let g: usize = h[1..2].parse().expect("gNmM");
    (1..=MEMBERS)
        .map(|m| member(g, m))
        .filter(|p| p != h)
        .collect()
}
