//! Issue 13 item 6, a full member must not stop its group, against real processes: one member of group1 keeps
//! its files on a small tmpfs that the test fills up (a real ENOSPC). Its peer's deletes and metadata changes
//! still reach it while the upload it refused waits, the tracker sends new uploads to group2 (and refuses them
//! for group1), and once space is freed (after a kill -9 of the peer, whose persisted position must not have
//! skipped the refused upload) the full member takes it and its peer's binlog drains.

use std::path::{Path, PathBuf};
use std::process::Command;

use fdfs_common::wire::MemberState;
use fdfs_testkit::{
    content, eventually_ok, free_bytes, member_in, tempdir, Cluster, ClusterSpec, RequestExt,
    STATE_TIMEOUT,
};
use reqwest::StatusCode;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A tmpfs mounted for the test; unmounted (and `cleanup` removed) on drop.
pub(crate) struct Tmpfs {
    pub(crate) at: PathBuf,
    cleanup: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(at: &Path, size: &str, cleanup: &Path) -> Result<Tmpfs, String> {
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

/// Status of `HEAD {node}/v1/replica/{id}` (200 held, 404 absent, 410 deleted).
async fn replica_status(c: &Cluster, node: &str, id: &str) -> StatusCode {
    let r = c.http.head(format!("{node}/v1/replica/{id}")).secret();
    r.go().await.status()
}

/// Fill the filesystem of `dir` until `leave` bytes are free (a file of zeros).
pub(crate) fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let free = free_bytes(dir).expect("free space of the tmpfs");
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
    let dir = tempdir(1 << 30);
    let store_b = dir.path().join("storage-g1-m2");
    let tmpfs = match Tmpfs::mount(&store_b, "48m", dir.path()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or a user namespace): {e}");
            return;
        }
    };
    // The tracker keeps 4 MiB free on every store path, the storage nodes 1 MiB (their floor for replicas).
    let spec = ClusterSpec::default()
        .tracker(&["--reserved-storage-space", "4MiB"])
        .storage(&["--reserved-storage-space", "1MiB"]);
    let c = Cluster::start_in(spec, dir).await;
    let (a, b) = (c.storage[0][0].url(), c.storage[0][1].url());
    let base = c.gateway_url();

    // Two files in group1, held by both members.
    let mut ids = Vec::new();
    for i in 0..2 {
        let j = c
            .upload(&format!("f{i}.bin?group=group1"), content(i, 64 * 1024))
            .await;
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
    let r = c.http.post(format!("{a}/v1/upload?ext=bin")).secret();
    let r = r.body(big.clone()).go().await;
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.text().await.unwrap()
    );
    let listing: Value = c
        .http
        .get(format!("{a}/v1/sync/files?limit=100"))
        .secret()
        .ok_json()
        .await;
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
    let r = c.http.delete(format!("{a}/v1/files/{}", ids[0]));
    assert_eq!(r.secret().go().await.status(), StatusCode::OK);
    let r = c.http.put(format!("{a}/v1/meta/{}", ids[1]));
    let r = r.secret().json(&serde_json::json!({"k": "v"})).go().await;
    assert_eq!(r.status(), StatusCode::OK);
    eventually_ok(
        STATE_TIMEOUT,
        "the delete to reach the full member",
        || async {
            match replica_status(&c, &b, &ids[0]).await {
                StatusCode::GONE => Ok(()),
                s => Err(format!("B answers {s} for the deleted file")),
            }
        },
    )
    .await;
    eventually_ok(
        STATE_TIMEOUT,
        "the metadata to reach the full member",
        || async {
            let r = c.http.get(format!("{b}/v1/replica/meta/{}", ids[1]));
            let meta: Value = r.secret().try_json().await?;
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
        let j = c
            .upload(&format!("n{i}.bin"), content(10 + i, 32 * 1024))
            .await;
        assert_eq!(j["group"], "group2", "{j}");
        assert_eq!(j["replicas"], 2, "{j}");
    }
    let r = c.http.put(format!("{base}/upload/g1.bin?group=group1"));
    let r = r.body(content(20, 1024)).go().await;
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
    c.wait_state(0, 0, MemberState::Active).await;

    // Space frees: B takes the refused upload, A's binlog drains, group1 takes uploads again.
    std::fs::remove_file(&filler).unwrap();
    eventually_ok(STATE_TIMEOUT, "the full member to catch up", || async {
        match replica_status(&c, &b, &refused).await {
            StatusCode::OK => Ok(()),
            s => Err(format!("B answers {s} for the refused upload")),
        }
    })
    .await;
    let got = c.held(&c.storage[0][1], &refused).await;
    assert!(got == Some(big), "B's copy of the refused upload differs");
    eventually_ok(STATE_TIMEOUT, "A's binlog to drain towards B", || async {
        let st = c.sync_status(&c.storage[0][0]).await?;
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
    eventually_ok(STATE_TIMEOUT, "group1 to take uploads again", || async {
        let r = c.http.put(format!("{base}/upload/g1.bin?group=group1"));
        let r = r.body(content(21, 1024)).send().await;
        let r = r.map_err(|e| e.to_string())?;
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
