//! Test harness: the shared one in `fdfs-testkit` (a real cluster of `fdfs` child processes, see
//! [`fdfs_testkit::process`]), re-exported under the names the test files use.
#![allow(dead_code, unused_imports)]

pub use fdfs_testkit::process::*;
pub use fdfs_testkit::{closed_addr, content, error_code, error_of, eventually, wait_until};

/// The `fdfs` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fdfs");
