//! The peer protocol's wire types and helpers, shared by the calling side ([`super::client`]) and the serving side
//! ([`super::routes`]) so that neither imports the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use fdfs_common::internal::header_u64;
use fdfs_common::wire::{Metadata, MTIME_HEADER};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// Read size when streaming a file to a peer.
pub const CHUNK: usize = 256 * 1024;

/// Largest page of the listing.
pub const MAX_PAGE: usize = 10_000;

/// One file in a listing page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedFile {
    /// The file's ID.
    pub id: String,
    /// Its length in bytes.
    pub size: u64,
    /// Modification time of the file here, unix seconds.
    pub mtime: u64,
    /// Whether the file has metadata.
    #[serde(default)]
    pub meta: bool,
    /// The file's incarnation (see [`super::tombstones`]).
    #[serde(default)]
    pub gen: u64,
    /// CRC32 of the file's metadata ([`meta_crc`]), absent when it has none: lets a catch-up compare the
    /// metadata of files both members hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_crc: Option<u32>,
    /// The version of the file's metadata (a sidecar's modification time, see `store/meta.rs`), absent when it has none (or from a member
    /// that predates versions): a catch-up keeps the newer of two differing values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_version: Option<u64>,
}

/// The version of the metadata a replica metadata request carries or answers (a sidecar's modification time, see `store/meta.rs`).
pub const META_VERSION_HEADER: &str = "x-fdfs-meta-version";

/// The metadata version a peer names in [`META_VERSION_HEADER`].
pub fn meta_version(headers: &axum::http::HeaderMap) -> Option<u64> {
    header_u64(headers, META_VERSION_HEADER)
}

/// The `meta` query parameter of an upload or a replica put (the same encoding on both doors): a JSON object of strings (absent or empty: none).
pub fn meta_param(raw: Option<&str>) -> crate::error::Result<Metadata> {
    match raw {
        None | Some("") => Ok(Metadata::new()),
        Some(m) => serde_json::from_str(m).map_err(|e| {
            crate::error::StorageError::BadRequest(format!(
                "meta must be a JSON object of strings: {e}"
            ))
        }),
    }
}

/// CRC32 of a file's metadata as JSON (keys in order), `None` when it has none.
pub fn meta_crc(meta: &Metadata) -> Option<u32> {
    if meta.is_empty() {
        return None;
    }
    serde_json::to_vec(meta).ok().map(|b| crc32fast::hash(&b))
}

/// `GET /v1/sync/files` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// Files in ID order, after the request's `after`.
    pub files: Vec<ListedFile>,
    /// Deleted IDs in the same ID range as `files`, as `ID@incarnation` (every incarnation up to it deleted).
    #[serde(default)]
    pub tombstones: Vec<String>,
    /// Cursor for the next page (`after=`), absent on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

/// `GET /v1/sync/status` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The answering node.
    pub node_id: u32,
    /// Still catching up (not serving).
    pub syncing: bool,
    /// The peers as this node knows them (from heartbeat replies) and its progress towards each.
    pub peers: Vec<PeerStatus>,
    /// Sequence number of the oldest binlog record still on disk (`binlog_last_seq + 1` when none).
    pub binlog_first_seq: u64,
    /// Sequence number of the newest binlog record (0 when none was ever written).
    pub binlog_last_seq: u64,
    /// Binlog segment files on disk.
    pub binlog_segments: usize,
    /// File IDs with a tombstone.
    pub tombstones: usize,
    /// The latest listing catch-up, once one finished.
    pub last_catchup: Option<super::CatchupReport>,
}

/// One peer in [`SyncStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node id.
    pub node_id: u32,
    /// `host:port` of its HTTP server.
    pub addr: String,
    /// Its state as the tracker last reported it.
    pub state: fdfs_common::wire::MemberState,
    /// Binlog records the peer has not acknowledged yet (as [`fdfs_common::wire::PeerSync`]).
    pub pending_records: u64,
    /// Unix seconds of the newest record the peer acknowledged (0 = none).
    pub synced_until: u64,
    /// Why this node cannot reach the peer now (`refused` or `timed_out`, see [`super::reach`]), if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// The incarnation a peer names in [`super::tombstones::INCARNATION_HEADER`].
pub fn incarnation(headers: &HeaderMap) -> Option<u64> {
    header_u64(headers, super::tombstones::INCARNATION_HEADER)
}

/// The `x-fdfs-mtime` header of a replica (unix seconds), as a time.
pub fn mtime_from(headers: &HeaderMap) -> Option<SystemTime> {
    header_u64(headers, MTIME_HEADER).map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Stream a local file as a body, in [`CHUNK`] pieces.
pub fn file_stream(file: tokio::fs::File) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some((buf.freeze(), file)))
    })
}

/// Bodies up to this many bytes take the small-upload path of [`crate::write::Writes::upload`]: read whole, the ID
/// made from them at once, then the local write and one `PUT /v1/replica/{id}` per peer (body, metadata and
/// incarnation together) run side by side, each a single blocking call on its node. No stage/commit round trips,
/// no per-chunk hand-offs between threads. The memory this holds per upload is bounded by it.
pub const SMALL_BODY: usize = 128 * 1024;

/// Answer of the stage request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageAnswer {
    /// Names the staged body in the commit request.
    pub token: u64,
    /// Bytes the peer staged (the source checks it against what it sent).
    pub size: u64,
}

/// Body of the commit request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The stage answer's token.
    pub token: u64,
    /// The ID the source gave the upload.
    pub file_id: String,
    /// Unix seconds given to the replica.
    pub mtime: u64,
    /// Metadata stored with the replica.
    #[serde(default)]
    pub meta: Metadata,
    /// The upload's incarnation (see [`super::tombstones`]): a slave ID uploaded again after a delete.
    #[serde(default)]
    pub gen: u64,
}
