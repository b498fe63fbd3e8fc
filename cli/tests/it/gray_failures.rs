//! Issue 19, gray failures: a frozen process (SIGSTOP: a hung disk, a stalled VM, a long pause) still accepts
//! TCP connections, so it still gets work, and every request to it used to wait for the whole request timeout
//! (30 s). Here the trackers' heartbeat timeout is a minute (they take a frozen member for alive all along), so
//! only the gateway's own watch can help: a frozen storage node is given up after its `/livez` stays silent
//! too, and the upload goes to the other group; the trackers, told by the gateway, probe it and stop handing
//! it out until it heartbeats again; a frozen tracker is given up for the other one. Latencies are
//! printed, not asserted; the clients' own bound (15 s, half the old wait) only catches the old behaviour.

use std::time::{Duration, Instant};

use fdfs_testkit::{content, metric_sum, metrics, Cluster, ClusterSpec, RequestExt};
use serde_json::Value;

/// What a client would wait at most: half the request timeout the gateway used to wait for a frozen node.
const CLIENT_BOUND: Duration = Duration::from_secs(15);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_BOUND)
        .build()
        .unwrap()
}

/// Two groups of one member; the trackers take every member for alive (a minute of heartbeat timeout), so only
/// the gateway's own watch notices a frozen one.
fn two_groups_of_one() -> ClusterSpec {
    ClusterSpec {
        groups: 2,
        members: 1,
        tracker_args: fdfs_testkit::args(&["--heartbeat-timeout-ms", "60000"]),
        ..ClusterSpec::default()
    }
}

/// PUT `body` through the gateway; the answer and how long it took.
async fn timed_upload(
    http: &reqwest::Client,
    gw: &str,
    name: &str,
    body: Vec<u8>,
) -> (Value, Duration) {
    let t0 = Instant::now();
    let r = http.put(format!("{gw}/upload/{name}")).body(body);
    let v: Value = r.ok_json().await;
    (v, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_storage_node_or_tracker_costs_seconds_not_the_request_timeout() {
    let c = Cluster::start(ClusterSpec {
        groups: 2,
        members: 1,
        trackers: 2,
        tracker_args: fdfs_testkit::args(&["--heartbeat-timeout-ms", "60000"]),
        ..ClusterSpec::default()
    })
    .await;
    let gw = c.gateway_url();
    let http = client();
    let follow = reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_BOUND)
        .build()
        .unwrap();

    // A frozen member of group2: 20 uploads in a row all succeed, in group1 once the gateway has seen it.
    let frozen = &c.storage[1][0];
    frozen.freeze();
    let mut worst = Duration::ZERO;
    let mut stored = Vec::new();
    for i in 0..20 {
        let (v, took) = timed_upload(&http, &gw, &format!("f{i}.bin"), content(i, 10_000)).await;
        worst = worst.max(took);
        assert_eq!(v["group"], "group1", "upload {i}: {v}");
        stored.push((v["file_id"].as_str().unwrap().to_owned(), i));
    }
    eprintln!("20 uploads with a frozen member of group2: the slowest took {worst:?}");
    let text = metrics(&c.http, &gw).await;
    assert!(
        metric_sum(&text, "fdfs_gateway_unresponsive_total") >= 1.0,
        "the gateway gave up on the frozen node: {text}"
    );
    // The gateway told the trackers, which probed the node themselves: no tracker hands it out any more,
    // although their heartbeat timeout (a minute) has not run out; once thawed, its next heartbeat clears that.
    let assign = |t: usize| {
        let url = format!("{}/v1/assign?group=group2", c.trackers[t].url());
        let http = c.http.clone();
        async move {
            http.get(url)
                .secret()
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for t in 0..2 {
        fdfs_testkit::eventually(
            10,
            "the trackers to stop assigning the frozen node",
            || async { (assign(t).await == 503).then_some(()) },
        )
        .await;
    }
    frozen.thaw();
    for t in 0..2 {
        fdfs_testkit::eventually(10, "the thawed node assigned again", || async {
            (assign(t).await == 200).then_some(())
        })
        .await;
    }

    // A frozen tracker (the one the gateway asks first): uploads and downloads go through the other one.
    c.trackers[0].freeze();
    let mut worst = Duration::ZERO;
    for (i, (id, n)) in stored.iter().take(10).enumerate() {
        let (v, took) =
            timed_upload(&http, &gw, &format!("t{i}.bin"), content(100 + i, 10_000)).await;
        worst = worst.max(took);
        assert!(v["file_id"].is_string(), "{v}");
        let t0 = Instant::now();
        let got = follow.get(format!("{gw}/{id}")).ok_bytes().await;
        worst = worst.max(t0.elapsed());
        assert_eq!(got, content(*n, 10_000));
    }
    eprintln!("10 uploads and 10 downloads with tracker 1 frozen: the slowest took {worst:?}");
    c.trackers[0].thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_taken_offline_by_the_trackers_before_their_heartbeat_timeout() {
    // One group of two, write quorum 2; a peer transfer that stalls for 2 s times out.
    let c = Cluster::start(ClusterSpec {
        tracker_args: fdfs_testkit::args(&["--heartbeat-timeout-ms", "60000"]),
        ..ClusterSpec::group(2).storage(&["--peer-stall-timeout-ms", "2000"])
    })
    .await;
    let gw = c.gateway_url();
    let (live, frozen) = (&c.storage[0][0], &c.storage[0][1]);
    frozen.freeze();
    // Uploads reach the live member (the gateway gives up on the frozen one); its replica to the frozen peer
    // times out, it tells the trackers, they probe the peer and list it offline: the quorum is then capped by
    // the live member, and uploads succeed with one copy (replication brings the second once it thaws).
    let http = client();
    let first = Instant::now();
    let stored: Value = fdfs_testkit::eventually(30, "an upload with the peer frozen", || async {
        let r = http
            .put(format!("{gw}/upload/g.bin"))
            .body(content(1, 5000));
        let v: Value = r.try_json().await.ok()?;
        (v["replicas"] == 1).then_some(v)
    })
    .await;
    eprintln!(
        "first upload acknowledged {:?} after the freeze",
        first.elapsed()
    );
    let view = c.view().await;
    assert_eq!(
        c.state_in(&view, frozen),
        Some(fdfs_common::wire::MemberState::Offline),
        "the frozen peer is offline although the heartbeat timeout is a minute"
    );
    assert_eq!(
        c.state_in(&view, live),
        Some(fdfs_common::wire::MemberState::Active)
    );
    frozen.thaw();
    // Thawed: it heartbeats, is active again, and gets the file through replication.
    let id = stored["file_id"].as_str().unwrap().to_owned();
    c.wait_held(
        &id,
        Some(&content(1, 5000)),
        "the file on both members once thawed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_not_redirected_to_a_frozen_member() {
    // The trackers' heartbeat timeout is a minute: they list the frozen member as active throughout, and the
    // gateway, which never talks to the node a redirect sends the client to, must find out by itself.
    let c = Cluster::start(ClusterSpec {
        tracker_args: fdfs_testkit::args(&["--heartbeat-timeout-ms", "60000"]),
        ..ClusterSpec::group(2)
    })
    .await;
    let gw = c.gateway_url();
    let mut stored = Vec::new();
    for i in 0..20 {
        let v = c
            .upload(&format!("d{i}.bin"), content(300 + i, 10_000))
            .await;
        let id = v["file_id"].as_str().unwrap().to_owned();
        c.wait_held(&id, Some(&content(300 + i, 10_000)), "both copies")
            .await;
        stored.push((id, 300 + i));
    }
    // Freeze the member the tracker names first for the files, the one the gateway would redirect to (asked
    // of the tracker, not the gateway, which would check the node's liveness on the way).
    let url = format!("{}/v1/locate/{}", c.trackers[0].url(), stored[0].0);
    let loc: Value = c.http.get(url).secret().ok_json().await;
    let first = loc["members"][0]["addr"].as_str().unwrap().to_owned();
    let frozen = c
        .all_storage()
        .find(|n| {
            n.url() == format!("http://{first}") || n.internal_url() == format!("http://{first}")
        })
        .unwrap_or_else(|| panic!("{loc} names no member first"));
    frozen.freeze();

    // 20 downloads in a row, each by a client that gives up after 5 s: all get their bytes from the other one.
    let follow = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut ok, mut worst) = (0, Duration::ZERO);
    for (id, n) in &stored {
        let t0 = Instant::now();
        let got = follow.get(format!("{gw}/{id}")).send().await;
        let body = match got {
            Ok(r) if r.status().is_success() => r.bytes().await.ok(),
            _ => None,
        };
        worst = worst.max(t0.elapsed());
        ok += usize::from(body.as_deref() == Some(&content(*n, 10_000)[..]));
    }
    eprintln!(
        "20 downloads with a frozen member: {ok} got their bytes, the slowest took {worst:?}"
    );
    assert_eq!(ok, 20, "downloads that got their bytes");
    let text = metrics(&c.http, &gw).await;
    assert!(
        metric_sum(&text, "fdfs_gateway_unresponsive_total") >= 1.0,
        "the gateway found the frozen node by itself: {text}"
    );
    frozen.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_keeps_stalling_costs_seconds_not_the_request_timeout() {
    // Two groups of one; the trackers take every member for alive (a minute of heartbeat timeout).
    let c = Cluster::start(two_groups_of_one()).await;
    let gw = c.gateway_url();
    let slow = &c.storage[1][0];
    let on_slow: Vec<(String, usize)> = {
        let mut v = Vec::new();
        let mut i = 0;
        while v.len() < 5 {
            i += 1;
            let r = c
                .upload(&format!("s{i}.bin"), content(400 + i, 10_000))
                .await;
            if r["group"] == "group2" {
                v.push((r["file_id"].as_str().unwrap().to_owned(), 400 + i));
            }
        }
        v
    };
    // The node stalls again and again (a thrashing VM, a disk that hangs for seconds): stopped 1.5 s out of
    // every 2 s.
    let pid = slow.pid().expect("running");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cycler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fdfs_testkit::signal(pid, fdfs_common::sys::Signal::STOP);
                std::thread::sleep(Duration::from_millis(1500));
                fdfs_testkit::signal(pid, fdfs_common::sys::Signal::CONT);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut ok, mut worst) = (0, Duration::ZERO);
    for i in 0..20 {
        let t0 = Instant::now();
        let r = http
            .put(format!("{gw}/upload/c{i}.bin"))
            .body(content(500 + i, 10_000))
            .send()
            .await;
        worst = worst.max(t0.elapsed());
        ok += usize::from(r.is_ok_and(|r| r.status().is_success()));
    }
    // Downloads of files only the stalling node holds: slower, but each within the bound.
    let (mut got, mut worst_get) = (0, Duration::ZERO);
    for (id, n) in &on_slow {
        let t0 = Instant::now();
        let r = http.get(format!("{gw}/{id}")).send().await;
        let body = match r {
            Ok(r) if r.status().is_success() => r.bytes().await.ok(),
            _ => None,
        };
        worst_get = worst_get.max(t0.elapsed());
        got += usize::from(body.as_deref() == Some(&content(*n, 10_000)[..]));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    cycler.join().unwrap();
    fdfs_testkit::signal(pid, fdfs_common::sys::Signal::CONT);
    eprintln!(
        "a stalling node: {ok} of 20 uploads succeeded (slowest {worst:?}); {got} of {} downloads from it \
         (slowest {worst_get:?})",
        on_slow.len()
    );
    assert_eq!(ok, 20, "uploads that succeeded within 5 s");
    assert_eq!(
        got,
        on_slow.len(),
        "downloads that got their bytes within 5 s"
    );
}

/// The files a storage node holds, by its replication listing.
async fn files_on(c: &Cluster, node: &fdfs_testkit::Node) -> Vec<String> {
    let url = format!("{}/v1/sync/files?limit=1000", node.internal_url());
    let page: Value = c.http.get(url).secret().ok_json().await;
    page["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Orphans (issue 19 item 1): an upload the gateway gave up on a frozen node (its body whole in the node's socket
/// buffer) and sent to the other group. Once thawed, the node reads the request and would store the file under
/// an ID no client was ever told. The gateway tells the node it abandoned the attempt; the node refuses to
/// store it, or removes what it stored, so nothing is left on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_given_up_on_a_frozen_node_leaves_no_file_there() {
    let c = Cluster::start(two_groups_of_one()).await;
    let gw = c.gateway_url();
    let http = client();
    let frozen = &c.storage[1][0];
    frozen.freeze();
    let mut told = Vec::new();
    for i in 0..6 {
        let (v, _) = timed_upload(&http, &gw, &format!("o{i}.bin"), content(i, 4_000)).await;
        assert_eq!(v["group"], "group1", "upload {i}: {v}");
        told.push(v["file_id"].as_str().unwrap().to_owned());
    }
    let text = metrics(&c.http, &gw).await;
    let given_up = metric_sum(&text, "fdfs_gateway_unresponsive_total");
    assert!(
        given_up >= 1.0,
        "the gateway gave up on the frozen node: {text}"
    );
    frozen.thaw();
    // The node reads what waited in its socket; give it time to store it (and to be told to drop it).
    c.wait_state(1, 0, fdfs_common::wire::MemberState::Active)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = fdfs_testkit::eventually(15, "no orphan left on the thawed node", || async {
        let files = files_on(&c, frozen).await;
        files.is_empty().then_some(files)
    })
    .await;
    assert!(left.is_empty());
    // The abandoned attempts left nothing on group1 either: exactly the files clients were told.
    let mut on_group1 = files_on(&c, &c.storage[0][0]).await;
    on_group1.sort();
    told.sort();
    assert_eq!(on_group1, told);
}
