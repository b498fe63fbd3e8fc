//! One module per client subcommand; each exposes a clap `Args` struct and an async `run`.

pub mod bench;
pub mod config;
pub mod download;
pub mod files;
pub mod import_fastdfs;
pub mod monitor;
pub mod presign;
pub mod resumable;
pub mod upload;
pub mod verify;

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Result};
use fdfs_common::wire::Metadata;

/// Files at least this big get a progress bar (when stderr is a terminal).
pub const PROGRESS_THRESHOLD: u64 = 4 << 20;

const PROGRESS_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

/// A byte progress bar on stderr, or `None` when stderr is not a terminal or the transfer is small.
pub fn progress_bar(len: u64, label: &str) -> Option<ProgressBar> {
    if len < PROGRESS_THRESHOLD || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(PROGRESS_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(label.to_owned());
    Some(pb)
}

/// Parse `k=v` pairs (`--meta`, `--set`, `--merge`) into metadata.
pub fn parse_pairs(pairs: &[String]) -> Result<Metadata> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CliError::Usage(format!(
                "metadata must be key=value, got {p:?}"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_template_is_valid() {
        assert!(ProgressStyle::with_template(PROGRESS_TEMPLATE).is_ok());
        // Small transfers and non-terminals (as under `cargo test`) get no bar.
        assert!(progress_bar(1, "x").is_none());
    }

    #[test]
    fn pairs() {
        let m = parse_pairs(&["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "x=y");
        assert_eq!(m["c"], "");
        assert!(parse_pairs(&["novalue".into()]).is_err());
        assert!(parse_pairs(&["=v".into()]).is_err());
    }
}
