//! Public downloads: `GET|HEAD /{group}/M{xx}/{XX}/{YY}/{name}`, nginx-style.
//!
//! tower-http's `ServeFile` streams the bytes and answers Range (206/416). Its ETag and Last-Modified come from
//! the inode (mtime with nanoseconds), which differs between members and between deduplicated IDs, so this
//! module evaluates the conditional headers itself against validators derived from the file ID, strips them
//! from the request it hands to `ServeFile`, and replaces the validators in the answer:
//! - `ETag: "<crc32 hex>-<size hex>"` from the name (a slave, whose name carries its master's facts, adds its
//!   own size and prefix), identical on every member;
//! - `Last-Modified`: the creation time encoded in the ID (what a fresh upload's mtime is), identical on every
//!   member whatever the local inode's history.
//!
//! A file missing here (not replicated yet) is proxied from an active peer of the group; the proxied request
//! carries [`NO_PROXY_HEADER`] so that peers never bounce it further.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use fdfs_common::wire::MemberState;
use fdfs_common::{content_type_for, FileId};
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::error::StorageError;
use crate::AppState;

/// Header marking a request proxied from a peer: answer from local disk only.
pub const NO_PROXY_HEADER: &str = "x-fdfs-no-proxy";

const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Headers forwarded to a peer when proxying a read.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 5] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
    header::IF_MATCH,
];

/// Headers copied back from a peer's answer.
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::ACCEPT_RANGES,
    header::CONTENT_DISPOSITION,
];

#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    token: Option<String>,
    ts: Option<String>,
}

/// ETag of a file, from facts every member agrees on.
pub fn etag_for(id: &FileId, stored_len: u64) -> String {
    let info = id.info();
    match id.name.prefix() {
        None => format!("\"{:08x}-{:x}\"", info.crc32, info.size),
        Some(prefix) => format!("\"{:08x}-{:x}-{prefix}\"", info.crc32, stored_len),
    }
}

/// Last-Modified of a file: its creation time from the ID.
pub fn last_modified_for(id: &FileId) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(id.info().created))
}

/// Iterate the entity tags of an `If-None-Match` / `If-Match` value.
fn tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn weak_match(value: &str, etag: &str) -> bool {
    tags(value).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn strong_match(value: &str, etag: &str) -> bool {
    tags(value).any(|t| t == "*" || t == etag)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the conditional headers decide before any byte is read.
enum Precondition {
    Proceed { honour_range: bool },
    NotModified,
    Failed,
}

fn evaluate(headers: &HeaderMap, etag: &str, modified: SystemTime) -> Precondition {
    let modified_secs = httpdate::HttpDate::from(modified);
    if let Some(v) = header_str(headers, &header::IF_MATCH) {
        if !strong_match(v, etag) {
            return Precondition::Failed;
        }
    } else if let Some(v) = header_str(headers, &header::IF_UNMODIFIED_SINCE) {
        if let Ok(since) = v.parse::<httpdate::HttpDate>() {
            if modified_secs > since {
                return Precondition::Failed;
            }
        }
    }
    if let Some(v) = header_str(headers, &header::IF_NONE_MATCH) {
        if weak_match(v, etag) {
            return Precondition::NotModified;
        }
    } else if let Some(v) = header_str(headers, &header::IF_MODIFIED_SINCE) {
        if let Ok(since) = v.parse::<httpdate::HttpDate>() {
            if modified_secs <= since {
                return Precondition::NotModified;
            }
        }
    }
    let honour_range = match header_str(headers, &header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => v == etag,
        Some(v) => v
            .parse::<httpdate::HttpDate>()
            .is_ok_and(|d| d == modified_secs),
    };
    Precondition::Proceed { honour_range }
}

fn set_validators(headers: &mut HeaderMap, etag: &str, modified: SystemTime) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

/// `GET|HEAD /{group}/M{xx}/{XX}/{YY}/{name}`.
pub async fn serve(State(node): State<AppState>, req: Request) -> Response {
    match serve_inner(node, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve_inner(node: AppState, req: Request) -> Result<Response, StorageError> {
    let id: FileId = req.uri().path().parse()?;
    if id.group != node.group {
        return Err(StorageError::BadRequest(format!(
            "file {id} belongs to group {}, this node serves {}",
            id.group, node.group
        )));
    }
    if let Some(secret) = &node.config.anti_leech_secret {
        let Query(q) = Query::<TokenQuery>::try_from_uri(req.uri()).unwrap_or_default();
        fdfs_common::token::verify(
            &id,
            secret,
            q.token.as_deref(),
            q.ts.as_deref(),
            node.config.token_ttl_secs,
            fdfs_common::time::unix_now(),
        )?;
    }
    let Some(stat) = node.store.stat(&id).await? else {
        if req.headers().contains_key(NO_PROXY_HEADER) {
            return Err(StorageError::NotFound(format!("no such file {id}")));
        }
        let (parts, _) = req.into_parts();
        return match proxy(&node, &id, &parts.method, parts.uri.query(), &parts.headers).await {
            Some(r) => Ok(r),
            None => Err(StorageError::NotFound(format!("no such file {id}"))),
        };
    };
    let etag = etag_for(&id, stat.len());
    let modified = last_modified_for(&id);
    let honour_range = match evaluate(req.headers(), &etag, modified) {
        Precondition::Failed => {
            return Ok(StorageError::PreconditionFailed.into_response());
        }
        Precondition::NotModified => {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            set_validators(res.headers_mut(), &etag, modified);
            return Ok(res);
        }
        Precondition::Proceed { honour_range } => honour_range,
    };

    let path = node.store.path(&id)?;
    let (mut parts, body) = req.into_parts();
    for h in [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        parts.headers.remove(h);
    }
    // ServeFile refuses several ranges with a bare 416; a server may ignore Range instead (RFC 9110 14.2), so a
    // multi-range request gets the whole file.
    let several = parts
        .headers
        .get(header::RANGE)
        .is_some_and(|r| r.as_bytes().contains(&b','));
    if !honour_range || several {
        parts.headers.remove(header::RANGE);
    }
    let inner = Request::from_parts(parts, body);
    let res = match ServeFile::new(&path).oneshot(inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if res.status() == StatusCode::NOT_FOUND {
        // Deleted between the stat and the open.
        return Err(StorageError::NotFound(format!("no such file {id}")));
    }
    if res.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        // ServeFile's 416 has no body; give it the JSON error every answer has, keeping `Content-Range`.
        let mut out = fdfs_common::error_response(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            "range not satisfiable",
        );
        if let Some(v) = res.headers().get(header::CONTENT_RANGE) {
            out.headers_mut().insert(header::CONTENT_RANGE, v.clone());
        }
        set_validators(out.headers_mut(), &etag, modified);
        return Ok(out);
    }
    let mut res = res.map(Body::new);
    let status = res.status();
    let headers = res.headers_mut();
    set_validators(headers, &etag, modified);
    if status.is_success() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type_for(id.name.ext())),
        );
    }
    Ok(res)
}

/// Fetch the file from an active peer and stream its answer back; `None` when no peer has it.
async fn proxy(
    node: &AppState,
    id: &FileId,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<Response> {
    let peers = node.peers.get();
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let method = if method == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };
    for peer in peers
        .iter()
        .filter(|p| p.state == MemberState::Active && p.node_id != node.node_id)
    {
        let url = format!("{}/{id}{query}", peer.public_url.trim_end_matches('/'));
        let mut rb = node
            .http
            .request(method.clone(), &url)
            .header(NO_PROXY_HEADER, "1");
        for h in &FORWARDED_REQUEST_HEADERS {
            if let Some(v) = headers.get(h) {
                rb = rb.header(h, v);
            }
        }
        match rb.send().await {
            Ok(resp)
                if resp.status() != StatusCode::NOT_FOUND && !resp.status().is_server_error() =>
            {
                tracing::debug!(file_id = %id, peer = peer.node_id, "proxying read");
                let mut out = Response::builder().status(resp.status());
                for h in &FORWARDED_RESPONSE_HEADERS {
                    if let Some(v) = resp.headers().get(h) {
                        out = out.header(h, v);
                    }
                }
                return out
                    .body(Body::from_stream(resp.bytes_stream()))
                    .map_err(|e| tracing::warn!(error = %e, "building proxied response"))
                    .ok();
            }
            Ok(resp) => {
                tracing::debug!(file_id = %id, peer = peer.node_id, status = %resp.status(), "peer lacks the file");
            }
            Err(e) => {
                tracing::debug!(file_id = %id, peer = peer.node_id, error = %e, "peer unreachable");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching() {
        assert!(weak_match("\"a\", W/\"b\"", "\"b\""));
        assert!(weak_match("*", "\"b\""));
        assert!(!weak_match("\"a\"", "\"b\""));
        assert!(strong_match("\"b\"", "\"b\""));
        assert!(!strong_match("W/\"b\"", "\"b\""));
    }

    #[test]
    fn etag_is_derived_from_the_id() {
        let id: FileId = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
            .parse()
            .unwrap();
        assert_eq!(etag_for(&id, 999), "\"1be9c774-5ed3\"");
        let slave = id.slave("_s", Some("jpg")).unwrap();
        assert_eq!(etag_for(&slave, 16), "\"1be9c774-10-_s\"");
    }
}
