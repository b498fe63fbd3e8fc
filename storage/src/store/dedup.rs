//! The dedup index, per store path, in two partitions of one fjall keyspace (an LSM store: sorted, compressed,
//! append-only segments; docs/INDEX.md measures it against sled and redb), with compact binary keys:
//!
//! - `ids-XX`: compact ID (`dir1`, `dir2`, name bytes: the ID without the group and store path, which the
//!   partition already implies) -> 16-byte content key. Iterated in key order, this is the ID order of the catch-up
//!   listing (uppercase hex directories sort like their bytes), and its length is the file count.
//! - `holders-XX`: content key + compact ID -> nothing. A prefix scan finds the IDs holding some content.
//!
//! The content key is the first 16 bytes of the file's BLAKE3 hash: 128 bits keep accidental collisions out of
//! reach at any realistic file count (about 10^-22 at 10^8 files), and a holder is used only when its file is on
//! disk with the size of the new file. Everything here can be rebuilt from the files ([`Store::reindex`]).
//!
//! The keyspace (`.fdfs/index` of store path 0) has one journal for all its partitions, replayed at open up to
//! its last whole entry, so what survives a crash is a prefix of the writes: the index checkpoints, kept in the
//! same keyspace (partition `meta`) and written after the changes they cover, never run ahead of the index.
//!
//! [`Store::reindex`]: super::Store::reindex

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use fdfs_common::{FileId, GroupName};
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::StorePath;
use crate::error::Result;

/// Bytes of the BLAKE3 hash kept as the content key.
pub(super) const KEY_BYTES: usize = 16;
/// A content key: the truncated BLAKE3 hash of the bytes.
pub(super) type ContentKey = [u8; KEY_BYTES];

/// Block cache of the index keyspace: the index is read on uploads (dedup look-ups), deletes and listings,
/// and its blocks are compressed, so a small cache costs little (see the `index_million` example).
const INDEX_CACHE_BYTES: u64 = 32 << 20;
/// Memtables of all partitions together before the largest is flushed to a segment.
const INDEX_WRITE_BUFFER_BYTES: u64 = 32 << 20;
/// Journal kept before the partitions holding it back are flushed (bounds the replay at open, and the disk).
const INDEX_JOURNAL_BYTES: u64 = 64 << 20;
/// Entries per write batch of a rebuild (one journal write each).
pub(super) const REBUILD_BATCH: usize = 4096;

/// Open (creating) the index keyspace in `dir`. One flush and one compaction thread: the node's work is the
/// files, the index is small.
pub(super) fn open_keyspace(dir: &Path) -> Result<Keyspace> {
    Ok(fjall::Config::new(dir)
        .cache_size(INDEX_CACHE_BYTES)
        .max_write_buffer_size(INDEX_WRITE_BUFFER_BYTES)
        .max_journaling_size(INDEX_JOURNAL_BYTES)
        .flush_workers(1)
        .compaction_workers(1)
        .open()?)
}

/// The `holders` and `ids` partitions of store path `index`.
pub(super) fn open_partitions(
    keyspace: &Keyspace,
    index: u8,
) -> Result<(PartitionHandle, PartitionHandle)> {
    // Holders are only scanned by prefix, never looked up by whole key: no bloom filter.
    let holders = keyspace.open_partition(
        &format!("holders-{index:02X}"),
        PartitionCreateOptions::default().bloom_filter_bits(None),
    )?;
    let ids = keyspace.open_partition(
        &format!("ids-{index:02X}"),
        PartitionCreateOptions::default(),
    )?;
    Ok((holders, ids))
}

/// Make the index's writes so far durable (they survive a crash of the process without this already).
pub(super) fn persist(keyspace: &Keyspace) -> Result<()> {
    Ok(keyspace.persist(PersistMode::SyncAll)?)
}

/// Remove every entry of `partition`, in batches (one pass over a snapshot).
pub(super) fn clear(keyspace: &Keyspace, partition: &PartitionHandle) -> Result<()> {
    let mut batch = keyspace.batch();
    for key in partition.keys() {
        batch.remove(partition, key?);
        if batch.len() >= REBUILD_BATCH {
            std::mem::replace(&mut batch, keyspace.batch()).commit()?;
        }
    }
    Ok(batch.commit()?)
}

/// What the index says about a content key, checked against the disk.
#[derive(Debug, Default)]
pub(super) struct Holders {
    /// IDs (as `XX/YY/name`) whose file is here with the right size, with their disk path.
    pub live: Vec<(String, PathBuf)>,
    /// Compact IDs whose file is gone or changed (dropped when the next ID is added).
    pub stale: Vec<Vec<u8>>,
}

/// The content key of bytes with this BLAKE3 hash (the size is checked against the disk, not keyed).
pub(super) fn content_key(hash: &[u8; 32], _size: u64) -> ContentKey {
    let mut key = [0u8; KEY_BYTES];
    key.copy_from_slice(&hash[..KEY_BYTES]);
    key
}

/// The key of `id` in its store path's `ids` tree.
pub(super) fn compact_id(id: &FileId) -> Vec<u8> {
    let name = id.name.as_str().as_bytes();
    let mut k = Vec::with_capacity(2 + name.len());
    k.extend_from_slice(&[id.dir1, id.dir2]);
    k.extend_from_slice(name);
    k
}

/// `data/XX/YY/name` of a compact ID, if it is one.
fn relative_path(compact: &[u8]) -> Option<PathBuf> {
    let (dirs, name) = compact.split_at_checked(2)?;
    let name = std::str::from_utf8(name).ok()?;
    let mut p = PathBuf::from("data");
    p.push(format!("{:02X}", dirs[0]));
    p.push(format!("{:02X}", dirs[1]));
    p.push(name);
    Some(p)
}

fn holder_key(key: &ContentKey, compact: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(KEY_BYTES + compact.len());
    k.extend_from_slice(key);
    k.extend_from_slice(compact);
    k
}

pub(super) fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    thread_local! {
        // One read buffer per thread: zeroing a fresh 256 KiB per file was a large part of a rebuild's time.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
    }
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut size = 0u64;
    BUF.with_borrow_mut(|buf| loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok::<_, io::Error>(());
        }
        h.update(&buf[..n]);
        size += n as u64;
    })?;
    Ok((*h.finalize().as_bytes(), size))
}

/// Parse an ID string of this store path; `None` for anything else (never indexed).
fn parse(id: &str) -> Option<FileId> {
    id.parse().ok()
}

impl StorePath {
    /// IDs indexed under `key`: those whose file is still here with the right size, as (ID, disk path), and the
    /// stale ones (dropped when the next ID is added).
    pub(super) fn holders(&self, key: &ContentKey, size: u64) -> Result<Holders> {
        let mut holders = Holders::default();
        for entry in self.holders.prefix(key) {
            let (entry, _) = entry?;
            let compact = &entry[KEY_BYTES..];
            let Some(rel) = relative_path(compact) else {
                holders.stale.push(compact.to_vec());
                continue;
            };
            let hpath = self.root.join(&rel);
            match fs::metadata(&hpath) {
                Ok(m) if m.is_file() && m.len() == size => {
                    let rel = rel.strip_prefix("data").unwrap_or(&rel);
                    holders
                        .live
                        .push((rel.to_string_lossy().into_owned(), hpath));
                }
                _ => holders.stale.push(compact.to_vec()),
            }
        }
        Ok(holders)
    }

    /// Whether `id` is indexed.
    pub(super) fn is_indexed(&self, id: &FileId) -> Result<bool> {
        Ok(self.ids.contains_key(compact_id(id))?)
    }

    /// The content key `id` is indexed under, if it is.
    pub(super) fn indexed_key(&self, id: &FileId) -> Result<Option<ContentKey>> {
        let key = self.ids.get(compact_id(id))?;
        Ok(key.and_then(|k| <ContentKey>::try_from(k.as_ref()).ok()))
    }

    /// Index `id` under `key` (never flushed here), dropping the `stale` holders. True when `id` was not indexed
    /// before. The holder entry goes first: a crash in between leaves at worst an unused holder entry, and the
    /// replay at start re-adds an ID that is missing from `ids`.
    pub(super) fn index_add(&self, id: &str, key: ContentKey, stale: &[Vec<u8>]) -> Result<bool> {
        let Some(id) = parse(id) else {
            return Ok(false);
        };
        let compact = compact_id(&id);
        for s in stale {
            self.holders.remove(holder_key(&key, s))?;
        }
        // The read and the writes of an ID's entries go together (an LSM store has no compare-and-swap).
        let _guard = self.index_lock();
        let old = self.ids.get(&compact)?;
        self.holders.insert(holder_key(&key, &compact), [])?;
        self.ids.insert(compact.as_slice(), key)?;
        if let Some(old) = &old {
            if old.as_ref() != key {
                if let Ok(old) = <ContentKey>::try_from(old.as_ref()) {
                    self.holders.remove(holder_key(&old, &compact))?;
                }
            }
        }
        Ok(old.is_none())
    }

    /// Drop `id` from the index. True when it was indexed.
    pub(super) fn index_remove(&self, id: &str) -> Result<bool> {
        let Some(id) = parse(id) else {
            return Ok(false);
        };
        let compact = compact_id(&id);
        let _guard = self.index_lock();
        let Some(key) = self.ids.get(&compact)? else {
            return Ok(false);
        };
        if let Ok(key) = <ContentKey>::try_from(key.as_ref()) {
            self.holders.remove(holder_key(&key, &compact))?;
        }
        self.ids.remove(compact)?;
        Ok(true)
    }

    /// Index the files found on disk during a rebuild, both entries each, no checks, in one batch.
    pub(super) fn index_rebuilt(
        &self,
        keyspace: &Keyspace,
        files: &[(FileId, ContentKey)],
    ) -> Result<()> {
        let mut batch = keyspace.batch().durability(None);
        for (id, key) in files {
            let compact = compact_id(id);
            batch.insert(&self.holders, holder_key(key, &compact), []);
            batch.insert(&self.ids, compact, key);
        }
        Ok(batch.commit()?)
    }

    /// The IDs of this store path in ID order, from the first one after `after` (any string: the IDs of other
    /// store paths compare as a whole, and `after` need not be an ID).
    pub(super) fn ids_after<'a>(
        &'a self,
        group: &'a GroupName,
        after: &str,
    ) -> Box<dyn Iterator<Item = FileId> + 'a> {
        let prefix = format!("{group}/M{:02X}/", self.index);
        let Some(rest) = after.strip_prefix(&prefix) else {
            return if after < prefix.as_str() {
                Box::new(self.decode(group, self.ids.keys()))
            } else {
                // Every ID of this store path sorts before `after`.
                Box::new(std::iter::empty())
            };
        };
        // Start at the directory `after` names (as far as it names one) and skip the IDs not after it.
        let hex = |s: &str| {
            (s.len() == 2 && !s.bytes().any(|b| b.is_ascii_lowercase()))
                .then(|| u8::from_str_radix(s, 16).ok())
                .flatten()
        };
        let mut start = Vec::with_capacity(2);
        if let Some(d1) = rest.get(..2).and_then(hex) {
            start.push(d1);
            if let (Some("/"), Some(d2)) = (rest.get(2..3), rest.get(3..5).and_then(hex)) {
                start.push(d2);
            }
        }
        let after = after.to_owned();
        Box::new(
            self.decode(group, self.ids.range(start..).map(|e| e.map(|(k, _)| k)))
                .filter(move |id| id.to_string() > after),
        )
    }

    /// File IDs from `ids` keys.
    fn decode<'a>(
        &'a self,
        group: &'a GroupName,
        keys: impl Iterator<Item = fjall::Result<fjall::UserKey>> + 'a,
    ) -> impl Iterator<Item = FileId> + 'a {
        let index = self.index;
        keys.filter_map(move |k| {
            let k = k.ok()?;
            let (dirs, name) = k.split_at_checked(2)?;
            Some(FileId {
                group: group.clone(),
                store_path: index,
                dir1: dirs[0],
                dir2: dirs[1],
                name: std::str::from_utf8(name).ok()?.parse().ok()?,
            })
        })
    }
}
