//! The S3 door's PostgreSQL namespace against a real server: the same answers as the embedded one (listings
//! above all), and what several gateways sharing it need: concurrent puts of one key each get back exactly what
//! they replaced, a bucket is deleted only when empty even against concurrent puts, multipart uploads seen from
//! every gateway, and a killed server gives `Unavailable` (S3 503) until it is back.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use fdfs_gateway::s3::namespace::{DeleteBucket, Expect, Namespace, NsError, Object, Part, Upload};
use fdfs_testkit::postgres::Postgres;
use fdfs_testkit::tempdir;

fn obj(file: &str) -> Object {
    Object {
        file_id: file.to_owned(),
        size: file.len() as u64,
        etag: "e".into(),
        content_type: "text/plain".into(),
        modified: 7,
        meta: BTreeMap::from([("k".to_owned(), file.to_owned())]),
    }
}

fn part(file: &str) -> Part {
    Part {
        file_id: file.to_owned(),
        size: 1,
        etag: "p".into(),
        modified: 1,
    }
}

/// Two "gateways" on one database: each its own namespace handle (its own connections).
fn shared_pair(pg: &Postgres) -> (Namespace, Namespace) {
    let a = Namespace::shared(&pg.url()).unwrap();
    let b = Namespace::shared(&pg.url()).unwrap();
    assert!(a.prepare().unwrap(), "a new schema asks for a rebuild");
    a.rebuilt().unwrap();
    assert!(!b.prepare().unwrap(), "a rebuilt schema does not");
    (a, b)
}

#[test]
fn postgres_listings_equal_the_embedded_ones() {
    let pg = Postgres::start();
    let (shared, _) = shared_pair(&pg);
    let dir = tempdir(0);
    let embedded = Namespace::embedded(dir.path()).unwrap();
    let keys = [
        "a.txt",
        "B",
        "d/1",
        "d/2",
        "d/e/3",
        "d/e/4",
        "d/f",
        "dz",
        "z",
        "é",
        "é/x",
        "ü/y/z",
        "a/b/c",
        "a/b/d",
        "a-b",
        "a/",
        "a//x",
        "\u{10FFFF}",
        "d/\u{10FFFF}/x",
    ];
    for ns in [&shared, &embedded] {
        assert!(ns.create_bucket("b", 1, None).unwrap());
        assert!(ns.create_bucket("bb", 1, None).unwrap());
        for (i, k) in keys.iter().enumerate() {
            ns.put("b", k, &obj(&format!("f{i}"))).unwrap();
        }
        ns.put("bb", "a.txt", &obj("other")).unwrap();
    }
    let mut compared = 0;
    for prefix in ["", "a", "a/", "d/", "d/e", "é", "z", "nothing"] {
        for delimiter in ["", "/", "e", "/e/"] {
            for after in ["", "a", "a/b/", "d/", "d/e/", "d/e/3", "é", "zzz"] {
                for max in [1, 2, 3, 1000] {
                    let s = shared.list("b", prefix, delimiter, after, max).unwrap();
                    let e = embedded.list("b", prefix, delimiter, after, max).unwrap();
                    let what = format!(
                        "prefix {prefix:?} delimiter {delimiter:?} after {after:?} max {max}"
                    );
                    assert_eq!(s.objects, e.objects, "{what}");
                    assert_eq!(s.prefixes, e.prefixes, "{what}");
                    assert_eq!(s.truncated, e.truncated, "{what}");
                    assert_eq!(s.last, e.last, "{what}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 8 * 4 * 8 * 4);
    // Byte order of the UTF-8, whatever the database's locale.
    let all = shared.list("b", "", "", "", 1000).unwrap();
    let listed: Vec<&str> = all.objects.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.to_vec();
    sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(listed, sorted);
    assert_eq!(
        all.objects[0].1,
        obj(&format!(
            "f{}",
            keys.iter().position(|k| *k == "B").unwrap()
        ))
    );
    assert_eq!(shared.buckets().unwrap(), embedded.buckets().unwrap());
}

#[test]
fn concurrent_puts_of_one_key_each_get_back_what_they_replaced() {
    let pg = Postgres::start();
    let (a, b) = shared_pair(&pg);
    a.create_bucket("race", 1, None).unwrap();
    let (writers, puts) = (8, 25);
    let start = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let ns = if w % 2 == 0 { a.clone() } else { b.clone() };
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..puts)
                    .map(|i| {
                        ns.put("race", "hot", &obj(&format!("w{w}-{i}")))
                            .unwrap()
                            .map(|o| o.file_id)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut replaced: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .flatten()
        .collect();
    let live = b.get("race", "hot").unwrap().unwrap().file_id;
    // Every file but the live one was replaced exactly once; the live one never.
    replaced.push(live);
    replaced.sort();
    let mut all: Vec<String> = (0..writers)
        .flat_map(|w| (0..puts).map(move |i| format!("w{w}-{i}")))
        .collect();
    all.sort();
    assert_eq!(replaced, all);
}

#[test]
fn a_bucket_is_deleted_only_when_empty_even_against_concurrent_puts() {
    let pg = Postgres::start();
    let (a, b) = shared_pair(&pg);
    for round in 0..20 {
        let bucket = format!("b{round}");
        assert!(a.create_bucket(&bucket, 1, None).unwrap());
        assert!(!b.create_bucket(&bucket, 2, None).unwrap());
        let start = Arc::new(Barrier::new(2));
        let put = {
            let (b, bucket, start) = (b.clone(), bucket.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                b.put(&bucket, "k", &obj("f"))
            })
        };
        start.wait();
        let deleted = a.delete_bucket(&bucket).unwrap();
        match (put.join().unwrap(), deleted) {
            // The put won: the bucket holds it.
            (Ok(None), Err(DeleteBucket::NotEmpty)) => {
                assert!(a.get(&bucket, "k").unwrap().is_some());
                assert_eq!(a.bucket(&bucket).unwrap(), Some(1));
            }
            // The delete won: the put found no bucket, and nothing was left behind.
            (Err(NsError::NoBucket(b)), Ok(None)) => {
                assert_eq!(b, bucket);
                assert!(a.get(&bucket, "k").unwrap().is_none());
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(a.delete_bucket("none").unwrap(), Err(DeleteBucket::Missing));
    a.create_bucket("one", 1, None).unwrap();
    a.put("one", "k", &obj("f")).unwrap();
    assert_eq!(b.delete_bucket("one").unwrap(), Err(DeleteBucket::NotEmpty));
    assert_eq!(b.remove("one", "k").unwrap(), Some(obj("f")));
    assert_eq!(a.remove("one", "k").unwrap(), None);
    assert_eq!(b.delete_bucket("one").unwrap(), Ok(None));
    // A bucket's marker file is recorded with it and handed back when it is deleted.
    assert!(a
        .create_bucket("marked", 5, Some("group1/M00/00/00/marker"))
        .unwrap());
    assert_eq!(
        b.bucket_marker("marked").unwrap(),
        Some(Some("group1/M00/00/00/marker".to_owned()))
    );
    assert_eq!(
        b.delete_bucket("marked").unwrap(),
        Ok(Some("group1/M00/00/00/marker".to_owned()))
    );
    assert_eq!(a.bucket_marker("marked").unwrap(), None);
    // A bucket recorded without one is given one, once.
    assert!(a.create_bucket("old", 3, None).unwrap());
    assert!(b.mark_bucket("old", "group1/M00/00/00/m1").unwrap());
    assert!(!a.mark_bucket("old", "group1/M00/00/00/m2").unwrap());
    assert!(!a.mark_bucket("none", "group1/M00/00/00/m3").unwrap());
    assert_eq!(
        a.bucket_marker("old").unwrap(),
        Some(Some("group1/M00/00/00/m1".to_owned()))
    );
}

#[test]
fn a_multipart_upload_is_shared_between_gateways() {
    let pg = Postgres::start();
    let (a, b) = shared_pair(&pg);
    a.create_bucket("m", 1, None).unwrap();
    let upload = Upload {
        bucket: "m".into(),
        key: "big".into(),
        created: 5,
        content_type: "application/x-big".into(),
        meta: BTreeMap::from([("m".to_owned(), "v".to_owned())]),
        parts: BTreeMap::new(),
    };
    a.create_upload("u1", &upload).unwrap();
    a.create_upload(
        "u0",
        &Upload {
            key: "big".into(),
            ..upload.clone()
        },
    )
    .unwrap();
    assert_eq!(b.put_part("u1", 1, &part("p1")).unwrap(), Ok(None));
    assert_eq!(a.put_part("u1", 2, &part("p2")).unwrap(), Ok(None));
    assert_eq!(
        b.put_part("u1", 2, &part("p2b")).unwrap(),
        Ok(Some(part("p2")))
    );
    let seen = b.upload("u1").unwrap().unwrap();
    assert_eq!(seen.parts.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(seen.meta, upload.meta);
    let ids: Vec<String> = a
        .uploads_in("m")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["u0", "u1"]);
    // Completed on B: the object is recorded and the upload ended with its parts, once.
    let (old, ended) = b.complete("m", "big", &obj("whole"), "u1").unwrap();
    assert_eq!(old, None);
    assert_eq!(ended.unwrap().parts[&2], part("p2b"));
    assert_eq!(a.complete("m", "big", &obj("again"), "u1").unwrap().1, None);
    assert_eq!(a.put_part("u1", 3, &part("late")).unwrap(), Err(()));
    assert_eq!(a.get("m", "big").unwrap(), Some(obj("again")));
    assert_eq!(
        b.remove_upload("u0").unwrap().map(|u| u.key),
        Some("big".into())
    );
    assert!(a.uploads_in("m").unwrap().is_empty());
}

#[test]
fn a_killed_server_is_unavailable_until_it_is_back() {
    let mut pg = Postgres::start();
    let (a, _) = shared_pair(&pg);
    a.create_bucket("k", 1, None).unwrap();
    a.put("k", "x", &obj("f")).unwrap();
    pg.kill9();
    for _ in 0..3 {
        match a.get("k", "x") {
            Err(NsError::Unavailable(_)) => {}
            other => panic!("with the server killed: {other:?}"),
        }
    }
    assert!(matches!(
        a.put("k", "y", &obj("g")),
        Err(NsError::Unavailable(_))
    ));
    pg.restart();
    // The broken connections were dropped: the next call connects again. What was committed is there.
    assert_eq!(a.get("k", "x").unwrap(), Some(obj("f")));
    assert_eq!(a.get("k", "y").unwrap(), None);
    // Restarted while the gateway was idle: its pooled connections are dead but do not know it. One idle for
    // longer than 2 s is checked before use, so the first call after such a restart already succeeds.
    pg.kill9();
    pg.restart();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(a.get("k", "x").unwrap(), Some(obj("f")));
    // A namespace whose server is down from the start is unavailable too, not a panic.
    let closed = Namespace::shared(&format!(
        "postgres://fdfs@{}/postgres",
        fdfs_testkit::closed_addr()
    ))
    .unwrap();
    assert!(matches!(closed.prepare(), Err(NsError::Unavailable(_))));
}

/// Conditional writes from several gateways: of the writers creating one key at once (`If-None-Match: *`)
/// exactly one wins each round, and writers replacing the version they read (`If-Match`) form one chain: every
/// version is replaced at most once, so no acknowledged write is lost to another.
#[test]
fn conditional_puts_from_several_gateways_are_compare_and_swaps() {
    let pg = Postgres::start();
    let (a, b) = shared_pair(&pg);
    a.create_bucket("cas", 1, None).unwrap();
    let with_etag = |file: &str| Object {
        etag: file.to_owned(),
        ..obj(file)
    };
    let (writers, rounds) = (6, 15);
    let start = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let ns = if w % 2 == 0 { a.clone() } else { b.clone() };
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut created = Vec::new();
                for r in 0..rounds {
                    let o = with_etag(&format!("w{w}-r{r}"));
                    if ns
                        .put_if("cas", &format!("new{r}"), &o, &Expect::Absent)
                        .unwrap()
                        == Ok(None)
                    {
                        created.push(r);
                    }
                }
                // Replace the version read, `rounds` times at most.
                let mut chain = Vec::new();
                for i in 0..rounds {
                    let current = ns.get("cas", "new0").unwrap().unwrap().etag;
                    let o = with_etag(&format!("w{w}-v{i}"));
                    if let Ok(old) = ns
                        .put_if("cas", "new0", &o, &Expect::Etag(current.clone()))
                        .unwrap()
                    {
                        assert_eq!(old.unwrap().etag, current);
                        chain.push((current, o.etag));
                    }
                }
                (created, chain)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut created: Vec<usize> = results.iter().flat_map(|(c, _)| c.clone()).collect();
    created.sort();
    assert_eq!(
        created,
        (0..rounds).collect::<Vec<_>>(),
        "one creator per key"
    );
    // The replacements form one chain from the first version to the live one.
    let mut next: BTreeMap<String, String> = BTreeMap::new();
    for (old, new) in results.iter().flat_map(|(_, c)| c.clone()) {
        assert!(
            next.insert(old.clone(), new).is_none(),
            "{old} was replaced twice"
        );
    }
    let mut at = a.get("cas", "new0").unwrap().unwrap().etag;
    let live = at.clone();
    let mut steps = 0;
    let first = next
        .keys()
        .find(|k| !next.values().any(|v| v == *k))
        .cloned()
        .expect("the chain has a start");
    at.clone_from(&first);
    while let Some(n) = next.get(&at) {
        at.clone_from(n);
        steps += 1;
    }
    assert_eq!(at, live, "the chain ends at the live version");
    assert_eq!(steps, next.len(), "one chain");
}
