//! The small-upload path: a master file whose whole body fits in [`crate::sync::protocol::SMALL_BODY`] is read
//! into memory, its ID made from it at once, and then the local write and one `PUT /v1/replica/{id}` per peer of
//! the first round (body, metadata and incarnation together) run side by side, each a single blocking call on its
//! node. No stage/commit round trips, no per-chunk hand-offs between threads.

use bytes::Bytes;
use fdfs_common::wire::{MemberInfo, Metadata};
use fdfs_common::{FileId, FileName, NameInfo};

use super::Writes;
use crate::error::{Result, StorageError};
use crate::store::{Incoming, Origin, Stored};
use crate::sync::client;

/// The chunks of a small body as one buffer.
pub(super) fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut all = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        all.extend_from_slice(&c);
    }
    all.freeze()
}

impl Writes {
    /// The small-upload path of [`Writes::upload`] for a new master file.
    pub(super) async fn upload_small(
        &self,
        store_path: u8,
        ext: Option<&str>,
        source_id: u32,
        meta: Metadata,
        data: Bytes,
    ) -> Result<(Stored, u32)> {
        let store = self.store();
        store.store_path(store_path)?;
        let round = self.first_round();
        let (size, crc32) = (data.len() as u64, crc32fast::hash(&data));
        let now = fdfs_common::time::unix_now();
        let info = NameInfo {
            source_id,
            created: u32::try_from(now).unwrap_or(u32::MAX),
            size,
            crc32,
        };
        let (dir1, dir2) = store.pick_dirs();
        let id = FileId {
            group: store.group().clone(),
            store_path,
            dir1,
            dir2,
            name: FileName::generate(&info, ext)?,
        };
        // Every member gets the same mtime (the creation second, as in the ID).
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now);
        let gen = self.engine.tombstones().incarnation(&id);
        let local = {
            let (store, id, data, meta) = (store.clone(), id.clone(), data.clone(), meta.clone());
            tokio::task::spawn_blocking(move || {
                let incoming = Incoming {
                    mtime: Some(mtime),
                    meta,
                    origin: Origin::Client,
                };
                store.create_bytes_blocking(&id, &data, incoming)
            })
        };
        let peers = round.asked();
        let pushes = futures_util::future::join_all(
            peers
                .iter()
                .map(|p| client::put_bytes(&self.engine, p, &id, now, gen, &meta, data.clone())),
        );
        let (local, pushed) = tokio::join!(local, pushes);
        let local = match local.map_err(StorageError::from).and_then(|r| r) {
            Ok(()) => self.after_commit(&id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = local {
            if let StorageError::Conflict(msg) = e {
                // Another file has this ID (astronomically unlikely): leave it alone; the client may retry.
                return Err(StorageError::Unavailable(msg));
            }
            // Never acknowledged: take back the copies the peers made (best effort; a leftover would only be an
            // unreferenced file).
            let took: Vec<MemberInfo> = peers
                .iter()
                .zip(&pushed)
                .filter(|(_, r)| r.is_ok())
                .map(|(p, _)| p.clone())
                .collect();
            if !took.is_empty() {
                let (engine, tid) = (self.engine.clone(), id.clone());
                // Not cut at shutdown: each push has its deadline.
                self.engine
                    .background()
                    .spawn_draining("take back a replica", async move {
                        for peer in took {
                            let _ = client::push_delete(&engine, &peer, &tid).await;
                        }
                    });
            }
            return Err(e);
        }
        let mut took = Vec::new();
        let mut failed = Vec::new();
        for (peer, r) in peers.iter().zip(pushed) {
            match r {
                Ok(()) => took.push(peer.clone()),
                Err(e) => failed.push((peer.clone(), e)),
            }
        }
        let replicas = self.settle(&id, &round, took, failed).await?;
        Ok((Stored { id, size, crc32 }, replicas))
    }
}
