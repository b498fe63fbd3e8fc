//! Waiting for eventual consistency: poll a check until it holds, panicking after a deadline with what was
//! awaited (and the last reason it did not hold). Never a fixed sleep, never a timing assertion.
//!
//! Every deadline is a [`Timeout`]: whole seconds (`30`) or a [`Duration`].

use std::future::Future;
use std::time::{Duration, Instant};

/// A deadline: whole seconds (`u64`) or a [`Duration`].
pub trait Timeout {
    /// The deadline as a duration.
    fn duration(self) -> Duration;
}

impl Timeout for u64 {
    fn duration(self) -> Duration {
        Duration::from_secs(self)
    }
}

impl Timeout for Duration {
    fn duration(self) -> Duration {
        self
    }
}

/// Poll `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: impl Timeout, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let timeout = timeout.duration();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `check` until it returns `Ok`, panicking with `what` and the last `Err` after `timeout`.
pub async fn eventually_ok<T, F, Fut>(timeout: impl Timeout, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let timeout = timeout.duration();
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Poll a synchronous condition (a file on disk, a counter) until it holds, panicking with `what` after
/// `timeout`; returns how long it took (for measurements that are printed, never asserted).
pub async fn wait_until(
    timeout: impl Timeout,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let timeout = timeout.duration();
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}
