//! `PUT /import/{file_id}`: store a file under the ID it already has (moving an existing FastDFS store into fdfs,
//! `fdfs import-fastdfs --gateway URL`). The caller chooses the ID, so the route needs the API key (header
//! `x-api-key`) or the cluster secret (header `x-fdfs-cluster-secret`); with neither configured on the gateway it
//! is switched off (403). The body streams to a member of the ID's group (`PUT /v1/import/{file_id}` on the
//! storage node, which checks it against the ID and replicates it like an upload); its answer is passed on.
//! Query: `meta` (a JSON object of strings), `mtime` (unix seconds).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fdfs_common::wire::{API_KEY_HEADER, CLUSTER_SECRET_HEADER};
use fdfs_common::FileId;
use futures_util::StreamExt;

use crate::error::{GatewayError, Result};
use crate::App;

/// Whether `headers` carry the configured API key or cluster secret.
fn authorized(app: &App, headers: &HeaderMap) -> Result<()> {
    let matches = |header: &str, expected: &Option<String>| {
        expected
            .as_deref()
            .is_some_and(|e| fdfs_common::internal::header_matches(headers, header, e))
    };
    let (key, secret) = (&app.config.api_key, &app.config.cluster_secret);
    if key.is_none() && secret.is_none() {
        return Err(GatewayError::Forbidden(
            "imports are switched off: the gateway has neither an api_key nor a cluster_secret"
                .into(),
        ));
    }
    if matches(API_KEY_HEADER, key) || matches(CLUSTER_SECRET_HEADER, secret) {
        Ok(())
    } else {
        Err(GatewayError::Unauthorized)
    }
}

/// Middleware of the import route: refuse before the body is read unless the request is authorized.
pub(crate) async fn gate(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match authorized(&app, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `PUT /import/{file_id}`.
pub(crate) async fn import(
    State(app): State<Arc<App>>,
    path: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>> {
    let Path(raw) = path.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let Query(query) = query.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let id: FileId = raw.parse()?;
    if let Some((k, _)) = query.iter().find(|(k, _)| k != "meta" && k != "mtime") {
        return Err(GatewayError::BadRequest(format!(
            "unknown query parameter {k:?} (expected meta, mtime)"
        )));
    }
    let limit = app.config.max_upload_size;
    let length = fdfs_common::internal::declared_within(&headers, limit)?;
    let locations = app.tracker.locate(&id).await?;
    let addr = &locations.members[0].addr;
    // The client's body as it arrives, cut when it stalls longer than the body timeout or passes the limit.
    let (timeout, secs) = (app.body_timeout(), app.config.body_timeout_secs);
    let stream = body.into_data_stream();
    let forwarded = futures_util::stream::unfold(
        (stream, 0u64, false),
        move |(mut stream, seen, done)| async move {
            if done {
                return None;
            }
            let item = match tokio::time::timeout(timeout, stream.next()).await {
                Err(_) => Err(std::io::Error::other(GatewayError::BodyTimeout(secs))),
                Ok(None) => return None,
                Ok(Some(Err(e))) => Err(std::io::Error::other(e)),
                Ok(Some(Ok(chunk))) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > limit {
                        Err(std::io::Error::other(GatewayError::TooLarge { limit }))
                    } else {
                        return Some((Ok(chunk), (stream, seen, false)));
                    }
                }
            };
            Some((item, (stream, seen, true)))
        },
    );
    let answer = app
        .storage
        .import(
            addr,
            &id,
            &query,
            length,
            reqwest::Body::wrap_stream(forwarded),
        )
        .await?;
    Ok(Json(answer))
}
