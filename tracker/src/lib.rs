//! fdfs tracker: keeps an in-memory view of the storage members (rebuilt from their heartbeats within one
//! interval after a restart) and answers where to upload (`/v1/assign`) and where to read (`/v1/locate`).
//! Trackers are equal peers and never talk to each other; every storage node heartbeats to all of them.
//!
//! This module owns the config and the HTTP routes (internal ones behind
//! [`fdfs_common::internal::require_secret`]); [`registry`] owns the scheduling decisions and [`error`] the
//! error responses.

pub mod cli;
pub mod error;
pub mod fastdfs;
mod members;
pub mod registry;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::middleware;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fdfs_common::config::Size;
use fdfs_common::internal::ClusterSecret;
use fdfs_common::serve::Listeners;
use fdfs_common::wire::{Assignment, ClusterView, Heartbeat, HeartbeatReply, Locations};
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
    /// Address to bind, `host:port` (used by [`cli::main`]; `run` takes an already bound listener).
    pub listen: Option<String>,
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
            listen: None,
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
    secret: ClusterSecret,
    /// When this tracker started, and how long it needs to have heard every live member (one heartbeat
    /// timeout): until then an answer that no member could give ("no storage", "unknown group", "no room") may
    /// only mean that member has not beaten here yet, so it is refused (503) and gateways ask another tracker.
    started: Instant,
    warmup: Duration,
    stopping: fdfs_common::health::Stopping,
    /// Why the member list could not be saved lately (the data_dir went read-only or full).
    save_error: Arc<Mutex<Option<String>>>,
    /// Asks a member reported unresponsive for its `/livez` (bounded by [`SUSPECT_PROBE_TIMEOUT`]).
    probe: reqwest::Client,
}

/// How long a member reported unresponsive has to answer this tracker's own `/livez` probe.
const SUSPECT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl AppState {
    /// The registry, held only for one synchronous call (never across an await).
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds since start while still warming up.
    fn warming_up(&self) -> Option<u64> {
        let up = self.started.elapsed();
        (up < self.warmup).then(|| u64::try_from(up.as_millis()).unwrap_or(u64::MAX))
    }

    /// An error answer, unless it may only come from not having heard every member yet.
    fn settled(&self, e: Error) -> Error {
        match (&e, self.warming_up()) {
            (
                Error::NoStorage(_) | Error::UnknownGroup(_) | Error::InsufficientStorage(_),
                Some(ms),
            ) => Error::WarmingUp(ms),
            _ => e,
        }
    }
}

/// Serve the tracker on its HTTP listener until `shutdown` resolves, and the FastDFS door on the FastDFS
/// listener given, else on `fastdfs_listen` when set (bound here, announced as `fastdfs listening on ADDR`).
pub async fn run(
    listeners: impl Into<Listeners>,
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
    let (listener, fastdfs) = listeners
        .into()
        .bind_fastdfs(config.fastdfs_listen.as_deref())
        .await?;
    let state = AppState {
        secret: ClusterSecret::new(config.cluster_secret.as_deref()),
        registry: Arc::new(Mutex::new(Registry::new(&config))),
        started: Instant::now(),
        warmup: config.heartbeat_timeout(),
        stopping: fdfs_common::health::Stopping::default(),
        save_error: Arc::default(),
        probe: fdfs_common::internal::builder()
            .timeout(SUSPECT_PROBE_TIMEOUT)
            .build()?,
    };
    let persister = match &config.data_dir {
        Some(dir) => {
            let dir = dir.clone();
            let d = dir.clone();
            let (members, draining) =
                tokio::task::spawn_blocking(move || members::load(&d)).await??;
            tracing::info!(members = members.len(), dir = %dir.display(), "remembered members");
            state.registry().restore(members, Instant::now());
            state.registry().restore_draining(draining);
            Some(tokio::spawn(members::persist(
                state.registry.clone(),
                dir,
                state.save_error.clone(),
            )))
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
        .route("/v1/suspect", post(suspect))
        .route("/v1/members/{group}/{node_id}/leave", post(leave))
        .route(
            "/v1/members/{group}/{node_id}/drain",
            axum::routing::put(drain_on).delete(drain_off),
        )
        .route_layer(middleware::from_fn_with_state(
            state.secret.clone(),
            fdfs_common::internal::require_secret,
        ));
    let app = Router::new()
        .route("/cluster", get(cluster))
        .route("/health", get(health))
        .route(
            "/livez",
            get(|| async { fdfs_common::health::live("tracker") }),
        )
        .merge(internal)
        .fallback(|| async { Error::NoRoute })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(state.clone());
    let app = fdfs_common::metrics::instrument(app, "tracker");
    tracing::info!(addr = %listener.local_addr()?, "tracker serving");
    // The FastDFS door (see `fastdfs`): its own listener, stopped by the same shutdown signal.
    let stopping = state.stopping.clone();
    let shutdown = futures_util::FutureExt::shared(Box::pin(async move {
        shutdown.await;
        // `/health` turns unready; gateways move to another tracker on the closed connections.
        stopping.set();
    }));
    let fastdfs_door = match fastdfs {
        Some(l) => {
            let door = fastdfs::Door {
                registry: registry_handle,
                width: config.fastdfs_ip_width,
            };
            let limits = fdfs_common::fastdfs::Limits::new(
                config.fastdfs_max_connections,
                config.fastdfs_timeout_ms,
            );
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

async fn heartbeat(
    State(state): State<AppState>,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<HeartbeatReply>, Error> {
    let Json(hb) = body?;
    let (peers, draining) = state.registry().heartbeat(hb, Instant::now())?;
    Ok(Json(HeartbeatReply { peers, draining }))
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
    let assignment = state
        .registry()
        .assign_excluding(group.as_ref(), q.size, Instant::now(), &exclude)
        .map_err(|e| state.settled(e))?;
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
            Err(e) if out.is_empty() => return Err(state.settled(e)),
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
    let located = state.registry().locate(&id, Instant::now());
    Ok(Json(located.map_err(|e| state.settled(e))?))
}

/// `DELETE /v1/members/{group}/{node_id}` (internal): forget an offline member.
#[derive(Deserialize)]
struct SuspectQuery {
    /// The address the member announces (`host:port`).
    addr: String,
}

/// `POST /v1/suspect?addr=HOST:PORT` (internal): a gateway found that member unresponsive (it accepted a
/// connection but answered nothing, not even its `/livez`). This tracker asks its `/livez` itself and, when
/// that is silent too, assigns it no uploads and locates it last until it heartbeats again, instead of waiting
/// for the heartbeat timeout. Answers 202 at once (the probe runs on its own); 404 for an unknown address.
async fn suspect(
    State(state): State<AppState>,
    query: Result<Query<SuspectQuery>, QueryRejection>,
) -> Result<(axum::http::StatusCode, Json<serde_json::Value>), Error> {
    let Query(q) = query?;
    let Some((node_id, group)) = state.registry().member_at(&q.addr) else {
        return Err(Error::UnknownAddr(q.addr));
    };
    let addr = q.addr.clone();
    tokio::spawn(async move {
        let live = state
            .probe
            .get(format!("http://{addr}/livez"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if live {
            tracing::info!(node_id, %group, %addr, "member reported unresponsive answers its /livez: kept");
        } else {
            tracing::warn!(node_id, %group, %addr, "member reported unresponsive does not answer /livez either: no uploads, located last, until it heartbeats again");
            state.registry().suspect(node_id, Instant::now());
        }
    });
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(serde_json::json!({ "addr": q.addr, "node_id": node_id, "probing": true })),
    ))
}

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

#[derive(Deserialize)]
struct LeaveQuery {
    #[serde(default)]
    instance: u64,
}

/// `POST /v1/members/{group}/{node_id}/leave?instance=N` (internal): a member stopping cleanly is offline at once.
async fn leave(
    State(state): State<AppState>,
    path: Result<Path<(String, u32)>, PathRejection>,
    query: Result<Query<LeaveQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    let Path((group, node_id)) = path?;
    let Query(q) = query?;
    let group: GroupName = group.parse()?;
    state
        .registry()
        .leave(&group, node_id, q.instance, Instant::now())?;
    Ok(Json(
        serde_json::json!({ "group": group, "node_id": node_id, "state": "offline" }),
    ))
}

/// `PUT|DELETE /v1/members/{group}/{node_id}/drain` (internal): start or stop draining a member.
async fn drain(
    state: AppState,
    path: Result<Path<(String, u32)>, PathRejection>,
    on: bool,
) -> Result<Json<serde_json::Value>, Error> {
    let Path((group, node_id)) = path?;
    let group: GroupName = group.parse()?;
    state.registry().drain(&group, node_id, on)?;
    Ok(Json(
        serde_json::json!({ "group": group, "node_id": node_id, "draining": on }),
    ))
}

async fn drain_on(
    State(state): State<AppState>,
    path: Result<Path<(String, u32)>, PathRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    drain(state, path, true).await
}

async fn drain_off(
    State(state): State<AppState>,
    path: Result<Path<(String, u32)>, PathRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    drain(state, path, false).await
}

/// `GET /cluster`: every group and member. Without the cluster secret (when one is set) only what users see
/// anyway: each member's `addr` is the host:port of its public URL, never an internal address.
async fn cluster(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Json<ClusterView> {
    let mut view = state.registry().cluster(Instant::now());
    if !state.secret.admits(&headers) {
        for m in view.groups.iter_mut().flat_map(|g| g.members.iter_mut()) {
            let public = m
                .public_url
                .split_once("://")
                .map_or(&*m.public_url, |(_, r)| r);
            m.addr = public.split('/').next().unwrap_or(public).to_owned();
        }
    }
    Json(view)
}

/// `GET /health`: ready unless stopping, warming up (not every member heard yet) or unable to save members.
async fn health(State(state): State<AppState>) -> Response {
    let reason = if state.stopping.is_set() {
        Some("stopping".to_owned())
    } else if let Some(err) = state
        .save_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        Some(err)
    } else {
        state.warming_up().map(|ms| {
            format!(
                "warming up: started {ms} ms ago, hearing from every storage node takes {} ms",
                state.warmup.as_millis()
            )
        })
    };
    fdfs_common::health::answer("tracker", reason)
}
