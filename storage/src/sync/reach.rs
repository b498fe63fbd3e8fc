//! What this node has learned about reaching each peer from its own replica traffic (upload pipelines, quorum
//! pushes, the sync workers), before any tracker notices anything:
//!
//! - a peer that **refused** a connection is down: like an offline member it is not live, and the write quorum
//!   is capped by the live members;
//! - a peer whose transfer **timed out** or stalled (a partition, a frozen process) is live but cannot take a
//!   replica now.
//!
//! Each fact is kept for [`MEMORY`] after the failure that taught it and forgotten at the first request the
//! peer answers. The sync workers keep trying pending records and probe an idle peer every second or so
//! ([`super::client::probe`]), so a partition is noticed before an upload needs the peer, and a healed peer
//! soon after it heals. With it a node refuses an upload that cannot reach its quorum before reading the body
//! ([`crate::write::Writes::quorum_check`]), so the gateway can send the same body elsewhere, and puts peers that
//! just failed last in its pipelines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fdfs_common::wire::MemberInfo;

use super::client::PushError;

/// How long a failure is remembered when nothing newer is heard from the peer.
pub const MEMORY: Duration = Duration::from_secs(30);

/// How a request to a peer failed, as far as reaching it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused: the peer is down.
    Refused,
    /// No answer in time (connect or transfer timeout, stalled body).
    TimedOut,
}

impl Failure {
    /// `refused` or `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::TimedOut => "timed_out",
        }
    }

    /// What a failed push says about reaching the peer (`None`: nothing, e.g. it answered 5xx or 507).
    pub fn of(e: &PushError) -> Option<Failure> {
        match e {
            PushError::Unreachable(_) => Some(Failure::Refused),
            PushError::TimedOut(_) => Some(Failure::TimedOut),
            _ => None,
        }
    }
}

/// How often one peer is reported to the trackers as unresponsive at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Recent failures by peer id; peers that timed out are also sent to the reporter (the engine tells the
/// trackers, which probe them and take a frozen one offline before their heartbeat timeout).
#[derive(Debug, Default)]
pub struct Reach {
    failures: Mutex<HashMap<u32, (Failure, Instant)>>,
    reported: Mutex<HashMap<u32, Instant>>,
    reporter: Mutex<Option<tokio::sync::mpsc::UnboundedSender<u32>>>,
}

impl Reach {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Failure, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send peers that time out to `tx` (at most every [`REPORT_EVERY`] per peer).
    pub fn report_to(&self, tx: tokio::sync::mpsc::UnboundedSender<u32>) {
        *self.reporter.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    fn report(&self, peer: u32) {
        {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if reported
                .get(&peer)
                .is_some_and(|at| at.elapsed() < REPORT_EVERY)
            {
                return;
            }
            reported.insert(peer, Instant::now());
        }
        if let Some(tx) = &*self.reporter.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(peer);
        }
    }

    /// Record the outcome of a request to `peer`: success forgets its failures, a failure that says something
    /// about reaching it is remembered.
    pub fn record<T>(&self, peer: u32, result: &Result<T, PushError>) {
        match result {
            Ok(_) => self.answered(peer),
            Err(e) => {
                if let Some(how) = Failure::of(e) {
                    self.failed(peer, how);
                }
            }
        }
    }

    /// `peer` answered a request.
    pub fn answered(&self, peer: u32) {
        if self.lock().remove(&peer).is_some() {
            tracing::info!(peer, "peer answers again");
        }
    }

    /// A request to `peer` failed in a way that says it cannot be reached.
    pub fn failed(&self, peer: u32, how: Failure) {
        if how == Failure::TimedOut {
            self.report(peer);
        }
        let before = self.lock().insert(peer, (how, Instant::now()));
        if before.map(|(h, _)| h) != Some(how) {
            tracing::warn!(peer, failure = ?how, "peer cannot be reached");
        }
    }

    /// The failure remembered for `peer`, if it is recent.
    pub fn recent(&self, peer: u32) -> Option<Failure> {
        let mut map = self.lock();
        match map.get(&peer) {
            Some((how, at)) if at.elapsed() < MEMORY => Some(*how),
            Some(_) => {
                map.remove(&peer);
                None
            }
            None => None,
        }
    }

    /// Live peers (best first) reordered so that those that failed recently come last, stable otherwise.
    pub fn order(&self, mut live: Vec<MemberInfo>) -> Vec<MemberInfo> {
        live.sort_by_key(|p| self.recent(p.node_id).is_some());
        live
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fdfs_common::wire::MemberState;

    /// An active member with id `id`.
    pub(crate) fn peer(id: u32) -> MemberInfo {
        MemberInfo {
            node_id: id,
            group: "group1".parse().unwrap(),
            addr: format!("127.0.0.1:{id}"),
            public_url: format!("http://127.0.0.1:{id}"),
            state: MemberState::Active,
            store_paths: Vec::new(),
            sync: Vec::new(),
            file_count: 0,
            last_seen_ms: 0,
            draining: false,
        }
    }

    #[test]
    fn peers_that_failed_go_last() {
        let r = Reach::default();
        r.failed(1, Failure::TimedOut);
        let order: Vec<u32> = r
            .order(vec![peer(1), peer(2), peer(3)])
            .iter()
            .map(|p| p.node_id)
            .collect();
        assert_eq!(order, vec![2, 3, 1]);
    }
}
