//! Growing and operating a running cluster, against real processes (`fdfs tracker|storage|gateway`, see
//! `common/`): a group added while the cluster runs takes uploads without restarting anything; a tracker
//! killed with -9 and restarted rebuilds its view from heartbeats; the tracker's placement flags
//! (`--store-lookup fixed_group|most_free`, `--reserved-storage-space`) decide where gateway uploads land;
//! every process serves Prometheus metrics and request ids; internal routes cannot be reached through the
//! gateway and need the cluster secret on the nodes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fdfs_common::wire::{ClusterView, MemberState, CLUSTER_SECRET_HEADER};
use fdfs_testkit::{
    args, content, error_of, eventually, member_in, metric, metrics, Cluster, ClusterSpec, Node,
    RequestExt, SECRET, STATE_TIMEOUT,
};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Header carrying the request id.
const REQUEST_ID: &str = "x-request-id";

/// `groups` x `members` with one tracker, fast heartbeats and an upload acknowledged by one member (so
/// single-member groups take uploads), plus extra tracker flags.
fn spec(groups: usize, members: usize, tracker_args: &[&str]) -> ClusterSpec {
    ClusterSpec {
        groups,
        members,
        ..ClusterSpec::default()
            .storage(&["--write-quorum", "1"])
            .tracker(tracker_args)
    }
}

/// The group of an upload answer, checked against its file ID.
fn group_of(j: &Value) -> String {
    let g = j["group"].as_str().unwrap().to_owned();
    let id = j["file_id"].as_str().unwrap();
    assert_eq!(id.split('/').next(), Some(g.as_str()), "{j}");
    g
}

fn active(v: &ClusterView, n: &Node) -> bool {
    member_in(v, n).is_some_and(|m| m.state == MemberState::Active)
}

/// `fdfs_http_requests_total` samples whose line satisfies `keep`, by labels.
fn request_counts(text: &str, keep: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("fdfs_http_requests_total{") && keep(l))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_while_running_takes_uploads() {
    let mut c = Cluster::start(spec(1, 1, &[])).await;
    let before: Vec<(String, Option<u32>)> =
        c.all_nodes().map(|n| (n.name.clone(), n.pid())).collect();

    let mut files = Vec::new();
    for i in 0..3 {
        let u = c
            .upload_content(&format!("old{i}.bin"), i, 10_000 + i)
            .await;
        assert_eq!(group_of(&u.answer), "group1");
        files.push((u.id, u.body));
    }

    // A new storage process for a new group, pointed at the running tracker.
    let t0 = Instant::now();
    let m = c.add_storage(2, &[]);
    let v = c
        .wait_gateway("the new group3 member active", STATE_TIMEOUT, |c, v| {
            active(v, &c.storage[2][m]) && active(v, &c.storage[0][0])
        })
        .await;
    eprintln!("group3 active after {:?}", t0.elapsed());
    let names: Vec<&str> = v.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["group1", "group3"], "{v:#?}");
    // The gateway places small uploads with assignments it fetched in a batch up to ASSIGN_TTL (1 s) ago,
    // made before group3 existed: past that, every assignment it uses comes from the tracker's current view.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Round robin over the groups now includes group3.
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    for i in 3..9 {
        let u = c
            .upload_content(&format!("new{i}.bin"), i, 20_000 + i)
            .await;
        *per_group.entry(group_of(&u.answer)).or_default() += 1;
        files.push((u.id, u.body));
    }
    assert!(
        per_group.len() == 2 && per_group.values().all(|&n| n >= 2),
        "6 round-robin uploads over group1 and group3: {per_group:?}"
    );

    // Every file, old and new, downloads through the gateway; group3's files from the new node itself too.
    for (id, body) in &files {
        assert_eq!(&c.download(id).await, body, "{id}");
        if id.starts_with("group3/") {
            let on_new = c.storage[2][m].url();
            let got = c.http.get(format!("{on_new}/{id}")).ok_bytes().await;
            assert_eq!(&got, body, "{id} on the new node");
        }
    }

    // Nothing was restarted: the same processes, still running.
    for (name, pid) in &before {
        let n = c.all_nodes_mut().find(|n| &n.name == name).unwrap();
        assert!(n.is_running(), "{name} exited");
        assert_eq!(n.pid(), *pid, "{name} was restarted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tracker_rebuilds_its_view_from_heartbeats() {
    let mut c = Cluster::start(spec(2, 1, &[])).await;
    let mut files = Vec::new();
    for i in 0..2 {
        let u = c.upload_content(&format!("before{i}.bin"), i, 5_000).await;
        files.push((u.id, u.body));
    }

    c.trackers[0].kill9();
    // Without a tracker the gateway answers a clear JSON error rather than hanging, once the assignments it
    // fetched in a batch (used for at most ASSIGN_TTL, 1 s) are spent.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = c.http.put(format!("{}/upload/down.bin", c.gateway_url()));
    let r = r.body(content(9, 100)).timeout(Duration::from_secs(30));
    let (status, code) = r.error().await;
    assert_eq!(status, 503, "upload without a tracker: {code}");

    // Same port, no state: the view comes back from the members' next heartbeats.
    c.trackers[0].restart();
    let t0 = Instant::now();
    let v = c
        .wait_gateway(
            "every member active after the tracker restart",
            STATE_TIMEOUT,
            |c, v| c.all_storage().all(|n| active(v, n)),
        )
        .await;
    let took = t0.elapsed();
    eprintln!("view rebuilt {took:?} after the restart (heartbeat every 200 ms)");
    assert!(
        took < Duration::from_secs(5),
        "view took {took:?} to rebuild"
    );
    assert_eq!(v.groups.len(), 2, "{v:#?}");
    assert!(v.trackers.iter().all(|t| t.up), "{v:#?}");
    for g in &v.groups {
        assert!(g.free_bytes > 0 && g.total_bytes > 0, "{g:#?}");
    }

    // Uploads reach both groups again; old and new files download.
    let mut groups = std::collections::BTreeSet::new();
    for i in 2..4 {
        let u = c.upload_content(&format!("after{i}.bin"), i, 7_000).await;
        groups.insert(group_of(&u.answer));
        files.push((u.id, u.body));
    }
    assert_eq!(groups.len(), 2, "{groups:?}");
    for (id, body) in &files {
        assert_eq!(&c.download(id).await, body, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_group_sends_every_upload_to_that_group() {
    let c = Cluster::start(spec(
        2,
        1,
        &["--store-lookup", "fixed_group", "--store-group", "group2"],
    ))
    .await;
    for i in 0..6 {
        let body = content(i, 3_000);
        let j = c.upload(&format!("f{i}.bin"), body.clone()).await;
        assert_eq!(group_of(&j), "group2", "{j}");
        assert_eq!(c.download(j["file_id"].as_str().unwrap()).await, body);
    }
    // A group named by the client still wins over the fixed one.
    let form = Form::new()
        .text("group", "group1")
        .part("file", Part::bytes(content(7, 100)).file_name("named.bin"));
    let r = c.http.post(format!("{}/upload", c.gateway_url()));
    let j: Value = r.multipart(form).ok_json().await;
    assert_eq!(group_of(&j), "group1", "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_free_picks_the_group_with_the_most_free_space() {
    let mut c = Cluster::start(spec(1, 1, &["--store-lookup", "most_free"])).await;
    // All nodes share one filesystem; a group's free space is the sum over its member's store paths, so a
    // member with two store paths on it reports about twice the free space of group1's single path.
    let second = c.dir.path().join("group2-second-path");
    let m = c.add_storage(1, &args(&["--store-path", second.to_str().unwrap()]));
    let v = c
        .wait_tracker(0, "group2 active", STATE_TIMEOUT, |c, v| {
            active(v, &c.storage[1][m]) && v.groups.len() == 2
        })
        .await;
    let free: BTreeMap<&str, u64> = v
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.free_bytes))
        .collect();
    let g2 = member_in(&v, &c.storage[1][m]).unwrap();
    assert_eq!(g2.store_paths.len(), 2, "{g2:#?}");
    // The tracker's own numbers say group2 has the most free space (by far: about a whole filesystem).
    assert!(
        free["group2"] > free["group1"] + free["group1"] / 2,
        "{free:?}"
    );
    for i in 0..6 {
        let body = content(i, 4_000);
        let j = c.upload(&format!("m{i}.bin"), body.clone()).await;
        assert_eq!(group_of(&j), "group2", "{j} with free space {free:?}");
        assert_eq!(c.download(j["file_id"].as_str().unwrap()).await, body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_left_answers_507_insufficient_storage() {
    let c = Cluster::start(spec(1, 1, &["--reserved-storage-space", "100%"])).await;
    let gw = c.gateway_url();
    let r = c.http.put(format!("{gw}/upload/full.bin"));
    let r = r.body(content(1, 1_000)).go().await;
    assert!(r.headers().contains_key(REQUEST_ID));
    let full = (507, "insufficient_storage".to_owned());
    assert_eq!(error_of(r).await, full, "raw upload with 100% reserved");
    let form = Form::new().part("file", Part::bytes(content(2, 1_000)).file_name("full.jpg"));
    let r = c.http.post(format!("{gw}/upload")).multipart(form);
    assert_eq!(r.error().await, full, "multipart upload with 100% reserved");

    // The tracker still lists the member as active: it is full, not gone.
    let v = c.view().await;
    assert!(active(&v, &c.storage[0][0]), "{v:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_metrics_and_request_ids() {
    // Two members with a write quorum of two: every upload is pushed to the peer (replication metrics).
    let c = Cluster::start(ClusterSpec::group(2)).await;
    // Each member learns its peer is active from a heartbeat reply, a beat after the tracker.
    c.wait_peers_active().await;
    // Uploads (one carrying our own request id), then downloads through the gateway's redirect.
    let traced = "scale-out-trace-7f3a";
    let r = c.http.put(format!("{}/upload/traced.bin", c.gateway_url()));
    let r = r
        .header(REQUEST_ID, traced)
        .body(content(0, 2_000))
        .go()
        .await;
    assert_eq!(r.headers()[REQUEST_ID], traced);
    let first: Value = fdfs_testkit::json_ok(r).await;
    let mut ids = vec![first["file_id"].as_str().unwrap().to_owned()];
    for i in 1..5 {
        let j = c.upload(&format!("m{i}.bin"), content(i, 2_000 + i)).await;
        ids.push(j["file_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        c.download(id).await;
    }
    // The gateway passed our id on: the member that stored the file logged it with the upload.
    eventually(STATE_TIMEOUT, "the traced id in a storage log", || async {
        c.all_storage()
            .any(|n| {
                n.log_tail(10_000)
                    .lines()
                    .any(|l| l.contains(traced) && l.contains("stored"))
            })
            .then_some(())
    })
    .await;

    // Tracker.
    let t = metrics(&c.http, &c.trackers[0].url()).await;
    check_http_metrics(&t, "tracker");
    // Assignments come one at a time or in batches (small uploads through the gateway).
    assert!(t.contains("route=\"/v1/assign"), "{t}");
    assert!(t.contains("route=\"/v1/heartbeat\""), "{t}");

    // Gateway.
    let g = metrics(&c.http, &c.gateway_url()).await;
    check_http_metrics(&g, "gateway");
    assert!(g.contains("route=\"/upload/{filename}\""), "{g}");

    // Storage: space gauges and replication metrics on every member.
    for n in c.all_storage() {
        let base = n.url();
        let what = format!("{} replication metrics", n.name);
        let s = eventually(STATE_TIMEOUT, &what, || async {
            let s = metrics(&c.http, &base).await;
            s.lines().any(|l| l.starts_with("fdfs_sync_")).then_some(s)
        })
        .await;
        check_http_metrics(&s, "storage");
        assert!(s.contains("route=\"/v1/upload\""), "{}: {s}", n.name);
        let free = metric(&s, "fdfs_store_path_free_bytes{path=\"M00\"}")
            .unwrap_or_else(|| panic!("{}: no free-space gauge: {s}", n.name));
        assert!(free > 0.0, "{}: {free}", n.name);
        assert!(
            s.lines().any(|l| l.starts_with("fdfs_sync_quorum_total")
                || l.starts_with("fdfs_sync_replicas_received_total")),
            "{}: no quorum push nor received replica counted: {s}",
            n.name
        );
    }

    // Request ids on every process: generated when absent, echoed when sent, on success and on errors.
    for n in c.all_nodes() {
        for path in ["/health", "/metrics", "/cluster", "/no/such/thing"] {
            let url = format!("{}{path}", n.url());
            let r = c.http.get(&url).go().await;
            let id = r.headers().get(REQUEST_ID).unwrap_or_else(|| {
                panic!("{} {path}: {} without {REQUEST_ID}", n.name, r.status())
            });
            assert!(!id.is_empty(), "{} {path}", n.name);
            let sent = format!("client-{}-{}", n.name, path.len());
            let r = c.http.get(&url).header(REQUEST_ID, &sent).go().await;
            assert_eq!(r.headers()[REQUEST_ID], sent.as_str(), "{} {path}", n.name);
        }
    }
    // The gateway's redirect and the storage node's download answer carry one too.
    let r = c
        .http
        .get(format!("{}/{}", c.gateway_url(), ids[0]))
        .go()
        .await;
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(r.headers().contains_key(REQUEST_ID));
    let r = c.http.get(first["url"].as_str().unwrap()).go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key(REQUEST_ID));
}

/// Request count and latency histogram, labelled with this process's role only.
fn check_http_metrics(text: &str, role: &str) {
    let counts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("fdfs_http_requests_total{"))
        .collect();
    assert!(
        !counts.is_empty(),
        "{role}: no fdfs_http_requests_total: {text}"
    );
    for l in &counts {
        assert!(l.contains(&format!("role=\"{role}\"")), "{role}: {l}");
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("fdfs_http_request_duration_seconds_bucket{")
                && l.contains(&format!("role=\"{role}\""))
        ),
        "{role}: no latency histogram: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_are_closed_to_users() {
    // An explicit secret on every process (over the harness's environment one).
    let secret = "scale-out-explicit-secret";
    let with_secret = |mut a: Vec<String>| {
        a.extend(args(&["--cluster-secret", secret]));
        a
    };
    let base = spec(1, 1, &[]);
    let c = Cluster::start(ClusterSpec {
        storage_args: with_secret(base.storage_args.clone()),
        tracker_args: with_secret(base.tracker_args.clone()),
        gateway_args: with_secret(base.gateway_args.clone()),
        ..base
    })
    .await;
    let j = c.upload("a.jpg", content(1, 1_000)).await;
    let id = j["file_id"].as_str().unwrap().to_owned();
    let gw = c.gateway_url();
    let node = c.storage[0][0].url();
    let tracker = c.trackers[0].url();

    // Every request the nodes counted so far, except the scrapes and the heartbeats, which go on.
    let node_counts = async || {
        request_counts(&metrics(&c.http, &node).await, |l| {
            !l.contains("route=\"/metrics\"")
        })
    };
    let tracker_counts = async || {
        request_counts(&metrics(&c.http, &tracker).await, |l| {
            let scrape = l.contains("route=\"/metrics\"");
            let heartbeat = l.contains("route=\"/v1/heartbeat\"") && l.contains("status=\"200\"");
            !scrape && !heartbeat
        })
    };
    let node_before = node_counts().await;
    let tracker_before = tracker_counts().await;

    // Internal routes named on the gateway, with and without the secret: 4xx JSON from the gateway itself.
    let hb = serde_json::json!({"node_id": 1, "group": "group1", "addr": "127.0.0.1:1",
        "public_url": "http://127.0.0.1:1", "syncing": false, "store_paths": [], "version": "x"});
    // The internal routes of storage nodes and of trackers; the gateway has none of them (nor a few more).
    let node_routes: Vec<(Method, String)> = vec![
        (Method::POST, "/v1/upload?store_path=0&ext=jpg".into()),
        (Method::GET, format!("/v1/files/{id}")),
        (Method::DELETE, format!("/v1/files/{id}")),
        (Method::GET, format!("/v1/meta/{id}")),
        (Method::GET, format!("/v1/replica/{id}")),
        (Method::PUT, format!("/v1/replica/{id}")),
        (Method::GET, "/v1/sync/files?after=0&limit=10".into()),
        (Method::GET, "/v1/sync/status".into()),
        (Method::POST, "/v1/reindex".into()),
    ];
    let tracker_routes: Vec<(Method, String)> = vec![
        (Method::POST, "/v1/heartbeat".into()),
        (Method::GET, "/v1/assign?size=10".into()),
        (Method::GET, format!("/v1/locate/{id}")),
    ];
    let internal: Vec<(Method, String)> = node_routes
        .iter()
        .chain(&tracker_routes)
        .cloned()
        .chain([
            (Method::GET, "/v1/upload".into()),
            (Method::HEAD, format!("/v1/replica/{id}")),
            (Method::DELETE, format!("/v1/replica/{id}")),
            (Method::GET, format!("/v1/replica/meta/{id}")),
        ])
        .collect();
    // An internal request as a node would send it (`secret` in the header when given).
    let internal_request = |base: &str, method: &Method, path: &str, secret: Option<&str>| {
        let mut rb = c.http.request(method.clone(), format!("{base}{path}"));
        if let Some(s) = secret {
            rb = rb.header(CLUSTER_SECRET_HEADER, s);
        }
        if path.contains("heartbeat") {
            rb.json(&hb)
        } else if *method == Method::POST || *method == Method::PUT {
            rb.body("not for you")
        } else {
            rb
        }
    };
    for (method, path) in &internal {
        for sent in [None, Some(secret)] {
            let what = format!("gateway {method} {path} (secret sent: {sent:?})");
            let r = internal_request(&gw, method, path, sent).go().await;
            let status = r.status();
            assert!(status.is_client_error(), "{what}: {status}");
            if *method != Method::HEAD {
                error_of(r).await;
            }
        }
    }
    // None of them reached a node: the storage node and the tracker counted no new request.
    assert_eq!(
        node_counts().await,
        node_before,
        "a gateway request reached the storage node"
    );
    assert_eq!(
        tracker_counts().await,
        tracker_before,
        "a gateway request reached the tracker"
    );
    // The file is untouched.
    assert_eq!(c.download(&id).await, content(1, 1_000));

    // On the nodes themselves: 401 without the secret or with a wrong one.
    for (base, routes) in [(&node, &node_routes), (&tracker, &tracker_routes)] {
        for (method, path) in routes {
            for wrong in [None, Some("wrong-secret"), Some(SECRET)] {
                let what = format!("{base} {method} {path} (secret {wrong:?})");
                let (status, _) = internal_request(base, method, path, wrong).error().await;
                assert_eq!(status, 401, "{what}");
            }
        }
    }
    // With the right secret the same node answers (the secret is the one set on the command line).
    let r = internal_request(
        &node,
        &Method::GET,
        &format!("/v1/files/{id}"),
        Some(secret),
    );
    assert_eq!(r.go().await.status(), StatusCode::OK);
    assert_eq!(c.download(&id).await, content(1, 1_000));
}
