//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), plain or JSON
//! (`FDFS_LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are no-ops (tests start many servers in one process).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FDFS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
