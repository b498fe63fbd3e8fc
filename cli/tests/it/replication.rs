//! Issue "Groups that survive failures", against real processes (`fdfs tracker|storage|gateway`, see
//! `common/`): a member killed with -9 right after an acknowledged upload, then wiped and restarted, while
//! every file stays downloadable through the gateway; a member that missed uploads and deletes while killed
//! converges to its peer's exact file set; losing one of two trackers changes nothing for clients.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    args, content, member_in, upload, Cluster, ClusterSpec, SECRET, STATE_TIMEOUT,
};
use fdfs_common::wire::MemberState;
use reqwest::StatusCode;
use serde_json::Value;

/// One group of two members, one tracker unless told, the gateway streaming downloads itself (so a dead member
/// is skipped rather than redirected to).
fn spec(trackers: usize) -> ClusterSpec {
    ClusterSpec {
        groups: 1,
        members: 2,
        trackers,
        gateway_args: args(&["--download-mode", "proxy"]),
        ..ClusterSpec::default()
    }
}

/// Start the cluster and wait until every storage node sees each of its peers active (a node learns that from
/// heartbeat replies, a beat after the tracker): from then on uploads reach `write_quorum` members.
async fn start(spec: ClusterSpec) -> Cluster {
    let c = Cluster::start(spec).await;
    wait_peers(&c, "active").await;
    c
}

/// Poll every storage node's `GET /v1/sync/status` until all its peers are in `state`.
async fn wait_peers(c: &Cluster, state: &str) {
    let t0 = Instant::now();
    for n in c.all_storage() {
        loop {
            let st: Value = c
                .http
                .get(format!("{}/v1/sync/status", n.url()))
                .header(fdfs_common::wire::CLUSTER_SECRET_HEADER, SECRET)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let peers = st["peers"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: {st}", n.name));
            if !peers.is_empty() && peers.iter().all(|p| p["state"] == state) {
                break;
            }
            assert!(
                t0.elapsed() < STATE_TIMEOUT,
                "{}: peers never all {state}: {st}",
                n.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn download(c: &Cluster, id: &str) -> Result<Vec<u8>, String> {
    let r = c
        .follow
        .get(format!("{}/{id}", c.gateway_url()))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("{id}: {}", r.status()));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// Names of the files in a storage node's data directory (metadata files excluded).
fn files_on_disk(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(d1s) = std::fs::read_dir(dir.join("data")) else {
        return out;
    };
    for d1 in d1s.flatten() {
        let Ok(d2s) = std::fs::read_dir(d1.path()) else {
            continue;
        };
        for d2 in d2s.flatten() {
            let Ok(files) = std::fs::read_dir(d2.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !name.ends_with("-m") {
                    out.insert(format!(
                        "{}/{}/{name}",
                        d1.file_name().to_string_lossy(),
                        d2.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    out
}

/// `XX/YY/name` of a file ID.
fn rel(id: &str) -> String {
    id.splitn(3, '/').nth(2).unwrap().to_owned()
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t0.elapsed()
}

/// Downloads every file through the gateway in a loop until stopped; counts failures.
struct Reader {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Reader {
    fn start(gateway: String, files: Vec<(String, Vec<u8>)>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for (id, body) in &files {
                    let got = client
                        .get(format!("{gateway}/{id}"))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    match got {
                        Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
                            Ok(b) if b[..] == body[..] => {}
                            Ok(_) => failures.push(format!("{id}: wrong bytes")),
                            Err(e) => failures.push(format!("{id}: {e}")),
                        },
                        Ok(resp) => failures.push(format!("{id}: {}", resp.status())),
                        Err(e) => failures.push(format!("{id}: {e}")),
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
            }
            failures
        });
        Reader { stop, rounds, task }
    }

    async fn wait_rounds(&self, n: u64) {
        let target = self.rounds.load(Ordering::Relaxed) + n;
        let t0 = Instant::now();
        while self.rounds.load(Ordering::Relaxed) < target {
            assert!(t0.elapsed() < STATE_TIMEOUT, "reader stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.rounds.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_wiped_member_recovers_while_files_stay_available() {
    let mut c = start(spec(1)).await;
    let mut files = Vec::new();
    for i in 0..30 {
        let body = content(i, 10_000 + i * 1000);
        let j = upload(&c, &format!("f{i}.bin"), body.clone()).await;
        // Default write_quorum = 2: both members hold it at acknowledgement.
        assert_eq!(j["replicas"], 2, "{j}");
        files.push((j["file_id"].as_str().unwrap().to_owned(), body));
    }
    let reader = Reader::start(c.gateway_url(), files.clone());
    reader.wait_rounds(1).await;

    // One more acknowledged upload, then kill -9 the member that took it.
    let body = content(99, 50_000);
    let j = upload(&c, "last.bin", body.clone()).await;
    let last = j["file_id"].as_str().unwrap().to_owned();
    let url = j["url"].as_str().unwrap().to_owned();
    let victim = c.storage[0]
        .iter()
        .position(|n| url.starts_with(&n.url()))
        .expect("the url names a member");
    c.storage[0][victim].kill9();
    files.push((last.clone(), body));
    // The survivor has every file, including the one acknowledged just before the kill.
    let survivor = &c.storage[0][1 - victim];
    let have = files_on_disk(&survivor.dir);
    for (id, _) in &files {
        assert!(have.contains(&rel(id)), "{id} missing on the survivor");
    }

    // Its whole data folder is lost.
    let dir = c.storage[0][victim].dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    c.wait_tracker(0, "the victim offline", STATE_TIMEOUT, |c, v| {
        member_in(v, &c.storage[0][victim]).is_some_and(|m| m.state == MemberState::Offline)
    })
    .await;
    reader.wait_rounds(1).await;

    let t0 = Instant::now();
    c.storage[0][victim].restart();
    c.wait_tracker(0, "the wiped member active again", STATE_TIMEOUT, |c, v| {
        member_in(v, &c.storage[0][victim]).is_some_and(|m| m.state == MemberState::Active)
    })
    .await;
    let recovered = t0.elapsed();
    // Active means caught up: it holds every file already.
    let have = files_on_disk(&c.storage[0][victim].dir);
    for (id, _) in &files {
        assert!(
            have.contains(&rel(id)),
            "{id} missing on the recovered member; its log:\n{}",
            c.storage[0][victim].log_tail(60)
        );
    }
    println!(
        "wiped member active again with all {} files {recovered:?} after restart",
        files.len()
    );
    reader.wait_rounds(2).await;
    let (rounds, failures) = reader.finish().await;
    assert!(
        failures.is_empty(),
        "downloads failed during the failure: {failures:?}"
    );
    println!("{rounds} rounds of {} downloads, none failed", files.len());

    // Both members serve every file from their own disk, identically.
    for (id, body) in &files {
        for n in &c.storage[0] {
            let r = c
                .http
                .get(format!("{}/{id}", n.url()))
                .header("x-fdfs-no-proxy", "1")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{id} on {}", n.name);
            assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_that_missed_uploads_and_deletes_converges() {
    let mut c = start(spec(1)).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let j = upload(&c, &format!("a{i}.txt"), content(i, 3000)).await;
        ids.push(j["file_id"].as_str().unwrap().to_owned());
    }
    c.storage[0][1].kill9();
    c.wait_tracker(0, "member 2 offline", STATE_TIMEOUT, |c, v| {
        member_in(v, &c.storage[0][1]).is_some_and(|m| m.state == MemberState::Offline)
    })
    .await;
    // While it is down: uploads (acknowledged with one replica: the quorum is capped by live members) and
    // deletes.
    for i in 20..35 {
        let j = upload(&c, &format!("b{i}.txt"), content(i, 2000)).await;
        assert_eq!(j["replicas"], 1, "{j}");
        ids.push(j["file_id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..8] {
        let r = c
            .http
            .delete(format!("{}/{id}", c.gateway_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    c.storage[0][1].restart();
    let (a, b) = (c.storage[0][0].dir.clone(), c.storage[0][1].dir.clone());
    let took = wait_until("member 2 to converge", STATE_TIMEOUT, || {
        files_on_disk(&a) == files_on_disk(&b)
    })
    .await;
    println!("member converged {took:?} after restart");
    let have = files_on_disk(&b);
    assert_eq!(have.len(), 27);
    for id in &ids[..8] {
        assert!(
            !have.contains(&rel(id)),
            "deleted {id} still on the returning member"
        );
        assert!(
            download(&c, id).await.is_err(),
            "deleted {id} still downloadable"
        );
    }
    for (i, id) in ids.iter().enumerate().skip(8) {
        let len = if i < 20 { 3000 } else { 2000 };
        assert_eq!(download(&c, id).await.unwrap(), content(i, len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_two_trackers_changes_nothing_for_clients() {
    let mut c = start(spec(2)).await;
    let mut files = Vec::new();
    for i in 0..5 {
        let body = content(i, 4000);
        let j = upload(&c, &format!("t{i}.bin"), body.clone()).await;
        files.push((j["file_id"].as_str().unwrap().to_owned(), body));
    }
    c.trackers[0].kill9();
    // Straight away: uploads and downloads through the gateway keep working.
    for i in 5..15 {
        let body = content(i, 4000);
        let j = upload(&c, &format!("t{i}.bin"), body.clone()).await;
        assert_eq!(j["replicas"], 2, "{j}");
        files.push((j["file_id"].as_str().unwrap().to_owned(), body));
    }
    for (id, body) in &files {
        assert_eq!(&download(&c, id).await.unwrap(), body);
    }
    // The surviving tracker still sees the whole group active (storage nodes heartbeat to every tracker).
    c.wait_tracker(
        1,
        "both members active on tracker 2",
        STATE_TIMEOUT,
        |c, v| {
            c.all_storage()
                .all(|n| member_in(v, n).is_some_and(|m| m.state == MemberState::Active))
        },
    )
    .await;
    // The killed tracker comes back and learns the group again from heartbeats.
    c.trackers[0].restart();
    c.wait_tracker(
        0,
        "both members active on tracker 1 again",
        STATE_TIMEOUT,
        |c, v| {
            c.all_storage()
                .all(|n| member_in(v, n).is_some_and(|m| m.state == MemberState::Active))
        },
    )
    .await;
    let j = upload(&c, "after.bin", content(77, 1234)).await;
    let id = j["file_id"].as_str().unwrap();
    assert_eq!(download(&c, id).await.unwrap(), content(77, 1234));
}
