//! A PutObject / UploadPart body as it streams to a storage node: `aws-chunked` framing taken off, each chunk's
//! signature checked, the payload hash, `Content-MD5` and any `x-amz-checksum-*` (header or trailer) compared,
//! and the MD5 (the object's ETag) computed on the way. Bytes go on as they arrive; a check that fails ends the
//! stream with an error instead of its end, so the storage node discards the file and nothing is stored.

use axum::body::BodyDataStream;
use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::error::S3Error;
use super::sigv4::{Signed, EMPTY_SHA256};
use crate::error::{GatewayError, Result};

/// The longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;
/// The longest trailer accepted.
const MAX_TRAILER: usize = 16 * 1024;

/// A checksum algorithm S3 names in `x-amz-checksum-*`.
enum Checksum {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Checksum {
    fn named(name: &str) -> Option<Checksum> {
        Some(match name {
            "crc32" => Checksum::Crc32(crc32fast::Hasher::new()),
            "crc32c" => Checksum::Crc32c(0),
            "sha1" => Checksum::Sha1(sha1::Sha1::new()),
            "sha256" => Checksum::Sha256(Sha256::new()),
            _ => return None,
        })
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Checksum::Crc32(h) => h.update(b),
            Checksum::Crc32c(c) => *c = crc32c::crc32c_append(*c, b),
            Checksum::Sha1(h) => h.update(b),
            Checksum::Sha256(h) => h.update(b),
        }
    }

    /// The value, base64 as S3 writes it.
    fn finish(self) -> String {
        let raw = match self {
            Checksum::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Checksum::Crc32c(c) => c.to_be_bytes().to_vec(),
            Checksum::Sha1(h) => h.finalize().to_vec(),
            Checksum::Sha256(h) => h.finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

enum Framing {
    /// The body is the object.
    Plain,
    /// `aws-chunked`: reading a chunk header, a chunk's data, the CRLF after it, or the trailer.
    Header,
    Data {
        left: u64,
        signature: Option<String>,
        sha: Sha256,
    },
    DataEnd {
        signature: Option<String>,
        sha: Sha256,
    },
    Trailer,
}

/// The body of an object upload, checked as it streams (see the module doc).
pub struct S3Body {
    stream: BodyDataStream,
    buf: BytesMut,
    framing: Framing,
    /// Signed chunks: the signature each chunk chains from.
    signed: Option<Signed>,
    previous: String,
    /// A trailer follows the last chunk.
    trailer: bool,
    /// `x-amz-content-sha256` as a hash of the whole payload.
    sha256: Option<(Sha256, String)>,
    md5: Md5,
    content_md5: Option<String>,
    /// The checksum asked for and the value to compare (`None`: it comes in the trailer).
    checksum: Option<(String, Checksum, Option<String>)>,
    /// `x-amz-decoded-content-length` of a chunked body.
    decoded_length: Option<u64>,
    taken: u64,
    ended: bool,
    /// Why the body was refused, when it was (an S3 error, which the handler answers).
    pub failed: Option<S3Error>,
    /// The ETag (hex MD5) once the body ended well.
    pub etag: Option<String>,
}

impl S3Body {
    /// The body of a request signed with `signed` (anonymous: `None`).
    pub fn new(
        stream: BodyDataStream,
        headers: &HeaderMap,
        signed: Option<&Signed>,
    ) -> std::result::Result<S3Body, S3Error> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let payload = signed.map_or("UNSIGNED-PAYLOAD", |s| s.payload.as_str());
        let (chunked, signed_chunks, trailer) = match payload {
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => (true, true, false),
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => (true, true, true),
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => (true, false, true),
            _ => (false, false, false),
        };
        let sha256 = match payload {
            "UNSIGNED-PAYLOAD" => None,
            _ if chunked => None,
            h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some((Sha256::new(), h.to_ascii_lowercase()))
            }
            other => {
                return Err(S3Error::new(
                    400,
                    "InvalidArgument",
                    format!("x-amz-content-sha256 {other:?} is not supported"),
                ))
            }
        };
        let mut checksum = None;
        if let Some(name) = header("x-amz-trailer").filter(|_| trailer) {
            let algo = name.trim().to_ascii_lowercase();
            if let Some(c) = algo
                .strip_prefix("x-amz-checksum-")
                .and_then(Checksum::named)
            {
                checksum = Some((algo, c, None));
            }
        } else {
            for (name, value) in headers {
                let n = name.as_str();
                if let Some(c) = n.strip_prefix("x-amz-checksum-").and_then(Checksum::named) {
                    let v = value.to_str().unwrap_or("").to_owned();
                    checksum = Some((n.to_owned(), c, Some(v)));
                }
            }
        }
        let decoded_length = if chunked {
            Some(
                header("x-amz-decoded-content-length")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        S3Error::new(
                            411,
                            "MissingContentLength",
                            "an aws-chunked body needs x-amz-decoded-content-length",
                        )
                    })?,
            )
        } else {
            None
        };
        Ok(S3Body {
            stream,
            buf: BytesMut::new(),
            framing: if chunked {
                Framing::Header
            } else {
                Framing::Plain
            },
            signed: signed.filter(|_| signed_chunks).cloned(),
            previous: signed.map(|s| s.signature.clone()).unwrap_or_default(),
            trailer,
            sha256,
            md5: Md5::new(),
            content_md5: header("content-md5").map(str::to_owned),
            checksum,
            decoded_length,
            taken: 0,
            ended: false,
            failed: None,
            etag: None,
        })
    }

    /// The object's size when known before the body (`x-amz-decoded-content-length`, or `Content-Length`).
    pub fn declared(&self, headers: &HeaderMap) -> Option<u64> {
        self.decoded_length.or_else(|| {
            headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
    }

    fn fail(&mut self, e: S3Error) -> GatewayError {
        let message = e.message.clone();
        self.failed = Some(e);
        GatewayError::BadRequest(message)
    }

    /// More bytes from the client into `buf`; `false` at its end.
    async fn fill(&mut self) -> Result<bool> {
        match self.stream.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(GatewayError::BadRequest(format!(
                "reading the request body: {e}"
            ))),
            None => Ok(false),
        }
    }

    /// A CRLF-ended line from `buf` (reading more as needed), without the CRLF.
    async fn line(&mut self) -> Result<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(p + 2);
                return Ok(String::from_utf8_lossy(&line[..p]).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(self.fail(S3Error::new(
                    400,
                    "InvalidRequest",
                    "aws-chunked: a chunk header is too long",
                )));
            }
            if !self.fill().await? {
                return Err(self.fail(incomplete()));
            }
        }
    }

    fn take(&mut self, b: &[u8]) {
        self.taken += b.len() as u64;
        self.md5.update(b);
        if let Some((h, _)) = &mut self.sha256 {
            h.update(b);
        }
        if let Some((_, c, _)) = &mut self.checksum {
            c.update(b);
        }
    }

    /// The checks at the end of the object.
    fn finish(&mut self, trailer_value: Option<String>) -> Result<()> {
        if let Some(n) = self.decoded_length {
            if n != self.taken {
                return Err(self.fail(incomplete()));
            }
        }
        let md5 = std::mem::take(&mut self.md5).finalize();
        if let Some(want) = self.content_md5.take() {
            if base64::engine::general_purpose::STANDARD.encode(md5) != want.trim() {
                return Err(self.fail(S3Error::new(
                    400,
                    "BadDigest",
                    "The Content-MD5 you specified did not match what we received.",
                )));
            }
        }
        if let Some((h, want)) = self.sha256.take() {
            if hex::encode(h.finalize()) != want {
                return Err(self.fail(S3Error::new(
                    400,
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                )));
            }
        }
        if let Some((name, c, header_value)) = self.checksum.take() {
            let want = header_value.or(trailer_value);
            let got = c.finish();
            if want.as_deref().map(str::trim) != Some(got.as_str()) {
                return Err(self.fail(S3Error::new(
                    400,
                    "BadDigest",
                    format!("The {name} you specified did not match the calculated checksum."),
                )));
            }
        }
        self.etag = Some(hex::encode(md5));
        self.ended = true;
        Ok(())
    }

    /// The next piece of the object; `None` at its end (after every check passed).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            match &mut self.framing {
                Framing::Plain => {
                    if !self.buf.is_empty() {
                        let b = self.buf.split().freeze();
                        self.take(&b);
                        return Ok(Some(b));
                    }
                    match self.stream.next().await {
                        Some(Ok(b)) => {
                            self.take(&b);
                            return Ok(Some(b));
                        }
                        Some(Err(e)) => {
                            return Err(GatewayError::BadRequest(format!(
                                "reading the request body: {e}"
                            )))
                        }
                        None => {
                            self.finish(None)?;
                            return Ok(None);
                        }
                    }
                }
                Framing::Header => {
                    let line = self.line().await?;
                    let (size, ext) = line.split_once(';').unwrap_or((line.as_str(), ""));
                    let Ok(left) = u64::from_str_radix(size.trim(), 16) else {
                        return Err(self.fail(S3Error::new(
                            400,
                            "InvalidRequest",
                            "aws-chunked: a chunk size is not hexadecimal",
                        )));
                    };
                    let signature = ext
                        .trim()
                        .strip_prefix("chunk-signature=")
                        .map(str::to_owned);
                    if self.signed.is_some() && signature.is_none() {
                        return Err(self.fail(S3Error::new(
                            403,
                            "SignatureDoesNotMatch",
                            "aws-chunked: a chunk has no signature",
                        )));
                    }
                    if left == 0 {
                        self.check_chunk(signature.as_deref(), EMPTY_SHA256)?;
                        if self.trailer {
                            self.framing = Framing::Trailer;
                        } else {
                            // The final CRLF.
                            let _ = self.line().await?;
                            self.finish(None)?;
                        }
                        continue;
                    }
                    self.framing = Framing::Data {
                        left,
                        signature,
                        sha: Sha256::new(),
                    };
                }
                Framing::Data { .. } if self.buf.is_empty() => {
                    if !self.fill().await? {
                        return Err(self.fail(incomplete()));
                    }
                }
                Framing::Data {
                    left,
                    signature,
                    sha,
                } => {
                    let n = (*left).min(self.buf.len() as u64) as usize;
                    let b = self.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if self.signed.is_some() {
                        sha.update(&b);
                    }
                    if *left == 0 {
                        let (signature, sha) = (signature.take(), std::mem::take(sha));
                        self.framing = Framing::DataEnd { signature, sha };
                    }
                    self.take(&b);
                    return Ok(Some(b));
                }
                Framing::DataEnd { signature, sha } => {
                    let (signature, sha) = (signature.take(), std::mem::take(sha));
                    if !self.line().await?.is_empty() {
                        return Err(self.fail(S3Error::new(
                            400,
                            "InvalidRequest",
                            "aws-chunked: a chunk is longer than its size",
                        )));
                    }
                    self.check_chunk(signature.as_deref(), &hex::encode(sha.finalize()))?;
                    self.framing = Framing::Header;
                }
                Framing::Trailer => {
                    let mut lines = String::new();
                    let mut value = None;
                    let mut trailer_signature = None;
                    loop {
                        let line = self.line().await?;
                        if line.is_empty() {
                            break;
                        }
                        if lines.len() + line.len() > MAX_TRAILER {
                            return Err(self.fail(S3Error::new(
                                400,
                                "InvalidRequest",
                                "aws-chunked: the trailer is too long",
                            )));
                        }
                        let Some((name, v)) = line.split_once(':') else {
                            continue;
                        };
                        let name = name.trim().to_ascii_lowercase();
                        if name == "x-amz-trailer-signature" {
                            trailer_signature = Some(v.trim().to_owned());
                            continue;
                        }
                        lines.push_str(&format!("{name}:{}\n", v.trim()));
                        if self.checksum.as_ref().is_some_and(|(n, _, _)| *n == name) {
                            value = Some(v.trim().to_owned());
                        }
                    }
                    if let Some(s) = self.signed.clone() {
                        let want = s.trailer_signature(&self.previous, &lines);
                        if trailer_signature.as_deref() != Some(want.as_str()) {
                            return Err(self.fail(S3Error::new(
                                403,
                                "SignatureDoesNotMatch",
                                "aws-chunked: the trailer's signature does not match",
                            )));
                        }
                    }
                    if self.checksum.is_some() && value.is_none() {
                        return Err(self.fail(S3Error::new(
                            400,
                            "InvalidRequest",
                            "aws-chunked: the trailer lacks the checksum x-amz-trailer names",
                        )));
                    }
                    self.finish(value)?;
                }
            }
        }
    }

    /// A chunk's signature, chained from the previous one (signed chunks only).
    fn check_chunk(&mut self, signature: Option<&str>, sha256: &str) -> Result<()> {
        let Some(s) = self.signed.clone() else {
            return Ok(());
        };
        let want = s.chunk_signature(&self.previous, sha256);
        if signature != Some(want.as_str()) {
            return Err(self.fail(S3Error::new(
                403,
                "SignatureDoesNotMatch",
                "aws-chunked: a chunk's signature does not match",
            )));
        }
        self.previous = want;
        Ok(())
    }
}

fn incomplete() -> S3Error {
    S3Error::new(
        400,
        "IncompleteBody",
        "You did not provide the number of bytes specified by the Content-Length HTTP header.",
    )
}

impl crate::upload::ChunkSource for S3Body {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        S3Body::next_chunk(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data` framed as `aws-chunked` in chunks of `size`, signed with `signed` when given, with a CRC32 trailer.
    fn framed(data: &[u8], size: usize, signed: Option<&Signed>, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut previous = signed.map(|s| s.signature.clone()).unwrap_or_default();
        let mut chunks: Vec<&[u8]> = data.chunks(size).collect();
        chunks.push(&[]);
        for c in chunks {
            out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
            if let Some(s) = signed {
                previous = s.chunk_signature(&previous, &hex::encode(Sha256::digest(c)));
                out.extend_from_slice(format!(";chunk-signature={previous}").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(c);
            if !c.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
        }
        if trailer {
            let crc = base64::engine::general_purpose::STANDARD
                .encode(crc32fast::hash(data).to_be_bytes());
            let line = format!("x-amz-checksum-crc32:{crc}");
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
            if let Some(s) = signed {
                let sig = s.trailer_signature(&previous, &format!("{line}\n"));
                out.extend_from_slice(format!("x-amz-trailer-signature:{sig}\r\n").as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    async fn read(
        body: Vec<u8>,
        len: usize,
        signed: Option<&Signed>,
    ) -> (Vec<u8>, Option<S3Error>) {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-decoded-content-length", len.into());
        headers.insert("x-amz-trailer", "x-amz-checksum-crc32".parse().unwrap());
        let stream = axum::body::Body::from(body).into_data_stream();
        let mut b = S3Body::new(stream, &headers, signed).unwrap();
        let mut out = Vec::new();
        loop {
            match b.next_chunk().await {
                Ok(Some(c)) => out.extend_from_slice(&c),
                Ok(None) => return (out, None),
                Err(_) => return (out, b.failed.take()),
            }
        }
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_every_check_holds() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for payload in [
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        ] {
            let s = Signed::for_tests(payload);
            let signed_chunks = payload.starts_with("STREAMING-AWS4");
            let trailer = payload.ends_with("TRAILER");
            let sig = signed_chunks.then_some(&s);
            let body = framed(&data, 65_536, sig, trailer);
            let (got, failed) = read(body.clone(), data.len(), Some(&s)).await;
            assert_eq!(failed, None, "{payload}");
            assert!(got == data, "{payload}: the object's bytes");
            // One byte of the object changed: a chunk signature (or the checksum) no longer holds.
            let mut bad = body.clone();
            let at = bad.len() / 2;
            bad[at] ^= 1;
            let (_, failed) = read(bad, data.len(), Some(&s)).await;
            let code = failed.expect("refused").code;
            assert!(
                ["SignatureDoesNotMatch", "BadDigest", "InvalidRequest"].contains(&code),
                "{payload}: {code}"
            );
            // Cut short: never ends cleanly.
            let (_, failed) = read(body[..body.len() / 3].to_vec(), data.len(), Some(&s)).await;
            assert!(failed.is_some(), "{payload}: a cut body is refused");
        }
    }
}
