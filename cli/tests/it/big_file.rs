//! A big file (2 GiB by default; `FDFS_BIG_FILE_MB` overrides) streamed through the gateway and back, generated
//! on the fly and never held in memory, while every server process's peak RSS (VmHWM) must stay under 64 MiB.
//! The upload's CRC32 (computed while sending) must equal the server's and the download's (computed while
//! receiving).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use fdfs::pattern::Pattern;
use fdfs_testkit::{Cluster, RequestExt};
use futures_util::StreamExt;

const RSS_LIMIT: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_file_streams_in_bounded_memory() {
    // Two replicas of the file plus slack.
    let (c, size) = Cluster::for_big_files(2).await;
    let gw = c.gateway_url();
    let started = Instant::now();
    let rss = c.sample_rss();

    // Upload: a generated stream with a Content-Length, hashing what is sent.
    let sent = Arc::new(Mutex::new(crc32fast::Hasher::new()));
    let sent2 = Arc::clone(&sent);
    let body = Pattern::stream(2024, size, 256 << 10).inspect(move |c| {
        if let Ok(c) = c {
            sent2.lock().unwrap().update(c);
        }
    });
    let j: serde_json::Value = c
        .http
        .put(format!("{gw}/upload/big.bin"))
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(body))
        .ok_json()
        .await;
    let sent_crc = format!("{:08x}", sent.lock().unwrap().clone().finalize());
    assert_eq!(j["size"], size);
    assert_eq!(j["crc32"], sent_crc);
    let id = j["file_id"].as_str().unwrap().to_owned();
    let uploaded = started.elapsed();

    // Download through the gateway's redirect, hashing while streaming.
    let resp = c.follow.get(format!("{gw}/{id}")).go().await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut got = crc32fast::Hasher::new();
    let mut n = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(n, size);
    assert_eq!(format!("{:08x}", got.finalize()), sent_crc);
    let total = started.elapsed();

    let report = rss.finish(RSS_LIMIT);
    eprintln!(
        "big file {} MiB: upload {:.1}s, total {:.1}s; peak RSS {report}",
        size >> 20,
        uploaded.as_secs_f64(),
        total.as_secs_f64(),
    );
}
