//! The durability model of a mounted [`Disk`](super::Disk): every file, directory and symlink the filesystem
//! has seen is a node with its own number (never reused), and for each the model keeps what a power cut would
//! leave of it next to what the live tree shows.
//!
//! - A directory keeps two name -> node maps: `live` (what the backing directory holds) and `durable` (the
//!   live map as of its last `fsync`, or of the mount), and the names changed since (`dirty`). A directory is
//!   read from the backing tree the first time it is used; until then its durable map is its listing.
//! - A regular file keeps its durable content as [`Durable`]: a prefix of the live content (untouched since
//!   the last sync, appended to, or created and never synced: an empty prefix), or, once a change reached
//!   below that prefix, a copy under `state/durable/<node>` kept up to date by copying only the byte ranges
//!   written since the last sync (the prefix copied once per node and mount).
//! - Every non-directory node has a hard link `state/inodes/<node>`: the path the filesystem opens it by, and
//!   what keeps its content when its last live name goes while a durable map still names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

/// A node number: the FUSE inode number the kernel sees. Never reused within a mount.
pub(super) type Id = u64;

/// The root directory's node number (FUSE's root inode).
pub(super) const ROOT: Id = 1;

/// Where a disk's trees live under its state directory.
#[derive(Debug)]
pub(super) struct Paths {
    /// The state directory itself.
    pub state: PathBuf,
    /// The live tree: what the mount shows.
    pub live: PathBuf,
    /// `inodes/<node>`: a hard link to every non-directory node's backing inode.
    pub inodes: PathBuf,
    /// `durable/<node>`: durable copies of files changed since the mount.
    pub durable: PathBuf,
}

impl Paths {
    /// The layout under `state`.
    pub fn new(state: &Path) -> Paths {
        Paths {
            state: state.to_owned(),
            live: state.join("live"),
            inodes: state.join("inodes"),
            durable: state.join("durable"),
        }
    }

    /// The layout under `state`, made ready for a mount: the live tree kept (created if missing), what an
    /// earlier mount or cut left beside it removed.
    pub fn prepare(state: &Path) -> io::Result<Paths> {
        let paths = Paths::new(state);
        if !paths.live.is_dir() {
            fs::create_dir(&paths.live)?;
        }
        paths.clear()?;
        fs::create_dir(&paths.inodes)?;
        fs::create_dir(&paths.durable)?;
        Ok(paths)
    }

    /// Remove everything but the live tree (the model's links and copies, a half-made tree of a cut).
    pub fn clear(&self) -> io::Result<()> {
        for dir in [&self.inodes, &self.durable, &self.next(), &self.old()] {
            match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The tree a cut builds before it replaces the live tree.
    pub fn next(&self) -> PathBuf {
        self.state.join("next")
    }

    /// Where the live tree goes while a cut swaps the trees.
    pub fn old(&self) -> PathBuf {
        self.state.join("old")
    }

    /// The backing inode of a non-directory node.
    pub fn inode(&self, id: Id) -> PathBuf {
        self.inodes.join(id.to_string())
    }

    /// The durable copy of a file node.
    pub fn copy(&self, id: Id) -> PathBuf {
        self.durable.join(id.to_string())
    }
}

/// Lock a mutex, ignoring poisoning (a panicking handler must not wedge the filesystem).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An `io::Error` of errno `code`.
pub(super) fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Byte ranges `[start, end)`, kept disjoint and merged.
#[derive(Debug, Default)]
pub(super) struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Add `[start, end)`.
    pub fn add(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with a range that starts before and reaches `start`.
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Swallow the ranges that start inside the new one.
        let inside: Vec<u64> = self.0.range(start..=end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some(e) = self.0.remove(&s) {
                end = end.max(e);
            }
        }
        self.0.insert(start, end);
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }

    /// Forget every range.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Where a file's durable content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durable {
    /// The first `n` bytes of the live file, unchanged since the last sync (or the mount): a file untouched
    /// since, appended to, or created and never synced (`n` = 0). No copy needed.
    Prefix(u64),
    /// In `durable/<node>` (made when a change reached below the durable length); the live file differs
    /// from it at most in `ranges`, beyond `trunc_low` and in its length.
    Copy,
}

/// What a file's live content holds that its durable content does not.
#[derive(Debug)]
pub(super) struct FileData {
    /// Where the durable content is.
    pub durable: Durable,
    /// Whether the live content was changed since the last sync (it may then differ from the durable one).
    pub changed: bool,
    /// With [`Durable::Copy`]: ranges written since the last sync.
    pub ranges: Ranges,
    /// With [`Durable::Copy`]: the smallest length the file was cut to since the last sync.
    pub trunc_low: Option<u64>,
    /// The node is gone from the model (its links and copy removed): changes no longer matter.
    pub freed: bool,
}

/// A regular file node: its number and its durability state (locked on its own, so data operations on
/// different files never wait for each other or for the namespace).
#[derive(Debug)]
pub(super) struct FileNode {
    /// Its node number.
    pub id: Id,
    /// Its durability state.
    pub data: Mutex<FileData>,
}

impl FileNode {
    /// A file node whose durable content is `durable`.
    pub fn new(id: Id, durable: Durable) -> Arc<FileNode> {
        Arc::new(FileNode {
            id,
            data: Mutex::new(FileData {
                durable,
                changed: false,
                ranges: Ranges::default(),
                trunc_low: None,
                freed: false,
            }),
        })
    }

    /// Before the live content changes from byte `low` on (`u64::MAX`: no byte changes): when that reaches
    /// into a durable prefix, copy the prefix aside (at most once per node and mount); note the change.
    pub fn before_change(&self, d: &mut FileData, paths: &Paths, low: u64) -> io::Result<()> {
        if let Durable::Prefix(len) = d.durable {
            if low < len && !d.freed {
                let live = File::open(paths.inode(self.id))?;
                let mut copy = File::create(paths.copy(self.id))?;
                io::copy(&mut io::Read::take(&live, len), &mut copy)?;
                d.durable = Durable::Copy;
                // Whatever was written beyond the prefix since the last sync.
                d.ranges.clear();
                d.ranges.add(len, u64::MAX);
                d.trunc_low = None;
            }
        }
        d.changed = true;
        Ok(())
    }

    /// After bytes `[start, end)` were written (after [`before_change`](Self::before_change)).
    pub fn wrote(&self, d: &mut FileData, start: u64, end: u64) {
        if d.durable == Durable::Copy {
            d.ranges.add(start, end);
        }
    }

    /// After the file was cut to `size` bytes (after [`before_change`](Self::before_change)).
    pub fn truncated(&self, d: &mut FileData, size: u64) {
        if d.durable == Durable::Copy {
            d.trunc_low = Some(d.trunc_low.map_or(size, |t| t.min(size)));
        }
    }

    /// `fsync`/`fdatasync`: make the live content durable (copy what changed into the durable copy, if the
    /// node has one).
    pub fn sync(&self, d: &mut FileData, paths: &Paths) -> io::Result<()> {
        if !d.changed || d.freed {
            return Ok(());
        }
        let live = File::open(paths.inode(self.id))?;
        let len = live.metadata()?.len();
        if d.durable == Durable::Copy {
            let copy = fs::OpenOptions::new()
                .write(true)
                .open(paths.copy(self.id))?;
            if let Some(low) = d.trunc_low {
                if low < copy.metadata()?.len() {
                    copy.set_len(low)?;
                }
            }
            copy.set_len(len)?;
            for (start, end) in d.ranges.iter() {
                copy_range(&live, &copy, start, end.min(len))?;
            }
        } else {
            d.durable = Durable::Prefix(len);
        }
        d.changed = false;
        d.ranges.clear();
        d.trunc_low = None;
        Ok(())
    }
}

/// Copy bytes `[start, end)` of `from` to the same offsets of `to`.
fn copy_range(from: &File, to: &File, start: u64, end: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let n = rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)?;
        if n == 0 {
            break; // the live file is shorter (it cannot be: `end` is clamped to its length)
        }
    }
    Ok(())
}

/// A directory's entries: live, durable, and the names whose entries changed since the last `fsync`.
#[derive(Debug, Default)]
pub(super) struct Entries {
    /// What the live directory holds.
    pub live: BTreeMap<OsString, Id>,
    /// What it held at its last `fsync` (or when first read in this mount).
    pub durable: BTreeMap<OsString, Id>,
    /// Names changed in `live` since the last `fsync`.
    pub dirty: BTreeSet<OsString>,
}

/// What a node is.
#[derive(Debug)]
pub(super) enum Kind {
    /// A directory; `None` until its entries are first read from the backing tree.
    Dir(Option<Entries>),
    /// A regular file.
    File(Arc<FileNode>),
    /// A symlink (or another non-regular file): its content cannot change, only its names.
    Other,
}

/// A node of the model.
#[derive(Debug)]
pub(super) struct Node {
    /// What it is.
    pub kind: Kind,
    /// The type reported to the kernel.
    pub ftype: FileType,
    /// A directory's live parent and name (for its backing path); unused for other nodes.
    pub parent: Id,
    /// See `parent`.
    pub name: OsString,
    /// Live names in directories read so far (a directory: 1, 0 once removed).
    pub links: u32,
    /// Durable maps that name it.
    pub durable_refs: u32,
    /// The kernel's references (lookups not yet forgotten).
    pub lookups: u64,
    /// The backing inode's (device, inode) while it is live.
    pub backing: (u64, u64),
}

/// Every node of a mount.
#[derive(Debug)]
pub(super) struct Namespace {
    /// The nodes by number.
    pub nodes: HashMap<Id, Node>,
    /// Live backing inodes -> node, so a second name of a known inode is the same node.
    pub by_backing: HashMap<(u64, u64), Id>,
    /// The next node number.
    next: Id,
    /// The disk's layout.
    pub paths: Arc<Paths>,
}

impl Namespace {
    /// The model of a fresh mount: only the root, whose entries are read on first use.
    pub fn new(paths: Arc<Paths>) -> io::Result<Namespace> {
        let meta = fs::symlink_metadata(&paths.live)?;
        let root = Node {
            kind: Kind::Dir(None),
            ftype: FileType::Directory,
            parent: ROOT,
            name: OsString::new(),
            links: 1,
            durable_refs: 1,
            lookups: 1,
            backing: (meta.dev(), meta.ino()),
        };
        let mut ns = Namespace {
            nodes: HashMap::new(),
            by_backing: HashMap::new(),
            next: ROOT + 1,
            paths,
        };
        ns.by_backing.insert(root.backing, ROOT);
        ns.nodes.insert(ROOT, root);
        Ok(ns)
    }

    /// A fresh node number.
    pub fn alloc(&mut self) -> Id {
        let id = self.next;
        self.next += 1;
        id
    }

    /// The node `id`, or ENOENT (one the kernel still names after the model dropped it cannot be).
    pub fn node(&self, id: Id) -> io::Result<&Node> {
        self.nodes.get(&id).ok_or_else(|| err(libc::ENOENT))
    }

    /// See [`node`](Self::node).
    pub fn node_mut(&mut self, id: Id) -> io::Result<&mut Node> {
        self.nodes.get_mut(&id).ok_or_else(|| err(libc::ENOENT))
    }

    /// The file node `id` (EISDIR for a directory, EINVAL for a symlink).
    pub fn file(&self, id: Id) -> io::Result<Arc<FileNode>> {
        match &self.node(id)?.kind {
            Kind::File(f) => Ok(f.clone()),
            Kind::Dir(_) => Err(err(libc::EISDIR)),
            Kind::Other => Err(err(libc::EINVAL)),
        }
    }

    /// The backing path of a live directory.
    pub fn dir_path(&self, id: Id) -> io::Result<PathBuf> {
        let mut names = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let n = self.node(cur)?;
            if n.links == 0 || !matches!(n.kind, Kind::Dir(_)) {
                return Err(err(libc::ENOENT));
            }
            names.push(&n.name);
            cur = n.parent;
        }
        let mut path = self.paths.live.clone();
        path.extend(names.iter().rev());
        Ok(path)
    }

    /// The backing path of any node: a directory's live path, another node's `inodes/` link.
    pub fn backing_path(&self, id: Id) -> io::Result<PathBuf> {
        match self.node(id)?.kind {
            Kind::Dir(_) => self.dir_path(id),
            _ => Ok(self.paths.inode(id)),
        }
    }

    /// The entries of directory `dir`, read from the backing tree on first use.
    pub fn entries(&mut self, dir: Id) -> io::Result<&mut Entries> {
        match &self.node(dir)?.kind {
            Kind::Dir(Some(_)) => {}
            Kind::Dir(None) => self.load(dir)?,
            _ => return Err(err(libc::ENOTDIR)),
        }
        match &mut self.node_mut(dir)?.kind {
            Kind::Dir(Some(e)) => Ok(e),
            _ => Err(err(libc::ENOTDIR)),
        }
    }

    /// Read a directory's entries from the backing tree: what it holds now is durable.
    fn load(&mut self, dir: Id) -> io::Result<()> {
        let path = self.dir_path(dir)?;
        let mut e = Entries::default();
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            let id = self.adopt(&entry.path(), dir, &name)?;
            let n = self.node_mut(id)?;
            n.links += 1;
            n.durable_refs += 1;
            e.live.insert(name.clone(), id);
            e.durable.insert(name, id);
        }
        self.node_mut(dir)?.kind = Kind::Dir(Some(e));
        Ok(())
    }

    /// The node of a backing object found in a listing: the known one for its inode, else a new node (with
    /// its `inodes/` link if it is not a directory).
    fn adopt(&mut self, path: &Path, parent: Id, name: &OsStr) -> io::Result<Id> {
        let meta = fs::symlink_metadata(path)?;
        let key = (meta.dev(), meta.ino());
        if let Some(&id) = self.by_backing.get(&key) {
            return Ok(id);
        }
        let id = self.alloc();
        let ft = meta.file_type();
        let (kind, ftype) = if ft.is_dir() {
            (Kind::Dir(None), FileType::Directory)
        } else {
            fs::hard_link(path, self.paths.inode(id))?;
            let ftype = FileType::from_std(ft).unwrap_or(FileType::RegularFile);
            if ft.is_file() {
                (
                    Kind::File(FileNode::new(id, Durable::Prefix(meta.len()))),
                    ftype,
                )
            } else {
                (Kind::Other, ftype)
            }
        };
        self.insert(id, kind, ftype, key, parent, name);
        Ok(id)
    }

    /// Add a node (links, references and lookups at zero).
    pub fn insert(
        &mut self,
        id: Id,
        kind: Kind,
        ftype: FileType,
        backing: (u64, u64),
        parent: Id,
        name: &OsStr,
    ) {
        self.by_backing.insert(backing, id);
        self.nodes.insert(
            id,
            Node {
                kind,
                ftype,
                parent,
                name: name.to_owned(),
                links: 0,
                durable_refs: 0,
                lookups: 0,
                backing,
            },
        );
    }

    /// The node `name` names in live directory `dir`.
    pub fn lookup(&mut self, dir: Id, name: &OsStr) -> io::Result<Id> {
        self.entries(dir)?
            .live
            .get(name)
            .copied()
            .ok_or_else(|| err(libc::ENOENT))
    }

    /// The backing path for a new name in `dir` (EEXIST if the name is taken).
    pub fn new_name(&mut self, dir: Id, name: &OsStr) -> io::Result<PathBuf> {
        if self.entries(dir)?.live.contains_key(name) {
            return Err(err(libc::EEXIST));
        }
        Ok(self.dir_path(dir)?.join(name))
    }

    /// Set (or with `None` remove) a live entry, noting the name as changed.
    pub fn set_live(&mut self, dir: Id, name: &OsStr, id: Option<Id>) -> io::Result<()> {
        let e = self.entries(dir)?;
        match id {
            Some(id) => e.live.insert(name.to_owned(), id),
            None => e.live.remove(name),
        };
        e.dirty.insert(name.to_owned());
        Ok(())
    }

    /// A live name of `id` went (a directory: it was removed).
    pub fn unlinked(&mut self, id: Id) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if matches!(n.kind, Kind::Dir(_)) {
                n.links = 0;
                let backing = n.backing;
                self.forget_backing(backing, id);
            } else {
                n.links = n.links.saturating_sub(1);
            }
        }
        self.maybe_free(id);
    }

    fn forget_backing(&mut self, backing: (u64, u64), id: Id) {
        if self.by_backing.get(&backing) == Some(&id) {
            self.by_backing.remove(&backing);
        }
    }

    /// `fsync` of directory `dir`: its live entries become durable.
    pub fn sync_dir(&mut self, dir: Id) -> io::Result<()> {
        let mut gained = Vec::new();
        let mut lost = Vec::new();
        match &mut self.node_mut(dir)?.kind {
            Kind::Dir(Some(e)) => {
                for name in std::mem::take(&mut e.dirty) {
                    let now = e.live.get(&name).copied();
                    let before = match now {
                        Some(id) => e.durable.insert(name, id),
                        None => e.durable.remove(&name),
                    };
                    if now != before {
                        gained.extend(now);
                        lost.extend(before);
                    }
                }
            }
            // Never read in this mount: unchanged, durable as it is.
            Kind::Dir(None) => {}
            _ => return Err(err(libc::ENOTDIR)),
        }
        for id in gained {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.durable_refs += 1;
            }
        }
        for id in lost {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.durable_refs = n.durable_refs.saturating_sub(1);
            }
            self.maybe_free(id);
        }
        Ok(())
    }

    /// The kernel forgot `n` lookups of `id`.
    pub fn forget(&mut self, id: Id, n: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.lookups = node.lookups.saturating_sub(n);
            self.maybe_free(id);
        }
    }

    /// Drop nodes nothing refers to any more (no live name, no durable map, no kernel reference), with
    /// their `inodes/` links and durable copies; a dropped directory's durable map lets go of its nodes.
    fn maybe_free(&mut self, id: Id) {
        let mut todo = vec![id];
        while let Some(id) = todo.pop() {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            if id == ROOT || n.links > 0 || n.durable_refs > 0 || n.lookups > 0 {
                continue;
            }
            if !matches!(n.kind, Kind::Dir(_)) {
                // A name in a directory not read yet still holds the inode: keep the node (and what it
                // knows of the file's durable content) for it.
                let inode = self.paths.inode(id);
                if fs::symlink_metadata(&inode).is_ok_and(|m| m.nlink() > 1) {
                    continue;
                }
                let _ = fs::remove_file(&inode);
                let _ = fs::remove_file(self.paths.copy(id));
            }
            let Some(n) = self.nodes.remove(&id) else {
                continue;
            };
            self.forget_backing(n.backing, id);
            match n.kind {
                Kind::Dir(Some(e)) => {
                    for child in e.durable.into_values() {
                        if let Some(c) = self.nodes.get_mut(&child) {
                            c.durable_refs = c.durable_refs.saturating_sub(1);
                        }
                        todo.push(child);
                    }
                }
                Kind::File(f) => lock(&f.data).freed = true,
                _ => {}
            }
        }
    }

    /// The attributes of node `id`, from its backing object.
    pub fn attr(&self, id: Id) -> io::Result<FileAttr> {
        let dir = matches!(self.node(id)?.kind, Kind::Dir(_));
        let meta = fs::symlink_metadata(self.backing_path(id)?)?;
        Ok(attr_of(id, &meta, dir))
    }
}

/// FUSE attributes of node `id` from its backing object's metadata (a non-directory's `inodes/` link is not
/// counted in its link count).
pub(super) fn attr_of(id: Id, meta: &fs::Metadata, dir: bool) -> FileAttr {
    let nlink = meta.nlink().try_into().unwrap_or(u32::MAX);
    FileAttr {
        ino: INodeNo(id),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: if dir { nlink } else { nlink.saturating_sub(1) },
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize().try_into().unwrap_or(4096),
        flags: 0,
    }
}

/// A `stat` time as a `SystemTime`.
fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn ranges_merge_overlapping_and_adjacent_writes() {
        let mut r = Ranges::default();
        r.add(10, 20);
        r.add(30, 40);
        r.add(20, 25); // adjacent to the first
        r.add(0, 0); // empty
        assert_eq!(r.iter().collect::<Vec<_>>(), [(10, 25), (30, 40)]);
        r.add(5, 35); // spans both
        assert_eq!(r.iter().collect::<Vec<_>>(), [(5, 40)]);
        r.add(50, 60);
        r.add(45, 55);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(5, 40), (45, 60)]);
    }
}
