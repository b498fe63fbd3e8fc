//! Listing and reindexing: walking the data directories (the ground truth) and reading the index in ID order.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use fdfs_common::FileId;

use super::dedup::{content_key, hash_file, parse_list};
use super::{Store, INDEXED_KEY, META_SUFFIX};
use crate::error::Result;

/// What [`Store::reindex`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    /// File IDs indexed.
    pub files: u64,
    /// Distinct contents (inodes after dedup) among them.
    pub contents: u64,
}

impl Store {
    /// Visit every file on disk of one store path (metadata files and foreign names skipped), in directory
    /// order. This is the ground truth the index is rebuilt from.
    pub fn walk_disk_blocking(
        &self,
        store_path: u8,
        mut visit: impl FnMut(FileId, &Path, &fs::Metadata) -> Result<()>,
    ) -> Result<()> {
        let sp = self.store_path(store_path)?;
        let data = sp.root.join("data");
        for dir1 in 0..=255u8 {
            for dir2 in 0..=255u8 {
                let dir = data.join(format!("{dir1:02X}")).join(format!("{dir2:02X}"));
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if name.ends_with(META_SUFFIX) {
                        continue;
                    }
                    let Ok(name) = name.parse() else {
                        tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a file id");
                        continue;
                    };
                    let id = FileId {
                        group: self.group.clone(),
                        store_path,
                        dir1,
                        dir2,
                        name,
                    };
                    let path = sp.root.join(id.relative_path());
                    let meta = fs::symlink_metadata(&path)?;
                    if !meta.is_file() {
                        continue;
                    }
                    visit(id, &path, &meta)?;
                }
            }
        }
        Ok(())
    }

    /// Rebuild the dedup index of every store path from the files on disk.
    pub fn reindex_blocking(&self) -> Result<ReindexReport> {
        let mut report = ReindexReport::default();
        for sp in &self.paths {
            let _guard = sp.lock();
            sp.hashes.clear()?;
            sp.ids.clear()?;
            // Keys of inodes with several links, so shared content is hashed once.
            let mut by_inode: HashMap<(u64, u64), [u8; 40]> = HashMap::new();
            self.walk_disk_blocking(sp.index, |id, path, meta| {
                let inode = (meta.dev(), meta.ino());
                let key = match by_inode.get(&inode) {
                    Some(k) => *k,
                    None => {
                        let (hash, size) = hash_file(path)?;
                        let k = content_key(&hash, size);
                        if meta.nlink() > 1 {
                            by_inode.insert(inode, k);
                        }
                        k
                    }
                };
                let id_str = id.to_string();
                let mut list = match sp.hashes.get(key)? {
                    Some(v) => parse_list(&v),
                    None => {
                        report.contents += 1;
                        Vec::new()
                    }
                };
                list.push(id_str.clone());
                sp.hashes.insert(key, list.join("\n").into_bytes())?;
                sp.ids.insert(id_str.as_bytes(), &key[..])?;
                report.files += 1;
                Ok(())
            })?;
        }
        self.db.insert(INDEXED_KEY, &b"1"[..])?;
        self.set_checkpoints_to_end()?;
        self.db.flush()?;
        self.recount();
        Ok(report)
    }

    /// [`Store::reindex_blocking`] on the blocking pool.
    pub async fn reindex(self: &Arc<Self>) -> Result<ReindexReport> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reindex_blocking()).await?
    }

    /// Every file ID in the index (all store paths), e.g. for a full sync to a new peer. Blocking (sled).
    pub fn indexed_ids(&self) -> impl Iterator<Item = FileId> + '_ {
        self.paths.iter().flat_map(|sp| {
            sp.ids.iter().keys().filter_map(|k| {
                k.ok()
                    .and_then(|k| std::str::from_utf8(&k).ok().and_then(|s| s.parse().ok()))
            })
        })
    }

    /// Indexed file IDs after `after` in ID (byte) order, all store paths: a page of a listing starts here
    /// without walking what came before. Blocking (sled).
    pub fn indexed_ids_after<'a>(&'a self, after: &str) -> impl Iterator<Item = FileId> + 'a {
        let start = after.as_bytes().to_vec();
        self.paths.iter().flat_map(move |sp| {
            sp.ids
                .range((
                    std::ops::Bound::Excluded(start.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .keys()
                .filter_map(|k| {
                    k.ok()
                        .and_then(|k| std::str::from_utf8(&k).ok().and_then(|s| s.parse().ok()))
                })
        })
    }
}
