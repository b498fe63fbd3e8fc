//! Tests that move gigabytes take turns: each holds [`big_transfer`]'s guard for its whole run, so that the
//! test threads of one binary (six at a time, see `.cargo/config.toml`) never fill tmpfs and the page cache with
//! several multi-gigabyte stores at once. Everything else runs side by side.

use tokio::sync::{Mutex, MutexGuard};

/// Wait until no other big transfer of this test binary runs; the turn lasts while the guard lives (a test that
/// panics gives it up as it unwinds). Works across the tests' separate runtimes.
pub async fn big_transfer() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}
