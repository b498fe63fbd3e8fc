//! Compares on-disk formats for the storage node's dedup index at scale, without the data files: N synthetic
//! entries (the IDs and BLAKE3 hashes that `index_million` would produce for its files) go into one format, then
//! the process reports the build time, the index's size on disk, its peak RSS, and the time to reopen it and
//! count the entries (what a node does at start). Run one format per process, so peak RSS is that format's.
//!
//! `cargo run --release -p fdfs-storage --features examples --example index_formats -- FORMAT [N] [DIR] [walk|random]`
//!
//! FORMAT:
//! - `sled-full`: the layout before this change: content key (32-byte hash + 8-byte size) -> newline-separated ID
//!   strings, and ID string -> content key;
//! - `sled-compact`: what the store uses now: compact ID (dir1, dir2, name) -> 16-byte hash, and 16-byte hash +
//!   compact ID -> nothing;
//! - `sled-compact-lowspace`: the same with sled's `Mode::LowSpace`;
//! - `redb-compact`: the compact layout in two redb tables, committed every 10,000 entries;
//! - `fjall-compact`: what the store uses now: the compact layout in two partitions of a fjall keyspace (an LSM
//!   store), with the store's settings (`storage/src/store/dedup.rs`: 32 MiB block cache, 32 MiB write buffer,
//!   64 MiB journal, one flush and one compaction thread, no bloom filter on the holders), written in batches of
//!   4,096 entries as the rebuild does, memtables flushed at the end.
//!
//! Order `walk` (default) inserts in data-directory order, as a rebuild from disk does; `random` in hash order,
//! as uploads arrive on a live node.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fdfs_common::fileid::{FileName, NameInfo};

const SLED_CACHE: u64 = 64 << 20;
const IDS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("ids");
const HASHES: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("hashes");

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| dir_size(&e.path()))
        .sum()
}

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map_or_else(|| "?".into(), |l| l[field.len()..].trim().to_owned())
}

struct Entry {
    dir1: u8,
    dir2: u8,
    name: String,
    size: u64,
    hash: [u8; 32],
}

impl Entry {
    fn id_string(&self) -> String {
        format!(
            "group1/M00/{:02X}/{:02X}/{}",
            self.dir1, self.dir2, self.name
        )
    }

    fn compact_id(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + self.name.len());
        k.extend_from_slice(&[self.dir1, self.dir2]);
        k.extend_from_slice(self.name.as_bytes());
        k
    }

    fn full_key(&self) -> [u8; 40] {
        let mut k = [0u8; 40];
        k[..32].copy_from_slice(&self.hash);
        k[32..].copy_from_slice(&self.size.to_be_bytes());
        k
    }

    fn hash_id_key(&self) -> Vec<u8> {
        let mut k = self.hash[..16].to_vec();
        k.extend_from_slice(&self.compact_id());
        k
    }
}

/// The same files as `index_million` writes: content `file number {i}\n` in `data/{i % 256}/{i / 256 % 256}/`.
fn entries(n: u32, random: bool) -> Vec<Entry> {
    let mut v: Vec<Entry> = (0..n)
        .map(|i| {
            let content = format!("file number {i}\n");
            let info = NameInfo {
                source_id: 7,
                created: 1_700_000_000 + i,
                size: content.len() as u64,
                crc32: crc32fast::hash(content.as_bytes()),
            };
            Entry {
                dir1: (i % 256) as u8,
                dir2: ((i / 256) % 256) as u8,
                name: FileName::generate(&info, Some("txt"))
                    .unwrap()
                    .as_str()
                    .to_owned(),
                size: content.len() as u64,
                hash: *blake3::hash(content.as_bytes()).as_bytes(),
            }
        })
        .collect();
    if random {
        v.sort_by_key(|e| e.hash);
    } else {
        v.sort_by_key(|e| (e.dir1, e.dir2));
    }
    v
}

fn sled_open(dir: &Path, low_space: bool) -> sled::Db {
    let mut c = sled::Config::new().path(dir).cache_capacity(SLED_CACHE);
    if low_space {
        c = c.mode(sled::Mode::LowSpace);
    }
    c.open().expect("sled open")
}

fn build(format: &str, dir: &Path, entries: &[Entry]) {
    match format {
        "sled-full" => {
            let db = sled_open(dir, false);
            let hashes = db.open_tree("hashes-00").unwrap();
            let ids = db.open_tree("ids-00").unwrap();
            for e in entries {
                let key = e.full_key();
                let id = e.id_string();
                let mut list = hashes
                    .get(key)
                    .unwrap()
                    .map(|v| v.to_vec())
                    .unwrap_or_default();
                if !list.is_empty() {
                    list.push(b'\n');
                }
                list.extend_from_slice(id.as_bytes());
                hashes.insert(key, list).unwrap();
                ids.insert(id.as_bytes(), &key[..]).unwrap();
            }
            db.flush().unwrap();
        }
        "sled-compact" | "sled-compact-lowspace" => {
            let db = sled_open(dir, format.ends_with("lowspace"));
            let hashes = db.open_tree("hashes-00").unwrap();
            let ids = db.open_tree("ids-00").unwrap();
            for e in entries {
                ids.insert(e.compact_id(), &e.hash[..16]).unwrap();
                hashes.insert(e.hash_id_key(), &[][..]).unwrap();
            }
            db.flush().unwrap();
        }
        "redb-compact" => {
            let db = redb::Database::create(dir.join("index.redb")).unwrap();
            for chunk in entries.chunks(10_000) {
                let tx = db.begin_write().unwrap();
                {
                    let mut ids = tx.open_table(IDS).unwrap();
                    let mut hashes = tx.open_table(HASHES).unwrap();
                    for e in chunk {
                        ids.insert(e.compact_id().as_slice(), &e.hash[..16])
                            .unwrap();
                        hashes.insert(e.hash_id_key().as_slice(), ()).unwrap();
                    }
                }
                tx.commit().unwrap();
            }
        }
        "fjall-compact" => {
            let (ks, holders, ids) = fjall_open(dir);
            for chunk in entries.chunks(4096) {
                let mut batch = ks.batch().durability(None);
                for e in chunk {
                    batch.insert(&holders, e.hash_id_key(), []);
                    batch.insert(&ids, e.compact_id(), &e.hash[..16]);
                }
                batch.commit().unwrap();
            }
            holders.rotate_memtable_and_wait().unwrap();
            ids.rotate_memtable_and_wait().unwrap();
            ks.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        other => panic!("unknown format {other}"),
    }
}

/// The store's index keyspace settings (`storage/src/store/dedup.rs`).
fn fjall_open(
    dir: &Path,
) -> (
    fjall::Keyspace,
    fjall::PartitionHandle,
    fjall::PartitionHandle,
) {
    let ks = fjall::Config::new(dir)
        .cache_size(32 << 20)
        .max_write_buffer_size(32 << 20)
        .max_journaling_size(64 << 20)
        .flush_workers(1)
        .compaction_workers(1)
        .open()
        .unwrap();
    let holders = ks
        .open_partition(
            "holders-00",
            fjall::PartitionCreateOptions::default().bloom_filter_bits(None),
        )
        .unwrap();
    let ids = ks.open_partition("ids-00", Default::default()).unwrap();
    (ks, holders, ids)
}

fn reopen_count(format: &str, dir: &Path) -> usize {
    if format == "fjall-compact" {
        let (_ks, _holders, ids) = fjall_open(dir);
        return ids.len().unwrap();
    }
    if format == "redb-compact" {
        use redb::ReadableTableMetadata;
        let db = redb::Database::create(dir.join("index.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let n = tx.open_table(IDS).unwrap().len().unwrap();
        usize::try_from(n).unwrap()
    } else {
        let db = sled_open(dir, format.ends_with("lowspace"));
        db.open_tree("ids-00").unwrap().len()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let format = args.next().expect("FORMAT");
    let n: u32 = args.next().map_or(1_000_000, |s| s.parse().expect("N"));
    let (root, _keep) = match args.next() {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::tempdir_in(".").expect("tempdir");
            (t.path().to_owned(), Some(t))
        }
    };
    let random = args.next().is_some_and(|o| o == "random");
    let dir = root.join(&format);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let entries = entries(n, random);
    let base = status("VmRSS:");
    let t0 = Instant::now();
    build(&format, &dir, &entries);
    let built = t0.elapsed();
    drop(entries);
    let bytes = dir_size(&dir);
    println!(
        "{format} n={n} order={}: build {built:.1?}, on disk {:.1} MiB ({:.0} bytes/file), peak RSS {} \
         (entries in memory before the build: RSS {base})",
        if random { "random" } else { "walk" },
        bytes as f64 / f64::from(1 << 20),
        bytes as f64 / f64::from(n),
        status("VmHWM:"),
    );
    let t1 = Instant::now();
    let count = reopen_count(&format, &dir);
    println!(
        "{format}: reopen + count {count} in {:.1?}, RSS now {}, on disk after reopen {:.0} bytes/file",
        t1.elapsed(),
        status("VmRSS:"),
        dir_size(&dir) as f64 / f64::from(n)
    );
}
