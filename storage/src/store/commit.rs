//! Committing staged bodies under their ID (rename or dedup link, durably, indexed), replicas written under a
//! known ID, and removal.

use std::fs;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fdfs_common::wire::Metadata;
use fdfs_common::{FileId, FileName, NameInfo};
use futures_util::Stream;

use super::dedup::{content_key, parse_list};
use super::layout::{ensure_dir, fsync_dir};
use super::{is_reserved, MetaUpdate, Staged, Store, META_SUFFIX};
use crate::error::{Result, StorageError};

/// Outcome of [`Store::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The file is now in place; `deduplicated` when it became a hard link to identical content.
    Created { deduplicated: bool },
    /// A file with that ID already existed; nothing was changed.
    AlreadyExists,
}

impl Store {
    /// Put a staged body in place under `id` (durably, never replacing an existing file), deduplicating against
    /// identical content on the same store path, and index it. `mtime` is applied to a newly written inode.
    pub fn commit_blocking(
        &self,
        staged: Staged,
        id: &FileId,
        mtime: Option<SystemTime>,
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
        let _guard = sp.lock();
        if fs::symlink_metadata(&target).is_ok() {
            return Ok(Committed::AlreadyExists);
        }
        ensure_dir(&parent)?;
        let key = content_key(&staged.hash, staged.size);
        let mut holders = Vec::new();
        let mut deduplicated = false;
        if let Some(v) = sp.hashes.get(key)? {
            for holder in parse_list(&v) {
                let Ok(hid) = holder.parse::<FileId>() else {
                    continue;
                };
                let hpath = sp.root.join(hid.relative_path());
                match fs::metadata(&hpath) {
                    Ok(m) if m.is_file() && m.len() == staged.size => holders.push((holder, hpath)),
                    _ => {} // stale entry: pruned below
                }
            }
            // All holders share one inode (or are equal copies): linking to the first live one suffices.
            if let Some((_, hpath)) = holders.first() {
                match fs::hard_link(hpath, &target) {
                    Ok(()) => deduplicated = true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Ok(Committed::AlreadyExists)
                    }
                    // e.g. EMLINK (too many links): store a separate copy instead.
                    Err(e) => tracing::debug!(error = %e, "dedup link failed, storing a copy"),
                }
            }
        }
        if !deduplicated {
            if let Some(t) = mtime {
                staged.tmp.as_file().set_modified(t)?;
            }
            if let Err(e) = staged.tmp.persist_noclobber(&target) {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    return Ok(Committed::AlreadyExists);
                }
                return Err(e.error.into());
            }
        }
        fsync_dir(&parent)?;
        let id_str = id.to_string();
        let mut list: Vec<String> = holders.into_iter().map(|(h, _)| h).collect();
        list.push(id_str.clone());
        sp.hashes.insert(key, list.join("\n").into_bytes())?;
        sp.ids.insert(id_str.as_bytes(), &key[..])?;
        self.db.flush()?;
        self.file_count.fetch_add(1, Ordering::Relaxed);
        Ok(Committed::Created { deduplicated })
    }

    /// [`Store::commit_blocking`] on the blocking pool.
    pub async fn commit(
        self: &Arc<Self>,
        staged: Staged,
        id: &FileId,
        mtime: Option<SystemTime>,
    ) -> Result<Committed> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.commit_blocking(staged, &id, mtime)).await?
    }

    /// Durably write a file under a known ID (replicas): stream, check size and CRC32 against the ID (for master
    /// files, whose name encodes them), commit. An existing file is left alone ([`Committed::AlreadyExists`]).
    pub async fn write_file<S, E>(
        self: &Arc<Self>,
        id: &FileId,
        body: S,
        mtime: Option<SystemTime>,
    ) -> Result<Committed>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if is_reserved(id) {
            return Err(StorageError::BadRequest(format!(
                "file names ending in {META_SUFFIX:?} are reserved for metadata"
            )));
        }
        self.locate(id)?;
        if self.exists(id).await? {
            return Ok(Committed::AlreadyExists);
        }
        let staged = self
            .receive(id.store_path, body, self.max_file_size)
            .await?;
        if id.name.prefix().is_none() {
            let info = id.info();
            if info.size != staged.size || info.crc32 != staged.crc32 {
                return Err(StorageError::BadRequest(format!(
                    "content does not match {id}: got {} bytes crc32 {:08x}, the id says {} bytes crc32 {:08x}",
                    staged.size, staged.crc32, info.size, info.crc32
                )));
            }
        }
        self.commit(staged, id, mtime).await
    }

    /// Delete a file and its metadata; `false` when it did not exist. Other IDs sharing the content stay intact.
    pub fn remove_blocking(&self, id: &FileId) -> Result<bool> {
        let (sp, path) = match self.locate(id) {
            Ok(x) => x,
            Err(StorageError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = self.meta_path(id)?;
        let _guard = sp.lock();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match fs::remove_file(&meta) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        fsync_dir(path.parent().expect("relative_path has a parent"))?;
        let id_str = id.to_string();
        if let Some(key) = sp.ids.remove(id_str.as_bytes())? {
            if let Some(v) = sp.hashes.get(&key)? {
                let rest: Vec<String> = parse_list(&v)
                    .into_iter()
                    .filter(|h| *h != id_str)
                    .collect();
                if rest.is_empty() {
                    sp.hashes.remove(&key)?;
                } else {
                    sp.hashes.insert(&key, rest.join("\n").into_bytes())?;
                }
            }
        }
        self.db.flush()?;
        let _ = self
            .file_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        Ok(true)
    }

    /// [`Store::remove_blocking`] on the blocking pool.
    pub async fn remove(self: &Arc<Self>, id: &FileId) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.remove_blocking(&id)).await?
    }
}

/// What a new upload is stored as.
#[derive(Debug, Clone)]
pub enum NewFile {
    /// A master file: its ID is made from the content (source node, creation time, size, CRC32) once received.
    Master {
        store_path: u8,
        /// Extension without the dot, already validated.
        ext: Option<String>,
        /// This node's id, encoded in the name.
        source_id: u32,
    },
    /// A slave file under its known ID (next to its master, which must be here).
    Slave { master: FileId, id: FileId },
}

/// A file stored by [`Store::create`].
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: FileId,
    pub size: u64,
    pub crc32: u32,
}

impl Store {
    /// Store a new upload: receive the body, make its ID, commit it with its metadata. A slave whose ID exists
    /// is a conflict (409).
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
        let store_path = match &new {
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
                if self.commit(staged, &id, None).await? == Committed::AlreadyExists {
                    return Err(StorageError::Conflict(format!("slave file {id} exists")));
                }
                id
            }
            NewFile::Master {
                store_path,
                ext,
                source_id,
            } => {
                let info = NameInfo {
                    source_id,
                    created: u32::try_from(fdfs_common::time::unix_now()).unwrap_or(u32::MAX),
                    size,
                    crc32,
                };
                let (dir1, dir2) = self.pick_dirs();
                let id = FileId {
                    group: self.group.clone(),
                    store_path,
                    dir1,
                    dir2,
                    name: FileName::generate(&info, ext.as_deref())?,
                };
                if self.commit(staged, &id, None).await? == Committed::AlreadyExists {
                    return Err(StorageError::Internal(format!(
                        "generated name {id} collided with an existing file"
                    )));
                }
                id
            }
        };
        if !meta.is_empty() {
            self.set_meta(&id, MetaUpdate::Replace(meta)).await?;
        }
        Ok(Stored { id, size, crc32 })
    }
}
