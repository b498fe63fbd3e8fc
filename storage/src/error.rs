//! The storage node's one error type, its HTTP status mapping and its JSON rendering.

use std::io;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fdfs_common::error::code_for;
use fdfs_common::error_response;

/// Everything that can go wrong in the storage node.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Malformed input: a bad file ID, header, query or body (400).
    #[error("{0}")]
    BadRequest(String),
    /// An internal route called without the configured cluster secret (401).
    #[error("{}", fdfs_common::internal::WRONG_SECRET)]
    Unauthorized,
    /// A download whose anti-leech token is missing, wrong or expired (403).
    #[error("{0}")]
    Forbidden(#[from] fdfs_common::token::TokenError),
    /// No such file or upload, here or on a peer (404).
    #[error("{0}")]
    NotFound(String),
    /// A thumbnail of a size this node does not render; the message lists the sizes it does (404,
    /// `thumbnail_size_not_configured`).
    #[error("{0}")]
    ThumbnailSizeNotConfigured(String),
    /// The file (a slave, a finished upload) exists already, or an append's offset is not the upload's (409).
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` / `If-Unmodified-Since` that the file does not satisfy (412).
    #[error("precondition failed")]
    PreconditionFailed,
    /// A body or declared length over `max_file_size` (413).
    #[error("body exceeds the maximum file size of {limit} bytes")]
    TooLarge {
        /// The configured `max_file_size`, in bytes.
        limit: u64,
    },
    /// The store path is full, or would fall below its reserve (507).
    #[error("no space left on the store path")]
    InsufficientStorage,
    /// The client's body ended early or broke off; nothing was kept (400, `body_aborted`).
    #[error("upload body aborted: {0}")]
    BodyAborted(String),
    /// The node cannot do it now: write quorum not reached (the file stays and replication carries it), too
    /// many staged replicas, a thumbnail render past its deadline (503; the message is shown).
    #[error("{0}")]
    Unavailable(String),
    /// An upload stored here whose write quorum was not reached (503 `unavailable`, like [`Self::Unavailable`]):
    /// the file stays and replication carries it, unless its gateway abandons the attempt (see
    /// `write::abandon`).
    #[error("{1}")]
    NotReplicated(fdfs_common::FileId, String),
    /// The node knows it cannot reach its write quorum now, and refused an upload before reading its body.
    #[error("{0}")]
    QuorumUnreachable(String),
    /// This node takes no new uploads (it is being drained or stopping), said before any of the body is read
    /// so that the gateway sends it elsewhere (503): the code (`node_draining`, `node_stopping`) and why.
    #[error("{1}")]
    NotTakingUploads(&'static str, String),
    /// The disk failed the operation (EIO: a failing disk; EROFS: the kernel remounted it read-only after
    /// errors) (503, `disk_failed`: the gateway sends the upload elsewhere; the next heartbeat reports the store
    /// path failed so the trackers assign it nothing).
    #[error("the disk of this storage node failed: {0}")]
    DiskFailed(#[source] io::Error),
    /// A disk error other than a full disk (500; logged, the body says "internal error").
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    /// The sled index failed (500; logged).
    #[error("index error: {0}")]
    Db(#[from] sled::Error),
    /// The dedup/listing index (fjall) failed (500; logged).
    #[error("index error: {0}")]
    Index(#[from] fjall::Error),
    /// Any other fault of this node: a failed blocking task, state that does not decode (500; logged).
    #[error("internal error: {0}")]
    Internal(String),
    /// 422 with its own error code (a thumbnail's master that is not an image, or too large to decode).
    #[error("{1}")]
    Unprocessable(&'static str, String),
    /// An appender file that expired (410).
    #[error("{0}")]
    Gone(String),
    /// An appender file another append is writing to (423).
    #[error("{0}")]
    Locked(String),
    /// An append whose content does not match its checksum; it was discarded (460, tus).
    #[error("checksum mismatch: the chunk was discarded")]
    ChecksumMismatch,
}

/// Result alias for the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                StorageError::InsufficientStorage
            }
            _ if is_disk_failure(&e) => StorageError::DiskFailed(e),
            _ => StorageError::Io(e),
        }
    }
}

/// Whether `e` says the disk itself failed (EIO, or EROFS from a file system the kernel remounted read-only).
/// `tempfile` wraps the OS error of its files with their path in a private type that hides it (its `source()`
/// skips it), so a wrapped error is recognised by the OS error its message names.
pub fn is_disk_failure(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let codes = [Errno::IO.raw_os_error(), Errno::ROFS.raw_os_error()];
    match (e.raw_os_error(), e.get_ref()) {
        (Some(code), _) => codes.contains(&code),
        (None, Some(inner)) => {
            let text = inner.to_string();
            codes
                .iter()
                .any(|c| text.contains(&format!("(os error {c})")))
        }
        (None, None) => false,
    }
}

impl From<fdfs_common::IdError> for StorageError {
    fn from(e: fdfs_common::IdError) -> Self {
        StorageError::BadRequest(e.to_string())
    }
}

impl From<fdfs_common::internal::OverLimit> for StorageError {
    fn from(e: fdfs_common::internal::OverLimit) -> Self {
        StorageError::TooLarge { limit: e.limit }
    }
}

impl From<tokio::task::JoinError> for StorageError {
    fn from(e: tokio::task::JoinError) -> Self {
        StorageError::Internal(format!("blocking task failed: {e}"))
    }
}

impl StorageError {
    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            StorageError::BadRequest(_) | StorageError::BodyAborted(_) => StatusCode::BAD_REQUEST,
            StorageError::Unauthorized => StatusCode::UNAUTHORIZED,
            StorageError::Forbidden(_) => StatusCode::FORBIDDEN,
            StorageError::NotFound(_) | StorageError::ThumbnailSizeNotConfigured(_) => {
                StatusCode::NOT_FOUND
            }
            StorageError::Conflict(_) => StatusCode::CONFLICT,
            StorageError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            StorageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StorageError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            StorageError::Unavailable(_)
            | StorageError::NotReplicated(..)
            | StorageError::DiskFailed(_)
            | StorageError::QuorumUnreachable(_)
            | StorageError::NotTakingUploads(..) => StatusCode::SERVICE_UNAVAILABLE,
            StorageError::Gone(_) => StatusCode::GONE,
            StorageError::Locked(_) => StatusCode::LOCKED,
            StorageError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            StorageError::Io(_)
            | StorageError::Db(_)
            | StorageError::Index(_)
            | StorageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StorageError::Unprocessable(..) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = match &self {
            StorageError::BodyAborted(_) => "body_aborted",
            StorageError::ThumbnailSizeNotConfigured(_) => "thumbnail_size_not_configured",
            StorageError::PreconditionFailed => "precondition_failed",
            StorageError::QuorumUnreachable(_) => "quorum_unreachable",
            StorageError::NotTakingUploads(code, _) => code,
            StorageError::Unprocessable(code, _) => code,
            StorageError::Gone(_) => "gone",
            StorageError::Locked(_) => "locked",
            StorageError::ChecksumMismatch => "checksum_mismatch",
            StorageError::DiskFailed(_) => "disk_failed",
            _ => code_for(status),
        };
        if let StorageError::QuorumUnreachable(m) | StorageError::NotTakingUploads(_, m) = self {
            tracing::warn!(error = %m, "upload refused before its body");
            // The client reads this at once, while the body it is still sending is drained.
            let mut resp = error_response(status, code, m);
            resp.extensions_mut()
                .insert(fdfs_common::drain::AnswerAtOnce);
            return resp;
        }
        if status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE {
            tracing::error!(error = %self, "request failed");
            let message = match self {
                StorageError::Unavailable(m) | StorageError::NotReplicated(_, m) => m,
                StorageError::DiskFailed(e) => format!("the disk of this storage node failed: {e}"),
                _ => "internal error".to_owned(),
            };
            return error_response(status, code, message);
        }
        error_response(status, code, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_failures_are_told_from_other_io_errors_also_when_wrapped() {
        let eio = io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
        let erofs = io::Error::from_raw_os_error(rustix::io::Errno::ROFS.raw_os_error());
        // What tempfile makes of an EIO on one of its files.
        let wrapped = io::Error::other(format!("{eio} at path \"/s/.fdfs/tmp/up-1\""));
        for e in [eio, erofs, wrapped] {
            assert!(is_disk_failure(&e), "{e}");
            assert!(matches!(StorageError::from(e), StorageError::DiskFailed(_)));
        }
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let other = io::Error::other("Permission denied (os error 13) at path \"x\"");
        for e in [missing, other] {
            assert!(!is_disk_failure(&e), "{e}");
        }
        let resp = StorageError::DiskFailed(io::Error::from_raw_os_error(5)).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
