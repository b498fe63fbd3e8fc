//! Rebuild a lost namespace from the storage nodes: the namespace is never the only copy of anything.
//!
//! Every object's file carries its bucket, key and content type (`s3-bucket`, `s3-key`, `s3-content-type`) and
//! its `x-amz-meta-*` in its FastDFS metadata, and a multipart object its ETag (`s3-etag`). A gateway that starts
//! with no namespace (embedded: no namespace directory, a new door or a lost disk; PostgreSQL: a schema it just
//! created, or one whose rebuild never finished, see [`Namespace::prepare`]) lists every group on one of its
//! active members
//! (`/v1/sync/files`), reads the metadata of the files that have some, and records each tagged file under its
//! key; the ETag of a single-part object is its MD5, computed again from its bytes. When several files name the
//! same key (an overwritten object whose old file could not be deleted), the newest file wins. Each bucket has a
//! marker file too (`s3-bucket-marker`, stored when the bucket is created, deleted with it), so an empty bucket
//! is recovered as well. Multipart uploads under way are not (their parts stay as files).
//!
//! The same walk finds orphans ([`collect`]): tagged files the namespace does not point at. The collector also
//! aborts multipart uploads left unfinished too long ([`expire_uploads`]).

use std::collections::BTreeMap;

use axum::http::Method;
use fdfs_common::wire::{MemberState, Metadata};
use fdfs_common::FileId;
use futures_util::StreamExt;
use md5::{Digest as _, Md5};

use super::namespace::{Namespace, NsError, Object};
use super::MARKER_TAG;
use crate::App;

/// Files per listing page.
const PAGE: usize = 1000;

/// What a rebuild found.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Files listed.
    pub listed: u64,
    /// Objects recorded.
    pub objects: u64,
    /// Buckets recorded.
    pub buckets: u64,
}

/// A file of the cluster that carries metadata, with the member it was listed on.
pub(crate) struct Tagged {
    /// The member that listed it.
    pub addr: String,
    /// The file.
    pub id: FileId,
    /// Its size.
    pub size: u64,
    /// Its metadata.
    pub meta: Metadata,
}

/// Every file of the cluster tagged with this door's namespace (`s3_namespace`), group by group (each listed on one of its
/// active members), a listing page at a time.
pub(crate) struct Walk {
    /// Each group's member to list, still to go.
    groups: std::vec::IntoIter<String>,
    /// The member being listed, and the last ID it listed.
    at: Option<(String, String)>,
    /// Files listed so far.
    pub listed: u64,
}

impl Walk {
    /// A walk over the cluster as the trackers describe it now.
    pub(crate) async fn start(app: &App) -> anyhow::Result<Walk> {
        let cluster = app.tracker.cluster().await?;
        let mut addrs = Vec::new();
        for group in &cluster.groups {
            let member = group
                .members
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .min_by_key(|m| m.node_id);
            let Some(member) = member else {
                anyhow::bail!("group {} has no active member to list", group.name);
            };
            addrs.push(member.addr.clone());
        }
        Ok(Walk {
            groups: addrs.into_iter(),
            at: None,
            listed: 0,
        })
    }

    /// The tagged files of the next listing page; `None` at the end.
    pub(crate) async fn next_page(&mut self, app: &App) -> anyhow::Result<Option<Vec<Tagged>>> {
        let (addr, after) = match self.at.take() {
            Some(at) => at,
            None => match self.groups.next() {
                Some(addr) => (addr, String::new()),
                None => return Ok(None),
            },
        };
        let holder = vec![addr.clone()];
        let path = format!(
            "/v1/sync/files?after={}&limit={PAGE}",
            percent_encoding::utf8_percent_encode(&after, percent_encoding::NON_ALPHANUMERIC)
        );
        let page: serde_json::Value = app
            .storage
            .on_holder(&holder, Method::GET, &path, None::<&()>)
            .await?;
        let files = page["files"].as_array().cloned().unwrap_or_default();
        let mut last = after;
        let mut tagged = Vec::new();
        for f in &files {
            self.listed += 1;
            let Some(raw) = f["id"].as_str() else {
                continue;
            };
            last = raw.to_owned();
            if f["meta"] != true {
                continue;
            }
            let Ok(id) = raw.parse::<FileId>() else {
                continue;
            };
            let meta: Metadata = match app
                .storage
                .on_holder(&holder, Method::GET, &format!("/v1/meta/{id}"), None::<&()>)
                .await
            {
                Ok(m) => m,
                // Deleted since it was listed.
                Err(crate::error::GatewayError::Upstream { status, .. }) if status == 404 => {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            // Only this door's namespace: another gateway's files are not ours to record or delete.
            if meta.get(super::NAMESPACE_TAG) == Some(&app.config.s3_namespace) {
                tagged.push(Tagged {
                    addr: addr.clone(),
                    id,
                    size: f["size"].as_u64().unwrap_or(0),
                    meta,
                });
            }
        }
        if files.len() == PAGE {
            self.at = Some((addr, last));
        }
        Ok(Some(tagged))
    }
}

/// Rebuild `ns` from the cluster `app` talks to.
pub(crate) async fn rebuild(app: &App, ns: &Namespace) -> anyhow::Result<Rebuilt> {
    let mut found = Rebuilt::default();
    // (bucket, key) -> (created, object)
    let mut objects: BTreeMap<(String, String), (u32, Object)> = BTreeMap::new();
    // bucket -> (created, marker file): the newest marker of each bucket.
    let mut markers: BTreeMap<String, (u32, String)> = BTreeMap::new();
    let mut walk = Walk::start(app).await?;
    while let Some(page) = walk.next_page(app).await? {
        for t in page {
            if let (Some(bucket), true) = (t.meta.get("s3-bucket"), t.meta.contains_key(MARKER_TAG))
            {
                let (created, id) = (t.id.info().created, t.id.to_string());
                let newer = markers
                    .get(bucket)
                    .is_none_or(|(c, m)| (created, &id) > (*c, m));
                if newer {
                    markers.insert(bucket.clone(), (created, id));
                }
                continue;
            }
            let (Some(bucket), Some(key)) = (t.meta.get("s3-bucket"), t.meta.get("s3-key")) else {
                continue;
            };
            let etag = match t.meta.get("s3-etag") {
                Some(e) => e.clone(),
                None => md5_of(app, &t.addr, &t.id).await?,
            };
            let user: BTreeMap<String, String> = t
                .meta
                .iter()
                .filter(|(k, _)| !k.starts_with("s3-"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let info = t.id.info();
            let object = Object {
                file_id: t.id.to_string(),
                size: if t.size > 0 { t.size } else { info.size },
                etag,
                content_type: t
                    .meta
                    .get("s3-content-type")
                    .cloned()
                    .unwrap_or_else(|| "application/octet-stream".into()),
                modified: i64::from(info.created),
                meta: user,
            };
            let slot = (bucket.clone(), key.clone());
            let newer = objects
                .get(&slot)
                .is_none_or(|(c, o)| (info.created, &object.file_id) > (*c, &o.file_id));
            if newer {
                objects.insert(slot, (info.created, object));
            }
        }
    }
    found.listed = walk.listed;
    let ns = ns.clone();
    let counts = tokio::task::spawn_blocking(move || -> Result<(u64, u64), NsError> {
        // A bucket with a marker was created when its marker was; one without (made before markers) when its
        // oldest object was.
        let mut buckets: BTreeMap<String, (i64, Option<String>)> = markers
            .into_iter()
            .map(|(b, (created, m))| (b, (i64::from(created), Some(m))))
            .collect();
        for ((bucket, _), (_, o)) in &objects {
            let (created, marker) = buckets.entry(bucket.clone()).or_insert((o.modified, None));
            if marker.is_none() {
                *created = (*created).min(o.modified);
            }
        }
        // Buckets first: a shared namespace refuses an object outside a bucket.
        for (b, (created, marker)) in &buckets {
            ns.create_bucket(b, *created, marker.as_deref())?;
        }
        for ((bucket, key), (_, o)) in &objects {
            ns.put(bucket, key, o)?;
        }
        ns.rebuilt()?;
        Ok((objects.len() as u64, buckets.len() as u64))
    })
    .await??;
    (found.objects, found.buckets) = counts;
    Ok(found)
}

/// Whether a tagged file is an orphan: an object's file its key no longer points at, a part of an upload that
/// no longer has it, or the marker of a bucket that no longer has it (its bucket and key, upload and part, or
/// bucket, from its metadata).
fn orphan(ns: &Namespace, t: &Tagged) -> Result<bool, NsError> {
    let file = t.id.to_string();
    if let Some(upload) = t.meta.get("s3-upload") {
        let part: u32 = t
            .meta
            .get("s3-part")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        return Ok(ns
            .upload(upload)?
            .and_then(|u| u.parts.get(&part).map(|p| p.file_id != file))
            .unwrap_or(true));
    }
    let Some(bucket) = t.meta.get("s3-bucket") else {
        return Ok(false);
    };
    if t.meta.contains_key(MARKER_TAG) {
        // A bucket's marker: an orphan once its bucket is gone or records another one (a bucket deleted, or
        // a create that lost a race). A bucket that records none (made before markers) keeps it.
        return Ok(match ns.bucket_marker(bucket)? {
            None => true,
            Some(Some(m)) => m != file,
            Some(None) => false,
        });
    }
    let Some(key) = t.meta.get("s3-key") else {
        return Ok(false);
    };
    Ok(ns.get(bucket, key)?.is_none_or(|o| o.file_id != file))
}

/// Delete the files of S3 objects and parts that the namespace does not point at and that are older than
/// `grace` (a file younger than that may belong to an upload whose key is about to be recorded): a gateway
/// killed between storing an object's file and recording its key, a replaced object whose file could not be
/// deleted, parts of an aborted upload whose delete failed. Returns how many files were deleted.
pub(crate) async fn collect(
    app: &App,
    ns: &Namespace,
    grace: std::time::Duration,
) -> anyhow::Result<u64> {
    let now = fdfs_common::time::unix_now();
    let mut gone = 0;
    let mut walk = Walk::start(app).await?;
    while let Some(page) = walk.next_page(app).await? {
        let n = ns.clone();
        let (page, orphans) = tokio::task::spawn_blocking(move || {
            let orphans = (|| -> Result<Vec<bool>, anyhow::Error> {
                // A shared namespace that another gateway dropped and is rebuilding points at nothing yet:
                // judged against it, every file would look like an orphan. Judged only while it is whole, and
                // the same one before and after.
                let before = n.whole()?;
                let orphans = page
                    .iter()
                    .map(|t| {
                        let young =
                            now.saturating_sub(u64::from(t.id.info().created)) < grace.as_secs();
                        Ok(!young && orphan(&n, t)?)
                    })
                    .collect::<Result<Vec<bool>, NsError>>()?;
                let after = n.whole()?;
                if before.is_none() || before != after {
                    anyhow::bail!("the namespace is being rebuilt; no orphans collected");
                }
                Ok(orphans)
            })();
            (page, orphans)
        })
        .await?;
        for (t, is_orphan) in page.iter().zip(orphans?) {
            if !is_orphan {
                continue;
            }
            match delete(app, &t.id).await {
                Ok(()) => {
                    gone += 1;
                    metrics::counter!("fdfs_s3_orphans_removed_total").increment(1);
                    tracing::info!(file_id = %t.id, "removed an S3 file no key points at");
                }
                Err(e) => {
                    tracing::warn!(file_id = %t.id, error = %e, "could not remove an orphaned S3 file");
                }
            }
        }
    }
    Ok(gone)
}

/// Abort the multipart uploads created more than `max_age` ago and never completed nor aborted (a client that
/// died, a tool killed mid-copy): S3 keeps them until a lifecycle rule says otherwise, which leaves their parts on
/// disk for good; here `s3_upload_expiry_secs` is that rule. Their part files are deleted now (one that cannot be
/// is an orphan the next [`collect`] pass takes). Returns the uploads aborted.
pub(crate) async fn expire_uploads(
    app: &App,
    ns: &Namespace,
    max_age: std::time::Duration,
) -> anyhow::Result<u64> {
    let oldest = fdfs_common::time::unix_now().saturating_sub(max_age.as_secs()) as i64;
    let n = ns.clone();
    let expired = tokio::task::spawn_blocking(move || -> Result<Vec<_>, NsError> {
        let mut expired = Vec::new();
        for (bucket, _) in n.buckets()? {
            for (id, upload) in n.uploads_in(&bucket)? {
                if upload.created < oldest {
                    if let Some(upload) = n.remove_upload(&id)? {
                        expired.push((id, upload));
                    }
                }
            }
        }
        Ok(expired)
    })
    .await??;
    for (id, upload) in &expired {
        tracing::info!(
            upload_id = %id,
            bucket = %upload.bucket,
            key = %upload.key,
            parts = upload.parts.len(),
            "aborted a multipart upload left unfinished past s3_upload_expiry_secs"
        );
        metrics::counter!("fdfs_s3_uploads_expired_total").increment(1);
        for part in upload.parts.values() {
            let Ok(file) = part.file_id.parse::<FileId>() else {
                continue;
            };
            if let Err(e) = delete(app, &file).await {
                tracing::warn!(file_id = %file, error = %e, "could not remove the part of an expired upload");
            }
        }
    }
    Ok(expired.len() as u64)
}

/// Give a marker file to every bucket recorded without one (before markers existed): until it has one, such a
/// bucket comes back from a rebuild only if it holds an object. Returns how many were given one.
pub(crate) async fn mark_buckets(app: &App, ns: &Namespace) -> anyhow::Result<u64> {
    let n = ns.clone();
    let unmarked = tokio::task::spawn_blocking(move || -> Result<Vec<String>, NsError> {
        let mut unmarked = Vec::new();
        for (bucket, _) in n.buckets()? {
            if n.bucket_marker(&bucket)? == Some(None) {
                unmarked.push(bucket);
            }
        }
        Ok(unmarked)
    })
    .await??;
    let mut marked = 0;
    for bucket in unmarked {
        let marker = super::store_marker(app, &bucket).await?;
        let (n, b, m) = (ns.clone(), bucket.clone(), marker.clone());
        if tokio::task::spawn_blocking(move || n.mark_bucket(&b, &m)).await?? {
            marked += 1;
            tracing::info!(bucket, marker, "gave an S3 bucket its marker file");
        } else if let Ok(id) = marker.parse::<FileId>() {
            // Deleted, or marked by another gateway, meanwhile.
            delete(app, &id).await?;
        }
    }
    Ok(marked)
}

/// Delete file `id` on a member that holds it.
async fn delete(app: &App, id: &FileId) -> anyhow::Result<()> {
    let addrs = app.member_addrs(id).await?;
    app.storage
        .on_holder::<serde_json::Value>(
            &addrs,
            Method::DELETE,
            &format!("/v1/files/{id}"),
            None::<&()>,
        )
        .await?;
    Ok(())
}

/// The MD5 of file `id`, read from member `addr`.
async fn md5_of(app: &App, addr: &str, id: &FileId) -> anyhow::Result<String> {
    let url = format!("http://{addr}/{id}{}", app.token_query(id));
    let resp = app
        .storage
        .fetch(Method::GET, &url, reqwest::header::HeaderMap::new())
        .await?
        .error_for_status()?;
    let mut md5 = Md5::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        md5.update(&chunk?);
    }
    Ok(hex::encode(md5.finalize()))
}
