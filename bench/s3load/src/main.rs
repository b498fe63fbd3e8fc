//! s3load: a closed-loop S3 load client for `bench/s3.sh`, the S3 counterpart of the shared `loadgen` (which
//! has no S3 mode): the same way of driving load (C worker tasks, each with one keep-alive HTTP/1.1 connection
//! on hyper's connection API, pulling request numbers from one counter until `--n` or `--duration-s`) and the
//! same `RESULT` line, so the bench script reads both alike.
//!
//! - `put`: PutObject of `--size` bytes to `bucket/prefix<i>`, every request signed (SigV4 in the
//!   `Authorization` header, `UNSIGNED-PAYLOAD`). Bodies differ per request (a unique head on a random tail), so
//!   no store can deduplicate them. `--out FILE` writes a presigned GET URL of every stored object, which
//!   `loadgen get --urls FILE` then reads back.
//! - `bucket`: CreateBucket (an existing bucket of ours is fine).

mod sigv4;

use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::sigv4::{amz_date_now, Signer, UNSIGNED_PAYLOAD};

#[derive(Parser)]
#[command(about = "Closed-loop S3 load client: signed PutObject, presigned GetObject URLs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// PutObject in a closed loop.
    Put(PutArgs),
    /// CreateBucket.
    Bucket(Common),
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The S3 endpoint, path-style: `http://127.0.0.1:9000`.
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: String,
    #[arg(long, env = "S3_ACCESS_KEY")]
    access_key: String,
    #[arg(long, env = "S3_SECRET_KEY")]
    secret_key: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
}

#[derive(clap::Args)]
struct PutArgs {
    #[command(flatten)]
    s3: Common,
    /// Object size; k/m suffixes are powers of 1024.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Keys are `<prefix><i>`.
    #[arg(long, default_value = "obj-")]
    prefix: String,
    /// Stop after this many requests.
    #[arg(long)]
    n: Option<u64>,
    /// Stop starting requests after this many seconds.
    #[arg(long)]
    duration_s: Option<f64>,
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Runtime threads (1: a single-threaded runtime, the least client CPU per request).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write a presigned GET URL of every stored object here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Lifetime of those URLs.
    #[arg(long, default_value_t = 3600)]
    url_expires_s: u32,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<u64>()
        .map(|n| n * mul)
        .map_err(|e| format!("size {s:?}: {e}"))
}

/// A request body of two parts: a head unique to the request and a tail shared by all (a cheap clone).
struct TwoPart {
    head: Option<Bytes>,
    tail: Option<Bytes>,
}

impl Body for TwoPart {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.head.take().or_else(|| self.tail.take());
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let n = self.head.as_ref().map_or(0, Bytes::len) + self.tail.as_ref().map_or(0, Bytes::len);
        SizeHint::with_exact(n as u64)
    }
}

/// wyrand: a fast PRNG for payload bytes.
struct Wyrand(u64);

impl Wyrand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }
}

fn host_of(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("endpoint {endpoint:?}: only http:// is supported"))?;
    Ok(rest.trim_end_matches('/').to_owned())
}

async fn connect(host: &str) -> std::io::Result<SendRequest<TwoPart>> {
    let stream = tokio::net::TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Send one request and read its answer to the end: (status, body bytes).
async fn exchange(
    send: &mut SendRequest<TwoPart>,
    req: Request<TwoPart>,
) -> Result<(u16, u64), String> {
    use http_body_util::BodyExt as _;
    send.ready().await.map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.map_err(|e| e.to_string())?.into_data() {
            n += d.len() as u64;
        }
    }
    Ok((status, n))
}

fn signed_put(
    signer: &mut Signer,
    host: &str,
    path: &str,
    body: TwoPart,
    len: u64,
) -> Request<TwoPart> {
    let date = amz_date_now();
    let auth = signer.authorization("PUT", path, &date);
    Request::put(sigv4::uri_encode(path, true))
        .header("host", host)
        .header("user-agent", concat!("s3load/", env!("CARGO_PKG_VERSION")))
        .header("content-type", "application/octet-stream")
        .header("content-length", len)
        .header("x-amz-date", date)
        .header("x-amz-content-sha256", UNSIGNED_PAYLOAD)
        .header("authorization", auth)
        .body(body)
        .expect("a valid request")
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    err: u64,
    /// Latency of every request, µs.
    lat_us: Vec<u32>,
    /// Request numbers of the stored objects.
    stored: Vec<u64>,
    errors: Vec<String>,
}

struct Plan {
    args: PutArgs,
    host: String,
    next: AtomicU64,
    deadline: Option<Instant>,
    tail: Bytes,
    nonce: u64,
}

async fn put_worker(plan: Arc<Plan>) -> Tally {
    let a = &plan.args;
    let mut signer = Signer::new(&a.s3.access_key, &a.s3.secret_key, &a.s3.region, &plan.host);
    let mut t = Tally::default();
    let mut conn: Option<SendRequest<TwoPart>> = None;
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if a.n.is_some_and(|n| i >= n) || plan.deadline.is_some_and(|d| Instant::now() >= d) {
            return t;
        }
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&plan.nonce.to_le_bytes());
        head[8..].copy_from_slice(&i.to_le_bytes());
        let head_len = (a.size as usize).min(16);
        let body = TwoPart {
            head: Some(Bytes::copy_from_slice(&head[..head_len])),
            tail: Some(plan.tail.clone()),
        };
        let path = format!("/{}/{}{i}", a.s3.bucket, a.prefix);
        let start = Instant::now();
        let result = match conn.as_mut().filter(|c| !c.is_closed()) {
            Some(c) => Ok(c),
            None => connect(&plan.host).await.map(|c| conn.insert(c)),
        };
        let result = match result {
            Ok(c) => exchange(c, signed_put(&mut signer, &plan.host, &path, body, a.size)).await,
            Err(e) => Err(format!("connect: {e}")),
        };
        t.lat_us
            .push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
        match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                t.ok += 1;
                t.stored.push(i);
            }
            Ok((status, _)) => {
                t.err += 1;
                t.errors.push(format!("{path}: HTTP {status}"));
            }
            Err(e) => {
                t.err += 1;
                t.errors.push(format!("{path}: {e}"));
                conn = None;
            }
        }
    }
}

/// utime + stime of this process, seconds (Linux's USER_HZ is 100).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn put(args: PutArgs) -> Result<(), String> {
    if args.n.is_none() && args.duration_s.is_none() {
        return Err("give --n or --duration-s".into());
    }
    let host = host_of(&args.s3.endpoint)?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = Wyrand(nonce);
    let tail_len = args.size.saturating_sub(16) as usize;
    let mut tail = Vec::with_capacity(tail_len + 8);
    while tail.len() < tail_len {
        tail.extend_from_slice(&rng.next().to_le_bytes());
    }
    tail.truncate(tail_len);
    let conc = args.concurrency.max(1);
    let plan = Arc::new(Plan {
        deadline: args
            .duration_s
            .map(|s| Instant::now() + Duration::from_secs_f64(s)),
        args,
        host,
        next: AtomicU64::new(0),
        tail: Bytes::from(tail),
        nonce,
    });
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let workers: Vec<_> = (0..conc)
        .map(|_| tokio::spawn(put_worker(plan.clone())))
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.map_err(|e| e.to_string())?;
        all.ok += t.ok;
        all.err += t.err;
        all.lat_us.extend(t.lat_us);
        all.stored.extend(t.stored);
        all.errors.extend(t.errors);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    for e in all.errors.iter().take(3) {
        eprintln!("s3load: error: {e}");
    }
    let a = &plan.args;
    if let Some(path) = &a.out {
        let mut signer = Signer::new(&a.s3.access_key, &a.s3.secret_key, &a.s3.region, &plan.host);
        let date = amz_date_now();
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
        all.stored.sort_unstable();
        for i in &all.stored {
            let url = signer.presign(
                "GET",
                &format!("/{}/{}{i}", a.s3.bucket, a.prefix),
                &date,
                a.url_expires_s,
            );
            writeln!(f, "{url}").map_err(|e| e.to_string())?;
        }
        f.flush().map_err(|e| e.to_string())?;
    }
    report(&all, secs, cpu, a.size, conc, a.threads);
    Ok(())
}

/// The human summary and loadgen's `RESULT` line (same keys, same order).
fn report(t: &Tally, secs: f64, cpu: f64, size: u64, conc: usize, threads: usize) {
    let mut lat = t.lat_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let k = ((p / 100.0 * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[k]) / 1000.0
    };
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| f64::from(v)).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let bytes = t.ok * size;
    let rps = t.ok as f64 / secs;
    let mbps = bytes as f64 / secs / (1 << 20) as f64;
    let cpu_pct = cpu / secs * 100.0;
    let (p50, p90, p99, p999, max) = (pct(50.0), pct(90.0), pct(99.0), pct(99.9), pct(100.0));
    println!("s3load put -> PutObject, SigV4 {UNSIGNED_PAYLOAD}");
    println!(
        "  requests    {} ok, {} err in {secs:.3} s  (concurrency {conc}, {threads} client thread(s))",
        t.ok, t.err
    );
    println!("  throughput  {rps:.1} req/s, {mbps:.2} MiB/s");
    println!(
        "  latency ms  mean {mean:.3}  p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}"
    );
    println!(
        "  client      cpu {cpu:.2} s = {cpu_pct:.0}% of one core; peak RSS {} KiB",
        peak_rss_kb()
    );
    println!(
        "RESULT op=put n={} ok={} err={} secs={secs:.3} rps={rps:.1} mbps={mbps:.2} p50_ms={p50:.3} p90_ms={p90:.3} \
         p99_ms={p99:.3} max_ms={max:.3} mean_ms={mean:.3} p999_ms={p999:.3} size={size} bytes={bytes} conc={conc} \
         threads={threads} cpu_pct={cpu_pct:.1} rss_kb={}",
        t.ok + t.err,
        t.ok,
        t.err,
        peak_rss_kb()
    );
}

async fn create_bucket(c: Common) -> Result<(), String> {
    let host = host_of(&c.endpoint)?;
    let mut signer = Signer::new(&c.access_key, &c.secret_key, &c.region, &host);
    let mut send = connect(&host).await.map_err(|e| e.to_string())?;
    let empty = TwoPart {
        head: None,
        tail: None,
    };
    let req = signed_put(&mut signer, &host, &format!("/{}", c.bucket), empty, 0);
    match exchange(&mut send, req).await? {
        (s, _) if (200..300).contains(&s) || s == 409 => Ok(()),
        (s, _) => Err(format!("CreateBucket {}: HTTP {s}", c.bucket)),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::Put(a) => a.threads.max(1),
        Cmd::Bucket(_) => 1,
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Put(a) => put(a).await,
            Cmd::Bucket(c) => create_bucket(c).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
