//! The storage node over HTTP: a real server on 127.0.0.1:0 with tempdir store paths and a tracker address
//! nobody listens on (heartbeat failures must be harmless).
//!
//! Every store path costs 65536 directories to create and remove, so each test drives one server through a
//! whole scenario rather than starting a server per assertion.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{config, upload, upload_ok};
use fdfs_common::wire::{FileInfo, Metadata};
use fdfs_common::FileId;
use fdfs_testkit::inproc::storage;
use fdfs_testkit::{closed_addr, content, error_code, wait_until, RequestExt, SECRET};
use reqwest::header::{self, HeaderName};
use reqwest::{Client, StatusCode};
use tokio::io::AsyncWriteExt;

/// A lone node (its tracker is a closed port) with these store paths.
fn lone(paths: &[PathBuf]) -> fdfs_storage::Config {
    config(vec![closed_addr()], paths)
}

fn disk_path(root: &Path, id: &FileId) -> PathBuf {
    root.join(id.relative_path())
}

/// Wait until a store path's staging directory is empty.
async fn tmp_emptied(root: &Path, what: &str) {
    let tmp = root.join(".fdfs").join("tmp");
    wait_until(10, what, || std::fs::read_dir(&tmp).unwrap().count() == 0).await;
}

/// A body of `big` sent in 64 KiB chunks without a length.
fn streamed(big: &bytes::Bytes) -> reqwest::Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..big.len())
        .step_by(64 << 10)
        .map(|at| Ok(big.slice(at..(at + (64 << 10)).min(big.len()))))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// `GET url` with the given request headers must answer `status`; the response.
async fn get_with(
    c: &Client,
    url: &str,
    headers: &[(HeaderName, &str)],
    status: StatusCode,
) -> reqwest::Response {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(k, *v);
    }
    let r = r.go().await;
    assert_eq!(r.status(), status, "GET {url} with {headers:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let roots = vec![dir.path().join("p0"), dir.path().join("p1")];
    let server = storage(lone(&roots)).await;
    let c = Client::new();
    let base = server.base();

    // Alive; not ready while no tracker has accepted a heartbeat (this node has none).
    let h: serde_json::Value = c.get(format!("{base}/livez")).ok_json().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["role"], "storage");
    let r = c.get(format!("{base}/health")).go().await;
    assert_eq!(r.status(), 503);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["status"], "unavailable", "{h}");

    // Upload, then download the same bytes.
    let up = upload_ok(&c, &base, "store_path=0&ext=txt", "hello world").await;
    assert_eq!(up.size, 11);
    assert_eq!(up.crc32, format!("{:08x}", crc32fast::hash(b"hello world")));
    assert_eq!(up.file_id.group.as_str(), "g1");
    assert_eq!(up.file_id.store_path, 0);
    assert_eq!(up.file_id.name.ext(), Some("txt"));
    assert_eq!(up.url, format!("{base}/{}", up.file_id));
    assert_eq!(up.replicas, 1);
    assert_eq!(up.file_id.info().size, 11);
    assert!(disk_path(&roots[0], &up.file_id).is_file());
    let r = get_with(&c, &up.url, &[], StatusCode::OK).await;
    let h = r.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "text/plain");
    assert_eq!(
        h[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    // The file's name (as nginx gives it from the URL).
    let name = up
        .file_id
        .to_string()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(etag, format!("\"{name}\""));
    let last_modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
    assert_eq!(r.bytes().await.unwrap(), "hello world");

    // Range.
    let r = get_with(
        &c,
        &up.url,
        &[(header::RANGE, "bytes=0-4")],
        StatusCode::PARTIAL_CONTENT,
    )
    .await;
    assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 0-4/11");
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap(), "hello");
    // If-Range with a stale validator: the whole file.
    let stale = [
        (header::RANGE, "bytes=0-4"),
        (header::IF_RANGE, "\"other\""),
    ];
    let r = get_with(&c, &up.url, &stale, StatusCode::OK).await;
    assert_eq!(r.bytes().await.unwrap(), "hello world");

    // HEAD.
    let r = c.head(&up.url).go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "11");
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());

    // Ranges past the end and conditional requests.
    let cases: [(HeaderName, &str, StatusCode); 5] = [
        (
            header::RANGE,
            "bytes=100-200",
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        (header::IF_NONE_MATCH, &etag, StatusCode::NOT_MODIFIED),
        (header::IF_NONE_MATCH, "\"nope\"", StatusCode::OK),
        (
            header::IF_MODIFIED_SINCE,
            &last_modified,
            StatusCode::NOT_MODIFIED,
        ),
        (
            header::IF_MODIFIED_SINCE,
            "Fri, 09 Aug 1996 14:21:40 GMT",
            StatusCode::OK,
        ),
    ];
    for (name, value, status) in cases {
        let r = get_with(&c, &up.url, &[(name, value)], status).await;
        if status == StatusCode::NOT_MODIFIED {
            assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
        }
    }

    // 404 for a well-formed ID that is not here; 400 for a malformed ID or another group.
    for (url, status, code) in [
        (
            format!("{base}/g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"),
            404,
            "not_found",
        ),
        (
            format!("{base}/g1/M00/00/00/not-an-id.jpg"),
            400,
            "bad_request",
        ),
        (up.url.replacen("/g1/", "/g2/", 1), 400, "bad_request"),
    ] {
        assert_eq!(
            c.get(&url).error().await,
            (status, code.to_owned()),
            "{url}"
        );
    }

    // Internal routes need the cluster secret.
    let r = c.post(format!("{base}/v1/upload")).body("x");
    assert_eq!(r.error().await, (401, "unauthorized".to_owned()));
    let r = c
        .get(format!("{base}/v1/files/{}", up.file_id))
        .header(fdfs_common::wire::CLUSTER_SECRET_HEADER, "wrong");
    assert_eq!(r.error().await.0, 401);

    // 413 over max_file_size, with a declared length and streamed (chunked); no temp file left.
    let big = bytes::Bytes::from(vec![7u8; (1 << 20) + 1]);
    let r = upload(&c, &base, "", big.clone()).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "payload_too_large");
    let r = upload(&c, &base, "", streamed(&big)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    tmp_emptied(&roots[0], "temp files removed after 413").await;

    // A client that disconnects mid-body leaves nothing behind.
    let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/upload?store_path=0 HTTP/1.1\r\nhost: x\r\n{}: {SECRET}\r\ncontent-length: 100000\r\n\r\n",
        fdfs_common::wire::CLUSTER_SECRET_HEADER
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[1u8; 5000]).await.unwrap();
    sock.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server start streaming; not a sync point
    drop(sock);
    tmp_emptied(&roots[0], "temp file removed after a disconnect").await;

    // Bad requests on upload.
    for q in ["ext=toolong7", "store_path=9", "meta=notjson"] {
        let r = upload(&c, &base, q, "x").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
    }

    // Dedup: identical content -> two IDs, one inode; deleting one leaves the other intact.
    let same = content(1, 100_000);
    let a = upload_ok(&c, &base, "ext=bin", same.clone()).await;
    let b = upload_ok(&c, &base, "ext=bin", same.clone()).await;
    assert_ne!(a.file_id, b.file_id);
    let ino = |id: &FileId| std::fs::metadata(disk_path(&roots[0], id)).unwrap().ino();
    assert_eq!(ino(&a.file_id), ino(&b.file_id));
    let ra = c.get(&a.url).go().await;
    let rb = c.get(&b.url).go().await;
    // Same bytes, but each URL has its own validator: its name.
    assert_ne!(ra.headers()[header::ETAG], rb.headers()[header::ETAG]);
    let del = || c.delete(format!("{base}/v1/files/{}", a.file_id)).secret();
    let v: serde_json::Value = del().ok_json().await;
    assert_eq!(v["deleted"], true);
    assert_eq!(c.get(&a.url).go().await.status(), StatusCode::NOT_FOUND);
    assert_eq!(c.get(&b.url).ok_bytes().await, same);
    assert_eq!(del().error().await, (404, "not_found".to_owned()));
    // A third copy links to the survivor.
    let d = upload_ok(&c, &base, "ext=bin", same.clone()).await;
    assert_eq!(ino(&d.file_id), ino(&b.file_id));
    // Rebuilding the index on request changes nothing that matters.
    let report: serde_json::Value = c
        .post(format!("{base}/v1/reindex"))
        .secret()
        .ok_json()
        .await;
    assert!(report["files"].as_u64().unwrap() >= 3, "{report}");
    let e = upload_ok(&c, &base, "ext=bin", same.clone()).await;
    assert_eq!(ino(&e.file_id), ino(&b.file_id));

    // Slave files.
    let master = upload_ok(&c, &base, "ext=jpg", "master image").await;
    let q = format!("master={}&prefix=_150x150&ext=jpg", master.file_id);
    let slave = upload_ok(&c, &base, &q, "thumbnail").await;
    assert_eq!(
        slave.file_id,
        master.file_id.slave("_150x150", Some("jpg")).unwrap()
    );
    assert_eq!(slave.size, 9);
    assert_eq!(c.get(&slave.url).ok_bytes().await, b"thumbnail");
    let q_missing = "master=g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg&prefix=_s&ext=jpg";
    let no_prefix = format!("master={}", master.file_id);
    for (q, status) in [
        (q.as_str(), StatusCode::CONFLICT),
        (q_missing, StatusCode::NOT_FOUND),
        (no_prefix.as_str(), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(upload(&c, &base, q, "again").await.status(), status, "{q}");
    }

    // Metadata: set at upload, overwrite, merge, delete a key; stored next to the file, never served as one.
    let meta_json = r#"{"author":"ann","w":"100"}"#;
    let q = format!("meta={}", urlencode(meta_json));
    let m = upload_ok(&c, &base, &q, "with meta").await;
    let meta_url = format!("{base}/v1/meta/{}", m.file_id);
    let get_meta = || c.get(&meta_url).secret().ok_json::<Metadata>();
    assert_eq!(get_meta().await, meta(&[("author", "ann"), ("w", "100")]));
    let changes = [
        (
            c.put(&meta_url).json(&serde_json::json!({"h": "50"})),
            meta(&[("h", "50")]),
        ),
        (
            c.patch(&meta_url)
                .json(&serde_json::json!({"a": "1", "h": null})),
            meta(&[("a", "1")]),
        ),
    ];
    for (change, after) in changes {
        assert_eq!(change.secret().ok_json::<Metadata>().await, after);
        assert_eq!(get_meta().await, after);
    }
    let r = c
        .put(&meta_url)
        .secret()
        .body("[1,2]")
        .header(header::CONTENT_TYPE, "application/json")
        .go()
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut meta_file = disk_path(&roots[0], &m.file_id).into_os_string();
    meta_file.push("-m");
    assert!(Path::new(&meta_file).is_file());
    // The file has no extension, so `<name>-m` parses as an ID: it must still not be served.
    let r = c.get(format!("{}-m", m.url)).go().await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!(
            "{base}/v1/meta/g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
        ))
        .secret()
        .go()
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // File info.
    let info: FileInfo = c
        .get(format!("{base}/v1/files/{}", m.file_id))
        .secret()
        .ok_json()
        .await;
    assert_eq!(info.file_id, m.file_id);
    assert_eq!(info.size, 9);
    assert_eq!(info.metadata, meta(&[("a", "1")]));
    assert_eq!(info.locations, vec![base.clone()]);
    assert_eq!(
        info.content_type.as_deref(),
        Some("application/octet-stream")
    );

    // Deleting removes the metadata too.
    let del = c.delete(format!("{base}/v1/files/{}", m.file_id)).secret();
    assert_eq!(del.go().await.status(), StatusCode::OK);
    assert!(!Path::new(&meta_file).exists());

    // A second store path: M01.
    let p1 = upload_ok(&c, &base, "store_path=1&ext=png", "on the second path").await;
    assert_eq!(p1.file_id.store_path, 1);
    assert!(p1.file_id.to_string().starts_with("g1/M01/"));
    assert!(disk_path(&roots[1], &p1.file_id).is_file());
    assert!(!disk_path(&roots[0], &p1.file_id).exists());
    let r = get_with(&c, &p1.url, &[], StatusCode::OK).await;
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/png");
    assert_eq!(r.bytes().await.unwrap(), "on the second path");

    // Heartbeats to a dead tracker did no harm (alive; unready without a tracker, as asserted above).
    get_with(&c, &format!("{base}/livez"), &[], StatusCode::OK).await;
    server.stop().await;
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Uploads refused part-way (413 over the size limit while streaming, 413 on a declared length, 401 without
/// the secret) reach the client as their JSON error, never as a reset connection: the node reads and drops
/// the rest of a refused body (bounded) before answering. Bodies well over the limit, many times, so that a
/// node closing with unread bytes (which the kernel answers with a reset) is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_reach_the_client_as_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p0");
    let server = storage(lone(std::slice::from_ref(&root))).await;
    let base = server.base();
    let c = Client::new();
    let big = bytes::Bytes::from(vec![7u8; 6 << 20]);
    for round in 0..25 {
        let refusals = [
            (streamed(&big), 413, "payload_too_large", true),
            (big.clone().into(), 413, "payload_too_large", true),
            (big.clone().into(), 401, "unauthorized", false),
        ];
        for (body, status, code, with_secret) in refusals {
            let mut r = c.post(format!("{base}/v1/upload")).body(body);
            if with_secret {
                r = r.secret();
            }
            let r = r
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {code}: {e:?}"));
            let got = fdfs_testkit::error_of(r).await;
            assert_eq!(got, (status, code.to_owned()), "round {round}");
        }
    }
    // The node is fine afterwards, and nothing was left behind.
    upload_ok(&c, &base, "ext=txt", "still here").await;
    tmp_emptied(&root, "temp files removed after 413s").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_leech_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lone(&[dir.path().to_owned()]);
    cfg.anti_leech_secret = Some("leech".into());
    cfg.token_ttl_secs = 60;
    let server = storage(cfg).await;
    let c = Client::new();
    let up = upload_ok(&c, &server.base(), "ext=txt", "protected").await;
    assert_eq!(c.get(&up.url).error().await, (403, "forbidden".to_owned()));
    let now = fdfs_common::time::unix_now();
    let signed = |secret: &str, ts: u64| {
        let q = fdfs_common::token::query(&up.file_id, secret, ts);
        format!("{}?{q}", up.url)
    };
    assert_eq!(c.get(signed("leech", now)).ok_bytes().await, b"protected");
    for (secret, ts) in [("other", now), ("leech", now - 3600)] {
        let r = c.get(signed(secret, ts)).go().await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{secret} at {ts}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_after_losing_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let cfg = lone(std::slice::from_ref(&root));
    let same = b"the same bytes, three times".to_vec();

    let server = storage(cfg.clone()).await;
    let c = Client::new();
    let a = upload_ok(&c, &server.base(), "ext=txt", same.clone()).await;
    let b = upload_ok(&c, &server.base(), "ext=txt", same.clone()).await;
    server.stop().await;

    std::fs::remove_dir_all(root.join(".fdfs").join("index")).unwrap();

    let server = storage(cfg).await;
    let base = server.base();
    let ino = |id: &FileId| std::fs::metadata(disk_path(&root, id)).unwrap().ino();
    // The rebuilt index still knows the content: a third upload links to it.
    let d = upload_ok(&c, &base, "ext=txt", same.clone()).await;
    assert_eq!(ino(&d.file_id), ino(&a.file_id));
    assert_eq!(ino(&b.file_id), ino(&a.file_id));
    let del = c.delete(format!("{base}/v1/files/{}", a.file_id)).secret();
    assert_eq!(del.go().await.status(), StatusCode::OK);
    for id in [&b.file_id, &d.file_id] {
        assert_eq!(
            c.get(format!("{base}/{id}"))
                .go()
                .await
                .bytes()
                .await
                .unwrap(),
            same
        );
    }
    server.stop().await;
}
