//! The gateway's one error type, its HTTP status mapping and its JSON rendering.
//!
//! Errors that come back from a tracker or storage node as JSON keep their status and code
//! ([`GatewayError::Upstream`]); failures to reach them become 502/503 with a short message, the detail going
//! to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fdfs_common::wire::ErrorBody;
use fdfs_common::{error_response, IdError};

/// Everything a gateway request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request itself is malformed (bad query, bad field, bad multipart framing).
    #[error("{0}")]
    BadRequest(String),
    /// The path is not a valid file ID.
    #[error("{0}")]
    InvalidId(#[from] IdError),
    /// An API key is configured and the request did not carry it.
    #[error("missing or invalid x-api-key header")]
    Unauthorized,
    /// The upload is larger than `max_upload_size`.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured `max_upload_size`, in bytes.
        limit: u64,
    },
    /// The client stopped sending the body for longer than `body_timeout_secs`.
    #[error("request body stalled for more than {0} seconds")]
    BodyTimeout(u64),
    /// No such route.
    #[error("no such route")]
    NoRoute,
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// No configured tracker could be reached.
    #[error("no tracker reachable")]
    NoTracker,
    /// A storage node (or tracker) could not be reached or answered garbage; detail already logged.
    #[error("{0}")]
    BadGateway(String),
    /// The storage node assigned to an upload refused the connection (it is down, the tracker has not noticed
    /// yet): no byte of the body went out, so the upload can be sent elsewhere.
    #[error("storage node {0} refused the connection")]
    StorageRefused(String),
    /// The connection to the storage node taking an upload broke before it answered (it died or stopped):
    /// nothing was acknowledged, so a body still held whole can go to another node.
    #[error("storage node unreachable or upload interrupted")]
    StorageLost(String),
    /// The route is switched off by configuration (the message says which setting turns it on).
    #[error("{0}")]
    Forbidden(String),
    /// A tracker or storage node answered with an error, passed through with its status and code.
    #[error("{message}")]
    Upstream {
        /// The upstream's status.
        status: StatusCode,
        /// The upstream's `error.code`.
        code: String,
        /// The upstream's `error.message`.
        message: String,
    },
}

/// Result alias used across the crate.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

impl GatewayError {
    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidId(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoTracker => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) | Self::StorageRefused(_) | Self::StorageLost(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Upstream { status, .. } => *status,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::InvalidId(_) => "invalid_file_id",
            Self::Unauthorized => "unauthorized",
            Self::TooLarge { .. } => "payload_too_large",
            Self::BodyTimeout(_) => "request_timeout",
            Self::NoRoute => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NoTracker => "no_tracker",
            Self::BadGateway(_) | Self::StorageRefused(_) | Self::StorageLost(_) => "bad_gateway",
            Self::Forbidden(_) => "forbidden",
            Self::Upstream { code, .. } => code,
        }
    }

    /// Turn an error answer from a tracker or storage node into a gateway error. 4xx, 503 and 507 keep their
    /// status and code; a 401/403 on an internal route means the cluster secret is wrong, which is the
    /// gateway's misconfiguration, not the user's, so it becomes a 502; other 5xx become 502 as well.
    pub async fn from_upstream(what: &str, resp: reqwest::Response) -> Self {
        let status = resp.status();
        let body: Option<ErrorBody> = resp.json().await.ok();
        let (code, message) = match body {
            Some(b) => (b.error.code, b.error.message),
            None => (
                fdfs_common::error::code_for(status).to_owned(),
                format!("{what} answered {status}"),
            ),
        };
        match status.as_u16() {
            401 | 403 => {
                tracing::error!(%status, %message, "{what} refused the cluster secret");
                Self::BadGateway(format!("{what} refused the gateway's cluster secret"))
            }
            400..=499 | 503 | 507 => Self::Upstream {
                status,
                code,
                message,
            },
            _ => {
                tracing::error!(%status, %code, %message, "{what} failed");
                Self::BadGateway(format!("{what} failed"))
            }
        }
    }
}

impl From<fdfs_common::internal::OverLimit> for GatewayError {
    fn from(e: fdfs_common::internal::OverLimit) -> Self {
        Self::TooLarge { limit: e.limit }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        }
        error_response(status, self.code(), self.to_string())
    }
}
