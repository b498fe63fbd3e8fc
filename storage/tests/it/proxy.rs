//! Read proxy: a member that lacks a file (not replicated yet) serves it from an active peer it learnt about
//! from the tracker's heartbeat replies. Real tracker (`fdfs_tracker::run`) and two real storage nodes.

use crate::common::{config, tracker_config};
use fdfs_common::{FileId, FileName, NameInfo};
use fdfs_storage::serve::NO_PROXY_HEADER;
use fdfs_testkit::inproc::{storage, tracker};
use fdfs_testkit::{eventually, RequestExt};
use reqwest::{header, Client, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_is_proxied_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(tracker_config()).await;
    let trackers = vec![t.addr.to_string()];
    let a = storage(config(trackers.clone(), &[dir.path().join("a")])).await;
    let b = storage(config(trackers, &[dir.path().join("b")])).await;
    let c = Client::new();

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
    let url_b = b.url(&format!("/{id}"));
    let direct = c.get(a.url(&format!("/{id}"))).go().await;
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
    let r = c.get(&url_b).header(header::RANGE, "bytes=5-").go().await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), "on a");
    // A proxied request is never proxied again; nobody has the other one.
    let gone = b.url("/g1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg");
    for r in [c.get(&url_b).header(NO_PROXY_HEADER, "1"), c.get(&gone)] {
        assert_eq!(r.go().await.status(), StatusCode::NOT_FOUND);
    }

    a.stop().await;
    b.stop().await;
    t.stop().await;
}
