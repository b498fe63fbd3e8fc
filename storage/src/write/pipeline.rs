//! Pipelined replication of a client upload: the receiving node streams the body to its `write_quorum - 1`
//! peers while it writes it locally (one reader, several writers, bounded buffers: the slowest writer sets the
//! pace), like an HDFS write pipeline.
//!
//! The file ID (size + CRC32) is known only at the end, so the peer side has two phases:
//!
//! 1. `POST /v1/pipeline/stage?store_path=N` with the body: the peer stages it (temp file, fsynced) and answers a
//!    token. Staged bodies wait in a bounded table and expire (see [`crate::sync::staged`], the peer side).
//! 2. `POST /v1/pipeline/commit` with [`CommitRequest`] (token, ID, mtime, metadata): the peer checks the body
//!    against the ID and commits it through the same group commit as every write (its journal), answering once
//!    it is durable.
//!
//! A peer that fails in either phase is dropped from the pipeline; the caller then pushes the committed file the
//! usual way ([`crate::sync::client::push_upload`], see [`super::quorum`]) to another live peer, and the binlog
//! record still carries the upload for later sync. The client's status is decided exactly as before (quorum or
//! 503).
//!
//! Small bodies ([`crate::sync::protocol::SMALL_BODY`]) skip the two phases ([`super::small`]): the ID is known
//! before anything is written, so the source sends each peer one `PUT /v1/replica/{id}` while it writes its own
//! copy.
//!
//! A frozen peer cannot hold the upload: a chunk its buffer has not taken within the stall timeout
//! (`peer_stall_timeout_ms`) drops it from the pipeline, and its stage request is aborted (the connection is
//! closed, so the peer discards the partial body) if it has not answered within the transfer's deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fdfs_common::wire::{MemberInfo, Metadata};
use fdfs_common::FileId;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use tokio::sync::mpsc;

use super::Writes;
use crate::error::Result;
use crate::store::{NewFile, Stored};
use crate::sync::client::{check, request, PushError};
use crate::sync::protocol::{CommitRequest, StageAnswer};
use crate::sync::SyncEngine;

/// Chunks buffered towards each peer.
const PIPE_DEPTH: usize = 8;
/// Timeout of the commit request (the body is already there).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Writes {
    /// The streamed path of [`Writes::upload`]: the body goes through a [`Pipeline`] to the first round's
    /// peers while it is written here.
    pub(super) async fn upload_streamed<S, E>(
        &self,
        new: NewFile,
        meta: Metadata,
        body: S,
        limit: u64,
    ) -> Result<(Stored, u32)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let round = self.first_round();
        if round.asked().is_empty() {
            let stored = self.store().create(new, meta, body, limit).await?;
            self.after_commit(&stored.id).await?;
            return Ok((stored, 1));
        }
        let mut pipe = Pipeline::open(&self.engine, round.asked().to_vec(), new.store_path());
        let stored = self
            .store()
            .create(new, meta.clone(), pipe.tee(body), limit)
            .await?;
        self.after_commit(&stored.id).await?;
        let id = &stored.id;
        let mtime = self
            .store()
            .stat(id)
            .await?
            .and_then(|m| m.modified().ok())
            .map_or(0, crate::store::layout::unix_secs);
        let (took, failed) = pipe.commit(&self.engine, id, mtime, &meta).await;
        let replicas = self.settle(id, &round, took, failed).await?;
        Ok((stored, replicas))
    }
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
                check(resp.status(), "replica stage")?;
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
            stall: engine.config().peer_limits.stall,
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
        let limits = engine.config().peer_limits;
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
                gen: engine.tombstones().incarnation(id),
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
                Ok(resp) => check(resp.status(), "replica commit"),
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
