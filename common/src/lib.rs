//! Pieces every fdfs process shares: the file ID codec ([`fileid`]), the JSON wire types ([`wire`]), the error
//! body, the plumbing of internal HTTP ([`internal`]), config loading, anti-leech tokens, tracing set-up and the
//! shutdown signal.

pub mod appender;
pub mod attname;
pub mod config;
pub mod deadline;
pub mod drain;
pub mod error;
pub mod fastdfs;
pub mod fileid;
pub mod health;
pub mod internal;
pub mod metrics;
pub mod serve;
pub mod state;
pub mod sys;
pub mod telemetry;
pub mod token;
pub mod wire;

pub use error::error_response;
pub use fileid::{FileId, FileName, GroupName, IdError, NameInfo};

/// Version string reported in heartbeats and `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Compare secrets (cluster secret, API key, token) in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Content type for an extension, as a storage node serves it (`application/octet-stream` when unknown).
pub fn content_type_for(ext: Option<&str>) -> &'static str {
    ext.and_then(|e| mime_guess::from_ext(e).first_raw())
        .unwrap_or("application/octet-stream")
}

/// Small time helpers.
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Seconds since the unix epoch, now.
    pub fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// RFC 3339 (UTC, seconds) of a unix time.
    pub fn rfc3339(unix: u64) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
    }
}

/// Resolves when the process is asked to stop (ctrl-c or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
