//! Where things live on a store path, and the durable-write helpers every part of the node uses.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use std::time::{SystemTime, UNIX_EPOCH};
use tempfile::NamedTempFile;

/// fsync a directory so that a rename or unlink in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync `dir`, every directory under it, and its parent: the entries of state files and directories created
/// at start (binlog and journal segments, the tombstone log, the index's files, positions) are then durable. A
/// file whose data is fsynced but whose directory entry is not disappears in a power cut, and with it every
/// record in it. A few directories, once per start.
pub fn fsync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fsync_tree(&entry.path())?;
        }
    }
    fsync_dir(dir)?;
    match dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Group commit of directory fsyncs: concurrent commits that renamed files into directories each wait for one
/// fsync of every directory touched so far, done by whichever of them finds no sync running (leader/follower,
/// like the binlog's). With [`super::DIR_ROTATE`] files per directory, neighbouring uploads share one directory,
/// so a batch of commits costs one directory fsync instead of one each.
#[derive(Default)]
pub(crate) struct DirSync {
    state: std::sync::Mutex<DirSyncState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct DirSyncState {
    /// Directories renamed into and not yet synced.
    pending: std::collections::HashSet<std::path::PathBuf>,
    /// Last ticket handed out, and every ticket at or below `synced` is settled.
    issued: u64,
    synced: u64,
    running: bool,
    /// Tickets whose directory sync failed (`(ticket, error)`), until their waiter collects it.
    failed: std::collections::HashMap<u64, String>,
}

impl DirSync {
    fn lock(&self) -> std::sync::MutexGuard<'_, DirSyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Return once a rename or link made in `dir` before this call is durable.
    pub(crate) fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.issued += 1;
        let ticket = st.issued;
        st.pending.insert(dir.to_owned());
        loop {
            if st.synced >= ticket {
                return match st.failed.remove(&ticket) {
                    Some(e) => Err(io::Error::other(e)),
                    None => Ok(()),
                };
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            let batch = std::mem::take(&mut st.pending);
            let (from, upto) = (st.synced + 1, st.issued);
            drop(st);
            let errors: Vec<String> = batch
                .iter()
                .filter_map(|d| fsync_dir(d).err().map(|e| format!("{}: {e}", d.display())))
                .collect();
            st = self.lock();
            st.running = false;
            st.synced = upto;
            if !errors.is_empty() {
                // Which commits of the batch used the failed directory is not kept: every waiter of the batch
                // gets the error (its commit fails as a failed fsync did before).
                let msg = errors.join("; ");
                for t in from..=upto {
                    st.failed.insert(t, msg.clone());
                }
            }
            self.done.notify_all();
        }
    }
}

/// Create a directory with exactly `mode` (not masked by the umask); an existing one is left as it is.
pub(crate) fn mkdir_ok(p: &Path, mode: u32) -> io::Result<()> {
    match fs::create_dir(p) {
        Ok(()) => fs::set_permissions(p, Permissions::from_mode(mode)),
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => Ok(()),
    }
}

/// A temp file in `dir` with exactly `mode`, to be renamed into place.
pub(crate) fn temp_file(dir: &Path, prefix: &str, mode: u32) -> io::Result<NamedTempFile> {
    let tmp = tempfile::Builder::new().prefix(prefix).tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    Ok(tmp)
}

/// Create `data/`; returns whether it is new (then the store path holds no file). The `XX/YY` levels are made
/// on first use by [`ensure_dir`]: creating all 65,536 up front costs seconds of syscalls per store path at every
/// start of a new node and buys nothing, since a commit needs only its own directory.
pub(crate) fn create_data_dirs(root: &Path, mode: u32) -> io::Result<bool> {
    let data = root.join("data");
    let fresh = !data.exists();
    fs::create_dir_all(root)?;
    mkdir_ok(&data, mode)?;
    if fresh {
        fsync_dir(root)?;
    }
    Ok(fresh)
}

/// Make sure `dir` (a `data/XX/YY` directory) exists, durably: each level created here is fsynced into its
/// parent before a file is renamed into it.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().expect("data/XX/YY has a parent");
    ensure_dir(parent, mode)?;
    mkdir_ok(dir, mode)?;
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

/// Durably replace `target` with `bytes` (temp file with `mode` in `tmp_dir`, fsync, rename, fsync dir).
pub(crate) fn write_atomic(
    tmp_dir: &Path,
    target: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    write_atomic_at(tmp_dir, target, bytes, mode, None)
}

/// [`write_atomic`], the new file's modification time set to `mtime` (durably, with the data) when given.
pub(crate) fn write_atomic_at(
    tmp_dir: &Path,
    target: &Path,
    bytes: &[u8],
    mode: u32,
    mtime: Option<SystemTime>,
) -> io::Result<()> {
    let mut tmp = temp_file(tmp_dir, ".tmp-", mode)?;
    tmp.write_all(bytes)?;
    if let Some(t) = mtime {
        tmp.as_file().set_modified(t)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    if let Some(parent) = target.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Durably replace the small file `dir/name` (temp file in `dir`, fsync, rename, fsync `dir`).
/// Node state, so owner-only (0600).
pub fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic(dir, &dir.join(name), bytes, 0o600)
}

/// Unix seconds of a time (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

static FAIL_POINT: OnceLock<String> = OnceLock::new();

/// Test hook (the hidden `--fail-point NAME` flag): the process aborts when it reaches the named point, a crash
/// at the worst moment for the process-level durability tests. Points: `after-rename` (a new file is in place,
/// its directory not fsynced, the index not updated), `after-delete-record` (a delete is recorded, the file not
/// unlinked yet).
pub fn set_fail_point(name: &str) {
    let _ = FAIL_POINT.set(name.to_owned());
}

pub(crate) fn fail_point(name: &str) {
    if FAIL_POINT.get().is_some_and(|p| p == name) {
        eprintln!("fail point {name} reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn batched_directory_syncs_all_return_and_a_failed_one_is_reported_to_its_waiter() {
        let tmp = tempfile::tempdir().unwrap();
        let sync = Arc::new(DirSync::default());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (sync, dir) = (sync.clone(), tmp.path().join(format!("d{}", i % 3)));
                std::thread::spawn(move || {
                    fs::create_dir_all(&dir).unwrap();
                    for _ in 0..20 {
                        sync.sync(&dir).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let err = sync.sync(&tmp.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // The failure belonged to that batch only.
        sync.sync(tmp.path()).unwrap();
        assert!(sync.lock().failed.is_empty());
    }
}
