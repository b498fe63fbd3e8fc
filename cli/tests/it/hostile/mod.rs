//! Hostile input against a real cluster (child processes): the gateway and a storage node get path traversal
//! (`..`, `%2e%2e`, `%2F`, backslashes, NUL), malformed IDs, wrong groups, overlong paths and headers,
//! truncated and boundary-less multipart, oversize bodies, a client that stalls half-way through its body,
//! garbage HTTP, Range and conditional headers no client sends, and a seeded corpus of random mutations of
//! valid file IDs. Everything goes over raw TCP ([`fdfs_testkit::raw`]), so bytes no HTTP client would send are
//! sent as they are. One test per family of inputs ([`inputs`]), each on its own cluster.
//!
//! Every answer must pass the [`judge`]: no 5xx except 502/503/504 (and 505 for an HTTP version that does not
//! exist); a JSON error body of the shape `{"error": {"code", "message"}}`; traversal and malformed IDs refused
//! with a 4xx; a 200 from a storage node only ever carrying the bytes of a file that was uploaded. Afterwards
//! every process is still running and answers `/health`, and an upload still round-trips.

mod inputs;
mod judge;

use std::net::SocketAddr;
use std::time::Duration;

use fdfs_testkit::raw::{self, request, Answer, How};
use fdfs_testkit::{Cluster, ClusterSpec, SECRET};
use inputs::{MUTATIONS, SEED};
use judge::{show, Expect, Judge};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Gateway body stall timeout here, in seconds.
const BODY_TIMEOUT_SECS: u64 = 2;
/// Upload limit of the gateway and the storage nodes.
const LIMIT: usize = 1 << 20;

/// A cluster under attack: two groups of one member (an upload is acknowledged by that member alone), a file
/// in each group, and the judge of every answer.
struct Target {
    c: Cluster,
    /// The gateway.
    gw: SocketAddr,
    /// The storage node of group1.
    st: SocketAddr,
    /// The file in group1 and its bytes.
    id: String,
    content: Vec<u8>,
    /// The file in group2.
    other: String,
    j: Judge,
}

/// Read answers for at most 15 s.
const QUICK: How = How {
    shutdown: false,
    read_timeout: Duration::from_secs(15),
    until_answered: false,
};

impl Target {
    /// Start the cluster (the gateway with `gateway` flags too) and upload the two files.
    async fn start(gateway: &[&str]) -> Target {
        let limit = LIMIT.to_string();
        let body_timeout = BODY_TIMEOUT_SECS.to_string();
        let spec = ClusterSpec {
            groups: 2,
            members: 1,
            ..ClusterSpec::default()
                .storage(&["--max-file-size", &limit, "--write-quorum", "1"])
                .gateway(&[
                    "--max-upload-size",
                    &limit,
                    "--body-timeout-secs",
                    &body_timeout,
                    "--request-timeout-secs",
                    "10",
                ])
                .gateway(gateway)
        };
        let c = Cluster::start(spec).await;
        let content = b"hostile corpus target\n".repeat(50);
        let id = upload(&c, "target.txt", &content, "group1").await;
        let other = upload(&c, "other.bin", b"in group two", "group2").await;
        Target {
            gw: c.gateway.addr,
            st: c.storage[0][0].addr,
            j: Judge::new(vec![content.clone(), b"in group two".to_vec()]),
            c,
            id,
            content,
            other,
        }
    }

    /// Send `bytes` to `addr` and judge the answer (`what` names the request in a report).
    async fn check(
        &mut self,
        addr: SocketAddr,
        what: &str,
        bytes: &[u8],
        how: How,
        expect: Expect,
    ) -> Answer {
        let a = raw::send(addr, bytes, how).await;
        self.j.check(what, &a, expect);
        a
    }

    /// Everyone survived and still serves, the target file is unchanged; then the judge's verdict.
    async fn finish(mut self) {
        for n in self.c.all_nodes_mut() {
            assert!(n.is_running(), "{} died; log:\n{}", n.name, n.log_tail(40));
        }
        for n in self.c.all_nodes() {
            let r = self.c.http.get(format!("{}/livez", n.url())).send().await;
            assert!(
                r.as_ref().is_ok_and(|r| r.status() == 200),
                "{} does not answer /livez: {r:?}",
                n.name
            );
        }
        let again = upload(&self.c, "after.txt", b"still works", "group1").await;
        assert_eq!(self.c.download(&again).await, b"still works");
        assert_eq!(
            self.c.download(&self.id).await,
            self.content,
            "the target file changed"
        );
        self.j.assert_clean();
    }
}

/// Upload `body` as `name` into `group` through the gateway (raw PUT), returning the file ID.
async fn upload(c: &Cluster, name: &str, body: &[u8], group: &str) -> String {
    let v = c
        .upload(&format!("{name}?group={group}"), body.to_vec())
        .await;
    v["file_id"].as_str().unwrap().to_owned()
}

/// The server cut the request: it answered `status`, or closed without an answer.
fn assert_cut(a: &Answer, status: u16, what: &str) {
    assert!(
        a.status.is_none() || a.status == Some(status),
        "{what}: {}",
        a.summary()
    );
}

/// The cluster secret header line.
fn secret() -> String {
    format!("x-fdfs-cluster-secret: {SECRET}\r\n")
}

/// `Content-Type` of a multipart form with the inputs' boundary.
fn multipart() -> String {
    format!(
        "Content-Type: multipart/form-data; boundary={}\r\n",
        inputs::BOUNDARY
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_malformed_ids_wrong_groups_and_overlong_targets_are_refused() {
    let mut t = Target::start(&[]).await;
    let (st, secret) = (t.st, secret());
    // On every gateway route and the storage node.
    for (p, must_refuse) in inputs::hostile_paths(&t.id, &t.other) {
        let shown = show(&p);
        let expect = Expect::refused_if(must_refuse);
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
            let mut target = prefix.as_bytes().to_vec();
            target.extend_from_slice(&p);
            let what = format!("gateway {method} {}", show(&target));
            let bytes = request(method, &target, "", b"");
            t.check(t.gw, &what, &bytes, QUICK, expect).await;
        }
        for (method, prefix, extra, body) in [
            ("GET", "", "", &b""[..]),
            ("HEAD", "", "", b""),
            ("GET", "/v1/files", secret.as_str(), b""),
            ("PUT", "/v1/meta", secret.as_str(), b"{}"),
        ] {
            let mut target = prefix.as_bytes().to_vec();
            target.extend_from_slice(&p);
            let what = format!("storage {method} {prefix}{shown}");
            let bytes = request(method, &target, extra, body);
            t.check(st, &what, &bytes, QUICK, expect).await;
        }
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_are_refused_or_served() {
    let mut t = Target::start(&[]).await;
    // One 100 KiB header is within hyper's buffer (served), 1 MiB and 500 headers are not.
    let big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1024 * 1024));
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let file = format!("/{}", t.id);
    for (name, addr) in [("gateway", t.gw), ("storage", t.st)] {
        for (what, target, extra, expect) in [
            ("100 KiB header", "/health", &big, Expect::Any),
            ("1 MiB header", "/health", &huge, Expect::Refused),
            ("500 headers", "/health", &many, Expect::Refused),
            ("100 KiB header on a file", &file, &big, Expect::Any),
        ] {
            let bytes = request("GET", target.as_bytes(), extra, b"");
            t.check(addr, &format!("{name} {what}"), &bytes, QUICK, expect)
                .await;
        }
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_http_gets_a_clean_answer_or_a_close() {
    let mut t = Target::start(&[]).await;
    let sent_whole = How {
        shutdown: true,
        ..QUICK
    };
    for (name, bytes) in inputs::garbage() {
        for (who, addr) in [("gateway", t.gw), ("storage", t.st)] {
            let what = format!("{who} garbage ({name})");
            t.check(addr, &what, &bytes, sent_whole, Expect::Any).await;
        }
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_abuse_is_refused() {
    let mut t = Target::start(&[]).await;
    let (gw, b, ct) = (t.gw, inputs::BOUNDARY, multipart());
    let mut truncated = inputs::multipart_head(b, "t.bin").into_bytes();
    truncated.extend_from_slice(&[7u8; 3000]);
    let declared = format!("{ct}Content-Length: 10000\r\n");
    let bytes = request("POST", b"/upload", &declared, &truncated);
    let closed = How {
        shutdown: true,
        ..QUICK
    };
    t.check(
        gw,
        "gateway multipart closed mid-part",
        &bytes,
        closed,
        Expect::Any,
    )
    .await;
    let mut unterminated = inputs::multipart_head(b, "t.bin").into_bytes();
    unterminated.extend_from_slice(b"no closing boundary");
    let refused: Vec<(String, Vec<u8>)> = [
        (
            "multipart without closing boundary".to_owned(),
            request("POST", b"/upload", &ct, &unterminated),
        ),
        (
            "multipart without boundary".to_owned(),
            request(
                "POST",
                b"/upload",
                "Content-Type: multipart/form-data\r\n",
                &unterminated,
            ),
        ),
        (
            "upload that is not multipart".to_owned(),
            request("POST", b"/upload", "Content-Type: text/plain\r\n", b"hello"),
        ),
        (
            "empty multipart".to_owned(),
            request("POST", b"/upload", &ct, b""),
        ),
    ]
    .into_iter()
    .chain(
        inputs::bad_forms(&t.id)
            .into_iter()
            .map(|(what, body)| (what, request("POST", b"/upload", &ct, &body))),
    )
    .chain([(
        "raw upload with escaped metadata".to_owned(),
        request(
            "PUT",
            format!(
                "/upload/f.txt?meta.a={}&meta.b={}",
                "%01".repeat(5_000),
                "%01".repeat(5_000)
            )
            .as_bytes(),
            "",
            b"payload",
        ),
    )])
    .collect();
    for (what, bytes) in refused {
        t.check(
            gw,
            &format!("gateway {what}"),
            &bytes,
            QUICK,
            Expect::Refused,
        )
        .await;
    }
    // A hostile file name never leaks into the ID.
    let evil = inputs::form_with_filename("../../../../etc/cron.d/x.sh");
    let bytes = request("POST", b"/upload", &ct, &evil);
    let what = "gateway multipart filename with ..";
    let a = t.check(gw, what, &bytes, QUICK, Expect::Any).await;
    if a.status == Some(200) {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let fid = v["file_id"].as_str().unwrap_or_default();
        assert!(
            fid.parse::<fdfs_common::FileId>().is_ok() && !fid.contains(".."),
            "a hostile filename leaked into the ID: {fid}"
        );
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_refused_declared_or_while_streaming() {
    let mut t = Target::start(&[]).await;
    let (gw, st, b) = (t.gw, t.st, inputs::BOUNDARY);
    // Declared: refused before reading.
    let over = format!("Content-Length: {}\r\n", 2 * LIMIT);
    for (addr, what, target, extra) in [
        (
            gw,
            "gateway declared oversize PUT",
            &b"/upload/big.bin"[..],
            over.clone(),
        ),
        (
            st,
            "storage declared oversize upload",
            b"/v1/upload",
            format!("{}{over}", secret()),
        ),
    ] {
        let method = if addr == gw { "PUT" } else { "POST" };
        let bytes = request(method, target, &extra, b"");
        let a = t.check(addr, what, &bytes, QUICK, Expect::Refused).await;
        assert_eq!(a.status, Some(413), "{what}: {}", a.summary());
    }
    // Chunked and multipart: refused while streaming (413, or a close).
    let mut chunked = Vec::new();
    for _ in 0..(LIMIT / 65536 + 4) {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend_from_slice(&[b'z'; 65536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut mp = inputs::multipart_head(b, "big.bin").into_bytes();
    mp.extend_from_slice(&vec![b'y'; LIMIT + 4096]);
    mp.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    for (what, bytes) in [
        (
            "gateway chunked oversize PUT",
            request(
                "PUT",
                b"/upload/big.bin",
                "Transfer-Encoding: chunked\r\n",
                &chunked,
            ),
        ),
        (
            "gateway multipart oversize",
            request("POST", b"/upload", &multipart(), &mp),
        ),
    ] {
        let a = t.check(gw, what, &bytes, QUICK, Expect::Any).await;
        assert_cut(&a, 413, &format!("{what} (refused while streaming)"));
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_and_upload_parameters_are_refused() {
    let mut t = Target::start(&[]).await;
    let st = t.st;
    let meta = format!("/meta/{}", t.id);
    for body in inputs::BAD_METADATA {
        for m in ["PUT", "PATCH"] {
            let json = "Content-Type: application/json\r\n";
            let bytes = request(m, meta.as_bytes(), json, body);
            let what = format!("gateway {m} /meta body {:?}", String::from_utf8_lossy(body));
            t.check(t.gw, &what, &bytes, QUICK, Expect::Any).await;
        }
    }
    let bytes = request("POST", b"/v1/reindex", "", b"");
    let what = "storage reindex without secret";
    t.check(st, what, &bytes, QUICK, Expect::Refused).await;
    for q in inputs::bad_upload_queries(&t.id, &t.other) {
        let target = format!("/v1/upload?{q}");
        let bytes = request("POST", target.as_bytes(), &secret(), b"abc");
        let what = format!("storage upload ?{q}");
        t.check(st, &what, &bytes, QUICK, Expect::Refused).await;
    }
    let bytes = request("POST", b"/v1/upload?ext=txt", "", b"no secret");
    let what = "storage upload without secret";
    t.check(st, what, &bytes, QUICK, Expect::Refused).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_half_way_is_cut() {
    let mut t = Target::start(&[]).await;
    // Cut with 408 (or a close) within the body timeout.
    let cut_within = Duration::from_secs(BODY_TIMEOUT_SECS + 8);
    let stall = How {
        read_timeout: cut_within,
        ..How::default()
    };
    let half = vec![b's'; 5000];
    let mut half_mp = inputs::multipart_head(inputs::BOUNDARY, "slow.bin").into_bytes();
    half_mp.extend_from_slice(&half);
    let mp_length = format!("{}Content-Length: 20000\r\n", multipart());
    for (what, bytes) in [
        (
            "gateway stalled raw upload",
            request(
                "PUT",
                b"/upload/slow.bin",
                "Content-Length: 10000\r\n",
                &half,
            ),
        ),
        (
            "gateway stalled multipart upload",
            request("POST", b"/upload", &mp_length, &half_mp),
        ),
    ] {
        let a = t.check(t.gw, what, &bytes, stall, Expect::Any).await;
        assert!(!a.timed_out, "{what}: not cut within {cut_within:?}");
        assert_cut(&a, 408, what);
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_mutations_of_valid_ids_get_clean_answers() {
    let mut t = Target::start(&[]).await;
    // On the gateway's file routes and the storage node.
    eprintln!("mutation corpus seed {SEED:#x}");
    let mut rng = StdRng::seed_from_u64(SEED);
    for i in 0..MUTATIONS {
        let base = if i % 4 == 3 { &t.other } else { &t.id };
        let target = inputs::mutate(&mut rng, base);
        let what = format!("storage GET {} (mutation {i})", show(&target));
        let bytes = request("GET", &target, "", b"");
        t.check(t.st, &what, &bytes, QUICK, Expect::Any).await;
        let (method, prefix) = [
            ("GET", ""),
            ("HEAD", ""),
            ("GET", "/info"),
            ("GET", "/meta"),
            ("PATCH", "/meta"),
        ][i % 5];
        let mut gt = prefix.as_bytes().to_vec();
        gt.extend_from_slice(&target);
        let body: &[u8] = if method == "PATCH" {
            b"{\"m\":\"1\"}"
        } else {
            b""
        };
        let json = "Content-Type: application/json\r\n";
        let what = format!("gateway {method} {} (mutation {i})", show(&gt));
        let bytes = request(method, &gt, json, body);
        t.check(t.gw, &what, &bytes, QUICK, Expect::Any).await;
    }
    t.finish().await;
}

/// On the storage node and through a gateway in proxy mode (which passes the headers on and streams the
/// answer back): a 200 carries the file, a 206 exactly the range its Content-Range names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_conditional_headers_no_client_sends_get_the_right_bytes() {
    let mut t = Target::start(&["--download-mode", "proxy"]).await;
    let target = format!("/{}", t.id);
    for h in inputs::header_abuse() {
        let extra = format!("{h}\r\n");
        for (who, addr) in [("storage GET", t.st), ("proxy gateway GET", t.gw)] {
            let what = format!("{who} with {}", show(h.as_bytes()));
            let bytes = request("GET", target.as_bytes(), &extra, b"");
            let a = t.check(addr, &what, &bytes, QUICK, Expect::Any).await;
            match a.status {
                Some(200) => assert_eq!(a.body, t.content, "{what}: 200 with other bytes"),
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
                            panic!("{what}: 206 without a Content-Range: {range:?}")
                        });
                    assert_eq!(a.body, t.content[from..=to], "{what}: 206 with other bytes");
                }
                _ => {}
            }
        }
    }
    t.finish().await;
}
