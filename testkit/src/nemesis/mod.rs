//! A nemesis run with a history checker, the way Jepsen tests databases (issue 19 items 3 and 4): a cluster of
//! real processes in network namespaces ([`cluster`]: 2 trackers, 2 groups x 3 members, 2 gateways; one member
//! per group on the power-cut simulator's disk), clients doing uploads (raw, multipart, streamed big ones, tus,
//! the FastDFS door), byte-checked downloads, metadata changes and deletes, each logged with its outcome
//! ([`clients`]), while a nemesis drawn from a printed seed kills, freezes, cuts off, wipes and power-cuts nodes
//! and fails or slows their disks, up to two faults at a time in different failure domains ([`faults`]). At the
//! end every fault is healed, the cluster must converge, and the history is checked against what the members
//! hold ([`check`]), which also writes the report.
//!
//! Entry points: [`Config::from_env`] (`NEMESIS_SECS`, `NEMESIS_SEED`, `NEMESIS_REPORT`, `NEMESIS_BIG_MB`) and
//! [`run`]. The cli test `nemesis_short_run` runs it for 60 s in CI; `bench/nemesis.sh` runs it for longer.

pub mod check;
pub mod clients;
pub mod cluster;
pub mod faults;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long the clients and the nemesis run (before healing and checking).
    pub duration: Duration,
    /// Seed of the fault schedule and of every client's choices.
    pub seed: u64,
    /// A client request taking longer than this is a hang (a failed check).
    pub hang_bound: Duration,
    /// Size of the streamed big uploads.
    pub big_len: usize,
    /// Faults held at once at most (each in its own failure domain: a group, the trackers, the gateways).
    pub overlap: usize,
    /// Whether one member per group keeps its store on the power-cut simulator (FUSE), for power-cut faults.
    pub power_cuts: bool,
    /// Where to write the markdown report (also printed).
    pub report: Option<std::path::PathBuf>,
}

impl Config {
    /// From the environment: `NEMESIS_SECS` (default `default_secs`), `NEMESIS_SEED` (decimal or `0x` hex;
    /// default: from the clock), `NEMESIS_HANG_SECS` (30), `NEMESIS_BIG_MB` (12), `NEMESIS_OVERLAP` (2: faults
    /// held at once), `NEMESIS_POWER_CUTS` (`0` turns the FUSE disks off), `NEMESIS_REPORT` (a path).
    pub fn from_env(default_secs: u64) -> Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, d: u64| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let seed = var("NEMESIS_SEED")
            .map(|s| {
                let parsed = match s.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => s.parse(),
                };
                parsed.unwrap_or_else(|e| panic!("NEMESIS_SEED={s}: {e}"))
            })
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Rng::new(now.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64() >> 16
            });
        Config {
            duration: Duration::from_secs(num("NEMESIS_SECS", default_secs)),
            seed,
            hang_bound: Duration::from_secs(num("NEMESIS_HANG_SECS", 30)),
            big_len: usize::try_from(num("NEMESIS_BIG_MB", 12)).unwrap_or(12) << 20,
            overlap: usize::try_from(num("NEMESIS_OVERLAP", 2)).unwrap_or(2),
            power_cuts: var("NEMESIS_POWER_CUTS").as_deref() != Some("0"),
            report: var("NEMESIS_REPORT").map(Into::into),
        }
    }
}

/// A small seeded generator (splitmix64): the same seed gives the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// An index into a slice of `len`.
    pub fn index(&mut self, len: usize) -> usize {
        self.range(0, len as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }

    /// A generator for a sub-task, independent of how much this one is used later.
    pub fn fork(&self, salt: u64) -> Rng {
        Rng::new(self.0 ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Every check held.
    pub passed: bool,
    /// The markdown report.
    pub markdown: String,
}

/// Run the nemesis: start the cluster, load it while injecting faults for `config.duration`, heal, wait for
/// convergence, check the history. The report is printed and written to `config.report`.
pub async fn run(config: Config) -> Report {
    eprintln!(
        "nemesis: seed {} ({:#x}), {} s; replay with NEMESIS_SEED={} NEMESIS_SECS={}",
        config.seed,
        config.seed,
        config.duration.as_secs(),
        config.seed,
        config.duration.as_secs()
    );
    let rng = Rng::new(config.seed);
    let mut cluster = cluster::NsCluster::start(config.power_cuts).await;
    let t0 = Instant::now();
    let history = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = clients::start(&cluster, &config, &rng, t0, history.clone(), stop.clone());
    // Faults run on this thread: the processes the nemesis restarts die with the thread that started them.
    let faults = faults::Nemesis::new(rng.fork(0xFA17))
        .run(&mut cluster, t0, config.duration, config.overlap)
        .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        if let Err(e) = w.await {
            eprintln!("nemesis: a client task failed: {e}");
        }
    }
    let ops = std::mem::take(&mut *history.lock().unwrap_or_else(|e| e.into_inner()));
    eprintln!(
        "nemesis: {:.1}s clients stopped after {} operations; {} faults; waiting for convergence",
        t0.elapsed().as_secs_f64(),
        ops.len(),
        faults.len()
    );
    let report = check::check(&cluster, &config, &ops, faults, t0).await;
    eprintln!("{}", report.markdown);
    if let Some(path) = &config.report {
        if let Err(e) = std::fs::write(path, &report.markdown) {
            eprintln!("nemesis: writing {}: {e}", path.display());
        }
    }
    if !report.passed {
        cluster.print_logs();
        // What it takes to find the cause: every node's log and data, and the history.
        let history: String = ops.iter().map(|op| format!("{op:?}\n")).collect();
        let path = cluster.dir.path().join("history.txt");
        if let Err(e) = std::fs::write(&path, history) {
            eprintln!("nemesis: writing {}: {e}", path.display());
        }
        eprintln!(
            "nemesis: kept the logs, the data and history.txt in {}",
            cluster.dir.path().display()
        );
        cluster.dir.keep();
    }
    report
}
