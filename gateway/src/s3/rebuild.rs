//! Rebuild a lost namespace from the storage nodes: the namespace is never the only copy of anything.
//!
//! Every object's file carries its bucket, key and content type (`s3-bucket`, `s3-key`, `s3-content-type`) and
//! its `x-amz-meta-*` in its FastDFS metadata, and a multipart object its ETag (`s3-etag`). A gateway that starts
//! with no namespace directory (a new door, or a lost disk) lists every group on one of its active members
//! (`/v1/sync/files`), reads the metadata of the files that have some, and records each tagged file under its
//! key; the ETag of a single-part object is its MD5, computed again from its bytes. When several files name the
//! same key (an overwritten object whose old file could not be deleted), the newest file wins. Empty buckets are
//! not recovered (they leave no file), nor multipart uploads under way (their parts stay as files).

use std::collections::BTreeMap;

use axum::http::Method;
use fdfs_common::wire::{MemberState, Metadata};
use fdfs_common::FileId;
use futures_util::StreamExt;
use md5::{Digest as _, Md5};

use super::namespace::{Namespace, Object};
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

/// Rebuild `ns` from the cluster `app` talks to.
pub(crate) async fn rebuild(app: &App, ns: &Namespace) -> anyhow::Result<Rebuilt> {
    let mut found = Rebuilt::default();
    // (bucket, key) -> (created, object)
    let mut objects: BTreeMap<(String, String), (u32, Object)> = BTreeMap::new();
    let cluster = app.tracker.cluster().await?;
    for group in &cluster.groups {
        let mut members: Vec<_> = group
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .collect();
        members.sort_by_key(|m| m.node_id);
        let Some(member) = members.first() else {
            anyhow::bail!("group {} has no active member to list", group.name);
        };
        let addr = vec![member.addr.clone()];
        let mut after = String::new();
        loop {
            let path = format!(
                "/v1/sync/files?after={}&limit={PAGE}",
                percent_encoding::utf8_percent_encode(&after, percent_encoding::NON_ALPHANUMERIC)
            );
            let page: serde_json::Value = app
                .storage
                .on_holder(&addr, Method::GET, &path, None::<&()>)
                .await?;
            let files = page["files"].as_array().cloned().unwrap_or_default();
            if files.is_empty() {
                break;
            }
            for f in &files {
                found.listed += 1;
                let Some(raw) = f["id"].as_str() else {
                    continue;
                };
                after = raw.to_owned();
                if f["meta"] != true {
                    continue;
                }
                let Ok(id) = raw.parse::<FileId>() else {
                    continue;
                };
                let meta: Metadata = app
                    .storage
                    .on_holder(&addr, Method::GET, &format!("/v1/meta/{id}"), None::<&()>)
                    .await?;
                let (Some(bucket), Some(key)) = (meta.get("s3-bucket"), meta.get("s3-key")) else {
                    continue;
                };
                let etag = match meta.get("s3-etag") {
                    Some(e) => e.clone(),
                    None => md5_of(app, &member.addr, &id).await?,
                };
                let user: BTreeMap<String, String> = meta
                    .iter()
                    .filter(|(k, _)| !k.starts_with("s3-"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let info = id.info();
                let object = Object {
                    file_id: id.to_string(),
                    size: f["size"].as_u64().unwrap_or(info.size),
                    etag,
                    content_type: meta
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
            if files.len() < PAGE {
                break;
            }
        }
    }
    let ns = ns.clone();
    let counts = tokio::task::spawn_blocking(move || -> Result<(u64, u64), sled::Error> {
        let mut buckets: BTreeMap<String, i64> = BTreeMap::new();
        for ((bucket, key), (_, o)) in &objects {
            let created = buckets.entry(bucket.clone()).or_insert(o.modified);
            *created = (*created).min(o.modified);
            ns.put(bucket, key, o)?;
        }
        for (b, created) in &buckets {
            ns.create_bucket(b, *created)?;
        }
        Ok((objects.len() as u64, buckets.len() as u64))
    })
    .await??;
    (found.objects, found.buckets) = counts;
    Ok(found)
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
