//! `fdfs verify [--group G] [--repair] [--json]`: check a cluster's stored files on demand. The members come
//! from the gateway's `GET /cluster`; every live member of each group is then asked directly (internal routes,
//! cluster secret) for its listing (`GET /v1/sync/files`) and for a scrub pass (`POST /v1/scrub`, which checks
//! every file against the size and CRC32 in its ID and, with `--repair`, replaces bad copies with a peer's good
//! one). The report lists, per group, the files each member lacks (held by another member and deleted on none)
//! and the corrupt files found. Missing files are reported, not copied: replication and catch-up bring them.
//! Exits 1 when anything is left wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use fdfs_common::internal::WithSecret;
use fdfs_common::wire::{MemberInfo, MemberState};
use fdfs_storage::scrub::ScrubReport;
use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::{CliError, Result};

/// Listing page size asked of each member.
const PAGE: usize = 10_000;
/// A scrub pass reads every file of a member: allow it a long time.
const SCRUB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// `fdfs verify` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Replace corrupt copies with a good copy from a peer.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Cluster secret of the storage nodes' internal routes.
    #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// One member's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberReport {
    /// The member's node id.
    pub node_id: u32,
    /// `host:port` of its HTTP server.
    pub addr: String,
    /// Files held.
    pub files: usize,
    /// Files another member holds that this one lacks (and no member deleted).
    pub missing: Vec<String>,
    /// Its own check of its files against their IDs.
    pub scrub: ScrubReport,
}

/// One group's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupReport {
    /// The group's name.
    pub group: String,
    /// Every member checked.
    pub members: Vec<MemberReport>,
    /// Members not checked (offline).
    pub skipped: Vec<String>,
}

/// The whole report (`--json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every group checked.
    pub groups: Vec<GroupReport>,
    /// Corrupt copies found.
    pub corrupt: usize,
    /// Of those, repaired.
    pub repaired: usize,
    /// (member, file) pairs where a member lacks a file.
    pub missing: usize,
}

#[derive(Debug, Deserialize)]
struct Listed {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Page {
    files: Vec<Listed>,
    #[serde(default)]
    tombstones: Vec<String>,
    #[serde(default)]
    next: Option<String>,
}

struct Node<'a> {
    client: &'a Client,
    http: reqwest::Client,
    secret: Option<&'a str>,
    member: &'a MemberInfo,
}

impl Node<'_> {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.member.addr))
            .secret(self.secret)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.client.send(rb).await?;
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|source| CliError::Http {
            url: url.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol {
            url,
            why: format!("invalid JSON: {e}"),
        })
    }

    /// Every file and tombstone of the member.
    async fn listing(&self) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let (mut files, mut tombstones) = (BTreeSet::new(), BTreeSet::new());
        let mut after = String::new();
        loop {
            let rb = self
                .request(Method::GET, "/v1/sync/files")
                .query(&[("after", after.as_str()), ("limit", &PAGE.to_string())]);
            let page: Page = self.json(rb).await?;
            files.extend(page.files.into_iter().map(|f| f.id));
            tombstones.extend(page.tombstones);
            match page.next {
                Some(n) if n > after => after = n,
                _ => return Ok((files, tombstones)),
            }
        }
    }

    async fn scrub(&self, repair: bool) -> Result<ScrubReport> {
        let rb = self
            .request(Method::POST, "/v1/scrub")
            .query(&[("repair", repair)])
            .timeout(SCRUB_TIMEOUT);
        self.json(rb).await
    }
}

/// Every file and tombstone of `member` (`GET /v1/sync/files` with the cluster secret, paged).
pub(crate) async fn listing(
    client: &Client,
    http: &reqwest::Client,
    secret: Option<&str>,
    member: &MemberInfo,
) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    Node {
        client,
        http: http.clone(),
        secret,
        member,
    }
    .listing()
    .await
}

/// Check one group's live members.
async fn verify_group(
    client: &Client,
    http: &reqwest::Client,
    args: &Args,
    group: &str,
    members: &[MemberInfo],
) -> Result<GroupReport> {
    let mut skipped = Vec::new();
    let mut live = Vec::new();
    for m in members {
        if m.state == MemberState::Offline {
            skipped.push(m.addr.clone());
        } else {
            live.push(Node {
                client,
                http: http.clone(),
                secret: args.cluster_secret.as_deref(),
                member: m,
            });
        }
    }
    // Scrub first (a repair does not change listings), then list.
    let mut scrubs = Vec::new();
    let mut listings = Vec::new();
    for n in &live {
        scrubs.push(n.scrub(args.repair).await?);
        listings.push(n.listing().await?);
    }
    let deleted: BTreeSet<&String> = listings.iter().flat_map(|(_, t)| t).collect();
    let union: BTreeSet<&String> = listings
        .iter()
        .flat_map(|(f, _)| f)
        .filter(|id| !deleted.contains(id))
        .collect();
    let members = live
        .iter()
        .zip(scrubs)
        .zip(&listings)
        .map(|((n, scrub), (files, _))| MemberReport {
            node_id: n.member.node_id,
            addr: n.member.addr.clone(),
            files: files.len(),
            missing: union
                .iter()
                .filter(|id| !files.contains(**id))
                .map(|id| (*id).clone())
                .collect(),
            scrub,
        })
        .collect();
    Ok(GroupReport {
        group: group.to_owned(),
        members,
        skipped,
    })
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<()> {
    let view = client.cluster().await?;
    let http = fdfs_common::internal::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| CliError::Http {
            url: client.base().to_owned(),
            source,
        })?;
    let mut groups: BTreeMap<String, Vec<MemberInfo>> = BTreeMap::new();
    for g in &view.groups {
        if args
            .group
            .as_deref()
            .is_some_and(|want| want != g.name.as_str())
        {
            continue;
        }
        groups.insert(g.name.to_string(), g.members.clone());
    }
    if let Some(want) = &args.group {
        if groups.is_empty() {
            return Err(CliError::Usage(format!("no group {want:?} in the cluster")));
        }
    }
    let mut reports = Vec::new();
    for (name, members) in &groups {
        reports.push(verify_group(client, &http, &args, name, members).await?);
    }
    let corrupt = count(&reports, |m| m.scrub.corrupt.len());
    let repaired = count(&reports, |m| {
        m.scrub.corrupt.iter().filter(|c| c.repaired).count()
    });
    let missing = count(&reports, |m| m.missing.len());
    let report = Report {
        groups: reports,
        corrupt,
        repaired,
        missing,
    };
    if args.json {
        let s = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?;
        println!("{s}");
    } else {
        print!("{}", render(&report));
    }
    if corrupt > repaired || missing > 0 {
        return Err(CliError::Verify(format!(
            "{} corrupt cop{} left, {missing} missing cop{}",
            corrupt - repaired,
            if corrupt - repaired == 1 { "y" } else { "ies" },
            if missing == 1 { "y" } else { "ies" },
        )));
    }
    Ok(())
}

fn count(reports: &[GroupReport], f: impl Fn(&MemberReport) -> usize) -> usize {
    reports.iter().flat_map(|g| &g.members).map(f).sum()
}

/// The human-readable report.
fn render(r: &Report) -> String {
    let mut out = String::new();
    for g in &r.groups {
        let _ = writeln!(out, "{}", g.group);
        for m in &g.members {
            let s = &m.scrub;
            let _ = writeln!(
                out,
                "  {} (node {}): {} files, {} checked, {} skipped (slaves), {} corrupt, {} repaired, {} missing",
                m.addr,
                m.node_id,
                m.files,
                s.checked,
                s.skipped,
                s.corrupt.len(),
                s.repaired,
                m.missing.len()
            );
            for c in &s.corrupt {
                let fate = if c.repaired {
                    "repaired"
                } else {
                    "NOT repaired"
                };
                let _ = writeln!(out, "    corrupt  {}  {} ({fate})", c.file_id, c.problem);
            }
            for id in &m.missing {
                let _ = writeln!(out, "    missing  {id}");
            }
        }
        for addr in &g.skipped {
            let _ = writeln!(out, "  {addr}: offline, not checked");
        }
    }
    let verdict = if r.corrupt == r.repaired && r.missing == 0 {
        "OK"
    } else {
        "PROBLEMS"
    };
    let _ = writeln!(
        out,
        "{verdict}: {} corrupt ({} repaired), {} missing",
        r.corrupt, r.repaired, r.missing
    );
    out
}
