//! fdfs gateway: the public HTTP API of a cluster (see `openapi.yaml` and `docs/PROTOCOL.md`).
//!
//! Uploads are streamed to the storage node a tracker assigns, downloads are redirected (or proxied) to a
//! member that holds the file. The gateway keeps no state of its own beyond which tracker answered last, except
//! the S3 door's namespace (bucket/key -> file ID, see [`s3`]) when that door is on.

pub mod cli;
mod dashboard;
pub mod error;
mod files;
mod import;
mod page;
mod replay;
pub mod request_id;
pub mod s3;
pub mod storage;
pub mod thumbnails;
pub mod tracker;
pub mod tus;
pub mod upload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde::{Deserialize, Deserializer};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

pub use error::GatewayError;

/// How `GET /{file_id}` serves a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DownloadMode {
    /// 302 to the storage node's public URL (the gateway moves no file bytes).
    #[default]
    Redirect,
    /// Stream the file through the gateway.
    Proxy,
}

/// Gateway configuration (TOML keys; flags and `FDFS_*` env override them, see [`cli::Args`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (used by the binary; `run` takes a bound listener).
    pub listen: Option<String>,
    /// Tracker peers, `host:port`, tried in order starting from the last one that answered. TOML key `tracker`
    /// (the flag's name; `trackers` is still read).
    #[serde(rename = "tracker", alias = "trackers")]
    pub trackers: Vec<String>,
    /// Largest upload accepted, in bytes (TOML accepts sizes such as `"8GiB"`). Over it: 413.
    #[serde(deserialize_with = "de_size")]
    pub max_upload_size: u64,
    /// Shared secret sent to trackers and storage nodes on internal routes.
    pub cluster_secret: Option<String>,
    /// When set, uploads, deletes and metadata writes need header `x-api-key` with this value.
    pub api_key: Option<String>,
    /// When set, download redirects carry a FastDFS anti-leech `?token=&ts=`.
    pub anti_leech_secret: Option<String>,
    /// Origins allowed by CORS; empty disables CORS, `"*"` allows any origin.
    pub cors_origins: Vec<String>,
    /// Redirect (default) or proxy downloads.
    pub download_mode: DownloadMode,
    /// A request body that sends nothing for this long is cut with 408.
    pub body_timeout_secs: u64,
    /// Bound on requests that carry no file stream (everything but uploads and proxied downloads), and on
    /// connecting to / asking trackers and storage nodes.
    pub request_timeout_secs: u64,
    /// Gray failures: a tracker that has not answered within this many milliseconds is given up for the next
    /// one; a storage node that has not answered for this long is asked its `/livez`, and given up (the work
    /// goes to another node) when that does not answer within half of it either.
    pub unresponsive_ms: u64,
    /// Seconds an unfinished resumable (tus) upload lives before its storage node removes it.
    pub tus_expiry_secs: u64,
    /// Unfinished resumable uploads one API key (or, without one, all clients) may have at a time; over it 429.
    pub tus_max_unfinished_per_key: u64,
    /// On SIGTERM the gateway turns `/health` unready and keeps serving this long (every answer closing its
    /// connection) before it stops accepting; requests in flight then finish. Give load balancers in front the
    /// time to notice.
    pub shutdown_delay_ms: u64,
    /// The S3-compatible door's listen address (`host:port`); none: no S3 door (see [`s3`] and docs/S3.md).
    pub s3_listen: Option<String>,
    /// Where the S3 door keeps its namespace (needed with `s3_listen`, unless `s3_postgres` is set).
    pub s3_data_dir: Option<std::path::PathBuf>,
    /// The S3 door's namespace in PostgreSQL (`postgres://user:password@host:port/database`), shared by every
    /// gateway given the same URL; none: the embedded namespace under `s3_data_dir` (one gateway).
    pub s3_postgres: Option<String>,
    /// An access key of the S3 door with every bucket (with `s3_secret_key`).
    pub s3_access_key: Option<String>,
    /// The secret of `s3_access_key`.
    pub s3_secret_key: Option<String>,
    /// More access keys of the S3 door, each with `access_key`, `secret_key`, optional `buckets` (the buckets it
    /// may use; all when absent) and `read_only`.
    pub s3_keys: Vec<s3::S3Key>,
    /// Buckets whose objects anyone may read (and list) without a signature.
    pub s3_public_buckets: Vec<String>,
    /// Origins whose pages may call the S3 door from a browser (CORS: presigned PUTs and GETs from `fetch`);
    /// empty disables CORS, `"*"` allows any origin. The door's own, apart from `cors_origins`.
    pub s3_cors_origins: Vec<String>,
    /// Domains of virtual-host-style requests: `Host: photos.s3.example.com` with `s3.example.com` here names
    /// bucket `photos` (the path is then the key). Path style works on any host, these domains included.
    pub s3_domains: Vec<String>,
    /// The name of this door's namespace, tagged on every file it stores: a rebuild and the orphan collector
    /// touch only files with this name. Gateways with their own namespaces on one cluster need distinct names.
    pub s3_namespace: String,
    /// Seconds between two passes of the S3 door's orphan collector (0: none), which deletes object and part
    /// files no key points at (a gateway killed between storing a file and recording its key).
    pub s3_collect_interval_secs: u64,
    /// Age in seconds a file no key points at must reach before the collector deletes it (a younger one may
    /// belong to an upload whose key is about to be recorded).
    pub s3_orphan_grace_secs: u64,
    /// Multipart uploads neither completed nor aborted this many seconds after they were created are aborted by
    /// the collector, their parts deleted (S3's `AbortIncompleteMultipartUpload` lifecycle rule, for every
    /// bucket); 0: kept until a client aborts them.
    pub s3_upload_expiry_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: None,
            trackers: Vec::new(),
            max_upload_size: 8 << 30,
            cluster_secret: None,
            api_key: None,
            anti_leech_secret: None,
            cors_origins: Vec::new(),
            download_mode: DownloadMode::Redirect,
            body_timeout_secs: 60,
            request_timeout_secs: 30,
            unresponsive_ms: 2000,
            tus_expiry_secs: 86_400,
            tus_max_unfinished_per_key: 1000,
            shutdown_delay_ms: 0,
            s3_listen: None,
            s3_data_dir: None,
            s3_postgres: None,
            s3_access_key: None,
            s3_secret_key: None,
            s3_keys: Vec::new(),
            s3_public_buckets: Vec::new(),
            s3_domains: Vec::new(),
            s3_cors_origins: Vec::new(),
            s3_namespace: "s3".into(),
            s3_collect_interval_secs: 6 * 3600,
            s3_orphan_grace_secs: 3600,
            s3_upload_expiry_secs: 7 * 86_400,
        }
    }
}

impl Config {
    /// Every access key of the S3 door: `s3_access_key` with `s3_secret_key`, then `s3_keys`.
    pub fn s3_all_keys(&self) -> Vec<s3::S3Key> {
        let mut keys = Vec::new();
        if let (Some(a), Some(s)) = (&self.s3_access_key, &self.s3_secret_key) {
            keys.push(s3::S3Key {
                access_key: a.clone(),
                secret_key: s.clone(),
                buckets: Vec::new(),
                read_only: false,
            });
        }
        keys.extend(
            self.s3_keys
                .iter()
                .filter(|k| Some(&k.access_key) != self.s3_access_key.as_ref())
                .cloned(),
        );
        keys
    }

    /// Check what can be checked before binding: trackers configured, CORS origins valid.
    pub fn validate(&self) -> Result<(), StartError> {
        if self.trackers.is_empty() {
            return Err(StartError::NoTracker);
        }
        cors_layer(&self.cors_origins)?;
        if self.s3_access_key.is_some() != self.s3_secret_key.is_some() {
            return Err(StartError::S3(
                "s3_access_key and s3_secret_key go together".into(),
            ));
        }
        Ok(())
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match fdfs_common::config::Size::deserialize(d)? {
        fdfs_common::config::Size::Bytes(n) => Ok(n),
        fdfs_common::config::Size::Percent(_) => Err(serde::de::Error::custom(
            "max_upload_size must be a size, not a percentage",
        )),
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) tracker: tracker::TrackerClient,
    pub(crate) storage: storage::StorageClient,
    /// Set on SIGTERM: `/health` answers 503 and every answer closes its connection.
    pub(crate) stopping: fdfs_common::health::Stopping,
}

impl App {
    pub(crate) fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.config.body_timeout_secs.max(1))
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `trackers` is empty.
    #[error("no tracker configured (--tracker ADDR[,ADDR..])")]
    NoTracker,
    /// An entry of `cors_origins` is not a valid header value.
    #[error("invalid CORS origin {0:?}")]
    CorsOrigin(String),
    /// The HTTP client for trackers and storage nodes could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The listener failed while serving.
    #[error("serving: {0}")]
    Serve(#[from] std::io::Error),
    /// The S3 door is misconfigured or its namespace cannot be opened.
    #[error("S3 door: {0}")]
    S3(String),
}

/// The gateway's routes with their layers.
pub fn router(config: Config) -> Result<Router, StartError> {
    router_with(config, fdfs_common::health::Stopping::default())
}

/// [`router`], turning unready (and closing connections) once `stopping` is set.
pub fn router_with(
    config: Config,
    stopping: fdfs_common::health::Stopping,
) -> Result<Router, StartError> {
    Ok(build(config, stopping)?.1)
}

/// The shared state and the gateway's routes.
fn build(
    config: Config,
    stopping: fdfs_common::health::Stopping,
) -> Result<(Arc<App>, Router), StartError> {
    config.validate()?;
    let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
    let unresponsive = Duration::from_millis(config.unresponsive_ms.max(10)).min(timeout);
    let app = Arc::new(App {
        // Trackers answer from memory: one that is silent this long is frozen or gone.
        tracker: tracker::TrackerClient::new(
            config.trackers.clone(),
            config.cluster_secret.clone(),
            unresponsive,
        )?,
        storage: storage::StorageClient::new(config.cluster_secret.clone(), timeout, unresponsive)?,
        config,
        stopping: stopping.clone(),
    });
    // Storage nodes the gateway finds frozen are reported to the trackers (see `storage`), from a task that
    // ends with the app.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        app.storage.suspects.report_to(tx);
        let weak = Arc::downgrade(&app);
        rt.spawn(async move {
            while let Some(addr) = rx.recv().await {
                let Some(app) = weak.upgrade() else { break };
                app.tracker.report_suspect(&addr).await;
            }
        });
    }
    let cors = cors_layer(&app.config.cors_origins)?;

    // Uploads stream for as long as the client keeps sending: no body limit from axum (the handler enforces
    // `max_upload_size`) and no total timeout (the handler cuts stalls).
    let uploads = Router::new()
        .route("/upload", post(upload::multipart_upload))
        .route("/upload/{filename}", put(upload::raw_upload))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        // A refusal after the body started (no storage node could take it) drains what the client is still
        // sending, so that it reads the JSON error instead of a cut connection.
        .layer(axum::middleware::from_fn(fdfs_common::drain::drain_refused))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            upload::gate,
        ));
    // Downloads in proxy mode stream their answer; the timeout covers only getting the headers.
    let bounded = Router::new()
        .route("/", get(page::index))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/stats", get(dashboard::stats))
        .route("/health", get(files::health))
        .route(
            "/livez",
            get(|| async { fdfs_common::health::live("gateway") }),
        )
        .route("/cluster", get(files::cluster))
        .route("/info/{*file_id}", get(files::info))
        .route(
            "/meta/{*file_id}",
            get(files::get_meta)
                .put(files::put_meta)
                .patch(files::patch_meta),
        )
        .route(
            "/{*file_id}",
            get(files::download)
                .head(files::download)
                .delete(files::delete),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::map_response(json_timeout));
    // `PUT /import/{file_id}`: streams like an upload; refused bodies are drained so the client reads why.
    let imports = Router::new()
        .route("/import/{*file_id}", put(import::import))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            import::gate,
        ))
        .layer(axum::middleware::from_fn(fdfs_common::drain::drain_refused));
    let shared = app.clone();
    let routes = uploads
        // Resumable uploads (tus): streamed like uploads, no total timeout.
        .merge(tus::router(app.clone()))
        .merge(imports)
        .merge(bounded)
        .fallback(|| async { GatewayError::NoRoute })
        .layer(axum::middleware::from_fn(request_id::scope))
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            stopping,
            fdfs_common::health::close_when_stopping,
        ));
    let mut router = fdfs_common::metrics::instrument(routes, "gateway");
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    Ok((shared, router))
}

/// The S3 door's routes on `app`, its namespace in PostgreSQL (`s3_postgres`) or opened from `s3_data_dir`.
fn s3_router(app: Arc<App>, stopping: fdfs_common::health::Stopping) -> Result<Router, StartError> {
    if app.config.s3_all_keys().is_empty() && app.config.s3_public_buckets.is_empty() {
        return Err(StartError::S3(
            "no access key (--s3-access-key and --s3-secret-key, or [[s3_keys]])".into(),
        ));
    }
    let ns = match (&app.config.s3_postgres, &app.config.s3_data_dir) {
        (Some(url), _) => s3::namespace::Namespace::shared(url)
            .map_err(|e| StartError::S3(format!("s3_postgres: {e}")))?,
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::S3(format!("creating {}: {e}", dir.display())))?;
            s3::namespace::Namespace::embedded(dir).map_err(|e| {
                StartError::S3(format!("opening the namespace in {}: {e}", dir.display()))
            })?
        }
        (None, None) => {
            return Err(StartError::S3(
                "s3_listen needs s3_data_dir (--s3-data-dir) or s3_postgres (--s3-postgres)".into(),
            ))
        }
    };
    // An embedded namespace whose directory exists is ready now. Else, before the door answers: connect and
    // create the schema (PostgreSQL), and rebuild from the storage nodes a namespace that is new or lost.
    let ready: s3::Ready = Arc::new(std::sync::atomic::AtomicBool::new(matches!(
        &ns,
        s3::namespace::Namespace::Embedded(e) if !e.lost
    )));
    if !ready.load(std::sync::atomic::Ordering::Acquire) {
        let (app, ns, ready) = (app.clone(), ns.clone(), ready.clone());
        tokio::spawn(async move {
            loop {
                match prepare_s3(&app, &ns).await {
                    Ok(()) => {
                        ready.store(true, std::sync::atomic::Ordering::Release);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "preparing the S3 namespace failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    // Buckets recorded before buckets had marker files get one, once the door is ready (retried while the
    // storage nodes cannot take a write).
    {
        let (app, ns, ready) = (Arc::downgrade(&app), ns.clone(), ready.clone());
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                let Some(app) = app.upgrade() else { return };
                if !ready.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                match s3::rebuild::mark_buckets(&app, &ns).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(marked = n, "S3 buckets given their marker files");
                        }
                        return;
                    }
                    Err(e) => {
                        wait = (wait * 2).min(Duration::from_secs(300));
                        tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "giving S3 buckets their marker files failed");
                    }
                }
            }
        });
    }
    if app.config.s3_collect_interval_secs > 0 {
        let (app, ns, ready) = (Arc::downgrade(&app), ns.clone(), ready.clone());
        tokio::spawn(async move {
            loop {
                let Some(interval) = app.upgrade().map(|a| a.config.s3_collect_interval_secs)
                else {
                    return;
                };
                tokio::time::sleep(Duration::from_secs(interval)).await;
                let Some(app) = app.upgrade() else { return };
                if !ready.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                let expiry = app.config.s3_upload_expiry_secs;
                if expiry > 0 {
                    let expiry = Duration::from_secs(expiry);
                    match s3::rebuild::expire_uploads(&app, &ns, expiry).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(aborted = n, "S3 multipart uploads expired"),
                        Err(e) => {
                            tracing::warn!(error = %e, "expiring S3 multipart uploads failed")
                        }
                    }
                }
                let grace = Duration::from_secs(app.config.s3_orphan_grace_secs);
                match s3::rebuild::collect(&app, &ns, grace).await {
                    Ok(n) => tracing::info!(removed = n, "S3 orphan collection done"),
                    Err(e) => {
                        tracing::warn!(error = %e, "S3 orphan collection failed; next pass later")
                    }
                }
            }
        });
    }
    let cors = allow_origin(&app.config.s3_cors_origins)?.map(s3::cors);
    let mut routes = s3::router(app, ns, ready);
    if let Some(cors) = cors {
        routes = routes.layer(cors);
    }
    let routes = routes
        .layer(axum::middleware::from_fn(request_id::scope))
        .layer(axum::middleware::from_fn_with_state(
            stopping,
            fdfs_common::health::close_when_stopping,
        ));
    Ok(fdfs_common::metrics::instrument(routes, "gateway_s3"))
}

/// Make the S3 door's namespace usable, rebuilding it from the storage nodes when it is new or lost.
async fn prepare_s3(app: &App, ns: &s3::namespace::Namespace) -> anyhow::Result<()> {
    let n = ns.clone();
    if !tokio::task::spawn_blocking(move || n.prepare()).await?? {
        return Ok(());
    }
    let r = s3::rebuild::rebuild(app, ns).await?;
    tracing::info!(
        listed = r.listed,
        objects = r.objects,
        buckets = r.buckets,
        "S3 namespace rebuilt from the storage nodes"
    );
    Ok(())
}

/// `TimeoutLayer` answers a bare 408; give it the JSON error body every answer has.
async fn json_timeout(resp: Response) -> Response {
    if resp.status() == StatusCode::REQUEST_TIMEOUT
        && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return fdfs_common::error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "request took too long",
        );
    }
    resp
}

async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}

/// The origins of `cors_origins` or `s3_cors_origins`; `None` when empty (no CORS).
fn allow_origin(origins: &[String]) -> Result<Option<AllowOrigin>, StartError> {
    if origins.is_empty() {
        return Ok(None);
    }
    if origins.iter().any(|o| o == "*") {
        return Ok(Some(AllowOrigin::any()));
    }
    let list = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| StartError::CorsOrigin(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(AllowOrigin::list(list)))
}

fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, StartError> {
    let Some(allow) = allow_origin(origins)? else {
        return Ok(None);
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(
                [
                    header::CONTENT_TYPE,
                    header::RANGE,
                    HeaderName::from_static(fdfs_common::wire::API_KEY_HEADER),
                ]
                .into_iter()
                // Resumable uploads (tus).
                .chain(tus::CORS_ALLOW_HEADERS.map(HeaderName::from_static))
                .collect::<Vec<_>>(),
            )
            .expose_headers(
                [header::LOCATION, header::CONTENT_LENGTH, header::ETAG]
                    .into_iter()
                    // Resumable uploads (tus).
                    .chain(tus::CORS_EXPOSE_HEADERS.map(HeaderName::from_static))
                    .collect::<Vec<_>>(),
            ),
    ))
}

/// Serve the gateway on `listener` until `shutdown` resolves; then `/health` turns unready, the gateway keeps
/// serving for `shutdown_delay_ms`, stops accepting and answers the requests in flight before it returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_with_s3(listener, None, config, shutdown).await
}

/// [`run`], with the S3 door on `s3` when given (see [`s3`]).
pub async fn run_with_s3(
    listener: tokio::net::TcpListener,
    s3: Option<tokio::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use futures_util::FutureExt as _;
    let stopping = fdfs_common::health::Stopping::default();
    let delay = Duration::from_millis(config.shutdown_delay_ms);
    let (app, router) = build(config, stopping.clone())?;
    let s3_router = match &s3 {
        Some(_) => Some(s3_router(app, stopping.clone())?),
        None => None,
    };
    let shutdown =
        fdfs_common::health::stop_after(shutdown, stopping, || std::future::ready(()), delay)
            .boxed()
            .shared();
    let main = fdfs_common::serve::serve(listener, router, shutdown.clone());
    match (s3, s3_router) {
        (Some(l), Some(r)) => {
            let (a, b) = tokio::join!(main, fdfs_common::serve::serve(l, r, shutdown));
            a?;
            b?;
        }
        _ => main.await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_sizes_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            "trackers = [\"127.0.0.1:22122\"]\nmax_upload_size = \"10MiB\"\ndownload_mode = \"proxy\"\n",
        )
        .unwrap();
        assert_eq!(c.max_upload_size, 10 << 20);
        assert_eq!(c.download_mode, DownloadMode::Proxy);
        assert_eq!(c.body_timeout_secs, 60);
        assert!(toml::from_str::<Config>("max_upload_size = \"10%\"").is_err());
        assert!(toml::from_str::<Config>("max_uplod_size = 1").is_err());
        assert_eq!(Config::default().max_upload_size, 8 << 30);
    }
}
