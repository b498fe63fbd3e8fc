//! `fdfs monitor`: the cluster as `fdfs_monitor` shows it (groups, members, state, space, file counts, sync
//! lag), read from the gateway's `GET /cluster`; `--json` prints the view as is.
//!
//! `fdfs monitor delete GROUP NODE_ID --tracker T1,T2`: remove an offline member from every tracker (FastDFS's
//! `fdfs_monitor delete`), with the cluster secret (`FDFS_CLUSTER_SECRET`); its peers then stop keeping binlog
//! records for it.

use std::fmt::Write as _;

use fdfs_common::wire::{ClusterView, MemberInfo, MemberState};
use indicatif::HumanBytes;

use crate::client::Client;
use crate::error::{CliError, Result};

/// `fdfs monitor` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the raw JSON cluster view instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What to change; `None`: only show the cluster.
    #[command(subcommand)]
    pub action: Option<Action>,
}

/// `fdfs monitor` subcommands that change the cluster.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Remove an offline member from the group (on every tracker): its peers stop keeping binlog records for
    /// it. Refused while it is active or syncing. If it comes back it joins as a new member and catches up.
    Delete {
        /// Group of the member.
        group: String,
        /// Node id of the member.
        node_id: u32,
        /// Every tracker, `host:port` or URL, comma-separated.
        #[arg(long, env = "FDFS_TRACKER", value_delimiter = ',', required = true)]
        tracker: Vec<String>,
        /// Cluster secret the trackers require.
        #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<()> {
    if let Some(Action::Delete {
        group,
        node_id,
        tracker,
        cluster_secret,
    }) = args.action
    {
        return delete(&group, node_id, &tracker, cluster_secret.as_deref()).await;
    }
    let view = client.cluster().await?;
    if args.json {
        let s = serde_json::to_string_pretty(&view)
            .map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?;
        println!("{s}");
    } else {
        print!(
            "{}",
            render(client.base(), &view, fdfs_common::time::unix_now())
        );
    }
    Ok(())
}

/// `DELETE /v1/members/{group}/{node_id}` on every tracker; fails when any tracker refuses or is unreachable
/// (a tracker that does not know the member counts as done).
async fn delete(
    group: &str,
    node_id: u32,
    trackers: &[String],
    secret: Option<&str>,
) -> Result<()> {
    let http = reqwest::Client::new();
    let mut first_err = None;
    for t in trackers {
        let base = t.trim_end_matches('/');
        let url = if base.starts_with("http://") || base.starts_with("https://") {
            format!("{base}/v1/members/{group}/{node_id}")
        } else {
            format!("http://{base}/v1/members/{group}/{node_id}")
        };
        let mut rb = http.delete(&url);
        if let Some(s) = secret {
            rb = rb.header(fdfs_common::wire::CLUSTER_SECRET_HEADER, s);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(source) => {
                eprintln!("{t}: unreachable");
                first_err.get_or_insert(CliError::Http { url, source });
                continue;
            }
        };
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.is_success() {
            println!("{t}: member {node_id} removed from {group}");
        } else if status == reqwest::StatusCode::NOT_FOUND
            && body["error"]["code"] == "unknown_member"
        {
            println!("{t}: no member {node_id} in {group}");
        } else {
            let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
            eprintln!("{t}: {message} ({status})");
            first_err.get_or_insert(CliError::Api {
                status: status.as_u16(),
                code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
                message,
            });
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Active => "active",
        MemberState::Syncing => "syncing",
        MemberState::Offline => "offline",
    }
}

/// How far behind this member's peers are on its writes: "in sync", or pending records and age.
fn sync_lag(m: &MemberInfo, now: u64) -> String {
    let pending: u64 = m.sync.iter().map(|s| s.pending_records).sum();
    if pending == 0 {
        return "in sync".into();
    }
    let oldest = m
        .sync
        .iter()
        .filter(|s| s.pending_records > 0)
        .map(|s| s.synced_until)
        .min()
        .unwrap_or(0);
    if oldest == 0 {
        format!("{pending} pending")
    } else {
        format!("{pending} pending, {}s behind", now.saturating_sub(oldest))
    }
}

fn seen(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms ago")
    } else {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    }
}

/// The human-readable table.
pub fn render(gateway: &str, view: &ClusterView, now: u64) -> String {
    let mut out = String::new();
    let members: usize = view.groups.iter().map(|g| g.members.len()).sum();
    let active = view
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .filter(|m| m.state == MemberState::Active)
        .count();
    let _ = writeln!(out, "gateway  {gateway}");
    if !view.trackers.is_empty() {
        let t: Vec<String> = view
            .trackers
            .iter()
            .map(|t| format!("{} ({})", t.addr, if t.up { "up" } else { "DOWN" }))
            .collect();
        let _ = writeln!(out, "trackers {}", t.join(", "));
    }
    let _ = writeln!(
        out,
        "{} group(s), {members} storage node(s), {active} active\n",
        view.groups.len()
    );
    for g in &view.groups {
        let files: u64 = g.members.iter().map(|m| m.file_count).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "{}: free {} / total {}, {} member(s), {files} file(s)",
            g.name,
            HumanBytes(g.free_bytes),
            HumanBytes(g.total_bytes),
            g.members.len(),
        );
        let rows: Vec<[String; 8]> = g
            .members
            .iter()
            .map(|m| {
                [
                    m.node_id.to_string(),
                    m.addr.clone(),
                    state_name(m.state).to_owned(),
                    HumanBytes(m.free_bytes()).to_string(),
                    HumanBytes(m.total_bytes()).to_string(),
                    m.file_count.to_string(),
                    sync_lag(m, now),
                    seen(m.last_seen_ms),
                ]
            })
            .collect();
        let header = [
            "NODE",
            "ADDR",
            "STATE",
            "FREE",
            "TOTAL",
            "FILES",
            "SYNC",
            "LAST SEEN",
        ];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: &[&str]| {
            let mut s = String::from("  ");
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ");
                }
            }
            s.push('\n');
            s
        };
        out.push_str(&line(&header));
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdfs_common::wire::{GroupInfo, PeerSync, StorePathStat, TrackerStatus};

    #[test]
    fn table_shows_members_and_lag() {
        let member = |id, state, pending| MemberInfo {
            node_id: id,
            group: "group1".parse().unwrap(),
            addr: format!("127.0.0.1:{}", 9000 + id),
            public_url: format!("http://127.0.0.1:{}", 9000 + id),
            state,
            store_paths: vec![StorePathStat {
                index: 0,
                total_bytes: 10 << 30,
                free_bytes: 4 << 30,
            }],
            sync: vec![PeerSync {
                peer_id: 9,
                pending_records: pending,
                synced_until: 990,
            }],
            file_count: 12,
            last_seen_ms: 1500,
        };
        let view = ClusterView {
            groups: vec![GroupInfo {
                name: "group1".parse().unwrap(),
                free_bytes: 4 << 30,
                total_bytes: 10 << 30,
                members: vec![
                    member(1, MemberState::Active, 0),
                    member(2, MemberState::Syncing, 3),
                ],
            }],
            trackers: vec![TrackerStatus {
                addr: "127.0.0.1:8081".into(),
                up: true,
            }],
        };
        let t = render("http://127.0.0.1:8080", &view, 1000);
        assert!(t.contains("trackers 127.0.0.1:8081 (up)"), "{t}");
        assert!(t.contains("2 storage node(s), 1 active"), "{t}");
        assert!(t.contains("group1: free 4.00 GiB / total 10.00 GiB"), "{t}");
        assert!(t.contains("127.0.0.1:9002"), "{t}");
        assert!(t.contains("syncing"), "{t}");
        assert!(t.contains("3 pending, 10s behind"), "{t}");
        assert!(t.contains("in sync"), "{t}");
        assert!(t.contains("1.5s ago"), "{t}");
    }
}
