//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), plain text or one JSON object
//! per line (`FDFS_LOG_FORMAT=json`). Plain text is coloured only when stderr is a terminal and `NO_COLOR` is
//! unset: logs that go to a file or the journal carry no ANSI escapes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Whether log lines get ANSI colours: only on a terminal, and never with `NO_COLOR` set (any value).
pub fn colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Install the global subscriber once; later calls are no-ops (tests start many servers in one process).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FDFS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(!colours(false, None), "a file or a pipe gets no escapes");
        assert!(!colours(true, Some(std::ffi::OsStr::new("1"))));
        assert!(
            colours(true, Some(std::ffi::OsStr::new(""))),
            "NO_COLOR= (empty) is unset"
        );
    }
}
