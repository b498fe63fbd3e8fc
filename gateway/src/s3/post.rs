//! Browser form uploads (`POST /{bucket}` with `multipart/form-data`, S3's presigned POST): the form's fields
//! first (`key`, `policy`, the signature fields, `Content-Type`, `x-amz-meta-*`, `success_action_*`), then the
//! `file`, streamed to a storage node as any object.
//!
//! The policy is checked as S3 does: signed by a key allowed to write the bucket, not expired, and every condition
//! held by the form (`{"field": "value"}` and `["eq", "$field", "value"]` exact, `["starts-with", "$field",
//! "prefix"]`, `["content-length-range", min, max]` enforced on the file's bytes as they stream); every field but
//! the signature, the policy, `file` and `x-ignore-*` must be named by a condition. A file outside the length
//! range ends its stream with an error, so nothing is stored.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest as _, Md5};

use super::error::{escape, S3Error};
use super::namespace::Object;
use super::{count, sigv4, store_file, xml, Result, S3, XMLNS};
use crate::error::GatewayError;
use crate::upload::ChunkSource;

/// The largest form field other than the file.
const MAX_FIELD: usize = 64 * 1024;
/// Form fields other than the file, in all.
const MAX_FIELDS: usize = 1024 * 1024;

/// What a policy allows.
struct Policy {
    /// `(field, condition)` pairs to check against the form.
    conditions: Vec<(String, Condition)>,
    /// `content-length-range`.
    length: (u64, u64),
}

enum Condition {
    Eq(String),
    StartsWith(String),
}

fn bad_policy(why: &str) -> S3Error {
    S3Error::new(
        400,
        "InvalidPolicyDocument",
        format!("Invalid Policy: {why}"),
    )
}

fn violated(why: String) -> S3Error {
    S3Error::new(
        403,
        "AccessDenied",
        format!("Invalid according to Policy: {why}"),
    )
}

/// Read the base64 policy, checking its expiry against `now`.
fn parse_policy(b64: &str, now: i64, max: u64) -> Result<Policy> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad_policy("not base64"))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| bad_policy("not JSON"))?;
    let expiration = doc["expiration"]
        .as_str()
        .ok_or_else(|| bad_policy("no expiration"))?;
    let compact: String = expiration
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    // 2026-12-06T04:00:00.000Z -> 20261206T040000Z
    let compact = match compact.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => compact,
    };
    let expires = sigv4::parse_amz_date(&compact).ok_or_else(|| bad_policy("bad expiration"))?;
    if now > expires {
        return Err(violated("Policy expired.".into()));
    }
    let mut policy = Policy {
        conditions: Vec::new(),
        length: (0, max),
    };
    for c in doc["conditions"]
        .as_array()
        .ok_or_else(|| bad_policy("no conditions"))?
    {
        match c {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad_policy("a condition is not a string"))?;
                    policy
                        .conditions
                        .push((k.to_ascii_lowercase(), Condition::Eq(v.to_owned())));
                }
            }
            serde_json::Value::Array(a) => {
                let op = a.first().and_then(|v| v.as_str()).unwrap_or("");
                match op.to_ascii_lowercase().as_str() {
                    "content-length-range" => {
                        let n = |i: usize| a.get(i).and_then(serde_json::Value::as_u64);
                        let (Some(lo), Some(hi)) = (n(1), n(2)) else {
                            return Err(bad_policy("content-length-range needs two numbers"));
                        };
                        policy.length = (lo, hi.min(max));
                    }
                    "eq" | "starts-with" => {
                        let field = a.get(1).and_then(|v| v.as_str()).unwrap_or("");
                        let value = a.get(2).and_then(|v| v.as_str()).unwrap_or("");
                        let Some(field) = field.strip_prefix('$') else {
                            return Err(bad_policy("a condition's field must start with $"));
                        };
                        let cond = if op.eq_ignore_ascii_case("eq") {
                            Condition::Eq(value.to_owned())
                        } else {
                            Condition::StartsWith(value.to_owned())
                        };
                        policy.conditions.push((field.to_ascii_lowercase(), cond));
                    }
                    other => return Err(bad_policy(&format!("unknown condition {other:?}"))),
                }
            }
            _ => return Err(bad_policy("a condition is neither an object nor a list")),
        }
    }
    Ok(policy)
}

/// The file part of the form, counted and hashed as it streams.
struct FormFile<'a> {
    field: axum::extract::multipart::Field<'a>,
    md5: Md5,
    taken: u64,
    length: (u64, u64),
    failed: Option<S3Error>,
}

impl ChunkSource for FormFile<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        match self.field.chunk().await {
            Ok(Some(b)) => {
                self.taken += b.len() as u64;
                if self.taken > self.length.1 {
                    self.failed = Some(S3Error::new(
                        400,
                        "EntityTooLarge",
                        "Your proposed upload exceeds the maximum allowed size",
                    ));
                    return Err(GatewayError::BadRequest("too large".into()));
                }
                self.md5.update(&b);
                Ok(Some(b))
            }
            Ok(None) => {
                if self.taken < self.length.0 {
                    self.failed = Some(S3Error::new(
                        400,
                        "EntityTooSmall",
                        "Your proposed upload is smaller than the minimum allowed size",
                    ));
                    return Err(GatewayError::BadRequest("too small".into()));
                }
                Ok(None)
            }
            Err(e) => Err(GatewayError::BadRequest(format!("reading the form: {e}"))),
        }
    }
}

/// `POST /{bucket}` with a form: S3's POST Object.
pub(super) async fn post_object(
    s3: &S3,
    bucket: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    count("PostObject");
    let mut req = axum::http::Request::new(body);
    *req.headers_mut() = headers.clone();
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
        S3Error::new(
            400,
            "MalformedPOSTRequest",
            format!("The body of your POST request is not well-formed multipart/form-data: {e}"),
        )
    })?;
    let malformed = |e: axum::extract::multipart::MultipartError| {
        S3Error::new(
            400,
            "MalformedPOSTRequest",
            format!("reading the form: {e}"),
        )
    };
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut total = 0;
    let file = loop {
        let Some(field) = form.next_field().await.map_err(malformed)? else {
            return Err(S3Error::new(
                400,
                "InvalidArgument",
                "POST requires exactly one file upload per request.",
            ));
        };
        let name = field.name().unwrap_or("").to_ascii_lowercase();
        if name == "file" {
            let filename = field.file_name().unwrap_or("").to_owned();
            break (field, filename);
        }
        let value = field.text().await.map_err(malformed)?;
        total += value.len();
        if value.len() > MAX_FIELD || total > MAX_FIELDS {
            return Err(S3Error::new(
                400,
                "MaxPostPreDataLengthExceeded",
                "Your POST request fields preceding the upload file were too large.",
            ));
        }
        fields.insert(name, value);
    };
    let (field, filename) = file;
    let Some(policy_b64) = fields.get("policy").cloned() else {
        return Err(S3Error::denied("a form upload needs a policy"));
    };
    let key = sigv4::verify_post(&fields, &policy_b64, &s3.keys)?;
    if key.read_only || !(key.buckets.is_empty() || key.buckets.iter().any(|b| b == bucket)) {
        return Err(S3Error::denied("Access Denied").on(bucket));
    }
    let now = fdfs_common::time::unix_now() as i64;
    let policy = parse_policy(&policy_b64, now, s3.app.config.max_upload_size)?;
    let Some(object_key) = fields
        .get("key")
        .map(|k| k.replace("${filename}", &filename))
    else {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "Bucket POST must contain a field named 'key'.",
        ));
    };
    // Every condition holds, every field is named by one.
    let value_of = |f: &str| match f {
        "bucket" => Some(bucket.to_owned()),
        "key" => Some(object_key.clone()),
        other => fields.get(other).cloned(),
    };
    for (field, cond) in &policy.conditions {
        let have = value_of(field).unwrap_or_default();
        let ok = match cond {
            Condition::Eq(v) => have == *v,
            Condition::StartsWith(p) => have.starts_with(p.as_str()),
        };
        if !ok {
            return Err(violated(format!(
                "Policy Condition failed: [\"{}\", \"${field}\", ...]",
                match cond {
                    Condition::Eq(_) => "eq",
                    Condition::StartsWith(_) => "starts-with",
                }
            )));
        }
    }
    let exempt = |f: &str| {
        matches!(
            f,
            "policy" | "x-amz-signature" | "signature" | "awsaccesskeyid" | "file"
        ) || f.starts_with("x-ignore-")
    };
    for f in fields.keys().filter(|f| !exempt(f)) {
        if !policy.conditions.iter().any(|(c, _)| c == f) {
            return Err(violated(format!("Extra input fields: {f}")));
        }
    }
    if !policy.conditions.iter().any(|(c, _)| c == "bucket") {
        return Err(violated("Policy Condition failed: bucket".into()));
    }

    let content_type = fields
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| super::content_type_of(&HeaderMap::new(), &object_key));
    let meta: BTreeMap<String, String> = fields
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("x-amz-meta-")?.to_owned(), v.clone())))
        .collect();
    let tags = s3.object_tags(&meta, bucket, &object_key, &content_type);
    let mut src = FormFile {
        field,
        md5: Md5::new(),
        taken: 0,
        length: policy.length,
        failed: None,
    };
    let stored = match store_file(s3, &mut src, &tags, &object_key, None).await {
        Ok(r) => r,
        Err(e) => return Err(src.failed.take().unwrap_or_else(|| S3Error::from(e))),
    };
    let etag = hex::encode(std::mem::take(&mut src.md5).finalize());
    let object = Object::stored(&stored, &etag, content_type, meta);
    s3.record(bucket, &object_key, &object).await?;
    tracing::info!(bucket, key = %object_key, file_id = %object.file_id, "object stored by a form upload");
    let location = format!("/{bucket}/{}", sigv4::uri_encode(&object_key, true));
    let mut resp = if let Some(to) = fields
        .get("success_action_redirect")
        .filter(|u| !u.is_empty())
    {
        let sep = if to.contains('?') { '&' } else { '?' };
        let url = format!(
            "{to}{sep}bucket={}&key={}&etag=%22{etag}%22",
            sigv4::uri_encode(bucket, false),
            sigv4::uri_encode(&object_key, false)
        );
        (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response()
    } else {
        match fields.get("success_action_status").map(String::as_str) {
            Some("200") => StatusCode::OK.into_response(),
            Some("201") => xml(
                StatusCode::CREATED,
                format!(
                    "<PostResponse xmlns=\"{XMLNS}\"><Location>{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>&quot;{etag}&quot;</ETag></PostResponse>",
                    escape(&location),
                    escape(bucket),
                    escape(&object_key)
                ),
            ),
            _ => StatusCode::NO_CONTENT.into_response(),
        }
    };
    let h = resp.headers_mut();
    for (n, v) in [
        ("etag", format!("\"{etag}\"")),
        ("location", location),
        (super::FILE_ID_HEADER, object.file_id.clone()),
    ] {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(n),
            axum::http::HeaderValue::from_str(&v),
        ) {
            h.entry(n).or_insert(v);
        }
    }
    Ok(resp)
}
