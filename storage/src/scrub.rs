//! Scrubbing: every master file's ID carries its size and CRC32, so the node can tell bit rot and truncation
//! from a good copy without asking anyone. A background pass re-reads every file of every store path on the
//! blocking pool, rate-limited to `scrub_bytes_per_sec` (0 turns it off), starting every
//! `scrub_interval_secs` (the first pass soon after start). A file whose size or CRC32 does not match its ID is
//! repaired from a peer whose copy does (fetched into a temp file next to it, checked, fsynced, then renamed
//! over the bad copy: readers see the old or the new file, never a half-written one).
//!
//! Slave files carry their master's size and CRC32, not their own: they are skipped (counted as such); a
//! member that lacks one is still found by `fdfs verify`, which compares the members' listings. A rendered
//! thumbnail whose master is gone (left by a race between a render and the master's delete) is reported as
//! corrupt, and with repair deleted (recorded, so its peers delete theirs too).
//!
//! `POST /v1/scrub?repair=true|false` runs a whole pass now, unthrottled, and answers a [`ScrubReport`]
//! (`fdfs verify` calls it on every member). Metrics: `fdfs_scrub_files_checked_total`,
//! `fdfs_scrub_bytes_checked_total`, `fdfs_scrub_files_skipped_total`, `fdfs_scrub_corrupt_total`,
//! `fdfs_scrub_repaired_total`, `fdfs_scrub_repair_failed_total`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{MemberInfo, ORIGIN_HEADER};
use fdfs_common::FileId;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::error::{Result, StorageError};
use crate::store::Store;
use crate::sync::SyncEngine;

/// Read size while checking a file.
const CHUNK: usize = 256 * 1024;
/// The first background pass starts at most this long after the node starts.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(600);

/// Settings of the scrubber.
#[derive(Debug, Clone, Copy)]
pub struct ScrubConfig {
    /// Bytes read per second by the background pass; 0 disables it.
    pub bytes_per_sec: u64,
    /// Time between the starts of two background passes.
    pub interval: Duration,
}

/// One file that did not match its ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corrupt {
    /// ID of the bad file.
    pub file_id: String,
    /// What is wrong, e.g. `size 100, expected 200` or `crc32 1234abcd, expected 89ef0011`.
    pub problem: String,
    /// Replaced with a good copy from a peer.
    pub repaired: bool,
}

/// Result of a scrub pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// The node that scrubbed its store.
    pub node_id: u32,
    /// Files whose size and CRC32 were checked.
    pub checked: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Files that cannot be checked on their own (slave files carry their master's size and CRC32).
    pub skipped: u64,
    /// Every file found not to match its ID, repaired or not.
    pub corrupt: Vec<Corrupt>,
    /// How many of `corrupt` were replaced with a good copy.
    pub repaired: u64,
}

/// Keeps a reader under a byte rate (0: unlimited). Blocking.
struct Limiter {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Limiter {
    fn new(rate: u64) -> Self {
        Limiter {
            rate,
            start: Instant::now(),
            bytes: 0,
        }
    }

    fn consumed(&mut self, n: usize) {
        if self.rate == 0 {
            return;
        }
        self.bytes += n as u64;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// What a file holds: its size and CRC32, read in [`CHUNK`]s under the limiter. Blocking.
fn measure(path: &Path, limiter: &mut Limiter) -> std::io::Result<(u64, u32)> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = crc32fast::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        limiter.consumed(n);
    }
}

/// Whether a file can be checked against its ID (slaves carry their master's size and CRC32).
fn checkable(id: &FileId) -> bool {
    id.name.prefix().is_none()
}

/// What is wrong with a file of `size` bytes and `crc` against its ID, if anything.
fn problem(id: &FileId, size: u64, crc: u32) -> Option<String> {
    let want = id.info();
    if size != want.size {
        Some(format!("size {size}, expected {}", want.size))
    } else if crc != want.crc32 {
        Some(format!("crc32 {crc:08x}, expected {:08x}", want.crc32))
    } else {
        None
    }
}

/// What is wrong with a file the scan found.
enum Finding {
    /// Its bytes do not match its ID (or cannot be read): replace it with a peer's good copy.
    Corrupt(String),
    /// A rendered thumbnail whose master is gone: delete it.
    Orphan,
}

/// A rendered thumbnail here whose master is not.
fn orphan_thumbnail(store: &Store, id: &FileId) -> Result<bool> {
    Ok(
        crate::thumbnail::is_rendered(store.get_meta_blocking(id)?.as_ref())
            && !store.master_present_blocking(id)?,
    )
}

/// Check every file of every store path; `found` gets each corrupt one. Blocking.
fn scan_blocking(
    store: &Store,
    rate: u64,
    report: &mut ScrubReport,
    mut found: impl FnMut(FileId, Finding),
) -> Result<()> {
    let mut limiter = Limiter::new(rate);
    for sp in 0..store.store_path_count() {
        let index = u8::try_from(sp).unwrap_or(u8::MAX);
        store.walk_disk_blocking(index, |id, path, _meta| {
            if !checkable(&id) {
                if orphan_thumbnail(store, &id)? {
                    tracing::warn!(file_id = %id, "scrub: a rendered thumbnail whose master is gone");
                    metrics::counter!("fdfs_scrub_corrupt_total").increment(1);
                    found(id, Finding::Orphan);
                    return Ok(());
                }
                report.skipped += 1;
                metrics::counter!("fdfs_scrub_files_skipped_total").increment(1);
                return Ok(());
            }
            let (size, crc) = match measure(path, &mut limiter) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // deleted meanwhile
                Err(e) => {
                    tracing::warn!(file_id = %id, error = %e, "scrub: cannot read a file");
                    found(id, Finding::Corrupt(format!("unreadable: {e}")));
                    return Ok(());
                }
            };
            report.checked += 1;
            report.bytes += size;
            metrics::counter!("fdfs_scrub_files_checked_total").increment(1);
            metrics::counter!("fdfs_scrub_bytes_checked_total").increment(size);
            if let Some(p) = problem(&id, size, crc) {
                tracing::error!(file_id = %id, problem = %p, "scrub: file does not match its id");
                metrics::counter!("fdfs_scrub_corrupt_total").increment(1);
                found(id, Finding::Corrupt(p));
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// One whole pass: check every file at `rate` bytes/s (0: unlimited), repair the bad ones when `repair`.
pub async fn pass(engine: &SyncEngine, rate: u64, repair: bool) -> Result<ScrubReport> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(FileId, Finding)>();
    let store = engine.store().clone();
    let scan = tokio::task::spawn_blocking(move || {
        let mut report = ScrubReport::default();
        scan_blocking(&store, rate, &mut report, |id, p| {
            let _ = tx.send((id, p));
        })
        .map(|()| report)
    });
    // Repairs run while the scan goes on.
    let mut corrupt = Vec::new();
    let mut repaired = 0u64;
    while let Some((id, finding)) = rx.recv().await {
        let (fixed, p) = match finding {
            Finding::Corrupt(p) => (repair && repair_file(engine, &id).await, p),
            Finding::Orphan => {
                // Gone either way (a peer's delete of it may have come first).
                let removed = repair
                    && engine.delete(&id).await.map(|_| true).unwrap_or_else(|e| {
                        tracing::warn!(file_id = %id, error = %e, "scrub: cannot delete an orphan thumbnail");
                        false
                    });
                (
                    removed,
                    "a rendered thumbnail whose master is gone".to_owned(),
                )
            }
        };
        repaired += u64::from(fixed);
        corrupt.push(Corrupt {
            file_id: id.to_string(),
            problem: p,
            repaired: fixed,
        });
    }
    let mut report = scan.await??;
    report.node_id = engine.config().node_id;
    report.corrupt = corrupt;
    report.repaired = repaired;
    Ok(report)
}

/// Replace a bad file with a good copy from the first peer that has one; false when none does.
pub async fn repair_file(engine: &SyncEngine, id: &FileId) -> bool {
    for peer in engine.live_peers() {
        match fetch_good_copy(engine, &peer, id).await {
            Ok(true) => {
                tracing::info!(file_id = %id, peer = peer.node_id, "scrub: repaired from a peer");
                metrics::counter!("fdfs_scrub_repaired_total").increment(1);
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(file_id = %id, peer = peer.node_id, error = %e, "scrub: repair from this peer failed")
            }
        }
    }
    tracing::error!(file_id = %id, "scrub: no peer has a good copy; the file stays as it is");
    metrics::counter!("fdfs_scrub_repair_failed_total").increment(1);
    false
}

/// Fetch `id` from `peer` into a temp file beside ours, check it against the ID, and rename it over ours.
/// `Ok(false)` when the peer has no good copy.
async fn fetch_good_copy(engine: &SyncEngine, peer: &MemberInfo, id: &FileId) -> Result<bool> {
    let path = engine.store().path(id)?;
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Internal(format!("no directory for {id}")))?
        .to_owned();
    let resp = engine
        .http()
        .get(format!("http://{}/v1/replica/{id}", peer.addr))
        .header(ORIGIN_HEADER, engine.config().node_id.to_string())
        .secret(engine.config().cluster_secret.as_deref())
        .send()
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Ok(false);
    }
    let mtime = crate::sync::protocol::mtime_from(resp.headers());
    let tmp = {
        let dir = dir.clone();
        // The repaired copy gets the same mode as any stored file (readable by an nginx worker).
        let mode = engine.store().file_mode();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            tempfile::Builder::new()
                .prefix(".scrub-")
                .permissions(std::fs::Permissions::from_mode(mode))
                .tempfile_in(dir)
        })
        .await??
    };
    let (file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StorageError::Unavailable(e.to_string()))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    if let Some(p) = problem(id, size, hasher.finalize()) {
        tracing::warn!(file_id = %id, peer = peer.node_id, problem = %p, "scrub: the peer's copy is bad too");
        return Ok(false);
    }
    let file = file.into_std().await;
    let (engine2, id2) = (engine.clone(), id.clone());
    tokio::task::spawn_blocking(move || -> Result<bool> {
        file.sync_all()?;
        if let Some(t) = mtime {
            file.set_modified(t)?;
        }
        drop(file);
        // Deleted while we fetched: leave it deleted.
        if engine2.tombstones().is_deleted(&id2) || !path.exists() {
            return Ok(false);
        }
        tmp_path.persist(&path).map_err(|e| e.error)?;
        std::fs::File::open(&dir)?.sync_all()?;
        if engine2.tombstones().is_deleted(&id2) {
            engine2.store().remove_blocking(&id2)?;
            return Ok(false);
        }
        Ok(true)
    })
    .await?
}

/// The background scrubber; runs until told to stop (see [`crate::background`]).
pub async fn run(engine: SyncEngine, config: ScrubConfig) {
    if config.bytes_per_sec == 0 {
        tracing::info!("scrubber off (scrub_bytes_per_sec = 0)");
        return;
    }
    let interval = config.interval.max(Duration::from_secs(1));
    tokio::time::sleep(interval.min(FIRST_PASS_AFTER)).await;
    loop {
        let started = Instant::now();
        match pass(&engine, config.bytes_per_sec, true).await {
            Ok(r) => tracing::info!(
                checked = r.checked,
                bytes = r.bytes,
                skipped = r.skipped,
                corrupt = r.corrupt.len(),
                repaired = r.repaired,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "scrub pass done"
            ),
            Err(e) => tracing::warn!(error = %e, "scrub pass failed"),
        }
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

#[derive(Debug, Deserialize)]
struct ScrubQuery {
    #[serde(default)]
    repair: bool,
}

/// `POST /v1/scrub?repair=`: a whole pass now, unthrottled (to be merged behind the cluster secret).
pub fn router(engine: SyncEngine) -> Router {
    Router::new()
        .route("/v1/scrub", post(scrub_now))
        .with_state(Arc::new(engine))
}

async fn scrub_now(
    State(engine): State<Arc<SyncEngine>>,
    Query(q): Query<ScrubQuery>,
) -> Result<Json<ScrubReport>> {
    Ok(Json(pass(&engine, 0, q.repair).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdfs_common::{FileName, NameInfo};

    fn id_for(content: &[u8]) -> FileId {
        let info = NameInfo {
            source_id: 7,
            created: 1_700_000_000,
            size: content.len() as u64,
            crc32: crc32fast::hash(content),
        };
        FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: 1,
            dir2: 2,
            name: FileName::generate(&info, Some("bin")).unwrap(),
        }
    }

    #[test]
    fn bit_rot_and_truncation_are_told_from_a_good_copy() {
        let good = b"hello scrubber".to_vec();
        let id = id_for(&good);
        assert_eq!(
            problem(&id, good.len() as u64, crc32fast::hash(&good)),
            None
        );
        let mut rot = good.clone();
        rot[3] ^= 0x10;
        assert!(problem(&id, rot.len() as u64, crc32fast::hash(&rot))
            .unwrap()
            .starts_with("crc32"));
        let cut = &good[..5];
        assert!(problem(&id, 5, crc32fast::hash(cut))
            .unwrap()
            .starts_with("size 5"));
        let slave = FileId {
            name: id.name.slave("_t", Some("bin")).unwrap(),
            ..id.clone()
        };
        assert!(checkable(&id) && !checkable(&slave));
    }

    #[test]
    fn limiter_keeps_the_rate() {
        let mut l = Limiter::new(10 << 20);
        let t = Instant::now();
        for _ in 0..4 {
            l.consumed(1 << 20);
        }
        // 4 MiB at 10 MiB/s takes at least 0.4 s.
        assert!(t.elapsed() >= Duration::from_millis(390));
    }
}
