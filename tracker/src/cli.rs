//! Command line of the tracker server (`fdfs-tracker`, also flattened into `fdfs tracker`): flags and `FDFS_*`
//! env override the TOML config file, which overrides the defaults.

use std::path::PathBuf;

use anyhow::Context;
use fdfs_common::config::Size;
use fdfs_common::GroupName;

use crate::{Config, StoreLookup, StorePathPolicy};

/// Address used when `--listen` is not given (the FastDFS tracker port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:22122";

/// `fdfs tracker` / `fdfs-tracker` flags; each overrides its config key and has an `FDFS_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on, `host:port` (port 0 picks a free port) [default: 127.0.0.1:22122].
    #[arg(long, env = "FDFS_LISTEN")]
    pub listen: Option<String>,
    /// TOML config file; unknown keys are an error.
    #[arg(long, env = "FDFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// A member is offline after this long without a heartbeat [default: 6000].
    #[arg(long, env = "FDFS_HEARTBEAT_TIMEOUT_MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// How a group is chosen when an upload names none [default: round_robin].
    #[arg(long, env = "FDFS_STORE_LOOKUP", value_enum)]
    pub store_lookup: Option<StoreLookup>,
    /// The group used with `--store-lookup fixed_group`.
    #[arg(long, env = "FDFS_STORE_GROUP")]
    pub store_group: Option<GroupName>,
    /// How a store path is chosen on the member [default: round_robin]. (Env name differs from the storage
    /// node's `FDFS_STORE_PATH`, which holds directories.)
    #[arg(long, env = "FDFS_TRACKER_STORE_PATH", value_enum)]
    pub store_path: Option<StorePathPolicy>,
    /// Space every store path keeps free: bytes (`10GiB`) or a percentage of its size (`10%`) [default: 10%].
    #[arg(long, env = "FDFS_RESERVED_STORAGE_SPACE")]
    pub reserved_storage_space: Option<Size>,
    /// Directory where the tracker remembers its members across restarts (`members.json`).
    #[arg(long, env = "FDFS_TRACKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shared secret internal routes require in the `x-fdfs-cluster-secret` header.
    #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Also speak FastDFS's binary protocol on this address (`host:port`; FastDFS's tracker port is 22122).
    #[arg(long, env = "FDFS_FASTDFS_LISTEN")]
    pub fastdfs_listen: Option<String>,
    /// Width of IP address fields in FastDFS replies: 16 (classic FastDFS) or 46 (IPv6-capable builds)
    /// [default: 16].
    #[arg(long, env = "FDFS_FASTDFS_IP_WIDTH")]
    pub fastdfs_ip_width: Option<fdfs_common::fastdfs::IpWidth>,
    /// FastDFS connections are closed after this many milliseconds without a request or progress.
    #[arg(long, env = "FDFS_FASTDFS_TIMEOUT_MS")]
    pub fastdfs_timeout_ms: Option<u64>,
}

impl Args {
    /// The config file (or defaults) with these flags laid over it.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c: Config = fdfs_common::config::load(self.config.as_deref())?;
        if let Some(v) = self.heartbeat_timeout_ms {
            c.heartbeat_timeout_ms = v;
        }
        if let Some(v) = self.store_lookup {
            c.store_lookup = v;
        }
        if let Some(v) = &self.store_group {
            c.store_group = Some(v.clone());
        }
        if let Some(v) = self.store_path {
            c.store_path = v;
        }
        if let Some(v) = self.reserved_storage_space {
            c.reserved_storage_space = v;
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = Some(v.clone());
        }
        if let Some(v) = &self.cluster_secret {
            c.cluster_secret = Some(v.clone());
        }
        if let Some(v) = &self.fastdfs_listen {
            c.fastdfs_listen = Some(v.clone());
        }
        if let Some(v) = self.fastdfs_ip_width {
            c.fastdfs_ip_width = v;
        }
        if let Some(v) = self.fastdfs_timeout_ms {
            c.fastdfs_timeout_ms = v;
        }
        Ok(c)
    }
}

/// Load the config, bind, print `listening on ADDR` to stdout and serve until ctrl-c or SIGTERM.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    fdfs_common::telemetry::init();
    fdfs_common::serve::warn_if_no_secret("tracker", config.cluster_secret.as_deref());
    let listen = args.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listener = fdfs_common::serve::bind_and_announce(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    crate::run(listener, config, fdfs_common::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tracker.toml");
        let toml =
            "store_lookup = \"fixed_group\"\nstore_group = \"g2\"\nreserved_storage_space = 1000\n";
        std::fs::write(&file, toml).unwrap();
        let cli = Cli::parse_from([
            "t",
            "--config",
            file.to_str().unwrap(),
            "--store-path",
            "most_free",
            "--reserved-storage-space",
            "5%",
        ]);
        let c = cli.args.config().unwrap();
        assert_eq!(c.store_lookup, StoreLookup::FixedGroup);
        assert_eq!(c.store_group.unwrap().as_str(), "g2");
        assert_eq!(c.store_path, StorePathPolicy::MostFree);
        assert_eq!(c.reserved_storage_space, Size::Percent(5));
        assert_eq!(c.heartbeat_timeout_ms, 6000);

        std::fs::write(
            &file,
            "store_lookup = \"most_free\"\nheartbeat_timout_ms = 1\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["t", "--config", file.to_str().unwrap()]);
        assert!(cli.args.config().is_err(), "typo must be an error");
    }
}
