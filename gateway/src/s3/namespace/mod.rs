//! The S3 namespace: buckets, `bucket/key` -> the object's FastDFS file and what S3 says about it, and the
//! multipart uploads under way with their parts. Two backends with the same semantics ([`Namespace`]): an
//! embedded sled database on the gateway's disk ([`embedded`], the default, one gateway), or a PostgreSQL
//! database several gateways share ([`shared`]). Every call blocks (the handlers run them on the blocking pool)
//! and a change is durable before it returns (see docs/S3.md for what each backend guarantees).
//!
//! The namespace is never the only copy of anything: each object's file carries its bucket and key in its
//! metadata (`s3-bucket`, `s3-key`), so the storage nodes' listings say what it held.

pub mod embedded;
pub mod shared;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use self::embedded::Embedded;
use self::shared::Shared;

/// What S3 says about an object, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// The FastDFS file holding its bytes.
    pub file_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// The MD5 of its bytes, hex, without quotes.
    pub etag: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// When it was stored, unix seconds.
    pub modified: i64,
    /// Its `x-amz-meta-*` metadata (names lower-cased, without the prefix).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// What a conditional write expects a key to hold (`If-None-Match: *`, `If-Match: "etag"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No object.
    Absent,
    /// An object with this ETag (hex, without quotes).
    Etag(String),
}

impl Expect {
    /// Whether `current` is what is expected.
    pub fn holds(&self, current: Option<&Object>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Etag(e), Some(o)) => o.etag == *e,
            _ => false,
        }
    }
}

impl Object {
    /// The object whose bytes were just stored as `file` (recorded as modified now).
    pub fn stored(
        file: &fdfs_common::wire::UploadResult,
        etag: &str,
        content_type: String,
        meta: BTreeMap<String, String>,
    ) -> Object {
        Object {
            file_id: file.file_id.to_string(),
            size: file.size,
            etag: etag.to_owned(),
            content_type,
            modified: fdfs_common::time::unix_now() as i64,
            meta,
        }
    }
}

/// One part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The FastDFS file holding the part until the upload completes.
    pub file_id: String,
    /// Its size.
    pub size: u64,
    /// Its MD5, hex.
    pub etag: String,
    /// When it was stored, unix seconds.
    pub modified: i64,
}

/// A multipart upload under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Its bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// When it was created, unix seconds.
    pub created: i64,
    /// The object's `Content-Type`.
    pub content_type: String,
    /// The object's `x-amz-meta-*`.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// The parts stored so far, by number.
    #[serde(default)]
    pub parts: BTreeMap<u32, Part>,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    /// Objects, in key order.
    pub objects: Vec<(String, Object)>,
    /// Common prefixes (with a delimiter), in order.
    pub prefixes: Vec<String>,
    /// Whether more follow.
    pub truncated: bool,
    /// The last key or common prefix of this page (where the next page starts after).
    pub last: Option<String>,
}

/// Why a bucket cannot be deleted.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteBucket {
    /// No such bucket.
    Missing,
    /// It holds objects.
    NotEmpty,
}

/// Why a namespace call failed.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// The embedded database failed.
    #[error("embedded namespace: {0}")]
    Embedded(#[from] sled::Error),
    /// The PostgreSQL server cannot be reached or lost the connection (S3 503: the client retries).
    #[error("PostgreSQL namespace unavailable: {0}")]
    Unavailable(String),
    /// The PostgreSQL server refused a statement.
    #[error("PostgreSQL namespace: {0}")]
    Postgres(postgres::Error),
    /// The bucket was deleted while an object was being recorded in it.
    #[error("no bucket {0}")]
    NoBucket(String),
}

/// A namespace call's result.
pub type Result<T> = std::result::Result<T, NsError>;

/// The namespace: one gateway's embedded database, or a PostgreSQL database shared by several gateways.
#[derive(Debug, Clone)]
pub enum Namespace {
    /// sled under `s3_data_dir`.
    Embedded(Embedded),
    /// PostgreSQL at `s3_postgres`.
    Shared(Shared),
}

/// The same call on whichever backend.
macro_rules! each {
    ($self:ident, $ns:ident => $call:expr) => {
        match $self {
            Namespace::Embedded($ns) => Ok($call?),
            Namespace::Shared($ns) => $call,
        }
    };
}

impl Namespace {
    /// Open (or create) the embedded namespace in `dir`.
    pub fn embedded(dir: &Path) -> Result<Namespace> {
        Ok(Namespace::Embedded(Embedded::open(dir)?))
    }

    /// The PostgreSQL namespace at `url` (`postgres://user:password@host:port/database`). Nothing connects
    /// yet: [`Namespace::prepare`] does, on the blocking pool.
    pub fn shared(url: &str) -> Result<Namespace> {
        Ok(Namespace::Shared(Shared::new(url)?))
    }

    /// Make the namespace usable (PostgreSQL: connect, create or check its schema); whether it must be rebuilt
    /// from the storage nodes first (embedded: its directory was missing; PostgreSQL: its schema is new, or a
    /// rebuild that began never finished). Blocks.
    pub fn prepare(&self) -> Result<bool> {
        match self {
            Namespace::Embedded(e) => Ok(e.lost),
            Namespace::Shared(s) => s.prepare(),
        }
    }

    /// Record that a rebuild finished (PostgreSQL: the other gateways do not rebuild again). Blocks.
    pub fn rebuilt(&self) -> Result<()> {
        match self {
            Namespace::Embedded(e) => Ok(e.rebuilt()?),
            Namespace::Shared(s) => s.rebuilt(),
        }
    }

    /// Whether the namespace is whole, and which one it is: `None` while it has yet to be rebuilt, else a value
    /// that changes when it is replaced (PostgreSQL: when its rebuild finished; embedded: `Some(0)` once whole). The
    /// orphan collector reads it before and after judging files, so that a namespace dropped and being rebuilt
    /// by another gateway never makes every file look like an orphan. Blocks.
    pub fn whole(&self) -> Result<Option<i64>> {
        match self {
            Namespace::Embedded(e) => Ok(e.whole()?.then_some(0)),
            Namespace::Shared(s) => s.whole(),
        }
    }

    /// Create a bucket, with the ID of its marker file (a file on the storage nodes that names the bucket, so a
    /// rebuild finds it even empty); `false` when it exists already.
    pub fn create_bucket(&self, name: &str, now: i64, marker: Option<&str>) -> Result<bool> {
        each!(self, ns => ns.create_bucket(name, now, marker))
    }

    /// When the bucket was created, if it exists.
    pub fn bucket(&self, name: &str) -> Result<Option<i64>> {
        each!(self, ns => ns.bucket(name))
    }

    /// The bucket's marker file: `None` when the bucket does not exist, `Some(None)` when it has none.
    pub fn bucket_marker(&self, name: &str) -> Result<Option<Option<String>>> {
        each!(self, ns => ns.bucket_marker(name))
    }

    /// Give a bucket recorded without a marker file this one: `false` (nothing changed) when the bucket is gone
    /// or has one.
    pub fn mark_bucket(&self, name: &str, marker: &str) -> Result<bool> {
        each!(self, ns => ns.mark_bucket(name, marker))
    }

    /// Every bucket with its creation time, by name.
    pub fn buckets(&self) -> Result<Vec<(String, i64)>> {
        each!(self, ns => ns.buckets())
    }

    /// Delete an empty bucket (atomically against a concurrent put in it, with PostgreSQL); its marker file.
    pub fn delete_bucket(
        &self,
        name: &str,
    ) -> Result<std::result::Result<Option<String>, DeleteBucket>> {
        each!(self, ns => ns.delete_bucket(name))
    }

    /// The object at `bucket/key`.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        each!(self, ns => ns.get(bucket, key))
    }

    /// Point `bucket/key` at `object`; the object it pointed at before (atomically: of concurrent puts of one
    /// key, each gets back exactly the object it replaced).
    pub fn put(&self, bucket: &str, key: &str, object: &Object) -> Result<Option<Object>> {
        each!(self, ns => ns.put(bucket, key, object))
    }

    /// Point `bucket/key` at `object` if it holds what `expect` says, atomically against every other change of
    /// the key (on every gateway sharing the namespace): `Ok(the object it pointed at)`, or `Err(())` when it
    /// did not hold that (nothing changed).
    pub fn put_if(
        &self,
        bucket: &str,
        key: &str,
        object: &Object,
        expect: &Expect,
    ) -> Result<std::result::Result<Option<Object>, ()>> {
        each!(self, ns => ns.put_if(bucket, key, object, expect))
    }

    /// Remove `bucket/key`; the object it pointed at.
    pub fn remove(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        each!(self, ns => ns.remove(bucket, key))
    }

    /// Start a multipart upload under `id`.
    pub fn create_upload(&self, id: &str, upload: &Upload) -> Result<()> {
        each!(self, ns => ns.create_upload(id, upload))
    }

    /// The multipart upload `id`.
    pub fn upload(&self, id: &str) -> Result<Option<Upload>> {
        each!(self, ns => ns.upload(id))
    }

    /// Record part `n` of upload `id`: `Ok(the part it replaced)`, `Err(())` when the upload is gone.
    pub fn put_part(
        &self,
        id: &str,
        n: u32,
        part: &Part,
    ) -> Result<std::result::Result<Option<Part>, ()>> {
        each!(self, ns => ns.put_part(id, n, part))
    }

    /// End upload `id` (completed or aborted); what it was.
    pub fn remove_upload(&self, id: &str) -> Result<Option<Upload>> {
        each!(self, ns => ns.remove_upload(id))
    }

    /// Complete upload `id` as `bucket/key` = `object`: the object it replaced, and the upload it ended (none
    /// when a concurrent completion or abort ended it first). One transaction with PostgreSQL.
    pub fn complete(
        &self,
        bucket: &str,
        key: &str,
        object: &Object,
        id: &str,
    ) -> Result<(Option<Object>, Option<Upload>)> {
        match self {
            Namespace::Embedded(ns) => {
                let old = ns.put(bucket, key, object)?;
                Ok((old, ns.remove_upload(id)?))
            }
            Namespace::Shared(ns) => ns.complete(bucket, key, object, id),
        }
    }

    /// The uploads under way in `bucket`, by key then ID.
    pub fn uploads_in(&self, bucket: &str) -> Result<Vec<(String, Upload)>> {
        each!(self, ns => ns.uploads_in(bucket))
    }

    /// A page of `bucket`'s keys under `prefix`, after `after`, in byte order; keys with `delimiter` past the
    /// prefix are rolled up into common prefixes; at most `max` entries (keys and prefixes together).
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        after: &str,
        max: usize,
    ) -> Result<Page> {
        each!(self, ns => ns.list(bucket, prefix, delimiter, after, max))
    }
}

/// The common prefix `key` rolls up into: its start through the first `delimiter` after `prefix`.
pub(crate) fn rolled_up(key: &str, prefix: &str, delimiter: &str) -> Option<String> {
    (!delimiter.is_empty())
        .then(|| key[prefix.len()..].find(delimiter))
        .flatten()
        .map(|p| key[..prefix.len() + p + delimiter.len()].to_owned())
}
