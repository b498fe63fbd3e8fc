//! Hostile input against a real cluster (child processes): the gateway and a storage node get path traversal
//! (`..`, `%2e%2e`, `%2F`, backslashes, NUL), malformed IDs, wrong groups, overlong paths and headers,
//! truncated and boundary-less multipart, oversize bodies, a client that stalls half-way through its body,
//! garbage HTTP, and a seeded corpus of random mutations of valid file IDs. Everything goes over raw TCP, so
//! bytes no HTTP client would send are sent as they are.
//!
//! Every answer must be: no 5xx except 502/503/504 (and 505 for an HTTP version that does not exist); a JSON
//! error body of the shape `{"error": {"code", "message"}}`; traversal and malformed IDs refused with a 4xx; a
//! 200 from a storage node only ever carrying the bytes of a file that was uploaded. Afterwards every process is
//! still running and answers `/health`, and an upload still round-trips.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{args, Cluster, ClusterSpec, SECRET};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Gateway body stall timeout for this test, in seconds.
const BODY_TIMEOUT_SECS: u64 = 2;
/// Upload limit of the gateway and the storage nodes.
const LIMIT: usize = 1 << 20;
/// Random mutations of valid IDs sent to each target.
const MUTATIONS: usize = 600;
/// Seed of the mutation corpus (printed, so a failure can be replayed).
const SEED: u64 = 0x00f0_0d5e_ed00;

/// What came back on a raw connection.
#[derive(Debug, Default)]
struct Answer {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Time until the server closed the connection (or the read timed out).
    elapsed: Duration,
    timed_out: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        format!(
            "status {:?} after {:?}{} body {body:?}",
            self.status,
            self.elapsed,
            if self.timed_out { " (timed out)" } else { "" }
        )
    }
}

/// How to send a raw request.
#[derive(Debug, Clone, Copy)]
struct Send {
    /// Close our write side after sending (the server sees EOF, e.g. in the middle of a body).
    shutdown: bool,
    /// Give up reading after this long.
    read_timeout: Duration,
}

impl Default for Send {
    fn default() -> Self {
        Send {
            shutdown: false,
            read_timeout: Duration::from_secs(20),
        }
    }
}

/// Send `bytes` on a fresh connection and read until the server closes it (or `read_timeout`).
async fn raw(addr: SocketAddr, bytes: &[u8], how: Send) -> Answer {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
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
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut a = parse(&buf);
    a.elapsed = t0.elapsed();
    a.timed_out = timed_out;
    a
}

/// Parse the first HTTP/1.1 response in `buf` (status, headers, body by length or chunked).
fn parse(buf: &[u8]) -> Answer {
    let mut a = Answer::default();
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
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

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn check_alive(&mut self, what: &str, log: &std::path::Path) {
        assert!(
            matches!(self.0.try_wait(), Ok(None)),
            "{what} died; log:\n{}",
            crate::common::tail(log, 40)
        );
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request with `Connection: close` and the given extra header lines (each ending in `\r\n`).
fn req(method: &str, target: &[u8], extra: &str, body: &[u8]) -> Vec<u8> {
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

/// What an answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Only the general rules (no bad 5xx, JSON error shape).
    Any,
    /// A 4xx, or the server closing without an answer.
    Refused,
}

/// The violations found so far.
struct Judge {
    problems: Vec<String>,
    checked: usize,
    /// How many answers had each status (`None`: closed without one), for the log.
    statuses: std::collections::BTreeMap<Option<u16>, usize>,
    /// Bytes of every uploaded file: a storage 200 must carry one of them.
    files: Vec<Vec<u8>>,
}

impl Judge {
    fn check(&mut self, what: &str, a: &Answer, expect: Expect) {
        self.checked += 1;
        *self.statuses.entry(a.status).or_default() += 1;
        let mut bad = Vec::new();
        if let Some(s) = a.status {
            let allowed_5xx = matches!(s, 502..=504) || (s == 505 && what.contains("version"));
            if s >= 500 && !allowed_5xx {
                bad.push(format!("server error {s}"));
            }
            let json = a
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"));
            if s >= 400 && json && !a.body.is_empty() && !error_shape_ok(&a.body) {
                bad.push("JSON error body without {\"error\":{\"code\",\"message\"}}".into());
            }
            if s >= 400 && !json && !a.body.is_empty() {
                bad.push(format!(
                    "error body that is not JSON ({:?})",
                    a.header("content-type")
                ));
            }
            if expect == Expect::Refused && !(400..500).contains(&s) {
                bad.push(format!("expected a 4xx refusal, got {s}"));
            }
            if s == 200
                && what.starts_with("storage GET")
                && !what.contains("/v1/")
                && !what.contains("/health")
                && !self.files.contains(&a.body)
                && !a.body.is_empty()
            {
                bad.push(format!(
                    "200 with {} bytes that are no uploaded file",
                    a.body.len()
                ));
            }
        }
        if !bad.is_empty() {
            self.problems
                .push(format!("{what}: {} -- {}", bad.join("; "), a.summary()));
        }
    }
}

fn error_shape_ok(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let e = &v["error"];
    e["code"].is_string() && e["message"].is_string() && v.as_object().is_some_and(|o| o.len() == 1)
}

/// Printable form of a target for messages.
fn show(target: &[u8]) -> String {
    let s = String::from_utf8_lossy(target);
    if s.len() > 120 {
        format!("{}...({} bytes)", &s[..120], s.len())
    } else {
        s.into_owned()
    }
}

/// Paths that try to leave the store, or are not file IDs at all; `id` is a real file's ID. The flag says
/// whether every node must refuse the path with a 4xx: the rest name a real file in an unusual but harmless
/// spelling (a `%2F` the router decodes, a leading `//`, a long query) or a file of the other group, and may be
/// served, as long as what is served is that file.
fn hostile_paths(id: &str, other_group_id: &str) -> Vec<(Vec<u8>, bool)> {
    let (dir, name) = id.rsplit_once('/').unwrap();
    let refused = [
        "/../../../../etc/passwd".to_owned(),
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd".to_owned(),
        format!("/{dir}/../../../../.fdfs/db"),
        format!("/{dir}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/.fdfs/db"),
        format!("/{dir}/..%2F..%2F..%2F..%2F.fdfs%2Fdb"),
        format!("/{dir}/..%5C..%5C..%5C{name}"),
        format!("/{dir}/..\\..\\..\\{name}"),
        format!("/{}", id.replace('/', "\\")),
        format!("/{id}%00"),
        format!("/{id}%00.png"),
        format!("/{id}-m"),
        format!("/{id}/.."),
        format!("/{id}/../{name}"),
        format!("/{dir}/./{name}"),
        format!("/{dir}//{name}"),
        format!("/{dir}/"),
        format!("/{dir}/{}", &name[..10]),
        format!("/{dir}/{name}{name}"),
        format!("/{dir}/{name}.toolongext"),
        format!("/{}", id.replacen("M00", "M0G", 1)),
        format!("/{}", id.replacen("M00", "m00", 1)),
        format!("/nosuchgroup/{}", id.split_once('/').unwrap().1),
        format!("/group_name_too_long_x/{}", id.split_once('/').unwrap().1),
        format!("/info/../{id}"),
        format!("/meta/..%2F..%2F{name}"),
        format!("/meta/{dir}/%2e%2e"),
        "/.fdfs/db".to_owned(),
        "/data/00/00/x".to_owned(),
        "/v1/../health".to_owned(),
        format!("/{}", "a/".repeat(4000)),
        format!("/{}", "A".repeat(60_000)),
        format!("/{}", "A".repeat(70_000)),
    ];
    let harmless = [
        format!("/{}", id.replace('/', "%2F")),
        format!("//{id}"),
        format!("/{id}?{}", "q=1&".repeat(10_000)),
        format!("/{}", id.replacen("M00", "MFF", 1)),
        format!("/{other_group_id}"),
    ];
    let mut p: Vec<(Vec<u8>, bool)> = refused
        .into_iter()
        .map(|s| (s.into_bytes(), true))
        .chain(harmless.into_iter().map(|s| (s.into_bytes(), false)))
        .collect();
    // Bytes no URL may hold: NUL, a raw high byte, a raw space inside the target.
    let mut nul = format!("/{dir}/").into_bytes();
    nul.extend_from_slice(name.as_bytes());
    nul.push(0);
    p.push((nul, true));
    let mut high = format!("/{dir}/").into_bytes();
    high.extend_from_slice(&[0xff, 0xfe, b'.', b'.']);
    p.push((high, true));
    p.push((format!("/{dir}/a b").into_bytes(), true));
    p
}

/// Requests that are not proper HTTP.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("binary noise", vec![0x00, 0x01, 0x02, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']),
        ("no version", b"GET /health\r\n\r\n".to_vec()),
        ("bad version", b"GET /health HTTP/9.9\r\n\r\n".to_vec()),
        ("lower-case version", b"GET /health http/1.1\r\n\r\n".to_vec()),
        ("empty request line", b"\r\n\r\n\r\n\r\n".to_vec()),
        ("header without colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n".to_vec()),
        ("NUL in header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec()),
        ("bad method token", b"G(E)T /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("unknown method", req("FROB", b"/health", "", b"")),
        ("TRACE", req("TRACE", b"/", "", b"")),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec()),
        ("absolute-form target", b"GET http://evil.test/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("asterisk target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("negative content-length", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec()),
        ("two content-lengths", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_vec()),
        ("content-length overflow", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nabc".to_vec()),
        ("CL and TE", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\n\r\n".to_vec()),
        ("bad chunk size", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("huge chunk size", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nffffffffffffffffff\r\nabc\r\n".to_vec()),
        ("unknown transfer-encoding", b"PUT /upload/a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, zstd\r\nConnection: close\r\n\r\nabc".to_vec()),
        ("header folding", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\nConnection: close\r\n\r\n".to_vec()),
        ("HTTP/2 preface on HTTP/1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("TLS hello", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]),
    ]
}

/// A random mutation of `id`, as raw target bytes (seeded, so replayable).
fn mutate(rng: &mut StdRng, id: &str) -> Vec<u8> {
    const SPICE: [&[u8]; 20] = [
        b".",
        b"..",
        b"/",
        b"%2e%2e",
        b"%2F",
        b"%2f",
        b"%00",
        b"\\",
        b"%5C",
        b"%",
        b"%zz",
        b"?",
        b"#",
        b"-m",
        b"\xc3\xa9",
        b"\xff",
        b"M00",
        b"../",
        b"~",
        b"%252e",
    ];
    let mut t: Vec<u8> = format!("/{id}").into_bytes();
    let rounds = rng.random_range(1..=3);
    for _ in 0..rounds {
        let at = rng.random_range(0..=t.len());
        match rng.random_range(0..7) {
            0 => {
                // Replace one byte with a random printable one.
                if at < t.len() {
                    t[at] = rng.random_range(0x21..0x7f);
                }
            }
            1 => {
                let s = SPICE[rng.random_range(0..SPICE.len())];
                t.splice(at..at, s.iter().copied());
            }
            2 => {
                // Delete a run.
                let end = (at + rng.random_range(1..6)).min(t.len());
                t.drain(at..end);
            }
            3 => t.truncate(at.max(1)),
            4 => {
                // Duplicate a segment.
                let s = t.clone();
                let end = (at + rng.random_range(1..20)).min(s.len());
                t.splice(at..at, s[at..end].iter().copied());
            }
            5 => {
                // Flip case of a byte (hex dirs must be upper-case, base64 is case-sensitive).
                if at < t.len() {
                    t[at] = if t[at].is_ascii_lowercase() {
                        t[at].to_ascii_uppercase()
                    } else {
                        t[at].to_ascii_lowercase()
                    };
                }
            }
            _ => {
                // A random byte anywhere, control characters included.
                t.insert(at, rng.random::<u8>());
            }
        }
    }
    if t.first() != Some(&b'/') {
        t.insert(0, b'/');
    }
    t
}

/// Upload `body` as `name` through the gateway (raw PUT), returning the file ID.
async fn upload(c: &Cluster, name: &str, body: &[u8], group: &str) -> String {
    let resp = c
        .http
        .put(format!("{}/upload/{name}?group={group}", c.gateway_url()))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["file_id"].as_str().unwrap().to_owned()
}

fn multipart_head(boundary: &str, filename: &str) -> String {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_never_break_a_node() {
    let limit = LIMIT.to_string();
    let body_timeout = BODY_TIMEOUT_SECS.to_string();
    let spec = ClusterSpec {
        groups: 2,
        members: 1,
        // One member per group: an upload is acknowledged by that member alone.
        storage_args: args(&[
            "--heartbeat-interval-ms",
            "200",
            "--max-file-size",
            &limit,
            "--write-quorum",
            "1",
        ]),
        gateway_args: args(&[
            "--max-upload-size",
            &limit,
            "--body-timeout-secs",
            &body_timeout,
            "--request-timeout-secs",
            "10",
        ]),
        ..ClusterSpec::default()
    };
    let mut c = Cluster::start(spec).await;
    let gw = c.gateway.addr;
    let st = c.storage[0][0].addr;

    let content = b"hostile corpus target\n".repeat(50);
    let id = upload(&c, "target.txt", &content, "group1").await;
    let other = upload(&c, "other.bin", b"in group two", "group2").await;
    let mut j = Judge {
        problems: Vec::new(),
        checked: 0,
        statuses: Default::default(),
        files: vec![content.clone(), b"in group two".to_vec()],
    };
    let secret_hdr = format!("x-fdfs-cluster-secret: {SECRET}\r\n");
    let quick = Send {
        read_timeout: Duration::from_secs(15),
        ..Send::default()
    };

    // 1. Traversal, malformed IDs, wrong groups, overlong targets: on every gateway route and the storage node.
    for (p, must_refuse) in hostile_paths(&id, &other) {
        let shown = show(&p);
        let expect = if must_refuse {
            Expect::Refused
        } else {
            Expect::Any
        };
        for (method, prefix) in [
            ("GET", ""),
            ("HEAD", ""),
            ("DELETE", ""),
            ("GET", "/info"),
            ("GET", "/meta"),
        ] {
            if method == "DELETE" && !must_refuse {
                continue;
            }
            let mut t = prefix.as_bytes().to_vec();
            t.extend_from_slice(&p);
            let a = raw(gw, &req(method, &t, "", b""), quick).await;
            j.check(&format!("gateway {method} {}", show(&t)), &a, expect);
        }
        let a = raw(st, &req("GET", &p, "", b""), quick).await;
        j.check(&format!("storage GET {shown}"), &a, expect);
        let a = raw(st, &req("HEAD", &p, "", b""), quick).await;
        j.check(&format!("storage HEAD {shown}"), &a, expect);
        let mut v1 = b"/v1/files".to_vec();
        v1.extend_from_slice(&p);
        let a = raw(st, &req("GET", &v1, &secret_hdr, b""), quick).await;
        j.check(&format!("storage GET /v1/files{shown}"), &a, expect);
        let mut v1 = b"/v1/meta".to_vec();
        v1.extend_from_slice(&p);
        let a = raw(st, &req("PUT", &v1, &secret_hdr, b"{}"), quick).await;
        j.check(&format!("storage PUT /v1/meta{shown}"), &a, expect);
    }

    // 2. Huge headers: one 100 KiB header is within hyper's buffer (served), 1 MiB and 500 headers are not.
    let big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1024 * 1024));
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (name, addr) in [("gateway", gw), ("storage", st)] {
        let a = raw(addr, &req("GET", b"/health", &big, b""), quick).await;
        j.check(&format!("{name} 100 KiB header"), &a, Expect::Any);
        let a = raw(addr, &req("GET", b"/health", &huge, b""), quick).await;
        j.check(&format!("{name} 1 MiB header"), &a, Expect::Refused);
        let a = raw(addr, &req("GET", b"/health", &many, b""), quick).await;
        j.check(&format!("{name} 500 headers"), &a, Expect::Refused);
        let t = format!("/{id}");
        let a = raw(addr, &req("GET", t.as_bytes(), &big, b""), quick).await;
        j.check(&format!("{name} 100 KiB header on a file"), &a, Expect::Any);
    }

    // 3. Garbage HTTP, to both.
    for (name, bytes) in garbage() {
        for (who, addr) in [("gateway", gw), ("storage", st)] {
            let a = raw(
                addr,
                &bytes,
                Send {
                    shutdown: true,
                    ..quick
                },
            )
            .await;
            j.check(&format!("{who} garbage ({name})"), &a, Expect::Any);
        }
    }

    // 4. Multipart abuse on the gateway.
    let b = "XbOuNdArY";
    let ct = format!("Content-Type: multipart/form-data; boundary={b}\r\n");
    let mut truncated = multipart_head(b, "t.bin").into_bytes();
    truncated.extend_from_slice(&[7u8; 3000]);
    let declared = format!("{ct}Content-Length: 10000\r\n");
    let a = raw(
        gw,
        &req("POST", b"/upload", &declared, &truncated),
        Send {
            shutdown: true,
            ..quick
        },
    )
    .await;
    j.check("gateway multipart closed mid-part", &a, Expect::Any);
    let mut unterminated = multipart_head(b, "t.bin").into_bytes();
    unterminated.extend_from_slice(b"no closing boundary");
    let a = raw(gw, &req("POST", b"/upload", &ct, &unterminated), quick).await;
    j.check(
        "gateway multipart without closing boundary",
        &a,
        Expect::Refused,
    );
    let no_boundary = "Content-Type: multipart/form-data\r\n";
    let a = raw(
        gw,
        &req("POST", b"/upload", no_boundary, &unterminated),
        quick,
    )
    .await;
    j.check("gateway multipart without boundary", &a, Expect::Refused);
    let a = raw(
        gw,
        &req("POST", b"/upload", "Content-Type: text/plain\r\n", b"hello"),
        quick,
    )
    .await;
    j.check("gateway upload that is not multipart", &a, Expect::Refused);
    let a = raw(gw, &req("POST", b"/upload", &ct, b""), quick).await;
    j.check("gateway empty multipart", &a, Expect::Refused);
    let only_field = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"group\"\r\n\r\ngroup1\r\n--{b}--\r\n"
    );
    let a = raw(
        gw,
        &req("POST", b"/upload", &ct, only_field.as_bytes()),
        quick,
    )
    .await;
    j.check("gateway multipart without a file part", &a, Expect::Refused);
    // (A slave `<master>-m` without extension would be the master's metadata file name: refused. With an
    // extension, `<master>-m.bin`, it is an ordinary slave name.)
    for (field, value, filename) in [
        ("group", "../../etc", "f.bin"),
        ("group", "group_name_too_long_x", "f.bin"),
        ("master_file_id", "../../../.fdfs/db", "f.bin"),
        ("prefix", "../x", "f.bin"),
        ("prefix", "-m", "f"),
        ("meta.", "x", "f.bin"),
    ] {
        let mut body =
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n")
                .into_bytes();
        if field == "prefix" {
            body = format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"master_file_id\"\r\n\r\n{id}\r\n"
            )
            .into_bytes()
            .into_iter()
            .chain(body)
            .collect();
        }
        body.extend_from_slice(multipart_head(b, filename).as_bytes());
        body.extend_from_slice(format!("payload\r\n--{b}--\r\n").as_bytes());
        let a = raw(gw, &req("POST", b"/upload", &ct, &body), quick).await;
        j.check(
            &format!("gateway multipart field {field}={value:?} file {filename}"),
            &a,
            Expect::Refused,
        );
    }
    // Metadata too large for one file (it would not fit the storage node's URI, and would pile up in memory).
    let mut fat_meta: Vec<u8> = (0..3)
        .flat_map(|i| {
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"meta.k{i}\"\r\n\r\n{}\r\n",
                "v".repeat(60_000)
            )
            .into_bytes()
        })
        .collect();
    fat_meta.extend_from_slice(multipart_head(b, "f.txt").as_bytes());
    fat_meta.extend_from_slice(format!("payload\r\n--{b}--\r\n").as_bytes());
    let a = raw(gw, &req("POST", b"/upload", &ct, &fat_meta), quick).await;
    j.check(
        "gateway multipart with 180 KB of metadata",
        &a,
        Expect::Refused,
    );
    let t = format!(
        "/upload/f.txt?meta.a={}&meta.b={}",
        "%01".repeat(5_000),
        "%01".repeat(5_000)
    );
    let a = raw(gw, &req("PUT", t.as_bytes(), "", b"payload"), quick).await;
    j.check(
        "gateway raw upload with escaped metadata",
        &a,
        Expect::Refused,
    );
    let mut evil_name = multipart_head(b, "../../../../etc/cron.d/x.sh").into_bytes();
    evil_name.extend_from_slice(format!("payload\r\n--{b}--\r\n").as_bytes());
    let a = raw(gw, &req("POST", b"/upload", &ct, &evil_name), quick).await;
    j.check("gateway multipart filename with ..", &a, Expect::Any);
    if a.status == Some(200) {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let fid = v["file_id"].as_str().unwrap_or_default();
        assert!(
            fid.parse::<fdfs_common::FileId>().is_ok() && !fid.contains(".."),
            "a hostile filename leaked into the ID: {fid}"
        );
    }

    // 5. Oversize bodies: declared (refused before reading), chunked and multipart (refused while streaming).
    let over = format!("Content-Length: {}\r\n", 2 * LIMIT);
    let a = raw(gw, &req("PUT", b"/upload/big.bin", &over, b""), quick).await;
    j.check("gateway declared oversize PUT", &a, Expect::Refused);
    assert_eq!(a.status, Some(413), "declared oversize: {}", a.summary());
    let a = raw(
        st,
        &req("POST", b"/v1/upload", &format!("{secret_hdr}{over}"), b""),
        quick,
    )
    .await;
    j.check("storage declared oversize upload", &a, Expect::Refused);
    assert_eq!(a.status, Some(413), "storage oversize: {}", a.summary());
    let mut chunked = Vec::new();
    for _ in 0..(LIMIT / 65536 + 4) {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend_from_slice(&[b'z'; 65536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let a = raw(
        gw,
        &req(
            "PUT",
            b"/upload/big.bin",
            "Transfer-Encoding: chunked\r\n",
            &chunked,
        ),
        quick,
    )
    .await;
    j.check("gateway chunked oversize PUT", &a, Expect::Any);
    assert!(
        a.status.is_none() || a.status == Some(413),
        "chunked oversize: {}",
        a.summary()
    );
    let mut mp = multipart_head(b, "big.bin").into_bytes();
    mp.extend_from_slice(&vec![b'y'; LIMIT + 4096]);
    mp.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    let a = raw(gw, &req("POST", b"/upload", &ct, &mp), quick).await;
    j.check("gateway multipart oversize", &a, Expect::Any);
    assert!(
        a.status.is_none() || a.status == Some(413),
        "multipart oversize: {}",
        a.summary()
    );

    // 6. Metadata bodies that are not what the route takes.
    for body in [
        &b"not json"[..],
        b"[1,2,3]",
        b"{\"k\": {\"nested\": 1}}",
        b"{\"k\": 5}",
        b"{\"k\": \"v\"",
        b"\xff\xfe{}",
        b"{\"\": \"empty key\"}",
    ] {
        for m in ["PUT", "PATCH"] {
            let t = format!("/meta/{id}");
            let a = raw(
                gw,
                &req(m, t.as_bytes(), "Content-Type: application/json\r\n", body),
                quick,
            )
            .await;
            j.check(
                &format!("gateway {m} /meta body {:?}", String::from_utf8_lossy(body)),
                &a,
                Expect::Any,
            );
        }
    }
    let a = raw(st, &req("POST", b"/v1/reindex", "", b""), quick).await;
    j.check("storage reindex without secret", &a, Expect::Refused);
    for q in [
        "ext=..%2F..%2Fx",
        "ext=%00",
        "store_path=300",
        "store_path=7",
        "meta=%5B1%5D",
        "meta=not-json",
        &format!("master={other}&prefix=_s"),
        &format!("master={id}&prefix=-m"),
        &format!("master={id}&prefix=..%2F.."),
        &format!("master={id}"),
    ] {
        let t = format!("/v1/upload?{q}");
        let a = raw(st, &req("POST", t.as_bytes(), &secret_hdr, b"abc"), quick).await;
        j.check(&format!("storage upload ?{q}"), &a, Expect::Refused);
    }
    let a = raw(
        st,
        &req("POST", b"/v1/upload?ext=txt", "", b"no secret"),
        quick,
    )
    .await;
    j.check("storage upload without secret", &a, Expect::Refused);

    // 7. A client that sends half its body and stalls: cut with 408 (or a close) within the body timeout.
    let cut_within = Duration::from_secs(BODY_TIMEOUT_SECS + 8);
    let stall = Send {
        shutdown: false,
        read_timeout: cut_within,
    };
    let half = vec![b's'; 5000];
    let a = raw(
        gw,
        &req(
            "PUT",
            b"/upload/slow.bin",
            "Content-Length: 10000\r\n",
            &half,
        ),
        stall,
    )
    .await;
    j.check("gateway stalled raw upload", &a, Expect::Any);
    assert!(
        !a.timed_out && matches!(a.status, None | Some(408)),
        "a stalled raw upload was not cut within {cut_within:?}: {}",
        a.summary()
    );
    let mut half_mp = multipart_head(b, "slow.bin").into_bytes();
    half_mp.extend_from_slice(&half);
    let a = raw(
        gw,
        &req(
            "POST",
            b"/upload",
            &format!("{ct}Content-Length: 20000\r\n"),
            &half_mp,
        ),
        stall,
    )
    .await;
    j.check("gateway stalled multipart upload", &a, Expect::Any);
    assert!(
        !a.timed_out && matches!(a.status, None | Some(408)),
        "a stalled multipart upload was not cut within {cut_within:?}: {}",
        a.summary()
    );

    // 8. Seeded random mutations of valid IDs, on the gateway's file routes and the storage node.
    eprintln!("mutation corpus seed {SEED:#x}");
    let mut rng = StdRng::seed_from_u64(SEED);
    for i in 0..MUTATIONS {
        let base = if i % 4 == 3 { &other } else { &id };
        let t = mutate(&mut rng, base);
        let shown = show(&t);
        let a = raw(st, &req("GET", &t, "", b""), quick).await;
        j.check(
            &format!("storage GET {shown} (mutation {i})"),
            &a,
            Expect::Any,
        );
        let (method, prefix) = [
            ("GET", ""),
            ("HEAD", ""),
            ("GET", "/info"),
            ("GET", "/meta"),
            ("PATCH", "/meta"),
        ][i % 5];
        let mut gt = prefix.as_bytes().to_vec();
        gt.extend_from_slice(&t);
        let body: &[u8] = if method == "PATCH" {
            b"{\"m\":\"1\"}"
        } else {
            b""
        };
        let a = raw(
            gw,
            &req(method, &gt, "Content-Type: application/json\r\n", body),
            quick,
        )
        .await;
        j.check(
            &format!("gateway {method} {} (mutation {i})", show(&gt)),
            &a,
            Expect::Any,
        );
    }

    // 9. Range and conditional headers no client should send, on the storage node and through a gateway in
    // proxy mode (which passes them on and streams the answer back).
    let proxy_log = c.dir.path().join("logs").join("gateway-proxy.log");
    let (proxy_child, proxy_addr) = crate::common::spawn_server(
        crate::common::Role::Gateway,
        "127.0.0.1:0",
        &args(&[
            "--tracker",
            &c.trackers[0].addr.to_string(),
            "--download-mode",
            "proxy",
        ]),
        &proxy_log,
    );
    let mut proxy_gw = KillOnDrop(proxy_child);
    let many_ranges: String = (0..2000).map(|i| format!("{i}-{i},")).collect();
    let many_tags: String = (0..2000).map(|i| format!("\"{i}\", ")).collect();
    let header_abuse = [
        "Range: bytes=99999999999999999999-".to_owned(),
        "Range: bytes=-0".to_owned(),
        "Range: bytes=5-1".to_owned(),
        "Range: bytes=--5".to_owned(),
        "Range: bytes=".to_owned(),
        "Range: bytes=a-b".to_owned(),
        "Range: items=0-5".to_owned(),
        "Range: bytes=0-0,-1".to_owned(),
        format!("Range: bytes={}", many_ranges.trim_end_matches(',')),
        "Range: bytes=18446744073709551615-18446744073709551615".to_owned(),
        "Range: bytes=0-18446744073709551615".to_owned(),
        "Range: bytes=0-9".to_owned(),
        "If-Range: garbage\r\nRange: bytes=0-9".to_owned(),
        "If-Match: \"nope\"".to_owned(),
        "If-None-Match: *".to_owned(),
        format!("If-None-Match: {many_tags}"),
        "If-Modified-Since: Tue, 99 Foo 99999 99:99:99 GMT".to_owned(),
        "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT".to_owned(),
        "Accept-Encoding: gzip;q=garbage, *;q=-1".to_owned(),
    ];
    let target = format!("/{id}");
    for h in &header_abuse {
        let extra = format!("{h}\r\n");
        for (who, addr) in [("storage GET", st), ("proxy gateway GET", proxy_addr)] {
            let a = raw(addr, &req("GET", target.as_bytes(), &extra, b""), quick).await;
            j.check(
                &format!("{who} with {}", show(h.as_bytes())),
                &a,
                Expect::Any,
            );
            match a.status {
                Some(200) => assert_eq!(a.body, content, "{who} with {h}: 200 with other bytes"),
                Some(206) => {
                    let range = a.header("content-range").unwrap_or_default().to_owned();
                    let (from, to) = range
                        .strip_prefix("bytes ")
                        .and_then(|r| r.split_once('/'))
                        .and_then(|(r, _)| r.split_once('-'))
                        .and_then(|(f, t)| {
                            Some((f.parse::<usize>().ok()?, t.parse::<usize>().ok()?))
                        })
                        .unwrap_or_else(|| {
                            panic!("{who} with {h}: 206 without a Content-Range: {range:?}")
                        });
                    assert_eq!(
                        a.body,
                        content[from..=to],
                        "{who} with {h}: 206 with other bytes"
                    );
                }
                _ => {}
            }
        }
    }
    proxy_gw.check_alive("proxy-mode gateway", &proxy_log);

    // 10. Everyone survived and still serves.
    for n in c.all_nodes_mut() {
        assert!(n.is_running(), "{} died; log:\n{}", n.name, n.log_tail(40));
    }
    for n in c.all_nodes() {
        let r = c.http.get(format!("{}/health", n.url())).send().await;
        assert!(
            r.as_ref().is_ok_and(|r| r.status() == 200),
            "{} does not answer /health: {r:?}",
            n.name
        );
    }
    let again = upload(&c, "after.txt", b"still works", "group1").await;
    let got = c
        .follow
        .get(format!("{}/{again}", c.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.unwrap()[..], b"still works");
    let got = c
        .follow
        .get(format!("{}/{id}", c.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        &got.bytes().await.unwrap()[..],
        &content[..],
        "the target file changed"
    );

    eprintln!(
        "{} hostile requests checked; answers by status: {:?}",
        j.checked, j.statuses
    );
    assert!(
        j.problems.is_empty(),
        "{} of {} hostile requests were mishandled:\n{}",
        j.problems.len(),
        j.checked,
        j.problems.join("\n")
    );
}
