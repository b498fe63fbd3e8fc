//! Issue 13 item 6, a full member must not stop its group, against real processes: one member of group1 keeps
//! its files on a small tmpfs that the test fills up (a real ENOSPC). Its peer's deletes and metadata changes
//! still reach it while the upload it refused waits, the tracker sends new uploads to group2 (and refuses them
//! for group1), and once space is freed (after a kill -9 of the peer, whose persisted position must not have
//! skipped the refused upload) the full member takes it and its peer's binlog drains.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    args, content, member_in, upload, Cluster, ClusterSpec, SECRET, STATE_TIMEOUT,
};
use fdfs_common::wire::CLUSTER_SECRET_HEADER;
use reqwest::StatusCode;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A tmpfs mounted for the test; unmounted (and `cleanup` removed) on drop.
struct Tmpfs {
    at: PathBuf,
    cleanup: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str, cleanup: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs {
            at: at.to_owned(),
            cleanup: cleanup.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = std::fs::remove_dir_all(&self.cleanup);
    }
}

fn secret(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header(CLUSTER_SECRET_HEADER, SECRET)
}

/// Poll `cond` until it holds; panics with `what` after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = cond().await;
        match last {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Status of `HEAD {node}/v1/replica/{id}` (200 held, 404 absent, 410 deleted).
async fn replica_status(c: &Cluster, node: &str, id: &str) -> StatusCode {
    secret(c.http.head(format!("{node}/v1/replica/{id}")))
        .send()
        .await
        .unwrap()
        .status()
}

/// Fill the filesystem of `dir` until `leave` bytes are free (a file of zeros).
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let free = crate::common::free_bytes(dir).expect("free space of the tmpfs");
    let mut left = free.saturating_sub(leave);
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; MIB as usize];
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_member_takes_deletes_and_metadata_and_catches_up_while_uploads_go_elsewhere() {
    let dir = crate::common::tempdir(1 << 30);
    let store_b = dir.path().join("storage-g1-m2");
    let tmpfs = match Tmpfs::mount(&store_b, "48m", dir.path()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or a user namespace): {e}");
            return;
        }
    };
    let mut spec = ClusterSpec::default();
    // The tracker keeps 4 MiB free on every store path, the storage nodes 1 MiB (their floor for replicas).
    spec.tracker_args
        .extend(args(&["--reserved-storage-space", "4MiB"]));
    spec.storage_args
        .extend(args(&["--reserved-storage-space", "1MiB"]));
    let c = Cluster::start_in(spec, dir).await;
    let (a, b) = (c.storage[0][0].url(), c.storage[0][1].url());
    let base = c.gateway_url();

    // Two files in group1, held by both members.
    let mut ids = Vec::new();
    for i in 0..2 {
        let r = c
            .http
            .put(format!("{base}/upload/f{i}.bin?group=group1"))
            .body(content(i, 64 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let j: Value = r.json().await.unwrap();
        assert_eq!(j["replicas"], 2, "{j}");
        ids.push(j["file_id"].as_str().unwrap().to_owned());
    }

    // Fill B's disk: 2 MiB stay free, under the tracker's reserve.
    let filler = fill(&tmpfs.at, 2 * MIB);
    c.wait_tracker(0, "the full member's free space", STATE_TIMEOUT, |c, v| {
        member_in(v, &c.storage[0][1])
            .is_some_and(|m| m.store_paths.iter().all(|p| p.free_bytes < 3 * MIB))
    })
    .await;

    // An upload straight to A that cannot fit on B (3 MiB): B refuses it, so the write quorum of 2 is not reached
    // (503) but A keeps the file and must replicate it later.
    let big = content(7, 3 * MIB as usize);
    let r = secret(c.http.post(format!("{a}/v1/upload?ext=bin")))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.text().await.unwrap()
    );
    let listing: Value = secret(c.http.get(format!("{a}/v1/sync/files?limit=100")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["size"] == 3 * MIB)
        .unwrap_or_else(|| panic!("A keeps the refused upload: {listing}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        replica_status(&c, &b, &refused).await,
        StatusCode::NOT_FOUND
    );

    // A delete and a metadata change on A, behind the refused upload in A's binlog, reach B.
    let r = secret(c.http.delete(format!("{a}/v1/files/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = secret(c.http.put(format!("{a}/v1/meta/{}", ids[1])))
        .json(&serde_json::json!({"k": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    eventually(
        "the delete to reach the full member",
        STATE_TIMEOUT,
        || async {
            match replica_status(&c, &b, &ids[0]).await {
                StatusCode::GONE => Ok(()),
                s => Err(format!("B answers {s} for the deleted file")),
            }
        },
    )
    .await;
    eventually(
        "the metadata to reach the full member",
        STATE_TIMEOUT,
        || async {
            let r = secret(c.http.get(format!("{b}/v1/replica/meta/{}", ids[1])))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let meta: Value = r.json().await.map_err(|e| e.to_string())?;
            if meta["k"] == "v" {
                Ok(())
            } else {
                Err(format!("B's metadata: {meta}"))
            }
        },
    )
    .await;
    assert_eq!(
        replica_status(&c, &b, &refused).await,
        StatusCode::NOT_FOUND
    );

    // New uploads all go to group2; group1 is refused while a member is full.
    for i in 0..6 {
        let j = upload(&c, &format!("n{i}.bin"), content(10 + i, 32 * 1024)).await;
        assert_eq!(j["group"], "group2", "{j}");
        assert_eq!(j["replicas"], 2, "{j}");
    }
    let r = c
        .http
        .put(format!("{base}/upload/g1.bin?group=group1"))
        .body(content(20, 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        r.text().await.unwrap()
    );

    // A restart of A (kill -9) forgets the set-aside record: its persisted position must still be before it.
    let mut c = c;
    c.kill9(0, 0);
    c.restart(0, 0);
    c.wait_state(0, 0, fdfs_common::wire::MemberState::Active)
        .await;

    // Space frees: B takes the refused upload, A's binlog drains, group1 takes uploads again.
    std::fs::remove_file(&filler).unwrap();
    eventually("the full member to catch up", STATE_TIMEOUT, || async {
        match replica_status(&c, &b, &refused).await {
            StatusCode::OK => Ok(()),
            s => Err(format!("B answers {s} for the refused upload")),
        }
    })
    .await;
    let got = secret(c.http.get(format!("{b}/v1/replica/{refused}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == big, "B's copy of the refused upload differs");
    eventually("A's binlog to drain towards B", STATE_TIMEOUT, || async {
        let st: Value = secret(c.http.get(format!("{a}/v1/sync/status")))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let pending: u64 = st["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["pending_records"].as_u64().unwrap_or(u64::MAX))
            .sum();
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("A's sync status: {st}"))
        }
    })
    .await;
    eventually("group1 to take uploads again", STATE_TIMEOUT, || async {
        let r = c
            .http
            .put(format!("{base}/upload/g1.bin?group=group1"))
            .body(content(21, 1024))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| e.to_string())?;
        if status == StatusCode::OK && text.contains("\"replicas\":2") {
            Ok(())
        } else {
            Err(format!("{status}: {text}"))
        }
    })
    .await;
    drop(c);
    drop(tmpfs);
}
