//! The `fdfs` client commands as a user runs them (a separate process per command) against a real cluster:
//! upload (files, directories, metadata, group), download (to file, to stdout, resumed), info (online and
//! --offline), meta, delete, monitor, bench, and one-line errors with non-zero exit codes.

use std::path::Path;
use std::process::Output;

use fdfs::pattern::Pattern;
use fdfs_common::wire::{ClusterView, MemberState};
use fdfs_testkit::{node, tempdir, Cluster, ClusterSpec, RequestExt};
use serde_json::Value;

/// Run `fdfs ARGS` against `gateway`.
async fn fdfs(gateway: &str, args: &[&str]) -> Output {
    fdfs_env(gateway, &[], args).await
}

/// Run `fdfs ARGS` against `gateway` with extra environment variables.
async fn fdfs_env(gateway: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = node::command();
    cmd.env("FDFS_GATEWAY", gateway)
        .envs(env.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::null());
    tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("run fdfs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// A failed command: non-zero exit and exactly one line on stderr, which is returned.
#[track_caller]
fn failed(o: &Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("fdfs: error: "), "{err}");
    err
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_against_a_real_cluster() {
    let c = Cluster::start(ClusterSpec::default()).await;
    let gw = c.gateway_url();
    let work = tempdir(1 << 30);
    let w = work.path();

    // upload: a 5 MiB file with metadata, streamed from disk.
    let big = Pattern::bytes(11, 5 << 20);
    let big_path = w.join("in/big.bin");
    write(&big_path, &big);
    let out = ok(&fdfs(
        &gw,
        &[
            "upload",
            big_path.to_str().unwrap(),
            "--meta",
            "author=me",
            "--meta",
            "k=v",
        ],
    )
    .await);
    let j: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let id = j["file_id"].as_str().unwrap().to_owned();
    assert!(id.ends_with(".bin"), "{id}");
    assert_eq!(j["size"], 5 << 20);
    assert_eq!(j["crc32"], format!("{:08x}", crc32fast::hash(&big)));

    // upload a directory recursively, --quiet prints only IDs; --group pins the group.
    write(&w.join("tree/a.txt"), b"a");
    write(&w.join("tree/sub/b.txt"), b"bb");
    write(&w.join("tree/sub/deeper/c.jpg"), b"ccc");
    let out = ok(&fdfs(
        &gw,
        &[
            "upload",
            "-q",
            "--group",
            "group2",
            w.join("tree").to_str().unwrap(),
        ],
    )
    .await);
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 3, "{out}");
    assert!(ids.iter().all(|i| i.starts_with("group2/M00/")), "{out}");
    assert!(ids[2].ends_with(".jpg"), "{out}");

    // download to a file, and to stdout.
    let dl = w.join("out/big.bin");
    std::fs::create_dir_all(dl.parent().unwrap()).unwrap();
    let o = fdfs(&gw, &["download", &id, "-o", dl.to_str().unwrap()]).await;
    ok(&o);
    assert!(stderr(&o).contains("saved"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dl).unwrap(), &big[..]);
    assert!(!fdfs::commands::download::part_path(&dl).exists());
    let outdir = w.join("out");
    ok(&fdfs(&gw, &["download", ids[0], "-o", outdir.to_str().unwrap()]).await);
    let name = ids[0].rsplit('/').next().unwrap();
    assert_eq!(std::fs::read(outdir.join(name)).unwrap(), b"a");
    let o = fdfs(&gw, &["download", ids[1], "-o", "-"]).await;
    ok(&o);
    assert_eq!(o.stdout, b"bb");

    // Resume: a partial file is completed with a Range request ...
    let partial = w.join("out/partial.bin");
    std::fs::write(&partial, &big[..1_000_000]).unwrap();
    ok(&fdfs(&gw, &["download", &id, "-o", partial.to_str().unwrap()]).await);
    assert_eq!(std::fs::read(&partial).unwrap(), &big[..]);
    // ... and so is an interrupted FILE.part; wrong leftover bytes prove only the rest was fetched (the CRC
    // check in the ID catches them and the bad partial is discarded), after which a retry succeeds.
    let resumed = w.join("out/resumed.bin");
    let part = fdfs::commands::download::part_path(&resumed);
    std::fs::write(&part, vec![0u8; 3_000_000]).unwrap();
    let o = fdfs(&gw, &["download", &id, "-o", resumed.to_str().unwrap()]).await;
    let err = failed(&o, 1);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!part.exists() && !resumed.exists());
    std::fs::write(&part, &big[..3_000_000]).unwrap();
    ok(&fdfs(&gw, &["download", &id, "-o", resumed.to_str().unwrap()]).await);
    assert_eq!(std::fs::read(&resumed).unwrap(), &big[..]);

    // info online shows metadata; --offline decodes without any network (the gateway URL is unreachable).
    let info: Value = serde_json::from_str(&ok(&fdfs(&gw, &["info", &id]).await)).unwrap();
    assert_eq!(info["size"], 5 << 20);
    assert_eq!(info["metadata"]["author"], "me", "{info}");
    let off: Value = serde_json::from_str(&ok(&fdfs(
        "http://127.0.0.1:9",
        &["info", "--offline", &id],
    )
    .await))
    .unwrap();
    assert_eq!(off["size"], 5 << 20);
    assert_eq!(off["crc32"], j["crc32"]);
    assert_eq!(off["group"], id.split('/').next().unwrap());

    // meta: get, merge, replace.
    let m: Value = serde_json::from_str(&ok(&fdfs(&gw, &["meta", &id]).await)).unwrap();
    assert_eq!(m, serde_json::json!({"author": "me", "k": "v"}));
    let m: Value = serde_json::from_str(&ok(
        &fdfs(&gw, &["meta", &id, "--merge", "k=w", "x=1"]).await
    ))
    .unwrap();
    assert_eq!(m, serde_json::json!({"author": "me", "k": "w", "x": "1"}));
    let m: Value =
        serde_json::from_str(&ok(&fdfs(&gw, &["meta", &id, "--set", "only=1"]).await)).unwrap();
    assert_eq!(m, serde_json::json!({"only": "1"}));

    // delete, then the file is gone: one-line errors with the server's message.
    let out = ok(&fdfs(&gw, &["delete", &id]).await);
    assert!(out.contains(&id), "{out}");
    let gone = w.join("out/gone.bin");
    let err = failed(
        &fdfs(&gw, &["download", &id, "-o", gone.to_str().unwrap()]).await,
        1,
    );
    assert!(err.contains("404"), "{err}");
    failed(&fdfs(&gw, &["delete", &id]).await, 1);

    // monitor: a table with both groups and 4 active members; --json is the cluster view.
    let table = ok(&fdfs(&gw, &["monitor"]).await);
    assert!(
        table.contains("group1") && table.contains("group2"),
        "{table}"
    );
    assert_eq!(table.matches(" active ").count(), 4, "{table}");
    assert!(table.contains("4 storage node(s), 4 active"), "{table}");
    let v: ClusterView =
        serde_json::from_str(&ok(&fdfs(&gw, &["monitor", "--json"]).await)).unwrap();
    assert_eq!(v.groups.len(), 2);
    assert!(v
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .all(|m| m.state == MemberState::Active));

    // bench: upload, download-and-verify, delete.
    let out = ok(&fdfs(
        &gw,
        &[
            "bench",
            "--count",
            "40",
            "--size",
            "10KiB",
            "--concurrency",
            "4",
            "--delete",
        ],
    )
    .await);
    for phase in ["upload", "download", "delete"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(phase) && l.contains(" 40 ")),
            "{out}"
        );
    }
    let out = ok(&fdfs(
        &gw,
        &["bench", "-n", "3", "-s", "3MiB", "-c", "2", "--json"],
    )
    .await);
    let phases: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(phases[1]["phase"], "download");
    assert_eq!(phases[1]["failed"], 0);

    // Usage errors: exit 2; unreachable gateway: exit 1; always one line.
    let err = failed(&fdfs(&gw, &["info", "group1/M00/00/00/nope"]).await, 2);
    assert!(err.contains("invalid file id"), "{err}");
    failed(
        &fdfs(&gw, &["upload", w.join("missing.txt").to_str().unwrap()]).await,
        1,
    );
    let err = failed(&fdfs("http://127.0.0.1:9", &["monitor"]).await, 1);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sends_the_api_key() {
    let c = Cluster::start(ClusterSpec::group(1).gateway(&["--api-key", "sekret"])).await;
    let gw = c.gateway_url();
    let work = tempdir(1 << 20);
    let f = work.path().join("k.txt");
    std::fs::write(&f, b"key").unwrap();
    let f = f.to_str().unwrap();
    let err = failed(&fdfs(&gw, &["upload", f]).await, 1);
    assert!(err.contains("401"), "{err}");
    let id = ok(&fdfs_env(&gw, &[("FDFS_API_KEY", "sekret")], &["upload", "-q", f]).await);
    let id = id.trim();
    ok(&fdfs(&gw, &["--api-key", "sekret", "delete", id]).await);
}

#[tokio::test]
async fn cli_signs_anti_leech_links() {
    let spec =
        ClusterSpec::group(1).storage(&["--anti-leech-secret", "leech", "--token-ttl-secs", "600"]);
    let c = Cluster::start(spec).await;
    let gw = c.gateway_url();
    let work = tempdir(1 << 20);
    let f = work.path().join("s.txt");
    std::fs::write(&f, b"signed bytes").unwrap();
    let id = ok(&fdfs(&gw, &["upload", "-q", f.to_str().unwrap()]).await);
    let id = id.trim();
    let node = c.storage[0][0].url();

    // Without a token the node refuses.
    let http = &c.http;
    let status = |url: String| async move { http.get(url.trim()).go().await.status() };
    assert_eq!(status(format!("{node}/{id}")).await, 403);

    // `fdfs sign --base` prints a full link the node accepts.
    let link = ok(&fdfs(&gw, &["sign", id, "--secret", "leech", "--base", &node]).await);
    assert_eq!(c.http.get(link.trim()).ok_bytes().await, b"signed bytes");

    // Signed with the wrong secret, or longer ago than the TTL: refused.
    let wrong = ok(&fdfs(&gw, &["sign", id, "--secret", "nope", "--base", &node]).await);
    assert_eq!(status(wrong).await, 403);
    let old = (fdfs_common::time::unix_now() - 3600).to_string();
    let stale = ok(&fdfs(
        &gw,
        &[
            "sign", id, "--secret", "leech", "--base", &node, "--ts", &old,
        ],
    )
    .await);
    assert_eq!(status(stale).await, 403);

    // Without --base only the query is printed; a malformed ID is a usage error.
    let q = ok(&fdfs(&gw, &["sign", id, "--secret", "leech"]).await);
    assert!(q.starts_with("token=") && q.contains("&ts="), "{q}");
    failed(&fdfs(&gw, &["sign", "nope", "--secret", "leech"]).await, 2);
}

/// `fdfs presign` mints S3 presigned URLs a plain HTTP client uses without the key: create a bucket, PUT an
/// object (as `curl -T` would), GET and DELETE it; an expired or wrongly keyed URL is refused.
#[tokio::test]
async fn cli_presigns_s3_urls() {
    let work = tempdir(1 << 20);
    let ns = work.path().join("ns").display().to_string();
    let spec = ClusterSpec::group(1).gateway(&[
        "--s3-listen",
        "127.0.0.1:0",
        "--s3-data-dir",
        &ns,
        "--s3-access-key",
        "CLIKEY",
        "--s3-secret-key",
        "cli-presign-secret",
    ]);
    let c = Cluster::start(spec).await;
    let gw = c.gateway_url();
    let endpoint = format!("http://{}", c.gateway.s3.unwrap());
    let env = [
        ("FDFS_S3_ENDPOINT", endpoint.as_str()),
        ("FDFS_S3_ACCESS_KEY", "CLIKEY"),
        ("FDFS_S3_SECRET_KEY", "cli-presign-secret"),
    ];
    let presign = |args: &'static [&'static str]| {
        let gw = gw.clone();
        async move { ok(&fdfs_env(&gw, &env, args).await).trim().to_owned() }
    };

    let bucket = presign(&["presign", "--method", "PUT", "shop"]).await;
    fdfs_testkit::eventually(
        fdfs_testkit::STATE_TIMEOUT,
        "a presigned CreateBucket",
        || async {
            let r = c.http.put(&bucket).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let put = presign(&["presign", "--method", "PUT", "s3://shop/img/a b.jpg"]).await;
    let r = c
        .http
        .put(&put)
        .body("presigned bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let get = presign(&["presign", "shop/img/a b.jpg"]).await;
    assert_eq!(c.http.get(&get).ok_bytes().await, b"presigned bytes");

    // Expired, or signed with another secret: 403, and the object stays.
    let old = (fdfs_common::time::unix_now() - 7200).to_string();
    let stale = ok(&fdfs_env(
        &gw,
        &env,
        &[
            "presign",
            "shop/img/a b.jpg",
            "--expires",
            "60",
            "--ts",
            &old,
        ],
    )
    .await);
    assert_eq!(c.http.get(stale.trim()).go().await.status(), 403);
    let wrong = ok(&fdfs_env(
        &gw,
        &[env[0], env[1], ("FDFS_S3_SECRET_KEY", "not-it")],
        &["presign", "--method", "DELETE", "shop/img/a b.jpg"],
    )
    .await);
    assert_eq!(c.http.delete(wrong.trim()).go().await.status(), 403);

    let delete = presign(&["presign", "--method", "DELETE", "/shop/img/a b.jpg"]).await;
    assert_eq!(c.http.delete(&delete).go().await.status(), 204);
    assert_eq!(c.http.get(&get).go().await.status(), 404);

    // Bad arguments are one-line usage errors.
    failed(
        &fdfs_env(&gw, &env, &["presign", "shop/k", "--expires", "0"]).await,
        2,
    );
    failed(&fdfs_env(&gw, &env, &["presign", "s3://"]).await, 2);
}
