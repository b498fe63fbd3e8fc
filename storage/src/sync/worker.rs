//! One worker per peer: follows this node's binlog from the peer's persisted position and pushes each record
//! (see [`super::client`]). Records of distinct files are pushed a few at a time; records of one file keep their
//! order. A record is retried with backoff until the peer takes it (or rejects it for good), so a peer that is
//! down simply falls behind and catches up when it returns. The position is persisted after every batch. A
//! worker with nothing to push probes its peer every [`IDLE`], so this node knows whether the peer can be
//! reached (see [`super::reach`]).
//!
//! A peer that is full (507) does not stop the worker: the refused record is set aside ([`Deferred`]) and the
//! records behind it (deletes, metadata, uploads that fit) still go through; the refused ones are retried every
//! [`FULL_RETRY`], oldest first, until the peer takes them. The acknowledged position (persisted, used for
//! pruning, pending counts and `synced_until`) stays just before the oldest refused record, so a restart
//! replays from there (pushes are idempotent) and nothing refused is ever skipped. At most [`MAX_DEFERRED`]
//! records are set aside; beyond that the worker waits for the peer before reading more.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdfs_common::wire::MemberInfo;
use futures_util::stream::{self, StreamExt};

use super::client::{self, PushError, Pushed};
use super::{metrics, PeerProgress, SyncEngine};
use crate::store::binlog::{Op, Record};

/// Records read from the binlog at a time.
const BATCH: usize = 512;
/// Backoff between attempts at one record.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long an idle worker sleeps when no append wakes it.
const IDLE: Duration = Duration::from_secs(1);
/// How often records a full peer refused are offered again.
pub const FULL_RETRY: Duration = Duration::from_secs(2);
/// Most records set aside for a full peer before the worker stops reading further.
pub const MAX_DEFERRED: usize = 100_000;

/// Records a full peer refused (507), by sequence number, waiting for it to have room.
#[derive(Default)]
struct Deferred {
    recs: BTreeMap<u64, Record>,
    next_try: Option<Instant>,
}

impl Deferred {
    /// The acknowledged position given that every record up to `processed` was handled: just before the oldest
    /// refused record.
    fn acked(&self, processed: u64) -> u64 {
        self.recs
            .keys()
            .next()
            .map_or(processed, |seq| processed.min(seq - 1))
    }

    /// `synced_until` capped by the oldest refused record (the peer lacks it).
    fn cap_synced(&self, until: u64) -> u64 {
        self.recs
            .values()
            .next()
            .map_or(until, |r| until.min(r.ts.saturating_sub(1)))
    }

    fn due(&self) -> bool {
        self.next_try.is_some_and(|t| Instant::now() >= t)
    }

    fn add(&mut self, rec: Record) {
        if self.next_try.is_none() {
            self.next_try = Some(Instant::now() + FULL_RETRY);
        }
        self.recs.insert(rec.seq, rec);
    }
}

/// How pushing one record ended.
enum Outcome {
    /// Taken (or rejected for good): move on.
    Done,
    /// The peer is full: set the record aside.
    Full,
    /// The worker must stop (peer gone or stop requested).
    Stop,
}

/// Split a batch into runs of records on distinct files (each run can be pushed concurrently).
fn distinct_runs(batch: Vec<Record>) -> Vec<Vec<Record>> {
    let mut runs: Vec<Vec<Record>> = Vec::new();
    let mut seen = HashSet::new();
    for rec in batch {
        let key = rec.file_id.to_string();
        if seen.contains(&key) || runs.is_empty() {
            seen.clear();
            runs.push(Vec::new());
        }
        seen.insert(key);
        runs.last_mut().expect("pushed above").push(rec);
    }
    runs
}

/// The peer as currently known (its address may change); `None` once it left the group.
fn current(engine: &SyncEngine, peer_id: u32) -> Option<MemberInfo> {
    engine
        .peer_list()
        .into_iter()
        .find(|p| p.node_id == peer_id)
}

async fn push(
    engine: &SyncEngine,
    peer: &MemberInfo,
    progress: &PeerProgress,
    rec: &Record,
) -> Result<u64, PushError> {
    match rec.op {
        // The upload path placed it there already (durably, with its metadata).
        Op::Upload if progress.take_delivered(&rec.file_id) => Ok(0),
        Op::Upload => match client::push_upload(engine, peer, &rec.file_id).await? {
            Pushed::Sent(n) => Ok(n),
            Pushed::Skipped | Pushed::Gone => Ok(0),
        },
        Op::Delete => client::push_delete(engine, peer, &rec.file_id)
            .await
            .map(|()| 0),
        Op::Meta => client::push_meta(engine, peer, &rec.file_id)
            .await
            .map(|()| 0),
    }
}

/// Push one record until it is taken, refused for lack of room, or the worker must stop.
async fn push_until_done(
    engine: &SyncEngine,
    peer_id: u32,
    progress: &PeerProgress,
    rec: &Record,
) -> Outcome {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return Outcome::Stop;
        }
        let Some(peer) = current(engine, peer_id) else {
            return Outcome::Stop;
        };
        let pushed = push(engine, &peer, progress, rec).await;
        engine.reach.record(peer_id, &pushed);
        match pushed {
            Ok(bytes) => {
                metrics::pushed(peer_id, rec.op, bytes, rec.ts);
                if warned {
                    tracing::info!(peer = peer_id, "peer takes records again");
                }
                return Outcome::Done;
            }
            Err(PushError::Rejected(e)) => {
                tracing::error!(peer = peer_id, seq = rec.seq, file_id = %rec.file_id, error = %e, "peer rejected a record; skipping it");
                metrics::rejected(peer_id);
                return Outcome::Done;
            }
            Err(PushError::Full(e)) => {
                tracing::debug!(peer = peer_id, seq = rec.seq, file_id = %rec.file_id, error = %e, "peer is full");
                return Outcome::Full;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(peer = peer_id, seq = rec.seq, error = %e, "push failed; retrying with backoff");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The worker loop for one peer; returns when the peer leaves or the task is aborted.
pub async fn run(engine: SyncEngine, peer_id: u32, progress: Arc<PeerProgress>) {
    let start = {
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || -> crate::error::Result<u64> {
            match e.load_position(peer_id)? {
                Some(seq) => Ok(seq),
                None => {
                    // A peer never seen: push everything still on disk (the catch-up listing covers the rest).
                    e.save_position(peer_id, 0)?;
                    Ok(0)
                }
            }
        })
        .await
        {
            Ok(Ok(seq)) => seq,
            Ok(Err(e)) => {
                tracing::error!(peer = peer_id, error = %e, "sync worker cannot read its position");
                return;
            }
            Err(_) => return,
        }
    };
    tracing::info!(peer = peer_id, position = start, "sync worker started");
    progress.acked.store(start, Ordering::Relaxed);
    let mut appended = engine.appended.subscribe();
    let mut reader = Some(engine.binlog.reader(start));
    let mut saved = start;
    // Every record up to `processed` was taken by the peer or is in `deferred`.
    let mut processed = start;
    let mut deferred = Deferred::default();
    let concurrency = engine.config.push_concurrency.max(1);
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return;
        }
        if deferred.due() {
            let going = retry_deferred(&engine, peer_id, &progress, &mut deferred).await;
            progress
                .acked
                .store(deferred.acked(processed), Ordering::Relaxed);
            if !going {
                stopping(&engine, peer_id, &progress, saved).await;
                return;
            }
        }
        if deferred.recs.len() >= MAX_DEFERRED {
            // Too much set aside: wait for the peer before reading further.
            let acked = progress.acked.load(Ordering::Relaxed);
            if acked != saved && persist(&engine, peer_id, acked).await {
                saved = acked;
            }
            tokio::time::sleep(FULL_RETRY).await;
            continue;
        }
        let checked_at = fdfs_common::time::unix_now();
        let mut r = reader.take().expect("reader is put back every iteration");
        let (r, batch) = match tokio::task::spawn_blocking(move || {
            let b = r.next_batch(BATCH);
            (r, b)
        })
        .await
        {
            Ok(x) => x,
            Err(_) => return,
        };
        reader = Some(r);
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(peer = peer_id, error = %e, "reading the binlog");
                tokio::time::sleep(IDLE).await;
                continue;
            }
        };
        if batch.is_empty() {
            progress.synced_until.store(
                deferred.cap_synced(checked_at.saturating_sub(1)),
                Ordering::Relaxed,
            );
            let acked = progress.acked.load(Ordering::Relaxed);
            if acked != saved && persist(&engine, peer_id, acked).await {
                saved = acked;
            }
            tokio::select! {
                _ = appended.changed() => {}
                () = tokio::time::sleep(IDLE) => {
                    // Nothing to push: check that the peer answers at all, so that a partition is known
                    // before an upload needs the peer (see `reach`).
                    if let Some(peer) = current(&engine, peer_id) {
                        let probed = client::probe(&engine, &peer).await;
                        engine.reach.record(peer_id, &probed);
                    }
                }
            }
            continue;
        }
        let started = Instant::now();
        let n = batch.len();
        for run in distinct_runs(batch) {
            progress.synced_until.store(
                deferred.cap_synced(run[0].ts.saturating_sub(1)),
                Ordering::Relaxed,
            );
            let last = run.last().map_or(0, |r| r.seq);
            let results: Vec<(Record, Outcome)> = stream::iter(run)
                .map(|rec| {
                    let (engine, progress) = (engine.clone(), progress.clone());
                    async move {
                        let outcome = push_until_done(&engine, peer_id, &progress, &rec).await;
                        (rec, outcome)
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            let mut stop = false;
            for (rec, outcome) in results {
                match outcome {
                    Outcome::Done => {}
                    Outcome::Full => {
                        if deferred.recs.is_empty() {
                            tracing::warn!(peer = peer_id, seq = rec.seq, file_id = %rec.file_id, "peer is full: setting refused records aside, the rest still goes through");
                        }
                        deferred.add(rec);
                        deferred_gauge(peer_id, deferred.recs.len());
                    }
                    Outcome::Stop => stop = true,
                }
            }
            if stop {
                stopping(&engine, peer_id, &progress, saved).await;
                return;
            }
            processed = last;
            progress
                .acked
                .store(deferred.acked(processed), Ordering::Relaxed);
        }
        tracing::debug!(
            peer = peer_id,
            records = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pushed a batch"
        );
        let acked = progress.acked.load(Ordering::Relaxed);
        if persist(&engine, peer_id, acked).await {
            saved = acked;
        }
    }
}

/// Stopping: keep the position of what was fully acknowledged.
async fn stopping(engine: &SyncEngine, peer_id: u32, progress: &PeerProgress, saved: u64) {
    let acked = progress.acked.load(Ordering::Relaxed);
    if acked != saved {
        persist(engine, peer_id, acked).await;
    }
    tracing::info!(peer = peer_id, "sync worker stopping");
}

/// Offer the records a full peer refused again, oldest first, until it refuses one more (still full) or cannot
/// be reached. False when the worker must stop.
async fn retry_deferred(
    engine: &SyncEngine,
    peer_id: u32,
    progress: &PeerProgress,
    deferred: &mut Deferred,
) -> bool {
    let Some(peer) = current(engine, peer_id) else {
        return false;
    };
    let seqs: Vec<u64> = deferred.recs.keys().copied().collect();
    let mut taken = 0usize;
    for seq in seqs {
        if progress.stop.load(Ordering::Relaxed) {
            return false;
        }
        let rec = &deferred.recs[&seq];
        let pushed = push(engine, &peer, progress, rec).await;
        engine.reach.record(peer_id, &pushed);
        match pushed {
            Ok(bytes) => {
                metrics::pushed(peer_id, rec.op, bytes, rec.ts);
                deferred.recs.remove(&seq);
                taken += 1;
            }
            Err(PushError::Rejected(e)) => {
                tracing::error!(peer = peer_id, seq, file_id = %rec.file_id, error = %e, "peer rejected a record; skipping it");
                metrics::rejected(peer_id);
                deferred.recs.remove(&seq);
            }
            Err(e) => {
                tracing::debug!(peer = peer_id, seq, error = %e, "set-aside record still refused");
                break;
            }
        }
    }
    deferred.next_try = (!deferred.recs.is_empty()).then(|| Instant::now() + FULL_RETRY);
    if taken > 0 {
        tracing::info!(
            peer = peer_id,
            taken,
            left = deferred.recs.len(),
            "peer took records it had refused for lack of room"
        );
    }
    deferred_gauge(peer_id, deferred.recs.len());
    true
}

/// `fdfs_sync_deferred_records{peer}`: records a full peer refused, waiting for room.
fn deferred_gauge(peer_id: u32, n: usize) {
    ::metrics::gauge!("fdfs_sync_deferred_records", "peer" => peer_id.to_string()).set(n as f64);
}

async fn persist(engine: &SyncEngine, peer_id: u32, seq: u64) -> bool {
    let e = engine.clone();
    match tokio::task::spawn_blocking(move || e.save_position(peer_id, seq)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(peer = peer_id, error = %e, "saving the sync position");
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, ts: u64) -> Record {
        Record {
            seq,
            ts,
            op: Op::Upload,
            file_id: "g1/M00/00/00/CgAAAWXXXXXAAAAAAAAAAAAAAAA123.bin"
                .parse()
                .expect("valid id"),
        }
    }

    #[test]
    fn position_stays_before_the_oldest_refused_record() {
        let mut d = Deferred::default();
        assert_eq!(d.acked(40), 40);
        assert_eq!(d.cap_synced(1000), 1000);
        d.add(rec(12, 500));
        d.add(rec(30, 700));
        assert_eq!(d.acked(40), 11);
        assert_eq!(d.acked(5), 5);
        assert_eq!(d.cap_synced(1000), 499);
        assert!(!d.due(), "retried only after FULL_RETRY");
        d.recs.remove(&12);
        assert_eq!(d.acked(40), 29);
        assert_eq!(d.cap_synced(1000), 699);
    }
}
