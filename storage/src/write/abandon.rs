//! Upload attempts a gateway gave up on, so that they leave no orphan.
//!
//! A gateway that stops waiting for a node (frozen, cut off mid-answer, past its deadline) sends the upload,
//! whose body it still holds, to another node, and the client is told that node's file ID. The node it left
//! may still read the whole request from its socket once it runs again and store the file under an ID no
//! client knows: durable, replicated, never served under another ID, but taking space for good (FastDFS has the
//! same leak and no collector). So every storage attempt carries an ID ([`ATTEMPT_HEADER`]), and a gateway that
//! gives one up tells the node (`POST /v1/abandon/{attempt}`, retried until answered). The node remembers
//! abandoned and stored attempts for [`REMEMBER`]:
//! - an abandon that arrives first makes the upload refused before its body is read, or, if it was being
//!   written, removed as soon as it is stored;
//! - an abandon that arrives after the upload was stored removes the file.
//!
//! The file is removed by a recorded delete (binlog and tombstone), so the peers it was replicated to follow.
//! Both sides decide under one lock, so exactly one of them sees the other. What this cannot catch: a gateway
//! that dies before its abandon is answered, and an abandon that arrives after [`REMEMBER`]; see
//! docs/RELIABILITY.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fdfs_common::FileId;

use super::Writes;
use crate::error::{Result, StorageError};
use crate::sync::Slaves;

/// Header naming the gateway's attempt on an upload (1-64 characters of `A-Z a-z 0-9 - _`).
pub const ATTEMPT_HEADER: &str = "x-fdfs-attempt";

/// How long an attempt's fate is remembered (longer than a gateway keeps trying to abandon one).
pub const REMEMBER: Duration = Duration::from_secs(30 * 60);

/// Attempts remembered at most; the oldest are forgotten first beyond that.
const MAX_REMEMBERED: usize = 200_000;

/// What became of an attempt.
#[derive(Debug, Clone)]
enum Fate {
    /// The gateway gave it up.
    Abandoned,
    /// It stored this file.
    Stored(FileId),
}

/// Attempts' fates, by attempt ID.
#[derive(Debug, Default)]
pub struct Attempts {
    known: Mutex<HashMap<String, (Fate, Instant)>>,
}

impl Attempts {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (Fate, Instant)>) -> T) -> T {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut known)
    }

    /// Remember `fate` for `attempt`, forgetting what is older than [`REMEMBER`] (and the oldest beyond
    /// [`MAX_REMEMBERED`]).
    fn remember(known: &mut HashMap<String, (Fate, Instant)>, attempt: &str, fate: Fate) {
        let now = Instant::now();
        if known.len() >= MAX_REMEMBERED {
            known.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
            while known.len() >= MAX_REMEMBERED {
                let oldest = known
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => known.remove(&k),
                    None => break,
                };
            }
        }
        known.insert(attempt.to_owned(), (fate, now));
    }

    /// Whether `attempt` was given up.
    pub fn abandoned(&self, attempt: &str) -> bool {
        self.with(|k| matches!(k.get(attempt), Some((Fate::Abandoned, _))))
    }

    /// `attempt` stored `id`: `true` when that stands, `false` when it was given up meanwhile (then the caller
    /// removes the file).
    fn stored(&self, attempt: &str, id: &FileId) -> bool {
        self.with(|k| {
            if matches!(k.get(attempt), Some((Fate::Abandoned, _))) {
                return false;
            }
            Self::remember(k, attempt, Fate::Stored(id.clone()));
            true
        })
    }

    /// `attempt` is given up: the file it stored, if it stored one (the caller removes it).
    fn abandon(&self, attempt: &str) -> Option<FileId> {
        self.with(|k| {
            let stored = match k.get(attempt) {
                Some((Fate::Stored(id), _)) => Some(id.clone()),
                _ => None,
            };
            Self::remember(k, attempt, Fate::Abandoned);
            stored
        })
    }
}

/// The attempt ID an upload names in [`ATTEMPT_HEADER`]; 400 when it is malformed.
pub fn attempt_of(headers: &axum::http::HeaderMap) -> Result<Option<String>> {
    let Some(v) = headers.get(ATTEMPT_HEADER) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if valid(s) => Ok(Some(s.to_owned())),
        _ => Err(StorageError::BadRequest(format!(
            "{ATTEMPT_HEADER} must be 1-64 characters of A-Z a-z 0-9 - _"
        ))),
    }
}

/// Whether `attempt` is a well-formed attempt ID.
pub fn valid(attempt: &str) -> bool {
    (1..=64).contains(&attempt.len())
        && attempt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Writes {
    /// Before an upload's body is read: 409 when its gateway gave the attempt up already.
    pub fn attempt_wanted(&self, attempt: Option<&str>) -> Result<()> {
        match attempt {
            Some(a) if self.attempts.abandoned(a) => Err(gone(a)),
            _ => Ok(()),
        }
    }

    /// After an upload stored `id`: the file stands unless its gateway gave the attempt up meanwhile; then
    /// the file is removed and 409 answered.
    pub async fn attempt_stored(&self, attempt: Option<&str>, id: &FileId) -> Result<()> {
        let Some(a) = attempt else {
            return Ok(());
        };
        if self.attempts.stored(a, id) {
            return Ok(());
        }
        self.remove_orphan(a, id).await;
        Err(gone(a))
    }

    /// The gateway gave `attempt` up: remove what it stored, or make sure it stores nothing. The file removed,
    /// if any.
    pub async fn abandon(&self, attempt: &str) -> Option<FileId> {
        let id = self.attempts.abandon(attempt)?;
        self.remove_orphan(attempt, &id).await;
        Some(id)
    }

    /// Delete a file no client was told of (recorded, so the peers it reached follow).
    async fn remove_orphan(&self, attempt: &str, id: &FileId) {
        metrics::counter!("fdfs_storage_orphans_removed_total").increment(1);
        match self.engine.delete_with(id, Slaves::Rendered).await {
            Ok(_) => {
                tracing::info!(file_id = %id, attempt, "removed the file of an abandoned upload")
            }
            Err(e) => {
                tracing::warn!(file_id = %id, attempt, error = %e, "could not remove the file of an abandoned upload");
            }
        }
    }
}

fn gone(attempt: &str) -> StorageError {
    StorageError::Conflict(format!(
        "upload attempt {attempt} was abandoned by its gateway; nothing is stored"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> FileId {
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
            .parse()
            .unwrap()
    }

    #[test]
    fn an_abandon_before_the_store_refuses_it_and_one_after_returns_the_file() {
        let a = Attempts::default();
        assert!(a.abandon("x").is_none());
        assert!(a.abandoned("x"));
        assert!(!a.stored("x", &id()), "stored after the abandon: removed");
        assert!(a.stored("y", &id()));
        assert!(!a.abandoned("y"));
        assert_eq!(a.abandon("y"), Some(id()));
        assert!(a.abandon("y").is_none(), "removed once");
    }

    #[test]
    fn attempt_ids_are_checked() {
        assert!(valid("a-Z_09"));
        assert!(!valid(""));
        assert!(!valid(&"a".repeat(65)));
        assert!(!valid("a/b"));
    }
}
