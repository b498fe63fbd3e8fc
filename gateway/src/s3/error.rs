//! S3's errors: an XML `<Error>` body with S3's code, and its status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::namespace::NsError;
use crate::error::GatewayError;

/// An S3 error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// HTTP status.
    pub status: u16,
    /// S3's code (`NoSuchKey`, `SignatureDoesNotMatch`, ...).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// The bucket or object concerned.
    pub resource: String,
}

impl S3Error {
    /// An error with this status, code and message.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> S3Error {
        S3Error {
            status,
            code,
            message: message.into(),
            resource: String::new(),
        }
    }

    /// `AuthorizationHeaderMalformed`-style: a signature that cannot be read (400).
    pub fn malformed(message: &str) -> S3Error {
        S3Error::new(400, "AuthorizationHeaderMalformed", message)
    }

    /// The same error about `resource`.
    pub fn on(mut self, resource: impl Into<String>) -> S3Error {
        self.resource = resource.into();
        self
    }

    /// `NoSuchBucket` (404).
    pub fn no_bucket(bucket: &str) -> S3Error {
        S3Error::new(404, "NoSuchBucket", "The specified bucket does not exist").on(bucket)
    }

    /// `NoSuchKey` (404).
    pub fn no_key(key: &str) -> S3Error {
        S3Error::new(404, "NoSuchKey", "The specified key does not exist.").on(key)
    }

    /// `AccessDenied` (403).
    pub fn denied(message: &str) -> S3Error {
        S3Error::new(403, "AccessDenied", message)
    }

    /// `InternalError` (500), logged.
    pub fn internal(what: impl std::fmt::Display) -> S3Error {
        tracing::error!(error = %what, "S3 request failed");
        S3Error::new(
            500,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }
}

impl From<GatewayError> for S3Error {
    fn from(e: GatewayError) -> S3Error {
        let message = e.to_string();
        match e {
            GatewayError::TooLarge { .. } => S3Error::new(
                400,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed object size.",
            ),
            GatewayError::BodyTimeout(_) => S3Error::new(400, "RequestTimeout", message),
            GatewayError::BadRequest(_) | GatewayError::InvalidId(_) => {
                S3Error::new(400, "InvalidRequest", message)
            }
            GatewayError::Upstream { status, .. } if status.as_u16() == 404 => {
                S3Error::new(404, "NoSuchKey", message)
            }
            GatewayError::Upstream { status, .. } if status.is_client_error() => {
                S3Error::new(400, "InvalidRequest", message)
            }
            GatewayError::Upstream { status, .. } if status.as_u16() == 507 => {
                S3Error::new(507, "InsufficientStorage", message)
            }
            GatewayError::Upstream { .. } | GatewayError::NoTracker => {
                S3Error::new(503, "ServiceUnavailable", message)
            }
            GatewayError::BadGateway(_)
            | GatewayError::StorageRefused(_)
            | GatewayError::StorageLost(_) => S3Error::new(503, "ServiceUnavailable", message),
            other => S3Error::internal(other),
        }
    }
}

impl From<NsError> for S3Error {
    fn from(e: NsError) -> S3Error {
        match e {
            NsError::NoBucket(b) => S3Error::no_bucket(&b),
            NsError::Unavailable(_) => {
                tracing::warn!(error = %e, "S3 namespace unavailable");
                S3Error::new(
                    503,
                    "ServiceUnavailable",
                    "The namespace database is unavailable; please retry.",
                )
            }
            other => S3Error::internal(other),
        }
    }
}

/// `s` with XML's five special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        metrics::counter!("fdfs_s3_errors_total", "code" => self.code).increment(1);
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource></Error>",
            self.code,
            escape(&self.message),
            escape(&self.resource)
        );
        (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
    }
}
