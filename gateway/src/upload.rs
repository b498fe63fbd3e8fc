//! Uploads: `POST /upload` (multipart/form-data) and `PUT /upload/{filename}` (raw body).
//!
//! Nothing is buffered: each file part is read chunk by chunk in the handler and handed over a small bounded
//! channel to the streamed request body going to the storage node, both sides awaited together. The size
//! limit and the stall timeout are enforced on every chunk; when either trips, the storage request body ends
//! with an error (never a clean end), so the storage node discards its partial file.
//!
//! Multipart fields are state that accumulates in order: `group`, `meta.<key>`, `master_file_id` and `prefix`
//! apply to every file part that follows them. `meta.*` fields after the last file part are applied to that
//! last file with a follow-up metadata PUT (its whole accumulated metadata). A placement field (`group`,
//! `master_file_id`, `prefix`, `thumbnails`) after a file part comes too late for it: the request is refused
//! with 400 and the files it stored are deleted. Fields with unknown names are ignored.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use fdfs_common::fileid::{ext_from_filename, validate_prefix};
use fdfs_common::internal::{content_length, declared_within};
use fdfs_common::wire::{Metadata, UploadResult};
use fdfs_common::{FileId, GroupName};
use futures_util::StreamExt;
use reqwest::Method;
use tokio::sync::mpsc;

use crate::error::{GatewayError, Result};

/// Assignments asked of the trackers for one upload whose storage nodes turn it down before reading it.
const MAX_ASSIGNMENTS: usize = 5;
use crate::replay::Replay;
use crate::storage::UploadParams;
use crate::App;

/// Longest accepted text field (`group`, `meta.*`, ...), in bytes.
pub const MAX_FIELD_LEN: usize = 64 * 1024;
/// Largest metadata of one file, as JSON, in bytes. It travels to the storage node percent-encoded in the upload's
/// query string, which must stay well under the 64 KiB a URI may have; it also bounds what a request can make
/// the gateway hold in memory.
pub const MAX_META_JSON_LEN: usize = 16 * 1024;
/// Multipart framing a request may carry on top of `max_upload_size` before the up-front Content-Length check
/// refuses it (the exact limit is enforced on the content while streaming).
const MULTIPART_SLACK: u64 = 1 << 20;
/// Chunks in flight between the client side and the storage side of one upload.
const CHANNEL_CHUNKS: usize = 8;

/// Fields that shape the next file parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UploadFields {
    /// `group`: the group to upload to; `None`: the tracker chooses.
    pub group: Option<GroupName>,
    /// `meta.<key>` fields: metadata of the following files.
    pub meta: Metadata,
    /// `master_file_id`: the following files are slaves of this master.
    pub master: Option<FileId>,
    /// `prefix`: the slave prefix, with `master_file_id`.
    pub prefix: Option<String>,
    /// Thumbnail sizes rendered right after each following file (`thumbnails=150x150,300x300`).
    pub thumbnails: Vec<String>,
    /// Size of `meta` as JSON, kept up to date by [`UploadFields::apply`].
    meta_json_len: usize,
}

/// Bytes one metadata entry takes in a JSON object: `"key":"value",`.
fn json_entry_len(key: &str, value: &str) -> usize {
    let quoted = |s: &str| serde_json::to_string(s).map_or(s.len() * 6 + 2, |q| q.len());
    quoted(key) + quoted(value) + 2
}

/// What a text field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `meta.<key>`.
    Meta,
    /// `group`, `master_file_id` or `prefix`.
    Placement,
    /// A name the gateway does not know; ignored.
    Unknown,
}

impl UploadFields {
    /// Apply one text field (multipart field or query parameter).
    pub fn apply(&mut self, name: &str, value: &str) -> Result<FieldKind> {
        let value = value.trim();
        if let Some(key) = name.strip_prefix("meta.") {
            if key.is_empty() {
                return Err(GatewayError::BadRequest(
                    "metadata field needs a key: meta.<key>".into(),
                ));
            }
            let replaced = self.meta.get(key).map_or(0, |old| json_entry_len(key, old));
            let len = self.meta_json_len - replaced + json_entry_len(key, value);
            if len > MAX_META_JSON_LEN {
                return Err(GatewayError::BadRequest(format!(
                    "metadata of one file is limited to {MAX_META_JSON_LEN} bytes as JSON"
                )));
            }
            self.meta_json_len = len;
            self.meta.insert(key.to_owned(), value.to_owned());
            return Ok(FieldKind::Meta);
        }
        match name {
            "group" => {
                self.group = if value.is_empty() {
                    None
                } else {
                    Some(value.parse()?)
                };
            }
            "master_file_id" => {
                self.master = if value.is_empty() {
                    None
                } else {
                    Some(value.parse()?)
                };
            }
            "prefix" => {
                if value.is_empty() {
                    self.prefix = None;
                } else {
                    validate_prefix(value)?;
                    self.prefix = Some(value.to_owned());
                }
            }
            "thumbnails" => self.thumbnails = crate::thumbnails::parse_sizes(value)?,
            // Per-file response headers are not stored: every door (nodes, nginx, CDNs) serves a file ID the same
            // way. Said at once instead of dropping the field silently.
            "content_type" | "cache_control" | "content_disposition" => {
                return Err(GatewayError::BadRequest(format!(
                    "{name} is not stored per file: a file is served with the Content-Type of its ID's extension \
                     (name the upload accordingly) and immutable caching (a file ID never changes); for a download \
                     under another name, add ?attname=NAME to its URL"
                )))
            }
            _ => return Ok(FieldKind::Unknown),
        }
        Ok(FieldKind::Placement)
    }

    /// Storage parameters for a file named `filename`.
    pub fn params(&self, filename: Option<&str>) -> Result<UploadParams> {
        let master = match (&self.master, &self.prefix) {
            (Some(m), Some(p)) => {
                if self.group.as_ref().is_some_and(|g| *g != m.group) {
                    return Err(GatewayError::BadRequest(format!(
                        "a slave file goes to its master's group {}, not the requested group",
                        m.group
                    )));
                }
                Some((m.clone(), p.clone()))
            }
            (None, None) => None,
            _ => {
                return Err(GatewayError::BadRequest(
                    "master_file_id and prefix go together".into(),
                ))
            }
        };
        Ok(UploadParams {
            ext: filename.and_then(ext_from_filename),
            master,
            meta: self.meta.clone(),
        })
    }
}

/// Byte budget of one request (`max_upload_size`).
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }

    /// Account for `n` more bytes; 413 once past the limit.
    pub fn take(&mut self, n: usize) -> Result<()> {
        self.used = self.used.saturating_add(n as u64);
        if self.used > self.limit {
            Err(GatewayError::TooLarge { limit: self.limit })
        } else {
            Ok(())
        }
    }
}

/// Something an upload reads its bytes from, chunk by chunk.
pub(crate) trait ChunkSource: Send {
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Result<Option<Bytes>>> + Send;
}

impl ChunkSource for Field<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        self.chunk().await.map_err(multipart_error)
    }
}

/// A raw request body.
struct BodySource(axum::body::BodyDataStream);

impl ChunkSource for BodySource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self.0.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(GatewayError::BadRequest(format!(
                "reading the request body: {e}"
            ))),
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> GatewayError {
    let status = e.status();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return GatewayError::BadRequest(e.body_text());
    }
    GatewayError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
}

impl App {
    /// Refuse the request unless it carries the configured API key.
    pub(crate) fn check_api_key(&self, headers: &HeaderMap) -> Result<()> {
        let Some(expected) = &self.config.api_key else {
            return Ok(());
        };
        let given = headers
            .get(fdfs_common::wire::API_KEY_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if fdfs_common::constant_time_eq(given, expected.as_bytes()) {
            Ok(())
        } else {
            Err(GatewayError::Unauthorized)
        }
    }

    /// Where the next file goes (node id, address, store path): the master's holder for a slave file, else a
    /// tracker assignment on any member but those in `exclude`.
    async fn target(
        &self,
        params: &UploadParams,
        fields: &UploadFields,
        size: Option<u64>,
        exclude: &[u32],
    ) -> Result<(u32, String, u8)> {
        if let Some((master, _)) = &params.master {
            let loc = self.tracker.locate(master).await?;
            let m = &loc.members[0];
            return Ok((m.node_id, m.addr.clone(), master.store_path));
        }
        let a = self
            .tracker
            .assign_excluding(fields.group.as_ref(), size, exclude)
            .await?;
        Ok((a.node_id, a.addr, a.store_path))
    }

    /// Send the body arriving on `rx` to the storage node the tracker assigns. A node that turns the upload
    /// down before reading any of it (it refuses the connection: down, and the tracker has not noticed yet; or
    /// it answers `quorum_unreachable`, `node_draining`, `node_stopping`), or whose connection breaks before it
    /// answers (it died: nothing was acknowledged) or whose disk fails the write (`disk_failed`), is left out and the tracker asked again, and the same body
    /// goes to the next assignment while it is still held whole (see [`Replay`]), a few times at most; slave
    /// files go to their master's holder.
    async fn send_to_storage(
        &self,
        params: &UploadParams,
        fields: &UploadFields,
        size: Option<u64>,
        rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> Result<(UploadResult, String)> {
        let replay = Replay::new(rx);
        let mut excluded: Vec<u32> = Vec::new();
        let mut turned_down: Option<GatewayError> = None;
        // An assignment to a node found frozen lately, put aside for another one; taken when there is none.
        let mut suspect: Option<(u32, String, u8)> = None;
        for asked in 1..=MAX_ASSIGNMENTS {
            let (node_id, addr, store_path) =
                match self.target(params, fields, size, &excluded).await {
                    Ok(t) => t,
                    Err(e) => match suspect.take() {
                        Some(t) => t,
                        // Every member left is excluded (or the tracker fails): the last node's answer says why.
                        None => return Err(turned_down.unwrap_or(e)),
                    },
                };
            if suspect.is_none()
                && params.master.is_none()
                && asked < MAX_ASSIGNMENTS
                && self.storage.suspects.contains(&addr)
            {
                tracing::info!(storage = %addr, "assigned node was found frozen lately: asking for another");
                self.tracker.forget(&addr).await;
                excluded.push(node_id);
                suspect = Some((node_id, addr, store_path));
                continue;
            }
            let sent = self
                .storage
                .upload(&addr, store_path, params, replay.next_body())
                .await;
            match sent {
                Err(e)
                    if (unread(&e) || lost(&e))
                        && params.master.is_none()
                        && asked < MAX_ASSIGNMENTS
                        // Last: it ends this attempt's body (its transport may still be reading it).
                        && replay.end_attempt() =>
                {
                    tracing::warn!(storage = %addr, error = %e, "storage node turned the upload down or went away before answering; asking the tracker again");
                    self.tracker.forget(&addr).await;
                    excluded.push(node_id);
                    turned_down = Some(e);
                }
                other => return other.map(|r| (r, addr)),
            }
        }
        Err(turned_down
            .unwrap_or_else(|| GatewayError::BadGateway("no storage node took the upload".into())))
    }

    /// Stream one file from `src` to a storage node.
    pub(crate) async fn store<S: ChunkSource>(
        &self,
        src: &mut S,
        budget: &mut Budget,
        fields: &UploadFields,
        filename: Option<String>,
        size: Option<u64>,
    ) -> Result<(UploadResult, String)> {
        let params = fields.params(filename.as_deref())?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_CHUNKS);
        let send = self.send_to_storage(&params, fields, size, rx);
        let timeout = self.body_timeout();
        let timeout_secs = self.config.body_timeout_secs;
        let pump = async move {
            loop {
                let next = match tokio::time::timeout(timeout, src.next_chunk()).await {
                    Ok(r) => r,
                    Err(_) => Err(GatewayError::BodyTimeout(timeout_secs)),
                };
                let chunk = match next.and_then(|c| {
                    if let Some(b) = &c {
                        budget.take(b.len())?;
                    }
                    Ok(c)
                }) {
                    Ok(Some(b)) => b,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        // End the storage body with an error so the partial file is discarded.
                        let _ = tx.send(Err(std::io::Error::other("upload aborted"))).await;
                        return Err(e);
                    }
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    // The storage request ended early; its outcome says why.
                    return Ok(());
                }
            }
        };
        let (pumped, sent) = tokio::join!(pump, send);
        pumped?;
        let (mut result, addr) = sent?;
        result.filename = filename;
        if let Some(secret) = &self.config.anti_leech_secret {
            if !result.url.contains('?') {
                let q = fdfs_common::token::query(
                    &result.file_id,
                    secret,
                    fdfs_common::time::unix_now(),
                );
                result.url = format!("{}?{q}", result.url);
            }
        }
        Ok((result, addr))
    }
}

/// Whether a storage node turned an upload down without reading any of its body: it refused the connection, or
/// answered `quorum_unreachable`, `node_draining` or `node_stopping`.
/// Whether the node lost the upload before acknowledging it (its connection broke, or its disk failed the
/// write): nothing was stored, so a body still held whole can go to another node.
fn lost(e: &GatewayError) -> bool {
    match e {
        GatewayError::StorageLost(_) => true,
        GatewayError::Upstream { status, code, .. } => {
            *status == reqwest::StatusCode::SERVICE_UNAVAILABLE && code == "disk_failed"
        }
        _ => false,
    }
}

fn unread(e: &GatewayError) -> bool {
    match e {
        GatewayError::StorageRefused(_) => true,
        GatewayError::Upstream { status, code, .. } => {
            *status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && matches!(
                    code.as_str(),
                    "quorum_unreachable" | "node_draining" | "node_stopping"
                )
        }
        _ => false,
    }
}

/// Middleware on the upload routes: refuses a request before its body is read (missing API key, declared
/// length over `max_upload_size`), then drains the body (bounded, [`fdfs_common::drain::drain`]) so the client
/// sees the answer. A client that
/// sent `Expect: 100-continue` has not sent the body yet and gets the answer at once. Any answer that leaves
/// body bytes unread says `Connection: close`, so that no client reuses that connection (RFC 9112 9.6);
/// successful uploads have read their whole body and keep it.
pub(crate) async fn gate(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let slack = if req.method() == Method::POST {
        MULTIPART_SLACK
    } else {
        0
    };
    let limit = app.config.max_upload_size;
    let refusal = app.check_api_key(headers).err().or_else(|| {
        declared_within(headers, limit.saturating_add(slack))
            .err()
            .map(|_| GatewayError::TooLarge { limit })
    });
    let mut resp = match refusal {
        None => next.run(req).await,
        Some(err) => {
            let waiting = headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let drained =
                !waiting && fdfs_common::drain::drain(req.into_body().into_data_stream()).await;
            let mut resp = err.into_response();
            if !drained {
                close(&mut resp);
            }
            return resp;
        }
    };
    if resp.status().is_client_error() || resp.status().is_server_error() {
        close(&mut resp);
    }
    resp
}

fn close(resp: &mut Response) {
    resp.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
}

/// `POST /upload`.
pub(crate) async fn multipart_upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response> {
    // The API key and the declared length were checked by [`gate`].
    let limit = app.config.max_upload_size;
    let length = content_length(&headers);
    let mut multipart = multipart.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let mut budget = Budget::new(limit);
    let mut fields = UploadFields::default();
    let mut uploaded: Vec<(UploadResult, String)> = Vec::new();
    let mut thumbnails: Vec<Vec<String>> = Vec::new();
    let mut trailing_meta = false;
    // A placement field that came after a file part: the request is refused once read to its end.
    let mut misplaced: Option<String> = None;
    let timeout = app.body_timeout();
    loop {
        let next = tokio::time::timeout(timeout, multipart.next_field())
            .await
            .map_err(|_| GatewayError::BodyTimeout(app.config.body_timeout_secs))?;
        let Some(mut field) = next.map_err(multipart_error)? else {
            break;
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" && misplaced.is_some() {
            // Refused anyway: read and drop it, so that the client gets the answer.
            while let Some(chunk) = tokio::time::timeout(timeout, field.next_chunk())
                .await
                .map_err(|_| GatewayError::BodyTimeout(app.config.body_timeout_secs))??
            {
                budget.take(chunk.len())?;
            }
            continue;
        }
        if name == "file" {
            let filename = field.file_name().map(str::to_owned);
            // With a single file the request length bounds its size; the tracker uses it to skip full paths.
            let done = app
                .store(&mut field, &mut budget, &fields, filename, length)
                .await?;
            uploaded.push(done);
            thumbnails.push(fields.thumbnails.clone());
            trailing_meta = false;
            continue;
        }
        let value = read_text(&mut field, &mut budget, &app).await?;
        let kind = fields.apply(&name, &value)?;
        match kind {
            FieldKind::Meta if !uploaded.is_empty() => trailing_meta = true,
            FieldKind::Placement if !uploaded.is_empty() => {
                misplaced.get_or_insert(name);
            }
            FieldKind::Unknown => tracing::debug!(field = %name, "unknown upload field ignored"),
            _ => {}
        }
    }
    if let Some(name) = misplaced {
        for (result, addr) in &uploaded {
            let path = format!("/v1/files/{}", result.file_id);
            let deleted: Result<serde_json::Value> = app
                .storage
                .on_holder(
                    std::slice::from_ref(addr),
                    Method::DELETE,
                    &path,
                    None::<&()>,
                )
                .await;
            if let Err(e) = deleted {
                tracing::warn!(file_id = %result.file_id, error = %e, "deleting the file of a refused upload");
            }
        }
        return Err(GatewayError::BadRequest(format!(
            "field {name:?} came after a file part: send group, master_file_id, prefix and thumbnails before \
             the file parts they apply to (nothing was stored)"
        )));
    }
    if uploaded.is_empty() {
        return Err(GatewayError::BadRequest(
            "no file part: send the file in a multipart field named \"file\"".into(),
        ));
    }
    if trailing_meta {
        if let Some((result, addr)) = uploaded.last() {
            let path = format!("/v1/meta/{}", result.file_id);
            let _: Metadata = app
                .storage
                .on_holder(
                    std::slice::from_ref(addr),
                    Method::PUT,
                    &path,
                    Some(&fields.meta),
                )
                .await?;
        }
    }
    let uploaded = uploaded
        .into_iter()
        .zip(thumbnails)
        .map(|((r, addr), t)| (r, addr, t))
        .collect();
    let mut results = crate::thumbnails::answers(&app, uploaded).await;
    if results.len() == 1 {
        Ok(Json(results.remove(0)).into_response())
    } else {
        Ok(Json(serde_json::json!({ "files": results })).into_response())
    }
}

/// Read a text field whole, bounded by [`MAX_FIELD_LEN`] and the request budget.
async fn read_text(field: &mut Field<'_>, budget: &mut Budget, app: &App) -> Result<String> {
    let mut buf = Vec::new();
    loop {
        let chunk = tokio::time::timeout(app.body_timeout(), field.next_chunk())
            .await
            .map_err(|_| GatewayError::BodyTimeout(app.config.body_timeout_secs))??;
        let Some(chunk) = chunk else { break };
        budget.take(chunk.len())?;
        if buf.len() + chunk.len() > MAX_FIELD_LEN {
            return Err(GatewayError::BadRequest(format!(
                "field {:?} is longer than {MAX_FIELD_LEN} bytes",
                field.name().unwrap_or_default()
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| {
        GatewayError::BadRequest(format!(
            "field {:?} is not UTF-8 text",
            field.name().unwrap_or_default()
        ))
    })
}

/// `PUT /upload/{filename}`: the raw body is the file; query `group`, `meta.<key>`, `master_file_id`, `prefix`.
pub(crate) async fn raw_upload(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>> {
    // The API key and the declared length were checked by [`gate`].
    let Path(filename) = path.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let limit = app.config.max_upload_size;
    let length = content_length(&headers);
    let Query(query) = query.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let mut fields = UploadFields::default();
    for (k, v) in &query {
        fields.apply(k, v)?;
    }
    let mut src = BodySource(body.into_data_stream());
    let (result, addr) = app
        .store(
            &mut src,
            &mut Budget::new(limit),
            &fields,
            Some(filename),
            length,
        )
        .await?;
    let mut answer =
        crate::thumbnails::answers(&app, vec![(result, addr, fields.thumbnails)]).await;
    Ok(Json(answer.remove(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_accumulate_and_validate() {
        let mut f = UploadFields::default();
        assert_eq!(f.apply("meta.author", " ann ").unwrap(), FieldKind::Meta);
        assert_eq!(f.apply("group", "group2").unwrap(), FieldKind::Placement);
        assert_eq!(f.apply("colour", "blue").unwrap(), FieldKind::Unknown);
        assert_eq!(f.meta.get("author").map(String::as_str), Some("ann"));
        assert_eq!(f.group.as_ref().map(GroupName::as_str), Some("group2"));
        assert!(f.apply("group", "bad/group").is_err());
        assert!(f.apply("meta.", "x").is_err());
        assert!(f.apply("prefix", "1bad").is_err());
        assert!(f.apply("master_file_id", "nope").is_err());
        let e = f
            .apply("content_type", "image/png")
            .unwrap_err()
            .to_string();
        assert!(e.contains("extension") && e.contains("attname"), "{e}");
        f.apply("group", "").unwrap();
        assert_eq!(f.group, None);
    }

    #[test]
    fn params_take_ext_and_pair_master_with_prefix() {
        let mut f = UploadFields::default();
        let p = f.params(Some("Photo.JPG")).unwrap();
        assert_eq!(p.ext.as_deref(), Some("jpg"));
        assert_eq!(f.params(Some("README")).unwrap().ext, None);
        assert_eq!(f.params(None).unwrap().ext, None);
        f.apply("prefix", "_150x150").unwrap();
        assert!(matches!(f.params(None), Err(GatewayError::BadRequest(_))));
        f.apply(
            "master_file_id",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        )
        .unwrap();
        let p = f.params(Some("thumb.png")).unwrap();
        let (master, prefix) = p.master.unwrap();
        assert_eq!(master.group.as_str(), "group1");
        assert_eq!(prefix, "_150x150");
        f.apply("group", "group2").unwrap();
        assert!(f.params(None).is_err(), "slave in another group");
    }

    #[test]
    fn metadata_is_bounded() {
        let mut f = UploadFields::default();
        let big = "v".repeat(MAX_META_JSON_LEN / 4);
        for i in 0..3 {
            f.apply(&format!("meta.k{i}"), &big).unwrap();
        }
        // Replacing a key counts once.
        f.apply("meta.k0", &big).unwrap();
        let e = f.apply("meta.k3", &big).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(f.meta.len(), 3);
        // What is kept fits: its JSON is within the limit.
        assert!(serde_json::to_string(&f.meta).unwrap().len() <= MAX_META_JSON_LEN);
        // Escapes count: control characters take six bytes each in JSON.
        let mut g = UploadFields::default();
        assert!(g
            .apply("meta.c", &"\u{1}".repeat(MAX_META_JSON_LEN / 5))
            .is_err());
    }

    #[test]
    fn budget_trips_past_the_limit() {
        let mut b = Budget::new(10);
        b.take(4).unwrap();
        b.take(6).unwrap();
        let e = b.take(1).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
