//! fdfs storage node: keeps a group's files on local store paths, serves them nginx-style, accepts uploads and
//! metadata changes from the gateway on internal routes, and heartbeats to every tracker.
//!
//! Modules: [`store`] (the disk, the dedup index and the binlog), [`api`] (internal `/v1` routes), [`serve`]
//! (public downloads and the read proxy), [`heartbeat`] (tracker reports, peer list), [`write`](mod@write) (uploads from
//! every door, the write quorum), [`sync`] (replication and catch-up), [`cli`] (flags), [`error`].

pub mod api;
pub mod appender;
pub mod background;
pub mod cli;
pub mod error;
pub mod fastdfs;
pub mod heartbeat;
pub mod identity;
pub mod import;
pub mod scrub;
pub mod serve;
pub mod store;
pub mod sync;
pub mod thumbnail;
pub mod write;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use fdfs_common::config::Size;
use fdfs_common::internal::{require_secret, ClusterSecret};
use fdfs_common::serve::Listeners;
use fdfs_common::GroupName;
use serde::Deserialize;

pub use error::StorageError;
pub use heartbeat::Peers;
pub use store::Store;

/// Default of [`Config::reserved_storage_space`]: small, so that it stays under any tracker's reserve.
pub const DEFAULT_RESERVED_BYTES: u64 = 64 << 20;

/// Storage node configuration (TOML file, overridden by `FDFS_*` env and flags; see [`cli::Args`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind (used by [`cli::main`]; `run` takes an already bound listener).
    pub listen: Option<String>,
    /// Group this node belongs to.
    pub group: GroupName,
    /// Tracker addresses (`host:port` or a base URL); the node heartbeats to every one. TOML key `tracker`
    /// (the flag's name; `trackers` is still read).
    #[serde(rename = "tracker", alias = "trackers")]
    pub trackers: Vec<String>,
    /// Store path roots, `M00` first. Store path 0 also holds the node state (`.fdfs/`). TOML key `store_path`
    /// (the flag's name; `store_paths` is still read).
    #[serde(rename = "store_path", alias = "store_paths")]
    pub store_paths: Vec<PathBuf>,
    /// Base URL users download from; defaults to `http://<bound addr>`.
    pub public_url: Option<String>,
    /// Separate address for the internal `/v1` routes (then answered 404 on `listen`); other nodes and the
    /// gateway reach this node there. Unset: one port serves everything.
    pub internal_listen: Option<String>,
    /// `host:port` other processes reach `internal_listen` at (default: its bound address; set it when
    /// listening on `0.0.0.0`).
    pub internal_addr: Option<String>,
    /// Node id (1 to 2^32-1), as FastDFS's `storage_ids.conf` assigns them. Unset: the id recorded in store path
    /// 0 (`.fdfs/node_id`), chosen at random for a new store (see [`identity`]).
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
    /// Space every store path keeps free for metadata, deletes and the node's own state: replicas that would
    /// eat into it are refused (507). Keep it at most the trackers' `reserved_storage_space`.
    pub reserved_storage_space: Size,
    /// Permission bits of stored files and their metadata (e.g. `0o644`: readable by an nginx worker).
    pub file_mode: u32,
    /// Permission bits of the data directories (e.g. `0o755`).
    pub dir_mode: u32,
    /// Read rate of the background scrubber (re-checks every file against the size and CRC32 in its ID and
    /// repairs bad ones from a peer); 0 turns it off.
    pub scrub_bytes_per_sec: Size,
    /// Seconds between the starts of two scrub passes (the first one starts within 10 minutes).
    pub scrub_interval_secs: u64,
    /// A peer transfer (replica upload, catch-up download) fails when no data moves for this long; each
    /// transfer also has a deadline of 30 s plus 1 s per MiB.
    pub peer_stall_timeout_ms: u64,
    /// A store path whose write probe (a small file written and fsynced at every heartbeat) takes longer than
    /// this is reported failed ("too slow") to the trackers, which then assign it nothing, until a probe is
    /// quick again.
    pub slow_disk_ms: u64,
    /// Thumbnail sizes rendered on first read as slave files `<master>_<W>x<H>[c].<ext>` (`WxH`: fit inside,
    /// by `thumbnail_fit`; `WxHc`: crop to fill; a 0 side keeps the ratio). Empty: no thumbnails.
    pub thumbnail_sizes: Vec<String>,
    /// How a `WxH` size fills its box: `inside` (default) or `crop`.
    pub thumbnail_fit: thumbnail::Fit,
    /// JPEG quality of thumbnails (1-100).
    pub thumbnail_jpeg_quality: u8,
    /// Lossy WebP quality of thumbnails (1-100).
    pub thumbnail_webp_quality: u8,
    /// Formats a thumbnail may be rendered as (its master's own, or WebP): `jpg`, `png`, `gif`, `webp`.
    pub thumbnail_formats: Vec<String>,
    /// Render sources smaller than the box up to the box (default: they keep their size).
    pub thumbnail_upscale: bool,
    /// Largest source, in pixels, a thumbnail is rendered from (a decompression bomb is refused with 422).
    pub thumbnail_max_pixels: u64,
    /// Renders running at once (0: one per CPU); more requests wait for a slot.
    pub thumbnail_max_renders: usize,
    /// A render (waiting for a slot included) that takes longer answers 503 and stores nothing.
    pub thumbnail_deadline_ms: u64,
    /// Address of the FastDFS protocol listener (FastDFS's storage port is 23000); unset: none. Its port is
    /// reported to the trackers, which hand it to FastDFS clients.
    pub fastdfs_listen: Option<String>,
    /// Width of IP address fields in FastDFS replies: 16 (classic builds) or 46 (IPv6-capable builds).
    pub fastdfs_ip_width: fdfs_common::fastdfs::IpWidth,
    /// A FastDFS connection is closed after this long without a request, or without progress in one.
    pub fastdfs_timeout_ms: u64,
    /// FastDFS connections served at once (more wait until one ends).
    pub fastdfs_max_connections: usize,
    /// On SIGTERM the node tells the trackers it leaves, turns `/health` unready and refuses new uploads
    /// (gateways send them elsewhere), then serves everything else this long before it stops accepting
    /// connections (requests in flight still finish). Covers what gateways and load balancers learned before.
    pub shutdown_delay_ms: u64,
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
            binlog_segment_bytes: Size::Bytes(store::binlog::DEFAULT_SEGMENT_BYTES),
            anti_leech_secret: None,
            token_ttl_secs: 900,
            reserved_storage_space: Size::Bytes(DEFAULT_RESERVED_BYTES),
            file_mode: 0o644,
            dir_mode: 0o755,
            scrub_bytes_per_sec: Size::Bytes(2 << 20),
            scrub_interval_secs: 86_400,
            peer_stall_timeout_ms: 15_000,
            slow_disk_ms: 5_000,
            thumbnail_sizes: vec!["150x150".into(), "300x300".into(), "600x600".into()],
            thumbnail_fit: thumbnail::Fit::Inside,
            thumbnail_jpeg_quality: 85,
            thumbnail_webp_quality: 80,
            thumbnail_formats: vec!["jpg".into(), "png".into(), "gif".into(), "webp".into()],
            thumbnail_upscale: false,
            thumbnail_max_pixels: 50_000_000,
            thumbnail_max_renders: 0,
            thumbnail_deadline_ms: 30_000,
            fastdfs_listen: None,
            fastdfs_ip_width: fdfs_common::fastdfs::IpWidth::Classic,
            fastdfs_timeout_ms: 60_000,
            fastdfs_max_connections: 256,
            shutdown_delay_ms: 0,
        }
    }
}

/// Everything a request handler needs; shared as [`AppState`].
pub struct Node {
    /// The settings the node was started with.
    pub config: Config,
    /// Its group (`group` in the config).
    pub group: GroupName,
    /// Its id (`node_id` in the config); the source id of the files it creates.
    pub node_id: u32,
    /// `host:port` other processes reach this node at.
    pub addr: String,
    /// Base URL of public downloads, no trailing slash.
    pub public_url: String,
    /// Effective upload limit in bytes.
    pub max_file_size: u64,
    /// The files on disk and their index.
    pub store: Arc<Store>,
    /// The other members of the group, from the latest heartbeat replies.
    pub peers: Arc<Peers>,
    /// The replication engine: deletes and metadata changes go through it (see [`sync`]).
    pub sync: sync::SyncEngine,
    /// The write path: every new file goes through it (see [`write`](mod@write)).
    pub writes: write::Writes,
    /// Client for trackers and peers.
    pub http: reqwest::Client,
    /// Thumbnails rendered on first read (see [`thumbnail`]).
    pub thumbnails: thumbnail::Thumbnails,
    /// Appender files (resumable uploads), see [`appender`].
    pub appenders: Arc<appender::Appenders>,
    /// Port of the FastDFS protocol listener, when there is one (reported in heartbeats).
    pub fastdfs_port: Option<u16>,
    /// Width of IP address fields in FastDFS replies.
    pub fastdfs_ip_width: fdfs_common::fastdfs::IpWidth,
    /// Readiness: drained, stopping, trackers reachable, store writable (see [`heartbeat::Status`]).
    pub status: heartbeat::Status,
}

impl Node {
    /// The secret the internal routes require (see [`require_secret`]).
    pub fn cluster_secret(&self) -> ClusterSecret {
        ClusterSecret::new(self.config.cluster_secret.as_deref())
    }

    /// Refuse a new upload before its body when this node takes none (drained or stopping): the gateway then
    /// sends it to another member.
    pub fn takes_uploads(&self) -> Result<(), StorageError> {
        if self.status.stopping.is_set() {
            return Err(StorageError::NotTakingUploads(
                "node_stopping",
                "this storage node is stopping".into(),
            ));
        }
        if self
            .status
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StorageError::NotTakingUploads(
                "node_draining",
                "this storage node is being drained".into(),
            ));
        }
        Ok(())
    }
}

/// Shared application state.
pub type AppState = Arc<Node>;

/// `host:port` part of a URL such as `http://host:port/prefix`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Refuse to start on state that cannot be kept: every store path must exist (or be creatable) and be
/// writable. Called before anything is announced; the error names the setting and the path.
pub fn check_state(config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.store_paths.is_empty(),
        "at least one store path is required (store_path, flag --store-path)"
    );
    for p in &config.store_paths {
        fdfs_common::state::check_writable(p, "store_path")?;
    }
    Ok(())
}

/// Run a storage node on an already bound HTTP listener until `shutdown` resolves, and the FastDFS door on the
/// FastDFS listener given, else on `fastdfs_listen` when set (bound here, announced as
/// `fastdfs listening on ADDR`).
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (listener, fastdfs_listener) = listeners
        .into()
        .bind_fastdfs(config.fastdfs_listen.as_deref())
        .await?;
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
    check_state(&config)?;
    let public_setting = if config.public_url.is_some() {
        "public_url"
    } else {
        "public_url (the default is http://<listen>)"
    };
    identity::check_address(
        "public address",
        authority(&public_url),
        public_setting,
        &config.trackers,
    )
    .map_err(anyhow::Error::msg)?;
    // The id recorded in store path 0 (or, for a store from before that file, the one derived from the public
    // address as it always was).
    let derived_from = addr.clone();
    let group = config.group.clone();
    let (root, configured) = (config.store_paths[0].clone(), config.node_id);
    let (node_id, origin) = tokio::task::spawn_blocking(move || {
        identity::settle(&root, configured, || {
            identity::derived_id(&group, &derived_from)
        })
    })
    .await??;
    tracing::info!(node_id, origin = ?origin, "node id");
    // With a separate internal listener, that is the address announced to trackers (peers and the gateway
    // use the announced address for `/v1` and proxied reads).
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
    if internal.is_some() {
        identity::check_address("internal address", &addr, "internal_addr", &config.trackers)
            .map_err(anyhow::Error::msg)?;
    }
    let max_file_size = match config.max_file_size {
        Size::Bytes(n) => n.min(fdfs_common::fileid::MAX_FILE_SIZE),
        Size::Percent(_) => anyhow::bail!("max_file_size must be a size, not a percentage"),
    };
    let segment_bytes = match config.binlog_segment_bytes {
        Size::Bytes(n) => n,
        Size::Percent(_) => anyhow::bail!("binlog_segment_bytes must be a size, not a percentage"),
    };
    anyhow::ensure!(
        config.file_mode <= 0o7777 && config.dir_mode <= 0o7777,
        "file_mode and dir_mode are permission bits (at most 0o7777)"
    );
    let thumbnails = thumbnail::Thumbnails::new(thumbnail::Settings::from_config(&config)?);
    let store = Store::open_with(
        config.group.clone(),
        config.store_paths.clone(),
        store::StoreOptions {
            max_file_size,
            segment_bytes,
            file_mode: config.file_mode,
            dir_mode: config.dir_mode,
        },
    )
    .await
    .context("opening the store")?;
    let http = fdfs_common::internal::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    let peers = Arc::new(Peers::default());
    // Owns every background task from here on: started through it, stopped and waited for at the end.
    let background = background::Background::default();

    // The replication engine (see `sync`): one worker per peer, catch-up, write quorum.
    let engine = sync::SyncEngine::start(
        store.clone(),
        peers.clone(),
        http.clone(),
        sync::SyncConfig {
            node_id,
            write_quorum: config.write_quorum,
            binlog_segment_bytes: segment_bytes,
            cluster_secret: config.cluster_secret.clone(),
            reserved_storage_space: config.reserved_storage_space,
            trackers: config.trackers.clone(),
            peer_limits: fdfs_common::deadline::TransferLimits::with_stall(Duration::from_millis(
                config.peer_stall_timeout_ms.max(1),
            )),
            ..sync::SyncConfig::default()
        },
        &background,
    )
    .await
    .context("starting replication")?;
    let scrub_rate = match config.scrub_bytes_per_sec {
        Size::Bytes(n) => n,
        Size::Percent(_) => anyhow::bail!("scrub_bytes_per_sec must be a size, not a percentage"),
    };
    background.spawn(
        "scrubber",
        scrub::run(
            engine.clone(),
            scrub::ScrubConfig {
                bytes_per_sec: scrub_rate,
                interval: Duration::from_secs(config.scrub_interval_secs),
            },
        ),
    );

    let writes = write::Writes::new(engine.clone());
    let appenders = Arc::new(appender::Appenders::new(
        store.clone(),
        writes.clone(),
        node_id,
        public_url.clone(),
        max_file_size,
    ));
    background.spawn("appender sweeper", appenders.clone().run_sweeper());
    // The FastDFS door (see `fastdfs`): its port goes into every heartbeat.
    let fastdfs_port = match &fastdfs_listener {
        Some(l) => Some(l.local_addr()?.port()),
        None => None,
    };
    let node = Arc::new(Node {
        fastdfs_port,
        fastdfs_ip_width: config.fastdfs_ip_width,
        group: config.group.clone(),
        config,
        node_id,
        addr,
        public_url,
        max_file_size,
        store,
        peers,
        sync: engine.clone(),
        writes,
        http,
        thumbnails,
        appenders,
        status: heartbeat::Status::new(),
    });
    tracing::info!(node_id, group = %node.group, public_url = %node.public_url, "storage node started");
    // Heartbeats; a node refused by every tracker since it started (a second live node with its id or address)
    // stops with that reason.
    let (refused_tx, refused_rx) = tokio::sync::oneshot::channel::<String>();
    let heartbeats = background.spawn("heartbeats", {
        let node = node.clone();
        async move {
            let why = heartbeat::run(node).await;
            let _ = refused_tx.send(why);
        }
    });
    let refused = Arc::new(std::sync::Mutex::new(None::<String>));
    let signal = {
        let refused = refused.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                Ok(why) = refused_rx => {
                    tracing::error!("refused by the trackers, stopping: {why}");
                    *refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
                }
            }
        }
    };
    // Stopping: unready and no new uploads at once, the trackers told (offline there at once), then
    // `shutdown_delay_ms` of serving before the listeners close.
    let farewell = {
        let node = node.clone();
        move || async move {
            heartbeats.stop();
            heartbeat::leave(&node).await;
        }
    };
    let shutdown = fdfs_common::health::stop_after(
        signal,
        node.status.stopping.clone(),
        farewell,
        Duration::from_millis(node.config.shutdown_delay_ms),
    );
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    if let Some(l) = fastdfs_listener {
        // Told to stop by the same signal as HTTP; it drains its connections within its grace period.
        let door_node = node.clone();
        background.spawn_draining(
            "fastdfs door",
            fdfs_common::fastdfs::serve(
                l,
                fastdfs::limits(&node.config),
                "storage",
                move |conn| fastdfs::handle(door_node.clone(), conn),
                shutdown.clone(),
            ),
        );
    }
    // `POST /v1/scrub` (see `scrub`), behind the cluster secret like the other internal routes.
    let internal_app = router(node.clone()).merge(scrub::router(engine.clone()).route_layer(
        middleware::from_fn_with_state(node.cluster_secret(), require_secret),
    ));
    let result = match internal {
        None => fdfs_common::serve::serve(listener, internal_app, shutdown).await,
        Some(internal) => {
            // One shutdown signal for both listeners.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            background.spawn("listener stop", async move {
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
            let internal = fdfs_common::serve::serve(internal, internal_app, stopped(stop_rx));
            let (a, b) = tokio::join!(public, internal);
            a.and(b)
        }
    };
    // Every background task told to stop and waited for: the FastDFS door drains its connections within its
    // grace period (it was told by the same signal as HTTP); a task still running past that is aborted.
    background
        .shutdown(fdfs_common::fastdfs::STOP_GRACE + Duration::from_secs(5))
        .await;
    // Whatever still holds the node (a connection task being dropped, a blocking write finishing) lets go of
    // the store before `run` returns, so that the same store paths can be opened again at once (the index is
    // locked while open). Bounded: a stuck holder only delays the return.
    let closed = node.store.closed();
    drop((node, engine));
    if tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .is_err()
    {
        tracing::warn!("the store is still held 10 s after the node stopped");
    }
    if let Some(why) = refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        anyhow::bail!("{why}");
    }
    result.context("serving HTTP")
}

/// Routes of the public listener when internal routes have their own (`internal_listen`): downloads and
/// `/health`; every `/v1/...` answers 404.
pub fn public_router(node: AppState) -> Router {
    let stopping = node.status.stopping.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route(
            "/livez",
            get(|| async { fdfs_common::health::live("storage") }),
        )
        .route("/v1/{*rest}", axum::routing::any(api::not_found))
        .route("/{*path}", get(serve::serve))
        .fallback(api::not_found)
        .with_state(node)
        .layer(middleware::from_fn_with_state(
            stopping,
            fdfs_common::health::close_when_stopping,
        ));
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
        .route("/v1/abandon/{attempt}", post(api::abandon))
        .route(
            "/v1/meta/{*file_id}",
            get(api::get_meta).put(api::put_meta).patch(api::patch_meta),
        )
        // Replication routes (`/v1/replica/...`, `/v1/sync/...`), behind the cluster secret too.
        .merge(node.sync.router())
        // Appender files (`/v1/appender/...`): resumable uploads.
        .merge(appender::routes::router())
        // Files stored under the ID they already have (`fdfs import-fastdfs`).
        .route(
            "/v1/import/{*file_id}",
            axum::routing::put(import::import).layer(DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn_with_state(
            node.cluster_secret(),
            require_secret,
        ))
        // Outermost: a refused body (401, 413 mid-stream, 507) is drained so the client reads the answer.
        .route_layer(middleware::from_fn(fdfs_common::drain::drain_refused));
    let stopping = node.status.stopping.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route(
            "/livez",
            get(|| async { fdfs_common::health::live("storage") }),
        )
        .merge(internal)
        .route("/{*path}", get(serve::serve))
        .fallback(api::not_found)
        .with_state(node)
        .layer(middleware::from_fn_with_state(
            stopping,
            fdfs_common::health::close_when_stopping,
        ));
    fdfs_common::metrics::instrument(app, "storage")
}

/// `GET /health`: ready to do its job, or 503 with why not (stopping, drained, a store path unwritable or
/// full, no tracker reachable, still catching up with its group).
async fn health(
    axum::extract::State(node): axum::extract::State<AppState>,
) -> axum::response::Response {
    let interval = Duration::from_millis(node.config.heartbeat_interval_ms.max(10));
    let reason = node.status.not_ready(interval, node.sync.syncing());
    fdfs_common::health::answer("storage", reason)
}
