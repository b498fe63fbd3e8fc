//! Measures the storage node's sled index at scale: writes N small files (default 1,000,000) straight into a
//! store path's `data/XX/YY/` with valid FastDFS names, then opens the store, which finds no index and rebuilds
//! it from disk with the real `reindex` code (hashing each file, filling the dedup and id trees, flushing).
//! Prints the rebuild time, the sled directory's size on disk and the process's peak RSS.
//!
//! `cargo run --release -p fdfs-storage --features examples --example sled_million -- [N] [DIR]`
//! (DIR defaults to a temp dir under the current directory; it is removed afterwards unless given.)

use std::path::{Path, PathBuf};
use std::time::Instant;

use fdfs_common::fileid::{FileId, FileName, GroupName, NameInfo};
use fdfs_storage::store::Store;

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map_or_else(|| "?".into(), |l| l[field.len()..].trim().to_owned())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map_or(1_000_000, |s| s.parse().expect("N"));
    let (root, _keep) = match args.next() {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::tempdir_in(".").expect("tempdir");
            (t.path().to_owned(), Some(t))
        }
    };
    let group = "group1".parse().unwrap();

    let t0 = Instant::now();
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let root = &root;
            let group = &group;
            s.spawn(move || {
                for i in (0..n).filter(|i| i % threads == t) {
                    let content = format!("file number {i}\n");
                    let info = NameInfo {
                        source_id: 7,
                        created: 1_700_000_000 + i,
                        size: content.len() as u64,
                        crc32: crc32fast::hash(content.as_bytes()),
                    };
                    let id = FileId {
                        group: GroupName::clone(group),
                        store_path: 0,
                        dir1: (i % 256) as u8,
                        dir2: ((i / 256) % 256) as u8,
                        name: FileName::generate(&info, Some("txt")).unwrap(),
                    };
                    let path = root.join(id.relative_path());
                    if i < 65_536 {
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    }
                    std::fs::write(path, content).unwrap();
                }
            });
        }
    });
    println!("wrote {n} files in {:.1?}", t0.elapsed());

    let t1 = Instant::now();
    let store = Store::open_blocking(group, std::slice::from_ref(&root), u64::MAX).expect("open");
    let took = t1.elapsed();
    println!(
        "open + reindex of {} files: {took:.1?} ({:.0} files/s)",
        store.file_count(),
        f64::from(n) / took.as_secs_f64()
    );
    drop(store);
    let db = root.join(".fdfs").join("db");
    println!(
        "sled on disk: {:.1} MiB ({:.0} bytes/file)",
        dir_size(&db) as f64 / (1 << 20) as f64,
        dir_size(&db) as f64 / f64::from(n)
    );
    println!(
        "process RSS now {}, peak {}",
        status("VmRSS:"),
        status("VmHWM:")
    );

    let t2 = Instant::now();
    let store = Store::open_blocking("group1".parse().unwrap(), &[root], u64::MAX).expect("reopen");
    println!(
        "reopen with the index in place: {:.1?}, {} files, RSS now {}",
        t2.elapsed(),
        store.file_count(),
        status("VmRSS:")
    );
}
