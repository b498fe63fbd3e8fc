//! Deadlines for node-to-node transfers (replica uploads, catch-up downloads).
//!
//! A peer that is frozen (SIGSTOP, a hung disk, a half-dead network) keeps its TCP connections open, so a
//! request to it never fails on its own. Every transfer therefore gets two limits: a deadline proportional to
//! its size ([`TransferLimits::deadline`]) and a stall timeout: while a body streams, no chunk may take longer
//! than [`TransferLimits::stall`] ([`Progress::watch`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;

/// Time limits of one kind of transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// Time any request gets whatever its size (connecting, the peer's fsync and answer).
    pub base: Duration,
    /// Slowest tolerated rate, bytes per second: the deadline grows by `size / min_rate`.
    pub min_rate: u64,
    /// Longest time without a chunk while a body streams (and before the first one).
    pub stall: Duration,
}

impl Default for TransferLimits {
    /// 30 s plus 1 s per MiB; 15 s without a byte.
    fn default() -> Self {
        TransferLimits {
            base: Duration::from_secs(30),
            min_rate: 1 << 20,
            stall: Duration::from_secs(15),
        }
    }
}

impl TransferLimits {
    /// Default limits with another stall timeout.
    pub fn with_stall(stall: Duration) -> Self {
        TransferLimits {
            stall,
            ..TransferLimits::default()
        }
    }

    /// Whole-request deadline for a transfer of `bytes`.
    pub fn deadline(&self, bytes: u64) -> Duration {
        let per_byte = Duration::from_secs_f64(bytes as f64 / self.min_rate.max(1) as f64);
        self.base.saturating_add(per_byte)
    }
}

/// A transfer failed for lack of progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no data moved for {0:?}")]
pub struct Stalled(pub Duration);

/// When a transfer's body last moved; shared by the body stream ([`Progress::track`]) and the watchdog
/// ([`Progress::watch`]).
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// Milliseconds after `start` of the last chunk.
    last_ms: AtomicU64,
    /// The body ended: from then on only the whole-request deadline applies (the peer may fsync a while).
    done: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// Progress of a transfer starting now.
    pub fn new() -> Self {
        Progress {
            inner: Arc::new(Inner {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
                done: AtomicBool::new(false),
            }),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the body last moved; zero once it ended.
    fn idle(&self) -> Duration {
        if self.inner.done.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last =
            self.inner.start + Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed));
        last.elapsed()
    }

    /// `stream`, with every chunk counted as progress and its end recorded.
    pub fn track<S: Stream + Unpin>(&self, stream: S) -> Tracked<S> {
        Tracked {
            stream,
            progress: self.clone(),
        }
    }

    /// Run `fut`, failing with [`Stalled`] when the tracked body does not move for `stall` (counted from now
    /// until the body's first chunk, then between chunks, and no longer once it ended).
    pub async fn watch<F: Future>(&self, stall: Duration, fut: F) -> Result<F::Output, Stalled> {
        self.touch();
        let watchdog = async {
            loop {
                let idle = self.idle();
                if idle >= stall {
                    return;
                }
                // Wake when the stall would be reached if nothing moves (at least every second once done).
                tokio::time::sleep((stall - idle).max(Duration::from_millis(10))).await;
            }
        };
        tokio::select! {
            out = fut => Ok(out),
            () = watchdog => Err(Stalled(stall)),
        }
    }
}

/// A stream whose chunks count as [`Progress`].
pub struct Tracked<S> {
    stream: S,
    progress: Progress,
}

impl<S: Stream + Unpin> Stream for Tracked<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = Pin::new(&mut self.stream).poll_next(cx);
        match &polled {
            Poll::Ready(Some(_)) => self.progress.touch(),
            Poll::Ready(None) => self.progress.inner.done.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn deadline_grows_with_size() {
        let l = TransferLimits::default();
        assert_eq!(l.deadline(0), Duration::from_secs(30));
        assert_eq!(l.deadline(10 << 20), Duration::from_secs(40));
    }

    #[tokio::test]
    async fn a_body_that_stops_moving_is_stalled_and_a_finished_one_is_not() {
        let p = Progress::new();
        // Two chunks, then nothing forever.
        let mut body =
            p.track(futures_util::stream::iter([1, 2]).chain(futures_util::stream::pending()));
        let r = p
            .watch(Duration::from_millis(200), async {
                while body.next().await.is_some() {}
            })
            .await;
        assert_eq!(r, Err(Stalled(Duration::from_millis(200))));

        // A body that ended: a slow answer afterwards is not a stall.
        let p = Progress::new();
        let mut body = p.track(futures_util::stream::iter([1, 2]));
        let r = p
            .watch(Duration::from_millis(100), async {
                while body.next().await.is_some() {}
                tokio::time::sleep(Duration::from_millis(400)).await;
                7
            })
            .await;
        assert_eq!(r, Ok(7));
    }
}
