//! Temp directories for node data ([`tempdir`]: on tmpfs when it has room, shared fairly between the tests
//! that run side by side) and what a store path holds ([`stored_files`], [`stored_path`], [`files_under`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fdfs_common::FileId;

/// Bytes of `/dev/shm` promised to the live [`TestDir`]s of this process (several tests run at once: each
/// checks the free space against what the others may still write, not only what they wrote so far).
static SHM_PROMISED: Mutex<u64> = Mutex::new(0);

/// A fresh temp directory for node data, removed when dropped.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// Bytes of `/dev/shm` promised to it (given back on drop).
    promised: u64,
}

impl TestDir {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the directory (and its contents) after the test, e.g. to look at a failure.
    pub fn keep(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.promised > 0 {
            let mut p = SHM_PROMISED.lock().unwrap_or_else(|e| e.into_inner());
            *p = p.saturating_sub(self.promised);
        }
    }
}

/// A fresh temp directory for node data, on tmpfs (`/dev/shm`) when it has `min_free` bytes free beyond what
/// the other live test dirs of this process were promised: storage nodes create 256x256 directories per store
/// path, which a disk-backed /tmp makes slow to create and remove. `FDFS_TEST_TMPDIR` overrides the base
/// directory.
pub fn tempdir(min_free: u64) -> TestDir {
    let (base, promised) = match std::env::var_os("FDFS_TEST_TMPDIR") {
        Some(base) => (PathBuf::from(base), 0),
        None => {
            let shm = PathBuf::from("/dev/shm");
            let mut p = SHM_PROMISED.lock().unwrap_or_else(|e| e.into_inner());
            match free_bytes(&shm) {
                Some(free) if free >= *p + min_free => {
                    *p += min_free;
                    (shm, min_free)
                }
                _ => (std::env::temp_dir(), 0),
            }
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("fdfs-test-")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("tempdir in {}: {e}", base.display()));
    TestDir {
        path: dir.path().to_owned(),
        dir: Some(dir),
        promised,
    }
}

/// Free bytes of the filesystem holding `path`, if it is a writable directory.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() || meta.permissions().readonly() {
        return None;
    }
    fdfs_common::sys::free_bytes(path).ok()
}

/// Where a store path keeps the file `id`: `<store>/data/XX/YY/<name>`.
pub fn stored_path(store: &Path, id: &str) -> PathBuf {
    let id: FileId = id
        .parse()
        .unwrap_or_else(|e| panic!("{id} is no file ID: {e}"));
    store.join(id.relative_path())
}

/// Drop the pages of the file at `path` from the page cache (clean pages only: sync a file just written first),
/// so that the next read of it goes to the disk.
pub fn evict_from_page_cache(path: &Path) {
    let file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
        .unwrap_or_else(|e| panic!("evicting {}: {e}", path.display()));
}

/// `XX/YY/<name>` of every file stored under a store path (`<store>/data`), metadata sidecars (`-m`) left out.
pub fn stored_files(store: &Path) -> BTreeSet<String> {
    let data = store.join("data");
    files_under(&data)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with("-m"))
        .filter_map(|p| {
            let rel = p.strip_prefix(&data).ok()?.to_str()?.to_owned();
            // Only `XX/YY/name`: FastDFS-style state files elsewhere under data/ are not stored files.
            (rel.split('/').count() == 3).then_some(rel)
        })
        .collect()
}

/// Every regular file below `dir`, recursively, sorted (none when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                walk(&e.path(), out);
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
