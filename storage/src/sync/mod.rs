//! The replication engine: keeps every member of a group holding the same files (FastDFS model, done better).
//!
//! - Every operation this node accepts from a client (upload, delete, metadata change) is appended to its own
//!   [`Binlog`] and fsynced before the client is answered.
//! - One [`worker`] per peer (peers come from heartbeat replies, see [`crate::heartbeat::Peers`]) pushes the
//!   records in order, with a position persisted in `.fdfs/sync/peer-<id>.pos` (a small file, not sled: sled
//!   only holds what can be rebuilt from the files on disk). Uploads stream the file (`PUT /v1/replica/{id}`,
//!   mtime preserved, body skipped when `HEAD` says the peer has it), deletes become `DELETE /v1/replica/{id}`
//!   (the peer records a [`Tombstones`] entry), metadata becomes `PUT /v1/replica/meta/{id}`. A peer that is down
//!   is retried with backoff; uploads never wait for it.
//! - `write_quorum`: an upload is pushed synchronously to `write_quorum - 1` peers (active ones first, then
//!   members still catching up; capped by how many are live: not offline and accepting connections) before it is
//!   acknowledged; 503 when that fails (the file stays and the workers still push it). When this node already
//!   knows it cannot reach the quorum (a peer's transfers time out: see [`reach`]) it answers 503
//!   `quorum_unreachable` before reading the body ([`SyncEngine::quorum_check`]).
//! - [`catchup`]: a new or wiped member (no `.fdfs/sync/synced` marker) reports `syncing: true`, copies the
//!   group's files from every active peer's listing (`GET /v1/sync/files`), then marks itself synced. Every
//!   member also applies a peer's listing whenever that peer becomes active, for files whose source died while
//!   we were away and for what a wiped member had acknowledged (see [`catchup::run`]).
//! - Heartbeats report, per peer, the records still pending and `synced_until`, so the tracker offers only
//!   members that hold a file; the same numbers are exported as metrics.
//!
//! The routes peers call are in [`routes`]; they sit behind the cluster secret with the other `/v1` routes.

pub mod catchup;
pub mod client;
pub mod import;
mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod reach;
pub mod routes;
pub mod space;
pub mod tombstones;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use fdfs_common::wire::{MemberInfo, MemberState, Metadata, PeerSync};
use fdfs_common::{FileId, FileName, NameInfo};
use tokio::task::JoinHandle;

use crate::error::{Result, StorageError};
use crate::heartbeat::Peers;
use crate::store::layout::write_small;
use crate::store::{MetaUpdate, NewFile, Origin, Store, Stored};
use crate::AppState;
use crate::store::binlog::{Binlog, Op, DEFAULT_SEGMENT_BYTES};

pub use catchup::CatchupReport;
pub use tombstones::Tombstones;

/// Name of the marker file (in `.fdfs/sync/`) saying this node holds its group's files.
const SYNCED_MARKER: &str = "synced";
/// How often the supervisor looks at the peer list, prunes the binlog and refreshes gauges.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);
/// How often the binlog is pruned (in supervisor ticks).
const PRUNE_EVERY_TICKS: u64 = 20;

/// Settings of the replication engine.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// This node's id (to skip itself in peer lists).
    pub node_id: u32,
    /// Members that must hold an upload before it is acknowledged (this node included).
    pub write_quorum: u32,
    /// Size at which the binlog starts a new segment.
    pub binlog_segment_bytes: u64,
    /// Sent as `x-fdfs-cluster-secret` to peers.
    pub cluster_secret: Option<String>,
    /// Files fetched at once during a catch-up.
    pub catchup_concurrency: usize,
    /// Deadline and stall timeout of replica uploads and catch-up downloads.
    pub peer_limits: fdfs_common::deadline::TransferLimits,
    /// Records pushed at once by a worker (distinct files only; records of one file stay in order).
    pub push_concurrency: usize,
    /// Space each store path keeps free: replicas that would eat into it are refused with 507.
    pub reserved_storage_space: fdfs_common::config::Size,
    /// The trackers, told about a peer whose transfers time out (`POST /v1/suspect`).
    pub trackers: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            node_id: 0,
            write_quorum: 2,
            binlog_segment_bytes: DEFAULT_SEGMENT_BYTES,
            cluster_secret: None,
            catchup_concurrency: 8,
            peer_limits: fdfs_common::deadline::TransferLimits::default(),
            push_concurrency: 8,
            reserved_storage_space: fdfs_common::config::Size::Bytes(0),
            trackers: Vec::new(),
        }
    }
}

/// Replication progress towards one peer, shared between its worker and the heartbeat.
#[derive(Debug, Default)]
pub struct PeerProgress {
    /// Last binlog sequence number the peer acknowledged.
    pub acked: AtomicU64,
    /// `synced_until` while records are pending: every record at or before it was acknowledged.
    pub synced_until: AtomicU64,
    /// Set to stop the worker (the peer left the group).
    pub stop: AtomicBool,
    /// Uploads the upload path already placed on the peer, durably and with their metadata (pipeline or
    /// small-body put): the worker skips their records instead of asking the peer again. At most
    /// [`MAX_DELIVERED`] are kept (beyond that the worker just checks with the peer, as for any record).
    pub delivered: Mutex<std::collections::HashSet<FileId>>,
}

/// Most uploads remembered per peer as delivered by the upload path ([`PeerProgress::delivered`]).
pub const MAX_DELIVERED: usize = 65_536;

impl PeerProgress {
    /// Remember that the upload path placed `id` on this peer.
    fn delivered(&self, id: &FileId) {
        let mut set = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() < MAX_DELIVERED {
            set.insert(id.clone());
        }
    }

    /// Whether the upload path placed `id` on this peer (forgotten once asked).
    pub fn take_delivered(&self, id: &FileId) -> bool {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

struct PeerSlot {
    progress: Arc<PeerProgress>,
    task: JoinHandle<()>,
}

/// Shared state of the engine.
pub struct Inner {
    /// Replication settings (write quorum, peer transfer limits, concurrency).
    pub config: SyncConfig,
    /// The node's store, where received replicas go.
    pub store: Arc<Store>,
    /// The group's other members, from the latest heartbeat replies.
    pub peers: Arc<Peers>,
    /// The peer list as it was when the engine started: once `peers` holds another one, a tracker answered.
    initial_peers: Arc<Vec<MemberInfo>>,
    /// Client for pushes to peers.
    pub http: reqwest::Client,
    /// Log of the changes accepted here, which the per-peer workers push.
    pub binlog: Arc<Binlog>,
    /// Deleted incarnations of file IDs, so that a catch-up never brings a deleted file back.
    pub tombstones: Tombstones,
    /// `.fdfs/sync/`: per-peer positions and the synced marker.
    sync_dir: PathBuf,
    syncing: AtomicBool,
    /// Wakes workers when a record is appended (carries the last sequence number).
    appended: tokio::sync::watch::Sender<u64>,
    workers: Mutex<HashMap<u32, PeerSlot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    last_catchup: Mutex<Option<CatchupReport>>,
    /// Bodies staged by peers' upload pipelines, waiting for their commit.
    pub staged: pipeline::StagedTable,
    /// Peers that refused a connection or timed out lately (from replica traffic).
    pub reach: reach::Reach,
}

/// Which slave files go with a deleted master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slaves {
    /// The thumbnails this cluster rendered from it; uploaded slaves stay, as in FastDFS.
    #[default]
    Rendered,
    /// Every slave (`DELETE ...?slaves=all`).
    All,
}

/// The replication engine; cheap to clone. The node holds one and sends every change through it.
#[derive(Clone)]
pub struct SyncEngine(Arc<Inner>);

impl std::ops::Deref for SyncEngine {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl SyncEngine {
    /// Open the binlog, tombstones and positions in the store's state directory and start the supervisor
    /// (workers per peer, pruning, gauges) and the catch-up. Stop it with [`SyncEngine::shutdown`].
    pub async fn start(
        store: Arc<Store>,
        peers: Arc<Peers>,
        http: reqwest::Client,
        config: SyncConfig,
    ) -> Result<SyncEngine> {
        let state_dir = store.state_dir().to_owned();
        let binlog = store.binlog().clone();
        let (tombstones, sync_dir, synced) = tokio::task::spawn_blocking(move || -> Result<_> {
            let tombstones = Tombstones::open(&state_dir.join("tombstones.log"))?;
            let sync_dir = state_dir.join("sync");
            std::fs::create_dir_all(&sync_dir)?;
            // The state files created above and by the store (segments, tombstone log, index) are durable from
            // here on: their directory entries are synced.
            crate::store::layout::fsync_tree(&state_dir)?;
            let synced = sync_dir.join(SYNCED_MARKER).exists();
            Ok((tombstones, sync_dir, synced))
        })
        .await??;
        let (appended, _) = tokio::sync::watch::channel(binlog.last_seq());
        let engine = SyncEngine(Arc::new(Inner {
            config,
            store,
            initial_peers: peers.get(),
            peers,
            http,
            binlog,
            tombstones,
            sync_dir,
            syncing: AtomicBool::new(!synced),
            appended,
            workers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            last_catchup: Mutex::new(None),
            staged: pipeline::StagedTable::default(),
            reach: reach::Reach::default(),
        }));
        if !synced {
            tracing::info!(
                "no synced marker: this member will copy its group's files before serving"
            );
        }
        let supervisor = tokio::spawn(engine.clone().supervise());
        let catchup = tokio::spawn(catchup::run(engine.clone(), !synced));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        engine.reach.report_to(tx);
        let reporter = tokio::spawn(engine.clone().report_unresponsive(rx));
        engine.lock_tasks().extend([supervisor, catchup, reporter]);
        Ok(engine)
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_workers(&self) -> MutexGuard<'_, HashMap<u32, PeerSlot>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop every task of the engine (workers, supervisor, catch-up) and wait for them to end.
    pub async fn shutdown(&self) {
        let mut handles: Vec<JoinHandle<()>> = self.lock_tasks().drain(..).collect();
        handles.extend(self.lock_workers().drain().map(|(_, s)| s.task));
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Routes peers call (`/v1/replica/...`, `/v1/sync/...`), to be merged behind the cluster secret.
    pub fn router(&self) -> Router<AppState> {
        routes::router(self.clone())
    }

    /// Result of the latest listing catch-up, if one finished.
    pub fn last_catchup(&self) -> Option<CatchupReport> {
        *self.last_catchup.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_last_catchup(&self, report: CatchupReport) {
        *self.last_catchup.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// Durably mark this node as holding its group's files.
    async fn mark_synced(&self) -> Result<()> {
        let dir = self.sync_dir.clone();
        tokio::task::spawn_blocking(move || write_small(&dir, SYNCED_MARKER, b"1\n")).await??;
        self.syncing.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn position_name(peer: u32) -> String {
        format!("peer-{peer}.pos")
    }

    /// Persisted position of a peer (`None` when the peer was never seen).
    fn load_position(&self, peer: u32) -> Result<Option<u64>> {
        match std::fs::read_to_string(self.sync_dir.join(Self::position_name(peer))) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Durably store a peer's position. Blocking.
    fn save_position(&self, peer: u32, seq: u64) -> Result<()> {
        write_small(
            &self.sync_dir,
            &Self::position_name(peer),
            format!("{seq}\n").as_bytes(),
        )?;
        Ok(())
    }

    /// Positions of every peer this node ever pushed to (persisted files).
    fn persisted_positions(&self) -> Result<HashMap<u32, u64>> {
        let mut out = HashMap::new();
        for entry in std::fs::read_dir(&self.sync_dir)? {
            let name = entry?.file_name();
            let Some(peer) = name
                .to_str()
                .and_then(|n| n.strip_prefix("peer-"))
                .and_then(|n| n.strip_suffix(".pos"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(seq) = self.load_position(peer)? {
                out.insert(peer, seq);
            }
        }
        Ok(out)
    }

    /// Whether a tracker answered a heartbeat since the engine started (so an empty peer list means alone).
    pub fn peers_known(&self) -> bool {
        !Arc::ptr_eq(&self.peers.get(), &self.initial_peers)
    }

    /// Current peer list without this node.
    pub fn peer_list(&self) -> Vec<MemberInfo> {
        self.peers
            .get()
            .iter()
            .filter(|p| p.node_id != self.config.node_id)
            .cloned()
            .collect()
    }

    /// Append a record (blocking pool) and wake the workers.
    async fn log(&self, op: Op, id: &FileId) -> Result<()> {
        let (binlog, id) = (self.binlog.clone(), id.clone());
        let rec = tokio::task::spawn_blocking(move || binlog.append(op, &id)).await??;
        self.appended.send_replace(rec.seq);
        Ok(())
    }

    /// Keep one worker per peer, prune the binlog, refresh gauges; runs until aborted.
    async fn supervise(self) {
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            self.reconcile_workers();
            self.update_gauges();
            if n % PRUNE_EVERY_TICKS == 0 {
                let this = self.clone();
                match tokio::task::spawn_blocking(move || this.prune()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(removed)) => {
                        tracing::info!(removed, "binlog: pruned acknowledged segments")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "binlog: pruning failed"),
                    Err(e) => tracing::warn!(error = %e, "binlog: pruning task failed"),
                }
            }
        }
    }

    /// Start workers for new peers, stop those of peers that left the group.
    fn reconcile_workers(&self) {
        let peers = self.peer_list();
        let mut workers = self.lock_workers();
        workers.retain(|id, slot| {
            let keep = peers.iter().any(|p| p.node_id == *id) && !slot.task.is_finished();
            if !keep {
                slot.progress.stop.store(true, Ordering::Relaxed);
                slot.task.abort();
                tracing::info!(peer = id, "sync worker stopped");
            }
            keep
        });
        for peer in peers {
            if workers.contains_key(&peer.node_id) {
                continue;
            }
            let progress = Arc::new(PeerProgress::default());
            let task = tokio::spawn(worker::run(self.clone(), peer.node_id, progress.clone()));
            workers.insert(peer.node_id, PeerSlot { progress, task });
        }
    }

    /// Remove binlog segments every member of the group acknowledged and the store's index has a durable
    /// checkpoint past (its replay needs the records after it). Blocking.
    ///
    /// Members are the peers the trackers list (offline ones included); the position of a peer that left the
    /// group (removed by an operator, or moved) is deleted and stops holding segments. If it comes back it is
    /// pushed what is still on disk and its own catch-up copies the rest from the members' listings. Nothing
    /// is pruned before a tracker described the group.
    fn prune(&self) -> Result<usize> {
        if !self.peers_known() {
            return Ok(0);
        }
        let members: Vec<u32> = self.peer_list().iter().map(|p| p.node_id).collect();
        let mut acked = self.store.flush_index()?;
        for (peer, seq) in self.persisted_positions()? {
            if members.contains(&peer) {
                acked = acked.min(seq);
            } else {
                tracing::info!(
                    peer,
                    position = seq,
                    "peer left the group: its position no longer holds the binlog"
                );
                match std::fs::remove_file(self.sync_dir.join(Self::position_name(peer))) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        for slot in self.lock_workers().values() {
            acked = acked.min(slot.progress.acked.load(Ordering::Relaxed));
        }
        self.binlog.prune(acked)
    }

    /// Records the peer has not acknowledged.
    fn pending(&self, acked: u64) -> u64 {
        let last = self.binlog.last_seq();
        let from = acked.max(self.binlog.first_seq().saturating_sub(1));
        last.saturating_sub(from)
    }

    fn update_gauges(&self) {
        let now = fdfs_common::time::unix_now();
        for s in self.sync_status() {
            metrics::pending(
                s.peer_id,
                s.pending_records,
                now.saturating_sub(s.synced_until),
            );
        }
        metrics::syncing(self.syncing.load(Ordering::Relaxed));
    }

    /// Active peers, best first (most files, then lowest id).
    pub fn active_peers(&self) -> Vec<MemberInfo> {
        let mut peers: Vec<MemberInfo> = self
            .peer_list()
            .into_iter()
            .filter(|p| p.state == MemberState::Active)
            .collect();
        peers.sort_by_key(|p| (std::cmp::Reverse(p.file_count), p.node_id));
        peers
    }

    /// Tell the trackers about each peer whose transfers timed out (a frozen process still accepts
    /// connections): each probes it and, when it does not answer there either, lists it offline before its
    /// heartbeat timeout, which caps this node's write quorum. A partition between two members only does not
    /// change a thing: the trackers still reach the peer.
    async fn report_unresponsive(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<u32>) {
        while let Some(peer) = rx.recv().await {
            let Some(addr) = self
                .peer_list()
                .into_iter()
                .find(|p| p.node_id == peer)
                .map(|p| p.addr)
            else {
                continue;
            };
            for t in &self.config.trackers {
                let mut rb = self
                    .http
                    .post(format!("http://{t}/v1/suspect"))
                    .query(&[("addr", addr.as_str())])
                    .timeout(Duration::from_secs(2));
                if let Some(secret) = &self.config.cluster_secret {
                    rb = rb.header(fdfs_common::wire::CLUSTER_SECRET_HEADER, secret);
                }
                if let Err(e) = rb.send().await {
                    tracing::debug!(tracker = %t, peer, error = %e, "reporting an unresponsive peer");
                }
            }
            tracing::info!(peer, %addr, "peer timed out: reported to the trackers");
        }
    }

    /// Peers that can take a replica now: active ones first, then those still catching up (they accept replicas
    /// and hold them once active). Offline ones are not live.
    pub fn live_peers(&self) -> Vec<MemberInfo> {
        let mut peers: Vec<MemberInfo> = self
            .peer_list()
            .into_iter()
            .filter(|p| p.state != MemberState::Offline)
            .collect();
        peers.sort_by_key(|p| {
            (
                p.state != MemberState::Active,
                std::cmp::Reverse(p.file_count),
                p.node_id,
            )
        });
        peers
    }

    /// Push a freshly uploaded file to `need` active peers. Returns how many took it and how many could not be
    /// connected to at all (those are down even if the tracker has not noticed yet: they are not live).
    async fn push_quorum(
        &self,
        id: &FileId,
        need: usize,
        candidates: Vec<MemberInfo>,
    ) -> (usize, usize) {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut candidates = candidates.into_iter();
        let mut running = FuturesUnordered::new();
        let push = |peer: MemberInfo| {
            let this = self.clone();
            let id = id.clone();
            async move {
                let mut r = client::push_upload(&this, &peer, &id).await;
                // A transport error on a live peer is most often a pooled connection the peer had just closed
                // as idle: one immediate retry on a fresh connection (the push is idempotent).
                if matches!(r, Err(client::PushError::Retry(_))) {
                    r = client::push_upload(&this, &peer, &id).await;
                }
                this.reach.record(peer.node_id, &r);
                (peer, r)
            }
        };
        for peer in candidates.by_ref().take(need) {
            running.push(push(peer));
        }
        let (mut ok, mut down) = (0, 0);
        while let Some((peer, result)) = running.next().await {
            match result {
                Ok(_) => ok += 1,
                Err(e) => {
                    if matches!(e, client::PushError::Unreachable(_)) {
                        down += 1;
                    }
                    tracing::warn!(peer = peer.node_id, file_id = %id, error = %e, "synchronous replica failed");
                    if let Some(next) = candidates.next() {
                        running.push(push(next));
                    }
                }
            }
            if ok >= need {
                break;
            }
        }
        (ok, down)
    }
}

/// The chunks of a small body as one buffer.
fn concat(mut chunks: Vec<bytes::Bytes>) -> bytes::Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut all = bytes::BytesMut::with_capacity(chunks.iter().map(bytes::Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(&c);
    }
    all.freeze()
}

/// What the node does on client requests; each change is durable here and recorded in the binlog before it is
/// acknowledged.
impl SyncEngine {
    /// Store a new upload (ID made from the content, metadata with the file, recorded in the binlog) while its
    /// body goes to `write_quorum - 1` live peers; answer once the quorum holds it durably. Returns the file and
    /// how many members hold it. A peer that fails is replaced by a push of the committed file to another live
    /// peer; 503 when the quorum cannot be reached (the file stays, the workers push it).
    ///
    /// A master file whose body ends within [`pipeline::SMALL_BODY`] takes the small-upload path; anything else
    /// streams through the [`pipeline`].
    pub async fn upload<S, E>(
        &self,
        new: NewFile,
        meta: Metadata,
        body: S,
        limit: u64,
    ) -> Result<(Stored, u32)>
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        // Known unable to reach the quorum: refuse before reading any of the body (every door comes here).
        self.quorum_check()?;
        // Fused: a body read to its end here is chained below and polled once more, which must answer `None`.
        let mut body = Box::pin(body.fuse());
        let mut head = Vec::new();
        let mut len = 0usize;
        let whole = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    len += chunk.len();
                    head.push(chunk);
                    if len > pipeline::SMALL_BODY {
                        break false;
                    }
                }
                Some(Err(e)) => return Err(StorageError::BodyAborted(e.to_string())),
                None => break true,
            }
        };
        if len as u64 > limit {
            return Err(StorageError::TooLarge { limit });
        }
        if whole {
            if let NewFile::Master {
                store_path,
                ext,
                source_id,
            } = &new
            {
                let data = concat(head);
                return self
                    .upload_small(*store_path, ext.as_deref(), *source_id, meta, data)
                    .await;
            }
        }
        let rest = futures_util::stream::iter(head.into_iter().map(Ok::<_, E>)).chain(body);
        self.upload_streamed(new, meta, rest, limit).await
    }

    /// The write quorum for an upload now, and the live peers to reach it with.
    fn quorum(&self) -> (usize, Vec<MemberInfo>) {
        // Peers that failed lately go last: the first round starts with those that answer.
        let live = self.reach.order(self.live_peers());
        let quorum = (self.config.write_quorum.max(1) as usize).min(live.len() + 1);
        (quorum, live)
    }

    /// The small-upload path of [`SyncEngine::upload`] (see [`pipeline::SMALL_BODY`]).
    async fn upload_small(
        &self,
        store_path: u8,
        ext: Option<&str>,
        source_id: u32,
        meta: Metadata,
        data: bytes::Bytes,
    ) -> Result<(Stored, u32)> {
        self.store.store_path(store_path)?;
        let (quorum, live) = self.quorum();
        let need = quorum - 1;
        let (size, crc32) = (data.len() as u64, crc32fast::hash(&data));
        let now = fdfs_common::time::unix_now();
        let info = NameInfo {
            source_id,
            created: u32::try_from(now).unwrap_or(u32::MAX),
            size,
            crc32,
        };
        let (dir1, dir2) = self.store.pick_dirs();
        let id = FileId {
            group: self.store.group().clone(),
            store_path,
            dir1,
            dir2,
            name: FileName::generate(&info, ext)?,
        };
        // Every member gets the same mtime (the creation second, as in the ID).
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now);
        let gen = self.tombstones.incarnation(&id);
        let local = {
            let (this, id, data, meta) = (self.clone(), id.clone(), data.clone(), meta.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let incoming = crate::store::Incoming {
                    mtime: Some(mtime),
                    meta,
                    origin: crate::store::Origin::Client,
                };
                this.store.create_bytes_blocking(&id, &data, incoming)?;
                this.tombstones.revive(&id)?;
                Ok(())
            })
        };
        let peers = &live[..need];
        let pushes = futures_util::future::join_all(
            peers
                .iter()
                .map(|p| client::put_bytes(self, p, &id, now, gen, &meta, data.clone())),
        );
        let (local, pushed) = tokio::join!(local, pushes);
        if let Err(e) = local.map_err(StorageError::from).and_then(|r| r) {
            if let StorageError::Conflict(msg) = e {
                // Another file has this ID (astronomically unlikely): leave it alone; the client may retry.
                return Err(StorageError::Unavailable(msg));
            }
            // Never acknowledged: take back the copies the peers made (best effort; a leftover would only be an
            // unreferenced file).
            let took: Vec<MemberInfo> = peers
                .iter()
                .zip(&pushed)
                .filter(|(_, r)| r.is_ok())
                .map(|(p, _)| p.clone())
                .collect();
            if !took.is_empty() {
                let (this, tid) = (self.clone(), id.clone());
                tokio::spawn(async move {
                    for peer in took {
                        let _ = client::push_delete(&this, &peer, &tid).await;
                    }
                });
            }
            return Err(e);
        }
        self.appended.send_replace(self.binlog.last_seq());
        let mut took = Vec::new();
        let mut failed = Vec::new();
        for (peer, r) in peers.iter().zip(pushed) {
            match r {
                Ok(()) => took.push(peer.clone()),
                Err(e) => failed.push((peer.clone(), e)),
            }
        }
        let replicas = self.settle(&id, quorum, &live, took, failed).await?;
        Ok((Stored { id, size, crc32 }, replicas))
    }

    /// The streamed path of [`SyncEngine::upload`]: the body goes through the [`pipeline`].
    async fn upload_streamed<S, E>(
        &self,
        new: NewFile,
        meta: Metadata,
        body: S,
        limit: u64,
    ) -> Result<(Stored, u32)>
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let (quorum, live) = self.quorum();
        let need = quorum - 1;
        if need == 0 {
            let stored = self.store.create(new, meta, body, limit).await?;
            // Past a tombstone (a slave ID uploaded again after a delete) this is a new incarnation: record it
            // before any push names the file's incarnation.
            let (this, tid) = (self.clone(), stored.id.clone());
            tokio::task::spawn_blocking(move || this.tombstones.revive(&tid)).await??;
            self.appended.send_replace(self.binlog.last_seq());
            return Ok((stored, 1));
        }
        let mut pipe = pipeline::Pipeline::open(self, live[..need].to_vec(), new.store_path());
        let stored = self
            .store
            .create(new, meta.clone(), pipe.tee(body), limit)
            .await?;
        // Past a tombstone (a slave ID uploaded again after a delete) this is a new incarnation: record it
        // before any push names the file's incarnation.
        let (this, tid) = (self.clone(), stored.id.clone());
        tokio::task::spawn_blocking(move || this.tombstones.revive(&tid)).await??;
        self.appended.send_replace(self.binlog.last_seq());
        let id = &stored.id;
        let mtime = self
            .store
            .stat(id)
            .await?
            .and_then(|m| m.modified().ok())
            .map_or(0, crate::store::layout::unix_secs);
        let (took, failed) = pipe.commit(self, id, mtime, &meta).await;
        let replicas = self.settle(id, quorum, &live, took, failed).await?;
        Ok((stored, replicas))
    }

    /// After the first round of an upload (`took` of the `write_quorum - 1` peers asked hold it, `failed` did
    /// not): reach the quorum with pushes to the other live peers, and say how many members hold the file, or
    /// 503 when they are too few.
    async fn settle(
        &self,
        id: &FileId,
        quorum: usize,
        live: &[MemberInfo],
        took: Vec<MemberInfo>,
        failed: Vec<(MemberInfo, client::PushError)>,
    ) -> Result<u32> {
        let need = quorum - 1;
        for peer in &took {
            self.reach.answered(peer.node_id);
        }
        let mut ok = took.len();
        if !took.is_empty() {
            let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            for peer in &took {
                if let Some(slot) = workers.get(&peer.node_id) {
                    slot.progress.delivered(id);
                }
            }
        }
        let mut down = 0;
        let mut retry = Vec::new();
        for (peer, e) in failed {
            tracing::warn!(peer = peer.node_id, file_id = %id, error = %e, "pipelined replica failed");
            match reach::Failure::of(&e) {
                Some(how) => self.reach.failed(peer.node_id, how),
                None => retry.push(peer),
            }
            if matches!(e, client::PushError::Unreachable(_)) {
                down += 1;
            }
        }
        if ok < need {
            // Other live peers first (not those that timed out lately: they would only hold the answer up), then
            // those that failed for a reason a push may not hit again.
            let mut candidates: Vec<MemberInfo> = live[need..]
                .iter()
                .filter(|p| self.reach.recent(p.node_id) != Some(reach::Failure::TimedOut))
                .cloned()
                .collect();
            candidates.extend(retry);
            let (more, more_down) = self.push_quorum(id, need - ok, candidates).await;
            ok += more;
            down += more_down;
        }
        // Members that refused the connection are down: the quorum is capped by the live ones.
        let need = need.min(live.len() - down.min(live.len()));
        metrics::quorum_push(ok >= need);
        if ok < need {
            return Err(StorageError::Unavailable(format!(
                "write quorum not reached: {} of {quorum} members hold {id}; it will be replicated later",
                ok + 1
            )));
        }
        Ok(u32::try_from(ok + 1).unwrap_or(u32::MAX))
    }

    /// Commit a body that was staged elsewhere (a finished appender file) as a new upload under `id`, recorded
    /// in the binlog, then push the file from disk to `write_quorum - 1` live peers. Returns the file, how many
    /// members hold it, and whether that is the quorum (when not, the file stays and the workers push it later).
    pub async fn commit_new(
        &self,
        staged: crate::store::Staged,
        id: &FileId,
        meta: Metadata,
    ) -> Result<(Stored, u32, bool)> {
        let (size, crc32) = (staged.size, staged.crc32);
        let committed = self
            .store
            .commit(staged, id, crate::store::Incoming::client(meta))
            .await?;
        if committed == crate::store::Committed::AlreadyExists {
            return Err(StorageError::Internal(format!(
                "generated name {id} collided with an existing file"
            )));
        }
        let (this, tid) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || this.tombstones.revive(&tid)).await??;
        self.appended.send_replace(self.binlog.last_seq());
        let live = self.live_peers();
        let quorum = (self.config.write_quorum.max(1) as usize).min(live.len() + 1);
        let need = quorum - 1;
        let (ok, down) = if need == 0 {
            (0, 0)
        } else {
            self.push_quorum(id, need, live.clone()).await
        };
        let need = need.min(live.len() - down.min(live.len()));
        if quorum > 1 {
            metrics::quorum_push(ok >= need);
        }
        let stored = Stored {
            id: id.clone(),
            size,
            crc32,
        };
        Ok((
            stored,
            u32::try_from(ok + 1).unwrap_or(u32::MAX),
            ok >= need,
        ))
    }

    /// Refuse an upload before reading its body when this node already knows it cannot reach the write quorum
    /// (a live peer's transfers time out lately, see [`reach`]): 503 `quorum_unreachable`, which a gateway
    /// takes as a cue to send the same unread body to another member or group.
    pub fn quorum_check(&self) -> Result<()> {
        self.reach
            .quorum_check(&self.live_peers(), self.config.write_quorum)
            .map_err(StorageError::QuorumUnreachable)
    }

    /// A peer is about to hand us incarnation `gen` of `id`. When it is newer than ours (a re-upload after a
    /// delete), any copy here is an older, deleted incarnation whose tombstone may not have arrived yet: record
    /// that first, then make room for the new one.
    pub async fn accept_incarnation(&self, id: &FileId, gen: u64) -> Result<()> {
        let here = self.tombstones.incarnation(id);
        if gen <= here {
            return Ok(());
        }
        let (this, tid) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            this.tombstones.add(&tid, here)?;
            this.store.remove_blocking(&tid)?;
            this.tombstones.set_live(&tid, gen)
        })
        .await?
    }

    /// Delete a file, with the thumbnails rendered from it; `false` when it is not here. See
    /// [`SyncEngine::delete_with`].
    pub async fn delete(&self, id: &FileId) -> Result<bool> {
        Ok(self.delete_with(id, Slaves::Rendered).await?.is_some())
    }

    /// Delete a file and the slaves `which` says (each recorded on its own, so peers follow); `None` when the
    /// file is not here, else the slaves deleted with it. Slaves go first: a crash in between leaves a master
    /// without some thumbnails (rendered again on a read), never thumbnails without a master.
    pub async fn delete_with(&self, id: &FileId, which: Slaves) -> Result<Option<Vec<FileId>>> {
        if !self.store.exists(id).await? {
            return Ok(None);
        }
        let slaves = self.delete_slaves(id, which).await?;
        self.delete_one(id).await?;
        Ok(Some(slaves))
    }

    /// Delete the slaves of `master` held here that `which` names; the ones deleted.
    pub async fn delete_slaves(&self, master: &FileId, which: Slaves) -> Result<Vec<FileId>> {
        let (store, m) = (self.store.clone(), master.clone());
        let candidates = tokio::task::spawn_blocking(move || -> Result<Vec<FileId>> {
            let mut out = Vec::new();
            for slave in store.slaves_blocking(&m)? {
                if which == Slaves::All
                    || crate::thumbnail::is_rendered(store.get_meta_blocking(&slave)?.as_ref())
                {
                    out.push(slave);
                }
            }
            Ok(out)
        })
        .await??;
        let mut deleted = Vec::with_capacity(candidates.len());
        for slave in candidates {
            if self.delete_one(&slave).await? {
                deleted.push(slave);
            }
        }
        Ok(deleted)
    }

    /// Delete one file; `false` when it is not here. Record first (tombstone, then the binlog record), then the
    /// unlink: a crash in between is finished at the next start.
    async fn delete_one(&self, id: &FileId) -> Result<bool> {
        if !self.store.exists(id).await? {
            return Ok(false);
        }
        let this = self.clone();
        let tid = id.clone();
        tokio::task::spawn_blocking(move || {
            let gen = this.tombstones.incarnation(&tid);
            this.tombstones.add(&tid, gen)
        })
        .await??;
        let deleted = self.store.delete(id, Origin::Client).await?;
        self.appended.send_replace(self.binlog.last_seq());
        Ok(deleted)
    }

    /// Change a file's metadata and record it.
    pub async fn set_meta(&self, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        let meta = self.store.set_meta(id, update).await?;
        self.log(Op::Meta, id).await?;
        Ok(meta)
    }

    /// True while this node is still catching up with its group (reported in heartbeats).
    pub fn syncing(&self) -> bool {
        self.syncing.load(Ordering::Relaxed)
    }

    /// Replication progress towards each peer (reported in heartbeats).
    pub fn sync_status(&self) -> Vec<PeerSync> {
        let now = fdfs_common::time::unix_now();
        let mut out: Vec<PeerSync> = self
            .lock_workers()
            .iter()
            .map(|(peer, slot)| {
                let pending = self.pending(slot.progress.acked.load(Ordering::Relaxed));
                let synced_until = if pending == 0 {
                    now
                } else {
                    slot.progress.synced_until.load(Ordering::Relaxed)
                };
                PeerSync {
                    peer_id: *peer,
                    pending_records: pending,
                    synced_until,
                }
            })
            .collect();
        out.sort_by_key(|p| p.peer_id);
        out
    }
}
