//! A raw HTTP/1.1 client over TCP, for bytes no HTTP client library would send (traversal targets, NUL,
//! broken framing, a body that stalls half way): build the request with [`request`] (or write the bytes
//! yourself), [`send`] it on a fresh connection, and get the server's first response parsed into an
//! [`Answer`] (status, headers, body, how long until the server closed, whether the read timed out).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How to send and read.
#[derive(Debug, Clone, Copy)]
pub struct How {
    /// Close our write side after sending (the server sees EOF, e.g. in the middle of a body).
    pub shutdown: bool,
    /// Give up reading after this long.
    pub read_timeout: Duration,
    /// Stop reading once one whole response is in, instead of when the server closes the connection.
    pub until_answered: bool,
}

impl Default for How {
    /// Keep the write side open, read until the server closes (20 s at most).
    fn default() -> Self {
        How {
            shutdown: false,
            read_timeout: Duration::from_secs(20),
            until_answered: false,
        }
    }
}

impl How {
    /// The default, reading for at most `secs` seconds.
    pub fn within(secs: u64) -> How {
        How {
            read_timeout: Duration::from_secs(secs),
            ..How::default()
        }
    }
}

/// What came back on a raw connection.
#[derive(Debug, Default)]
pub struct Answer {
    /// `None`: the server closed (or the read timed out) without a whole status line.
    pub status: Option<u16>,
    /// The response headers, in order (names as sent).
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Time until the server closed the connection (or the read ended).
    pub elapsed: Duration,
    /// The read gave up at the [`How::read_timeout`] (the server neither closed nor finished answering).
    pub timed_out: bool,
}

impl Answer {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// One line for failure messages.
    pub fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        format!(
            "status {:?} after {:?}{} body {body:?}",
            self.status,
            self.elapsed,
            if self.timed_out { " (timed out)" } else { "" }
        )
    }
}

/// `METHOD target HTTP/1.1` with a `Host`, `Connection: close`, the `extra` header lines (each ending in
/// `\r\n`), a `Content-Length` for a non-empty body unless `extra` has one, then the body.
pub fn request(method: &str, target: &[u8], extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(method.as_bytes());
    r.push(b' ');
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: fdfs.test\r\nConnection: close\r\n");
    r.extend_from_slice(extra.as_bytes());
    if !body.is_empty() && !extra.to_ascii_lowercase().contains("content-length") {
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// Send `bytes` on a fresh connection and read the answer (see [`How`]).
pub async fn send(addr: SocketAddr, bytes: &[u8], how: How) -> Answer {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The server may answer and close before reading everything (413, 431): a failed write is fine.
    let _ = s.write_all(bytes).await;
    if how.shutdown {
        let _ = s.shutdown().await;
    }
    let mut buf = Vec::new();
    let mut timed_out = false;
    let deadline = tokio::time::Instant::now() + how.read_timeout;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => {
                timed_out = true;
                break;
            }
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if how.until_answered && complete(&buf) {
                    break;
                }
            }
        }
    }
    let mut a = parse(&buf);
    a.elapsed = t0.elapsed();
    a.timed_out = timed_out;
    a
}

/// Whether `buf` holds a whole response: its head and the body its framing announces.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = head_end(buf) else {
        return false;
    };
    let a = parse(buf);
    if a.header("transfer-encoding").is_some() {
        return buf.ends_with(b"0\r\n\r\n");
    }
    let len = a
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parse the first HTTP/1.1 response in `buf` (status, headers, body by length or chunked).
fn parse(buf: &[u8]) -> Answer {
    let mut a = Answer::default();
    let Some(end) = head_end(buf) else {
        return a;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    a.status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok());
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            a.headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let rest = &buf[end + 4..];
    a.body = if a
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else if let Some(n) = a
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    a
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        rest = &rest[eol + 2..];
        if size == 0 || rest.len() < size {
            out.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out
}
