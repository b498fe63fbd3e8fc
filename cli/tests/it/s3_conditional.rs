//! Conditional writes through the S3 door, as S3 has them on PutObject: `If-None-Match: *` creates a key only
//! if it does not exist, `If-Match: "etag"` replaces only that version. A refused condition stores nothing; of
//! writers racing to create one key exactly one wins, and the losers' files (stored before the namespace said
//! no) are deleted from the storage nodes, not left for the orphan collector.

use std::path::Path;

use fdfs_testkit::{content, eventually_ok, tempdir, Cluster, ClusterSpec, STATE_TIMEOUT};

use crate::s3door::{between, Door};

/// Data files (not metadata sidecars) on every storage node of `c`.
fn files_on_disk(c: &Cluster) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) if !e.file_name().to_string_lossy().ends_with("-m") => 1,
                    _ => 0,
                })
                .sum()
        })
    }
    c.all_storage().map(|n| walk(&n.dir.join("data"))).sum()
}

/// PUT `body` at `key` with `condition` (a header and its value); the status, ETag and S3 error code.
async fn put(
    c: &Cluster,
    door: &Door,
    key: &str,
    body: Vec<u8>,
    condition: Option<(&str, &str)>,
) -> (u16, String, String) {
    let mut r = c
        .http
        .put(door.url("PUT", &format!("/shop/{key}"), &[]))
        .body(body);
    if let Some((h, v)) = condition {
        r = r.header(h, v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let code = between(&text, "Code").pop().unwrap_or_default();
    (status, etag, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_puts_create_once_and_replace_only_the_version_read() {
    let dir = tempdir(1 << 30);
    let ns = dir.path().join("gateway-s3");
    let c = Cluster::start_in(Door::spec(ClusterSpec::group(2), &ns), dir).await;
    let door = Door::of(&c);
    door.create_bucket(&c.http, "shop").await;
    let get = |key: &'static str| {
        let (door, http) = (door.clone(), c.http.clone());
        async move { door.get(&http, "shop", key).await.unwrap() }
    };

    let before = files_on_disk(&c);
    let (s, e1, _) = put(
        &c,
        &door,
        "k",
        content(1, 1000),
        Some(("if-none-match", "*")),
    )
    .await;
    assert_eq!(s, 200);
    // Exists now: refused, and nothing stored.
    let refused = put(
        &c,
        &door,
        "k",
        content(2, 1000),
        Some(("if-none-match", "*")),
    )
    .await;
    assert_eq!((refused.0, refused.2.as_str()), (412, "PreconditionFailed"));
    let stale = put(
        &c,
        &door,
        "k",
        content(3, 1000),
        Some(("if-match", "\"0123\"")),
    )
    .await;
    assert_eq!((stale.0, stale.2.as_str()), (412, "PreconditionFailed"));
    let missing = put(&c, &door, "nope", content(3, 9), Some(("if-match", &e1))).await;
    assert_eq!((missing.0, missing.2.as_str()), (404, "NoSuchKey"));
    assert_eq!(get("k").await, Some(content(1, 1000)));
    // The version read: replaced.
    let (s, e2, _) = put(&c, &door, "k", content(4, 1000), Some(("if-match", &e1))).await;
    assert_eq!(s, 200);
    assert_ne!(e1, e2);
    assert_eq!(get("k").await, Some(content(4, 1000)));
    let again = put(&c, &door, "k", content(5, 1000), Some(("if-match", &e1))).await;
    assert_eq!(again.0, 412);
    // Only other S3 forms of If-None-Match are not taken.
    let other = put(&c, &door, "k", content(6, 9), Some(("if-none-match", &e2))).await;
    assert_eq!((other.0, other.2.as_str()), (501, "NotImplemented"));

    // Eight writers create one key at once: one wins, the others are told so (412 before storing, or 409 when
    // the key was created while their bytes were being stored).
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (c_http, door) = (c.http.clone(), door.clone());
            tokio::spawn(async move {
                let r = c_http
                    .put(door.url("PUT", "/shop/race", &[]))
                    .header("if-none-match", "*")
                    .body(content(100 + i, 256 << 10))
                    .send()
                    .await
                    .unwrap();
                (i, r.status().as_u16())
            })
        })
        .collect();
    let (mut won, mut answers) = (Vec::new(), Vec::new());
    for r in racers {
        let (i, status) = r.await.unwrap();
        answers.push(status);
        match status {
            200 => won.push(i),
            409 | 412 => {}
            s => panic!("racer {i}: {s}"),
        }
    }
    eprintln!("racers' answers: {answers:?}");
    assert_eq!(won.len(), 1, "winners: {won:?}");
    assert_eq!(get("race").await, Some(content(100 + won[0], 256 << 10)));

    // On disk, the storage nodes hold k's live version and the race's winner, two copies each: every refused
    // or losing write's file is gone.
    eventually_ok(STATE_TIMEOUT, "the losers' files to be deleted", || async {
        let now = files_on_disk(&c);
        if now == before + 4 {
            Ok(())
        } else {
            Err(format!(
                "{now} files on disk, {before} before and 4 expected more"
            ))
        }
    })
    .await;
}
