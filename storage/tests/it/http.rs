//! The storage node over HTTP: a real server on 127.0.0.1:0 with tempdir store paths and a tracker address
//! nobody listens on (heartbeat failures must be harmless).
//!
//! Every store path costs 65536 directories to create and remove, so each test drives one server through a
//! whole scenario rather than starting a server per assertion.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fdfs_common::config::Size;
use fdfs_common::wire::{FileInfo, Metadata, UploadResult, CLUSTER_SECRET_HEADER};
use fdfs_common::FileId;
use fdfs_storage::Config;
use fdfs_testkit::{closed_addr, error_code, Server};
use reqwest::header;
use reqwest::{Client, StatusCode};
use tokio::io::AsyncWriteExt;

const SECRET: &str = "cluster-s3cret";

/// A storage node in this process, answering `/health`.
async fn start(config: Config) -> Server {
    let server = Server::start(|l, stop| fdfs_storage::run(l, config, stop)).await;
    // Creating 65536 directories per store path takes a while on a busy machine.
    server.wait_healthy(Duration::from_secs(300)).await;
    server
}

fn config(paths: &[PathBuf]) -> Config {
    Config {
        group: "g1".parse().unwrap(),
        trackers: vec![closed_addr()],
        store_paths: paths.to_vec(),
        heartbeat_interval_ms: 100,
        cluster_secret: Some(SECRET.into()),
        max_file_size: Size::Bytes(1 << 20),
        ..Config::default()
    }
}

async fn upload(
    c: &Client,
    base: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    c.post(format!("{base}/v1/upload?{query}"))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn upload_ok(
    c: &Client,
    base: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> UploadResult {
    let r = upload(c, base, query, body).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

fn disk_path(root: &Path, id: &FileId) -> PathBuf {
    root.join(id.relative_path())
}

fn tmp_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join(".fdfs").join("tmp"))
        .unwrap()
        .count()
        == 0
}

async fn wait_until(what: &str, f: impl FnMut() -> bool) {
    fdfs_testkit::wait_until(Duration::from_secs(10), what, f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let roots = vec![dir.path().join("p0"), dir.path().join("p1")];
    let server = start(config(&roots)).await;
    let c = Client::new();
    let base = server.base();

    // Health.
    let h: serde_json::Value = c
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["role"], "storage");

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
    let r = c.get(&up.url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "text/plain");
    assert_eq!(
        h[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(
        etag,
        format!("\"{:08x}-b\"", crc32fast::hash(b"hello world"))
    );
    let last_modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
    assert_eq!(r.bytes().await.unwrap(), "hello world");

    // Range.
    let r = c
        .get(&up.url)
        .header(header::RANGE, "bytes=0-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 0-4/11");
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap(), "hello");
    let r = c
        .get(&up.url)
        .header(header::RANGE, "bytes=100-200")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // If-Range with a stale validator: the whole file.
    let r = c
        .get(&up.url)
        .header(header::RANGE, "bytes=0-4")
        .header(header::IF_RANGE, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), "hello world");

    // HEAD.
    let r = c.head(&up.url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "11");
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());

    // Conditional requests.
    let r = c
        .get(&up.url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    let r = c
        .get(&up.url)
        .header(header::IF_NONE_MATCH, "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(&up.url)
        .header(header::IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = c
        .get(&up.url)
        .header(header::IF_MODIFIED_SINCE, "Fri, 09 Aug 1996 14:21:40 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // 404 for a well-formed ID that is not here; 400 for a malformed ID or another group.
    let missing = format!("{base}/g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg");
    let r = c.get(&missing).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");
    let r = c
        .get(format!("{base}/g1/M00/00/00/not-an-id.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "bad_request");
    let other_group = up.url.replacen("/g1/", "/g2/", 1);
    let r = c.get(&other_group).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "bad_request");

    // Internal routes need the cluster secret.
    let r = c
        .post(format!("{base}/v1/upload"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "unauthorized");
    let r = c
        .get(format!("{base}/v1/files/{}", up.file_id))
        .header(CLUSTER_SECRET_HEADER, "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // 413 over max_file_size, with a declared length and streamed (chunked); no temp file left.
    let big = vec![7u8; (1 << 20) + 1];
    let r = upload(&c, &base, "", big.clone()).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "payload_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = upload(
        &c,
        &base,
        "",
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    wait_until("temp files removed after 413", || tmp_is_empty(&roots[0])).await;

    // A client that disconnects mid-body leaves nothing behind.
    let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(
        format!(
            "POST /v1/upload?store_path=0 HTTP/1.1\r\nhost: x\r\n{CLUSTER_SECRET_HEADER}: {SECRET}\r\ncontent-length: 100000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    sock.write_all(&[1u8; 5000]).await.unwrap();
    sock.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server start streaming; not a sync point
    drop(sock);
    wait_until("temp file removed after a disconnect", || {
        tmp_is_empty(&roots[0])
    })
    .await;

    // Bad requests on upload.
    assert_eq!(
        upload(&c, &base, "ext=toolong7", "x").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        upload(&c, &base, "store_path=9", "x").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        upload(&c, &base, "meta=notjson", "x").await.status(),
        StatusCode::BAD_REQUEST
    );

    // Dedup: identical content -> two IDs, one inode; deleting one leaves the other intact.
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let a = upload_ok(&c, &base, "ext=bin", content.clone()).await;
    let b = upload_ok(&c, &base, "ext=bin", content.clone()).await;
    assert_ne!(a.file_id, b.file_id);
    let ino = |id: &FileId| std::fs::metadata(disk_path(&roots[0], id)).unwrap().ino();
    assert_eq!(ino(&a.file_id), ino(&b.file_id));
    let ra = c.get(&a.url).send().await.unwrap();
    let rb = c.get(&b.url).send().await.unwrap();
    assert_eq!(ra.headers()[header::ETAG], rb.headers()[header::ETAG]);
    let del = c
        .delete(format!("{base}/v1/files/{}", a.file_id))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::OK);
    let v: serde_json::Value = del.json().await.unwrap();
    assert_eq!(v["deleted"], true);
    assert_eq!(
        c.get(&a.url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(&b.url).send().await.unwrap().bytes().await.unwrap(),
        content
    );
    let del = c
        .delete(format!("{base}/v1/files/{}", a.file_id))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(del).await, "not_found");
    // A third copy links to the survivor.
    let d = upload_ok(&c, &base, "ext=bin", content.clone()).await;
    assert_eq!(ino(&d.file_id), ino(&b.file_id));
    // Rebuilding the index on request changes nothing that matters.
    let r = c
        .post(format!("{base}/v1/reindex"))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: serde_json::Value = r.json().await.unwrap();
    assert!(report["files"].as_u64().unwrap() >= 3, "{report}");
    let e = upload_ok(&c, &base, "ext=bin", content.clone()).await;
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
    assert_eq!(
        c.get(&slave.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        "thumbnail"
    );
    assert_eq!(
        upload(&c, &base, &q, "again").await.status(),
        StatusCode::CONFLICT
    );
    let q_missing = "master=g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg&prefix=_s&ext=jpg";
    assert_eq!(
        upload(&c, &base, q_missing, "x").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        upload(&c, &base, &format!("master={}", master.file_id), "x")
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    // Metadata: set at upload, overwrite, merge, delete a key; stored next to the file, never served as one.
    let meta_json = r#"{"author":"ann","w":"100"}"#;
    let q = format!("meta={}", urlencode(meta_json));
    let m = upload_ok(&c, &base, &q, "with meta").await;
    let meta_url = format!("{base}/v1/meta/{}", m.file_id);
    let get_meta = || async {
        let r = c
            .get(&meta_url)
            .header(CLUSTER_SECRET_HEADER, SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Metadata>().await.unwrap()
    };
    assert_eq!(get_meta().await, meta(&[("author", "ann"), ("w", "100")]));
    let r = c
        .put(&meta_url)
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .json(&serde_json::json!({"h": "50"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Metadata>().await.unwrap(), meta(&[("h", "50")]));
    assert_eq!(get_meta().await, meta(&[("h", "50")]));
    let r = c
        .patch(&meta_url)
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .json(&serde_json::json!({"a": "1", "h": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Metadata>().await.unwrap(), meta(&[("a", "1")]));
    assert_eq!(get_meta().await, meta(&[("a", "1")]));
    let r = c
        .put(&meta_url)
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .body("[1,2]")
        .header(header::CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut meta_file = disk_path(&roots[0], &m.file_id).into_os_string();
    meta_file.push("-m");
    assert!(Path::new(&meta_file).is_file());
    // The file has no extension, so `<name>-m` parses as an ID: it must still not be served.
    assert_eq!(
        c.get(format!("{}-m", m.url)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let r = c
        .get(format!(
            "{base}/v1/meta/g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
        ))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // File info.
    let r = c
        .get(format!("{base}/v1/files/{}", m.file_id))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let info: FileInfo = r.json().await.unwrap();
    assert_eq!(info.file_id, m.file_id);
    assert_eq!(info.size, 9);
    assert_eq!(info.metadata, meta(&[("a", "1")]));
    assert_eq!(info.locations, vec![base.clone()]);
    assert_eq!(
        info.content_type.as_deref(),
        Some("application/octet-stream")
    );

    // Deleting removes the metadata too.
    let del = c
        .delete(format!("{base}/v1/files/{}", m.file_id))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::OK);
    assert!(!Path::new(&meta_file).exists());

    // A second store path: M01.
    let p1 = upload_ok(&c, &base, "store_path=1&ext=png", "on the second path").await;
    assert_eq!(p1.file_id.store_path, 1);
    assert!(p1.file_id.to_string().starts_with("g1/M01/"));
    assert!(disk_path(&roots[1], &p1.file_id).is_file());
    assert!(!disk_path(&roots[0], &p1.file_id).exists());
    let r = c.get(&p1.url).send().await.unwrap();
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/png");
    assert_eq!(r.bytes().await.unwrap(), "on the second path");

    // Heartbeats to a dead tracker did no harm.
    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
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
    let server = start(config(std::slice::from_ref(&root))).await;
    let base = server.base();
    let c = Client::new();
    let big = bytes::Bytes::from(vec![7u8; 6 << 20]);
    for round in 0..25 {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..big.len())
            .step_by(64 << 10)
            .map(|at| Ok(big.slice(at..(at + (64 << 10)).min(big.len()))))
            .collect();
        let streamed = upload(
            &c,
            &base,
            "",
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
        )
        .await;
        assert_eq!(
            streamed.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "round {round}"
        );
        assert_eq!(
            error_code(streamed).await,
            "payload_too_large",
            "round {round}"
        );

        let declared = upload(&c, &base, "", big.clone()).await;
        assert_eq!(
            declared.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "round {round}"
        );
        assert_eq!(
            error_code(declared).await,
            "payload_too_large",
            "round {round}"
        );

        let no_secret = c
            .post(format!("{base}/v1/upload"))
            .body(big.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(
            no_secret.status(),
            StatusCode::UNAUTHORIZED,
            "round {round}"
        );
        assert_eq!(error_code(no_secret).await, "unauthorized", "round {round}");
    }
    // The node is fine afterwards, and nothing was left behind.
    upload_ok(&c, &base, "ext=txt", "still here").await;
    wait_until("temp files removed after 413s", || tmp_is_empty(&root)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_leech_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[dir.path().to_owned()]);
    cfg.anti_leech_secret = Some("leech".into());
    cfg.token_ttl_secs = 60;
    let server = start(cfg).await;
    let c = Client::new();
    let up = upload_ok(&c, &server.base(), "ext=txt", "protected").await;
    let r = c.get(&up.url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "forbidden");
    let now = fdfs_common::time::unix_now();
    let good = format!(
        "{}?{}",
        up.url,
        fdfs_common::token::query(&up.file_id, "leech", now)
    );
    let r = c.get(&good).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), "protected");
    let wrong = format!(
        "{}?{}",
        up.url,
        fdfs_common::token::query(&up.file_id, "other", now)
    );
    assert_eq!(
        c.get(&wrong).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let old = format!(
        "{}?{}",
        up.url,
        fdfs_common::token::query(&up.file_id, "leech", now - 3600)
    );
    assert_eq!(
        c.get(&old).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_after_losing_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let cfg = config(std::slice::from_ref(&root));
    let content = b"the same bytes, three times".to_vec();

    let server = start(cfg.clone()).await;
    let c = Client::new();
    let a = upload_ok(&c, &server.base(), "ext=txt", content.clone()).await;
    let b = upload_ok(&c, &server.base(), "ext=txt", content.clone()).await;
    server.stop().await;

    std::fs::remove_dir_all(root.join(".fdfs").join("db")).unwrap();

    let server = start(cfg).await;
    let base = server.base();
    let ino = |id: &FileId| std::fs::metadata(disk_path(&root, id)).unwrap().ino();
    // The rebuilt index still knows the content: a third upload links to it.
    let d = upload_ok(&c, &base, "ext=txt", content.clone()).await;
    assert_eq!(ino(&d.file_id), ino(&a.file_id));
    assert_eq!(ino(&b.file_id), ino(&a.file_id));
    let del = c
        .delete(format!("{base}/v1/files/{}", a.file_id))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::OK);
    for id in [&b.file_id, &d.file_id] {
        let r = c.get(format!("{base}/{id}")).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), content);
    }
    server.stop().await;
}
