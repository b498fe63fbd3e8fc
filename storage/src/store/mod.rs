//! The on-disk store: every byte a storage node keeps goes through [`Store`].
//!
//! Layout of each store path: `data/XX/YY/<name>` (256x256 directories created at start), the file's metadata
//! next to it as `<name>-m` (a JSON object), and `.fdfs/tmp/` for in-flight writes (same filesystem, so the final
//! rename is atomic). Store path 0 also holds `.fdfs/index`, the dedup/listing index (fjall), and `.fdfs/db` (sled,
//! other node state), and is the node's state directory.
//!
//! Disk paths are built only from a validated [`FileId`] through [`FileId::relative_path`]. Files are created
//! with [`StoreOptions::file_mode`] and directories with [`StoreOptions::dir_mode`] (0644 / 0755 by default, so an
//! nginx worker running as another user can serve them).
//!
//! ## Durability and group commit
//!
//! Every change is recorded in a log before it touches the data directories: changes accepted from clients in
//! the node's binlog ([`binlog`], which the sync workers push to peers), replicas and deletes
//! received from peers in the store's own journal (`.fdfs/journal/`, same format, only replayed here). Both are
//! group-committed: concurrent writers share one fsync of the log. A new file goes:
//!
//! 1. body streamed to a temp file in `.fdfs/tmp/`, fsynced (no lock);
//! 2. its metadata (if any) to another temp file, fsynced;
//! 3. the `Upload` record appended and made durable with everyone else's (group commit, no lock);
//! 4. under the store path's lock, only: the exists-check, the metadata rename, the link (dedup) or rename of the
//!    file (never replacing one);
//! 5. fsync of the file's directory (no lock), then the sled index updated (never flushed per upload);
//! 6. the record finished: the log's *applied* watermark (every record at or before it is durable and finished)
//!    becomes the index's checkpoint, stored in the index's keyspace after the changes it covers (a crash keeps a
//!    prefix of the keyspace's writes); the index is made durable before binlog pruning.
//!
//! The record goes first so that every file that can be in place has a durable record: a crash after step 3
//! leaves a record whose file may or may not be in place, and the replay at start (records past the checkpoint)
//! indexes the file if it is there and forgets it if not (it was never acknowledged). The other order would let a
//! crash leave a file in place that no record or index entry knows about: invisible to catch-up listings and
//! never pushed. Readers of the binlog (sync workers) only see records up to the applied watermark, so a record
//! is never pushed before its file is in place. A delete is recorded first too, then unlinked: replay finishes an
//! interrupted delete (unless the same ID was uploaded again after it). The acknowledgement waits for step 6.
//!
//! Dedup (per store path, since hard links cannot cross filesystems): the index maps a content key
//! (truncated BLAKE3 hash) to the IDs holding that content, and each ID back to its key ([`dedup`]). A second
//! upload of identical bytes becomes a hard link to the existing inode under its own new ID; deleting one ID
//! unlinks only its own name. The index is a cache of what is on disk: [`Store::reindex`] rebuilds it by walking the data directories
//! and runs automatically when the database is new or empty.
//!
//! All methods that touch the disk or the index come in two flavours: `*_blocking` (call them from blocking code) and
//! async wrappers that run them on the blocking pool.

mod adopt;
pub mod binlog;
mod commit;
mod dedup;
mod import;
pub mod layout;
mod listing;
mod meta;
mod replay;
mod staging;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fdfs_common::wire::StorePathStat;
use fdfs_common::{FileId, GroupName};
use rand::Rng;

use crate::error::{Result, StorageError};
use binlog::{Binlog, DEFAULT_SEGMENT_BYTES};
use layout::{clear_dir, create_data_dirs};

pub use adopt::APPENDER_DIR;
pub use commit::{Committed, Incoming, NewFile, Origin, Stored};
pub use import::check_against_id;
pub use listing::ReindexReport;
pub use meta::MetaUpdate;
pub use staging::Staged;

/// Suffix of the metadata file kept next to each file.
pub const META_SUFFIX: &str = "-m";
/// Key (in the index's `meta` partition) marking that the index has been built from disk at least once; an index
/// of the formats kept in sled before has no such mark and is rebuilt.
pub(crate) const INDEXED_KEY: &[u8] = b"indexed";
/// sled's page cache (sled keeps node state other than the index: sync positions, ...).
const SLED_CACHE_BYTES: u64 = 16 << 20;

/// One store path (`M00`, `M01`, ...).
pub(crate) struct StorePath {
    index: u8,
    root: PathBuf,
    /// In-flight writes; on the same filesystem as `root/data`.
    tmp: PathBuf,
    /// Content key + compact file ID -> nothing (see [`dedup`]).
    holders: fjall::PartitionHandle,
    /// Compact file ID -> content key.
    ids: fjall::PartitionHandle,
    /// Serialises commits, deletes and metadata writes on this path, so that dedup links and index updates
    /// never race with an unlink.
    lock: Mutex<()>,
    /// Serialises the read-modify-write of an ID's index entries ([`dedup`]).
    index_lock: Mutex<()>,
}

impl StorePath {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index_lock(&self) -> MutexGuard<'_, ()> {
        self.index_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Largest body accepted by [`Store::write_file`] (replicas).
    pub max_file_size: u64,
    /// Segment size of the binlog and the journal.
    pub segment_bytes: u64,
    /// Permission bits of stored files and their metadata.
    pub file_mode: u32,
    /// Permission bits of the data directories.
    pub dir_mode: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_file_size: fdfs_common::fileid::MAX_FILE_SIZE,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            file_mode: 0o644,
            dir_mode: 0o755,
        }
    }
}

/// Keys (in the index's `meta` partition) of the index checkpoints: the last record of each log whose effect is
/// in the index.
const CHECKPOINT_BINLOG: &[u8] = b"checkpoint-binlog";
/// Files placed in one `XX/YY` directory before the next ([`Store::pick_dirs`]); FastDFS's
/// `file_distribute_rotate_count` default.
pub const DIR_ROTATE: u64 = 100;
const CHECKPOINT_JOURNAL: &[u8] = b"checkpoint-journal";

/// The storage node's files on all its store paths, plus the dedup index and the logs that record changes.
pub struct Store {
    group: GroupName,
    paths: Vec<StorePath>,
    /// The dedup/listing index of every store path, and its checkpoints ([`dedup`]).
    index: fjall::Keyspace,
    /// Marks and checkpoints of the index.
    index_meta: fjall::PartitionHandle,
    /// Serialises the read-max-write of a checkpoint.
    checkpoint_lock: Mutex<()>,
    /// Node state other than the index.
    db: sled::Db,
    state_dir: PathBuf,
    /// Largest body accepted by [`Store::write_file`] (replicas).
    max_file_size: u64,
    options: StoreOptions,
    file_count: AtomicU64,
    /// New files placed so far by [`Store::pick_dirs`], counted from a random start.
    placed: AtomicU64,
    /// Directory fsyncs of commits, batched.
    dir_sync: layout::DirSync,
    /// Changes accepted from clients (read by the sync workers).
    binlog: Arc<Binlog>,
    /// Changes received from peers.
    journal: Arc<Binlog>,
    /// Dropped with the store, which closes the channel: see [`Store::closed`].
    alive: tokio::sync::watch::Sender<()>,
}

fn decode_u64(v: &[u8]) -> u64 {
    v.try_into().map_or(0, u64::from_be_bytes)
}

pub(crate) fn is_reserved(id: &FileId) -> bool {
    id.name.as_str().ends_with(META_SUFFIX)
}

impl Store {
    /// Open (creating as needed) the store paths, the index, and rebuild the index from disk when it is new or
    /// empty. Blocking. `data/XX/YY` directories are made on first use.
    pub fn open_blocking(
        group: GroupName,
        roots: &[PathBuf],
        max_file_size: u64,
    ) -> Result<Arc<Store>> {
        let options = StoreOptions {
            max_file_size,
            ..StoreOptions::default()
        };
        Store::open_with_blocking(group, roots, options)
    }

    /// Open with every option; then replay the logs past the index's checkpoints (see the module doc).
    pub fn open_with_blocking(
        group: GroupName,
        roots: &[PathBuf],
        options: StoreOptions,
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
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        let index = dedup::open_keyspace(&state_dir.join("index"))?;
        let index_meta = index.open_partition("meta", Default::default())?;
        let mut paths = Vec::with_capacity(roots.len());
        let mut all_fresh = true;
        for (i, root) in roots.iter().enumerate() {
            let i = u8::try_from(i).expect("checked above");
            fs::create_dir_all(root)?;
            let fresh = create_data_dirs(root, options.dir_mode)?;
            all_fresh &= fresh;
            let tmp = root.join(".fdfs").join("tmp");
            fs::create_dir_all(&tmp)?;
            clear_dir(&tmp)?;
            let (holders, ids) = dedup::open_partitions(&index, i)?;
            if fresh {
                // A brand-new (or wiped) store path holds nothing: drop whatever an old index said about it.
                dedup::clear(&index, &holders)?;
                dedup::clear(&index, &ids)?;
            }
            paths.push(StorePath {
                index: i,
                root: root.clone(),
                tmp,
                holders,
                ids,
                lock: Mutex::new(()),
                index_lock: Mutex::new(()),
            });
        }
        let binlog = Arc::new(Binlog::open(
            &state_dir.join("binlog"),
            options.segment_bytes,
        )?);
        let journal = Arc::new(Binlog::open(
            &state_dir.join("journal"),
            options.segment_bytes,
        )?);
        let store = Arc::new(Store {
            group,
            paths,
            index,
            index_meta,
            checkpoint_lock: Mutex::new(()),
            db,
            state_dir,
            max_file_size: options.max_file_size,
            options,
            file_count: AtomicU64::new(0),
            placed: AtomicU64::new(u64::from(rand::rng().random::<u16>()) * DIR_ROTATE),
            dir_sync: layout::DirSync::default(),
            binlog,
            journal,
            alive: tokio::sync::watch::channel(()).0,
        });
        if all_fresh {
            // Nothing on disk to index.
            store.index_meta.insert(INDEXED_KEY, b"1")?;
            store.set_checkpoints_to_end()?;
            dedup::persist(&store.index)?;
        } else if store.index_meta.get(INDEXED_KEY)?.is_none() {
            let report = store.reindex_blocking()?;
            tracing::info!(
                files = report.files,
                contents = report.contents,
                "index rebuilt from disk"
            );
        } else {
            store.replay_blocking()?;
        }
        Ok(store)
    }

    /// [`Store::open_with_blocking`] on the blocking pool.
    pub async fn open_with(
        group: GroupName,
        roots: Vec<PathBuf>,
        options: StoreOptions,
    ) -> Result<Arc<Store>> {
        tokio::task::spawn_blocking(move || Store::open_with_blocking(group, &roots, options))
            .await?
    }

    /// Largest body accepted from peers.
    pub fn max_file_size(&self) -> u64 {
        self.max_file_size
    }

    /// The node's binlog (changes accepted from clients), for the sync engine.
    pub fn binlog(&self) -> &Arc<Binlog> {
        &self.binlog
    }

    /// Resolves once the store is dropped (nothing holds it any more, the index's lock is released), so that
    /// the same store paths can be opened again.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut alive = self.alive.subscribe();
        async move { while alive.changed().await.is_ok() {} }
    }

    fn log(&self, origin: Origin) -> &Arc<Binlog> {
        match origin {
            Origin::Client => &self.binlog,
            Origin::Peer => &self.journal,
        }
    }

    fn checkpoint_key(origin: Origin) -> &'static [u8] {
        match origin {
            Origin::Client => CHECKPOINT_BINLOG,
            Origin::Peer => CHECKPOINT_JOURNAL,
        }
    }

    /// End a record begun by a commit or delete and move the index checkpoint to the log's applied watermark
    /// (written after the index changes it covers, not persisted). A failure only means more replay at the next
    /// start.
    fn finish(&self, origin: Origin, seq: u64) {
        let applied = self.log(origin).finish(seq);
        let key = Self::checkpoint_key(origin);
        let _guard = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = self.index_meta.get(key).and_then(|old| {
            let old = old.map_or(0, |v| decode_u64(&v));
            if applied > old {
                self.index_meta.insert(key, applied.to_be_bytes())
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "index checkpoint not updated");
        }
    }

    fn checkpoint(&self, origin: Origin) -> Result<Option<u64>> {
        Ok(self
            .index_meta
            .get(Self::checkpoint_key(origin))?
            .map(|v| decode_u64(&v)))
    }

    /// Both checkpoints at their log's applied watermark (the index holds everything on disk).
    pub(super) fn set_checkpoints_to_end(&self) -> Result<()> {
        for origin in [Origin::Client, Origin::Peer] {
            let end = self.log(origin).applied();
            self.index_meta
                .insert(Self::checkpoint_key(origin), end.to_be_bytes())?;
        }
        Ok(())
    }

    /// Flush the index and drop journal segments it covers. Returns the binlog checkpoint now durable: binlog
    /// records after it must be kept for the replay. Blocking.
    pub fn flush_index(&self) -> Result<u64> {
        dedup::persist(&self.index)?;
        self.db.flush()?;
        if let Some(j) = self.checkpoint(Origin::Peer)? {
            self.journal.prune(j)?;
        }
        Ok(self.checkpoint(Origin::Client)?.unwrap_or(0))
    }

    /// Create a data directory (and its parents) if needed, durably, with the configured mode.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        layout::ensure_dir(dir, self.options.dir_mode)
    }

    /// A small fsynced temp file with the configured file mode, to be renamed into place.
    fn stage_small(
        &self,
        tmp_dir: &Path,
        bytes: &[u8],
        mtime: std::time::SystemTime,
    ) -> io::Result<tempfile::NamedTempFile> {
        use std::io::Write;
        let mut tmp = layout::temp_file(tmp_dir, "meta-", self.options.file_mode)?;
        tmp.write_all(bytes)?;
        tmp.as_file().set_modified(mtime)?;
        tmp.as_file().sync_all()?;
        Ok(tmp)
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

    /// Count the indexed IDs (one scan of each `ids` partition).
    pub(crate) fn recount(&self) -> Result<()> {
        let mut n = 0;
        for p in &self.paths {
            n += p.ids.len()?;
        }
        self.file_count.store(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Permission bits given to stored files.
    pub fn file_mode(&self) -> u32 {
        self.options.file_mode
    }

    /// The group this node belongs to.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// Whether `id` is a file of this node's group.
    pub fn owns(&self, id: &FileId) -> bool {
        id.group == self.group
    }

    /// [`Store::owns`], or the 400 every HTTP route answers for a file of another group.
    pub fn check_owns(&self, id: &FileId) -> Result<()> {
        if self.owns(id) {
            return Ok(());
        }
        Err(StorageError::BadRequest(format!(
            "file {id} belongs to group {}, this node serves {}",
            id.group, self.group
        )))
    }

    /// Number of store paths.
    pub fn store_path_count(&self) -> usize {
        self.paths.len()
    }

    /// Node state directory (`<store path 0>/.fdfs`): the place for the binlog and sync positions.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The sled database (for node state other than the index, e.g. sync positions).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Files (IDs) stored on this node, as indexed.
    pub fn file_count(&self) -> u64 {
        self.file_count.load(Ordering::Relaxed)
    }

    pub(crate) fn store_path(&self, index: u8) -> Result<&StorePath> {
        self.paths.get(usize::from(index)).ok_or_else(|| {
            StorageError::BadRequest(format!(
                "store path M{index:02X} does not exist on this node ({} configured)",
                self.paths.len()
            ))
        })
    }

    /// Check that an ID can live here: right group, existing store path, not a reserved (metadata) name.
    pub(crate) fn locate(&self, id: &FileId) -> Result<(&StorePath, PathBuf)> {
        self.check_owns(id)?;
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

    /// The `XX/YY` directory of a new file: [`DIR_ROTATE`] files in one directory, then the next one, round
    /// robin over all 65536 (FastDFS's `file_distribute_path_mode = 0`). Neighbouring uploads share a directory,
    /// so a directory is created (and its parent fsynced) once per [`DIR_ROTATE`] files instead of for almost
    /// every upload of a young store, as a random pick did. The start is random, so restarts spread too.
    pub fn pick_dirs(&self) -> (u8, u8) {
        let n = self.placed.fetch_add(1, Ordering::Relaxed) / DIR_ROTATE;
        let [hi, lo] = ((n % 65536) as u16).to_be_bytes();
        (hi, lo)
    }

    /// Space of each store path. Blocking (statvfs).
    pub fn stats_blocking(&self) -> Vec<StorePathStat> {
        self.paths
            .iter()
            .map(|sp| StorePathStat {
                index: sp.index,
                total_bytes: fs2::total_space(&sp.root).unwrap_or(0),
                free_bytes: fs2::available_space(&sp.root).unwrap_or(0),
                failed: None,
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
    use bytes::Bytes;
    use fdfs_common::{FileName, NameInfo};
    use futures_util::Stream;
    use std::os::unix::fs::MetadataExt;
    use std::time::SystemTime;

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
        let c = store
            .commit(staged, &id, Incoming::client(Default::default()))
            .await
            .unwrap();
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
    async fn files_and_directories_are_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("g1".parse().unwrap(), vec![dir.path().to_owned()], 1 << 20)
            .await
            .unwrap();
        let staged = store.receive(0, body(b"for nginx"), 1 << 20).await.unwrap();
        let info = NameInfo {
            source_id: 7,
            created: 1_700_000_000,
            size: staged.size,
            crc32: staged.crc32,
        };
        let id = FileId {
            group: "g1".parse().unwrap(),
            store_path: 0,
            dir1: 0xAB,
            dir2: 0xCD,
            name: FileName::generate(&info, Some("txt")).unwrap(),
        };
        let meta = [("k".to_owned(), "v".to_owned())].into();
        store
            .commit(staged, &id, Incoming::client(meta))
            .await
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let path = store.path(&id).unwrap();
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(&store.meta_path(&id).unwrap()), 0o644);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        assert_eq!(mode(path.parent().unwrap().parent().unwrap()), 0o755);
        assert_eq!(mode(&dir.path().join("data")), 0o755);
        assert_eq!(
            store.get_meta(&id).await.unwrap().unwrap()["k"],
            "v",
            "metadata stored with the file"
        );
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
            .write_file(
                &id,
                body(data),
                Some(mtime),
                fdfs_common::wire::Metadata::new(),
            )
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
        let again = store
            .write_file(&id, body(data), None, fdfs_common::wire::Metadata::new())
            .await
            .unwrap();
        assert_eq!(again, Committed::AlreadyExists);
        let other = FileId {
            dir2: 3,
            ..id.clone()
        };
        let err = store
            .write_file(
                &other,
                body(b"wrong"),
                None,
                fdfs_common::wire::Metadata::new(),
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StorageError::BadRequest(_)));
        // The metadata file of a master without extension is not addressable as a file.
        let meta_like: FileId = format!("{id}{META_SUFFIX}").parse().unwrap();
        assert!(!store.exists(&meta_like).await.unwrap());
    }
}
