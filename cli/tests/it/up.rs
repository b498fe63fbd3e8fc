//! `fdfs up` as a user runs it: a process that starts a whole cluster (here on free ports, in a tempdir),
//! prints the gateway URL once every member is active, serves an upload, and on SIGTERM stops every child
//! and exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fdfs_common::sys::Signal;
use fdfs_testkit::node::{bin, hermetic_env, read_lines, signal, wait_exit};
use fdfs_testkit::{tempdir, RequestExt};

/// PIDs of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fdfs_up_starts_serves_and_stops_cleanly() {
    let data = tempdir(1 << 30);
    let dir = data.path().join("cluster");
    let mut cmd = Command::new(bin());
    cmd.args([
        "up",
        "--port",
        "0",
        "--groups",
        "2",
        "--members",
        "2",
        "--api-key",
        "k-up",
        "--thumbnail-sizes",
        "64x64",
        "--data",
    ])
    .arg(&dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    hermetic_env(&mut cmd);
    // No secret given: `fdfs up` generates one and hands it to every node.
    cmd.env_remove("FDFS_CLUSTER_SECRET");
    let mut up = cmd.spawn().unwrap();
    let lines = read_lines(up.stdout.take().unwrap());
    let err_lines = read_lines(up.stderr.take().unwrap());
    let mut printed = Vec::new();

    // Wait for the layout, which is printed once the cluster is ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    let gateway = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                printed.push(l.clone());
                if let Some(url) = l.trim().strip_prefix("gateway ") {
                    break url.trim().to_owned();
                }
            }
            Err(e) => {
                let _ = up.kill();
                let errs: Vec<String> = err_lines.try_iter().collect();
                panic!("no gateway line ({e}); stdout: {printed:#?}\nstderr: {errs:#?}");
            }
        }
    };
    assert!(gateway.starts_with("http://127.0.0.1:"), "{gateway}");
    // The rest of the layout: trackers, both groups, the example curl.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !printed.iter().any(|l| l.contains("ctrl-c")) {
        let left = deadline.saturating_duration_since(Instant::now());
        printed.push(lines.recv_timeout(left).expect("layout"));
    }
    let text = printed.join("\n");
    assert!(text.contains("tracker "), "{text}");
    assert!(text.contains("group1") && text.contains("group2"), "{text}");
    assert!(
        text.contains(&format!("curl -F file=@photo.jpg {gateway}/upload")),
        "{text}"
    );
    for d in [
        "storage-g1-m1",
        "storage-g1-m2",
        "storage-g2-m1",
        "storage-g2-m2",
        "logs",
    ] {
        assert!(dir.join(d).is_dir(), "{d} missing");
    }

    // The generated secret is kept in the data dir, for the operator only, and its path is printed.
    let secret_file = dir.join("cluster-secret");
    assert!(text.contains(&secret_file.display().to_string()), "{text}");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.trim().len(), 32, "{secret:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // It serves: upload (with the API key it was given) and read back.
    let http = fdfs_testkit::follow_client();
    let r = http.put(format!("{gateway}/upload/hello.txt"));
    assert_eq!(r.body("no key").go().await.status(), 401);
    let r = http
        .put(format!("{gateway}/upload/hello.txt"))
        .header("x-api-key", "k-up");
    let j: serde_json::Value = r.body("hello from fdfs up").ok_json().await;
    let id = j["file_id"].as_str().unwrap();
    let body = http.get(format!("{gateway}/{id}")).ok_bytes().await;
    assert_eq!(body, b"hello from fdfs up");
    // Every node runs with the generated secret: none warns about a missing one.
    for entry in std::fs::read_dir(dir.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(
            !log.contains("WITHOUT A CLUSTER SECRET"),
            "{} runs without a secret:\n{log}",
            path.display()
        );
    }
    // The thumbnail sizes it was given: 64x64 renders, the nodes' default 150x150 is not configured.
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(200, 100))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let r = http
        .put(format!("{gateway}/upload/p.jpg"))
        .header("x-api-key", "k-up");
    let j: serde_json::Value = r.body(jpeg).ok_json().await;
    let pic = j["file_id"]
        .as_str()
        .unwrap()
        .trim_end_matches(".jpg")
        .to_owned();
    let thumb = http
        .get(format!("{gateway}/{pic}_64x64.jpg"))
        .ok_bytes()
        .await;
    let img = image::load_from_memory(&thumb).unwrap();
    assert_eq!((img.width(), img.height()), (64, 32));
    let (status, code) =
        fdfs_testkit::error_of(http.get(format!("{gateway}/{pic}_150x150.jpg")).go().await).await;
    assert_eq!(
        (status, code.as_str()),
        (404, "thumbnail_size_not_configured")
    );

    // A server that dies is restarted on its address, and says so.
    let member = text
        .lines()
        .find(|l| l.contains("storage-g1-m1"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .unwrap()
        .to_owned();
    // This cluster's node (other tests' clusters have members of that name too).
    let victim_dir = dir.join("storage-g1-m1").display().to_string();
    let victim = processes_mentioning(&victim_dir);
    assert_eq!(victim.len(), 1, "{victim:?}");
    signal(victim[0], Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.contains("storage-g1-m1 restarted"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        said.push(
            err_lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{e}: {said:#?}")),
        );
    }
    assert!(
        said.iter()
            .any(|l| l.contains("storage-g1-m1") && l.contains("died")),
        "{said:#?}"
    );
    fdfs_testkit::eventually(60, "the restarted member live on its address", || async {
        let r = http.get(format!("{member}/livez")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let again = processes_mentioning(&victim_dir);
    assert!(again.len() == 1 && again != victim, "{again:?}");

    let children = processes_mentioning(dir.to_str().unwrap());
    assert!(
        children.len() >= 5,
        "expected the up process and its children: {children:?}"
    );

    // SIGTERM: every child stops, then `fdfs up` exits 0.
    signal(up.id(), Signal::TERM);
    let status = wait_exit(&mut up, "fdfs up after SIGTERM", Duration::from_secs(60));
    let errs: Vec<String> = err_lines.try_iter().collect();
    assert!(status.success(), "{status:?}; stderr: {errs:#?}");
    assert!(errs.iter().any(|l| l.contains("stopped")), "{errs:#?}");
    let left = processes_mentioning(dir.to_str().unwrap());
    assert!(left.is_empty(), "children still running: {left:?}");
}
