//! Files stored under the ID they already have: an existing FastDFS store moving into fdfs
//! (`fdfs import-fastdfs`, `PUT /v1/import/{file_id}`).
//!
//! The body is staged like any upload (temp file, CRC32 and BLAKE3 while it streams, fsynced), checked against
//! the size and CRC32 its ID encodes (master files; a slave's name carries its master's), and committed through
//! the same group commit as every client change (binlog record, dedup link, index). An import never replaces a
//! file: when the ID is already here, identical bytes make it a no-op and different bytes a conflict. A refused
//! body leaves nothing behind (the staged temp file is dropped).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fdfs_common::wire::Metadata;
use fdfs_common::FileId;
use futures_util::Stream;

use super::commit::{Committed, Incoming, Origin, Stored};
use super::dedup::{content_key, hash_file};
use super::{is_reserved, Staged, Store, META_SUFFIX};
use crate::error::{Result, StorageError};

/// Refuse bytes that do not match what a master ID encodes (size and CRC32). Slave IDs carry their master's
/// facts, so any bytes fit them.
pub fn check_against_id(id: &FileId, size: u64, crc32: u32) -> Result<()> {
    if id.name.prefix().is_some() {
        return Ok(());
    }
    let info = id.info();
    if info.size != size || info.crc32 != crc32 {
        return Err(StorageError::BadRequest(format!(
            "content does not match {id}: got {size} bytes with crc32 {crc32:08x}, the id says {} bytes with \
             crc32 {:08x}",
            info.size, info.crc32
        )));
    }
    Ok(())
}

impl Store {
    /// Check that `id` can be imported here: this group, an existing store path, not a metadata name.
    pub fn check_importable(&self, id: &FileId) -> Result<()> {
        if is_reserved(id) {
            return Err(StorageError::BadRequest(format!(
                "file names ending in {META_SUFFIX:?} are reserved for metadata"
            )));
        }
        self.check_owns(id)?;
        self.store_path(id.store_path)?;
        Ok(())
    }

    /// Whether the file stored under `id` holds exactly the bytes of `hash` and `size`: the index's content key
    /// when it has one, else a hash of the file. Blocking.
    fn holds_blocking(&self, id: &FileId, hash: &[u8; 32], size: u64) -> Result<bool> {
        let (sp, path) = self.locate(id)?;
        let on_disk = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            _ => return Ok(false),
        };
        if on_disk != size {
            return Ok(false);
        }
        let key = content_key(hash, size);
        if let Some(indexed) = sp.indexed_key(id)? {
            return Ok(indexed == key);
        }
        let (existing, len) = hash_file(&path)?;
        Ok(len == size && existing == *hash)
    }

    /// Whether the file under `id` holds exactly the staged bytes.
    async fn holds(self: &Arc<Self>, id: &FileId, staged: &Staged) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        let (hash, size) = (staged.content_hash(), staged.size);
        tokio::task::spawn_blocking(move || this.holds_blocking(&id, &hash, size)).await?
    }

    /// Receive a body meant for `id`, which is already here: Ok when it holds the same bytes (the import is a
    /// no-op), 409 when they differ, 400 when the bytes do not match the ID. Nothing is changed.
    pub async fn compare_import<S, E>(
        self: &Arc<Self>,
        id: &FileId,
        body: S,
        limit: u64,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.check_importable(id)?;
        let staged = self.receive(id.store_path, body, limit).await?;
        check_against_id(id, staged.size, staged.crc32)?;
        if !self.holds(id, &staged).await? {
            return Err(StorageError::Conflict(format!(
                "{id} exists here with other content"
            )));
        }
        Ok(Stored {
            id: id.clone(),
            size: staged.size,
            crc32: staged.crc32,
        })
    }

    /// Store a body under its existing `id` (recorded in the binlog, with `meta`; the file keeps `mtime`): checked
    /// against the ID, never replacing a file. An identical file already there (a concurrent import of the same
    /// ID) counts as stored; a different one is a conflict (409).
    pub(super) async fn create_imported<S, E>(
        self: &Arc<Self>,
        id: FileId,
        mtime: Option<SystemTime>,
        meta: Metadata,
        body: S,
        limit: u64,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.check_importable(&id)?;
        let staged = self.receive(id.store_path, body, limit).await?;
        check_against_id(&id, staged.size, staged.crc32)?;
        let (size, crc32, hash) = (staged.size, staged.crc32, staged.content_hash());
        let incoming = Incoming {
            mtime,
            meta,
            origin: Origin::Client,
        };
        if self.commit(staged, &id, incoming).await? == Committed::AlreadyExists {
            let (this, cid) = (self.clone(), id.clone());
            let same = tokio::task::spawn_blocking(move || this.holds_blocking(&cid, &hash, size))
                .await??;
            if !same {
                return Err(StorageError::Conflict(format!(
                    "{id} exists here with other content"
                )));
            }
        }
        Ok(Stored { id, size, crc32 })
    }
}
