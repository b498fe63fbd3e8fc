//! Where things live on a store path, and the durable-write helpers every part of the node uses.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// fsync a directory so that a rename or unlink in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn mkdir_ok(p: &Path) -> io::Result<()> {
    match fs::create_dir(p) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Create `data/`; returns whether it is new (then the store path holds no file). The `XX/YY` levels are made
/// on first use by [`ensure_dir`]: creating all 65,536 up front costs seconds of syscalls per store path at every
/// start of a new node and buys nothing, since a commit needs only its own directory.
pub(crate) fn create_data_dirs(root: &Path) -> io::Result<bool> {
    let data = root.join("data");
    let fresh = !data.exists();
    fs::create_dir_all(&data)?;
    if fresh {
        fsync_dir(root)?;
    }
    Ok(fresh)
}

/// Make sure `dir` (a `data/XX/YY` directory) exists, durably: each level created here is fsynced into its
/// parent before a file is renamed into it.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().expect("data/XX/YY has a parent");
    ensure_dir(parent)?;
    mkdir_ok(dir)?;
    fsync_dir(parent)
}

/// Remove leftovers of writes interrupted by a crash.
pub(crate) fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Durably replace `target` with `bytes` (temp file in `tmp_dir`, fsync, rename, fsync dir).
pub(crate) fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix("meta-")
        .tempfile_in(tmp_dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    if let Some(parent) = target.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Durably replace the small file `dir/name` (temp file in `dir`, fsync, rename, fsync `dir`).
pub fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic(dir, &dir.join(name), bytes)
}

/// Unix seconds of a time (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
