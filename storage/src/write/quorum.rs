//! The write quorum: how many members must hold an upload before it is acknowledged ([`quorum`], the one rule),
//! the early refusal of an upload that cannot reach it ([`Writes::quorum_check`]), and the pushes of a committed
//! file that make up for the peers of the first round that failed (`Writes::settle`, `Writes::push_quorum`).
//!
//! An upload goes to `write_quorum - 1` peers (active ones first, then members still catching up), capped by how
//! many are live: not offline and accepting connections. Peers that refused a connection lately are down and cap
//! the quorum like offline ones; peers whose transfers timed out lately (see [`crate::sync::reach`]) still count
//! but cannot take a replica now.

use std::future::Future;

use fdfs_common::wire::MemberInfo;
use fdfs_common::FileId;

use super::Writes;
use crate::error::{Result, StorageError};
use crate::sync::client::{self, PushError};
use crate::sync::reach::{Failure, Reach};
use crate::sync::SyncEngine;

/// Members (this node included) that must hold an upload before it is acknowledged: `write_quorum`, capped by
/// the members there are to hold it (this node and `live` peers).
pub fn quorum(write_quorum: u32, live: usize) -> usize {
    (write_quorum.max(1) as usize).min(live + 1)
}

/// Whether an upload can reach `write_quorum` among the `live` peers, by what `reach` remembers of them: those
/// that refused a connection lately are down and cap the quorum; those that timed out lately count but cannot
/// take the replica. The error says why not.
fn reachable(
    reach: &Reach,
    live: &[MemberInfo],
    write_quorum: u32,
) -> std::result::Result<(), String> {
    let mut up = 0;
    let mut usable = 0;
    for p in live {
        match reach.recent(p.node_id) {
            Some(Failure::Refused) => {}
            Some(Failure::TimedOut) => up += 1,
            None => {
                up += 1;
                usable += 1;
            }
        }
    }
    let need = quorum(write_quorum, up) - 1;
    if usable >= need {
        return Ok(());
    }
    Err(format!(
        "write quorum unreachable: {need} more member(s) must take each upload, {usable} of the {up} live \
         peer(s) can be reached now; the upload was not read"
    ))
}

/// `fdfs_sync_quorum_total{result}`: uploads that reached their quorum (`ok`) or not (`failed`).
fn count(reached: bool) {
    let result = if reached { "ok" } else { "failed" };
    metrics::counter!("fdfs_sync_quorum_total", "result" => result).increment(1);
}

/// The first round of an upload: the quorum now, and the live peers to reach it with.
pub(super) struct Round {
    quorum: usize,
    /// Live peers, best first, those that failed lately last.
    live: Vec<MemberInfo>,
}

impl Round {
    /// The peers asked first: `quorum - 1` of them.
    pub(super) fn asked(&self) -> &[MemberInfo] {
        &self.live[..self.quorum - 1]
    }
}

impl Writes {
    /// Refuse an upload before reading its body when this node already knows it cannot reach the write quorum
    /// (a live peer's transfers time out lately, see [`crate::sync::reach`]): 503 `quorum_unreachable`, which a
    /// gateway takes as a cue to send the same unread body to another member or group.
    pub fn quorum_check(&self) -> Result<()> {
        reachable(
            self.engine.reach(),
            &self.engine.live_peers(),
            self.engine.config().write_quorum,
        )
        .map_err(StorageError::QuorumUnreachable)
    }

    /// The first round of an upload now. Peers that failed lately go last: it starts with those that answer.
    pub(super) fn first_round(&self) -> Round {
        let live = self.engine.reach().order(self.engine.live_peers());
        Round {
            quorum: quorum(self.engine.config().write_quorum, live.len()),
            live,
        }
    }

    /// After the first round of an upload (`took` of the peers asked hold it, `failed` did not): reach the quorum
    /// with pushes to the other live peers, and say how many members hold the file, or 503 when they are too
    /// few.
    pub(super) async fn settle(
        &self,
        id: &FileId,
        round: &Round,
        took: Vec<MemberInfo>,
        failed: Vec<(MemberInfo, PushError)>,
    ) -> Result<u32> {
        let (reach, live) = (self.engine.reach(), &round.live);
        let need = round.quorum - 1;
        for peer in &took {
            reach.answered(peer.node_id);
        }
        let mut ok = took.len();
        if !took.is_empty() {
            self.engine.delivered(&took, id);
        }
        let mut down = 0;
        let mut retry = Vec::new();
        for (peer, e) in failed {
            tracing::warn!(peer = peer.node_id, file_id = %id, error = %e, "pipelined replica failed");
            match Failure::of(&e) {
                Some(how) => reach.failed(peer.node_id, how),
                None => retry.push(peer),
            }
            if matches!(e, PushError::Unreachable(_)) {
                down += 1;
            }
        }
        if ok < need {
            // Other live peers first (not those that timed out lately: they would only hold the answer up), then
            // those that failed for a reason a push may not hit again.
            let mut candidates: Vec<MemberInfo> = live[need..]
                .iter()
                .filter(|p| reach.recent(p.node_id) != Some(Failure::TimedOut))
                .cloned()
                .collect();
            candidates.extend(retry);
            let (more, more_down) = self.push_quorum(id, need - ok, candidates).await;
            ok += more;
            down += more_down;
        }
        // Members that refused the connection are down: the quorum is capped by the live ones.
        let need = self.still_needed(live.len(), down);
        count(ok >= need);
        if ok < need {
            return Err(StorageError::NotReplicated(
                id.clone(),
                format!(
                    "write quorum not reached: {} of {} members hold {id}; it will be replicated later",
                    ok + 1,
                    round.quorum
                ),
            ));
        }
        Ok(u32::try_from(ok + 1).unwrap_or(u32::MAX))
    }

    /// Push a file committed here (no first round: a finished appender file) to `write_quorum - 1` live peers.
    /// Returns how many members hold it and whether that is the quorum.
    pub(super) async fn push_committed(&self, id: &FileId) -> (u32, bool) {
        let live = self.engine.live_peers();
        let need = quorum(self.engine.config().write_quorum, live.len()) - 1;
        let (ok, down) = if need == 0 {
            (0, 0)
        } else {
            self.push_quorum(id, need, live.clone()).await
        };
        let still = self.still_needed(live.len(), down);
        if need > 0 {
            count(ok >= still);
        }
        (u32::try_from(ok + 1).unwrap_or(u32::MAX), ok >= still)
    }

    /// Peers that must hold an upload when `down` of the `live` ones refused the connection (they are down even
    /// if no tracker noticed yet).
    pub(super) fn still_needed(&self, live: usize, down: usize) -> usize {
        quorum(self.engine.config().write_quorum, live - down.min(live)) - 1
    }

    /// Push a committed file to `need` of the `candidates`, in order, the next one standing in for each that
    /// fails. Returns how many took it and how many could not be connected to at all (those are down even if the
    /// tracker has not noticed yet: they are not live).
    async fn push_quorum(
        &self,
        id: &FileId,
        need: usize,
        candidates: Vec<MemberInfo>,
    ) -> (usize, usize) {
        let id = id.clone();
        self.reach_quorum(
            &id,
            "synchronous replica",
            need,
            need,
            candidates,
            |engine, peer| {
                let id = id.clone();
                async move { client::push_upload(&engine, &peer, &id).await.map(|_| ()) }
            },
        )
        .await
    }

    /// Have `need` of the `candidates` take a change of `id` (`push` sends it to one peer; it must be
    /// idempotent): `at_once` of them first (at least `need`), in order, the next one standing in for each that
    /// fails; done once `need` took it (the pushes still running are dropped: the sync workers carry the change
    /// there). Returns how many took it and how many could not be connected to at all (down, even if no tracker
    /// noticed yet: not live).
    pub(super) async fn reach_quorum<F, Fut>(
        &self,
        id: &FileId,
        what: &str,
        need: usize,
        at_once: usize,
        candidates: Vec<MemberInfo>,
        push: F,
    ) -> (usize, usize)
    where
        F: Fn(SyncEngine, MemberInfo) -> Fut,
        Fut: Future<Output = std::result::Result<(), PushError>>,
    {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut candidates = candidates.into_iter();
        let mut running = FuturesUnordered::new();
        let push = &push;
        let send = |peer: MemberInfo| {
            let engine = self.engine.clone();
            async move {
                let mut r = push(engine.clone(), peer.clone()).await;
                // A transport error on a live peer is most often a pooled connection the peer had just closed
                // as idle: one immediate retry on a fresh connection.
                if matches!(r, Err(PushError::Retry(_))) {
                    r = push(engine.clone(), peer.clone()).await;
                }
                engine.reach().record(peer.node_id, &r);
                (peer, r)
            }
        };
        for peer in candidates.by_ref().take(at_once.max(need)) {
            running.push(send(peer));
        }
        let (mut ok, mut down) = (0, 0);
        while let Some((peer, result)) = running.next().await {
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    if matches!(e, PushError::Unreachable(_)) {
                        down += 1;
                    }
                    tracing::warn!(peer = peer.node_id, file_id = %id, error = %e, "{what} failed");
                    if let Some(next) = candidates.next() {
                        running.push(send(next));
                    }
                }
            }
            if ok >= need {
                break;
            }
        }
        (ok, down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::reach::tests::peer;

    #[test]
    fn the_quorum_is_capped_by_the_members_there_are() {
        assert_eq!(quorum(2, 3), 2);
        assert_eq!(quorum(3, 1), 2, "this node and its one live peer");
        assert_eq!(quorum(0, 5), 1, "this node always holds its uploads");
    }

    #[test]
    fn a_timed_out_peer_blocks_the_quorum_and_a_refusing_one_caps_it() {
        let r = Reach::default();
        let live = vec![peer(1), peer(2)];
        assert!(reachable(&r, &live, 2).is_ok());
        r.failed(1, Failure::TimedOut);
        // Peer 2 still takes the replica for a quorum of 2; not for 3.
        assert!(reachable(&r, &live, 2).is_ok());
        assert!(reachable(&r, &live, 3).is_err());
        r.failed(2, Failure::TimedOut);
        assert!(reachable(&r, &live, 2).is_err());
        assert!(reachable(&r, &live, 1).is_ok(), "no peer needed");
        // Refused connections mean down: the quorum is capped by the live ones.
        r.failed(1, Failure::Refused);
        r.failed(2, Failure::Refused);
        assert!(reachable(&r, &live, 3).is_ok());
        r.answered(1);
        r.answered(2);
        assert!(reachable(&r, &live, 3).is_ok());
        assert_eq!(r.recent(1), None);
    }
}
