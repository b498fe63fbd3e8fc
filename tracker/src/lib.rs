//! fdfs tracker: keeps an in-memory view of the storage members (rebuilt from their heartbeats within one
//! interval after a restart) and answers where to upload (`/v1/assign`) and where to read (`/v1/locate`).
//! Trackers are equal peers and never talk to each other; every storage node heartbeats to all of them.
//!
//! This module owns the config, the HTTP routes and the cluster-secret check; [`registry`] owns the
//! scheduling decisions and [`error`] the error responses.

pub mod cli;
pub mod error;
pub mod fastdfs;
mod members;
pub mod registry;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fdfs_common::config::Size;
use fdfs_common::wire::{
    Assignment, ClusterView, Heartbeat, HeartbeatReply, Locations, CLUSTER_SECRET_HEADER,
};
use fdfs_common::{FileId, GroupName};
use serde::Deserialize;

pub use error::Error;
use registry::Registry;

/// How a group is chosen for an upload that names none (FastDFS `store_lookup` 0, 1, 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum StoreLookup {
    /// Each upload starts at the next group in name order; a group without room passes to the next.
    #[default]
    RoundRobin,
    /// Every upload goes to `store_group`.
    FixedGroup,
    /// The group with the most free space (that of its fullest active member).
    MostFree,
}

/// How a store path is chosen on the assigned member (FastDFS `store_path` 0, 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum StorePathPolicy {
    /// The member's next store path with room, in turn.
    #[default]
    RoundRobin,
    /// The store path with the most free space (lowest index on a tie).
    MostFree,
}

/// Tracker settings (TOML file, `FDFS_*` env and flags; see [`cli::Args`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A member that has not sent a heartbeat for this long is offline.
    pub heartbeat_timeout_ms: u64,
    /// How a group is chosen for an upload that names none.
    pub store_lookup: StoreLookup,
    /// The group every upload goes to with `store_lookup = "fixed_group"`.
    pub store_group: Option<GroupName>,
    /// How a store path is chosen on the assigned member.
    pub store_path: StorePathPolicy,
    /// Space a store path keeps free: bytes, or a percentage of the path's total.
    pub reserved_storage_space: Size,
    /// When set, internal routes require it in the `x-fdfs-cluster-secret` header.
    pub cluster_secret: Option<String>,
    /// Where the tracker keeps the members it has heard from (`members.json`), so that after a restart it
    /// still lists them (offline until they beat). Without it a restarted tracker knows only members that
    /// beat since, and a wiped member could take an empty group for the truth.
    pub data_dir: Option<std::path::PathBuf>,
    /// Address of the FastDFS protocol listener (FastDFS's tracker port is 22122); unset: none.
    pub fastdfs_listen: Option<String>,
    /// Width of IP address fields in FastDFS replies: 16 (classic builds) or 46 (IPv6-capable builds).
    pub fastdfs_ip_width: fdfs_common::fastdfs::IpWidth,
    /// A FastDFS connection is closed after this long without a request, or without progress in one.
    pub fastdfs_timeout_ms: u64,
    /// FastDFS connections served at once (more wait until one ends).
    pub fastdfs_max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_timeout_ms: 6000,
            store_lookup: StoreLookup::RoundRobin,
            store_group: None,
            store_path: StorePathPolicy::RoundRobin,
            reserved_storage_space: Size::Percent(10),
            cluster_secret: None,
            data_dir: None,
            fastdfs_listen: None,
            fastdfs_ip_width: fdfs_common::fastdfs::IpWidth::Classic,
            fastdfs_timeout_ms: 60_000,
            fastdfs_max_connections: 256,
        }
    }
}

impl Config {
    fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Mutex<Registry>>,
    secret: Option<Arc<str>>,
}

impl AppState {
    /// The registry, held only for one synchronous call (never across an await).
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serve the tracker on `listener` until `shutdown` resolves (and the FastDFS door on `fastdfs_listen`, when
/// set: bound here, announced as `fastdfs listening on ADDR`).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let fastdfs = match config.fastdfs_listen.as_deref() {
        Some(listen) => Some(
            fdfs_common::serve::bind_and_announce_as("fastdfs listening on", listen)
                .await
                .with_context(|| format!("binding the FastDFS address {listen}"))?,
        ),
        None => None,
    };
    run_with_fastdfs(listener, fastdfs, config, shutdown).await
}

/// [`run`] with the FastDFS listener already bound (`None`: no FastDFS door; `fastdfs_listen` is ignored).
pub async fn run_with_fastdfs(
    listener: tokio::net::TcpListener,
    fastdfs: Option<tokio::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.store_lookup != StoreLookup::FixedGroup || config.store_group.is_some(),
        "store_lookup = fixed_group needs store_group"
    );
    anyhow::ensure!(
        config.heartbeat_timeout_ms > 0,
        "heartbeat_timeout_ms must be positive"
    );
    let state = AppState {
        secret: config.cluster_secret.as_deref().map(Arc::from),
        registry: Arc::new(Mutex::new(Registry::new(&config))),
    };
    let persister = match &config.data_dir {
        Some(dir) => {
            let dir = dir.clone();
            let d = dir.clone();
            let members = tokio::task::spawn_blocking(move || members::load(&d)).await??;
            tracing::info!(members = members.len(), dir = %dir.display(), "remembered members");
            state.registry().restore(members, Instant::now());
            Some(tokio::spawn(members::persist(state.registry.clone(), dir)))
        }
        None => None,
    };
    let registry_handle = state.registry.clone();
    let internal = Router::new()
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/assign", get(assign))
        .route("/v1/assign/batch", get(assign_batch))
        .route("/v1/locate/{*file_id}", get(locate))
        .route("/v1/members/{group}/{node_id}", delete(remove_member))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));
    let app = Router::new()
        .route("/cluster", get(cluster))
        .route("/health", get(health))
        .merge(internal)
        .fallback(|| async { Error::NoRoute })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(state);
    let app = fdfs_common::metrics::instrument(app, "tracker");
    tracing::info!(addr = %listener.local_addr()?, "tracker serving");
    // The FastDFS door (see `fastdfs`): its own listener, stopped by the same shutdown signal.
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let fastdfs_door = match fastdfs {
        Some(l) => {
            let door = fastdfs::Door {
                registry: registry_handle,
                width: config.fastdfs_ip_width,
            };
            let limits = fdfs_common::fastdfs::Limits {
                max_connections: config.fastdfs_max_connections,
                timeout: Duration::from_millis(config.fastdfs_timeout_ms.max(1)),
            };
            Some(tokio::spawn(fdfs_common::fastdfs::serve(
                l,
                limits,
                "tracker",
                move |conn| fastdfs::handle(door.clone(), conn),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let served = fdfs_common::serve::serve(listener, app, shutdown).await;
    if let Some(p) = persister {
        p.abort();
    }
    if let Some(mut door) = fastdfs_door {
        // Told to stop by the same signal; it drains its connections within its grace period (unless serving
        // HTTP failed without a shutdown: then it is aborted).
        let grace = fdfs_common::fastdfs::STOP_GRACE + Duration::from_secs(5);
        if tokio::time::timeout(grace, &mut door).await.is_err() {
            door.abort();
            let _ = door.await;
        }
    }
    served?;
    Ok(())
}

/// Reject internal requests without the configured cluster secret.
async fn require_secret(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(secret) = &state.secret {
        let given = req.headers().get(CLUSTER_SECRET_HEADER);
        if !given.is_some_and(|g| fdfs_common::constant_time_eq(g.as_bytes(), secret.as_bytes())) {
            return Error::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

async fn heartbeat(
    State(state): State<AppState>,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<HeartbeatReply>, Error> {
    let Json(hb) = body?;
    let peers = state.registry().heartbeat(hb, Instant::now());
    Ok(Json(HeartbeatReply { peers }))
}

#[derive(Deserialize)]
struct AssignQuery {
    group: Option<String>,
    #[serde(default)]
    size: u64,
    /// Node ids not to assign, comma separated (members that just turned this upload down).
    exclude: Option<String>,
}

async fn assign(
    State(state): State<AppState>,
    query: Result<Query<AssignQuery>, QueryRejection>,
) -> Result<Json<Assignment>, Error> {
    let Query(q) = query?;
    let group = match q.group.as_deref() {
        None | Some("") => None,
        Some(g) => Some(g.parse::<GroupName>()?),
    };
    let exclude = q
        .exclude
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                Error::Rejected(
                    axum::http::StatusCode::BAD_REQUEST,
                    format!("exclude must be node ids separated by commas, not {s:?}"),
                )
            })
        })
        .collect::<Result<Vec<u32>, Error>>()?;
    let assignment =
        state
            .registry()
            .assign_excluding(group.as_ref(), q.size, Instant::now(), &exclude)?;
    Ok(Json(assignment))
}

/// Most assignments one `/v1/assign/batch` answers.
const MAX_BATCH: usize = 64;

#[derive(Deserialize)]
struct BatchQuery {
    group: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

/// `GET /v1/assign/batch?count=N`: the next N assignments, exactly as N calls of `/v1/assign` in a row would
/// give them (the round-robin cursors advance N times), so a gateway that uses them in order places files as
/// if it had asked each time. Stops early at the first failure; the first one failing is the answer.
async fn assign_batch(
    State(state): State<AppState>,
    query: Result<Query<BatchQuery>, QueryRejection>,
) -> Result<Json<Vec<Assignment>>, Error> {
    let Query(q) = query?;
    let group = match q.group.as_deref() {
        None | Some("") => None,
        Some(g) => Some(g.parse::<GroupName>()?),
    };
    let now = Instant::now();
    let mut registry = state.registry();
    let mut out = Vec::with_capacity(q.count.clamp(1, MAX_BATCH));
    for _ in 0..q.count.clamp(1, MAX_BATCH) {
        match registry.assign(group.as_ref(), q.size, now) {
            Ok(a) => out.push(a),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(Json(out))
}

async fn locate(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Locations>, Error> {
    let Path(file_id) = path?;
    let id: FileId = file_id.parse()?;
    Ok(Json(state.registry().locate(&id, Instant::now())?))
}

/// `DELETE /v1/members/{group}/{node_id}` (internal): forget an offline member.
async fn remove_member(
    State(state): State<AppState>,
    path: Result<Path<(String, u32)>, PathRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    let Path((group, node_id)) = path?;
    let group: GroupName = group.parse()?;
    state.registry().remove(&group, node_id, Instant::now())?;
    Ok(Json(
        serde_json::json!({ "group": group, "node_id": node_id, "removed": true }),
    ))
}

async fn cluster(State(state): State<AppState>) -> Json<ClusterView> {
    Json(state.registry().cluster(Instant::now()))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "role": "tracker",
        "version": fdfs_common::VERSION,
    }))
}
