//! The gateway in front of a real tracker and real storage nodes, all in-process on 127.0.0.1:0.

use crate::common::{client, cluster, error_of, Setup};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

/// Deterministic content of `n` bytes that is not all one byte.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// Follow the gateway's redirect for `id` and return (location, bytes).
async fn download(c: &reqwest::Client, gw: &crate::common::Server, id: &str) -> (String, Vec<u8>) {
    let r = c.get(gw.url(&format!("/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 302, "download of {id}");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let body = c.get(&location).send().await.unwrap();
    assert_eq!(body.status(), 200, "{location}");
    (location, body.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn multipart_upload_download_info_meta_delete() {
    let cl = cluster(Setup::default()).await;
    let (gw, c) = (&cl.gateway, client());
    let data = content(300_000);
    let form = Form::new()
        .text("meta.author", "ann")
        .part("file", Part::bytes(data.clone()).file_name("photo.JPG"));
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.unwrap();
    let id = up["file_id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("group1/M00/") && id.ends_with(".jpg"),
        "{id}"
    );
    assert_eq!(up["filename"], "photo.JPG");
    assert_eq!(up["size"], data.len());
    assert_eq!(up["crc32"], format!("{:08x}", crc32fast::hash(&data)));
    assert_eq!(up["content_type"], "image/jpeg");
    assert_eq!(up["group"], "group1");

    // Redirect to the storage node, bytes identical.
    let (location, bytes) = download(&c, gw, &id).await;
    assert_eq!(location, format!("http://{}/{id}", cl.storages[0].addr));
    assert!(bytes == data, "downloaded bytes differ");
    let head = c.head(gw.url(&format!("/{id}"))).send().await.unwrap();
    assert_eq!(head.status(), 302);
    assert_eq!(head.headers()["location"], location.as_str());

    // Info: decoded fields, metadata, where it lives.
    let info: Value = c
        .get(gw.url(&format!("/info/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["file_id"], id.as_str());
    assert_eq!(info["size"], data.len());
    assert_eq!(info["metadata"], json!({"author": "ann"}));
    assert_eq!(info["locations"], json!([location]));

    // Metadata: get, merge, overwrite.
    let meta: Value = c
        .get(gw.url(&format!("/meta/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta, json!({"author": "ann"}));
    let r = c
        .patch(gw.url(&format!("/meta/{id}")))
        .json(&json!({"width": "640"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"author": "ann", "width": "640"})
    );
    let r = c
        .patch(gw.url(&format!("/meta/{id}")))
        .json(&json!({"author": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"width": "640"}));
    let r = c
        .put(gw.url(&format!("/meta/{id}")))
        .json(&json!({"only": "this"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"only": "this"}));
    let meta: Value = c
        .get(gw.url(&format!("/meta/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta, json!({"only": "this"}));

    // Delete, then it is gone everywhere.
    let r = c.delete(gw.url(&format!("/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["deleted"], true);
    let r = c.delete(gw.url(&format!("/{id}"))).send().await.unwrap();
    assert_eq!(error_of(r).await, (404, "not_found".to_owned()));
    let r = c.get(gw.url(&format!("/info/{id}"))).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);
    let r = c.get(gw.url(&format!("/meta/{id}"))).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 404);
    let r = c.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn several_file_parts_and_trailing_meta() {
    let cl = cluster(Setup::default()).await;
    let (gw, c) = (&cl.gateway, client());
    let a = content(1000);
    let b = b"second file".to_vec();
    let form = Form::new()
        .text("meta.kind", "batch")
        .part("file", Part::bytes(a.clone()).file_name("a.bin"))
        .part("file", Part::bytes(b.clone()).file_name("notes.txt"))
        .text("meta.late", "yes");
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["filename"], "a.bin");
    assert_eq!(files[1]["filename"], "notes.txt");
    assert!(files[1]["file_id"].as_str().unwrap().ends_with(".txt"));
    // Fields accumulate; the trailing meta field lands on the last file.
    let expected = [
        json!({"kind": "batch"}),
        json!({"kind": "batch", "late": "yes"}),
    ];
    for ((f, data), want) in files.iter().zip([&a, &b]).zip(expected) {
        let id = f["file_id"].as_str().unwrap();
        assert!(download(&c, gw, id).await.1 == *data);
        let meta: Value = c
            .get(gw.url(&format!("/meta/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta, want, "{id}");
    }
}

#[tokio::test]
async fn raw_put_streams_and_takes_query_fields() {
    let cl = cluster(Setup::default()).await;
    let (gw, c) = (&cl.gateway, client());
    let data = content(5 << 20);
    let r = c
        .put(gw.url("/upload/archive.tar?group=group1&meta.source=curl"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["filename"], "archive.tar");
    assert_eq!(up["size"], data.len());
    let id = up["file_id"].as_str().unwrap();
    assert!(id.ends_with(".tar"), "{id}");
    assert!(download(&c, gw, id).await.1 == data);
    let meta: Value = c
        .get(gw.url(&format!("/meta/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta, json!({"source": "curl"}));

    // A chunked body (no Content-Length) streams as well.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|i| Ok(vec![i as u8; 10_000])).collect();
    let r = c
        .put(gw.url("/upload/noext"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["size"], 80_000);
    assert_eq!(up["content_type"], "application/octet-stream");

    // A group that does not exist: the tracker's 404 passes through.
    let r = c
        .put(gw.url("/upload/x.txt?group=nosuch"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);
}

#[tokio::test]
async fn uploads_over_the_limit_are_413() {
    let cl = cluster(Setup {
        gateway: Box::new(|c| c.max_upload_size = 10_000),
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    // Multipart, streamed with no length: caught while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![7u8; 1000])).collect();
    let part = Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .file_name("big.bin");
    let r = c
        .post(gw.url("/upload"))
        .multipart(Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (413, "payload_too_large".to_owned()));
    // Raw, chunked: caught while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![7u8; 1000])).collect();
    let r = c
        .put(gw.url("/upload/big.bin"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 413);
    // Raw with Content-Length: refused up front.
    let r = c
        .put(gw.url("/upload/big.bin"))
        .body(vec![0u8; 10_001])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 413);
    // Exactly at the limit is fine.
    let form = Form::new().part("file", Part::bytes(vec![1u8; 10_000]).file_name("ok.bin"));
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Nothing of the refused uploads was kept.
    assert_eq!(
        files_under(&cl.dirs[0].path().join("data")),
        1,
        "only the accepted upload is kept"
    );
}

#[tokio::test]
async fn api_key_and_bad_ids() {
    let cl = cluster(Setup {
        gateway: Box::new(|c| c.api_key = Some("s3cret-key".into())),
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    let r = c
        .put(gw.url("/upload/a.txt"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "unauthorized".to_owned()));
    let r = c
        .put(gw.url("/upload/a.txt"))
        .header("x-api-key", "s3cret-key")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reads are open.
    assert_eq!(download(&c, gw, &id).await.1, b"hello");
    // Writes are not.
    let r = c.delete(gw.url(&format!("/{id}"))).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    let r = c
        .patch(gw.url(&format!("/meta/{id}")))
        .json(&json!({"a": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);

    let r = c
        .get(gw.url("/group1/M00/00/00/garbage"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, "invalid_file_id".to_owned()));
    let other_group = id.replacen("group1", "group9", 1);
    let r = c
        .get(gw.url(&format!("/{other_group}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);
    // A well-formed ID that was never stored.
    let missing = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg";
    let r = c
        .get(gw.url(&format!("/info/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);
}

#[tokio::test]
async fn works_when_the_first_tracker_is_down() {
    let cl = cluster(Setup {
        dead_tracker_first: true,
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    let form = Form::new().part(
        "file",
        Part::bytes(b"fail over".to_vec()).file_name("f.txt"),
    );
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(download(&c, gw, &id).await.1, b"fail over");
    let view: Value = c
        .get(gw.url("/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let up: Vec<bool> = view["trackers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["up"].as_bool().unwrap())
        .collect();
    assert_eq!(up, [false, true]);
}

#[tokio::test]
async fn proxy_mode_streams_with_ranges_and_etags() {
    let cl = cluster(Setup {
        gateway: Box::new(|c| c.download_mode = fdfs_gateway::DownloadMode::Proxy),
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    let data = content(200_000);
    let r = c
        .put(gw.url("/upload/p.bin"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = gw.url(&format!("/{id}"));
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(r.bytes().await.unwrap() == data);
    let r = c
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap()[..] == data[100..200]);
    let r = c
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
}

#[tokio::test]
async fn anti_leech_tokens_on_redirects() {
    let cl = cluster(Setup {
        gateway: Box::new(|c| c.anti_leech_secret = Some("leech".into())),
        storage: Box::new(|c| c.anti_leech_secret = Some("leech".into())),
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    let r = c
        .put(gw.url("/upload/t.txt"))
        .body("guarded")
        .send()
        .await
        .unwrap();
    let up: Value = r.json().await.unwrap();
    let id = up["file_id"].as_str().unwrap().to_owned();
    let (location, bytes) = download(&c, gw, &id).await;
    assert!(
        location.contains("?token=") && location.contains("&ts="),
        "{location}"
    );
    assert_eq!(bytes, b"guarded");
    let unsigned = location.split('?').next().unwrap();
    assert_eq!(c.get(unsigned).send().await.unwrap().status(), 403);
    // The URL in the upload answer is usable as is.
    assert_eq!(
        c.get(up["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn slave_files_sit_next_to_their_master() {
    let cl = cluster(Setup::default()).await;
    let (gw, c) = (&cl.gateway, client());
    let r = c
        .put(gw.url("/upload/pic.jpg"))
        .body("master bytes")
        .send()
        .await
        .unwrap();
    let master = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let form = Form::new()
        .text("master_file_id", master.clone())
        .text("prefix", "_150x150")
        .part("file", Part::bytes(b"thumb".to_vec()).file_name("t.jpg"));
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let slave = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stem = master.strip_suffix(".jpg").unwrap();
    assert_eq!(slave, format!("{stem}_150x150.jpg"));
    assert_eq!(download(&c, gw, &slave).await.1, b"thumb");
}

#[tokio::test]
async fn stalled_uploads_and_dead_storage_get_clean_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cl = cluster(Setup {
        gateway: Box::new(|c| c.body_timeout_secs = 1),
        ..Setup::default()
    })
    .await;
    let c = client();
    // A raw upload whose body stops half way: 408, and the storage node keeps nothing.
    let mut s = tokio::net::TcpStream::connect(cl.gateway.addr)
        .await
        .unwrap();
    let head = "PUT /upload/slow.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[5u8; 20_000]).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(15), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.ends_with(b"}") {
                break;
            }
        }
    })
    .await
    .expect("gateway answered a stalled upload");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(
        files_under(&cl.dirs[0].path().join("data")),
        0,
        "partial upload kept"
    );

    // The only storage node goes away: uploads and downloads fail with a clean 502/503, never a 500.
    let r = c
        .put(cl.gateway.url("/upload/x.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(cl.storages.pop());
    let gw = cl.gateway.url("");
    crate::common::eventually(15, "upload to a dead storage node fails cleanly", || {
        let c = c.clone();
        let gw = gw.clone();
        async move {
            let r = c
                .put(format!("{gw}/upload/x.txt"))
                .body("x")
                .send()
                .await
                .ok()?;
            if r.status() == 200 {
                return None; // not stopped yet
            }
            let (status, code) = error_of(r).await;
            // While it stops, the node refuses new uploads before their body (`node_stopping`); once gone, the
            // connection fails or the tracker has no member left.
            assert!(
                matches!(
                    (status, code.as_str()),
                    (502, "bad_gateway") | (503, "no_storage") | (503, "node_stopping")
                ),
                "{status} {code}"
            );
            Some(())
        }
    })
    .await;
    let r = c
        .get(cl.gateway.url(&format!("/info/{id}")))
        .send()
        .await
        .unwrap();
    let (status, _) = error_of(r).await;
    assert!(status == 502 || status == 503, "{status}");
}

/// Regular files below `dir`.
fn files_under(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn cluster_secret_is_sent_upstream() {
    let cl = cluster(Setup {
        tracker: Box::new(|c| c.cluster_secret = Some("inside".into())),
        storage: Box::new(|c| c.cluster_secret = Some("inside".into())),
        gateway: Box::new(|c| c.cluster_secret = Some("inside".into())),
        ..Setup::default()
    })
    .await;
    let c = client();
    let r = c
        .put(cl.gateway.url("/upload/s.txt"))
        .body("secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(download(&c, &cl.gateway, &id).await.1, b"secret");
    let meta: Value = c
        .get(cl.gateway.url(&format!("/meta/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta, json!({}));

    // A gateway with the wrong secret: the refusal is the operator's problem, reported as 502, not 401.
    let wrong = crate::common::gateway(fdfs_gateway::Config {
        trackers: vec![cl.tracker.addr.to_string()],
        cluster_secret: Some("outside".into()),
        ..fdfs_gateway::Config::default()
    })
    .await;
    let r = c
        .put(wrong.url("/upload/s.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (502, "bad_gateway".to_owned()));
}

#[tokio::test]
async fn two_members_send_reads_to_the_holder() {
    let cl = cluster(Setup {
        members: 2,
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    let mut sources = std::collections::BTreeSet::new();
    for i in 0..4 {
        let body = format!("file number {i}");
        let r = c
            .put(gw.url(&format!("/upload/f{i}.txt")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let up: Value = r.json().await.unwrap();
        let id = up["file_id"].as_str().unwrap().to_owned();
        let url = up["url"].as_str().unwrap().to_owned();
        sources.insert(url.split('/').nth(2).unwrap().to_owned());
        // Not replicated (yet): the redirect and the info point at the member that has it.
        let (location, bytes) = download(&c, gw, &id).await;
        assert_eq!(location, url);
        assert_eq!(bytes, body.as_bytes());
        let info: Value = c
            .get(gw.url(&format!("/info/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["locations"][0], url.as_str(), "{info}");
    }
    assert_eq!(
        sources.len(),
        2,
        "uploads spread over both members: {sources:?}"
    );
}

#[tokio::test]
async fn a_group_field_after_the_file_is_refused_and_nothing_is_kept() {
    let cl = cluster(Setup::default()).await;
    let (gw, c) = (&cl.gateway, client());
    let form = Form::new()
        .part("file", Part::bytes(content(3000)).file_name("late.bin"))
        .text("group", "group1")
        .part("file", Part::bytes(content(10)).file_name("more.bin"));
    let r = c
        .post(gw.url("/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"group\""),
        "{v}"
    );
    // The file stored before the late field is deleted (its replica moments later): no member keeps a file.
    crate::common::eventually(30, "no member holding a file", || async {
        cl.dirs
            .iter()
            .all(|d| walk(d.path().join("data")).is_empty())
            .then_some(())
    })
    .await;
}

/// Regular files under `dir`, recursively.
fn walk(dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(p));
        } else {
            out.push(p);
        }
    }
    out
}
