//! `fdfs delete`, `fdfs info` and `fdfs meta`: one request each about a single file; `fdfs sign`, which needs no
//! request at all.

use fdfs_common::wire::FileInfo;

use crate::client::{parse_file_id, Client};
use crate::commands::parse_pairs;
use crate::error::{CliError, Result};

/// `fdfs delete` arguments.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// File ID to delete.
    pub id: String,
}

/// `fdfs info` arguments.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// File ID to describe.
    pub id: String,
    /// Decode the ID locally (source node, creation time, size, CRC32) without asking the cluster.
    #[arg(long)]
    pub offline: bool,
}

/// `fdfs meta` arguments.
#[derive(Debug, clap::Args)]
pub struct MetaArgs {
    /// File ID whose metadata to read or change.
    pub id: String,
    /// Replace all metadata with these `key=value` pairs.
    #[arg(long, value_name = "KEY=VALUE", num_args = 1.., conflicts_with = "merge")]
    pub set: Vec<String>,
    /// Add or overwrite these `key=value` pairs, keeping the others.
    #[arg(long, value_name = "KEY=VALUE", num_args = 1..)]
    pub merge: Vec<String>,
}

/// `fdfs sign` arguments.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// File ID to sign.
    pub id: String,
    /// The anti-leech secret the storage nodes are configured with.
    #[arg(long, env = "FDFS_ANTI_LEECH_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Base URL of a storage node (or an nginx in front of it) to print a full link; else only the query.
    #[arg(long, value_name = "URL")]
    pub base: Option<String>,
    /// Sign as of this unix time instead of now (the link is valid for the nodes' `token_ttl_secs` after it).
    #[arg(long)]
    pub ts: Option<u64>,
}

/// `fdfs sign`: a FastDFS anti-leech link, minted locally (`token=md5(path + secret + ts)&ts=...`).
pub fn sign(args: SignArgs) -> Result<()> {
    let id = parse_file_id(&args.id)?;
    let ts = args.ts.unwrap_or_else(fdfs_common::time::unix_now);
    let query = fdfs_common::token::query(&id, &args.secret, ts);
    match args.base {
        Some(base) => println!("{}/{id}?{query}", base.trim_end_matches('/')),
        None => println!("{query}"),
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Usage(format!("cannot print JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

pub(crate) async fn delete(client: &Client, args: DeleteArgs) -> Result<()> {
    let id = parse_file_id(&args.id)?;
    client.delete(&id).await?;
    println!("deleted {id}");
    Ok(())
}

pub(crate) async fn info(client: Option<&Client>, args: InfoArgs) -> Result<()> {
    let id = parse_file_id(&args.id)?;
    let info = match client {
        Some(c) if !args.offline => c.info(&id).await?,
        _ => FileInfo::decoded(&id),
    };
    print_json(&info)
}

pub(crate) async fn meta(client: &Client, args: MetaArgs) -> Result<()> {
    let id = parse_file_id(&args.id)?;
    let meta = if !args.set.is_empty() {
        client
            .meta_set(&id, &parse_pairs(&args.set)?, false)
            .await?
    } else if !args.merge.is_empty() {
        client
            .meta_set(&id, &parse_pairs(&args.merge)?, true)
            .await?
    } else {
        client.meta_get(&id).await?
    };
    print_json(&meta)
}
