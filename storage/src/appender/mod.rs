//! Appender files: uploads that grow by appends at an expected offset and become an ordinary file when their
//! last byte arrives (FastDFS's appender file; the gateway's tus routes and, later, the FastDFS protocol's
//! appender commands sit on this plain API; the `/v1/appender` routes in [`routes`] are thin wrappers).
//!
//! Each lives in `<store path>/.fdfs/appender/` as `<name>.data` (the bytes) and `<name>.json` (its state:
//! durable offset, running CRC32, final length, metadata, expiry, and once finished the file it became). It is
//! outside `data/`: not served, not listed, not indexed, not replicated while partial.
//!
//! An append streams into the data file at the durable offset (a longer data file, from a crash before the
//! state was written, is cut back first), fsyncs it, then replaces the state atomically (temp file, fsync,
//! rename, fsync the directory). A node restart therefore resumes at the last acknowledged offset. A chunk with
//! a checksum that does not match, or that would pass the final length, is cut off again and the offset stays;
//! a chunk whose body breaks off keeps what arrived (tus asks servers to keep it), unless it carried a checksum.
//!
//! Finishing: the file is read once (CRC32 checked against the running one, BLAKE3 for dedup), its ID is
//! written into the state (`finishing`), then it goes through the normal commit (rename into `data/`, dedup,
//! index, binlog) and is pushed from disk to `write_quorum - 1` peers ([`crate::write::Writes::commit_new`]).
//! A crash in between is resolved on the next look-up: the ID is either in the store (done) or not (the data
//! file is still there and the finish runs again). A finished upload's state stays until it expires, so the
//! answer can be asked for again.
//!
//! Expired uploads (finished or not) are removed by [`Appenders::sweep`], which the node runs periodically.

pub mod routes;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fdfs_common::appender::{valid_name, AppenderInfo, Checksum, ChecksumAlgorithm, NewAppender};
use fdfs_common::wire::{Metadata, UploadResult};
use fdfs_common::{content_type_for, FileId};
use futures_util::{Stream, StreamExt};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::store::layout::write_atomic;
use crate::store::Store;
use crate::write::Writes;

/// How often expired appender files are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Chunks buffered between the network and the disk writer of one append.
const WRITE_QUEUE: usize = 8;
/// A data file without a state file (a crash during creation) older than this is removed by the sweep.
const ORPHAN_SECS: u64 = 3600;

/// The persisted state of one appender file (`<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    offset: u64,
    length: Option<u64>,
    /// CRC32 of the first `offset` bytes (the running state: `crc32fast` continues from it).
    crc32: u32,
    created: u64,
    expires: u64,
    /// Lifetime given at creation; a finished upload's answer is kept this long after the finish.
    ttl: u64,
    ext: Option<String>,
    filename: Option<String>,
    meta: Metadata,
    owner: Option<String>,
    /// The ID being committed (set before the commit starts).
    finishing: Option<FileId>,
    file: Option<UploadResult>,
}

/// An append: where the client believes the upload is, the final length if it declares it now, and the
/// chunk's checksum.
#[derive(Debug, Clone, Default)]
pub struct Append {
    /// Offset the client expects the upload to be at; a different one is a 409.
    pub offset: u64,
    /// Total length, for an upload created without one; `None`: not declared with this append.
    pub length: Option<u64>,
    /// Checksum the chunk must match; `None`: not checked.
    pub checksum: Option<Checksum>,
}

/// The appender files of a node.
pub struct Appenders {
    store: Arc<Store>,
    writes: Writes,
    /// Node id encoded in finished files' names.
    node_id: u32,
    /// Public base URL of downloads (for the finished upload's answer).
    public_url: String,
    /// Largest file an appender may grow to.
    max_file_size: u64,
    file_mode: u32,
    /// Names with an append or finish running (one at a time per file).
    busy: Mutex<HashSet<String>>,
}

/// Marks an appender busy while alive.
struct Busy<'a> {
    set: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

enum Msg {
    Data(Bytes),
    End,
    /// Cut the chunk off again (over the length).
    Discard,
}

fn now() -> u64 {
    fdfs_common::time::unix_now()
}

impl Appenders {
    pub(crate) fn new(
        store: Arc<Store>,
        writes: Writes,
        node_id: u32,
        public_url: String,
        max_file_size: u64,
    ) -> Appenders {
        let file_mode = store.file_mode();
        Appenders {
            store,
            writes,
            node_id,
            public_url,
            max_file_size,
            file_mode,
            busy: Mutex::new(HashSet::new()),
        }
    }

    fn paths(&self, name: &str) -> Result<(PathBuf, PathBuf, PathBuf, u8)> {
        if !valid_name(name) {
            return Err(StorageError::NotFound(format!("no such upload {name}")));
        }
        let sp = u8::from_str_radix(&name[..2], 16)
            .map_err(|_| StorageError::NotFound(format!("no such upload {name}")))?;
        if usize::from(sp) >= self.store.store_path_count() {
            return Err(StorageError::NotFound(format!("no such upload {name}")));
        }
        let dir = self.store.appender_dir_blocking(sp)?;
        Ok((
            dir.join(format!("{name}.data")),
            dir.join(format!("{name}.json")),
            dir,
            sp,
        ))
    }

    fn lock(&self, name: &str) -> Result<Busy<'_>> {
        let mut set = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(name.to_owned()) {
            return Err(StorageError::Locked(format!(
                "another request is writing to upload {name}"
            )));
        }
        Ok(Busy {
            set: &self.busy,
            name: name.to_owned(),
        })
    }

    fn load_blocking(&self, name: &str) -> Result<State> {
        let (_, state_path, _, _) = self.paths(name)?;
        let bytes = match fs::read(&state_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(format!("no such upload {name}")))
            }
            Err(e) => return Err(e.into()),
        };
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Internal(format!("appender state {name}: {e}")))?;
        if state.expires <= now() {
            return Err(StorageError::Gone(format!("upload {name} expired")));
        }
        Ok(state)
    }

    fn save_blocking(&self, name: &str, state: &State) -> Result<()> {
        let (_, state_path, dir, _) = self.paths(name)?;
        let bytes = serde_json::to_vec(state)
            .map_err(|e| StorageError::Internal(format!("encoding appender state: {e}")))?;
        write_atomic(&dir, &state_path, &bytes, 0o600)?;
        Ok(())
    }

    fn info(name: &str, s: &State) -> AppenderInfo {
        AppenderInfo {
            name: name.to_owned(),
            offset: s.offset,
            length: s.length,
            expires: s.expires,
            filename: s.filename.clone(),
            meta: s.meta.clone(),
            file: s.file.clone(),
        }
    }

    /// Create an empty appender file on store path `new.store_path`.
    pub async fn create(self: &Arc<Self>, new: NewAppender) -> Result<AppenderInfo> {
        if usize::from(new.store_path) >= self.store.store_path_count() {
            return Err(StorageError::BadRequest(format!(
                "store path {} does not exist on this node",
                new.store_path
            )));
        }
        if let Some(len) = new.length {
            if len > self.max_file_size {
                return Err(StorageError::TooLarge {
                    limit: self.max_file_size,
                });
            }
        }
        if let Some(ext) = &new.ext {
            if fdfs_common::fileid::ext_from_filename(&format!("f.{ext}")).as_deref()
                != Some(ext.as_str())
            {
                return Err(StorageError::BadRequest(format!(
                    "invalid extension {ext:?}"
                )));
            }
        }
        let name = format!(
            "{:02x}{:032x}",
            new.store_path,
            rand::rng().random::<u128>()
        );
        let created = now();
        let ttl = new.expires_in.max(1);
        let state = State {
            offset: 0,
            length: new.length,
            crc32: 0,
            created,
            // Whole seconds: one more, so an upload lives at least `ttl` (created late in a second, it would
            // otherwise expire within the same request).
            expires: created.saturating_add(ttl).saturating_add(1),
            ttl,
            ext: new.ext,
            filename: new.filename,
            meta: new.meta,
            owner: new.owner,
            finishing: None,
            file: None,
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || -> Result<AppenderInfo> {
            let (data, _, _, _) = this.paths(&name)?;
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(this.file_mode)
                .open(&data)?;
            f.sync_all()?;
            this.save_blocking(&name, &state)?;
            Ok(Self::info(&name, &state))
        })
        .await?
    }

    /// The upload's state; a complete upload whose finish was interrupted (crash) is finished now.
    pub async fn get(self: &Arc<Self>, name: &str) -> Result<AppenderInfo> {
        // In a task of its own: a finish started here completes even if the caller goes away.
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move { this.get_inner(&name).await }).await?
    }

    async fn get_inner(self: &Arc<Self>, name: &str) -> Result<AppenderInfo> {
        let state = self.load(name).await?;
        if state.file.is_none() && state.length == Some(state.offset) {
            if let Ok(_busy) = self.lock(name) {
                let state = self.load(name).await?;
                if state.file.is_none() {
                    return self.finish(name, state).await;
                }
                return Ok(Self::info(name, &state));
            }
        }
        Ok(Self::info(name, &state))
    }

    /// Load the state, resolving an interrupted finish: the ID it was committing is either in the store (the
    /// finish is recorded now) or not (the data file is still in place and the finish can run again).
    async fn load(self: &Arc<Self>, name: &str) -> Result<State> {
        let this = self.clone();
        let name2 = name.to_owned();
        let mut state = tokio::task::spawn_blocking(move || this.load_blocking(&name2)).await??;
        if let (Some(id), None) = (state.finishing.clone(), &state.file) {
            if self.store.exists(&id).await? {
                state.file = Some(self.result(&id, &state, 1));
            }
            state.finishing = None;
            let (this, name2, s) = (self.clone(), name.to_owned(), state.clone());
            tokio::task::spawn_blocking(move || this.save_blocking(&name2, &s)).await??;
        }
        Ok(state)
    }

    fn result(&self, id: &FileId, state: &State, replicas: u32) -> UploadResult {
        let info = id.info();
        UploadResult {
            url: format!("{}/{id}", self.public_url),
            group: id.group.clone(),
            size: info.size,
            crc32: format!("{:08x}", info.crc32),
            content_type: content_type_for(id.name.ext()).to_owned(),
            filename: state.filename.clone(),
            replicas,
            file_id: id.clone(),
        }
    }

    /// Append `body` at `req.offset` (409 when the upload is elsewhere), durably; the upload is finished when
    /// it reaches its length. Answers the new state.
    ///
    /// The append runs in a task of its own, so a caller that goes away (a dropped request) never cuts it short:
    /// the body then ends with an error, what arrived is made durable, and the upload stays busy until that is
    /// done; a finish that started completes.
    pub async fn append<S, E>(
        self: &Arc<Self>,
        name: &str,
        req: Append,
        body: S,
    ) -> Result<AppenderInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move { this.append_inner(&name, req, body).await }).await?
    }

    async fn append_inner<S, E>(
        self: &Arc<Self>,
        name: &str,
        req: Append,
        body: S,
    ) -> Result<AppenderInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let _busy = self.lock(name)?;
        let mut state = self.load(name).await?;
        if let Some(file) = &state.file {
            if req.offset == state.offset {
                return Ok(Self::info(name, &state));
            }
            return Err(StorageError::Conflict(format!(
                "upload {name} is finished (file {})",
                file.file_id
            )));
        }
        match (state.length, req.length) {
            (None, Some(len)) => {
                if len < state.offset {
                    return Err(StorageError::BadRequest(format!(
                        "length {len} is below the offset {}",
                        state.offset
                    )));
                }
                if len > self.max_file_size {
                    return Err(StorageError::TooLarge {
                        limit: self.max_file_size,
                    });
                }
                state.length = Some(len);
            }
            (Some(a), Some(b)) if a != b => {
                return Err(StorageError::BadRequest(format!(
                    "the upload's length is {a}, not {b}"
                )))
            }
            _ => {}
        }
        if req.offset != state.offset {
            return Err(StorageError::Conflict(format!(
                "offset mismatch: the upload is at {}, not {}",
                state.offset, req.offset
            )));
        }
        let limit = state.length.unwrap_or(self.max_file_size);
        let room = limit.saturating_sub(state.offset);
        let (data_path, _, _, _) = {
            let this = self.clone();
            let n = name.to_owned();
            tokio::task::spawn_blocking(move || this.paths(&n)).await??
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(WRITE_QUEUE);
        let this = self.clone();
        let (name2, mut st) = (name.to_owned(), state.clone());
        let checksum = req.checksum.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<State> {
            let mut file = fs::OpenOptions::new().write(true).open(&data_path)?;
            let start = st.offset;
            // A tail past the durable offset was never acknowledged: cut it off.
            file.set_len(start)?;
            file.seek(SeekFrom::Start(start))?;
            let mut crc = crc32fast::Hasher::new_with_initial_len(st.crc32, start);
            let mut digest = checksum.as_ref().map(|c| Digest::new(c.algorithm));
            let mut added = 0u64;
            let cut = |file: &mut fs::File| -> Result<()> {
                file.set_len(start)?;
                file.sync_all()?;
                Ok(())
            };
            let ended = loop {
                match rx.blocking_recv() {
                    Some(Msg::Data(chunk)) => {
                        if let Err(e) = file.write_all(&chunk) {
                            let _ = cut(&mut file);
                            return Err(e.into());
                        }
                        crc.update(&chunk);
                        if let Some(d) = digest.as_mut() {
                            d.update(&chunk);
                        }
                        added += chunk.len() as u64;
                    }
                    Some(Msg::End) => break true,
                    Some(Msg::Discard) => {
                        cut(&mut file)?;
                        return Ok(st);
                    }
                    None => break false,
                }
            };
            if let (Some(c), Some(d)) = (checksum.as_ref(), digest) {
                if !ended || d.finish() != c.digest {
                    cut(&mut file)?;
                    if ended {
                        return Err(StorageError::ChecksumMismatch);
                    }
                    return Ok(st);
                }
            }
            file.sync_all()?;
            st.offset = start + added;
            st.crc32 = crc.finalize();
            this.save_blocking(&name2, &st)?;
            Ok(st)
        });
        let mut body = std::pin::pin!(body);
        let mut total = 0u64;
        let outcome: Result<()> = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    if total > room {
                        let _ = tx.send(Msg::Discard).await;
                        break Err(StorageError::TooLarge { limit });
                    }
                    if tx.send(Msg::Data(chunk)).await.is_err() {
                        break Ok(()); // the writer failed; its result says why
                    }
                }
                Some(Err(e)) => break Err(StorageError::BodyAborted(e.to_string())),
                None => {
                    let _ = tx.send(Msg::End).await;
                    break Ok(());
                }
            }
        };
        drop(tx);
        let state = writer.await??;
        outcome?;
        if state.length == Some(state.offset) {
            return self.finish(name, state).await;
        }
        Ok(Self::info(name, &state))
    }

    /// Turn a complete appender file into an ordinary file (see the module doc). Called with the name busy.
    async fn finish(self: &Arc<Self>, name: &str, mut state: State) -> Result<AppenderInfo> {
        let this = self.clone();
        let (name2, mut st) = (name.to_owned(), state.clone());
        let (staged, id) = tokio::task::spawn_blocking(move || -> Result<_> {
            let (data, _, _, sp) = this.paths(&name2)?;
            let staged = match this.store.adopt_blocking(sp, &data) {
                Ok(s) => s,
                Err(StorageError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::NotFound(format!(
                        "upload {name2} lost its data"
                    )))
                }
                Err(e) => return Err(e),
            };
            if staged.size != st.offset || staged.crc32 != st.crc32 {
                let msg = format!(
                    "appender {name2}: on disk {} bytes crc32 {:08x}, the state says {} bytes crc32 {:08x}",
                    staged.size, staged.crc32, st.offset, st.crc32
                );
                // Keep the file for inspection: the disk changed under us.
                Store::keep_staged(staged);
                return Err(StorageError::Internal(msg));
            }
            let id = this.store.master_id(
                sp,
                st.ext.as_deref(),
                this.node_id,
                staged.size,
                staged.crc32,
            )?;
            st.finishing = Some(id.clone());
            this.save_blocking(&name2, &st)?;
            Ok((staged, id))
        })
        .await??;
        let (stored, replicas, quorum) = self
            .writes
            .commit_new(staged, &id, state.meta.clone())
            .await?;
        tracing::info!(file_id = %stored.id, size = stored.size, replicas, appender = name, "appender finished");
        state.finishing = None;
        state.file = Some(self.result(&stored.id, &state, replicas));
        state.expires = now().saturating_add(state.ttl).saturating_add(1);
        let (this, name2, s) = (self.clone(), name.to_owned(), state.clone());
        tokio::task::spawn_blocking(move || this.save_blocking(&name2, &s)).await??;
        if !quorum {
            return Err(StorageError::Unavailable(format!(
                "write quorum not reached: {replicas} member(s) hold {}; it will be replicated later",
                stored.id
            )));
        }
        Ok(Self::info(name, &state))
    }

    /// Remove an upload (finished or not; a finished file stays). `false` when there is none.
    pub async fn abort(self: &Arc<Self>, name: &str) -> Result<bool> {
        let _busy = self.lock(name)?;
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || this.remove_blocking(&name)).await?
    }

    fn remove_blocking(&self, name: &str) -> Result<bool> {
        let (data, state, dir, _) = self.paths(name)?;
        let had_state = remove_if_exists(&state)?;
        let had_data = remove_if_exists(&data)?;
        crate::store::layout::fsync_dir(&dir)?;
        Ok(had_state || had_data)
    }

    /// Unfinished, unexpired uploads created by `owner`.
    pub async fn count_unfinished(self: &Arc<Self>, owner: &str) -> Result<u64> {
        let this = self.clone();
        let owner = owner.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            this.scan_blocking(|_, state| {
                if state.file.is_none() && state.owner.as_deref() == Some(owner.as_str()) {
                    n += 1;
                }
            })?;
            Ok(n)
        })
        .await?
    }

    /// Every unexpired state on every store path. Blocking.
    fn scan_blocking(&self, mut f: impl FnMut(&str, &State)) -> Result<()> {
        let t = now();
        for sp in 0..self.store.store_path_count() {
            let dir = self.store.appender_dir_blocking(sp as u8)?;
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if !valid_name(name) {
                    continue;
                }
                let Ok(bytes) = fs::read(entry.path()) else {
                    continue;
                };
                if let Ok(state) = serde_json::from_slice::<State>(&bytes) {
                    if state.expires > t {
                        f(name, &state);
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove expired uploads and leftovers; returns how many uploads were removed. Blocking.
    pub fn sweep_blocking(&self) -> Result<usize> {
        let t = now();
        let mut removed = 0;
        for sp in 0..self.store.store_path_count() {
            let dir = self.store.appender_dir_blocking(sp as u8)?;
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    continue;
                };
                let (name, is_state) = match file_name.rsplit_once('.') {
                    Some((n, "json")) => (n, true),
                    Some((n, "data")) => (n, false),
                    _ => {
                        // A state temp file left by a crash mid-write.
                        if file_name.starts_with(".tmp-") && age(&entry) > ORPHAN_SECS {
                            let _ = fs::remove_file(entry.path());
                        }
                        continue;
                    }
                };
                if !valid_name(name) {
                    continue;
                }
                let expired = if is_state {
                    match fs::read(entry.path())
                        .ok()
                        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
                    {
                        Some(s) => s.expires <= t,
                        None => age(&entry) > ORPHAN_SECS,
                    }
                } else {
                    !dir.join(format!("{name}.json")).exists() && age(&entry) > ORPHAN_SECS
                };
                if !expired {
                    continue;
                }
                let Ok(_busy) = self.lock(name) else {
                    continue;
                };
                if self.remove_blocking(name)? {
                    tracing::info!(appender = name, "expired upload removed");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Sweep every [`SWEEP_EVERY`] until told to stop (see [`crate::background`]).
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.sweep_blocking()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "appender sweep failed"),
                Err(e) => tracing::warn!(error = %e, "appender sweep task failed"),
            }
        }
    }
}

fn remove_if_exists(p: &std::path::Path) -> Result<bool> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Seconds since a directory entry was last modified.
fn age(entry: &fs::DirEntry) -> u64 {
    entry.metadata().and_then(|m| m.modified()).map_or(0, |t| {
        now().saturating_sub(crate::store::layout::unix_secs(t))
    })
}

/// A chunk's running checksum.
enum Digest {
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
}

impl Digest {
    fn new(algorithm: ChecksumAlgorithm) -> Digest {
        use sha1::Digest as _;
        match algorithm {
            ChecksumAlgorithm::Sha1 => Digest::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Md5 => Digest::Md5(md5::Md5::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        use sha1::Digest as _;
        match self {
            Digest::Sha1(h) => h.update(bytes),
            Digest::Md5(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        use sha1::Digest as _;
        match self {
            Digest::Sha1(h) => h.finalize().to_vec(),
            Digest::Md5(h) => h.finalize().to_vec(),
        }
    }
}
