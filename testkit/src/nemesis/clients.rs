//! The nemesis's clients and their history. Each client works on the files it uploaded itself, one operation
//! at a time, so the order of the operations on a file is the order of its client's log; every operation is
//! appended to the shared history with when it started, how long it took, which hosts it talked to and what
//! it was told ([`Res`]). Kinds of client: mixed ones (raw and multipart uploads of 4 KiB to 4 MiB, FastDFS
//! door uploads, byte-checked downloads over HTTP and the door, metadata changes, deletes), one streaming big
//! uploads and one sending resumable (tus) uploads chunk by chunk.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::cluster::{NsCluster, GATEWAYS, TRACKERS};
use super::{Config, Rng};
use crate::content;
use crate::fastdfs::{self, DoorError};

/// Mixed clients.
const MIXED: usize = 4;
/// Pause between two operations of a client (a steady load on a shared machine, not a flood).
const PAUSE: Duration = Duration::from_millis(40);
/// Size of a resumable upload's chunks.
const TUS_CHUNK: usize = 256 << 10;

/// How a file was uploaded or downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Door {
    /// `PUT /upload/{name}` on a gateway.
    Raw,
    /// `POST /upload` multipart on a gateway, with a `meta.v` field.
    Multipart,
    /// `PUT /upload/{name}` with a streamed body of [`Config::big_len`].
    Streamed,
    /// tus: `POST /tus/`, then `PATCH` chunks.
    Tus,
    /// The FastDFS binary protocol (tracker door, then a storage door).
    FastDfs,
    /// `GET /{id}` on a gateway, following its redirect by hand.
    Http,
}

/// What an operation was.
#[derive(Debug, Clone)]
pub enum What {
    /// An upload of `content(n, len)`, with metadata `v` = `meta` when given.
    Upload {
        /// How it was sent.
        door: Door,
        /// Content number.
        n: usize,
        /// Content length.
        len: usize,
        /// Metadata `v` sent with it.
        meta: Option<String>,
    },
    /// A download of `id`, which holds `content(n, len)`.
    Download {
        /// How it was fetched.
        door: Door,
        /// The file.
        id: String,
        /// Content number.
        n: usize,
        /// Content length.
        len: usize,
    },
    /// `PUT /meta/{id}` with `{"v": value}` (replace).
    SetMeta {
        /// The file.
        id: String,
        /// The value of `v`.
        value: String,
    },
    /// `DELETE /{id}`.
    Delete {
        /// The file.
        id: String,
    },
}

impl What {
    /// Short name for the report: `upload raw`, `download fastdfs`, `meta`, `delete`.
    pub fn kind(&self) -> String {
        match self {
            What::Upload { door, .. } => format!("upload {}", door_name(*door)),
            What::Download { door, .. } => format!("download {}", door_name(*door)),
            What::SetMeta { .. } => "set metadata".into(),
            What::Delete { .. } => "delete".into(),
        }
    }
}

fn door_name(d: Door) -> &'static str {
    match d {
        Door::Raw => "raw PUT",
        Door::Multipart => "multipart",
        Door::Streamed => "streamed big",
        Door::Tus => "tus",
        Door::FastDfs => "FastDFS door",
        Door::Http => "HTTP",
    }
}

/// What the client was told.
#[derive(Debug, Clone)]
pub enum Res {
    /// Success (an upload's file ID).
    Ok(Option<String>),
    /// A well-formed refusal: a JSON error (`"503 no_storage"`) or a FastDFS errno (`"fastdfs errno 5"`).
    Refused(String),
    /// The connection failed (refused, reset, timed out): allowed only when a host it talked to was being
    /// killed, frozen or restarted meanwhile (the checker decides).
    Transport(String),
    /// Anything else: a non-JSON error, a malformed answer, wrong bytes. Always a failed check.
    Broken(String),
}

/// One logged operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Which client (its operations are in order).
    pub client: usize,
    /// What it did.
    pub what: What,
    /// Hosts it talked to.
    pub via: Vec<String>,
    /// Start, from the beginning of the run.
    pub start: Duration,
    /// How long it took.
    pub took: Duration,
    /// What it was told.
    pub res: Res,
}

/// What every client shares.
#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    gateways: Vec<(String, String)>,
    trackers: Vec<(String, SocketAddr)>,
    hosts: BTreeMap<IpAddr, String>,
    t0: Instant,
    bound: Duration,
    history: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
}

impl Ctx {
    fn log(&self, client: usize, what: What, via: Vec<String>, start: Instant, res: Res) {
        let op = Op {
            client,
            what,
            via,
            start: start.duration_since(self.t0),
            took: start.elapsed(),
            res,
        };
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op);
    }

    fn gateway(&self, rng: &mut Rng) -> (String, String) {
        self.gateways[rng.index(self.gateways.len())].clone()
    }

    fn host_of_url(&self, url: &str) -> Option<String> {
        let u = reqwest::Url::parse(url).ok()?;
        let ip: IpAddr = u.host_str()?.parse().ok()?;
        self.hosts.get(&ip).cloned()
    }

    fn host_of_addr(&self, a: SocketAddr) -> String {
        self.hosts
            .get(&a.ip())
            .cloned()
            .unwrap_or_else(|| a.to_string())
    }
}

/// Start the clients; they run until `stop` is set.
pub fn start(
    c: &NsCluster,
    config: &Config,
    rng: &Rng,
    t0: Instant,
    history: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        // Past the hang bound, so that a hang is seen (and logged) as one.
        .timeout(config.hang_bound + Duration::from_secs(15))
        .build()
        .expect("reqwest client");
    let ctx = Ctx {
        http,
        gateways: GATEWAYS
            .iter()
            .map(|g| ((*g).to_owned(), c.url(g)))
            .collect(),
        trackers: TRACKERS
            .iter()
            .map(|t| ((*t).to_owned(), c.door(t)))
            .collect(),
        hosts: c
            .nodes
            .keys()
            .map(|h| (IpAddr::V4(c.net.ip(h)), h.clone()))
            .collect(),
        t0,
        bound: config.hang_bound,
        history,
        stop,
    };
    let mut tasks = Vec::new();
    for i in 0..MIXED {
        tasks.push(tokio::spawn(mixed(
            i,
            ctx.clone(),
            rng.fork(100 + i as u64),
        )));
    }
    tasks.push(tokio::spawn(big(
        MIXED,
        ctx.clone(),
        rng.fork(200),
        config.big_len,
    )));
    tasks.push(tokio::spawn(tus(MIXED + 1, ctx, rng.fork(300))));
    tasks
}

/// A file a client uploaded and has not tried to delete.
struct Mine {
    id: String,
    n: usize,
    len: usize,
}

/// Size of a mixed upload: mostly small, some up to 1 MiB, a few up to 4 MiB.
fn size(rng: &mut Rng) -> usize {
    let r = rng.range(0, 100);
    let (lo, hi) = match r {
        0..=69 => (4 << 10, 64 << 10),
        70..=94 => (64 << 10, 1 << 20),
        _ => (1 << 20, 4 << 20),
    };
    rng.range(lo, hi + 1) as usize
}

/// A mixed client: uploads, downloads, metadata changes and deletes of its own files.
async fn mixed(c: usize, ctx: Ctx, mut rng: Rng) {
    let mut mine: Vec<Mine> = Vec::new();
    let mut i = 0usize;
    while !ctx.stop.load(Ordering::Relaxed) {
        i += 1;
        let n = (c + 1) * 10_000_000 + i;
        let roll = if mine.is_empty() {
            0
        } else {
            rng.range(0, 100)
        };
        match roll {
            0..=34 => {
                let len = size(&mut rng);
                let door = match rng.range(0, 100) {
                    0..=44 => Door::Raw,
                    45..=79 => Door::Multipart,
                    _ => Door::FastDfs,
                };
                if let Some(id) = upload(&ctx, c, &mut rng, door, n, len).await {
                    mine.push(Mine { id, n, len });
                }
            }
            35..=69 => {
                let f = &mine[rng.index(mine.len())];
                let door = if rng.percent(25) {
                    Door::FastDfs
                } else {
                    Door::Http
                };
                download(&ctx, c, &mut rng, door, f).await;
            }
            70..=87 => {
                let id = mine[rng.index(mine.len())].id.clone();
                set_meta(&ctx, c, &mut rng, id, n.to_string()).await;
            }
            _ => {
                let f = mine.swap_remove(rng.index(mine.len()));
                delete(&ctx, c, &mut rng, f.id).await;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A client streaming big uploads, one every few seconds.
async fn big(c: usize, ctx: Ctx, mut rng: Rng, len: usize) {
    let mut i = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        i += 1;
        upload(&ctx, c, &mut rng, Door::Streamed, 90_000_000 + i, len).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A client sending resumable uploads of 256 KiB to 2 MiB.
async fn tus(c: usize, ctx: Ctx, mut rng: Rng) {
    let mut i = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        i += 1;
        let len = rng.range(256 << 10, (2 << 20) + 1) as usize;
        upload(&ctx, c, &mut rng, Door::Tus, 80_000_000 + i, len).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What an HTTP exchange gave: status and body, or a transport error.
enum Answer {
    Got(StatusCode, reqwest::header::HeaderMap, Vec<u8>),
    Failed(String),
}

async fn answer(sent: Result<Response, reqwest::Error>) -> Answer {
    let r = match sent {
        Ok(r) => r,
        Err(e) => return Answer::Failed(transport_kind(&e)),
    };
    let (status, headers) = (r.status(), r.headers().clone());
    match r.bytes().await {
        Ok(b) => Answer::Got(status, headers, b.to_vec()),
        Err(e) => Answer::Failed(format!("{} (reading the body)", transport_kind(&e))),
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connect failed".into()
    } else {
        "connection failed".into()
    }
}

/// A non-2xx answer: `Refused` when it is the JSON error (with a code and a message), else `Broken`.
fn refusal(status: StatusCode, body: &[u8]) -> Res {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let code = v.as_ref().and_then(|v| v["error"]["code"].as_str());
    let message = v.as_ref().and_then(|v| v["error"]["message"].as_str());
    match (code, message) {
        (Some(code), Some(m)) if !m.is_empty() && (400..600).contains(&status.as_u16()) => {
            Res::Refused(format!("{} {code}", status.as_u16()))
        }
        _ => Res::Broken(format!(
            "{status} without the JSON error: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
    }
}

/// The file ID of an upload's 200 JSON answer of `len` bytes.
fn upload_answer(body: &[u8], len: usize) -> Res {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Res::Broken(format!("200 with a bad answer ({e})")),
    };
    match (v["file_id"].as_str(), v["size"].as_u64()) {
        (Some(id), Some(size)) if size == len as u64 => Res::Ok(Some(id.to_owned())),
        _ => Res::Broken(format!("200 for {len} bytes: {v}")),
    }
}

fn door_res(e: DoorError) -> Res {
    match e {
        DoorError::Errno(n) => Res::Refused(format!("fastdfs errno {n}")),
        DoorError::Transport(why) => Res::Transport(format!("fastdfs {why}")),
        DoorError::Malformed(why) => Res::Broken(format!("fastdfs {why}")),
    }
}

/// Upload `content(n, len)` through `door`; logs the operation, returns the file ID if acknowledged.
async fn upload(
    ctx: &Ctx,
    c: usize,
    rng: &mut Rng,
    door: Door,
    n: usize,
    len: usize,
) -> Option<String> {
    let t = Instant::now();
    let mut meta = None;
    let mut via = Vec::new();
    let res = match door {
        Door::Raw | Door::Streamed => {
            let (gw, url) = ctx.gateway(rng);
            via.push(gw);
            let body = if door == Door::Streamed {
                streamed(n, len)
            } else {
                reqwest::Body::from(content(n, len))
            };
            let sent = ctx.http.put(format!("{url}/upload/f{n}.bin")).body(body);
            match answer(sent.send().await).await {
                Answer::Got(s, _, b) if s == StatusCode::OK => upload_answer(&b, len),
                Answer::Got(s, _, b) => refusal(s, &b),
                Answer::Failed(why) => Res::Transport(why),
            }
        }
        Door::Multipart => {
            let (gw, url) = ctx.gateway(rng);
            via.push(gw);
            let v = format!("m{n}");
            meta = Some(v.clone());
            let form = Form::new().text("meta.v", v).part(
                "file",
                Part::bytes(content(n, len)).file_name(format!("f{n}.bin")),
            );
            let sent = ctx.http.post(format!("{url}/upload")).multipart(form);
            match answer(sent.send().await).await {
                Answer::Got(s, _, b) if s == StatusCode::OK => upload_answer(&b, len),
                Answer::Got(s, _, b) => refusal(s, &b),
                Answer::Failed(why) => Res::Transport(why),
            }
        }
        Door::Tus => tus_upload(ctx, rng, &mut via, n, len).await,
        Door::FastDfs | Door::Http => {
            let (tracker, addr) = ctx.trackers[rng.index(ctx.trackers.len())].clone();
            via.push(tracker);
            match fastdfs::store_door(addr, ctx.bound).await {
                Err(e) => door_res(e),
                Ok((storage, path)) => {
                    via.push(ctx.host_of_addr(storage));
                    let data = content(n, len);
                    match fastdfs::upload_to(storage, path, "bin", &data, ctx.bound).await {
                        Ok(id) => Res::Ok(Some(id)),
                        Err(e) => door_res(e),
                    }
                }
            }
        }
    };
    let id = match &res {
        Res::Ok(id) => id.clone(),
        _ => None,
    };
    let what = What::Upload { door, n, len, meta };
    ctx.log(c, what, via, t, res);
    id
}

/// A tus upload: create, then chunks; the final `PATCH` answers the file ID.
async fn tus_upload(ctx: &Ctx, rng: &mut Rng, via: &mut Vec<String>, n: usize, len: usize) -> Res {
    let (gw, url) = ctx.gateway(rng);
    via.push(gw);
    let created = ctx
        .http
        .post(format!("{url}/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len)
        .send()
        .await;
    let loc = match answer(created).await {
        Answer::Got(s, h, _) if s == StatusCode::CREATED => {
            match h.get("location").and_then(|l| l.to_str().ok()) {
                Some(l) => l.to_owned(),
                None => return Res::Broken("201 without a Location".into()),
            }
        }
        Answer::Got(s, _, b) => return refusal(s, &b),
        Answer::Failed(why) => return Res::Transport(why),
    };
    let target = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let data = content(n, len);
    for (k, chunk) in data.chunks(TUS_CHUNK).enumerate() {
        let offset = (k * TUS_CHUNK) as u64;
        let sent = ctx
            .http
            .patch(&target)
            .header("tus-resumable", "1.0.0")
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", offset)
            .body(chunk.to_vec())
            .send()
            .await;
        match answer(sent).await {
            Answer::Got(s, h, _) if s == StatusCode::NO_CONTENT => {
                let last = offset as usize + chunk.len() == len;
                if last {
                    return match h.get("fdfs-file-id").and_then(|v| v.to_str().ok()) {
                        Some(id) => Res::Ok(Some(id.to_owned())),
                        None => Res::Broken("the last PATCH answered no Fdfs-File-Id".into()),
                    };
                }
            }
            Answer::Got(s, _, b) => return refusal(s, &b),
            Answer::Failed(why) => return Res::Transport(why),
        }
    }
    Res::Broken("tus upload ended without its last chunk".into())
}

/// `content(n, len)` as a stream of 1 MiB chunks.
fn streamed(n: usize, len: usize) -> reqwest::Body {
    let whole = content(n, len);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        whole.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// Download one of the client's files and compare its bytes.
async fn download(ctx: &Ctx, c: usize, rng: &mut Rng, door: Door, f: &Mine) {
    let t = Instant::now();
    let want = content(f.n, f.len);
    let mut via = Vec::new();
    let check = |got: &[u8]| {
        if got == want.as_slice() {
            Res::Ok(None)
        } else {
            Res::Broken(format!(
                "wrong bytes: {} bytes, {} expected",
                got.len(),
                want.len()
            ))
        }
    };
    let res = if door == Door::FastDfs {
        let (tracker, addr) = ctx.trackers[rng.index(ctx.trackers.len())].clone();
        via.push(tracker);
        match fastdfs::fetch_door(addr, &f.id, ctx.bound).await {
            Err(e) => door_res(e),
            Ok(storage) => {
                via.push(ctx.host_of_addr(storage));
                match fastdfs::download_from(storage, &f.id, ctx.bound).await {
                    Ok(got) => check(&got),
                    Err(e) => door_res(e),
                }
            }
        }
    } else {
        let (gw, url) = ctx.gateway(rng);
        via.push(gw);
        match answer(ctx.http.get(format!("{url}/{}", f.id)).send().await).await {
            Answer::Got(s, _, b) if s == StatusCode::OK => check(&b),
            Answer::Got(s, h, _) if s == StatusCode::FOUND => {
                let loc = h
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(host) = ctx.host_of_url(&loc) {
                    via.push(host);
                }
                match answer(ctx.http.get(&loc).send().await).await {
                    Answer::Got(s, _, b) if s == StatusCode::OK => check(&b),
                    Answer::Got(s, _, b) => refusal(s, &b),
                    Answer::Failed(why) => Res::Transport(why),
                }
            }
            Answer::Got(s, _, b) => refusal(s, &b),
            Answer::Failed(why) => Res::Transport(why),
        }
    };
    let what = What::Download {
        door,
        id: f.id.clone(),
        n: f.n,
        len: f.len,
    };
    ctx.log(c, what, via, t, res);
}

/// Replace the metadata of `id` with `{"v": value}`.
async fn set_meta(ctx: &Ctx, c: usize, rng: &mut Rng, id: String, value: String) {
    let t = Instant::now();
    let (gw, url) = ctx.gateway(rng);
    let sent = ctx
        .http
        .put(format!("{url}/meta/{id}"))
        .json(&serde_json::json!({ "v": value }))
        .send()
        .await;
    let res = match answer(sent).await {
        Answer::Got(s, _, _) if s == StatusCode::OK => Res::Ok(None),
        Answer::Got(s, _, b) => refusal(s, &b),
        Answer::Failed(why) => Res::Transport(why),
    };
    ctx.log(c, What::SetMeta { id, value }, vec![gw], t, res);
}

/// Delete `id`.
async fn delete(ctx: &Ctx, c: usize, rng: &mut Rng, id: String) {
    let t = Instant::now();
    let (gw, url) = ctx.gateway(rng);
    let sent = ctx.http.delete(format!("{url}/{id}")).send().await;
    let res = match answer(sent).await {
        Answer::Got(s, _, b) if s == StatusCode::OK => {
            let v: Option<Value> = serde_json::from_slice(&b).ok();
            if v.as_ref().is_some_and(|v| v["deleted"] == true) {
                Res::Ok(None)
            } else {
                Res::Broken(format!("200 to a delete: {}", String::from_utf8_lossy(&b)))
            }
        }
        Answer::Got(s, _, b) => refusal(s, &b),
        Answer::Failed(why) => Res::Transport(why),
    };
    ctx.log(c, What::Delete { id }, vec![gw], t, res);
}
