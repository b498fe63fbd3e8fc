//! Pipelined replication of a client upload: the receiving node streams the body to its `write_quorum - 1`
//! peers while it writes it locally (one reader, several writers, bounded buffers: the slowest writer sets the
//! pace), like an HDFS write pipeline.
//!
//! The file ID (size + CRC32) is known only at the end, so the peer side has two phases:
//!
//! 1. `POST /v1/pipeline/stage?store_path=N` with the body: the peer stages it (temp file, fsynced) and answers a
//!    token. Staged bodies wait in a bounded table ([`MAX_STAGED`]) and expire after [`STAGED_TTL`].
//! 2. `POST /v1/pipeline/commit` with [`CommitRequest`] (token, ID, mtime, metadata): the peer checks the body
//!    against the ID and commits it through the same group commit as every write (its journal), answering once
//!    it is durable.
//!
//! A peer that fails in either phase is dropped from the pipeline; the caller then pushes the committed file the
//! usual way ([`super::client::push_upload`]) to another live peer, and the binlog record still carries the
//! upload for later sync. The client's status is decided exactly as before (quorum or 503).
//!
//! Small bodies ([`SMALL_BODY`]) skip the two phases: the ID is known before anything is written, so the
//! source sends each peer one `PUT /v1/replica/{id}` while it writes its own copy.
//!
//! A frozen peer cannot hold the upload: a chunk its buffer has not taken within the stall timeout
//! (`peer_stall_timeout_ms`) drops it from the pipeline, and its stage request is aborted (the connection is
//! closed, so the peer discards the partial body) if it has not answered within the transfer's deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fdfs_common::wire::{MemberInfo, Metadata};
use fdfs_common::FileId;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::client::{request, PushError};
use super::SyncEngine;
use crate::error::{Result, StorageError};
use crate::store::{Committed, Incoming, Staged};

/// Bodies up to this many bytes take the small-upload path of [`SyncEngine::upload`]: read whole, the ID made
/// from them at once, then the local write and one `PUT /v1/replica/{id}` per peer (body, metadata and
/// incarnation together) run side by side, each a single blocking call on its node. No stage/commit round
/// trips, no per-chunk hand-offs between threads. The memory this holds per upload is bounded by it.
pub const SMALL_BODY: usize = 128 * 1024;

/// Chunks buffered towards each peer.
const PIPE_DEPTH: usize = 8;
/// Staged bodies kept waiting for their commit at once (more get 503).
pub const MAX_STAGED: usize = 256;
/// A staged body never committed is dropped after this long.
pub const STAGED_TTL: Duration = Duration::from_secs(120);
/// Timeout of the commit request (the body is already there).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Answer of the stage request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageAnswer {
    /// Names the staged body in the commit request.
    pub token: u64,
    /// Bytes the peer staged (the source checks it against what it sent).
    pub size: u64,
}

/// Body of the commit request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The stage answer's token.
    pub token: u64,
    /// The ID the source gave the upload.
    pub file_id: String,
    /// Unix seconds given to the replica.
    pub mtime: u64,
    /// Metadata stored with the replica.
    #[serde(default)]
    pub meta: Metadata,
    /// The upload's incarnation (see [`super::tombstones`]): a slave ID uploaded again after a delete.
    #[serde(default)]
    pub gen: u64,
}

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

/// Source side: one stage request per peer, fed by [`Pipeline::tee`].
pub struct Pipeline {
    senders: Vec<Option<mpsc::Sender<std::io::Result<Bytes>>>>,
    requests: Vec<(
        MemberInfo,
        tokio::task::JoinHandle<std::result::Result<u64, PushError>>,
    )>,
    /// Peers dropped from the pipeline because they stopped taking the body (by position in `requests`).
    stalled: Arc<Vec<AtomicBool>>,
    /// How long a chunk may wait for a peer's buffer.
    stall: Duration,
}

impl Pipeline {
    /// Open a stage request to each peer (nothing is sent until the body flows).
    pub fn open(engine: &SyncEngine, peers: Vec<MemberInfo>, store_path: u8) -> Pipeline {
        let mut senders = Vec::new();
        let mut requests = Vec::new();
        for peer in peers {
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE_DEPTH);
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let rb = request(
                engine,
                Method::POST,
                format!(
                    "http://{}/v1/pipeline/stage?store_path={store_path}",
                    peer.addr
                ),
            )
            .body(reqwest::Body::wrap_stream(body));
            let task = tokio::spawn(async move {
                let resp = rb.send().await?;
                super::client::check(resp.status(), "replica stage")?;
                let answer: StageAnswer = resp.json().await?;
                Ok(answer.token)
            });
            senders.push(Some(tx));
            requests.push((peer, task));
        }
        let stalled = Arc::new(requests.iter().map(|_| AtomicBool::new(false)).collect());
        Pipeline {
            senders,
            requests,
            stalled,
            stall: engine.config.peer_limits.stall,
        }
    }

    /// The client's body, passed on to every peer still in the pipeline as it is read: each chunk waits until
    /// every peer's buffer takes it (back pressure from the slowest). A peer that fails is dropped. An error of
    /// the body is passed on, so the peers drop their staged part.
    pub fn tee<'a, S, E>(
        &'a mut self,
        body: S,
    ) -> impl Stream<Item = std::result::Result<Bytes, String>> + Send + 'a
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'a,
        E: std::fmt::Display,
    {
        let (senders, stalled, stall) = (&self.senders, &self.stalled, self.stall);
        body.then(move |item| {
            let item = item.map_err(|e| e.to_string());
            // A peer that failed has dropped its receiver: sending to it fails at once.
            let txs: Vec<_> = senders
                .iter()
                .enumerate()
                .filter(|(i, _)| !stalled[*i].load(Ordering::Relaxed))
                .filter_map(|(i, tx)| tx.clone().map(|tx| (i, tx)))
                .collect();
            let stalled = stalled.clone();
            async move {
                for (i, tx) in txs {
                    let msg = match &item {
                        Ok(b) => Ok(b.clone()),
                        Err(e) => Err(std::io::Error::other(e.clone())),
                    };
                    let msg = match tx.try_send(msg) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => continue,
                        Err(mpsc::error::TrySendError::Full(msg)) => msg,
                    };
                    // The peer's buffer is full: wait for it, but not forever (a frozen peer).
                    if tokio::time::timeout(stall, tx.send(msg)).await.is_err() {
                        stalled[i].store(true, Ordering::Relaxed);
                    }
                }
                item
            }
        })
    }

    /// Close the bodies and commit `id` on every peer whose stage went through. Returns the peers that hold the
    /// file durably and those that failed.
    pub async fn commit(
        mut self,
        engine: &SyncEngine,
        id: &FileId,
        mtime: u64,
        meta: &Metadata,
    ) -> (Vec<MemberInfo>, Vec<(MemberInfo, PushError)>) {
        self.senders.clear();
        let requests = std::mem::take(&mut self.requests);
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut commits = Vec::new();
        // The body is all sent by now: a live peer answers once it has fsynced it.
        let limits = engine.config.peer_limits;
        let deadline = self.stall + Duration::from_secs(id.info().size / limits.min_rate.max(1));
        for (i, (peer, mut task)) in requests.into_iter().enumerate() {
            if self.stalled[i].load(Ordering::Relaxed) {
                // Its body is incomplete: closing the connection makes the peer discard it.
                task.abort();
                failed.push((
                    peer,
                    PushError::TimedOut("peer stopped taking the body".into()),
                ));
                continue;
            }
            let joined = match tokio::time::timeout(deadline, &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    task.abort();
                    failed.push((
                        peer,
                        PushError::TimedOut("peer did not stage in time".into()),
                    ));
                    continue;
                }
            };
            let token = match joined {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    failed.push((peer, e));
                    continue;
                }
                Err(e) => {
                    failed.push((peer, PushError::Retry(e.to_string())));
                    continue;
                }
            };
            let body = CommitRequest {
                token,
                file_id: id.to_string(),
                mtime,
                meta: meta.clone(),
                gen: engine.tombstones.incarnation(id),
            };
            let rb = request(
                engine,
                Method::POST,
                format!("http://{}/v1/pipeline/commit", peer.addr),
            )
            .timeout(COMMIT_TIMEOUT)
            .json(&body);
            commits.push((peer, rb.send()));
        }
        for (peer, fut) in commits {
            let r = match fut.await {
                Ok(resp) => super::client::check(resp.status(), "replica commit"),
                Err(e) => Err(e.into()),
            };
            match r {
                Ok(()) => ok.push(peer),
                Err(e) => failed.push((peer, e)),
            }
        }
        (ok, failed)
    }
}

impl Drop for Pipeline {
    /// A pipeline dropped before its commit (the upload failed): cut the stage requests, so the peers see a
    /// broken body and stage nothing.
    fn drop(&mut self) {
        for (_, task) in &self.requests {
            task.abort();
        }
    }
}
