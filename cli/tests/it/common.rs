//! Test harness: the shared one in `fdfs-testkit` (a real cluster of `fdfs` child processes, see
//! [`fdfs_testkit::cluster`]), re-exported under the names the test files use.
#![allow(dead_code, unused_imports)]

pub use fdfs_testkit::cluster::*;
pub use fdfs_testkit::dirs::*;
pub use fdfs_testkit::node::*;
pub use fdfs_testkit::{closed_addr, content, error_code, error_of, eventually};

/// The `fdfs` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fdfs");

/// `PUT /upload/{name}` on the cluster's gateway, asserting 200; the JSON answer.
pub async fn upload(c: &Cluster, name: &str, body: Vec<u8>) -> serde_json::Value {
    c.upload(name, body).await
}
