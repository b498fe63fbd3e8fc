//! `fdfs` binary: parse the command line, run it, print any error as one line and exit non-zero.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = fdfs::Cli::parse_args();
    match fdfs::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fdfs: error: {e:#}");
            ExitCode::from(fdfs::exit_code(&e))
        }
    }
}
