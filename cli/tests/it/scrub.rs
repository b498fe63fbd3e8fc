//! Issue 13 item 13, scrubbing, against real processes: a byte flipped in a stored file on one member and
//! another file truncated on the other are found and repaired from the peer's good copy, by the background
//! scrubber and by `fdfs verify --repair`; `fdfs verify` also reports a file missing from one member.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use fdfs_testkit::{
    metrics, node, peers_all, stored_path as on_disk, wait_until, Cluster, ClusterSpec, Node,
    STATE_TIMEOUT,
};
use serde_json::Value;

/// One group of two members with these storage flags; `n` files uploaded (their IDs and contents), and every
/// member's peers have acknowledged all its records (a worker pushing an upload late would put back a copy
/// the test removes).
async fn start(storage: &[&str], n: usize) -> (Cluster, Vec<(String, Vec<u8>)>) {
    let c = Cluster::start(ClusterSpec::group(2).storage(storage)).await;
    let mut files = Vec::new();
    for i in 0..n {
        let u = c
            .upload_content(&format!("s{i}.bin"), i, 100_000 + i * 1000)
            .await;
        assert_eq!(u.answer["replicas"], 2, "{}", u.answer);
        files.push((u.id, u.body));
    }
    c.wait_sync_all("every record acknowledged", |st| {
        peers_all(st, "pending_records", 0)
    })
    .await;
    (c, files)
}

fn flip_byte(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
    f.sync_all().unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}

/// Wait until the file at `path` holds `want` again.
async fn repaired(path: &Path, want: &[u8], what: &str) {
    let what = format!("{what} to be repaired");
    wait_until(STATE_TIMEOUT, &what, || {
        std::fs::read(path).is_ok_and(|got| got == want)
    })
    .await;
}

/// Run `fdfs verify <extra> --json` against the cluster; (exit code, report).
fn verify(c: &Cluster, extra: &[&str]) -> (i32, Value) {
    let mut cmd = node::command_with_secret();
    cmd.args(["--gateway", &c.gateway_url(), "verify", "--json"])
        .args(extra);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_scrubber_repairs_bit_rot_and_truncation_from_the_peer() {
    let (c, files) = start(
        &[
            "--scrub-bytes-per-sec",
            "64MiB",
            "--scrub-interval-secs",
            "1",
        ],
        3,
    )
    .await;
    let (a, b) = (&c.storage[0][0], &c.storage[0][1]);
    let rot = on_disk(&a.dir, &files[0].0);
    let cut = on_disk(&b.dir, &files[1].0);
    flip_byte(&rot, 5000);
    truncate(&cut, 777);
    repaired(&rot, &files[0].1, "the flipped byte").await;
    repaired(&cut, &files[1].1, "the truncated file").await;
    // Both members counted what they found and repaired.
    for node in [a, b] {
        let metrics = metrics(&c.http, &node.url()).await;
        for name in [
            "fdfs_scrub_files_checked_total",
            "fdfs_scrub_corrupt_total 1",
            "fdfs_scrub_repaired_total 1",
        ] {
            assert!(
                metrics.contains(name),
                "{}: no {name} in\n{metrics}",
                node.name
            );
        }
    }
    // Downloads through the gateway get the good content.
    for (id, body) in &files {
        assert!(
            c.download(id).await == *body,
            "{id} differs after the repair"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_corrupt_and_missing_copies_and_repairs_the_corrupt_ones() {
    // The background scrubber is off: only `fdfs verify` looks.
    let (c, files) = start(&["--scrub-bytes-per-sec", "0"], 4).await;
    let (a, b) = (&c.storage[0][0], &c.storage[0][1]);
    let rot = on_disk(&a.dir, &files[0].0);
    let cut = on_disk(&b.dir, &files[1].0);
    flip_byte(&rot, 99_999);
    truncate(&cut, 0);
    std::fs::remove_file(on_disk(&b.dir, &files[2].0)).unwrap();

    let (code, r) = verify(&c, &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(
        (r["corrupt"].as_u64(), r["repaired"].as_u64()),
        (Some(2), Some(0)),
        "{r:#}"
    );
    // The removed copy is reported missing, unless replication already brought it back (a sender's push or
    // the catch-up re-applying a listing may run at any time): then it is on B's disk with its bytes.
    let missing_path = on_disk(&b.dir, &files[2].0);
    let healed = r["missing"].as_u64() == Some(0);
    if healed {
        assert_eq!(std::fs::read(&missing_path).unwrap(), files[2].1, "{r:#}");
    } else {
        assert_eq!(r["missing"].as_u64(), Some(1), "{r:#}");
    }
    let members = r["groups"][0]["members"].as_array().unwrap();
    let by_addr = |node: &Node| {
        members
            .iter()
            .find(|m| {
                m["addr"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{}", node.addr.port()))
            })
            .unwrap_or_else(|| panic!("{} in {r:#}", node.name))
            .clone()
    };
    let (ra, rb) = (by_addr(a), by_addr(b));
    assert_eq!(ra["scrub"]["corrupt"][0]["file_id"], files[0].0.as_str());
    assert!(ra["scrub"]["corrupt"][0]["problem"]
        .as_str()
        .unwrap()
        .starts_with("crc32"));
    assert_eq!(rb["scrub"]["corrupt"][0]["file_id"], files[1].0.as_str());
    assert!(rb["scrub"]["corrupt"][0]["problem"]
        .as_str()
        .unwrap()
        .starts_with("size 0"));
    assert_eq!(ra["missing"], serde_json::json!([]));
    if !healed {
        assert_eq!(rb["missing"], serde_json::json!([files[2].0]));
    }
    // Nothing was touched without --repair.
    assert_ne!(std::fs::read(&rot).unwrap(), files[0].1);

    // `--repair` fixes the corrupt copies; it copies no missing file itself. The group's own catch-up may bring
    // the missing copy back at any time (members keep applying each other's listings), so what is reported
    // depends on whether it already has: read the disk to know which answer is right.
    let (code, r) = verify(&c, &["--repair"]);
    assert_eq!(
        (r["corrupt"].as_u64(), r["repaired"].as_u64()),
        (Some(2), Some(2)),
        "{r:#}"
    );
    assert_eq!(std::fs::read(&rot).unwrap(), files[0].1);
    assert_eq!(std::fs::read(&cut).unwrap(), files[1].1);
    if code == 0 {
        // Healed by the catch-up before this run: the copy is back with its bytes.
        assert_eq!(std::fs::read(&missing_path).unwrap(), files[2].1, "{r:#}");
        return;
    }
    assert_eq!(code, 1, "the missing copy is still reported: {r:#}");
    assert_eq!(r["missing"].as_u64(), Some(1), "{r:#}");

    let (code, r) = verify(&c, &["--group", "group1"]);
    if code == 0 {
        assert_eq!(std::fs::read(&missing_path).unwrap(), files[2].1, "{r:#}");
        return;
    }
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(
        (r["corrupt"].as_u64(), r["missing"].as_u64()),
        (Some(0), Some(1)),
        "{r:#}"
    );

    // The readable report names the missing copy.
    let mut cmd = node::command_with_secret();
    let out = cmd
        .args(["--gateway", &c.gateway_url(), "verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(0) {
        assert_eq!(std::fs::read(&missing_path).unwrap(), files[2].1, "{text}");
        return;
    }
    assert!(text.contains(&format!("missing  {}", files[2].0)), "{text}");
    assert!(
        text.contains("PROBLEMS: 0 corrupt (0 repaired), 1 missing"),
        "{text}"
    );
}
