//! Uploads refused while a failure is being detected (issue 13 item 9).
//!
//! - A member killed without warning: until the trackers notice, they still assign uploads to it. The node
//!   refuses the connection before any byte of the body goes out, so the gateway asks the tracker again and
//!   sends the same unread body elsewhere: clients see no error while another member has room.
//! - A member that cannot reach its write quorum (its peer is frozen: transfers time out, nothing is refused)
//!   answers 503 `quorum_unreachable` before reading the body, which the gateway treats the same way (the
//!   gateway side under a real partition is in `partition.rs`).

use std::time::Duration;

use fdfs_common::wire::MemberState;
use fdfs_testkit::{args, content, eventually, Cluster, ClusterSpec, RequestExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_through_the_gateway_go_elsewhere_while_a_killed_member_is_not_yet_offline() {
    // A long heartbeat timeout: the tracker keeps offering the dead member for the whole run.
    let spec = ClusterSpec {
        tracker_args: args(&["--heartbeat-timeout-ms", "600000"]),
        ..ClusterSpec::default()
    };
    let mut c = Cluster::start(spec).await;
    c.kill9(0, 1);
    let mut groups = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..50 {
        let body = content(i, 4096 + i);
        let up = c.upload(&format!("f{i}.bin"), body.clone()).await;
        *groups
            .entry(up["group"].as_str().unwrap().to_owned())
            .or_default() += 1;
        // Every acknowledged file reads back with its bytes.
        let url = up["url"].as_str().unwrap();
        assert_eq!(c.http.get(url).ok_bytes().await, body, "{url}");
    }
    // The dead member was still listed the whole time, and uploads kept reaching both groups.
    let view = c.view().await;
    let dead = &view.groups[0].members;
    assert!(
        dead.iter().all(|m| m.state != MemberState::Offline),
        "the tracker noticed the kill; the test proves nothing: {view:?}"
    );
    assert_eq!(groups.len(), 2, "{groups:?}");
}

/// Why storage member 1 says it cannot reach its peer now (`timed_out`), from its sync status.
async fn peer_unreachable(c: &Cluster) -> Option<String> {
    let v = c.sync_status(&c.storage[0][0]).await.ok()?;
    v["peers"][0]["unreachable"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_cannot_reach_its_quorum_refuses_an_upload_before_reading_it() {
    // The tracker keeps the frozen peer active for the whole run.
    let spec = ClusterSpec {
        tracker_args: args(&["--heartbeat-timeout-ms", "600000"]),
        ..ClusterSpec::group(2).storage(&["--peer-stall-timeout-ms", "1500"])
    };
    let c = Cluster::start(spec).await;
    let a = c.storage[0][0].internal_url();
    c.storage[0][1].freeze();
    // a's sync worker probes its idle peer: a learns that b does not answer without losing an upload to it.
    eventually(60, "a to notice that b is frozen", || async {
        (peer_unreachable(&c).await.as_deref() == Some("timed_out")).then_some(())
    })
    .await;

    // A body that never ends: a node that read it would never answer.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(content(1, 64 << 10))).await.unwrap();
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let resp = c
        .http
        .post(format!("{a}/v1/upload?ext=bin"))
        .secret()
        .timeout(Duration::from_secs(60))
        .body(body)
        .send()
        .await
        .expect("an answer while the body is still open");
    let (status, code) = fdfs_testkit::error_of(resp).await;
    assert_eq!((status, code.as_str()), (503, "quorum_unreachable"));
    drop(tx);

    // b answers again: a notices, and takes uploads with both replicas.
    c.storage[0][1].thaw();
    eventually(60, "a to notice that b is back", || async {
        peer_unreachable(&c).await.is_none().then_some(())
    })
    .await;
    let up: serde_json::Value = c
        .http
        .post(format!("{a}/v1/upload?ext=bin"))
        .secret()
        .body(content(2, 5000))
        .ok_json()
        .await;
    assert_eq!(up["replicas"], 2, "{up}");
}
