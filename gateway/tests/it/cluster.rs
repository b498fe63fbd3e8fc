//! The gateway in front of a real tracker and real storage nodes, all in-process on 127.0.0.1:0.

use crate::common::{cluster, file_id, gateway_for, Setup};
use fdfs_testkit::raw::{self, How};
use fdfs_testkit::{content, eventually, files_under, RequestExt};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

/// `n` bytes sent as `chunks` chunks of a body without a length.
fn chunked(chunks: usize, n: usize) -> reqwest::Body {
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..chunks).map(|i| Ok(vec![i as u8; n])).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(parts))
}

#[tokio::test]
async fn multipart_upload_download_info_meta_delete() {
    let cl = cluster(Setup::default()).await;
    let c = &cl.http;
    let data = content(1, 300_000);
    let form = Form::new()
        .text("meta.author", "ann")
        .part("file", Part::bytes(data.clone()).file_name("photo.JPG"));
    let up: Value = fdfs_testkit::json_ok(cl.post_form(form).await).await;
    let id = file_id(&up);
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
    let (location, bytes) = cl.download(&id).await;
    assert_eq!(location, format!("http://{}/{id}", cl.storages[0].addr));
    assert!(bytes == data, "downloaded bytes differ");
    let head = c.head(cl.gateway.url(&format!("/{id}"))).go().await;
    assert_eq!(head.status(), 302);
    assert_eq!(head.headers()["location"], location.as_str());

    // Info: decoded fields, metadata, where it lives.
    let info = cl.json(&format!("/info/{id}")).await;
    assert_eq!(info["file_id"], id.as_str());
    assert_eq!(info["size"], data.len());
    assert_eq!(info["metadata"], json!({"author": "ann"}));
    assert_eq!(info["locations"], json!([location]));

    // Metadata: get, merge, overwrite (each answer is the metadata then held).
    let meta = format!("/meta/{id}");
    assert_eq!(cl.json(&meta).await, json!({"author": "ann"}));
    let url = cl.gateway.url(&meta);
    for (method, body, after) in [
        (
            reqwest::Method::PATCH,
            json!({"width": "640"}),
            json!({"author": "ann", "width": "640"}),
        ),
        (
            reqwest::Method::PATCH,
            json!({"author": null}),
            json!({"width": "640"}),
        ),
        (
            reqwest::Method::PUT,
            json!({"only": "this"}),
            json!({"only": "this"}),
        ),
    ] {
        let answer: Value = c.request(method, &url).json(&body).ok_json().await;
        assert_eq!(answer, after, "{body}");
    }
    assert_eq!(cl.json(&meta).await, json!({"only": "this"}));

    // Delete, then it is gone everywhere.
    let gone = cl.gateway.url(&format!("/{id}"));
    let v: Value = c.delete(&gone).ok_json().await;
    assert_eq!(v["deleted"], true);
    assert_eq!(c.delete(&gone).error().await, (404, "not_found".to_owned()));
    for path in [format!("/info/{id}"), meta] {
        assert_eq!(cl.get(&path).error().await.0, 404, "{path}");
    }
    assert_eq!(c.get(&location).go().await.status(), 404);
}

#[tokio::test]
async fn several_file_parts_and_trailing_meta() {
    let cl = cluster(Setup::default()).await;
    let a = content(2, 1000);
    let b = b"second file".to_vec();
    let form = Form::new()
        .text("meta.kind", "batch")
        .part("file", Part::bytes(a.clone()).file_name("a.bin"))
        .part("file", Part::bytes(b.clone()).file_name("notes.txt"))
        .text("meta.late", "yes");
    let v: Value = fdfs_testkit::json_ok(cl.post_form(form).await).await;
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
        let id = file_id(f);
        assert!(cl.download(&id).await.1 == *data);
        assert_eq!(cl.json(&format!("/meta/{id}")).await, want, "{id}");
    }
}

#[tokio::test]
async fn raw_put_streams_and_takes_query_fields() {
    let cl = cluster(Setup::default()).await;
    let data = content(3, 5 << 20);
    let up = cl
        .upload("archive.tar?group=group1&meta.source=curl", data.clone())
        .await;
    assert_eq!(up["filename"], "archive.tar");
    assert_eq!(up["size"], data.len());
    let id = file_id(&up);
    assert!(id.ends_with(".tar"), "{id}");
    assert!(cl.download(&id).await.1 == data);
    assert_eq!(
        cl.json(&format!("/meta/{id}")).await,
        json!({"source": "curl"})
    );

    // A chunked body (no Content-Length) streams as well.
    let up = cl.upload("noext", chunked(8, 10_000)).await;
    assert_eq!(up["size"], 80_000);
    assert_eq!(up["content_type"], "application/octet-stream");

    // A group that does not exist: the tracker's 404 passes through.
    let r = cl.http.put(cl.gateway.url("/upload/x.txt?group=nosuch"));
    assert_eq!(r.body("x").error().await.0, 404);
}

#[tokio::test]
async fn uploads_over_the_limit_are_413() {
    let cl = cluster(Setup::gateway(|c| c.max_upload_size = 10_000)).await;
    let put = || cl.http.put(cl.gateway.url("/upload/big.bin"));
    // Multipart, streamed with no length: caught while streaming.
    let part = Part::stream(chunked(20, 1000)).file_name("big.bin");
    let r = cl.post_form(Form::new().part("file", part)).await;
    assert_eq!(
        fdfs_testkit::error_of(r).await,
        (413, "payload_too_large".to_owned())
    );
    // Raw, chunked: caught while streaming.
    assert_eq!(put().body(chunked(20, 1000)).error().await.0, 413);
    // Raw with Content-Length: refused up front.
    assert_eq!(put().body(vec![0u8; 10_001]).error().await.0, 413);
    // Exactly at the limit is fine.
    let form = Form::new().part("file", Part::bytes(vec![1u8; 10_000]).file_name("ok.bin"));
    assert_eq!(cl.post_form(form).await.status(), 200);
    // Nothing of the refused uploads was kept.
    assert_eq!(
        files_under(&cl.dirs[0].path().join("data")).len(),
        1,
        "only the accepted upload is kept"
    );
}

#[tokio::test]
async fn api_key_and_bad_ids() {
    let cl = cluster(Setup::gateway(|c| c.api_key = Some("s3cret-key".into()))).await;
    let c = &cl.http;
    let put = || c.put(cl.gateway.url("/upload/a.txt")).body("hello");
    assert_eq!(put().error().await, (401, "unauthorized".to_owned()));
    let up: Value = put().header("x-api-key", "s3cret-key").ok_json().await;
    let id = file_id(&up);
    // Reads are open.
    assert_eq!(cl.download(&id).await.1, b"hello");
    // Writes are not.
    let writes = [
        c.delete(cl.gateway.url(&format!("/{id}"))),
        c.patch(cl.gateway.url(&format!("/meta/{id}")))
            .json(&json!({"a": "b"})),
    ];
    for w in writes {
        assert_eq!(w.error().await.0, 401);
    }

    let bad = cl.get("/group1/M00/00/00/garbage").error().await;
    assert_eq!(bad, (400, "invalid_file_id".to_owned()));
    let other_group = id.replacen("group1", "group9", 1);
    assert_eq!(cl.get(&format!("/{other_group}")).error().await.0, 404);
    // A well-formed ID that was never stored.
    let missing = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg";
    assert_eq!(cl.get(&format!("/info/{missing}")).error().await.0, 404);
}

#[tokio::test]
async fn works_when_the_first_tracker_is_down() {
    let cl = cluster(Setup {
        dead_tracker_first: true,
        ..Setup::default()
    })
    .await;
    let form = Form::new().part(
        "file",
        Part::bytes(b"fail over".to_vec()).file_name("f.txt"),
    );
    let up: Value = fdfs_testkit::json_ok(cl.post_form(form).await).await;
    assert_eq!(cl.download(&file_id(&up)).await.1, b"fail over");
    let view = cl.json("/cluster").await;
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
    let cl = cluster(Setup::gateway(|c| {
        c.download_mode = fdfs_gateway::DownloadMode::Proxy
    }))
    .await;
    let c = &cl.http;
    let data = content(4, 200_000);
    let id = file_id(&cl.upload("p.bin", data.clone()).await);
    let url = cl.gateway.url(&format!("/{id}"));
    let r = c.get(&url).go().await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(r.bytes().await.unwrap() == data);
    let r = c.get(&url).header("range", "bytes=100-199").go().await;
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap()[..] == data[100..200]);
    let r = c.get(&url).header("if-none-match", &etag).go().await;
    assert_eq!(r.status(), 304);
    let r = c.head(&url).go().await;
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
    let c = &cl.http;
    let up = cl.upload("t.txt", "guarded").await;
    let (location, bytes) = cl.download(&file_id(&up)).await;
    assert!(
        location.contains("?token=") && location.contains("&ts="),
        "{location}"
    );
    assert_eq!(bytes, b"guarded");
    let unsigned = location.split('?').next().unwrap();
    assert_eq!(c.get(unsigned).go().await.status(), 403);
    // The URL in the upload answer is usable as is.
    assert_eq!(c.get(up["url"].as_str().unwrap()).go().await.status(), 200);
}

#[tokio::test]
async fn slave_files_sit_next_to_their_master() {
    let cl = cluster(Setup::default()).await;
    let master = file_id(&cl.upload("pic.jpg", "master bytes").await);
    let form = Form::new()
        .text("master_file_id", master.clone())
        .text("prefix", "_150x150")
        .part("file", Part::bytes(b"thumb".to_vec()).file_name("t.jpg"));
    let slave = file_id(&fdfs_testkit::json_ok(cl.post_form(form).await).await);
    let stem = master.strip_suffix(".jpg").unwrap();
    assert_eq!(slave, format!("{stem}_150x150.jpg"));
    assert_eq!(cl.download(&slave).await.1, b"thumb");
}

#[tokio::test]
async fn stalled_uploads_and_dead_storage_get_clean_errors() {
    let mut cl = cluster(Setup::gateway(|c| c.body_timeout_secs = 1)).await;
    // A raw upload whose body stops half way: 408, and the storage node keeps nothing.
    let mut stalled =
        b"PUT /upload/slow.bin HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n".to_vec();
    stalled.extend_from_slice(&[5u8; 20_000]);
    let how = How {
        until_answered: true,
        ..How::within(15)
    };
    let a = raw::send(cl.gateway.addr, &stalled, how).await;
    assert!(
        !a.timed_out && a.status == Some(408),
        "gateway answered a stalled upload: {}",
        a.summary()
    );
    assert_eq!(
        files_under(&cl.dirs[0].path().join("data")).len(),
        0,
        "partial upload kept"
    );

    // The only storage node goes away: uploads and downloads fail with a clean 502/503, never a 500.
    let id = file_id(&cl.upload("x.txt", "x").await);
    drop(cl.storages.pop());
    let c = &cl.http;
    let url = cl.gateway.url("/upload/x.txt");
    eventually(
        15,
        "upload to a dead storage node fails cleanly",
        || async {
            let r = c.put(&url).body("x").send().await.ok()?;
            if r.status() == 200 {
                return None; // not stopped yet
            }
            let (status, code) = fdfs_testkit::error_of(r).await;
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
        },
    )
    .await;
    let (status, _) = cl.get(&format!("/info/{id}")).error().await;
    assert!(status == 502 || status == 503, "{status}");
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
    let id = file_id(&cl.upload("s.txt", "secret").await);
    assert_eq!(cl.download(&id).await.1, b"secret");
    assert_eq!(cl.json(&format!("/meta/{id}")).await, json!({}));

    // A gateway with the wrong secret: the refusal is the operator's problem, reported as 502, not 401.
    let wrong = gateway_for(vec![cl.tracker.addr.to_string()], |c| {
        c.cluster_secret = Some("outside".into())
    })
    .await;
    let r = cl.http.put(wrong.url("/upload/s.txt")).body("x");
    assert_eq!(r.error().await, (502, "bad_gateway".to_owned()));
}

#[tokio::test]
async fn two_members_send_reads_to_the_holder() {
    let cl = cluster(Setup {
        members: 2,
        ..Setup::default()
    })
    .await;
    let mut sources = std::collections::BTreeSet::new();
    for i in 0..4 {
        let body = format!("file number {i}");
        let up = cl.upload(&format!("f{i}.txt"), body.clone()).await;
        let id = file_id(&up);
        let url = up["url"].as_str().unwrap().to_owned();
        sources.insert(url.split('/').nth(2).unwrap().to_owned());
        // Not replicated (yet): the redirect and the info point at the member that has it.
        let (location, bytes) = cl.download(&id).await;
        assert_eq!(location, url);
        assert_eq!(bytes, body.as_bytes());
        let info = cl.json(&format!("/info/{id}")).await;
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
    let form = Form::new()
        .part("file", Part::bytes(content(1, 3000)).file_name("late.bin"))
        .text("group", "group1")
        .part("file", Part::bytes(content(2, 10)).file_name("more.bin"));
    let r = cl.post_form(form).await;
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
    eventually(30, "no member holding a file", || async {
        cl.dirs
            .iter()
            .all(|d| files_under(&d.path().join("data")).is_empty())
            .then_some(())
    })
    .await;
}
