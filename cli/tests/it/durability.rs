//! Durability of acknowledged writes against real crashes of real `fdfs storage` processes (see `common/`):
//! kill -9 of the node taking uploads, and separately of its peer, in the middle of a 16-client upload run loses
//! no acknowledged file; a crash between a file's rename and its index update (the hidden `--fail-point` flag
//! aborts the process right there) is reconciled at the next start; a delete interrupted between its record and
//! the unlink is finished at the next start.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{args, content, Cluster, ClusterSpec, Node, Role, SECRET, STATE_TIMEOUT};
use fdfs_common::wire::CLUSTER_SECRET_HEADER;
use serde_json::Value;

/// One group of two members (write quorum 2), one tracker.
fn pair() -> ClusterSpec {
    ClusterSpec {
        groups: 1,
        members: 2,
        ..ClusterSpec::default()
    }
}

fn one() -> ClusterSpec {
    ClusterSpec {
        groups: 1,
        members: 1,
        ..ClusterSpec::default()
    }
}

/// `POST /v1/upload` straight to a storage node: the answer, or the transport error.
async fn post(http: &reqwest::Client, node: &str, body: Vec<u8>) -> Result<Value, String> {
    let r = http
        .post(format!("{node}/v1/upload?ext=bin"))
        .header(CLUSTER_SECRET_HEADER, SECRET)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// The bytes a node serves for an ID (`None` when it does not have it).
async fn get(http: &reqwest::Client, node: &str, id: &str) -> Option<Vec<u8>> {
    let r = http
        .get(format!("{node}/{id}"))
        .header("x-fdfs-no-proxy", "1")
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.bytes().await.ok().map(|b| b.to_vec())
}

/// Wait until a (re)started node serves: it prints `listening on` before it opens its store (and replays it).
async fn wait_ready(http: &reqwest::Client, node: &str) {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{node}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(t0.elapsed() < STATE_TIMEOUT, "{node} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file ID a node's catch-up listing (its index, checked against the disk) shows.
async fn listing(http: &reqwest::Client, node: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = http
            .get(format!("{node}/v1/sync/files"))
            .query(&[("after", after.as_str()), ("limit", "1000")])
            .header(CLUSTER_SECRET_HEADER, SECRET)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for f in page["files"].as_array().unwrap() {
            ids.push(f["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => after = n.to_owned(),
            None => return ids,
        }
    }
}

/// Files under a store path's `data/` (metadata sidecars skipped), as IDs of `group`.
fn files_on_disk(store: &Path, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(l1) = std::fs::read_dir(store.join("data")) else {
        return out;
    };
    for d1 in l1.flatten() {
        for d2 in std::fs::read_dir(d1.path()).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d2.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with("-m") {
                    continue;
                }
                out.push(format!(
                    "{group}/M00/{}/{}/{name}",
                    d1.file_name().to_string_lossy(),
                    d2.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Run the storage node of a one-member cluster once with `--fail-point point`; `act` must make it reach the
/// point. Returns once the process died of it.
async fn crash_at<F, Fut>(c: &mut Cluster, point: &str, act: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let node = &mut c.storage[0][0];
    node.kill9();
    let mut a = args(&[
        "--group",
        "group1",
        "--tracker",
        &c.trackers[0].addr.to_string(),
    ]);
    a.push("--store-path".into());
    a.push(node.dir.display().to_string());
    a.extend(args(&[
        "--heartbeat-interval-ms",
        "200",
        "--fail-point",
        point,
    ]));
    let log = node.dir.with_extension("failpoint.log");
    let listen = node.addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut child, _) = loop {
        match crate::common::try_spawn_server(Role::Storage, &listen, &a, &log) {
            Ok(x) => break x,
            Err(e) if e.contains("in use") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    };
    act(node.url()).await;
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > STATE_TIMEOUT {
            let _ = child.kill();
            panic!("the node never reached fail point {point}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "aborted at {point}: {status:?}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains(&format!("fail point {point} reached")),
        "{log_text}"
    );
    node.restart();
    wait_ready(&c.http, &node.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_rename_and_index_update_is_reconciled_at_start() {
    let mut c = Cluster::start(one()).await;
    let http = c.http.clone();
    let body = content(1, 5000);
    let sent = body.clone();
    crash_at(&mut c, "after-rename", |url| async move {
        let r = post(&http, &url, sent).await;
        assert!(r.is_err(), "the node died before answering: {r:?}");
    })
    .await;
    let node = &c.storage[0][0];
    let on_disk = files_on_disk(&node.dir, "group1");
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
    let mut c = Cluster::start(one()).await;
    let url = c.storage[0][0].url();
    let up = post(&c.http, &url, content(2, 3000)).await.unwrap();
    let id = up["file_id"].as_str().unwrap().to_owned();
    let kept = post(&c.http, &url, content(3, 3000)).await.unwrap();
    let kept = kept["file_id"].as_str().unwrap().to_owned();
    let http = c.http.clone();
    let del = id.clone();
    crash_at(&mut c, "after-delete-record", |url| async move {
        let r = http
            .delete(format!("{url}/v1/files/{del}"))
            .header(CLUSTER_SECRET_HEADER, SECRET)
            .send()
            .await;
        assert!(
            r.is_err(),
            "the node died before answering: {:?}",
            r.map(|r| r.status())
        );
    })
    .await;
    let node = &c.storage[0][0];
    assert!(
        !files_on_disk(&node.dir, "group1").contains(&id),
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

/// 16 clients uploading 4 KiB files straight to `url` until `stop` is set; each acknowledged upload is recorded.
fn upload_run(
    http: &reqwest::Client,
    url: &str,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let tasks = (0..16)
        .map(|client| {
            let (http, url, stop, acked) =
                (http.clone(), url.to_owned(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
    (acked, tasks)
}

async fn wait_acked(acked: &Acked, n: usize) {
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < n {
        assert!(t0.elapsed() < STATE_TIMEOUT, "uploads do not go through");
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        let t0 = Instant::now();
        loop {
            match get(http, &node.url(), id).await {
                Some(b) if b == want => break,
                got => {
                    assert!(
                        !now && t0.elapsed() < STATE_TIMEOUT,
                        "{}: acknowledged {id} is {}",
                        node.name,
                        if got.is_some() { "corrupt" } else { "missing" }
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_source_during_uploads_loses_no_acknowledged_file() {
    let mut c = Cluster::start(pair()).await;
    let source = c.storage[0][0].url();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked, tasks) = upload_run(&c.http, &source, &stop);
    wait_acked(&acked, 200).await;
    c.kill9(0, 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Acknowledged with two replicas: the peer holds the file, at once.
    let held: Vec<_> = acked.iter().filter(|a| a.2 == 2).cloned().collect();
    assert!(!held.is_empty());
    all_readable(&c.http, &c.storage[0][1], &held, true).await;
    c.restart(0, 0);
    wait_ready(&c.http, &c.storage[0][0].url()).await;
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
    let mut c = Cluster::start(pair()).await;
    let source = c.storage[0][0].url();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked, tasks) = upload_run(&c.http, &source, &stop);
    wait_acked(&acked, 200).await;
    c.kill9(0, 1);
    let before = acked.lock().unwrap().len();
    // Uploads go on with the peer dead (the quorum is capped by the live members).
    wait_acked(&acked, before + 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    all_readable(&c.http, &c.storage[0][0], &acked, true).await;
    c.restart(0, 1);
    wait_ready(&c.http, &c.storage[0][1].url()).await;
    // What the peer acknowledged as a replica is there at once; the rest arrives from the source's binlog.
    let held: Vec<_> = acked.iter().filter(|a| a.2 == 2).cloned().collect();
    all_readable(&c.http, &c.storage[0][1], &held, true).await;
    all_readable(&c.http, &c.storage[0][1], &acked, false).await;
}
