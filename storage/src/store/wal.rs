//! The data log of a store path: group commit of small files' bytes.
//!
//! A small body (one that arrives whole in memory, up to [`crate::sync::pipeline::SMALL_BODY`]) is not fsynced
//! file by file. Its bytes are appended to this log, and concurrent writers share one `fdatasync` of the log
//! (leader/follower, like the binlog's); the file itself is written and renamed into place without an fsync of
//! its own or of its directory. So a batch of uploads costs one sync instead of one per file plus one per
//! directory. The log is the durable copy until a checkpoint has made the files themselves durable.
//!
//! Order of a commit (see [`super`]): the upload record (binlog or journal) is made durable, then the body's
//! record here, then the file is put in place, then the upload is acknowledged. A crash before the record here
//! is durable leaves no file in place (never acknowledged, forgotten at the next start like before).
//!
//! **Checkpoints.** The log is cut in segments (a new one every [`SEGMENT_BYTES`] or [`SEAL_AFTER`]). A sealed
//! segment is checkpointed once it is [`CHECKPOINT_AFTER`] old (by then the kernel's own writeback has usually
//! written its files, so their fsyncs are cheap) or when the sealed segments exceed [`MAX_SEALED_BYTES`]:
//! every file it names is fsynced, then every directory they are in, and only then is the segment deleted.
//!
//! **Recovery** ([`super::Store::recover_data_blocking`], at every start, before the node serves): every record
//! of every segment still here, in order, is compared with the file it names. A file that is missing, or whose
//! size or CRC32 differs from the record's (its name survived a power cut, its data did not), is written again
//! from the record, durably; a record whose file was deleted since (its tombstone hides that incarnation) is
//! skipped. Then the segment is checkpointed and deleted. The contract, with the rest of the store's, is in
//! `docs/RECOVERY.md`.
//!
//! Record format (little endian): magic `FDW1`, body length (u32), ID length (u16), incarnation (u64), mtime in
//! ns since the epoch (u64, `u64::MAX` for none), CRC32 of everything after it (u32), then the ID and the body.
//! A torn or corrupt record ends a segment (only the last one can be torn: records are appended in order and
//! a sync covers all before it).

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::layout::fsync_dir;

/// A new segment is started once the current one holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// ... or once its first record is this old.
pub const SEAL_AFTER: Duration = Duration::from_secs(10);
/// A sealed segment is checkpointed once this old (the kernel writes dirty pages back after 30 s by default).
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(35);
/// Sealed segments beyond this many bytes are checkpointed at once, oldest first.
pub const MAX_SEALED_BYTES: u64 = 256 << 20;

const MAGIC: &[u8; 4] = b"FDW1";
const HEADER: usize = 4 + 4 + 2 + 8 + 8 + 4;
const NO_MTIME: u64 = u64::MAX;

/// One record read back.
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: String,
    pub gen: u64,
    pub mtime: Option<SystemTime>,
    pub body: Vec<u8>,
}

struct Sealed {
    path: PathBuf,
    bytes: u64,
    files: Vec<PathBuf>,
    sealed_at: Instant,
}

struct Tail {
    file: Arc<File>,
    path: PathBuf,
    no: u64,
    len: u64,
    started: Instant,
    files: Vec<PathBuf>,
}

struct Inner {
    tail: Tail,
    /// Records appended so far (tickets).
    written: u64,
    sealed: VecDeque<Sealed>,
    sealed_bytes: u64,
    buf: Vec<u8>,
}

#[derive(Default)]
struct SyncState {
    synced: u64,
    syncing: bool,
}

/// The data log of one store path (see the module doc).
pub(crate) struct DataLog {
    dir: PathBuf,
    /// Segments numbered below this were left by an earlier run: recovery's.
    first_live: u64,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

fn segment_name(no: u64) -> String {
    format!("{no:016x}.wal")
}

/// Segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(no) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        out.push((no, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DataLog {
    /// Open the log in `dir` (created durably when missing) with a fresh segment numbered after any left by an
    /// earlier run (those are for [`super::Store::recover_data_blocking`]).
    pub(crate) fn open(dir: &Path) -> io::Result<DataLog> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            fsync_dir(dir.parent().expect("the log has a parent directory"))?;
        }
        let next = segments(dir)?.last().map_or(0, |(no, _)| no + 1);
        let tail = Self::create_segment(dir, next)?;
        Ok(DataLog {
            dir: dir.to_owned(),
            first_live: next,
            inner: Mutex::new(Inner {
                tail,
                written: 0,
                sealed: VecDeque::new(),
                sealed_bytes: 0,
                buf: Vec::new(),
            }),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            checkpointing: Mutex::new(()),
        })
    }

    fn create_segment(dir: &Path, no: u64) -> io::Result<Tail> {
        let path = dir.join(segment_name(no));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // The segment's name must survive a power cut before any record in it is relied on.
        fsync_dir(dir)?;
        Ok(Tail {
            file: Arc::new(file),
            path,
            no,
            len: 0,
            started: Instant::now(),
            files: Vec::new(),
        })
    }

    /// Append the record of `body` for file `id` (to be placed at `target`) and return once it is durable.
    pub(crate) fn append_durable(
        &self,
        id: &str,
        gen: u64,
        mtime: Option<SystemTime>,
        target: &Path,
        body: &[u8],
    ) -> io::Result<()> {
        let ticket = self.append(id, gen, mtime, target, body)?;
        self.wait_durable(ticket)
    }

    fn append(
        &self,
        id: &str,
        gen: u64,
        mtime: Option<SystemTime>,
        target: &Path,
        body: &[u8],
    ) -> io::Result<u64> {
        let id_len = u16::try_from(id.len()).map_err(|_| io::Error::other("file ID too long"))?;
        let body_len = u32::try_from(body.len()).map_err(|_| io::Error::other("body too large"))?;
        let mtime_ns = mtime
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok())
            .unwrap_or(NO_MTIME);
        let mut inner = lock(&self.inner);
        if inner.tail.len >= SEGMENT_BYTES
            || (inner.tail.len > 0 && inner.tail.started.elapsed() >= SEAL_AFTER)
        {
            self.roll(&mut inner)?;
        }
        let inner = &mut *inner;
        let buf = &mut inner.buf;
        buf.clear();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&body_len.to_le_bytes());
        buf.extend_from_slice(&id_len.to_le_bytes());
        buf.extend_from_slice(&gen.to_le_bytes());
        buf.extend_from_slice(&mtime_ns.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[4..]);
        crc.update(id.as_bytes());
        crc.update(body);
        buf.extend_from_slice(&crc.finalize().to_le_bytes());
        buf.extend_from_slice(id.as_bytes());
        // Header and body in one syscall, without copying the body.
        if let Err(e) = write_all_vectored(
            &inner.tail.file,
            &mut [IoSlice::new(buf), IoSlice::new(body)],
        ) {
            // Cut a partial record so that the next one is not written after garbage.
            let _ = inner.tail.file.set_len(inner.tail.len);
            return Err(e);
        }
        inner.tail.len += (buf.len() + body.len()) as u64;
        inner.tail.files.push(target.to_owned());
        inner.written += 1;
        Ok(inner.written)
    }

    /// Wait until record `ticket` is durable, syncing the tail as the leader when no sync is running.
    fn wait_durable(&self, ticket: u64) -> io::Result<()> {
        let mut st = lock(&self.sync);
        loop {
            if st.synced >= ticket {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            drop(st);
            let (file, upto) = {
                let inner = lock(&self.inner);
                (inner.tail.file.clone(), inner.written)
            };
            let result = file.sync_data();
            st = lock(&self.sync);
            st.syncing = false;
            if result.is_ok() {
                st.synced = st.synced.max(upto);
            }
            self.synced.notify_all();
            result?;
        }
    }

    /// Seal the tail (synced first, so a sync of the new tail covers every record before it) and start a new one.
    fn roll(&self, inner: &mut Inner) -> io::Result<()> {
        inner.tail.file.sync_data()?;
        {
            let mut st = lock(&self.sync);
            st.synced = st.synced.max(inner.written);
        }
        let next = Self::create_segment(&self.dir, inner.tail.no + 1)?;
        let old = std::mem::replace(&mut inner.tail, next);
        inner.sealed_bytes += old.len;
        inner.sealed.push_back(Sealed {
            path: old.path,
            bytes: old.len,
            files: old.files,
            sealed_at: Instant::now(),
        });
        Ok(())
    }

    /// Checkpoint what is due (see the module doc); with `all`, the tail too (at shutdown). Returns the number of
    /// segments removed.
    pub(crate) fn checkpoint(&self, all: bool) -> io::Result<usize> {
        let _one = lock(&self.checkpointing);
        {
            let mut inner = lock(&self.inner);
            let idle = inner.tail.len > 0 && inner.tail.started.elapsed() >= SEAL_AFTER;
            if idle || (all && inner.tail.len > 0) {
                self.roll(&mut inner)?;
            }
        }
        let mut done = 0;
        loop {
            let due = {
                let mut inner = lock(&self.inner);
                let due = inner.sealed.front().is_some_and(|s| {
                    all || inner.sealed_bytes > MAX_SEALED_BYTES
                        || s.sealed_at.elapsed() >= CHECKPOINT_AFTER
                });
                if !due {
                    return Ok(done);
                }
                let s = inner.sealed.pop_front().expect("checked");
                inner.sealed_bytes -= s.bytes;
                s
            };
            if let Err(e) = sync_files(&due.files).and_then(|()| fs::remove_file(&due.path)) {
                // Keep it for the next try (and for recovery, should the node stop first).
                let mut inner = lock(&self.inner);
                inner.sealed_bytes += due.bytes;
                inner.sealed.push_front(due);
                return Err(e);
            }
            done += 1;
        }
    }

    /// Segments left by an earlier run (oldest first), for recovery.
    pub(crate) fn old_segments(&self) -> io::Result<Vec<PathBuf>> {
        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|(no, _)| *no < self.first_live)
            .map(|(_, p)| p)
            .collect())
    }

    /// Bytes of the log not checkpointed yet.
    pub(crate) fn pending_bytes(&self) -> u64 {
        let inner = lock(&self.inner);
        inner.sealed_bytes + inner.tail.len
    }
}

/// `write_all` over several buffers (`Write::write_all_vectored` is not stable yet).
fn write_all_vectored(mut file: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fsync every file (one deleted since is skipped), then every directory they are in.
pub(crate) fn sync_files(files: &[PathBuf]) -> io::Result<()> {
    let mut dirs = BTreeSet::new();
    for f in files {
        match File::open(f) {
            Ok(file) => file.sync_data()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(d) = f.parent() {
            dirs.insert(d);
        }
    }
    for d in dirs {
        match fsync_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Read the records of one segment, in order, until its end or a torn or corrupt record.
pub(crate) fn read_segment(
    path: &Path,
    mut each: impl FnMut(Entry) -> io::Result<()>,
) -> io::Result<()> {
    let mut r = BufReader::with_capacity(256 << 10, File::open(path)?);
    loop {
        let mut h = [0u8; HEADER];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        if &h[..4] != MAGIC {
            tracing::warn!(segment = %path.display(), "data log: bad record header, rest of segment ignored");
            return Ok(());
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let body_len = u32_at(4) as usize;
        let id_len = usize::from(u16::from_le_bytes([h[8], h[9]]));
        let gen = u64_at(10);
        let mtime_ns = u64_at(18);
        let crc = u32_at(26);
        if body_len > 64 << 20 {
            tracing::warn!(segment = %path.display(), "data log: implausible record, rest of segment ignored");
            return Ok(());
        }
        let mut rest = vec![0u8; id_len + body_len];
        match r.read_exact(&mut rest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&h[4..26]);
        c.update(&rest);
        if c.finalize() != crc {
            tracing::warn!(segment = %path.display(), "data log: torn record, rest of segment ignored");
            return Ok(());
        }
        let body = rest.split_off(id_len);
        let Ok(id) = String::from_utf8(rest) else {
            return Ok(());
        };
        let mtime = (mtime_ns != NO_MTIME).then(|| UNIX_EPOCH + Duration::from_nanos(mtime_ns));
        each(Entry {
            id,
            gen,
            mtime,
            body,
        })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path) -> Vec<Entry> {
        let mut out = Vec::new();
        read_segment(path, |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn records_read_back_and_a_torn_tail_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let log = DataLog::open(&wal).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        log.append_durable("g1/M00/00/00/a", 0, Some(t), Path::new("/x/a"), b"hello")
            .unwrap();
        log.append_durable("g1/M00/00/00/b", 3, None, Path::new("/x/b"), b"")
            .unwrap();
        let segs = segments(&wal).unwrap();
        assert_eq!(segs.len(), 1);
        let got = read_all(&segs[0].1);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].id.as_str(),
                got[0].gen,
                got[0].mtime,
                &got[0].body[..]
            ),
            ("g1/M00/00/00/a", 0, Some(t), &b"hello"[..])
        );
        assert_eq!((got[1].gen, got[1].mtime, got[1].body.len()), (3, None, 0));

        // A torn last record (a crash mid-append) is ignored, the ones before it are kept.
        let len = fs::metadata(&segs[0].1).unwrap().len();
        let f = OpenOptions::new().write(true).open(&segs[0].1).unwrap();
        f.set_len(len - 2).unwrap();
        assert_eq!(read_all(&segs[0].1).len(), 1);
        // A flipped byte in a body too.
        f.set_len(len).unwrap();
        let mut bytes = fs::read(&segs[0].1).unwrap();
        bytes[HEADER + "g1/M00/00/00/a".len()] ^= 1;
        fs::write(&segs[0].1, bytes).unwrap();
        assert_eq!(read_all(&segs[0].1).len(), 0);
    }

    #[test]
    fn concurrent_appends_share_syncs_and_a_checkpoint_removes_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let files = dir.path().join("files");
        fs::create_dir(&files).unwrap();
        let log = Arc::new(DataLog::open(&wal).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (log, files) = (log.clone(), files.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let target = files.join(format!("{t}-{i}"));
                        fs::write(&target, b"x").unwrap();
                        log.append_durable(
                            &format!("g1/M00/00/00/{t}-{i}"),
                            0,
                            None,
                            &target,
                            b"x",
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(log.pending_bytes() > 0);
        // Nothing is due yet: the segment is young.
        assert_eq!(log.checkpoint(false).unwrap(), 0);
        assert_eq!(segments(&wal).unwrap().len(), 1);
        // At shutdown everything is: the tail is sealed, its files synced, the segment removed.
        assert_eq!(log.checkpoint(true).unwrap(), 1);
        assert_eq!(log.pending_bytes(), 0);
        // Only the new, empty tail is left.
        let left: Vec<u64> = segments(&wal)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, vec![1]);
        // A reopened log starts after the last segment it finds, which it leaves to recovery.
        drop(log);
        let log = DataLog::open(&wal).unwrap();
        assert_eq!(lock(&log.inner).tail.no, 2);
        assert_eq!(log.old_segments().unwrap(), vec![wal.join(segment_name(1))]);
    }
}
