//! Listing catch-up: copy every file an active peer has and this node lacks, and apply the peer's tombstones,
//! from every active peer (see [`run`]).
//!
//! A new or wiped member (no synced marker) runs it over every active peer before it reports itself synced;
//! until then its heartbeats say `syncing: true` and the tracker neither assigns uploads to it nor offers it
//! for reads. Every member also runs it in the background, once per peer each time that peer becomes active,
//! for files whose source died while this node was away (peers' workers push only their own binlogs). Files
//! are fetched with bounded concurrency; a failed pass resumes from its cursor. The rate is logged and kept in
//! [`CatchupReport`].
//!
//! A node with no active peer decides it is the group's seed (and marks itself synced) only when no peer can
//! hold data it lacks: every peer is syncing or offline without files, and it has the lowest id among the
//! syncing ones. Otherwise it waits (FastDFS could get stuck in WAIT_SYNC; here the only wait is for a member
//! that actually has the data).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fdfs_common::wire::{MemberInfo, MemberState};
use fdfs_common::FileId;
use futures_util::stream::{self, StreamExt};

use super::client::{self, PushError};
use super::protocol::ListPage;
use super::{metrics, SyncEngine};
use crate::error::Result;

/// Files per listing page.
const PAGE: usize = 1000;
/// Attempts per file within one page.
const FETCH_ATTEMPTS: u32 = 3;

/// Outcome of one catch-up pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CatchupReport {
    /// Files listed by the peer.
    pub listed: u64,
    /// Files copied.
    pub files: u64,
    /// Bytes of the files copied.
    pub bytes: u64,
    /// Tombstones applied (files removed here).
    pub removed: u64,
    /// Files whose metadata was copied because it differed (the file itself was here already).
    #[serde(default)]
    pub metadata: u64,
    /// Wall-clock duration of the catch-up.
    pub seconds: f64,
}

impl CatchupReport {
    pub(crate) fn files_per_second(&self) -> f64 {
        self.files as f64 / self.seconds.max(1e-9)
    }
    pub(crate) fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// The catch-up task; runs until told to stop (see [`crate::background`]). `initial`: this node has no synced
/// marker and must catch up before it serves.
///
/// It applies the listing of EVERY active peer (their union, minus every member's tombstones), not one peer's,
/// and it applies a peer's listing again whenever that peer becomes active again (back from offline or from
/// its own catch-up). That is how files and deletes that only some members hold reach the others, including a
/// member that lost its data: a sender's binlog position for a wiped member says what it acknowledged before
/// the wipe, and its binlog may be pruned past it, so resending from the start could not cover everything; the
/// wiped member pulling each peer's full listing when it (or the peer) comes back does.
pub async fn run(engine: SyncEngine, initial: bool) {
    // Peers whose listing was applied since they last became active.
    let mut passed: HashSet<u32> = HashSet::new();
    // Interrupted passes: cursor and progress, per peer.
    let mut cursors: HashMap<u32, (String, CatchupReport)> = HashMap::new();
    let mut synced = !initial;
    let mut backoff = Duration::from_millis(200);
    let mut waiting_logged = false;
    loop {
        if !engine.peers_known() {
            // No tracker answered yet: nothing is known about the group.
            if !waiting_logged && initial {
                tracing::info!("waiting for a tracker to describe the group");
                waiting_logged = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let peers = engine.peer_list();
        if peers.is_empty() && !synced {
            tracing::info!("no other member in the group: this node is its seed");
            finish(&engine).await;
            synced = true;
        }
        passed.retain(|id| {
            peers
                .iter()
                .any(|p| p.node_id == *id && p.state == MemberState::Active)
        });
        let todo: Vec<MemberInfo> = engine
            .active_peers()
            .into_iter()
            .filter(|p| !passed.contains(&p.node_id))
            .collect();
        if todo.is_empty() {
            if !synced && (!passed.is_empty() || may_seed(&engine, &peers)) {
                if passed.is_empty() {
                    tracing::info!(
                        "no member holds data this node lacks: this node is the group's seed"
                    );
                }
                finish(&engine).await;
                synced = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        for source in todo {
            let (after, report) = cursors.entry(source.node_id).or_default();
            let t0 = Instant::now();
            let result = pass(&engine, &source, after, report).await;
            report.seconds += t0.elapsed().as_secs_f64();
            match result {
                Ok(()) => {
                    let (_, report) = cursors.remove(&source.node_id).unwrap_or_default();
                    tracing::info!(
                        peer = source.node_id,
                        listed = report.listed,
                        files = report.files,
                        bytes = report.bytes,
                        removed = report.removed,
                        metadata = report.metadata,
                        seconds = report.seconds,
                        files_per_second = report.files_per_second(),
                        mb_per_second = report.megabytes_per_second(),
                        "catch-up from a peer done"
                    );
                    metrics::catchup_done(&report);
                    engine.set_last_catchup(report);
                    passed.insert(source.node_id);
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::warn!(peer = source.node_id, error = %e, cursor = %after, "catch-up interrupted; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

/// Mark synced, retrying until the disk lets us.
async fn finish(engine: &SyncEngine) {
    loop {
        match engine.mark_synced().await {
            Ok(()) => {
                tracing::info!("member synced");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the synced marker");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn may_seed(engine: &SyncEngine, peers: &[MemberInfo]) -> bool {
    let me = engine.config.node_id;
    peers.iter().all(|p| match p.state {
        MemberState::Active => false,
        MemberState::Offline => p.file_count == 0,
        MemberState::Syncing => p.node_id > me,
    })
}

/// Page through `source`'s listing from `after`, fetching what is missing here and applying tombstones.
async fn pass(
    engine: &SyncEngine,
    source: &MemberInfo,
    after: &mut String,
    report: &mut CatchupReport,
) -> std::result::Result<(), PushError> {
    loop {
        let page = client::list(engine, source, after, PAGE).await?;
        report.listed += page.files.len() as u64;
        apply_page(engine, source, &page, report).await?;
        match page.next {
            Some(next) => *after = next,
            None => return Ok(()),
        }
    }
}

async fn apply_page(
    engine: &SyncEngine,
    source: &MemberInfo,
    page: &ListPage,
    report: &mut CatchupReport,
) -> std::result::Result<(), PushError> {
    // Tombstones first: record them, remove our copies of the incarnations they delete.
    let tombs: Vec<(FileId, u64)> = page
        .tombstones
        .iter()
        .filter_map(|t| super::tombstones::parse_entry(t))
        .collect();
    if !tombs.is_empty() {
        let e = engine.clone();
        let removed = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut removed = 0;
            for (id, gen) in &tombs {
                e.tombstones.add(id, *gen)?;
                if e.tombstones.is_deleted(id) && e.store.remove_blocking(id)? {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(crate::error::StorageError::from)??;
        report.removed += removed;
    }
    // Which listed files are missing here (one blocking pass per page).
    let e = engine.clone();
    let listed = page.files.clone();
    // Metadata held on both sides that differs: the newer version wins (see `crate::store::Store::
    // put_meta_version_blocking`; the fetch checks again). From a peer that predates versions, its value is
    // copied only when this node has none or catches up for the first time.
    let initial = engine.syncing.load(std::sync::atomic::Ordering::Relaxed);
    type Todo = (Vec<(FileId, bool)>, Vec<FileId>);
    let (missing, meta_fix) = tokio::task::spawn_blocking(move || -> Result<Todo> {
        let mut out = Vec::new();
        let mut meta_fix = Vec::new();
        let mut seen = HashSet::new();
        for f in listed {
            let (meta, gen, crc, version) = (f.meta, f.gen, f.meta_crc, f.meta_version);
            let Ok(id) = f.id.parse::<FileId>() else {
                continue;
            };
            if !seen.insert(f.id) || e.tombstones.hides(&id, gen) {
                continue;
            }
            let here = e.tombstones.incarnation(&id);
            if e.store.stat_blocking(&id)?.is_none() {
                out.push((id, meta));
            } else if here < gen {
                // Our copy is an older incarnation, deleted since (its tombstone may be on its way).
                e.tombstones.add(&id, here)?;
                e.store.remove_blocking(&id)?;
                out.push((id, meta));
            } else if here == gen && (crc.is_some() || version.is_some()) {
                // Both hold it: does the metadata match?
                let Some((ours, ours_version)) = e.store.get_meta_versioned_blocking(&id)? else {
                    continue;
                };
                let ours_crc = super::protocol::meta_crc(&ours);
                let theirs_newer = match (version, ours_version) {
                    (Some(t), Some(o)) => (t, crc) > (o, ours_crc),
                    (Some(_), None) => true,
                    (None, _) => ours_crc.is_none() || initial,
                };
                if ours_crc != crc && theirs_newer {
                    meta_fix.push(id);
                }
            }
        }
        Ok((out, meta_fix))
    })
    .await
    .map_err(crate::error::StorageError::from)??;
    let mut fetched = stream::iter(missing)
        .map(|(id, meta)| async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                // Another member's push may have brought it meanwhile: without its metadata (a pushed upload
                // carries none; the metadata change that followed may never be pushed, e.g. when the member
                // that took it lost its disk), so that is still copied from here.
                if engine.store.exists(&id).await? {
                    if meta {
                        match client::fetch_meta(engine, source, &id).await {
                            Err(PushError::Rejected(e)) => {
                                tracing::warn!(file_id = %id, error = %e, "cannot copy metadata; skipping it");
                            }
                            r => r?,
                        }
                    }
                    return Ok(None);
                }
                match client::fetch(engine, source, &id, meta).await {
                    Err(PushError::Retry(e) | PushError::Unreachable(e) | PushError::TimedOut(e))
                        if attempt < FETCH_ATTEMPTS => {
                        tracing::debug!(file_id = %id, error = %e, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    }
                    Err(PushError::Rejected(e)) => {
                        tracing::warn!(file_id = %id, error = %e, "cannot copy a listed file; skipping it");
                        return Ok(None);
                    }
                    Err(PushError::Local(e)) if e.status().is_client_error() => {
                        tracing::warn!(file_id = %id, error = %e, "a listed file does not fit here; skipping it");
                        return Ok(None);
                    }
                    r => return r,
                }
            }
        })
        .buffer_unordered(engine.config.catchup_concurrency.max(1));
    // The first file that cannot be fetched (after its retries) ends the page: the source is likely gone or
    // frozen, and the fetches still running are dropped instead of each waiting out its own timeouts. The caller
    // retries the page, from another member if this one went offline.
    while let Some(r) = fetched.next().await {
        if let Some(bytes) = r? {
            report.files += 1;
            report.bytes += bytes;
            metrics::fetched(bytes);
        }
    }
    drop(fetched);
    // Metadata of files held on both sides that differs (e.g. a copy whose metadata request failed after its
    // body was written): a failure fails the page, which is retried from the same cursor.
    let mut fixed = stream::iter(meta_fix)
        .map(|id| async move {
            match client::fetch_meta(engine, source, &id).await {
                Err(PushError::Rejected(e)) => {
                    tracing::warn!(file_id = %id, error = %e, "cannot copy metadata; skipping it");
                    Ok(())
                }
                r => r,
            }
        })
        .buffer_unordered(engine.config.catchup_concurrency.max(1));
    while let Some(r) = fixed.next().await {
        r?;
        report.metadata += 1;
    }
    Ok(())
}
