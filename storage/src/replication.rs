//! The single hook between local writes and replication.
//!
//! Every handler that changes the store (upload, delete, metadata) calls the [`Replication`] object in the
//! application state right after the local durable write, and the heartbeat asks it for `syncing` / `sync`.
//! Today it is [`NoReplication`]: nothing leaves the node and an upload counts one replica. The replication
//! engine (`sync.rs` / `binlog.rs`) implements this trait and is installed in `crate::run` (marked there).

use fdfs_common::wire::{Metadata, PeerSync};
use fdfs_common::FileId;
use futures_util::future::BoxFuture;

use crate::error::Result;

/// What replication must be told about, and what the heartbeat reports about it.
pub trait Replication: Send + Sync + 'static {
    /// A file (and its initial metadata) is durably stored here. Returns the number of members that hold it
    /// durably before the upload is acknowledged (this node included); an error fails the upload.
    fn on_upload<'a>(&'a self, id: &'a FileId, meta: &'a Metadata) -> BoxFuture<'a, Result<u32>>;

    /// A file was deleted here.
    fn on_delete<'a>(&'a self, id: &'a FileId) -> BoxFuture<'a, Result<()>>;

    /// A file's metadata is now `meta` here.
    fn on_meta<'a>(&'a self, id: &'a FileId, meta: &'a Metadata) -> BoxFuture<'a, Result<()>>;

    /// True while this node is still catching up with its group (reported in heartbeats).
    fn syncing(&self) -> bool;

    /// Replication progress towards each peer (reported in heartbeats).
    fn sync_status(&self) -> Vec<PeerSync>;

    /// Internal routes the engine serves to peers, merged behind the cluster secret (none by default).
    fn routes(&self) -> axum::Router<crate::AppState> {
        axum::Router::new()
    }
}

/// Replication switched off: every write stays local.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReplication;

impl Replication for NoReplication {
    fn on_upload<'a>(&'a self, _id: &'a FileId, _meta: &'a Metadata) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async { Ok(1) })
    }

    fn on_delete<'a>(&'a self, _id: &'a FileId) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn on_meta<'a>(&'a self, _id: &'a FileId, _meta: &'a Metadata) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn syncing(&self) -> bool {
        false
    }

    fn sync_status(&self) -> Vec<PeerSync> {
        Vec::new()
    }
}
