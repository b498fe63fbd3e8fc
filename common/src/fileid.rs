//! FastDFS-compatible file IDs: `{group}/M{idx:02X}/{XX}/{YY}/{name}{digits}{prefix}{.ext}`.
//!
//! This module owns parsing, validation and generation of IDs, and is the ONLY place that turns an ID into a
//! path on disk ([`FileId::relative_path`]). A request string never becomes a path without passing through
//! [`FileId::from_str`], which admits only a small alphabet, so `..`, slashes and NULs cannot get through.
//!
//! The 27-character name is URL-safe base64 (no padding) of 20 big-endian bytes:
//! `source node id (4) | create unix time (4) | size field (8) | CRC32 of content (4)`.
//! The size field follows FastDFS: for files under 4 GiB the high 32 bits are random with the top bit set and the
//! low 32 bits are the size, so two uploads of the same bytes in the same second still get different names;
//! larger files keep their whole size in the field, top bit clear.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Length of the encoded base64 part of a name.
pub const ENCODED_LEN: usize = 27;
/// Longest extension kept in an ID (FastDFS `FDFS_FILE_EXT_NAME_MAX_LEN`).
pub const MAX_EXT_LEN: usize = 6;
/// Longest slave prefix (FastDFS `FDFS_FILE_PREFIX_MAX_LEN`).
pub const MAX_PREFIX_LEN: usize = 16;
/// Longest group name (FastDFS `FDFS_GROUP_NAME_MAX_LEN`).
pub const MAX_GROUP_LEN: usize = 16;
/// Top bit of the size field: set when the high half holds random bits and the low half the size.
const RANDOM_MARK: u64 = 1 << 63;
/// Largest file size an ID can carry.
pub const MAX_FILE_SIZE: u64 = RANDOM_MARK - 1;

/// Why a string is not a valid file ID (or part of one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not five `/`-separated parts (the number found).
    #[error("file id must look like group/M00/XX/YY/name, got {0} parts")]
    Parts(usize),
    /// A bad group name.
    #[error("invalid group name {0:?}: 1-16 characters of A-Z a-z 0-9 _ -")]
    Group(String),
    /// A store path other than `M` and two upper-case hex digits.
    #[error("invalid store path {0:?}: expected M followed by two upper-case hex digits")]
    StorePath(String),
    /// A directory level other than two upper-case hex digits.
    #[error("invalid directory {0:?}: expected two upper-case hex digits")]
    Dir(String),
    /// A bad file name, with what is wrong with it.
    #[error("invalid file name {0:?}: {1}")]
    Name(String, &'static str),
    /// A bad extension.
    #[error("invalid extension {0:?}: 1-6 characters of A-Z a-z 0-9")]
    Ext(String),
    /// A bad slave prefix.
    #[error(
        "invalid slave prefix {0:?}: 1-16 characters of A-Z a-z 0-9 _ -, not starting with a digit"
    )]
    Prefix(String),
}

/// A validated group name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_GROUP_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(GroupName(s.to_owned()))
        } else {
            Err(IdError::Group(s.to_owned()))
        }
    }
}

impl TryFrom<String> for GroupName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<GroupName> for String {
    fn from(g: GroupName) -> String {
        g.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The facts encoded in the 27-character name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameInfo {
    /// Id of the storage node that first stored the file.
    pub source_id: u32,
    /// Creation time, unix seconds.
    pub created: u32,
    /// File size in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of the content.
    pub crc32: u32,
}

impl NameInfo {
    /// Encode with the given random high bits of the size field.
    pub fn encode(&self, random: u32) -> String {
        let mut raw = [0u8; 20];
        raw[0..4].copy_from_slice(&self.source_id.to_be_bytes());
        raw[4..8].copy_from_slice(&self.created.to_be_bytes());
        let field = match u32::try_from(self.size) {
            Ok(small) => RANDOM_MARK | (u64::from(random) << 32) | u64::from(small),
            Err(_) => self.size & MAX_FILE_SIZE,
        };
        raw[8..16].copy_from_slice(&field.to_be_bytes());
        raw[16..20].copy_from_slice(&self.crc32.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decode a 27-character name.
    pub fn decode(encoded: &str) -> Result<Self, IdError> {
        if encoded.len() != ENCODED_LEN {
            return Err(IdError::Name(
                encoded.to_owned(),
                "encoded part must be 27 characters",
            ));
        }
        let raw = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| {
            IdError::Name(encoded.to_owned(), "encoded part is not URL-safe base64")
        })?;
        if raw.len() != 20 {
            return Err(IdError::Name(
                encoded.to_owned(),
                "encoded part must hold 20 bytes",
            ));
        }
        let be4 = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let mut field = [0u8; 8];
        field.copy_from_slice(&raw[8..16]);
        Ok(NameInfo {
            source_id: be4(0),
            created: be4(4),
            size: match u64::from_be_bytes(field) {
                f if f & RANDOM_MARK != 0 => f & u64::from(u32::MAX),
                f => f,
            },
            crc32: be4(16),
        })
    }
}

/// The file name part of an ID (last path segment), validated and split into its pieces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName {
    full: String,
    /// Length of `encoded + digits`, i.e. the master part.
    master_len: usize,
    /// Byte range of the slave prefix, empty when this is not a slave file.
    prefix_len: usize,
}

fn valid_ext(ext: &str) -> bool {
    !ext.is_empty() && ext.len() <= MAX_EXT_LEN && ext.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Check a slave prefix such as `_150x150`.
pub fn validate_prefix(prefix: &str) -> Result<(), IdError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && !prefix.as_bytes()[0].is_ascii_digit()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdError::Prefix(prefix.to_owned()))
    }
}

/// Normalise a client-supplied extension (from a filename or a field): lower-cased, validated; `None` when the
/// input has no usable extension (a bad one is dropped rather than rejected, as FastDFS does).
pub fn ext_from_filename(filename: &str) -> Option<String> {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let (stem, ext) = base.rsplit_once('.')?;
    if stem.is_empty() {
        return None;
    }
    let ext = ext.to_ascii_lowercase();
    valid_ext(&ext).then_some(ext)
}

impl FileName {
    /// Generate a fresh master name.
    pub fn generate(info: &NameInfo, ext: Option<&str>) -> Result<Self, IdError> {
        let mut rng = rand::rng();
        let mut s = info.encode(rng.random::<u32>());
        let ext_len = ext.map_or(0, str::len);
        for _ in 0..MAX_EXT_LEN.saturating_sub(ext_len) {
            s.push(char::from(b'0' + rng.random_range(0..10u8)));
        }
        if let Some(ext) = ext {
            if !valid_ext(ext) {
                return Err(IdError::Ext(ext.to_owned()));
            }
            s.push('.');
            s.push_str(ext);
        }
        s.parse()
    }

    /// The name of a slave file of this (master) file: master part + prefix + ext.
    pub fn slave(&self, prefix: &str, ext: Option<&str>) -> Result<Self, IdError> {
        validate_prefix(prefix)?;
        let mut s = self.full[..self.master_len].to_owned();
        s.push_str(prefix);
        if let Some(ext) = ext {
            s.push('.');
            s.push_str(ext);
        }
        s.parse()
    }

    /// The whole name: encoded part, slave prefix and extension.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The 27-character encoded part.
    pub fn encoded(&self) -> &str {
        &self.full[..ENCODED_LEN]
    }

    /// Decoded facts of the encoded part.
    pub fn info(&self) -> NameInfo {
        NameInfo::decode(self.encoded()).expect("validated at parse time")
    }

    /// The part every slave of this master starts with (encoded part and random digits).
    pub fn master_part(&self) -> &str {
        &self.full[..self.master_len]
    }

    /// The slave prefix, if this is a slave file.
    pub fn prefix(&self) -> Option<&str> {
        (self.prefix_len > 0)
            .then(|| &self.full[self.master_len..self.master_len + self.prefix_len])
    }

    /// The extension without the dot.
    pub fn ext(&self) -> Option<&str> {
        let rest = &self.full[self.master_len + self.prefix_len..];
        rest.strip_prefix('.')
    }
}

impl FromStr for FileName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = |why| IdError::Name(s.to_owned(), why);
        if !s.is_ascii() || s.len() < ENCODED_LEN {
            return Err(bad("too short or not ASCII"));
        }
        NameInfo::decode(&s[..ENCODED_LEN])?;
        let rest = &s[ENCODED_LEN..];
        let (body, ext) = match rest.rsplit_once('.') {
            Some((body, ext)) => {
                if !valid_ext(ext) {
                    return Err(IdError::Ext(ext.to_owned()));
                }
                (body, Some(ext))
            }
            None => (rest, None),
        };
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        let prefix = &body[digits..];
        if prefix.is_empty() {
            // A master name has exactly 6 - len(ext) random digits; without an extension FastDFS pads to the
            // same 7 characters (7 digits), while names fdfs generates have 6: both are accepted.
            let expected = MAX_EXT_LEN.saturating_sub(ext.map_or(0, str::len));
            if digits != expected && !(ext.is_none() && digits == MAX_EXT_LEN + 1) {
                return Err(bad("wrong number of random digits"));
            }
        } else {
            // A slave keeps its master's digits, whose extension may have been another length (or none).
            if digits > MAX_EXT_LEN + 1 {
                return Err(bad("too many random digits"));
            }
            validate_prefix(prefix)?;
        }
        Ok(FileName {
            full: s.to_owned(),
            master_len: ENCODED_LEN + digits,
            prefix_len: prefix.len(),
        })
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// A complete, validated file ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Group whose members hold the file.
    pub group: GroupName,
    /// Index of the store path on the storage node (`M00` = 0).
    pub store_path: u8,
    /// First directory level under `data/` (`XX`).
    pub dir1: u8,
    /// Second directory level (`YY`).
    pub dir2: u8,
    /// File name inside that directory.
    pub name: FileName,
}

fn parse_hex2(s: &str) -> Option<u8> {
    let ok = s.len() == 2
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    if ok {
        u8::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

impl FileId {
    /// Path of the file relative to its store path root: `data/XX/YY/name`.
    pub fn relative_path(&self) -> PathBuf {
        let mut p = PathBuf::from("data");
        p.push(format!("{:02X}", self.dir1));
        p.push(format!("{:02X}", self.dir2));
        p.push(self.name.as_str());
        p
    }

    /// The ID without its group, `M00/XX/YY/name` (what FastDFS signs in anti-leech tokens).
    pub fn path_in_group(&self) -> String {
        format!(
            "M{:02X}/{:02X}/{:02X}/{}",
            self.store_path, self.dir1, self.dir2, self.name
        )
    }

    /// The ID of a slave file of this file, in the same directory.
    pub fn slave(&self, prefix: &str, ext: Option<&str>) -> Result<FileId, IdError> {
        Ok(FileId {
            name: self.name.slave(prefix, ext)?,
            ..self.clone()
        })
    }

    /// Decoded facts of the name.
    pub fn info(&self) -> NameInfo {
        self.name.info()
    }
}

impl FromStr for FileId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.strip_prefix('/').unwrap_or(s);
        let parts: Vec<&str> = s.split('/').collect();
        let [group, sp, d1, d2, name] = parts[..] else {
            return Err(IdError::Parts(parts.len()));
        };
        let store_path = sp
            .strip_prefix('M')
            .and_then(parse_hex2)
            .ok_or_else(|| IdError::StorePath(sp.to_owned()))?;
        Ok(FileId {
            group: group.parse()?,
            store_path,
            dir1: parse_hex2(d1).ok_or_else(|| IdError::Dir(d1.to_owned()))?,
            dir2: parse_hex2(d2).ok_or_else(|| IdError::Dir(d2.to_owned()))?,
            name: name.parse()?,
        })
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.path_in_group())
    }
}

impl Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> NameInfo {
        NameInfo {
            source_id: 0xC0A8_0001,
            created: 1_700_000_000,
            size: 123_456,
            crc32: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn generated_name_has_fastdfs_shape() {
        let name = FileName::generate(&sample(), Some("jpg")).unwrap();
        let s = name.as_str();
        assert_eq!(s.len(), 27 + 3 + 4, "{s}");
        assert!(s[27..30].bytes().all(|b| b.is_ascii_digit()));
        assert!(s.ends_with(".jpg"));
        assert_eq!(name.info(), sample());
        assert_eq!(name.ext(), Some("jpg"));
        assert_eq!(name.prefix(), None);
        let bare = FileName::generate(&sample(), None).unwrap();
        assert_eq!(bare.as_str().len(), 27 + 6);
        assert_eq!(bare.ext(), None);
    }

    #[test]
    fn decodes_a_real_fastdfs_name() {
        // A name of the shape FastDFS produces: 27 chars, 3 digits, .jpg
        let id: FileId = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
            .parse()
            .unwrap();
        let info = id.info();
        assert_eq!(info.source_id, u32::from_be_bytes([192, 168, 0, 3]));
        assert_eq!(info.created, 1_518_478_775);
        assert_eq!(info.size, 0x5ED3);
        assert_eq!(info.crc32, 0x1BE9_C774);
        assert_eq!(id.name.ext(), Some("jpg"));
    }

    #[test]
    fn accepts_fastdfs_names_without_extension() {
        // FastDFS pads a name without extension with 7 random digits (6 + the dot it did not need).
        let id: FileId = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q4190123"
            .parse()
            .unwrap();
        assert_eq!(id.name.ext(), None);
        assert_eq!(id.name.prefix(), None);
        assert_eq!(id.info().size, 0x5ED3);
        let slave = id.slave("_big", None).unwrap();
        assert_eq!(
            slave.name.as_str(),
            "wKgAA1qCJbeAQ3sLAABe0xvpx3Q4190123_big"
        );
        let back: FileId = slave.to_string().parse().unwrap();
        assert_eq!(back.name.prefix(), Some("_big"));
        assert!("group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q41901234"
            .parse::<FileId>()
            .is_err());
        // Uploaded to FastDFS 6.16 (`fdfs_upload_file`, content "hello fastdfs\n").
        let real: FileId = "group1/M00/00/00/wAACAmsPcvWACMaKAAAADg4Qul08238963"
            .parse()
            .unwrap();
        let info = real.info();
        assert_eq!(info.source_id, u32::from_be_bytes([192, 0, 2, 2]));
        assert_eq!(
            (info.size, info.crc32),
            (14, crc32fast::hash(b"hello fastdfs\n"))
        );
    }

    #[test]
    fn slave_names() {
        let id: FileId = "group1/M00/0A/FF/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
            .parse()
            .unwrap();
        let slave = id.slave("_150x150", Some("jpg")).unwrap();
        assert_eq!(
            slave.to_string(),
            "group1/M00/0A/FF/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419_150x150.jpg"
        );
        let back: FileId = slave.to_string().parse().unwrap();
        assert_eq!(back.name.prefix(), Some("_150x150"));
        assert_eq!(back.info(), id.info());
        assert!(id.slave("1bad", Some("jpg")).is_err());
        assert!(id.slave("a/b", Some("jpg")).is_err());
        assert!(id.slave("waytoolongprefix_x", Some("jpg")).is_err());
    }

    #[test]
    fn rejects_malformed_ids() {
        let bad = [
            "",
            "group1",
            "group1/M00/00/00",
            "group1/M00/00/00/../../etc/passwd",
            "group1/M00/00/00/..",
            "group1/m00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
            "group1/M0G/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
            "group1/M00/0a/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
            "group1/M00/00/000/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
            "gr oup/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q.jpg",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q4*9.jpg",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jp/g",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.toolong",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg/",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q4199999.jpg",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvp+3Q419.jpg",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpxé419.jpg",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg\0",
            "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419%2F.jpg",
            "a_very_long_group_name/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        ];
        for s in bad {
            assert!(s.parse::<FileId>().is_err(), "accepted {s:?}");
        }
    }

    #[test]
    fn extension_normalisation() {
        assert_eq!(ext_from_filename("photo.JPG").as_deref(), Some("jpg"));
        assert_eq!(ext_from_filename("dir/a.tar.gz").as_deref(), Some("gz"));
        assert_eq!(ext_from_filename(".bashrc"), None);
        assert_eq!(ext_from_filename("noext"), None);
        assert_eq!(ext_from_filename("x.verylongext"), None);
        assert_eq!(ext_from_filename("x.p%g"), None);
    }

    proptest! {
        #[test]
        fn name_round_trip(source_id: u32, created: u32, size in prop_oneof![0..=u64::from(u32::MAX), 0..=MAX_FILE_SIZE], crc32: u32, random: u32) {
            let info = NameInfo { source_id, created, size, crc32 };
            let enc = info.encode(random);
            prop_assert_eq!(enc.len(), ENCODED_LEN);
            prop_assert_eq!(NameInfo::decode(&enc).unwrap(), info);
        }

        #[test]
        fn id_round_trip(
            group in "[A-Za-z0-9_-]{1,16}",
            sp: u8, d1: u8, d2: u8,
            source_id: u32, created: u32, size in 0..=MAX_FILE_SIZE, crc32: u32,
            ext in proptest::option::of("[a-z0-9]{1,6}"),
            prefix in proptest::option::of("[A-Za-z_-][A-Za-z0-9_-]{0,15}"),
        ) {
            let info = NameInfo { source_id, created, size, crc32 };
            let mut name = FileName::generate(&info, ext.as_deref()).unwrap();
            if let Some(p) = &prefix {
                name = name.slave(p, ext.as_deref()).unwrap();
            }
            let id = FileId { group: group.parse().unwrap(), store_path: sp, dir1: d1, dir2: d2, name };
            let text = id.to_string();
            let back: FileId = text.parse().unwrap();
            prop_assert_eq!(&back, &id);
            prop_assert_eq!(back.to_string(), text);
            prop_assert_eq!(back.info(), info);
            prop_assert_eq!(back.name.ext(), ext.as_deref());
            prop_assert_eq!(back.name.prefix(), prefix.as_deref());
            let rel = back.relative_path();
            prop_assert!(rel.components().count() == 4);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<FileId>();
        }
    }
}
