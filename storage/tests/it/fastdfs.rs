//! The FastDFS protocol door of trackers and storage nodes, spoken byte by byte as FastDFS clients do, against
//! a real tracker and real storage nodes in this process (127.0.0.1:0, tempdir store paths): a file that goes in
//! through one door comes out of the other with the same bytes and ID, replicated, with its metadata, slave
//! files and deletes; hostile input gets an errno or a closed connection, never a panic or a partial file.
//! (`clients/fastdfs/check.sh` drives the same door with FastDFS client libraries from npm and PyPI.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{config as storage_config, tracker_config};
use fdfs_common::config::Size;
use fdfs_common::fastdfs::{cmd, errno, fixed_str, get_u64, put_fixed, put_u64, Header};
use fdfs_common::FileId;
use fdfs_testkit::{client, content, eventually, files_under, metric, metrics, RequestExt, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// FastDFS connections of these clusters close after this long without progress.
const DOOR_TIMEOUT_MS: u64 = 2000;

struct Member {
    http: Server,
    door: SocketAddr,
    store: PathBuf,
}

struct Cluster {
    _dir: tempfile::TempDir,
    tracker_door: SocketAddr,
    members: Vec<Member>,
    _tracker: Server,
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A tracker and `members` storage nodes of `group1` (write quorum: all of them), every one with a FastDFS door;
/// returns once the tracker's door hands out storage nodes.
async fn cluster(members: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let tracker_door = bind().await;
    let tracker_door_addr = tracker_door.local_addr().unwrap();
    let config = fdfs_tracker::Config {
        heartbeat_timeout_ms: 3000,
        reserved_storage_space: Size::Bytes(0),
        fastdfs_timeout_ms: DOOR_TIMEOUT_MS,
        ..tracker_config()
    };
    let tracker =
        Server::start(move |l, stop| fdfs_tracker::run((l, tracker_door), config, stop)).await;
    let mut nodes = Vec::new();
    for m in 0..members {
        let store = dir.path().join(format!("m{m}"));
        std::fs::create_dir_all(&store).unwrap();
        let door = bind().await;
        let door_addr = door.local_addr().unwrap();
        let config = fdfs_storage::Config {
            group: "group1".parse().unwrap(),
            write_quorum: members as u32,
            reserved_storage_space: Size::Bytes(0),
            max_file_size: Size::Bytes(64 << 20),
            fastdfs_timeout_ms: DOOR_TIMEOUT_MS,
            // No scrubber: a test removes a copy behind the node's back.
            scrub_bytes_per_sec: Size::Bytes(0),
            ..storage_config(vec![tracker.addr.to_string()], std::slice::from_ref(&store))
        };
        let http = Server::start(move |l, stop| fdfs_storage::run((l, door), config, stop)).await;
        nodes.push(Member {
            http,
            door: door_addr,
            store,
        });
    }
    for n in &nodes {
        // Creating 65536 directories per store path takes a while on a busy machine.
        n.http.wait_healthy(Duration::from_secs(300)).await;
    }
    let c = Cluster {
        _dir: dir,
        tracker_door: tracker_door_addr,
        members: nodes,
        _tracker: tracker,
    };
    // Every member active with its door known: the `all` query lists each of them.
    eventually(120, "the tracker to offer every member's door", || async {
        let mut t = connect(c.tracker_door).await;
        let (status, body) = request(&mut t, cmd::QUERY_STORE_WITHOUT_GROUP_ALL, &[]).await;
        (status == 0 && body.len() == 16 + members * 23 + 1).then_some(())
    })
    .await;
    c
}

impl Cluster {
    fn member_by_door(&self, door: SocketAddr) -> &Member {
        self.members
            .iter()
            .find(|m| m.door == door)
            .unwrap_or_else(|| panic!("no member has door {door}"))
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Send one request, read its reply (status, body); panics if the server closes instead.
async fn request(s: &mut TcpStream, command: u8, body: &[u8]) -> (u8, Vec<u8>) {
    send(s, command, body.len() as u64, body).await;
    read_reply(s)
        .await
        .unwrap_or_else(|| panic!("command {command}: connection closed instead of a reply"))
}

async fn send(s: &mut TcpStream, command: u8, len: u64, body: &[u8]) {
    let h = Header {
        len,
        cmd: command,
        status: 0,
    };
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(body).await.unwrap();
}

/// The next reply, or `None` when the server closed the connection.
async fn read_reply(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut h))
        .await
        .expect("a reply or a close within 60s")
        .ok()?;
    let h = Header::decode(&h);
    assert_eq!(h.cmd, cmd::RESP);
    let mut body = vec![0u8; usize::try_from(h.len).unwrap()];
    s.read_exact(&mut body).await.ok()?;
    Some((h.status, body))
}

/// Whether the server closes the connection (reading gives EOF or a reset) within 60 s.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// `group(16) + remote name` of a file ID.
fn named(id: &FileId) -> Vec<u8> {
    let mut b = Vec::new();
    put_fixed(&mut b, id.group.as_str().as_bytes(), 16);
    b.extend_from_slice(id.path_in_group().as_bytes());
    b
}

/// `group(16) + ip(15) + port(8)` (+ more) of a query reply: the first storage door.
fn door_of(reply: &[u8]) -> SocketAddr {
    let ip = std::str::from_utf8(fixed_str(&reply[16..31])).unwrap();
    let port = get_u64(reply, 31);
    format!("{ip}:{port}").parse().unwrap()
}

fn id_of(reply: &[u8]) -> FileId {
    let group = std::str::from_utf8(fixed_str(&reply[..16])).unwrap();
    let name = std::str::from_utf8(&reply[16..]).unwrap();
    format!("{group}/{name}").parse().unwrap()
}

/// The fixed part of an upload's body: store path index, file size, extension (6 bytes).
fn upload_head(store_path: u8, size: u64, ext: &[u8]) -> Vec<u8> {
    let mut head = vec![store_path];
    put_u64(&mut head, size);
    put_fixed(&mut head, ext, 6);
    head
}

async fn upload(door: SocketAddr, store_path: u8, ext: &str, data: &[u8]) -> FileId {
    let mut s = connect(door).await;
    let mut body = upload_head(store_path, data.len() as u64, ext.as_bytes());
    body.extend_from_slice(data);
    let (status, reply) = request(&mut s, cmd::UPLOAD_FILE, &body).await;
    assert_eq!(status, 0, "upload refused");
    id_of(&reply)
}

async fn download(door: SocketAddr, id: &FileId, offset: u64, len: u64) -> (u8, Vec<u8>) {
    let mut s = connect(door).await;
    let mut body = Vec::new();
    put_u64(&mut body, offset);
    put_u64(&mut body, len);
    body.extend_from_slice(&named(id));
    request(&mut s, cmd::DOWNLOAD_FILE, &body).await
}

async fn http_get(member: &Member, id: &FileId) -> (u16, Vec<u8>) {
    let r = client().get(member.http.url(&format!("/{id}"))).go().await;
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn set_meta_body(id: &FileId, flag: u8, meta: &[u8]) -> Vec<u8> {
    let name = id.path_in_group();
    let mut b = Vec::new();
    put_u64(&mut b, name.len() as u64);
    put_u64(&mut b, meta.len() as u64);
    b.push(flag);
    put_fixed(&mut b, id.group.as_str().as_bytes(), 16);
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(meta);
    b
}

/// Regular files under a store path's `data/` (stored files and their metadata) and its staging directory.
fn files_in(store: &Path) -> Vec<PathBuf> {
    let mut out = files_under(&store.join("data"));
    out.extend(files_under(&store.join(".fdfs").join("tmp")));
    out
}

/// `fdfs_fastdfs_requests_total` of successful uploads (command 11) counted by storage nodes in this process
/// (one recorder for every server here: other tests' uploads only add to it).
async fn fastdfs_uploads(member: &Member) -> f64 {
    let text = metrics(&client(), &member.http.base()).await;
    metric(
        &text,
        "fdfs_fastdfs_requests_total{role=\"storage\",command=\"11\",status=\"0\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cluster_two_doors_fastdfs_and_http_see_the_same_files() {
    let c = cluster(2).await;
    let mut tracker = connect(c.tracker_door).await;
    let uploads_before = fastdfs_uploads(&c.members[0]).await;

    // Query store: group, the door of an active member, a store path (40 bytes with 16-byte addresses).
    let (status, reply) = request(&mut tracker, cmd::QUERY_STORE_WITHOUT_GROUP_ONE, &[]).await;
    assert_eq!((status, reply.len()), (0, 40));
    assert_eq!(fixed_str(&reply[..16]), b"group1");
    let door = door_of(&reply);
    let mut group = Vec::new();
    put_fixed(&mut group, b"group1", 16);
    let (status, reply) = request(&mut tracker, cmd::QUERY_STORE_WITH_GROUP_ONE, &group).await;
    assert_eq!((status, reply.len()), (0, 40));
    let (status, _) = request(
        &mut tracker,
        cmd::QUERY_STORE_WITH_GROUP_ONE,
        b"nosuchgroup\0\0\0\0\0",
    )
    .await;
    assert_eq!(status, errno::ENOENT);

    // Upload over FastDFS, read over HTTP on both members (write quorum 2): same bytes.
    let data = content(1, 300_000);
    let id = upload(door, reply[39], "jpg", &data).await;
    assert_eq!(id.name.ext(), Some("jpg"));
    assert_eq!(id.info().size, data.len() as u64);
    for m in &c.members {
        assert_eq!(
            http_get(m, &id).await,
            (200, data.clone()),
            "member {}",
            m.door
        );
    }

    // Upload over HTTP, download over FastDFS from the member the tracker names: whole and ranged.
    let http_data = content(2, 100_000);
    let uploaded: serde_json::Value = client()
        .post(c.members[0].http.url("/v1/upload?ext=txt"))
        .secret()
        .body(http_data.clone())
        .ok_json()
        .await;
    let http_id: FileId = uploaded["file_id"].as_str().unwrap().parse().unwrap();
    let (status, reply) = request(&mut tracker, cmd::QUERY_FETCH_ONE, &named(&http_id)).await;
    assert_eq!((status, reply.len()), (0, 39));
    let fetch_door = door_of(&reply);
    assert_eq!(
        download(fetch_door, &http_id, 0, 0).await,
        (0, http_data.clone())
    );
    assert_eq!(
        download(fetch_door, &http_id, 1000, 500).await,
        (0, http_data[1000..1500].to_vec())
    );
    assert_eq!(
        download(fetch_door, &http_id, 99_990, 0).await,
        (0, http_data[99_990..].to_vec())
    );
    assert_eq!(
        download(fetch_door, &http_id, 200_000, 0).await.0,
        errno::EINVAL
    );
    // A member that lacks the file (its copy lost behind its back) serves the download from a peer.
    for m in &c.members {
        let copy = m.store.join(http_id.relative_path());
        if m.door != fetch_door {
            std::fs::remove_file(&copy).unwrap();
            assert_eq!(
                download(m.door, &http_id, 0, 0).await,
                (0, http_data.clone())
            );
            assert_eq!(
                download(m.door, &http_id, 10, 20).await,
                (0, http_data[10..30].to_vec())
            );
        }
    }
    // Fetch all: group, the first door, then other members on the same port (none here: loopback ports differ).
    let (status, reply) = request(&mut tracker, cmd::QUERY_FETCH_ALL, &named(&http_id)).await;
    assert_eq!((status, reply.len()), (0, 39));
    let (status, _) = request(&mut tracker, cmd::QUERY_UPDATE, &named(&id)).await;
    assert_eq!(status, 0);

    // Slave file next to the master, under the master's name plus the prefix.
    let mut s = connect(door).await;
    let thumb = content(3, 5000);
    let master_name = id.path_in_group();
    let mut body = Vec::new();
    put_u64(&mut body, master_name.len() as u64);
    put_u64(&mut body, thumb.len() as u64);
    put_fixed(&mut body, b"_150x150", 16);
    put_fixed(&mut body, b"png", 6);
    body.extend_from_slice(master_name.as_bytes());
    body.extend_from_slice(&thumb);
    let (status, reply) = request(&mut s, cmd::UPLOAD_SLAVE_FILE, &body).await;
    assert_eq!(status, 0);
    let slave = id_of(&reply);
    assert_eq!(slave, id.slave("_150x150", Some("png")).unwrap());
    assert_eq!(http_get(&c.members[1], &slave).await, (200, thumb.clone()));
    // The same slave again: it exists.
    let (status, _) = request(&mut s, cmd::UPLOAD_SLAVE_FILE, &body).await;
    assert_eq!(status, errno::EEXIST);

    // Metadata: overwrite, then merge; the HTTP side sees the same.
    for (flag, meta) in [
        (b'O', &b"width\x021024\x01height\x02768"[..]),
        (b'M', b"height\x02800\x01author\x02ann"),
    ] {
        let body = set_meta_body(&id, flag, meta);
        assert_eq!(request(&mut s, cmd::SET_METADATA, &body).await.0, 0);
    }
    let (status, meta) = request(&mut s, cmd::GET_METADATA, &named(&id)).await;
    assert_eq!(status, 0);
    assert_eq!(meta, b"author\x02ann\x01height\x02800\x01width\x021024");
    let json: serde_json::Value = client()
        .get(c.members[0].http.url(&format!("/v1/meta/{id}")))
        .secret()
        .ok_json()
        .await;
    assert_eq!(
        json,
        serde_json::json!({"author": "ann", "height": "800", "width": "1024"})
    );

    // File info: size, creation time and CRC32 from the ID, source address (16 bytes).
    let (status, info) = request(&mut s, cmd::QUERY_FILE_INFO, &named(&id)).await;
    assert_eq!((status, info.len()), (0, 40));
    assert_eq!(get_u64(&info, 0), data.len() as u64);
    assert_eq!(get_u64(&info, 8), u64::from(id.info().created));
    assert_eq!(get_u64(&info, 16), u64::from(crc32fast::hash(&data)));
    assert_eq!(fixed_str(&info[24..]), b"127.0.0.1");

    // Appender commands: a clear ENOTSUP, and the connection keeps working.
    let mut body = Vec::new();
    put_u64(&mut body, 3);
    put_u64(&mut body, 4);
    body.extend_from_slice(b"abcdefg");
    let (status, _) = request(&mut s, cmd::APPEND_FILE, &body).await;
    assert_eq!(status, errno::ENOTSUP);
    assert_eq!(request(&mut s, cmd::ACTIVE_TEST, &[]).await, (0, vec![]));

    // Monitor views: one group record (105 bytes), one record per member (612 bytes).
    let (status, groups) = request(&mut tracker, cmd::LIST_ALL_GROUPS, &[]).await;
    assert_eq!((status, groups.len()), (0, 105));
    assert_eq!(fixed_str(&groups[..17]), b"group1");
    assert_eq!(get_u64(&groups, 17 + 3 * 8), 2, "server count");
    assert_eq!(get_u64(&groups, 17 + 6 * 8), 2, "active count");
    let (status, storages) = request(&mut tracker, cmd::LIST_STORAGE, &group).await;
    assert_eq!((status, storages.len()), (0, 2 * 612));
    assert_eq!(storages[0], 7, "ACTIVE");
    assert_eq!(
        request(&mut tracker, cmd::ACTIVE_TEST, &[]).await,
        (0, vec![])
    );

    // A picture uploaded over FastDFS, its thumbnail rendered by a read over HTTP (stored on both members),
    // then the picture deleted over FastDFS: the thumbnail goes with it, on every member.
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(320, 200, |x, y| {
        image::Rgb([x as u8, y as u8, 90])
    }))
    .write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let picture = upload(door, 0, "jpg", &jpeg).await;
    let thumb = picture.slave("_150x150", Some("jpg")).unwrap();
    assert_eq!(http_get(&c.members[0], &thumb).await.0, 200);
    for m in &c.members {
        eventually(60, "the thumbnail on every member", || async {
            m.store.join(thumb.relative_path()).exists().then_some(())
        })
        .await;
    }
    let mut d = connect(door).await;
    assert_eq!(
        request(&mut d, cmd::DELETE_FILE, &named(&picture)).await.0,
        0
    );
    for m in &c.members {
        eventually(
            60,
            "the picture and its thumbnail gone from every member",
            || async {
                let gone = |id: &FileId| !m.store.join(id.relative_path()).exists();
                (gone(&picture) && gone(&thumb) && http_get(m, &thumb).await.0 == 404).then_some(())
            },
        )
        .await;
    }

    // Delete over FastDFS: gone over HTTP on this member at once, and on the other one once the delete
    // reaches it.
    let (status, _) = request(&mut s, cmd::DELETE_FILE, &named(&id)).await;
    assert_eq!(status, 0);
    let (status, _) = request(&mut s, cmd::DELETE_FILE, &named(&id)).await;
    assert_eq!(status, errno::ENOENT);
    let here = c.member_by_door(door);
    assert_eq!(http_get(here, &id).await.0, 404);
    for m in &c.members {
        eventually(60, "the delete to reach every member", || async {
            (http_get(m, &id).await.0 == 404).then_some(())
        })
        .await;
    }
    assert_eq!(download(door, &id, 0, 0).await.0, errno::ENOENT);
    // The door's requests are counted on /metrics: the upload over FastDFS at least.
    let uploads_after = fastdfs_uploads(&c.members[0]).await;
    assert!(
        uploads_after >= uploads_before + 1.0,
        "{uploads_before} -> {uploads_after}"
    );
    // Quit closes the connection.
    let mut s = connect(door).await;
    assert_eq!(request(&mut s, cmd::ACTIVE_TEST, &[]).await, (0, vec![]));
    send(&mut s, cmd::QUIT, 0, &[]).await;
    assert!(closed_by_server(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fastdfs_input_gets_an_errno_or_a_closed_connection() {
    let c = cluster(1).await;
    let member = &c.members[0];
    let store = &member.store;

    // Unknown command with a small body: EINVAL, and the connection stays usable.
    for addr in [c.tracker_door, member.door] {
        let mut s = connect(addr).await;
        assert_eq!(request(&mut s, 250, b"hello").await.0, errno::EINVAL);
        assert_eq!(request(&mut s, cmd::ACTIVE_TEST, &[]).await, (0, vec![]));
        // A body of the wrong length for its command.
        let cmd = if addr == c.tracker_door {
            cmd::QUERY_STORE_WITH_GROUP_ONE
        } else {
            cmd::DOWNLOAD_FILE
        };
        assert_eq!(request(&mut s, cmd, b"abc").await.0, errno::EINVAL);
        assert_eq!(request(&mut s, cmd::ACTIVE_TEST, &[]).await, (0, vec![]));
    }

    // A 10 GiB declared length on a command that takes a small body: EINVAL, then the connection is closed
    // (nothing of it is read or buffered).
    for (addr, command) in [
        (c.tracker_door, cmd::QUERY_FETCH_ONE),
        (member.door, cmd::DELETE_FILE),
        (member.door, cmd::SET_METADATA),
        (member.door, 250),
    ] {
        let mut s = connect(addr).await;
        send(&mut s, command, 10 << 30, b"group1").await;
        assert_eq!(read_reply(&mut s).await.map(|r| r.0), Some(errno::EINVAL));
        assert!(closed_by_server(&mut s).await, "command {command}");
    }

    // An upload of 10 GiB (over max_file_size): EFBIG and closed.
    let mut s = connect(member.door).await;
    let fixed = upload_head(0, 10 << 30, b"bin");
    send(&mut s, cmd::UPLOAD_FILE, 15 + (10 << 30), &fixed).await;
    assert_eq!(read_reply(&mut s).await.map(|r| r.0), Some(errno::EFBIG));
    assert!(closed_by_server(&mut s).await);

    // An upload whose packet length disagrees with its file size, and one with a bad extension: EINVAL, the
    // packet is skipped, and the connection stays usable.
    let mut s = connect(member.door).await;
    for (size, ext, sent) in [(100, &b"bin"[..], 50), (10, b"a/b", 10)] {
        let mut body = upload_head(0, size, ext);
        body.extend_from_slice(&vec![7u8; sent]);
        let status = request(&mut s, cmd::UPLOAD_FILE, &body).await.0;
        assert_eq!(status, errno::EINVAL, "{size} bytes declared, {sent} sent");
    }
    assert_eq!(request(&mut s, cmd::ACTIVE_TEST, &[]).await, (0, vec![]));

    // An upload cut short (the client dies mid-body) and one that stalls mid-body: closed, nothing kept.
    let mut s = connect(member.door).await;
    let fixed = upload_head(0, 1 << 20, b"bin");
    send(&mut s, cmd::UPLOAD_FILE, 15 + (1 << 20), &fixed).await;
    s.write_all(&content(4, 100_000)).await.unwrap();
    drop(s);
    let mut stalled = connect(member.door).await;
    send(&mut stalled, cmd::UPLOAD_FILE, 15 + (1 << 20), &fixed).await;
    stalled.write_all(&content(5, 100_000)).await.unwrap();
    assert!(
        closed_by_server(&mut stalled).await,
        "a stalled upload is closed"
    );

    // A header that never completes, and a connection that never sends anything: closed after the deadline.
    let mut half = connect(member.door).await;
    half.write_all(&[0, 0, 0]).await.unwrap();
    let mut idle = connect(c.tracker_door).await;
    assert!(closed_by_server(&mut half).await);
    assert!(closed_by_server(&mut idle).await);

    // A short body: the header promises more than comes before the client stops writing.
    let mut s = connect(c.tracker_door).await;
    send(&mut s, cmd::QUERY_FETCH_ONE, 100, b"group1").await;
    s.shutdown().await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // A bad file name, a file of another group, a path escape: EINVAL.
    let mut s = connect(member.door).await;
    for name in [
        &b"group1\0\0\0\0\0\0\0\0\0\0M00/00/00/../../x"[..],
        b"group9\0\0\0\0\0\0\0\0\0\0M00/00/00/wKgBAVn4AAAAAAAAAAAAAAAAAAAAAAAAAAA.jpg",
        b"group1\0\0\0\0\0\0\0\0\0\0",
    ] {
        assert_eq!(
            request(&mut s, cmd::GET_METADATA, name).await.0,
            errno::EINVAL
        );
    }

    // Nothing of the refused, cut and stalled uploads is on disk; the node still works.
    eventually(60, "the aborted uploads' temp files to go", || async {
        files_in(store).is_empty().then_some(())
    })
    .await;
    let id = upload(member.door, 0, "", b"still fine").await;
    assert_eq!(
        download(member.door, &id, 0, 0).await,
        (0, b"still fine".to_vec())
    );
}
