//! Prometheus metrics and request tracing shared by every server.
//!
//! Code anywhere records through the `metrics` facade (`metrics::counter!`, `gauge!`, `histogram!`); this module
//! installs the process-wide Prometheus recorder once and gives each server the same outer layers through
//! [`instrument`]: `GET /metrics`, an `x-request-id` on every request and response, a tracing span per request
//! carrying that id, and per-route request counts and latency.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

/// Header carrying the request id (set when the client sent none, echoed back).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Latency buckets, seconds: from a cache hit to a multi-gigabyte transfer.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// The process-wide recorder, installed on first use (tests run many servers in one process, so this is
/// idempotent and never fails the caller).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .expect("static bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a library user's); then we render an empty registry.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

async fn render() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

async fn record(role: &'static str, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [
        ("role", role.to_owned()),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("fdfs_http_requests_total", &labels).increment(1);
    metrics::histogram!("fdfs_http_request_duration_seconds", &labels[..3])
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Request ids made without a system call per request (a random UUID costs a `getrandom` each): a random
/// 64-bit prefix drawn once per process, then a counter. Unique across a cluster's processes with overwhelming
/// probability, and sortable by arrival within one process.
#[derive(Clone, Copy, Default)]
pub struct MakeRequestSeq;

impl MakeRequestId for MakeRequestSeq {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(rand::random::<u64>);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{prefix:016x}-{n:08x}");
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(RequestId::new)
    }
}

/// Wrap a server's router with `/metrics`, request ids, tracing spans and request metrics.
/// `role` labels the metrics (`tracker`, `storage`, `gateway`).
pub fn instrument(router: Router, role: &'static str) -> Router {
    handle();
    router
        .route("/metrics", get(render))
        .route_layer(middleware::from_fn(move |req, next| record(role, req, next)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestSeq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_and_request_ids_are_served() {
        let app = instrument(
            Router::new().route("/ping", get(|| async { "pong" })),
            "test",
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{addr}/ping"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-request-id"));
        let r = client
            .get(format!("http://{addr}/ping"))
            .header("x-request-id", "abc-123")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "abc-123");
        let text = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("fdfs_http_requests_total"), "{text}");
        assert!(text.contains("route=\"/ping\""), "{text}");
        assert!(
            text.contains("fdfs_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
