//! Issue "Groups that survive failures", against real processes (`fdfs tracker|storage|gateway`, see
//! `common/`): a member killed with -9 right after an acknowledged upload, then wiped and restarted, while
//! every file stays downloadable through the gateway; a member that missed uploads and deletes while killed
//! converges to its peer's exact file set; losing one of two trackers changes nothing for clients.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdfs_common::wire::MemberState;
use fdfs_testkit::{
    content, stored_files, wait_until, Cluster, ClusterSpec, RequestExt, STATE_TIMEOUT,
};
use reqwest::StatusCode;

/// One group of two members, one tracker unless told, the gateway streaming downloads itself (so a dead member
/// is skipped rather than redirected to); returns once every member sees its peer active (from then on uploads
/// reach `write_quorum` members).
async fn start(trackers: usize) -> Cluster {
    let spec = ClusterSpec {
        trackers,
        ..ClusterSpec::group(2).gateway(&["--download-mode", "proxy"])
    };
    let c = Cluster::start(spec).await;
    c.wait_peers_active().await;
    c
}

/// The bytes the gateway serves for `id`, or why it does not.
async fn download(c: &Cluster, id: &str) -> Result<Vec<u8>, String> {
    c.follow
        .get(format!("{}/{id}", c.gateway_url()))
        .try_bytes()
        .await
}

/// `XX/YY/name` of a file ID.
fn rel(id: &str) -> String {
    id.splitn(3, '/').nth(2).unwrap().to_owned()
}

/// Wait until tracker 0 sees storage member `m` of group 1 in `state`.
async fn wait_member(c: &Cluster, m: usize, state: MemberState) {
    c.wait_state(0, m, state).await;
}

/// Whether every storage node is active in a view.
fn all_active(c: &Cluster, v: &fdfs_common::wire::ClusterView) -> bool {
    c.all_storage()
        .all(|n| c.state_in(v, n) == Some(MemberState::Active))
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
        wait_until(STATE_TIMEOUT, "the reader's rounds", || {
            self.rounds.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.rounds.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_wiped_member_recovers_while_files_stay_available() {
    let mut c = start(1).await;
    let mut files = Vec::new();
    for i in 0..30 {
        let u = c
            .upload_content(&format!("f{i}.bin"), i, 10_000 + i * 1000)
            .await;
        // Default write_quorum = 2: both members hold it at acknowledgement.
        assert_eq!(u.answer["replicas"], 2, "{}", u.answer);
        files.push((u.id, u.body));
    }
    let reader = Reader::start(c.gateway_url(), files.clone());
    reader.wait_rounds(1).await;

    // One more acknowledged upload, then kill -9 the member that took it.
    let body = content(99, 50_000);
    let j = c.upload("last.bin", body.clone()).await;
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
    let have = stored_files(&survivor.dir);
    for (id, _) in &files {
        assert!(have.contains(&rel(id)), "{id} missing on the survivor");
    }

    // Its whole data folder is lost.
    c.wipe(0, victim);
    wait_member(&c, victim, MemberState::Offline).await;
    reader.wait_rounds(1).await;

    let t0 = Instant::now();
    c.restart(0, victim);
    wait_member(&c, victim, MemberState::Active).await;
    let recovered = t0.elapsed();
    // Active means caught up: it holds every file already.
    let have = stored_files(&c.storage[0][victim].dir);
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
            let r = c.http.get(format!("{}/{id}", n.url()));
            let got = r.header("x-fdfs-no-proxy", "1").ok_bytes().await;
            assert_eq!(&got, body, "{id} on {}", n.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_that_missed_uploads_and_deletes_converges() {
    let mut c = start(1).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let j = c.upload(&format!("a{i}.txt"), content(i, 3000)).await;
        ids.push(j["file_id"].as_str().unwrap().to_owned());
    }
    c.kill9(0, 1);
    wait_member(&c, 1, MemberState::Offline).await;
    // While it is down: uploads (acknowledged with one replica: the quorum is capped by live members) and
    // deletes.
    for i in 20..35 {
        let j = c.upload(&format!("b{i}.txt"), content(i, 2000)).await;
        assert_eq!(j["replicas"], 1, "{j}");
        ids.push(j["file_id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..8] {
        c.delete(id).await;
    }
    c.restart(0, 1);
    let (a, b) = (c.storage[0][0].dir.clone(), c.storage[0][1].dir.clone());
    let took = wait_until(STATE_TIMEOUT, "member 2 to converge", || {
        stored_files(&a) == stored_files(&b)
    })
    .await;
    println!("member converged {took:?} after restart");
    let have = stored_files(&b);
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
    let mut c = start(2).await;
    let mut files = Vec::new();
    for i in 0..5 {
        let u = c.upload_content(&format!("t{i}.bin"), i, 4000).await;
        files.push((u.id, u.body));
    }
    c.trackers[0].kill9();
    // Straight away: uploads and downloads through the gateway keep working.
    for i in 5..15 {
        let u = c.upload_content(&format!("t{i}.bin"), i, 4000).await;
        assert_eq!(u.answer["replicas"], 2, "{}", u.answer);
        files.push((u.id, u.body));
    }
    for (id, body) in &files {
        assert_eq!(&download(&c, id).await.unwrap(), body);
    }
    // The surviving tracker still sees the whole group active (storage nodes heartbeat to every tracker).
    c.wait_tracker(
        1,
        "both members active on tracker 2",
        STATE_TIMEOUT,
        all_active,
    )
    .await;
    // The killed tracker comes back and learns the group again from heartbeats.
    c.trackers[0].restart();
    let again = "both members active on tracker 1 again";
    c.wait_tracker(0, again, STATE_TIMEOUT, all_active).await;
    let j = c.upload("after.bin", content(77, 1234)).await;
    let id = j["file_id"].as_str().unwrap();
    assert_eq!(download(&c, id).await.unwrap(), content(77, 1234));
}
