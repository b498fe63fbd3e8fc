//! Carries the request's `x-request-id` (set by the shared metrics layer) to the trackers and storage nodes
//! the gateway calls on its behalf, so one id follows a request through every process's logs.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// Middleware: run the rest of the request with its id in scope.
pub async fn scope(req: Request, next: Next) -> Response {
    match req
        .headers()
        .get(&fdfs_common::metrics::REQUEST_ID)
        .cloned()
    {
        Some(id) => REQUEST_ID.scope(id, next.run(req)).await,
        None => next.run(req).await,
    }
}

/// Add the current request's id, if any, to an outgoing request.
pub fn propagate(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match REQUEST_ID.try_with(HeaderValue::clone) {
        Ok(id) => req.header(fdfs_common::metrics::REQUEST_ID, id),
        Err(_) => req,
    }
}
