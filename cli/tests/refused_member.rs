//! A member killed without warning (issue 13 item 9): until the trackers notice, they still assign uploads to it.
//! The node refuses the connection before any byte of the body goes out, so the gateway asks the tracker again
//! and sends the same unread body elsewhere: clients see no error while another member has room.

mod common;

use common::{args, content, upload, Cluster, ClusterSpec};
use fdfs_common::wire::MemberState;

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
        let up = upload(&c, &format!("f{i}.bin"), body.clone()).await;
        *groups
            .entry(up["group"].as_str().unwrap().to_owned())
            .or_default() += 1;
        // Every acknowledged file reads back with its bytes.
        let url = up["url"].as_str().unwrap();
        let got = c.http.get(url).send().await.unwrap();
        assert_eq!(got.status(), 200, "{url}");
        assert_eq!(got.bytes().await.unwrap().as_ref(), &body[..], "{url}");
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
