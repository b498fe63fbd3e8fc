//! `fdfs bench`: like `weed benchmark`. Uploads N generated files of a given size at a given concurrency
//! (`PUT /upload/{name}`), then downloads every one through the gateway's redirect and verifies it byte for
//! byte against the regenerated content, optionally deletes them, and prints req/s, MB/s and p50/p99 latency
//! per phase. Bodies up to 1 MiB are generated in memory per request; larger ones are streamed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fdfs_common::config::Size;
use fdfs_common::FileId;
use futures_util::{stream, StreamExt};
use reqwest::Method;

use crate::client::{parse_file_id, Client};
use crate::error::{CliError, Result};
use crate::pattern::{Pattern, Verifier};

/// Bodies at most this big are built in memory; bigger ones are streamed.
const IN_MEMORY_MAX: u64 = 1 << 20;

/// `fdfs bench` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of files.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub count: usize,
    /// Size of each file, e.g. 1024, 100KiB, 4MiB.
    #[arg(long, short = 's', default_value = "1KiB", value_parser = parse_size)]
    pub size: u64,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// Also delete every file afterwards (timed as a third phase).
    #[arg(long)]
    pub delete: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<Size>()? {
        Size::Bytes(b) => Ok(b),
        Size::Percent(_) => Err("a file size cannot be a percentage".into()),
    }
}

/// Results of one phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseStats {
    /// `upload`, `download` or `delete`.
    pub phase: &'static str,
    /// Requests made, failed ones included.
    pub requests: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Bytes moved by the successful requests.
    pub bytes: u64,
    /// Wall-clock duration of the phase.
    pub seconds: f64,
    /// Successful requests per second.
    pub req_per_sec: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Median latency of the successful requests, in milliseconds (0 with none).
    pub p50_ms: f64,
    /// 99th-percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// First error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn stats(
    phase: &'static str,
    elapsed: Duration,
    mut lat: Vec<Duration>,
    bytes: u64,
    errors: Vec<String>,
) -> PhaseStats {
    lat.sort();
    let secs = elapsed.as_secs_f64().max(1e-9);
    PhaseStats {
        phase,
        requests: lat.len() + errors.len(),
        failed: errors.len(),
        bytes,
        seconds: secs,
        req_per_sec: lat.len() as f64 / secs,
        mb_per_sec: bytes as f64 / 1e6 / secs,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        first_error: errors.into_iter().next(),
    }
}

/// Seed of file `i` of this run (runs differ so dedup does not make every run identical on disk).
fn seed(run: u64, i: usize) -> u64 {
    run.wrapping_mul(0x100_0000_01B3) ^ i as u64
}

async fn upload_one(client: &Client, seed: u64, size: u64, i: usize) -> Result<FileId> {
    let body = if size <= IN_MEMORY_MAX {
        reqwest::Body::from(Pattern::bytes(seed, size as usize))
    } else {
        reqwest::Body::wrap_stream(Pattern::stream(seed, size, 256 << 10))
    };
    let req = client
        .request(Method::PUT, &format!("/upload/bench-{i}.bin"))
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body);
    let resp = client.send(req).await?;
    let url = resp.url().to_string();
    let v: serde_json::Value = resp.json().await.map_err(|source| CliError::Http {
        url: url.clone(),
        source,
    })?;
    let id = v
        .get("file_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| CliError::Protocol {
            url,
            why: "answer has no file_id".into(),
        })?;
    parse_file_id(id)
}

async fn download_one(client: &Client, id: &FileId, seed: u64, size: u64) -> Result<()> {
    let resp = client.download(id, 0).await?;
    let url = resp.url().to_string();
    let mut v = Verifier::new(seed, size);
    let mut body = resp.bytes_stream();
    while let Some(c) = body.next().await {
        let c = c.map_err(|source| CliError::Http {
            url: url.clone(),
            source,
        })?;
        v.update(&c);
    }
    v.finish()
        .map_err(|e| CliError::Corrupt(format!("{id}: {e}")))
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<()> {
    if args.count == 0 || args.concurrency == 0 {
        return Err(CliError::Usage(
            "--count and --concurrency must be at least 1".into(),
        ));
    }
    let run_id: u64 = rand::random();
    let size = args.size;
    let conc = args.concurrency;
    eprintln!(
        "bench: {} files of {} bytes, concurrency {conc}, gateway {}",
        args.count,
        size,
        client.base()
    );

    // Upload phase.
    let start = Instant::now();
    let results: Vec<(usize, Duration, Result<FileId>)> = stream::iter(0..args.count)
        .map(|i| async move {
            let t = Instant::now();
            let r = upload_one(client, seed(run_id, i), size, i).await;
            (i, t.elapsed(), r)
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let mut ids = Vec::new();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for (i, d, r) in results {
        match r {
            Ok(id) => {
                lat.push(d);
                ids.push((i, id));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut phases = vec![stats(
        "upload",
        elapsed,
        lat,
        size * ids.len() as u64,
        errors,
    )];

    // Download + verify phase.
    let ids = Arc::new(ids);
    let start = Instant::now();
    let results: Vec<(Duration, Result<()>)> = stream::iter(0..ids.len())
        .map(|k| {
            let ids = Arc::clone(&ids);
            async move {
                let (i, id) = &ids[k];
                let t = Instant::now();
                let r = download_one(client, id, seed(run_id, *i), size).await;
                (t.elapsed(), r)
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let (ok, bad): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_ok());
    let lat: Vec<Duration> = ok.iter().map(|(d, _)| *d).collect();
    let errors: Vec<String> = bad
        .into_iter()
        .filter_map(|(_, r)| r.err().map(|e| e.to_string()))
        .collect();
    let bytes = size * lat.len() as u64;
    phases.push(stats("download", elapsed, lat, bytes, errors));

    if args.delete {
        let start = Instant::now();
        let results: Vec<(Duration, Result<serde_json::Value>)> = stream::iter(ids.iter())
            .map(|(_, id)| async move {
                let t = Instant::now();
                let r = client.delete(id).await;
                (t.elapsed(), r)
            })
            .buffer_unordered(conc)
            .collect()
            .await;
        let elapsed = start.elapsed();
        let (ok, bad): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_ok());
        let lat = ok.iter().map(|(d, _)| *d).collect();
        let errors = bad
            .into_iter()
            .filter_map(|(_, r)| r.err().map(|e| e.to_string()))
            .collect();
        phases.push(stats("delete", elapsed, lat, 0, errors));
    }

    if args.json {
        let s = serde_json::to_string_pretty(&phases)
            .map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?;
        println!("{s}");
    } else {
        print!("{}", render(&phases));
    }
    let failed: usize = phases.iter().map(|p| p.failed).sum();
    if failed > 0 {
        let first = phases
            .iter()
            .find_map(|p| p.first_error.clone())
            .unwrap_or_default();
        return Err(CliError::Bench(format!(
            "{failed} request(s) failed; first: {first}"
        )));
    }
    Ok(())
}

/// The results table.
pub fn render(phases: &[PhaseStats]) -> String {
    let mut s = format!(
        "{:<9} {:>8} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9}\n",
        "phase", "requests", "failed", "seconds", "req/s", "MB/s", "p50 ms", "p99 ms"
    );
    for p in phases {
        s.push_str(&format!(
            "{:<9} {:>8} {:>7} {:>9.2} {:>10.1} {:>9.2} {:>9.2} {:>9.2}\n",
            p.phase,
            p.requests,
            p.failed,
            p.seconds,
            p.req_per_sec,
            p.mb_per_sec,
            p.p50_ms,
            p.p99_ms
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&lat, 50.0), 50.0);
        assert_eq!(percentile(&lat, 99.0), 99.0);
        assert_eq!(percentile(&lat[..1], 99.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert!(parse_size("5%").is_err());
    }
}
