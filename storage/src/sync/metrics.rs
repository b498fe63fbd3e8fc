//! Replication metrics, through the `metrics` facade (rendered by the node's `/metrics`):
//! - `fdfs_sync_pending_records{peer}` / `fdfs_sync_lag_seconds{peer}` (gauges): records the peer has not
//!   acknowledged, and how far behind now its `synced_until` is;
//! - `fdfs_sync_records_total{peer,op}`, `fdfs_sync_bytes_total{peer}`, `fdfs_sync_rejected_total{peer}`;
//! - `fdfs_sync_replication_lag_seconds{peer}` (histogram): record time to acknowledgement by the peer;
//! - `fdfs_sync_replicas_received_total{created}` (`fdfs_sync_quorum_total{result}` is counted by
//!   [`crate::write`]);
//! - `fdfs_sync_syncing` (gauge, 1 while catching up), `fdfs_catchup_files_total`, `fdfs_catchup_bytes_total`,
//!   `fdfs_catchup_files_per_second`, `fdfs_catchup_bytes_per_second` (rate of the last catch-up).

use crate::store::binlog::Op;

use super::CatchupReport;

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Upload => "upload",
        Op::Delete => "delete",
        Op::Meta => "meta",
    }
}

pub(super) fn pending(peer: u32, records: u64, lag_secs: u64) {
    let peer = peer.to_string();
    metrics::gauge!("fdfs_sync_pending_records", "peer" => peer.clone()).set(records as f64);
    metrics::gauge!("fdfs_sync_lag_seconds", "peer" => peer).set(lag_secs as f64);
}

pub(super) fn syncing(on: bool) {
    metrics::gauge!("fdfs_sync_syncing").set(if on { 1.0 } else { 0.0 });
}

pub(super) fn pushed(peer: u32, op: Op, bytes: u64, record_ts: u64) {
    let peer = peer.to_string();
    metrics::counter!("fdfs_sync_records_total", "peer" => peer.clone(), "op" => op_name(op))
        .increment(1);
    if bytes > 0 {
        metrics::counter!("fdfs_sync_bytes_total", "peer" => peer.clone()).increment(bytes);
    }
    let lag = fdfs_common::time::unix_now().saturating_sub(record_ts);
    metrics::histogram!("fdfs_sync_replication_lag_seconds", "peer" => peer).record(lag as f64);
}

pub(super) fn rejected(peer: u32) {
    metrics::counter!("fdfs_sync_rejected_total", "peer" => peer.to_string()).increment(1);
}

pub(super) fn replica_received(created: bool) {
    let created = if created { "true" } else { "false" };
    metrics::counter!("fdfs_sync_replicas_received_total", "created" => created).increment(1);
}

pub(super) fn fetched(bytes: u64) {
    metrics::counter!("fdfs_catchup_files_total").increment(1);
    metrics::counter!("fdfs_catchup_bytes_total").increment(bytes);
}

pub(super) fn catchup_done(report: &CatchupReport) {
    metrics::gauge!("fdfs_catchup_files_per_second").set(report.files_per_second());
    metrics::gauge!("fdfs_catchup_bytes_per_second").set(report.megabytes_per_second() * 1e6);
}
