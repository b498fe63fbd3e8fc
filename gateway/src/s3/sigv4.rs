//! AWS Signature Version 4, as S3 checks it: in the `Authorization` header and in presigned query strings,
//! and the per-chunk signatures of `aws-chunked` bodies (see [`super::body`]).
//!
//! The canonical request is rebuilt from what arrived: the path and the query are percent-decoded and encoded
//! again the way SigV4 defines it (every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`, `/` kept in the path), so a
//! client that encodes a character the other way still matches. Any region is accepted (the signature covers
//! the one the client names); the service must be `s3`.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::error::S3Error;
use super::S3Key;

/// How far a signed request's date may be from now (S3's 15 minutes).
const SKEW_SECS: i64 = 15 * 60;
/// The longest a presigned URL may live (S3's seven days).
const MAX_EXPIRES: i64 = 7 * 24 * 3600;

/// The hash of an empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What a verified request was signed with: the key, and what chunk signatures chain from.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The access key that signed it.
    pub key: S3Key,
    /// `x-amz-content-sha256` (header auth) or `UNSIGNED-PAYLOAD` (presigned).
    pub payload: String,
    /// The request's signature, the seed of chunk signatures.
    pub signature: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// `date/region/s3/aws4_request`.
    pub scope: String,
    /// The signing key of the scope.
    signing_key: Vec<u8>,
}

impl Signed {
    /// The signature a chunk of an `aws-chunked` body must carry, following `previous`.
    pub fn chunk_signature(&self, previous: &str, chunk_sha256: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256}",
            self.amz_date, self.scope
        );
        hex::encode(hmac(&self.signing_key, to_sign.as_bytes()))
    }

    /// The signature of an `aws-chunked` body's trailer (`lines` as `name:value\n` each).
    pub fn trailer_signature(&self, previous: &str, lines: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
            self.amz_date,
            self.scope,
            hex::encode(Sha256::digest(lines.as_bytes()))
        );
        hex::encode(hmac(&self.signing_key, to_sign.as_bytes()))
    }
}

impl Signed {
    /// A signature context for tests of chunked bodies.
    #[cfg(test)]
    pub fn for_tests(payload: &str) -> Signed {
        Signed {
            key: S3Key {
                access_key: "AK".into(),
                secret_key: "SK".into(),
                buckets: Vec::new(),
                read_only: false,
            },
            payload: payload.into(),
            signature: "seed".into(),
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            signing_key: b"key".to_vec(),
        }
    }
}

/// Check the signature of a browser form upload (presigned POST) over its base64 `policy`: Signature V4
/// (`x-amz-algorithm`, `x-amz-credential`, `x-amz-signature`) or V2 (`AWSAccessKeyId`, `signature`). `fields` are
/// the form's fields, names lower-cased. The key that signed it.
pub fn verify_post(
    fields: &BTreeMap<String, String>,
    policy: &str,
    keys: &[S3Key],
) -> Result<S3Key, S3Error> {
    let get = |n: &str| fields.get(n).map(String::as_str);
    let find = |access: &str| {
        keys.iter()
            .find(|k| k.access_key == access)
            .cloned()
            .ok_or_else(|| {
                S3Error::new(
                    403,
                    "InvalidAccessKeyId",
                    "The AWS Access Key Id you provided does not exist in our records.",
                )
            })
    };
    if let (Some(algorithm), Some(credential_field), Some(signature)) = (
        get("x-amz-algorithm"),
        get("x-amz-credential"),
        get("x-amz-signature"),
    ) {
        if algorithm != "AWS4-HMAC-SHA256" {
            return Err(S3Error::malformed(
                "x-amz-algorithm must be AWS4-HMAC-SHA256",
            ));
        }
        let (access, date, region) = credential(credential_field)?;
        let key = find(&access)?;
        let k_date = hmac(
            format!("AWS4{}", key.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let signing_key = hmac(&k_service, b"aws4_request");
        let expected = hex::encode(hmac(&signing_key, policy.as_bytes()));
        if !fdfs_common::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err(mismatch());
        }
        return Ok(key);
    }
    if let (Some(access), Some(signature)) = (get("awsaccesskeyid"), get("signature")) {
        let key = find(access)?;
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.secret_key.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(policy.as_bytes());
        use base64::Engine as _;
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        if !fdfs_common::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err(mismatch());
        }
        return Ok(key);
    }
    Err(S3Error::denied(
        "a form upload needs a signed policy (x-amz-credential and x-amz-signature, or AWSAccessKeyId and signature)",
    ))
}

/// S3's answer to a signature that does not match.
fn mismatch() -> S3Error {
    S3Error::new(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The key that signs a day's requests in `region`.
fn signing_key(secret_key: &str, day: &str, region: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret_key}").as_bytes(), day.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    hmac(&k_service, b"aws4_request")
}

/// `secs` since the epoch as `x-amz-date` writes it (`20261206T012345Z`).
pub fn amz_date(secs: i64) -> String {
    super::iso8601(secs)
        .replace(['-', ':'], "")
        .replace(".000", "")
}

/// A presigned URL (Signature V4 in the query, `UNSIGNED-PAYLOAD`) for `method` on `path` (`/bucket/key`, not
/// encoded) with `query` (`[("list-type", "2")]`, `[("partNumber", "1"), ("uploadId", id)]`) at `base`
/// (`http://host:port`), signed by `key` in `region` at `now` and valid `expires` seconds: what `aws s3 presign`
/// makes, for any method (a presigned PUT lets a browser or `curl -T` upload without the key).
#[allow(clippy::too_many_arguments)]
pub fn presign(
    key: &S3Key,
    region: &str,
    method: &str,
    base: &str,
    path: &str,
    query: &[(&str, &str)],
    now: i64,
    expires: i64,
) -> String {
    let base = base.trim_end_matches('/');
    let host = base.split_once("://").map_or(base, |(_, rest)| rest);
    let date = amz_date(now);
    let day = &date[..8];
    let scope = format!("{day}/{region}/s3/aws4_request");
    let credential = format!("{}/{scope}", key.access_key);
    let expires = expires.to_string();
    let mut pairs: Vec<(String, String)> = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", date.as_str()),
        ("X-Amz-Expires", expires.as_str()),
        ("X-Amz-SignedHeaders", "host"),
    ]
    .iter()
    .chain(query)
    .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
    .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let path = uri_encode(path, true);
    let canonical = format!("{method}\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signature = hex::encode(hmac(
        &signing_key(&key.secret_key, day, region),
        to_sign.as_bytes(),
    ));
    format!("{base}{path}?{query}&X-Amz-Signature={signature}")
}

/// Percent-encode the way SigV4 does; `/` kept when `path`.
pub fn uri_encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (path && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decode (`+` stays `+`: SigV4 does not read it as a space).
pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The query as decoded pairs, in order.
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Seconds since the epoch of an ISO 8601 basic date-time (`20261206T012345Z`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// The parts of a SigV4 authorization.
struct Parts {
    access_key: String,
    scope_date: String,
    region: String,
    signed_headers: Vec<String>,
    signature: String,
}

fn credential(c: &str) -> Result<(String, String, String), S3Error> {
    let mut it = c.split('/');
    let (Some(key), Some(date), Some(region), Some(service), Some(term), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(S3Error::malformed("malformed credential"));
    };
    if service != "s3" || term != "aws4_request" {
        return Err(S3Error::malformed(
            "credential scope must end with s3/aws4_request",
        ));
    }
    Ok((key.to_owned(), date.to_owned(), region.to_owned()))
}

fn header_parts(auth: &str) -> Result<Parts, S3Error> {
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "only AWS Signature Version 4 (AWS4-HMAC-SHA256) is supported",
        ));
    };
    let mut fields = BTreeMap::new();
    for f in rest.split(',') {
        if let Some((k, v)) = f.trim().split_once('=') {
            fields.insert(k.trim(), v.trim());
        }
    }
    let (Some(c), Some(h), Some(s)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return Err(S3Error::malformed(
            "the Authorization header needs Credential, SignedHeaders and Signature",
        ));
    };
    let (access_key, scope_date, region) = credential(c)?;
    Ok(Parts {
        access_key,
        scope_date,
        region,
        signed_headers: h.split(';').map(str::to_owned).collect(),
        signature: (*s).to_owned(),
    })
}

/// Whether the request carries a signature (header or presigned, V4 or V2).
pub fn is_signed(headers: &HeaderMap, uri: &Uri) -> bool {
    headers.contains_key(axum::http::header::AUTHORIZATION)
        || query_pairs(uri)
            .iter()
            .any(|(k, _)| k == "X-Amz-Signature" || k == "Signature")
}

/// Whether the request is a V2 presigned URL (`Signature` in the query, no `Authorization`). Its signature covers
/// `/{bucket}/{key}` in every addressing style, a V4 signature the path as sent.
pub fn is_v2_presigned(uri: &Uri, headers: &HeaderMap) -> bool {
    !headers.contains_key("authorization") && query_pairs(uri).iter().any(|(k, _)| k == "Signature")
}

/// Query parameters that are part of a V2 signature's resource.
const V2_SUBRESOURCES: &[&str] = &[
    "acl",
    "delete",
    "location",
    "partNumber",
    "policy",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "tagging",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
];

/// A presigned URL of Signature Version 2 (`AWSAccessKeyId`, `Expires`, `Signature`), what boto3 still makes by
/// default for `us-east-1` (so django-storages' `S3Storage` URLs): HMAC-SHA1 over the method, `Content-MD5`,
/// `Content-Type`, the expiry, the `x-amz-*` headers and the resource.
fn verify_v2_query(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    keys: &[S3Key],
    now: i64,
    query: &[(String, String)],
) -> Result<Signed, S3Error> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(access_key), Some(expires), Some(signature)) =
        (get("AWSAccessKeyId"), get("Expires"), get("Signature"))
    else {
        return Err(S3Error::new(
            403,
            "AccessDenied",
            "a V2 presigned URL needs AWSAccessKeyId, Expires and Signature",
        ));
    };
    let expires_at: i64 = expires
        .parse()
        .map_err(|_| S3Error::new(403, "AccessDenied", "Expires must be a unix time"))?;
    if now > expires_at {
        return Err(S3Error::new(403, "AccessDenied", "Request has expired"));
    }
    let Some(key) = keys.iter().find(|k| k.access_key == access_key) else {
        return Err(S3Error::new(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let mut amz: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-amz-"))
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).trim().to_owned(),
            )
        })
        .collect();
    amz.sort();
    let mut resource = uri.path().to_owned();
    let mut sub: Vec<&(String, String)> = query
        .iter()
        .filter(|(k, _)| V2_SUBRESOURCES.contains(&k.as_str()))
        .collect();
    sub.sort();
    for (i, (k, v)) in sub.iter().enumerate() {
        resource.push(if i == 0 { '?' } else { '&' });
        resource.push_str(k);
        if !v.is_empty() {
            resource.push('=');
            resource.push_str(v);
        }
    }
    let mut to_sign = format!(
        "{method}\n{}\n{}\n{expires}\n",
        header("content-md5"),
        header("content-type")
    );
    for (n, v) in &amz {
        to_sign.push_str(&format!("{n}:{v}\n"));
    }
    to_sign.push_str(&resource);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.secret_key.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(to_sign.as_bytes());
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if !fdfs_common::constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        tracing::debug!(%to_sign, "V2 signature mismatch");
        return Err(mismatch());
    }
    Ok(Signed {
        key: key.clone(),
        payload: "UNSIGNED-PAYLOAD".into(),
        signature,
        amz_date: String::new(),
        scope: String::new(),
        signing_key: Vec::new(),
    })
}

/// Verify a request's signature against `keys`; what it was signed with.
pub fn verify(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    keys: &[S3Key],
    now: i64,
) -> Result<Signed, S3Error> {
    let query = query_pairs(uri);
    if is_v2_presigned(uri, headers) {
        return verify_v2_query(method, uri, headers, keys, now, &query);
    }
    let presigned = query.iter().any(|(k, _)| k == "X-Amz-Signature");
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (parts, amz_date, payload) = if presigned {
        if get("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
            return Err(S3Error::malformed(
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256",
            ));
        }
        let (Some(c), Some(h), Some(s), Some(d)) = (
            get("X-Amz-Credential"),
            get("X-Amz-SignedHeaders"),
            get("X-Amz-Signature"),
            get("X-Amz-Date"),
        ) else {
            return Err(S3Error::malformed(
                "a presigned URL needs X-Amz-Credential, X-Amz-SignedHeaders, X-Amz-Signature and X-Amz-Date",
            ));
        };
        let (access_key, scope_date, region) = credential(&c)?;
        let parts = Parts {
            access_key,
            scope_date,
            region,
            signed_headers: h.split(';').map(str::to_owned).collect(),
            signature: s,
        };
        let payload = get("X-Amz-Content-Sha256").unwrap_or_else(|| "UNSIGNED-PAYLOAD".into());
        (parts, d, payload)
    } else {
        let auth = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parts = header_parts(auth)?;
        let date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| S3Error::new(403, "AccessDenied", "x-amz-date is missing"))?;
        let payload = headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                S3Error::new(
                    400,
                    "InvalidRequest",
                    "x-amz-content-sha256 is missing (required with Signature Version 4)",
                )
            })?;
        (parts, date, payload)
    };
    let Some(at) = parse_amz_date(&amz_date) else {
        return Err(S3Error::new(
            403,
            "AccessDenied",
            "the request date is not an ISO 8601 basic date-time",
        ));
    };
    if !amz_date.starts_with(&parts.scope_date) {
        return Err(S3Error::malformed(
            "the credential's date is not the request's",
        ));
    }
    if presigned {
        let expires: i64 = get("X-Amz-Expires")
            .and_then(|v| v.parse().ok())
            .filter(|e| (1..=MAX_EXPIRES).contains(e))
            .ok_or_else(|| {
                S3Error::new(
                    400,
                    "AuthorizationQueryParametersError",
                    "X-Amz-Expires must be a number of seconds from 1 to 604800",
                )
            })?;
        if now > at + expires {
            return Err(S3Error::new(403, "AccessDenied", "Request has expired"));
        }
        if at - now > SKEW_SECS {
            return Err(S3Error::new(
                403,
                "AccessDenied",
                "Request is not valid yet",
            ));
        }
    } else if (now - at).abs() > SKEW_SECS {
        return Err(S3Error::new(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the server's time is too large.",
        ));
    }
    let Some(key) = keys.iter().find(|k| k.access_key == parts.access_key) else {
        return Err(S3Error::new(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
    if !parts.signed_headers.iter().any(|h| h == "host") {
        return Err(S3Error::malformed("the signed headers must include host"));
    }

    // The canonical request.
    let path = uri_encode(&decode(uri.path()), true);
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in &parts.signed_headers {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(S3Error::malformed(&format!(
                "signed header {name} is missing"
            )));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{}\n{payload}",
        parts.signed_headers.join(";")
    );
    let scope = format!("{}/{}/s3/aws4_request", parts.scope_date, parts.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signing_key = signing_key(&key.secret_key, &parts.scope_date, &parts.region);
    let expected = hex::encode(hmac(&signing_key, to_sign.as_bytes()));
    if !fdfs_common::constant_time_eq(expected.as_bytes(), parts.signature.as_bytes()) {
        tracing::debug!(%canonical, "signature mismatch");
        return Err(mismatch());
    }
    Ok(Signed {
        key: key.clone(),
        payload,
        signature: parts.signature,
        amz_date,
        scope,
        signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> S3Key {
        S3Key {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            buckets: Vec::new(),
            read_only: false,
        }
    }

    /// AWS's documented presigned GET ("Authenticating Requests: Using Query Parameters"), with its published
    /// signature; the door accepts it, and a PUT presigned the same way, until they expire.
    #[test]
    fn presigned_urls_sign_as_aws_does_and_verify() {
        let now = parse_amz_date("20130524T000000Z").unwrap();
        assert_eq!(amz_date(now), "20130524T000000Z");
        let url = presign(
            &key(),
            "us-east-1",
            "GET",
            "https://examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[],
            now,
            86_400,
        );
        assert!(url.ends_with(
            "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        ));
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:9000".parse().unwrap());
        let url = presign(
            &key(),
            "eu-west-3",
            "PUT",
            "http://127.0.0.1:9000/",
            "/b/a key+",
            &[("uploadId", "u/1="), ("partNumber", "2")],
            now,
            60,
        );
        let uri: Uri = url
            .strip_prefix("http://127.0.0.1:9000")
            .unwrap()
            .parse()
            .unwrap();
        assert!(uri.path() == "/b/a%20key%2B", "{uri}");
        verify(&Method::PUT, &uri, &h, &[key()], now + 60).unwrap();
        let q = query_pairs(&uri);
        assert!(q.contains(&("uploadId".into(), "u/1=".into())), "{q:?}");
        let e = verify(&Method::GET, &uri, &h, &[key()], now).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        let e = verify(&Method::PUT, &uri, &h, &[key()], now + 61).unwrap_err();
        assert_eq!(e.code, "AccessDenied");
    }

    /// The GET Object example of the S3 SigV4 documentation (header auth, a Range header).
    #[test]
    fn the_documented_get_object_example_verifies() {
        let uri: Uri = "/test.txt".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        h.insert("range", "bytes=0-9".parse().unwrap());
        h.insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
        h.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
                .parse()
                .unwrap(),
        );
        let now = parse_amz_date("20130524T000000Z").unwrap();
        let s = verify(&Method::GET, &uri, &h, &[key()], now).unwrap();
        assert_eq!(s.key.access_key, "AKIAIOSFODNN7EXAMPLE");
        // A byte changed anywhere fails, as does a clock too far off.
        h.insert("range", "bytes=0-8".parse().unwrap());
        let e = verify(&Method::GET, &uri, &h, &[key()], now).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        h.insert("range", "bytes=0-9".parse().unwrap());
        let e = verify(&Method::GET, &uri, &h, &[key()], now + 3600).unwrap_err();
        assert_eq!(e.code, "RequestTimeTooSkewed");
    }

    /// The presigned GET example of the documentation: valid for 86400 s, expired after.
    #[test]
    fn the_documented_presigned_url_verifies_until_it_expires() {
        let uri: Uri = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            .parse()
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        let at = parse_amz_date("20130524T000000Z").unwrap();
        verify(&Method::GET, &uri, &h, &[key()], at + 100).unwrap();
        let e = verify(&Method::GET, &uri, &h, &[key()], at + 86_401).unwrap_err();
        assert_eq!(e.message, "Request has expired");
    }

    #[test]
    fn dates_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(parse_amz_date("2013-05-24"), None);
    }
}
