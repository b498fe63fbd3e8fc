//! Issue 19, a failing disk: a storage node keeps its store on a simulated disk
//! ([`fdfs_testkit::powercut::Disk`]) that starts failing with EIO. A write it fails is refused with
//! `disk_failed` and the gateway sends the upload elsewhere; the node's next heartbeat reports the store path
//! failed and the trackers assign it nothing until it can be written again. A file it cannot read is served
//! from a peer and its copy repaired. A disk gone slow (every call delayed) is reported the same way once its
//! write probe takes longer than `slow_disk_ms`.

use std::time::{Duration, Instant};

use fdfs_testkit::powercut::{Disk, Faults};
use fdfs_testkit::{
    content, eventually, metric_sum, metrics, stored_path, tempdir, Cluster, ClusterSpec,
    RequestExt,
};
use serde_json::Value;

/// A cluster of `spec` whose first member of group1 keeps its data on a simulated disk.
async fn with_disk_under_g1m1(spec: ClusterSpec) -> (Cluster, Disk) {
    let dir = tempdir(1 << 30);
    let state = dir.path().join("disk");
    let mount = dir.path().join("storage-g1-m1");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    let disk = Disk::mount(&state, &mount).expect("mount the simulated disk");
    (Cluster::start_in(spec, dir).await, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fails_writes_sends_uploads_elsewhere_and_is_reported_to_the_trackers() {
    let (mut c, disk) = with_disk_under_g1m1(ClusterSpec {
        groups: 2,
        members: 1,
        ..ClusterSpec::default()
    })
    .await;
    let gw = c.gateway_url();
    disk.inject(Faults {
        fail_changes: true,
        ..Faults::default()
    });
    // 20 uploads in a row, each by a client that waits 5 s at most: all stored, in group2.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        let v: Value = http
            .put(format!("{gw}/upload/e{i}.bin"))
            .body(content(600 + i, 10_000))
            .ok_json()
            .await;
        worst = worst.max(t0.elapsed());
        assert_eq!(v["group"], "group2", "upload {i}: {v}");
    }
    eprintln!("20 uploads with group1's disk failing: the slowest took {worst:?}");
    // The node itself refuses a write with a clear error.
    let g1 = &c.storage[0][0];
    let r = c
        .http
        .post(format!("{}/v1/upload?store_path=0", g1.internal_url()))
        .secret()
        .body(content(1, 1000))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (503, Some("disk_failed")),
        "{body}"
    );
    // The trackers were told: group1 takes nothing, and says so; its /health says why.
    let tracker = c.trackers[0].url();
    eventually(10, "the trackers to see the failed store path", || async {
        let r = c
            .http
            .get(format!("{tracker}/v1/assign?group=group1"))
            .secret()
            .send()
            .await
            .ok()?;
        (r.status() != 200).then_some(())
    })
    .await;
    let health = c
        .http
        .get(format!("{}/health", g1.url()))
        .send()
        .await
        .unwrap();
    let text = health.text().await.unwrap();
    assert!(text.contains("cannot write"), "{text}");
    // Healed (the disk was replaced): group1 takes uploads again.
    disk.inject(Faults::default());
    eventually(10, "group1 assigned again", || async {
        let r = c
            .http
            .get(format!("{tracker}/v1/assign?group=group1"))
            .secret()
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    c.kill9(0, 0);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_disk_cannot_read_is_served_from_a_peer_and_repaired() {
    let (mut c, disk) = with_disk_under_g1m1(ClusterSpec::group(2)).await;
    let mut files = Vec::new();
    for i in 0..5 {
        let up = c
            .upload_content(&format!("r{i}.bin"), 700 + i, 50_000)
            .await;
        c.wait_held(&up.id, Some(&content(700 + i, 50_000)), "both copies")
            .await;
        files.push((up.id, 700 + i));
    }
    let sick = &c.storage[0][0];
    disk.inject(Faults {
        fail_reads: true,
        ..Faults::default()
    });
    for (id, _) in &files {
        fdfs_testkit::evict_from_page_cache(&stored_path(&sick.dir, id));
    }
    // Every read of it on the failing node gets the right bytes (from its peer).
    for (id, n) in &files {
        let got = c.http.get(format!("{}/{id}", sick.url())).ok_bytes().await;
        assert_eq!(got, content(*n, 50_000), "{id}");
    }
    // And its copies are repaired (rewritten from the peer's), readable once the disk reads again.
    eventually(30, "the unreadable copies repaired", || async {
        let m = metrics(&c.http, &sick.url()).await;
        (metric_sum(&m, "fdfs_scrub_repaired_total") >= files.len() as f64).then_some(())
    })
    .await;
    disk.inject(Faults::default());
    for (id, n) in &files {
        fdfs_testkit::evict_from_page_cache(&stored_path(&sick.dir, id));
        let on_disk = std::fs::read(stored_path(&sick.dir, id)).unwrap();
        assert_eq!(on_disk, content(*n, 50_000), "{id} as repaired");
    }
    c.kill9(0, 0);
    c.kill9(0, 1);
    drop(disk);
}

/// Found by the nemesis (seed 1001): a disk that fails part-way through a download (its first pages still in
/// the page cache, the rest not) broke the answer after its head was sent: the client saw a cut connection.
/// Now the rest of the bytes come from a peer, so the client gets the whole file, and the copy is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fails_part_way_through_a_download_is_finished_from_a_peer() {
    let (mut c, disk) = with_disk_under_g1m1(ClusterSpec::group(2)).await;
    let len = 2 << 20;
    let up = c.upload_content("mid.bin", 900, len).await;
    c.wait_held(&up.id, Some(&content(900, len)), "both copies")
        .await;
    let sick = &c.storage[0][0];
    let path = stored_path(&sick.dir, &up.id);
    fdfs_testkit::evict_from_page_cache(&path);
    // The first 256 KiB back in the page cache (read through the mount), the rest only on the failing disk.
    {
        use std::io::Read as _;
        let mut head = vec![0u8; 256 << 10];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
    }
    disk.inject(Faults {
        fail_reads: true,
        ..Faults::default()
    });
    let got = c
        .http
        .get(format!("{}/{}", sick.url(), up.id))
        .ok_bytes()
        .await;
    assert!(got == content(900, len), "the whole file, right bytes");
    eventually(30, "the copy repaired", || async {
        let m = metrics(&c.http, &sick.url()).await;
        (metric_sum(&m, "fdfs_scrub_repaired_total") >= 1.0).then_some(())
    })
    .await;
    disk.inject(Faults::default());
    c.kill9(0, 0);
    c.kill9(0, 1);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_gone_slow_is_reported_to_the_trackers_and_uploads_go_elsewhere() {
    let (mut c, disk) = with_disk_under_g1m1(
        ClusterSpec {
            groups: 2,
            members: 1,
            ..ClusterSpec::default()
        }
        .storage(&["--slow-disk-ms", "400"]),
    )
    .await;
    let gw = c.gateway_url();
    // Every call on group1's disk now waits 200 ms: writing and syncing a small file takes most of a second.
    disk.inject(Faults {
        delay: Duration::from_millis(200),
        ..Faults::default()
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut ok, mut worst, mut on_slow) = (0, Duration::ZERO, 0);
    for i in 0..20 {
        let t0 = Instant::now();
        let r = http
            .put(format!("{gw}/upload/w{i}.bin"))
            .body(content(800 + i, 10_000))
            .send()
            .await;
        worst = worst.max(t0.elapsed());
        if let Ok(r) = r {
            if r.status().is_success() {
                ok += 1;
                let v: Value = r.json().await.unwrap();
                on_slow += usize::from(v["group"] == "group1");
            }
        }
    }
    eprintln!("20 uploads with group1's disk slow: {ok} stored ({on_slow} on it), the slowest took {worst:?}");
    assert_eq!(ok, 20, "uploads stored within 5 s each");
    let g1 = &c.storage[0][0];
    let tracker = c.trackers[0].url();
    let assigned_g1 = || async {
        let r = c
            .http
            .get(format!("{tracker}/v1/assign?group=group1"))
            .secret()
            .send()
            .await
            .ok()?;
        Some(r.status() == 200)
    };
    eventually(
        10,
        "the trackers to stop assigning the slow disk",
        || async { (!assigned_g1().await?).then_some(()) },
    )
    .await;
    let text = c
        .http
        .get(format!("{}/health", g1.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("too slow"), "{text}");
    disk.inject(Faults::default());
    eventually(
        10,
        "group1 assigned again once its disk is quick",
        || async { assigned_g1().await?.then_some(()) },
    )
    .await;
    c.kill9(0, 0);
    drop(disk);
}
