//! The body of one upload on its way to a storage node, which can be sent again from its start while little of
//! it has gone out. Chunks come from the client side over a channel; the first [`REPLAY_BYTES`] are kept, so
//! that when a node turns the upload down without reading any of it (it refused the connection, or answered
//! `quorum_unreachable`) the same body goes to the next node. Past that, the kept chunks are dropped (memory per
//! upload stays bounded, whatever the file's size) and the body cannot be sent again.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Most of a body kept for sending it again. A node that refuses before reading answers within a round trip,
/// long before this much has left.
pub const REPLAY_BYTES: usize = 1 << 20;

type Chunk = Result<Bytes, std::io::Error>;

struct Feed {
    rx: mpsc::Receiver<Chunk>,
    /// The chunks that went out so far, while they fit in [`REPLAY_BYTES`].
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// More than [`REPLAY_BYTES`] went out, or the client side failed: the body cannot be sent again.
    spilled: bool,
    /// The attempt the body goes to now; earlier attempts' bodies fail from then on.
    attempt: u32,
}

/// A replayable upload body (see the module doc).
pub struct Replay(Arc<Mutex<Feed>>);

impl Replay {
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Replay {
        Replay(Arc::new(Mutex::new(Feed {
            rx,
            kept: Vec::new(),
            kept_bytes: 0,
            spilled: false,
            attempt: 0,
        })))
    }

    /// End the current attempt's body (a transport may still be reading it after its answer came back: from
    /// now on it reads an error, and takes nothing more from the client side), then say whether the body can
    /// still be sent from its start. Deciding to send again and stopping the old reader is one step: checked
    /// apart, the old reader could take the rest of the body in between and the next attempt would get none of
    /// it.
    pub fn end_attempt(&self) -> bool {
        let mut feed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        feed.attempt += 1;
        !feed.spilled
    }

    /// The body for the next attempt: what went out so far, then the rest from the client. The body given to
    /// the previous attempt ends with an error from now on (that request is over). When the body cannot be sent
    /// whole any more, this one ends with an error at once: never a clean, short body.
    pub fn next_body(&self) -> reqwest::Body {
        let (attempt, whole) = {
            let mut feed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            feed.attempt += 1;
            (feed.attempt, !feed.spilled)
        };
        let feed = self.0.clone();
        let mut pos = 0;
        let stream = futures_util::stream::poll_fn(move |cx| {
            let mut f = feed.lock().unwrap_or_else(PoisonError::into_inner);
            if f.attempt != attempt {
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the upload went to another storage node",
                ))));
            }
            if !whole {
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the upload's start is gone: it cannot be sent again",
                ))));
            }
            if !f.spilled && pos < f.kept.len() {
                pos += 1;
                return Poll::Ready(Some(Ok(f.kept[pos - 1].clone())));
            }
            let next = f.rx.poll_recv(cx);
            if let Poll::Ready(Some(Err(_))) = &next {
                // The client side failed: this body must never be sent again (it would end cleanly, short).
                f.spilled = true;
                f.kept = Vec::new();
            }
            if let Poll::Ready(Some(Ok(chunk))) = &next {
                if !f.spilled {
                    f.kept_bytes += chunk.len();
                    if f.kept_bytes > REPLAY_BYTES {
                        f.spilled = true;
                        f.kept = Vec::new();
                    } else {
                        f.kept.push(chunk.clone());
                        pos += 1;
                    }
                }
            }
            next
        });
        reqwest::Body::wrap_stream(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: reqwest::Body) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_body_that_went_out_in_part_is_sent_again_whole() {
        let (tx, rx) = mpsc::channel(8);
        let replay = Replay::new(rx);
        let mut first = replay.next_body();
        tx.send(Ok(Bytes::from_static(b"hello "))).await.unwrap();
        // The first attempt takes one chunk, then the node turns the upload down.
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello ");
        assert!(replay.end_attempt());
        let second = replay.next_body();
        assert!(
            first.frame().await.unwrap().is_err(),
            "the old attempt's body ends"
        );
        tx.send(Ok(Bytes::from_static(b"world"))).await.unwrap();
        drop(tx);
        assert_eq!(collect(second).await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn a_body_past_the_replay_limit_cannot_be_sent_again() {
        let (tx, rx) = mpsc::channel(8);
        let replay = Replay::new(rx);
        let body = replay.next_body();
        let chunk = Bytes::from(vec![7u8; REPLAY_BYTES / 2 + 1]);
        tokio::spawn(async move {
            for _ in 0..3 {
                tx.send(Ok(chunk.clone())).await.unwrap();
            }
        });
        let got = collect(body).await.unwrap();
        assert_eq!(got.len(), 3 * (REPLAY_BYTES / 2 + 1));
        assert!(!replay.end_attempt());
    }

    #[tokio::test]
    async fn a_body_whose_client_failed_is_never_sent_again() {
        let (tx, rx) = mpsc::channel(8);
        let replay = Replay::new(rx);
        let body = replay.next_body();
        tx.send(Ok(Bytes::from_static(b"part"))).await.unwrap();
        tx.send(Err(std::io::Error::other("client went away")))
            .await
            .unwrap();
        drop(tx);
        assert!(collect(body).await.is_err());
        assert!(!replay.end_attempt(), "a replay would end cleanly, short");
    }

    /// Found by the nemesis (seed 1, faults one at a time): a node answered `quorum_unreachable` before reading
    /// a 3.8 MiB upload; while the gateway asked the tracker for another node, the first request's transport kept
    /// reading the body past the replay limit, and the next node got an empty body, stored a 0-byte file and the
    /// client was told 200 with `size: 0`.
    #[tokio::test]
    async fn the_body_an_old_attempt_kept_reading_is_never_sent_again_short() {
        let (tx, rx) = mpsc::channel(8);
        let replay = Replay::new(rx);
        let first = replay.next_body();
        let chunk = Bytes::from(vec![7u8; REPLAY_BYTES / 2 + 1]);
        tokio::spawn(async move {
            for _ in 0..3 {
                tx.send(Ok(chunk.clone())).await.unwrap();
            }
        });
        // The old attempt reads on (past the limit) after its node's answer came back.
        assert_eq!(
            collect(first).await.unwrap().len(),
            3 * (REPLAY_BYTES / 2 + 1)
        );
        assert!(!replay.end_attempt(), "the body is not whole any more");
        // Even asked for, the next body is an error, never a clean empty one.
        assert!(collect(replay.next_body()).await.is_err());
    }

    /// The decision to send again ends the old attempt's body first: what it would read after goes to the next.
    #[tokio::test]
    async fn ending_an_attempt_stops_its_body_taking_more() {
        let (tx, rx) = mpsc::channel(8);
        let replay = Replay::new(rx);
        let mut first = replay.next_body();
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        assert!(replay.end_attempt());
        tx.send(Ok(Bytes::from_static(b"b"))).await.unwrap();
        assert!(
            first.frame().await.unwrap().is_err(),
            "the old body reads an error"
        );
        let second = replay.next_body();
        drop(tx);
        assert_eq!(collect(second).await.unwrap(), b"ab");
    }
}
