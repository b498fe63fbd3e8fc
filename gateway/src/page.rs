//! `GET /`: a self-contained upload page for browsers (inline CSS and JS, no external assets).

use axum::http::header;
use axum::response::IntoResponse;

/// The page, compiled in.
const INDEX_HTML: &str = include_str!("index.html");

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}
