//! The storage node's one error type, its HTTP status mapping and its JSON rendering.

use std::io;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fdfs_common::error::code_for;
use fdfs_common::error_response;

/// Everything that can go wrong in the storage node.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong cluster secret")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(#[from] fdfs_common::token::TokenError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("body exceeds the maximum file size of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no space left on the store path")]
    InsufficientStorage,
    #[error("upload body aborted: {0}")]
    BodyAborted(String),
    #[error("{0}")]
    Unavailable(String),
    /// The node knows it cannot reach its write quorum now, and refused an upload before reading its body.
    #[error("{0}")]
    QuorumUnreachable(String),
    #[error("{1}")]
    /// This node takes no new uploads (it is being drained or stopping), said before any of the body is read
    /// so that the gateway sends it elsewhere: the code (`node_draining`, `node_stopping`) and why.
    NotTakingUploads(&'static str, String),
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    #[error("index error: {0}")]
    Db(#[from] sled::Error),
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
            _ => StorageError::Io(e),
        }
    }
}

impl From<fdfs_common::IdError> for StorageError {
    fn from(e: fdfs_common::IdError) -> Self {
        StorageError::BadRequest(e.to_string())
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
            StorageError::NotFound(_) => StatusCode::NOT_FOUND,
            StorageError::Conflict(_) => StatusCode::CONFLICT,
            StorageError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            StorageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StorageError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            StorageError::Unavailable(_)
            | StorageError::QuorumUnreachable(_)
            | StorageError::NotTakingUploads(..) => StatusCode::SERVICE_UNAVAILABLE,
            StorageError::Gone(_) => StatusCode::GONE,
            StorageError::Locked(_) => StatusCode::LOCKED,
            StorageError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            StorageError::Io(_) | StorageError::Db(_) | StorageError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            StorageError::Unprocessable(..) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = match &self {
            StorageError::BodyAborted(_) => "body_aborted",
            StorageError::PreconditionFailed => "precondition_failed",
            StorageError::QuorumUnreachable(_) => "quorum_unreachable",
            StorageError::NotTakingUploads(code, _) => code,
            StorageError::Unprocessable(code, _) => code,
            StorageError::Gone(_) => "gone",
            StorageError::Locked(_) => "locked",
            StorageError::ChecksumMismatch => "checksum_mismatch",
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
                StorageError::Unavailable(m) => m,
                _ => "internal error".to_owned(),
            };
            return error_response(status, code, message);
        }
        error_response(status, code, self.to_string())
    }
}
