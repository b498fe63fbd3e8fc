//! Replay at start: the records of the binlog and the journal past the index's checkpoints are reconciled with
//! the files on disk (see the module doc of [`super`]): an upload whose file is in place is indexed, one whose
//! file is not is forgotten (never acknowledged), and an interrupted delete is finished unless the same ID was
//! uploaded again after it.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;

use fdfs_common::FileId;

use super::binlog::{Binlog, Op, Record};
use super::dedup::{content_key, hash_file};
use super::{Origin, Store};
use crate::error::Result;

/// Records of one log after `after`.
fn tail(log: &Arc<Binlog>, after: u64) -> Result<Vec<Record>> {
    let mut reader = log.reader(after);
    let mut out = Vec::new();
    loop {
        let batch = reader.next_batch(4096)?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

impl Store {
    /// Reconcile the index with the records past its checkpoints, then move the checkpoints to the end of the
    /// logs and flush. Blocking; runs in [`Store::open_with_blocking`] before anything else uses the store.
    pub(super) fn replay_blocking(&self) -> Result<()> {
        let mut tails = Vec::new();
        for origin in [Origin::Client, Origin::Peer] {
            let log = self.log(origin);
            // No checkpoint: an index written before checkpoints existed, flushed on every change.
            let after = self.checkpoint(origin)?.unwrap_or(log.last_seq());
            tails.push(tail(log, after)?);
        }
        let (mut indexed, mut forgotten, mut deleted) = (0u64, 0u64, 0u64);
        for (i, records) in tails.iter().enumerate() {
            let other: HashSet<&FileId> = tails[1 - i]
                .iter()
                .filter(|r| r.op == Op::Upload)
                .map(|r| &r.file_id)
                .collect();
            for (n, rec) in records.iter().enumerate() {
                match rec.op {
                    Op::Upload => {
                        if self.reconcile_upload(&rec.file_id)? {
                            indexed += 1;
                        } else {
                            forgotten += 1;
                        }
                    }
                    Op::Delete => {
                        let uploaded_again = other.contains(&rec.file_id)
                            || records[n + 1..]
                                .iter()
                                .any(|r| r.op == Op::Upload && r.file_id == rec.file_id);
                        if !uploaded_again && self.finish_delete(&rec.file_id)? {
                            deleted += 1;
                        }
                    }
                    Op::Meta => {}
                }
            }
        }
        self.set_checkpoints_to_end()?;
        super::dedup::persist(&self.index)?;
        self.recount()?;
        if indexed + forgotten + deleted > 0 {
            tracing::info!(
                indexed,
                forgotten,
                deleted,
                "replayed the records past the index checkpoint"
            );
        }
        Ok(())
    }

    /// Index the file of an upload record if it is in place (true), or drop a stale index entry (false).
    fn reconcile_upload(&self, id: &FileId) -> Result<bool> {
        let Ok((sp, path)) = self.locate(id) else {
            return Ok(false);
        };
        let id_str = id.to_string();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                if !sp.is_indexed(id)? {
                    let (hash, size) = hash_file(&path)?;
                    sp.index_add(&id_str, content_key(&hash, size), &[])?;
                }
                Ok(true)
            }
            _ => {
                sp.index_remove(&id_str)?;
                Ok(false)
            }
        }
    }

    /// Finish a recorded delete: unlink the file if it is still here. True when it was.
    fn finish_delete(&self, id: &FileId) -> Result<bool> {
        let Ok((sp, path)) = self.locate(id) else {
            return Ok(false);
        };
        let removed = self.unlink(sp, id, &path)?;
        if !removed {
            sp.index_remove(&id.to_string())?;
        }
        Ok(removed)
    }
}
