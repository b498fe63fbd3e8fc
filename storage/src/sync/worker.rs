//! One worker per peer: follows this node's binlog from the peer's persisted position and pushes each record
//! (see [`super::client`]). Records of distinct files are pushed a few at a time; records of one file keep their
//! order. A record is retried with backoff until the peer takes it (or rejects it for good), so a peer that is
//! down simply falls behind and catches up when it returns. The position is persisted after every batch.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdfs_common::wire::MemberInfo;
use futures_util::stream::{self, StreamExt};

use super::binlog::{Op, Record};
use super::client::{self, PushError, Pushed};
use super::{metrics, PeerProgress, SyncEngine};

/// Records read from the binlog at a time.
const BATCH: usize = 512;
/// Backoff between attempts at one record.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long an idle worker sleeps when no append wakes it.
const IDLE: Duration = Duration::from_secs(1);

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

async fn push(engine: &SyncEngine, peer: &MemberInfo, rec: &Record) -> Result<u64, PushError> {
    match rec.op {
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

/// Push one record until it is taken; false when the worker must stop (peer gone or stop requested).
async fn push_until_done(
    engine: &SyncEngine,
    peer_id: u32,
    progress: &PeerProgress,
    rec: &Record,
) -> bool {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return false;
        }
        let Some(peer) = current(engine, peer_id) else {
            return false;
        };
        match push(engine, &peer, rec).await {
            Ok(bytes) => {
                metrics::pushed(peer_id, rec.op, bytes, rec.ts);
                if warned {
                    tracing::info!(peer = peer_id, "peer takes records again");
                }
                return true;
            }
            Err(PushError::Rejected(e)) => {
                tracing::error!(peer = peer_id, seq = rec.seq, file_id = %rec.file_id, error = %e, "peer rejected a record; skipping it");
                metrics::rejected(peer_id);
                return true;
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
    let concurrency = engine.config.push_concurrency.max(1);
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return;
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
            progress
                .synced_until
                .store(checked_at.saturating_sub(1), Ordering::Relaxed);
            let acked = progress.acked.load(Ordering::Relaxed);
            if acked != saved && persist(&engine, peer_id, acked).await {
                saved = acked;
            }
            tokio::select! {
                _ = appended.changed() => {}
                () = tokio::time::sleep(IDLE) => {}
            }
            continue;
        }
        let started = Instant::now();
        let n = batch.len();
        for run in distinct_runs(batch) {
            progress
                .synced_until
                .store(run[0].ts.saturating_sub(1), Ordering::Relaxed);
            let last = run.last().map_or(0, |r| r.seq);
            let results: Vec<bool> = stream::iter(run)
                .map(|rec| {
                    let (engine, progress) = (engine.clone(), progress.clone());
                    async move { push_until_done(&engine, peer_id, &progress, &rec).await }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            if results.iter().any(|ok| !ok) {
                // Stopping: keep the position of what was fully acknowledged.
                let acked = progress.acked.load(Ordering::Relaxed);
                if acked != saved {
                    persist(&engine, peer_id, acked).await;
                }
                tracing::info!(peer = peer_id, "sync worker stopping");
                return;
            }
            progress.acked.store(last, Ordering::Relaxed);
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
