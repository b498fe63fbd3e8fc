//! The checker: once every fault is healed, the cluster must converge (both trackers list every member active,
//! every member caught up with its peers); then the history is the source of truth:
//!
//! - every acknowledged upload (a 2xx with a file ID) is held, with its bytes, by every member of its group,
//!   unless a delete of it was tried;
//! - no acknowledged delete is undone (no member holds the file);
//! - every member holds, as metadata `v` of a file, the last acknowledged value or one of the changes tried after
//!   it without an answer;
//! - nothing on any member's disk is visible with wrong bytes (every stored file has the size and CRC32 its ID
//!   names: in-flight, unacknowledged uploads included);
//! - during the run no download returned wrong bytes, every error was the JSON error (or a FastDFS errno), a
//!   connection failure only against a host the nemesis had stopped meanwhile, and no request took longer than
//!   the hang bound.
//!
//! Then the markdown report: operations, faults, errors by kind, time to converge, the failed checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use fdfs_common::FileId;

use super::clients::{Op, Res, What};
use super::cluster::{members, members_of, NsCluster, GROUPS, MEMBERS};
use super::faults::Injected;
use super::{Config, Report};
use crate::content;
use crate::dirs::stored_files;

/// How long the cluster may take to converge after the last heal.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);
/// A connection failure counts as caused by a fault that ended at most this long before the request did (a
/// restarted server needs a moment before it answers).
const RESTART_SLACK: Duration = Duration::from_secs(5);
/// Failures listed in the report, per check.
const LISTED: usize = 20;

/// What the history says about one acknowledged file.
#[derive(Debug, Default)]
struct Model {
    n: usize,
    len: usize,
    /// An acknowledged delete.
    deleted: bool,
    /// A delete was tried without an answer: it may or may not have happened.
    maybe_deleted: bool,
    /// Metadata `v` values that may be the current one: the last acknowledged value (`None`: no metadata), then
    /// every change tried without an answer after it.
    meta: Vec<Option<String>>,
}

/// Failed checks by name.
#[derive(Default)]
struct Failures(BTreeMap<&'static str, Vec<String>>);

impl Failures {
    fn add(&mut self, check: &'static str, what: String) {
        self.0.entry(check).or_default().push(what);
    }

    fn count(&self, check: &str) -> usize {
        self.0.get(check).map_or(0, Vec::len)
    }
}

/// Check names, in the report's order.
const CHECKS: [&str; 8] = [
    "converged: every member active and caught up",
    "acknowledged uploads on every member of their group, with their bytes",
    "acknowledged deletes stay deleted",
    "metadata is what the last acknowledged change set",
    "nothing stored with wrong bytes",
    "downloads never returned wrong bytes",
    "every error a JSON 4xx/5xx (or FastDFS errno), connection failures only against stopped nodes",
    "no request hung",
];

/// Heal-time checks and the report.
pub async fn check(
    c: &NsCluster,
    config: &Config,
    ops: &[Op],
    faults: Vec<Injected>,
    t0: Instant,
) -> Report {
    let mut fail = Failures::default();
    let ended = t0.elapsed();

    // Convergence.
    let tc = Instant::now();
    let mut last = String::new();
    let converged = loop {
        match converged(c).await {
            Ok(()) => break Some(tc.elapsed()),
            Err(e) => last = e,
        }
        if tc.elapsed() > CONVERGE_TIMEOUT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if converged.is_none() {
        fail.add(
            CHECKS[0],
            format!("not within {CONVERGE_TIMEOUT:?}: {last}"),
        );
    }

    // The model from the history (each client's operations are in its order).
    let mut files: BTreeMap<String, Model> = BTreeMap::new();
    for op in ops {
        match (&op.what, &op.res) {
            (What::Upload { n, len, meta, .. }, Res::Ok(Some(id))) => {
                files.insert(
                    id.clone(),
                    Model {
                        n: *n,
                        len: *len,
                        meta: vec![meta.clone()],
                        ..Model::default()
                    },
                );
            }
            (What::SetMeta { id, value }, res) => {
                if let Some(m) = files.get_mut(id) {
                    if matches!(res, Res::Ok(_)) {
                        m.meta = vec![Some(value.clone())];
                    } else {
                        m.meta.push(Some(value.clone()));
                    }
                }
            }
            (What::Delete { id }, res) => {
                if let Some(m) = files.get_mut(id) {
                    if matches!(res, Res::Ok(_)) {
                        m.deleted = true;
                    } else {
                        m.maybe_deleted = true;
                    }
                }
            }
            _ => {}
        }
    }

    eprintln!(
        "nemesis: converged: {converged:?}; checking {} acknowledged files on their members",
        files.len()
    );
    // What the members hold, a few files at a time.
    let all: Vec<(&String, &Model)> = files.iter().collect();
    let tf = Instant::now();
    for (k, batch) in all.chunks(16).enumerate() {
        if k % 25 == 0 {
            eprintln!(
                "nemesis: checked {} of {} files in {:.1}s",
                k * 16,
                all.len(),
                tf.elapsed().as_secs_f64()
            );
        }
        let found =
            futures_util::future::join_all(batch.iter().map(|(id, m)| check_file(c, id, m))).await;
        for (check, what) in found.into_iter().flatten() {
            fail.add(check, what);
        }
    }

    // Nothing on any disk with wrong bytes.
    let mut on_disk = 0usize;
    for g in 1..=GROUPS {
        for m in 1..=MEMBERS {
            let host = super::cluster::member(g, m);
            let dir = c.nodes[&host].dir.clone();
            for rel in stored_files(&dir) {
                let Ok(id) = format!("group{g}/M00/{rel}").parse::<FileId>() else {
                    continue;
                };
                if id.name.prefix().is_some() {
                    continue;
                }
                on_disk += 1;
                let info = id.info();
                match std::fs::read(dir.join(id.relative_path())) {
                    Ok(b) if b.len() as u64 == info.size && crc32fast::hash(&b) == info.crc32 => {}
                    Ok(b) => fail.add(
                        CHECKS[4],
                        format!(
                            "{id} on {host}: {} bytes on disk, the ID says {}",
                            b.len(),
                            info.size
                        ),
                    ),
                    Err(e) => fail.add(CHECKS[4], format!("{id} on {host}: {e}")),
                }
            }
        }
    }

    // The history itself.
    for op in ops {
        let at = format!(
            "client {} at {:.1}s ({} via {}): ",
            op.client,
            op.start.as_secs_f64(),
            op.what.kind(),
            op.via.join(",")
        );
        if op.took > config.hang_bound {
            fail.add(CHECKS[7], format!("{at}took {:.1}s", op.took.as_secs_f64()));
        }
        match &op.res {
            Res::Broken(why) if why.starts_with("wrong bytes") => {
                fail.add(CHECKS[5], format!("{at}{why}"));
            }
            Res::Broken(why) => fail.add(CHECKS[6], format!("{at}{why}")),
            Res::Transport(why) if disturbed(op, &faults).is_none() => {
                fail.add(
                    CHECKS[6],
                    format!("{at}{why}, while no host it talked to was stopped"),
                );
            }
            _ => {}
        }
    }

    let passed = fail.0.is_empty();
    let markdown = report(
        config, ops, &faults, &files, &fail, converged, ended, on_disk, passed,
    );
    Report { passed, markdown }
}

/// What the members of `id`'s group hold of it, against the model: the failed checks.
async fn check_file(c: &NsCluster, id: &str, m: &Model) -> Vec<(&'static str, String)> {
    let mut fail = Vec::new();
    let t = Instant::now();
    let group = id.split('/').next().unwrap_or_default();
    let want = content(m.n, m.len);
    for host in members_of(group) {
        let held = held_settled(c, &host, id).await;
        if m.deleted {
            if let Ok(Some(b)) = held {
                fail.push((
                    CHECKS[2],
                    format!(
                        "{id}: deleted (acknowledged) but {host} holds {} bytes",
                        b.len()
                    ),
                ));
            }
            continue;
        }
        match held {
            Ok(Some(b)) if b == want => {}
            Ok(Some(b)) => fail.push((
                CHECKS[4],
                format!(
                    "{id} on {host}: {} bytes, not the {} uploaded",
                    b.len(),
                    m.len
                ),
            )),
            Ok(None) if m.maybe_deleted => {}
            Ok(None) => fail.push((CHECKS[1], format!("{id} (acknowledged) missing on {host}"))),
            Err(e) => fail.push((CHECKS[1], format!("{id} on {host}: {e}"))),
        }
        if m.maybe_deleted {
            continue;
        }
        let got = match c.meta_on(&host, id).await {
            Ok(Some(v)) => v["v"].as_str().map(str::to_owned),
            Ok(None) => None,
            Err(e) => {
                fail.push((CHECKS[3], format!("{id}: {e}")));
                continue;
            }
        };
        if !m.meta.contains(&got) {
            fail.push((
                CHECKS[3],
                format!("{id} on {host}: v = {got:?}, allowed {:?}", m.meta),
            ));
        }
    }
    if t.elapsed() > Duration::from_secs(2) {
        eprintln!(
            "nemesis: checking {id} took {:.1}s: {fail:?}",
            t.elapsed().as_secs_f64()
        );
    }
    fail
}

/// Converged: both trackers list every member active, every member caught up, both gateways ready.
async fn converged(c: &NsCluster) -> Result<(), String> {
    c.all_active().await?;
    for host in members() {
        c.caught_up(&host).await?;
    }
    c.gateways_ready().await
}

/// What `host` holds of `id`; asked again for a while only when it does not answer (the cluster converged, so
/// what it answers is final).
async fn held_settled(c: &NsCluster, host: &str, id: &str) -> Result<Option<Vec<u8>>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = Instant::now();
        let got = c.held(host, id).await;
        if got.is_ok() || Instant::now() > deadline {
            return got;
        }
        eprintln!(
            "nemesis: asking {host} for {id} again after {:.1}s: {got:?}",
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fault that stopped a host `op` talked to while it ran, if any.
fn disturbed<'a>(op: &Op, faults: &'a [Injected]) -> Option<&'a Injected> {
    let (from, to) = (op.start, op.start + op.took);
    faults.iter().find(|f| {
        f.fault
            .disturbs()
            .is_some_and(|h| op.via.iter().any(|v| v == h))
            && f.start <= to
            && from <= f.end + RESTART_SLACK
    })
}

/// The markdown report.
#[allow(clippy::too_many_arguments)]
fn report(
    config: &Config,
    ops: &[Op],
    faults: &[Injected],
    files: &BTreeMap<String, Model>,
    fail: &Failures,
    converged: Option<Duration>,
    ended: Duration,
    on_disk: usize,
    passed: bool,
) -> String {
    let mut s = String::new();
    let verdict = if passed { "PASS" } else { "FAIL" };
    let _ = writeln!(
        s,
        "### Nemesis run: seed {} ({:#x}), {} s: {verdict}\n",
        config.seed,
        config.seed,
        config.duration.as_secs()
    );
    let _ = writeln!(
        s,
        "Cluster: 2 trackers, {GROUPS} groups x {MEMBERS} members (write quorum 2), 2 gateways, each in its own \
         network namespace{}. Replay: `NEMESIS_OVERLAP={} bash bench/nemesis.sh {} {}`.\n",
        if config.power_cuts {
            "; member 3 of each group on the power-cut simulator's disk"
        } else {
            ""
        },
        config.overlap,
        config.duration.as_secs(),
        config.seed
    );

    // Operations.
    let mut by_kind: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops {
        let row = by_kind.entry(op.what.kind()).or_default();
        let (col, err) = match &op.res {
            Res::Ok(_) => (0, None),
            Res::Refused(k) => (1, Some(k.clone())),
            Res::Transport(k) => (2, Some(format!("connection: {k}"))),
            Res::Broken(k) => (
                3,
                Some(format!(
                    "broken: {}",
                    k.chars().take(60).collect::<String>()
                )),
            ),
        };
        row[col] += 1;
        if let Some(e) = err {
            *errors
                .entry(format!("{}: {e}", op.what.kind()))
                .or_default() += 1;
        }
    }
    let total = ops.len();
    let _ = writeln!(
        s,
        "Operations: {total} in {:.0} s ({:.1}/s); {} files acknowledged, {} deletes acknowledged, {} stored \
         files checked on disk.\n",
        ended.as_secs_f64(),
        total as f64 / ended.as_secs_f64().max(1.0),
        files.len(),
        files.values().filter(|m| m.deleted).count(),
        on_disk
    );
    let _ = writeln!(
        s,
        "| operation | ok | refused (JSON error / errno) | connection failed | broken |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for (k, [ok, refused, conn, broken]) in &by_kind {
        let _ = writeln!(s, "| {k} | {ok} | {refused} | {conn} | {broken} |");
    }
    let slowest = ops.iter().map(|o| o.took).max().unwrap_or_default();
    let _ = writeln!(
        s,
        "\nSlowest request: {:.1} s (hang bound {} s).\n",
        slowest.as_secs_f64(),
        config.hang_bound.as_secs()
    );

    // Faults.
    let mut fault_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in faults {
        *fault_kinds.entry(f.fault.kind()).or_default() += 1;
    }
    let _ = writeln!(
        s,
        "Faults injected: {} (up to {} held at once, each in its own failure domain).\n",
        faults.len(),
        config.overlap
    );
    let _ = writeln!(s, "| fault | count |");
    let _ = writeln!(s, "| --- | ---: |");
    for (k, n) in &fault_kinds {
        let _ = writeln!(s, "| {k} | {n} |");
    }

    // Errors.
    let _ = writeln!(s, "\nErrors by kind:\n");
    if errors.is_empty() {
        let _ = writeln!(s, "none");
    } else {
        let _ = writeln!(s, "| operation: error | count |");
        let _ = writeln!(s, "| --- | ---: |");
        for (k, n) in &errors {
            let _ = writeln!(s, "| {k} | {n} |");
        }
    }

    let last_heal = faults.last().map_or(Duration::ZERO, |f| f.end);
    let _ = writeln!(
        s,
        "\nTime to converge: {}.\n",
        converged.map_or_else(
            || format!("did not within {} s", CONVERGE_TIMEOUT.as_secs()),
            |d| format!(
                "{:.1} s after the clients stopped, {:.1} s after the last heal",
                d.as_secs_f64(),
                (ended + d).saturating_sub(last_heal).as_secs_f64()
            )
        )
    );

    // Checks.
    let _ = writeln!(s, "Checks:\n");
    for check in CHECKS {
        let n = fail.count(check);
        let mark = if n == 0 { "ok" } else { "FAILED" };
        let _ = writeln!(
            s,
            "- {mark}: {check}{}",
            if n == 0 {
                String::new()
            } else {
                format!(" ({n})")
            }
        );
        for f in fail.0.get(check).into_iter().flatten().take(LISTED) {
            let _ = writeln!(s, "  - {f}");
        }
    }

    // The fault timeline.
    let _ = writeln!(s, "\n<details><summary>Fault timeline</summary>\n");
    for f in faults {
        let _ = writeln!(
            s,
            "- {:.1}s-{:.1}s: {}",
            f.start.as_secs_f64(),
            f.end.as_secs_f64(),
            f.fault
        );
    }
    let _ = writeln!(s, "\n</details>");
    s
}
