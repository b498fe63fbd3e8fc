//! Issue "core path", over HTTP against a real cluster of processes (1 tracker, 2 groups x 2 members, a
//! gateway): multipart and raw uploads, downloads with Range / conditional requests / HEAD, error statuses,
//! spreading over groups, and a member killed with -9 and restarted.

use crate::common::{args, Cluster, ClusterSpec};
use fdfs_common::wire::MemberState;
use fdfs_common::FileId;
use regex::Regex;
use reqwest::header;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;

/// A small "JPEG": the SOI/APP0 marker then deterministic bytes.
fn jpeg(len: usize) -> Vec<u8> {
    let mut v = fdfs::pattern::Pattern::bytes(len as u64, len).to_vec();
    v[..4].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    v
}

fn id_regex(ext: &str, digits: usize) -> Regex {
    Regex::new(&format!(
        r"^group[12]/M00/[0-9A-F]{{2}}/[0-9A-F]{{2}}/[A-Za-z0-9_-]{{27}}[0-9]{{{digits}}}\.{ext}$"
    ))
    .unwrap()
}

async fn json_ok(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The error code of a JSON error answer, asserting the status.
async fn error_code(resp: reqwest::Response, want: StatusCode) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, want, "body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    v["error"]["code"].as_str().unwrap().to_owned()
}

/// A well-formed ID that no node has.
fn unknown_id(group: &str) -> String {
    let name = fdfs_common::NameInfo {
        source_id: 42,
        created: 1_700_000_000,
        size: 5,
        crc32: 0xDEAD_BEEF,
    }
    .encode(7);
    format!("{group}/M00/00/00/{name}000.jpg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_core_path() {
    let c = Cluster::start(ClusterSpec {
        gateway_args: args(&["--max-upload-size", "1MiB"]),
        ..ClusterSpec::default()
    })
    .await;
    let gw = c.gateway_url();

    // Multipart upload of a JPEG-named file.
    let body = jpeg(200_000);
    let form = Form::new().part(
        "file",
        Part::bytes(body.clone())
            .file_name("photo.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let j = json_ok(
        c.http
            .post(format!("{gw}/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let id = j["file_id"].as_str().unwrap().to_owned();
    assert!(id_regex("jpg", 3).is_match(&id), "{id}");
    assert_eq!(j["size"], 200_000);
    assert_eq!(j["crc32"], format!("{:08x}", crc32fast::hash(&body)));
    assert_eq!(j["content_type"], "image/jpeg");
    assert_eq!(j["group"].as_str().unwrap(), id.split('/').next().unwrap());
    let url = j["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://") && url.contains(&id), "{url}");
    // The ID decodes locally to the same size and CRC.
    let fid: FileId = id.parse().unwrap();
    assert_eq!(fid.info().size, 200_000);
    assert_eq!(fid.info().crc32, crc32fast::hash(&body));

    // Following its URL serves the same bytes, as image/jpeg, with validators.
    let r = c.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/jpeg");
    let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key(header::LAST_MODIFIED));
    assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);

    // The gateway redirects to a member; following it gives the same bytes.
    let r = c.http.get(format!("{gw}/{id}")).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(r.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .contains(&id));
    let r = c.follow.get(format!("{gw}/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);

    // Every member of the group serves it (replicated, or proxied while not yet synced), same ETag.
    let g = usize::from(id.starts_with("group2"));
    for n in &c.storage[g] {
        let r = c
            .http
            .get(format!("{}/{id}", n.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", n.name);
        assert_eq!(
            r.headers()[header::ETAG].to_str().unwrap(),
            etag,
            "{}",
            n.name
        );
        assert_eq!(&r.bytes().await.unwrap()[..], &body[..], "{}", n.name);
    }

    // Range: 206 with the slice, suffix ranges, 416 past the end.
    let r = c
        .http
        .get(&url)
        .header(header::RANGE, "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 10-19/200000");
    assert_eq!(&r.bytes().await.unwrap()[..], &body[10..20]);
    let r = c
        .http
        .get(&url)
        .header(header::RANGE, "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &body[199_995..]);
    let r = c
        .http
        .get(&url)
        .header(header::RANGE, "bytes=200000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */200000");

    // Conditional GET: 304 with the ETag.
    let r = c
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(r.bytes().await.unwrap().is_empty());

    // HEAD: headers only.
    let r = c.http.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "200000");
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/jpeg");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c.follow.head(format!("{gw}/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "200000");

    // Info through the gateway.
    let info = json_ok(c.http.get(format!("{gw}/info/{id}")).send().await.unwrap()).await;
    assert_eq!(info["size"], 200_000);
    assert_eq!(info["crc32"], j["crc32"]);

    // Unknown file: 404 JSON, through the redirect and on the node itself.
    let missing = unknown_id("group1");
    let r = c
        .follow
        .get(format!("{gw}/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = c
        .http
        .get(format!("{}/{missing}", c.storage[0][0].url()))
        .send()
        .await
        .unwrap();
    error_code(r, StatusCode::NOT_FOUND).await;
    let r = c
        .follow
        .get(format!("{gw}/{}", unknown_id("group9")))
        .send()
        .await
        .unwrap();
    error_code(r, StatusCode::NOT_FOUND).await;
    let r = c
        .http
        .get(format!("{gw}/info/{missing}"))
        .send()
        .await
        .unwrap();
    error_code(r, StatusCode::NOT_FOUND).await;

    // Malformed IDs: 400 JSON.
    for bad in [
        "group1/M00/ZZ/00/abc.jpg".to_owned(),
        "group1/M00/00/00/short.jpg".to_owned(),
        format!("group1/MXX/00/00/{}", &id[id.rfind('/').unwrap() + 1..]),
        format!("bad.group/M00/00/00/{}", &id[id.rfind('/').unwrap() + 1..]),
    ] {
        let r = c.http.get(format!("{gw}/{bad}")).send().await.unwrap();
        error_code(r, StatusCode::BAD_REQUEST).await;
        let r = c.http.get(format!("{gw}/info/{bad}")).send().await.unwrap();
        error_code(r, StatusCode::BAD_REQUEST).await;
    }
    let r = c
        .http
        .get(format!("{}/group1/M00/ZZ/00/x.jpg", c.storage[0][0].url()))
        .send()
        .await
        .unwrap();
    error_code(r, StatusCode::BAD_REQUEST).await;

    // Over the gateway limit (1 MiB here): 413, multipart and raw. (Kept just over the limit: the gateway may
    // answer before reading the body, and a client without `Expect: 100-continue` must still see the answer.)
    let big = vec![7u8; (1 << 20) + (64 << 10)];
    let form = Form::new().part("file", Part::bytes(big.clone()).file_name("big.bin"));
    let r = c
        .http
        .post(format!("{gw}/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );
    let r = c
        .http
        .put(format!("{gw}/upload/big.bin"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );

    // Raw PUT upload (curl -T), also into a named group.
    let j = json_ok(
        c.http
            .put(format!("{gw}/upload/notes.txt"))
            .body("hello fdfs\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let txt = j["file_id"].as_str().unwrap().to_owned();
    assert!(id_regex("txt", 3).is_match(&txt), "{txt}");
    assert!(
        j["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{j}"
    );
    let r = c.follow.get(format!("{gw}/{txt}")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello fdfs\n");
    let j = json_ok(
        c.http
            .put(format!("{gw}/upload/a.txt?group=group2"))
            .body("g2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(j["group"], "group2");

    // Several files in one multipart request, with a group field and metadata.
    let form = Form::new()
        .text("group", "group1")
        .text("meta.author", "alice")
        .part("file", Part::bytes(b"one".to_vec()).file_name("1.txt"))
        .part("file", Part::bytes(b"two".to_vec()).file_name("2.txt"))
        .part("file", Part::bytes(jpeg(1000)).file_name("3.jpg"));
    let j = json_ok(
        c.http
            .post(format!("{gw}/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let files = j["files"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert_eq!(files.len(), 3);
    for (f, want) in files.iter().zip([&b"one"[..], b"two", &jpeg(1000)]) {
        let id = f["file_id"].as_str().unwrap();
        assert!(id.starts_with("group1/"), "{id}");
        let r = c.follow.get(format!("{gw}/{id}")).send().await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], want);
    }
    let first = files[0]["file_id"].as_str().unwrap();
    let meta = json_ok(
        c.http
            .get(format!("{gw}/meta/{first}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(meta["author"], "alice", "{meta}");

    // Uploads without a group spread over both groups.
    let mut groups = std::collections::BTreeSet::new();
    for i in 0..8 {
        let j = json_ok(
            c.http
                .put(format!("{gw}/upload/s{i}.bin"))
                .body(vec![i; 100])
                .send()
                .await
                .unwrap(),
        )
        .await;
        groups.insert(j["group"].as_str().unwrap().to_owned());
    }
    assert_eq!(groups.len(), 2, "{groups:?}");

    // Delete: then 404 everywhere.
    let r = c.http.delete(format!("{gw}/{txt}")).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = c.follow.get(format!("{gw}/{txt}")).send().await.unwrap();
    error_code(r, StatusCode::NOT_FOUND).await;
    let r = c.http.delete(format!("{gw}/{txt}")).send().await.unwrap();
    error_code(r, StatusCode::NOT_FOUND).await;

    // Health and cluster view.
    let h = json_ok(c.http.get(format!("{gw}/health")).send().await.unwrap()).await;
    assert_eq!(h["role"], "gateway");
    let v = c.view().await;
    assert_eq!(v.groups.len(), 2);
    assert!(v
        .groups
        .iter()
        .all(|g| g.members.len() == 2 && g.members.iter().all(|m| m.state == MemberState::Active)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_killed_and_restarted_catches_up() {
    let mut c = Cluster::start(ClusterSpec {
        groups: 1,
        ..ClusterSpec::default()
    })
    .await;
    let gw = c.gateway_url();
    let before = json_ok(
        c.http
            .put(format!("{gw}/upload/before.bin"))
            .body(vec![1u8; 5000])
            .send()
            .await
            .unwrap(),
    )
    .await;
    let before = before["file_id"].as_str().unwrap().to_owned();

    let t = std::time::Instant::now();
    c.kill9(0, 1);
    c.wait_state(0, 1, MemberState::Offline).await;
    // Uploads keep working with one member down.
    let during = json_ok(
        c.http
            .put(format!("{gw}/upload/during.bin"))
            .body(vec![2u8; 7000])
            .send()
            .await
            .unwrap(),
    )
    .await;
    let during = during["file_id"].as_str().unwrap().to_owned();

    eprintln!("offline + upload after {:?}", t.elapsed());
    c.restart(0, 1);
    c.wait_state(0, 1, MemberState::Active).await;
    eprintln!("active after {:?}", t.elapsed());
    let m2 = c.storage[0][1].url();
    for (id, byte, len) in [(&before, 1u8, 5000), (&during, 2, 7000)] {
        let r = c.http.get(format!("{m2}/{id}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{id}");
        assert_eq!(r.bytes().await.unwrap().to_vec(), vec![byte; len]);
    }
    assert!(c.storage[0][1].peak_rss().unwrap() > 0);
}
