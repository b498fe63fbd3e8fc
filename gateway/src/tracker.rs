//! Client for the tracker peers: assignment, location and the cluster view, with fail-over.
//!
//! Trackers are equal peers. A request starts at the tracker that last answered and moves on to the next one
//! when a tracker cannot be reached, times out or answers 5xx (a tracker that just restarted may not have
//! heard any heartbeat yet). A 4xx or 507 answer is final. When every tracker is unreachable the request
//! fails with 503 `no_tracker`.
//!
//! Assignments for uploads that name no group and are at most [`BATCHED_MAX_SIZE`] come from a small queue
//! filled by `GET /v1/assign/batch` ([`ASSIGN_BATCH`] at a time, used in order, so placement is exactly the
//! tracker's round robin) and dropped after [`ASSIGN_TTL`]: one tracker round trip per batch instead of per
//! upload. A node that refuses an upload is dropped from the queue at once ([`TrackerClient::forget`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{Assignment, ClusterView, Locations, TrackerStatus};
use fdfs_common::{FileId, GroupName};
use serde::de::DeserializeOwned;

use crate::error::{GatewayError, Result};

/// The tracker peers this gateway talks to.
#[derive(Debug)]
pub struct TrackerClient {
    /// `host:port` of each tracker, in configured order.
    addrs: Vec<String>,
    /// Index of the tracker that answered last; requests start there.
    last_good: AtomicUsize,
    http: reqwest::Client,
    cluster_secret: Option<String>,
    /// Assignments fetched ahead, and when.
    ahead: tokio::sync::Mutex<(Instant, VecDeque<Assignment>)>,
}

/// Assignments fetched per `/v1/assign/batch`.
pub const ASSIGN_BATCH: usize = 16;
/// How long fetched assignments are used: a member that went offline or full is seen within this (plus the
/// tracker's own delay).
pub const ASSIGN_TTL: Duration = Duration::from_secs(1);
/// Uploads up to this size (or of unknown size) use fetched assignments, which the tracker made with room for
/// this size; larger ones ask with their own size.
pub const BATCHED_MAX_SIZE: u64 = 16 << 20;

impl TrackerClient {
    /// A client for `addrs`; each request to one tracker is bounded by `timeout`.
    pub fn new(
        addrs: Vec<String>,
        cluster_secret: Option<String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = fdfs_common::internal::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            addrs,
            last_good: AtomicUsize::new(0),
            http,
            cluster_secret,
            ahead: tokio::sync::Mutex::new((Instant::now(), VecDeque::new())),
        })
    }

    /// The configured tracker addresses.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Where to upload a file of about `size` bytes: the next fetched assignment when it may be used (see the
    /// module doc), else `GET /v1/assign`.
    pub async fn assign(&self, group: Option<&GroupName>, size: Option<u64>) -> Result<Assignment> {
        self.assign_excluding(group, size, &[]).await
    }

    /// [`TrackerClient::assign`] on any member but those in `exclude` (node ids that just turned the upload
    /// down); with an exclusion the tracker is always asked.
    pub async fn assign_excluding(
        &self,
        group: Option<&GroupName>,
        size: Option<u64>,
        exclude: &[u32],
    ) -> Result<Assignment> {
        if exclude.is_empty() && group.is_none() && size.is_none_or(|s| s <= BATCHED_MAX_SIZE) {
            let mut ahead = self.ahead.lock().await;
            if ahead.0.elapsed() > ASSIGN_TTL {
                ahead.1.clear();
            }
            if let Some(a) = ahead.1.pop_front() {
                return Ok(a);
            }
            let query = [
                ("count", ASSIGN_BATCH.to_string()),
                ("size", BATCHED_MAX_SIZE.to_string()),
            ];
            // Any failure (e.g. no room for the batch's size) falls back to asking for this upload alone.
            if let Ok(batch) = self
                .get::<Vec<Assignment>>("/v1/assign/batch", &query)
                .await
            {
                *ahead = (Instant::now(), batch.into());
                if let Some(a) = ahead.1.pop_front() {
                    return Ok(a);
                }
            }
        }
        self.assign_one(group, size, exclude).await
    }

    /// Drop fetched assignments to a node that turned an upload down.
    pub async fn forget(&self, addr: &str) {
        self.ahead.lock().await.1.retain(|a| a.addr != addr);
    }

    /// `GET /v1/assign`: where to upload a file of about `size` bytes, on a member not in `exclude`.
    async fn assign_one(
        &self,
        group: Option<&GroupName>,
        size: Option<u64>,
        exclude: &[u32],
    ) -> Result<Assignment> {
        let mut query = Vec::new();
        if !exclude.is_empty() {
            let ids: Vec<String> = exclude.iter().map(u32::to_string).collect();
            query.push(("exclude", ids.join(",")));
        }
        if let Some(g) = group {
            query.push(("group", g.to_string()));
        }
        if let Some(s) = size {
            query.push(("size", s.to_string()));
        }
        self.get("/v1/assign", &query).await
    }

    /// `GET /v1/locate/{file_id}`: the members that can serve a file, best first.
    pub async fn locate(&self, id: &FileId) -> Result<Locations> {
        let locations: Locations = self.get(&format!("/v1/locate/{id}"), &[]).await?;
        if locations.members.is_empty() {
            return Err(GatewayError::Upstream {
                status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
                code: "no_storage".into(),
                message: format!("no active storage member in group {}", id.group),
            });
        }
        Ok(locations)
    }

    /// `GET /cluster` asked of every tracker at once: the first answer in configured order is the view, and
    /// `trackers` says which trackers answered.
    pub async fn cluster(&self) -> Result<ClusterView> {
        let answers = futures_util::future::join_all(
            self.addrs
                .iter()
                .map(|addr| self.get_one::<ClusterView>(addr, "/cluster", &[])),
        )
        .await;
        let trackers = self
            .addrs
            .iter()
            .zip(&answers)
            .map(|(addr, a)| TrackerStatus {
                addr: addr.clone(),
                up: matches!(a, Attempt::Done(Ok(_))),
            })
            .collect();
        let mut first_error = None;
        for answer in answers {
            match answer {
                Attempt::Done(Ok(mut view)) => {
                    view.trackers = trackers;
                    return Ok(view);
                }
                Attempt::Done(Err(e)) | Attempt::Retry(e) => {
                    first_error.get_or_insert(e);
                }
                Attempt::Unreachable => {}
            }
        }
        Err(first_error.unwrap_or(GatewayError::NoTracker))
    }

    /// Tell every tracker that the storage node at `addr` answered nothing, not even its `/livez`
    /// (`POST /v1/suspect`): each probes it and, when it is silent there too, stops assigning it uploads and
    /// locates it last until it heartbeats again. Best effort.
    pub async fn report_suspect(&self, addr: &str) {
        futures_util::future::join_all(self.addrs.iter().map(|t| async move {
            let req = self
                .http
                .post(format!("http://{t}/v1/suspect"))
                .query(&[("addr", addr)])
                .secret(self.cluster_secret.as_deref());
            if let Err(e) = req.send().await.and_then(|r| r.error_for_status()) {
                tracing::debug!(tracker = %t, storage = addr, error = %e, "reporting an unresponsive node");
            }
        }))
        .await;
    }

    /// Whether any tracker answers (`GET /livez`), asked of all at once.
    pub async fn any_reachable(&self) -> bool {
        let answers = futures_util::future::join_all(
            self.addrs
                .iter()
                .map(|addr| self.get_one::<serde_json::Value>(addr, "/livez", &[])),
        )
        .await;
        answers.iter().any(|a| !matches!(a, Attempt::Unreachable))
    }

    /// GET `path` with fail-over across trackers.
    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let n = self.addrs.len();
        let start = self.last_good.load(Ordering::Relaxed) % n.max(1);
        let mut last_error = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match self.get_one(&self.addrs[idx], path, query).await {
                Attempt::Done(result) => {
                    self.last_good.store(idx, Ordering::Relaxed);
                    return result;
                }
                Attempt::Retry(e) => last_error = Some(e),
                Attempt::Unreachable => {}
            }
        }
        Err(last_error.unwrap_or(GatewayError::NoTracker))
    }

    /// One GET against one tracker.
    async fn get_one<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Attempt<T> {
        let req = crate::request_id::propagate(
            self.http.get(format!("http://{addr}{path}")).query(query),
        )
        .secret(self.cluster_secret.as_deref());
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(tracker = addr, error = %e, "tracker unreachable, trying the next one");
                return Attempt::Unreachable;
            }
        };
        let status = resp.status();
        if status.is_success() {
            return match resp.json::<T>().await {
                Ok(v) => Attempt::Done(Ok(v)),
                Err(e) => {
                    tracing::warn!(tracker = addr, error = %e, "bad answer from tracker");
                    Attempt::Retry(GatewayError::BadGateway("bad answer from tracker".into()))
                }
            };
        }
        let err = GatewayError::from_upstream("tracker", resp).await;
        if status.is_server_error() && status != reqwest::StatusCode::INSUFFICIENT_STORAGE {
            tracing::warn!(tracker = addr, %status, "tracker error, trying the next one");
            Attempt::Retry(err)
        } else {
            Attempt::Done(Err(err))
        }
    }
}

/// Outcome of asking one tracker.
enum Attempt<T> {
    /// A final answer (success or an error that another tracker would repeat).
    Done(Result<T>),
    /// An error another tracker might not have.
    Retry(GatewayError),
    /// Connection refused, timed out, reset.
    Unreachable,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on: bind, note the port, close.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        addr
    }

    #[tokio::test]
    async fn all_trackers_down_is_no_tracker() {
        let client = TrackerClient::new(
            vec![closed_port(), closed_port()],
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        let err = client.assign(None, Some(10)).await.unwrap_err();
        assert!(matches!(err, GatewayError::NoTracker), "{err:?}");
        assert_eq!(err.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        let view = client.cluster().await.unwrap_err();
        assert!(matches!(view, GatewayError::NoTracker), "{view:?}");
    }
}
