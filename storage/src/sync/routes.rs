//! Routes storage nodes call on each other (behind the cluster secret):
//!
//! - `HEAD|GET /v1/replica/{file_id}`: whether this node has the file / the file itself (streamed), with
//!   `x-fdfs-mtime` and `x-fdfs-incarnation`; 404 when absent (or only an older incarnation than the one
//!   asked for is here), 410 when it (the incarnation asked for) was deleted here (tombstone); with
//!   `x-fdfs-size`, 507 when the absent file would not fit above the reserved space.
//! - `PUT /v1/replica/{file_id}?meta=` with `x-fdfs-mtime` and `x-fdfs-incarnation`: store a replica (streamed,
//!   or read whole and written in one blocking call when its `Content-Length` is small; checked against the ID,
//!   with the metadata given, never recreating a deleted incarnation: 410; an older incarnation here is
//!   replaced, an equal one left alone; 507 before the body when it does not fit). Not written to this node's
//!   binlog.
//! - `DELETE /v1/replica/{file_id}` with `x-fdfs-incarnation`: record a tombstone on disk, then remove the file
//!   unless it is a newer incarnation (200 either way).
//! - `GET|PUT /v1/replica/meta/{file_id}`: a file's metadata / replace it (404 when the file is absent).
//! - `GET /v1/sync/status`: this node's replication state ([`SyncStatus`]), for operators and tests.
//! - `GET /v1/sync/files?after=&limit=`: a page of every file here in ID order (size, mtime, whether it has
//!   metadata) and the tombstones in the same ID range; `next` is the cursor of the following page.
//!
//! A group may be called `meta`, so `/v1/replica/meta/...` is told apart by the number of path segments: the
//! rest is a whole file ID (5 segments) for metadata, otherwise the path is a file of group `meta`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use fdfs_common::internal::{content_length, header_u64};
use fdfs_common::wire::{Metadata, MTIME_HEADER};
use fdfs_common::FileId;
use serde::Deserialize;

use super::protocol::{
    file_stream, incarnation, meta_crc, meta_version, mtime_from, CommitRequest, ListPage,
    ListedFile, PeerStatus, StageAnswer, SyncStatus, MAX_PAGE, META_VERSION_HEADER, SMALL_BODY,
};
use super::staged;
use super::tombstones::INCARNATION_HEADER;
use super::SyncEngine;
use crate::error::{Result, StorageError};
use crate::store::layout::unix_secs;
use crate::store::{Committed, MetaUpdate};
use crate::AppState;

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: String,
    limit: Option<usize>,
}

/// The replication routes with their state applied, ready to merge into the node's router.
pub fn router(engine: SyncEngine) -> Router<AppState> {
    Router::new()
        .route("/v1/replica/meta/{*rest}", any(meta_or_file))
        .route(
            "/v1/replica/{*file_id}",
            get(get_file).put(put_file).delete(delete_file),
        )
        .route("/v1/pipeline/stage", post(stage))
        .route("/v1/pipeline/commit", post(commit))
        .route("/v1/sync/files", get(list))
        .route("/v1/sync/status", get(status))
        .with_state(engine)
}

fn parse(engine: &SyncEngine, raw: &str) -> Result<FileId> {
    let id: FileId = raw.parse()?;
    engine.store.check_owns(&id)?;
    Ok(id)
}

fn gone(id: &FileId) -> Response {
    fdfs_common::error_response(StatusCode::GONE, "gone", format!("{id} was deleted"))
}

async fn meta_or_file(
    State(engine): State<SyncEngine>,
    Path(rest): Path<String>,
    query: Query<PutQuery>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    if rest.split('/').count() != 5 {
        // A file of a group called `meta`.
        let raw = format!("meta/{rest}");
        return match method {
            Method::GET | Method::HEAD => get_file(State(engine), Path(raw), headers).await,
            Method::PUT => put_file(State(engine), Path(raw), query, headers, body).await,
            Method::DELETE => delete_file(State(engine), Path(raw), headers).await,
            _ => Err(StorageError::BadRequest(format!(
                "method {method} not allowed here"
            ))),
        };
    }
    let id = parse(&engine, &rest)?;
    match method {
        Method::GET | Method::HEAD => match engine.store.get_meta_versioned(&id).await? {
            Some((m, Some(v))) => {
                Ok(([(META_VERSION_HEADER, v.to_string())], Json(m)).into_response())
            }
            Some((m, None)) => Ok(Json(m).into_response()),
            None => Err(StorageError::NotFound(format!("no such file {id}"))),
        },
        Method::PUT => {
            let bytes = axum::body::to_bytes(body, 1 << 20)
                .await
                .map_err(|e| StorageError::BadRequest(format!("metadata body: {e}")))?;
            let meta: Metadata = serde_json::from_slice(&bytes).map_err(|e| {
                StorageError::BadRequest(format!("metadata must be a JSON object of strings: {e}"))
            })?;
            // Versioned (the newer value stays), or from a member that predates versions: replaced.
            let meta = match meta_version(&headers) {
                Some(v) => engine.store.put_meta_version(&id, meta, v).await?,
                None => {
                    engine
                        .store
                        .set_meta(&id, MetaUpdate::Replace(meta))
                        .await?
                }
            };
            Ok(Json(meta).into_response())
        }
        _ => Err(StorageError::BadRequest(format!(
            "method {method} not allowed here"
        ))),
    }
}

/// `GET|HEAD /v1/replica/{id}`. A sender about to push the file names its size in `x-fdfs-size`: 507 when
/// the file is absent and would not fit (see [`super::space`]).
async fn get_file(
    State(engine): State<SyncEngine>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let id = parse(&engine, &raw)?;
    let here = engine.tombstones.incarnation(&id);
    match incarnation(&headers) {
        Some(gen) if engine.tombstones.hides(&id, gen) => return Ok(gone(&id)),
        // Only an older incarnation (if any) is here.
        Some(gen) if gen > here => {
            return Err(StorageError::NotFound(format!("no such file {id}")))
        }
        None if engine.tombstones.is_deleted(&id) => return Ok(gone(&id)),
        _ => {}
    }
    let path = engine.store.path(&id)?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(size) = header_u64(&headers, super::space::SIZE_HEADER) {
                super::space::ensure_room(&engine, &id, size).await?;
            }
            return Err(StorageError::NotFound(format!("no such file {id}")));
        }
        Err(e) => return Err(e.into()),
    };
    let stat = file.metadata().await?;
    if !stat.is_file() {
        return Err(StorageError::NotFound(format!("no such file {id}")));
    }
    let body = Body::from_stream(file_stream(file));
    Ok((
        [
            (header::CONTENT_LENGTH, stat.len().to_string()),
            (
                header::HeaderName::from_static(MTIME_HEADER),
                unix_secs(stat.modified()?).to_string(),
            ),
            (
                header::HeaderName::from_static(INCARNATION_HEADER),
                here.to_string(),
            ),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ],
        body,
    )
        .into_response())
}

/// `PUT /v1/replica/{id}`.
async fn put_file(
    State(engine): State<SyncEngine>,
    Path(raw): Path<String>,
    Query(q): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let id = parse(&engine, &raw)?;
    let gen = incarnation(&headers).unwrap_or(0);
    if engine.tombstones.hides(&id, gen) {
        return Ok(gone(&id));
    }
    engine.accept_incarnation(&id, gen).await?;
    let meta = super::protocol::meta_param(q.meta.as_deref())?;
    let mtime = mtime_from(&headers);
    let declared = content_length(&headers);
    let committed = match declared {
        // A small body (the pipeline's small-upload path): read it whole, then room check, write, fsync and
        // commit in one blocking call.
        Some(size) if size <= SMALL_BODY as u64 => {
            let data = axum::body::to_bytes(body, SMALL_BODY)
                .await
                .map_err(|e| StorageError::BodyAborted(e.to_string()))?;
            let (this, tid) = (engine.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                super::space::ensure_room_blocking(&this, &tid, size)?;
                this.store.write_bytes_blocking(&tid, &data, mtime, meta)
            })
            .await??
        }
        _ => {
            // No room: answer 507 before reading the body.
            if let Some(size) = declared {
                super::space::ensure_room(&engine, &id, size).await?;
            }
            engine
                .store
                .write_file(&id, body.into_data_stream(), mtime, meta)
                .await?
        }
    };
    // A delete that raced with this write wins.
    if engine.tombstones.hides(&id, gen) {
        engine.store.remove(&id).await?;
        return Ok(gone(&id));
    }
    let created = matches!(committed, Committed::Created { .. });
    super::metrics::replica_received(created);
    Ok(Json(serde_json::json!({ "file_id": id, "created": created })).into_response())
}

/// `DELETE /v1/replica/{id}`.
async fn delete_file(
    State(engine): State<SyncEngine>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let id = parse(&engine, &raw)?;
    let gen = incarnation(&headers);
    let this = engine.clone();
    let tid = id.clone();
    let deleted = tokio::task::spawn_blocking(move || -> Result<bool> {
        let gen = gen.unwrap_or_else(|| this.tombstones.incarnation(&tid));
        this.tombstones.add(&tid, gen)?;
        // A newer incarnation here (re-uploaded after this delete) stays.
        if this.tombstones.is_deleted(&tid) {
            this.store.remove_blocking(&tid)
        } else {
            Ok(false)
        }
    })
    .await??;
    if deleted {
        // A thumbnail rendered here while the delete was on its way goes too (recorded, so peers follow).
        engine.delete_slaves(&id, super::Slaves::Rendered).await?;
    }
    Ok(Json(serde_json::json!({ "file_id": id, "deleted": deleted })).into_response())
}

#[derive(Debug, Deserialize)]
struct PutQuery {
    /// Metadata stored with the replica (JSON object of strings), so it needs no second request.
    meta: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StageQuery {
    #[serde(default)]
    store_path: u8,
}

/// `POST /v1/pipeline/stage?store_path=N`: stage a body streamed by a peer's upload pipeline.
async fn stage(
    State(engine): State<SyncEngine>,
    Query(q): Query<StageQuery>,
    body: Body,
) -> Result<Json<StageAnswer>> {
    let limit = engine.store.max_file_size();
    let staged = engine
        .store
        .receive(q.store_path, body.into_data_stream(), limit)
        .await?;
    let size = staged.size;
    let token = engine.staged.put(staged)?;
    Ok(Json(StageAnswer { token, size }))
}

/// `POST /v1/pipeline/commit`: commit a staged body under its ID; answers once it is durable (410 when the ID
/// was deleted here).
async fn commit(
    State(engine): State<SyncEngine>,
    body: std::result::Result<Json<CommitRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response> {
    let Json(req) = body.map_err(|e| StorageError::BadRequest(e.body_text()))?;
    let id = parse(&engine, &req.file_id)?;
    match staged::commit_staged(&engine, req).await? {
        None => Ok(gone(&id)),
        Some(committed) => {
            let created = matches!(committed, Committed::Created { .. });
            super::metrics::replica_received(created);
            Ok(Json(serde_json::json!({ "file_id": id, "created": created })).into_response())
        }
    }
}

/// `GET /v1/sync/status`.
async fn status(State(engine): State<SyncEngine>) -> Json<SyncStatus> {
    let progress = engine.sync_status();
    let peers = engine
        .peer_list()
        .into_iter()
        .map(|p| {
            let s = progress.iter().find(|s| s.peer_id == p.node_id);
            PeerStatus {
                node_id: p.node_id,
                addr: p.addr,
                state: p.state,
                pending_records: s.map_or(0, |s| s.pending_records),
                synced_until: s.map_or(0, |s| s.synced_until),
                unreachable: engine
                    .reach
                    .recent(p.node_id)
                    .map(|f| f.as_str().to_owned()),
            }
        })
        .collect();
    Json(SyncStatus {
        node_id: engine.config.node_id,
        syncing: engine.syncing(),
        peers,
        binlog_first_seq: engine.binlog.first_seq(),
        binlog_last_seq: engine.binlog.last_seq(),
        binlog_segments: engine.binlog.segment_count(),
        tombstones: engine.tombstones.len(),
        last_catchup: engine.last_catchup(),
    })
}

/// `GET /v1/sync/files?after=&limit=`.
async fn list(
    State(engine): State<SyncEngine>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListPage>> {
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_PAGE);
    let page =
        tokio::task::spawn_blocking(move || list_blocking(&engine, &q.after, limit)).await??;
    Ok(Json(page))
}

/// A listing page, from the index (ID order) checked against the disk.
pub fn list_blocking(engine: &SyncEngine, after: &str, limit: usize) -> Result<ListPage> {
    let store = &engine.store;
    let mut ids: Vec<String> = Vec::with_capacity(limit);
    for id in store.indexed_ids_after(after) {
        ids.push(id.to_string());
        if ids.len() == limit {
            break;
        }
    }
    let full = ids.len() == limit;
    let upto = if full { ids.last().cloned() } else { None };
    let tombstones = engine.tombstones.range(after, upto.as_deref(), limit);
    let mut next = upto;
    if tombstones.len() == limit {
        // Too many tombstones in this range: stop the page at the last one.
        let last = tombstones
            .last()
            .and_then(|t| super::tombstones::parse_entry(t))
            .map(|(id, _)| id.to_string());
        ids.retain(|i| Some(i) <= last.as_ref());
        next = last;
    }
    let mut files = Vec::with_capacity(ids.len());
    for s in ids {
        let Ok(id) = s.parse::<FileId>() else {
            continue;
        };
        let Some(stat) = store.stat_blocking(&id)? else {
            continue; // index entry without a file
        };
        let (meta, meta_version) = store.get_meta_versioned_blocking(&id)?.unwrap_or_default();
        files.push(ListedFile {
            id: s,
            size: stat.len(),
            mtime: stat.modified().map_or(0, unix_secs),
            meta: !meta.is_empty(),
            meta_crc: meta_crc(&meta),
            meta_version,
            gen: engine.tombstones.incarnation(&id),
        });
    }
    Ok(ListPage {
        files,
        tombstones,
        next,
    })
}
