//! Gateway tests: real trackers, storage nodes and gateways run in this process on 127.0.0.1:0, one module per
//! behaviour, in one test binary.

mod cluster;
mod common;
mod dashboard;
mod import_auth;
mod s3_postgres;
mod standalone;
