//! Buckets outlive the namespace too: each bucket has a marker file on the storage nodes (tagged with the
//! bucket), so a gateway that lost its namespace rebuilds even the buckets that hold nothing, and a deleted
//! bucket's marker goes with it (a rebuild does not bring the bucket back).

use fdfs_testkit::{tempdir, Cluster, ClusterSpec, STATE_TIMEOUT};

use crate::s3door::{between, Door};

/// The buckets ListBuckets answers (`Err` while the door does not answer 200, e.g. during a rebuild).
async fn buckets(c: &Cluster, door: &Door) -> Result<Vec<String>, String> {
    let r = c
        .http
        .get(door.url("GET", "/", &[]))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("ListBuckets: {}", r.status()));
    }
    Ok(between(&r.text().await.map_err(|e| e.to_string())?, "Name"))
}

/// The gateway loses its disk (its namespace in `ns`) and starts again on the same S3 port: the buckets once it
/// has rebuilt the namespace from the storage nodes.
async fn lose_namespace(c: &mut Cluster, door: &Door, ns: &std::path::Path) -> Vec<String> {
    c.gateway.kill9();
    std::fs::remove_dir_all(ns).unwrap();
    c.gateway.restart();
    let c = &*c;
    fdfs_testkit::eventually(STATE_TIMEOUT, "the namespace to be rebuilt", || async {
        buckets(c, door).await.ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_buckets_are_rebuilt_and_deleted_ones_stay_deleted() {
    let dir = tempdir(1 << 30);
    let ns = dir.path().join("gateway-s3");
    let mut c = Cluster::start_in(Door::spec(ClusterSpec::group(2), &ns), dir).await;
    let door = Door::of(&c);
    for b in ["empty", "full", "gone"] {
        door.create_bucket(&c.http, b).await;
    }
    let r = c.http.put(door.url("PUT", "/full/k.txt", &[])).body("kept");
    assert_eq!(r.send().await.unwrap().status(), 200);
    let r = c.http.delete(door.url("DELETE", "/gone", &[]));
    assert_eq!(r.send().await.unwrap().status(), 204);
    assert_eq!(buckets(&c, &door).await.unwrap(), ["empty", "full"]);

    assert_eq!(lose_namespace(&mut c, &door, &ns).await, ["empty", "full"]);
    assert_eq!(
        door.get(&c.http, "full", "k.txt").await.unwrap(),
        Some(b"kept".to_vec())
    );
    // The rebuilt bucket is a bucket like any other: it takes objects and can be deleted again.
    let r = c
        .http
        .put(door.url("PUT", "/empty/new.txt", &[]))
        .body("new");
    assert_eq!(r.send().await.unwrap().status(), 200);
    let r = c.http.delete(door.url("DELETE", "/empty/new.txt", &[]));
    assert_eq!(r.send().await.unwrap().status(), 204);
    let r = c.http.delete(door.url("DELETE", "/empty", &[]));
    assert_eq!(r.send().await.unwrap().status(), 204);
    assert_eq!(buckets(&c, &door).await.unwrap(), ["full"]);
}

/// Whether a storage node of `c` holds a file with exactly `bytes` (a bucket's marker holds its name).
fn on_some_disk(c: &Cluster, bytes: &[u8]) -> bool {
    fn walk(dir: &std::path::Path, bytes: &[u8]) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, bytes)
                } else {
                    !p.to_string_lossy().ends_with("-m")
                        && std::fs::read(&p).is_ok_and(|b| b == bytes)
                }
            })
        })
    }
    c.all_storage().any(|n| walk(&n.dir.join("data"), bytes))
}

/// A bucket recorded before buckets had markers (a namespace written by an older gateway) is given one at start,
/// and from then on survives the loss of the namespace like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_from_before_markers_is_given_one() {
    let dir = tempdir(1 << 30);
    let ns = dir.path().join("gateway-s3");
    std::fs::create_dir_all(&ns).unwrap();
    {
        let old = fdfs_gateway::s3::namespace::Namespace::embedded(&ns).unwrap();
        assert!(old.create_bucket("legacy", 1_700_000_000, None).unwrap());
        old.rebuilt().unwrap();
    }
    let mut c = Cluster::start_in(Door::spec(ClusterSpec::group(2), &ns), dir).await;
    let door = Door::of(&c);
    fdfs_testkit::wait_until(STATE_TIMEOUT, "the old bucket's marker file", || {
        on_some_disk(&c, b"legacy\n")
    })
    .await;

    assert_eq!(lose_namespace(&mut c, &door, &ns).await, ["legacy"]);
}
