//! Heartbeats: every interval, report this node to EVERY tracker (space per store path, file count, sync state
//! from the replication hook) and keep the group's other members from the replies in [`Peers`]. A tracker that
//! is down is simply tried again next interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{Heartbeat, HeartbeatReply, MemberInfo};

use crate::AppState;

/// What the heartbeats learn about this node's standing, read by `/health` (see [`Status::not_ready`]).
#[derive(Debug, Default)]
pub struct Status {
    /// Random per run: tells the trackers a restart from a second process with this node id.
    pub instance: u64,
    /// A tracker says an operator drains this node.
    pub draining: AtomicBool,
    /// Unix milliseconds of the last heartbeat a tracker accepted (0: none yet).
    pub last_accepted_ms: AtomicU64,
    /// A store path that cannot be written or is full, as of the last heartbeat.
    pub store_problem: Mutex<Option<String>>,
    /// The write probe of each store path (by index).
    probes: Mutex<HashMap<u8, Arc<Mutex<Probe>>>>,
    /// Set on SIGTERM.
    pub stopping: fdfs_common::health::Stopping,
}

impl Status {
    /// A new run's status (a fresh random instance).
    pub fn new() -> Status {
        Status {
            instance: rand::random::<u64>() | 1,
            ..Status::default()
        }
    }

    /// Why this node cannot do its job now, if it cannot: the `/health` reason.
    pub fn not_ready(&self, interval: Duration, syncing: bool) -> Option<String> {
        if self.stopping.is_set() {
            return Some("stopping".into());
        }
        if self.draining.load(Ordering::Relaxed) {
            return Some(
                "draining: an operator takes this node out (fdfs monitor drain); no new uploads"
                    .into(),
            );
        }
        if let Some(p) = self
            .store_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Some(p);
        }
        let last = self.last_accepted_ms.load(Ordering::Relaxed);
        let now = unix_ms();
        // Three missed beats (at least 10 s): the trackers will soon take this node for offline.
        let window = (3 * interval).max(Duration::from_secs(10));
        if last == 0 {
            return Some("no tracker has accepted a heartbeat yet".into());
        }
        if now.saturating_sub(last) > u64::try_from(window.as_millis()).unwrap_or(u64::MAX) {
            return Some(format!(
                "no tracker reachable: the last heartbeat accepted was {} ms ago",
                now.saturating_sub(last)
            ));
        }
        if syncing {
            return Some(
                "catching up with its group (not offered for uploads or reads yet)".into(),
            );
        }
        None
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A tracker's answer to a heartbeat.
enum Answer {
    Accepted(HeartbeatReply),
    /// 409: another live member has this node's id or address; the tracker says when it could be gone.
    Refused {
        message: String,
        retry_after: Duration,
    },
    Failed(String),
}

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

/// The heartbeat loop; runs until told to stop (see [`crate::background`]), or returns why this node must not
/// run: every tracker refused it (another live node has its id or address) since it started, for longer than
/// the other could still be a member that just died.
pub async fn run(node: AppState) -> String {
    let interval = Duration::from_millis(node.config.heartbeat_interval_ms.max(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable: HashMap<String, bool> = HashMap::new();
    let mut accepted_once = false;
    let mut refused_since: Option<(Instant, Duration)> = None;
    loop {
        tick.tick().await;
        let refusal = beat(&node, interval, &mut reachable).await;
        accepted_once |= node.status.last_accepted_ms.load(Ordering::Relaxed) != 0;
        match refusal {
            Some((message, retry_after)) if !accepted_once => {
                let (since, wait) = *refused_since.get_or_insert((Instant::now(), retry_after));
                if since.elapsed() > wait + 2 * interval {
                    return message;
                }
            }
            _ => refused_since = None,
        }
    }
}

/// Tell every tracker this node stops (it is offline there at once, so nothing is sent here any more and it
/// can be removed without waiting for the heartbeat timeout). Best effort, bounded.
pub async fn leave(node: &AppState) {
    let path = format!(
        "/v1/members/{}/{}/leave?instance={}",
        node.group, node.node_id, node.status.instance
    );
    futures_util::future::join_all(node.config.trackers.iter().map(|t| {
        let rb = node
            .http
            .post(tracker_url(t, &path))
            .timeout(Duration::from_secs(2))
            .secret(node.config.cluster_secret.as_deref());
        async move {
            match rb.send().await.and_then(reqwest::Response::error_for_status) {
                Ok(_) => tracing::info!(tracker = %t, "told the tracker this node stops"),
                Err(e) => tracing::warn!(tracker = %t, error = %e, "could not tell the tracker this node stops"),
            }
        }
    }))
    .await;
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
        instance: node.status.instance,
    }
}

async fn send(node: &AppState, tracker: &str, hb: &Heartbeat, timeout: Duration) -> Answer {
    let rb = node
        .http
        .post(tracker_url(tracker, "/v1/heartbeat"))
        .timeout(timeout)
        .json(hb)
        .secret(node.config.cluster_secret.as_deref());
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    if resp.status() == reqwest::StatusCode::CONFLICT {
        let retry_after =
            fdfs_common::internal::header_u64(resp.headers(), reqwest::header::RETRY_AFTER)
                .map_or(Duration::from_secs(10), Duration::from_secs);
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("refused (409)")
            .to_owned();
        return Answer::Refused {
            message,
            retry_after,
        };
    }
    match resp.error_for_status() {
        Ok(r) => r
            .json()
            .await
            .map_or_else(|e| Answer::Failed(e.to_string()), Answer::Accepted),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// The write probe of one store path: at most one runs at a time (a hung disk holds one blocking thread, not
/// one per heartbeat).
#[derive(Debug, Default)]
struct Probe {
    /// When the probe under way started.
    running_since: Option<Instant>,
    /// Why the last finished probe failed: the write failed, or it took longer than `slow_disk_ms`.
    failed: Option<String>,
}

/// Mark each store path that cannot be written (a file written and fsynced in its `.fdfs` fails: a failing
/// disk, or one the kernel remounted read-only) or not in time (`slow_disk_ms`) as `failed`: the trackers then
/// assign it nothing. A probe is waited for up to half a heartbeat interval (a slow disk must not hold the
/// heartbeats back); one still running is left to finish, and reported as too slow once it has run longer than
/// `slow_disk_ms`.
async fn probe_store_paths(node: &AppState, stats: &mut [fdfs_common::wire::StorePathStat]) {
    let slow = Duration::from_millis(node.config.slow_disk_ms.max(1));
    let wait = slow.min(Duration::from_millis(
        node.config.heartbeat_interval_ms.max(2) / 2,
    ));
    for p in stats {
        let Some(root) = node.config.store_paths.get(usize::from(p.index)).cloned() else {
            continue;
        };
        let probe = Arc::clone(
            node.status
                .probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(p.index)
                .or_default(),
        );
        let started = {
            let mut st = probe.lock().unwrap_or_else(PoisonError::into_inner);
            match st.running_since {
                Some(_) => None,
                None => {
                    st.running_since = Some(Instant::now());
                    Some(Arc::clone(&probe))
                }
            }
        };
        if let Some(probe) = started {
            let run = tokio::task::spawn_blocking(move || {
                let t0 = Instant::now();
                let written = fdfs_common::state::check_writable(&root.join(".fdfs"), "store_path");
                let took = t0.elapsed();
                let mut st = probe.lock().unwrap_or_else(PoisonError::into_inner);
                st.running_since = None;
                st.failed = match written {
                    Err(e) => Some(e.to_string()),
                    Ok(()) if took > slow => Some(format!(
                        "store path {}: the disk is too slow: writing and syncing a small file took {} ms \
                         (slow_disk_ms = {})",
                        root.display(),
                        took.as_millis(),
                        slow.as_millis()
                    )),
                    Ok(()) => None,
                };
            });
            let _ = tokio::time::timeout(wait, run).await;
        }
        let st = probe.lock().unwrap_or_else(PoisonError::into_inner);
        p.failed = match st.running_since {
            Some(since) if since.elapsed() >= slow => Some(format!(
                "store path M{:02X}: the disk is too slow: a write probe has been waiting {} ms (slow_disk_ms = {})",
                p.index,
                since.elapsed().as_millis(),
                slow.as_millis()
            )),
            _ => st.failed.clone(),
        };
        if let Some(why) = &p.failed {
            tracing::error!(store_path = p.index, error = %why, "store path reported as failed to the trackers");
        }
    }
}

/// Whether every store path can be written and has room above the reserve; the first problem otherwise.
fn store_problem(node: &AppState, stats: &[fdfs_common::wire::StorePathStat]) -> Option<String> {
    if let Some(why) = stats.iter().find_map(|p| p.failed.clone()) {
        return Some(why);
    }
    stats.iter().find_map(|p| {
        let reserve = match node.config.reserved_storage_space {
            fdfs_common::config::Size::Bytes(b) => b,
            fdfs_common::config::Size::Percent(pct) => p.total_bytes / 100 * u64::from(pct),
        };
        (p.free_bytes <= reserve).then(|| {
            format!(
                "store path M{:02X} is full: {} bytes free, reserved_storage_space keeps {reserve}",
                p.index, p.free_bytes
            )
        })
    })
}

/// One round of heartbeats; returns a refusal (message, how long the other could still be a dead member) when
/// every tracker that answered refused this node.
async fn beat(
    node: &AppState,
    timeout: Duration,
    reachable: &mut HashMap<String, bool>,
) -> Option<(String, Duration)> {
    let mut hb = heartbeat(node).await;
    probe_store_paths(node, &mut hb.store_paths).await;
    *node
        .status
        .store_problem
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = store_problem(node, &hb.store_paths);
    let replies = futures_util::future::join_all(node.config.trackers.iter().map(|t| {
        let hb = &hb;
        async move { (t, send(node, t, hb, timeout).await) }
    }))
    .await;
    let mut merged: HashMap<u32, MemberInfo> = HashMap::new();
    let mut any = false;
    let mut draining = false;
    let mut refusal = None;
    for (tracker, reply) in replies {
        let was = reachable.insert(tracker.clone(), matches!(reply, Answer::Accepted(_)));
        match reply {
            Answer::Accepted(reply) => {
                any = true;
                draining |= reply.draining;
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
            Answer::Refused {
                message,
                retry_after,
            } => {
                tracing::error!(tracker = %tracker, "heartbeat refused: {message}");
                refusal = Some((message, retry_after));
            }
            Answer::Failed(e) => {
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
        node.status
            .last_accepted_ms
            .store(unix_ms(), Ordering::Relaxed);
        let was = node.status.draining.swap(draining, Ordering::Relaxed);
        if was != draining {
            tracing::warn!(draining, "drain changed by an operator");
        }
        return None;
    }
    refusal
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
