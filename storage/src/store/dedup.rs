//! The dedup index: per store path, a content key (BLAKE3 hash + size) maps to the IDs holding that content, and
//! each ID back to its key.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

pub(super) fn content_key(hash: &[u8; 32], size: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(hash);
    key[32..].copy_from_slice(&size.to_be_bytes());
    key
}

pub(super) fn parse_list(v: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(v)
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((*h.finalize().as_bytes(), size))
}
