//! Issue 13 (faults that lose or strand data), the replication cases, against real processes (`fdfs tracker|
//! storage|gateway`, see `fdfs_testkit::cluster`): tombstones per incarnation (a slave ID re-uploaded after a delete),
//! catch-up metadata that converges, catch-up from the union of the members, a wiped member that waits for its
//! group, and a removed member that stops pinning the binlog.

use std::time::{Duration, Instant};

use fdfs_common::wire::MemberState;
use fdfs_testkit::{
    content, eventually, eventually_ok, node, peers_all, stored_path, tempdir, wait_until, Cluster,
    ClusterSpec, Node, RequestExt, STATE_TIMEOUT,
};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;

/// One group of `members`, one tracker, the gateway streaming downloads itself.
fn spec(members: usize) -> ClusterSpec {
    ClusterSpec::group(members).gateway(&["--download-mode", "proxy"])
}

/// Poll every storage node until it is synced and sees all its peers active.
async fn wait_peers_active(c: &Cluster) {
    c.wait_sync_all("synced, every peer active", |st| {
        st["syncing"] == false && peers_all(st, "state", "active")
    })
    .await;
}

/// Wait until a member reports that it is no longer catching up (and, with `catchup`, that its listing
/// catch-up finished).
async fn wait_synced(c: &Cluster, n: &Node, catchup: bool) {
    let timeout = if catchup {
        STATE_TIMEOUT
    } else {
        STATE_TIMEOUT * 3
    };
    c.wait_sync(n, "synced", timeout, |st| {
        st["syncing"] == false && (!catchup || !st["last_catchup"].is_null())
    })
    .await;
}

/// `PUT /upload/{name}?master_file_id=..&prefix=..` (a slave file) on the gateway; the JSON answer.
async fn upload_slave(c: &Cluster, master: &str, prefix: &str, body: Vec<u8>) -> Value {
    c.upload(
        &format!("s.bin?master_file_id={master}&prefix={prefix}"),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_reuploaded_after_delete_replicates_and_survives_catchup() {
    let mut c = Cluster::start(spec(2)).await;
    wait_peers_active(&c).await;
    let master = c.upload("m.bin", content(1, 10_000)).await;
    let master = master["file_id"].as_str().unwrap().to_owned();
    let v1 = content(2, 3_000);
    let slave = upload_slave(&c, &master, "_t", v1.clone()).await;
    let sid = slave["file_id"].as_str().unwrap().to_owned();
    c.wait_held(&sid, Some(&v1), "first upload").await;

    c.delete(&sid).await;
    c.wait_held(&sid, None, "delete").await;

    // Same deterministic ID, other bytes.
    let v2 = content(3, 5_000);
    let again = upload_slave(&c, &master, "_t", v2.clone()).await;
    assert_eq!(
        again["file_id"],
        sid.as_str(),
        "slave IDs are deterministic"
    );
    assert_eq!(again["replicas"], 2, "{again}");
    c.wait_held(&sid, Some(&v2), "re-upload").await;

    // Every member restarts (so whichever took the upload runs its start-up catch-up against the other's
    // tombstones): the new incarnation stays.
    for m in 0..2 {
        c.kill9(0, m);
        c.restart(0, m);
        wait_synced(&c, &c.storage[0][m], true).await;
        wait_peers_active(&c).await;
    }
    c.wait_held(&sid, Some(&v2), "after restarts").await;
    // And it is downloadable through the gateway.
    assert_eq!(c.download(&sid).await, v2);
}

/// A file's metadata as a member itself holds it (`None`: the member lacks the file).
async fn held_meta(c: &Cluster, n: &Node, id: &str) -> Option<Value> {
    let r = c.http.get(format!("{}/v1/replica/meta/{id}", n.url()));
    r.secret().try_json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_metadata_converges_when_the_source_is_killed_mid_catchup() {
    const N: usize = 1500;
    let mut c = Cluster::start(spec(2)).await;
    wait_peers_active(&c).await;
    let cref = &c;
    let mut ids: Vec<String> = stream::iter(0..N)
        .map(|i| async move {
            let name = format!("f{i}.bin?meta.n={i}&meta.kind=test");
            let v = cref.upload(&name, content(i, 4096)).await;
            assert_eq!(v["replicas"], 2, "{v}");
            v["file_id"].as_str().unwrap().to_owned()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    ids.sort();

    // Wipe member 2; it copies everything from member 1, which is killed part-way (and comes back).
    c.wipe(0, 1);
    c.restart(0, 1);
    let marker = stored_path(&c.storage[0][1].dir, &ids[N / 3]);
    wait_until(
        STATE_TIMEOUT,
        "the catch-up to reach a third of the files",
        || marker.exists(),
    )
    .await;
    c.kill9(0, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart(0, 0);
    wait_synced(&c, &c.storage[0][1], false).await;
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
    let gone = c.upload("gone.bin", content(10, 2_000)).await;
    let gone = gone["file_id"].as_str().unwrap().to_owned();
    c.wait_held(&gone, Some(&content(10, 2_000)), "first upload")
        .await;

    // B away: F lands on A and C (and is acknowledged by A); `gone` is deleted on A and C.
    c.kill9(0, b);
    c.wait_state(0, b, MemberState::Offline).await;
    let f_body = content(11, 3_000);
    let f = c.upload("f.bin", f_body.clone()).await;
    let f = f["file_id"].as_str().unwrap().to_owned();
    c.delete(&gone).await;
    for m in [a, cm] {
        eventually(STATE_TIMEOUT, "A and C to converge", || async {
            (holds(&c, m, (&f, &f_body), &gone).await == (true, false)).then_some(())
        })
        .await;
    }

    // Everyone down; A wiped. B (without F, still holding `gone`) comes back, then A catches up (from B only,
    // C is down), then C comes back. C's worker already had A's acknowledgement of F and of the delete.
    c.kill9(0, cm);
    c.wipe(0, a);
    c.restart(0, b);
    c.wait_state(0, b, MemberState::Active).await;
    c.restart(0, a);
    wait_synced(&c, &c.storage[0][a], false).await;
    c.restart(0, cm);

    // A ends with the union (F) minus the delete (`gone`), and so does everyone.
    eventually_ok(STATE_TIMEOUT, "the wiped member to converge", || async {
        match holds(&c, a, (&f, &f_body), &gone).await {
            (true, false) => Ok(()),
            (f, g) => Err(format!("holds F {f}, holds the deleted file {g}")),
        }
    })
    .await;
    c.wait_held(&f, Some(&f_body), "F everywhere").await;
    c.wait_held(&gone, None, "deleted everywhere").await;
}

/// Whether member `m` holds `f` with its bytes, and whether it holds `gone`.
async fn holds(c: &Cluster, m: usize, (f, f_body): (&str, &[u8]), gone: &str) -> (bool, bool) {
    let n = &c.storage[0][m];
    let has_f = c.held(n, f).await.as_deref() == Some(f_body);
    (has_f, c.held(n, gone).await.is_some())
}

/// `None` while member 1 is catching up; once synced, how many of `files` it lacks.
async fn synced_missing(c: &Cluster, files: &[(String, Vec<u8>)]) -> Option<usize> {
    let a = &c.storage[0][0];
    let st = c.sync_status(a).await.ok()?;
    if st["syncing"] != false {
        return None;
    }
    let mut missing = 0;
    for (id, body) in files {
        if c.held(a, id).await.as_deref() != Some(&body[..]) {
            missing += 1;
        }
    }
    Some(missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_after_a_tracker_restart_waits_for_its_group() {
    const N: usize = 20;
    let dir = tempdir(1 << 30);
    let tracker_data = dir.path().join("tracker-data");
    let s = spec(2).tracker(&["--data-dir", &tracker_data.display().to_string()]);
    let mut c = Cluster::start_in(s, dir).await;
    wait_peers_active(&c).await;
    let mut files = Vec::new();
    for i in 0..N {
        let v = c
            .upload(&format!("w{i}.bin"), content(100 + i, 1_000))
            .await;
        files.push((
            v["file_id"].as_str().unwrap().to_owned(),
            content(100 + i, 1_000),
        ));
    }
    // The tracker has remembered both members with their files.
    eventually_ok(STATE_TIMEOUT, "the tracker to save its members", || async {
        let saved: Vec<Value> = std::fs::read(tracker_data.join("members.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let all = saved
            .iter()
            .all(|m| m["file_count"].as_u64() >= Some(N as u64));
        (saved.len() == 2 && all)
            .then_some(())
            .ok_or(format!("{saved:?}"))
    })
    .await;

    // Stop everything, wipe A, start the tracker, then A; B only a while later.
    c.wipe(0, 0);
    c.kill9(0, 1);
    c.trackers[0].kill9();
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
    wait_synced(&c, &c.storage[0][0], false).await;
    assert_eq!(
        synced_missing(&c, &files).await,
        Some(0),
        "A synced without B's files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_stops_pinning_the_binlog() {
    let dir = tempdir(1 << 30);
    let conf = dir.path().join("storage.toml");
    std::fs::write(&conf, "binlog_segment_bytes = \"2KiB\"\n").unwrap();
    let s = spec(2).storage(&["--config", &conf.display().to_string()]);
    let mut c = Cluster::start_in(s, dir).await;
    wait_peers_active(&c).await;
    let b_id = c.sync_status(&c.storage[0][1]).await.unwrap()["node_id"]
        .as_u64()
        .unwrap();
    c.kill9(0, 1);
    c.wait_state(0, 1, MemberState::Offline).await;
    for i in 0..80 {
        c.upload(&format!("p{i}.bin"), content(200 + i, 100)).await;
    }
    let segments = |st: &Value| st["binlog_segments"].as_u64().unwrap_or(0);
    let st = c.sync_status(&c.storage[0][0]).await.unwrap();
    assert!(
        segments(&st) >= 2,
        "the offline member holds segments: {st}"
    );

    // An active member cannot be removed; the offline one can, on every tracker.
    let a_id = c.sync_status(&c.storage[0][0]).await.unwrap()["node_id"]
        .as_u64()
        .unwrap();
    let remove = |id: u64| {
        node::command_with_secret()
            .args(["monitor", "delete", "group1", &id.to_string(), "--tracker"])
            .arg(c.trackers[0].addr.to_string())
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
    c.wait_sync(&c.storage[0][0], "the binlog pruned", STATE_TIMEOUT, |st| {
        segments(st) == 1 && st["peers"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
}
