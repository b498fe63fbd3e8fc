//! Public downloads: `GET|HEAD /{group}/M{xx}/{XX}/{YY}/{name}`, nginx-style.
//!
//! One blocking-pool hop opens the file, fstats it, evaluates the conditional headers and Range, and for an
//! answer of up to `SMALL` (128 KiB) bytes reads it too (a 4 KiB photo thumbnail costs one hop, not four); larger
//! answers stream in `CHUNK` (256 KiB) reads with flat memory. The validators come from the file ID, not the inode (whose
//! mtime differs between members and between deduplicated IDs):
//! - `ETag: "<file name>"` (the last part of the file ID, e.g. `"wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"`): the name
//!   encodes source, time, size and CRC32 and never names other bytes, so it is identical on every member and
//!   on an nginx serving the store path (`deploy/nginx/fdfs-storage.conf` sends the same header from the URL);
//! - `Last-Modified`: the creation time encoded in the ID (what a fresh upload's mtime is), identical on every
//!   member whatever the local inode's history.
//!
//! A file missing here (not replicated yet) is proxied from an active peer of the group; the proxied request
//! carries [`NO_PROXY_HEADER`] so that peers never bounce it further.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fdfs_common::wire::MemberState;
use fdfs_common::{content_type_for, FileId};
use serde::Deserialize;

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

/// ETag of a file: its name, quoted. Every member and nginx (from the URL) give the same one.
pub fn etag_for(id: &FileId) -> String {
    format!("\"{}\"", id.name.as_str())
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

/// Answers (or ranges) up to this size are read in the same blocking call that opens the file; larger ones
/// stream in [`CHUNK`]-sized reads.
const SMALL: u64 = 128 * 1024;
/// Read size when streaming a large answer (one blocking-pool hop per chunk).
const CHUNK: u64 = 256 * 1024;

/// What the blocking open decided.
enum Opened {
    /// Not here (or not a regular file): proxy or 404.
    Missing,
    Failed,
    NotModified {
        etag: String,
    },
    Unsatisfiable {
        etag: String,
        len: u64,
    },
    Content {
        etag: String,
        len: u64,
        /// `Some((start, end))` (inclusive) for a 206.
        range: Option<(u64, u64)>,
        body: Content,
    },
}

enum Content {
    /// HEAD: no bytes read.
    None,
    /// The whole answer, read with the open.
    Bytes(Bytes),
    /// Still to read: `count` bytes from `offset`.
    Stream {
        file: std::fs::File,
        offset: u64,
        count: u64,
    },
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
    let path = match node.store.path(&id) {
        Ok(p) => Some(p),
        Err(StorageError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let (parts, _) = req.into_parts();
    let head = parts.method == Method::HEAD;
    // One blocking hop: open, fstat, the conditional headers, and for a small answer the read.
    let (parts, opened) = tokio::task::spawn_blocking(move || {
        let opened = match path {
            Some(path) => open_blocking(&path, &id, &parts.headers, head).map(|o| (o, id)),
            None => Ok((Opened::Missing, id)),
        };
        (parts, opened)
    })
    .await?;
    let (opened, id) = opened?;
    let modified = last_modified_for(&id);
    let res = match opened {
        Opened::Missing => {
            // A configured thumbnail of a master held here: rendered and stored, then served as a file.
            if parts
                .extensions
                .get::<crate::thumbnail::Rendered>()
                .is_none()
                && crate::thumbnail::ensure(&node, &id).await?
            {
                let mut req = Request::from_parts(parts, Body::empty());
                req.extensions_mut().insert(crate::thumbnail::Rendered);
                return serve_again(node, req).await;
            }
            if !parts.headers.contains_key(NO_PROXY_HEADER) {
                if let Some(r) =
                    proxy(&node, &id, &parts.method, parts.uri.query(), &parts.headers).await
                {
                    return Ok(r);
                }
            }
            return Err(crate::thumbnail::missing(&node, &id).await);
        }
        Opened::Failed => StorageError::PreconditionFailed.into_response(),
        Opened::NotModified { etag } => {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            set_validators(res.headers_mut(), &etag, modified);
            res
        }
        Opened::Unsatisfiable { etag, len } => {
            let mut res = fdfs_common::error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "range not satisfiable",
            );
            if let Ok(v) = HeaderValue::try_from(format!("bytes */{len}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            set_validators(res.headers_mut(), &etag, modified);
            res
        }
        Opened::Content {
            etag,
            len,
            range,
            body,
        } => {
            let count = range.map_or(len, |(start, end)| end - start + 1);
            let mut res = match body {
                Content::None => Response::new(Body::empty()),
                Content::Bytes(b) => Response::new(Body::from(b)),
                Content::Stream {
                    file,
                    offset,
                    count,
                } => Response::new(Body::from_stream(stream_file(file, offset, count))),
            };
            let headers = res.headers_mut();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
            if let Some((start, end)) = range {
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::try_from(format!("bytes {start}-{end}/{len}")) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            let headers = res.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type_for(id.name.ext())),
            );
            set_validators(headers, &etag, modified);
            if let Some(name) = fdfs_common::attname::from_query(parts.uri.query()) {
                headers.insert(
                    header::CONTENT_DISPOSITION,
                    fdfs_common::attname::content_disposition(&name),
                );
            }
            res
        }
    };
    Ok(res)
}

/// [`serve_inner`] once more (a thumbnail was just stored), boxed: the future of a recursive call.
fn serve_again(
    node: AppState,
    req: Request,
) -> futures_util::future::BoxFuture<'static, Result<Response, StorageError>> {
    Box::pin(serve_inner(node, req))
}

/// Open the file, check the conditional headers against its validators and, for a small answer, read it.
fn open_blocking(
    path: &std::path::Path,
    id: &FileId,
    headers: &HeaderMap,
    head: bool,
) -> Result<Opened, StorageError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Opened::Missing);
    }
    let len = meta.len();
    let etag = etag_for(id);
    let honour_range = match evaluate(headers, &etag, last_modified_for(id)) {
        Precondition::Failed => return Ok(Opened::Failed),
        Precondition::NotModified => return Ok(Opened::NotModified { etag }),
        Precondition::Proceed { honour_range } => honour_range,
    };
    let range = match headers.get(header::RANGE).filter(|_| honour_range) {
        None => None,
        Some(v) => match parse_range(v.as_bytes(), len) {
            RangeAnswer::Whole => None,
            RangeAnswer::Part(start, end) => Some((start, end)),
            RangeAnswer::Unsatisfiable => return Ok(Opened::Unsatisfiable { etag, len }),
        },
    };
    let (offset, count) = range.map_or((0, len), |(start, end)| (start, end - start + 1));
    let body = if head {
        Content::None
    } else if count <= SMALL {
        let mut buf = vec![0; usize::try_from(count).unwrap_or(0)];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, offset)?;
        Content::Bytes(Bytes::from(buf))
    } else {
        Content::Stream {
            file,
            offset,
            count,
        }
    };
    Ok(Opened::Content {
        etag,
        len,
        range,
        body,
    })
}

/// `count` bytes of `file` from `offset`, [`CHUNK`] at a time on the blocking pool: memory stays flat whatever
/// the file's size.
fn stream_file(
    file: std::fs::File,
    offset: u64,
    count: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    let file = Arc::new(file);
    futures_util::stream::try_unfold((offset, count), move |(offset, left)| {
        let file = file.clone();
        async move {
            if left == 0 {
                return Ok(None);
            }
            let n = left.min(CHUNK);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; usize::try_from(n).unwrap_or(0)];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset)?;
                Ok::<_, std::io::Error>(Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((chunk, (offset + n, left - n))))
        }
    })
}

/// How to answer a `Range` header.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// Not a byte range, or several of them: the whole file (a server may ignore Range, RFC 9110 14.2).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A malformed or unsatisfiable byte range: 416.
    Unsatisfiable,
}

/// One `bytes=` range against a file of `len` bytes, as nginx answers it.
fn parse_range(value: &[u8], len: u64) -> RangeAnswer {
    let Some(spec) = value.strip_prefix(b"bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Whole;
    }
    let Ok(spec) = std::str::from_utf8(spec) else {
        return RangeAnswer::Unsatisfiable;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Unsatisfiable;
    };
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    let (start, end) = if first.is_empty() {
        // Suffix: the last N bytes.
        match number(last) {
            Some(n) if n > 0 && len > 0 => (len.saturating_sub(n), len - 1),
            _ => return RangeAnswer::Unsatisfiable,
        }
    } else {
        let Some(start) = number(first) else {
            return RangeAnswer::Unsatisfiable;
        };
        let end = if last.is_empty() {
            len.saturating_sub(1)
        } else {
            match number(last) {
                Some(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return RangeAnswer::Unsatisfiable,
            }
        };
        (start, end)
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Part(start, end)
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
    fn ranges_are_read_as_nginx_reads_them() {
        use RangeAnswer::*;
        let r = |v: &str| parse_range(v.as_bytes(), 100);
        assert_eq!(r("bytes=0-9"), Part(0, 9));
        assert_eq!(r("bytes=90-"), Part(90, 99));
        assert_eq!(r("bytes=-5"), Part(95, 99));
        assert_eq!(r("bytes=-500"), Part(0, 99));
        assert_eq!(r("bytes=0-18446744073709551615"), Part(0, 99));
        assert_eq!(r("bytes=99-99"), Part(99, 99));
        assert_eq!(r("bytes=100-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Unsatisfiable);
        assert_eq!(r("bytes=--5"), Unsatisfiable);
        assert_eq!(r("bytes="), Unsatisfiable);
        assert_eq!(r("bytes=a-b"), Unsatisfiable);
        assert_eq!(r("bytes=+1-2"), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999-"), Unsatisfiable);
        assert_eq!(r("items=0-5"), Whole);
        assert_eq!(r("bytes=0-0,-1"), Whole);
        assert_eq!(parse_range(b"bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-1", 0), Unsatisfiable);
    }

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
        assert_eq!(etag_for(&id), "\"wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg\"");
        let slave = id.slave("_s", Some("jpg")).unwrap();
        assert_eq!(etag_for(&slave), "\"wKgAA1qCJbeAQ3sLAABe0xvpx3Q419_s.jpg\"");
    }
}
