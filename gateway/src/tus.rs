//! Resumable uploads: the tus 1.0 protocol at `/tus/` (core, creation, creation-with-upload,
//! creation-defer-length, termination, expiration, checksum with sha1 and md5).
//!
//! The gateway keeps nothing: `POST /tus/` asks a tracker for a storage node and creates an appender file there
//! (see the storage node's `appender` module); the upload ID names that node and file,
//! `{group}.{node id as 8 hex}.{appender name}`, so any gateway routes a later request by asking the trackers
//! where that node is. Chunks stream through to the node, which appends them durably at the expected offset
//! (409 otherwise), checks `Upload-Checksum` (460 and the chunk is discarded) and, when the last byte arrives,
//! commits the file like any upload (FastDFS ID, dedup, write quorum); that final `PATCH` answers `Fdfs-File-Id`
//! and `GET /tus/{id}` then gives the `POST /upload` JSON. Unfinished uploads expire after `tus_expiry_secs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use fdfs_common::appender::{
    valid_name, AppenderCount, AppenderInfo, Checksum, ChecksumAlgorithm, NewAppender,
    CHECKSUM_HEADER, LENGTH_HEADER, OFFSET_HEADER,
};
use fdfs_common::fileid::ext_from_filename;
use fdfs_common::wire::MemberState;
use fdfs_common::GroupName;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::error::{GatewayError, Result};
use crate::upload::{Budget, UploadFields};
use crate::App;

/// The protocol version spoken.
pub const TUS_VERSION: &str = "1.0.0";
/// Extensions supported (`Tus-Extension`).
pub const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum";
/// Header of the final `PATCH` (and `HEAD` of a finished upload): the file ID the upload became.
pub const FILE_ID_HEADER: &str = "fdfs-file-id";
/// Content type of chunks.
const CHUNK_TYPE: &str = "application/offset+octet-stream";
/// Chunks in flight between the client and the storage node.
const CHANNEL_CHUNKS: usize = 8;

/// Request headers a browser on another origin may send (added to the CORS layer).
pub const CORS_ALLOW_HEADERS: [&str; 8] = [
    "tus-resumable",
    "upload-length",
    "upload-defer-length",
    "upload-metadata",
    "upload-offset",
    "upload-checksum",
    "x-http-method-override",
    "x-requested-with",
];
/// Response headers a browser on another origin may read (added to the CORS layer).
pub const CORS_EXPOSE_HEADERS: [&str; 11] = [
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "upload-offset",
    "upload-length",
    "upload-defer-length",
    "upload-metadata",
    "upload-expires",
    FILE_ID_HEADER,
];

/// The `/tus` routes. Creation, appends and termination go through the upload gate (API key, declared length,
/// a refused body drained); `HEAD`, `GET` and `OPTIONS` do not.
pub(crate) fn router(app: Arc<App>) -> Router<Arc<App>> {
    let gate = axum::middleware::from_fn_with_state(app, crate::upload::gate);
    let writes_root = on(MethodFilter::POST, create).layer(gate.clone());
    let root = on(MethodFilter::OPTIONS, options).merge(writes_root);
    let writes = on(MethodFilter::PATCH, patch).delete(terminate).layer(gate);
    let one = on(MethodFilter::OPTIONS, options)
        .head(head)
        .get(get)
        .merge(writes);
    Router::new()
        .route("/tus/", root)
        .route("/tus/{upload_id}", one)
        .layer(axum::middleware::map_response(tus_resumable))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// Every answer says `Tus-Resumable: 1.0.0`.
async fn tus_resumable(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        HeaderName::from_static("tus-resumable"),
        HeaderValue::from_static(TUS_VERSION),
    );
    resp
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::Upstream {
        status,
        code: code.to_owned(),
        message: message.into(),
    }
}

/// 412 unless the client speaks 1.0.0 (a missing header is accepted).
fn check_version(headers: &HeaderMap) -> Result<()> {
    match headers.get("tus-resumable") {
        Some(v) if v.as_bytes() != TUS_VERSION.as_bytes() => Err(err(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            "unsupported Tus-Resumable version (this server speaks 1.0.0)",
        )),
        _ => Ok(()),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>> {
    fdfs_common::internal::parse_header_u64(headers, name)
        .map_err(|_| GatewayError::BadRequest(format!("{name} must be a non-negative integer")))
}

fn http_date(unix: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

/// Where an upload lives: `{group}.{node id hex}.{appender name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadId {
    /// Group of the node holding the appender file.
    pub group: GroupName,
    /// That node's id.
    pub node_id: u32,
    /// The appender file's name on it.
    pub name: String,
}

impl UploadId {
    /// Parse an upload URL's last segment; `None` when it is not one this gateway made.
    pub fn parse(s: &str) -> Option<UploadId> {
        let mut parts = s.split('.');
        let (g, n, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || n.len() != 8 || !valid_name(name) {
            return None;
        }
        Some(UploadId {
            group: g.parse().ok()?,
            node_id: u32::from_str_radix(n, 16).ok()?,
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:08x}.{}", self.group, self.node_id, self.name)
    }
}

fn no_upload(raw: &str) -> GatewayError {
    err(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such upload {raw}"),
    )
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs.
fn parse_metadata(value: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, v) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| {
                GatewayError::BadRequest(format!("Upload-Metadata {key}: value is not base64"))
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            GatewayError::BadRequest(format!("Upload-Metadata {key}: value is not UTF-8"))
        })?;
        out.push((key.to_owned(), text));
    }
    Ok(out)
}

impl App {
    /// The address of the node an upload lives on, from the trackers' view of the cluster.
    async fn upload_node(&self, raw: &str) -> Result<(UploadId, String)> {
        let id = UploadId::parse(raw).ok_or_else(|| no_upload(raw))?;
        let view = self.tracker.cluster().await?;
        let member = view
            .groups
            .iter()
            .filter(|g| g.name == id.group)
            .flat_map(|g| g.members.iter())
            .find(|m| m.node_id == id.node_id)
            .ok_or_else(|| no_upload(raw))?;
        Ok((id, member.addr.clone()))
    }

    /// Tag of the client, for the limit on unfinished uploads (one API key per gateway).
    fn tus_owner(&self) -> String {
        if self.config.api_key.is_some() {
            "api-key".into()
        } else {
            "anonymous".into()
        }
    }

    /// 429 when the owner already has `tus_max_unfinished_per_key` unfinished uploads on the cluster's nodes.
    async fn check_unfinished_limit(&self, owner: &str) -> Result<()> {
        let limit = self.config.tus_max_unfinished_per_key;
        let view = self.tracker.cluster().await?;
        let path = format!("/v1/appender?owner={owner}");
        let counts = futures_util::future::join_all(
            view.groups
                .iter()
                .flat_map(|g| g.members.iter())
                .filter(|m| m.state != MemberState::Offline)
                .map(|m| {
                    self.storage.appender_call::<AppenderCount>(
                        &m.addr,
                        Method::GET,
                        &path,
                        None::<&()>,
                    )
                }),
        )
        .await;
        let unfinished: u64 = counts.into_iter().flatten().map(|c| c.unfinished).sum();
        if unfinished >= limit {
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!("at most {limit} unfinished resumable uploads at a time; finish or terminate one"),
            ));
        }
        Ok(())
    }

    /// Stream `body` to the node as an append at `offset`, cutting a stalled body with 408 and a body past
    /// `max_upload_size` with 413.
    async fn append(
        &self,
        addr: &str,
        name: &str,
        append_headers: Vec<(&'static str, String)>,
        body: Body,
    ) -> Result<AppenderInfo> {
        let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(CHANNEL_CHUNKS);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let send = self.storage.appender_append::<AppenderInfo>(
            addr,
            name,
            &append_headers,
            reqwest::Body::wrap_stream(stream),
        );
        let timeout = self.body_timeout();
        let timeout_secs = self.config.body_timeout_secs;
        let mut budget = Budget::new(self.config.max_upload_size);
        let mut src = body.into_data_stream();
        let pump = async move {
            loop {
                let next = match tokio::time::timeout(timeout, src.next()).await {
                    Err(_) => Err(GatewayError::BodyTimeout(timeout_secs)),
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(e))) => Err(GatewayError::BadRequest(format!(
                        "reading the request body: {e}"
                    ))),
                    Ok(Some(Ok(b))) => budget.take(b.len()).map(|()| b),
                };
                match next {
                    Ok(chunk) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the node answered early; its answer says why
                        }
                    }
                    Err(e) => {
                        // End the node's body with an error: it keeps what arrived (unless checksummed).
                        let _ = tx.send(Err(std::io::Error::other("chunk aborted"))).await;
                        return Err(e);
                    }
                }
            }
        };
        let (pumped, sent) = tokio::join!(pump, send);
        match (pumped, sent) {
            (_, Ok(info)) => Ok(info),
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    fn signed(&self, mut r: fdfs_common::wire::UploadResult) -> fdfs_common::wire::UploadResult {
        if let Some(secret) = &self.config.anti_leech_secret {
            if !r.url.contains('?') {
                let q =
                    fdfs_common::token::query(&r.file_id, secret, fdfs_common::time::unix_now());
                r.url = format!("{}?{q}", r.url);
            }
        }
        r
    }
}

/// The upload's state as tus headers.
fn state_headers(resp: &mut Response, info: &AppenderInfo) {
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set("upload-offset", info.offset.to_string());
    match info.length {
        Some(l) => set("upload-length", l.to_string()),
        None => set("upload-defer-length", "1".into()),
    }
    if info.file.is_none() {
        set("upload-expires", http_date(info.expires));
    }
    if let Some(f) = &info.file {
        set(FILE_ID_HEADER, f.file_id.to_string());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `OPTIONS /tus/` and `/tus/{id}`: what this server supports.
async fn options(State(app): State<Arc<App>>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(ChecksumAlgorithm::SUPPORTED),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from(app.config.max_upload_size),
    );
    resp
}

fn is_chunk(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or_default().trim() == CHUNK_TYPE)
}

/// Whether the request carries a body (a declared non-zero length or a chunked one).
fn has_body(headers: &HeaderMap) -> bool {
    match header_u64(headers, "content-length") {
        Ok(Some(n)) => n > 0,
        Ok(None) => headers.contains_key(header::TRANSFER_ENCODING),
        Err(_) => false,
    }
}

fn append_headers(headers: &HeaderMap, offset: u64) -> Result<Vec<(&'static str, String)>> {
    let mut out = vec![(OFFSET_HEADER, offset.to_string())];
    if let Some(l) = header_u64(headers, "upload-length")? {
        out.push((LENGTH_HEADER, l.to_string()));
    }
    if let Some(c) = headers.get("upload-checksum") {
        let c = Checksum::parse(c.to_str().unwrap_or_default())
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        out.push((CHECKSUM_HEADER, c.header_value()));
    }
    Ok(out)
}

/// `POST /tus/`: create an upload (creation, creation-defer-length), with its first chunk in the body
/// (creation-with-upload).
async fn create(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Result<Response> {
    check_version(&headers)?;
    let length = header_u64(&headers, "upload-length")?;
    let deferred = headers
        .get("upload-defer-length")
        .is_some_and(|v| v.as_bytes() == b"1");
    if length.is_none() && !deferred {
        return Err(GatewayError::BadRequest(
            "Upload-Length or Upload-Defer-Length: 1 is required".into(),
        ));
    }
    let limit = app.config.max_upload_size;
    if length.is_some_and(|l| l > limit) {
        return Err(GatewayError::TooLarge { limit });
    }
    let mut fields = UploadFields::default();
    let mut filename = None;
    if let Some(m) = headers.get("upload-metadata") {
        let m = m
            .to_str()
            .map_err(|_| GatewayError::BadRequest("Upload-Metadata is not ASCII".into()))?;
        for (k, v) in parse_metadata(m)? {
            match k.as_str() {
                "filename" | "name" => filename = Some(v),
                _ => {
                    fields.apply(&k, &v)?;
                }
            }
        }
    }
    let owner = app.tus_owner();
    app.check_unfinished_limit(&owner).await?;
    let assignment = app.tracker.assign(fields.group.as_ref(), length).await?;
    let new = NewAppender {
        store_path: assignment.store_path,
        length,
        ext: filename.as_deref().and_then(ext_from_filename),
        filename,
        meta: fields.meta.clone(),
        expires_in: app.config.tus_expiry_secs.max(1),
        owner: Some(owner),
    };
    let mut info: AppenderInfo = app
        .storage
        .appender_call(&assignment.addr, Method::POST, "/v1/appender", Some(&new))
        .await?;
    let id = UploadId {
        group: assignment.group.clone(),
        node_id: assignment.node_id,
        name: info.name.clone(),
    };
    let with_data = is_chunk(&headers) && has_body(&headers);
    if with_data || length == Some(0) {
        let mut h = append_headers(&headers, 0)?;
        h.retain(|(k, _)| *k != LENGTH_HEADER);
        info = app.append(&assignment.addr, &info.name, h, body).await?;
    }
    let mut resp = StatusCode::CREATED.into_response();
    state_headers(&mut resp, &info);
    let location = HeaderValue::from_str(&format!("/tus/{id}"))
        .map_err(|_| GatewayError::BadGateway("bad upload name from storage node".into()))?;
    resp.headers_mut().insert(header::LOCATION, location);
    tracing::info!(upload = %id, storage = %assignment.addr, "resumable upload created");
    Ok(resp)
}

/// `HEAD /tus/{id}`: the offset (and length) of an upload.
async fn head(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    check_version(&headers)?;
    let (id, addr) = app.upload_node(&raw).await?;
    let info: AppenderInfo = app
        .storage
        .appender_call(
            &addr,
            Method::GET,
            &format!("/v1/appender/{}", id.name),
            None::<&()>,
        )
        .await?;
    let mut resp = StatusCode::OK.into_response();
    state_headers(&mut resp, &info);
    Ok(resp)
}

/// `GET /tus/{id}`: the `POST /upload` JSON of a finished upload; 409 while it is unfinished.
async fn get(State(app): State<Arc<App>>, Path(raw): Path<String>) -> Result<Response> {
    let (id, addr) = app.upload_node(&raw).await?;
    let info: AppenderInfo = app
        .storage
        .appender_call(
            &addr,
            Method::GET,
            &format!("/v1/appender/{}", id.name),
            None::<&()>,
        )
        .await?;
    match info.file.clone() {
        Some(f) => {
            let mut resp = Json(app.signed(f)).into_response();
            state_headers(&mut resp, &info);
            Ok(resp)
        }
        None => Err(err(
            StatusCode::CONFLICT,
            "unfinished",
            format!(
                "upload {raw} is unfinished: {} of {} bytes",
                info.offset,
                info.length.map_or("?".to_owned(), |l| l.to_string())
            ),
        )),
    }
}

/// `PATCH /tus/{id}`: append a chunk at `Upload-Offset`.
async fn patch(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    check_version(&headers)?;
    if !is_chunk(&headers) {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a chunk has Content-Type: {CHUNK_TYPE}"),
        ));
    }
    let offset = header_u64(&headers, "upload-offset")?
        .ok_or_else(|| GatewayError::BadRequest("Upload-Offset is required".into()))?;
    let h = append_headers(&headers, offset)?;
    let (id, addr) = app.upload_node(&raw).await?;
    let info = app.append(&addr, &id.name, h, body).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    state_headers(&mut resp, &info);
    if let Some(f) = &info.file {
        tracing::info!(upload = %id, file_id = %f.file_id, "resumable upload finished");
    }
    Ok(resp)
}

/// `DELETE /tus/{id}` (termination): the partial upload is removed (a finished file stays).
async fn terminate(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    check_version(&headers)?;
    let (id, addr) = app.upload_node(&raw).await?;
    let _: serde_json::Value = app
        .storage
        .appender_call(
            &addr,
            Method::DELETE,
            &format!("/v1/appender/{}", id.name),
            None::<&()>,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_round_trip_and_reject_paths() {
        let id = UploadId {
            group: "group1".parse().unwrap(),
            node_id: 0xb9de43cc,
            name: "00".to_owned() + &"ab".repeat(16),
        };
        let s = id.to_string();
        assert_eq!(UploadId::parse(&s), Some(id));
        assert_eq!(UploadId::parse("group1.b9de43cc.../../etc"), None);
        assert_eq!(UploadId::parse("group1.b9de43cc"), None);
        assert_eq!(UploadId::parse(&format!("{s}.x")), None);
    }

    #[test]
    fn metadata_pairs_decode() {
        let m = parse_metadata(
            "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,meta.a Yg==",
        )
        .unwrap();
        assert_eq!(
            m,
            vec![
                ("filename".into(), "world_domination_plan.pdf".into()),
                ("is_confidential".into(), String::new()),
                ("meta.a".into(), "b".into()),
            ]
        );
        assert!(parse_metadata("filename !!!").is_err());
    }
}
