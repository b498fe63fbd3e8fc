//! Command-line flags of `fdfs-storage` (also flattened into `fdfs storage`), merged over the TOML config.

use std::path::PathBuf;

use anyhow::Context;
use fdfs_common::config::Size;
use fdfs_common::GroupName;

use crate::Config;

/// Flags and `FDFS_*` environment variables; each overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FDFS_LISTEN")]
    pub listen: Option<String>,
    /// Group this node belongs to.
    #[arg(long, env = "FDFS_GROUP")]
    pub group: Option<GroupName>,
    /// Tracker addresses, comma separated or repeated.
    #[arg(long = "tracker", env = "FDFS_TRACKER", value_delimiter = ',')]
    pub trackers: Option<Vec<String>>,
    /// Store path directories (M00 first), comma separated or repeated.
    #[arg(long = "store-path", env = "FDFS_STORE_PATH", value_delimiter = ',')]
    pub store_paths: Option<Vec<PathBuf>>,
    /// Base URL users download from (default `http://<bound addr>`).
    #[arg(long, env = "FDFS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Separate address for the internal `/v1` routes (then 404 on --listen); peers and the gateway use it.
    #[arg(long, env = "FDFS_INTERNAL_LISTEN")]
    pub internal_listen: Option<String>,
    /// host:port other processes reach --internal-listen at (default: its bound address).
    #[arg(long, env = "FDFS_INTERNAL_ADDR")]
    pub internal_addr: Option<String>,
    /// TOML config file.
    #[arg(long, env = "FDFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id (1 to 4294967295), kept in the store [default: the store's, random for a new store].
    #[arg(long, env = "FDFS_NODE_ID")]
    pub node_id: Option<u32>,
    /// Milliseconds between heartbeats.
    #[arg(long, env = "FDFS_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Shared secret of internal routes.
    #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Largest accepted upload, e.g. `16GiB`.
    #[arg(long, env = "FDFS_MAX_FILE_SIZE")]
    pub max_file_size: Option<Size>,
    /// Members that must hold an upload before it is acknowledged.
    #[arg(long, env = "FDFS_WRITE_QUORUM")]
    pub write_quorum: Option<u32>,
    /// Anti-leech token secret (downloads need `?token=&ts=` when set).
    #[arg(long, env = "FDFS_ANTI_LEECH_SECRET", hide_env_values = true)]
    pub anti_leech_secret: Option<String>,
    /// Anti-leech token lifetime in seconds.
    #[arg(long, env = "FDFS_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
    /// Space every store path keeps free (replicas that would use it get 507): bytes or a percentage.
    #[arg(long, env = "FDFS_RESERVED_STORAGE_SPACE")]
    pub reserved_storage_space: Option<Size>,
    /// Test hook: abort the process at this point (see `store::layout::set_fail_point`).
    #[arg(long, hide = true)]
    pub fail_point: Option<String>,
    /// Read rate of the background scrubber, e.g. `2MiB` (0 turns it off).
    #[arg(long, env = "FDFS_SCRUB_BYTES_PER_SEC")]
    pub scrub_bytes_per_sec: Option<Size>,
    /// Seconds between the starts of two scrub passes.
    #[arg(long, env = "FDFS_SCRUB_INTERVAL_SECS")]
    pub scrub_interval_secs: Option<u64>,
    /// Peer transfers fail after this many milliseconds without data (frozen peer).
    #[arg(long, env = "FDFS_PEER_STALL_TIMEOUT_MS")]
    pub peer_stall_timeout_ms: Option<u64>,
    /// A store path whose heartbeat write probe takes longer than this many milliseconds is reported failed.
    #[arg(long, env = "FDFS_SLOW_DISK_MS")]
    pub slow_disk_ms: Option<u64>,
    /// Also speak FastDFS's binary protocol on this address (`host:port`; FastDFS's storage port is 23000).
    #[arg(long, env = "FDFS_FASTDFS_LISTEN")]
    pub fastdfs_listen: Option<String>,
    /// Width of IP address fields in FastDFS replies: 16 (classic FastDFS) or 46 (IPv6-capable builds).
    #[arg(long, env = "FDFS_FASTDFS_IP_WIDTH")]
    pub fastdfs_ip_width: Option<fdfs_common::fastdfs::IpWidth>,
    /// FastDFS connections are closed after this many milliseconds without a request or progress.
    #[arg(long, env = "FDFS_FASTDFS_TIMEOUT_MS")]
    pub fastdfs_timeout_ms: Option<u64>,
    /// FastDFS connections served at once; more wait until one ends.
    #[arg(long, env = "FDFS_FASTDFS_MAX_CONNECTIONS")]
    pub fastdfs_max_connections: Option<usize>,
    /// Size at which the replication binlog starts a new segment, e.g. `64MiB`.
    #[arg(long, env = "FDFS_BINLOG_SEGMENT_BYTES")]
    pub binlog_segment_bytes: Option<Size>,
    /// On SIGTERM: milliseconds of serving (unready, no new uploads, trackers told) before the listeners close.
    #[arg(long, env = "FDFS_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// Permission bits of stored files, octal (e.g. `644`, `0o640`).
    #[arg(long, env = "FDFS_FILE_MODE", value_parser = parse_mode)]
    pub file_mode: Option<u32>,
    /// Permission bits of the data directories, octal (e.g. `755`).
    #[arg(long, env = "FDFS_DIR_MODE", value_parser = parse_mode)]
    pub dir_mode: Option<u32>,
    /// Thumbnail settings (boxed: they are many and rarely given).
    #[command(flatten)]
    pub thumbnails: Box<ThumbnailArgs>,
}

/// Flags of the thumbnails rendered on first read (see [`crate::thumbnail`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThumbnailArgs {
    /// Thumbnail sizes rendered on first read, e.g. `150x150,300x300,800x0,200x200c` (empty string: none).
    #[arg(long, env = "FDFS_THUMBNAIL_SIZES", value_delimiter = ',')]
    pub thumbnail_sizes: Option<Vec<String>>,
    /// How a `WxH` thumbnail fills its box.
    #[arg(long, env = "FDFS_THUMBNAIL_FIT", value_enum)]
    pub thumbnail_fit: Option<crate::thumbnail::Fit>,
    /// JPEG quality of thumbnails (1-100).
    #[arg(long, env = "FDFS_THUMBNAIL_JPEG_QUALITY")]
    pub thumbnail_jpeg_quality: Option<u8>,
    /// Lossy WebP quality of thumbnails (1-100).
    #[arg(long, env = "FDFS_THUMBNAIL_WEBP_QUALITY")]
    pub thumbnail_webp_quality: Option<u8>,
    /// Formats thumbnails may be rendered as, e.g. `jpg,png,gif,webp`.
    #[arg(long, env = "FDFS_THUMBNAIL_FORMATS", value_delimiter = ',')]
    pub thumbnail_formats: Option<Vec<String>>,
    /// Render sources smaller than the box up to the box (true/false).
    #[arg(long, env = "FDFS_THUMBNAIL_UPSCALE")]
    pub thumbnail_upscale: Option<bool>,
    /// Largest source in pixels a thumbnail is rendered from.
    #[arg(long, env = "FDFS_THUMBNAIL_MAX_PIXELS")]
    pub thumbnail_max_pixels: Option<u64>,
    /// Thumbnail renders running at once (0: one per CPU).
    #[arg(long, env = "FDFS_THUMBNAIL_MAX_RENDERS")]
    pub thumbnail_max_renders: Option<usize>,
    /// Deadline of one thumbnail render in milliseconds.
    #[arg(long, env = "FDFS_THUMBNAIL_DEADLINE_MS")]
    pub thumbnail_deadline_ms: Option<u64>,
}

/// Permission bits written in octal, with or without a `0o`/`0` prefix (`644`, `0644`, `0o644`).
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not octal permission bits such as 644"))
}

impl Args {
    /// Apply the flags over a config loaded from the file.
    pub fn apply(self, mut c: Config) -> Config {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = Some(v); } )* };
        }
        set!(
            group,
            trackers,
            store_paths,
            heartbeat_interval_ms,
            max_file_size,
            write_quorum,
            token_ttl_secs,
            reserved_storage_space,
            scrub_bytes_per_sec,
            scrub_interval_secs,
            peer_stall_timeout_ms,
            slow_disk_ms
        );
        set!(
            fastdfs_ip_width,
            fastdfs_timeout_ms,
            fastdfs_max_connections,
            binlog_segment_bytes,
            file_mode,
            dir_mode,
            shutdown_delay_ms
        );
        set_opt!(fastdfs_listen);
        set_opt!(
            listen,
            public_url,
            internal_listen,
            internal_addr,
            node_id,
            cluster_secret,
            anti_leech_secret
        );
        let t = *self.thumbnails;
        macro_rules! set_thumbnail {
            ($($f:ident),*) => { $( if let Some(v) = t.$f { c.$f = v; } )* };
        }
        set_thumbnail!(
            thumbnail_sizes,
            thumbnail_fit,
            thumbnail_jpeg_quality,
            thumbnail_webp_quality,
            thumbnail_formats,
            thumbnail_upscale,
            thumbnail_max_pixels,
            thumbnail_max_renders,
            thumbnail_deadline_ms
        );
        c
    }
}

/// Load the config, bind, print `listening on ADDR`, serve until ctrl-c / SIGTERM.
pub async fn main(args: Args) -> anyhow::Result<()> {
    fdfs_common::telemetry::init();
    if let Some(point) = &args.fail_point {
        crate::store::layout::set_fail_point(point);
    }
    let file: Config = fdfs_common::config::load(args.config.as_deref())?;
    let config = args.apply(file);
    fdfs_common::serve::warn_if_no_secret("storage node", config.cluster_secret.as_deref());
    // State first: a node that cannot write its store refuses to start before it announces anything.
    crate::check_state(&config)?;
    let listen = config
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:23000".to_owned());
    let listener = fdfs_common::serve::bind_and_announce(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    crate::run(listener, config, fdfs_common::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("storage.toml");
        std::fs::write(
            &file,
            "group = \"g7\"\ntrackers = [\"t1:1\"]\nstore_paths = [\"/a\"]\nmax_file_size = \"1MiB\"\n\
             heartbeat_interval_ms = 50\n",
        )
        .unwrap();
        let cfg: Config = fdfs_common::config::load(Some(&file)).unwrap();
        assert_eq!(cfg.max_file_size, Size::Bytes(1 << 20));
        assert_eq!(cfg.token_ttl_secs, 900);
        let cli = Cli::parse_from([
            "x",
            "--tracker",
            "t2:2,t3:3",
            "--store-path",
            "/b",
            "--store-path",
            "/c",
            "--max-file-size",
            "2GiB",
        ]);
        let cfg = cli.args.apply(cfg);
        assert_eq!(cfg.group.as_str(), "g7");
        assert_eq!(cfg.trackers, ["t2:2", "t3:3"]);
        assert_eq!(cfg.store_paths, [PathBuf::from("/b"), PathBuf::from("/c")]);
        assert_eq!(cfg.max_file_size, Size::Bytes(2 << 30));
        assert_eq!(cfg.heartbeat_interval_ms, 50);

        std::fs::write(&file, "grup = \"typo\"\n").unwrap();
        assert!(fdfs_common::config::load::<Config>(Some(&file)).is_err());
    }
}
