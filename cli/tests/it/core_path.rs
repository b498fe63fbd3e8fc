//! Issue "core path", over HTTP against a real cluster of processes (1 tracker, 2 groups x 2 members, a
//! gateway): multipart and raw uploads, downloads with Range / conditional requests / HEAD, error statuses,
//! spreading over groups, and a member killed with -9 and restarted.

use fdfs_common::wire::MemberState;
use fdfs_common::FileId;
use fdfs_testkit::{Cluster, ClusterSpec, RequestExt};
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
    let c = Cluster::start(ClusterSpec::default().gateway(&["--max-upload-size", "1MiB"])).await;
    let gw = c.gateway_url();
    let post = |form: Form| c.http.post(format!("{gw}/upload")).multipart(form);

    // Multipart upload of a JPEG-named file.
    let body = jpeg(200_000);
    let form = Form::new().part(
        "file",
        Part::bytes(body.clone())
            .file_name("photo.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let j: Value = post(form).ok_json().await;
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
    let r = c.http.get(&url).go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/jpeg");
    let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key(header::LAST_MODIFIED));
    assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);

    // The gateway redirects to a member; following it gives the same bytes.
    let r = c.http.get(format!("{gw}/{id}")).go().await;
    assert!(r.status().is_redirection(), "{}", r.status());
    let location = r.headers()[header::LOCATION].to_str().unwrap();
    assert!(location.contains(&id), "{location}");
    assert_eq!(c.download(&id).await, body);

    // Every member of the group serves it (replicated, or proxied while not yet synced), same ETag.
    let g = usize::from(id.starts_with("group2"));
    for n in &c.storage[g] {
        let r = c.http.get(format!("{}/{id}", n.url())).go().await;
        assert_eq!(r.status(), StatusCode::OK, "{}", n.name);
        assert_eq!(r.headers()[header::ETAG], etag.as_str(), "{}", n.name);
        assert_eq!(&r.bytes().await.unwrap()[..], &body[..], "{}", n.name);
    }

    // Range: 206 with the slice, suffix ranges, 416 past the end; conditional GET: 304 with the ETag.
    let cases = [
        (
            header::RANGE,
            "bytes=10-19",
            StatusCode::PARTIAL_CONTENT,
            Some("bytes 10-19/200000"),
            &body[10..20],
        ),
        (
            header::RANGE,
            "bytes=-5",
            StatusCode::PARTIAL_CONTENT,
            None,
            &body[199_995..],
        ),
        (
            header::RANGE,
            "bytes=200000-",
            StatusCode::RANGE_NOT_SATISFIABLE,
            Some("bytes */200000"),
            &b""[..],
        ),
        (
            header::IF_NONE_MATCH,
            etag.as_str(),
            StatusCode::NOT_MODIFIED,
            None,
            &b""[..],
        ),
    ];
    for (name, value, status, range, want) in cases {
        let r = c.http.get(&url).header(&name, value).go().await;
        assert_eq!(r.status(), status, "{name}: {value}");
        if let Some(range) = range {
            assert_eq!(r.headers()[header::CONTENT_RANGE], range);
        }
        if status != StatusCode::RANGE_NOT_SATISFIABLE {
            assert_eq!(&r.bytes().await.unwrap()[..], want, "{name}: {value}");
        }
    }

    // HEAD: headers only, on the node and through the gateway's redirect.
    let r = c.http.head(&url).go().await;
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/jpeg");
    for r in [r, c.follow.head(format!("{gw}/{id}")).go().await] {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "200000");
        assert!(r.bytes().await.unwrap().is_empty());
    }

    // Info through the gateway.
    let info: Value = c.http.get(format!("{gw}/info/{id}")).ok_json().await;
    assert_eq!(info["size"], 200_000);
    assert_eq!(info["crc32"], j["crc32"]);

    // Unknown file: 404 JSON, through the redirect and on the node itself; malformed IDs: 400 JSON.
    let missing = unknown_id("group1");
    let node = c.storage[0][0].url();
    let mut refused = vec![
        (
            c.follow.get(format!("{gw}/{missing}")),
            404,
            Some("not_found"),
        ),
        (c.http.get(format!("{node}/{missing}")), 404, None),
        (
            c.follow.get(format!("{gw}/{}", unknown_id("group9"))),
            404,
            None,
        ),
        (c.http.get(format!("{gw}/info/{missing}")), 404, None),
        (
            c.http.get(format!("{node}/group1/M00/ZZ/00/x.jpg")),
            400,
            None,
        ),
    ];
    let name = &id[id.rfind('/').unwrap() + 1..];
    for bad in [
        "group1/M00/ZZ/00/abc.jpg".to_owned(),
        "group1/M00/00/00/short.jpg".to_owned(),
        format!("group1/MXX/00/00/{name}"),
        format!("bad.group/M00/00/00/{name}"),
    ] {
        refused.push((c.http.get(format!("{gw}/{bad}")), 400, None));
        refused.push((c.http.get(format!("{gw}/info/{bad}")), 400, None));
    }

    // Over the gateway limit (1 MiB here): 413, multipart and raw. (Kept just over the limit: the gateway may
    // answer before reading the body, and a client without `Expect: 100-continue` must still see the answer.)
    let big = vec![7u8; (1 << 20) + (64 << 10)];
    let form = Form::new().part("file", Part::bytes(big.clone()).file_name("big.bin"));
    refused.push((post(form), 413, Some("payload_too_large")));
    let raw = c.http.put(format!("{gw}/upload/big.bin")).body(big);
    refused.push((raw, 413, Some("payload_too_large")));
    for (i, (r, status, code)) in refused.into_iter().enumerate() {
        let (got, got_code) = r.error().await;
        assert_eq!(got, status, "case {i}: {got_code}");
        if let Some(code) = code {
            assert_eq!(got_code, code, "case {i}");
        }
    }

    // Raw PUT upload (curl -T), also into a named group.
    let j = c.upload("notes.txt", "hello fdfs\n").await;
    let txt = j["file_id"].as_str().unwrap().to_owned();
    assert!(id_regex("txt", 3).is_match(&txt), "{txt}");
    assert!(
        j["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"),
        "{j}"
    );
    assert_eq!(c.download(&txt).await, b"hello fdfs\n");
    let j = c.upload("a.txt?group=group2", "g2").await;
    assert_eq!(j["group"], "group2");

    // Several files in one multipart request, with a group field and metadata.
    let form = Form::new()
        .text("group", "group1")
        .text("meta.author", "alice")
        .part("file", Part::bytes(b"one".to_vec()).file_name("1.txt"))
        .part("file", Part::bytes(b"two".to_vec()).file_name("2.txt"))
        .part("file", Part::bytes(jpeg(1000)).file_name("3.jpg"));
    let j: Value = post(form).ok_json().await;
    let files = j["files"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert_eq!(files.len(), 3);
    for (f, want) in files.iter().zip([&b"one"[..], b"two", &jpeg(1000)]) {
        let id = f["file_id"].as_str().unwrap();
        assert!(id.starts_with("group1/"), "{id}");
        assert_eq!(&c.download(id).await[..], want);
    }
    let first = files[0]["file_id"].as_str().unwrap();
    let meta: Value = c.http.get(format!("{gw}/meta/{first}")).ok_json().await;
    assert_eq!(meta["author"], "alice", "{meta}");

    // Uploads without a group spread over both groups.
    let mut groups = std::collections::BTreeSet::new();
    for i in 0..8 {
        let j = c.upload(&format!("s{i}.bin"), vec![i; 100]).await;
        groups.insert(j["group"].as_str().unwrap().to_owned());
    }
    assert_eq!(groups.len(), 2, "{groups:?}");

    // Delete: then 404 everywhere, once the other member has applied it (a delete is acknowledged by the member
    // that took it and reaches its peers through replication, as the README says).
    c.delete(&txt).await;
    fdfs_testkit::eventually(30, "the delete on every member", || async {
        let through_gateway = c
            .follow
            .get(format!("{gw}/{txt}"))
            .send()
            .await
            .ok()?
            .status();
        let mut statuses = vec![through_gateway.as_u16()];
        let g: usize = txt["group".len()..txt.find('/').unwrap()].parse().unwrap();
        for n in &c.storage[g - 1] {
            let r = c.http.get(format!("{}/{txt}", n.url())).send().await.ok()?;
            statuses.push(r.status().as_u16());
        }
        statuses.iter().all(|s| *s == 404).then_some(())
    })
    .await;
    assert_eq!(c.follow.get(format!("{gw}/{txt}")).error().await.0, 404);
    assert_eq!(c.http.delete(format!("{gw}/{txt}")).error().await.0, 404);

    // Health and cluster view.
    let h: Value = c.http.get(format!("{gw}/health")).ok_json().await;
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
    let mut c = Cluster::start(ClusterSpec::group(2)).await;
    let before = c.upload("before.bin", vec![1u8; 5000]).await;
    let before = before["file_id"].as_str().unwrap().to_owned();

    let t = std::time::Instant::now();
    c.kill9(0, 1);
    c.wait_state(0, 1, MemberState::Offline).await;
    // Uploads keep working with one member down.
    let during = c.upload("during.bin", vec![2u8; 7000]).await;
    let during = during["file_id"].as_str().unwrap().to_owned();

    eprintln!("offline + upload after {:?}", t.elapsed());
    c.restart(0, 1);
    c.wait_state(0, 1, MemberState::Active).await;
    eprintln!("active after {:?}", t.elapsed());
    let m2 = c.storage[0][1].url();
    for (id, byte, len) in [(&before, 1u8, 5000), (&during, 2, 7000)] {
        let got = c.http.get(format!("{m2}/{id}")).ok_bytes().await;
        assert_eq!(got, vec![byte; len], "{id}");
    }
    assert!(c.storage[0][1].peak_rss().unwrap() > 0);
}
