//! Room for replicas: a member refuses a replica that would eat into its reserved space with 507, before it
//! reads the body. The sender announces the size on its `HEAD` check ([`SIZE_HEADER`]), so a full member is
//! found without streaming anything; the `PUT` checks again (its `Content-Length`) for a race with other writes.
//! Metadata and deletes are small and are always taken: they may use the reserve (that is what it is for).
//! Refusals are counted in `fdfs_sync_replicas_refused_full_total`.

use fdfs_common::config::Size;
use fdfs_common::FileId;

use super::SyncEngine;
use crate::error::{Result, StorageError};

/// Size of the replica the sender is about to push, on `HEAD /v1/replica/{id}`.
pub const SIZE_HEADER: &str = "x-fdfs-size";

/// Bytes a store path of `total` bytes keeps free.
pub fn reserve_bytes(reserved: Size, total: u64) -> u64 {
    match reserved {
        Size::Bytes(b) => b,
        Size::Percent(pct) => {
            u64::try_from(u128::from(total) * u128::from(pct) / 100).unwrap_or(u64::MAX)
        }
    }
}

/// Whether `size` more bytes fit on a store path with `free` of `total` bytes left, keeping the reserve.
pub fn fits(size: u64, free: u64, total: u64, reserved: Size) -> bool {
    free.checked_sub(size)
        .is_some_and(|left| left >= reserve_bytes(reserved, total))
}

/// 507 when a replica of `size` bytes for `id` would not fit on its store path (keeping the reserve).
pub async fn ensure_room(engine: &SyncEngine, id: &FileId, size: u64) -> Result<()> {
    let (this, id) = (engine.clone(), id.clone());
    tokio::task::spawn_blocking(move || ensure_room_blocking(&this, &id, size)).await?
}

/// [`ensure_room`] in the calling (blocking) thread.
pub fn ensure_room_blocking(engine: &SyncEngine, id: &FileId, size: u64) -> Result<()> {
    let stats = engine.store.stats_blocking();
    let Some(path) = stats.iter().find(|p| p.index == id.store_path) else {
        return Ok(()); // an unknown store path is refused by the write itself
    };
    if fits(
        size,
        path.free_bytes,
        path.total_bytes,
        engine.config.reserved_storage_space,
    ) {
        Ok(())
    } else {
        metrics::counter!("fdfs_sync_replicas_refused_full_total").increment(1);
        tracing::warn!(
            file_id = %id,
            size,
            free = path.free_bytes,
            "refusing a replica: the store path is full (reserved space reached)"
        );
        Err(StorageError::InsufficientStorage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_must_leave_the_reserve_free() {
        const MIB: u64 = 1 << 20;
        assert!(fits(MIB, 3 * MIB, 100 * MIB, Size::Bytes(2 * MIB)));
        assert!(!fits(MIB + 1, 3 * MIB, 100 * MIB, Size::Bytes(2 * MIB)));
        assert!(!fits(4 * MIB, 3 * MIB, 100 * MIB, Size::Bytes(0)));
        // 10% of 100 MiB = 10 MiB reserved.
        assert!(fits(MIB, 11 * MIB, 100 * MIB, Size::Percent(10)));
        assert!(!fits(MIB, 10 * MIB, 100 * MIB, Size::Percent(10)));
    }
}
