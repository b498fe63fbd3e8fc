//! Measures the storage node's dedup/listing index at scale with the real store: writes N small files (default
//! 1,000,000) straight into a store path's `data/XX/YY/` with valid FastDFS names, then opens the store, which
//! finds no index and rebuilds it from disk with the real `reindex` code (hashing each file, filling the holders
//! and ids partitions, flushing). Prints the rebuild time, the index's size on disk and the process's peak RSS,
//! then reopens the store (journal replay, binlog replay, recount) and times that.
//!
//! `cargo run --release -p fdfs-storage --features examples --example index_million -- [N] [DIR]`
//! (DIR defaults to a temp dir under the current directory; it is removed afterwards unless given. A DIR given
//! and already holding the N files, from an earlier run, is reused: its `.fdfs` is removed, so the index is
//! rebuilt, and no file is written.)

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

    let written = root.join(format!(".written-{n}"));
    if written.exists() {
        std::fs::remove_dir_all(root.join(".fdfs")).expect("remove the old index");
        println!("reusing the {n} files in {}", root.display());
    } else {
        write_files(&root, &group, n);
        std::fs::write(&written, b"").expect("mark");
    }
    println!("before the open: RSS {}", status("VmRSS:"));

    let t1 = Instant::now();
    let store = Store::open_blocking(group, std::slice::from_ref(&root), u64::MAX).expect("open");
    let took = t1.elapsed();
    println!(
        "open + reindex of {} files: {took:.1?} ({:.0} files/s)",
        store.file_count(),
        f64::from(n) / took.as_secs_f64()
    );
    println!(
        "RSS after the rebuild {}, peak {}",
        status("VmRSS:"),
        status("VmHWM:")
    );
    drop(store);
    for name in ["index", "db"] {
        let size = dir_size(&root.join(".fdfs").join(name));
        println!(
            ".fdfs/{name} on disk: {:.1} MiB ({:.0} bytes/file)",
            size as f64 / (1 << 20) as f64,
            size as f64 / f64::from(n)
        );
    }

    let t2 = Instant::now();
    let store = Store::open_blocking(
        "group1".parse().unwrap(),
        std::slice::from_ref(&root),
        u64::MAX,
    )
    .expect("reopen");
    println!(
        "reopen with the index in place: {:.1?}, {} files, RSS now {}, peak {}",
        t2.elapsed(),
        store.file_count(),
        status("VmRSS:"),
        status("VmHWM:")
    );
    drop(store);
    let size = dir_size(&root.join(".fdfs").join("index"));
    println!(
        ".fdfs/index on disk after the reopen: {:.1} MiB ({:.0} bytes/file)",
        size as f64 / (1 << 20) as f64,
        size as f64 / f64::from(n)
    );
}

fn write_files(root: &Path, group: &GroupName, n: u32) {
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
                    if std::fs::write(&path, &content).is_err() {
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::fs::write(path, content).unwrap();
                    }
                }
            });
        }
    });
    println!("wrote {n} files in {:.1?}", t0.elapsed());
}
