//! Test support shared by every fdfs crate's integration tests (a dev-dependency only). Look here before
//! writing a helper in a test file, and put a new general one here.
//!
//! Servers and clusters:
//! - [`Server`] ([`server`]): a tracker, storage node or gateway future run in this process on `127.0.0.1:0`
//!   (`Server::start(|l, stop| fdfs_storage::run(l, config, stop))`), stopped when dropped or gracefully with
//!   [`Server::stop`]; [`Server::start_on`] restarts one on its old address. [`closed_addr`]: an address where
//!   nothing listens, and nothing will.
//!   [`inproc`] has one such function per server (`inproc::storage(config)`, behind the features `tracker`,
//!   `storage`, `gateway`).
//! - [`Node`] ([`node`]): one `fdfs` child process: start, wait for `listening on`, kill -9
//!   ([`Node::kill9`]), SIGSTOP/SIGCONT ([`Node::freeze`]/[`Node::thaw`]), SIGTERM ([`Node::stop`]),
//!   [`Node::restart`] on the same address and data dir, its log and peak RSS. [`node::command`]: the `fdfs`
//!   binary for a client command, with a clean environment. [`SECRET`]: the cluster secret of test clusters.
//! - [`Cluster`] ([`cluster`]): trackers, storage groups and a gateway as processes, from a [`ClusterSpec`]
//!   (`ClusterSpec::group(2).storage(&["--write-quorum", "1"])`); waits on member states
//!   ([`Cluster::wait_state`], [`Cluster::wait_tracker`]) and on storage nodes' sync status
//!   ([`Cluster::wait_sync`], [`Cluster::wait_peers_active`]); what a member holds ([`Cluster::held`],
//!   [`Cluster::wait_held`]); gateway [`Cluster::upload`] (of [`content`]: [`Cluster::upload_content`]) /
//!   [`Cluster::download`] / [`Cluster::delete`]; [`Cluster::add_storage`],
//!   [`Cluster::wipe`]; peak RSS while a transfer runs ([`Cluster::sample_rss`]).
//! - [`netns`]: servers in network namespaces, for partitions (cut and heal the link between two of them).
//!
//! Talking to them:
//! - [`http`]: [`client`] (no redirects) / [`follow_client`], and [`RequestExt`] on reqwest's request builder:
//!   `.secret()` (the cluster secret header), `.go()` (send, panic on a transport error), `.ok_json()` /
//!   `.ok_bytes()` (assert 200), `.error()` (status and `error.code`). [`error_of`] / [`error_code`] on a
//!   response (the JSON error shape, with a message, is asserted); [`metrics`] / [`metric`] / [`metric_sum`]
//!   for Prometheus text; [`redirected`] follows the gateway's 302 by hand.
//! - [`raw`]: HTTP/1.1 over a bare TCP connection, for bytes no client library sends.
//!
//! Waiting and data:
//! - [`eventually`] / [`eventually_ok`] / [`wait_until`] ([`wait`]): polling with a deadline (seconds or a
//!   `Duration`); never a fixed sleep, never a timing assertion.
//! - [`content`]: deterministic, non-repeating file contents; [`tempdir`] ([`dirs`]): node data on tmpfs when
//!   it has room; [`stored_files`] / [`stored_path`] / [`files_under`]: what a store path holds on disk.
//!
//! Tests run side by side in one binary (`cargo test` threads): nothing here uses a fixed port, a fixed path
//! or a process-wide setting, and every child process dies with its test.

pub mod cluster;
pub mod dirs;
pub mod http;
pub mod inproc;
pub mod netns;
pub mod node;
pub mod raw;
pub mod server;
pub mod wait;

pub use cluster::{member_in, peers_all, Cluster, ClusterSpec, Uploaded, STATE_TIMEOUT};
pub use dirs::{files_under, free_bytes, stored_files, stored_path, tempdir, TestDir};
pub use http::{
    client, error_code, error_of, follow_client, json_ok, metric, metric_sum, metrics, redirected,
    RequestExt,
};
pub use node::{args, Node, Role, SECRET};
pub use server::{closed_addr, Server};
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
