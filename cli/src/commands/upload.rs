//! `fdfs upload FILE|DIR..`: streams each file from disk to the gateway as `multipart/form-data` (form fields
//! `group`, `meta.*` and `thumbnails` first, then the `file` part), one request per file; directories are walked recursively.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use tokio_util::io::ReaderStream;

use crate::client::Client;
use crate::commands::{parse_pairs, progress_bar};
use crate::error::{CliError, Result};

/// Read buffer for streaming a file to the gateway.
const CHUNK: usize = 256 << 10;

/// `fdfs upload` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (uploaded recursively) to upload.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Store in this group instead of letting the tracker choose.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Metadata to attach, `key=value`; may be repeated.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Print only the file IDs, one per line, instead of the JSON answers.
    #[arg(long, short)]
    pub quiet: bool,
    /// Render these thumbnail sizes right after each upload, e.g. `150x150,300x300` (the storage nodes'
    /// `thumbnail_sizes`); the answer lists them under `thumbnails`.
    #[arg(long, value_name = "WxH,..")]
    pub thumbnails: Option<String>,
    /// Upload through the resumable (tus) API in chunks; rerunning after a break resumes where it stopped.
    #[arg(long)]
    pub resumable: bool,
    /// Chunk size of --resumable uploads, e.g. 16MiB.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "16MiB",
        requires = "resumable"
    )]
    pub chunk_size: fdfs_common::config::Size,
    /// Test hook: stop a --resumable upload after N chunks, as if the connection broke.
    #[arg(long, hide = true, value_name = "N")]
    pub stop_after_chunks: Option<u64>,
}

/// Upload every file; print one JSON answer (or ID with `--quiet`) per line as each finishes.
pub async fn run(client: &Client, args: Args) -> Result<()> {
    let meta = parse_pairs(&args.meta)?;
    let mut files = Vec::new();
    for p in &args.paths {
        collect_files(p, &mut files).await?;
    }
    if files.is_empty() {
        return Err(CliError::Usage("no regular files to upload".into()));
    }
    let resumable = match (args.resumable, args.chunk_size) {
        (false, _) => None,
        (true, fdfs_common::config::Size::Bytes(n)) if n > 0 => Some(super::resumable::Options {
            chunk_size: n,
            stop_after_chunks: args.stop_after_chunks,
        }),
        (true, _) => {
            return Err(CliError::Usage(
                "--chunk-size must be a positive size".into(),
            ))
        }
    };
    let mut thumbnail_failures = Vec::new();
    for path in files {
        let answer = match &resumable {
            Some(opts) => {
                super::resumable::upload_file(client, &path, args.group.as_deref(), &meta, opts)
                    .await?
            }
            None => {
                upload_file(
                    client,
                    &path,
                    args.group.as_deref(),
                    &meta,
                    args.thumbnails.as_deref(),
                )
                .await?
            }
        };
        if args.quiet {
            match answer.get("file_id").and_then(|v| v.as_str()) {
                Some(id) => println!("{id}"),
                None => {
                    return Err(CliError::Protocol {
                        url: client.url("/upload"),
                        why: "answer has no file_id".into(),
                    })
                }
            }
        } else {
            println!("{answer}");
        }
        thumbnail_failures.extend(failed_thumbnails(&path, &answer));
    }
    if thumbnail_failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Thumbnails(format!(
            "uploaded, but {} thumbnail(s) failed:\n  {}",
            thumbnail_failures.len(),
            thumbnail_failures.join("\n  ")
        )))
    }
}

/// `<file> <size>: <code>: <message>` for each thumbnail of an upload answer that carries an error.
fn failed_thumbnails(path: &Path, answer: &serde_json::Value) -> Vec<String> {
    answer["thumbnails"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let e = t.get("error")?;
            Some(format!(
                "{} {}: {}: {}",
                path.display(),
                t["size"].as_str().unwrap_or("?"),
                e["code"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or_default()
            ))
        })
        .collect()
}

/// Files under `path` (itself if it is a file), sorted, skipping symlinked directories.
async fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let path = path.to_owned();
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        walk(&path, &mut found, true)?;
        Ok(found)
    })
    .await
    .map_err(|e| CliError::Usage(format!("directory walk failed: {e}")))??;
    out.extend(found);
    Ok(())
}

fn walk(path: &Path, out: &mut Vec<PathBuf>, top: bool) -> Result<()> {
    let meta = if top {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .map_err(|e| CliError::io(path, e))?;
    if meta.is_file() {
        out.push(path.to_owned());
    } else if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| CliError::io(path, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| CliError::io(path, e))?;
        entries.sort();
        for e in entries {
            walk(&e, out, false)?;
        }
    } else if meta.file_type().is_symlink() {
        // A symlink inside a directory: follow it to a file, never into a directory (no loops).
        if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            out.push(path.to_owned());
        }
    } else if top {
        return Err(CliError::Usage(format!(
            "{} is not a regular file or directory",
            path.display()
        )));
    }
    Ok(())
}

/// Upload one file; returns the gateway's JSON answer.
pub async fn upload_file(
    client: &Client,
    path: &Path,
    group: Option<&str>,
    meta: &fdfs_common::wire::Metadata,
    thumbnails: Option<&str>,
) -> Result<serde_json::Value> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(path, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| CliError::io(path, e))?
        .len();
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let content_type =
        fdfs_common::content_type_for(fdfs_common::fileid::ext_from_filename(&name).as_deref());

    let pb = progress_bar(len, &name);
    let pb2 = pb.clone();
    let stream = ReaderStream::with_capacity(file, CHUNK).inspect(move |chunk| {
        if let (Some(pb), Ok(c)) = (&pb2, chunk) {
            pb.inc(c.len() as u64);
        }
    });
    let part = Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
        .file_name(name)
        .mime_str(content_type)
        .map_err(|source| CliError::Http {
            url: client.url("/upload"),
            source,
        })?;

    let mut form = Form::new();
    if let Some(g) = group {
        form = form.text("group", g.to_owned());
    }
    for (k, v) in meta {
        form = form.text(format!("meta.{k}"), v.clone());
    }
    if let Some(t) = thumbnails {
        form = form.text("thumbnails", t.to_owned());
    }
    let form = form.part("file", part);

    let result = client
        .send(client.request(Method::POST, "/upload").multipart(form))
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let resp = result?;
    let url = resp.url().to_string();
    let body = resp.bytes().await.map_err(|source| CliError::Http {
        url: url.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| CliError::Protocol {
            url: url.clone(),
            why: format!("invalid JSON: {e}"),
        })?;
    // One file part normally gives one object; accept the `{"files": [..]}` shape too.
    match value.get("files").and_then(|f| f.as_array()) {
        Some(files) if files.len() == 1 => Ok(files[0].clone()),
        _ => Ok(value),
    }
}
