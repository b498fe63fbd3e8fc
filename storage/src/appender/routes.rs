//! `/v1/appender` routes (behind the cluster secret): thin wrappers over [`super::Appenders`].
//!
//! - `POST /v1/appender` JSON [`NewAppender`] -> [`AppenderInfo`]
//! - `GET /v1/appender?owner=TAG` -> [`AppenderCount`] (unfinished uploads of that owner here)
//! - `GET /v1/appender/{name}` -> [`AppenderInfo`]
//! - `PATCH /v1/appender/{name}` body = the chunk; headers `x-fdfs-offset` (required), `x-fdfs-length`,
//!   `x-fdfs-checksum` -> [`AppenderInfo`] (with `file` once finished); 409 offset mismatch, 460 checksum
//!   mismatch, 410 expired, 423 another append running
//! - `DELETE /v1/appender/{name}` -> `{"deleted": true}`

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use fdfs_common::appender::{
    AppenderCount, AppenderInfo, Checksum, NewAppender, CHECKSUM_HEADER, LENGTH_HEADER,
    OFFSET_HEADER,
};
use serde::Deserialize;

use super::Append;
use crate::error::{Result, StorageError};
use crate::AppState;

/// The routes, to be merged behind the cluster secret.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/appender", get(count).post(create))
        .route(
            "/v1/appender/{name}",
            get(info)
                .patch(append)
                .delete(abort)
                .layer(DefaultBodyLimit::disable()),
        )
}

async fn create(
    State(node): State<AppState>,
    body: std::result::Result<Json<NewAppender>, JsonRejection>,
) -> Result<Json<AppenderInfo>> {
    let Json(new) = body.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    Ok(Json(node.appenders.create(new).await?))
}

#[derive(Debug, Deserialize)]
struct CountQuery {
    owner: String,
}

async fn count(
    State(node): State<AppState>,
    query: std::result::Result<Query<CountQuery>, QueryRejection>,
) -> Result<Json<AppenderCount>> {
    let Query(q) = query.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    let unfinished = node.appenders.count_unfinished(&q.owner).await?;
    Ok(Json(AppenderCount { unfinished }))
}

async fn info(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AppenderInfo>> {
    Ok(Json(node.appenders.get(&name).await?))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>> {
    fdfs_common::internal::parse_header_u64(headers, name)
        .map_err(|_| StorageError::BadRequest(format!("{name} must be a number")))
}

async fn append(
    State(node): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AppenderInfo>> {
    let offset = header_u64(&headers, OFFSET_HEADER)?
        .ok_or_else(|| StorageError::BadRequest(format!("{OFFSET_HEADER} is required")))?;
    let length = header_u64(&headers, LENGTH_HEADER)?;
    let checksum = match headers.get(CHECKSUM_HEADER) {
        None => None,
        Some(v) => Some(
            Checksum::parse(v.to_str().unwrap_or_default())
                .map_err(|e| StorageError::BadRequest(e.to_string()))?,
        ),
    };
    let req = Append {
        offset,
        length,
        checksum,
    };
    Ok(Json(
        node.appenders
            .append(&name, req, body.into_data_stream())
            .await?,
    ))
}

async fn abort(
    State(node): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>> {
    if !node.appenders.abort(&name).await? {
        return Err(StorageError::NotFound(format!("no such upload {name}")));
    }
    Ok(Json(serde_json::json!({ "deleted": true })))
}
