//! A big file (2 GiB by default; `FDFS_BIG_FILE_MB` overrides) streamed through the gateway and back, generated
//! on the fly and never held in memory, while every server process's peak RSS (VmHWM) must stay under 64 MiB.
//! The upload's CRC32 (computed while sending) must equal the server's and the download's (computed while
//! receiving).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{args, Cluster, ClusterSpec};
use fdfs::pattern::Pattern;
use futures_util::StreamExt;

const RSS_LIMIT: u64 = 64 << 20;

fn size_bytes() -> u64 {
    let mb: u64 = std::env::var("FDFS_BIG_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    mb << 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_file_streams_in_bounded_memory() {
    let size = size_bytes();
    // Two replicas of the file plus slack.
    let _turn = fdfs_testkit::big_transfer().await;
    let dir = crate::common::tempdir(2 * size + (1 << 30));
    let c = Cluster::start_in(
        ClusterSpec {
            groups: 1,
            storage_args: args(&["--heartbeat-interval-ms", "200", "--max-file-size", "4GiB"]),
            gateway_args: args(&["--max-upload-size", "4GiB"]),
            ..ClusterSpec::default()
        },
        dir,
    )
    .await;
    let gw = c.gateway_url();
    let started = Instant::now();

    // Sample every process's VmHWM while the transfer runs (VmHWM is itself a high-water mark, so the last
    // sample is the peak; the samples show where it happened in the log).
    let pids: Vec<(String, u32)> = c
        .all_nodes()
        .map(|n| (n.name.clone(), n.pid().unwrap()))
        .collect();
    let peaks = Arc::new(Mutex::new(vec![0u64; pids.len()]));
    let sampler = {
        let peaks = Arc::clone(&peaks);
        let pids = pids.clone();
        tokio::spawn(async move {
            loop {
                for (i, (_, pid)) in pids.iter().enumerate() {
                    if let Some(r) = crate::common::peak_rss(*pid) {
                        let mut p = peaks.lock().unwrap();
                        p[i] = p[i].max(r);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // Upload: a generated stream with a Content-Length, hashing what is sent.
    let sent = Arc::new(Mutex::new(crc32fast::Hasher::new()));
    let sent2 = Arc::clone(&sent);
    let body = Pattern::stream(2024, size, 256 << 10).inspect(move |c| {
        if let Ok(c) = c {
            sent2.lock().unwrap().update(c);
        }
    });
    let resp = c
        .http
        .put(format!("{gw}/upload/big.bin"))
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sent_crc = format!("{:08x}", sent.lock().unwrap().clone().finalize());
    assert_eq!(j["size"], size);
    assert_eq!(j["crc32"], sent_crc);
    let id = j["file_id"].as_str().unwrap().to_owned();
    let uploaded = started.elapsed();

    // Download through the gateway's redirect, hashing while streaming.
    let resp = c.follow.get(format!("{gw}/{id}")).send().await.unwrap();
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

    sampler.abort();
    let peaks = peaks.lock().unwrap().clone();
    let mut report = Vec::new();
    for ((name, pid), sampled) in pids.iter().zip(peaks) {
        let peak = crate::common::peak_rss(*pid).unwrap_or(0).max(sampled);
        report.push(format!("{name}: {:.1} MiB", peak as f64 / (1 << 20) as f64));
        assert!(
            peak < RSS_LIMIT,
            "{name} peaked at {peak} bytes (limit {RSS_LIMIT}); all: {report:?}"
        );
    }
    eprintln!(
        "big file {} MiB: upload {:.1}s, total {:.1}s; peak RSS {}",
        size >> 20,
        uploaded.as_secs_f64(),
        total.as_secs_f64(),
        report.join(", ")
    );
}
