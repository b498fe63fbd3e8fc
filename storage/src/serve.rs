//! Public downloads: `GET|HEAD /{group}/M{xx}/{XX}/{YY}/{name}`, nginx-style.
//!
//! A download is answered on the async thread when the kernel's caches hold all it needs, as nginx's event loop
//! answers it, and with one blocking-pool hop otherwise:
//! - the conditional headers are evaluated first, without a system call: the validators come from the file ID;
//! - the file is opened with `openat2(O_RDONLY | O_CLOEXEC, RESOLVE_CACHED)`: the path is resolved from the
//!   dentry cache alone, or the call fails with `EAGAIN` rather than read a directory block or an inode from
//!   disk. A resolved dentry holds its inode in memory, so the `fstat` that follows never waits on the disk
//!   either; a missing file whose negative dentry is cached answers `ENOENT` at once. That is the cheap check
//!   that keeps `open` and `fstat` off a cold disk: a plain `open` on the async thread (nginx's choice) would
//!   stall every connection of that thread for a seek whenever the file's directory was evicted;
//! - an answer of up to [`SMALL`] (128 KiB) bytes is read with `preadv2(RWF_NOWAIT)`, which copies from the page
//!   cache and fails with `EAGAIN` (or reads short) rather than start disk I/O;
//! - otherwise (`EAGAIN` from either call, a short read, any other error) one blocking-pool hop does what is
//!   left: open, fstat and read when the open missed the caches, the rest of the read when only the data did.
//!   Errors are reported by that blocking path, as before. A kernel without `openat2` or `RESOLVE_CACHED`
//!   (before 5.12) turns the page-cache path off for the process.
//!
//! One wait remains possible, as for nginx: with `relatime`, the first read of a file after a write (then once a
//! day) updates its atime, which on ext4 opens a journal handle and may wait for a commit. Mount store paths with
//! `noatime` to rule it out.
//!
//! Larger answers stream in [`CHUNK`] (256 KiB) reads on the blocking pool, with flat memory. The validators come
//! from the file ID, not the inode (whose mtime differs between members and between deduplicated IDs):
//! - `ETag: "<file name>"` (the last part of the file ID, e.g. `"wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"`): the name
//!   encodes source, time, size and CRC32 and never names other bytes, so it is identical on every member and
//!   on an nginx serving the store path (`deploy/nginx/fdfs-storage.conf` sends the same header from the URL);
//! - `Last-Modified`: the creation time encoded in the ID (what a fresh upload's mtime is), identical on every
//!   member whatever the local inode's history.
//!
//! A file missing here (not replicated yet) is proxied from an active peer of the group; the proxied request
//! carries [`NO_PROXY_HEADER`] so that peers never bounce it further.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use fdfs_common::wire::{MemberInfo, MemberState};
use fdfs_common::{content_type_for, FileId};
use serde::Deserialize;

use crate::error::StorageError;
use crate::AppState;

/// Header marking a request proxied from a peer: answer from local disk only.
pub const NO_PROXY_HEADER: &str = "x-fdfs-no-proxy";

const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const ACCEPT_RANGES: HeaderValue = HeaderValue::from_static("bytes");

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

/// Whether `tag` is the strong ETag of the file named `name` (`"<name>"`), without building the ETag.
fn is_etag(tag: &str, name: &str) -> bool {
    tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(name)
}

fn weak_match(value: &str, name: &str) -> bool {
    tags(value).any(|t| t == "*" || is_etag(t.strip_prefix("W/").unwrap_or(t), name))
}

fn strong_match(value: &str, name: &str) -> bool {
    tags(value).any(|t| t == "*" || is_etag(t, name))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the conditional headers decide before any byte is read (should the file exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// What a request asks of its file, decided from its headers and the file ID alone, before any system call.
struct Ask {
    precondition: Precondition,
    /// The `Range` value, when there is one and `If-Range` (if any) lets it apply.
    range: Option<HeaderValue>,
    /// HEAD: nothing to read.
    head: bool,
}

impl Ask {
    fn new(headers: &HeaderMap, id: &FileId, head: bool) -> Ask {
        let name = id.name.as_str();
        // Most requests carry no conditional header: the date is only computed for one that does.
        let modified = || httpdate::HttpDate::from(last_modified_for(id));
        let mut precondition = Precondition::Proceed;
        if let Some(v) = header_str(headers, &header::IF_MATCH) {
            if !strong_match(v, name) {
                precondition = Precondition::Failed;
            }
        } else if let Some(v) = header_str(headers, &header::IF_UNMODIFIED_SINCE) {
            if let Ok(since) = v.parse::<httpdate::HttpDate>() {
                if modified() > since {
                    precondition = Precondition::Failed;
                }
            }
        }
        if precondition == Precondition::Proceed {
            if let Some(v) = header_str(headers, &header::IF_NONE_MATCH) {
                if weak_match(v, name) {
                    precondition = Precondition::NotModified;
                }
            } else if let Some(v) = header_str(headers, &header::IF_MODIFIED_SINCE) {
                if let Ok(since) = v.parse::<httpdate::HttpDate>() {
                    if modified() <= since {
                        precondition = Precondition::NotModified;
                    }
                }
            }
        }
        let range =
            headers
                .get(header::RANGE)
                .filter(|_| match header_str(headers, &header::IF_RANGE) {
                    None => true,
                    Some(v) if v.starts_with('"') || v.starts_with("W/") => is_etag(v, name),
                    Some(v) => v
                        .parse::<httpdate::HttpDate>()
                        .is_ok_and(|d| d == modified()),
                });
        Ask {
            precondition,
            range: range.cloned(),
            head,
        }
    }
}

/// `GET|HEAD /{group}/M{xx}/{XX}/{YY}/{name}`.
pub async fn serve(State(node): State<AppState>, req: Request) -> Response {
    match serve_inner(node, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Answers (or ranges) up to this size are read in one read, from the page cache on the async thread when it
/// holds them; larger ones stream in [`CHUNK`]-sized reads.
const SMALL: u64 = 128 * 1024;
/// Read size when streaming a large answer (one blocking-pool hop per chunk).
const CHUNK: u64 = 256 * 1024;

/// What the open decided.
enum Opened {
    /// Not here (or not a regular file): proxy or 404.
    Missing,
    Failed,
    NotModified,
    Unsatisfiable {
        len: u64,
    },
    Content {
        len: u64,
        /// `Some((start, end))` (inclusive) for a 206.
        range: Option<(u64, u64)>,
        body: Content,
    },
}

enum Content {
    /// HEAD: no bytes read.
    None,
    /// The whole answer, read.
    Bytes(Bytes),
    /// Up to [`SMALL`] bytes still to read in one read: `count` bytes from `offset`.
    Read { file: File, offset: u64, count: u64 },
    /// Still to read in [`CHUNK`]s: `count` bytes from `offset`.
    Stream { file: File, offset: u64, count: u64 },
}

async fn serve_inner(node: AppState, req: Request) -> Result<Response, StorageError> {
    let id: FileId = req.uri().path().parse()?;
    node.store.check_owns(&id)?;
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
    let opened = match path {
        Some(path) => {
            let ask = Ask::new(&parts.headers, &id, parts.method == Method::HEAD);
            match open(path, ask).await {
                // The disk cannot read it: answered from a peer below, and the copy repaired.
                Err(StorageError::DiskFailed(e)) => {
                    tracing::error!(file_id = %id, error = %e, "the disk cannot read a file: serving it from a peer and repairing it");
                    repair_soon(&node, &id);
                    Opened::Missing
                }
                other => other?,
            }
        }
        None => Opened::Missing,
    };
    if let Opened::Missing = opened {
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
    let resume = (
        node.clone(),
        id.clone(),
        parts.uri.query().map(str::to_owned),
    );
    Ok(respond(&id, opened, parts.uri.query(), Some(resume)))
}

/// The answer for a file that is here (a [`Content::Read`] left unread is streamed; with `resume`, from a peer
/// should the disk fail part-way, see [`stream_file`]).
fn respond(
    id: &FileId,
    opened: Opened,
    query: Option<&str>,
    resume: Option<(AppState, FileId, Option<String>)>,
) -> Response {
    let (status, mut res) = match opened {
        Opened::Missing => {
            return StorageError::NotFound(format!("no such file {id}")).into_response();
        }
        Opened::Failed => return StorageError::PreconditionFailed.into_response(),
        Opened::NotModified => (StatusCode::NOT_MODIFIED, Response::new(Body::empty())),
        Opened::Unsatisfiable { len } => {
            let mut res = fdfs_common::error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "range not satisfiable",
            );
            if let Ok(v) = HeaderValue::try_from(format!("bytes */{len}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, res)
        }
        Opened::Content { len, range, body } => {
            let count = range.map_or(len, |(start, end)| end - start + 1);
            let body = match body {
                Content::None => Body::empty(),
                Content::Bytes(b) => Body::from(b),
                Content::Read {
                    file,
                    offset,
                    count,
                }
                | Content::Stream {
                    file,
                    offset,
                    count,
                } => Body::from_stream(stream_file(file, offset, count, resume)),
            };
            let mut res = Response::new(body);
            let headers = res.headers_mut();
            headers.reserve(10);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type_for(id.name.ext())),
            );
            if let Some(name) = fdfs_common::attname::from_query(query) {
                headers.insert(
                    header::CONTENT_DISPOSITION,
                    fdfs_common::attname::content_disposition(&name),
                );
            }
            match range {
                Some((start, end)) => {
                    if let Ok(v) = HeaderValue::try_from(format!("bytes {start}-{end}/{len}")) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    (StatusCode::PARTIAL_CONTENT, res)
                }
                None => (StatusCode::OK, res),
            }
        }
    };
    *res.status_mut() = status;
    set_validators(res.headers_mut(), id);
    res
}

/// ETag, Last-Modified, Cache-Control and Accept-Ranges: on every answer about a file that is here.
fn set_validators(headers: &mut HeaderMap, id: &FileId) {
    let name = id.name.as_str().as_bytes();
    let mut etag = BytesMut::with_capacity(name.len() + 2);
    etag.put_u8(b'"');
    etag.put_slice(name);
    etag.put_u8(b'"');
    if let Ok(v) = HeaderValue::from_maybe_shared(etag.freeze()) {
        headers.insert(header::ETAG, v);
    }
    // An IMF-fixdate is 29 bytes: formatted on the stack, copied once into the header.
    let mut date = [0u8; 29];
    let whole = {
        use std::io::Write;
        let mut w = &mut date[..];
        write!(w, "{}", httpdate::HttpDate::from(last_modified_for(id))).is_ok() && w.is_empty()
    };
    if let Some(v) = whole.then(|| HeaderValue::from_bytes(&date).ok()).flatten() {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    headers.insert(header::ACCEPT_RANGES, ACCEPT_RANGES);
}

/// [`serve_inner`] once more (a thumbnail was just stored), boxed: the future of a recursive call.
fn serve_again(
    node: AppState,
    req: Request,
) -> futures_util::future::BoxFuture<'static, Result<Response, StorageError>> {
    Box::pin(serve_inner(node, req))
}

/// A small answer whose bytes are still to be read into `buf` (from `offset` of `file`).
struct PendingRead {
    len: u64,
    range: Option<(u64, u64)>,
    file: File,
    offset: u64,
    buf: Vec<u8>,
}

impl PendingRead {
    /// The read a decided answer still needs ([`Content::Read`]), or the answer itself when it needs none.
    fn of(opened: Opened) -> Result<PendingRead, Opened> {
        match opened {
            Opened::Content {
                len,
                range,
                body:
                    Content::Read {
                        file,
                        offset,
                        count,
                    },
            } => Ok(PendingRead {
                len,
                range,
                file,
                offset,
                buf: vec![0; usize::try_from(count).unwrap_or(0)],
            }),
            opened => Err(opened),
        }
    }

    /// Read from the disk what `buf` still lacks past its first `got` bytes (blocking).
    fn finish_blocking(mut self, got: usize) -> io::Result<PendingRead> {
        self.file
            .read_exact_at(&mut self.buf[got..], self.offset + got as u64)?;
        Ok(self)
    }

    /// The answer, with the bytes read.
    fn done(self) -> Opened {
        Opened::Content {
            len: self.len,
            range: self.range,
            body: Content::Bytes(Bytes::from(self.buf)),
        }
    }
}

/// Open the file at `path` and decide the answer, reading a small one: from the kernel's caches on this thread
/// when they hold it all, else with one blocking-pool hop for what remains.
async fn open(path: PathBuf, ask: Ask) -> Result<Opened, StorageError> {
    let Some(opened) = open_cached(&path, &ask) else {
        return tokio::task::spawn_blocking(move || open_blocking(&path, &ask)).await?;
    };
    let mut pending = match PendingRead::of(opened) {
        Ok(p) => p,
        Err(opened) => return Ok(opened),
    };
    let got = read_cached(&pending.file, &mut pending.buf, pending.offset);
    if got < pending.buf.len() {
        // Some of it is not in the page cache: the rest from the disk, off this thread.
        pending = tokio::task::spawn_blocking(move || pending.finish_blocking(got)).await??;
    }
    Ok(pending.done())
}

/// Whether `openat2(RESOLVE_CACHED)` works on this kernel; cleared when it is refused as unknown.
static CACHED_OPEN: AtomicBool = AtomicBool::new(true);

/// [`decide`] for the file at `path` if the dentry and inode caches can open it without disk I/O; `None` to
/// take the blocking path (which also reports any error).
fn open_cached(path: &Path, ask: &Ask) -> Option<Opened> {
    use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
    if !CACHED_OPEN.load(Ordering::Relaxed) {
        return None;
    }
    let fd = match rustix::fs::openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::CACHED,
    ) {
        Ok(fd) => fd,
        // A cached negative dentry: as sure an answer as the disk's.
        Err(rustix::io::Errno::NOENT) => return Some(Opened::Missing),
        // No openat2 (before 5.6) or no RESOLVE_CACHED (before 5.12).
        Err(e @ (rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL)) => {
            CACHED_OPEN.store(false, Ordering::Relaxed);
            tracing::info!(error = %e, "openat2(RESOLVE_CACHED) unavailable: downloads open files on the blocking pool");
            return None;
        }
        // EAGAIN (not all cached) or a real error, which the blocking path reports.
        Err(_) => return None,
    };
    let file = File::from(fd);
    let meta = file.metadata().ok()?;
    Some(decide(file, &meta, ask))
}

/// Bytes of `buf`'s length read from `offset` without waiting on the disk: those in the page cache, up to the
/// first page that is not (or the end of the file).
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::preadv2(
            file,
            &mut [io::IoSliceMut::new(&mut buf[done..])],
            offset + done as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            // EAGAIN: not cached; EOPNOTSUPP: a filesystem without non-blocking reads.
            Err(_) => break,
        }
    }
    done
}

/// Open the file, decide the answer and, for a small one, read it: the blocking path.
fn open_blocking(path: &Path, ask: &Ask) -> Result<Opened, StorageError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    Ok(match PendingRead::of(decide(file, &meta, ask)) {
        Ok(pending) => pending.finish_blocking(0)?.done(),
        Err(opened) => opened,
    })
}

/// The answer for an open file with metadata `meta`; a small body is left to read ([`Content::Read`]).
fn decide(file: File, meta: &std::fs::Metadata, ask: &Ask) -> Opened {
    if !meta.is_file() {
        return Opened::Missing;
    }
    let len = meta.len();
    match ask.precondition {
        Precondition::Failed => return Opened::Failed,
        Precondition::NotModified => return Opened::NotModified,
        Precondition::Proceed => {}
    }
    let range = match &ask.range {
        None => None,
        Some(v) => match parse_range(v.as_bytes(), len) {
            RangeAnswer::Whole => None,
            RangeAnswer::Part(start, end) => Some((start, end)),
            RangeAnswer::Unsatisfiable => return Opened::Unsatisfiable { len },
        },
    };
    let (offset, count) = range.map_or((0, len), |(start, end)| (start, end - start + 1));
    let body = if ask.head {
        Content::None
    } else if count <= SMALL {
        Content::Read {
            file,
            offset,
            count,
        }
    } else {
        Content::Stream {
            file,
            offset,
            count,
        }
    };
    Opened::Content { len, range, body }
}

/// `count` bytes of `file` from `offset`, [`CHUNK`] at a time on the blocking pool: memory stays flat whatever
/// the file's size. When the disk fails a read part-way (the answer's head is sent already), the rest comes from
/// a peer ([`peer_range`]) and the copy here is repaired, given the node (`resume`); else the stream breaks.
fn stream_file(
    file: File,
    offset: u64,
    count: u64,
    resume: Option<(AppState, FileId, Option<String>)>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    enum From {
        Disk(u64, u64),
        Peer(futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>),
        Done,
    }
    let file = Arc::new(file);
    futures_util::stream::unfold(From::Disk(offset, count), move |from| {
        let (file, resume) = (file.clone(), resume.clone());
        async move {
            match from {
                From::Done | From::Disk(_, 0) => None,
                From::Disk(offset, left) => {
                    let n = left.min(CHUNK);
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; usize::try_from(n).unwrap_or(0)];
                        file.read_exact_at(&mut buf, offset)?;
                        Ok::<_, io::Error>(Bytes::from(buf))
                    })
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
                    match read {
                        Ok(chunk) => Some((Ok(chunk), From::Disk(offset + n, left - n))),
                        Err(e) => {
                            let Some((node, id, query)) = resume else {
                                return Some((Err(e), From::Done));
                            };
                            tracing::error!(file_id = %id, offset, error = %e, "the disk failed a read part-way: the rest comes from a peer, and the copy is repaired");
                            repair_soon(&node, &id);
                            match peer_range(&node, &id, query.as_deref(), offset, left).await {
                                // An empty chunk: the peer's bytes follow.
                                Some(rest) => Some((Ok(Bytes::new()), From::Peer(rest))),
                                None => Some((Err(e), From::Done)),
                            }
                        }
                    }
                }
                From::Peer(mut rest) => {
                    use futures_util::StreamExt;
                    match rest.next().await {
                        Some(Ok(b)) => Some((Ok(b), From::Peer(rest))),
                        Some(Err(e)) => Some((Err(io::Error::other(e)), From::Done)),
                        None => None,
                    }
                }
            }
        }
    })
}

/// Bytes `offset..offset + count` of `id` from an active peer that holds it (answered from its disk only),
/// exactly that many; `None` when no peer can.
pub(crate) async fn peer_range(
    node: &AppState,
    id: &FileId,
    query: Option<&str>,
    offset: u64,
    count: u64,
) -> Option<futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>> {
    use futures_util::StreamExt;
    if count == 0 {
        return None;
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let range = format!("bytes={offset}-{}", offset + count - 1);
    from_peers(
        node,
        id,
        Method::GET,
        &query,
        |rb| rb.header(header::RANGE, &range),
        |peer, r| {
            if r.status() == StatusCode::PARTIAL_CONTENT && r.content_length() == Some(count) {
                return Some(r.bytes_stream().boxed());
            }
            tracing::debug!(file_id = %id, peer = peer.node_id, status = %r.status(), "peer cannot serve the range");
            None
        },
    )
    .await
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

/// Replace this node's copy of `id` with a peer's, in the background ([`crate::scrub::repair_file`]); one
/// repair per file at a time.
pub(crate) fn repair_soon(node: &AppState, id: &FileId) {
    static UNDER_WAY: std::sync::Mutex<Vec<(u32, String)>> = std::sync::Mutex::new(Vec::new());
    let key = (node.node_id, id.to_string());
    {
        let mut under_way = UNDER_WAY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if under_way.contains(&key) {
            return;
        }
        under_way.push(key.clone());
    }
    let (node, id) = (node.clone(), id.clone());
    tokio::spawn(async move {
        crate::scrub::repair_file(&node.sync, &id).await;
        UNDER_WAY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k| *k != key);
    });
}

/// Fetch the file from an active peer and stream its answer back; `None` when no peer has it.
async fn proxy(
    node: &AppState,
    id: &FileId,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<Response> {
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let method = if method == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };
    let forward = |mut rb: reqwest::RequestBuilder| {
        for h in &FORWARDED_REQUEST_HEADERS {
            if let Some(v) = headers.get(h) {
                rb = rb.header(h, v);
            }
        }
        rb
    };
    from_peers(node, id, method, &query, forward, |peer, resp| {
        if resp.status() == StatusCode::NOT_FOUND || resp.status().is_server_error() {
            tracing::debug!(file_id = %id, peer = peer.node_id, status = %resp.status(), "peer lacks the file");
            return None;
        }
        tracing::debug!(file_id = %id, peer = peer.node_id, "proxying read");
        Some(relay(resp))
    })
    .await
    .flatten()
}

/// A peer's answer passed on as it streams: its status and [`FORWARDED_RESPONSE_HEADERS`].
fn relay(resp: reqwest::Response) -> Option<Response> {
    let mut out = Response::builder().status(resp.status());
    for h in &FORWARDED_RESPONSE_HEADERS {
        if let Some(v) = resp.headers().get(h) {
            out = out.header(h, v);
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|e| tracing::warn!(error = %e, "building proxied response"))
        .ok()
}

/// The read proxy of HTTP ([`proxy`]) and FastDFS downloads: ask the active peers of the group in turn for
/// `id` from their own disk (`method` on their public route `{public_url}/{id}{query}`, with
/// [`NO_PROXY_HEADER`] and what `prepare` adds). `take` judges each answer: `Some` ends the search with it,
/// `None` asks the next peer. `None` when no peer's answer was taken.
pub(crate) async fn from_peers<T>(
    node: &AppState,
    id: &FileId,
    method: Method,
    query: &str,
    prepare: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    mut take: impl FnMut(&MemberInfo, reqwest::Response) -> Option<T>,
) -> Option<T> {
    let peers = node.peers.get();
    for peer in peers
        .iter()
        .filter(|p| p.state == MemberState::Active && p.node_id != node.node_id)
    {
        let url = format!("{}/{id}{query}", peer.public_url.trim_end_matches('/'));
        let rb = node
            .http
            .request(method.clone(), &url)
            .header(NO_PROXY_HEADER, "1");
        match prepare(rb).send().await {
            Ok(resp) => {
                if let Some(taken) = take(peer, resp) {
                    return Some(taken);
                }
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
        assert!(weak_match("\"a\", W/\"b\"", "b"));
        assert!(weak_match("*", "b"));
        assert!(!weak_match("\"a\"", "b"));
        assert!(strong_match("\"b\"", "b"));
        assert!(!strong_match("W/\"b\"", "b"));
        assert!(!strong_match("b", "b"));
        assert!(!strong_match("\"b", "b"));
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

    fn id() -> FileId {
        "g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
            .parse()
            .unwrap()
    }

    /// A real file of `len` bytes, written and synced to disk (so its pages are clean and can be evicted).
    fn stored(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
        let path = dir.join(format!("f{len}"));
        let bytes = fdfs_testkit::content(len, len);
        std::fs::write(&path, &bytes).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        (path, bytes)
    }

    /// [`open`] on the async thread only, asserting that the caches held everything.
    fn open_from_caches(path: &Path, ask: &Ask) -> Opened {
        let opened =
            open_cached(path, ask).expect("a file just written opens from the dentry cache");
        match PendingRead::of(opened) {
            Ok(mut pending) => {
                let got = read_cached(&pending.file, &mut pending.buf, pending.offset);
                assert_eq!(
                    got,
                    pending.buf.len(),
                    "a file just read is in the page cache"
                );
                pending.done()
            }
            Err(opened) => opened,
        }
    }

    /// Status, every header and the body of an answer.
    async fn summary(res: Response) -> (StatusCode, Vec<(String, String)>, Bytes) {
        let mut headers: Vec<_> = res
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body)
    }

    /// Every kind of request a download takes is answered alike from the caches on the async thread and by the
    /// blocking path, for a small file (one read) and a large one (streamed).
    #[tokio::test]
    async fn the_page_cache_path_answers_as_the_blocking_path_does() {
        let dir = tempfile::tempdir().unwrap();
        let id = id();
        let etag = etag_for(&id);
        let weak = format!("W/{etag}");
        let date = httpdate::fmt_http_date(last_modified_for(&id));
        let old = "Fri, 09 Aug 1996 14:21:40 GMT";
        for len in [5000, 300_000] {
            let (path, bytes) = stored(dir.path(), len);
            let past_end = format!("bytes={len}-");
            let cases = vec![
                (false, vec![], None, StatusCode::OK),
                (true, vec![], None, StatusCode::OK),
                (false, vec![], Some("attname=a%20photo.jpg"), StatusCode::OK),
                (
                    false,
                    vec![(header::RANGE, "bytes=0-99")],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    false,
                    vec![(header::RANGE, "bytes=-100")],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    false,
                    vec![(header::RANGE, "bytes=4000-")],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    true,
                    vec![(header::RANGE, "bytes=10-19")],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    false,
                    vec![(header::RANGE, &past_end)],
                    None,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                ),
                (
                    false,
                    vec![(header::RANGE, "bytes=0-0,-1")],
                    None,
                    StatusCode::OK,
                ),
                (
                    false,
                    vec![(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &etag)],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    false,
                    vec![(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &date)],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    false,
                    vec![
                        (header::RANGE, "bytes=0-9"),
                        (header::IF_RANGE, "\"other\""),
                    ],
                    None,
                    StatusCode::OK,
                ),
                (
                    false,
                    vec![(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &weak)],
                    None,
                    StatusCode::OK,
                ),
                (
                    false,
                    vec![(header::IF_NONE_MATCH, &etag)],
                    None,
                    StatusCode::NOT_MODIFIED,
                ),
                (
                    true,
                    vec![(header::IF_NONE_MATCH, &weak)],
                    None,
                    StatusCode::NOT_MODIFIED,
                ),
                (
                    false,
                    vec![(header::IF_NONE_MATCH, "\"nope\"")],
                    None,
                    StatusCode::OK,
                ),
                (
                    false,
                    vec![(header::IF_MODIFIED_SINCE, &date)],
                    None,
                    StatusCode::NOT_MODIFIED,
                ),
                (
                    false,
                    vec![(header::IF_MODIFIED_SINCE, old)],
                    None,
                    StatusCode::OK,
                ),
                (
                    false,
                    vec![(header::IF_MATCH, "\"nope\"")],
                    None,
                    StatusCode::PRECONDITION_FAILED,
                ),
                (
                    false,
                    vec![(header::IF_MATCH, &etag), (header::RANGE, "bytes=1-2")],
                    None,
                    StatusCode::PARTIAL_CONTENT,
                ),
                (
                    false,
                    vec![(header::IF_UNMODIFIED_SINCE, old)],
                    None,
                    StatusCode::PRECONDITION_FAILED,
                ),
            ];
            for (head, request, query, status) in cases {
                let what = format!("{len} bytes, head {head}, {request:?}, {query:?}");
                let mut headers = HeaderMap::new();
                for (name, value) in request {
                    headers.insert(name, HeaderValue::from_str(value).unwrap());
                }
                let ask = || Ask::new(&headers, &id, head);
                let blocking = summary(respond(
                    &id,
                    open_blocking(&path, &ask()).unwrap(),
                    query,
                    None,
                ))
                .await;
                let cached =
                    summary(respond(&id, open_from_caches(&path, &ask()), query, None)).await;
                let either = summary(respond(
                    &id,
                    open(path.clone(), ask()).await.unwrap(),
                    query,
                    None,
                ))
                .await;
                assert_eq!(blocking.0, status, "{what}");
                assert_eq!(cached, blocking, "{what}");
                assert_eq!(either, blocking, "{what}");
                if status == StatusCode::OK && !head {
                    assert!(blocking.2 == bytes[..], "{what}: other bytes");
                }
            }
        }
    }

    /// Data evicted from the page cache is not read on the async thread, and the answer is still right.
    #[tokio::test]
    async fn data_out_of_the_page_cache_is_read_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let id = id();
        let (path, bytes) = stored(dir.path(), 20_000);
        let ask = || {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, HeaderValue::from_static("bytes=100-19999"));
            Ask::new(&headers, &id, false)
        };
        fdfs_testkit::evict_from_page_cache(&path);
        let opened =
            open_cached(&path, &ask()).expect("the dentry cache opens a file just written");
        let Ok(mut pending) = PendingRead::of(opened) else {
            panic!("a range of 19,900 bytes is read in one read");
        };
        if read_cached(&pending.file, &mut pending.buf, pending.offset) == pending.buf.len() {
            eprintln!("skipped: this filesystem keeps evicted pages (tmpfs?)");
            return;
        }
        fdfs_testkit::evict_from_page_cache(&path);
        let (status, _, body) = summary(respond(
            &id,
            open(path.clone(), ask()).await.unwrap(),
            None,
            None,
        ))
        .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert!(body == bytes[100..], "other bytes");
    }

    /// A missing file or a directory is missing both ways; once the blocking path has looked a missing name up,
    /// its cached negative dentry answers on the async thread.
    #[tokio::test]
    async fn missing_files_are_missing_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let ask = Ask::new(&HeaderMap::new(), &id(), false);
        let missing = dir.path().join("missing");
        assert!(matches!(open_blocking(&missing, &ask), Ok(Opened::Missing)));
        assert!(matches!(open_cached(&missing, &ask), Some(Opened::Missing)));
        assert!(matches!(open(missing, ask).await, Ok(Opened::Missing)));
        let ask = Ask::new(&HeaderMap::new(), &id(), false);
        assert!(matches!(
            open_blocking(dir.path(), &ask),
            Ok(Opened::Missing)
        ));
        assert!(matches!(
            open_cached(dir.path(), &ask),
            Some(Opened::Missing)
        ));
    }
}
