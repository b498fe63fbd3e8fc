//! Test support shared by every fdfs crate's tests (a dev-dependency only).
//!
//! - [`server`]: a server future (tracker, storage node, gateway) run in this process on `127.0.0.1:0`,
//!   stopped when dropped, or stopped gracefully with [`server::Server::stop`].
//! - [`process`]: a real cluster of `fdfs` child processes (kill -9, SIGSTOP, restart on the same port).
//! - [`netns`]: servers in network namespaces, for partitions (cut and heal the link between two of them).
//! - [`unit`]: servers started as the shipped systemd units start them, on simulated hosts (namespaces).
//! - [`eventually`] / [`wait_until`]: polling with a deadline (never a fixed sleep, never a timing assertion).
//! - [`error_of`] / [`error_code`]: the `error.code` of a JSON error answer.
//! - [`content`]: deterministic file contents.
//! - [`big_transfer`] ([`turns`]): tests that move gigabytes take turns.

pub mod netns;
pub mod process;
pub mod server;
pub mod turns;
pub mod unit;

use std::future::Future;
use std::time::{Duration, Instant};

pub use server::{closed_addr, Server};
pub use turns::big_transfer;

/// Poll `check` until it returns `Some`, panicking with `what` after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll a synchronous condition until it holds, panicking with `what` after `timeout`; returns how long it took.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// A reqwest client that ignores proxy settings and does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// The status and `error.code` of a JSON error answer (panics if the body is not the JSON error shape).
pub async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("error body");
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: error body is not JSON ({e}): {text}"));
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error.code in {text}"));
    (status, code.to_owned())
}

/// The `error.code` of a JSON error answer.
pub async fn error_code(resp: reqwest::Response) -> String {
    error_of(resp).await.1
}

/// Deterministic test content number `i` of `len` bytes (different files differ, no file is all one byte).
pub fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i * 131 + j * 7 + j / 251) as u8)
        .collect()
}
