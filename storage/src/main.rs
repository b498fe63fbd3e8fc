//! `fdfs-storage`: the storage node binary.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "fdfs-storage", version, about = "fdfs storage node")]
struct Cli {
    #[command(flatten)]
    args: fdfs_storage::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fdfs_storage::cli::main(Cli::parse().args).await
}
