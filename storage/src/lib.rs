//! fdfs storage node: keeps a group's files on local store paths, serves them nginx-style, accepts uploads and
//! metadata changes from the gateway on internal routes, and heartbeats to every tracker.
//!
//! Modules: [`store`] (the disk and the dedup index), [`api`] (internal `/v1` routes), [`serve`] (public
//! downloads and the read proxy), [`heartbeat`] (tracker reports, peer list), [`replication`] (the hook the
//! replication engine plugs into), [`cli`] (flags), [`error`].

pub mod api;
pub mod binlog;
pub mod cli;
pub mod error;
pub mod heartbeat;
pub mod replication;
pub mod serve;
pub mod store;
pub mod sync;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use fdfs_common::config::Size;
use fdfs_common::GroupName;
use serde::Deserialize;

pub use error::StorageError;
pub use heartbeat::Peers;
pub use replication::{NoReplication, Replication};
pub use store::Store;

/// Storage node configuration (TOML file, overridden by `FDFS_*` env and flags; see [`cli::Args`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind (used by [`cli::main`]; `run` takes an already bound listener).
    pub listen: Option<String>,
    /// Group this node belongs to.
    pub group: GroupName,
    /// Tracker addresses (`host:port` or a base URL); the node heartbeats to every one.
    pub trackers: Vec<String>,
    /// Store path roots, `M00` first. Store path 0 also holds the node state (`.fdfs/`).
    pub store_paths: Vec<PathBuf>,
    /// Base URL users download from; defaults to `http://<bound addr>`.
    pub public_url: Option<String>,
    /// Separate address for the internal `/v1` routes (then answered 404 on `listen`); other nodes and the
    /// gateway reach this node there. Unset: one port serves everything.
    pub internal_listen: Option<String>,
    /// `host:port` other processes reach `internal_listen` at (default: its bound address; set it when
    /// listening on `0.0.0.0`).
    pub internal_addr: Option<String>,
    /// Node id; defaults to crc32 of `group + "/" + address` (stable across restarts and wipes).
    pub node_id: Option<u32>,
    /// Milliseconds between heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Shared secret required on internal routes (`x-fdfs-cluster-secret`) and sent to trackers.
    pub cluster_secret: Option<String>,
    /// Largest accepted upload; larger bodies get 413.
    pub max_file_size: Size,
    /// Members that must hold an upload before it is acknowledged (used by replication).
    pub write_quorum: u32,
    /// Size at which the replication binlog starts a new segment (acknowledged segments are removed).
    pub binlog_segment_bytes: Size,
    /// When set, public downloads need a FastDFS anti-leech token (`?token=&ts=`).
    pub anti_leech_secret: Option<String>,
    /// Lifetime of an anti-leech token.
    pub token_ttl_secs: u64,
    /// A peer transfer (replica upload, catch-up download) fails when no data moves for this long; each
    /// transfer also has a deadline of 30 s plus 1 s per MiB.
    pub peer_stall_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: None,
            group: "group1".parse().expect("valid group name"),
            trackers: Vec::new(),
            store_paths: Vec::new(),
            public_url: None,
            internal_listen: None,
            internal_addr: None,
            node_id: None,
            heartbeat_interval_ms: 2000,
            cluster_secret: None,
            max_file_size: Size::Bytes(16 << 30),
            write_quorum: 2,
            binlog_segment_bytes: Size::Bytes(binlog::DEFAULT_SEGMENT_BYTES),
            anti_leech_secret: None,
            token_ttl_secs: 900,
            peer_stall_timeout_ms: 15_000,
        }
    }
}

/// Everything a request handler needs; shared as [`AppState`].
pub struct Node {
    pub config: Config,
    pub group: GroupName,
    pub node_id: u32,
    /// `host:port` other processes reach this node at.
    pub addr: String,
    /// Base URL of public downloads, no trailing slash.
    pub public_url: String,
    /// Effective upload limit in bytes.
    pub max_file_size: u64,
    pub store: Arc<Store>,
    /// The other members of the group, from the latest heartbeat replies.
    pub peers: Arc<Peers>,
    /// The replication hook (see [`replication`]).
    pub replication: Arc<dyn Replication>,
    /// Client for trackers and peers.
    pub http: reqwest::Client,
}

/// Shared application state.
pub type AppState = Arc<Node>;

/// `host:port` part of a URL such as `http://host:port/prefix`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Default node id: crc32 of `group/addr`.
pub fn default_node_id(group: &GroupName, addr: &str) -> u32 {
    crc32fast::hash(format!("{group}/{addr}").as_bytes())
}

/// Run a storage node on an already bound listener until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"))
        .trim_end_matches('/')
        .to_owned();
    let addr = if config.public_url.is_some() {
        authority(&public_url).to_owned()
    } else {
        bound.to_string()
    };
    let node_id = config
        .node_id
        .unwrap_or_else(|| default_node_id(&config.group, &addr));
    // With a separate internal listener, that is the address announced to trackers (peers and the gateway
    // use the announced address for `/v1` and proxied reads); the node id stays derived from the public one.
    let internal = match config.internal_listen.as_deref() {
        Some(listen) => Some(
            fdfs_common::serve::bind_and_announce_as("internal listening on", listen)
                .await
                .with_context(|| format!("binding the internal address {listen}"))?,
        ),
        None => None,
    };
    let addr = match (&internal, &config.internal_addr) {
        (None, _) => addr,
        (Some(_), Some(announced)) => announced.clone(),
        (Some(l), None) => l.local_addr()?.to_string(),
    };
    let max_file_size = match config.max_file_size {
        Size::Bytes(n) => n.min(fdfs_common::fileid::MAX_FILE_SIZE),
        Size::Percent(_) => anyhow::bail!("max_file_size must be a size, not a percentage"),
    };
    anyhow::ensure!(
        !config.store_paths.is_empty(),
        "at least one --store-path is required"
    );
    let store = Store::open(
        config.group.clone(),
        config.store_paths.clone(),
        max_file_size,
    )
    .await
    .context("opening the store")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(fdfs_common::serve::CLIENT_POOL_IDLE)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    let peers = Arc::new(Peers::default());

    // The replication engine (see `sync`): binlog, one worker per peer, catch-up, write quorum.
    let segment_bytes = match config.binlog_segment_bytes {
        Size::Bytes(n) => n,
        Size::Percent(_) => anyhow::bail!("binlog_segment_bytes must be a size, not a percentage"),
    };
    let engine = sync::SyncEngine::start(
        store.clone(),
        peers.clone(),
        http.clone(),
        sync::SyncConfig {
            node_id,
            write_quorum: config.write_quorum,
            binlog_segment_bytes: segment_bytes,
            cluster_secret: config.cluster_secret.clone(),
            peer_limits: fdfs_common::deadline::TransferLimits::with_stall(Duration::from_millis(
                config.peer_stall_timeout_ms.max(1),
            )),
            ..sync::SyncConfig::default()
        },
    )
    .await
    .context("starting replication")?;
    let replication: Arc<dyn Replication> = Arc::new(engine.clone());

    let node = Arc::new(Node {
        group: config.group.clone(),
        config,
        node_id,
        addr,
        public_url,
        max_file_size,
        store,
        peers,
        replication,
        http,
    });
    tracing::info!(node_id, group = %node.group, public_url = %node.public_url, "storage node started");
    let heartbeats = tokio::spawn(heartbeat::run(node.clone()));
    let result = match internal {
        None => fdfs_common::serve::serve(listener, router(node), shutdown).await,
        Some(internal) => {
            // One shutdown signal for both listeners.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let public = fdfs_common::serve::serve(
                listener,
                public_router(node.clone()),
                stopped(stop_rx.clone()),
            );
            let internal = fdfs_common::serve::serve(internal, router(node), stopped(stop_rx));
            let (a, b) = tokio::join!(public, internal);
            a.and(b)
        }
    };
    heartbeats.abort();
    let _ = heartbeats.await;
    engine.shutdown().await;
    result.context("serving HTTP")
}

/// Routes of the public listener when internal routes have their own (`internal_listen`): downloads and
/// `/health`; every `/v1/...` answers 404.
pub fn public_router(node: AppState) -> Router {
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/{*rest}", axum::routing::any(api::not_found))
        .route("/{*path}", get(serve::serve))
        .fallback(api::not_found)
        .with_state(node);
    fdfs_common::metrics::instrument(app, "storage")
}

/// All routes of the storage node.
pub fn router(node: AppState) -> Router {
    let internal = Router::new()
        .route(
            "/v1/upload",
            post(api::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/files/{*file_id}",
            get(api::file_info).delete(api::delete),
        )
        .route("/v1/reindex", post(api::reindex))
        .route(
            "/v1/meta/{*file_id}",
            get(api::get_meta).put(api::put_meta).patch(api::patch_meta),
        )
        // Replication routes (`/v1/replica/...`, `/v1/sync/...`), behind the cluster secret too.
        .merge(node.replication.routes())
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            api::require_secret,
        ))
        // Outermost: a refused body (401, 413 mid-stream, 507) is drained so the client reads the answer.
        .route_layer(middleware::from_fn(fdfs_common::drain::drain_refused));
    let app = Router::new()
        .route("/health", get(health))
        .merge(internal)
        .route("/{*path}", get(serve::serve))
        .fallback(api::not_found)
        .with_state(node);
    fdfs_common::metrics::instrument(app, "storage")
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "role": "storage",
        "version": fdfs_common::VERSION,
    }))
}
