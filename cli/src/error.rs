//! The CLI's error type: what went wrong talking to the gateway or the local disk, and the exit code for it.
//! Messages are one line; `main` prints the whole `source()` chain joined by `: `.

use fdfs_common::IdError;

/// Everything a CLI command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with an error; `message` is the server's own JSON `error.message`.
    #[error("{message} (HTTP {status} {code})")]
    Api {
        /// HTTP status of the answer.
        status: u16,
        /// The server's `error.code`.
        code: String,
        /// The server's `error.message`.
        message: String,
    },
    /// No HTTP answer at all (connection refused, reset, timeout).
    #[error("request to {url} failed")]
    Http {
        /// The URL asked.
        url: String,
        /// What reqwest reported.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered 2xx but the body was not what the protocol promises.
    #[error("unexpected answer from {url}: {why}")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What was wrong with the body.
        why: String,
    },
    /// A file ID (or download URL) given on the command line that does not parse (exit code 2).
    #[error("invalid file id {input:?}")]
    InvalidId {
        /// The argument as given.
        input: String,
        /// Why it is not a file ID.
        #[source]
        source: IdError,
    },
    /// Reading or writing a local file failed.
    #[error("{path}")]
    Io {
        /// The local path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command-line value that clap could not check by itself.
    #[error("{0}")]
    Usage(String),
    /// Downloaded bytes do not match the size/CRC32 encoded in the file ID.
    #[error("downloaded data is corrupt: {0}")]
    Corrupt(String),
    /// `fdfs up` could not start or keep the local cluster.
    #[error("{0}")]
    Up(String),
    /// A benchmark phase had failed requests.
    #[error("{0}")]
    Bench(String),
    /// `fdfs verify` found problems it did not repair.
    #[error("{0}")]
    Verify(String),
    /// `fdfs import-fastdfs` refused or failed some files.
    #[error("{0}")]
    Import(String),
    /// Files were uploaded, but thumbnails asked for with them failed or were skipped (each is named).
    #[error("{0}")]
    Thumbnails(String),
}

impl CliError {
    /// Process exit code: 2 for bad input (like clap's usage errors), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::InvalidId { .. } => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Result alias for CLI internals.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
