//! `PUT /v1/import/{file_id}` (internal, behind the cluster secret): store a file under the ID it already has,
//! for moving an existing FastDFS store into fdfs (`fdfs import-fastdfs`). It lets the caller choose IDs, so it
//! is never public; the gateway's `PUT /import/{file_id}` forwards to it for callers with the API key or the
//! cluster secret.
//!
//! Query: `meta` (a JSON object of strings, stored with the file), `mtime` (unix seconds given to the file,
//! default its ID's creation time). The raw body is the file. The body is checked against the size and CRC32
//! the ID encodes while it is staged (400 when it does not match: nothing is kept), then goes through the
//! upload path ([`crate::write::Writes::import`]). Answer [`ImportResult`]: `imported` (with the replica
//! count) or `skipped` (the same bytes were already here); 409 when the ID holds other bytes.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use fdfs_common::internal::declared_within;
use fdfs_common::FileId;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::store::Stored;
use crate::write::ImportOutcome;
use crate::AppState;

/// Query of `PUT /v1/import/{file_id}`.
#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    /// JSON object of string metadata.
    pub meta: Option<String>,
    /// Modification time given to the stored file, unix seconds.
    pub mtime: Option<u64>,
}

/// What an import did: `imported` or `skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Stored now, and replicated like an upload.
    Imported,
    /// The same bytes were already here under that ID; nothing changed.
    Skipped,
}

/// Answer of `PUT /v1/import/{file_id}` (and of the gateway's `PUT /import/{file_id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    /// The ID the file was imported under (the one in the path).
    pub file_id: FileId,
    /// Whether it was stored now or already there.
    pub status: ImportStatus,
    /// Download URL on this node.
    pub url: String,
    /// Content length in bytes.
    pub size: u64,
    /// CRC32 of the content, 8 lower-case hex digits.
    pub crc32: String,
    /// Members holding the file when it was imported (absent when skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// `PUT /v1/import/{file_id}`.
pub async fn import(
    State(node): State<AppState>,
    path: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<ImportQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportResult>> {
    let Path(raw) = path.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    let Query(q) = query.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    let id: FileId = raw.parse()?;
    let meta = crate::sync::protocol::meta_param(q.meta.as_deref())?;
    let limit = node.max_file_size;
    let declared = declared_within(&headers, limit)?;
    if let Some(n) = declared {
        // A master's size is in its ID: a body of another length cannot match, refuse it before reading.
        let expected = id.info().size;
        if id.name.prefix().is_none() && n != expected {
            return Err(StorageError::BadRequest(format!(
                "content does not match {id}: {n} bytes sent, the id says {expected} bytes"
            )));
        }
    }
    let mtime = q.mtime.unwrap_or(u64::from(id.info().created));
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
    let (stored, outcome) = node
        .writes
        .import(id, Some(mtime), meta, body.into_data_stream(), limit)
        .await?;
    let Stored { id, size, crc32 } = stored;
    let (status, replicas) = match outcome {
        ImportOutcome::Imported { replicas } => (ImportStatus::Imported, Some(replicas)),
        ImportOutcome::Skipped => (ImportStatus::Skipped, None),
    };
    tracing::info!(file_id = %id, size, ?status, replicas, "imported");
    Ok(Json(ImportResult {
        url: format!("{}/{id}", node.public_url),
        size,
        crc32: format!("{crc32:08x}"),
        status,
        replicas,
        file_id: id,
    }))
}
