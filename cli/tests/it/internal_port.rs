//! Storage nodes with `--internal-listen`: the internal `/v1` routes move to their own address, which is what
//! the node announces to trackers, so the gateway and peers use it; the public port serves downloads only and
//! answers 404 for `/v1/...`. And every server started without a cluster secret says so loudly.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{
    args, bin, hermetic_env, member_in, read_lines, wait_listening, Cluster, ClusterSpec,
};
use crate::common::{tempdir, Role, SECRET};
use fdfs_common::wire::CLUSTER_SECRET_HEADER;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_listen_apart_and_the_public_port_refuses_them() {
    let spec = ClusterSpec {
        groups: 1,
        members: 2,
        storage_args: args(&[
            "--heartbeat-interval-ms",
            "200",
            "--internal-listen",
            "127.0.0.1:0",
        ]),
        ..ClusterSpec::default()
    };
    let c = Cluster::start(spec).await;
    let view = c.view_at(&c.trackers[0].url()).await.unwrap();
    for n in c.all_storage() {
        let internal = n.internal.expect("internal address printed");
        assert_ne!(internal, n.addr);
        let m = member_in(&view, n).expect("member listed");
        assert_eq!(m.addr, internal.to_string(), "announced address");
        assert_eq!(m.public_url, n.url(), "public URL unchanged");
    }

    // Through the gateway (which reaches the node on its internal address): stored on both members.
    let body = crate::common::content(1, 100_000);
    let r = c
        .http
        .put(format!("{}/upload/a.bin", c.gateway_url()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["replicas"], 2, "{up}");
    let id = up["file_id"].as_str().unwrap().to_owned();
    let url = up["url"].as_str().unwrap();
    assert!(url.starts_with(&c.storage[0][0].url()) || url.starts_with(&c.storage[0][1].url()));
    let got = c.http.get(url).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap(), body);

    for n in c.all_storage() {
        // The public port: downloads yes, internal routes no, even with the secret.
        let public = n.url();
        let got = c.http.get(format!("{public}/{id}")).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "download from {public}");
        let internal_calls = [
            c.http.post(format!("{public}/v1/upload")).body("x"),
            c.http.get(format!("{public}/v1/files/{id}")),
            c.http.delete(format!("{public}/v1/files/{id}")),
            c.http.delete(format!("{public}/v1/replica/{id}")),
            c.http.get(format!("{public}/v1/sync/files")),
        ];
        for req in internal_calls {
            let r = req
                .header(CLUSTER_SECRET_HEADER, SECRET)
                .send()
                .await
                .unwrap();
            let what = format!("{} on {public}", r.url().path());
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{what}");
            let (_, code) = crate::common::error_of(r).await;
            assert_eq!(code, "not_found", "{what}");
        }
        // The internal address serves them (behind the secret).
        let internal = n.internal_url();
        let r = c
            .http
            .get(format!("{internal}/v1/files/{id}"))
            .header(CLUSTER_SECRET_HEADER, SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "file info on {internal}");
        let r = c
            .http
            .get(format!("{internal}/v1/files/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "no secret on {internal}"
        );
    }

    // Delete through the gateway reaches a member on its internal address, and replication (peer to peer, on
    // the internal addresses too) carries it to the other one: soon every member answers 404.
    let r = c
        .http
        .delete(format!("{}/{id}", c.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for n in c.all_storage() {
        let url = format!("{}/{id}", n.url());
        crate::common::eventually(60, &format!("{url} to be deleted"), || async {
            let r = c.http.get(&url).send().await.unwrap();
            (r.status() == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
    }
}

/// Start `fdfs <role>` with `extra` flags and the given cluster secret (none: the variable is removed);
/// the first lines of its log once it listens.
fn start_and_read_log(role: Role, secret: Option<&str>, extra: &[String]) -> String {
    let dir = tempdir(0);
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let sub = match role {
        Role::Tracker => "tracker",
        Role::Storage => "storage",
        Role::Gateway => "gateway",
    };
    let mut cmd = Command::new(bin());
    cmd.arg(sub)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    hermetic_env(&mut cmd);
    match secret {
        Some(s) => cmd.env("FDFS_CLUSTER_SECRET", s),
        None => cmd.env_remove("FDFS_CLUSTER_SECRET"),
    };
    if role == Role::Gateway {
        cmd.args(["--tracker", &crate::common::closed_addr()]);
    }
    if role == Role::Storage {
        cmd.args([
            "--group",
            "group1",
            "--tracker",
            &crate::common::closed_addr(),
        ])
        .arg("--store-path")
        .arg(dir.path().join("store"));
    }
    let mut child = cmd.spawn().unwrap();
    let lines = read_lines(child.stdout.take().unwrap());
    let listening = wait_listening(&lines, Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    listening.unwrap_or_else(|e| panic!("{sub}: {e}; log:\n{text}"));
    text
}

#[test]
fn servers_without_a_cluster_secret_warn_loudly() {
    const WARNING: &str = "WITHOUT A CLUSTER SECRET";
    for role in [Role::Tracker, Role::Storage, Role::Gateway] {
        let log = start_and_read_log(role, None, &[]);
        assert!(
            log.contains(WARNING),
            "{role:?} without a secret, log:\n{log}"
        );
        assert!(
            log.contains("ERROR"),
            "{role:?}: the warning is logged as an error:\n{log}"
        );
        let log = start_and_read_log(role, Some(""), &[]);
        assert!(
            log.contains(WARNING),
            "{role:?} with an empty secret, log:\n{log}"
        );
        let log = start_and_read_log(role, Some("s3cret"), &[]);
        assert!(
            !log.contains(WARNING),
            "{role:?} with a secret, log:\n{log}"
        );
    }
}
