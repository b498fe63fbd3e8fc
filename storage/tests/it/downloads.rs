//! Public downloads of files larger than the one-read fast path: a real storage node on 127.0.0.1:0 with a
//! tempdir store path. Whole files, ranges and HEAD must give exactly the stored bytes and lengths whether the
//! answer is read with the open (small) or streamed in chunks (large), and across chunk boundaries.

use std::time::{Duration, Instant};

use fdfs_common::config::Size;
use fdfs_common::wire::{UploadResult, CLUSTER_SECRET_HEADER};
use fdfs_storage::Config;
use reqwest::{header, Client, StatusCode};
use tokio::sync::oneshot;

const SECRET: &str = "cluster-s3cret";

/// Deterministic bytes that differ at every offset a chunking bug could shift.
fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_stream_whole_in_ranges_and_by_head() {
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tracker = dead.local_addr().unwrap().to_string();
    drop(dead);
    let config = Config {
        group: "g1".parse().unwrap(),
        trackers: vec![tracker],
        store_paths: vec![dir.path().join("p0")],
        heartbeat_interval_ms: 100,
        cluster_secret: Some(SECRET.into()),
        max_file_size: Size::Bytes(8 << 20),
        write_quorum: 1,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(fdfs_storage::run(listener, config, async {
        let _ = stopped.await;
    }));
    let c = Client::new();
    // Creating the store path's 65536 directories takes a while on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !c
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(!task.is_finished(), "server exited early");
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3 MiB and a bit: several 256 KiB chunks and a short last one.
    let len = (3 << 20) + 12_345;
    let bytes = content(len);
    let r = c
        .post(format!("{base}/v1/upload?store_path=0&ext=bin"))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let up: UploadResult = r.json().await.unwrap();

    let r = c.get(&up.url).send().await.unwrap();
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
        let r = c
            .get(&up.url)
            .header(header::RANGE, &spec)
            .send()
            .await
            .unwrap();
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
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()[header::CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "range_not_satisfiable");

    // HEAD reads nothing but says how much a GET would send.
    let r = c.head(&up.url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[header::CONTENT_LENGTH],
        len.to_string().as_str()
    );
    assert_eq!(r.headers()[header::ETAG], etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .head(&up.url)
        .header(header::RANGE, "bytes=10-1048585")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "1048576");

    // Deleted: 404 (no peer to proxy to).
    let id = up.file_id.to_string();
    let r = c
        .delete(format!("{base}/v1/files/{id}"))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = c.get(&up.url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("graceful shutdown")
        .unwrap()
        .unwrap();
}
