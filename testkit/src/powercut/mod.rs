//! A power-cut simulator: [`Disk`] mounts a FUSE filesystem that passes every operation through to a
//! directory and keeps track of what a real disk would still hold after losing power, and [`Disk::cut`]
//! drops everything else, as a power cut does. `kill -9` leaves the page cache intact, so a durability test
//! that only kills processes passes with no `fsync` at all; on a `Disk` it does not.
//!
//! ```no_run
//! # use fdfs_testkit::powercut::{Cut, Disk};
//! # fn main() -> std::io::Result<()> {
//! # let (state, mnt) = (std::path::Path::new("/tmp/s"), std::path::Path::new("/tmp/m"));
//! let mut disk = Disk::mount(state, mnt)?;
//! std::fs::write(disk.path().join("a"), b"never synced")?;
//! // ... start the processes under test on disk.path(), SIGKILL them all ...
//! let report = disk.cut(Cut::LoseAll)?; // "a" is gone: neither it nor its directory was synced
//! # Ok(()) }
//! ```
//!
//! The model is strict POSIX, as ext4 guarantees it without its `auto_da_alloc` leniency:
//! - **File data** (writes, truncations, `fallocate`) is durable once the file is `fsync`ed or
//!   `fdatasync`ed (through any handle of the inode, or written through an `O_SYNC`/`O_DSYNC` handle). After
//!   a cut a file holds its content as of its last sync; a file never synced is empty.
//! - **Directory entries** (create, mkdir, symlink, link, unlink, rmdir, rename in or out) are durable once
//!   that directory is `fsync`ed. A rename is durable in the target directory when the target is synced, and
//!   the old name goes once the source is synced (until then, after a cut, the file may have both names). A
//!   file whose data was synced but whose directory never was is gone.
//! - **Hard links** stay one inode after a cut when their entries are durable.
//! - Whatever the state directory holds at mount (or after a cut, at the remount) is durable.
//! - **`sync`/`syncfs` make nothing durable**: FUSE does not pass them to the filesystem, so the code under
//!   test must sync its files and directories itself (code that relies on `syncfs` alone loses its data
//!   here, though ext4 would keep it: test such a design another way). Nor does `sync_file_range` (not passed on either, and
//!   no durability call on a real disk: it writes pages, not the file's size or allocation, and flushes no
//!   disk cache). sled 0.34's `flush` ends with it, so what sled flushed is durable here only once its
//!   file is fsynced (sled's shutdown does; see `testkit/tests/powercut.rs`), and sled never syncs its
//!   directory or its `conf`.
//! - [`Cut::Random`] keeps or drops each change that was not durable independently (each changed directory
//!   entry; each changed file's whole content: a file is then either as last synced or as last written,
//!   never torn), as a disk that reorders writes can. The two halves of a rename are two changes: a random
//!   cut may keep the new name, the old one, both or neither, as the per-directory rule allows when only one
//!   of the two directories was synced.
//!
//! Not modelled: the durability of metadata (mode, owner, times: a file after a cut has its inode's last
//! mode and owner), extended attributes (unsupported), special files (`mknod` makes regular files only), torn
//! writes within a file, and `O_DIRECT` (served through the page cache like any write). A directory renamed
//! into another without both parents synced appears once, under its first durable name in a walk from the
//! root.
//!
//! Layout of the state directory (only a `Disk` touches it): `live/` is the tree the mount shows (after a
//! cut, the tree that survived), `inodes/` a hard link to every file the mount has seen (its content stays
//! reachable after its last name goes while a durable entry still names it), `durable/` the durable copies
//! of files changed in place since the mount (each made once, then updated with only the ranges written
//! since the last sync). A file written once, or only appended to, is never copied.
//!
//! Processes must be gone before a cut (the caller SIGKILLs them; a file still open on the mount, even in
//! the test process, delays the unmount by two seconds and then detaches it lazily). Drop the `Disk` before
//! the directories it lives in. Needs root and `/dev/fuse` ([`unavailable`] says why not, for tests to skip).

mod fs;
mod model;
mod rebuild;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption, SessionACL};

use fs::{Counters, Inner, PowerFs};
use model::{lock, Paths};

/// Threads serving the mount's requests (blocking ones, such as an fsync copying ranges, do not hold up the
/// others).
const THREADS: usize = 4;

/// How long an unmount waits for the files still open on the mount to close before detaching it.
const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

/// A simulated disk: a FUSE mount whose every non-durable change a [`cut`](Disk::cut) drops. Unmounted when
/// dropped (the live tree is then kept as it is, for the next mount).
#[derive(Debug)]
pub struct Disk {
    /// Where the trees live.
    state: PathBuf,
    /// Where the disk is mounted.
    mountpoint: PathBuf,
    /// The mount's state, `None` while unmounted (during a cut, or after one failed).
    inner: Option<Arc<Inner>>,
    /// The FUSE session's threads.
    session: Option<BackgroundSession>,
    /// Sync calls seen, kept across cuts.
    counters: Arc<Counters>,
}

/// How much a [`Disk::cut`] loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Every change that was not durable.
    LoseAll,
    /// Each change that was not durable is independently kept or lost, as a disk reordering its writes can;
    /// the same seed after the same operations loses the same changes.
    Random(u64),
}

/// Faults a [`Disk`] shows until [`Disk::inject`] changes them: a failing or slow disk. Reads served from
/// the kernel's page cache never reach the disk, so they neither fail nor wait (evict a file to make its
/// next read do: [`crate::evict_from_page_cache`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Reads of file data fail with EIO.
    pub fail_reads: bool,
    /// Every change (write, truncation, create, mkdir, link, rename, unlink, fsync) fails with EIO and
    /// changes nothing.
    pub fail_changes: bool,
    /// Every read and change waits this long first (served by [`THREADS`] threads: calls queue behind it).
    pub delay: Duration,
}

/// What a [`Disk::cut`] dropped (for messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files (still named after the cut) whose content went back to what was last synced.
    pub files_reverted: usize,
    /// Directory entries whose creation, removal or change since their directory's last sync was dropped.
    pub entries_reverted: usize,
}

/// Why a [`Disk`] cannot be mounted here (`None` when it can): no `/dev/fuse`, or not allowed to open it.
/// Tests skip with this reason, and only for it.
pub fn unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/fuse: {e}")),
    }
}

impl Disk {
    /// Mount a simulated disk at `mountpoint` (an existing empty directory) whose contents live under `state`
    /// (an existing directory: the live tree and the durable copies are kept there). Whatever `state` holds
    /// from an earlier `Disk` is the starting point, and is durable.
    pub fn mount(state: &Path, mountpoint: &Path) -> io::Result<Disk> {
        let mut disk = Disk {
            state: state.canonicalize()?,
            mountpoint: mountpoint.canonicalize()?,
            inner: None,
            session: None,
            counters: Arc::default(),
        };
        disk.start()?;
        Ok(disk)
    }

    /// Where the disk is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut. The caller has already SIGKILLed every process using the disk. Unmount, rebuild the
    /// live tree from what was durable ([`Cut::LoseAll`]: every non-durable change dropped;
    /// [`Cut::Random`]: each kept or dropped), and mount it again at the same mountpoint. Returns what was
    /// dropped.
    pub fn cut(&mut self, how: Cut) -> io::Result<CutReport> {
        self.stop();
        let inner = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("the disk is not mounted (an earlier cut failed)"))?;
        let report = rebuild::run(&lock(&inner.ns), how)?;
        drop(inner);
        self.start()?;
        Ok(report)
    }

    /// From now on, show `faults` (`Faults::default()`: a healthy disk again).
    pub fn inject(&self, faults: Faults) {
        *lock(&self.counters.faults) = faults;
    }

    /// The `fsync`/`fdatasync` calls on files and the `fsync` calls on directories seen since the disk was
    /// mounted (across cuts).
    pub fn syncs(&self) -> (u64, u64) {
        (
            self.counters.file_syncs.load(Ordering::Relaxed),
            self.counters.dir_syncs.load(Ordering::Relaxed),
        )
    }

    /// Mount the live tree as it is, all of it durable.
    fn start(&mut self) -> io::Result<()> {
        let paths = Arc::new(Paths::prepare(&self.state)?);
        let inner = Arc::new(Inner::new(paths, self.counters.clone())?);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::DefaultPermissions,
        ];
        // Servers under test may run as other users: the kernel checks permissions (`default_permissions`).
        config.acl = SessionACL::All;
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        let fs = PowerFs {
            inner: inner.clone(),
        };
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &config)?);
        self.inner = Some(inner);
        Ok(())
    }

    /// Lose power: no operation changes anything any more, then unmount (lazily if files stay open) and let
    /// the session's threads end.
    fn stop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.close_gate();
        }
        let Some(session) = self.session.take() else {
            return;
        };
        let detached = unmount(&self.mountpoint);
        // The threads end when the kernel drops the connection: at once after a plain unmount; after a lazy
        // one, when the last file open on the mount closes. Threads still running then do nothing (the gate
        // is closed) and end with that file.
        let deadline = Instant::now()
            + if detached {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(10)
            };
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if session.guard.is_finished() {
            let _ = session.join();
        }
        // else dropped: its own unmount finds nothing mounted at the path any more.
    }
}

/// Unmount `mountpoint`, waiting a while for files still open on it to close, then lazily (returns
/// whether it had to).
fn unmount(mountpoint: &Path) -> bool {
    use rustix::io::Errno;
    use rustix::mount::{unmount, UnmountFlags};
    let deadline = Instant::now() + UNMOUNT_WAIT;
    loop {
        match unmount(mountpoint, UnmountFlags::empty()) {
            Ok(()) | Err(Errno::INVAL) => return false,
            Err(Errno::BUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                let _ = unmount(mountpoint, UnmountFlags::DETACH);
                return true;
            }
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.stop();
        let _ = Paths::new(&self.state).clear();
    }
}

#[cfg(test)]
mod tests {
    /// Tests hold a `Disk` across `.await`s and share it between threads.
    #[test]
    fn a_disk_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Disk>();
    }
}
