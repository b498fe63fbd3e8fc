//! Staging of incoming bodies: streamed into a temp file on the target store path, hashed and fsynced, before
//! they are committed under an ID.

use std::io::Write;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tempfile::NamedTempFile;

use super::Store;
use crate::error::{Result, StorageError};

/// Chunks buffered between the network and the disk writer per upload.
const WRITE_QUEUE: usize = 8;

/// A fully received, fsynced body waiting in a store path's temp directory. Dropping it removes the temp file.
pub struct Staged {
    pub(super) store_path: u8,
    pub(super) tmp: NamedTempFile,
    /// Bytes received.
    pub size: u64,
    /// CRC32 (IEEE) of the content.
    pub crc32: u32,
    pub(super) hash: [u8; 32],
}

impl Staged {
    /// BLAKE3 hash of the content.
    pub fn content_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Store path index the body was staged on.
    pub fn store_path(&self) -> u8 {
        self.store_path
    }
}

impl Store {
    /// Stage a small body that is already in memory (the small-upload path of [`crate::write`]): temp file,
    /// write, fsync, in the calling (blocking) thread: one hop for the whole write instead of one per chunk.
    pub fn stage_bytes_blocking(&self, store_path: u8, data: &[u8]) -> Result<Staged> {
        let tmp_dir = &self.store_path(store_path)?.tmp;
        let mut tmp = super::layout::temp_file(tmp_dir, "up-", self.options.file_mode)?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        Ok(Staged {
            store_path,
            tmp,
            size: data.len() as u64,
            crc32: crc32fast::hash(data),
            hash: *blake3::hash(data).as_bytes(),
        })
    }

    /// Stream a body into a temp file on store path `store_path`, computing size, CRC32 and the content hash,
    /// rejecting it once it exceeds `limit` bytes; fsync it. On any error the temp file is gone when this returns.
    pub async fn receive<S, E>(&self, store_path: u8, body: S, limit: u64) -> Result<Staged>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let tmp_dir = self.store_path(store_path)?.tmp.clone();
        let mode = self.options.file_mode;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Bytes>>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> Result<Staged> {
            let mut tmp = super::layout::temp_file(&tmp_dir, "up-", mode)?;
            let mut crc = crc32fast::Hasher::new();
            let mut hash = blake3::Hasher::new();
            let mut size = 0u64;
            loop {
                match rx.blocking_recv() {
                    Some(Some(chunk)) => {
                        tmp.write_all(&chunk)?;
                        crc.update(&chunk);
                        hash.update(&chunk);
                        size += chunk.len() as u64;
                    }
                    Some(None) => break,
                    None => return Err(StorageError::BodyAborted("body ended early".into())),
                }
            }
            tmp.as_file().sync_all()?;
            Ok(Staged {
                store_path,
                tmp,
                size,
                crc32: crc.finalize(),
                hash: *hash.finalize().as_bytes(),
            })
        });
        let mut body = std::pin::pin!(body);
        let mut total = 0u64;
        let outcome: Result<()> = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    if total > limit {
                        break Err(StorageError::TooLarge { limit });
                    }
                    if tx.send(Some(chunk)).await.is_err() {
                        // The writer failed; its result says why.
                        break Ok(());
                    }
                }
                Some(Err(e)) => break Err(StorageError::BodyAborted(e.to_string())),
                None => {
                    let _ = tx.send(None).await;
                    break Ok(());
                }
            }
        };
        drop(tx);
        let written = writer.await?;
        outcome?;
        written
    }
}
