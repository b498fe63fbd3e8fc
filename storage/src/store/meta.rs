//! Metadata sidecars: a file's metadata is a JSON object kept next to it as `<name>-m`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use fdfs_common::wire::Metadata;
use fdfs_common::FileId;

use super::layout::{fsync_dir, write_atomic};
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
        if meta.is_empty() {
            match fs::remove_file(&path) {
                Ok(()) => fsync_dir(path.parent().expect("has a parent"))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let bytes = serde_json::to_vec(&meta)
                .map_err(|e| StorageError::Internal(format!("encoding metadata: {e}")))?;
            write_atomic(&sp.tmp, &path, &bytes, self.options.file_mode)?;
        }
        Ok(meta)
    }

    /// [`Store::set_meta_blocking`] on the blocking pool.
    pub async fn set_meta(self: &Arc<Self>, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.set_meta_blocking(&id, update)).await?
    }
}
