//! The S3-compatible door (issue 20): its own listener (`s3_listen`), path-style addressing
//! (`/{bucket}/{key}`) and virtual-host style (`{bucket}.{domain}/{key}` for the `s3_domains`), Signature V4 (header and presigned), and a namespace mapping `bucket/key` to an ordinary
//! FastDFS file (see [`namespace`]), so every object's bytes are a file that storage nodes and nginx serve under
//! its file ID (every object answer carries it in `x-fdfs-file-id`).
//!
//! Supported: ListBuckets, CreateBucket, HeadBucket, DeleteBucket (empty only), GetBucketLocation, PutObject
//! (plain, `aws-chunked` with signed chunks or an unsigned trailer, checksums and `Content-MD5` verified while
//! streaming), GetObject (Range, conditional requests), HeadObject, DeleteObject, DeleteObjects,
//! ListObjectsV2 and ListObjects, multipart uploads with UploadPartCopy ([`multipart`]). docs/S3.md lists what
//! is not supported yet: those answer S3's `NotImplemented`. Browser form uploads: [`post`].

pub mod body;
pub mod error;
mod multipart;
pub mod namespace;
mod post;
pub mod rebuild;
pub mod sigv4;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use md5::Digest as _;
use serde::{Deserialize, Serialize};

use self::body::S3Body;
use self::error::{escape, S3Error};
use self::namespace::{DeleteBucket, Expect, Namespace, NsError, Object};
use self::sigv4::Signed;
use crate::upload::{Budget, ChunkSource, UploadFields};
use crate::App;

type Result<T, E = S3Error> = std::result::Result<T, E>;

/// The metadata key naming the namespace a file belongs to (`s3_namespace`): a rebuild and the orphan collector
/// touch only their own namespace's files.
pub const NAMESPACE_TAG: &str = "s3-namespace";

/// The metadata key of a bucket's marker file (with `s3-bucket`, no `s3-key`).
pub const MARKER_TAG: &str = "s3-bucket-marker";

/// Header carrying an object's FastDFS file ID on every object answer.
pub const FILE_ID_HEADER: &str = "x-fdfs-file-id";

const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// An access key of the S3 door.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Key {
    /// The access key ID.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// The buckets it may use; empty: all (and it may create buckets).
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Reads only.
    #[serde(default)]
    pub read_only: bool,
}

/// The S3 door's state.
struct S3 {
    app: Arc<App>,
    ns: Namespace,
    keys: Vec<S3Key>,
    public: Vec<String>,
    /// `s3_domains`: virtual-host-style requests name their bucket in `Host` (see [`virtual_host`]).
    domains: Arc<Vec<String>>,
}

/// Whether the namespace can be used (false while it is being prepared or rebuilt, see [`rebuild`]).
pub type Ready = Arc<std::sync::atomic::AtomicBool>;

/// 503 `ServiceUnavailable` while the namespace is being prepared (connected to, rebuilt).
async fn while_rebuilding(
    State(ready): State<Ready>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if ready.load(std::sync::atomic::Ordering::Acquire) {
        return next.run(req).await;
    }
    let mut resp = S3Error::new(
        503,
        "ServiceUnavailable",
        "The namespace is not ready (being rebuilt from the storage nodes, or its database unreachable); please retry.",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// The S3 routes, on the gateway's `app`, with the namespace in `ns`, answering 503 until `ready`.
pub(crate) fn router(app: Arc<App>, ns: Namespace, ready: Ready) -> Router {
    let domains: Vec<String> = (app.config.s3_domains.iter())
        .map(|d| d.trim_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    let domains = Arc::new(domains);
    let state = Arc::new(S3 {
        keys: app.config.s3_all_keys(),
        public: app.config.s3_public_buckets.clone(),
        domains: domains.clone(),
        app,
        ns,
    });
    let routes = Router::new()
        .route("/", get(list_buckets))
        .route("/{bucket}", any(bucket_op))
        .route("/{bucket}/", any(bucket_op))
        .route("/{bucket}/{*key}", any(object_op))
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    // Virtual-host style is routed as path style: the rewrite runs before the inner router picks a route.
    let routes = if domains.is_empty() {
        routes
    } else {
        Router::new()
            .fallback_service(routes)
            .layer(axum::middleware::from_fn_with_state(domains, virtual_host))
    };
    routes.layer(axum::middleware::from_fn_with_state(
        ready,
        while_rebuilding,
    ))
}

/// CORS for the door (`s3_cors_origins`), as S3 answers a bucket's CORS rules: any method S3 clients use,
/// whatever request headers the preflight asks for (signatures, `x-amz-*`, checksums), and the answer headers
/// a page needs to read (ETag, the file ID, versions and checksums).
pub(crate) fn cors(origins: tower_http::cors::AllowOrigin) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowHeaders, CorsLayer, ExposeHeaders};
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list(
            [
                "etag",
                "content-length",
                "content-range",
                "last-modified",
                "x-amz-request-id",
                "x-amz-version-id",
                "x-amz-checksum-crc32",
                "x-amz-checksum-crc32c",
                "x-amz-checksum-sha1",
                "x-amz-checksum-sha256",
                FILE_ID_HEADER,
            ]
            .map(axum::http::HeaderName::from_static),
        ))
        .max_age(Duration::from_secs(3600))
}

/// The bucket a virtual-host-style request names: its `Host` is `<bucket>.<domain>` for one of `domains`
/// (`s3_domains`; the port and letter case do not matter). `None` for path style (any other host, including a
/// domain itself).
fn virtual_bucket(domains: &[String], headers: &HeaderMap) -> Option<String> {
    let host = headers
        .get(header::HOST)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host.as_str(),
    };
    domains.iter().find_map(|d| {
        let bucket = host.strip_suffix(d.as_str())?.strip_suffix('.')?;
        (!bucket.is_empty()).then(|| bucket.to_owned())
    })
}

/// Virtual-host style (`PUT http://photos.s3.example.com/a/b.jpg`) rewritten to path style
/// (`/photos/a/b.jpg`) so the same routes serve it. The signature still covers the path as sent: see
/// [`S3::signed_uri`].
async fn virtual_host(
    State(domains): State<Arc<Vec<String>>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(bucket) = virtual_bucket(&domains, req.headers()) {
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = format!("/{bucket}{pq}").parse().ok();
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return S3Error::new(400, "InvalidURI", "Couldn't parse the specified URI.")
                    .into_response()
            }
        }
    }
    next.run(req).await
}

/// What a request does, for access checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads an object or lists a bucket: allowed anonymously in a public bucket.
    Read,
    /// Changes something.
    Write,
    /// Lists buckets or creates one: keys with every bucket only.
    Admin,
}

impl S3 {
    /// Check the request's signature and what its key may do; `None` for an anonymous read of a public bucket.
    fn authorize(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        bucket: &str,
        access: Access,
    ) -> Result<Option<Signed>> {
        let uri = &self.signed_uri(uri, headers);
        if !sigv4::is_signed(headers, uri) {
            if access == Access::Read && self.public.iter().any(|b| b == bucket) {
                return Ok(None);
            }
            return Err(S3Error::denied("Access Denied").on(bucket));
        }
        let now = fdfs_common::time::unix_now() as i64;
        let signed = sigv4::verify(method, uri, headers, &self.keys, now)?;
        let key = &signed.key;
        let allowed = match access {
            Access::Admin => key.buckets.is_empty() && !key.read_only,
            Access::Read => key.buckets.is_empty() || key.buckets.iter().any(|b| b == bucket),
            Access::Write => {
                !key.read_only
                    && (key.buckets.is_empty() || key.buckets.iter().any(|b| b == bucket))
            }
        };
        if !allowed {
            return Err(S3Error::denied("Access Denied").on(bucket));
        }
        Ok(Some(signed))
    }

    /// The URI as the client signed it: a virtual-host-style request's path without the `/{bucket}`
    /// [`virtual_host`] put in front (V4 signs the path as sent; V2 signs `/{bucket}/{key}` in either style).
    fn signed_uri(&self, uri: &Uri, headers: &HeaderMap) -> Uri {
        let Some(bucket) = virtual_bucket(&self.domains, headers) else {
            return uri.clone();
        };
        if sigv4::is_v2_presigned(uri, headers) {
            return uri.clone();
        }
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let sent = match pq
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(bucket.as_str()))
        {
            Some(rest) if rest.is_empty() || rest.starts_with('?') => format!("/{rest}"),
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => return uri.clone(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = sent.parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }

    /// Run a namespace call on the blocking pool.
    async fn ns<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Namespace) -> Result<T, NsError> + Send + 'static,
    ) -> Result<T> {
        let ns = self.ns.clone();
        Ok(tokio::task::spawn_blocking(move || f(&ns))
            .await
            .map_err(S3Error::internal)??)
    }

    async fn require_bucket(&self, bucket: &str) -> Result<()> {
        let b = bucket.to_owned();
        match self.ns(move |ns| ns.bucket(&b)).await? {
            Some(_) => Ok(()),
            None => Err(S3Error::no_bucket(bucket)),
        }
    }

    /// The metadata an object's file carries: its `x-amz-meta-*`, and its namespace, bucket, key and content type
    /// (so the namespace can be rebuilt from the storage nodes, see [`rebuild`]).
    fn object_tags(
        &self,
        meta: &BTreeMap<String, String>,
        bucket: &str,
        key: &str,
        content_type: &str,
    ) -> BTreeMap<String, String> {
        let mut tags = meta.clone();
        tags.insert(NAMESPACE_TAG.into(), self.app.config.s3_namespace.clone());
        tags.insert("s3-bucket".into(), bucket.to_owned());
        tags.insert("s3-key".into(), key.to_owned());
        tags.insert("s3-content-type".into(), content_type.to_owned());
        tags
    }

    /// [`S3::record`] if the key holds what `expect` says; else the stored file is deleted and the request
    /// answers 409 `ConditionalRequestConflict` (the key changed while the object was being stored: it held what
    /// was expected when the request began).
    async fn record_if(
        &self,
        bucket: &str,
        key: &str,
        object: &Object,
        expect: &Expect,
    ) -> Result<()> {
        let (b, k, o, e) = (
            bucket.to_owned(),
            key.to_owned(),
            object.clone(),
            expect.clone(),
        );
        match self.ns(move |ns| ns.put_if(&b, &k, &o, &e)).await? {
            Ok(old) => {
                self.drop_replaced(old, object).await;
                Ok(())
            }
            Err(()) => {
                self.drop_file(&object.file_id).await;
                Err(S3Error::new(
                    409,
                    "ConditionalRequestConflict",
                    "A conflicting operation occurred. If using PutObject you can retry the request.",
                )
                .on(key))
            }
        }
    }

    /// Point `bucket/key` at `object`, then delete the file it pointed at before.
    async fn record(&self, bucket: &str, key: &str, object: &Object) -> Result<()> {
        let (b, k, o) = (bucket.to_owned(), key.to_owned(), object.clone());
        let old = self.ns(move |ns| ns.put(&b, &k, &o)).await?;
        self.drop_replaced(old, object).await;
        Ok(())
    }

    /// Delete the file of `old`, the object `object` replaced under its key, unless it is the same file.
    async fn drop_replaced(&self, old: Option<Object>, object: &Object) {
        if let Some(old) = old.filter(|o| o.file_id != object.file_id) {
            self.drop_file(&old.file_id).await;
        }
    }

    /// Delete a file the namespace no longer points at (logged when that fails: it stays an orphan).
    async fn drop_file(&self, file_id: &str) {
        let Ok(id) = file_id.parse::<fdfs_common::FileId>() else {
            return;
        };
        let deleted = async {
            let addrs = self.app.member_addrs(&id).await?;
            self.app
                .storage
                .on_holder::<serde_json::Value>(
                    &addrs,
                    Method::DELETE,
                    &format!("/v1/files/{id}"),
                    None::<&()>,
                )
                .await
        }
        .await;
        if let Err(e) = deleted {
            tracing::warn!(file_id, error = %e, "could not delete the file of a replaced or deleted object");
        }
    }
}

fn count(op: &'static str) {
    metrics::counter!("fdfs_s3_requests_total", "op" => op).increment(1);
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"),
    )
        .into_response()
}

/// The query's parameters that name an operation or its arguments: not a presigned URL's signature (V4's
/// `X-Amz-*`, V2's `AWSAccessKeyId`, `Expires`, `Signature`) nor boto3's `x-id` hint, so that a presigned
/// CreateBucket is routed as the signed one is.
fn operation_params(query: &[(String, String)]) -> Vec<&(String, String)> {
    query
        .iter()
        .filter(|(k, _)| {
            !(k.starts_with("X-Amz-")
                || matches!(
                    k.as_str(),
                    "AWSAccessKeyId" | "Expires" | "Signature" | "x-id"
                ))
        })
        .collect()
}

fn not_implemented(what: &str) -> S3Error {
    S3Error::new(
        501,
        "NotImplemented",
        format!("{what} is not supported by this server yet (see docs/S3.md)"),
    )
}

/// ISO 8601 with milliseconds, as S3 lists times.
pub fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn http_date(secs: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// Whether `name` is a valid bucket name (S3's rules: 3-63 of `a-z 0-9 . -`, starting and ending with a letter or
/// digit, not an IP address).
pub fn valid_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// `GET /`: ListBuckets.
async fn list_buckets(
    State(s3): State<Arc<S3>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    count("ListBuckets");
    let signed = s3.authorize(&method, &uri, &headers, "", Access::Read)?;
    let key = signed.map(|s| s.key);
    let buckets = s3.ns(|ns| ns.buckets()).await?;
    let mut out = format!("<ListAllMyBucketsResult xmlns=\"{XMLNS}\"><Owner><ID>fdfs</ID><DisplayName>fdfs</DisplayName></Owner><Buckets>");
    for (name, created) in buckets {
        if let Some(k) = &key {
            if !k.buckets.is_empty() && !k.buckets.contains(&name) {
                continue;
            }
        }
        out.push_str(&format!(
            "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
            escape(&name),
            iso8601(created)
        ));
    }
    out.push_str("</Buckets></ListAllMyBucketsResult>");
    Ok(xml(StatusCode::OK, out))
}

/// Everything on `/{bucket}`.
async fn bucket_op(
    State(s3): State<Arc<S3>>,
    Path(bucket): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let query = sigv4::query_pairs(&uri);
    let has = |k: &str| query.iter().any(|(q, _)| q == k);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let ops = operation_params(&query);
    match method {
        Method::PUT if ops.is_empty() => {
            count("CreateBucket");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Admin)?;
            if !valid_bucket(&bucket) {
                return Err(S3Error::new(
                    400,
                    "InvalidBucketName",
                    "The specified bucket is not valid.",
                )
                .on(&bucket));
            }
            let exists = || {
                S3Error::new(
                    409,
                    "BucketAlreadyOwnedByYou",
                    "Your previous request to create the named bucket succeeded and you already own it.",
                )
                .on(&bucket)
            };
            let b = bucket.clone();
            if s3.ns(move |ns| ns.bucket(&b)).await?.is_some() {
                return Err(exists());
            }
            // The marker first: a bucket recorded is then always on the storage nodes too (a marker whose bucket
            // was never recorded is an orphan the collector removes).
            let marker = store_marker(&s3.app, &bucket).await?;
            let (b, m, now) = (
                bucket.clone(),
                marker.clone(),
                fdfs_common::time::unix_now() as i64,
            );
            if !s3.ns(move |ns| ns.create_bucket(&b, now, Some(&m))).await? {
                s3.drop_file(&marker).await;
                return Err(exists());
            }
            Ok((StatusCode::OK, [(header::LOCATION, format!("/{bucket}"))]).into_response())
        }
        Method::HEAD => {
            count("HeadBucket");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Read)?;
            s3.require_bucket(&bucket).await?;
            Ok((StatusCode::OK, [("x-amz-bucket-region", "us-east-1")]).into_response())
        }
        Method::DELETE if ops.is_empty() => {
            count("DeleteBucket");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Admin)?;
            let b = bucket.clone();
            match s3.ns(move |ns| ns.delete_bucket(&b)).await? {
                Ok(marker) => {
                    if let Some(m) = marker {
                        s3.drop_file(&m).await;
                    }
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                Err(DeleteBucket::Missing) => Err(S3Error::no_bucket(&bucket)),
                Err(DeleteBucket::NotEmpty) => Err(S3Error::new(
                    409,
                    "BucketNotEmpty",
                    "The bucket you tried to delete is not empty",
                )
                .on(&bucket)),
            }
        }
        Method::GET if has("location") => {
            count("GetBucketLocation");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Read)?;
            s3.require_bucket(&bucket).await?;
            Ok(xml(
                StatusCode::OK,
                format!("<LocationConstraint xmlns=\"{XMLNS}\"></LocationConstraint>"),
            ))
        }
        Method::GET if has("uploads") => {
            s3.authorize(&method, &uri, &headers, &bucket, Access::Read)?;
            s3.require_bucket(&bucket).await?;
            multipart::list_uploads(&s3, &bucket, get("prefix").unwrap_or("")).await
        }
        Method::GET
            if ops.iter().all(|(k, _)| {
                matches!(
                    k.as_str(),
                    "list-type"
                        | "prefix"
                        | "delimiter"
                        | "max-keys"
                        | "continuation-token"
                        | "start-after"
                        | "marker"
                        | "encoding-type"
                        | "fetch-owner"
                )
            }) =>
        {
            s3.authorize(&method, &uri, &headers, &bucket, Access::Read)?;
            s3.require_bucket(&bucket).await?;
            list_objects(&s3, &bucket, get("list-type") == Some("2"), &get).await
        }
        Method::POST if has("delete") => {
            count("DeleteObjects");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Write)?;
            s3.require_bucket(&bucket).await?;
            delete_objects(&s3, &bucket, body).await
        }
        // A browser form upload: its signature is in the form (see [`post`]).
        Method::POST if ops.is_empty() => {
            s3.require_bucket(&bucket).await?;
            post::post_object(&s3, &bucket, &headers, body).await
        }
        Method::POST => Err(not_implemented("this POST on a bucket")),
        _ => {
            let what = ops.first().map_or("this bucket operation", |(k, _)| k);
            Err(not_implemented(&format!("{method} ?{what}")))
        }
    }
}

/// ListObjectsV2 (`v2`) or ListObjects.
async fn list_objects<'q>(
    s3: &S3,
    bucket: &str,
    v2: bool,
    get: &impl Fn(&str) -> Option<&'q str>,
) -> Result<Response> {
    count(if v2 { "ListObjectsV2" } else { "ListObjects" });
    let prefix = get("prefix").unwrap_or("").to_owned();
    let delimiter = get("delimiter").unwrap_or("").to_owned();
    let max_keys: usize = match get("max-keys") {
        None => 1000,
        Some(v) => v.parse::<usize>().map_err(|_| {
            S3Error::new(
                400,
                "InvalidArgument",
                "max-keys must be a non-negative integer",
            )
        })?,
    }
    .min(1000);
    let url_encoded = match get("encoding-type") {
        None => false,
        Some("url") => true,
        Some(_) => {
            return Err(S3Error::new(
                400,
                "InvalidArgument",
                "Invalid Encoding Method specified in Request",
            ))
        }
    };
    let token = get("continuation-token").map(str::to_owned);
    let after = if v2 {
        match &token {
            Some(t) => {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        S3Error::new(
                            400,
                            "InvalidArgument",
                            "The continuation token provided is incorrect",
                        )
                    })?
            }
            None => get("start-after").unwrap_or("").to_owned(),
        }
    } else {
        get("marker").unwrap_or("").to_owned()
    };
    let page = if max_keys == 0 {
        namespace::Page::default()
    } else {
        let (b, p, d, a) = (
            bucket.to_owned(),
            prefix.clone(),
            delimiter.clone(),
            after.clone(),
        );
        s3.ns(move |ns| ns.list(&b, &p, &d, &a, max_keys)).await?
    };
    let enc = |s: &str| {
        if url_encoded {
            sigv4::uri_encode(s, true)
        } else {
            escape(s)
        }
    };
    let mut out = format!(
        "<ListBucketResult xmlns=\"{XMLNS}\"><Name>{}</Name><Prefix>{}</Prefix><MaxKeys>{max_keys}</MaxKeys><IsTruncated>{}</IsTruncated>",
        escape(bucket),
        enc(&prefix),
        page.truncated
    );
    if !delimiter.is_empty() {
        out.push_str(&format!("<Delimiter>{}</Delimiter>", enc(&delimiter)));
    }
    if url_encoded {
        out.push_str("<EncodingType>url</EncodingType>");
    }
    if v2 {
        out.push_str(&format!(
            "<KeyCount>{}</KeyCount>",
            page.objects.len() + page.prefixes.len()
        ));
        if let Some(t) = &token {
            out.push_str(&format!(
                "<ContinuationToken>{}</ContinuationToken>",
                escape(t)
            ));
        }
        if let Some(sa) = get("start-after") {
            out.push_str(&format!("<StartAfter>{}</StartAfter>", enc(sa)));
        }
        if page.truncated {
            if let Some(last) = &page.last {
                use base64::Engine as _;
                let next = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last);
                out.push_str(&format!(
                    "<NextContinuationToken>{next}</NextContinuationToken>"
                ));
            }
        }
    } else {
        out.push_str(&format!("<Marker>{}</Marker>", enc(&after)));
        if page.truncated && !delimiter.is_empty() {
            if let Some(last) = &page.last {
                out.push_str(&format!("<NextMarker>{}</NextMarker>", enc(last)));
            }
        }
    }
    for (key, o) in &page.objects {
        out.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            enc(key),
            iso8601(o.modified),
            o.etag,
            o.size
        ));
    }
    for p in &page.prefixes {
        out.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            enc(p)
        ));
    }
    out.push_str("</ListBucketResult>");
    Ok(xml(StatusCode::OK, out))
}

/// The text of every `<tag>` element in `doc`, unescaped.
fn elements(doc: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(a) = rest.find(&open) {
        let from = &rest[a + open.len()..];
        let Some(b) = from.find(&close) else { break };
        out.push(
            from[..b]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &from[b + close.len()..];
    }
    out
}

/// `POST /{bucket}?delete`: DeleteObjects.
async fn delete_objects(s3: &S3, bucket: &str, body: Body) -> Result<Response> {
    let bytes = axum::body::to_bytes(body, 2 << 20)
        .await
        .map_err(|_| S3Error::new(400, "MalformedXML", "the request body is too large"))?;
    let doc = String::from_utf8_lossy(&bytes);
    let keys = elements(&doc, "Key");
    if keys.len() > 1000 {
        return Err(S3Error::new(
            400,
            "MalformedXML",
            "at most 1000 keys per request",
        ));
    }
    let quiet = elements(&doc, "Quiet").first().is_some_and(|q| q == "true");
    let mut out = format!("<DeleteResult xmlns=\"{XMLNS}\">");
    for key in keys {
        let (b, k) = (bucket.to_owned(), key.clone());
        let old = s3.ns(move |ns| ns.remove(&b, &k)).await?;
        if let Some(o) = old {
            s3.drop_file(&o.file_id).await;
        }
        if !quiet {
            out.push_str(&format!("<Deleted><Key>{}</Key></Deleted>", escape(&key)));
        }
    }
    out.push_str("</DeleteResult>");
    Ok(xml(StatusCode::OK, out))
}

/// Everything on `/{bucket}/{key}`.
async fn object_op(
    State(s3): State<Arc<S3>>,
    Path((bucket, key)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let query = sigv4::query_pairs(&uri);
    let has = |k: &str| query.iter().any(|(q, _)| q == k);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    if has("uploads") && method == Method::POST {
        s3.authorize(&method, &uri, &headers, &bucket, Access::Write)?;
        s3.require_bucket(&bucket).await?;
        return multipart::create(&s3, &bucket, &key, &headers).await;
    }
    if let Some(id) = get("uploadId") {
        let access = if method == Method::GET {
            Access::Read
        } else {
            Access::Write
        };
        let signed = s3.authorize(&method, &uri, &headers, &bucket, access)?;
        s3.require_bucket(&bucket).await?;
        return match method {
            Method::PUT if headers.contains_key("x-amz-copy-source") => {
                let n = get("partNumber").unwrap_or("");
                let signer = signed.map(|s| s.key);
                multipart::upload_part_copy(&s3, &bucket, &key, (id, n), &headers, signer).await
            }
            Method::PUT => {
                let n = get("partNumber").unwrap_or("");
                multipart::upload_part(&s3, &bucket, &key, (id, n), &headers, signed.as_ref(), body)
                    .await
            }
            Method::POST => multipart::complete(&s3, &bucket, &key, id, body).await,
            Method::DELETE => multipart::abort(&s3, &bucket, &key, id).await,
            Method::GET => {
                multipart::list_parts(&s3, &bucket, &key, id, get("part-number-marker")).await
            }
            _ => Err(S3Error::new(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            )),
        };
    }
    if has("tagging") || has("acl") || has("retention") || has("legal-hold") || has("attributes") {
        return Err(not_implemented("this object subresource"));
    }
    match method {
        Method::PUT if headers.contains_key("x-amz-copy-source") => {
            count("CopyObject");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Write)?;
            s3.require_bucket(&bucket).await?;
            copy_object(
                &s3,
                &bucket,
                &key,
                &headers,
                signed_key(&s3, &method, &uri, &headers)?,
            )
            .await
        }
        Method::PUT => {
            count("PutObject");
            let signed = s3.authorize(&method, &uri, &headers, &bucket, Access::Write)?;
            s3.require_bucket(&bucket).await?;
            put_object(&s3, &bucket, &key, &headers, signed.as_ref(), body).await
        }
        Method::GET | Method::HEAD => {
            count(if method == Method::GET {
                "GetObject"
            } else {
                "HeadObject"
            });
            s3.authorize(&method, &uri, &headers, &bucket, Access::Read)?;
            s3.require_bucket(&bucket).await?;
            get_object(&s3, &bucket, &key, &method, &headers).await
        }
        Method::DELETE => {
            count("DeleteObject");
            s3.authorize(&method, &uri, &headers, &bucket, Access::Write)?;
            s3.require_bucket(&bucket).await?;
            let (b, k) = (bucket.clone(), key.clone());
            if let Some(o) = s3.ns(move |ns| ns.remove(&b, &k)).await? {
                s3.drop_file(&o.file_id).await;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::POST => Err(not_implemented("POST on an object")),
        _ => Err(S3Error::new(
            405,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )),
    }
}

/// User metadata (`x-amz-meta-*`), names lower-cased without the prefix.
fn user_meta(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(n, v)| {
            let k = n.as_str().strip_prefix("x-amz-meta-")?;
            Some((k.to_owned(), v.to_str().ok()?.to_owned()))
        })
        .collect()
}

async fn put_object(
    s3: &S3,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
    signed: Option<&Signed>,
    body: Body,
) -> Result<Response> {
    if key.len() > 1024 {
        return Err(S3Error::new(400, "KeyTooLongError", "Your key is too long"));
    }
    let mut src = S3Body::new(body.into_data_stream(), headers, signed)?;
    let size = src.declared(headers);
    let limit = s3.app.config.max_upload_size;
    if size.is_some_and(|n| n > limit) {
        return Err(S3Error::new(
            400,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed object size.",
        ));
    }
    // A conditional write is refused before any byte is stored when the key does not hold what it expects.
    let expect = write_condition(headers)?;
    if let Some(e) = &expect {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let current = s3.ns(move |ns| ns.get(&b, &k)).await?;
        if !e.holds(current.as_ref()) {
            return Err(match e {
                Expect::Etag(_) if current.is_none() => S3Error::no_key(key),
                _ => S3Error::new(
                    412,
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                )
                .on(key),
            });
        }
    }
    let meta = user_meta(headers);
    let content_type = content_type_of(headers, key);
    // The file carries its bucket and key, so the namespace can be rebuilt from the storage nodes.
    let tags = s3.object_tags(&meta, bucket, key, &content_type);
    let result = match store_file(s3, &mut src, &tags, key, size).await {
        Ok(r) => r,
        Err(e) => return Err(src.failed.take().unwrap_or_else(|| S3Error::from(e))),
    };
    let etag = src.etag.clone().unwrap_or_default();
    test_pause_before_record().await;
    let object = Object::stored(&result, &etag, content_type, meta);
    match &expect {
        Some(e) => s3.record_if(bucket, key, &object, e).await?,
        None => s3.record(bucket, key, &object).await?,
    }
    tracing::info!(bucket, key, file_id = %object.file_id, size = object.size, "object stored");
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, format!("\"{etag}\"")),
            (
                HeaderName::from_static(FILE_ID_HEADER),
                object.file_id.clone(),
            ),
        ],
    )
        .into_response())
}

use axum::http::HeaderName;

/// The condition of a conditional write: `If-None-Match: *` (create only) or `If-Match: "etag"` (replace only
/// that version), as S3 takes them on PutObject. Other `If-None-Match` values are S3's `NotImplemented`.
fn write_condition(headers: &HeaderMap) -> Result<Option<Expect>> {
    let h = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    match (h(header::IF_NONE_MATCH), h(header::IF_MATCH)) {
        (Some(_), Some(_)) => Err(S3Error::new(
            400,
            "InvalidArgument",
            "If-Match and If-None-Match cannot be given together",
        )),
        (Some("*"), None) => Ok(Some(Expect::Absent)),
        (Some(_), None) => Err(S3Error::new(
            501,
            "NotImplemented",
            "If-None-Match on a write takes only *",
        )),
        (None, Some(etag)) => Ok(Some(Expect::Etag(
            etag.trim_start_matches("W/").trim_matches('"').to_owned(),
        ))),
        (None, None) => Ok(None),
    }
}

/// The `Content-Type` a request gives an object, else the one its key's extension names.
fn content_type_of(headers: &HeaderMap, key: &str) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || {
                mime_guess::from_path(key)
                    .first_or_octet_stream()
                    .to_string()
            },
            str::to_owned,
        )
}

/// Store what `src` yields as a new FastDFS file carrying `meta`, named after the last segment of `key` (its
/// extension becomes the file ID's).
async fn store_file<S: ChunkSource>(
    s3: &S3,
    src: &mut S,
    meta: &BTreeMap<String, String>,
    key: &str,
    size: Option<u64>,
) -> Result<fdfs_common::wire::UploadResult, crate::error::GatewayError> {
    store_file_in(&s3.app, src, meta, key, size, None).await
}

/// Store the marker file of `bucket`: a small file tagged with the bucket (`s3-bucket-marker`), so the bucket
/// is on the storage nodes even while it holds nothing, and a rebuild finds it. Its ID.
pub(crate) async fn store_marker(
    app: &App,
    bucket: &str,
) -> Result<String, crate::error::GatewayError> {
    let tags = BTreeMap::from([
        (NAMESPACE_TAG.to_owned(), app.config.s3_namespace.clone()),
        ("s3-bucket".to_owned(), bucket.to_owned()),
        (MARKER_TAG.to_owned(), "1".to_owned()),
    ]);
    let body = Bytes::from(format!("{bucket}\n"));
    let size = Some(body.len() as u64);
    let mut src = Once(Some(body));
    let stored = store_file_in(app, &mut src, &tags, "bucket", size, None).await?;
    Ok(stored.file_id.to_string())
}

/// A body given whole (a bucket's marker file: a few bytes).
struct Once(Option<Bytes>);

impl ChunkSource for Once {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, crate::error::GatewayError> {
        Ok(self.0.take())
    }
}

/// [`store_file`] in `group` (any when `None`).
async fn store_file_in<S: ChunkSource>(
    app: &App,
    src: &mut S,
    meta: &BTreeMap<String, String>,
    key: &str,
    size: Option<u64>,
    group: Option<fdfs_common::GroupName>,
) -> Result<fdfs_common::wire::UploadResult, crate::error::GatewayError> {
    let mut fields = UploadFields::default();
    fields.group = group;
    for (k, v) in meta {
        fields.apply(&format!("meta.{k}"), v)?;
    }
    let filename = key.rsplit('/').next().unwrap_or(key).to_owned();
    let limit = app.config.max_upload_size;
    let (result, _) = app
        .store(src, &mut Budget::new(limit), &fields, Some(filename), size)
        .await?;
    Ok(result)
}

/// The key that signed the request (CopyObject checks its right to read the source bucket too).
fn signed_key(s3: &S3, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Option<S3Key>> {
    let uri = &s3.signed_uri(uri, headers);
    if !sigv4::is_signed(headers, uri) {
        return Ok(None);
    }
    let now = fdfs_common::time::unix_now() as i64;
    Ok(Some(
        sigv4::verify(method, uri, headers, &s3.keys, now)?.key,
    ))
}

/// The object `x-amz-copy-source` names (`bucket/key`, URL-encoded, a `?versionId=` ignored), if `signer` may
/// read its bucket (CopyObject, UploadPartCopy).
async fn copy_source(s3: &S3, headers: &HeaderMap, signer: Option<S3Key>) -> Result<Object> {
    let raw = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let raw = raw.split_once("?versionId=").map_or(raw, |(p, _)| p);
    let source = sigv4::decode(raw.trim_start_matches('/'));
    let Some((src_bucket, src_key)) = source.split_once('/') else {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "x-amz-copy-source must be bucket/key",
        ));
    };
    if let Some(k) = &signer {
        if !k.buckets.is_empty() && !k.buckets.iter().any(|b| b == src_bucket) {
            return Err(S3Error::denied("Access Denied").on(src_bucket));
        }
    }
    s3.require_bucket(src_bucket).await?;
    let (b, k) = (src_bucket.to_owned(), src_key.to_owned());
    match s3.ns(move |ns| ns.get(&b, &k)).await? {
        Some(src) => Ok(src),
        None => Err(S3Error::no_key(src_key)),
    }
}

/// `PUT /{bucket}/{key}` with `x-amz-copy-source`: CopyObject. The source's bytes stream from the storage nodes
/// into a new file (a storage node links identical content instead of storing it twice when the copy lands in
/// the same group); its metadata and content type go with it unless `x-amz-metadata-directive: REPLACE`.
async fn copy_object(
    s3: &S3,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
    signer: Option<S3Key>,
) -> Result<Response> {
    let src = copy_source(s3, headers, signer).await?;
    let replace = headers
        .get("x-amz-metadata-directive")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("REPLACE"));
    let (meta, content_type) = if replace {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| src.content_type.clone(), str::to_owned);
        (user_meta(headers), ct)
    } else {
        (src.meta.clone(), src.content_type.clone())
    };
    let tags = s3.object_tags(&meta, bucket, key, &content_type);
    // The copy goes to the source's group when it can: its members already hold the bytes, and a storage node
    // stores identical content once (a hard link), so the copy costs no disk there. When that group cannot take
    // it (no member up, no room), any group does.
    let home = src.file_id.split('/').next().and_then(|g| g.parse().ok());
    let mut bytes = multipart::Parts::new(s3, vec![src.file_id.clone()]);
    let stored = match store_file_in(&s3.app, &mut bytes, &tags, key, Some(src.size), home).await {
        Err(crate::error::GatewayError::Upstream { code, .. })
            if matches!(
                code.as_str(),
                "no_storage" | "insufficient_storage" | "unknown_group"
            ) =>
        {
            bytes = multipart::Parts::new(s3, vec![src.file_id.clone()]);
            store_file(s3, &mut bytes, &tags, key, Some(src.size)).await
        }
        other => other,
    }
    .map_err(S3Error::from)?;
    let etag = hex::encode(std::mem::take(&mut bytes.md5).finalize());
    let object = Object::stored(&stored, &etag, content_type, meta);
    s3.record(bucket, key, &object).await?;
    let mut resp = xml(
        StatusCode::OK,
        format!(
            "<CopyObjectResult xmlns=\"{XMLNS}\"><LastModified>{}</LastModified><ETag>&quot;{etag}&quot;</ETag></CopyObjectResult>",
            iso8601(object.modified)
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&object.file_id) {
        resp.headers_mut().insert(FILE_ID_HEADER, v);
    }
    Ok(resp)
}

/// Tests only: `FDFS_TEST_S3_PAUSE_BEFORE_RECORD_MS` holds a PutObject between storing its file and recording
/// its key, so a test can kill the gateway there (the orphan the collector must find).
async fn test_pause_before_record() {
    static PAUSE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *PAUSE.get_or_init(|| {
        std::env::var("FDFS_TEST_S3_PAUSE_BEFORE_RECORD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// An ETag list of `If-Match` / `If-None-Match` holds `etag` (or `*`).
fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim().trim_start_matches("W/").trim_matches('"');
        t == "*" || t == etag
    })
}

async fn get_object(
    s3: &S3,
    bucket: &str,
    key: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response> {
    let (b, k) = (bucket.to_owned(), key.to_owned());
    let Some(o) = s3.ns(move |ns| ns.get(&b, &k)).await? else {
        return Err(S3Error::no_key(key));
    };
    let h = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let since = |v: Option<&str>| {
        v.and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
    };
    let failed = match h(header::IF_MATCH) {
        Some(m) => !etag_matches(m, &o.etag),
        None => since(h(header::IF_UNMODIFIED_SINCE)).is_some_and(|t| o.modified > t),
    };
    if failed {
        return Err(S3Error::new(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        ));
    }
    let not_modified = match h(header::IF_NONE_MATCH) {
        Some(m) => etag_matches(m, &o.etag),
        None => since(h(header::IF_MODIFIED_SINCE)).is_some_and(|t| o.modified <= t),
    };
    let mut out = HeaderMap::new();
    let set = |out: &mut HeaderMap, n: &str, v: &str| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(n), HeaderValue::from_str(v)) {
            out.insert(n, v);
        }
    };
    set(&mut out, "etag", &format!("\"{}\"", o.etag));
    set(&mut out, "last-modified", &http_date(o.modified));
    set(&mut out, FILE_ID_HEADER, &o.file_id);
    set(&mut out, "accept-ranges", "bytes");
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    set(&mut out, "content-type", &o.content_type);
    for (k, v) in &o.meta {
        set(&mut out, &format!("x-amz-meta-{k}"), v);
    }
    let id: fdfs_common::FileId = o.file_id.parse().map_err(S3Error::internal)?;
    let members = s3.app.members(&id).await?;
    let mut forward = reqwest::header::HeaderMap::new();
    if let Some(r) = headers.get(header::RANGE) {
        forward.insert(header::RANGE, r.clone());
    }
    let token = s3.app.token_query(&id);
    let resp = match s3
        .app
        .fetch_from(method, &id, &members, &token, &forward)
        .await
    {
        Some(r) if r.status() != StatusCode::NOT_FOUND => r,
        _ => {
            return Err(S3Error::new(
                503,
                "ServiceUnavailable",
                "no storage node holding the object answers",
            ))
        }
    };
    let status = resp.status();
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(S3Error::new(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
        ));
    }
    if !status.is_success() {
        return Err(S3Error::new(
            503,
            "ServiceUnavailable",
            format!("the storage node answered {status}"),
        ));
    }
    for n in [header::CONTENT_LENGTH, header::CONTENT_RANGE] {
        if let Some(v) = resp.headers().get(&n) {
            out.insert(n, v.clone());
        }
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(resp.bytes_stream())
    };
    Ok((status, out, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_under_a_domain_names_the_bucket() {
        let domains = vec!["s3.example.com".to_owned(), "localhost".to_owned()];
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            virtual_bucket(&domains, &m)
        };
        assert_eq!(host("photos.s3.example.com").as_deref(), Some("photos"));
        assert_eq!(
            host("Photos.S3.Example.com:9000").as_deref(),
            Some("photos")
        );
        assert_eq!(
            host("my.dotted.bucket.s3.example.com").as_deref(),
            Some("my.dotted.bucket")
        );
        assert_eq!(host("b.localhost:80").as_deref(), Some("b"));
        // The domain itself, other hosts and look-alikes are path style.
        for path_style in [
            "s3.example.com",
            "s3.example.com:9000",
            "127.0.0.1:9000",
            "xs3.example.com",
            ".s3.example.com",
        ] {
            assert_eq!(host(path_style), None, "{path_style}");
        }
        assert_eq!(virtual_bucket(&domains, &HeaderMap::new()), None);
    }

    #[test]
    fn times_and_names() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_369_353_600), "2013-05-24T00:00:00.000Z");
        assert!(valid_bucket("my-bucket.1"));
        for bad in ["ab", "Upper", "-a-", "a..b", "192.168.1.1", &"a".repeat(64)] {
            assert!(!valid_bucket(bad), "{bad}");
        }
        assert!(etag_matches("\"abc\", \"def\"", "def"));
        assert!(etag_matches("*", "x"));
        assert!(!etag_matches("\"abc\"", "abd"));
        assert_eq!(
            elements(
                "<Delete><Object><Key>a&amp;b</Key></Object><Object><Key>c</Key></Object></Delete>",
                "Key"
            ),
            ["a&b", "c"]
        );
    }
}
