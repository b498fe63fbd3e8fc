//! The peer side of an upload pipeline ([`crate::write::pipeline`] is the source side): bodies a peer streams
//! here (`POST /v1/pipeline/stage`) are staged (temp file, fsynced) and wait in a bounded table ([`MAX_STAGED`],
//! expiring after [`STAGED_TTL`]) until `POST /v1/pipeline/commit` names their ID ([`commit_staged`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fdfs_common::FileId;

use super::protocol::CommitRequest;
use super::SyncEngine;
use crate::error::{Result, StorageError};
use crate::store::{Committed, Incoming, Staged};

/// Staged bodies kept waiting for their commit at once (more get 503).
pub const MAX_STAGED: usize = 256;
/// A staged body never committed is dropped after this long.
pub const STAGED_TTL: Duration = Duration::from_secs(120);

/// Staged bodies by token, with the time they were staged.
type Waiting = HashMap<u64, (Staged, Instant)>;

/// Bodies staged by peers' pipelines, waiting for their commit.
#[derive(Default)]
pub struct StagedTable {
    /// Last token handed out, and the bodies waiting.
    next: Mutex<(u64, Waiting)>,
}

impl StagedTable {
    /// Keep a staged body; its token. 503 when the table is full (after dropping expired entries).
    pub fn put(&self, staged: Staged) -> Result<u64> {
        let mut g = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let (next, map) = &mut *g;
        map.retain(|_, (_, at)| at.elapsed() < STAGED_TTL);
        if map.len() >= MAX_STAGED {
            return Err(StorageError::Unavailable(
                "too many staged replicas waiting for their commit".into(),
            ));
        }
        *next += 1;
        map.insert(*next, (staged, Instant::now()));
        Ok(*next)
    }

    /// Take a staged body (dropping expired ones).
    pub fn take(&self, token: u64) -> Option<Staged> {
        let mut g = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let (_, map) = &mut *g;
        map.retain(|_, (_, at)| at.elapsed() < STAGED_TTL);
        map.remove(&token).map(|(s, _)| s)
    }

    /// Bodies waiting now.
    pub fn len(&self) -> usize {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).1.len()
    }

    /// Whether no body is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Peer side, phase 2: commit a staged body under its ID (journal, group commit). 404 when the token is unknown
/// (expired), 410 when the ID was deleted here.
pub async fn commit_staged(engine: &SyncEngine, req: CommitRequest) -> Result<Option<Committed>> {
    let id: FileId = req.file_id.parse()?;
    let Some(staged) = engine.staged.take(req.token) else {
        return Err(StorageError::NotFound(format!(
            "no staged body {} (expired?)",
            req.token
        )));
    };
    let gen = req.gen;
    if engine.tombstones.hides(&id, gen) {
        return Ok(None);
    }
    crate::store::check_against_id(&id, staged.size, staged.crc32)?;
    engine.accept_incarnation(&id, gen).await?;
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(req.mtime);
    let committed = engine
        .store
        .commit(staged, &id, Incoming::peer(Some(mtime), req.meta))
        .await?;
    // A delete that raced with this commit wins.
    if engine.tombstones.hides(&id, gen) {
        engine.store.remove(&id).await?;
        return Ok(None);
    }
    Ok(Some(committed))
}
