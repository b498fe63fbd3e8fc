//! `fdfs import-fastdfs --group G --store-path DIR [--store-path-index N] [--storage URL]`: move the files of an
//! existing FastDFS store path into the cluster under their existing IDs.
//!
//! The store path is walked in ID order ([`scan`]); each file is checked against its name (size before sending,
//! CRC32 while it streams) and sent with its metadata to `PUT /import/{file_id}` on the gateway (`--gateway`, with
//! the API key or the cluster secret) or to `PUT /v1/import/{file_id}` on a storage node (`--storage`, with the
//! cluster secret), which checks it again, stores it through the normal write path (quorum, replication, dedup,
//! index) and answers `imported` or `skipped`. `--concurrency` files are in flight at once, each streamed from
//! disk.
//!
//! Resuming is an existence check: a master file whose ID the cluster already serves with the same length is
//! not sent again (its ID fixes its size and CRC32); slave files are always sent, and the node compares their
//! bytes (same: skipped; different: a conflict, refused). An interrupted run is simply run again.

pub mod scan;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdfs_common::internal::WithSecret;
use fdfs_common::wire::Metadata;
use fdfs_common::{FileId, GroupName};
use futures_util::StreamExt;
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use reqwest::{header, Method, StatusCode};
use serde::Serialize;
use tokio_util::io::ReaderStream;

use crate::client::{api_error, Client};
use crate::error::{CliError, Result};
use scan::{Found, Refusal};

/// Read buffer for streaming a file.
const CHUNK: usize = 256 << 10;
/// Progress lines when stderr is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Files waiting between the walker and the senders.
const QUEUE: usize = 64;

/// `fdfs import-fastdfs` flags.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every file was imported or was already there; 1 when any \
                        file was refused or failed (each is listed with its reason); 2 for bad arguments."
)]
pub struct Args {
    /// Group the files belong to (the first part of their IDs).
    #[arg(long, value_name = "GROUP")]
    pub group: String,
    /// The FastDFS store path (the directory holding `data/00/00/...`).
    #[arg(long, value_name = "DIR")]
    pub store_path: PathBuf,
    /// Index of that store path in the FastDFS config (`M00` = 0), the second part of the IDs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub store_path_index: u8,
    /// Send to this storage node of the group (`http://host:port`, its internal address) instead of the
    /// gateway; needs the cluster secret.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Cluster secret (storage nodes' internal routes; a gateway takes it instead of the API key).
    #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Files sent at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where files are sent.
struct Target {
    client: Client,
    /// `/import` (gateway) or `/v1/import` (storage node).
    route: &'static str,
    secret: Option<String>,
}

/// One file that was not imported.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The file in the FastDFS store path.
    pub path: String,
    /// The ID it would have had, when its name is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    /// Why it was not imported.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Files found in the store path.
    pub found: u64,
    /// Stored in the cluster by this run.
    pub imported: u64,
    /// Already in the cluster with the same content.
    pub skipped: u64,
    /// Bytes of the files imported.
    pub bytes_imported: u64,
    /// Not imported because of the file (bad name, CRC32, size, ...) or the cluster's refusal (conflict).
    pub refused: Vec<Problem>,
    /// Not imported because of a transient failure (unreachable, 5xx): run again.
    pub failed: Vec<Problem>,
}

/// Outcome of one file.
enum Outcome {
    Imported(u64),
    Skipped,
    Refused(Refusal),
    Failed(String),
}

/// Import the store path; print progress on stderr and the summary on stdout.
pub async fn run(gateway: &Client, args: Args) -> Result<()> {
    let group: GroupName = args
        .group
        .parse()
        .map_err(|e: fdfs_common::IdError| CliError::Usage(e.to_string()))?;
    let data = args.store_path.join("data");
    if !data.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a FastDFS store path (no data/ directory)",
            args.store_path.display()
        )));
    }
    let target = Arc::new(match &args.storage {
        Some(url) => Target {
            client: Client::new(url)?,
            route: "/v1/import",
            secret: args.cluster_secret.clone(),
        },
        None => Target {
            client: gateway.clone(),
            route: "/import",
            secret: args.cluster_secret.clone(),
        },
    });

    let (total_files, total_bytes) = {
        let (root, group) = (args.store_path.clone(), group.clone());
        let index = args.store_path_index;
        tokio::task::spawn_blocking(move || {
            let (mut n, mut b) = (0u64, 0u64);
            scan::walk(&root, &group, index, |f| {
                n += 1;
                b += f.size;
                true
            })
            .map(|()| (n, b))
        })
        .await
        .map_err(|e| CliError::Usage(format!("walking the store path failed: {e}")))?
        .map_err(|e| CliError::io(&data, e))?
    };
    let progress = Progress::new(total_files, total_bytes);

    let (tx, rx) = tokio::sync::mpsc::channel::<Found>(QUEUE);
    let walker = {
        let (root, group) = (args.store_path.clone(), group.clone());
        let index = args.store_path_index;
        tokio::task::spawn_blocking(move || {
            scan::walk(&root, &group, index, |f| tx.blocking_send(f).is_ok())
        })
    };
    let summary = Arc::new(Mutex::new(Summary::default()));
    let fatal: Arc<Mutex<Option<CliError>>> = Arc::default();
    let files =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    files
        .for_each_concurrent(usize::from(args.concurrency), |found| {
            let (target, summary, fatal, progress) = (&target, &summary, &fatal, &progress);
            async move {
                if fatal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return;
                }
                let (path, size) = (found.path.clone(), found.size);
                let file_id = found.id.as_ref().ok().map(ToString::to_string);
                let (outcome, sent) = match import_one(target, found, progress).await {
                    Ok(o) => o,
                    Err(e) => {
                        *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                };
                let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                s.found += 1;
                let problem = |reason: String| Problem {
                    path: path.display().to_string(),
                    file_id: file_id.clone(),
                    reason,
                };
                match outcome {
                    Outcome::Imported(bytes) => {
                        s.imported += 1;
                        s.bytes_imported += bytes;
                    }
                    Outcome::Skipped => s.skipped += 1,
                    Outcome::Refused(r) => {
                        eprintln!("refused {}: {r}", path.display());
                        s.refused.push(problem(r.to_string()));
                    }
                    Outcome::Failed(why) => {
                        eprintln!("failed {}: {why}", path.display());
                        s.failed.push(problem(why));
                    }
                }
                progress.file_done(size.saturating_sub(sent));
            }
        })
        .await;
    progress.finish();
    // The walker stops once nobody receives; its error (an unreadable directory) is a failure of the run.
    let walked = walker
        .await
        .map_err(|e| CliError::Usage(format!("walking the store path failed: {e}")))?;
    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    walked.map_err(|e| CliError::io(&data, e))?;
    let mut summary = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
    summary.refused.sort_by(|a, b| a.path.cmp(&b.path));
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        print!("{}", render(&summary, progress.elapsed()));
    }
    let bad = summary.refused.len() + summary.failed.len();
    if bad > 0 {
        return Err(CliError::Import(format!(
            "{} file(s) refused, {} failed (see above)",
            summary.refused.len(),
            summary.failed.len()
        )));
    }
    Ok(())
}

/// The human summary.
fn render(s: &Summary, elapsed: Duration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} file(s) found: {} imported ({}), {} already there, {} refused, {} failed, in {}",
        s.found,
        s.imported,
        HumanBytes(s.bytes_imported),
        s.skipped,
        s.refused.len(),
        s.failed.len(),
        HumanDuration(elapsed)
    );
    let mut by_kind: BTreeMap<&str, Vec<&Problem>> = BTreeMap::new();
    for p in &s.refused {
        let kind = p.reason.split(':').next().unwrap_or(&p.reason);
        by_kind.entry(kind).or_default().push(p);
    }
    for (kind, problems) in by_kind {
        let _ = writeln!(out, "refused, {kind}: {}", problems.len());
        for p in problems {
            let _ = writeln!(out, "  {}  {}", p.path, p.reason);
        }
    }
    if !s.failed.is_empty() {
        let _ = writeln!(out, "failed (run again to retry): {}", s.failed.len());
        for p in &s.failed {
            let _ = writeln!(out, "  {}  {}", p.path, p.reason);
        }
    }
    out
}

/// Check one file and send it; the outcome and the bytes streamed. `Err` only for what stops the whole run
/// (the cluster refuses our credentials).
async fn import_one(target: &Target, found: Found, progress: &Progress) -> Result<(Outcome, u64)> {
    let id = match found.id {
        Ok(id) => id,
        Err(r) => return Ok((Outcome::Refused(r), 0)),
    };
    let master = id.name.prefix().is_none();
    let info = id.info();
    if master && info.size != found.size {
        return Ok((
            Outcome::Refused(Refusal::SizeMismatch {
                name: info.size,
                file: found.size,
            }),
            0,
        ));
    }
    let path = found.path.clone();
    let meta = match tokio::task::spawn_blocking(move || scan::read_metadata(&path)).await {
        Ok(Ok(m)) => m,
        Ok(Err(r)) => return Ok((Outcome::Refused(r), 0)),
        Err(e) => return Ok((Outcome::Failed(e.to_string()), 0)),
    };
    if master && exists(target, &id, found.size).await? {
        return Ok((Outcome::Skipped, 0));
    }
    send(
        target,
        &id,
        &found.path,
        found.size,
        found.mtime,
        &meta,
        progress,
    )
    .await
}

/// Whether the cluster serves `id` with `size` bytes (`HEAD /{id}`). Anything but a clear yes is a no.
async fn exists(target: &Target, id: &FileId, size: u64) -> Result<bool> {
    let req = target.client.request(Method::HEAD, &format!("/{id}"));
    let Ok(resp) = req.send().await else {
        return Ok(false);
    };
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok(resp.status() == StatusCode::OK && length == Some(size))
}

/// Stream the file to the import route; classify the answer. Also the bytes streamed.
async fn send(
    target: &Target,
    id: &FileId,
    path: &Path,
    size: u64,
    mtime: Option<u64>,
    meta: &Metadata,
    progress: &Progress,
) -> Result<(Outcome, u64)> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return Ok((Outcome::Refused(Refusal::Unreadable(e.to_string())), 0)),
    };
    let crc = Arc::new(Mutex::new((crc32fast::Hasher::new(), 0u64)));
    let seen = crc.clone();
    let pb = progress.clone();
    let stream = ReaderStream::with_capacity(file, CHUNK).inspect(move |chunk| {
        if let Ok(c) = chunk {
            let mut g = seen.lock().unwrap_or_else(|p| p.into_inner());
            g.0.update(c);
            g.1 += c.len() as u64;
            pb.bytes(c.len() as u64);
        }
    });
    let mut query: Vec<(&str, String)> = Vec::new();
    if !meta.is_empty() {
        query.push(("meta", serde_json::to_string(meta).unwrap_or_default()));
    }
    if let Some(t) = mtime {
        query.push(("mtime", t.to_string()));
    }
    let req = target
        .client
        .request(Method::PUT, &format!("{}/{id}", target.route))
        .query(&query)
        .header(header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream))
        .secret(target.secret.as_deref());
    let outcome = answer(req, &crc, id, path, size).await?;
    let sent = crc.lock().unwrap_or_else(|p| p.into_inner()).1;
    Ok((outcome, sent))
}

type Crc = Arc<Mutex<(crc32fast::Hasher, u64)>>;

/// Send the request and classify the answer.
async fn answer(
    req: reqwest::RequestBuilder,
    crc: &Crc,
    id: &FileId,
    path: &Path,
    size: u64,
) -> Result<Outcome> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            // A file that became unreadable mid-way fails the body: say so rather than blame the network.
            let read = crc.lock().unwrap_or_else(|p| p.into_inner()).1;
            if read < size {
                if let Err(io) = std::fs::File::open(path).and_then(|f| f.metadata()) {
                    return Ok(Outcome::Refused(Refusal::Unreadable(io.to_string())));
                }
            }
            return Ok(Outcome::Failed(format!("{e}")));
        }
    };
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if status.is_success() {
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Ok(match answer.get("status").and_then(|s| s.as_str()) {
            Some("imported") => Outcome::Imported(size),
            Some("skipped") => Outcome::Skipped,
            _ => Outcome::Failed(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&body)
            )),
        });
    }
    let err = api_error(status, &body);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(err),
        StatusCode::BAD_REQUEST => {
            let (local, read) = {
                let g = crc.lock().unwrap_or_else(|p| p.into_inner());
                (g.0.clone().finalize(), g.1)
            };
            let info = id.info();
            if id.name.prefix().is_none() && read == size && local != info.crc32 {
                Ok(Outcome::Refused(Refusal::BadCrc {
                    name: info.crc32,
                    file: local,
                }))
            } else {
                Ok(Outcome::Refused(Refusal::Server(err.to_string())))
            }
        }
        s if s.is_client_error() && s != StatusCode::REQUEST_TIMEOUT => {
            Ok(Outcome::Refused(Refusal::Server(err.to_string())))
        }
        _ => Ok(Outcome::Failed(err.to_string())),
    }
}

/// Progress of the run: a bar on a terminal, else a line every few seconds on stderr.
#[derive(Clone)]
struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    bar: Option<ProgressBar>,
    total_files: u64,
    total_bytes: u64,
    start: Instant,
    state: Mutex<(u64, u64, Instant)>,
}

impl Progress {
    fn new(total_files: u64, total_bytes: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new(total_bytes);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            pb.set_style(style);
            pb.set_message(format!("0/{total_files} files"));
            pb
        });
        Progress(Arc::new(ProgressInner {
            bar,
            total_files,
            total_bytes,
            start: Instant::now(),
            state: Mutex::new((0, 0, Instant::now())),
        }))
    }

    /// Bytes sent.
    fn bytes(&self, n: u64) {
        if let Some(pb) = &self.0.bar {
            pb.inc(n);
        }
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).1 += n;
    }

    /// A file finished; `unsent` of its bytes were not streamed (skipped, refused) but count as done.
    fn file_done(&self, unsent: u64) {
        if let Some(pb) = &self.0.bar {
            pb.inc(unsent);
        }
        let mut g = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1 += unsent;
        let (files, bytes) = (g.0, g.1);
        if let Some(pb) = &self.0.bar {
            pb.set_message(format!("{files}/{} files", self.0.total_files));
            return;
        }
        if g.2.elapsed() >= PROGRESS_EVERY {
            g.2 = Instant::now();
            let secs = self.0.start.elapsed().as_secs_f64().max(0.001);
            let rate = bytes as f64 / secs;
            let left = self.0.total_bytes.saturating_sub(bytes) as f64;
            let eta = if rate > 0.0 { left / rate } else { 0.0 };
            eprintln!(
                "{files}/{} files, {}/{} sent, {}/s, eta {}",
                self.0.total_files,
                HumanBytes(bytes),
                HumanBytes(self.0.total_bytes),
                HumanBytes(rate as u64),
                HumanDuration(Duration::from_secs_f64(eta)),
            );
        }
    }

    fn elapsed(&self) -> Duration {
        self.0.start.elapsed()
    }

    fn finish(&self) {
        if let Some(pb) = &self.0.bar {
            pb.finish_and_clear();
        }
    }
}
