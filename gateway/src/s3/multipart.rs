//! Multipart uploads: CreateMultipartUpload, UploadPart, UploadPartCopy, CompleteMultipartUpload,
//! AbortMultipartUpload, ListParts, ListMultipartUploads.
//!
//! Each part streams to a storage node as a file of its own (tagged `s3-upload`, `s3-part`), recorded under the
//! upload in the namespace; parts may come in any order and in parallel, and a part sent again replaces the
//! earlier one. Completing streams the listed parts, in order, from the storage nodes into one new file, so the
//! object is one ordinary FastDFS file like any other (nothing is held in memory: a part at a time is relayed),
//! with S3's multipart ETag (`md5(md5(part 1) .. md5(part N))-N`); then the part files are deleted. Aborting
//! deletes them.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use md5::{Digest as _, Md5};

use super::body::S3Body;
use super::error::{escape, S3Error};
use super::namespace::{Object, Part, Upload};
use super::sigv4::Signed;
use super::{count, elements, iso8601, store_file, user_meta, xml, Result, S3, XMLNS};
use crate::error::GatewayError;
use crate::upload::ChunkSource;

/// The smallest part but the last, as S3 requires.
const MIN_PART: u64 = 5 << 20;
/// The highest part number.
const MAX_PART: u32 = 10_000;

fn no_upload(id: &str) -> S3Error {
    S3Error::new(
        404,
        "NoSuchUpload",
        "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.",
    )
    .on(id)
}

/// `POST /{bucket}/{key}?uploads`.
pub(super) async fn create(
    s3: &S3,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
) -> Result<Response> {
    count("CreateMultipartUpload");
    let id = format!("{:032x}", rand::random::<u128>());
    let content_type = super::content_type_of(headers, key);
    let upload = Upload {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        created: fdfs_common::time::unix_now() as i64,
        content_type,
        meta: user_meta(headers),
        parts: BTreeMap::new(),
    };
    let (i, u) = (id.clone(), upload);
    s3.ns(move |ns| ns.create_upload(&i, &u)).await?;
    Ok(xml(
        StatusCode::OK,
        format!(
            "<InitiateMultipartUploadResult xmlns=\"{XMLNS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
            escape(bucket),
            escape(key)
        ),
    ))
}

/// The upload `id` of `bucket/key`.
async fn upload_of(s3: &S3, bucket: &str, key: &str, id: &str) -> Result<Upload> {
    let i = id.to_owned();
    match s3.ns(move |ns| ns.upload(&i)).await? {
        Some(u) if u.bucket == bucket && u.key == key => Ok(u),
        _ => Err(no_upload(id)),
    }
}

/// A part number as given, checked.
fn part_number(number: &str) -> Result<u32> {
    number
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PART).contains(n))
        .ok_or_else(|| {
            S3Error::new(
                400,
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

/// What a part's file carries: the namespace, the bucket, the upload and the part number.
fn part_tags(s3: &S3, bucket: &str, id: &str, n: u32) -> BTreeMap<String, String> {
    [
        (
            super::NAMESPACE_TAG.to_owned(),
            s3.app.config.s3_namespace.clone(),
        ),
        ("s3-bucket".to_owned(), bucket.to_owned()),
        ("s3-upload".to_owned(), id.to_owned()),
        ("s3-part".to_owned(), n.to_string()),
    ]
    .into()
}

/// Record a just-stored part file as part `n` of upload `id` (replacing and deleting an earlier one); the part.
async fn keep_part(
    s3: &S3,
    id: &str,
    n: u32,
    stored: &fdfs_common::wire::UploadResult,
    etag: String,
) -> Result<Part> {
    let part = Part {
        file_id: stored.file_id.to_string(),
        size: stored.size,
        etag,
        modified: fdfs_common::time::unix_now() as i64,
    };
    let (i, p) = (id.to_owned(), part.clone());
    match s3.ns(move |ns| ns.put_part(&i, n, &p)).await? {
        Ok(Some(old)) => s3.drop_file(&old.file_id).await,
        Ok(None) => {}
        Err(()) => {
            // Completed or aborted meanwhile: this part belongs to nothing.
            s3.drop_file(&part.file_id).await;
            return Err(no_upload(id));
        }
    }
    Ok(part)
}

/// `PUT /{bucket}/{key}?partNumber=N&uploadId=U` (`part`: the upload ID and the part number as given).
pub(super) async fn upload_part(
    s3: &S3,
    bucket: &str,
    key: &str,
    (id, number): (&str, &str),
    headers: &HeaderMap,
    signed: Option<&Signed>,
    body: Body,
) -> Result<Response> {
    count("UploadPart");
    let n = part_number(number)?;
    upload_of(s3, bucket, key, id).await?;
    let mut src = S3Body::new(body.into_data_stream(), headers, signed)?;
    let size = src.declared(headers);
    let tags = part_tags(s3, bucket, id, n);
    let stored = match store_file(s3, &mut src, &tags, &format!("part{n}"), size).await {
        Ok(r) => r,
        Err(e) => return Err(src.failed.take().unwrap_or_else(|| S3Error::from(e))),
    };
    let part = keep_part(s3, id, n, &stored, src.etag.clone().unwrap_or_default()).await?;
    Ok((
        StatusCode::OK,
        [(header::ETAG, format!("\"{}\"", part.etag))],
    )
        .into_response())
}

/// `x-amz-copy-source-range: bytes=FIRST-LAST` of an object of `size` bytes: the range, inclusive.
fn copy_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(v) = headers.get("x-amz-copy-source-range") else {
        return Ok(None);
    };
    let bad = || {
        S3Error::new(
            400,
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
        )
    };
    let (first, last) = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .ok_or_else(bad)?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(S3Error::new(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
        ));
    }
    Ok(Some((first, last)))
}

/// `PUT /{bucket}/{key}?partNumber=N&uploadId=U` with `x-amz-copy-source` (and `x-amz-copy-source-range`):
/// UploadPartCopy. The part is a new file streamed from the source object's file on the storage nodes (the
/// range only), as CopyObject does for a whole object (`aws s3 cp` between keys copies big objects this way).
pub(super) async fn upload_part_copy(
    s3: &S3,
    bucket: &str,
    key: &str,
    (id, number): (&str, &str),
    headers: &HeaderMap,
    signer: Option<super::S3Key>,
) -> Result<Response> {
    count("UploadPartCopy");
    let n = part_number(number)?;
    upload_of(s3, bucket, key, id).await?;
    let src = super::copy_source(s3, headers, signer).await?;
    let range = copy_range(headers, src.size)?;
    let size = range.map_or(src.size, |(first, last)| last - first + 1);
    let mut bytes = Parts::new(s3, vec![src.file_id.clone()]);
    bytes.range = range;
    let tags = part_tags(s3, bucket, id, n);
    let stored = store_file(s3, &mut bytes, &tags, &format!("part{n}"), Some(size))
        .await
        .map_err(S3Error::from)?;
    let etag = hex::encode(std::mem::take(&mut bytes.md5).finalize());
    let part = keep_part(s3, id, n, &stored, etag).await?;
    Ok(xml(
        StatusCode::OK,
        format!(
            "<CopyPartResult xmlns=\"{XMLNS}\"><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag></CopyPartResult>",
            iso8601(part.modified),
            part.etag
        ),
    ))
}

/// Files read in order from the storage nodes, as one stream (the parts of an upload, a copied object), with
/// the MD5 of what was read.
pub(super) struct Parts<'a> {
    s3: &'a S3,
    files: std::vec::IntoIter<String>,
    current: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Read only these bytes (first, last: inclusive) of each file (UploadPartCopy's one file).
    pub range: Option<(u64, u64)>,
    /// The MD5 of the bytes read so far.
    pub md5: Md5,
}

impl<'a> Parts<'a> {
    /// The files `files`, in order.
    pub(super) fn new(s3: &'a S3, files: Vec<String>) -> Parts<'a> {
        Parts {
            s3,
            files: files.into_iter(),
            current: None,
            range: None,
            md5: Md5::new(),
        }
    }
}

/// Open a part's file (only `range` of it, when given) on a member that holds it.
async fn open_part(
    s3: &S3,
    file_id: &str,
    range: Option<(u64, u64)>,
) -> Result<BoxStream<'static, reqwest::Result<Bytes>>, GatewayError> {
    let id: fdfs_common::FileId = file_id.parse()?;
    let members = s3.app.members(&id).await?;
    let token = s3.app.token_query(&id);
    let mut ask = reqwest::header::HeaderMap::new();
    if let Some((first, last)) = range {
        let v = format!("bytes={first}-{last}");
        ask.insert(
            reqwest::header::RANGE,
            v.parse().expect("a range is a header value"),
        );
    }
    let want = if range.is_some() {
        reqwest::StatusCode::PARTIAL_CONTENT
    } else {
        reqwest::StatusCode::OK
    };
    for (addr, _) in &members {
        let url = format!("http://{addr}/{id}{token}");
        match s3.app.storage.fetch(Method::GET, &url, ask.clone()).await {
            Ok(r) if r.status() == want => return Ok(r.bytes_stream().boxed()),
            Ok(r) => {
                tracing::warn!(storage = %addr, status = %r.status(), file_id, "part not served")
            }
            Err(e) => tracing::warn!(storage = %addr, error = %e, "storage node unreachable"),
        }
    }
    Err(GatewayError::BadGateway(format!(
        "no storage node serves part file {file_id}"
    )))
}

impl ChunkSource for Parts<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        loop {
            if let Some(stream) = &mut self.current {
                match stream.next().await {
                    Some(Ok(b)) => {
                        self.md5.update(&b);
                        return Ok(Some(b));
                    }
                    Some(Err(e)) => {
                        return Err(GatewayError::BadGateway(format!("reading a part: {e}")))
                    }
                    None => self.current = None,
                }
            }
            let Some(next) = self.files.next() else {
                return Ok(None);
            };
            let s3 = self.s3;
            self.current = Some(open_part(s3, &next, self.range).await?);
        }
    }
}

/// `POST /{bucket}/{key}?uploadId=U`: CompleteMultipartUpload.
pub(super) async fn complete(
    s3: &S3,
    bucket: &str,
    key: &str,
    id: &str,
    body: Body,
) -> Result<Response> {
    count("CompleteMultipartUpload");
    let upload = upload_of(s3, bucket, key, id).await?;
    let bytes = axum::body::to_bytes(body, 4 << 20)
        .await
        .map_err(|_| S3Error::new(400, "MalformedXML", "the request body is too large"))?;
    let doc = String::from_utf8_lossy(&bytes);
    let numbers = elements(&doc, "PartNumber");
    let etags = elements(&doc, "ETag");
    if numbers.is_empty() || numbers.len() != etags.len() {
        return Err(S3Error::new(
            400,
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema.",
        ));
    }
    let mut chosen: Vec<&Part> = Vec::new();
    let mut last = 0u32;
    for (i, (n, etag)) in numbers.iter().zip(&etags).enumerate() {
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| S3Error::new(400, "InvalidPart", "a part number is not a number"))?;
        if n <= last {
            return Err(S3Error::new(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part number.",
            ));
        }
        last = n;
        let Some(part) = upload.parts.get(&n) else {
            return Err(S3Error::new(
                400,
                "InvalidPart",
                format!("part {n} was not uploaded"),
            ));
        };
        if etag.trim().trim_matches('"') != part.etag {
            return Err(S3Error::new(
                400,
                "InvalidPart",
                format!("part {n}'s ETag is not the one uploaded"),
            ));
        }
        if i + 1 < numbers.len() && part.size < MIN_PART {
            return Err(S3Error::new(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            ));
        }
        chosen.push(part);
    }
    let size: u64 = chosen.iter().map(|p| p.size).sum();
    let mut md5s = Md5::new();
    for p in &chosen {
        md5s.update(hex::decode(&p.etag).unwrap_or_default());
    }
    let etag = format!("{}-{}", hex::encode(md5s.finalize()), chosen.len());
    let mut tags = s3.object_tags(&upload.meta, bucket, key, &upload.content_type);
    // Not recomputable from the bytes alone (it hashes the parts' hashes): kept with the file for a rebuild.
    tags.insert("s3-etag".into(), etag.clone());
    let mut parts = Parts::new(s3, chosen.iter().map(|p| p.file_id.clone()).collect());
    let stored = store_file(s3, &mut parts, &tags, key, Some(size))
        .await
        .map_err(S3Error::from)?;
    if stored.size != size {
        s3.drop_file(&stored.file_id.to_string()).await;
        return Err(S3Error::internal(format!(
            "the completed object has {} bytes, its parts {size}",
            stored.size
        )));
    }
    // stored.size == size (checked above).
    let object = Object::stored(
        &stored,
        &etag,
        upload.content_type.clone(),
        upload.meta.clone(),
    );
    let (b, k, o, i) = (
        bucket.to_owned(),
        key.to_owned(),
        object.clone(),
        id.to_owned(),
    );
    let (old, ended) = s3.ns(move |ns| ns.complete(&b, &k, &o, &i)).await?;
    s3.drop_replaced(old, &object).await;
    for p in ended.map(|u| u.parts).unwrap_or_default().values() {
        s3.drop_file(&p.file_id).await;
    }
    tracing::info!(bucket, key, file_id = %object.file_id, size, parts = chosen.len(), "multipart object stored");
    Ok(xml(
        StatusCode::OK,
        format!(
            "<CompleteMultipartUploadResult xmlns=\"{XMLNS}\"><Location>/{}/{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>&quot;{etag}&quot;</ETag></CompleteMultipartUploadResult>",
            escape(bucket),
            escape(key),
            escape(bucket),
            escape(key)
        ),
    ))
}

/// `DELETE /{bucket}/{key}?uploadId=U`: AbortMultipartUpload.
pub(super) async fn abort(s3: &S3, bucket: &str, key: &str, id: &str) -> Result<Response> {
    count("AbortMultipartUpload");
    upload_of(s3, bucket, key, id).await?;
    let i = id.to_owned();
    if let Some(u) = s3.ns(move |ns| ns.remove_upload(&i)).await? {
        for p in u.parts.values() {
            s3.drop_file(&p.file_id).await;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /{bucket}/{key}?uploadId=U`: ListParts (every part; `part-number-marker` honoured).
pub(super) async fn list_parts(
    s3: &S3,
    bucket: &str,
    key: &str,
    id: &str,
    marker: Option<&str>,
) -> Result<Response> {
    count("ListParts");
    let upload = upload_of(s3, bucket, key, id).await?;
    let after: u32 = marker.and_then(|m| m.parse().ok()).unwrap_or(0);
    let mut out = format!(
        "<ListPartsResult xmlns=\"{XMLNS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId><PartNumberMarker>{after}</PartNumberMarker><MaxParts>{MAX_PART}</MaxParts><IsTruncated>false</IsTruncated><StorageClass>STANDARD</StorageClass>",
        escape(bucket),
        escape(key)
    );
    for (n, p) in upload.parts.range(after + 1..) {
        out.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><LastModified>{}</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size></Part>",
            iso8601(p.modified),
            p.etag,
            p.size
        ));
    }
    out.push_str("</ListPartsResult>");
    Ok(xml(StatusCode::OK, out))
}

/// `GET /{bucket}?uploads`: ListMultipartUploads (every upload under way, `prefix` honoured).
pub(super) async fn list_uploads(s3: &S3, bucket: &str, prefix: &str) -> Result<Response> {
    count("ListMultipartUploads");
    let b = bucket.to_owned();
    let uploads = s3.ns(move |ns| ns.uploads_in(&b)).await?;
    let mut out = format!(
        "<ListMultipartUploadsResult xmlns=\"{XMLNS}\"><Bucket>{}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><Prefix>{}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>",
        escape(bucket),
        escape(prefix)
    );
    for (id, u) in uploads.iter().filter(|(_, u)| u.key.starts_with(prefix)) {
        out.push_str(&format!(
            "<Upload><Key>{}</Key><UploadId>{id}</UploadId><StorageClass>STANDARD</StorageClass><Initiated>{}</Initiated></Upload>",
            escape(&u.key),
            iso8601(u.created)
        ));
    }
    out.push_str("</ListMultipartUploadsResult>");
    Ok(xml(StatusCode::OK, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_of(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>> {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert("x-amz-copy-source-range", v.parse().unwrap());
        }
        copy_range(&headers, size)
    }

    #[test]
    fn copy_source_ranges() {
        assert_eq!(range_of(None, 10).unwrap(), None);
        assert_eq!(range_of(Some("bytes=0-9"), 10).unwrap(), Some((0, 9)));
        assert_eq!(range_of(Some("bytes=3-3"), 10).unwrap(), Some((3, 3)));
        let out = range_of(Some("bytes=0-10"), 10).unwrap_err();
        assert_eq!((out.status, out.code), (416, "InvalidRange"));
        for bad in [
            "bytes=5-4",
            "bytes=-4",
            "bytes=4-",
            "0-4",
            "bytes=a-b",
            "bytes=1-2,4-5",
        ] {
            let e = range_of(Some(bad), 10).unwrap_err();
            assert_eq!((e.status, e.code), (400, "InvalidArgument"), "{bad}");
        }
    }

    #[test]
    fn part_numbers() {
        assert_eq!(part_number("1").unwrap(), 1);
        assert_eq!(part_number("10000").unwrap(), 10_000);
        for bad in ["0", "10001", "", "x", "-1"] {
            assert_eq!(
                part_number(bad).unwrap_err().code,
                "InvalidArgument",
                "{bad}"
            );
        }
    }
}
