//! Issue 20, CopyObject through the store's dedup: a copy is stored in its source's group, where each member
//! already holds the bytes and links identical content instead of writing it again, so copying an object costs
//! no disk; when that group cannot take the copy (its members are past the tracker's reserve), another group
//! does and the copy still succeeds.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use fdfs_testkit::{
    content, eventually_ok, member_in, tempdir, Cluster, ClusterSpec, STATE_TIMEOUT,
};

use crate::full_member::{fill, Tmpfs};
use crate::s3door::Door;

const MIB: u64 = 1 << 20;

/// Where `node` keeps `file_id` (store path 0).
fn on_disk(c: &Cluster, g: usize, m: usize, file_id: &str) -> PathBuf {
    let rest = file_id
        .split_once("/M00/")
        .expect("an ID on store path 0")
        .1;
    c.storage[g][m].dir.join("data").join(rest)
}

fn group_of(file_id: &str) -> usize {
    let g = file_id.split('/').next().unwrap();
    g.strip_prefix("group").unwrap().parse::<usize>().unwrap() - 1
}

/// PUT `bytes` (or a copy of `source`) at `key`; the file ID the door answers.
async fn put(c: &Cluster, door: &Door, key: &str, body: Result<Vec<u8>, &str>) -> String {
    let r = c.http.put(door.url("PUT", &format!("/shop/{key}"), &[]));
    let r = match body {
        Ok(bytes) => r.body(bytes),
        Err(source) => r.header("x-amz-copy-source", format!("/shop/{source}")),
    };
    let r = r.send().await.unwrap();
    let id = r.headers().get("x-fdfs-file-id").cloned();
    assert_eq!(r.status(), 200, "PUT {key}: {}", r.text().await.unwrap());
    id.expect("x-fdfs-file-id").to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_stored_in_its_source_group_as_a_link_and_elsewhere_when_that_group_is_full() {
    let dir = tempdir(1 << 30);
    let full_store = dir.path().join("storage-g1-m2");
    let tmpfs = match Tmpfs::mount(&full_store, "48m", dir.path()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or a user namespace): {e}");
            return;
        }
    };
    let ns = dir.path().join("gateway-s3");
    // `fdfs up`'s shape, 2 groups of 2; the tracker keeps 4 MiB free on every store path.
    let spec = ClusterSpec::default()
        .tracker(&["--reserved-storage-space", "4MiB"])
        .storage(&["--reserved-storage-space", "1MiB"]);
    let c = Cluster::start_in(Door::spec(spec, &ns), dir).await;
    let door = Door::of(&c);
    door.create_bucket(&c.http, "shop").await;

    // Sources with distinct bytes, spread over both groups by the tracker.
    let mut sources = Vec::new();
    for i in 0..8 {
        let key = format!("src{i}.jpg");
        let id = put(&c, &door, &key, Ok(content(100 + i, 256 << 10))).await;
        sources.push((key, id, i));
    }
    let groups: std::collections::BTreeSet<usize> =
        sources.iter().map(|(_, id, _)| group_of(id)).collect();
    assert_eq!(groups.len(), 2, "sources in both groups: {sources:?}");

    // Each copy lands in its source's group, and every member holds it as a link to the source's bytes. (In
    // reverse order: the tracker alternates groups, so copies taken in the sources' order would land in their
    // groups by chance.)
    for (key, src_id, i) in sources.iter().rev() {
        let copy = format!("copy-of-{key}");
        let id = put(&c, &door, &copy, Err(key)).await;
        let g = group_of(src_id);
        assert_eq!(group_of(&id), g, "{copy} ({id}) is not in {src_id}'s group");
        assert_eq!(
            door.get(&c.http, "shop", &copy).await.unwrap(),
            Some(content(100 + i, 256 << 10))
        );
        for m in 0..2 {
            let (src_path, copy_path) = (on_disk(&c, g, m, src_id), on_disk(&c, g, m, &id));
            eventually_ok(STATE_TIMEOUT, "the copy on every member", || async {
                let (a, b) = (std::fs::metadata(&src_path), std::fs::metadata(&copy_path));
                match (a, b) {
                    (Ok(a), Ok(b)) if a.ino() == b.ino() => Ok(()),
                    (Ok(a), Ok(b)) => Err(format!(
                        "member {m}: the copy is another inode ({} vs {}): stored twice",
                        b.ino(),
                        a.ino()
                    )),
                    (a, b) => Err(format!("member {m}: {:?} {:?}", a.err(), b.err())),
                }
            })
            .await;
        }
    }

    // group1 fills up past the tracker's reserve: a copy of a group1 object goes to group2 instead.
    let filler = fill(&tmpfs.at, 2 * MIB);
    c.wait_tracker(0, "the full member's free space", STATE_TIMEOUT, |c, v| {
        member_in(v, &c.storage[0][1])
            .is_some_and(|m| m.store_paths.iter().all(|p| p.free_bytes < 3 * MIB))
    })
    .await;
    // The gateway uses the assignments it fetched ahead for up to ASSIGN_TTL: past it, it sees the group full.
    tokio::time::sleep(fdfs_gateway::tracker::ASSIGN_TTL + std::time::Duration::from_millis(200))
        .await;
    let (key, src_id, i) = sources.iter().find(|(_, id, _)| group_of(id) == 0).unwrap();
    let id = put(&c, &door, "copy-while-full", Err(key)).await;
    assert_eq!(
        group_of(&id),
        1,
        "{id}: the copy of {src_id} while group1 is full"
    );
    assert_eq!(
        door.get(&c.http, "shop", "copy-while-full").await.unwrap(),
        Some(content(100 + i, 256 << 10))
    );
    std::fs::remove_file(filler).unwrap();
}
