//! Listing and reindexing: walking the data directories (the ground truth) and reading the index in ID order.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use fdfs_common::FileId;

use super::dedup::{self, content_key, hash_file, ContentKey, KEY_BYTES, REBUILD_BATCH};
use super::{Store, INDEXED_KEY, META_SUFFIX};
use crate::error::Result;

/// sled keys of the "built" marks and checkpoints of the index formats kept in sled before (docs/INDEX.md).
const LEGACY_SLED_KEYS: [&[u8]; 4] = [
    b"indexed",
    b"indexed-v2",
    b"checkpoint-binlog",
    b"checkpoint-journal",
];
/// sled trees of those formats, per store path (`<name>-XX`).
const LEGACY_SLED_TREES: [&str; 4] = ["hashes", "ids", "index-holders", "index-ids"];

/// What [`Store::reindex`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    /// File IDs indexed.
    pub files: u64,
    /// Distinct contents (inodes after dedup) among them.
    pub contents: u64,
}

impl Store {
    /// The slave files of `master` held here (its directory's names that extend the master's; metadata files
    /// skipped), sorted. Empty for a slave or a file not here. Blocking (one directory read).
    pub fn slaves_blocking(&self, master: &FileId) -> Result<Vec<FileId>> {
        if master.name.prefix().is_some() {
            return Ok(Vec::new());
        }
        let path = self.path(master)?;
        let dir = path.parent().expect("relative_path has a parent");
        let stem = master.name.master_part();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !name.starts_with(stem) || name.ends_with(META_SUFFIX) {
                continue;
            }
            let Ok(name) = name.parse::<fdfs_common::fileid::FileName>() else {
                continue;
            };
            if name.prefix().is_some() {
                out.push(FileId {
                    name,
                    ..master.clone()
                });
            }
        }
        out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(out)
    }

    /// Whether the master of slave `slave` is here (a name in its directory with the same encoded part and
    /// digits, and no prefix: a WebP thumbnail's master may be a JPEG). Blocking (one directory read).
    pub fn master_present_blocking(&self, slave: &FileId) -> Result<bool> {
        let path = self.path(slave)?;
        let dir = path.parent().expect("relative_path has a parent");
        let stem = slave.name.master_part();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with(stem)
                && !name.ends_with(META_SUFFIX)
                && name
                    .parse::<fdfs_common::fileid::FileName>()
                    .is_ok_and(|n| n.prefix().is_none())
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

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
        // Unmarked first: a crash before the end leaves an index that the next start rebuilds.
        self.index_meta.remove(INDEXED_KEY)?;
        dedup::persist(&self.index)?;
        for sp in &self.paths {
            let _guard = sp.lock();
            dedup::clear(&self.index, &sp.holders)?;
            dedup::clear(&self.index, &sp.ids)?;
            // Keys of inodes with several links, so shared content is hashed once.
            let mut by_inode: HashMap<(u64, u64), ContentKey> = HashMap::new();
            let mut batch = Vec::with_capacity(REBUILD_BATCH);
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
                batch.push((id, key));
                if batch.len() == REBUILD_BATCH {
                    sp.index_rebuilt(&self.index, &batch)?;
                    batch.clear();
                }
                report.files += 1;
                Ok(())
            })?;
            sp.index_rebuilt(&self.index, &batch)?;
            // Holders sort by content key: distinct contents are the changes of key along one scan.
            let mut last: Option<fjall::UserKey> = None;
            for entry in sp.holders.keys() {
                let entry = entry?;
                if last
                    .as_ref()
                    .is_none_or(|l| l[..KEY_BYTES] != entry[..KEY_BYTES])
                {
                    report.contents += 1;
                }
                last = Some(entry);
            }
        }
        self.index_meta.insert(INDEXED_KEY, b"1")?;
        self.set_checkpoints_to_end()?;
        dedup::persist(&self.index)?;
        self.drop_legacy_index()?;
        self.recount()?;
        Ok(report)
    }

    /// Drop the index of the formats kept in sled before, which a rebuild replaces.
    fn drop_legacy_index(&self) -> Result<()> {
        for sp in &self.paths {
            for tree in LEGACY_SLED_TREES {
                self.db.drop_tree(format!("{tree}-{:02X}", sp.index))?;
            }
        }
        for key in LEGACY_SLED_KEYS {
            self.db.remove(key)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// [`Store::reindex_blocking`] on the blocking pool.
    pub async fn reindex(self: &Arc<Self>) -> Result<ReindexReport> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reindex_blocking()).await?
    }

    /// Every file ID in the index (all store paths), e.g. for a full sync to a new peer. Blocking (the index).
    pub fn indexed_ids(&self) -> impl Iterator<Item = FileId> + '_ {
        self.indexed_ids_after("")
    }

    /// Indexed file IDs after `after` in ID (byte) order, all store paths: a page of a listing starts here
    /// without walking what came before. Blocking (the index).
    pub fn indexed_ids_after<'a>(&'a self, after: &str) -> impl Iterator<Item = FileId> + 'a {
        let after = after.to_owned();
        self.paths
            .iter()
            .flat_map(move |sp| sp.ids_after(&self.group, &after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdfs_common::fileid::{FileName, NameInfo};

    /// Files written straight into the data directories of two store paths, then indexed by a rebuild: every
    /// `after` (an ID, a prefix of one, the empty string, strings between or beyond the IDs) lists exactly the
    /// IDs that sort after it, in order, and the count and dedup contents match the disk.
    #[test]
    fn listing_after_any_string_matches_the_sorted_ids() {
        let dir = tempfile::tempdir().unwrap();
        let roots = vec![dir.path().join("a"), dir.path().join("b")];
        let store = Store::open_blocking("g1".parse().unwrap(), &roots, 1 << 20).unwrap();
        let mut all = Vec::new();
        for i in 0..60u32 {
            let content = format!("content {}", i % 40);
            let info = NameInfo {
                source_id: 7,
                created: 1_700_000_000 + i,
                size: content.len() as u64,
                crc32: crc32fast::hash(content.as_bytes()),
            };
            let id = FileId {
                group: "g1".parse().unwrap(),
                store_path: (i % 2) as u8,
                dir1: [0x00, 0x0A, 0xA0, 0xFF][(i % 4) as usize],
                dir2: (i * 37 % 256) as u8,
                name: FileName::generate(&info, Some("txt")).unwrap(),
            };
            let path = roots[usize::from(id.store_path)].join(id.relative_path());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
            all.push(id.to_string());
        }
        all.sort();
        let report = store.reindex_blocking().unwrap();
        assert_eq!(report.files, 60);
        assert_eq!(report.contents, 40);
        assert_eq!(store.file_count(), 60);
        let listed: Vec<String> = store.indexed_ids().map(|i| i.to_string()).collect();
        assert_eq!(listed, all);

        let mut afters: Vec<String> = all.clone();
        afters.extend(all.iter().map(|s| s[..s.len() - 3].to_owned()));
        afters.extend(
            [
                "",
                "g",
                "g1/",
                "g1/M00",
                "g1/M00/",
                "g1/M00/0A",
                "g1/M00/0A/",
                "g1/M00/0a/00",
                "g1/M00/0B",
                "g1/M00/FF/FF/",
                "g1/M00/zz",
                "g1/M01/",
                "g1/M01/A0/",
                "g1/M02/",
                "h",
            ]
            .map(str::to_owned),
        );
        for after in afters {
            let want: Vec<&String> = all.iter().filter(|s| s.as_str() > after.as_str()).collect();
            let got: Vec<String> = store
                .indexed_ids_after(&after)
                .map(|i| i.to_string())
                .collect();
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "after {after:?}");
        }
    }

    /// A node upgraded from the index formats kept in sled (the first one: ID strings, marked `indexed`; the
    /// compact one: marked `indexed-v2`, with checkpoints) rebuilds the index in fjall at start and drops the old
    /// trees and keys: its files are listed and deduplicated as before.
    #[test]
    fn an_index_of_the_sled_formats_is_rebuilt_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let content = b"kept across the upgrade";
        let info = NameInfo {
            source_id: 7,
            created: 1_700_000_000,
            size: content.len() as u64,
            crc32: crc32fast::hash(content),
        };
        let id = FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: 0x12,
            dir2: 0x34,
            name: FileName::generate(&info, None).unwrap(),
        };
        let path = root.join(id.relative_path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        {
            let db = sled::open(root.join(".fdfs").join("db")).unwrap();
            let (hash, size) = hash_file(&path).unwrap();
            let mut old_key = hash.to_vec();
            old_key.extend_from_slice(&size.to_be_bytes());
            db.open_tree("hashes-00")
                .unwrap()
                .insert(&old_key, id.to_string().as_bytes())
                .unwrap();
            db.open_tree("ids-00")
                .unwrap()
                .insert(id.to_string().as_bytes(), old_key)
                .unwrap();
            db.insert(b"indexed", &b"1"[..]).unwrap();
            db.open_tree("index-ids-00")
                .unwrap()
                .insert(b"stale", &b"0123456789abcdef"[..])
                .unwrap();
            db.insert(b"indexed-v2", &b"1"[..]).unwrap();
            db.insert(b"checkpoint-binlog", &7u64.to_be_bytes()[..])
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open_blocking("g1".parse().unwrap(), &[root], 1 << 20).unwrap();
        assert_eq!(store.file_count(), 1);
        assert_eq!(store.indexed_ids().collect::<Vec<_>>(), vec![id]);
        let names: Vec<Vec<u8>> = store.db.tree_names().iter().map(|n| n.to_vec()).collect();
        assert!(!names.contains(&b"hashes-00".to_vec()), "old trees dropped");
        assert!(!names.contains(&b"ids-00".to_vec()));
        assert!(!names.contains(&b"index-ids-00".to_vec()));
        for key in LEGACY_SLED_KEYS {
            assert!(store.db.get(key).unwrap().is_none());
        }
        let key = content_key(&hash_file(&path).unwrap().0, content.len() as u64);
        let holders = store.paths[0].holders(&key, content.len() as u64).unwrap();
        assert_eq!(holders.live.len(), 1, "dedup finds the file");
    }

    /// A rebuild cut short by a crash (the built mark removed and some entries cleared, nothing more) is done
    /// again at the next start: every file is indexed and deduplicated.
    #[test]
    fn a_rebuild_cut_short_is_done_again_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let mut ids = Vec::new();
        for i in 0..5u32 {
            let content = format!("content {}", i % 2);
            let info = NameInfo {
                source_id: 7,
                created: 1_700_000_000 + i,
                size: content.len() as u64,
                crc32: crc32fast::hash(content.as_bytes()),
            };
            let id = FileId {
                group: "g1".parse().unwrap(),
                store_path: 0,
                dir1: 1,
                dir2: i as u8,
                name: FileName::generate(&info, None).unwrap(),
            };
            let path = root.join(id.relative_path());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
            ids.push(id);
        }
        {
            let store =
                Store::open_blocking("g1".parse().unwrap(), std::slice::from_ref(&root), 1 << 20)
                    .unwrap();
            assert_eq!(store.file_count(), 5);
            // What a crash part-way through `reindex_blocking` leaves: unmarked, partly cleared.
            store.index_meta.remove(INDEXED_KEY).unwrap();
            dedup::clear(&store.index, &store.paths[0].ids).unwrap();
            dedup::persist(&store.index).unwrap();
        }
        let store = Store::open_blocking("g1".parse().unwrap(), &[root], 1 << 20).unwrap();
        assert_eq!(store.file_count(), 5);
        assert_eq!(store.indexed_ids().collect::<Vec<_>>(), ids);
        assert!(store.index_meta.get(INDEXED_KEY).unwrap().is_some());
    }
}
