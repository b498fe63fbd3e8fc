//! Routes on existing files: download (`GET|HEAD /{file_id}`, redirect or proxy), `DELETE /{file_id}`,
//! `GET /info/{file_id}` and `GET|PUT|PATCH /meta/{file_id}`; plus `/cluster` and `/health`.
//!
//! Each locates the file's group through a tracker first; the members come back best first (holders, then
//! members that would proxy the read).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fdfs_common::wire::{ClusterView, FileInfo, Metadata};
use fdfs_common::FileId;
use serde_json::Value;

use crate::error::{GatewayError, Result};
use crate::{App, DownloadMode};

/// Request headers passed to the storage node in proxy mode.
const PROXY_REQUEST_HEADERS: [header::HeaderName; 5] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
    header::ACCEPT,
];

/// Response headers that belong to one connection, never passed on.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The file ID of a `/{*file_id}`-style path.
fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<FileId> {
    let Path(raw) = path.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    Ok(raw.parse::<FileId>()?)
}

impl App {
    /// `?token=..&ts=..` when an anti-leech secret is configured, with the leading `?`.
    pub(crate) fn token_query(&self, id: &FileId) -> String {
        match &self.config.anti_leech_secret {
            Some(secret) => format!(
                "?{}",
                fdfs_common::token::query(id, secret, fdfs_common::time::unix_now())
            ),
            None => String::new(),
        }
    }

    /// Addresses of the members that can serve `id`, best first, with their public URLs.
    pub(crate) async fn members(&self, id: &FileId) -> Result<Vec<(String, String)>> {
        let loc = self.tracker.locate(id).await?;
        let mut members: Vec<(String, String)> = loc
            .members
            .into_iter()
            .map(|m| (m.addr, m.public_url.trim_end_matches('/').to_owned()))
            .collect();
        // A member found frozen lately is asked (or redirected to) last.
        self.storage.suspects.last(&mut members, |(a, _)| a);
        Ok(members)
    }

    /// The public URL of the first of `members` that answers (see [`crate::storage::StorageClient::answers`]):
    /// a client is never redirected to a node found frozen or dead. Suspects come last in `members` (see
    /// [`App::members`]), so they are asked only when no other member answers.
    async fn answering<'m>(&self, members: &'m [(String, String)]) -> Result<&'m str> {
        for (addr, public_url) in members {
            if self.storage.answers(addr).await {
                return Ok(public_url);
            }
        }
        Err(GatewayError::BadGateway(
            "no storage member holding the file answers".into(),
        ))
    }

    pub(crate) async fn member_addrs(&self, id: &FileId) -> Result<Vec<String>> {
        Ok(self
            .members(id)
            .await?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }
}

/// `GET|HEAD /{file_id}`.
pub async fn download(
    State(app): State<Arc<App>>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let id = parse_id(path)?;
    let members = app.members(&id).await?;
    let mut token = app.token_query(&id);
    // `?attname=NAME` goes on to the node, which answers with `Content-Disposition`.
    if let Some(name) = fdfs_common::attname::from_query(query.as_deref()) {
        token.push(if token.is_empty() { '?' } else { '&' });
        token.push_str(&fdfs_common::attname::query_pair(&name));
    }
    match app.config.download_mode {
        DownloadMode::Redirect => {
            let public_url = app.answering(&members).await?;
            let location = format!("{public_url}/{id}{token}");
            let location = HeaderValue::from_str(&location).map_err(|_| {
                tracing::error!(%location, "storage public_url makes an invalid Location");
                GatewayError::BadGateway("storage node has an invalid public URL".into())
            })?;
            Ok((
                StatusCode::FOUND,
                [
                    (header::LOCATION, location),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response())
        }
        DownloadMode::Proxy => proxy(&app, method, &id, &members, &token, &headers).await,
    }
}

/// Stream the file from the first member that has it, passing status and headers through.
async fn proxy(
    app: &App,
    method: Method,
    id: &FileId,
    members: &[(String, String)],
    token: &str,
    headers: &HeaderMap,
) -> Result<Response> {
    let mut forward = HeaderMap::new();
    for name in PROXY_REQUEST_HEADERS {
        if let Some(v) = headers.get(&name) {
            forward.insert(name, v.clone());
        }
    }
    match app.fetch_from(&method, id, members, token, &forward).await {
        Some(resp) => Ok(pass_through(resp)),
        None => Err(GatewayError::BadGateway(
            "no storage member of the group could be reached".into(),
        )),
    }
}

impl App {
    /// Send `method` for `id` (with `token`, the `forward` headers) to `members` in turn: the first answer other
    /// than 404, else the last 404; `None` when no member could be reached.
    pub(crate) async fn fetch_from(
        &self,
        method: &Method,
        id: &FileId,
        members: &[(String, String)],
        token: &str,
        forward: &HeaderMap,
    ) -> Option<reqwest::Response> {
        let mut not_found = None;
        for (addr, _) in members {
            let url = format!("http://{addr}/{id}{token}");
            match self
                .storage
                .fetch(method.clone(), &url, forward.clone())
                .await
            {
                Ok(r) if r.status() == StatusCode::NOT_FOUND => not_found = Some(r),
                Ok(r) => return Some(r),
                Err(e) => tracing::warn!(storage = %addr, error = %e, "storage node unreachable"),
            }
        }
        not_found
    }
}

fn pass_through(resp: reqwest::Response) -> Response {
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "building the proxied response");
            GatewayError::BadGateway("bad answer from storage node".into()).into_response()
        })
}

/// Query of `DELETE /{file_id}`.
#[derive(Debug, serde::Deserialize)]
pub struct DeleteQuery {
    /// `all`: every slave file of the master goes with it (rendered thumbnails always do).
    slaves: Option<String>,
}

/// `DELETE /{file_id}[?slaves=all]`: the file and the thumbnails rendered from it (with `slaves=all`, every
/// slave); the holder's answer lists the slaves deleted.
pub async fn delete(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    app.check_api_key(&headers)?;
    let id = parse_id(path)?;
    let Query(q) = query.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let suffix = match q.slaves.as_deref() {
        None => "",
        Some("all") => "?slaves=all",
        Some(other) => {
            return Err(GatewayError::BadRequest(format!(
                "slaves={other:?}: expected slaves=all (every slave file of the master is deleted with it)"
            )))
        }
    };
    let addrs = app.member_addrs(&id).await?;
    let answer: Value = app
        .storage
        .on_holder(
            &addrs,
            Method::DELETE,
            &format!("/v1/files/{id}{suffix}"),
            None::<&()>,
        )
        .await?;
    Ok(Json(answer))
}

/// `GET /info/{file_id}`: the holder's description, with `locations` = download URLs on every member that
/// has the file.
pub async fn info(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<FileInfo>> {
    let id = parse_id(path)?;
    let members = app.members(&id).await?;
    let addrs: Vec<String> = members.iter().map(|(a, _)| a.clone()).collect();
    let found: Vec<(usize, FileInfo)> = app
        .storage
        .on_all(&addrs, &format!("/v1/files/{id}"))
        .await?;
    let locations = found
        .iter()
        .map(|(i, _)| format!("{}/{id}", members[*i].1))
        .collect();
    let (_, mut info) = found
        .into_iter()
        .next()
        .expect("on_all returns at least one");
    info.locations = locations;
    Ok(Json(info))
}

/// `GET /meta/{file_id}`.
pub async fn get_meta(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Metadata>> {
    let id = parse_id(path)?;
    let addrs = app.member_addrs(&id).await?;
    let meta = app
        .storage
        .on_holder(&addrs, Method::GET, &format!("/v1/meta/{id}"), None::<&()>)
        .await?;
    Ok(Json(meta))
}

/// `PUT /meta/{file_id}`: replace the metadata with a JSON object of strings.
pub async fn put_meta(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<Metadata>, JsonRejection>,
) -> Result<Json<Metadata>> {
    app.check_api_key(&headers)?;
    let id = parse_id(path)?;
    let Json(meta) = body.map_err(|e| meta_body_error("strings", &e))?;
    write_meta(&app, Method::PUT, &id, &meta).await
}

/// `PATCH /meta/{file_id}`: merge a JSON object of strings; a `null` value removes the key.
pub async fn patch_meta(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<BTreeMap<String, Option<String>>>, JsonRejection>,
) -> Result<Json<Metadata>> {
    app.check_api_key(&headers)?;
    let id = parse_id(path)?;
    let Json(changes) = body.map_err(|e| meta_body_error("strings or nulls", &e))?;
    write_meta(&app, Method::PATCH, &id, &changes).await
}

fn meta_body_error(what: &str, e: &JsonRejection) -> GatewayError {
    GatewayError::BadRequest(format!(
        "metadata must be a JSON object of {what}: {}",
        e.body_text()
    ))
}

async fn write_meta(
    app: &App,
    method: Method,
    id: &FileId,
    body: &(impl serde::Serialize + Sync),
) -> Result<Json<Metadata>> {
    let addrs = app.member_addrs(id).await?;
    let meta = app
        .storage
        .on_holder(&addrs, method, &format!("/v1/meta/{id}"), Some(body))
        .await?;
    Ok(Json(meta))
}

/// `GET /cluster`.
pub async fn cluster(State(app): State<Arc<App>>) -> Result<Json<ClusterView>> {
    Ok(Json(app.tracker.cluster().await?))
}

/// `GET /health`.
/// `GET /health`: ready to take requests, or 503 with why not (stopping, no tracker reachable).
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let reason = if app.stopping.is_set() {
        Some("stopping".to_owned())
    } else if !app.tracker.any_reachable().await {
        Some(format!(
            "no tracker reachable (tried {})",
            app.tracker.addrs().join(", ")
        ))
    } else {
        None
    };
    fdfs_common::health::answer("gateway", reason)
}
