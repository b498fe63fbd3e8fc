//! The dedup index: per store path, a content key (BLAKE3 hash + size) maps to the IDs holding that content, and
//! each ID back to its key.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use fdfs_common::FileId;

use super::StorePath;
use crate::error::Result;

/// What the index says about a content key, checked against the disk.
#[derive(Debug, Default)]
pub(super) struct Holders {
    /// IDs whose file is here with the right size, with their disk path.
    pub live: Vec<(String, PathBuf)>,
    /// IDs whose file is gone or changed.
    pub stale: Vec<String>,
}

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

impl StorePath {
    /// IDs indexed under `key`: those whose file is still here with the right size, as (ID, disk path), and the
    /// stale ones (dropped when the next ID is added).
    pub(super) fn holders(&self, key: &[u8; 40], size: u64) -> Result<Holders> {
        let mut holders = Holders::default();
        if let Some(v) = self.hashes.get(key)? {
            for holder in parse_list(&v) {
                let Ok(hid) = holder.parse::<FileId>() else {
                    continue;
                };
                let hpath = self.root.join(hid.relative_path());
                match fs::metadata(&hpath) {
                    Ok(m) if m.is_file() && m.len() == size => holders.live.push((holder, hpath)),
                    _ => holders.stale.push(holder),
                }
            }
        }
        Ok(holders)
    }

    /// Index `id` under `key` (atomic per key, no lock, never flushed here), dropping the `stale` entries.
    /// True when `id` was not indexed before.
    pub(super) fn index_add(&self, id: &str, key: [u8; 40], stale: &[String]) -> Result<bool> {
        self.hashes.fetch_and_update(key, |old| {
            let mut list = old.map(parse_list).unwrap_or_default();
            list.retain(|h| !stale.contains(h));
            if !list.iter().any(|h| h == id) {
                list.push(id.to_owned());
            }
            Some(list.join("\n").into_bytes())
        })?;
        Ok(self.ids.insert(id.as_bytes(), &key[..])?.is_none())
    }

    /// Drop `id` from the index. True when it was indexed.
    pub(super) fn index_remove(&self, id: &str) -> Result<bool> {
        let Some(key) = self.ids.remove(id.as_bytes())? else {
            return Ok(false);
        };
        self.hashes.fetch_and_update(&key, |old| {
            let list: Vec<String> = old
                .map(parse_list)
                .unwrap_or_default()
                .into_iter()
                .filter(|h| h != id)
                .collect();
            (!list.is_empty()).then(|| list.join("\n").into_bytes())
        })?;
        Ok(true)
    }
}
