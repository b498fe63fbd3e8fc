//! Wire types of a storage node's appender files (partial uploads that grow by appends at an expected offset,
//! FastDFS's "appender file"), shared by the node's internal `/v1/appender` routes and the gateway's tus
//! routes, and the checksum header both understand.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::wire::{Metadata, UploadResult};

/// Internal header of an append: the offset the client expects the upload to be at.
pub const OFFSET_HEADER: &str = "x-fdfs-offset";
/// Internal header of an append: the total length, for an upload created without one.
pub const LENGTH_HEADER: &str = "x-fdfs-length";
/// Internal header of an append: the chunk's checksum, as in tus (`<algorithm> <base64 digest>`).
pub const CHECKSUM_HEADER: &str = "x-fdfs-checksum";

/// `POST /v1/appender`: create an empty appender file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAppender {
    /// Store path the file goes to (and stays on when it is finished).
    #[serde(default)]
    pub store_path: u8,
    /// Final length when known; `None` until an append declares it.
    #[serde(default)]
    pub length: Option<u64>,
    /// Extension of the finished file, without the dot.
    #[serde(default)]
    pub ext: Option<String>,
    /// Client file name, returned in the finished upload's answer.
    #[serde(default)]
    pub filename: Option<String>,
    /// Metadata stored with the finished file.
    #[serde(default)]
    pub meta: Metadata,
    /// Seconds the unfinished upload lives; it is removed after that.
    pub expires_in: u64,
    /// Who created it (an opaque tag), to count a client's unfinished uploads.
    #[serde(default)]
    pub owner: Option<String>,
}

/// An appender file as its node describes it (the persisted state, minus internals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppenderInfo {
    /// Name on its node: store path as 2 hex digits, then 32 hex digits.
    pub name: String,
    /// Bytes durably written (every append is fsynced before this moves).
    pub offset: u64,
    /// Final length, once known.
    pub length: Option<u64>,
    /// Unix seconds after which the upload is removed.
    pub expires: u64,
    /// Client file name given at creation, if any.
    #[serde(default)]
    pub filename: Option<String>,
    /// Metadata the finished file gets.
    #[serde(default)]
    pub meta: Metadata,
    /// The ordinary file it became, once the last byte arrived.
    #[serde(default)]
    pub file: Option<UploadResult>,
}

/// `GET /v1/appender?owner=`: unfinished uploads of one owner on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppenderCount {
    /// Unfinished, unexpired uploads created with that owner tag.
    pub unfinished: u64,
}

/// Checksum algorithms of the tus checksum extension that are supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// `sha1`: 20-byte digest.
    Sha1,
    /// `md5`: 16-byte digest.
    Md5,
}

impl ChecksumAlgorithm {
    /// `Tus-Checksum-Algorithm` value.
    pub const SUPPORTED: &'static str = "sha1,md5";

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Md5 => 16,
        }
    }
}

/// A chunk's expected checksum (`Upload-Checksum: sha1 <base64>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// How the digest was computed.
    pub algorithm: ChecksumAlgorithm,
    /// The decoded digest, of the algorithm's length.
    pub digest: Vec<u8>,
}

/// Why an `Upload-Checksum` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// An algorithm other than sha1 and md5 (400).
    #[error("unsupported checksum algorithm {0:?} (supported: sha1, md5)")]
    Unsupported(String),
    /// No space between algorithm and digest, bad base64, or a digest of the wrong length (400).
    #[error("malformed checksum header: {0}")]
    Malformed(&'static str),
}

impl Checksum {
    /// Parse `<algorithm> <base64 digest>`.
    pub fn parse(value: &str) -> Result<Checksum, ChecksumError> {
        let (algo, digest) = value
            .trim()
            .split_once(' ')
            .ok_or(ChecksumError::Malformed(
                "expected \"<algorithm> <base64>\"",
            ))?;
        let algorithm = match algo.to_ascii_lowercase().as_str() {
            "sha1" => ChecksumAlgorithm::Sha1,
            "md5" => ChecksumAlgorithm::Md5,
            other => return Err(ChecksumError::Unsupported(other.to_owned())),
        };
        let digest = STANDARD
            .decode(digest.trim())
            .map_err(|_| ChecksumError::Malformed("digest is not base64"))?;
        if digest.len() != algorithm.digest_len() {
            return Err(ChecksumError::Malformed("digest has the wrong length"));
        }
        Ok(Checksum { algorithm, digest })
    }

    /// The header value (`sha1 <base64>`).
    pub fn header_value(&self) -> String {
        let algo = match self.algorithm {
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Md5 => "md5",
        };
        format!("{algo} {}", STANDARD.encode(&self.digest))
    }
}

/// Whether `name` is an appender name (`XX` store path + 32 lower-case hex digits); the only names that ever
/// become disk paths.
pub fn valid_name(name: &str) -> bool {
    name.len() == 34
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_and_round_trip() {
        let c = Checksum::parse("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(c.algorithm, ChecksumAlgorithm::Sha1);
        assert_eq!(c.header_value(), "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=");
        assert!(Checksum::parse("MD5 XrY7u+Ae7tCTyyK7j1rNww==").is_ok());
        assert!(matches!(
            Checksum::parse("crc32 AAAA"),
            Err(ChecksumError::Unsupported(_))
        ));
        assert!(Checksum::parse("sha1 !!").is_err());
        assert!(Checksum::parse("sha1 AAAA").is_err(), "wrong length");
        assert!(Checksum::parse("sha1").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("000123456789abcdef0123456789abcdef"));
        assert!(!valid_name("000123456789abcdef0123456789abcdeF"));
        assert!(!valid_name("../../etc/passwd"));
        assert!(!valid_name(""));
    }
}
