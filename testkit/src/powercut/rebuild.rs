//! The cut itself: build, from what the model says is durable, the tree a disk would show after losing
//! power, and put it in place of the live tree (the filesystem is unmounted by then).
//!
//! The tree is walked from the root's durable map. A file's content is its live inode (a hard link), cut
//! back to its durable prefix if it has one, else its durable copy (moved into place); a node reached
//! twice becomes a hard link to the first place; a directory the mount never read is taken as it is.
//! With [`Cut::Random`] each change that was not durable (a directory entry, a file's content) is kept or
//! dropped by a coin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::model::{lock, Durable, Entries, Id, Kind, Namespace, ROOT};
use super::{Cut, CutReport};

/// splitmix64: the coin of [`Cut::Random`].
struct Coin(u64);

impl Coin {
    fn flip(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

struct Builder<'a> {
    ns: &'a Namespace,
    /// `None`: every change that was not durable is lost.
    coin: Option<Coin>,
    /// Where each non-directory node was put first.
    placed: HashMap<Id, PathBuf>,
    /// Directories already built (a directory renamed without syncing both parents is named twice).
    built: HashSet<Id>,
    report: CutReport,
}

/// Build the tree that survives `how` in the state directory's `next`, then swap it in as the live tree.
pub(super) fn run(ns: &Namespace, how: Cut) -> io::Result<CutReport> {
    let paths = ns.paths.clone();
    let next = paths.next();
    if next.exists() {
        fs::remove_dir_all(&next)?;
    }
    fs::create_dir(&next)?;
    copy_owner_mode(&paths.live, &next)?;
    let mut b = Builder {
        ns,
        coin: match how {
            Cut::LoseAll => None,
            Cut::Random(seed) => Some(Coin(seed)),
        },
        placed: HashMap::new(),
        built: HashSet::from([ROOT]),
        report: CutReport::default(),
    };
    b.build(next.clone())?;
    let old = paths.old();
    fs::rename(&paths.live, &old)?;
    fs::rename(&next, &paths.live)?;
    fs::remove_dir_all(&old)?;
    Ok(b.report)
}

impl Builder<'_> {
    /// Build the durable tree of the root into `dst`.
    fn build(&mut self, dst: PathBuf) -> io::Result<()> {
        let ns = self.ns;
        let mut todo = vec![(ROOT, dst)];
        while let Some((dir, dst)) = todo.pop() {
            let entries = match &ns.node(dir)?.kind {
                Kind::Dir(Some(e)) => self.choose(e),
                Kind::Dir(None) => {
                    // Never read in this mount: unchanged, durable as it is.
                    self.take_unread(&ns.dir_path(dir)?, &dst)?;
                    continue;
                }
                _ => continue,
            };
            for (name, id) in entries {
                let target = dst.join(&name);
                match &ns.node(id)?.kind {
                    Kind::Dir(_) => {
                        if !self.built.insert(id) {
                            continue;
                        }
                        fs::create_dir(&target)?;
                        if let Ok(live) = ns.dir_path(id) {
                            copy_owner_mode(&live, &target)?;
                        }
                        todo.push((id, target));
                    }
                    _ => self.place(id, &target)?,
                }
            }
        }
        Ok(())
    }

    /// The entries a directory has after the cut: its durable map, with (for a random cut) some of the
    /// changes made since its last sync.
    fn choose(&mut self, e: &Entries) -> BTreeMap<std::ffi::OsString, Id> {
        let mut out = e.durable.clone();
        for name in &e.dirty {
            let live = e.live.get(name);
            if live == e.durable.get(name) {
                continue;
            }
            if self.coin.as_mut().is_some_and(Coin::flip) {
                match live {
                    Some(&id) => out.insert(name.clone(), id),
                    None => out.remove(name),
                };
            } else {
                self.report.entries_reverted += 1;
            }
        }
        out
    }

    /// Put non-directory node `id` at `target`: with its durable content, or (a random cut's coin) its live
    /// one.
    fn place(&mut self, id: Id, target: &Path) -> io::Result<()> {
        if let Some(first) = self.placed.get(&id) {
            fs::hard_link(first, target)?;
            return Ok(());
        }
        let ns = self.ns;
        let paths = &ns.paths;
        let inode = paths.inode(id);
        let mut durable = None;
        if let Kind::File(f) = &ns.node(id)?.kind {
            let d = lock(&f.data);
            if d.changed && !self.coin.as_mut().is_some_and(Coin::flip) {
                durable = Some(d.durable);
            }
        }
        match durable {
            None => fs::hard_link(&inode, target)?,
            Some(Durable::Prefix(len)) => {
                // The live inode is discarded with the live tree: cut it back to its durable prefix.
                fs::OpenOptions::new()
                    .write(true)
                    .open(&inode)?
                    .set_len(len)?;
                fs::hard_link(&inode, target)?;
            }
            Some(Durable::Copy) => {
                fs::rename(paths.copy(id), target)?;
                copy_owner_mode(&inode, target)?;
            }
        }
        if durable.is_some() {
            self.report.files_reverted += 1;
        }
        self.placed.insert(id, target.to_owned());
        Ok(())
    }

    /// Take a directory the mount never read into `dst` as it is (its files by hard link; one a read
    /// directory also names is placed as its node).
    fn take_unread(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        let mut todo = vec![(src.to_owned(), dst.to_owned())];
        while let Some((src, dst)) = todo.pop() {
            for entry in fs::read_dir(&src)? {
                let entry = entry?;
                let (from, to) = (entry.path(), dst.join(entry.file_name()));
                let meta = fs::symlink_metadata(&from)?;
                if meta.is_dir() {
                    fs::create_dir(&to)?;
                    copy_owner_mode(&from, &to)?;
                    todo.push((from, to));
                } else if let Some(&id) = self.ns.by_backing.get(&(meta.dev(), meta.ino())) {
                    self.place(id, &to)?;
                } else {
                    fs::hard_link(&from, &to)?;
                }
            }
        }
        Ok(())
    }
}

/// Give `to` the owner and mode of `from`.
fn copy_owner_mode(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}
