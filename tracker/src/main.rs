//! `fdfs-tracker`: the tracker server binary; everything lives in [`fdfs_tracker::cli`].

use clap::Parser;

#[derive(Parser)]
#[command(name = "fdfs-tracker", version, about = "fdfs tracker server")]
struct Cli {
    #[command(flatten)]
    args: fdfs_tracker::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fdfs_tracker::cli::main(Cli::parse().args).await
}
