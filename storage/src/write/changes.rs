//! Client deletes and metadata changes, from every door (HTTP `/v1`, the FastDFS door): made durable here and
//! recorded in the binlog (by [`SyncEngine`]), then taken by `write_quorum - 1` live peers before they are
//! acknowledged, as uploads are. A change held by this member alone would be undone if its disk were lost
//! before the sync workers carried it: the peers would copy the deleted file back, or keep the old metadata.
//!
//! Refused before anything changes (503 `quorum_unreachable`) when this node already knows it cannot reach the
//! quorum; 503 `unavailable` when the peers asked do not take it in time, and then the change stays here and the
//! workers carry it later (the client was not told it happened, so either outcome is allowed).

use std::future::Future;

use fdfs_common::wire::{MemberInfo, Metadata};
use fdfs_common::FileId;

use super::quorum::quorum;
use super::Writes;
use crate::error::{Result, StorageError};
use crate::store::MetaUpdate;
use crate::sync::client::{self, PushError};
use crate::sync::reach::Failure;
use crate::sync::{Slaves, SyncEngine};

impl Writes {
    /// Delete a file and the slaves `which` names; `None` when the file is not here, else the slaves deleted
    /// with it. Acknowledged once the write quorum has recorded the deletes. A file deleted here before (a
    /// client retrying a delete that was answered 503) is held by the quorum again before `None` is answered:
    /// "not found" then means "gone for good".
    pub async fn delete(&self, id: &FileId, which: Slaves) -> Result<Option<Vec<FileId>>> {
        self.quorum_check()?;
        let Some(slaves) = self.engine.delete_with(id, which).await? else {
            if self.engine.tombstones().is_deleted(id) {
                self.hold(id, "delete", |engine, peer| {
                    let id = id.clone();
                    async move { client::push_delete(&engine, &peer, &id).await }
                })
                .await?;
            }
            return Ok(None);
        };
        let gone: Vec<FileId> = slaves.iter().chain([id]).cloned().collect();
        self.hold(id, "delete", |engine, peer| {
            let gone = gone.clone();
            async move {
                for g in &gone {
                    client::push_delete(&engine, &peer, g).await?;
                }
                Ok(())
            }
        })
        .await?;
        Ok(Some(slaves))
    }

    /// Change a file's metadata; the metadata it has now. Acknowledged once the write quorum holds it.
    pub async fn set_meta(&self, id: &FileId, update: MetaUpdate) -> Result<Metadata> {
        self.quorum_check()?;
        let meta = self.engine.set_meta(id, update).await?;
        self.hold(id, "metadata change", |engine, peer| {
            let id = id.clone();
            async move { client::push_meta(&engine, &peer, &id).await }
        })
        .await?;
        Ok(meta)
    }

    /// Have `write_quorum - 1` live peers take a change of `id` made here (`push` sends it to one peer), those
    /// that answer first; 503 when too few do.
    async fn hold<F, Fut>(&self, id: &FileId, what: &str, push: F) -> Result<()>
    where
        F: Fn(SyncEngine, MemberInfo) -> Fut,
        Fut: Future<Output = std::result::Result<(), PushError>>,
    {
        let reach = self.engine.reach();
        let live = reach.order(self.engine.live_peers());
        let need = quorum(self.engine.config().write_quorum, live.len()) - 1;
        if need == 0 {
            tracing::debug!(file_id = %id, live = live.len(), "a {what} needs no peer: none is live");
            return Ok(());
        }
        // Peers that timed out lately would only hold the answer up (`quorum_check` made sure enough others are
        // left); those that refused connections lately are tried: they fail at once if still down.
        let candidates: Vec<MemberInfo> = live
            .iter()
            .filter(|p| reach.recent(p.node_id) != Some(Failure::TimedOut))
            .cloned()
            .collect();
        // A change is a small request: sent to every candidate at once, it is acknowledged as soon as the
        // quickest ones took it, and a peer frozen since it was last heard of costs nothing.
        let at_once = candidates.len();
        tracing::debug!(
            file_id = %id,
            live = live.len(),
            need,
            candidates = at_once,
            "holding a {what} on the write quorum"
        );
        let (ok, down) = self
            .reach_quorum(id, what, need, at_once, candidates, push)
            .await;
        tracing::debug!(file_id = %id, ok, down, "{what}: peers that took it");
        let need = self.still_needed(live.len(), down);
        if ok < need {
            return Err(StorageError::Unavailable(format!(
                "write quorum not reached: the {what} of {id} is held by {} of {} members; it stays here and \
                 will be replicated later",
                ok + 1,
                need + 1
            )));
        }
        Ok(())
    }
}
