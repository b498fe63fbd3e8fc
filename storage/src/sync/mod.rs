//! The replication engine: keeps every member of a group holding the same files (FastDFS model, done better).
//!
//! - Every operation this node accepts from a client (upload, delete, metadata change) is appended to its own
//!   [`Binlog`] (the store's, see [`crate::store::binlog`]) and fsynced before the client is answered.
//! - One [`worker`] per peer (peers come from heartbeat replies, see [`crate::heartbeat::Peers`]) pushes the
//!   records in order, with a position persisted in `.fdfs/sync/peer-<id>.pos` (a small file, not sled: sled
//!   only holds what can be rebuilt from the files on disk). Uploads stream the file (`PUT /v1/replica/{id}`,
//!   mtime preserved, body skipped when `HEAD` says the peer has it), deletes become `DELETE /v1/replica/{id}`
//!   (the peer records a [`Tombstones`] entry), metadata becomes `PUT /v1/replica/meta/{id}`. A peer that is down
//!   is retried with backoff; uploads never wait for it.
//! - The write quorum (an upload held by `write_quorum` members before it is acknowledged) is
//!   [`crate::write`]'s, which uses this engine's peer list, [`reach`] and [`client`], and wakes the workers
//!   ([`SyncEngine::announce`]) after each commit. The peer side of its upload pipelines is [`staged`].
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
mod metrics;
pub mod protocol;
pub mod reach;
pub mod routes;
pub mod space;
pub mod staged;
pub mod tombstones;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{MemberInfo, MemberState, Metadata, PeerSync};
use fdfs_common::FileId;

use crate::background::{Background, Task};
use crate::error::Result;
use crate::heartbeat::Peers;
use crate::store::binlog::{Binlog, Op, DEFAULT_SEGMENT_BYTES};
use crate::store::layout::write_small;
use crate::store::{MetaUpdate, Origin, Store};
use crate::AppState;

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
    task: Task,
}

/// Shared state of the engine; its fields are the engine's own (other modules use [`SyncEngine`]'s methods).
pub struct Inner {
    /// Replication settings (write quorum, peer transfer limits, concurrency).
    config: SyncConfig,
    /// The node's store, where received replicas go.
    store: Arc<Store>,
    /// The group's other members, from the latest heartbeat replies.
    peers: Arc<Peers>,
    /// The peer list as it was when the engine started: once `peers` holds another one, a tracker answered.
    initial_peers: Arc<Vec<MemberInfo>>,
    /// Client for pushes to peers.
    http: reqwest::Client,
    /// Log of the changes accepted here, which the per-peer workers push.
    binlog: Arc<Binlog>,
    /// Deleted incarnations of file IDs, so that a catch-up never brings a deleted file back.
    tombstones: Tombstones,
    /// `.fdfs/sync/`: per-peer positions and the synced marker.
    sync_dir: PathBuf,
    syncing: AtomicBool,
    /// Wakes workers when a record is appended (carries the last sequence number).
    appended: tokio::sync::watch::Sender<u64>,
    workers: Mutex<HashMap<u32, PeerSlot>>,
    /// Starts the engine's tasks (supervisor, catch-up, reporter, workers) and stops them at shutdown.
    background: Background,
    last_catchup: Mutex<Option<CatchupReport>>,
    /// Bodies staged by peers' upload pipelines, waiting for their commit.
    staged: staged::StagedTable,
    /// Peers that refused a connection or timed out lately (from replica traffic).
    reach: reach::Reach,
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
    /// (workers per peer, pruning, gauges) and the catch-up as tasks of `background`, which stops them.
    pub async fn start(
        store: Arc<Store>,
        peers: Arc<Peers>,
        http: reqwest::Client,
        config: SyncConfig,
        background: &Background,
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
            background: background.clone(),
            last_catchup: Mutex::new(None),
            staged: staged::StagedTable::default(),
            reach: reach::Reach::default(),
        }));
        if !synced {
            tracing::info!(
                "no synced marker: this member will copy its group's files before serving"
            );
        }
        background.spawn("sync supervisor", engine.clone().supervise());
        background.spawn("catch-up", catchup::run(engine.clone(), !synced));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        engine.reach.report_to(tx);
        background.spawn(
            "unresponsive peer reporter",
            engine.clone().report_unresponsive(rx),
        );
        Ok(engine)
    }

    fn lock_workers(&self) -> MutexGuard<'_, HashMap<u32, PeerSlot>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Replication settings (write quorum, peer transfer limits, concurrency).
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The node's store, where received replicas go.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Client for requests to peers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Deleted incarnations of file IDs.
    pub fn tombstones(&self) -> &Tombstones {
        &self.tombstones
    }

    /// The owner of the node's background tasks.
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// What this node learned lately about reaching each peer.
    pub fn reach(&self) -> &reach::Reach {
        &self.reach
    }

    /// Wake the workers: the binlog holds records up to its last sequence number (a change recorded through the
    /// store, see [`crate::write`] and [`SyncEngine::delete`]).
    pub fn announce(&self) {
        self.appended.send_replace(self.binlog.last_seq());
    }

    /// Remember that the upload path placed `id` on `peers` (durably, with its metadata): their workers skip its
    /// record instead of asking them again.
    pub fn delivered(&self, peers: &[MemberInfo], id: &FileId) {
        let workers = self.lock_workers();
        for peer in peers {
            if let Some(slot) = workers.get(&peer.node_id) {
                slot.progress.delivered(id);
            }
        }
    }

    /// Append a record (blocking pool) and wake the workers.
    async fn log(&self, op: Op, id: &FileId) -> Result<()> {
        let (binlog, id) = (self.binlog.clone(), id.clone());
        let rec = tokio::task::spawn_blocking(move || binlog.append(op, &id)).await??;
        self.appended.send_replace(rec.seq);
        Ok(())
    }

    /// Keep one worker per peer, prune the binlog, refresh gauges; runs until told to stop (see
    /// [`crate::background`]).
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
                slot.task.stop();
                tracing::info!(peer = id, "sync worker stopped");
            }
            keep
        });
        for peer in peers {
            if workers.contains_key(&peer.node_id) {
                continue;
            }
            let progress = Arc::new(PeerProgress::default());
            let task = self.background.spawn(
                "sync worker",
                worker::run(self.clone(), peer.node_id, progress.clone()),
            );
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
                let rb = self
                    .http
                    .post(format!("http://{t}/v1/suspect"))
                    .query(&[("addr", addr.as_str())])
                    .timeout(Duration::from_secs(2))
                    .secret(self.config.cluster_secret.as_deref());
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
}

/// What the node does on client deletes and metadata changes (uploads are [`crate::write`]'s), and on the
/// incarnations peers hand it; each change is durable here and recorded in the binlog before it is acknowledged.
impl SyncEngine {
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
        self.announce();
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
