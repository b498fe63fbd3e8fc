//! Storage nodes with `--internal-listen`: the internal `/v1` routes move to their own address, which is what
//! the node announces to trackers, so the gateway and peers use it; the public port serves downloads only and
//! answers 404 for `/v1/...`. And every server started without a cluster secret says so loudly.

use fdfs_testkit::node::launch_with;
use fdfs_testkit::{
    args, closed_addr, content, eventually, member_in, tempdir, Cluster, ClusterSpec, RequestExt,
    Role,
};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_listen_apart_and_the_public_port_refuses_them() {
    let c =
        Cluster::start(ClusterSpec::group(2).storage(&["--internal-listen", "127.0.0.1:0"])).await;
    let view = c.view_at(&c.trackers[0].url()).await.unwrap();
    for n in c.all_storage() {
        let internal = n.internal.expect("internal address printed");
        assert_ne!(internal, n.addr);
        let m = member_in(&view, n).expect("member listed");
        assert_eq!(m.addr, internal.to_string(), "announced address");
        assert_eq!(m.public_url, n.url(), "public URL unchanged");
    }

    // Through the gateway (which reaches the node on its internal address): stored on both members.
    let body = content(1, 100_000);
    let up: Value = c.upload("a.bin", body.clone()).await;
    assert_eq!(up["replicas"], 2, "{up}");
    let id = up["file_id"].as_str().unwrap().to_owned();
    let url = up["url"].as_str().unwrap();
    assert!(url.starts_with(&c.storage[0][0].url()) || url.starts_with(&c.storage[0][1].url()));
    assert_eq!(c.http.get(url).ok_bytes().await, body);

    for n in c.all_storage() {
        // The public port: downloads yes, internal routes no, even with the secret.
        let public = n.url();
        c.http.get(format!("{public}/{id}")).ok_bytes().await;
        let internal_calls = [
            c.http.post(format!("{public}/v1/upload")).body("x"),
            c.http.get(format!("{public}/v1/files/{id}")),
            c.http.delete(format!("{public}/v1/files/{id}")),
            c.http.delete(format!("{public}/v1/replica/{id}")),
            c.http.get(format!("{public}/v1/sync/files")),
        ];
        for req in internal_calls {
            let r = req.secret().go().await;
            let what = format!("{} on {public}", r.url().path());
            let error = fdfs_testkit::error_of(r).await;
            assert_eq!(error, (404, "not_found".to_owned()), "{what}");
        }
        // The internal address serves them (behind the secret).
        let info = format!("{}/v1/files/{id}", n.internal_url());
        let r = c.http.get(&info).secret().go().await;
        assert_eq!(r.status(), StatusCode::OK, "{info}");
        let r = c.http.get(&info).go().await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no secret: {info}");
    }

    // Delete through the gateway reaches a member on its internal address, and replication (peer to peer, on
    // the internal addresses too) carries it to the other one: soon every member answers 404.
    c.delete(&id).await;
    for n in c.all_storage() {
        let url = format!("{}/{id}", n.url());
        eventually(60, &format!("{url} to be deleted"), || async {
            let r = c.http.get(&url).go().await;
            (r.status() == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
    }
}

/// Start `fdfs <role>` with the given cluster secret (none: the variable is removed); the first lines of its
/// log once it listens.
fn start_and_read_log(role: Role, secret: Option<&str>) -> String {
    let dir = tempdir(0);
    let log = dir.path().join("server.log");
    let store = dir.path().join("store").display().to_string();
    let flags = match role {
        Role::Tracker => vec![],
        Role::Gateway => args(&["--tracker", &closed_addr()]),
        Role::Storage => args(&[
            "--group",
            "group1",
            "--tracker",
            &closed_addr(),
            "--store-path",
            &store,
        ]),
    };
    let started = launch_with(role, "127.0.0.1:0", &flags, &log, |cmd| {
        match secret {
            Some(s) => cmd.env("FDFS_CLUSTER_SECRET", s),
            None => cmd.env_remove("FDFS_CLUSTER_SECRET"),
        };
    })
    .wait();
    let (mut child, _) = started.unwrap_or_else(|e| panic!("{role:?}: {e}"));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn servers_without_a_cluster_secret_warn_loudly() {
    const WARNING: &str = "WITHOUT A CLUSTER SECRET";
    for role in [Role::Tracker, Role::Storage, Role::Gateway] {
        let log = start_and_read_log(role, None);
        assert!(
            log.contains(WARNING),
            "{role:?} without a secret, log:\n{log}"
        );
        assert!(
            log.contains("ERROR"),
            "{role:?}: the warning is logged as an error:\n{log}"
        );
        let log = start_and_read_log(role, Some(""));
        assert!(
            log.contains(WARNING),
            "{role:?} with an empty secret, log:\n{log}"
        );
        let log = start_and_read_log(role, Some("s3cret"));
        assert!(
            !log.contains(WARNING),
            "{role:?} with a secret, log:\n{log}"
        );
    }
}
