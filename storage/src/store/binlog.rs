//! The node's own binlog: an append-only, segmented, checksummed log of the operations this node accepted from
//! clients (uploads, deletes, metadata changes; never the ones it received from peers). Sync workers
//! ([`crate::sync`]) read it to push each operation to every peer in order.
//!
//! On disk (`<store path 0>/.fdfs/binlog/`): segment files named `<first sequence number, 20 digits>.log`. Each
//! record is framed as `len: u32 LE | crc32(payload): u32 LE | payload`, the payload being
//! `seq: u64 LE | unix ts: u64 LE | op: u8 | file id (UTF-8)`. Sequence numbers start at 1 and grow by one per
//! record across segments. An append is durable before it returns (so before the client's request is
//! acknowledged). A torn or corrupt tail (a crash in the middle of a write) is detected on open and truncated.
//!
//! Group commit: appends write their frame under a short lock (page cache only), then wait until a sync covers
//! their sequence number. The first waiter to find no sync running becomes the leader: it fsyncs the segment once
//! for every record written so far, outside the lock, while later appends keep writing; the followers it covers
//! return without an fsync of their own. No lock is held across an fsync (except when rolling to a new segment,
//! once per `segment_bytes`, where the old segment is synced before the new one takes records).
//!
//! Two-phase records: [`Binlog::begin`] makes a record durable but keeps it *in flight* until
//! [`Binlog::finish`]; readers see only records up to [`Binlog::applied`] (every record at or before it is
//! durable and finished), so a sync worker never pushes an upload whose file is not in place yet. The store uses
//! the same watermark as the checkpoint of its index (see [`crate::store`]).
//! A new segment starts once the current one reaches `segment_bytes`; whole segments are removed by
//! [`Binlog::prune`] once every peer acknowledged all their records, so the binlog stays bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use fdfs_common::FileId;

use super::layout::fsync_dir;
use crate::error::{Result, StorageError};

/// Bytes of the frame header (length + CRC32).
const HEADER: usize = 8;
/// Fixed part of a payload: seq + ts + op.
const FIXED: usize = 17;
/// Largest payload accepted when reading (a file id is far shorter); anything larger is corruption.
const MAX_PAYLOAD: usize = 4096;
/// Default segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A file was stored (with its initial metadata).
    Upload,
    /// A file was deleted.
    Delete,
    /// A file's metadata changed (the record carries no metadata: the current one is pushed).
    Meta,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Upload => 1,
            Op::Delete => 2,
            Op::Meta => 3,
        }
    }

    fn from_code(c: u8) -> Option<Op> {
        match c {
            1 => Some(Op::Upload),
            2 => Some(Op::Delete),
            3 => Some(Op::Meta),
            _ => None,
        }
    }
}

/// One binlog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the log, from 1, increasing by one per record.
    pub seq: u64,
    /// Unix seconds of the operation (never decreasing along the log).
    pub ts: u64,
    /// What happened to the file.
    pub op: Op,
    /// The file it happened to.
    pub file_id: FileId,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let id = self.file_id.to_string();
        let mut payload = Vec::with_capacity(FIXED + id.len());
        payload.extend_from_slice(&self.seq.to_le_bytes());
        payload.extend_from_slice(&self.ts.to_le_bytes());
        payload.push(self.op.code());
        payload.extend_from_slice(id.as_bytes());
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        if payload.len() <= FIXED {
            return None;
        }
        let seq = u64::from_le_bytes(payload[0..8].try_into().ok()?);
        let ts = u64::from_le_bytes(payload[8..16].try_into().ok()?);
        let op = Op::from_code(payload[16])?;
        let file_id = std::str::from_utf8(&payload[FIXED..]).ok()?.parse().ok()?;
        Some(Record {
            seq,
            ts,
            op,
            file_id,
        })
    }
}

/// Read one frame at the reader's position. `Ok(None)` at a clean end, a torn frame, or a corrupt one: the caller
/// cannot tell those apart and must not read past it.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(Record, u64)>> {
    let mut header = [0u8; HEADER];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len <= FIXED || len > MAX_PAYLOAD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if !read_full(r, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Record::decode(&payload).map(|rec| (rec, (HEADER + len) as u64)))
}

/// Fill `buf`; false when the input ended first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// The segment being appended to.
struct Tail {
    file: Arc<File>,
    first_seq: u64,
    /// Bytes of valid records in it.
    len: u64,
}

struct Inner {
    tail: Tail,
    /// First sequence number of every segment (the tail's included) -> its path.
    segments: BTreeMap<u64, PathBuf>,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Timestamp of the last record (timestamps never go backwards).
    last_ts: u64,
    /// Records written but not finished ([`Binlog::begin`] without [`Binlog::finish`] yet).
    in_flight: BTreeSet<u64>,
}

/// Group commit state: the last record known durable and whether a leader is syncing now.
#[derive(Default)]
struct SyncState {
    synced: u64,
    syncing: bool,
}

/// The append-only binlog. Methods block (file I/O, fsync): call them from blocking code.
pub struct Binlog {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
}

/// Where the readable part of the log ends right now.
#[derive(Debug, Clone, Copy)]
struct Committed {
    tail_first_seq: u64,
    tail_len: u64,
    /// Records after this one are not visible yet (in flight, or behind one that is).
    visible: u64,
}

impl Binlog {
    /// Open the binlog in `dir` (created as needed), truncating a torn or corrupt tail of the last segment.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Binlog> {
        fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.insert(first, entry.path());
        }
        let (next_seq, last_ts, tail) = match segments.last_key_value() {
            None => {
                let path = dir.join(segment_name(1));
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(&path)?;
                fsync_dir(dir)?;
                segments.insert(1, path);
                let tail = Tail {
                    file: Arc::new(file),
                    first_seq: 1,
                    len: 0,
                };
                (1, 0, tail)
            }
            Some((&first, path)) => {
                let mut reader = BufReader::new(File::open(path)?);
                let (mut expect, mut len, mut last_ts) = (first, 0u64, 0u64);
                while let Some((rec, n)) = read_frame(&mut reader)? {
                    if rec.seq != expect {
                        break;
                    }
                    expect += 1;
                    len += n;
                    last_ts = rec.ts;
                }
                let file = OpenOptions::new().append(true).read(true).open(path)?;
                let actual = file.metadata()?.len();
                if actual != len {
                    tracing::warn!(
                        segment = %path.display(),
                        valid = len,
                        found = actual,
                        "binlog: truncating a torn or corrupt tail"
                    );
                    file.set_len(len)?;
                    file.sync_all()?;
                }
                if last_ts == 0 && first > 1 {
                    // An empty tail segment after older ones: take the time from the previous segment's end.
                    last_ts = Self::last_ts_of(&segments, first)?;
                }
                let tail = Tail {
                    file: Arc::new(file),
                    first_seq: first,
                    len,
                };
                (expect, last_ts, tail)
            }
        };
        Ok(Binlog {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(1),
            inner: Mutex::new(Inner {
                tail,
                segments,
                next_seq,
                last_ts,
                in_flight: BTreeSet::new(),
            }),
            sync: Mutex::new(SyncState {
                synced: next_seq - 1,
                syncing: false,
            }),
            synced: Condvar::new(),
        })
    }

    fn last_ts_of(segments: &BTreeMap<u64, PathBuf>, before: u64) -> Result<u64> {
        let Some((_, path)) = segments.range(..before).next_back() else {
            return Ok(0);
        };
        let mut reader = BufReader::new(File::open(path)?);
        let mut ts = 0;
        while let Some((rec, _)) = read_frame(&mut reader)? {
            ts = rec.ts;
        }
        Ok(ts)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a record and return once it is durable (group commit). Returns the record as written.
    pub fn append(&self, op: Op, file_id: &FileId) -> Result<Record> {
        let rec = self.begin(op, file_id)?;
        self.finish(rec.seq);
        Ok(rec)
    }

    /// Append a record and return once it is durable, keeping it in flight (invisible to readers, holding back
    /// [`Binlog::applied`]) until [`Binlog::finish`] is called with its sequence number, whatever happens next.
    pub fn begin(&self, op: Op, file_id: &FileId) -> Result<Record> {
        let rec = {
            let mut inner = self.lock();
            if inner.tail.len >= self.segment_bytes {
                self.roll(&mut inner)?;
            }
            let now = fdfs_common::time::unix_now();
            let rec = Record {
                seq: inner.next_seq,
                ts: now.max(inner.last_ts),
                op,
                file_id: file_id.clone(),
            };
            let frame = rec.encode();
            if let Err(e) = (&*inner.tail.file).write_all(&frame) {
                // Leave no partial frame behind: the next append would land after garbage.
                let len = inner.tail.len;
                let _ = inner.tail.file.set_len(len);
                return Err(e.into());
            }
            inner.tail.len += frame.len() as u64;
            inner.next_seq += 1;
            inner.last_ts = rec.ts;
            inner.in_flight.insert(rec.seq);
            rec
        };
        if let Err(e) = self.wait_durable(rec.seq) {
            self.finish(rec.seq);
            return Err(e);
        }
        Ok(rec)
    }

    /// End a record started with [`Binlog::begin`]. Returns the new [`Binlog::applied`] watermark.
    pub fn finish(&self, seq: u64) -> u64 {
        let mut inner = self.lock();
        inner.in_flight.remove(&seq);
        Self::watermark(&inner)
    }

    fn watermark(inner: &Inner) -> u64 {
        inner
            .in_flight
            .first()
            .map_or(inner.next_seq - 1, |first| first - 1)
    }

    /// Every record at or before this one is durable and finished (0 when none).
    pub fn applied(&self) -> u64 {
        Self::watermark(&self.lock())
    }

    /// Wait until record `seq` is durable, syncing the segment as the leader when no sync is running.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut st = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.synced >= seq {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            drop(st);
            // Everything written so far goes into this sync; appends continue meanwhile.
            let (file, upto) = {
                let inner = self.lock();
                (inner.tail.file.clone(), inner.next_seq - 1)
            };
            let result = file.sync_data();
            st = self.sync.lock().unwrap_or_else(|p| p.into_inner());
            st.syncing = false;
            if result.is_ok() {
                st.synced = st.synced.max(upto);
            }
            self.synced.notify_all();
            result?;
        }
    }

    /// Start a new segment. The old one is synced first, so a sync of the new tail covers every record before
    /// it.
    fn roll(&self, inner: &mut Inner) -> Result<()> {
        inner.tail.file.sync_data()?;
        {
            let mut st = self.sync.lock().unwrap_or_else(|p| p.into_inner());
            st.synced = st.synced.max(inner.next_seq - 1);
        }
        let first = inner.next_seq;
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        fsync_dir(&self.dir)?;
        inner.segments.insert(first, path);
        inner.tail = Tail {
            file: Arc::new(file),
            first_seq: first,
            len: 0,
        };
        Ok(())
    }

    /// Sequence number of the newest record (0 when the log is empty).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Sequence number of the oldest record still on disk (`last_seq + 1` when none).
    pub fn first_seq(&self) -> u64 {
        let inner = self.lock();
        inner
            .segments
            .first_key_value()
            .map_or(inner.next_seq, |(k, _)| *k)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }

    fn committed(&self) -> Committed {
        let inner = self.lock();
        Committed {
            tail_first_seq: inner.tail.first_seq,
            tail_len: inner.tail.len,
            visible: Self::watermark(&inner),
        }
    }

    /// Remove every segment all of whose records are at or before `acked` (the smallest position acknowledged by
    /// all peers). The segment being appended to is never removed. Returns how many were removed.
    pub fn prune(&self, acked: u64) -> Result<usize> {
        let mut inner = self.lock();
        let firsts: Vec<u64> = inner.segments.keys().copied().collect();
        let mut removed = 0;
        for pair in firsts.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            // Records of this segment are first..next_first-1.
            if next_first - 1 > acked {
                break;
            }
            if let Some(path) = inner.segments.remove(&first) {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        inner.segments.insert(first, path);
                        return Err(e.into());
                    }
                }
            }
        }
        if removed > 0 {
            fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// A reader positioned after record `after` (0 = from the oldest record on disk).
    pub fn reader(self: &Arc<Self>, after: u64) -> Reader {
        Reader {
            log: self.clone(),
            after,
            open: None,
        }
    }
}

/// Reads records in order; keeps its segment open between calls so that following the log is cheap.
pub struct Reader {
    log: Arc<Binlog>,
    /// Last sequence number returned (or skipped to).
    after: u64,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    first_seq: u64,
    reader: BufReader<File>,
    offset: u64,
}

impl Reader {
    /// Sequence number of the last record returned.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Up to `max` records after the current position; empty when caught up. If records after the position
    /// were pruned already, reading resumes at the oldest record on disk.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        while out.len() < max {
            let committed = self.log.committed();
            if self.open.is_none() && !self.open_segment()? {
                break;
            }
            let seg = self.open.as_mut().expect("opened above");
            let limit = if seg.first_seq == committed.tail_first_seq {
                Some(committed.tail_len)
            } else {
                None
            };
            if limit.is_some_and(|l| seg.offset >= l) {
                break; // caught up with the tail
            }
            match read_frame(&mut seg.reader)? {
                Some((rec, _)) if rec.seq > committed.visible && rec.seq > self.after => {
                    // Durable but not finished (or behind one that is not): read it again later.
                    let (first, offset) = (seg.first_seq, seg.offset);
                    self.reopen(first, offset)?;
                    break;
                }
                Some((rec, n)) => {
                    seg.offset += n;
                    if rec.seq <= self.after {
                        continue;
                    }
                    if rec.seq != self.after + 1 && self.after != 0 {
                        tracing::warn!(
                            expected = self.after + 1,
                            found = rec.seq,
                            "binlog: records missing (pruned); resuming at the oldest on disk"
                        );
                    }
                    self.after = rec.seq;
                    out.push(rec);
                }
                None => {
                    if limit.is_some() {
                        // The tail is only read up to what was committed; a short read here is a racing append
                        // that the committed length did not cover yet. Re-open at the same offset next time.
                        let offset = seg.offset;
                        let first = seg.first_seq;
                        self.reopen(first, offset)?;
                        break;
                    }
                    // End of a finished segment: go to the next one.
                    if !self.advance_segment()? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn reopen(&mut self, first: u64, offset: u64) -> Result<()> {
        let path = self.log.dir.join(segment_name(first));
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        self.open = Some(OpenSegment {
            first_seq: first,
            reader: BufReader::new(file),
            offset,
        });
        Ok(())
    }

    /// Open the segment holding record `after + 1` (or the oldest one if that was pruned). False when none.
    fn open_segment(&mut self) -> Result<bool> {
        let want = self.after + 1;
        let first = {
            let inner = self.log.lock();
            inner
                .segments
                .range(..=want)
                .next_back()
                .or_else(|| inner.segments.first_key_value())
                .map(|(k, _)| *k)
        };
        let Some(first) = first else {
            return Ok(false);
        };
        match self.reopen(first, 0) {
            Ok(()) => Ok(true),
            Err(StorageError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// After the end of a finished segment: open the next one. False when there is none.
    fn advance_segment(&mut self) -> Result<bool> {
        let current = self.open.take().map_or(0, |s| s.first_seq);
        let next = {
            let inner = self.log.lock();
            inner.segments.range(current + 1..).next().map(|(k, _)| *k)
        };
        let Some(first) = next else {
            return Ok(false);
        };
        self.reopen(first, 0)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic id per `n` (generated names carry random bits, so they are made once and kept).
    fn id(n: u32) -> FileId {
        use std::collections::HashMap;
        use std::sync::OnceLock;
        static IDS: OnceLock<Mutex<HashMap<u32, FileId>>> = OnceLock::new();
        let ids = IDS.get_or_init(Default::default);
        ids.lock()
            .unwrap()
            .entry(n)
            .or_insert_with(|| make_id(n))
            .clone()
    }

    fn make_id(n: u32) -> FileId {
        let info = fdfs_common::NameInfo {
            source_id: 1,
            created: 1_700_000_000 + n,
            size: u64::from(n),
            crc32: n,
        };
        FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: 1,
            dir2: 2,
            name: fdfs_common::FileName::generate(&info, Some("txt")).unwrap(),
        }
    }

    fn read_all(log: &Arc<Binlog>, after: u64) -> Vec<Record> {
        let mut r = log.reader(after);
        let mut out = Vec::new();
        loop {
            let b = r.next_batch(7).unwrap();
            if b.is_empty() {
                return out;
            }
            out.extend(b);
        }
    }

    #[test]
    fn append_read_back_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Binlog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap());
        assert_eq!(log.last_seq(), 0);
        assert!(read_all(&log, 0).is_empty());
        let ops = [Op::Upload, Op::Meta, Op::Delete];
        for n in 0..30u32 {
            let r = log.append(ops[n as usize % 3], &id(n)).unwrap();
            assert_eq!(r.seq, u64::from(n) + 1);
        }
        let all = read_all(&log, 0);
        assert_eq!(all.len(), 30);
        assert!(all.iter().zip(0u32..).all(|(r, n)| r.file_id == id(n)
            && r.op == ops[n as usize % 3]
            && r.seq == u64::from(n) + 1));
        assert!(all.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(read_all(&log, 25).len(), 5);

        // A reader following the log sees later appends.
        let mut follower = log.reader(30);
        assert!(follower.next_batch(10).unwrap().is_empty());
        log.append(Op::Upload, &id(99)).unwrap();
        let b = follower.next_batch(10).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].seq, 31);
        drop(follower);
        drop(log);

        let log = Arc::new(Binlog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap());
        assert_eq!(log.last_seq(), 31);
        assert_eq!(log.append(Op::Delete, &id(100)).unwrap().seq, 32);
        assert_eq!(read_all(&log, 0).len(), 32);
    }

    #[test]
    fn concurrent_appends_share_syncs_and_in_flight_records_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Binlog::open(dir.path(), 600).unwrap());
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..25 {
                        log.append(Op::Upload, &id(t * 100 + i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(log.last_seq(), 200);
        assert_eq!(log.applied(), 200);
        let all = read_all(&log, 0);
        assert_eq!(all.len(), 200);
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert!(log.segment_count() > 1, "rolled while appending");

        // A begun record is durable but hidden (and hides those after it) until finished.
        let a = log.begin(Op::Upload, &id(1)).unwrap();
        let b = log.append(Op::Delete, &id(2)).unwrap();
        assert_eq!(log.applied(), 200);
        assert!(read_all(&log, 200).is_empty());
        let mut reader = log.reader(200);
        assert!(reader.next_batch(10).unwrap().is_empty());
        assert_eq!(log.finish(a.seq), b.seq);
        let seqs: Vec<u64> = reader
            .next_batch(10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [a.seq, b.seq]);
        drop(reader);
        // Both are on disk after a reopen.
        drop(log);
        let log = Arc::new(Binlog::open(dir.path(), 600).unwrap());
        assert_eq!(log.last_seq(), 202);
    }

    #[test]
    fn torn_and_corrupt_tails_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Arc::new(Binlog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap());
            for n in 0..5 {
                log.append(Op::Upload, &id(n)).unwrap();
            }
        }
        let seg = dir.path().join(segment_name(1));
        let good = fs::metadata(&seg).unwrap().len();
        // A torn write: half a frame.
        let frame = Record {
            seq: 6,
            ts: 1,
            op: Op::Upload,
            file_id: id(5),
        }
        .encode();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        drop(f);
        {
            let log = Arc::new(Binlog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap());
            assert_eq!(log.last_seq(), 5);
            assert_eq!(fs::metadata(&seg).unwrap().len(), good);
            assert_eq!(log.append(Op::Delete, &id(6)).unwrap().seq, 6);
            assert_eq!(read_all(&log, 0).len(), 6);
        }
        // A flipped bit in the last record: that record is dropped.
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();
        let log = Arc::new(Binlog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap());
        assert_eq!(log.last_seq(), 5);
        assert_eq!(fs::metadata(&seg).unwrap().len(), good);
        let all = read_all(&log, 0);
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].file_id, id(4));
    }

    #[test]
    fn segments_roll_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        // ~85-byte records, 300-byte segments: a new segment every 4 records.
        let log = Arc::new(Binlog::open(dir.path(), 300).unwrap());
        for n in 0..20 {
            log.append(Op::Upload, &id(n)).unwrap();
        }
        let segs = log.segment_count();
        assert!(segs >= 4, "{segs} segments");
        // Reading crosses segments, from anywhere.
        assert_eq!(read_all(&log, 0).len(), 20);
        assert_eq!(read_all(&log, 9).len(), 11);
        assert_eq!(read_all(&log, 9)[0].seq, 10);
        // Nothing acknowledged: nothing pruned.
        assert_eq!(log.prune(0).unwrap(), 0);
        // Acked up to 9: only segments whose records are all <= 9 go.
        let removed = log.prune(9).unwrap();
        assert!(removed >= 1);
        assert!(log.first_seq() <= 10);
        assert_eq!(read_all(&log, 9).len(), 11);
        // A reader behind the pruned part resumes at the oldest record on disk.
        let from_start = read_all(&log, 0);
        assert_eq!(from_start[0].seq, log.first_seq());
        // Everything acked: all but the tail segment go; reopen keeps numbering.
        log.prune(20).unwrap();
        assert_eq!(log.segment_count(), 1);
        drop(log);
        let log = Arc::new(Binlog::open(dir.path(), 300).unwrap());
        assert_eq!(log.last_seq(), 20);
        assert_eq!(log.append(Op::Delete, &id(1)).unwrap().seq, 21);
        assert_eq!(read_all(&log, 20).len(), 1);
        fs::read_dir(dir.path()).unwrap().for_each(|e| {
            let name = e.unwrap().file_name();
            assert!(name.to_str().unwrap().ends_with(".log"));
        });
    }
}
