//! Issue 13 (faults that lose or strand data), the replication cases, against real processes (`fdfs tracker|
//! storage|gateway`, see `common/`): tombstones per incarnation (a slave ID re-uploaded after a delete),
//! catch-up metadata that converges, catch-up from the union of the members, a wiped member that waits for its
//! group, and a removed member that stops pinning the binlog.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::common::{args, content, upload, Cluster, ClusterSpec, Node, SECRET, STATE_TIMEOUT};
use fdfs_common::wire::CLUSTER_SECRET_HEADER;
use reqwest::StatusCode;
use serde_json::Value;

/// One group of `members`, one tracker, the gateway streaming downloads itself.
fn spec(members: usize) -> ClusterSpec {
    ClusterSpec {
        groups: 1,
        members,
        trackers: 1,
        gateway_args: args(&["--download-mode", "proxy"]),
        ..ClusterSpec::default()
    }
}

/// A storage node's `GET /v1/sync/status`.
async fn sync_status(c: &Cluster, n: &Node) -> Result<Value, String> {
    let r = c
        .http
        .get(format!("{}/v1/sync/status", n.url()))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

/// Poll every storage node until it is synced and sees all its peers active.
async fn wait_peers_active(c: &Cluster) {
    let t0 = Instant::now();
    for n in c.all_storage() {
        loop {
            if let Ok(st) = sync_status(c, n).await {
                let peers = st["peers"].as_array().cloned().unwrap_or_default();
                if st["syncing"] == false
                    && !peers.is_empty()
                    && peers.iter().all(|p| p["state"] == "active")
                {
                    break;
                }
            }
            assert!(
                t0.elapsed() < STATE_TIMEOUT,
                "{}: peers never all active",
                n.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Wait until a (restarted) node reports a finished listing catch-up.
async fn wait_catchup(c: &Cluster, n: &Node) {
    let t0 = Instant::now();
    loop {
        if let Ok(st) = sync_status(c, n).await {
            if !st["last_catchup"].is_null() && st["syncing"] == false {
                return;
            }
        }
        assert!(
            t0.elapsed() < STATE_TIMEOUT,
            "{}: catch-up never finished",
            n.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bytes a member itself holds for `id` (the replica route: no proxying to a peer); `None` when absent.
async fn held(c: &Cluster, n: &Node, id: &str) -> Option<Vec<u8>> {
    let r = c
        .http
        .get(format!("{}/v1/replica/{id}", n.url()))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.bytes().await.ok().map(|b| b.to_vec())
}

/// Poll until every member holds exactly `want` for `id` (`None`: none holds it).
async fn wait_held(c: &Cluster, id: &str, want: Option<&[u8]>, what: &str) {
    let t0 = Instant::now();
    loop {
        let mut all = true;
        let mut seen = Vec::new();
        for n in c.all_storage() {
            let got = held(c, n, id).await;
            all &= got.as_deref() == want;
            seen.push(format!("{}: {:?}", n.name, got.map(|b| b.len())));
        }
        if all {
            return;
        }
        assert!(
            t0.elapsed() < STATE_TIMEOUT,
            "{what}: members never converged on {id} ({}); want {:?} bytes",
            seen.join(", "),
            want.map(<[u8]>::len)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `PUT /upload/{name}?master_file_id=..&prefix=..` (a slave file) on the gateway; the JSON answer.
async fn upload_slave(c: &Cluster, master: &str, prefix: &str, body: Vec<u8>) -> Value {
    let r = c
        .http
        .put(format!("{}/upload/s.bin", c.gateway_url()))
        .query(&[("master_file_id", master), ("prefix", prefix)])
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "slave upload: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn delete(c: &Cluster, id: &str) {
    let r = c
        .http
        .delete(format!("{}/{id}", c.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "delete {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_reuploaded_after_delete_replicates_and_survives_catchup() {
    let mut c = Cluster::start(spec(2)).await;
    wait_peers_active(&c).await;
    let master = upload(&c, "m.bin", content(1, 10_000)).await;
    let master = master["file_id"].as_str().unwrap().to_owned();
    let v1 = content(2, 3_000);
    let slave = upload_slave(&c, &master, "_t", v1.clone()).await;
    let sid = slave["file_id"].as_str().unwrap().to_owned();
    wait_held(&c, &sid, Some(&v1), "first upload").await;

    delete(&c, &sid).await;
    wait_held(&c, &sid, None, "delete").await;

    // Same deterministic ID, other bytes.
    let v2 = content(3, 5_000);
    let again = upload_slave(&c, &master, "_t", v2.clone()).await;
    assert_eq!(
        again["file_id"],
        sid.as_str(),
        "slave IDs are deterministic"
    );
    assert_eq!(again["replicas"], 2, "{again}");
    wait_held(&c, &sid, Some(&v2), "re-upload").await;

    // Every member restarts (so whichever took the upload runs its start-up catch-up against the other's
    // tombstones): the new incarnation stays.
    for m in 0..2 {
        c.kill9(0, m);
        c.restart(0, m);
        wait_catchup(&c, &c.storage[0][m]).await;
        wait_peers_active(&c).await;
    }
    wait_held(&c, &sid, Some(&v2), "after restarts").await;
    // And it is downloadable through the gateway.
    let got = c
        .follow
        .get(format!("{}/{sid}", c.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().to_vec(), v2);
}

/// Where a file of `id` lives under a member's (single) store path.
fn disk_path(n: &Node, id: &str) -> PathBuf {
    let parts: Vec<&str> = id.split('/').collect();
    n.dir
        .join("data")
        .join(parts[2])
        .join(parts[3])
        .join(parts[4])
}

/// A file's metadata as a member itself holds it (`None`: the member lacks the file).
async fn held_meta(c: &Cluster, n: &Node, id: &str) -> Option<Value> {
    let r = c
        .http
        .get(format!("{}/v1/replica/meta/{id}", n.url()))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.json().await.ok()
}

/// Wait until a member reports that it is no longer catching up.
async fn wait_synced(c: &Cluster, n: &Node) {
    let t0 = Instant::now();
    loop {
        if let Ok(st) = sync_status(c, n).await {
            if st["syncing"] == false {
                return;
            }
        }
        assert!(t0.elapsed() < STATE_TIMEOUT * 3, "{}: never synced", n.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_metadata_converges_when_the_source_is_killed_mid_catchup() {
    const N: usize = 1500;
    let mut c = Cluster::start(spec(2)).await;
    wait_peers_active(&c).await;
    let cref = &c;
    let mut ids: Vec<String> = stream::iter(0..N)
        .map(|i| async move {
            let r = cref
                .http
                .put(format!("{}/upload/f{i}.bin", cref.gateway_url()))
                .query(&[("meta.n", i.to_string()), ("meta.kind", "test".into())])
                .body(content(i, 4096))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{v}");
            assert_eq!(v["replicas"], 2, "{v}");
            v["file_id"].as_str().unwrap().to_owned()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    ids.sort();

    // Wipe member 2; it copies everything from member 1, which is killed part-way (and comes back).
    c.kill9(0, 1);
    std::fs::remove_dir_all(&c.storage[0][1].dir).unwrap();
    std::fs::create_dir_all(&c.storage[0][1].dir).unwrap();
    c.restart(0, 1);
    let marker = disk_path(&c.storage[0][1], &ids[N / 3]);
    let t0 = Instant::now();
    while !marker.exists() {
        assert!(
            t0.elapsed() < STATE_TIMEOUT,
            "catch-up never reached a third of the files"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill9(0, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart(0, 0);
    wait_synced(&c, &c.storage[0][1]).await;
    wait_peers_active(&c).await;

    let (a, b) = (&c.storage[0][0], &c.storage[0][1]);
    let mut differ = Vec::new();
    for id in &ids {
        let (ma, mb) = (held_meta(&c, a, id).await, held_meta(&c, b, id).await);
        assert!(ma.is_some(), "{id} lost on the source");
        if ma != mb {
            differ.push(format!("{id}: {ma:?} vs {mb:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {N} files have different metadata on the members, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_gets_the_union_of_its_peers_minus_deletes() {
    let mut c = Cluster::start(spec(3)).await;
    wait_peers_active(&c).await;
    let (a, b, cm) = (0, 1, 2);
    let gone = upload(&c, "gone.bin", content(10, 2_000)).await;
    let gone = gone["file_id"].as_str().unwrap().to_owned();
    wait_held(&c, &gone, Some(&content(10, 2_000)), "first upload").await;

    // B away: F lands on A and C (and is acknowledged by A); `gone` is deleted on A and C.
    c.kill9(0, b);
    c.wait_state(0, b, fdfs_common::wire::MemberState::Offline)
        .await;
    let f_body = content(11, 3_000);
    let f = upload(&c, "f.bin", f_body.clone()).await;
    let f = f["file_id"].as_str().unwrap().to_owned();
    delete(&c, &gone).await;
    for m in [a, cm] {
        let t0 = Instant::now();
        while held(&c, &c.storage[0][m], &gone).await.is_some()
            || held(&c, &c.storage[0][m], &f).await.as_deref() != Some(&f_body[..])
        {
            assert!(t0.elapsed() < STATE_TIMEOUT, "A and C never converged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Everyone down; A wiped. B (without F, still holding `gone`) comes back, then A catches up (from B only,
    // C is down), then C comes back. C's worker already had A's acknowledgement of F and of the delete.
    c.kill9(0, cm);
    c.kill9(0, a);
    std::fs::remove_dir_all(&c.storage[0][a].dir).unwrap();
    std::fs::create_dir_all(&c.storage[0][a].dir).unwrap();
    c.restart(0, b);
    c.wait_state(0, b, fdfs_common::wire::MemberState::Active)
        .await;
    c.restart(0, a);
    wait_synced(&c, &c.storage[0][a]).await;
    c.restart(0, cm);

    // A ends with the union (F) minus the delete (`gone`), and so does everyone.
    let t0 = Instant::now();
    loop {
        let na = &c.storage[0][a];
        let has_f = held(&c, na, &f).await.as_deref() == Some(&f_body[..]);
        let has_gone = held(&c, na, &gone).await.is_some();
        if has_f && !has_gone {
            break;
        }
        assert!(
            t0.elapsed() < STATE_TIMEOUT,
            "wiped member: holds F {has_f}, holds the deleted file {has_gone}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_held(&c, &f, Some(&f_body), "F everywhere").await;
    wait_held(&c, &gone, None, "deleted everywhere").await;
}

/// `None` while member 1 is catching up; once synced, how many of `files` it lacks.
async fn synced_missing(c: &Cluster, files: &[(String, Vec<u8>)]) -> Option<usize> {
    let a = &c.storage[0][0];
    let st = sync_status(c, a).await.ok()?;
    if st["syncing"] != false {
        return None;
    }
    let mut missing = 0;
    for (id, body) in files {
        if held(c, a, id).await.as_deref() != Some(&body[..]) {
            missing += 1;
        }
    }
    Some(missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_after_a_tracker_restart_waits_for_its_group() {
    const N: usize = 20;
    let dir = crate::common::tempdir(1 << 30);
    let tracker_data = dir.path().join("tracker-data");
    let mut s = spec(2);
    s.tracker_args
        .extend(args(&["--data-dir", &tracker_data.display().to_string()]));
    let mut c = Cluster::start_in(s, dir).await;
    wait_peers_active(&c).await;
    let mut files = Vec::new();
    for i in 0..N {
        let v = upload(&c, &format!("w{i}.bin"), content(100 + i, 1_000)).await;
        files.push((
            v["file_id"].as_str().unwrap().to_owned(),
            content(100 + i, 1_000),
        ));
    }
    // The tracker has remembered both members with their files.
    let t0 = Instant::now();
    loop {
        let saved: Vec<Value> = std::fs::read(tracker_data.join("members.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if saved.len() == 2
            && saved
                .iter()
                .all(|m| m["file_count"].as_u64() >= Some(N as u64))
        {
            break;
        }
        assert!(
            t0.elapsed() < STATE_TIMEOUT,
            "tracker never saved its members: {saved:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop everything, wipe A, start the tracker, then A; B only a while later.
    c.kill9(0, 0);
    c.kill9(0, 1);
    c.trackers[0].kill9();
    std::fs::remove_dir_all(&c.storage[0][0].dir).unwrap();
    std::fs::create_dir_all(&c.storage[0][0].dir).unwrap();
    c.trackers[0].restart();
    c.restart(0, 0);
    // Whenever A says it is synced, it must hold the group's files.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Some(missing) = synced_missing(&c, &files).await {
            panic!("the wiped member declared itself synced while missing {missing} of {N} files");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.restart(0, 1);
    wait_synced(&c, &c.storage[0][0]).await;
    assert_eq!(
        synced_missing(&c, &files).await,
        Some(0),
        "A synced without B's files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_stops_pinning_the_binlog() {
    let dir = crate::common::tempdir(1 << 30);
    let conf = dir.path().join("storage.toml");
    std::fs::write(&conf, "binlog_segment_bytes = \"2KiB\"\n").unwrap();
    let mut s = spec(2);
    s.storage_args
        .extend(args(&["--config", &conf.display().to_string()]));
    let mut c = Cluster::start_in(s, dir).await;
    wait_peers_active(&c).await;
    let b_id = sync_status(&c, &c.storage[0][1]).await.unwrap()["node_id"]
        .as_u64()
        .unwrap();
    c.kill9(0, 1);
    c.wait_state(0, 1, fdfs_common::wire::MemberState::Offline)
        .await;
    for i in 0..80 {
        upload(&c, &format!("p{i}.bin"), content(200 + i, 100)).await;
    }
    let segments = |st: &Value| st["binlog_segments"].as_u64().unwrap_or(0);
    let st = sync_status(&c, &c.storage[0][0]).await.unwrap();
    assert!(
        segments(&st) >= 2,
        "the offline member holds segments: {st}"
    );

    // An active member cannot be removed; the offline one can, on every tracker.
    let a_id = sync_status(&c, &c.storage[0][0]).await.unwrap()["node_id"]
        .as_u64()
        .unwrap();
    let remove = |id: u64| {
        std::process::Command::new(crate::common::BIN)
            .args(["monitor", "delete", "group1", &id.to_string(), "--tracker"])
            .arg(c.trackers[0].addr.to_string())
            .env("FDFS_CLUSTER_SECRET", SECRET)
            .output()
            .unwrap()
    };
    let out = remove(a_id);
    assert!(!out.status.success(), "an active member was removed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("active"),
        "{out:?}"
    );
    let out = remove(b_id);
    assert!(out.status.success(), "{out:?}");
    let t0 = Instant::now();
    loop {
        let st = sync_status(&c, &c.storage[0][0]).await.unwrap();
        if segments(&st) == 1 && st["peers"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            t0.elapsed() < STATE_TIMEOUT,
            "the member's binlog was never pruned: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
