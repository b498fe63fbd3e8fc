//! Issue 10, importing an existing FastDFS store, against real processes: a store path built here in FastDFS's
//! layout and formats (names encoded with an IPv4 source and FastDFS's 23 random bits, `-m` metadata files with
//! its `\x01`/`\x02` separators, a slave stored as a symlink, FastDFS's own state files beside `data/XX/YY`) is
//! imported with `fdfs import-fastdfs`; every good file is then served under its old ID by both members with its
//! metadata, every bad one is reported with its reason, a second run skips everything, and a run killed halfway
//! (its target storage node frozen, a body in flight) resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use fdfs_common::NameInfo;
use fdfs_testkit::{
    content, eventually, node, stored_path, Cluster, ClusterSpec, RequestExt, STATE_TIMEOUT,
};
use serde_json::Value;

/// Source of every file: the IPv4 address FastDFS puts in its names.
const SOURCE: [u8; 4] = [10, 0, 0, 7];
/// Creation time in the names.
const CREATED: u32 = 1_600_000_000;

/// A FastDFS name for `body`: 27 encoded characters, then `6 - len(ext)` random digits and `.ext`, or 7
/// digits without an extension. `n` varies the random bits (FastDFS keeps 23).
fn fastdfs_name(body: &[u8], n: u32, ext: Option<&str>) -> String {
    let info = NameInfo {
        source_id: u32::from_be_bytes(SOURCE),
        created: CREATED,
        size: body.len() as u64,
        crc32: crc32fast::hash(body),
    };
    let mut name = info.encode((n * 7919) & 0x007F_FFFF);
    let digits = ext.map_or(7, |e| 6 - e.len());
    for i in 0..digits {
        name.push(char::from(b'0' + ((n as usize + i) % 10) as u8));
    }
    if let Some(e) = ext {
        name.push('.');
        name.push_str(e);
    }
    name
}

/// FastDFS's metadata file format.
fn fastdfs_meta(pairs: &[(&str, &str)]) -> Vec<u8> {
    let records: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}\x02{v}")).collect();
    records.join("\x01").into_bytes()
}

/// A FastDFS store path under construction.
struct Store {
    root: PathBuf,
    /// ID -> (content, metadata) of every file that must be imported.
    good: BTreeMap<String, (Vec<u8>, BTreeMap<String, String>)>,
    /// Path -> expected refusal kind (the start of the reason).
    bad: BTreeMap<String, &'static str>,
}

impl Store {
    fn new(root: PathBuf) -> Store {
        let data = root.join("data");
        std::fs::create_dir_all(data.join("sync")).unwrap();
        // FastDFS's own state beside the data directories: not files to import.
        std::fs::write(
            data.join(".data_init_flag"),
            b"storage_join_time=1600000000\n",
        )
        .unwrap();
        std::fs::write(data.join("storage_stat.dat"), b"total_upload_count=3\n").unwrap();
        std::fs::write(
            data.join("sync").join("binlog.000"),
            b"1600000000 C M00/00/00/x\n",
        )
        .unwrap();
        Store {
            root,
            good: BTreeMap::new(),
            bad: BTreeMap::new(),
        }
    }

    fn path(&self, d1: u8, d2: u8, name: &str) -> PathBuf {
        let dir = self
            .root
            .join("data")
            .join(format!("{d1:02X}"))
            .join(format!("{d2:02X}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn id(d1: u8, d2: u8, name: &str) -> String {
        format!("group1/M00/{d1:02X}/{d2:02X}/{name}")
    }

    /// A good file (and its metadata file when `meta` is not empty); its ID.
    fn good(&mut self, d1: u8, d2: u8, name: &str, body: &[u8], meta: &[(&str, &str)]) -> String {
        let path = self.path(d1, d2, name);
        std::fs::write(&path, body).unwrap();
        if !meta.is_empty() {
            let mut m = path.into_os_string();
            m.push("-m");
            std::fs::write(m, fastdfs_meta(meta)).unwrap();
        }
        let id = Store::id(d1, d2, name);
        let meta = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.good.insert(id.clone(), (body.to_vec(), meta));
        id
    }

    /// A file that must be refused with a reason starting with `kind`.
    fn bad(&mut self, d1: u8, d2: u8, name: &str, body: &[u8], kind: &'static str) -> PathBuf {
        let path = self.path(d1, d2, name);
        std::fs::write(&path, body).unwrap();
        self.bad.insert(path.display().to_string(), kind);
        path
    }
}

/// The synthetic store of the first test: good masters (with and without extension and metadata, a large one,
/// an empty one, two with the same bytes), slaves (one a symlink), and every kind of bad file.
fn build_store(root: PathBuf) -> (Store, String, String) {
    let mut s = Store::new(root);
    let photo = content(1, 30_000);
    let photo_name = fastdfs_name(&photo, 1, Some("jpg"));
    let photo_id = s.good(
        0x00,
        0x00,
        &photo_name,
        &photo,
        &[("width", "800"), ("author", "alice")],
    );
    let big = content(2, 3 << 20);
    s.good(0x0A, 0xFF, &fastdfs_name(&big, 2, Some("bin")), &big, &[]);
    let bare = content(3, 10_000);
    let bare_name = fastdfs_name(&bare, 3, None);
    s.good(0x10, 0x01, &bare_name, &bare, &[("k", "v")]);
    s.good(0x10, 0x01, &fastdfs_name(b"", 4, Some("txt")), b"", &[]);
    let same = content(5, 5_000);
    s.good(0x20, 0x02, &fastdfs_name(&same, 5, Some("png")), &same, &[]);
    s.good(0x20, 0x03, &fastdfs_name(&same, 6, Some("png")), &same, &[]);
    // A slave: the master's name + prefix + extension, its own bytes and metadata.
    let thumb = content(7, 2_000);
    let thumb_name = photo_name.replace(".jpg", "_150x150.jpg");
    s.good(0x00, 0x00, &thumb_name, &thumb, &[("size", "150x150")]);
    // A slave stored as a symlink (FastDFS `store_slave_file_use_link`) to a file that has its own master name.
    let linked = content(8, 4_000);
    let gif = fastdfs_name(&linked, 8, Some("gif"));
    let target = s.good(0x30, 0x30, &gif, &linked, &[]);
    let link_name = format!("{bare_name}_big");
    let link = s.path(0x10, 0x01, &link_name);
    let target_path = s
        .root
        .join("data")
        .join(target.split_once("M00/").unwrap().1);
    std::os::unix::fs::symlink(&target_path, &link).unwrap();
    s.good.insert(
        Store::id(0x10, 0x01, &link_name),
        (linked.clone(), BTreeMap::new()),
    );

    // Bad files.
    let mut corrupt = content(9, 8_000);
    let corrupt_name = fastdfs_name(&corrupt, 9, Some("jpg"));
    corrupt[100] ^= 0x40;
    s.bad(0x40, 0x00, &corrupt_name, &corrupt, "CRC32 differs");
    let whole = content(10, 8_000);
    s.bad(
        0x40,
        0x01,
        &fastdfs_name(&whole, 10, Some("doc")),
        &whole[..5_000],
        "size differs",
    );
    s.bad(
        0x40,
        0x02,
        "notes.txt",
        b"not a FastDFS file",
        "name does not decode",
    );
    s.bad(0x40, 0x03, "000001", &content(11, 1_000), "trunk file");
    let mut raw = [0u8; 20];
    raw[0..4].copy_from_slice(&SOURCE);
    raw[4..8].copy_from_slice(&CREATED.to_be_bytes());
    raw[8..16].copy_from_slice(&((1u64 << 63) | (1 << 58) | (77 << 32)).to_be_bytes());
    raw[16..20].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    use base64::Engine;
    let appender = format!(
        "{}012.log",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    s.bad(0x40, 0x04, &appender, b"appended lines\n", "appender file");
    let odd = content(12, 500);
    let odd_name = fastdfs_name(&odd, 12, Some("txt"));
    let odd_path = s.bad(0x40, 0x05, &odd_name, &odd, "bad metadata file");
    let mut m = odd_path.into_os_string();
    m.push("-m");
    std::fs::write(m, b"title\x02caf\xe9").unwrap();
    (s, photo_id, thumb_name)
}

/// Run `fdfs import-fastdfs` with `extra` flags and `--json`; exit code and the summary.
fn import(gateway: &str, store: &Path, extra: &[&str]) -> (i32, Value) {
    let mut cmd = node::command_with_secret();
    cmd.args([
        "--gateway",
        gateway,
        "import-fastdfs",
        "--group",
        "group1",
        "--json",
    ])
    .arg("--store-path")
    .arg(store)
    .args(extra)
    .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {stdout:?}, stderr {stderr}"));
    (out.status.code().unwrap_or(-1), summary)
}

/// Reasons of the summary's refused files, by path.
fn refused(summary: &Value) -> BTreeMap<String, String> {
    summary["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_owned(),
                p["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn get(c: &Cluster, url: &str) -> (u16, Vec<u8>) {
    let r = c.http.get(url).go().await;
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// Every good file is on both members' disks and served by each over HTTP, with its metadata.
async fn assert_served(c: &Cluster, s: &Store) {
    for (id, (body, meta)) in &s.good {
        for node in &c.storage[0] {
            let on_disk = stored_path(&node.dir, id);
            // Replication is asynchronous past the quorum only for members that were down: both are up here.
            let bytes = std::fs::read(&on_disk)
                .unwrap_or_else(|e| panic!("{id} not on {}'s disk: {e}", node.name));
            assert_eq!(&bytes, body, "{id} on {}", node.name);
            let (status, served) = get(c, &format!("{}/{id}", node.url())).await;
            assert_eq!(status, 200, "{id} from {}", node.name);
            assert_eq!(&served, body, "{id} from {}", node.name);
            let meta_url = format!("{}/v1/meta/{id}", node.url());
            let m: BTreeMap<String, String> = c.http.get(meta_url).secret().ok_json().await;
            assert_eq!(&m, meta, "metadata of {id} on {}", node.name);
        }
        c.download(id).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fastdfs_store_is_imported_under_its_ids_and_a_second_run_skips_it() {
    let c = Cluster::start(ClusterSpec::group(2)).await;
    let (s, photo_id, thumb_name) = build_store(c.dir.path().join("fastdfs-store"));
    // FastDFS kept the creation time as the file's mtime: the import keeps the source's mtime.
    let photo_src = stored_path(&s.root, &photo_id);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(CREATED) + 5);
    std::fs::File::options()
        .write(true)
        .open(&photo_src)
        .unwrap()
        .set_modified(old)
        .unwrap();

    // The gateway route needs the API key or the cluster secret.
    let any_id = s.good.keys().next().unwrap();
    let r = c.http.put(format!("{}/import/{any_id}", c.gateway_url()));
    assert_eq!(r.body("x").error().await, (401, "unauthorized".into()));

    let (code, summary) = import(&c.gateway_url(), &s.root, &[]);
    assert_eq!(
        code, 1,
        "refused files make the exit status non-zero: {summary:#}"
    );
    assert_eq!(summary["found"], s.good.len() + s.bad.len(), "{summary:#}");
    assert_eq!(summary["imported"], s.good.len(), "{summary:#}");
    assert_eq!(summary["skipped"], 0, "{summary:#}");
    assert_eq!(
        summary["failed"].as_array().unwrap().len(),
        0,
        "{summary:#}"
    );
    let reasons = refused(&summary);
    assert_eq!(reasons.len(), s.bad.len(), "{summary:#}");
    for (path, kind) in &s.bad {
        let reason = reasons
            .get(path)
            .unwrap_or_else(|| panic!("{path} not refused: {summary:#}"));
        assert!(reason.starts_with(kind), "{path}: {reason}");
    }
    assert_served(&c, &s).await;
    let photo_copy = stored_path(&c.storage[0][1].dir, &photo_id);
    assert_eq!(
        std::fs::metadata(photo_copy).unwrap().modified().unwrap(),
        old
    );
    // Nothing of the refused files reached the cluster.
    for path in s.bad.keys() {
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        let d = Path::new(path).parent().unwrap();
        let (d2, d1) = (
            d.file_name().unwrap(),
            d.parent().unwrap().file_name().unwrap(),
        );
        for node in &c.storage[0] {
            let copy = node.dir.join("data").join(d1).join(d2).join(name);
            assert!(!copy.exists(), "{} holds refused {path}", node.name);
        }
    }

    // Again: everything is there already. A slave whose bytes changed since is a conflict, not a replacement.
    let thumb_id = s
        .good
        .keys()
        .find(|id| id.ends_with(&thumb_name))
        .unwrap()
        .clone();
    let thumb_src = stored_path(&s.root, &thumb_id);
    std::fs::write(&thumb_src, b"another thumbnail").unwrap();
    let (code, summary) = import(&c.gateway_url(), &s.root, &["--concurrency", "3"]);
    assert_eq!(code, 1, "{summary:#}");
    assert_eq!(summary["imported"], 0, "{summary:#}");
    assert_eq!(summary["skipped"], s.good.len() - 1, "{summary:#}");
    let reasons = refused(&summary);
    let conflict = &reasons[&thumb_src.display().to_string()];
    assert!(conflict.contains("409"), "{conflict}");
    assert_eq!(reasons.len(), s.bad.len() + 1, "{summary:#}");
    // The cluster still holds the first bytes.
    let (_, served) = get(&c, &format!("{}/{thumb_id}", c.storage[0][0].url())).await;
    assert_eq!(served, s.good[&thumb_id].0);

    // Straight to a storage node: a body that does not match its ID is refused and leaves nothing behind.
    let body = content(20, 1_000);
    let id = Store::id(0x50, 0x50, &fastdfs_name(&body, 20, Some("bin")));
    let node = &c.storage[0][0];
    let mut wrong = body.clone();
    wrong[0] ^= 1;
    let import_url = format!("{}/v1/import/{id}", node.url());
    let r = c.http.put(&import_url).secret().body(wrong);
    assert_eq!(r.error().await, (400, "bad_request".into()));
    let r = c.http.put(&import_url).body(body.clone());
    assert_eq!(
        r.error().await.0,
        401,
        "the storage route needs the cluster secret"
    );
    for n in &c.storage[0] {
        // The peer of the pipeline saw the body end with an error and drops its staged copy.
        let tmp = n.dir.join(".fdfs").join("tmp");
        eventually(30, "no staged body left", || async {
            (std::fs::read_dir(&tmp).unwrap().count() == 0).then_some(())
        })
        .await;
        assert_eq!(get(&c, &format!("{}/{id}", n.url())).await.0, 404);
    }
    let r: Value = c.http.put(&import_url).secret().body(body).ok_json().await;
    assert_eq!(r["status"], "imported", "{r}");
    assert_eq!(r["replicas"], 2, "{r}");
    assert_eq!(r["file_id"], id.as_str(), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn import_killed_halfway_resumes_where_it_stopped() {
    let c = Cluster::start(ClusterSpec::group(2)).await;
    let mut s = Store::new(c.dir.path().join("fastdfs-store"));
    const FILES: usize = 300;
    for i in 0..FILES {
        let body = content(100 + i, 20_000 + i * 37);
        let name = fastdfs_name(&body, i as u32, Some("dat"));
        s.good(
            i as u8,
            (i / 256) as u8,
            &name,
            &body,
            &[("i", &i.to_string())],
        );
    }
    let target = &c.storage[0][0];
    let child = {
        let mut cmd = node::command_with_secret();
        cmd.args([
            "import-fastdfs",
            "--group",
            "group1",
            "--concurrency",
            "2",
            "--storage",
        ])
        .arg(target.url())
        .arg("--store-path")
        .arg(&s.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.spawn().unwrap()
    };
    // Once part of the store is in, freeze the node it sends to (a body is in flight, or soon) and kill -9 it.
    let count = |v: &fdfs_common::wire::ClusterView| {
        let addr = target.addr.to_string();
        v.groups[0]
            .members
            .iter()
            .find(|m| m.addr == addr)
            .map_or(0, |m| m.file_count)
    };
    let child = std::cell::RefCell::new(child);
    let seen = eventually(STATE_TIMEOUT, "the import to make progress", || async {
        assert!(
            child.borrow_mut().try_wait().unwrap().is_none(),
            "import ended before it was killed"
        );
        let seen = count(&c.view().await);
        (seen >= 20).then_some(seen)
    })
    .await;
    target.freeze();
    let mut child = child.into_inner();
    child.kill().unwrap();
    child.wait().unwrap();
    target.thaw();
    let before = eventually(30, "heartbeats after the thaw", || async {
        let n = count(&c.view().await);
        (n >= seen).then_some(n)
    })
    .await;
    assert!(
        before < FILES as u64,
        "the first run finished before it was killed ({before} files)"
    );

    let (code, summary) = import(&c.gateway_url(), &s.root, &[]);
    assert_eq!(code, 0, "{summary:#}");
    let (imported, skipped) = (
        summary["imported"].as_u64().unwrap(),
        summary["skipped"].as_u64().unwrap(),
    );
    eprintln!("killed after {before} of {FILES} files; the second run imported {imported}, skipped {skipped}");
    assert_eq!(imported + skipped, FILES as u64, "{summary:#}");
    assert!(
        skipped >= seen,
        "files imported before the kill are skipped: {summary:#}"
    );
    assert!(imported > 0, "{summary:#}");
    assert_served(&c, &s).await;
    // No partial or extra file became visible: each member holds exactly the store's files.
    for n in &c.storage[0] {
        let what = format!("{} to report exactly {FILES} files", n.name);
        eventually(30, &what, || async {
            let v = c.view().await;
            let m = v.groups[0]
                .members
                .iter()
                .find(|m| m.addr == n.addr.to_string())?;
            (m.file_count == FILES as u64).then_some(())
        })
        .await;
    }
}
