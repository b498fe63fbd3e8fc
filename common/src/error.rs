//! The one JSON error shape every process returns, `{"error": {"code": "...", "message": "..."}}`.
//! Each crate keeps its own error enum and maps it to a status and code, then calls [`error_response`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::wire::{ErrorBody, ErrorDetail};

/// Build the JSON error response. 5xx messages should be generic; the caller logs the detail.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

/// Stable code for a status, for errors that have no more specific one.
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        411 => "length_required",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        416 => "range_not_satisfiable",
        431 => "headers_too_large",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "gateway_timeout",
        507 => "insufficient_storage",
        s if s >= 500 => "internal",
        _ => "error",
    }
}
