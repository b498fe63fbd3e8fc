//! `fdfs-gateway` binary: parses flags and runs [`fdfs_gateway::cli::main`].

use clap::Parser;

/// fdfs gateway: the public HTTP API of an fdfs cluster.
#[derive(Debug, Parser)]
#[command(name = "fdfs-gateway", version, about)]
struct Cli {
    #[command(flatten)]
    args: fdfs_gateway::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fdfs_gateway::cli::main(Cli::parse().args).await
}
