//! The storage tests' harness: configs of storage nodes and trackers with the test cluster's secret (run in this
//! process by [`fdfs_testkit::inproc`]), and the internal upload route the nodes are fed by.

use std::path::PathBuf;

use fdfs_common::config::Size;
use fdfs_common::wire::UploadResult;
use fdfs_testkit::{RequestExt, SECRET};

/// A storage node of group `g1` with `store_paths`, reporting to `trackers` (nobody need listen there) every
/// 100 ms, with the test secret, files up to 1 MiB, a write quorum of 1.
pub fn config(trackers: Vec<String>, store_paths: &[PathBuf]) -> fdfs_storage::Config {
    fdfs_storage::Config {
        group: "g1".parse().unwrap(),
        trackers,
        store_paths: store_paths.to_vec(),
        heartbeat_interval_ms: 100,
        cluster_secret: Some(SECRET.into()),
        max_file_size: Size::Bytes(1 << 20),
        write_quorum: 1,
        ..fdfs_storage::Config::default()
    }
}

/// A tracker config with the test secret.
pub fn tracker_config() -> fdfs_tracker::Config {
    fdfs_tracker::Config {
        cluster_secret: Some(SECRET.into()),
        ..fdfs_tracker::Config::default()
    }
}

/// `POST {base}/v1/upload?{query}` with the cluster secret.
pub async fn upload(
    c: &reqwest::Client,
    base: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    c.post(format!("{base}/v1/upload?{query}"))
        .secret()
        .body(body)
        .go()
        .await
}

/// [`upload`], asserting 200; the result.
pub async fn upload_ok(
    c: &reqwest::Client,
    base: &str,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> UploadResult {
    fdfs_testkit::json_ok(upload(c, base, query, body).await).await
}
