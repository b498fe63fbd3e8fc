//! The tracker's error enum, its status and code mapping, and its one JSON [`IntoResponse`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fdfs_common::error::code_for;
use fdfs_common::{error_response, GroupName, IdError};

/// Everything a tracker request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed file ID or group name.
    #[error("{0}")]
    Invalid(#[from] IdError),
    /// A request axum could not extract (bad JSON body, bad query string), with axum's status.
    #[error("{1}")]
    Rejected(StatusCode, String),
    /// An internal route called without the configured cluster secret (401).
    #[error("missing or wrong cluster secret")]
    Unauthorized,
    /// A group no member has reported (404, `unknown_group`).
    #[error("unknown group {0}")]
    UnknownGroup(GroupName),
    /// A path no route serves (404).
    #[error("no such route")]
    NoRoute,
    /// A route asked with a method it does not take (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No active member to offer, in the given group or (`None`) in any group (503, `no_storage`).
    #[error("no active storage node{}", .0.as_ref().map(|g| format!(" in group {g}")).unwrap_or_default())]
    NoStorage(Option<GroupName>),
    /// No group can take an upload of this many bytes and keep its reserve (507).
    #[error("no store path has {0} bytes free above the reserved space")]
    InsufficientStorage(u64),
    /// No member with this node id in the group (404, `unknown_member`).
    #[error("no member {1} in group {0}")]
    UnknownMember(GroupName, u32),
    /// Only an offline member can be removed; the second field is its state (409, `member_live`).
    #[error("member {0} is {1}: stop it before removing it")]
    MemberLive(u32, &'static str),
}

impl Error {
    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Rejected(status, _) => *status,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::UnknownGroup(_) | Error::NoRoute | Error::UnknownMember(..) => {
                StatusCode::NOT_FOUND
            }
            Error::MemberLive(..) => StatusCode::CONFLICT,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::NoStorage(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// Stable `error.code` of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::UnknownGroup(_) => "unknown_group",
            Error::NoStorage(_) => "no_storage",
            Error::UnknownMember(..) => "unknown_member",
            Error::MemberLive(..) => "member_live",
            other => code_for(other.status()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // Every variant is an expected condition with a message safe to show; none hides an internal fault.
        error_response(self.status(), self.code(), self.to_string())
    }
}

macro_rules! from_rejection {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(r: $t) -> Self {
                Error::Rejected(r.status(), r.body_text())
            }
        }
    )*};
}
from_rejection!(JsonRejection, QueryRejection, PathRejection);
