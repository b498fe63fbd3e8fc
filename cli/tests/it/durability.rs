//! Durability of acknowledged writes against real crashes of real `fdfs storage` processes: kill -9 of the node
//! taking uploads, and separately of its peer, in the middle of a 16-client upload run loses no acknowledged
//! file; a crash between a file's rename and its index update (the hidden `--fail-point` flag aborts the
//! process right there) is reconciled at the next start; a delete interrupted between its record and the
//! unlink is finished at the next start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fdfs_testkit::{
    args, content, eventually, stored_files, Cluster, ClusterSpec, Node, RequestExt, STATE_TIMEOUT,
};
use serde_json::Value;

/// `POST /v1/upload` straight to a storage node: the answer, or why there is none.
async fn post(http: &reqwest::Client, node: &str, body: Vec<u8>) -> Result<Value, String> {
    let r = http.post(format!("{node}/v1/upload?ext=bin")).secret();
    r.body(body).try_json().await
}

/// The bytes a node serves for an ID from its own disk (`None` when it does not have it).
async fn get(http: &reqwest::Client, node: &str, id: &str) -> Option<Vec<u8>> {
    let r = http
        .get(format!("{node}/{id}"))
        .header("x-fdfs-no-proxy", "1");
    r.try_bytes().await.ok()
}

/// Every file ID a node's catch-up listing (its index, checked against the disk) shows.
async fn listing(http: &reqwest::Client, node: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = http
            .get(format!("{node}/v1/sync/files"))
            .query(&[("after", after.as_str()), ("limit", "1000")])
            .secret()
            .ok_json()
            .await;
        for f in page["files"].as_array().unwrap() {
            ids.push(f["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => after = n.to_owned(),
            None => return ids,
        }
    }
}

/// The IDs of the files stored on a group1 node's disk.
fn on_disk(node: &Node) -> Vec<String> {
    stored_files(&node.dir)
        .into_iter()
        .map(|rel| format!("group1/M00/{rel}"))
        .collect()
}

/// Run the storage node of a one-member cluster once with `--fail-point point`; `act` must make it reach the
/// point. Returns once the process died of it and was started again.
async fn crash_at<F, Fut>(c: &mut Cluster, point: &str, act: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let node = &mut c.storage[0][0];
    node.kill9();
    node.restart_with(&args(&["--fail-point", point]));
    act(node.url()).await;
    let status = node.wait_exit(STATE_TIMEOUT);
    assert!(!status.success(), "aborted at {point}: {status:?}");
    let log = node.log_tail(10_000);
    assert!(
        log.contains(&format!("fail point {point} reached")),
        "{log}"
    );
    node.restart();
    node.wait_healthy(STATE_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_rename_and_index_update_is_reconciled_at_start() {
    let mut c = Cluster::start(ClusterSpec::group(1)).await;
    let http = c.http.clone();
    let body = content(1, 5000);
    let sent = body.clone();
    crash_at(&mut c, "after-rename", |url| async move {
        let r = post(&http, &url, sent).await;
        assert!(r.is_err(), "the node died before answering: {r:?}");
    })
    .await;
    let node = &c.storage[0][0];
    let on_disk = on_disk(node);
    assert_eq!(
        on_disk.len(),
        1,
        "the file was renamed into place before the crash"
    );
    let id = &on_disk[0];
    // The restarted node indexed it from its record: catch-up listings (what a rejoining peer copies) show it.
    assert_eq!(
        listing(&c.http, &node.url()).await,
        std::slice::from_ref(id)
    );
    assert_eq!(
        get(&c.http, &node.url(), id).await.as_deref(),
        Some(&body[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_interrupted_between_record_and_unlink_is_finished_at_start() {
    let mut c = Cluster::start(ClusterSpec::group(1)).await;
    let url = c.storage[0][0].url();
    let up = post(&c.http, &url, content(2, 3000)).await.unwrap();
    let id = up["file_id"].as_str().unwrap().to_owned();
    let kept = post(&c.http, &url, content(3, 3000)).await.unwrap();
    let kept = kept["file_id"].as_str().unwrap().to_owned();
    let http = c.http.clone();
    let del = id.clone();
    crash_at(&mut c, "after-delete-record", |url| async move {
        let r = http.delete(format!("{url}/v1/files/{del}")).secret();
        let r = r.send().await;
        assert!(
            r.is_err(),
            "the node died before answering: {:?}",
            r.map(|r| r.status())
        );
    })
    .await;
    let node = &c.storage[0][0];
    assert!(
        !on_disk(node).contains(&id),
        "the recorded delete was finished at start"
    );
    assert_eq!(get(&c.http, &node.url(), &id).await, None);
    assert_eq!(
        listing(&c.http, &node.url()).await,
        std::slice::from_ref(&kept)
    );
    assert_eq!(
        get(&c.http, &node.url(), &kept).await.as_deref(),
        Some(&content(3, 3000)[..])
    );
}

/// Acknowledged uploads: (file ID, content number, replicas).
type Acked = Arc<Mutex<Vec<(String, usize, u64)>>>;

/// 16 clients uploading 4 KiB files straight to a storage node until stopped; each acknowledged upload is
/// recorded.
struct UploadRun {
    acked: Acked,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UploadRun {
    fn start(http: &reqwest::Client, url: &str) -> UploadRun {
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..16)
            .map(|client| {
                let (http, url, stop, acked) =
                    (http.clone(), url.to_owned(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let n = client * 1_000_000 + i;
                        i += 1;
                        match post(&http, &url, content(n, 4096)).await {
                            Ok(v) => acked.lock().unwrap().push((
                                v["file_id"].as_str().unwrap().to_owned(),
                                n,
                                v["replicas"].as_u64().unwrap(),
                            )),
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                })
            })
            .collect();
        UploadRun { acked, stop, tasks }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Wait until `n` uploads in all were acknowledged.
    async fn wait_acked(&self, n: usize) {
        eventually(STATE_TIMEOUT, "uploads to go through", || async {
            (self.count() >= n).then_some(())
        })
        .await;
    }

    /// Stop the clients; what was acknowledged.
    async fn finish(self) -> Vec<(String, usize, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Every acknowledged file is served with its bytes by `node` (at once when `now`, else within the deadline).
async fn all_readable(
    http: &reqwest::Client,
    node: &Node,
    acked: &[(String, usize, u64)],
    now: bool,
) {
    for (id, n, _) in acked {
        let want = content(*n, 4096);
        let what = format!("{}: acknowledged {id} with its bytes", node.name);
        let timeout = if now { Duration::ZERO } else { STATE_TIMEOUT };
        eventually(timeout, &what, || async {
            (get(http, &node.url(), id).await? == want).then_some(())
        })
        .await;
    }
}

/// A group of two members taking an upload run on member 1; member `m` is killed with -9 once 200 uploads were
/// acknowledged.
async fn kill9_during_uploads(m: usize) -> (Cluster, UploadRun) {
    let mut c = Cluster::start(ClusterSpec::group(2)).await;
    let run = UploadRun::start(&c.http, &c.storage[0][0].url());
    run.wait_acked(200).await;
    c.kill9(0, m);
    (c, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_source_during_uploads_loses_no_acknowledged_file() {
    let (mut c, run) = kill9_during_uploads(0).await;
    let acked = run.finish().await;
    // Acknowledged with two replicas: the peer holds the file, at once.
    let held: Vec<_> = acked.iter().filter(|a| a.2 == 2).cloned().collect();
    assert!(!held.is_empty());
    all_readable(&c.http, &c.storage[0][1], &held, true).await;
    c.restart(0, 0);
    c.storage[0][0].wait_healthy(STATE_TIMEOUT).await;
    all_readable(&c.http, &c.storage[0][0], &acked, true).await;
    all_readable(&c.http, &c.storage[0][1], &acked, false).await;
    let listed = listing(&c.http, &c.storage[0][0].url()).await;
    for (id, _, _) in &acked {
        assert!(
            listed.contains(id),
            "{id} missing from the restarted source's listing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_peer_during_uploads_loses_no_acknowledged_file() {
    let (mut c, run) = kill9_during_uploads(1).await;
    // Uploads go on with the peer dead (the quorum is capped by the live members).
    run.wait_acked(run.count() + 100).await;
    let acked = run.finish().await;
    all_readable(&c.http, &c.storage[0][0], &acked, true).await;
    c.restart(0, 1);
    c.storage[0][1].wait_healthy(STATE_TIMEOUT).await;
    // What the peer acknowledged as a replica is there at once; the rest arrives from the source's binlog.
    let held: Vec<_> = acked.iter().filter(|a| a.2 == 2).cloned().collect();
    all_readable(&c.http, &c.storage[0][1], &held, true).await;
    all_readable(&c.http, &c.storage[0][1], &acked, false).await;
}
