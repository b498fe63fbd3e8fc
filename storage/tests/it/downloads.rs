//! Public downloads: a real storage node on 127.0.0.1:0 with a tempdir store path. Whole files, ranges and HEAD
//! must give exactly the stored bytes and lengths whether the answer is read in one read (small) or streamed in
//! chunks (large), and across chunk boundaries; a small file must be answered alike from the page cache (on the
//! async thread) and from the disk (the blocking pool).

use crate::common::{config, upload_ok};
use fdfs_common::config::Size;
use fdfs_testkit::inproc::storage;
use fdfs_testkit::{closed_addr, content, RequestExt};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{header, Client, Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_stream_whole_in_ranges_and_by_head() {
    let dir = tempfile::tempdir().unwrap();
    let server = storage(fdfs_storage::Config {
        max_file_size: Size::Bytes(8 << 20),
        ..config(vec![closed_addr()], &[dir.path().join("p0")])
    })
    .await;
    let base = server.base();
    let c = Client::new();

    // 3 MiB and a bit: several 256 KiB chunks and a short last one.
    let len = (3 << 20) + 12_345;
    let bytes = content(1, len);
    let up = upload_ok(&c, &base, "store_path=0&ext=bin", bytes.clone()).await;

    let r = c.get(&up.url).go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[header::CONTENT_LENGTH],
        len.to_string().as_str()
    );
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let etag = r.headers()[header::ETAG].clone();
    assert!(r.headers().contains_key(header::LAST_MODIFIED));
    let got = r.bytes().await.unwrap();
    assert!(got == bytes[..], "whole file differs");

    // Ranges served by streaming (over the one-read size), from odd offsets and across chunk boundaries.
    for (spec, from, to) in [
        ("bytes=100000-400000".to_owned(), 100_000, 400_000),
        (format!("bytes={}-", len - 300_001), len - 300_001, len - 1),
        ("bytes=-700000".to_owned(), len - 700_000, len - 1),
        ("bytes=262140-262150".to_owned(), 262_140, 262_150),
        (format!("bytes=1-{}", len * 2), 1, len - 1),
    ] {
        let r = c.get(&up.url).header(header::RANGE, &spec).go().await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes {from}-{to}/{len}").as_str(),
            "{spec}"
        );
        assert_eq!(r.headers()[header::ETAG], etag, "{spec}");
        let got = r.bytes().await.unwrap();
        assert!(got == bytes[from..=to], "{spec}: other bytes");
    }

    // Past the end: 416 with a JSON error and the length.
    let r = c
        .get(&up.url)
        .header(header::RANGE, format!("bytes={len}-"))
        .go()
        .await;
    assert_eq!(
        r.headers()[header::CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );
    let error = fdfs_testkit::error_of(r).await;
    assert_eq!(error, (416, "range_not_satisfiable".to_owned()));

    // HEAD reads nothing but says how much a GET would send.
    for (range, status, length) in [
        (None, StatusCode::OK, len.to_string()),
        (
            Some("bytes=10-1048585"),
            StatusCode::PARTIAL_CONTENT,
            "1048576".to_owned(),
        ),
    ] {
        let mut r = c.head(&up.url);
        if let Some(range) = range {
            r = r.header(header::RANGE, range);
        }
        let r = r.go().await;
        assert_eq!(r.status(), status, "{range:?}");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], length.as_str());
        assert_eq!(r.headers()[header::ETAG], etag);
        assert!(r.bytes().await.unwrap().is_empty());
    }

    // Deleted: 404 (no peer to proxy to).
    let del = c.delete(format!("{base}/v1/files/{}", up.file_id)).secret();
    let r = del.go().await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(c.get(&up.url).go().await.status(), StatusCode::NOT_FOUND);

    server.stop().await;
}

/// Status, headers (but the date and the request id) and body of an answer.
async fn answer(
    c: &Client,
    method: &Method,
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
) -> (StatusCode, Vec<(String, String)>, bytes::Bytes) {
    let mut r = c.request(method.clone(), url);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    let r = r.go().await;
    let mut h: Vec<_> = r
        .headers()
        .iter()
        .filter(|(k, _)| *k != header::DATE && k.as_str() != "x-request-id")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    h.sort();
    (r.status(), h, r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_answer_alike_from_the_page_cache_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p0");
    let server = storage(config(vec![closed_addr()], std::slice::from_ref(&root))).await;
    let base = server.base();
    let c = Client::new();

    let len = 5000;
    let bytes = content(2, len);
    let up = upload_ok(&c, &base, "store_path=0&ext=jpg", bytes.clone()).await;
    let path = fdfs_testkit::stored_path(&root, &up.file_id.to_string());
    let r = c.get(&up.url).go().await;
    let etag = r.headers()[header::ETAG].clone();
    let date = r.headers()[header::LAST_MODIFIED].clone();
    let v = |s: &str| HeaderValue::from_str(s).unwrap();
    let attname = format!("{}?attname=holiday.jpg", up.url);

    let (get, head) = (Method::GET, Method::HEAD);
    // Method, URL, headers, status and the bytes of the file the body holds (`None`: not the file's bytes).
    let cases = [
        (&get, &up.url, vec![], StatusCode::OK, Some(0..len)),
        (&head, &up.url, vec![], StatusCode::OK, Some(0..0)),
        (&get, &attname, vec![], StatusCode::OK, Some(0..len)),
        (
            &get,
            &up.url,
            vec![(header::RANGE, v("bytes=10-19"))],
            StatusCode::PARTIAL_CONTENT,
            Some(10..20),
        ),
        (
            &get,
            &up.url,
            vec![(header::RANGE, v("bytes=-100"))],
            StatusCode::PARTIAL_CONTENT,
            Some(len - 100..len),
        ),
        (
            &head,
            &up.url,
            vec![(header::RANGE, v("bytes=4000-"))],
            StatusCode::PARTIAL_CONTENT,
            Some(0..0),
        ),
        (
            &get,
            &up.url,
            vec![(header::RANGE, v("bytes=5000-"))],
            StatusCode::RANGE_NOT_SATISFIABLE,
            None,
        ),
        (
            &get,
            &up.url,
            vec![
                (header::RANGE, v("bytes=0-9")),
                (header::IF_RANGE, etag.clone()),
            ],
            StatusCode::PARTIAL_CONTENT,
            Some(0..10),
        ),
        (
            &get,
            &up.url,
            vec![
                (header::RANGE, v("bytes=0-9")),
                (header::IF_RANGE, v("\"other\"")),
            ],
            StatusCode::OK,
            Some(0..len),
        ),
        (
            &get,
            &up.url,
            vec![(header::IF_NONE_MATCH, etag.clone())],
            StatusCode::NOT_MODIFIED,
            Some(0..0),
        ),
        (
            &get,
            &up.url,
            vec![(header::IF_MODIFIED_SINCE, date.clone())],
            StatusCode::NOT_MODIFIED,
            Some(0..0),
        ),
        (
            &get,
            &up.url,
            vec![(header::IF_NONE_MATCH, v("\"nope\""))],
            StatusCode::OK,
            Some(0..len),
        ),
        (
            &get,
            &up.url,
            vec![(header::IF_MATCH, v("\"nope\""))],
            StatusCode::PRECONDITION_FAILED,
            None,
        ),
    ];
    for (method, url, headers, status, body) in cases {
        let what = format!("{method} {url} {headers:?}");
        // Twice from the page cache (the first may have warmed it), then with the file's pages evicted.
        answer(&c, method, url, &headers).await;
        let cached = answer(&c, method, url, &headers).await;
        fdfs_testkit::evict_from_page_cache(&path);
        let from_disk = answer(&c, method, url, &headers).await;
        assert_eq!(cached.0, status, "{what}");
        assert_eq!(cached, from_disk, "{what}");
        if let Some(range) = body {
            assert!(cached.2 == bytes[range], "{what}: other bytes");
        }
    }
    server.stop().await;
}
