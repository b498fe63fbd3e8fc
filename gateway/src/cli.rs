//! Command line of the gateway server: flags (each also an `FDFS_*` env variable) over the TOML config file
//! over defaults. `fdfs gateway` flattens the same [`Args`].

use std::path::PathBuf;

use anyhow::Context;

use crate::{Config, DownloadMode};

/// Flags of `fdfs-gateway` / `fdfs gateway`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port) [default: 127.0.0.1:8080].
    #[arg(long, env = "FDFS_LISTEN")]
    pub listen: Option<String>,
    /// Tracker addresses, host:port, comma separated.
    #[arg(long = "tracker", env = "FDFS_TRACKER", value_delimiter = ',')]
    pub trackers: Option<Vec<String>>,
    /// TOML config file.
    #[arg(long, env = "FDFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest upload, e.g. 8GiB or 500MB.
    #[arg(long, env = "FDFS_MAX_UPLOAD_SIZE")]
    pub max_upload_size: Option<fdfs_common::config::Size>,
    /// Shared secret for the cluster's internal routes.
    #[arg(long, env = "FDFS_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// API key required (header x-api-key) on uploads, deletes and metadata writes.
    #[arg(long, env = "FDFS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Secret for FastDFS anti-leech tokens on download redirects.
    #[arg(long, env = "FDFS_ANTI_LEECH_SECRET", hide_env_values = true)]
    pub anti_leech_secret: Option<String>,
    /// Origins allowed by CORS, comma separated ("*" for any).
    #[arg(long, env = "FDFS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// How downloads are served.
    #[arg(long, env = "FDFS_DOWNLOAD_MODE", value_enum)]
    pub download_mode: Option<DownloadMode>,
    /// Seconds a request body may stall before the request is cut with 408.
    #[arg(long, env = "FDFS_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: Option<u64>,
    /// Seconds allowed for non-streaming requests and for each call to a tracker or storage node.
    #[arg(long, env = "FDFS_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Milliseconds of silence after which a tracker is given up, and a storage node asked its /livez (and
    /// given up when that is silent too) [default: 2000].
    #[arg(long, env = "FDFS_UNRESPONSIVE_MS")]
    pub unresponsive_ms: Option<u64>,
    /// Seconds an unfinished resumable (tus) upload lives [default: 86400].
    #[arg(long, env = "FDFS_TUS_EXPIRY_SECS")]
    pub tus_expiry_secs: Option<u64>,
    /// Unfinished resumable uploads per API key at a time [default: 1000].
    #[arg(long, env = "FDFS_TUS_MAX_UNFINISHED_PER_KEY")]
    pub tus_max_unfinished_per_key: Option<u64>,
    /// On SIGTERM: milliseconds of serving while unready before the listener closes [default: 0].
    #[arg(long, env = "FDFS_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// Address of the S3-compatible door, e.g. 127.0.0.1:9000 (none: no S3 door).
    #[arg(long, env = "FDFS_S3_LISTEN")]
    pub s3_listen: Option<String>,
    /// Directory of the S3 door's namespace (bucket/key -> file ID).
    #[arg(long, env = "FDFS_S3_DATA_DIR")]
    pub s3_data_dir: Option<PathBuf>,
    /// PostgreSQL URL of a namespace several gateways share, e.g. postgres://fdfs:secret@db:5432/fdfs (instead
    /// of --s3-data-dir).
    #[arg(long, env = "FDFS_S3_POSTGRES", hide_env_values = true)]
    pub s3_postgres: Option<String>,
    /// An S3 access key with every bucket (with --s3-secret-key); more keys (limited to some buckets, or read-only)
    /// in the config file's `s3_keys`.
    #[arg(long, env = "FDFS_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    /// The secret of --s3-access-key.
    #[arg(
        long,
        env = "FDFS_S3_SECRET_KEY",
        hide_env_values = true,
        requires = "s3_access_key"
    )]
    pub s3_secret_key: Option<String>,
    /// Buckets anyone may read without a signature, comma separated.
    #[arg(long, env = "FDFS_S3_PUBLIC_BUCKETS", value_delimiter = ',')]
    pub s3_public_buckets: Option<Vec<String>>,
    /// Domains for virtual-host-style S3 requests, comma separated: `Host: photos.s3.example.com` with
    /// `s3.example.com` names bucket `photos` (path style works on every host).
    #[arg(long, env = "FDFS_S3_DOMAINS", value_delimiter = ',')]
    pub s3_domains: Option<Vec<String>>,
    /// Origins allowed to call the S3 door from a browser (CORS), comma separated; `*` for any.
    #[arg(long, env = "FDFS_S3_CORS_ORIGINS", value_delimiter = ',')]
    pub s3_cors_origins: Option<Vec<String>>,
    /// Name of this door's S3 namespace, tagged on its files (distinct per gateway when several gateways with
    /// their own namespaces share a cluster) [default: s3].
    #[arg(long, env = "FDFS_S3_NAMESPACE")]
    pub s3_namespace: Option<String>,
    /// Seconds between passes of the S3 orphan collector, 0 for none [default: 21600].
    #[arg(long, env = "FDFS_S3_COLLECT_INTERVAL_SECS")]
    pub s3_collect_interval_secs: Option<u64>,
    /// Age in seconds before the collector deletes an S3 file no key points at [default: 3600].
    #[arg(long, env = "FDFS_S3_ORPHAN_GRACE_SECS")]
    pub s3_orphan_grace_secs: Option<u64>,
    /// Seconds after which the collector aborts a multipart upload never completed nor aborted, 0 for never
    /// [default: 604800].
    #[arg(long, env = "FDFS_S3_UPLOAD_EXPIRY_SECS")]
    pub s3_upload_expiry_secs: Option<u64>,
}

impl Args {
    /// The config file (if any) with these flags applied over it.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c: Config = fdfs_common::config::load(self.config.as_deref())?;
        if let Some(v) = &self.listen {
            c.listen = Some(v.clone());
        }
        if let Some(v) = &self.trackers {
            c.trackers = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = self.max_upload_size {
            c.max_upload_size = match v {
                fdfs_common::config::Size::Bytes(n) => n,
                fdfs_common::config::Size::Percent(_) => {
                    anyhow::bail!("--max-upload-size must be a size, not a percentage")
                }
            };
        }
        if let Some(v) = &self.cluster_secret {
            c.cluster_secret = Some(v.clone());
        }
        if let Some(v) = &self.api_key {
            c.api_key = Some(v.clone());
        }
        if let Some(v) = &self.anti_leech_secret {
            c.anti_leech_secret = Some(v.clone());
        }
        if let Some(v) = &self.cors_origins {
            c.cors_origins = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = self.download_mode {
            c.download_mode = v;
        }
        if let Some(v) = self.body_timeout_secs {
            c.body_timeout_secs = v;
        }
        if let Some(v) = self.request_timeout_secs {
            c.request_timeout_secs = v;
        }
        if let Some(v) = self.unresponsive_ms {
            c.unresponsive_ms = v;
        }
        if let Some(v) = self.tus_expiry_secs {
            c.tus_expiry_secs = v;
        }
        if let Some(v) = self.tus_max_unfinished_per_key {
            c.tus_max_unfinished_per_key = v;
        }
        if let Some(v) = self.shutdown_delay_ms {
            c.shutdown_delay_ms = v;
        }
        if let Some(v) = &self.s3_listen {
            c.s3_listen = Some(v.clone());
        }
        if let Some(v) = &self.s3_data_dir {
            c.s3_data_dir = Some(v.clone());
        }
        if let Some(v) = &self.s3_postgres {
            c.s3_postgres = Some(v.clone());
        }
        if let Some(v) = &self.s3_access_key {
            c.s3_access_key = Some(v.clone());
        }
        if let Some(v) = &self.s3_secret_key {
            c.s3_secret_key = Some(v.clone());
        }
        if let Some(v) = &self.s3_namespace {
            c.s3_namespace = v.clone();
        }
        if let Some(v) = self.s3_collect_interval_secs {
            c.s3_collect_interval_secs = v;
        }
        if let Some(v) = self.s3_orphan_grace_secs {
            c.s3_orphan_grace_secs = v;
        }
        if let Some(v) = self.s3_upload_expiry_secs {
            c.s3_upload_expiry_secs = v;
        }
        if let Some(v) = &self.s3_public_buckets {
            c.s3_public_buckets = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.s3_domains {
            c.s3_domains = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.s3_cors_origins {
            c.s3_cors_origins = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        Ok(c)
    }
}

/// Run the gateway until ctrl-c / SIGTERM.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    config.validate()?;
    fdfs_common::telemetry::init();
    fdfs_common::serve::warn_if_no_secret("gateway", config.cluster_secret.as_deref());
    let listen = config
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listener = fdfs_common::serve::bind_and_announce(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let s3 = match config.s3_listen.clone() {
        Some(l) => {
            let s3 = fdfs_common::serve::bind_and_announce_as("s3 listening on", &l)
                .await
                .with_context(|| format!("binding the S3 door on {l}"))?;
            tracing::info!(addr = %s3.local_addr()?, "S3 door listening");
            Some(s3)
        }
        None => None,
    };
    tracing::info!(%addr, trackers = ?config.trackers, "gateway started");
    crate::run_with_s3(listener, s3, config, fdfs_common::shutdown_signal()).await?;
    Ok(())
}
