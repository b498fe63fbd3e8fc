//! The FastDFS binary protocol, as spoken by FastDFS clients to trackers and storage nodes: the 10-byte packet
//! header (8-byte big-endian body length, command byte, status byte; the status of a reply is an errno value),
//! the command and errno numbers, fixed-width fields, and one connection loop (bounded connections, read and
//! idle deadlines) that the tracker's and the storage node's listeners share. The commands themselves live in
//! `fdfs_tracker::fastdfs` and `fdfs_storage::fastdfs`; `docs/PROTOCOL.md` lists them with their layouts.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of a packet header.
pub const HEADER_LEN: usize = 10;
/// Width of a group name field.
pub const GROUP_LEN: usize = 16;
/// Width of a file extension field.
pub const EXT_LEN: usize = 6;
/// Width of a slave prefix field.
pub const PREFIX_LEN: usize = 16;
/// Width of a storage id field (list storage).
pub const STORAGE_ID_LEN: usize = 16;
/// Width of a domain name field (list storage).
pub const DOMAIN_LEN: usize = 128;
/// Width of a version field (list storage).
pub const VERSION_LEN: usize = 6;
/// Separator between metadata records (`name\x02value\x01name\x02value`).
pub const RECORD_SEP: u8 = 0x01;
/// Separator between a metadata name and its value.
pub const FIELD_SEP: u8 = 0x02;

/// Command numbers (FastDFS `tracker_proto.h`).
pub mod cmd {
    /// The command byte of every reply.
    pub const RESP: u8 = 100;
    /// Close the connection (no reply).
    pub const QUIT: u8 = 82;
    /// Liveness probe; empty reply.
    pub const ACTIVE_TEST: u8 = 111;
    // Tracker.
    /// Stats of one group.
    pub const LIST_ONE_GROUP: u8 = 90;
    /// Stats of every group.
    pub const LIST_ALL_GROUPS: u8 = 91;
    /// Stats of a group's members (`TrackerStorageStat` each).
    pub const LIST_STORAGE: u8 = 92;
    /// Where to upload, any group: one member.
    pub const QUERY_STORE_WITHOUT_GROUP_ONE: u8 = 101;
    /// Where to download a file: the first member holding it.
    pub const QUERY_FETCH_ONE: u8 = 102;
    /// Where to change a file (delete, metadata): the first member holding it.
    pub const QUERY_UPDATE: u8 = 103;
    /// Where to upload in a given group: one member.
    pub const QUERY_STORE_WITH_GROUP_ONE: u8 = 104;
    /// Where to download a file: every member holding it.
    pub const QUERY_FETCH_ALL: u8 = 105;
    /// Where to upload, any group: every active member of the chosen group.
    pub const QUERY_STORE_WITHOUT_GROUP_ALL: u8 = 106;
    /// Where to upload in a given group: every active member.
    pub const QUERY_STORE_WITH_GROUP_ALL: u8 = 107;
    // Storage.
    /// Store a file; the reply is its group and name.
    pub const UPLOAD_FILE: u8 = 11;
    /// Delete a file.
    pub const DELETE_FILE: u8 = 12;
    /// Overwrite or merge a file's metadata.
    pub const SET_METADATA: u8 = 13;
    /// Read a file, whole or a range.
    pub const DOWNLOAD_FILE: u8 = 14;
    /// A file's metadata.
    pub const GET_METADATA: u8 = 15;
    /// Store a slave file named after its master plus a prefix.
    pub const UPLOAD_SLAVE_FILE: u8 = 21;
    /// Size, creation time, CRC32 and source address of a file.
    pub const QUERY_FILE_INFO: u8 = 22;
    /// Appender upload (not supported: `ENOTSUP`).
    pub const UPLOAD_APPENDER_FILE: u8 = 23;
    /// Append to an appender file (not supported: `ENOTSUP`).
    pub const APPEND_FILE: u8 = 24;
    /// Overwrite part of an appender file (not supported: `ENOTSUP`).
    pub const MODIFY_FILE: u8 = 34;
    /// Truncate an appender file (not supported: `ENOTSUP`).
    pub const TRUNCATE_FILE: u8 = 36;
}

/// Status values of replies (Linux errno numbers, as FastDFS sends them).
pub mod errno {
    /// No such file or group, or no storage to offer.
    pub const ENOENT: u8 = 2;
    /// Internal failure (the detail is logged).
    pub const EIO: u8 = 5;
    /// Not allowed (missing secret, forbidden operation).
    pub const EACCES: u8 = 13;
    /// Write quorum not reached: the file stays and replication carries it.
    pub const EBUSY: u8 = 16;
    /// The slave file already exists.
    pub const EEXIST: u8 = 17;
    /// Malformed request: wrong lengths, bad name, ext or prefix, another group's file, unknown command.
    pub const EINVAL: u8 = 22;
    /// Over `max_file_size`.
    pub const EFBIG: u8 = 27;
    /// No group or store path has room.
    pub const ENOSPC: u8 = 28;
    /// Command not supported (appender commands).
    pub const ENOTSUP: u8 = 95;
}

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the body that follows.
    pub len: u64,
    /// Command number ([`cmd`]); [`cmd::RESP`] in replies.
    pub cmd: u8,
    /// 0 in requests and successful replies, else an [`errno`] value.
    pub status: u8,
}

impl Header {
    /// The 10 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&self.len.to_be_bytes());
        b[8] = self.cmd;
        b[9] = self.status;
        b
    }

    /// Parse the 10 bytes on the wire.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[..8]);
        Header {
            len: u64::from_be_bytes(len),
            cmd: b[8],
            status: b[9],
        }
    }
}

/// Width of the IP address fields of replies: 16 in classic FastDFS builds, 46 in IPv6-capable ones (6.x built
/// with IPv6). A query reply's address field is one byte shorter than this (the C side's terminating NUL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub enum IpWidth {
    /// 16 bytes (`fastdfs_ip_width = 16`, the default).
    #[default]
    Classic,
    /// 46 bytes (`fastdfs_ip_width = 46`).
    Ipv6,
}

impl IpWidth {
    /// Bytes of an address field (`IP_ADDRESS_SIZE`).
    pub fn size(self) -> usize {
        match self {
            IpWidth::Classic => 16,
            IpWidth::Ipv6 => 46,
        }
    }
}

impl TryFrom<u8> for IpWidth {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, String> {
        match n {
            16 => Ok(IpWidth::Classic),
            46 => Ok(IpWidth::Ipv6),
            _ => Err(format!("fastdfs_ip_width must be 16 or 46, not {n}")),
        }
    }
}

impl std::str::FromStr for IpWidth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n: u8 = s
            .parse()
            .map_err(|_| format!("fastdfs_ip_width must be 16 or 46, not {s:?}"))?;
        IpWidth::try_from(n)
    }
}

/// Append `value` to `buf` as a fixed-width field: cut to `width`, padded with NUL bytes.
pub fn put_fixed(buf: &mut Vec<u8>, value: &[u8], width: usize) {
    let n = value.len().min(width);
    buf.extend_from_slice(&value[..n]);
    buf.resize(buf.len() + width - n, 0);
}

/// Append a big-endian 64-bit integer (FastDFS's `long2buff`).
pub fn put_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(&n.to_be_bytes());
}

/// A fixed-width text field without its NUL padding.
pub fn fixed_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Read a big-endian 64-bit integer at `at` (callers check the length first).
pub fn get_u64(body: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&body[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Metadata in FastDFS's wire format (`name\x02value` records joined by `\x01`), in name order.
pub fn encode_meta<'a>(meta: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in meta {
        if !out.is_empty() {
            out.push(RECORD_SEP);
        }
        out.extend_from_slice(k.as_bytes());
        out.push(FIELD_SEP);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Parse FastDFS's metadata format; `None` when a record has no field separator or is not UTF-8.
pub fn decode_meta(buf: &[u8]) -> Option<Vec<(String, String)>> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    buf.split(|&b| b == RECORD_SEP)
        .filter(|r| !r.is_empty())
        .map(|record| {
            let at = record.iter().position(|&b| b == FIELD_SEP)?;
            let name = std::str::from_utf8(&record[..at]).ok()?;
            let value = std::str::from_utf8(&record[at + 1..]).ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Limits of a FastDFS listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog until one ends.
    pub max_connections: usize,
    /// A connection is closed when a request does not arrive, or a read or write makes no progress, for this
    /// long (FastDFS's `network_timeout`).
    pub timeout: Duration,
}

impl Limits {
    /// The limits from a server's `fastdfs_max_connections` and `fastdfs_timeout_ms` (at least 1 ms).
    pub fn new(max_connections: usize, timeout_ms: u64) -> Self {
        Self {
            max_connections,
            timeout: Duration::from_millis(timeout_ms.max(1)),
        }
    }
}

/// How long open connections get to finish the request they are in once the listener is told to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One client connection: reads requests and writes replies, each read and write under the deadline.
pub struct Conn {
    stream: TcpStream,
    timeout: Duration,
    /// Becomes true when the listener stops: the connection ends before its next request.
    stop: tokio::sync::watch::Receiver<bool>,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "fastdfs connection timed out")
}

impl Conn {
    /// Wrap an accepted stream; each read and write gets `timeout`, and the connection ends before its next
    /// request once `stop` turns true.
    pub(crate) fn new(
        stream: TcpStream,
        timeout: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Conn {
        Conn {
            stream,
            timeout,
            stop,
        }
    }

    /// The next request's header; `None` when the client closed the connection between requests, or the
    /// listener is stopping.
    pub async fn next_header(&mut self) -> io::Result<Option<Header>> {
        let mut b = [0u8; HEADER_LEN];
        let read = tokio::time::timeout(self.timeout, self.stream.read(&mut b));
        let first = tokio::select! {
            r = read => r.map_err(|_| timed_out())??,
            _ = self.stop.wait_for(|stopped| *stopped) => return Ok(None),
        };
        if first == 0 {
            return Ok(None);
        }
        self.read_exact(&mut b[first..]).await?;
        Ok(Some(Header::decode(&b)))
    }

    /// The next request's header, for a door's connection loop; `None` when the connection is done: closed by
    /// the client between requests, a `QUIT`, the listener stopping, or a read that failed or timed out (logged).
    pub async fn next_request(&mut self) -> Option<Header> {
        match self.next_header().await {
            Ok(Some(h)) if h.cmd == cmd::QUIT => None,
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(peer = %self.peer(), error = %e, "fastdfs connection closed");
                None
            }
        }
    }

    /// Fill `buf` from the socket (each read under the deadline).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut buf[at..]))
                .await
                .map_err(|_| timed_out())??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            at += n;
        }
        Ok(())
    }

    /// Read a body of `len` bytes that the caller has bounded.
    pub async fn read_body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut body = vec![0u8; len];
        self.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Read up to `max` bytes of a streamed body (at least one, unless `max` is 0).
    pub async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = tokio::time::timeout(self.timeout, self.stream.read(buf))
            .await
            .map_err(|_| timed_out())??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }

    /// Write bytes under the deadline.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        tokio::time::timeout(self.timeout, self.stream.write_all(buf))
            .await
            .map_err(|_| timed_out())?
    }

    /// A complete reply: header with `status`, then `body`.
    pub async fn reply(&mut self, status: u8, body: &[u8]) -> io::Result<()> {
        let header = Header {
            len: body.len() as u64,
            cmd: cmd::RESP,
            status,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(body);
        self.write_all(&out).await
    }

    /// The header of a reply whose body the caller streams next.
    pub async fn reply_header(&mut self, len: u64) -> io::Result<()> {
        let header = Header {
            len,
            cmd: cmd::RESP,
            status: 0,
        };
        self.write_all(&header.encode()).await
    }

    /// Skip `len` bytes of a body the handler does not use (bounded by the caller).
    pub async fn skip(&mut self, mut len: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while len > 0 {
            let want = usize::try_from(len.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = self.read_some(&mut buf[..want]).await?;
            len -= n as u64;
        }
        Ok(())
    }

    /// The connection's read and write deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    }
}

/// Accept connections on `listener` until `stop` resolves, serving each with `handle` in its own task, at most
/// `limits.max_connections` at once. On stop, idle connections end, and those in a request get [`STOP_GRACE`] to
/// finish it before they are dropped.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    role: &'static str,
    handle: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Conn) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                metrics::gauge!("fdfs_fastdfs_connections", "role" => role).increment(1.0);
                let fut = handle(Conn::new(stream, limits.timeout, stop_rx.clone()));
                conns.spawn(async move {
                    fut.await;
                    metrics::gauge!("fdfs_fastdfs_connections", "role" => role).decrement(1.0);
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "fastdfs accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = stopping.send(true);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            role,
            open = conns.len(),
            "fastdfs connections still busy at shutdown, dropping them"
        );
    }
    conns.shutdown().await;
}

/// Count a served request (`fdfs_fastdfs_requests_total{role, command, status}`).
pub fn count(role: &'static str, command: u8, status: u8) {
    metrics::counter!(
        "fdfs_fastdfs_requests_total",
        "role" => role,
        "command" => command.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
}

/// The host part of `host:port` (brackets of an IPv6 literal removed), as the text of an address field.
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            len: 10 << 30,
            cmd: cmd::UPLOAD_FILE,
            status: 0,
        };
        assert_eq!(Header::decode(&h.encode()), h);
        assert_eq!(h.encode()[..8], (10u64 << 30).to_be_bytes());
    }

    #[test]
    fn fixed_fields_pad_and_cut() {
        let mut b = Vec::new();
        put_fixed(&mut b, b"group1", GROUP_LEN);
        put_fixed(&mut b, b"a-very-long-extension", EXT_LEN);
        assert_eq!(b.len(), GROUP_LEN + EXT_LEN);
        assert_eq!(fixed_str(&b[..GROUP_LEN]), b"group1");
        assert_eq!(fixed_str(&b[GROUP_LEN..]), b"a-very");
    }

    #[test]
    fn metadata_round_trips() {
        let meta: std::collections::BTreeMap<String, String> =
            [("a".into(), "1".into()), ("width".into(), "x=y".into())].into();
        let wire = encode_meta(&meta);
        assert_eq!(wire, b"a\x021\x01width\x02x=y");
        let back: std::collections::BTreeMap<_, _> =
            decode_meta(&wire).unwrap().into_iter().collect();
        assert_eq!(back, meta);
        assert_eq!(decode_meta(b"").unwrap(), vec![]);
        assert!(decode_meta(b"no-separator").is_none());
    }

    #[test]
    fn ip_width_is_16_or_46() {
        assert_eq!("16".parse::<IpWidth>().unwrap().size(), 16);
        assert_eq!("46".parse::<IpWidth>().unwrap().size(), 46);
        assert!("15".parse::<IpWidth>().is_err());
        assert_eq!(host_of("127.0.0.1:23000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:23000"), "::1");
    }
}
