//! Reading a FastDFS store path: which files it holds, what their names say, and their metadata.
//!
//! FastDFS keeps a file at `<store path>/data/XX/YY/<name>` (`XX`, `YY` two upper-case hex digits) and its
//! metadata next to it in `<name>-m`: records separated by `\x01`, each `key\x02value`. The name is the file ID's
//! last part. Anything else under `data/` (FastDFS's own state: `sync/`, `.data_init_flag`, binlogs, stats) is
//! not a stored file and is not looked at.
//!
//! What cannot be imported, and why ([`Refusal`]):
//! - names that are not FastDFS file names ([`Refusal::BadName`]); trunk blobs (`000001`: many small files packed
//!   in one, addressed by IDs longer than any file name here) ([`Refusal::Trunk`]);
//! - appender files: their name records size 0 and the CRC32 at creation, not what the file holds now
//!   ([`Refusal::Appender`]);
//! - master files whose size or CRC32 differ from their name ([`Refusal::SizeMismatch`], [`Refusal::BadCrc`]);
//! - files or metadata that cannot be read ([`Refusal::Unreadable`]), metadata that is not UTF-8
//!   ([`Refusal::BadMetadata`]).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fdfs_common::wire::Metadata;
use fdfs_common::{FileId, FileName, GroupName};

/// Suffix of FastDFS metadata files.
pub const META_SUFFIX: &str = "-m";
/// Separator of metadata records.
const RECORD_SEP: u8 = 0x01;
/// Separator of a record's key and value.
const FIELD_SEP: u8 = 0x02;
/// Bit of a name's size field that marks an appender file (FastDFS `FDFS_APPENDER_FILE_SIZE`, 2^58).
const APPENDER_MARK: u64 = 1 << 58;
/// Bit of a name's size field that marks a file inside a trunk (FastDFS `FDFS_TRUNK_FILE_MARK_SIZE`, 2^59).
const TRUNK_MARK: u64 = 1 << 59;
/// Top bit of the size field: its high half is random, its low half the size.
const RANDOM_MARK: u64 = 1 << 63;

/// Why a file of the store path is not imported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Not a FastDFS file name.
    BadName(String),
    /// A trunk blob or a name that points into one.
    Trunk,
    /// An appender file.
    Appender,
    /// Size differs from the size in the name.
    SizeMismatch {
        /// Size encoded in the name.
        name: u64,
        /// Size of the file on disk.
        file: u64,
    },
    /// CRC32 differs from the CRC32 in the name.
    BadCrc {
        /// CRC32 encoded in the name.
        name: u32,
        /// CRC32 of the file's content.
        file: u32,
    },
    /// The file or its metadata could not be read.
    Unreadable(String),
    /// The metadata file is not FastDFS's format in UTF-8.
    BadMetadata(String),
    /// The cluster refused the file (its answer).
    Server(String),
}

impl Refusal {
    /// Short category for the summary.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::BadName(_) => "name does not decode",
            Refusal::Trunk => "trunk file (not supported)",
            Refusal::Appender => "appender file (name does not describe the content)",
            Refusal::SizeMismatch { .. } => "size differs from the name",
            Refusal::BadCrc { .. } => "CRC32 differs from the name",
            Refusal::Unreadable(_) => "unreadable",
            Refusal::BadMetadata(_) => "bad metadata file",
            Refusal::Server(_) => "refused by the cluster",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadName(why)
            | Refusal::Unreadable(why)
            | Refusal::BadMetadata(why)
            | Refusal::Server(why) => write!(f, "{}: {why}", self.kind()),
            Refusal::SizeMismatch { name, file } => {
                write!(
                    f,
                    "{}: name says {name} bytes, file has {file}",
                    self.kind()
                )
            }
            Refusal::BadCrc { name, file } => write!(
                f,
                "{}: name says {name:08x}, content has {file:08x}",
                self.kind()
            ),
            Refusal::Trunk | Refusal::Appender => f.write_str(self.kind()),
        }
    }
}

/// One candidate file found in the store path.
#[derive(Debug, Clone)]
pub struct Found {
    /// Path on disk.
    pub path: PathBuf,
    /// The file's size on disk (0 when it could not be read).
    pub size: u64,
    /// Modification time, unix seconds.
    pub mtime: Option<u64>,
    /// The ID it gets, or why it does not get one.
    pub id: Result<FileId, Refusal>,
}

/// The 64-bit size field of an encoded name (before FastDFS's random bits are masked off).
fn size_field(name: &FileName) -> Option<u64> {
    let raw = URL_SAFE_NO_PAD.decode(name.encoded()).ok()?;
    Some(u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?))
}

/// The ID of the file named `name` in `XX/YY` of store path `index`, or why it is refused (name checks only).
pub fn classify(
    group: &GroupName,
    index: u8,
    dir1: u8,
    dir2: u8,
    name: &str,
) -> Result<FileId, Refusal> {
    if name.len() == 6 && name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Trunk);
    }
    let parsed: FileName = name
        .parse()
        .map_err(|e: fdfs_common::IdError| Refusal::BadName(e.to_string()))?;
    let field = size_field(&parsed).ok_or_else(|| Refusal::BadName("not base64".into()))?;
    if field & RANDOM_MARK != 0 && field & TRUNK_MARK != 0 {
        return Err(Refusal::Trunk);
    }
    if field & RANDOM_MARK != 0 && field & APPENDER_MARK != 0 {
        return Err(Refusal::Appender);
    }
    Ok(FileId {
        group: group.clone(),
        store_path: index,
        dir1,
        dir2,
        name: parsed,
    })
}

/// Parse a FastDFS metadata file: `key\x02value` records separated by `\x01`. A record without `\x02` is a key
/// with an empty value; empty records are skipped.
pub fn parse_metadata(bytes: &[u8]) -> Result<Metadata, Refusal> {
    let mut meta = Metadata::new();
    for record in bytes.split(|b| *b == RECORD_SEP) {
        if record.is_empty() {
            continue;
        }
        let (key, value) = match record.iter().position(|b| *b == FIELD_SEP) {
            Some(i) => (&record[..i], &record[i + 1..]),
            None => (record, &[][..]),
        };
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| Refusal::BadMetadata("not UTF-8".into()))
        };
        meta.insert(text(key)?, text(value)?);
    }
    Ok(meta)
}

/// Read the metadata stored next to `path` (`<path>-m`), empty when there is none.
pub fn read_metadata(path: &Path) -> Result<Metadata, Refusal> {
    let mut meta_path = path.as_os_str().to_owned();
    meta_path.push(META_SUFFIX);
    match std::fs::read(&meta_path) {
        Ok(bytes) => parse_metadata(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Metadata::new()),
        Err(e) => Err(Refusal::Unreadable(format!(
            "{}: {e}",
            PathBuf::from(meta_path).display()
        ))),
    }
}

fn hex2(s: &str) -> Option<u8> {
    let ok = s.len() == 2
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    ok.then(|| u8::from_str_radix(s, 16).ok()).flatten()
}

/// Sorted subdirectories of `dir` whose names are two upper-case hex digits.
fn hex_dirs(dir: &Path) -> std::io::Result<Vec<(u8, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(n) = entry.file_name().to_str().and_then(hex2) else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Walk `<root>/data/XX/YY/`, in order, calling `each` with every candidate file (metadata files excluded).
/// Symlinks are followed to files (FastDFS can store slave files as links). Stops early when `each` returns
/// false. Blocking.
pub fn walk(
    root: &Path,
    group: &GroupName,
    index: u8,
    mut each: impl FnMut(Found) -> bool,
) -> std::io::Result<()> {
    let data = root.join("data");
    for (d1, p1) in hex_dirs(&data)? {
        for (d2, p2) in hex_dirs(&p1)? {
            let mut names: Vec<(String, PathBuf)> = Vec::new();
            for entry in std::fs::read_dir(&p2)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                names.push((name, entry.path()));
            }
            names.sort();
            for (name, path) in names {
                if name.ends_with(META_SUFFIX) {
                    continue;
                }
                let found = match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => Found {
                        size: m.len(),
                        mtime: m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs()),
                        id: classify(group, index, d1, d2, &name),
                        path,
                    },
                    Ok(_) => continue,
                    Err(e) => Found {
                        size: 0,
                        mtime: None,
                        id: Err(Refusal::Unreadable(e.to_string())),
                        path,
                    },
                };
                if !each(found) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdfs_common::NameInfo;

    fn group() -> GroupName {
        "group1".parse().unwrap()
    }

    fn name_with_field(field: u64, crc: u32) -> String {
        let mut raw = [0u8; 20];
        raw[0..4].copy_from_slice(&[192, 168, 1, 10]);
        raw[4..8].copy_from_slice(&1_600_000_000u32.to_be_bytes());
        raw[8..16].copy_from_slice(&field.to_be_bytes());
        raw[16..20].copy_from_slice(&crc.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    #[test]
    fn names_are_classified() {
        let info = NameInfo {
            source_id: u32::from_be_bytes([192, 168, 1, 10]),
            created: 1_600_000_000,
            size: 5,
            crc32: crc32fast::hash(b"hello"),
        };
        let master = format!("{}123.jpg", info.encode(0x12));
        let id = classify(&group(), 0, 0x0A, 0xFF, &master).unwrap();
        assert_eq!(id.to_string(), format!("group1/M00/0A/FF/{master}"));
        // A slave keeps its name; no extension means 7 digits in FastDFS.
        let slave = format!("{}123_150x150.jpg", info.encode(0x12));
        assert_eq!(
            classify(&group(), 1, 0, 0, &slave).unwrap().name.prefix(),
            Some("_150x150")
        );
        let bare = format!("{}1234567", info.encode(0x12));
        assert!(classify(&group(), 0, 0, 0, &bare).is_ok());

        assert_eq!(classify(&group(), 0, 0, 0, "000001"), Err(Refusal::Trunk));
        assert!(matches!(
            classify(&group(), 0, 0, 0, "notes.txt"),
            Err(Refusal::BadName(_))
        ));
        let appender = format!(
            "{}123.log",
            name_with_field(RANDOM_MARK | APPENDER_MARK | (7 << 32), 9)
        );
        assert_eq!(
            classify(&group(), 0, 0, 0, &appender),
            Err(Refusal::Appender)
        );
        let trunk = format!(
            "{}123.log",
            name_with_field(RANDOM_MARK | TRUNK_MARK | 5, 9)
        );
        assert_eq!(classify(&group(), 0, 0, 0, &trunk), Err(Refusal::Trunk));
        // Over 4 GiB the field is the plain size: no flags to read.
        let big = format!("{}123.iso", name_with_field(5 << 32, 9));
        assert!(classify(&group(), 0, 0, 0, &big).is_ok());
    }

    #[test]
    fn metadata_records() {
        let m = parse_metadata(b"width\x02800\x01height\x02600\x01empty\x02\x01flag").unwrap();
        assert_eq!(m["width"], "800");
        assert_eq!(m["height"], "600");
        assert_eq!(m["empty"], "");
        assert_eq!(m["flag"], "");
        assert_eq!(m.len(), 4);
        assert!(parse_metadata(b"").unwrap().is_empty());
        assert!(matches!(
            parse_metadata(b"k\x02\xff\xfe"),
            Err(Refusal::BadMetadata(_))
        ));
    }
}
