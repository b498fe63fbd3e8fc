//! The storage node's FastDFS protocol door (`fastdfs_listen`): upload (master and slave), download (offset and
//! length, streamed), delete, metadata, file info, active test and quit, for FastDFS client libraries.
//!
//! One cluster, two doors: every change goes through the same [`crate::write::Writes`] (uploads) and
//! [`crate::sync::SyncEngine`] (deletes, metadata) operations as the HTTP routes in [`crate::api`] (write quorum,
//! replication, dedup, metadata, tombstones), and reads come from the same [`crate::store::Store`]. An upload
//! streams from the socket straight into [`crate::write::Writes::upload`]; no body is ever held whole in memory.
//! Appender-file commands answer `ENOTSUP` (95) and keep the connection. Codec and connection loop:
//! [`fdfs_common::fastdfs`].

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fdfs_common::fastdfs::{
    cmd, decode_meta, encode_meta, errno, fixed_str, get_u64, host_of, put_fixed, put_u64, Conn,
    Header, IpWidth, EXT_LEN, GROUP_LEN, PREFIX_LEN,
};
use fdfs_common::fileid::ext_from_filename;
use fdfs_common::wire::{MemberInfo, Metadata};
use fdfs_common::FileId;
use reqwest::Method;
use tokio::io::AsyncReadExt;

use crate::error::StorageError;
use crate::store::{MetaUpdate, NewFile, Stored};
use crate::sync::Slaves;
use crate::AppState;

/// Largest body of a command that names a file (group and file name, a few fixed fields).
const MAX_SMALL_BODY: u64 = 4096;
/// Largest metadata buffer of a set-metadata request.
const MAX_META: u64 = 1 << 20;
/// Chunk size of streamed uploads and downloads.
const CHUNK: usize = 64 * 1024;
/// Longest master file name in a slave upload.
const MAX_MASTER_NAME: u64 = 256;

/// What to do with the connection after a command.
enum Flow {
    Continue,
    Close,
}

/// A command's outcome: a status and the body of the reply.
type Reply = Result<Vec<u8>, u8>;

/// The status answering a storage error.
fn status_of(e: &StorageError) -> u8 {
    match e {
        StorageError::NotFound(_) => errno::ENOENT,
        StorageError::Conflict(_) => errno::EEXIST,
        StorageError::BadRequest(_) => errno::EINVAL,
        StorageError::TooLarge { .. } => errno::EFBIG,
        StorageError::InsufficientStorage => errno::ENOSPC,
        StorageError::Unauthorized | StorageError::Forbidden(_) => errno::EACCES,
        StorageError::Unavailable(_) | StorageError::NotReplicated(..) => errno::EBUSY,
        _ => errno::EIO,
    }
}

fn refuse(e: StorageError) -> u8 {
    let status = status_of(&e);
    if status == errno::EIO {
        tracing::error!(error = %e, "fastdfs request failed");
    } else {
        tracing::debug!(error = %e, "fastdfs request refused");
    }
    status
}

/// Serve one connection until the client quits or closes it, or breaks the protocol.
pub async fn handle(node: AppState, mut conn: Conn) {
    loop {
        let Some(header) = conn.next_request().await else {
            return;
        };
        let flow = match header.cmd {
            cmd::UPLOAD_FILE | cmd::UPLOAD_SLAVE_FILE => upload(&node, &mut conn, header).await,
            cmd::DOWNLOAD_FILE => download(&node, &mut conn, header).await,
            cmd::UPLOAD_APPENDER_FILE
            | cmd::APPEND_FILE
            | cmd::MODIFY_FILE
            | cmd::TRUNCATE_FILE => {
                // Not supported (yet): skip the body so the connection stays usable.
                not_supported(&node, &mut conn, header).await
            }
            _ => small(&node, &mut conn, header).await,
        };
        if let Flow::Close = flow {
            return;
        }
    }
}

/// Answer `status` (and `body`) and go on, or close when the answer cannot be sent.
async fn answer(conn: &mut Conn, command: u8, reply: Reply) -> Flow {
    let (status, body) = match reply {
        Ok(b) => (0, b),
        Err(s) => (s, Vec::new()),
    };
    fdfs_common::fastdfs::count("storage", command, status);
    match conn.reply(status, &body).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Close,
    }
}

/// Answer `status` and close: the rest of the request's body is not read.
async fn answer_and_close(conn: &mut Conn, command: u8, status: u8) -> Flow {
    fdfs_common::fastdfs::count("storage", command, status);
    tracing::debug!(peer = %conn.peer(), command, status, "fastdfs request refused, closing");
    let _ = conn.reply(status, &[]).await;
    Flow::Close
}

async fn not_supported(node: &AppState, conn: &mut Conn, header: Header) -> Flow {
    if header.len > node.max_file_size {
        return answer_and_close(conn, header.cmd, errno::ENOTSUP).await;
    }
    if conn.skip(header.len).await.is_err() {
        return Flow::Close;
    }
    answer(conn, header.cmd, Err(errno::ENOTSUP)).await
}

/// Commands with a small body: read it whole (bounded), then answer.
async fn small(node: &AppState, conn: &mut Conn, header: Header) -> Flow {
    let limit = match header.cmd {
        cmd::SET_METADATA => MAX_SMALL_BODY + MAX_META,
        _ => MAX_SMALL_BODY,
    };
    if header.len > limit {
        return answer_and_close(conn, header.cmd, errno::EINVAL).await;
    }
    let body = match conn
        .read_body(usize::try_from(header.len).unwrap_or(0))
        .await
    {
        Ok(b) => b,
        Err(_) => return Flow::Close,
    };
    let reply = match header.cmd {
        cmd::ACTIVE_TEST => Ok(Vec::new()),
        cmd::DELETE_FILE => delete(node, &body).await,
        cmd::SET_METADATA => set_meta(node, &body).await,
        cmd::GET_METADATA => get_meta(node, &body).await,
        cmd::QUERY_FILE_INFO => file_info(node, &body).await,
        _ => Err(errno::EINVAL),
    };
    answer(conn, header.cmd, reply).await
}

/// `group(16) + name` (the name takes the rest) as a file ID of this node's group.
fn file_id(node: &AppState, body: &[u8]) -> Result<FileId, u8> {
    if body.len() <= GROUP_LEN {
        return Err(errno::EINVAL);
    }
    let group = std::str::from_utf8(fixed_str(&body[..GROUP_LEN])).map_err(|_| errno::EINVAL)?;
    let name = std::str::from_utf8(&body[GROUP_LEN..]).map_err(|_| errno::EINVAL)?;
    let id: FileId = format!("{group}/{}", name.trim_end_matches('\0'))
        .parse()
        .map_err(|_| errno::EINVAL)?;
    if !node.store.owns(&id) {
        return Err(errno::EINVAL);
    }
    Ok(id)
}

async fn delete(node: &AppState, body: &[u8]) -> Reply {
    let id = file_id(node, body)?;
    match node.writes.delete(&id, Slaves::Rendered).await {
        Ok(Some(_)) => {
            tracing::info!(file_id = %id, door = "fastdfs", "deleted");
            Ok(Vec::new())
        }
        Ok(None) => Err(errno::ENOENT),
        Err(e) => Err(refuse(e)),
    }
}

/// `filename_len(8) + meta_len(8) + flag(1: 'O' overwrite, 'M' merge) + group(16) + filename + meta`.
async fn set_meta(node: &AppState, body: &[u8]) -> Reply {
    const FIXED: usize = 8 + 8 + 1 + GROUP_LEN;
    if body.len() < FIXED {
        return Err(errno::EINVAL);
    }
    let name_len = usize::try_from(get_u64(body, 0)).map_err(|_| errno::EINVAL)?;
    let meta_len = usize::try_from(get_u64(body, 8)).map_err(|_| errno::EINVAL)?;
    if name_len
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(FIXED))
        != Some(body.len())
    {
        return Err(errno::EINVAL);
    }
    let flag = body[16];
    let mut named = body[17..17 + GROUP_LEN].to_vec();
    named.extend_from_slice(&body[FIXED..FIXED + name_len]);
    let id = file_id(node, &named)?;
    let pairs = decode_meta(&body[FIXED + name_len..]).ok_or(errno::EINVAL)?;
    let update = match flag {
        b'O' => MetaUpdate::Replace(pairs.into_iter().collect()),
        b'M' => MetaUpdate::Merge(pairs.into_iter().map(|(k, v)| (k, Some(v))).collect()),
        _ => return Err(errno::EINVAL),
    };
    node.writes.set_meta(&id, update).await.map_err(refuse)?;
    Ok(Vec::new())
}

async fn get_meta(node: &AppState, body: &[u8]) -> Reply {
    let id = file_id(node, body)?;
    match node.store.get_meta(&id).await.map_err(refuse)? {
        Some(meta) => Ok(encode_meta(&meta)),
        None => Err(errno::ENOENT),
    }
}

/// `file_size(8) + create_timestamp(8) + crc32(8) + source_ip(W)`.
async fn file_info(node: &AppState, body: &[u8]) -> Reply {
    let id = file_id(node, body)?;
    let Some(stat) = node.store.stat(&id).await.map_err(refuse)? else {
        return Err(errno::ENOENT);
    };
    let info = id.info();
    let source = if info.source_id == node.node_id {
        host_of(&node.addr).to_owned()
    } else {
        node.peers
            .get()
            .iter()
            .find(|m| m.node_id == info.source_id)
            .map_or_else(
                || std::net::Ipv4Addr::from(info.source_id).to_string(),
                |m| host_of(&m.addr).to_owned(),
            )
    };
    let mut out = Vec::new();
    put_u64(&mut out, stat.len());
    put_u64(&mut out, u64::from(info.created));
    put_u64(&mut out, u64::from(info.crc32));
    put_fixed(&mut out, source.as_bytes(), node.fastdfs_ip_width.size());
    Ok(out)
}

/// `offset(8) + length(8, 0 = to the end) + group(16) + filename`: the bytes, streamed from the file.
async fn download(node: &AppState, conn: &mut Conn, header: Header) -> Flow {
    if header.len > MAX_SMALL_BODY {
        return answer_and_close(conn, header.cmd, errno::EINVAL).await;
    }
    let body = match conn
        .read_body(usize::try_from(header.len).unwrap_or(0))
        .await
    {
        Ok(b) => b,
        Err(_) => return Flow::Close,
    };
    if body.len() < 16 {
        return answer(conn, header.cmd, Err(errno::EINVAL)).await;
    }
    let (offset, length) = (get_u64(&body, 0), get_u64(&body, 8));
    let id = match file_id(node, &body[16..]) {
        Ok(id) => id,
        Err(status) => return answer(conn, header.cmd, Err(status)).await,
    };
    let opened = async {
        let path = match node.store.path(&id) {
            Ok(p) => p,
            Err(StorageError::NotFound(_)) => return Err(errno::ENOENT),
            Err(e) => return Err(refuse(e)),
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(errno::ENOENT),
            Err(e) => return Err(refuse(e.into())),
        };
        let size = file.metadata().await.map_err(|e| refuse(e.into()))?.len();
        if offset > size {
            return Err(errno::EINVAL);
        }
        let left = size - offset;
        let len = if length == 0 { left } else { length.min(left) };
        if offset > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| refuse(e.into()))?;
        }
        Ok((file, len))
    }
    .await;
    let (mut file, len) = match opened {
        Ok(o) => o,
        Err(errno::ENOENT) => {
            // Not here (not synced yet, or lost): stream it from a member that has it.
            if let Some(flow) = from_peer(node, conn, &id, offset, length).await {
                return flow;
            }
            return answer(conn, header.cmd, Err(errno::ENOENT)).await;
        }
        Err(errno::EIO) => {
            // The disk cannot read it: from a member that has it, and the copy repaired.
            crate::serve::repair_soon(node, &id);
            if let Some(flow) = from_peer(node, conn, &id, offset, length).await {
                return flow;
            }
            return answer(conn, header.cmd, Err(errno::EIO)).await;
        }
        Err(status) => return answer(conn, header.cmd, Err(status)).await,
    };
    fdfs_common::fastdfs::count("storage", header.cmd, 0);
    if conn.reply_header(len).await.is_err() {
        return Flow::Close;
    }
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = match file.read(&mut buf[..want]).await {
            Ok(0) => {
                // The reply promised `len` bytes; a short file breaks the stream: close it.
                tracing::warn!(file_id = %id, "fastdfs download: file ended early");
                return Flow::Close;
            }
            Err(e) => {
                // The disk failed part-way: the rest from a peer, and the copy repaired.
                tracing::error!(file_id = %id, error = %e, "the disk failed a read part-way: the rest comes from a peer, and the copy is repaired");
                crate::serve::repair_soon(node, &id);
                return rest_from_peer(node, conn, &id, offset + (len - left), left).await;
            }
            Ok(n) => n,
        };
        if conn.write_all(&buf[..n]).await.is_err() {
            return Flow::Close;
        }
        left -= n as u64;
    }
    metrics::counter!("fdfs_fastdfs_download_bytes_total").increment(len);
    Flow::Continue
}

/// The rest of a download whose reply head is sent (`left` bytes from `offset`) from a peer; the connection is
/// closed when no peer can send them (the reply promised them).
async fn rest_from_peer(
    node: &AppState,
    conn: &mut Conn,
    id: &FileId,
    offset: u64,
    left: u64,
) -> Flow {
    let query = node
        .config
        .anti_leech_secret
        .as_deref()
        .map(|secret| fdfs_common::token::query(id, secret, fdfs_common::time::unix_now()));
    let Some(rest) = crate::serve::peer_range(node, id, query.as_deref(), offset, left).await
    else {
        return Flow::Close;
    };
    send_all(conn, rest, left).await
}

/// Relay a peer's bytes to the client, exactly `len` of them (the reply head promised them): the connection is
/// closed when the peer breaks off or sends another count.
async fn send_all(
    conn: &mut Conn,
    body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>,
    len: u64,
) -> Flow {
    use futures_util::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return Flow::Close;
        };
        if conn.write_all(&chunk).await.is_err() {
            return Flow::Close;
        }
        sent += chunk.len() as u64;
    }
    if sent == len {
        Flow::Continue
    } else {
        Flow::Close
    }
}

/// Stream `length` bytes (0: to the end) from `offset` of a file this member lacks from an active peer that has
/// it (the same read proxy as HTTP downloads: the peer's public route, answered from its disk only); `None`
/// when no peer has it.
async fn from_peer(
    node: &AppState,
    conn: &mut Conn,
    id: &FileId,
    offset: u64,
    length: u64,
) -> Option<Flow> {
    let query = node
        .config
        .anti_leech_secret
        .as_deref()
        .map(|secret| {
            let now = fdfs_common::time::unix_now();
            format!("?{}", fdfs_common::token::query(id, secret, now))
        })
        .unwrap_or_default();
    let range = match (offset, length) {
        (0, 0) => None,
        (o, 0) => Some(format!("bytes={o}-")),
        (o, l) => Some(format!("bytes={o}-{}", o.saturating_add(l - 1))),
    };
    let timeout = conn.timeout();
    let prepare = |rb: reqwest::RequestBuilder| {
        let rb = rb.timeout(timeout);
        match &range {
            Some(r) => rb.header(reqwest::header::RANGE, r),
            None => rb,
        }
    };
    // The first peer that sends the part (`Err`: the range is past the end of the file).
    let take = |peer: &MemberInfo, resp: reqwest::Response| match resp.status().as_u16() {
        200 | 206 => resp
            .content_length()
            .map(|len| Ok((peer.node_id, resp, len))),
        416 => Some(Err(())),
        _ => None,
    };
    let found = crate::serve::from_peers(node, id, Method::GET, &query, prepare, take).await?;
    let Ok((peer, resp, len)) = found else {
        return Some(answer(conn, cmd::DOWNLOAD_FILE, Err(errno::EINVAL)).await);
    };
    tracing::debug!(file_id = %id, peer, "fastdfs download from a peer");
    fdfs_common::fastdfs::count("storage", cmd::DOWNLOAD_FILE, 0);
    if conn.reply_header(len).await.is_err() {
        return Some(Flow::Close);
    }
    Some(send_all(conn, resp.bytes_stream(), len).await)
}

/// What an upload request asks for, from its fixed fields.
struct UploadRequest {
    new: NewFile,
    size: u64,
}

/// Upload file: `store_path(1) + size(8) + ext(6)`, then the bytes. Upload slave file: `master_len(8) +
/// size(8) + prefix(16) + ext(6) + master name`, then the bytes. Answer: `group(16) + file name`.
async fn upload(node: &AppState, conn: &mut Conn, header: Header) -> Flow {
    let fixed_len: usize = if header.cmd == cmd::UPLOAD_FILE {
        1 + 8 + EXT_LEN
    } else {
        8 + 8 + PREFIX_LEN + EXT_LEN
    };
    if header.len < fixed_len as u64 {
        return answer_and_close(conn, header.cmd, errno::EINVAL).await;
    }
    let fixed = match conn.read_body(fixed_len).await {
        Ok(b) => b,
        Err(_) => return Flow::Close,
    };
    let request = if header.cmd == cmd::UPLOAD_FILE {
        master_request(node, &fixed, header.len)
    } else {
        let master_len = get_u64(&fixed, 0);
        if master_len > MAX_MASTER_NAME || header.len < fixed_len as u64 + master_len {
            return answer_and_close(conn, header.cmd, errno::EINVAL).await;
        }
        let master = match conn.read_body(master_len as usize).await {
            Ok(b) => b,
            Err(_) => return Flow::Close,
        };
        slave_request(node, &fixed, &master, header.len)
    };
    let request = match request {
        Ok(r) => r,
        Err(status) => {
            // A refused request whose packet is consistent and within max_file_size: skip its file bytes so
            // that the client reads the errno and the connection stays usable; otherwise answer and close.
            let read = fixed_len as u64 + master_len_of(header.cmd, &fixed);
            let rest = header.len - read;
            if status == errno::EFBIG || rest > node.max_file_size {
                return answer_and_close(conn, header.cmd, status).await;
            }
            if conn.skip(rest).await.is_err() {
                return Flow::Close;
            }
            return answer(conn, header.cmd, Err(status)).await;
        }
    };
    let size = request.size;
    let remaining = AtomicU64::new(size);
    let body = body_stream(conn, &remaining);
    let result = node
        .writes
        .upload(request.new, Metadata::new(), body, node.max_file_size)
        .await;
    let unread = remaining.load(Ordering::Relaxed);
    let reply = match result {
        Ok((Stored { id, size, .. }, replicas)) => {
            tracing::info!(file_id = %id, size, replicas, door = "fastdfs", "stored");
            let mut out = Vec::new();
            put_fixed(&mut out, id.group.as_str().as_bytes(), GROUP_LEN);
            out.extend_from_slice(id.path_in_group().as_bytes());
            Ok(out)
        }
        Err(StorageError::BodyAborted(e)) => {
            tracing::info!(peer = %conn.peer(), error = %e, "fastdfs upload aborted");
            return Flow::Close;
        }
        Err(e) => Err(refuse(e)),
    };
    if unread > 0 {
        // Refused before the body was read (a slave that exists, a missing master): skip the rest of the body,
        // which is within max_file_size, so that the connection stays usable.
        if conn.skip(unread).await.is_err() {
            return Flow::Close;
        }
    }
    answer(conn, header.cmd, reply).await
}

/// Length of the master file name a slave upload carries after its fixed fields (0 for a master upload).
fn master_len_of(command: u8, fixed: &[u8]) -> u64 {
    if command == cmd::UPLOAD_SLAVE_FILE {
        get_u64(fixed, 0)
    } else {
        0
    }
}

/// The extension field as an fdfs extension (`None` when empty).
fn ext_field(field: &[u8]) -> Result<Option<String>, u8> {
    let ext = std::str::from_utf8(fixed_str(field)).map_err(|_| errno::EINVAL)?;
    if ext.is_empty() {
        return Ok(None);
    }
    match ext_from_filename(&format!("f.{ext}")) {
        Some(norm) if norm.eq_ignore_ascii_case(ext) => Ok(Some(norm)),
        _ => Err(errno::EINVAL),
    }
}

fn check_size(node: &AppState, size: u64, expected_len: Option<u64>, len: u64) -> Result<(), u8> {
    if expected_len != Some(len) {
        return Err(errno::EINVAL);
    }
    if size > node.max_file_size {
        return Err(errno::EFBIG);
    }
    Ok(())
}

fn master_request(node: &AppState, fixed: &[u8], len: u64) -> Result<UploadRequest, u8> {
    let store_path = fixed[0];
    let size = get_u64(fixed, 1);
    check_size(node, size, size.checked_add(fixed.len() as u64), len)?;
    if usize::from(store_path) >= node.store.store_path_count() {
        return Err(errno::EINVAL);
    }
    let ext = ext_field(&fixed[9..9 + EXT_LEN])?;
    Ok(UploadRequest {
        new: NewFile::Master {
            store_path,
            ext,
            source_id: node.node_id,
        },
        size,
    })
}

fn slave_request(
    node: &AppState,
    fixed: &[u8],
    master: &[u8],
    len: u64,
) -> Result<UploadRequest, u8> {
    let size = get_u64(fixed, 8);
    let expected = size
        .checked_add(fixed.len() as u64)
        .and_then(|n| n.checked_add(master.len() as u64));
    check_size(node, size, expected, len)?;
    let prefix =
        std::str::from_utf8(fixed_str(&fixed[16..16 + PREFIX_LEN])).map_err(|_| errno::EINVAL)?;
    let ext = ext_field(&fixed[16 + PREFIX_LEN..])?;
    let mut named = Vec::new();
    put_fixed(&mut named, node.group.as_str().as_bytes(), GROUP_LEN);
    named.extend_from_slice(master);
    let master = file_id(node, &named)?;
    if master.name.prefix().is_some() {
        return Err(errno::EINVAL);
    }
    let id = master
        .slave(prefix, ext.as_deref())
        .map_err(|_| errno::EINVAL)?;
    Ok(UploadRequest {
        new: NewFile::Slave { master, id },
        size,
    })
}

/// The next `remaining` bytes of the connection as a body stream, in chunks, each read under the connection's
/// deadline; `remaining` counts down as they are read.
fn body_stream<'a>(
    conn: &'a mut Conn,
    remaining: &'a AtomicU64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'a {
    futures_util::stream::unfold((conn, false), move |(conn, failed)| async move {
        let left = remaining.load(Ordering::Relaxed);
        if left == 0 || failed {
            return None;
        }
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let mut buf = vec![0u8; want];
        match conn.read_some(&mut buf).await {
            Ok(n) => {
                buf.truncate(n);
                remaining.fetch_sub(n as u64, Ordering::Relaxed);
                Some((Ok(Bytes::from(buf)), (conn, false)))
            }
            // Ends the stream: the upload fails as aborted and nothing is kept.
            Err(e) => Some((Err(e), (conn, true))),
        }
    })
}

/// Settings of the door, from the node's config.
pub fn limits(config: &crate::Config) -> fdfs_common::fastdfs::Limits {
    fdfs_common::fastdfs::Limits::new(config.fastdfs_max_connections, config.fastdfs_timeout_ms)
}

/// The IP width setting, for the node.
pub fn width(config: &crate::Config) -> IpWidth {
    config.fastdfs_ip_width
}
