//! Committing staged bodies under their ID (rename or dedup link, durably, indexed), replicas written under a
//! known ID, and removal.

use std::fs;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fdfs_common::wire::Metadata;
use fdfs_common::FileId;
use futures_util::Stream;

use super::binlog::Op;
use super::dedup::content_key;
use super::layout::fail_point;
use super::{is_reserved, Staged, Store, META_SUFFIX};
use crate::error::{Result, StorageError};

/// Outcome of [`Store::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The file is now in place; `deduplicated` when it became a hard link to identical content.
    Created {
        /// The file is a hard link to a file with the same content.
        deduplicated: bool,
    },
    /// A file with that ID already existed; nothing was changed.
    AlreadyExists,
}

/// Who a change came from, which decides the log that records it: the node's binlog (changes accepted from
/// clients, pushed to peers by the sync workers) or the store's journal (replicas and deletes received from
/// peers, only replayed here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Accepted from a client here: recorded in the binlog and pushed to peers.
    Client,
    /// A replica or delete received from a peer: recorded in the journal only.
    Peer,
}

/// How a staged body is committed.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Modification time given to a newly written inode (replicas keep the source's).
    pub mtime: Option<SystemTime>,
    /// Metadata stored with the file (put in place before the file itself).
    pub meta: Metadata,
    /// Who the change came from (which log records it).
    pub origin: Origin,
}

impl Incoming {
    /// A client upload with `meta`.
    pub fn client(meta: Metadata) -> Incoming {
        Incoming {
            mtime: None,
            meta,
            origin: Origin::Client,
        }
    }

    /// A replica from a peer.
    pub fn peer(mtime: Option<SystemTime>, meta: Metadata) -> Incoming {
        Incoming {
            mtime,
            meta,
            origin: Origin::Peer,
        }
    }
}

impl Store {
    /// Put a staged body in place under `id` (durably, never replacing an existing file), deduplicating against
    /// identical content on the same store path, with its metadata, and index it. Order (see the module doc):
    /// metadata temp file fsynced, record durable (group commit), then under the path lock only the exists-check
    /// and the link/rename, then the directory fsync and the index update (never flushed here).
    pub fn commit_blocking(
        &self,
        staged: Staged,
        id: &FileId,
        incoming: Incoming,
    ) -> Result<Committed> {
        if is_reserved(id) {
            return Err(StorageError::BadRequest(format!(
                "file names ending in {META_SUFFIX:?} are reserved for metadata"
            )));
        }
        let (sp, target) = self.locate(id)?;
        if staged.store_path != id.store_path {
            return Err(StorageError::Internal(format!(
                "staged on M{:02X}, committing to M{:02X}",
                staged.store_path, id.store_path
            )));
        }
        let parent = target
            .parent()
            .expect("relative_path has a parent")
            .to_owned();
        if fs::symlink_metadata(&target).is_ok() {
            return Ok(Committed::AlreadyExists);
        }
        self.ensure_dir(&parent)?;
        let meta_tmp = if incoming.meta.is_empty() {
            None
        } else {
            let bytes = serde_json::to_vec(&incoming.meta)
                .map_err(|e| StorageError::Internal(format!("encoding metadata: {e}")))?;
            // The metadata an upload carries is its first version, the same on every member: the file's
            // creation time (see `meta.rs`).
            let first = super::meta::first_version(id);
            Some(self.stage_small(&sp.tmp, &bytes, first)?)
        };
        if let Some(t) = incoming.mtime {
            staged.tmp.as_file().set_modified(t)?;
        }
        let key = content_key(&staged.hash, staged.size);
        let holders = sp.holders(&key, staged.size)?;

        let log = self.log(incoming.origin);
        let rec = log.begin(Op::Upload, id)?;
        let placed = self.place(sp, staged, &target, holders.live.first(), meta_tmp);
        if matches!(placed, Ok(Some(_))) {
            fail_point("after-rename");
        }
        let outcome = match placed {
            Ok(Some(deduplicated)) => self
                .dir_sync
                .sync(&parent)
                .map_err(StorageError::from)
                .and_then(|()| {
                    if sp.index_add(&id.to_string(), key, &holders.stale)? {
                        self.file_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Committed::Created { deduplicated })
                }),
            Ok(None) => Ok(Committed::AlreadyExists),
            Err(e) => Err(e),
        };
        self.finish(incoming.origin, rec.seq);
        outcome
    }

    /// Under the path lock: the exists-check and the link or rename of the file (and its metadata first).
    /// `Some(deduplicated)` when placed, `None` when the ID exists.
    fn place(
        &self,
        sp: &super::StorePath,
        staged: Staged,
        target: &std::path::Path,
        holder: Option<&(String, std::path::PathBuf)>,
        meta_tmp: Option<tempfile::NamedTempFile>,
    ) -> Result<Option<bool>> {
        let _guard = sp.lock();
        if fs::symlink_metadata(target).is_ok() {
            return Ok(None);
        }
        if let Some(tmp) = meta_tmp {
            let mut meta_path = target.to_owned();
            meta_path.as_mut_os_string().push(META_SUFFIX);
            tmp.persist(&meta_path).map_err(|e| e.error)?;
        }
        if let Some((_, hpath)) = holder {
            match fs::hard_link(hpath, target) {
                Ok(()) => return Ok(Some(true)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
                // e.g. EMLINK (too many links): store a separate copy instead.
                Err(e) => tracing::debug!(error = %e, "dedup link failed, storing a copy"),
            }
        }
        match staged.tmp.persist_noclobber(target) {
            Ok(_) => Ok(Some(false)),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.error.into()),
        }
    }

    /// [`Store::commit_blocking`] on the blocking pool.
    pub async fn commit(
        self: &Arc<Self>,
        staged: Staged,
        id: &FileId,
        incoming: Incoming,
    ) -> Result<Committed> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.commit_blocking(staged, &id, incoming)).await?
    }

    /// Durably write a replica under a known ID: stream, check size and CRC32 against the ID (for master files,
    /// whose name encodes them), commit (journal) with `meta`. An existing file is left alone
    /// ([`Committed::AlreadyExists`]).
    pub async fn write_file<S, E>(
        self: &Arc<Self>,
        id: &FileId,
        body: S,
        mtime: Option<SystemTime>,
        meta: Metadata,
    ) -> Result<Committed>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        check_writable(id)?;
        self.locate(id)?;
        if self.exists(id).await? {
            return Ok(Committed::AlreadyExists);
        }
        let staged = self
            .receive(id.store_path, body, self.max_file_size)
            .await?;
        super::check_against_id(id, staged.size, staged.crc32)?;
        self.commit(staged, id, Incoming::peer(mtime, meta)).await
    }

    /// [`Store::write_file`] for a small body already in memory, in one blocking call.
    pub fn write_bytes_blocking(
        &self,
        id: &FileId,
        data: &[u8],
        mtime: Option<SystemTime>,
        meta: Metadata,
    ) -> Result<Committed> {
        check_writable(id)?;
        if data.len() as u64 > self.max_file_size {
            return Err(StorageError::TooLarge {
                limit: self.max_file_size,
            });
        }
        let (_, path) = self.locate(id)?;
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(Committed::AlreadyExists);
        }
        let staged = self.stage_bytes_blocking(id.store_path, data)?;
        super::check_against_id(id, staged.size, staged.crc32)?;
        self.commit_blocking(staged, id, Incoming::peer(mtime, meta))
    }

    /// A new master upload that is already in memory, under the `id` its caller made from it (the small-body
    /// path of [`crate::write::Writes::upload`]), in one blocking call: stage, fsync, commit (binlog).
    pub fn create_bytes_blocking(
        &self,
        id: &FileId,
        data: &[u8],
        incoming: Incoming,
    ) -> Result<()> {
        check_writable(id)?;
        let staged = self.stage_bytes_blocking(id.store_path, data)?;
        super::check_against_id(id, staged.size, staged.crc32)?;
        match self.commit_blocking(staged, id, incoming)? {
            // Not this upload's file: the caller must not undo anything under this ID.
            Committed::AlreadyExists => Err(StorageError::Conflict(format!(
                "generated name {id} collided with an existing file"
            ))),
            Committed::Created { .. } => Ok(()),
        }
    }

    /// Delete a file and its metadata, record first: the record is durable before the unlink, so a crash in
    /// between is finished by the replay at start. `false` when the file is not here. Other IDs sharing the
    /// content stay intact.
    pub fn delete_blocking(&self, id: &FileId, origin: Origin) -> Result<bool> {
        let (sp, path) = match self.locate(id) {
            Ok(x) => x,
            Err(StorageError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if fs::symlink_metadata(&path).is_err() {
            return Ok(false);
        }
        let log = self.log(origin);
        let rec = log.begin(Op::Delete, id)?;
        fail_point("after-delete-record");
        let outcome = self.unlink(sp, id, &path);
        self.finish(origin, rec.seq);
        outcome
    }

    /// Remove a file, its metadata and its index entries (the record is written already).
    pub(super) fn unlink(
        &self,
        sp: &super::StorePath,
        id: &FileId,
        path: &std::path::Path,
    ) -> Result<bool> {
        let mut meta = path.to_owned();
        meta.as_mut_os_string().push(META_SUFFIX);
        {
            let _guard = sp.lock();
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            match fs::remove_file(&meta) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        self.dir_sync
            .sync(path.parent().expect("relative_path has a parent"))?;
        if sp.index_remove(&id.to_string())? {
            let _ = self
                .file_count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        Ok(true)
    }

    /// Delete a file on a peer's request (recorded in the journal); see [`Store::delete_blocking`].
    pub fn remove_blocking(&self, id: &FileId) -> Result<bool> {
        self.delete_blocking(id, Origin::Peer)
    }

    /// [`Store::remove_blocking`] on the blocking pool.
    pub async fn remove(self: &Arc<Self>, id: &FileId) -> Result<bool> {
        self.delete(id, Origin::Peer).await
    }

    /// [`Store::delete_blocking`] on the blocking pool.
    pub async fn delete(self: &Arc<Self>, id: &FileId, origin: Origin) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.delete_blocking(&id, origin)).await?
    }
}

/// Names ending in the metadata suffix cannot be written as files.
fn check_writable(id: &FileId) -> Result<()> {
    if is_reserved(id) {
        return Err(StorageError::BadRequest(format!(
            "file names ending in {META_SUFFIX:?} are reserved for metadata"
        )));
    }
    Ok(())
}

/// What a new upload is stored as.
#[derive(Debug, Clone)]
pub enum NewFile {
    /// A master file: its ID is made from the content (source node, creation time, size, CRC32) once received.
    Master {
        /// Store path index to write to.
        store_path: u8,
        /// Extension without the dot, already validated.
        ext: Option<String>,
        /// This node's id, encoded in the name.
        source_id: u32,
    },
    /// A slave file under its known ID (next to its master, which must be here).
    Slave {
        /// The master the slave is named after.
        master: FileId,
        /// The slave's own ID (master name, prefix, extension).
        id: FileId,
    },
    /// A file under the ID it already has (see [`super::import`]): checked against the ID, keeping `mtime`.
    Import {
        /// The ID the file keeps.
        id: FileId,
        /// Modification time to give it; `None`: the time it is written.
        mtime: Option<SystemTime>,
    },
}

impl NewFile {
    /// The store path the file goes to.
    pub fn store_path(&self) -> u8 {
        match self {
            NewFile::Master { store_path, .. } => *store_path,
            NewFile::Slave { id, .. } => id.store_path,
            NewFile::Import { id, .. } => id.store_path,
        }
    }
}

/// A file stored by [`Store::create`].
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its ID.
    pub id: FileId,
    /// Content length in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of the content.
    pub crc32: u32,
}

impl Store {
    /// Store a new upload (recorded in the binlog): receive the body, make its ID, commit it with its metadata.
    /// A slave whose ID exists is a conflict (409).
    pub async fn create<S, E>(
        self: &Arc<Self>,
        new: NewFile,
        meta: Metadata,
        body: S,
        limit: u64,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let new = match new {
            NewFile::Import { id, mtime } => {
                return self.create_imported(id, mtime, meta, body, limit).await
            }
            other => other,
        };
        let store_path = match &new {
            NewFile::Import { id, .. } => id.store_path,
            NewFile::Master { store_path, .. } => *store_path,
            NewFile::Slave { master, id } => {
                if is_reserved(id) {
                    return Err(StorageError::BadRequest(format!(
                        "slave names ending in {META_SUFFIX:?} are reserved"
                    )));
                }
                if !self.exists(master).await? {
                    return Err(StorageError::NotFound(format!(
                        "master file {master} is not on this node"
                    )));
                }
                if self.exists(id).await? {
                    return Err(StorageError::Conflict(format!("slave file {id} exists")));
                }
                id.store_path
            }
        };
        self.store_path(store_path)?;
        let staged = self.receive(store_path, body, limit).await?;
        let (size, crc32) = (staged.size, staged.crc32);
        let id = match new {
            NewFile::Slave { id, .. } => {
                if self.commit(staged, &id, Incoming::client(meta)).await?
                    == Committed::AlreadyExists
                {
                    return Err(StorageError::Conflict(format!("slave file {id} exists")));
                }
                id
            }
            NewFile::Import { id, .. } => {
                return Err(StorageError::Internal(format!(
                    "import of {id} took the upload path"
                )))
            }
            NewFile::Master {
                store_path,
                ext,
                source_id,
            } => {
                let id = self.master_id(store_path, ext.as_deref(), source_id, size, crc32)?;
                if self.commit(staged, &id, Incoming::client(meta)).await?
                    == Committed::AlreadyExists
                {
                    return Err(StorageError::Internal(format!(
                        "generated name {id} collided with an existing file"
                    )));
                }
                id
            }
        };
        Ok(Stored { id, size, crc32 })
    }
}
