//! `/health` and `/livez` on every server, and the order in which a server stops.
//!
//! - `GET /livez`: the process answers (200 always): for a supervisor deciding whether to restart it.
//! - `GET /health`: the server is ready to do its job: 200 `{"status": "ok", ...}`, or 503
//!   `{"status": "unavailable", "reason": "...", ...}` when it cannot (no tracker reachable, store path unwritable
//!   or full, draining, catching up, stopping): for load balancers, compose health checks and operators.
//!
//! Stopping ([`stop_after`]): on SIGTERM a server first turns `/health` unready, runs its farewell (a storage
//! node tells the trackers it leaves), keeps serving for its `shutdown_delay_ms` while every answer closes its
//! connection (so load balancers and pooled clients move elsewhere without a request racing a closing
//! connection), then stops accepting, answers the requests in flight and exits.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Set once the server was asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    /// Mark the server as stopping.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the server is stopping.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/health` answer: ready, or 503 with why not.
pub fn answer(role: &str, not_ready: Option<String>) -> Response {
    match not_ready {
        None => Json(serde_json::json!({
            "status": "ok",
            "role": role,
            "version": crate::VERSION,
        }))
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unavailable",
                "role": role,
                "version": crate::VERSION,
                "reason": reason,
            })),
        )
            .into_response(),
    }
}

/// `/livez` answer: the process is up.
pub fn live(role: &str) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "role": role,
        "version": crate::VERSION,
    }))
    .into_response()
}

/// Middleware: once stopping, every answer closes its connection.
pub async fn close_when_stopping(
    State(stopping): State<Stopping>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    if stopping.is_set() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The shutdown future to give [`crate::serve::serve`]: when `signal` resolves, mark `stopping`, run `farewell`,
/// keep serving for `delay`, then resolve (the server stops accepting and drains).
pub async fn stop_after<F: Future<Output = ()>>(
    signal: impl Future<Output = ()>,
    stopping: Stopping,
    farewell: impl FnOnce() -> F,
    delay: Duration,
) {
    signal.await;
    stopping.set();
    farewell().await;
    if !delay.is_zero() {
        tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "stopping: unready, still serving during shutdown_delay_ms"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!("stopping: no new connections; answering the requests in flight");
}
