//! Test support shared by every fdfs crate's integration tests (a dev-dependency only). Look here before
//! writing a helper in a test file, and put a new general one here.
//!
//! Servers and clusters:
//! - [`Server`] ([`server`]): a server future run in this process on `127.0.0.1:0`, stopped when dropped or
//!   gracefully with [`Server::stop`]; [`inproc`] starts each fdfs server that way (`inproc::tracker(config)`,
//!   `inproc::storage(config)` (waits for `/health`), `inproc::storage_on(old_addr, config)` to restart one,
//!   `inproc::gateway(config)`; features `tracker`, `storage`, `gateway`). [`closed_addr`]: an address where
//!   nothing listens, and nothing will while the tests run.
//! - [`Node`] ([`node`]): one `fdfs` child process: started, waited for (`listening on`), kill -9
//!   ([`Node::kill9`]), SIGSTOP/SIGCONT ([`Node::freeze`]/[`Node::thaw`]), SIGTERM ([`Node::stop`]),
//!   [`Node::restart`] on the same address and data dir ([`Node::restart_with`] extra flags for one run),
//!   [`Node::wait_healthy`], its log and peak RSS; killed when dropped. [`node::command`]: the `fdfs` binary
//!   for a client command (`fdfs upload ...`) with a clean environment; [`node::command_with_secret`] for the
//!   tools that call internal routes. [`SECRET`]: the cluster secret of test clusters.
//! - [`Cluster`] ([`cluster`]): trackers, storage groups and a gateway as processes, from a [`ClusterSpec`]
//!   (`ClusterSpec::group(2).storage(&["--write-quorum", "1"])`: flags are added to the defaults). Waits on
//!   member states ([`Cluster::wait_state`], [`Cluster::wait_tracker`]) and on storage nodes' sync status
//!   ([`Cluster::wait_sync`], [`Cluster::wait_sync_all`], [`Cluster::wait_peers_active`]); what a member
//!   holds itself ([`Cluster::held`], [`Cluster::wait_held`]); the gateway's [`Cluster::upload`],
//!   [`Cluster::upload_content`] (of [`content`]), [`Cluster::download`], [`Cluster::delete`]; changes
//!   ([`Cluster::kill9`], [`Cluster::restart`], [`Cluster::wipe`], [`Cluster::add_storage`]); peak RSS while
//!   a transfer runs ([`Cluster::sample_rss`]); [`Cluster::for_big_files`].
//! - [`netns`]: servers in network namespaces, for partitions (cut and heal the link between two of them).
//! - [`postgres`]: a PostgreSQL server of the test's own ([`postgres::Postgres`]: Debian's, in a temp dir, on a
//!   free port; kill -9 and restart).
//! - [`unit`]: servers started as the shipped systemd units start them, on simulated hosts (namespaces).
//! - [`nemesis`]: a fault schedule from a seed against a cluster in namespaces, with a history checker and a
//!   report (the cli test `nemesis_short_run`, `bench/nemesis.sh`).
//!
//! Talking to them:
//! - [`http`]: [`client`] (no redirects) / [`follow_client`], and [`RequestExt`] on reqwest's request builder:
//!   `.secret()` (the cluster secret header), `.go()` (send; a transport error panics naming the request),
//!   `.ok_json()` / `.ok_bytes()` (assert 200, else panic with the body), `.error()` (status and `error.code`),
//!   `.try_json()` / `.try_bytes()` (`Err` with the reason: for polling). [`error_of`] / [`error_code`] /
//!   [`json_ok`] on a response (the JSON error shape, with a non-empty message, is asserted); [`metrics`] /
//!   [`metric`] / [`metric_sum`] for Prometheus text; [`redirected`] follows the gateway's 302 by hand.
//! - [`fastdfs`]: the FastDFS binary protocol as a client library speaks it (tracker query, upload, download).
//! - [`raw`]: HTTP/1.1 over a bare TCP connection, for bytes no client library sends
//!   (`raw::send(addr, &raw::request("GET", target, headers, body), How::within(15))`).
//!
//! Waiting and data:
//! - [`eventually`] (a check returning `Option`) / [`eventually_ok`] (a `Result`, whose last `Err` is
//!   reported) / [`wait_until`] (a plain condition; returns how long it took) ([`wait`]): polling with a
//!   deadline, in seconds or as a `Duration`; never a fixed sleep, never a timing assertion.
//! - [`big_transfer`] ([`turns`]): tests that move gigabytes take turns ([`Cluster::for_big_files`] takes
//!   one for the cluster's life).
//! - [`content`]: deterministic, non-repeating file contents; [`tempdir`] ([`dirs`]): node data on tmpfs when
//!   it has room; [`stored_files`] / [`stored_path`] / [`files_under`]: what a store path holds on disk.
//!
//! Tests run side by side in one binary (`cargo test` threads): nothing here uses a fixed port, a fixed path
//! or a process-wide setting (servers run in the test process share the process-wide metrics recorder, so a
//! test that counts requests runs against processes), and every child process dies with its test.

pub mod cluster;
pub mod dirs;
pub mod fastdfs;
pub mod http;
pub mod inproc;
pub mod nemesis;
pub mod netns;
pub mod node;
pub mod postgres;
pub mod powercut;
pub mod raw;
pub mod server;
pub mod turns;
pub mod unit;
pub mod wait;

pub use cluster::{member_in, peers_all, Cluster, ClusterSpec, Uploaded, STATE_TIMEOUT};
pub use dirs::{
    evict_from_page_cache, files_under, free_bytes, stored_files, stored_path, tempdir, TestDir,
};
pub use http::{
    client, error_code, error_of, follow_client, json_ok, metric, metric_sum, metrics, redirected,
    RequestExt,
};
pub use node::{args, freeze, signal, Node, Role, SECRET};
pub use server::{closed_addr, Server};
pub use turns::big_transfer;
pub use wait::{eventually, eventually_ok, wait_until};

/// Size of the big-file tests: `FDFS_BIG_FILE_MB` MiB (`256` makes them quicker locally), 2 GiB by default.
pub fn big_file_size() -> u64 {
    let mb: u64 = std::env::var("FDFS_BIG_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    mb << 20
}

/// Deterministic content number `i` of `len` bytes: a pseudo-random stream (splitmix64) seeded by `i`, so
/// different files differ, no two offsets of a file line up by accident (a shifted read is caught), and
/// `content(i, n)` is a prefix of `content(i, m)` for `n < m`.
pub fn content(i: usize, len: usize) -> Vec<u8> {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut state = (i as u64).wrapping_mul(GOLDEN) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(GOLDEN);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}
