//! The `fdfs` command line: runs any fdfs server in-process (`fdfs tracker|storage|gateway`), a whole local
//! cluster (`fdfs up`), and client commands against a gateway (`upload`, `download`, `delete`, `info`, `meta`,
//! `monitor`, `bench`, `verify`).

pub mod client;
pub mod commands;
pub mod error;
pub mod pattern;
pub mod up;

use clap::{Parser, Subcommand};

pub use client::{Client, DEFAULT_GATEWAY};
pub use error::CliError;

use commands::{bench, download, files, monitor, upload, verify};

/// fdfs: a FastDFS-style distributed file system.
#[derive(Debug, Parser)]
#[command(name = "fdfs", version, about, propagate_version = true)]
pub struct Cli {
    /// Gateway URL for client commands.
    #[arg(long, global = true, env = "FDFS_GATEWAY", default_value = DEFAULT_GATEWAY, value_name = "URL")]
    pub gateway: String,
    /// API key sent (header `x-api-key`) to a gateway that requires one. Give it before the subcommand.
    #[arg(long, env = "FDFS_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `fdfs`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a tracker server in this process (same flags as `fdfs-tracker`).
    Tracker(fdfs_tracker::cli::Args),
    /// Run a storage node in this process (same flags as `fdfs-storage`).
    Storage(Box<fdfs_storage::cli::Args>),
    /// Run the HTTP gateway in this process (same flags as `fdfs-gateway`).
    Gateway(Box<fdfs_gateway::cli::Args>),
    /// Run a whole local cluster (trackers, storage groups, gateway) until ctrl-c.
    Up(up::Args),
    /// Print a server's config file with every setting commented (`fdfs config storage > storage.toml`).
    Config(commands::config::Args),
    /// Upload files (directories recursively); prints one JSON answer per file.
    Upload(upload::Args),
    /// Download a file (resumes an interrupted download).
    Download(download::Args),
    /// Delete a file.
    Delete(files::DeleteArgs),
    /// Describe a file: size, CRC32, creation time, source node, locations, metadata.
    Info(files::InfoArgs),
    /// Read, replace (--set) or merge (--merge) a file's metadata.
    Meta(files::MetaArgs),
    /// Print a signed (anti-leech) download link for a file, minted locally.
    Sign(files::SignArgs),
    /// Print a presigned URL of the S3 door for one object (GET, HEAD, PUT or DELETE), minted locally.
    Presign(commands::presign::Args),
    /// Show the cluster: groups, members, state, space, files, sync lag.
    Monitor(monitor::Args),
    /// Upload then download-and-verify many generated files; print throughput and latency.
    Bench(bench::Args),
    /// Check every stored copy against its ID (size, CRC32) and compare each group's members; --repair
    /// replaces corrupt copies from a peer.
    Verify(verify::Args),
    /// Import an existing FastDFS store path under the files' existing IDs (exits 1 if any file was refused).
    ImportFastdfs(commands::import_fastdfs::Args),
}

/// Subcommands that run a server: they take `--tracker`, never the client-only `--gateway`.
pub const SERVER_SUBCOMMANDS: [&str; 3] = ["tracker", "storage", "gateway"];

impl Cli {
    /// The command line as `fdfs` parses it: [`Cli`], where the global `--gateway` (for client commands) is
    /// kept out of the server subcommands' flags and help. There it is a hidden flag that refuses any value
    /// with a message, so `fdfs storage --gateway URL` fails instead of being silently taken.
    pub fn command_line() -> clap::Command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        for server in SERVER_SUBCOMMANDS {
            cmd = cmd.mut_subcommand(server, |sc| {
                sc.arg(
                    clap::Arg::new("gateway")
                        .long("gateway")
                        .hide(true)
                        .value_parser(|_: &str| -> Result<String, String> {
                            Err("--gateway is a flag of the client commands (upload, monitor, ...), \
                                 not of the servers: they take --tracker"
                                .into())
                        }),
                )
            });
        }
        cmd
    }

    /// Parse `std::env::args` with [`Cli::command_line`]; exits with clap's message on a usage error. Called
    /// as `fdfs-tracker`, `fdfs-storage` or `fdfs-gateway` (a symlink to `fdfs`, as the install guide and the
    /// image lay out), it runs that server: `fdfs-storage ARGS` is `fdfs storage ARGS`.
    pub fn parse_args() -> Cli {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let role = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("fdfs-"))
            .filter(|r| SERVER_SUBCOMMANDS.contains(r))
            .map(str::to_owned);
        if let Some(role) = role {
            args.insert(1, role.into());
        }
        let matches = Self::command_line().get_matches_from(args);
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || Client::new(&cli.gateway).map(|c| c.with_api_key(cli.api_key.clone()));
    match cli.command {
        Command::Tracker(a) => fdfs_tracker::cli::main(a).await?,
        Command::Storage(a) => fdfs_storage::cli::main(*a).await?,
        Command::Gateway(a) => fdfs_gateway::cli::main(*a).await?,
        Command::Up(a) => up::run(a).await?,
        Command::Config(a) => commands::config::run(&a),
        Command::Upload(a) => upload::run(&client()?, a).await?,
        Command::Download(a) => download::run(&client()?, a).await?,
        Command::Delete(a) => files::delete(&client()?, a).await?,
        Command::Info(a) => {
            if a.offline {
                files::info(None, a).await?;
            } else {
                files::info(Some(&client()?), a).await?;
            }
        }
        Command::Meta(a) => files::meta(&client()?, a).await?,
        Command::Sign(a) => files::sign(a)?,
        Command::Presign(a) => commands::presign::run(a)?,
        Command::Monitor(a) => monitor::run(&client()?, a).await?,
        Command::Bench(a) => bench::run(&client()?, a).await?,
        Command::Verify(a) => verify::run(&client()?, a).await?,
        Command::ImportFastdfs(a) => commands::import_fastdfs::run(&client()?, a).await?,
    }
    Ok(())
}

/// Exit code for an error returned by [`run`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<CliError>()
        .map_or(1, CliError::exit_code)
}
