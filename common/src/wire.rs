//! JSON types exchanged between processes (storage <-> tracker, gateway -> tracker/storage) and returned to
//! users. Every process serialises these same structs, so a field renamed here is renamed everywhere.
//!
//! Internal routes (see `docs/PROTOCOL.md`) carry the cluster secret in [`CLUSTER_SECRET_HEADER`] when one is
//! configured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fileid::{FileId, GroupName, NameInfo};

/// Header carrying the shared cluster secret on internal (node-to-node) routes.
pub const CLUSTER_SECRET_HEADER: &str = "x-fdfs-cluster-secret";
/// Header carrying the client API key on protected public routes.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header on replicated writes: the node id that originally accepted the operation.
pub const ORIGIN_HEADER: &str = "x-fdfs-origin";
/// Header on replicated writes: modification time (unix seconds) to give the replica.
pub const MTIME_HEADER: &str = "x-fdfs-mtime";

/// Lifecycle of a storage member as the tracker sees it (FastDFS: INIT/WAIT_SYNC/SYNCING/ACTIVE/OFFLINE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Registered, still copying the group's files from a peer; not offered for uploads or reads.
    Syncing,
    /// Holds the group's files; offered for uploads and reads.
    Active,
    /// Missed heartbeats.
    Offline,
}

/// Space of one store path on a storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePathStat {
    /// Index in the node's store path list (`M00` = 0).
    pub index: u8,
    /// Size of the file system holding the store path, in bytes.
    pub total_bytes: u64,
    /// Bytes the file system still has available to unprivileged writers (`statvfs` `f_bavail`).
    pub free_bytes: u64,
    /// Why the store path cannot be written now (its write probe failed: a failing or read-only disk); the
    /// trackers then assign it nothing, as if it were full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Replication progress of one node towards one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSync {
    /// Node id of the peer.
    pub peer_id: u32,
    /// Binlog records this node has that the peer has not acknowledged yet.
    pub pending_records: u64,
    /// Unix seconds of the newest record the peer acknowledged (0 = none).
    pub synced_until: u64,
}

/// What a storage node tells every tracker, every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's id (`node_id` in its config), unique in the cluster; also the source id in its file IDs.
    pub node_id: u32,
    /// The group the node belongs to.
    pub group: GroupName,
    /// `host:port` other processes use to reach the node's HTTP server.
    pub addr: String,
    /// Base URL users download from (no trailing slash), e.g. `http://127.0.0.1:23001`.
    pub public_url: String,
    /// True while the node is still catching up with its group (a new or wiped member).
    pub syncing: bool,
    /// Space of each store path, in index order.
    pub store_paths: Vec<StorePathStat>,
    /// Replication progress towards each peer of the group (empty from nodes that do not report it).
    #[serde(default)]
    pub sync: Vec<PeerSync>,
    /// Files stored on this node.
    #[serde(default)]
    pub file_count: u64,
    /// fdfs version of the node (`fdfs_common::VERSION`).
    pub version: String,
    /// Port of the node's FastDFS protocol listener (`fastdfs_listen`), on the host of `addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastdfs_port: Option<u16>,
    /// Random number chosen by the process at start: heartbeats of one run carry the same one, so a tracker
    /// tells a restart of a member from a second process claiming its node id (0: not sent).
    #[serde(default)]
    pub instance: u64,
}

/// A storage member as the tracker describes it to others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's node id.
    pub node_id: u32,
    /// Its group.
    pub group: GroupName,
    /// `host:port` of its HTTP server, as in its last [`Heartbeat`].
    pub addr: String,
    /// Base URL users download from, as in its last [`Heartbeat`].
    pub public_url: String,
    /// State the tracker derives from its heartbeats.
    pub state: MemberState,
    /// Space of each store path, from its last heartbeat.
    pub store_paths: Vec<StorePathStat>,
    /// Replication progress towards each peer, from its last heartbeat.
    #[serde(default)]
    pub sync: Vec<PeerSync>,
    /// Files stored on the member, from its last heartbeat.
    #[serde(default)]
    pub file_count: u64,
    /// Milliseconds since the tracker last heard from the member.
    pub last_seen_ms: u64,
    /// An operator drains the member (`fdfs monitor drain`): it gets no new uploads, still serves reads.
    #[serde(default)]
    pub draining: bool,
}

impl MemberInfo {
    /// Free bytes over all store paths.
    pub fn free_bytes(&self) -> u64 {
        self.store_paths.iter().map(|p| p.free_bytes).sum()
    }
    /// Total bytes over all store paths.
    pub fn total_bytes(&self) -> u64 {
        self.store_paths.iter().map(|p| p.total_bytes).sum()
    }
}

/// Tracker reply to a heartbeat: the other members of the node's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Every other member of the group the tracker knows, the node itself left out.
    pub peers: Vec<MemberInfo>,
    /// The sender is being drained: it gets no new uploads (its `/health` says so).
    #[serde(default)]
    pub draining: bool,
}

/// Tracker reply to `GET /v1/assign`: where to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Group chosen for the file.
    pub group: GroupName,
    /// Active member of that group to upload to.
    pub node_id: u32,
    /// `host:port` of that member's HTTP server.
    pub addr: String,
    /// Base URL users download from on that member.
    pub public_url: String,
    /// Store path index to write to.
    pub store_path: u8,
}

/// Tracker reply to `GET /v1/locate/{file_id}`: members that can serve the file, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locations {
    /// Group named in the file ID.
    pub group: GroupName,
    /// Active members of the group, those holding the file first; the others proxy the read to a holder.
    pub members: Vec<MemberInfo>,
}

/// One group in the cluster view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group's name.
    pub name: GroupName,
    /// Free space of the group: the least free space among its active members (FastDFS rule: a group can
    /// only take what its fullest member can still hold).
    pub free_bytes: u64,
    /// Capacity of the group: the least total space among its active members.
    pub total_bytes: u64,
    /// Every member the tracker knows in the group, by node id, offline ones included.
    pub members: Vec<MemberInfo>,
}

/// `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Every group the tracker knows, sorted by name.
    pub groups: Vec<GroupInfo>,
    /// Trackers known to whoever answered (the gateway lists its configured trackers and whether they answer).
    #[serde(default)]
    pub trackers: Vec<TrackerStatus>,
}

/// One configured tracker in [`ClusterView::trackers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerStatus {
    /// `host:port` as configured.
    pub addr: String,
    /// Whether it answered `GET /cluster` this time.
    pub up: bool,
}

/// User metadata: string keys and values (FastDFS meta is name=value pairs).
pub type Metadata = BTreeMap<String, String>;

/// Result of storing one file, returned by the storage node and passed through by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResult {
    /// ID the file is known by from now on.
    pub file_id: FileId,
    /// Absolute download URL on a storage node.
    pub url: String,
    /// Group holding the file (the one in `file_id`).
    pub group: GroupName,
    /// Content length in bytes.
    pub size: u64,
    /// CRC32 of the content, 8 lower-case hex digits.
    pub crc32: String,
    /// MIME type served on download, guessed from the extension.
    pub content_type: String,
    /// Original file name given by the client, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Members that hold the file durably at acknowledgement time.
    #[serde(default)]
    pub replicas: u32,
}

/// `GET /info/{file_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The file asked about.
    pub file_id: FileId,
    /// Its group.
    pub group: GroupName,
    /// Node id of the storage node that first stored it (encoded in the ID).
    pub source_id: u32,
    /// Creation time, unix seconds.
    pub created: u32,
    /// The same time in RFC 3339 (UTC).
    pub created_at: String,
    /// Content length in bytes.
    pub size: u64,
    /// CRC32 of the content, 8 lower-case hex digits.
    pub crc32: String,
    /// Slave prefix, when the file is a slave of another file; `None` for a master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// MIME type served on download; `None` when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Public URLs of the members known to hold the file (empty when decoded offline).
    #[serde(default)]
    pub locations: Vec<String>,
    /// User metadata set on the file (empty when decoded offline).
    #[serde(default)]
    pub metadata: Metadata,
}

impl FileInfo {
    /// What can be known from the ID alone, without asking anyone.
    pub fn decoded(id: &FileId) -> Self {
        let NameInfo {
            source_id,
            created,
            size,
            crc32,
        } = id.info();
        FileInfo {
            file_id: id.clone(),
            group: id.group.clone(),
            source_id,
            created,
            created_at: crate::time::rfc3339(u64::from(created)),
            size,
            crc32: format!("{crc32:08x}"),
            prefix: id.name.prefix().map(str::to_owned),
            content_type: Some(crate::content_type_for(id.name.ext()).to_owned()),
            locations: Vec::new(),
            metadata: Metadata::new(),
        }
    }
}

/// Error body every process returns: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `payload_too_large`.
    pub code: String,
    /// Human-readable explanation; just "internal error" for internal faults (the detail goes to the log).
    pub message: String,
}
