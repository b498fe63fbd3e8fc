//! `GET /dashboard`: the cluster for people, a self-contained HTML page (inline CSS and JS, no external assets)
//! that polls `GET /dashboard/stats` every few seconds.
//!
//! `/dashboard/stats` is the tracker's `ClusterView` plus, for each storage node that answered, its request
//! counters read from the node's Prometheus `/metrics` (uploads received, downloads served); the page turns
//! successive counters into rates. A node whose metrics do not come within [`METRICS_TIMEOUT`] is left out:
//! the page never waits on a dead member, and its state comes from the tracker's heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::IntoResponse;
use axum::Json;
use fdfs_common::wire::ClusterView;
use serde::Serialize;

use crate::error::Result;
use crate::App;

/// The page, compiled in.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// How long the gateway waits for one node's `/metrics`.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest `/metrics` body read from a node.
const METRICS_MAX_BYTES: usize = 4 << 20;

/// `GET /dashboard`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
}

/// Request counters of one storage node since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounters {
    /// Uploads the node accepted (`POST /v1/upload` answered 2xx).
    pub uploads: u64,
    /// Downloads the node served (`GET` of a file answered 200 or 206).
    pub downloads: u64,
}

/// `GET /dashboard/stats` answer.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Gateway time of the snapshot, unix milliseconds (rates are computed between two snapshots).
    pub time_ms: u64,
    pub cluster: ClusterView,
    /// Counters by node id (as a string key), for the nodes whose metrics could be read.
    pub nodes: BTreeMap<String, NodeCounters>,
}

/// `GET /dashboard/stats`.
pub async fn stats(State(app): State<Arc<App>>) -> Result<Json<Stats>> {
    let cluster = app.tracker.cluster().await?;
    let members: Vec<(u32, String)> = cluster
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .map(|m| (m.node_id, m.addr.clone()))
        .collect();
    let reads = members.iter().map(|(id, addr)| {
        let app = app.clone();
        async move { (*id, node_counters(&app, addr).await) }
    });
    let nodes = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .filter_map(|(id, c)| Some((id.to_string(), c?)))
        .collect();
    Ok(Json(Stats {
        time_ms: unix_now_ms(),
        cluster,
        nodes,
    }))
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One node's counters, or None when it does not answer in time.
async fn node_counters(app: &App, addr: &str) -> Option<NodeCounters> {
    let url = format!("http://{addr}/metrics");
    let read = async {
        let resp = app
            .storage
            .fetch(Method::GET, &url, HeaderMap::new())
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        if resp
            .content_length()
            .is_some_and(|n| n > METRICS_MAX_BYTES as u64)
        {
            return None;
        }
        let body = resp.bytes().await.ok()?;
        (body.len() <= METRICS_MAX_BYTES).then(|| counters(&String::from_utf8_lossy(&body)))
    };
    match tokio::time::timeout(METRICS_TIMEOUT, read).await {
        Ok(c) => c,
        Err(_) => {
            tracing::debug!(storage = addr, "metrics not read in time");
            None
        }
    }
}

/// Sum the storage node's `fdfs_http_requests_total` series into upload and download counts.
fn counters(text: &str) -> NodeCounters {
    let mut c = NodeCounters::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("fdfs_http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |key: &str| label_value(labels, key);
        if label("role").is_some_and(|r| r != "storage") {
            continue;
        }
        let (method, route, status) = (label("method"), label("route"), label("status"));
        let ok = status.is_some_and(|s| s.starts_with('2'));
        // Counters are whole numbers rendered as floats.
        let n = value as u64;
        match (method, route) {
            (Some("POST"), Some("/v1/upload")) if ok => c.uploads += n,
            (Some("GET"), Some("/{*path}")) if ok => c.downloads += n,
            _ => {}
        }
    }
    c
}

/// The value of `key="..."` in a Prometheus label set (label values here never contain quotes).
fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_uploads_and_downloads_from_prometheus_text() {
        let text = r#"# TYPE fdfs_http_requests_total counter
fdfs_http_requests_total{role="storage",method="POST",route="/v1/upload",status="200"} 7
fdfs_http_requests_total{role="storage",method="POST",route="/v1/upload",status="507"} 2
fdfs_http_requests_total{role="storage",method="GET",route="/{*path}",status="200"} 10
fdfs_http_requests_total{role="storage",method="GET",route="/{*path}",status="206"} 3
fdfs_http_requests_total{role="storage",method="GET",route="/{*path}",status="404"} 5
fdfs_http_requests_total{role="storage",method="GET",route="/health",status="200"} 100
fdfs_http_requests_total{role="gateway",method="POST",route="/v1/upload",status="200"} 50
fdfs_store_files 4
"#;
        assert_eq!(
            counters(text),
            NodeCounters {
                uploads: 7,
                downloads: 13
            }
        );
        assert_eq!(counters("garbage\n{}"), NodeCounters::default());
    }
}
