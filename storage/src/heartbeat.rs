//! Heartbeats: every interval, report this node to EVERY tracker (space per store path, file count, sync state
//! from the replication hook) and keep the group's other members from the replies in [`Peers`]. A tracker that
//! is down is simply tried again next interval.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fdfs_common::wire::{Heartbeat, HeartbeatReply, MemberInfo, CLUSTER_SECRET_HEADER};

use crate::AppState;

/// The other members of this node's group, as the trackers last described them.
#[derive(Debug, Default)]
pub struct Peers(RwLock<Arc<Vec<MemberInfo>>>);

impl Peers {
    /// Current snapshot.
    pub fn get(&self) -> Arc<Vec<MemberInfo>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the list.
    pub fn set(&self, peers: Vec<MemberInfo>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(peers);
    }
}

/// URL of a tracker route; trackers are given as `host:port` or as a base URL.
fn tracker_url(tracker: &str, route: &str) -> String {
    let base = tracker.trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        format!("{base}{route}")
    } else {
        format!("http://{base}{route}")
    }
}

/// The heartbeat loop; runs until aborted.
pub async fn run(node: AppState) {
    let interval = Duration::from_millis(node.config.heartbeat_interval_ms.max(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable: HashMap<String, bool> = HashMap::new();
    loop {
        tick.tick().await;
        beat(&node, interval, &mut reachable).await;
    }
}

/// Build this node's heartbeat.
pub async fn heartbeat(node: &AppState) -> Heartbeat {
    let store_paths = match node.store.stats().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "reading store path space");
            Vec::new()
        }
    };
    for p in &store_paths {
        let path = format!("M{:02X}", p.index);
        metrics::gauge!("fdfs_store_path_free_bytes", "path" => path.clone())
            .set(p.free_bytes as f64);
        metrics::gauge!("fdfs_store_path_total_bytes", "path" => path).set(p.total_bytes as f64);
    }
    metrics::gauge!("fdfs_store_files").set(node.store.file_count() as f64);
    Heartbeat {
        node_id: node.node_id,
        group: node.group.clone(),
        addr: node.addr.clone(),
        public_url: node.public_url.clone(),
        // >>> REPLICATION HOOK (heartbeat): sync state comes from the replication engine.
        syncing: node.sync.syncing(),
        sync: node.sync.sync_status(),
        store_paths,
        file_count: node.store.file_count(),
        version: fdfs_common::VERSION.to_owned(),
        fastdfs_port: node.fastdfs_port,
    }
}

async fn send(
    node: &AppState,
    tracker: &str,
    hb: &Heartbeat,
    timeout: Duration,
) -> Result<HeartbeatReply, String> {
    let mut rb = node
        .http
        .post(tracker_url(tracker, "/v1/heartbeat"))
        .timeout(timeout)
        .json(hb);
    if let Some(secret) = &node.config.cluster_secret {
        rb = rb.header(CLUSTER_SECRET_HEADER, secret);
    }
    let resp = rb.send().await.map_err(|e| e.to_string())?;
    let resp = resp.error_for_status().map_err(|e| e.to_string())?;
    resp.json().await.map_err(|e| e.to_string())
}

async fn beat(node: &AppState, timeout: Duration, reachable: &mut HashMap<String, bool>) {
    let hb = heartbeat(node).await;
    let replies = futures_util::future::join_all(node.config.trackers.iter().map(|t| {
        let hb = &hb;
        async move { (t, send(node, t, hb, timeout).await) }
    }))
    .await;
    let mut merged: HashMap<u32, MemberInfo> = HashMap::new();
    let mut any = false;
    for (tracker, reply) in replies {
        let was = reachable.insert(tracker.clone(), reply.is_ok());
        match reply {
            Ok(reply) => {
                any = true;
                if was != Some(true) {
                    tracing::info!(tracker = %tracker, "tracker reachable");
                }
                for peer in reply.peers {
                    if peer.node_id == node.node_id {
                        continue;
                    }
                    match merged.get(&peer.node_id) {
                        Some(known) if known.last_seen_ms <= peer.last_seen_ms => {}
                        _ => {
                            merged.insert(peer.node_id, peer);
                        }
                    }
                }
            }
            Err(e) => {
                if was != Some(false) {
                    tracing::warn!(tracker = %tracker, error = %e, "heartbeat failed; will retry");
                }
            }
        }
    }
    if any {
        let mut peers: Vec<MemberInfo> = merged.into_values().collect();
        peers.sort_by_key(|p| p.node_id);
        node.peers.set(peers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_urls() {
        assert_eq!(
            tracker_url("127.0.0.1:22122", "/v1/heartbeat"),
            "http://127.0.0.1:22122/v1/heartbeat"
        );
        assert_eq!(
            tracker_url("http://t:1/", "/v1/heartbeat"),
            "http://t:1/v1/heartbeat"
        );
    }
}
