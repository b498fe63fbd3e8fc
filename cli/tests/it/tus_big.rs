//! A big file (2 GiB by default; `FDFS_BIG_FILE_MB` overrides) uploaded through tus in 16 MiB chunks, generated on
//! the fly and never held in memory, while every server process's peak RSS (VmHWM) stays under 64 MiB. The final
//! file has the size and CRC32 of what was sent, on both members. With `FDFS_TUS_COMPARE=1` the same content is
//! then uploaded as one `PUT /upload` and both throughputs are printed (the note's comparison).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{args, Cluster, ClusterSpec};
use bytes::Bytes;
use fdfs::pattern::Pattern;
use reqwest::StatusCode;

const RSS_LIMIT: u64 = 64 << 20;
const CHUNK: u64 = 16 << 20;
const READ: usize = 256 << 10;

fn size_bytes() -> u64 {
    let mb: u64 = std::env::var("FDFS_BIG_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    mb << 20
}

/// The next `len` bytes of a shared generator as a request body.
fn body(p: Arc<Mutex<Pattern>>, len: u64, crc: Arc<Mutex<crc32fast::Hasher>>) -> reqwest::Body {
    let s = futures_util::stream::unfold(len, move |left| {
        let (p, crc) = (p.clone(), crc.clone());
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(READ as u64) as usize;
            let mut buf = vec![0; n];
            p.lock().unwrap().fill(&mut buf);
            crc.lock().unwrap().update(&buf);
            Some((Ok::<_, std::io::Error>(Bytes::from(buf)), left - n as u64))
        }
    });
    reqwest::Body::wrap_stream(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_big_file_streams_in_bounded_memory() {
    let size = size_bytes();
    let _turn = fdfs_testkit::big_transfer().await;
    let dir = crate::common::tempdir(3 * size + (1 << 30));
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
    let pids: Vec<(String, u32)> = c
        .all_nodes()
        .map(|n| (n.name.clone(), n.pid().unwrap()))
        .collect();
    let peaks = Arc::new(Mutex::new(vec![0u64; pids.len()]));
    let sampler = {
        let (peaks, pids) = (peaks.clone(), pids.clone());
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

    let started = Instant::now();
    let resp = c
        .http
        .post(format!("{gw}/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", size)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let url = format!("{gw}{}", resp.headers()["location"].to_str().unwrap());
    let pattern = Arc::new(Mutex::new(Pattern::new(2025)));
    let crc = Arc::new(Mutex::new(crc32fast::Hasher::new()));
    let mut offset = 0;
    let mut file_id = None;
    while offset < size {
        let n = CHUNK.min(size - offset);
        let resp = c
            .http
            .patch(&url)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset)
            .header("content-length", n)
            .body(body(pattern.clone(), n, crc.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "at {offset}");
        offset = resp.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        file_id = resp
            .headers()
            .get("fdfs-file-id")
            .map(|v| v.to_str().unwrap().to_owned());
    }
    let tus_secs = started.elapsed().as_secs_f64();
    let fid = file_id.expect("Fdfs-File-Id on the final PATCH");
    let sent_crc = crc.lock().unwrap().clone().finalize();
    let id: fdfs_common::FileId = fid.parse().unwrap();
    assert_eq!(id.info().size, size);
    assert_eq!(id.info().crc32, sent_crc);
    for n in &c.storage[0] {
        let resp = c
            .http
            .head(format!("{}/{fid}", n.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{} holds the file", n.name);
        assert_eq!(
            resp.headers()["content-length"].to_str().unwrap(),
            size.to_string()
        );
    }

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
    let mib = (size >> 20) as f64;
    eprintln!(
        "tus {} MiB in {} MiB chunks: {tus_secs:.1}s ({:.0} MiB/s); peak RSS {}",
        size >> 20,
        CHUNK >> 20,
        mib / tus_secs,
        report.join(", ")
    );

    if std::env::var_os("FDFS_TUS_COMPARE").is_some() {
        let t0 = Instant::now();
        let resp = c
            .http
            .put(format!("{gw}/upload/big.bin"))
            .header("content-length", size)
            .body(reqwest::Body::wrap_stream(Pattern::stream(
                2026, size, READ,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let put_secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "same size as one PUT /upload: {put_secs:.1}s ({:.0} MiB/s); tus/PUT time ratio {:.2}",
            mib / put_secs,
            tus_secs / put_secs
        );
    }
}
