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
    #[error("{}", fdfs_common::internal::WRONG_SECRET)]
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
    /// No member announces this address (404, `unknown_member`).
    #[error("no member announces the address {0}")]
    UnknownAddr(String),
    /// Only an offline member can be removed; the second field is its state (409, `member_live`).
    #[error("member {0} is {1}: stop it before removing it (a stopped member leaves at once)")]
    MemberLive(u32, &'static str),
    /// A heartbeat with the id of another live member (a copied store or node_id setting).
    #[error(
        "node id {node_id} is already the id of live member {addr} (heard {seen_ms} ms ago): two storage nodes \
         must not share a node id (a copied store path or node_id setting?)"
    )]
    NodeIdConflict {
        /// The id claimed twice.
        node_id: u32,
        /// The address of the live member that has it.
        addr: String,
        /// How long ago that member beat.
        seen_ms: u64,
        /// When that member would be offline if it died.
        retry_after: std::time::Duration,
    },
    /// A heartbeat announcing the address of another live member.
    #[error(
        "{addr} is already the address of live member {other} (heard {seen_ms} ms ago): two storage nodes \
         announce the same address (check public_url and internal_addr)"
    )]
    AddressConflict {
        /// The address claimed twice.
        addr: String,
        /// The live member that has it.
        other: u32,
        /// How long ago that member beat.
        seen_ms: u64,
        /// When that member would be offline if it died.
        retry_after: std::time::Duration,
    },
    /// The tracker restarted moments ago and has not heard every member yet.
    #[error(
        "tracker started {0} ms ago and has not heard every storage node yet: ask another tracker"
    )]
    WarmingUp(u64),
}

impl Error {
    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Rejected(status, _) => *status,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::UnknownGroup(_)
            | Error::NoRoute
            | Error::UnknownMember(..)
            | Error::UnknownAddr(_) => StatusCode::NOT_FOUND,
            Error::MemberLive(..)
            | Error::NodeIdConflict { .. }
            | Error::AddressConflict { .. } => StatusCode::CONFLICT,
            Error::WarmingUp(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            Error::UnknownMember(..) | Error::UnknownAddr(_) => "unknown_member",
            Error::MemberLive(..) => "member_live",
            Error::NodeIdConflict { .. } => "node_id_conflict",
            Error::AddressConflict { .. } => "address_conflict",
            Error::WarmingUp(_) => "tracker_warming_up",
            other => code_for(other.status()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // Every variant is an expected condition with a message safe to show; none hides an internal fault.
        let retry_after = match &self {
            Error::NodeIdConflict { retry_after, .. }
            | Error::AddressConflict { retry_after, .. } => Some(retry_after.as_secs() + 1),
            Error::WarmingUp(_) => Some(1),
            _ => None,
        };
        let mut resp = error_response(self.status(), self.code(), self.to_string());
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
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
