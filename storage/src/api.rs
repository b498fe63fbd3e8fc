//! Internal `/v1` routes (cluster secret): upload, file info, delete, metadata. Handlers only parse and answer:
//! every change goes through the node's [`crate::write::Writes`] (uploads) or [`crate::sync::SyncEngine`]
//! (deletes, metadata), which make it durable in the [`crate::store::Store`], record it and replicate it before
//! it is acknowledged.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use fdfs_common::fileid::ext_from_filename;
use fdfs_common::internal::declared_within;
use fdfs_common::wire::{FileInfo, Metadata, UploadResult};
use fdfs_common::{content_type_for, FileId};
use serde::Deserialize;

use crate::error::{Result, StorageError};
use crate::store::{MetaUpdate, NewFile, ReindexReport, Stored};
use crate::sync::Slaves;
use crate::AppState;

/// JSON 404 for unknown routes.
pub async fn not_found() -> StorageError {
    StorageError::NotFound("no such route".into())
}

fn parse_id(raw: &str, node: &AppState) -> Result<FileId> {
    let id: FileId = raw.parse()?;
    node.store.check_owns(&id)?;
    Ok(id)
}

/// Query of `POST /v1/upload`.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// Store path index (default 0); ignored for slave files, which live next to their master.
    pub store_path: Option<u8>,
    /// Extension without the dot.
    pub ext: Option<String>,
    /// Master file ID, for a slave file (with `prefix`).
    pub master: Option<String>,
    /// Slave prefix such as `_150x150`.
    pub prefix: Option<String>,
    /// JSON object of string metadata.
    pub meta: Option<String>,
}

fn parse_ext(ext: Option<&str>) -> Result<Option<String>> {
    match ext.map(str::trim) {
        None | Some("") => Ok(None),
        Some(e) => match ext_from_filename(&format!("f.{e}")) {
            Some(norm) if norm.eq_ignore_ascii_case(e) => Ok(Some(norm)),
            _ => Err(StorageError::BadRequest(format!(
                "invalid extension {e:?}: 1-6 characters of A-Z a-z 0-9"
            ))),
        },
    }
}

/// `POST /v1/upload`: stream the raw body into the store and answer [`UploadResult`].
pub async fn upload(
    State(node): State<AppState>,
    query: std::result::Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<UploadResult>> {
    let Query(q) = query.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    let ext = parse_ext(q.ext.as_deref())?;
    let meta = crate::sync::protocol::meta_param(q.meta.as_deref())?;
    let new = match (q.master.as_deref(), q.prefix.as_deref()) {
        (None, None) => NewFile::Master {
            store_path: q.store_path.unwrap_or(0),
            ext,
            source_id: node.node_id,
        },
        (Some(master), Some(prefix)) => {
            let master = parse_id(master, &node)?;
            if master.name.prefix().is_some() {
                return Err(StorageError::BadRequest(
                    "a slave file cannot have slave files".into(),
                ));
            }
            let id = master.slave(prefix, ext.as_deref())?;
            NewFile::Slave { master, id }
        }
        _ => {
            return Err(StorageError::BadRequest(
                "master and prefix go together".into(),
            ))
        }
    };
    if let NewFile::Master { store_path, .. } = &new {
        if usize::from(*store_path) >= node.store.store_path_count() {
            return Err(StorageError::BadRequest(format!(
                "store path {store_path} does not exist on this node"
            )));
        }
    }
    let limit = node.max_file_size;
    declared_within(&headers, limit)?;
    let attempt = crate::write::abandon::attempt_of(&headers)?;
    // Before any byte of the body: the gateway can still send it elsewhere.
    node.takes_uploads()?;
    node.writes.quorum_check()?;
    node.writes.attempt_wanted(attempt.as_deref())?;
    // In a task of its own: should the gateway hang up, what the upload stores is still recorded against its
    // attempt (and removed if the attempt is abandoned).
    let writes = node.writes.clone();
    let (stored, replicas) = tokio::spawn(async move {
        let upload = writes
            .upload(new, meta, body.into_data_stream(), limit)
            .await;
        match &upload {
            Ok((stored, _)) => {
                writes
                    .attempt_stored(attempt.as_deref(), &stored.id)
                    .await?
            }
            // Stored here all the same: removed should the gateway give the attempt up.
            Err(StorageError::NotReplicated(id, _)) => {
                let _ = writes.attempt_stored(attempt.as_deref(), id).await;
            }
            Err(_) => {}
        }
        upload
    })
    .await
    .map_err(|e| StorageError::Internal(format!("upload task: {e}")))??;
    let Stored { id, size, crc32 } = stored;
    tracing::info!(file_id = %id, size, replicas, "stored");
    Ok(Json(UploadResult {
        url: format!("{}/{id}", node.public_url),
        group: id.group.clone(),
        size,
        crc32: format!("{crc32:08x}"),
        content_type: content_type_for(id.name.ext()).to_owned(),
        filename: None,
        replicas,
        file_id: id,
    }))
}

/// `POST /v1/abandon/{attempt}`: the gateway gave up this upload attempt (see [`crate::write::abandon`]); the
/// file it stored is removed, or it will store none. Answers the file removed (`null` when none).
pub async fn abandon(
    State(node): State<AppState>,
    Path(attempt): Path<String>,
) -> Result<Json<serde_json::Value>> {
    if !crate::write::abandon::valid(&attempt) {
        return Err(StorageError::BadRequest(
            "an attempt ID is 1-64 characters of A-Z a-z 0-9 - _".into(),
        ));
    }
    let removed = node.writes.abandon(&attempt).await;
    Ok(Json(
        serde_json::json!({ "attempt": attempt, "removed": removed }),
    ))
}

/// `GET /v1/files/{file_id}`: decoded ID, content type, metadata, and this node as the location.
pub async fn file_info(
    State(node): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<FileInfo>> {
    let id = parse_id(&raw, &node)?;
    let Some(stat) = node.store.stat(&id).await? else {
        return Err(StorageError::NotFound(format!("no such file {id}")));
    };
    let metadata = node.store.get_meta(&id).await?.unwrap_or_default();
    let mut info = FileInfo::decoded(&id);
    // A slave's name carries its master's size; report what is stored.
    info.size = stat.len();
    info.metadata = metadata;
    info.locations = vec![node.public_url.clone()];
    Ok(Json(info))
}

/// Query of `DELETE /v1/files/{file_id}`.
#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    /// `all`: delete every slave of the master too (uploaded ones included); rendered thumbnails always go.
    slaves: Option<String>,
}

/// `DELETE /v1/files/{file_id}[?slaves=all]`: the file, the thumbnails rendered from it, and with
/// `slaves=all` every slave; the answer lists the slaves deleted.
pub async fn delete(
    State(node): State<AppState>,
    Path(raw): Path<String>,
    query: std::result::Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>> {
    let Query(q) = query.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    let id = parse_id(&raw, &node)?;
    let which = match q.slaves.as_deref() {
        None | Some("rendered") => Slaves::Rendered,
        Some("all") => Slaves::All,
        Some(other) => {
            return Err(StorageError::BadRequest(format!(
                "slaves={other:?}: expected slaves=all (every slave file of the master is deleted with it)"
            )))
        }
    };
    let Some(slaves) = node.writes.delete(&id, which).await? else {
        return Err(StorageError::NotFound(format!("no such file {id}")));
    };
    tracing::info!(file_id = %id, slaves = slaves.len(), "deleted");
    Ok(Json(
        serde_json::json!({ "file_id": id, "deleted": true, "slaves_deleted": slaves }),
    ))
}

/// `GET /v1/meta/{file_id}`.
pub async fn get_meta(
    State(node): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Metadata>> {
    let id = parse_id(&raw, &node)?;
    match node.store.get_meta(&id).await? {
        Some(m) => Ok(Json(m)),
        None => Err(StorageError::NotFound(format!("no such file {id}"))),
    }
}

async fn change_meta(node: &AppState, raw: &str, update: MetaUpdate) -> Result<Json<Metadata>> {
    let id = parse_id(raw, node)?;
    Ok(Json(node.writes.set_meta(&id, update).await?))
}

/// `PUT /v1/meta/{file_id}`: overwrite with a JSON object of strings.
pub async fn put_meta(
    State(node): State<AppState>,
    Path(raw): Path<String>,
    body: std::result::Result<Json<Metadata>, JsonRejection>,
) -> Result<Json<Metadata>> {
    let Json(meta) = body.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    change_meta(&node, &raw, MetaUpdate::Replace(meta)).await
}

/// `PATCH /v1/meta/{file_id}`: merge a JSON object; a `null` value deletes the key.
pub async fn patch_meta(
    State(node): State<AppState>,
    Path(raw): Path<String>,
    body: std::result::Result<Json<BTreeMap<String, Option<String>>>, JsonRejection>,
) -> Result<Json<Metadata>> {
    let Json(changes) = body.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    change_meta(&node, &raw, MetaUpdate::Merge(changes)).await
}

/// `POST /v1/reindex`: rebuild the dedup index from the files on disk (it also runs by itself at start when the
/// index is missing). Uploads and deletes wait while a store path is walked.
pub async fn reindex(State(node): State<AppState>) -> Result<Json<ReindexReport>> {
    let report = node.store.reindex().await?;
    tracing::info!(
        files = report.files,
        contents = report.contents,
        "index rebuilt on request"
    );
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert_eq!(parse_ext(None).unwrap(), None);
        assert_eq!(parse_ext(Some("")).unwrap(), None);
        assert_eq!(parse_ext(Some("JPG")).unwrap().as_deref(), Some("jpg"));
        assert!(parse_ext(Some("tar.gz")).is_err());
        assert!(parse_ext(Some("toolong1")).is_err());
        assert!(parse_ext(Some("a/b")).is_err());
    }
}
