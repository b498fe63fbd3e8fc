//! Frozen peers (SIGSTOP: the process keeps its sockets open and answers nothing, so requests to it never fail
//! on their own): every peer transfer has a deadline by size and a stall timeout, so uploads still end in
//! bounded time, and a member catching up from a frozen source fails over to another member.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdfs_common::wire::{ClusterView, MemberState, UploadResult};
use fdfs_testkit::{
    content, eventually, eventually_ok, member_in, metric, Cluster, ClusterSpec, RequestExt,
};
use futures_util::StreamExt;

/// One group of two members; peers count as stalled after 2 s without data.
fn spec() -> ClusterSpec {
    ClusterSpec::group(2).storage(&["--peer-stall-timeout-ms", "2000"])
}

/// Upper bound of any one upload here; a frozen peer must not hold an upload anywhere near it.
const UPLOAD_BOUND: Duration = Duration::from_secs(120);

/// `POST {base}/v1/upload` (a storage node's internal route): the status and, on 200, the result.
async fn upload_to(
    http: &reqwest::Client,
    base: &str,
    body: Vec<u8>,
) -> Result<(u16, Option<UploadResult>), String> {
    let r = http
        .post(format!("{base}/v1/upload?ext=bin"))
        .secret()
        .timeout(UPLOAD_BOUND)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(|e| format!("{e:?}"))?;
    if status == 200 {
        let res = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        Ok((status, Some(res)))
    } else {
        Ok((status, None))
    }
}

/// Whether `base` (a storage node's internal URL) holds `id`.
async fn holds(http: &reqwest::Client, base: &str, id: &str) -> bool {
    http.get(format!("{base}/v1/files/{id}"))
        .secret()
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_end_in_bounded_time_while_a_peer_is_frozen() {
    let c = Cluster::start(spec()).await;
    let a = c.storage[0][0].internal_url();
    let b = c.storage[0][1].internal_url();
    let http = reqwest::Client::new();

    // Four uploaders send 512 KiB files to member a (write quorum 2: each upload is pushed to b before the
    // answer) until told to stop; every upload must end with 200 or 503, never hang.
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(String, u32, bool)>>> = Arc::default();
    let frozen = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (http, a) = (http.clone(), a.clone());
        let (done, finished, acked, frozen) = (
            done.clone(),
            finished.clone(),
            acked.clone(),
            frozen.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let after_freeze = frozen.load(Ordering::Relaxed);
                let t0 = Instant::now();
                let r = upload_to(&http, &a, content(w * 10_000 + i, 512 << 10)).await;
                match r {
                    Ok((200, Some(res))) => acked.lock().unwrap().push((
                        res.file_id.to_string(),
                        res.replicas,
                        after_freeze,
                    )),
                    Ok((503, _)) => {}
                    other => panic!(
                        "upload {w}/{i} after {:?}: {other:?} (want 200 or 503)",
                        t0.elapsed()
                    ),
                }
                finished.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    let deadline = Instant::now() + Duration::from_secs(300);
    eventually(300, "uploads to go through", || async {
        (finished.load(Ordering::Relaxed) >= 8).then_some(())
    })
    .await;
    // Freeze b while uploads (and their replica pushes to b) are in flight.
    c.storage[0][1].freeze();
    frozen.store(true, Ordering::Relaxed);
    let at_freeze = finished.load(Ordering::Relaxed);
    eprintln!("froze b after {at_freeze} uploads");
    // Uploads go on: first 503s or 200s once the stall is detected, then (b offline) 200 with one replica.
    let left = deadline.saturating_duration_since(Instant::now());
    eventually_ok(left, "uploads to go on while b is frozen", || async {
        let capped = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, replicas, after)| *after && *replicas == 1)
            .count();
        let since = finished.load(Ordering::Relaxed) - at_freeze;
        // An uploader that failed ends the wait: its panic is reported below.
        if (capped >= 4 && since >= 12) || workers.iter().any(|w| w.is_finished()) {
            return Ok(());
        }
        Err(format!("{since} finished since, {capped} with one replica"))
    })
    .await;
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("uploader");
    }

    // b resumes and ends up holding every acknowledged file.
    c.storage[0][1].thaw();
    c.wait_state(0, 1, MemberState::Active).await;
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} uploads acknowledged", acked.len());
    let deadline = Instant::now() + Duration::from_secs(180);
    for (id, _, _) in &acked {
        let left = deadline.saturating_duration_since(Instant::now());
        eventually(
            left,
            &format!("{id} to reach b after it resumed"),
            || async { holds(&http, &b, id).await.then_some(()) },
        )
        .await;
    }
}

/// `fdfs_catchup_files_total` of a storage node (0 before its first fetch).
async fn catchup_files(http: &reqwest::Client, base: &str) -> u64 {
    let r = http.get(format!("{base}/metrics"));
    let Ok(text) = r.timeout(Duration::from_secs(5)).try_bytes().await else {
        return 0;
    };
    metric(&String::from_utf8_lossy(&text), "fdfs_catchup_files_total ").map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_ends_its_catch_up_when_the_source_freezes() {
    const FILES: usize = 1500;
    let mut c = Cluster::start(spec()).await;
    let http = reqwest::Client::new();
    let a = c.storage[0][0].internal_url();
    let ids: Vec<String> = futures_util::stream::iter(0..FILES)
        .map(|i| {
            let (http, a) = (http.clone(), a.clone());
            async move {
                match upload_to(&http, &a, content(i, 4096)).await {
                    Ok((200, Some(res))) => res.file_id.to_string(),
                    other => panic!("seed upload {i}: {other:?}"),
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // A third member joins; as soon as its catch-up copies files, freeze the member it copies from (the one
    // with the most files, then the lowest id: what the catch-up picks).
    let new = c.add_storage(0, &[]);
    let new_base = c.storage[0][new].internal_url();
    // Polled often: the freeze must come while the catch-up still has most of its files to copy.
    let deadline = Instant::now() + Duration::from_secs(300);
    while catchup_files(&http, &new_base).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the new member never started copying"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let view: ClusterView = c.view_at(&c.trackers[0].url()).await.expect("tracker view");
    let mut sources: Vec<(usize, u64, u32)> = (0..2)
        .filter_map(|m| {
            member_in(&view, &c.storage[0][m])
                .filter(|i| i.state == MemberState::Active)
                .map(|i| (m, i.file_count, i.node_id))
        })
        .collect();
    sources.sort_by_key(|&(_, files, id)| (std::cmp::Reverse(files), id));
    let source = sources.first().expect("an active member").0;
    c.storage[0][source].freeze();
    let copied = catchup_files(&http, &new_base).await;
    eprintln!("froze member {source} after the new member copied {copied} files");
    assert!(
        member_in(
            &c.view_at(&c.trackers[0].url()).await.unwrap(),
            &c.storage[0][new]
        )
        .is_some_and(|i| i.state == MemberState::Syncing),
        "the catch-up ended before the freeze: nothing was proved (raise FILES)"
    );

    // It ends anyway: active, holding every file (from the other member).
    let t0 = Instant::now();
    c.wait_tracker(
        0,
        "the new member to be active",
        Duration::from_secs(240),
        |c, v| member_in(v, &c.storage[0][new]).is_some_and(|i| i.state == MemberState::Active),
    )
    .await;
    eprintln!("active {:.1}s after the freeze", t0.elapsed().as_secs_f64());
    for id in &ids {
        assert!(
            holds(&http, &new_base, id).await,
            "the new member lacks {id}"
        );
    }
    c.storage[0][source].thaw();
}
