//! The node's write path: every new file accepted here, whichever door it came in by (HTTP `/v1/upload`, the
//! FastDFS door, a finished appender file, `fdfs import-fastdfs`, a thumbnail rendered on first read), goes
//! through [`Writes`]. Each is made durable here (the store's group commit, recorded in the binlog), followed by
//! the same after-commit step (`Writes::after_commit`), and held by the write quorum before it is acknowledged.
//!
//! - [`quorum`]: the one quorum rule, the early refusal of uploads that cannot reach it, and the pushes of a
//!   committed file that make up for failed peers;
//! - [`small`]: a master file whose body fits in [`crate::sync::protocol::SMALL_BODY`]: one write here and one
//!   `PUT` per peer, side by side;
//! - [`pipeline`]: any other body, streamed to the peers while it is written here (stage, then commit);
//! - [`import`]: a file stored under the ID it already has;
//! - [`changes`]: client deletes and metadata changes, held by the write quorum before they are acknowledged.
//!
//! Replication after the acknowledgement (sync workers, catch-up, the peer client and routes) is
//! [`crate::sync`]'s.

pub mod abandon;
pub mod changes;
pub mod import;
pub mod pipeline;
pub mod quorum;
pub mod small;

use std::sync::Arc;

use bytes::Bytes;
use fdfs_common::wire::Metadata;
use fdfs_common::FileId;
use futures_util::{Stream, StreamExt};

use crate::error::{Result, StorageError};
use crate::store::{Committed, Incoming, NewFile, Staged, Store, Stored};
use crate::sync::protocol::SMALL_BODY;
use crate::sync::SyncEngine;

pub use import::ImportOutcome;

/// The write path; cheap to clone. The node holds one, and every door sends its new files through it.
#[derive(Clone)]
pub struct Writes {
    /// The replication engine: peers, what is known of reaching them, the peer client, the workers to wake.
    engine: SyncEngine,
    /// Upload attempts gateways gave up on, and those stored (see [`abandon`]).
    attempts: Arc<abandon::Attempts>,
}

impl Writes {
    /// The write path of the node whose replication `engine` runs.
    pub fn new(engine: SyncEngine) -> Writes {
        Writes {
            engine,
            attempts: Arc::default(),
        }
    }

    fn store(&self) -> &Arc<Store> {
        self.engine.store()
    }

    /// Store a new upload (ID made from the content, metadata with the file, recorded in the binlog) while its
    /// body goes to `write_quorum - 1` live peers; answer once the quorum holds it durably. Returns the file and
    /// how many members hold it. A peer that fails is replaced by a push of the committed file to another live
    /// peer; 503 when the quorum cannot be reached (the file stays, the workers push it).
    ///
    /// A master file whose body ends within [`SMALL_BODY`] takes the [`small`] path; anything else streams
    /// through the [`pipeline`].
    pub async fn upload<S, E>(
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
        // Known unable to reach the quorum: refuse before reading any of the body (every door comes here).
        self.quorum_check()?;
        // Fused: a body read to its end here is chained below and polled once more, which must answer `None`.
        let mut body = Box::pin(body.fuse());
        let mut head = Vec::new();
        let mut len = 0usize;
        let whole = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    len += chunk.len();
                    head.push(chunk);
                    if len > SMALL_BODY {
                        break false;
                    }
                }
                Some(Err(e)) => return Err(StorageError::BodyAborted(e.to_string())),
                None => break true,
            }
        };
        if len as u64 > limit {
            return Err(StorageError::TooLarge { limit });
        }
        if whole {
            if let NewFile::Master {
                store_path,
                ext,
                source_id,
            } = &new
            {
                let data = small::concat(head);
                return self
                    .upload_small(*store_path, ext.as_deref(), *source_id, meta, data)
                    .await;
            }
        }
        let rest = futures_util::stream::iter(head.into_iter().map(Ok::<_, E>)).chain(body);
        self.upload_streamed(new, meta, rest, limit).await
    }

    /// Commit a body that was staged elsewhere (a finished appender file) as a new upload under `id`, recorded
    /// in the binlog, then push the file from disk to `write_quorum - 1` live peers. Returns the file, how many
    /// members hold it, and whether that is the quorum (when not, the file stays and the workers push it later).
    pub async fn commit_new(
        &self,
        staged: Staged,
        id: &FileId,
        meta: Metadata,
    ) -> Result<(Stored, u32, bool)> {
        let (size, crc32) = (staged.size, staged.crc32);
        let committed = self
            .store()
            .commit(staged, id, Incoming::client(meta))
            .await?;
        if committed == Committed::AlreadyExists {
            return Err(StorageError::Internal(format!(
                "generated name {id} collided with an existing file"
            )));
        }
        self.after_commit(id).await?;
        let (replicas, reached) = self.push_committed(id).await;
        let stored = Stored {
            id: id.clone(),
            size,
            crc32,
        };
        Ok((stored, replicas, reached))
    }

    /// What follows the commit of every new file here, before any push names it: past a tombstone (a slave ID
    /// uploaded again after a delete) the file is a new incarnation, recorded durably; then the sync workers are
    /// woken for its binlog record.
    async fn after_commit(&self, id: &FileId) -> Result<()> {
        // Only a tombstone gives the incarnation anything to record (the blocking pool only then).
        if self.engine.tombstones().is_deleted(id) {
            let (engine, id) = (self.engine.clone(), id.clone());
            tokio::task::spawn_blocking(move || engine.tombstones().revive(&id)).await??;
        }
        self.engine.announce();
        Ok(())
    }
}
