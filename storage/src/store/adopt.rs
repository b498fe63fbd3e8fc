//! Files that grow in place before they are committed (appender files, see [`crate::appender`]): where they
//! live on a store path, how a finished one becomes a [`Staged`] body for the normal commit, and the ID a new
//! master file gets.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use fdfs_common::{FileId, FileName, NameInfo};
use tempfile::{NamedTempFile, TempPath};

use super::{Staged, Store};
use crate::error::Result;

/// Directory of appender files under a store path root; same filesystem as `data/`, so a finished one is
/// renamed into place. Not under `.fdfs/tmp/`, which is cleared at every start.
pub const APPENDER_DIR: &str = "appender";

impl Store {
    /// `<store path>/.fdfs/appender/`, created if needed.
    pub fn appender_dir_blocking(&self, store_path: u8) -> Result<PathBuf> {
        let sp = self.store_path(store_path)?;
        let dir = sp.root.join(".fdfs").join(APPENDER_DIR);
        // Made on first use, durably: an upload's files in a directory whose own entry a power cut drops would
        // be lost with it, acknowledged chunks included.
        super::layout::ensure_dir(&dir, 0o755)?;
        Ok(dir)
    }

    /// Take over a complete file at `path` on store path `store_path` as a staged body: read it once for its
    /// size, CRC32 and content hash. The file is removed if the returned [`Staged`] is dropped uncommitted.
    /// Blocking.
    pub fn adopt_blocking(&self, store_path: u8, path: &Path) -> Result<Staged> {
        self.store_path(store_path)?;
        let mut file = fs::OpenOptions::new().read(true).write(true).open(path)?;
        let mut crc = crc32fast::Hasher::new();
        let mut hash = blake3::Hasher::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            crc.update(&buf[..n]);
            hash.update(&buf[..n]);
            size += n as u64;
        }
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            self.options.file_mode,
        ))?;
        Ok(Staged {
            store_path,
            tmp: NamedTempFile::from_parts(file, TempPath::try_from_path(path)?),
            size,
            crc32: crc.finalize(),
            hash: *hash.finalize().as_bytes(),
        })
    }

    /// Stop owning a staged body: its file stays where it is when `staged` is dropped.
    pub fn keep_staged(staged: Staged) {
        let _ = staged.tmp.into_temp_path().keep();
    }

    /// A fresh ID for a master file of `size` bytes with `crc32`, created now by node `source_id`.
    pub fn master_id(
        &self,
        store_path: u8,
        ext: Option<&str>,
        source_id: u32,
        size: u64,
        crc32: u32,
    ) -> Result<FileId> {
        let info = NameInfo {
            source_id,
            created: u32::try_from(fdfs_common::time::unix_now()).unwrap_or(u32::MAX),
            size,
            crc32,
        };
        let (dir1, dir2) = self.pick_dirs();
        Ok(FileId {
            group: self.group.clone(),
            store_path,
            dir1,
            dir2,
            name: FileName::generate(&info, ext)?,
        })
    }
}
