//! Resumable uploads (tus 1.0 at `/tus/`) against a real cluster of processes: chunks from a client that goes
//! away and a new one that resumes from the stored URL, across a gateway restart and a kill -9 of the storage
//! node that holds the partial upload; 409 on a wrong offset, 460 on a bad checksum (chunk discarded),
//! termination, expiry, limits, and `fdfs upload --resumable` broken off and rerun.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use fdfs_common::wire::MemberState;
use fdfs_common::FileId;
use fdfs_testkit::{
    args, content, error_of, eventually, files_under, member_in, node, Cluster, ClusterSpec, Node,
    RequestExt, Role,
};
use reqwest::StatusCode;
use serde_json::Value;
use sha1::Digest as _;

const CHUNK_TYPE: &str = "application/offset+octet-stream";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Every one of `want` is an entry of the comma-separated `list` (a header value).
fn assert_listed(list: &str, want: &[&str], what: &str) {
    let entries: Vec<String> = list.split(',').map(|e| e.trim().to_lowercase()).collect();
    for w in want {
        assert!(entries.iter().any(|e| e == w), "{w} not {what}: {list}");
    }
}

fn offset_of(resp: &reqwest::Response) -> u64 {
    header(resp, "upload-offset")
        .unwrap_or_else(|| panic!("no Upload-Offset in {resp:?}"))
        .parse()
        .unwrap()
}

/// A fresh client, as a new process resuming from the stored URL would have.
fn new_client() -> reqwest::Client {
    fdfs_testkit::client()
}

async fn patch(
    http: &reqwest::Client,
    url: &str,
    offset: u64,
    chunk: &[u8],
    checksum: Option<String>,
) -> reqwest::Response {
    let mut req = http
        .patch(url)
        .header("tus-resumable", "1.0.0")
        .header("content-type", CHUNK_TYPE)
        .header("upload-offset", offset)
        .body(chunk.to_vec());
    if let Some(c) = checksum {
        req = req.header("upload-checksum", c);
    }
    req.go().await
}

async fn head(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.head(url).header("tus-resumable", "1.0.0").go().await
}

/// `POST /tus/` with a length and metadata; the absolute upload URL.
async fn create(c: &Cluster, len: u64, meta: &[(&str, &str)]) -> String {
    let gw = c.gateway_url();
    let m: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("{k} {}", b64(v.as_bytes())))
        .collect();
    let resp = c
        .http
        .post(format!("{gw}/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len)
        .header("upload-metadata", m.join(","))
        .go()
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );
    assert_eq!(header(&resp, "tus-resumable").as_deref(), Some("1.0.0"));
    assert!(header(&resp, "upload-expires").is_some());
    let loc = header(&resp, "location").unwrap();
    assert!(loc.starts_with("/tus/"), "{loc}");
    format!("{gw}{loc}")
}

/// Appender files (data and state) of a storage node.
fn appender_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join(".fdfs").join("appender")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "data" || e == "json"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The (group, member) indexes of the storage node an upload URL names.
async fn holder(c: &Cluster, url: &str) -> (usize, usize) {
    let id = url.rsplit('/').next().unwrap();
    let node_id = u32::from_str_radix(id.split('.').nth(1).unwrap(), 16).unwrap();
    let v = c.view().await;
    for (g, members) in c.storage.iter().enumerate() {
        for (m, n) in members.iter().enumerate() {
            if member_in(&v, n).is_some_and(|i| i.node_id == node_id) {
                return (g, m);
            }
        }
    }
    panic!("no member with node id {node_id:08x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_upload_resumes_across_clients_gateway_and_storage_restarts() {
    let mut c = Cluster::start(ClusterSpec::group(2)).await;
    let gw = c.gateway_url();

    // Discovery.
    let resp = c
        .http
        .request(reqwest::Method::OPTIONS, format!("{gw}/tus/"))
        .go()
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-version").as_deref(), Some("1.0.0"));
    let ext = header(&resp, "tus-extension").unwrap();
    let extensions = [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
    ];
    assert_listed(&ext, &extensions, "Tus-Extension");
    assert!(header(&resp, "tus-max-size").is_some());
    assert_eq!(
        header(&resp, "tus-checksum-algorithm").as_deref(),
        Some("sha1,md5")
    );

    let data = content(12, (3 << 20) + 12_345);
    let len = data.len() as u64;
    let url = create(
        &c,
        len,
        &[("filename", "video.mp4"), ("meta.author", "ann")],
    )
    .await;
    let (g, m) = holder(&c, &url).await;
    let node_dir = c.storage[g][m].dir.clone();

    // First chunk, then the client goes away.
    let first = new_client();
    let resp = patch(&first, &url, 0, &data[..1 << 20], None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&resp), 1 << 20);
    assert!(header(&resp, "fdfs-file-id").is_none());
    drop(first);

    // A new client with only the URL: HEAD says where to go on.
    let http = new_client();
    let resp = head(&http, &url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(offset_of(&resp), 1 << 20);
    assert_eq!(header(&resp, "upload-length"), Some(len.to_string()));
    assert_eq!(header(&resp, "cache-control").as_deref(), Some("no-store"));

    // Wrong offset: 409, nothing written.
    let resp = patch(&http, &url, 5, &data[5..100], None).await;
    assert_eq!(error_of(resp).await, (409, "conflict".to_owned()));

    // Bad checksum: 460, the chunk discarded, the offset unchanged.
    let chunk = &data[1 << 20..2 << 20];
    let bad = format!("sha1 {}", b64(&sha1::Sha1::digest(b"something else")));
    let resp = patch(&http, &url, 1 << 20, chunk, Some(bad)).await;
    assert_eq!(error_of(resp).await, (460, "checksum_mismatch".to_owned()));
    assert_eq!(offset_of(&head(&http, &url).await), 1 << 20);
    let data_file = appender_files(&node_dir)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "data"))
        .expect("partial upload on the node");
    assert_eq!(
        std::fs::metadata(&data_file).unwrap().len(),
        1 << 20,
        "chunk cut off again"
    );

    // The good chunk with its sha1, then the gateway restarts.
    let good = format!("sha1 {}", b64(&sha1::Sha1::digest(chunk)));
    let resp = patch(&http, &url, 1 << 20, chunk, Some(good)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&resp), 2 << 20);
    c.gateway.kill9();
    c.gateway.restart();
    let resp = eventually(30, "the restarted gateway answers HEAD", || async {
        let r = head(&new_client(), &url).await;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(offset_of(&resp), 2 << 20);

    // The holding storage node is killed with -9 and comes back: the durable offset is still there. Bytes past
    // it in the data file (a chunk written but never acknowledged when the node died) are cut off.
    c.kill9(g, m);
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&data_file)
            .unwrap();
        f.write_all(&[0xEE; 4321]).unwrap();
    }
    let resp = head(&http, &url).await;
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a node that is down is not a lost upload"
    );
    c.restart(g, m);
    c.wait_state(g, m, MemberState::Active).await;
    let resp = eventually(30, "HEAD after the node restart", || async {
        let r = head(&new_client(), &url).await;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(offset_of(&resp), 2 << 20);
    // Not a file of the store while partial: nothing under data/ yet on any member.
    for n in c.all_storage() {
        let partial = files_under(&n.dir.join("data"));
        assert!(partial.is_empty(), "{} holds {partial:?}", n.name);
    }

    // The rest with an md5, in one chunk: the answer names the file.
    let rest = &data[2 << 20..];
    let md5 = format!("md5 {}", b64(&md5::Md5::digest(rest)));
    let resp = patch(&http, &url, 2 << 20, rest, Some(md5)).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        resp.text().await
    );
    assert_eq!(offset_of(&resp), len);
    let fid = header(&resp, "fdfs-file-id").expect("Fdfs-File-Id on the final PATCH");
    let id: FileId = fid.parse().unwrap();
    assert_eq!(id.info().size, len);
    assert_eq!(id.info().crc32, crc32fast::hash(&data));
    assert!(fid.ends_with(".mp4"), "{fid}");

    // GET /tus/{id}: the POST /upload JSON.
    let j: Value = c.http.get(&url).ok_json().await;
    assert_eq!(j["file_id"], fid);
    assert_eq!(j["size"], len);
    assert_eq!(j["crc32"], format!("{:08x}", crc32fast::hash(&data)));
    assert_eq!(j["filename"], "video.mp4");
    assert_eq!(j["content_type"], "video/mp4");
    assert_eq!(j["replicas"], 2);
    // A repeated final PATCH (its answer was lost) gets the same answer.
    let resp = patch(&http, &url, len, b"", None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "fdfs-file-id").as_deref(), Some(fid.as_str()));

    // An ordinary file on both members, with its bytes and metadata.
    for n in &c.storage[0] {
        let got = c.http.get(format!("{}/{fid}", n.url())).ok_bytes().await;
        assert!(got == data, "{} bytes", n.name);
    }
    let meta: Value = c.http.get(format!("{gw}/meta/{fid}")).ok_json().await;
    assert_eq!(meta["author"], "ann");
    assert!(
        appender_files(&node_dir)
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "json")),
        "the data file became the stored file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_termination_expiry_limits_and_the_cli_resume() {
    let c = Cluster::start(ClusterSpec::group(1).gateway(&[
        "--max-upload-size",
        "8MiB",
        "--tus-max-unfinished-per-key",
        "3",
        "--cors-origins",
        "https://app.example",
    ]))
    .await;
    let gw = c.gateway_url();
    let http = new_client();
    let node_dir = c.storage[0][0].dir.clone();

    // CORS: a page on another origin may send the tus headers and read the answers'.
    let resp = http
        .request(reqwest::Method::OPTIONS, format!("{gw}/tus/"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "tus-resumable,upload-offset,upload-checksum,content-type",
        )
        .go()
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let allowed = header(&resp, "access-control-allow-headers").unwrap_or_default();
    let sent = ["tus-resumable", "upload-offset", "upload-checksum"];
    let more = ["upload-length", "upload-metadata"];
    assert_listed(&allowed, &[&sent[..], &more].concat(), "allowed");
    let resp = http
        .post(format!("{gw}/tus/"))
        .header("origin", "https://app.example")
        .header("upload-length", 1)
        .go()
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let exposed = header(&resp, "access-control-expose-headers").unwrap_or_default();
    let answered = ["location", "upload-offset", "upload-length"];
    let more = ["upload-expires", "tus-resumable", "fdfs-file-id"];
    assert_listed(&exposed, &[&answered[..], &more].concat(), "exposed");
    let cors_upload = format!("{gw}{}", header(&resp, "location").unwrap());
    assert_eq!(
        http.delete(&cors_upload).go().await.status(),
        StatusCode::NO_CONTENT
    );

    // Termination: the partial upload is gone from the node.
    let url = create(&c, 1000, &[("filename", "a.txt")]).await;
    assert_eq!(
        patch(&http, &url, 0, &[7u8; 100], None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(appender_files(&node_dir).len(), 2);
    let resp = http
        .delete(&url)
        .header("tus-resumable", "1.0.0")
        .go()
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(appender_files(&node_dir).len(), 0);
    assert_eq!(head(&http, &url).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_of(patch(&http, &url, 100, b"x", None).await).await.0,
        404
    );

    // Over the size limit: 413.
    let resp = http
        .post(format!("{gw}/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", 9u64 << 20)
        .go()
        .await;
    assert_eq!(error_of(resp).await, (413, "payload_too_large".to_owned()));
    // A body past the declared length: 413 and nothing kept.
    let url = create(&c, 10, &[]).await;
    assert_eq!(
        error_of(patch(&http, &url, 0, &[1u8; 11], None).await)
            .await
            .0,
        413
    );
    assert_eq!(offset_of(&head(&http, &url).await), 0);
    // Not a chunk: 415. Unknown checksum algorithm: 400.
    let resp = http
        .patch(&url)
        .header("upload-offset", 0)
        .body("x")
        .go()
        .await;
    assert_eq!(error_of(resp).await.0, 415);
    assert_eq!(
        error_of(patch(&http, &url, 0, b"x", Some("crc32 AAAA".into())).await)
            .await
            .0,
        400
    );

    // Creation with upload and a deferred length, finished by a PATCH that declares the length.
    let resp = http
        .post(format!("{gw}/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-defer-length", "1")
        .header("upload-metadata", format!("filename {}", b64(b"notes.txt")))
        .header("content-type", CHUNK_TYPE)
        .body(b"hello ".to_vec())
        .go()
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(offset_of(&resp), 6);
    assert_eq!(header(&resp, "upload-defer-length").as_deref(), Some("1"));
    let url2 = format!("{gw}{}", header(&resp, "location").unwrap());
    let resp = http
        .patch(&url2)
        .header("content-type", CHUNK_TYPE)
        .header("upload-offset", 6)
        .header("upload-length", 11)
        .body(b"world".to_vec())
        .go()
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let fid = header(&resp, "fdfs-file-id").unwrap();
    let body = c.download(&fid).await;
    assert_eq!(&body[..], b"hello world");

    // The limit on unfinished uploads: `url` is one; two more reach it. Termination makes room again.
    let b = create(&c, 10, &[]).await;
    let c3 = create(&c, 10, &[]).await;
    let resp = http
        .post(format!("{gw}/tus/"))
        .header("upload-length", 10)
        .go()
        .await;
    assert_eq!(error_of(resp).await, (429, "too_many_uploads".to_owned()));
    for u in [&url, &b, &c3] {
        let resp = http.delete(u.as_str()).go().await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }

    // Expiry: an upload created through a gateway with a 1 s expiry goes away on its own, with its partial
    // file (a gateway keeps no state: any gateway serves any upload).
    let trackers: Vec<String> = c.trackers.iter().map(|t| t.addr.to_string()).collect();
    let mut gw2_args = args(&["--tracker", &trackers.join(","), "--tus-expiry-secs", "1"]);
    gw2_args.extend(args(&["--body-timeout-secs", "30"]));
    let gw2 = Node::start(
        "gateway-2".into(),
        Role::Gateway,
        c.dir.path().join("gateway-2"),
        gw2_args,
        c.dir.path().join("logs").join("gateway-2.log"),
    );
    let resp = http
        .post(format!("{}/tus/", gw2.url()))
        .header("upload-length", 1000)
        .header("content-type", CHUNK_TYPE)
        .body(vec![5u8; 100])
        .go()
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let short = format!("{gw}{}", header(&resp, "location").unwrap());
    let name = short.rsplit('.').next().unwrap().to_owned();
    eventually(60, "the expired upload removed from the node", || async {
        (!appender_files(&node_dir)
            .iter()
            .any(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == name)))
        .then_some(())
    })
    .await;
    let status = head(&http, &short).await.status();
    assert!(
        [StatusCode::NOT_FOUND, StatusCode::GONE].contains(&status),
        "{status}"
    );
    drop(gw2);

    // `fdfs upload --resumable`: broken off after 2 chunks, rerun: resumes and finishes.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.bin");
    let data = content(3, (3 << 20) + 777);
    std::fs::write(&file, &data).unwrap();
    let state_dir = tmp.path().join("state");
    let run = |extra: &[&str]| {
        let mut cmd = node::command();
        cmd.env("FDFS_STATE_DIR", &state_dir)
            .args([
                "--gateway",
                &gw,
                "upload",
                "--resumable",
                "--chunk-size",
                "1MiB",
            ])
            .args(extra)
            .arg(&file);
        cmd.output().unwrap()
    };
    let out = run(&["--stop-after-chunks", "2"]);
    assert!(!out.status.success());
    let states: Vec<_> = std::fs::read_dir(&state_dir).unwrap().collect();
    assert_eq!(states.len(), 1, "the upload URL is recorded");
    let recorded = std::fs::read_to_string(states[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(offset_of(&head(&http, recorded.trim()).await), 2 << 20);
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["size"], data.len() as u64);
    assert_eq!(j["filename"], "big.bin");
    assert_eq!(
        std::fs::read_dir(&state_dir).unwrap().count(),
        0,
        "state file removed"
    );
    let fid = j["file_id"].as_str().unwrap();
    let got = c.download(fid).await;
    assert!(got == data);
}
