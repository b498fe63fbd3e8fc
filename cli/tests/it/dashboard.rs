//! `GET /dashboard/stats` of a gateway in front of real storage processes: every member is listed, and the
//! upload and download counters each node reports (read from its own `/metrics`) count exactly what this test
//! sent. Separate processes, so no other test's traffic moves the counters (the page itself is tested in
//! `gateway/tests/it/dashboard.rs`).

use fdfs_testkit::{eventually, Cluster, ClusterSpec, RequestExt};
use serde_json::Value;

/// Sum of one counter over every node in a stats answer.
fn total(s: &Value, key: &str) -> u64 {
    s["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n[key].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_every_member_and_count_uploads_and_downloads() {
    let c = Cluster::start(ClusterSpec::group(2)).await;
    let url = format!("{}/dashboard/stats", c.gateway_url());
    let stats = || c.http.get(&url).ok_json::<Value>();
    let before = eventually(30, "both members in the stats", || async {
        let s = stats().await;
        let members = s["cluster"]["groups"][0]["members"].as_array()?.len();
        let nodes = s["nodes"].as_object()?.len();
        (members == 2 && nodes == 2).then_some(s)
    })
    .await;
    assert!(before["time_ms"].as_u64().unwrap() > 0);

    let up = c.upload("dash.txt", "dashboard counts this").await;
    let id = up["file_id"].as_str().unwrap();
    assert_eq!(c.download(id).await, b"dashboard counts this");

    let after = stats().await;
    assert_eq!(total(&after, "uploads"), total(&before, "uploads") + 1);
    assert_eq!(total(&after, "downloads"), total(&before, "downloads") + 1);
    assert!(after["time_ms"].as_u64() >= before["time_ms"].as_u64());
}
