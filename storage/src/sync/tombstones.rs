//! Tombstones: which incarnations of which file IDs were deleted in this group, kept on disk so that a later
//! catch-up (ours or a peer's) never brings a deleted file back, and a re-upload under the same ID is never
//! taken for the deleted file.
//!
//! Master IDs are never reused, but slave IDs are (master name + prefix): upload `M_t`, delete it, upload `M_t`
//! again. So every ID has an incarnation number (`gen`): 0 for its first upload; an upload over a tombstone of
//! incarnation `g` is incarnation `g + 1`. A tombstone `(id, g)` deletes every incarnation up to `g` and none
//! after. Incarnations travel with the file ([`INCARNATION_HEADER`] on replica pushes, fetches and deletes, `gen`
//! in listings), so every member agrees on which copy a tombstone deletes. Only IDs that were ever deleted carry
//! state here; every other file is incarnation 0.
//!
//! On disk: `<store path 0>/.fdfs/tombstones.log`, one entry per line, appended and fsynced: `ID` (incarnation 0
//! deleted; the format before incarnations), `ID@g` (incarnation `g` deleted) or `+ID@g` (incarnation `g` is
//! the live one here). Replaying the lines in order keeps, per ID, the highest incarnation seen. A torn last
//! line (a crash mid-append) is cut on open. In memory: an ordered map, for lookups and for the paged listing
//! peers catch up from.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use fdfs_common::FileId;

use crate::error::Result;

/// Header carrying a file's incarnation on replica requests (absent: incarnation 0, or "whatever is here" on
/// a delete from an older node).
pub const INCARNATION_HEADER: &str = "x-fdfs-incarnation";

/// What is known of one ID: its highest incarnation and whether that one was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    gen: u64,
    deleted: bool,
}

impl State {
    /// Merge an entry: a higher incarnation wins; at the same incarnation a delete wins.
    fn merge(cur: Option<State>, next: State) -> Option<State> {
        match cur {
            Some(c) if c.gen > next.gen || (c.gen == next.gen && (c.deleted || !next.deleted)) => {
                None
            }
            _ => Some(next),
        }
    }
}

/// `ID@g` as listed to peers.
pub fn entry(id: &str, gen: u64) -> String {
    format!("{id}@{gen}")
}

/// Parse a listed tombstone: `ID@g`, or a bare `ID` (incarnation 0).
pub fn parse_entry(s: &str) -> Option<(FileId, u64)> {
    match s.rsplit_once('@') {
        Some((id, gen)) => Some((id.parse().ok()?, gen.parse().ok()?)),
        None => Some((s.parse().ok()?, 0)),
    }
}

/// Parse one log line.
fn parse_line(line: &str) -> Option<(String, State)> {
    let (live, rest) = match line.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, line),
    };
    let (id, gen) = parse_entry(rest)?;
    Some((
        id.to_string(),
        State {
            gen,
            deleted: !live,
        },
    ))
}

struct Inner {
    file: File,
    ids: BTreeMap<String, State>,
}

/// The deleted incarnations. Methods that write block (fsync).
pub struct Tombstones {
    inner: Mutex<Inner>,
}

impl Tombstones {
    /// Open (creating) the tombstone log at `path`.
    pub fn open(path: &Path) -> Result<Tombstones> {
        let mut ids: BTreeMap<String, State> = BTreeMap::new();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&bytes[..complete]).lines() {
            if let Some((id, st)) = parse_line(line) {
                if let Some(s) = State::merge(ids.get(&id).copied(), st) {
                    ids.insert(id, s);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if complete != bytes.len() {
            tracing::warn!(path = %path.display(), "tombstones: cutting a torn last line");
            file.set_len(complete as u64)?;
            file.sync_all()?;
        }
        Ok(Tombstones {
            inner: Mutex::new(Inner { file, ids }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Durably merge an entry; false when it changes nothing.
    fn record(&self, id: &FileId, st: State) -> Result<bool> {
        let s = id.to_string();
        let mut inner = self.lock();
        let Some(next) = State::merge(inner.ids.get(&s).copied(), st) else {
            return Ok(false);
        };
        let line = if st.deleted {
            format!("{}\n", entry(&s, st.gen))
        } else {
            format!("+{}\n", entry(&s, st.gen))
        };
        inner.file.write_all(line.as_bytes())?;
        inner.file.sync_data()?;
        inner.ids.insert(s, next);
        Ok(true)
    }

    /// Record durably that incarnations up to `gen` of `id` were deleted (a no-op when already known).
    pub fn add(&self, id: &FileId, gen: u64) -> Result<()> {
        self.record(id, State { gen, deleted: true }).map(|_| ())
    }

    /// Record durably that the copy here is incarnation `gen` (a no-op for 0 or an older one).
    pub fn set_live(&self, id: &FileId, gen: u64) -> Result<()> {
        if gen == 0 {
            return Ok(());
        }
        self.record(
            id,
            State {
                gen,
                deleted: false,
            },
        )
        .map(|_| ())
    }

    /// A new upload under `id` on this node: past a tombstone it is the next incarnation (recorded durably).
    /// Returns the upload's incarnation.
    pub fn revive(&self, id: &FileId) -> Result<u64> {
        match self.state(id) {
            Some(State { gen, deleted: true }) => {
                self.set_live(id, gen + 1)?;
                Ok(gen + 1)
            }
            Some(State { gen, .. }) => Ok(gen),
            None => Ok(0),
        }
    }

    fn state(&self, id: &FileId) -> Option<State> {
        self.lock().ids.get(&id.to_string()).copied()
    }

    /// Incarnation of the copy of `id` this node holds (or would hold).
    pub fn incarnation(&self, id: &FileId) -> u64 {
        self.state(id).map_or(0, |s| s.gen)
    }

    /// Whether incarnation `gen` of `id` was deleted.
    pub fn hides(&self, id: &FileId, gen: u64) -> bool {
        self.state(id)
            .is_some_and(|s| gen < s.gen || (gen == s.gen && s.deleted))
    }

    /// Whether the latest known incarnation of `id` was deleted (a copy here must not be served).
    pub fn is_deleted(&self, id: &FileId) -> bool {
        self.state(id).is_some_and(|s| s.deleted)
    }

    /// The highest deleted incarnation of `id`, if any was.
    pub fn last_deleted(&self, id: &FileId) -> Option<u64> {
        self.state(id).and_then(last_deleted)
    }

    /// Number of IDs with a tombstone.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tombstones (as [`entry`] strings: ID and highest deleted incarnation) with `after < id <= upto`
    /// (`upto = None`: no upper bound), in ID order, at most `limit`.
    pub fn range(&self, after: &str, upto: Option<&str>, limit: usize) -> Vec<String> {
        let inner = self.lock();
        let hi = upto.map_or(Bound::Unbounded, |u| Bound::Included(u.to_owned()));
        inner
            .ids
            .range((Bound::Excluded(after.to_owned()), hi))
            .filter_map(|(id, s)| last_deleted(*s).map(|g| entry(id, g)))
            .take(limit)
            .collect()
    }
}

fn last_deleted(s: State) -> Option<u64> {
    if s.deleted {
        Some(s.gen)
    } else {
        s.gen.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> FileId {
        let info = fdfs_common::NameInfo {
            source_id: 1,
            created: 1_700_000_000,
            size: u64::from(n),
            crc32: u32::from(n),
        };
        FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: n,
            dir2: 0,
            name: fdfs_common::FileName::generate(&info, None).unwrap(),
        }
    }

    #[test]
    fn durable_ordered_and_torn_lines_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tombstones.log");
        let ids: Vec<FileId> = (0..5).map(id).collect();
        {
            let t = Tombstones::open(&path).unwrap();
            assert!(t.is_empty());
            for i in &ids {
                t.add(i, 0).unwrap();
            }
            t.add(&ids[0], 0).unwrap(); // idempotent
            assert_eq!(t.len(), 5);
        }
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"g1/M00/07/00/half").unwrap();
        drop(f);
        let t = Tombstones::open(&path).unwrap();
        assert_eq!(t.len(), 5);
        assert!(ids.iter().all(|i| t.is_deleted(i) && t.hides(i, 0)));
        let extra = id(9);
        assert!(!t.is_deleted(&extra));
        t.add(&extra, 0).unwrap();
        drop(t);
        let t = Tombstones::open(&path).unwrap();
        assert_eq!(t.len(), 6);
        assert!(
            t.is_deleted(&extra),
            "the append after a torn line is intact"
        );

        // Ranges follow ID order.
        let mut sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        sorted.push(extra.to_string());
        sorted.sort();
        let listed: Vec<String> = sorted.iter().map(|s| entry(s, 0)).collect();
        assert_eq!(t.range("", None, 100), listed);
        assert_eq!(
            t.range(&sorted[1], Some(&sorted[3]), 100),
            listed[2..=3].to_vec()
        );
        assert_eq!(t.range("", None, 2), listed[..2].to_vec());
    }

    #[test]
    fn a_reupload_is_a_new_incarnation_that_old_tombstones_do_not_hide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tombstones.log");
        let x = id(1);
        {
            let t = Tombstones::open(&path).unwrap();
            assert_eq!(t.revive(&x).unwrap(), 0, "a first upload is incarnation 0");
            t.add(&x, 0).unwrap();
            assert!(t.is_deleted(&x) && t.hides(&x, 0));
            assert_eq!(t.revive(&x).unwrap(), 1);
            assert!(!t.is_deleted(&x) && !t.hides(&x, 1) && t.hides(&x, 0));
            assert_eq!(t.incarnation(&x), 1);
            assert_eq!(t.last_deleted(&x), Some(0));
            // A late delete of incarnation 0 changes nothing.
            t.add(&x, 0).unwrap();
            assert!(!t.is_deleted(&x));
            assert_eq!(t.range("", None, 10), vec![entry(&x.to_string(), 0)]);
        }
        let t = Tombstones::open(&path).unwrap();
        assert!(!t.is_deleted(&x) && t.hides(&x, 0) && !t.hides(&x, 1));
        t.add(&x, 1).unwrap();
        assert!(t.is_deleted(&x) && t.hides(&x, 1) && !t.hides(&x, 2));
        assert_eq!(parse_entry(&entry(&x.to_string(), 7)), Some((x.clone(), 7)));
        assert_eq!(parse_entry(&x.to_string()), Some((x, 0)));
    }
}
