//! Issue 20, the S3 door through a power cut: the gateway keeps its embedded namespace on a simulated disk
//! ([`fdfs_testkit::powercut`], which drops whatever was never fsynced), clients put, overwrite and delete keys
//! through presigned URLs, and the gateway's machine loses power in the middle of it (the gateway is killed and
//! its disk cut). Started again on what its disk kept, the door answers every key as a client was last told:
//! an acknowledged put is there with its bytes, an acknowledged delete stays gone, listings agree; a key an
//! operation was in flight on holds its old or its new value, whole.
//!
//! The namespace is first made durable as an old one would be (a remount: what a disk holds at mount is
//! durable), so the cut tests the namespace's own syncs and not the rebuild from the storage nodes that a
//! namespace lost whole gets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fdfs_testkit::powercut::{Cut, Disk};
use fdfs_testkit::{content, eventually, tempdir, Cluster, ClusterSpec, STATE_TIMEOUT};

use crate::s3door::Door;

const BUCKET: &str = "shop";

/// A key's value: the content number and length of its bytes, or `None` when it does not exist.
type Value = Option<(usize, usize)>;

/// What the clients were told.
#[derive(Default)]
struct Told {
    /// Each key's last acknowledged value.
    acked: BTreeMap<String, Value>,
    /// Keys operations were in flight on, or failed on, since the last acknowledged one, with the values they
    /// would have left.
    uncertain: BTreeMap<String, Vec<Value>>,
}

/// A client putting new keys, overwriting and deleting its own (disjoint from the other clients').
async fn client(
    i: usize,
    door: Door,
    http: reqwest::Client,
    told: Arc<Mutex<Told>>,
    stop: Arc<AtomicBool>,
) {
    let mut mine: Vec<String> = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ i as u64;
    let mut j = 0;
    while !stop.load(Ordering::Relaxed) {
        j += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = i * 1_000_000 + j;
        let len = 1 + (rng as usize >> 8) % (48 << 10);
        let (key, value) = match rng % 10 {
            0..=5 => (format!("c{i}/k{j}"), Some((n, len))),
            6..=7 if !mine.is_empty() => {
                (mine[rng as usize / 16 % mine.len()].clone(), Some((n, len)))
            }
            _ if !mine.is_empty() => (mine[rng as usize / 16 % mine.len()].clone(), None),
            _ => continue,
        };
        told.lock()
            .unwrap()
            .uncertain
            .entry(key.clone())
            .or_default()
            .push(value);
        let path = format!("/{BUCKET}/{key}");
        let r = match value {
            Some((n, len)) => {
                http.put(door.url("PUT", &path, &[]))
                    .body(content(n, len))
                    .send()
                    .await
            }
            None => http.delete(door.url("DELETE", &path, &[])).send().await,
        };
        if r.is_ok_and(|r| r.status().is_success()) {
            let mut t = told.lock().unwrap();
            t.uncertain.remove(&key);
            t.acked.insert(key.clone(), value);
            match value {
                Some(_) if !mine.contains(&key) => mine.push(key),
                None => mine.retain(|k| *k != key),
                _ => {}
            }
        }
    }
}

async fn s3_power_cut(ops: usize, how: Cut) {
    let dir = tempdir(1 << 30);
    let state = dir.path().join("gateway-disk");
    let mount = dir.path().join("gateway-s3");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    let disk = Disk::mount(&state, &mount).expect("mount the simulated disk");
    let spec = Door::spec(ClusterSpec::group(2), &mount.join("ns"));
    let mut c = Cluster::start_in(spec, dir).await;
    let door = Door::of(&c);
    let http = c.http.clone();
    door.create_bucket(&http, BUCKET).await;

    // An old namespace: everything on the disk durable, as after a remount.
    c.gateway.kill9();
    drop(disk);
    let mut disk = Disk::mount(&state, &mount).expect("mount the simulated disk again");
    c.gateway.restart();
    c.gateway.wait_healthy(STATE_TIMEOUT).await;

    let told = Arc::new(Mutex::new(Told::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(client(
                i,
                door.clone(),
                http.clone(),
                told.clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually(STATE_TIMEOUT, "the load to get going", || async {
        let t = told.lock().unwrap();
        let deletes = t.acked.values().filter(|v| v.is_none()).count();
        (t.acked.len() >= ops && deletes >= ops / 10).then_some(())
    })
    .await;

    // The power goes on the gateway's machine, in the middle of the load.
    c.gateway.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    let syncs = disk.syncs();
    let dropped = disk.cut(how).expect("cut");
    c.gateway.restart();
    c.gateway.wait_healthy(STATE_TIMEOUT).await;
    let told = std::mem::take(&mut *told.lock().unwrap());
    eprintln!(
        "power cut after {} keys acknowledged ({} deleted), {} uncertain; the disk dropped {dropped:?}; \
         syncs before the cut (files, dirs): {syncs:?}",
        told.acked.len(),
        told.acked.values().filter(|v| v.is_none()).count(),
        told.uncertain.len()
    );

    // Every key as it was last acknowledged (or, with an operation in flight, either way, whole).
    let listed = eventually(STATE_TIMEOUT, "the door to list the bucket", || async {
        door.list(&http, BUCKET).await.ok()
    })
    .await;
    let keys: std::collections::BTreeSet<&String> =
        told.acked.keys().chain(told.uncertain.keys()).collect();
    for key in keys {
        let mut allowed: Vec<Value> = Vec::new();
        allowed.push(told.acked.get(key).copied().flatten());
        allowed.extend(told.uncertain.get(key).into_iter().flatten());
        let got = door.get(&http, BUCKET, key).await.unwrap();
        let ok = allowed.iter().any(|v| match (v, &got) {
            (None, None) => true,
            (Some((n, len)), Some(bytes)) => *bytes == content(*n, *len),
            _ => false,
        });
        let shown = got.as_ref().map(Vec::len);
        assert!(
            ok,
            "{key}: the door answers {shown:?} bytes; the clients were told {allowed:?} (content, length)"
        );
        assert_eq!(
            listed.contains(key),
            got.is_some(),
            "{key}: listed {} but GET answers {shown:?} bytes",
            listed.contains(key)
        );
    }
    // And the door takes writes again.
    let r = http
        .put(door.url("PUT", &format!("/{BUCKET}/after"), &[]))
        .body("after")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    c.gateway.kill9();
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_of_the_gateway_keeps_every_key_the_clients_were_told_of() {
    s3_power_cut(150, Cut::LoseAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_that_reorders_losses_keeps_every_key_the_clients_were_told_of() {
    s3_power_cut(150, Cut::Random(0x53_c0de)).await;
}
