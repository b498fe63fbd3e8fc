//! The FUSE filesystem of a [`Disk`](super::Disk): every operation passes through to the live backing tree
//! and tells the model ([`super::model`]) what changed and what became durable.
//!
//! Namespace operations (lookup, create, rename, ...) hold the model's lock for their backing system call;
//! data operations (read, write, fsync) go through the open handle's backing file and lock only that file's
//! durability state, so many files are written and synced at once. A gate, closed by a cut, stops every
//! operation from touching anything once the disk has lost power.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::{attr_of, err, lock, Durable, FileNode, Id, Kind, Namespace, Paths, ROOT};
use super::Faults;

/// How long the kernel may cache attributes and entries: nothing changes the backing tree behind the
/// filesystem's back while it is mounted.
const TTL: Duration = Duration::from_secs(1);

/// Calls seen since the disk was mounted, and the faults it shows (both kept across cuts).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// `fsync`/`fdatasync` of files.
    pub file_syncs: AtomicU64,
    /// `fsync` of directories.
    pub dir_syncs: AtomicU64,
    /// What [`super::Disk::inject`] set.
    pub faults: Mutex<Faults>,
}

/// What an operation does to the disk, for [`Faults`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    /// Reading a file's bytes.
    Read,
    /// Any change: writes, truncations, creations, links, renames, removals, syncs.
    Change,
}

impl Counters {
    /// Wait the injected delay, then fail with EIO if `op`'s kind fails.
    fn suffer(&self, op: Op) -> Result<(), Errno> {
        let f = *lock(&self.faults);
        if !f.delay.is_zero() {
            std::thread::sleep(f.delay);
        }
        let fails = match op {
            Op::Read => f.fail_reads,
            Op::Change => f.fail_changes,
        };
        if fails {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }
}

/// An open file: its backing file and its node.
#[derive(Debug)]
struct Open {
    /// The backing file (opened through the node's `inodes/` link).
    file: File,
    /// Its node.
    node: Arc<FileNode>,
    /// Opened with `O_SYNC`/`O_DSYNC`: every write is synced.
    sync: bool,
}

/// One entry of an open directory's listing.
#[derive(Debug, Clone)]
struct DirEnt {
    id: Id,
    ftype: FileType,
    name: OsString,
}

/// The state of one mount, shared by the session's threads and the [`Disk`](super::Disk).
#[derive(Debug)]
pub(super) struct Inner {
    /// The layout under the state directory.
    pub paths: Arc<Paths>,
    /// Open while the disk has power; a cut closes it (operations then fail with EIO and change nothing).
    gate: RwLock<bool>,
    /// The model.
    pub ns: Mutex<Namespace>,
    /// Open files by handle.
    files: Mutex<HashMap<u64, Arc<Open>>>,
    /// Open directories by handle: the listing their last readdir from offset 0 made.
    dirs: Mutex<HashMap<u64, Arc<Mutex<Vec<DirEnt>>>>>,
    /// The next handle (files and directories share the numbers).
    next_fh: AtomicU64,
    /// Sync calls seen.
    pub counters: Arc<Counters>,
}

impl Inner {
    /// The state of a fresh mount of `paths`.
    pub fn new(paths: Arc<Paths>, counters: Arc<Counters>) -> io::Result<Inner> {
        Ok(Inner {
            ns: Mutex::new(Namespace::new(paths.clone())?),
            paths,
            gate: RwLock::new(true),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            counters,
        })
    }

    /// The power goes: wait for the operations under way, and let no other one change anything.
    pub fn close_gate(&self) {
        *self.gate.write().unwrap_or_else(|e| e.into_inner()) = false;
        lock(&self.files).clear();
        lock(&self.dirs).clear();
    }

    fn enter(&self) -> Option<RwLockReadGuard<'_, bool>> {
        let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        (*g).then_some(g)
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn open_of(&self, fh: FileHandle) -> io::Result<Arc<Open>> {
        lock(&self.files)
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }
}

/// The filesystem the FUSE session runs.
#[derive(Debug)]
pub(super) struct PowerFs {
    /// The mount's state.
    pub inner: Arc<Inner>,
}

/// The attributes a `setattr` changes.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// Give a new backing object the caller's owner (the filesystem runs as root).
fn own(path: &Path, req: &Request) -> io::Result<()> {
    if req.uid() != 0 || req.gid() != 0 {
        std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()))?;
    }
    Ok(())
}

/// Reply with `r`'s value or its errno.
macro_rules! reply {
    ($reply:ident, $r:expr, |$v:pat_param| $ok:expr) => {
        match $r {
            Ok($v) => $ok,
            Err(e) => $reply.error(Errno::from(e)),
        }
    };
}

/// Enter the gate or fail the request with EIO; with an [`Op`], the injected [`Faults`] apply first.
macro_rules! enter {
    ($self:ident, $reply:ident) => {
        match $self.inner.enter() {
            Some(g) => g,
            None => return $reply.error(Errno::EIO),
        }
    };
    ($self:ident, $reply:ident, $op:expr) => {{
        if let Err(e) = $self.inner.counters.suffer($op) {
            return $reply.error(e);
        }
        enter!($self, $reply)
    }};
}

impl PowerFs {
    /// Truncate (or extend) file `id` to `size`.
    fn set_size(&self, node: &FileNode, size: u64) -> io::Result<()> {
        let paths = &self.inner.paths;
        let mut d = lock(&node.data);
        node.before_change(&mut d, paths, size)?;
        OpenOptions::new()
            .write(true)
            .open(paths.inode(node.id))?
            .set_len(size)?;
        node.truncated(&mut d, size);
        Ok(())
    }

    fn sync_file(&self, node: &FileNode) -> io::Result<()> {
        let mut d = lock(&node.data);
        node.sync(&mut d, &self.inner.paths)
    }

    fn do_setattr(&self, ino: Id, set: SetAttr) -> io::Result<fuser::FileAttr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = set;
        let (path, file, symlink) = {
            let ns = lock(&self.inner.ns);
            let node = ns.node(ino)?;
            let file = match &node.kind {
                Kind::File(f) => Some(f.clone()),
                _ => None,
            };
            (ns.backing_path(ino)?, file, node.ftype == FileType::Symlink)
        };
        if let Some(mode) = mode.filter(|_| !symlink) {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)?;
        }
        if let Some(size) = size {
            let node = file.as_ref().ok_or_else(|| err(libc::EISDIR))?;
            self.set_size(node, size)?;
        }
        if (atime.is_some() || mtime.is_some()) && !symlink {
            let at = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(at(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(at(t));
            }
            File::open(&path)?.set_times(times)?;
        }
        let meta = fs::symlink_metadata(&path)?;
        Ok(attr_of(ino, &meta, meta.is_dir()))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: Id,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(fuser::FileAttr, u64)> {
        let mut ns = lock(&self.inner.ns);
        let path = ns.new_name(parent, name)?;
        let id = ns.alloc();
        let inode = self.inner.paths.inode(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&inode)?;
        let made = own(&inode, req).and_then(|()| fs::hard_link(&inode, &path));
        if let Err(e) = made {
            let _ = fs::remove_file(&inode);
            return Err(e);
        }
        let meta = file.metadata()?;
        let node = FileNode::new(id, Durable::Prefix(0));
        ns.insert(
            id,
            Kind::File(node.clone()),
            FileType::RegularFile,
            (meta.dev(), meta.ino()),
            parent,
            name,
        );
        ns.set_live(parent, name, Some(id))?;
        let n = ns.node_mut(id)?;
        n.links = 1;
        n.lookups += 1;
        let fh = self.inner.fh();
        lock(&self.inner.files).insert(
            fh,
            Arc::new(Open {
                file,
                node,
                sync: flags & libc::O_DSYNC != 0,
            }),
        );
        Ok((attr_of(id, &meta, false), fh))
    }

    fn do_open(&self, ino: Id, flags: OpenFlags) -> io::Result<u64> {
        let node = lock(&self.inner.ns).file(ino)?;
        let acc = flags.0 & libc::O_ACCMODE;
        let file = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .open(self.inner.paths.inode(ino))?;
        if flags.0 & libc::O_TRUNC != 0 {
            self.set_size(&node, 0)?;
        }
        let fh = self.inner.fh();
        lock(&self.inner.files).insert(
            fh,
            Arc::new(Open {
                file,
                node,
                sync: flags.0 & libc::O_DSYNC != 0,
            }),
        );
        Ok(fh)
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> io::Result<u32> {
        let open = self.inner.open_of(fh)?;
        let node = &open.node;
        let mut d = lock(&node.data);
        node.before_change(&mut d, &self.inner.paths, offset)?;
        open.file.write_all_at(data, offset)?;
        node.wrote(&mut d, offset, offset + data.len() as u64);
        if open.sync {
            node.sync(&mut d, &self.inner.paths)?;
        }
        Ok(data.len() as u32)
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let open = self.inner.open_of(fh)?;
        let mut buf = vec![0; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match open.file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    fn do_mkdir(
        &self,
        req: &Request,
        parent: Id,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<fuser::FileAttr> {
        let mut ns = lock(&self.inner.ns);
        let path = ns.new_name(parent, name)?;
        fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        own(&path, req)?;
        let meta = fs::symlink_metadata(&path)?;
        let id = ns.alloc();
        ns.insert(
            id,
            Kind::Dir(Some(Default::default())),
            FileType::Directory,
            (meta.dev(), meta.ino()),
            parent,
            name,
        );
        ns.set_live(parent, name, Some(id))?;
        let n = ns.node_mut(id)?;
        n.links = 1;
        n.lookups += 1;
        Ok(attr_of(id, &meta, true))
    }

    fn do_symlink(
        &self,
        req: &Request,
        parent: Id,
        name: &OsStr,
        target: &Path,
    ) -> io::Result<fuser::FileAttr> {
        let mut ns = lock(&self.inner.ns);
        let path = ns.new_name(parent, name)?;
        std::os::unix::fs::symlink(target, &path)?;
        let id = ns.alloc();
        let made = own(&path, req).and_then(|()| fs::hard_link(&path, self.inner.paths.inode(id)));
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let meta = fs::symlink_metadata(&path)?;
        ns.insert(
            id,
            Kind::Other,
            FileType::Symlink,
            (meta.dev(), meta.ino()),
            parent,
            name,
        );
        ns.set_live(parent, name, Some(id))?;
        let n = ns.node_mut(id)?;
        n.links = 1;
        n.lookups += 1;
        Ok(attr_of(id, &meta, false))
    }

    fn do_link(&self, ino: Id, parent: Id, name: &OsStr) -> io::Result<fuser::FileAttr> {
        let mut ns = lock(&self.inner.ns);
        if matches!(ns.node(ino)?.kind, Kind::Dir(_)) {
            return Err(err(libc::EPERM));
        }
        let path = ns.new_name(parent, name)?;
        let inode = self.inner.paths.inode(ino);
        fs::hard_link(&inode, &path)?;
        ns.set_live(parent, name, Some(ino))?;
        let n = ns.node_mut(ino)?;
        n.links += 1;
        n.lookups += 1;
        Ok(attr_of(ino, &fs::symlink_metadata(&inode)?, false))
    }

    fn do_unlink(&self, parent: Id, name: &OsStr, dir: bool) -> io::Result<()> {
        let mut ns = lock(&self.inner.ns);
        let id = ns.lookup(parent, name)?;
        let is_dir = matches!(ns.node(id)?.kind, Kind::Dir(_));
        let path = ns.dir_path(parent)?.join(name);
        match (dir, is_dir) {
            (false, true) => return Err(err(libc::EISDIR)),
            (true, false) => return Err(err(libc::ENOTDIR)),
            (false, false) => fs::remove_file(&path)?,
            (true, true) => {
                if !ns.entries(id)?.live.is_empty() {
                    return Err(err(libc::ENOTEMPTY));
                }
                fs::remove_dir(&path)?;
            }
        }
        ns.set_live(parent, name, None)?;
        ns.unlinked(id);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: Id,
        name: &OsStr,
        newparent: Id,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        let mut ns = lock(&self.inner.ns);
        let src = ns.lookup(parent, name)?;
        let dst = ns.entries(newparent)?.live.get(newname).copied();
        if dst == Some(src) {
            return Ok(()); // two names of one inode: POSIX says do nothing
        }
        let from = ns.dir_path(parent)?.join(name);
        let to = ns.dir_path(newparent)?.join(newname);
        let is_dir = |ns: &Namespace, id: Id| {
            matches!(ns.nodes.get(&id).map(|n| &n.kind), Some(Kind::Dir(_)))
        };
        if let Some(d) = dst.filter(|&d| is_dir(&ns, src) && is_dir(&ns, d)) {
            // Replacing a directory: the model must hold its entries (read them if it never did) to know
            // it is empty before it drops it.
            if !flags.contains(RenameFlags::RENAME_EXCHANGE) && !ns.entries(d)?.live.is_empty() {
                return Err(err(libc::ENOTEMPTY));
            }
        }
        let mut how = rustix::fs::RenameFlags::empty();
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            how |= rustix::fs::RenameFlags::NOREPLACE;
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            how |= rustix::fs::RenameFlags::EXCHANGE;
        }
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(err(libc::EINVAL));
        }
        rustix::fs::renameat_with(rustix::fs::CWD, &from, rustix::fs::CWD, &to, how)?;
        let moved = |ns: &mut Namespace, id: Id, dir: Id, name: &OsStr| -> io::Result<()> {
            let n = ns.node_mut(id)?;
            if matches!(n.kind, Kind::Dir(_)) {
                n.parent = dir;
                n.name = name.to_owned();
            }
            Ok(())
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let d = dst.ok_or_else(|| err(libc::ENOENT))?;
            ns.set_live(parent, name, Some(d))?;
            ns.set_live(newparent, newname, Some(src))?;
            moved(&mut ns, d, parent, name)?;
            moved(&mut ns, src, newparent, newname)?;
            return Ok(());
        }
        ns.set_live(parent, name, None)?;
        ns.set_live(newparent, newname, Some(src))?;
        moved(&mut ns, src, newparent, newname)?;
        if let Some(d) = dst {
            ns.unlinked(d);
        }
        Ok(())
    }

    fn do_opendir(&self, ino: Id) -> io::Result<u64> {
        // The listing is made by the first readdir (offset 0): opening a directory to fsync it costs nothing.
        lock(&self.inner.ns).entries(ino)?;
        let fh = self.inner.fh();
        lock(&self.inner.dirs).insert(fh, Arc::new(Mutex::new(Vec::new())));
        Ok(fh)
    }

    /// The live entries of directory `ino`, with `.` and `..`.
    fn listing(&self, ino: Id) -> io::Result<Vec<DirEnt>> {
        let mut ns = lock(&self.inner.ns);
        let parent = ns.node(ino)?.parent;
        let live = ns.entries(ino)?.live.clone();
        let mut out = Vec::with_capacity(live.len() + 2);
        out.push(DirEnt {
            id: ino,
            ftype: FileType::Directory,
            name: ".".into(),
        });
        out.push(DirEnt {
            id: if ino == ROOT { ROOT } else { parent },
            ftype: FileType::Directory,
            name: "..".into(),
        });
        for (name, id) in live {
            let ftype = ns.node(id)?.ftype;
            out.push(DirEnt { id, ftype, name });
        }
        Ok(out)
    }

    fn do_fallocate(&self, fh: FileHandle, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        let open = self.inner.open_of(fh)?;
        let node = &open.node;
        let mut d = lock(&node.data);
        // Allocating (keeping the size or not) changes no byte; punching, zeroing, collapsing or inserting
        // may change any from `offset` on.
        let changes = mode & !libc::FALLOC_FL_KEEP_SIZE != 0;
        let low = if changes { offset } else { u64::MAX };
        node.before_change(&mut d, &self.inner.paths, low)?;
        let how = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(&open.file, how, offset, length)?;
        if changes {
            node.wrote(&mut d, offset, u64::MAX);
            node.truncated(&mut d, offset);
        }
        Ok(())
    }
}

impl Filesystem for PowerFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> io::Result<()> {
        // Lookups and listings of one directory need not wait for each other in the kernel (the model has
        // its own lock). Optional: older kernels go without.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _g = enter!(self, reply);
        let mut ns = lock(&self.inner.ns);
        let r = ns.lookup(parent.0, name).and_then(|id| {
            let a = ns.attr(id)?;
            ns.node_mut(id)?.lookups += 1;
            Ok(a)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            // A negative entry the kernel may cache (node 0): names appear only through this mount, which
            // the kernel sees. Saves a lookup before each create.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let none = fuser::FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: SystemTime::UNIX_EPOCH,
                    mtime: SystemTime::UNIX_EPOCH,
                    ctime: SystemTime::UNIX_EPOCH,
                    crtime: SystemTime::UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 0,
                    flags: 0,
                };
                reply.entry(&TTL, &none, Generation(0))
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Some(_g) = self.inner.enter() {
            lock(&self.inner.ns).forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _g = enter!(self, reply);
        if let Some(open) = fh.and_then(|fh| self.inner.open_of(fh).ok()) {
            let r = open.file.metadata();
            return reply!(reply, r, |m| reply.attr(&TTL, &attr_of(ino.0, &m, false)));
        }
        let r = lock(&self.inner.ns).attr(ino.0);
        reply!(reply, r, |a| reply.attr(&TTL, &a));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let r = self.do_setattr(ino.0, set);
        reply!(reply, r, |a| reply.attr(&TTL, &a));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _g = enter!(self, reply);
        let r = fs::read_link(self.inner.paths.inode(ino.0));
        reply!(reply, r, |t| reply.data(t.as_os_str().as_encoded_bytes()));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _g = enter!(self, reply, Op::Change);
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM); // only regular files are modelled
        }
        let r = self.do_create(req, parent.0, name, mode, 0).map(|(a, fh)| {
            lock(&self.inner.files).remove(&fh);
            a
        });
        reply!(reply, r, |a| reply.entry(&TTL, &a, Generation(0)));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let r = self.do_mkdir(req, parent.0, name, mode);
        reply!(reply, r, |a| reply.entry(&TTL, &a, Generation(0)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = enter!(self, reply, Op::Change);
        reply!(reply, self.do_unlink(parent.0, name, false), |()| reply
            .ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = enter!(self, reply, Op::Change);
        reply!(reply, self.do_unlink(parent.0, name, true), |()| reply.ok());
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let r = self.do_symlink(req, parent.0, link_name, target);
        reply!(reply, r, |a| reply.entry(&TTL, &a, Generation(0)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let r = self.do_rename(parent.0, name, newparent.0, newname, flags);
        reply!(reply, r, |()| reply.ok());
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let r = self.do_link(ino.0, newparent.0, newname);
        reply!(reply, r, |a| reply.entry(&TTL, &a, Generation(0)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _g = enter!(self, reply);
        let r = self.do_open(ino.0, flags);
        reply!(reply, r, |fh| reply
            .opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _g = enter!(self, reply, Op::Read);
        reply!(reply, self.do_read(fh, offset, size), |b| reply.data(&b));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _g = enter!(self, reply, Op::Change);
        reply!(reply, self.do_write(fh, offset, data), |n| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing a file makes nothing durable: ENOSYS tells the kernel not to send flushes at all (one
        // request less per close).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.inner.files).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _g = enter!(self, reply, Op::Change);
        self.inner
            .counters
            .file_syncs
            .fetch_add(1, Ordering::Relaxed);
        let node = match self.inner.open_of(fh) {
            Ok(open) => Ok(open.node.clone()),
            Err(_) => lock(&self.inner.ns).file(ino.0),
        };
        let r = node.and_then(|n| self.sync_file(&n));
        reply!(reply, r, |()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _g = enter!(self, reply);
        let r = self.do_opendir(ino.0);
        reply!(reply, r, |fh| reply
            .opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _g = enter!(self, reply);
        let Some(listing) = lock(&self.inner.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut listing = lock(&listing);
        if offset == 0 {
            // A rewind: list the directory as it is now.
            match self.listing(ino.0) {
                Ok(l) => *listing = l,
                Err(e) => return reply.error(e.into()),
            }
        }
        for (i, e) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.id), i as u64 + 1, e.ftype, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.inner.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _g = enter!(self, reply, Op::Change);
        self.inner
            .counters
            .dir_syncs
            .fetch_add(1, Ordering::Relaxed);
        let r = lock(&self.inner.ns).sync_dir(ino.0);
        reply!(reply, r, |()| reply.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _g = enter!(self, reply);
        let r = rustix::fs::statvfs(&self.inner.paths.state).map_err(io::Error::from);
        reply!(reply, r, |s| reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        ));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (`default_permissions`).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let r = self.do_create(req, parent.0, name, mode, flags);
        reply!(reply, r, |(a, fh)| reply.created(
            &TTL,
            &a,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty()
        ));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _g = enter!(self, reply, Op::Change);
        let r = self.do_fallocate(fh, offset, length, mode);
        reply!(reply, r, |()| reply.ok());
    }
}
