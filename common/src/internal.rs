//! The plumbing of internal HTTP, once for every process: the client that calls other fdfs processes
//! ([`builder`]), the cluster secret on those calls ([`WithSecret`]) and its check on the routes that take them
//! ([`ClusterSecret`], [`require_secret`]), and the request headers several routes read ([`header_u64`],
//! [`content_length`], [`declared_within`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, AsHeaderName};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::wire::CLUSTER_SECRET_HEADER;

/// A client builder for calls to other fdfs processes: no proxy from the environment, pooled connections
/// dropped after [`crate::serve::CLIENT_POOL_IDLE`] (before the server closes them). Callers add their timeouts.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(crate::serve::CLIENT_POOL_IDLE)
}

/// Attaching the cluster secret to an outgoing internal request.
pub trait WithSecret {
    /// The request with [`CLUSTER_SECRET_HEADER`] set to `secret`, when one is configured (unchanged for `None`).
    #[must_use]
    fn secret(self, secret: Option<&str>) -> Self;
}

impl WithSecret for reqwest::RequestBuilder {
    fn secret(self, secret: Option<&str>) -> Self {
        match secret {
            Some(s) => self.header(CLUSTER_SECRET_HEADER, s),
            None => self,
        }
    }
}

/// Whether `headers` carry `name` with the value `expected`, compared in time that does not depend on where
/// they differ.
pub fn header_matches(headers: &HeaderMap, name: &str, expected: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| crate::constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

/// The cluster secret a server requires on its internal routes; `None`: none is configured and every request
/// passes. State of [`require_secret`].
#[derive(Debug, Clone, Default)]
pub struct ClusterSecret(Option<Arc<str>>);

impl ClusterSecret {
    /// The configured secret (`None`: none).
    pub fn new(secret: Option<&str>) -> Self {
        Self(secret.map(Arc::from))
    }

    /// Whether a request with `headers` may use the internal routes: it carries the secret, or none is set.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        self.0
            .as_deref()
            .is_none_or(|secret| header_matches(headers, CLUSTER_SECRET_HEADER, secret))
    }
}

/// Message of the 401 (`unauthorized`) answered to an internal request without the cluster secret.
pub const WRONG_SECRET: &str = "missing or wrong cluster secret";

/// Middleware of the internal routes: 401 `unauthorized` ([`WRONG_SECRET`]) unless the request carries the
/// configured cluster secret (`axum::middleware::from_fn_with_state(secret, require_secret)`).
pub async fn require_secret(
    State(secret): State<ClusterSecret>,
    req: Request,
    next: Next,
) -> Response {
    if !secret.admits(req.headers()) {
        return crate::error_response(StatusCode::UNAUTHORIZED, "unauthorized", WRONG_SECRET);
    }
    next.run(req).await
}

/// A header's value as a number (surrounding spaces allowed); `None` when it is absent or not a number.
pub fn header_u64(headers: &HeaderMap, name: impl AsHeaderName) -> Option<u64> {
    parse_header_u64(headers, name).ok().flatten()
}

/// A header's value as a number: `Ok(None)` when it is absent, [`NotANumber`] when it is there but no number
/// (the caller answers 400 in its own words).
pub fn parse_header_u64(
    headers: &HeaderMap,
    name: impl AsHeaderName,
) -> Result<Option<u64>, NotANumber> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(NotANumber),
    }
}

/// A header that should hold a number and does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotANumber;

/// The request's declared body length (`Content-Length`), when it has one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_u64(headers, header::CONTENT_LENGTH)
}

/// A declared body length over the limit a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// The limit that was passed.
    pub limit: u64,
}

/// The pre-check of an upload before any of its body is read: its declared length ([`content_length`]), or
/// [`OverLimit`] when that is over `limit` (the route answers 413 at once).
pub fn declared_within(headers: &HeaderMap, limit: u64) -> Result<Option<u64>, OverLimit> {
    match content_length(headers) {
        Some(n) if n > limit => Err(OverLimit { limit }),
        declared => Ok(declared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn ask(secret: Option<&str>, sent: Option<&str>) -> (StatusCode, serde_json::Value) {
        let app = Router::new()
            .route("/v1/x", get(|| async { "{}" }))
            .route_layer(axum::middleware::from_fn_with_state(
                ClusterSecret::new(secret),
                require_secret,
            ));
        let mut req = axum::http::Request::get("/v1/x");
        if let Some(s) = sent {
            req = req.header(CLUSTER_SECRET_HEADER, s);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn internal_routes_need_the_secret_when_one_is_set() {
        assert_eq!(ask(None, None).await.0, StatusCode::OK);
        assert_eq!(ask(Some("s3cret"), Some("s3cret")).await.0, StatusCode::OK);
        for sent in [None, Some("wrong"), Some("s3cre")] {
            let (status, body) = ask(Some("s3cret"), sent).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"]["code"], "unauthorized");
            assert_eq!(body["error"]["message"], WRONG_SECRET);
        }
    }

    #[test]
    fn numbers_in_headers_and_the_declared_length() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_header_u64(&h, "x-n"), Ok(None));
        assert_eq!(declared_within(&h, 10), Ok(None));
        h.insert("x-n", " 42 ".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(header_u64(&h, "x-n"), Some(42));
        assert_eq!(content_length(&h), Some(11));
        assert_eq!(declared_within(&h, 11), Ok(Some(11)));
        assert_eq!(declared_within(&h, 10), Err(OverLimit { limit: 10 }));
        h.insert("x-n", "-1".parse().unwrap());
        assert_eq!(parse_header_u64(&h, "x-n"), Err(NotANumber));
        assert_eq!(header_u64(&h, "x-n"), None);
    }
}
