//! A big file (2 GiB by default; `FDFS_BIG_FILE_MB` overrides) uploaded through tus in 16 MiB chunks, generated on
//! the fly and never held in memory, while every server process's peak RSS (VmHWM) stays under 64 MiB. The final
//! file has the size and CRC32 of what was sent, on both members. With `FDFS_TUS_COMPARE=1` the same content is
//! then uploaded as one `PUT /upload` and both throughputs are printed (the note's comparison).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use fdfs::pattern::Pattern;
use fdfs_testkit::{Cluster, RequestExt};
use reqwest::StatusCode;

const RSS_LIMIT: u64 = 64 << 20;
const CHUNK: u64 = 16 << 20;
const READ: usize = 256 << 10;

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
    let (c, size) = Cluster::for_big_files(3).await;
    let gw = c.gateway_url();
    let rss = c.sample_rss();

    let started = Instant::now();
    let resp = c
        .http
        .post(format!("{gw}/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", size)
        .go()
        .await;
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
            .go()
            .await;
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
        let resp = c.http.head(format!("{}/{fid}", n.url())).go().await;
        assert_eq!(resp.status(), StatusCode::OK, "{} holds the file", n.name);
        assert_eq!(
            resp.headers()["content-length"].to_str().unwrap(),
            size.to_string()
        );
    }

    let report = rss.finish(RSS_LIMIT);
    let mib = (size >> 20) as f64;
    eprintln!(
        "tus {} MiB in {} MiB chunks: {tus_secs:.1}s ({:.0} MiB/s); peak RSS {report}",
        size >> 20,
        CHUNK >> 20,
        mib / tus_secs,
    );

    if std::env::var_os("FDFS_TUS_COMPARE").is_some() {
        let t0 = Instant::now();
        let body = reqwest::Body::wrap_stream(Pattern::stream(2026, size, READ));
        let resp = c
            .http
            .put(format!("{gw}/upload/big.bin"))
            .header("content-length", size)
            .body(body)
            .go()
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let put_secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "same size as one PUT /upload: {put_secs:.1}s ({:.0} MiB/s); tus/PUT time ratio {:.2}",
            mib / put_secs,
            tus_secs / put_secs
        );
    }
}
