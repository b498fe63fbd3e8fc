//! Storage-node tests: real nodes (and trackers) run in this process on 127.0.0.1:0, one module per behaviour,
//! in one test binary.

mod common;
mod downloads;
mod fastdfs;
mod http;
mod proxy;
mod replication;
