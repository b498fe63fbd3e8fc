//! The on-disk store: every byte a storage node keeps goes through [`Store`].
//!
//! Layout of each store path: `data/XX/YY/<name>` (256x256 directories created at start), the file's metadata
//! next to it as `<name>-m` (a JSON object), and `.fdfs/tmp/` for in-flight writes (same filesystem, so the final
//! rename is atomic). Store path 0 also holds `.fdfs/db`, the sled index, and is the node's state directory.
//!
//! Writes are durable before they are acknowledged: stream to a temp file, fsync, rename (never replacing an
//! existing file) or hard-link into place, fsync the directory, update and flush the index. Disk paths are built
//! only from a validated [`FileId`] through [`FileId::relative_path`].
//!
//! Dedup (per store path, since hard links cannot cross filesystems): the index maps a content key
//! (BLAKE3 hash + size) to the IDs holding that content, and each ID back to its key. A second upload of identical
//! bytes becomes a hard link to the existing inode under its own new ID; deleting one ID unlinks only its own
//! name. The index is a cache of what is on disk: [`Store::reindex`] rebuilds it by walking the data directories
//! and runs automatically when the database is new or empty.
//!
//! All methods that touch the disk or sled come in two flavours: `*_blocking` (call them from blocking code) and
//! async wrappers that run them on the blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use fdfs_common::wire::{Metadata, StorePathStat};
use fdfs_common::{FileId, GroupName};
use futures_util::{Stream, StreamExt};
use rand::Rng;
use tempfile::NamedTempFile;

use crate::error::{Result, StorageError};

/// Suffix of the metadata file kept next to each file.
pub const META_SUFFIX: &str = "-m";
/// sled key marking that the index has been built from disk at least once.
const INDEXED_KEY: &[u8] = b"indexed";
/// sled's page cache. Its default (1 GiB) let a node with a million files sit at 640 MiB RSS; the index is only
/// read on uploads (dedup look-ups) and deletes, so a small cache costs little (see the `sled_million` example).
const INDEX_CACHE_BYTES: u64 = 64 << 20;
/// Chunks buffered between the network and the disk writer per upload.
const WRITE_QUEUE: usize = 8;

/// One store path (`M00`, `M01`, ...).
struct StorePath {
    index: u8,
    root: PathBuf,
    /// In-flight writes; on the same filesystem as `root/data`.
    tmp: PathBuf,
    /// Content key (BLAKE3 32 bytes + size 8 bytes BE) -> newline-separated file IDs holding that content.
    hashes: sled::Tree,
    /// File ID -> content key.
    ids: sled::Tree,
    /// Serialises commits, deletes and metadata writes on this path, so that dedup links and index updates
    /// never race with an unlink.
    lock: Mutex<()>,
}

impl StorePath {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The storage node's files on all its store paths, plus the dedup index.
pub struct Store {
    group: GroupName,
    paths: Vec<StorePath>,
    db: sled::Db,
    state_dir: PathBuf,
    /// Largest body accepted by [`Store::write_file`] (replicas).
    max_file_size: u64,
    file_count: AtomicU64,
}

/// A fully received, fsynced body waiting in a store path's temp directory. Dropping it removes the temp file.
pub struct Staged {
    store_path: u8,
    tmp: NamedTempFile,
    /// Bytes received.
    pub size: u64,
    /// CRC32 (IEEE) of the content.
    pub crc32: u32,
    hash: [u8; 32],
}

impl Staged {
    /// BLAKE3 hash of the content.
    pub fn content_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Store path index the body was staged on.
    pub fn store_path(&self) -> u8 {
        self.store_path
    }
}

/// Outcome of [`Store::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The file is now in place; `deduplicated` when it became a hard link to identical content.
    Created { deduplicated: bool },
    /// A file with that ID already existed; nothing was changed.
    AlreadyExists,
}

/// A metadata change.
#[derive(Debug, Clone)]
pub enum MetaUpdate {
    /// Overwrite everything.
    Replace(Metadata),
    /// Merge: `Some` sets a key, `None` deletes it.
    Merge(BTreeMap<String, Option<String>>),
}

/// What [`Store::reindex`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    /// File IDs indexed.
    pub files: u64,
    /// Distinct contents (inodes after dedup) among them.
    pub contents: u64,
}

fn content_key(hash: &[u8; 32], size: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(hash);
    key[32..].copy_from_slice(&size.to_be_bytes());
    key
}

fn parse_list(v: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(v)
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_reserved(id: &FileId) -> bool {
    id.name.as_str().ends_with(META_SUFFIX)
}

/// fsync a directory so that a rename or unlink in it is durable.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn mkdir_ok(p: &Path) -> io::Result<()> {
    match fs::create_dir(p) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Create `data/`; returns whether it is new (then the store path holds no file). The `XX/YY` levels are made
/// on first use by [`ensure_dir`]: creating all 65,536 up front costs seconds of syscalls per store path at every
/// start of a new node and buys nothing, since a commit needs only its own directory.
fn create_data_dirs(root: &Path) -> io::Result<bool> {
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
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().expect("data/XX/YY has a parent");
    ensure_dir(parent)?;
    mkdir_ok(dir)?;
    fsync_dir(parent)
}

/// Remove leftovers of writes interrupted by a crash.
fn clear_dir(dir: &Path) -> io::Result<()> {
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

fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((*h.finalize().as_bytes(), size))
}

/// Durably replace `target` with `bytes` (temp file in `tmp_dir`, fsync, rename, fsync dir).
fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
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

impl Store {
    /// Open (creating as needed) the store paths, the index, and rebuild the index from disk when it is new or
    /// empty. Blocking: creates up to 65536 directories per store path on first start.
    pub fn open_blocking(
        group: GroupName,
        roots: &[PathBuf],
        max_file_size: u64,
    ) -> Result<Arc<Store>> {
        if roots.is_empty() {
            return Err(StorageError::BadRequest(
                "at least one store path is required".into(),
            ));
        }
        if roots.len() > 256 {
            return Err(StorageError::BadRequest(
                "at most 256 store paths are supported".into(),
            ));
        }
        let state_dir = roots[0].join(".fdfs");
        fs::create_dir_all(&state_dir)?;
        let db = sled::Config::new()
            .path(state_dir.join("db"))
            .cache_capacity(INDEX_CACHE_BYTES)
            .open()?;
        let mut paths = Vec::with_capacity(roots.len());
        let mut all_fresh = true;
        for (i, root) in roots.iter().enumerate() {
            let index = u8::try_from(i).expect("checked above");
            fs::create_dir_all(root)?;
            let fresh = create_data_dirs(root)?;
            all_fresh &= fresh;
            let tmp = root.join(".fdfs").join("tmp");
            fs::create_dir_all(&tmp)?;
            clear_dir(&tmp)?;
            let sp = StorePath {
                index,
                root: root.clone(),
                tmp,
                hashes: db.open_tree(format!("hashes-{index:02X}"))?,
                ids: db.open_tree(format!("ids-{index:02X}"))?,
                lock: Mutex::new(()),
            };
            if fresh {
                // A brand-new (or wiped) store path holds nothing: drop whatever an old index said about it.
                sp.hashes.clear()?;
                sp.ids.clear()?;
            }
            paths.push(sp);
        }
        let store = Arc::new(Store {
            group,
            paths,
            db,
            state_dir,
            max_file_size,
            file_count: AtomicU64::new(0),
        });
        if all_fresh {
            // Nothing on disk to index.
            store.db.insert(INDEXED_KEY, &b"1"[..])?;
            store.db.flush()?;
        } else if store.db.get(INDEXED_KEY)?.is_none() {
            let report = store.reindex_blocking()?;
            tracing::info!(
                files = report.files,
                contents = report.contents,
                "index rebuilt from disk"
            );
        } else {
            store.recount();
        }
        Ok(store)
    }

    /// [`Store::open_blocking`] on the blocking pool.
    pub async fn open(
        group: GroupName,
        roots: Vec<PathBuf>,
        max_file_size: u64,
    ) -> Result<Arc<Store>> {
        tokio::task::spawn_blocking(move || Store::open_blocking(group, &roots, max_file_size))
            .await?
    }

    fn recount(&self) {
        let n: usize = self.paths.iter().map(|p| p.ids.len()).sum();
        self.file_count.store(n as u64, Ordering::Relaxed);
    }

    /// The group this node belongs to.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// Number of store paths.
    pub fn store_path_count(&self) -> usize {
        self.paths.len()
    }

    /// Node state directory (`<store path 0>/.fdfs`): the place for the binlog and sync positions.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The sled database (for other node state, e.g. sync positions).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Files (IDs) stored on this node, as indexed.
    pub fn file_count(&self) -> u64 {
        self.file_count.load(Ordering::Relaxed)
    }

    fn store_path(&self, index: u8) -> Result<&StorePath> {
        self.paths.get(usize::from(index)).ok_or_else(|| {
            StorageError::BadRequest(format!(
                "store path M{index:02X} does not exist on this node ({} configured)",
                self.paths.len()
            ))
        })
    }

    /// Check that an ID can live here: right group, existing store path, not a reserved (metadata) name.
    fn locate(&self, id: &FileId) -> Result<(&StorePath, PathBuf)> {
        if id.group != self.group {
            return Err(StorageError::BadRequest(format!(
                "file {id} belongs to group {}, this node serves {}",
                id.group, self.group
            )));
        }
        if is_reserved(id) {
            return Err(StorageError::NotFound(format!("no such file {id}")));
        }
        let Some(sp) = self.paths.get(usize::from(id.store_path)) else {
            return Err(StorageError::NotFound(format!("no such file {id}")));
        };
        let path = sp.root.join(id.relative_path());
        Ok((sp, path))
    }

    /// Absolute disk path of a file.
    pub fn path(&self, id: &FileId) -> Result<PathBuf> {
        self.locate(id).map(|(_, p)| p)
    }

    fn meta_path(&self, id: &FileId) -> Result<PathBuf> {
        let mut p = self.path(id)?;
        p.as_mut_os_string().push(META_SUFFIX);
        Ok(p)
    }

    /// Metadata of the file if it exists here (a regular file).
    pub fn stat_blocking(&self, id: &FileId) -> Result<Option<fs::Metadata>> {
        let path = match self.path(id) {
            Ok(p) => p,
            Err(StorageError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Store::stat_blocking`] on the blocking pool.
    pub async fn stat(self: &Arc<Self>, id: &FileId) -> Result<Option<fs::Metadata>> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.stat_blocking(&id)).await?
    }

    /// Whether the file exists here.
    pub async fn exists(self: &Arc<Self>, id: &FileId) -> Result<bool> {
        Ok(self.stat(id).await?.is_some())
    }

    /// Pick a random `XX/YY` directory for a new file.
    pub fn pick_dirs(&self) -> (u8, u8) {
        let mut rng = rand::rng();
        (rng.random(), rng.random())
    }

    /// Stream a body into a temp file on store path `store_path`, computing size, CRC32 and the content hash,
    /// rejecting it once it exceeds `limit` bytes; fsync it. On any error the temp file is gone when this returns.
    pub async fn receive<S, E>(&self, store_path: u8, body: S, limit: u64) -> Result<Staged>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let tmp_dir = self.store_path(store_path)?.tmp.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Bytes>>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> Result<Staged> {
            let mut tmp = tempfile::Builder::new()
                .prefix("up-")
                .tempfile_in(&tmp_dir)?;
            let mut crc = crc32fast::Hasher::new();
            let mut hash = blake3::Hasher::new();
            let mut size = 0u64;
            loop {
                match rx.blocking_recv() {
                    Some(Some(chunk)) => {
                        tmp.write_all(&chunk)?;
                        crc.update(&chunk);
                        hash.update(&chunk);
                        size += chunk.len() as u64;
                    }
                    Some(None) => break,
                    None => return Err(StorageError::BodyAborted("body ended early".into())),
                }
            }
            tmp.as_file().sync_all()?;
            Ok(Staged {
                store_path,
                tmp,
                size,
                crc32: crc.finalize(),
                hash: *hash.finalize().as_bytes(),
            })
        });
        let mut body = std::pin::pin!(body);
        let mut total = 0u64;
        let outcome: Result<()> = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    if total > limit {
                        break Err(StorageError::TooLarge { limit });
                    }
                    if tx.send(Some(chunk)).await.is_err() {
                        // The writer failed; its result says why.
                        break Ok(());
                    }
                }
                Some(Err(e)) => break Err(StorageError::BodyAborted(e.to_string())),
                None => {
                    let _ = tx.send(None).await;
                    break Ok(());
                }
            }
        };
        drop(tx);
        let written = writer.await?;
        outcome?;
        written
    }

    /// Put a staged body in place under `id` (durably, never replacing an existing file), deduplicating against
    /// identical content on the same store path, and index it. `mtime` is applied to a newly written inode.
    pub fn commit_blocking(
        &self,
        staged: Staged,
        id: &FileId,
        mtime: Option<SystemTime>,
    ) -> Result<Committed> {
        if is_reserved(id) {
            return Err(StorageError::BadRequest(format!(
                "file names ending in {META_SUFFIX:?} are reserved for metadata"
            )));
        }
        let (sp, target) = self.locate(id)?;
        if staged.store_path != id.store_path {
            return Err(StorageError::Internal(format!(
                "staged on M{:02X}, committing to M{:02X}",
                staged.store_path, id.store_path
            )));
        }
        let parent = target
            .parent()
            .expect("relative_path has a parent")
            .to_owned();
        let _guard = sp.lock();
        if fs::symlink_metadata(&target).is_ok() {
            return Ok(Committed::AlreadyExists);
        }
        ensure_dir(&parent)?;
        let key = content_key(&staged.hash, staged.size);
        let mut holders = Vec::new();
        let mut deduplicated = false;
        if let Some(v) = sp.hashes.get(key)? {
            for holder in parse_list(&v) {
                let Ok(hid) = holder.parse::<FileId>() else {
                    continue;
                };
                let hpath = sp.root.join(hid.relative_path());
                match fs::metadata(&hpath) {
                    Ok(m) if m.is_file() && m.len() == staged.size => holders.push((holder, hpath)),
                    _ => {} // stale entry: pruned below
                }
            }
            // All holders share one inode (or are equal copies): linking to the first live one suffices.
            if let Some((_, hpath)) = holders.first() {
                match fs::hard_link(hpath, &target) {
                    Ok(()) => deduplicated = true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Ok(Committed::AlreadyExists)
                    }
                    // e.g. EMLINK (too many links): store a separate copy instead.
                    Err(e) => tracing::debug!(error = %e, "dedup link failed, storing a copy"),
                }
            }
        }
        if !deduplicated {
            if let Some(t) = mtime {
                staged.tmp.as_file().set_modified(t)?;
            }
            if let Err(e) = staged.tmp.persist_noclobber(&target) {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    return Ok(Committed::AlreadyExists);
                }
                return Err(e.error.into());
            }
        }
        fsync_dir(&parent)?;
        let id_str = id.to_string();
        let mut list: Vec<String> = holders.into_iter().map(|(h, _)| h).collect();
        list.push(id_str.clone());
        sp.hashes.insert(key, list.join("\n").into_bytes())?;
        sp.ids.insert(id_str.as_bytes(), &key[..])?;
        self.db.flush()?;
        self.file_count.fetch_add(1, Ordering::Relaxed);
        Ok(Committed::Created { deduplicated })
    }

    /// [`Store::commit_blocking`] on the blocking pool.
    pub async fn commit(
        self: &Arc<Self>,
        staged: Staged,
        id: &FileId,
        mtime: Option<SystemTime>,
    ) -> Result<Committed> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.commit_blocking(staged, &id, mtime)).await?
    }

    /// Durably write a file under a known ID (replicas): stream, check size and CRC32 against the ID (for master
    /// files, whose name encodes them), commit. An existing file is left alone ([`Committed::AlreadyExists`]).
    pub async fn write_file<S, E>(
        self: &Arc<Self>,
        id: &FileId,
        body: S,
        mtime: Option<SystemTime>,
    ) -> Result<Committed>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if is_reserved(id) {
            return Err(StorageError::BadRequest(format!(
                "file names ending in {META_SUFFIX:?} are reserved for metadata"
            )));
        }
        self.locate(id)?;
        if self.exists(id).await? {
            return Ok(Committed::AlreadyExists);
        }
        let staged = self
            .receive(id.store_path, body, self.max_file_size)
            .await?;
        if id.name.prefix().is_none() {
            let info = id.info();
            if info.size != staged.size || info.crc32 != staged.crc32 {
                return Err(StorageError::BadRequest(format!(
                    "content does not match {id}: got {} bytes crc32 {:08x}, the id says {} bytes crc32 {:08x}",
                    staged.size, staged.crc32, info.size, info.crc32
                )));
            }
        }
        self.commit(staged, id, mtime).await
    }

    /// Delete a file and its metadata; `false` when it did not exist. Other IDs sharing the content stay intact.
    pub fn remove_blocking(&self, id: &FileId) -> Result<bool> {
        let (sp, path) = match self.locate(id) {
            Ok(x) => x,
            Err(StorageError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = self.meta_path(id)?;
        let _guard = sp.lock();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match fs::remove_file(&meta) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        fsync_dir(path.parent().expect("relative_path has a parent"))?;
        let id_str = id.to_string();
        if let Some(key) = sp.ids.remove(id_str.as_bytes())? {
            if let Some(v) = sp.hashes.get(&key)? {
                let rest: Vec<String> = parse_list(&v)
                    .into_iter()
                    .filter(|h| *h != id_str)
                    .collect();
                if rest.is_empty() {
                    sp.hashes.remove(&key)?;
                } else {
                    sp.hashes.insert(&key, rest.join("\n").into_bytes())?;
                }
            }
        }
        self.db.flush()?;
        let _ = self
            .file_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        Ok(true)
    }

    /// [`Store::remove_blocking`] on the blocking pool.
    pub async fn remove(self: &Arc<Self>, id: &FileId) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.remove_blocking(&id)).await?
    }

    fn read_meta(&self, id: &FileId) -> Result<Metadata> {
        match fs::read(self.meta_path(id)?) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StorageError::Internal(format!("corrupt metadata file for {id}: {e}"))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Metadata::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Metadata of a file, `None` when the file does not exist here (empty when it has none).
    pub fn get_meta_blocking(&self, id: &FileId) -> Result<Option<Metadata>> {
        if self.stat_blocking(id)?.is_none() {
            return Ok(None);
        }
        self.read_meta(id).map(Some)
    }

    /// [`Store::get_meta_blocking`] on the blocking pool.
    pub async fn get_meta(self: &Arc<Self>, id: &FileId) -> Result<Option<Metadata>> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.get_meta_blocking(&id)).await?
    }

    /// Change a file's metadata durably and return the result. 404 when the file does not exist here.
    pub fn set_meta_blocking(&self, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        let (sp, _) = self.locate(id)?;
        let _guard = sp.lock();
        if self.stat_blocking(id)?.is_none() {
            return Err(StorageError::NotFound(format!("no such file {id}")));
        }
        let meta = match update {
            MetaUpdate::Replace(m) => m,
            MetaUpdate::Merge(changes) => {
                let mut m = self.read_meta(id)?;
                for (k, v) in changes {
                    match v {
                        Some(v) => m.insert(k, v),
                        None => m.remove(&k),
                    };
                }
                m
            }
        };
        let path = self.meta_path(id)?;
        if meta.is_empty() {
            match fs::remove_file(&path) {
                Ok(()) => fsync_dir(path.parent().expect("has a parent"))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let bytes = serde_json::to_vec(&meta)
                .map_err(|e| StorageError::Internal(format!("encoding metadata: {e}")))?;
            write_atomic(&sp.tmp, &path, &bytes)?;
        }
        Ok(meta)
    }

    /// [`Store::set_meta_blocking`] on the blocking pool.
    pub async fn set_meta(self: &Arc<Self>, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        let (this, id) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.set_meta_blocking(&id, update)).await?
    }

    /// Visit every file on disk of one store path (metadata files and foreign names skipped), in directory
    /// order. This is the ground truth the index is rebuilt from.
    pub fn walk_disk_blocking(
        &self,
        store_path: u8,
        mut visit: impl FnMut(FileId, &Path, &fs::Metadata) -> Result<()>,
    ) -> Result<()> {
        let sp = self.store_path(store_path)?;
        let data = sp.root.join("data");
        for dir1 in 0..=255u8 {
            for dir2 in 0..=255u8 {
                let dir = data.join(format!("{dir1:02X}")).join(format!("{dir2:02X}"));
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if name.ends_with(META_SUFFIX) {
                        continue;
                    }
                    let Ok(name) = name.parse() else {
                        tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a file id");
                        continue;
                    };
                    let id = FileId {
                        group: self.group.clone(),
                        store_path,
                        dir1,
                        dir2,
                        name,
                    };
                    let path = sp.root.join(id.relative_path());
                    let meta = fs::symlink_metadata(&path)?;
                    if !meta.is_file() {
                        continue;
                    }
                    visit(id, &path, &meta)?;
                }
            }
        }
        Ok(())
    }

    /// Rebuild the dedup index of every store path from the files on disk.
    pub fn reindex_blocking(&self) -> Result<ReindexReport> {
        let mut report = ReindexReport::default();
        for sp in &self.paths {
            let _guard = sp.lock();
            sp.hashes.clear()?;
            sp.ids.clear()?;
            // Keys of inodes with several links, so shared content is hashed once.
            let mut by_inode: HashMap<(u64, u64), [u8; 40]> = HashMap::new();
            self.walk_disk_blocking(sp.index, |id, path, meta| {
                let inode = (meta.dev(), meta.ino());
                let key = match by_inode.get(&inode) {
                    Some(k) => *k,
                    None => {
                        let (hash, size) = hash_file(path)?;
                        let k = content_key(&hash, size);
                        if meta.nlink() > 1 {
                            by_inode.insert(inode, k);
                        }
                        k
                    }
                };
                let id_str = id.to_string();
                let mut list = match sp.hashes.get(key)? {
                    Some(v) => parse_list(&v),
                    None => {
                        report.contents += 1;
                        Vec::new()
                    }
                };
                list.push(id_str.clone());
                sp.hashes.insert(key, list.join("\n").into_bytes())?;
                sp.ids.insert(id_str.as_bytes(), &key[..])?;
                report.files += 1;
                Ok(())
            })?;
        }
        self.db.insert(INDEXED_KEY, &b"1"[..])?;
        self.db.flush()?;
        self.recount();
        Ok(report)
    }

    /// [`Store::reindex_blocking`] on the blocking pool.
    pub async fn reindex(self: &Arc<Self>) -> Result<ReindexReport> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reindex_blocking()).await?
    }

    /// Every file ID in the index (all store paths), e.g. for a full sync to a new peer. Blocking (sled).
    pub fn indexed_ids(&self) -> impl Iterator<Item = FileId> + '_ {
        self.paths.iter().flat_map(|sp| {
            sp.ids.iter().keys().filter_map(|k| {
                k.ok()
                    .and_then(|k| std::str::from_utf8(&k).ok().and_then(|s| s.parse().ok()))
            })
        })
    }

    /// Indexed file IDs after `after` in ID (byte) order, all store paths: a page of a listing starts here
    /// without walking what came before. Blocking (sled).
    pub fn indexed_ids_after<'a>(&'a self, after: &str) -> impl Iterator<Item = FileId> + 'a {
        let start = after.as_bytes().to_vec();
        self.paths.iter().flat_map(move |sp| {
            sp.ids
                .range((
                    std::ops::Bound::Excluded(start.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .keys()
                .filter_map(|k| {
                    k.ok()
                        .and_then(|k| std::str::from_utf8(&k).ok().and_then(|s| s.parse().ok()))
                })
        })
    }

    /// Space of each store path. Blocking (statvfs).
    pub fn stats_blocking(&self) -> Vec<StorePathStat> {
        self.paths
            .iter()
            .map(|sp| StorePathStat {
                index: sp.index,
                total_bytes: fs2::total_space(&sp.root).unwrap_or(0),
                free_bytes: fs2::available_space(&sp.root).unwrap_or(0),
            })
            .collect()
    }

    /// [`Store::stats_blocking`] on the blocking pool.
    pub async fn stats(self: &Arc<Self>) -> Result<Vec<StorePathStat>> {
        let this = self.clone();
        Ok(tokio::task::spawn_blocking(move || this.stats_blocking()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdfs_common::{FileName, NameInfo};

    fn body(bytes: &'static [u8]) -> impl Stream<Item = std::result::Result<Bytes, io::Error>> {
        futures_util::stream::iter(
            bytes
                .chunks(3)
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    async fn put(store: &Arc<Store>, sp: u8, bytes: &'static [u8]) -> FileId {
        let staged = store.receive(sp, body(bytes), 1 << 20).await.unwrap();
        let info = NameInfo {
            source_id: 7,
            created: 1_700_000_000,
            size: staged.size,
            crc32: staged.crc32,
        };
        let (dir1, dir2) = store.pick_dirs();
        let id = FileId {
            group: "g1".parse().unwrap(),
            store_path: sp,
            dir1,
            dir2,
            name: FileName::generate(&info, Some("txt")).unwrap(),
        };
        let c = store.commit(staged, &id, None).await.unwrap();
        assert!(matches!(c, Committed::Created { .. }));
        id
    }

    #[tokio::test]
    async fn dedup_remove_and_reindex() {
        let dir = tempfile::tempdir().unwrap();
        let roots = vec![dir.path().join("a"), dir.path().join("b")];
        let store = Store::open("g1".parse().unwrap(), roots.clone(), 1 << 20)
            .await
            .unwrap();
        let a = put(&store, 0, b"same content").await;
        let b = put(&store, 0, b"same content").await;
        let c = put(&store, 1, b"same content").await;
        let ino = |id: &FileId| fs::metadata(store.path(id).unwrap()).unwrap().ino();
        assert_eq!(ino(&a), ino(&b));
        assert_ne!(ino(&a), ino(&c), "no links across store paths");
        assert_eq!(store.file_count(), 3);

        store
            .set_meta(&a, MetaUpdate::Replace([("k".into(), "v".into())].into()))
            .await
            .unwrap();
        // Metadata files are not files.
        let mut seen = Vec::new();
        store
            .walk_disk_blocking(0, |id, _, _| {
                seen.push(id);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), 2);

        // Rebuild from disk: same answers.
        let report = store.reindex().await.unwrap();
        assert_eq!(
            report,
            ReindexReport {
                files: 3,
                contents: 2
            }
        );
        assert_eq!(store.indexed_ids().count(), 3);

        assert!(store.remove(&a).await.unwrap());
        assert!(!store.remove(&a).await.unwrap());
        assert!(store.exists(&b).await.unwrap());
        assert_eq!(store.file_count(), 2);
        // New identical content links to the survivor.
        let d = put(&store, 0, b"same content").await;
        assert_eq!(ino(&b), ino(&d));
    }

    #[tokio::test]
    async fn oversized_and_aborted_bodies_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("g1".parse().unwrap(), vec![dir.path().to_owned()], 4)
            .await
            .unwrap();
        let err = store.receive(0, body(b"too long"), 4).await.err().unwrap();
        assert!(matches!(err, StorageError::TooLarge { limit: 4 }));
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(io::Error::other("reset")),
        ]);
        let err = store.receive(0, broken, 100).await.err().unwrap();
        assert!(matches!(err, StorageError::BodyAborted(_)));
        let tmp = dir.path().join(".fdfs").join("tmp");
        assert_eq!(fs::read_dir(tmp).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn replica_write_checks_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("g1".parse().unwrap(), vec![dir.path().to_owned()], 1 << 20)
            .await
            .unwrap();
        let data = b"replicated bytes";
        let info = NameInfo {
            source_id: 9,
            created: 1_700_000_000,
            size: data.len() as u64,
            crc32: crc32fast::hash(data),
        };
        let id = FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: 1,
            dir2: 2,
            name: FileName::generate(&info, None).unwrap(),
        };
        let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let c = store
            .write_file(&id, body(data), Some(mtime))
            .await
            .unwrap();
        assert_eq!(
            c,
            Committed::Created {
                deduplicated: false
            }
        );
        let m = store.stat(&id).await.unwrap().unwrap();
        assert_eq!(m.modified().unwrap(), mtime);
        let again = store.write_file(&id, body(data), None).await.unwrap();
        assert_eq!(again, Committed::AlreadyExists);
        let other = FileId {
            dir2: 3,
            ..id.clone()
        };
        let err = store
            .write_file(&other, body(b"wrong"), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StorageError::BadRequest(_)));
        // The metadata file of a master without extension is not addressable as a file.
        let meta_like: FileId = format!("{id}{META_SUFFIX}").parse().unwrap();
        assert!(!store.exists(&meta_like).await.unwrap());
    }
}
