//! Tombstones: the IDs of files deleted in this group, kept on disk so that a later catch-up (ours or a peer's)
//! never brings a deleted file back. File IDs are never reused, so a tombstone never hides a newer file.
//!
//! On disk: `<store path 0>/.fdfs/tombstones.log`, one file ID per line, appended and fsynced. A torn last line
//! (a crash mid-append) is cut on open. In memory: an ordered set, for lookups and for the paged listing peers
//! catch up from.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use fdfs_common::FileId;

use crate::error::Result;

struct Inner {
    file: File,
    ids: BTreeSet<String>,
}

/// The set of deleted file IDs. Methods that write block (fsync).
pub struct Tombstones {
    inner: Mutex<Inner>,
}

impl Tombstones {
    /// Open (creating) the tombstone log at `path`.
    pub fn open(path: &Path) -> Result<Tombstones> {
        let mut ids = BTreeSet::new();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&bytes[..complete]).lines() {
            if line.parse::<FileId>().is_ok() {
                ids.insert(line.to_owned());
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if complete != bytes.len() {
            tracing::warn!(path = %path.display(), "tombstones: cutting a torn last line");
            file.set_len(complete as u64)?;
            file.sync_all()?;
        }
        Ok(Tombstones {
            inner: Mutex::new(Inner { file, ids }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a deletion durably (a no-op when already recorded).
    pub fn add(&self, id: &FileId) -> Result<()> {
        let s = id.to_string();
        let mut inner = self.lock();
        if inner.ids.contains(&s) {
            return Ok(());
        }
        inner.file.write_all(format!("{s}\n").as_bytes())?;
        inner.file.sync_data()?;
        inner.ids.insert(s);
        Ok(())
    }

    /// Whether the file was deleted.
    pub fn contains(&self, id: &FileId) -> bool {
        self.lock().ids.contains(&id.to_string())
    }

    /// Number of tombstones.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tombstones with `after < id <= upto` (`upto = None`: no upper bound), in order, at most `limit`.
    pub fn range(&self, after: &str, upto: Option<&str>, limit: usize) -> Vec<String> {
        let inner = self.lock();
        let hi = upto.map_or(Bound::Unbounded, |u| Bound::Included(u.to_owned()));
        inner
            .ids
            .range((Bound::Excluded(after.to_owned()), hi))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> FileId {
        let info = fdfs_common::NameInfo {
            source_id: 1,
            created: 1_700_000_000,
            size: u64::from(n),
            crc32: u32::from(n),
        };
        FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: n,
            dir2: 0,
            name: fdfs_common::FileName::generate(&info, None).unwrap(),
        }
    }

    #[test]
    fn durable_ordered_and_torn_lines_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tombstones.log");
        let ids: Vec<FileId> = (0..5).map(id).collect();
        {
            let t = Tombstones::open(&path).unwrap();
            assert!(t.is_empty());
            for i in &ids {
                t.add(i).unwrap();
            }
            t.add(&ids[0]).unwrap(); // idempotent
            assert_eq!(t.len(), 5);
        }
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"g1/M00/07/00/half").unwrap();
        drop(f);
        let t = Tombstones::open(&path).unwrap();
        assert_eq!(t.len(), 5);
        assert!(ids.iter().all(|i| t.contains(i)));
        let extra = id(9);
        assert!(!t.contains(&extra));
        t.add(&extra).unwrap();
        drop(t);
        let t = Tombstones::open(&path).unwrap();
        assert_eq!(t.len(), 6);
        assert!(t.contains(&extra), "the append after a torn line is intact");

        // Ranges follow ID order.
        let mut sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        sorted.push(extra.to_string());
        sorted.sort();
        assert_eq!(t.range("", None, 100), sorted);
        assert_eq!(
            t.range(&sorted[1], Some(&sorted[3]), 100),
            sorted[2..=3].to_vec()
        );
        assert_eq!(t.range("", None, 2), sorted[..2].to_vec());
    }
}
