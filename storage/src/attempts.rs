//! Upload attempts the gateway gave up on. The gateway stops waiting for a node that answers nothing (frozen:
//! SIGSTOP, a stalled VM) and sends the body to another node; the frozen one still holds that upload in its
//! socket buffers and, once it runs again, may store it: a file nobody was told of (an orphan). Each attempt
//! carries a random id ([`fdfs_common::wire::UPLOAD_ATTEMPT_HEADER`]); the gateway tells the node which
//! attempts it abandoned (`POST /v1/abandon/{attempt}`, retried until the node answers) and the node deletes
//! what such an attempt stored, whichever of the two comes first: the abandon is remembered for an upload
//! still under way, and the upload deleted as it commits.
//!
//! What this cannot catch: an attempt abandoned because the node crashed after storing the file and before
//! answering (the memory here is lost with the process); such a file is whole, durable and replicated, only
//! unreferenced.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fdfs_common::FileId;

/// How long attempts are remembered: well past the gateway's retries of an abandon (10 minutes).
const REMEMBER: Duration = Duration::from_secs(15 * 60);
/// At most this many attempts are remembered of each kind (the oldest go first).
const MAX_REMEMBERED: usize = 200_000;

/// Recent upload attempts: what each stored, and which the gateway abandoned.
#[derive(Debug, Default)]
pub struct Attempts {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Attempt -> the file it stored.
    stored: HashMap<String, FileId>,
    /// Attempts abandoned by a gateway, with no file stored yet.
    abandoned: HashMap<String, Instant>,
    /// Every remembered attempt in arrival order, for forgetting the old ones.
    order: VecDeque<(Instant, String)>,
}

impl Inner {
    fn forget_old(&mut self, now: Instant) {
        while let Some((at, attempt)) = self.order.front() {
            let too_many = self.order.len() > 2 * MAX_REMEMBERED;
            if now.duration_since(*at) < REMEMBER && !too_many {
                break;
            }
            self.stored.remove(attempt);
            self.abandoned.remove(attempt);
            self.order.pop_front();
        }
    }
}

impl Attempts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attempt `attempt` stored `id`. True when the gateway already abandoned it: the caller deletes the file.
    pub fn stored(&self, attempt: &str, id: &FileId) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.forget_old(now);
        if inner.abandoned.remove(attempt).is_some() {
            return true;
        }
        inner.stored.insert(attempt.to_owned(), id.clone());
        inner.order.push_back((now, attempt.to_owned()));
        false
    }

    /// A gateway abandoned `attempt`: the file it stored, if it did (the caller deletes it); if it has not
    /// (yet), [`Attempts::stored`] will say so when it does.
    pub fn abandon(&self, attempt: &str) -> Option<FileId> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.forget_old(now);
        if let Some(id) = inner.stored.remove(attempt) {
            return Some(id);
        }
        inner.abandoned.insert(attempt.to_owned(), now);
        inner.order.push_back((now, attempt.to_owned()));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> FileId {
        format!("group1/M00/00/00/{}", fdfs_common::fileid::tests_support_name(n))
            .parse()
            .unwrap()
    }

    #[test]
    fn an_abandoned_attempt_loses_its_file_whether_the_abandon_comes_first_or_last() {
        let a = Attempts::default();
        // Stored, then abandoned: the abandon names the file.
        assert!(!a.stored("x", &id(1)));
        assert_eq!(a.abandon("x"), Some(id(1)));
        // Abandoned, then stored: the store is told to delete it.
        assert_eq!(a.abandon("y"), None);
        assert!(a.stored("y", &id(2)));
        // Other attempts are left alone, and each answer is given once.
        assert!(!a.stored("z", &id(3)));
        assert_eq!(a.abandon("x"), None);
        assert_eq!(a.abandon("w"), None);
        assert!(!a.stored("v", &id(4)));
    }
}
