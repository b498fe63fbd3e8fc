//! `fdfs upload --resumable`: a small tus 1.0 client. The upload URL is kept in a state file (one per gateway,
//! file path, size and modification time) until the upload finishes, so a rerun after a break asks the gateway
//! where the upload stands (`HEAD`) and sends only the rest, in chunks of `--chunk-size`.
//!
//! State files live in `$FDFS_STATE_DIR`, else `$XDG_STATE_HOME/fdfs/tus`, else `~/.local/state/fdfs/tus`.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::client::{check, Client};
use crate::commands::progress_bar;
use crate::error::{CliError, Result};

const TUS_VERSION: &str = "1.0.0";
/// Read buffer for streaming a chunk.
const READ_BUF: usize = 256 << 10;

/// Where the upload URLs of unfinished uploads are kept.
fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FDFS_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Some(PathBuf::from(d).join("fdfs").join("tus"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/fdfs/tus"))
}

/// The state file of one upload: named after the gateway, the file's absolute path, size and mtime.
fn state_file(client: &Client, path: &Path, len: u64, mtime: u64) -> Option<PathBuf> {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let key = format!("{}\n{}\n{len}\n{mtime}", client.base(), abs.display());
    let a = crc32fast::hash(key.as_bytes());
    let mut h = crc32fast::Hasher::new_with_initial(0x5bd1_e995);
    h.update(key.as_bytes());
    h.update(b"tus");
    Some(state_dir()?.join(format!("{a:08x}{:08x}.url", h.finalize())))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn protocol(url: &str, why: &str) -> CliError {
    CliError::Protocol {
        url: url.to_owned(),
        why: why.to_owned(),
    }
}

/// How a tus upload goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes sent per `PATCH` (at least 1).
    pub chunk_size: u64,
    /// Test hook: stop (as if the connection broke) after this many chunks.
    pub stop_after_chunks: Option<u64>,
}

/// Upload one file through `/tus/`, resuming a recorded upload; returns the `POST /upload`-shaped JSON.
pub async fn upload_file(
    client: &Client,
    path: &Path,
    group: Option<&str>,
    meta: &fdfs_common::wire::Metadata,
    opts: &Options,
) -> Result<serde_json::Value> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(path, e))?;
    let fmeta = file.metadata().await.map_err(|e| CliError::io(path, e))?;
    let len = fmeta.len();
    let mtime = fmeta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let state = state_file(client, path, len, mtime);

    // A recorded upload: where does it stand?
    let mut resumed = None;
    if let Some(url) = state
        .as_ref()
        .and_then(|s| std::fs::read_to_string(s).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
    {
        let resp = client
            .http()
            .head(&url)
            .header("tus-resumable", TUS_VERSION)
            .headers(client.key_header())
            .send()
            .await
            .map_err(|source| CliError::Http {
                url: url.clone(),
                source,
            })?;
        match resp.status() {
            StatusCode::OK => {
                let offset = header(&resp, "upload-offset")
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| protocol(&url, "HEAD without Upload-Offset"))?;
                resumed = Some((url, offset));
            }
            // Gone or expired (or the node that held it was lost): start over.
            StatusCode::NOT_FOUND | StatusCode::GONE => {}
            _ => {
                check(resp).await?;
            }
        }
    }
    let (url, mut offset) = match resumed {
        Some(r) => r,
        None => {
            let mut pairs = vec![format!("filename {}", b64(&name))];
            if let Some(g) = group {
                pairs.push(format!("group {}", b64(g)));
            }
            for (k, v) in meta {
                pairs.push(format!("meta.{k} {}", b64(v)));
            }
            let resp = client
                .send(
                    client
                        .request(Method::POST, "/tus/")
                        .header("tus-resumable", TUS_VERSION)
                        .header("upload-length", len)
                        .header("upload-metadata", pairs.join(",")),
                )
                .await?;
            let location = header(&resp, "location")
                .ok_or_else(|| protocol(&client.url("/tus/"), "creation without Location"))?;
            let url = if location.starts_with("http://") || location.starts_with("https://") {
                location.to_owned()
            } else {
                client.url(location)
            };
            if let Some(s) = &state {
                if let Some(dir) = s.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let tmp = s.with_extension("tmp");
                std::fs::write(&tmp, format!("{url}\n"))
                    .and_then(|()| std::fs::rename(&tmp, s))
                    .map_err(|e| CliError::io(s, e))?;
            }
            (url, 0)
        }
    };

    let pb = progress_bar(len, &name);
    if let Some(pb) = &pb {
        pb.set_position(offset);
    }
    let mut chunks = 0u64;
    let mut finished = offset >= len;
    while !finished {
        if opts.stop_after_chunks.is_some_and(|n| chunks >= n) {
            if let Some(pb) = &pb {
                pb.abandon();
            }
            return Err(CliError::Usage(format!(
                "stopped after {chunks} chunk(s) at byte {offset} (test hook); rerun to resume"
            )));
        }
        let n = opts.chunk_size.max(1).min(len - offset);
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| CliError::io(path, e))?;
        let reader = file
            .try_clone()
            .await
            .map_err(|e| CliError::io(path, e))?
            .take(n);
        let pb2 = pb.clone();
        let stream = ReaderStream::with_capacity(reader, READ_BUF).inspect(move |c| {
            if let (Some(pb), Ok(c)) = (&pb2, c) {
                pb.inc(c.len() as u64);
            }
        });
        let resp = client
            .http()
            .patch(&url)
            .headers(client.key_header())
            .header("tus-resumable", TUS_VERSION)
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream")
            .header("content-length", n)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|source| CliError::Http {
                url: url.clone(),
                source,
            })?;
        if resp.status() == StatusCode::CONFLICT {
            // Someone else moved it (or our last answer was lost): ask where it is.
            let head = client
                .http()
                .head(&url)
                .headers(client.key_header())
                .header("tus-resumable", TUS_VERSION)
                .send()
                .await
                .map_err(|source| CliError::Http {
                    url: url.clone(),
                    source,
                })?;
            let head = check(head).await?;
            offset = header(&head, "upload-offset")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| protocol(&url, "HEAD without Upload-Offset"))?;
            if let Some(pb) = &pb {
                pb.set_position(offset);
            }
            finished = offset >= len;
            continue;
        }
        let resp = check(resp).await?;
        offset = header(&resp, "upload-offset")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| protocol(&url, "PATCH answer without Upload-Offset"))?;
        chunks += 1;
        finished = offset >= len;
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let resp = client
        .send(
            client
                .http()
                .get(&url)
                .headers(client.key_header())
                .header("tus-resumable", TUS_VERSION),
        )
        .await?;
    let body = resp.bytes().await.map_err(|source| CliError::Http {
        url: url.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| protocol(&url, &format!("invalid JSON: {e}")))?;
    if let Some(s) = &state {
        let _ = std::fs::remove_file(s);
    }
    Ok(value)
}
