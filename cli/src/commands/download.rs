//! `fdfs download ID [-o FILE|-]`: follows the gateway's redirect to a storage node and streams the body to a
//! temp file next to the target (`FILE.part`), resuming an interrupted download with a `Range` request, then
//! fsyncs and renames it into place. For master files the size and CRC32 encoded in the ID are verified.

use std::path::{Path, PathBuf};

use fdfs_common::FileId;
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{parse_file_id, Client};
use crate::commands::progress_bar;
use crate::error::{CliError, Result};

/// `fdfs download` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// File ID (or a download URL) to fetch.
    pub id: String,
    /// Where to write: a path, a directory, or `-` for stdout. Default: the file's name in the current directory.
    #[arg(short, long, value_name = "FILE|-")]
    pub output: Option<PathBuf>,
}

/// What the ID itself says about the content (master files only; a slave file shares its master's name).
#[derive(Debug, Clone, Copy)]
struct Expected {
    size: u64,
    crc32: u32,
}

fn expected(id: &FileId) -> Option<Expected> {
    if id.name.prefix().is_some() {
        return None;
    }
    let info = id.info();
    Some(Expected {
        size: info.size,
        crc32: info.crc32,
    })
}

fn check_expected(exp: Option<Expected>, size: u64, crc: u32) -> Result<()> {
    if let Some(e) = exp {
        if size != e.size {
            return Err(CliError::Corrupt(format!(
                "got {size} bytes, the file id says {}",
                e.size
            )));
        }
        if crc != e.crc32 {
            return Err(CliError::Corrupt(format!(
                "CRC32 {crc:08x}, the file id says {:08x}",
                e.crc32
            )));
        }
    }
    Ok(())
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<()> {
    let id = parse_file_id(&args.id)?;
    match args.output {
        Some(p) if p.as_os_str() == "-" => to_stdout(client, &id).await,
        Some(p) => {
            // An existing directory gets the file under its own name.
            let p = if tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_dir()) {
                p.join(id.name.as_str())
            } else {
                p
            };
            saved(&p, to_file(client, &id, &p).await?)
        }
        None => {
            let p = PathBuf::from(id.name.as_str());
            saved(&p, to_file(client, &id, &p).await?)
        }
    }
}

fn saved(path: &Path, size: u64) -> Result<()> {
    eprintln!("saved {} ({size} bytes)", path.display());
    Ok(())
}

async fn to_stdout(client: &Client, id: &FileId) -> Result<()> {
    let resp = client.download(id, 0).await?;
    let url = resp.url().to_string();
    let mut out = tokio::io::stdout();
    let mut hasher = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| CliError::Http {
            url: url.clone(),
            source,
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| CliError::io("stdout", e))?;
    }
    out.flush().await.map_err(|e| CliError::io("stdout", e))?;
    check_expected(expected(id), size, hasher.finalize())
}

/// The temp file a download into `target` goes through.
pub fn part_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// CRC32 and length of what an interrupted download already wrote.
async fn hash_existing(path: &Path) -> Result<(crc32fast::Hasher, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(path, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(|e| CliError::io(path, e))?;
        if n == 0 {
            return Ok((hasher, len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Download into `target` through `target.part`; returns the number of bytes of the file.
pub async fn to_file(client: &Client, id: &FileId, target: &Path) -> Result<u64> {
    let exp = expected(id);
    let part = part_path(target);

    // An interrupted earlier run left `FILE.part`; a plain partial `FILE` (shorter than the ID says) is resumed
    // the same way.
    if tokio::fs::metadata(&part).await.is_err() {
        if let (Some(e), Ok(m)) = (exp, tokio::fs::metadata(target).await) {
            if m.is_file() && m.len() < e.size {
                tokio::fs::rename(target, &part)
                    .await
                    .map_err(|e| CliError::io(target, e))?;
            }
        }
    }
    let (mut hasher, mut offset) = match tokio::fs::metadata(&part).await {
        Ok(m) if m.is_file() => hash_existing(&part).await?,
        _ => (crc32fast::Hasher::new(), 0),
    };
    if exp.is_some_and(|e| offset > e.size) {
        // Longer than the file can be: not a prefix of it.
        hasher = crc32fast::Hasher::new();
        offset = 0;
    }

    let mut resp = client.download(id, offset).await?;
    if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        if exp.is_some_and(|e| e.size == offset) {
            // Everything was already there; only the rename was missing.
            return finish(target, &part, exp, offset, hasher.finalize()).await;
        }
        hasher = crc32fast::Hasher::new();
        offset = 0;
        resp = client.download(id, 0).await?;
    }
    let resuming = offset > 0 && resp.status() == StatusCode::PARTIAL_CONTENT;
    if resuming {
        let start = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if start != Some(offset) {
            return Err(CliError::Protocol {
                url: resp.url().to_string(),
                why: format!("asked for bytes from {offset}, got Content-Range start {start:?}"),
            });
        }
    } else {
        hasher = crc32fast::Hasher::new();
        offset = 0;
    }

    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resuming)
        .truncate(!resuming)
        .open(&part)
        .await
        .map_err(|e| CliError::io(&part, e))?;
    let total = resp.content_length().map(|n| n + offset);
    let label = target
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let pb = progress_bar(total.or(exp.map(|e| e.size)).unwrap_or(0), &label);
    if let Some(pb) = &pb {
        pb.set_position(offset);
    }
    let url = resp.url().to_string();
    let mut body = resp.bytes_stream();
    let mut size = offset;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, &mut file);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| CliError::Http {
            url: url.clone(),
            source,
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| CliError::io(&part, e))?;
        if let Some(pb) = &pb {
            pb.set_position(size);
        }
    }
    writer.flush().await.map_err(|e| CliError::io(&part, e))?;
    drop(writer);
    file.sync_all().await.map_err(|e| CliError::io(&part, e))?;
    drop(file);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    finish(target, &part, exp, size, hasher.finalize()).await
}

/// Verify the finished temp file, then rename it into place and fsync the directory.
async fn finish(
    target: &Path,
    part: &Path,
    exp: Option<Expected>,
    size: u64,
    crc: u32,
) -> Result<u64> {
    if let Err(e) = check_expected(exp, size, crc) {
        // A corrupt partial must not be resumed again.
        let _ = tokio::fs::remove_file(part).await;
        return Err(e);
    }
    tokio::fs::rename(part, target)
        .await
        .map_err(|e| CliError::io(target, e))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
        .await
        .map_err(|e| CliError::Usage(format!("fsync task failed: {e}")))?
        .map_err(|e| CliError::io(target, e))?;
    Ok(size)
}
