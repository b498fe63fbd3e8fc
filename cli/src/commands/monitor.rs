//! `fdfs monitor`: the cluster as `fdfs_monitor` shows it (groups, members, state, space, file counts, sync
//! lag), read from the gateway's `GET /cluster`; `--json` prints the view as is.
//!
//! `fdfs monitor delete GROUP NODE_ID --tracker T1,T2`: remove an offline member from every tracker (FastDFS's
//! `fdfs_monitor delete`), with the cluster secret (`FDFS_CLUSTER_SECRET`); its peers then stop keeping binlog
//! records for it. A member stopped cleanly is offline at once.
//!
//! `fdfs monitor drain GROUP NODE_ID --tracker T1,T2`: take a member out before removing it: every tracker stops
//! giving it uploads (it still serves reads), then the command waits until the other active members of its
//! group hold every file it holds (its binlog pushed, their listings checked) and says so. `undrain` undoes it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{ClusterView, MemberInfo, MemberState};
use indicatif::HumanBytes;
use reqwest::Method;

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

/// A member, and how to reach every tracker.
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    /// Group of the member.
    pub group: String,
    /// Node id of the member.
    pub node_id: u32,
    /// Every tracker, `host:port` or URL, comma-separated.
    #[arg(long, env = "FDFS_TRACKER", value_delimiter = ',', required = true)]
    pub tracker: Vec<String>,
    /// Cluster secret the trackers (and, for drain, the storage nodes) require.
    #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// `fdfs monitor` subcommands that change the cluster.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Remove an offline member from the group (on every tracker): its peers stop keeping binlog records for
    /// it. Refused while it is active or syncing (a member stopped cleanly is offline at once). If it comes
    /// back it joins as a new member and catches up.
    Delete(MemberArgs),
    /// Drain a member: no new uploads go to it (reads still do); waits until the other active members of its
    /// group hold every file it holds, then says it can be stopped and removed.
    Drain {
        /// The member to drain.
        #[command(flatten)]
        member: MemberArgs,
        /// Give up waiting for the catch-up after this many seconds (the drain stays on).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
        /// Only start the drain; do not wait for the catch-up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop draining a member: it takes uploads again.
    Undrain(MemberArgs),
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<()> {
    match args.action {
        Some(Action::Delete(m)) => {
            return delete(&m.group, m.node_id, &m.tracker, m.cluster_secret.as_deref()).await
        }
        Some(Action::Drain {
            member,
            timeout_secs,
            no_wait,
        }) => {
            on_every_tracker(&member, Method::PUT, "drain", "drained (no new uploads)").await?;
            if no_wait {
                return Ok(());
            }
            return wait_drained(client, &member, Duration::from_secs(timeout_secs)).await;
        }
        Some(Action::Undrain(member)) => {
            return on_every_tracker(&member, Method::DELETE, "drain", "takes uploads again").await
        }
        None => {}
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

/// `http://host:port{path}` of a tracker given as `host:port` or a URL.
fn tracker_url(tracker: &str, path: &str) -> String {
    let base = tracker.trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        format!("{base}{path}")
    } else {
        format!("http://{base}{path}")
    }
}

/// `{method} /v1/members/{group}/{node_id}/{what}` on every tracker; fails when any refuses or is unreachable.
async fn on_every_tracker(m: &MemberArgs, method: Method, what: &str, done: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let mut first_err = None;
    for t in &m.tracker {
        let url = tracker_url(t, &format!("/v1/members/{}/{}/{what}", m.group, m.node_id));
        let rb = http
            .request(method.clone(), &url)
            .secret(m.cluster_secret.as_deref());
        match rb.send().await {
            Ok(resp) if resp.status().is_success() => {
                println!("{t}: member {} of {} {done}", m.node_id, m.group);
            }
            Ok(resp) => {
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
                eprintln!("{t}: {message} ({status})");
                first_err.get_or_insert(CliError::Api {
                    status: status.as_u16(),
                    code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
                    message,
                });
            }
            Err(source) => {
                eprintln!("{t}: unreachable");
                first_err.get_or_insert(CliError::Http { url, source });
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The cluster as the first tracker that answers sees it (with the secret: internal addresses included).
async fn tracker_view(http: &reqwest::Client, m: &MemberArgs) -> Option<ClusterView> {
    for t in &m.tracker {
        let rb = http
            .get(tracker_url(t, "/cluster"))
            .timeout(Duration::from_secs(10))
            .secret(m.cluster_secret.as_deref());
        if let Ok(resp) = rb.send().await {
            if let Ok(view) = resp.json::<ClusterView>().await {
                return Some(view);
            }
        }
    }
    None
}

/// Where a drain stands: `Ok(files)` once every other active member holds the drained member's files, else
/// what is still missing.
async fn drain_progress(
    client: &Client,
    http: &reqwest::Client,
    m: &MemberArgs,
) -> Result<std::result::Result<usize, String>> {
    let Some(view) = tracker_view(http, m).await else {
        return Ok(Err("no tracker answers".into()));
    };
    let members = view
        .groups
        .iter()
        .find(|g| g.name.as_str() == m.group)
        .map(|g| g.members.clone())
        .unwrap_or_default();
    let Some(me) = members.iter().find(|x| x.node_id == m.node_id) else {
        return Err(CliError::Usage(format!(
            "no member {} in group {}",
            m.node_id, m.group
        )));
    };
    let others: Vec<&MemberInfo> = members
        .iter()
        .filter(|x| x.node_id != m.node_id && x.state == MemberState::Active && !x.draining)
        .collect();
    if others.is_empty() {
        return Ok(Err(format!(
            "no other active member in {}: nobody could take its files",
            m.group
        )));
    }
    if me.state == MemberState::Offline {
        return Ok(Err(format!(
            "member {} is offline: start it so that its files can be checked",
            m.node_id
        )));
    }
    let pending: u64 = me
        .sync
        .iter()
        .filter(|s| others.iter().any(|o| o.node_id == s.peer_id))
        .map(|s| s.pending_records)
        .sum();
    if pending > 0 {
        return Ok(Err(format!("{pending} binlog record(s) still to push")));
    }
    let secret = m.cluster_secret.as_deref();
    let (files, mut deleted) = super::verify::listing(client, http, secret, me).await?;
    let mut held = Vec::new();
    for o in &others {
        let (f, t) = super::verify::listing(client, http, secret, o).await?;
        deleted.extend(t);
        held.push((o.addr.clone(), f));
    }
    for (addr, f) in &held {
        let lacking = files
            .iter()
            .filter(|id| !deleted.contains(*id) && !f.contains(*id))
            .count();
        if lacking > 0 {
            return Ok(Err(format!("{addr} still lacks {lacking} of its file(s)")));
        }
    }
    Ok(Ok(files.len()))
}

/// Poll until the drained member's files are on every other active member of its group.
async fn wait_drained(client: &Client, m: &MemberArgs, timeout: Duration) -> Result<()> {
    let http = fdfs_common::internal::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| CliError::Http {
            url: m.tracker.join(","),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match drain_progress(client, &http, m).await? {
            Ok(files) => {
                println!(
                    "member {} of {} is drained: every other active member holds its {files} file(s). Stop it, \
                     then remove it: fdfs monitor delete {} {}",
                    m.node_id, m.group, m.group, m.node_id
                );
                return Ok(());
            }
            Err(why) => {
                if why != last {
                    eprintln!("waiting: {why}");
                    last = why;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::Verify(format!(
                "member {} not drained after {}s: {last} (it still gets no uploads)",
                m.node_id,
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
        let url = tracker_url(t, &format!("/v1/members/{group}/{node_id}"));
        let rb = http.delete(&url).secret(secret);
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

fn state_name(m: &MemberInfo) -> &'static str {
    match m.state {
        MemberState::Active if m.draining => "draining",
        MemberState::Active => "active",
        MemberState::Syncing => "syncing",
        MemberState::Offline => "offline",
    }
}

/// Where member `m` of `group` stands: what the others have not pushed to it yet (it lags: "N behind", with
/// the age of the oldest), what it has not pushed to them ("N to send"), "catching up" while it copies its
/// group, "unknown" for an offline member nobody owes anything, else "in sync".
fn sync_lag(m: &MemberInfo, group: &[MemberInfo], now: u64) -> String {
    let owed: Vec<&fdfs_common::wire::PeerSync> = group
        .iter()
        .filter(|o| o.node_id != m.node_id)
        .flat_map(|o| o.sync.iter().filter(|s| s.peer_id == m.node_id))
        .filter(|s| s.pending_records > 0)
        .collect();
    let behind: u64 = owed.iter().map(|s| s.pending_records).sum();
    let to_send: u64 = m.sync.iter().map(|s| s.pending_records).sum();
    let mut parts = Vec::new();
    if m.state == MemberState::Syncing {
        parts.push("catching up".to_owned());
    }
    if behind > 0 {
        let oldest = owed.iter().map(|s| s.synced_until).min().unwrap_or(0);
        parts.push(if oldest == 0 {
            format!("{behind} behind")
        } else {
            format!("{behind} behind, {}s", now.saturating_sub(oldest))
        });
    }
    if to_send > 0 && m.state != MemberState::Offline {
        parts.push(format!("{to_send} to send"));
    }
    if parts.is_empty() {
        return if m.state == MemberState::Offline {
            "unknown (offline)".into()
        } else {
            "in sync".into()
        };
    }
    parts.join(", ")
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
                    state_name(m).to_owned(),
                    HumanBytes(m.free_bytes()).to_string(),
                    HumanBytes(m.total_bytes()).to_string(),
                    m.file_count.to_string(),
                    sync_lag(m, &g.members, now),
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
    fn table_shows_members_lagging_offline_and_draining() {
        let member = |id: u32, state, sync: Vec<PeerSync>| MemberInfo {
            node_id: id,
            group: "group1".parse().unwrap(),
            addr: format!("127.0.0.1:{}", 9000 + id),
            public_url: format!("http://127.0.0.1:{}", 9000 + id),
            state,
            store_paths: vec![StorePathStat {
                index: 0,
                total_bytes: 10 << 30,
                free_bytes: 4 << 30,
                failed: None,
            }],
            sync,
            file_count: 12,
            last_seen_ms: 1500,
            draining: false,
        };
        let owes = |peer_id, pending_records| PeerSync {
            peer_id,
            pending_records,
            synced_until: 990,
        };
        let mut drained = member(4, MemberState::Active, vec![owes(1, 0)]);
        drained.draining = true;
        let view = ClusterView {
            groups: vec![GroupInfo {
                name: "group1".parse().unwrap(),
                free_bytes: 4 << 30,
                total_bytes: 10 << 30,
                members: vec![
                    // 1 still has 3 records for 3 and 5 for 5 (offline).
                    member(1, MemberState::Active, vec![owes(3, 3), owes(5, 5)]),
                    member(2, MemberState::Syncing, vec![]),
                    member(3, MemberState::Active, vec![owes(1, 0)]),
                    drained,
                    member(5, MemberState::Offline, vec![owes(1, 0)]),
                    member(6, MemberState::Offline, vec![]),
                ],
            }],
            trackers: vec![TrackerStatus {
                addr: "127.0.0.1:8081".into(),
                up: true,
            }],
        };
        let t = render("http://127.0.0.1:8080", &view, 1000);
        let row = |id: u32| {
            t.lines()
                .find(|l| l.contains(&format!(" 127.0.0.1:900{id} ")))
                .unwrap_or_else(|| panic!("no row {id} in {t}"))
                .to_owned()
        };
        assert!(t.contains("trackers 127.0.0.1:8081 (up)"), "{t}");
        assert!(t.contains("6 storage node(s), 3 active"), "{t}");
        assert!(t.contains("group1: free 4.00 GiB / total 10.00 GiB"), "{t}");
        assert!(
            row(1).contains("active") && row(1).contains("8 to send"),
            "{t}"
        );
        assert!(
            row(2).contains("syncing") && row(2).contains("catching up"),
            "{t}"
        );
        assert!(row(3).contains("3 behind, 10s"), "{t}");
        assert!(
            row(4).contains("draining") && row(4).contains("in sync"),
            "{t}"
        );
        assert!(
            row(5).contains("offline") && row(5).contains("5 behind"),
            "{t}"
        );
        assert!(row(6).contains("unknown (offline)"), "{t}");
        assert!(t.contains("1.5s ago"), "{t}");
    }
}
