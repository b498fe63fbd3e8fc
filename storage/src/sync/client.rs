//! Calls to a peer's replication routes (see [`super::routes`]): push a file (skipping the body when the peer
//! has it), a delete, metadata; read a listing page; fetch a file into the local store. Every request carries
//! the cluster secret.

use std::time::Duration;

use fdfs_common::deadline::{Progress, Stalled};
use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{MemberInfo, Metadata, MTIME_HEADER, ORIGIN_HEADER};
use fdfs_common::FileId;
use reqwest::{Method, RequestBuilder, StatusCode};

use super::protocol::{file_stream, incarnation, mtime_from, ListPage, META_VERSION_HEADER};
use super::tombstones::INCARNATION_HEADER;
use super::SyncEngine;
use crate::error::{Result, StorageError};
use crate::store::layout::unix_secs;
use crate::store::Committed;

/// Timeout of small requests (HEAD, DELETE, metadata, listing pages).
const SMALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a push did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The peer cannot be connected to (down): it is not live.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// Worth retrying later: the peer is busy or failed.
    #[error("peer unavailable: {0}")]
    Retry(String),
    /// The peer did not answer in time (connect or transfer timeout, stalled body): it cannot be reached now
    /// (a partition, a frozen process), though it may not be down. Worth retrying later.
    #[error("peer did not answer in time: {0}")]
    TimedOut(String),
    /// The peer has no room for the file (507): retry once it reports free space, without holding up the
    /// records behind it.
    #[error("peer is full: {0}")]
    Full(String),
    /// Retrying cannot help (the peer refuses this record for good, e.g. 400).
    #[error("peer rejected the record: {0}")]
    Rejected(String),
    /// Our own side failed (local disk).
    #[error("local error: {0}")]
    Local(#[from] StorageError),
}

impl From<Stalled> for PushError {
    fn from(e: Stalled) -> Self {
        PushError::TimedOut(format!("peer stalled: {e}"))
    }
}

impl From<reqwest::Error> for PushError {
    fn from(e: reqwest::Error) -> Self {
        // Only a refused connection says the peer is down (and may cap the write quorum); a connect that timed
        // out is a slow or overloaded peer, which must not silently lower the number of copies.
        if e.is_connect() && !e.is_timeout() {
            PushError::Unreachable(e.to_string())
        } else if e.is_timeout() {
            PushError::TimedOut(e.to_string())
        } else {
            PushError::Retry(e.to_string())
        }
    }
}

/// What happened to a pushed upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The body was sent (`bytes`).
    Sent(u64),
    /// The peer already had the file (or deleted it): no body sent.
    Skipped,
    /// The file is no longer here (deleted since); nothing to push.
    Gone,
}

/// Longest a peer has to answer a request without a body worth the name (a delete, metadata): a frozen process
/// accepts the connection and never answers, so no longer than the stall timeout.
fn small_timeout(engine: &SyncEngine) -> Duration {
    SMALL_TIMEOUT.min(engine.config.peer_limits.stall)
}

fn base(peer: &MemberInfo) -> String {
    format!("http://{}", peer.addr)
}

pub(crate) fn request(engine: &SyncEngine, method: Method, url: String) -> RequestBuilder {
    engine
        .http
        .request(method, url)
        .header(ORIGIN_HEADER, engine.config.node_id.to_string())
        .secret(engine.config.cluster_secret.as_deref())
}

/// Longest a peer has to answer a probe (less when `peer_stall_timeout_ms` is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a peer answers at all (`GET /health`), for a sync worker with nothing to push; see
/// [`super::reach`].
pub async fn probe(engine: &SyncEngine, peer: &MemberInfo) -> Result<(), PushError> {
    let resp = request(engine, Method::GET, format!("{}/health", base(peer)))
        .timeout(engine.config.peer_limits.stall.min(PROBE_TIMEOUT))
        .send()
        .await?;
    check(resp.status(), "probe")
}

/// Map a status to the push outcome: success, full (507), retry (5xx, 401, 408, 429) or a permanent rejection.
pub(crate) fn check(status: StatusCode, what: &str) -> Result<(), PushError> {
    if status.is_success() {
        return Ok(());
    }
    let msg = format!("{what}: {status}");
    if status == StatusCode::INSUFFICIENT_STORAGE {
        Err(PushError::Full(msg))
    } else if status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        )
    {
        Err(PushError::Retry(msg))
    } else {
        Err(PushError::Rejected(msg))
    }
}

/// Push a file (and its metadata, if any) to a peer. The body is only sent when `HEAD` says the peer lacks it.
pub async fn push_upload(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
) -> Result<Pushed, PushError> {
    let url = format!("{}/v1/replica/{id}", base(peer));
    let path = engine.store.path(id)?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pushed::Gone),
        Err(e) => return Err(PushError::Local(e.into())),
    };
    let stat = file.metadata().await.map_err(StorageError::from)?;
    // The size lets a full peer answer 507 here, before any body is streamed.
    // Which incarnation of the ID this is (a slave ID comes back after a delete): the peer answers for it.
    let gen = engine.tombstones.incarnation(id);
    let head = request(engine, Method::HEAD, url.clone())
        .header(INCARNATION_HEADER, gen)
        .header(super::space::SIZE_HEADER, stat.len())
        .timeout(SMALL_TIMEOUT)
        .send()
        .await?;
    let mut outcome = Pushed::Skipped;
    match head.status() {
        StatusCode::GONE => return Ok(Pushed::Skipped), // this incarnation was deleted there: never resurrect
        StatusCode::NOT_FOUND => {
            // Deadline by size, and a stall timeout while the body streams (a frozen peer never fails).
            let limits = engine.config.peer_limits;
            let progress = Progress::new();
            let body = progress.track(Box::pin(file_stream(file)));
            let send = request(engine, Method::PUT, url)
                .header(INCARNATION_HEADER, gen)
                .header(
                    MTIME_HEADER,
                    unix_secs(stat.modified().map_err(StorageError::from)?),
                )
                .header(reqwest::header::CONTENT_LENGTH, stat.len())
                .timeout(limits.deadline(stat.len()))
                .body(reqwest::Body::wrap_stream(body))
                .send();
            let resp = progress.watch(limits.stall, send).await??;
            if resp.status() == StatusCode::GONE {
                return Ok(Pushed::Skipped);
            }
            check(resp.status(), "replica upload")?;
            outcome = Pushed::Sent(stat.len());
        }
        s => check(s, "replica check")?,
    }
    match engine.store.get_meta_versioned(id).await? {
        None => return Ok(Pushed::Gone),
        Some((m, v)) if !m.is_empty() => push_meta_value(engine, peer, id, &m, v).await?,
        Some(_) => {}
    }
    Ok(outcome)
}

/// Store a small upload that is in memory on a peer under its ID, with its metadata, in one request (the
/// small-body path of the upload pipeline). The peer answers once the replica is durable.
pub async fn put_bytes(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
    mtime: u64,
    gen: u64,
    meta: &Metadata,
    data: bytes::Bytes,
) -> Result<(), PushError> {
    let mut rb = request(
        engine,
        Method::PUT,
        format!("{}/v1/replica/{id}", base(peer)),
    )
    .header(INCARNATION_HEADER, gen)
    .header(MTIME_HEADER, mtime)
    .header(reqwest::header::CONTENT_LENGTH, data.len())
    // A small body goes out at once: a peer that has not answered within the stall timeout is stalled (a frozen
    // process accepts the connection and never answers).
    .timeout(
        engine
            .config
            .peer_limits
            .deadline(data.len() as u64)
            .min(engine.config.peer_limits.stall),
    );
    if !meta.is_empty() {
        let json = serde_json::to_string(meta)
            .map_err(|e| StorageError::Internal(format!("encoding metadata: {e}")))?;
        rb = rb.query(&[("meta", json)]);
    }
    let resp = rb.body(data).send().await?;
    if resp.status() == StatusCode::GONE {
        return Err(PushError::Rejected(format!("{id} was deleted on the peer")));
    }
    check(resp.status(), "replica upload")
}

async fn push_meta_value(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
    meta: &Metadata,
    version: Option<u64>,
) -> Result<(), PushError> {
    let mut rb = request(
        engine,
        Method::PUT,
        format!("{}/v1/replica/meta/{id}", base(peer)),
    )
    .timeout(small_timeout(engine));
    if let Some(v) = version {
        rb = rb.header(META_VERSION_HEADER, v);
    }
    let resp = rb.json(meta).send().await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(PushError::Rejected("peer lacks the file".into()));
    }
    check(resp.status(), "replica metadata")
}

/// Push the current metadata of a file, with its version (the peer keeps the newer of the two). When the peer
/// lacks the file (its upload came from a third member and has not reached the peer yet), push the file with
/// it.
pub async fn push_meta(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
) -> Result<(), PushError> {
    let Some((meta, version)) = engine.store.get_meta_versioned(id).await? else {
        return Ok(()); // deleted since; the delete record follows
    };
    match push_meta_value(engine, peer, id, &meta, version).await {
        Err(PushError::Rejected(_)) => {
            push_upload(engine, peer, id).await?;
            push_meta_value(engine, peer, id, &meta, version).await
        }
        r => r,
    }
}

/// Tell a peer a file was deleted.
pub async fn push_delete(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
) -> Result<(), PushError> {
    let resp = request(
        engine,
        Method::DELETE,
        format!("{}/v1/replica/{id}", base(peer)),
    )
    .header(
        INCARNATION_HEADER,
        engine.tombstones.last_deleted(id).unwrap_or(0),
    )
    .timeout(small_timeout(engine))
    .send()
    .await?;
    check(resp.status(), "replica delete")
}

/// One page of a peer's listing.
pub async fn list(
    engine: &SyncEngine,
    peer: &MemberInfo,
    after: &str,
    limit: usize,
) -> Result<ListPage, PushError> {
    let resp = request(engine, Method::GET, format!("{}/v1/sync/files", base(peer)))
        .query(&[("after", after), ("limit", &limit.to_string())])
        .timeout(SMALL_TIMEOUT * 4)
        .send()
        .await?;
    check(resp.status(), "sync listing")?;
    Ok(resp.json().await?)
}

/// Copy a file (and its metadata when `with_meta`) from a peer into the local store, mtime preserved.
/// Returns the bytes copied, `None` when nothing was (here already, gone there, or deleted meanwhile).
/// Bounded by a deadline for the file's size and the stall timeout (see [`fdfs_common::deadline`]).
pub async fn fetch(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
    with_meta: bool,
) -> Result<Option<u64>, PushError> {
    let progress = Progress::new();
    let stall = engine.config.peer_limits.stall;
    progress
        .watch(stall, fetch_within(engine, peer, id, with_meta, &progress))
        .await?
}

async fn fetch_within(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
    with_meta: bool,
    progress: &Progress,
) -> Result<Option<u64>, PushError> {
    let resp = request(
        engine,
        Method::GET,
        format!("{}/v1/replica/{id}", base(peer)),
    )
    .timeout(engine.config.peer_limits.deadline(id.info().size))
    .send()
    .await?;
    if matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::GONE) {
        return Ok(None);
    }
    check(resp.status(), "replica fetch")?;
    let gen = incarnation(resp.headers()).unwrap_or(0);
    if engine.tombstones.hides(id, gen) {
        return Ok(None);
    }
    let mtime = mtime_from(resp.headers());
    let committed = match engine
        .store
        .write_file(
            id,
            progress.track(Box::pin(resp.bytes_stream())),
            mtime,
            Metadata::new(),
        )
        .await
    {
        Ok(c) => c,
        // The transfer broke off: worth another try, unlike a body that does not match its ID.
        Err(StorageError::BodyAborted(e)) => return Err(PushError::Retry(e)),
        Err(e) => return Err(e.into()),
    };
    let bytes = match committed {
        Committed::Created { .. } => engine.store.stat(id).await?.map(|m| m.len()),
        Committed::AlreadyExists => None,
    };
    if bytes.is_some() && gen > 0 {
        let (e, tid) = (engine.clone(), id.clone());
        tokio::task::spawn_blocking(move || e.tombstones.set_live(&tid, gen))
            .await
            .map_err(StorageError::from)??;
    }
    // A delete may have arrived while the body was in flight.
    if engine.tombstones.hides(id, gen) {
        engine.store.remove(id).await?;
        return Ok(None);
    }
    // Also when the file was here already: an earlier attempt may have written it and failed on the metadata.
    if with_meta {
        fetch_meta(engine, peer, id).await?;
    }
    Ok(bytes)
}

/// Copy a file's metadata from a peer when it is newer than ours (see
/// [`crate::store::Store::put_meta_version_blocking`]). Nothing happens when either side lacks the file.
pub async fn fetch_meta(
    engine: &SyncEngine,
    peer: &MemberInfo,
    id: &FileId,
) -> Result<(), PushError> {
    let resp = request(
        engine,
        Method::GET,
        format!("{}/v1/replica/meta/{id}", base(peer)),
    )
    .timeout(SMALL_TIMEOUT)
    .send()
    .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(());
    }
    check(resp.status(), "replica metadata fetch")?;
    let version = super::protocol::meta_version(resp.headers());
    let meta: Metadata = resp.json().await?;
    let stored = match version {
        // The newer of the two stays.
        Some(v) => engine.store.put_meta_version(id, meta, v).await,
        // A peer that predates versions: its value replaces ours.
        None => {
            engine
                .store
                .set_meta(id, crate::store::MetaUpdate::Replace(meta))
                .await
        }
    };
    match stored {
        Err(StorageError::NotFound(_)) => Ok(()), // deleted here meanwhile
        r => r.map(|_| ()).map_err(PushError::Local),
    }
}
