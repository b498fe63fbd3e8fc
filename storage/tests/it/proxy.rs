//! Read proxy: a member that lacks a file (not replicated yet) serves it from an active peer it learnt about
//! from the tracker's heartbeat replies. Real tracker (`fdfs_tracker::run`) and two real storage nodes.

use std::path::PathBuf;
use std::time::Duration;

use fdfs_common::config::Size;
use fdfs_common::{FileId, FileName, NameInfo};
use fdfs_storage::serve::NO_PROXY_HEADER;
use fdfs_testkit::{eventually, Server};
use reqwest::{header, Client, StatusCode};

const SECRET: &str = "proxy-secret";

async fn tracker() -> Server {
    let config = fdfs_tracker::Config {
        cluster_secret: Some(SECRET.into()),
        ..Default::default()
    };
    Server::start(|l, stop| fdfs_tracker::run(l, config, stop)).await
}

async fn storage(tracker: &Server, root: PathBuf) -> Server {
    let config = fdfs_storage::Config {
        group: "g1".parse().unwrap(),
        trackers: vec![tracker.addr.to_string()],
        store_paths: vec![root],
        heartbeat_interval_ms: 100,
        cluster_secret: Some(SECRET.into()),
        max_file_size: Size::Bytes(1 << 20),
        write_quorum: 1,
        ..Default::default()
    };
    Server::start(|l, stop| fdfs_storage::run(l, config, stop)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_is_proxied_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker().await;
    let a = storage(&t, dir.path().join("a")).await;
    let b = storage(&t, dir.path().join("b")).await;
    let c = Client::new();
    for node in [&a, &b] {
        node.wait_healthy(Duration::from_secs(300)).await;
    }

    // A file only `a` has: written straight into a's store path (not through its API), so no replication
    // mechanism knows about it and `b` can only serve it by proxying.
    let content = b"only on a";
    let info = NameInfo {
        source_id: 1,
        created: 1_700_000_000,
        size: content.len() as u64,
        crc32: crc32fast::hash(content),
    };
    let id = FileId {
        group: "g1".parse().unwrap(),
        store_path: 0,
        dir1: 1,
        dir2: 2,
        name: FileName::generate(&info, Some("txt")).unwrap(),
    };
    let on_a = dir.path().join("a").join(id.relative_path());
    std::fs::create_dir_all(on_a.parent().unwrap()).unwrap();
    std::fs::write(on_a, content).unwrap();
    let on_b = dir.path().join("b").join(id.relative_path());
    let url_a = format!("http://{}/{id}", a.addr);
    let url_b = format!("http://{}/{id}", b.addr);
    let direct = c.get(&url_a).send().await.unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    let etag = direct.headers()[header::ETAG].clone();
    // b answers once it has heard of a from the tracker.
    let r = eventually(300, "b proxies the read", || async {
        let r = c.get(&url_b).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    assert_eq!(r.headers()[header::ETAG], etag);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(r.bytes().await.unwrap(), "only on a");
    assert!(!on_b.exists(), "proxying does not store the file");
    let r = c
        .get(&url_b)
        .header(header::RANGE, "bytes=5-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), "on a");
    // A proxied request is never proxied again.
    let r = c
        .get(&url_b)
        .header(NO_PROXY_HEADER, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nobody has it: 404.
    let gone = format!(
        "http://{}/g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        b.addr
    );
    assert_eq!(
        c.get(&gone).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    a.stop().await;
    b.stop().await;
    t.stop().await;
}
