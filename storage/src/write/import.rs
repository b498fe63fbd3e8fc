//! Imports: a file stored under the ID it already has (see
//! [`crate::store::Store::compare_import`] and `store/import.rs`) takes the same path as an upload: pipelined to
//! `write_quorum - 1` live peers while it is written, recorded in the binlog, acknowledged once the quorum holds
//! it. An ID already here is not written again: its bytes are compared instead.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use fdfs_common::wire::Metadata;
use fdfs_common::FileId;
use futures_util::{Stream, StreamExt};

use super::Writes;
use crate::error::{Result, StorageError};
use crate::store::{NewFile, Stored};

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Stored now, on `replicas` members.
    Imported {
        /// Members holding the file at acknowledgement, this one included.
        replicas: u32,
    },
    /// The same bytes were already here under that ID; nothing changed.
    Skipped,
}

impl Writes {
    /// Store `body` under its existing `id` with `meta`, keeping `mtime`: checked against the ID (400), never
    /// replacing a file (identical: [`ImportOutcome::Skipped`]; different: 409), replicated like an upload (503
    /// when the write quorum is not reached; the file stays and the workers push it).
    pub async fn import<S, E>(
        &self,
        id: FileId,
        mtime: Option<SystemTime>,
        meta: Metadata,
        body: S,
        limit: u64,
    ) -> Result<(Stored, ImportOutcome)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let store = self.store();
        store.check_importable(&id)?;
        if store.exists(&id).await? {
            let stored = store.compare_import(&id, body, limit).await?;
            return Ok((stored, ImportOutcome::Skipped));
        }
        // The body is checked as it streams: bytes that cannot match the ID end it with an error, so the peers
        // of the pipeline drop what they staged too.
        let mismatch = Arc::new(OnceLock::new());
        let body = checked(&id, body, mismatch.clone());
        match self
            .upload(NewFile::Import { id, mtime }, meta, body, limit)
            .await
        {
            Ok((stored, replicas)) => Ok((stored, ImportOutcome::Imported { replicas })),
            Err(e) => Err(match mismatch.get() {
                Some(why) => StorageError::BadRequest(why.clone()),
                None => e,
            }),
        }
    }
}

/// `body`, ending with an error (also recorded in `mismatch`) as soon as its bytes cannot match master `id`: more
/// bytes than its size, or at the end another size or CRC32. Slave bodies pass unchanged.
fn checked<S, E>(
    id: &FileId,
    body: S,
    mismatch: Arc<OnceLock<String>>,
) -> impl Stream<Item = std::result::Result<Bytes, String>> + Send
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let expected = id.name.prefix().is_none().then(|| id.info());
    let id = id.to_string();
    let state = (Box::pin(body), crc32fast::Hasher::new(), 0u64, false);
    futures_util::stream::unfold(state, move |(mut body, mut crc, mut size, done)| {
        let (id, mismatch) = (id.clone(), mismatch.clone());
        async move {
            if done {
                return None;
            }
            let fail = |why: String| {
                let _ = mismatch.set(why.clone());
                Err(why)
            };
            let item = match body.next().await {
                Some(Ok(chunk)) => {
                    crc.update(&chunk);
                    size += chunk.len() as u64;
                    match expected {
                        Some(info) if size > info.size => fail(format!(
                            "content does not match {id}: more than the {} bytes the id says",
                            info.size
                        )),
                        _ => return Some((Ok(chunk), (body, crc, size, false))),
                    }
                }
                Some(Err(e)) => Err(e.to_string()),
                None => {
                    let got = crc.clone().finalize();
                    match expected {
                        Some(info) if info.size != size || info.crc32 != got => fail(format!(
                            "content does not match {id}: got {size} bytes with crc32 {got:08x}, the id says {} \
                             bytes with crc32 {:08x}",
                            info.size, info.crc32
                        )),
                        _ => return None,
                    }
                }
            };
            Some((item, (body, crc, size, true)))
        }
    })
}
