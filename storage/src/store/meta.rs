//! Metadata sidecars: a file's metadata is a JSON object kept next to it as `<name>-m`.
//!
//! The sidecar's modification time is the metadata's **version** (nanoseconds since the epoch): the time of the
//! change on the member that took it, kept by every member that receives the value (a replica `PUT`, a
//! catch-up), and always above the version it replaces on the member that takes a change. Members that hold
//! different metadata for a file converge to the newer version (last writer wins, the value's CRC32 breaking a
//! tie), whichever peer they hear from first ([`Store::put_meta_version_blocking`], the listing catch-up). Clocks
//! of the members of a group are assumed to agree to well under the time between two changes of one file.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fdfs_common::wire::Metadata;
use fdfs_common::FileId;

use super::layout::write_atomic_at;
use super::{Store, META_SUFFIX};
use crate::error::{Result, StorageError};

/// A metadata change.
#[derive(Debug, Clone)]
pub enum MetaUpdate {
    /// Overwrite everything.
    Replace(Metadata),
    /// Merge: `Some` sets a key, `None` deletes it.
    Merge(BTreeMap<String, Option<String>>),
}

impl Store {
    pub(crate) fn meta_path(&self, id: &FileId) -> Result<PathBuf> {
        let mut p = self.path(id)?;
        p.as_mut_os_string().push(META_SUFFIX);
        Ok(p)
    }

    pub(super) fn read_meta(&self, id: &FileId) -> Result<Metadata> {
        match fs::read(self.meta_path(id)?) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StorageError::Internal(format!("corrupt metadata file for {id}: {e}"))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Metadata::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Metadata of a file, `None` when the file does not exist here (empty when it has none).
    pub fn get_meta_blocking(&self, id: &FileId) -> Result<Option<Metadata>> {
        if self.stat_blocking(id)?.is_none() {
            return Ok(None);
        }
        self.read_meta(id).map(Some)
    }

    /// [`Store::get_meta_blocking`] on the blocking pool.
    pub async fn get_meta(self: &Arc<Self>, id: &FileId) -> Result<Option<Metadata>> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.get_meta_blocking(&id)).await?
    }

    /// Change a file's metadata durably and return the result. 404 when the file does not exist here.
    pub fn set_meta_blocking(&self, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        let (sp, _) = self.locate(id)?;
        let _guard = sp.lock();
        if self.stat_blocking(id)?.is_none() {
            return Err(StorageError::NotFound(format!("no such file {id}")));
        }
        let meta = match update {
            MetaUpdate::Replace(m) => m,
            MetaUpdate::Merge(changes) => {
                let mut m = self.read_meta(id)?;
                for (k, v) in changes {
                    match v {
                        Some(v) => m.insert(k, v),
                        None => m.remove(&k),
                    };
                }
                m
            }
        };
        let path = self.meta_path(id)?;
        // A new version, above the one it replaces even if this clock is behind the member that made that.
        // Emptied metadata keeps its sidecar (`{}`): the version must outlive the value, or an older value
        // still travelling to this member would come back.
        let version = match Self::version_of(&path)? {
            Some(old) => now_version().max(old + 1),
            None => now_version(),
        };
        self.write_meta(&sp.tmp, &path, &meta, version)?;
        Ok(meta)
    }

    fn write_meta(
        &self,
        tmp: &std::path::Path,
        path: &std::path::Path,
        meta: &Metadata,
        version: u64,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(meta)
            .map_err(|e| StorageError::Internal(format!("encoding metadata: {e}")))?;
        let at = UNIX_EPOCH + Duration::from_nanos(version);
        Ok(write_atomic_at(
            tmp,
            path,
            &bytes,
            self.options.file_mode,
            Some(at),
        )?)
    }

    /// The version of the metadata at `path` (its sidecar's modification time); `None` without one.
    fn version_of(path: &std::path::Path) -> Result<Option<u64>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(version_from(m.modified()?))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A file's metadata and its version (`None` without metadata); `None` when the file is not here.
    pub fn get_meta_versioned_blocking(
        &self,
        id: &FileId,
    ) -> Result<Option<(Metadata, Option<u64>)>> {
        if self.stat_blocking(id)?.is_none() {
            return Ok(None);
        }
        let version = Self::version_of(&self.meta_path(id)?)?;
        Ok(Some((self.read_meta(id)?, version)))
    }

    /// [`Store::get_meta_versioned_blocking`] on the blocking pool.
    pub async fn get_meta_versioned(
        self: &Arc<Self>,
        id: &FileId,
    ) -> Result<Option<(Metadata, Option<u64>)>> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.get_meta_versioned_blocking(&id)).await?
    }

    /// Store metadata another member holds at `version`, unless the metadata here is newer (last writer wins;
    /// on equal versions the higher CRC32 of the value). Returns the metadata here afterwards. 404 when the
    /// file is not here.
    pub fn put_meta_version_blocking(
        &self,
        id: &FileId,
        meta: Metadata,
        version: u64,
    ) -> Result<Metadata> {
        let (sp, _) = self.locate(id)?;
        let _guard = sp.lock();
        if self.stat_blocking(id)?.is_none() {
            return Err(StorageError::NotFound(format!("no such file {id}")));
        }
        let path = self.meta_path(id)?;
        if let Some(ours) = Self::version_of(&path)? {
            let here = self.read_meta(id)?;
            let crc = crate::sync::protocol::meta_crc;
            if (ours, crc(&here)) >= (version, crc(&meta)) {
                return Ok(here);
            }
        }
        self.write_meta(&sp.tmp, &path, &meta, version)?;
        Ok(meta)
    }

    /// [`Store::put_meta_version_blocking`] on the blocking pool.
    pub async fn put_meta_version(
        self: &Arc<Self>,
        id: &FileId,
        meta: Metadata,
        version: u64,
    ) -> Result<Metadata> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.put_meta_version_blocking(&id, meta, version))
            .await?
    }

    /// [`Store::set_meta_blocking`] on the blocking pool.
    pub async fn set_meta(self: &Arc<Self>, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.set_meta_blocking(&id, update)).await?
    }
}

/// The version of the metadata an upload carries: the file's creation time, which every member reads from its
/// ID (any later change is newer).
pub(super) fn first_version(id: &FileId) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(id.info().created))
}

/// Now as a metadata version.
fn now_version() -> u64 {
    version_from(SystemTime::now())
}

/// A modification time as a metadata version (nanoseconds since the epoch; 0 before it).
pub fn version_from(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
