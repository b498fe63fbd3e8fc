//! Answering a refused request so that the client reads the answer.
//!
//! A handler that refuses an upload part-way (413 over the size limit, 507, a bad replica) drops the rest of
//! the body unread. The connection is then closed with unread bytes in the socket, the kernel answers them
//! with a reset, and a client still sending sees "connection reset" instead of the JSON error. The
//! [`drain_refused`] middleware keeps hold of the request body: when the answer is an error, it reads and
//! discards what is left (bounded in bytes and time, like nginx's lingering close) before answering, and
//! marks the answer `Connection: close` when it could not read to the end.
//!
//! An answer marked [`AnswerAtOnce`] (a refusal given before any of the body was read, which the client may
//! want to send elsewhere) goes out at once instead; the body is drained after it, in the background, and the
//! connection closed.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

/// Most of a refused body that is read and discarded before answering.
pub const DRAIN_BYTES: u64 = 16 << 20;
/// Longest time spent draining a refused body.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Response extension: send this refusal at once (the handler read none of the body), drain the body after it.
#[derive(Debug, Clone, Copy)]
pub struct AnswerAtOnce;

/// The request body, shared between the handler and [`drain_refused`].
struct Shared {
    stream: Option<BodyDataStream>,
    /// The handler polled the body (so a client waiting for `100 Continue` has been told to send it).
    started: bool,
}

/// Middleware: when the inner service answers 4xx/5xx and left part of the body unread, drain it (at most
/// [`DRAIN_BYTES`] within [`DRAIN_TIME`]) before answering; `Connection: close` when that did not reach the
/// end, or when the client waits for `100 Continue` and was never asked for the body.
pub async fn drain_refused(req: Request, next: Next) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(Shared {
        stream: Some(body.into_data_stream()),
        started: false,
    }));
    let inner = shared.clone();
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        let mut s = inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.started = true;
        match s.stream.as_mut() {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }));
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let (stream, started) = {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        (s.stream.take(), s.started)
    };
    let Some(stream) = stream else {
        return resp;
    };
    if resp.extensions().get::<AnswerAtOnce>().is_some() {
        // The client reads the answer while what it sends meanwhile is still taken (its writes do not fail
        // before it reads); a client waiting for `100 Continue` was never asked for the body.
        if started || !expects_continue {
            tokio::spawn(drain(stream));
        }
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let drained = (started || !expects_continue) && drain(stream).await;
    if !drained {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Read and drop up to [`DRAIN_BYTES`] of `stream` within [`DRAIN_TIME`]; true when it ended within that.
pub async fn drain(mut stream: BodyDataStream) -> bool {
    let mut seen = 0u64;
    let ended = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            seen += chunk.len() as u64;
            if seen > DRAIN_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    ended.unwrap_or(false)
}
