//! End-to-end tests of `fdfs`: real tracker, storage and gateway processes (`fdfs tracker|storage|gateway`) on
//! 127.0.0.1:0, one module per behaviour. One test binary for the crate, so the workspace links a handful of
//! test executables instead of one per file.

mod big_file;
mod cli_commands;
mod core_path;
mod dashboard;
mod deploy;
mod deploy_configs;
mod durability;
mod failing_disk;
mod full_member;
mod gray_failures;
mod hostile;
mod import_fastdfs;
mod internal_port;
mod nemesis;
mod partition;
mod peer_faults;
mod power_cut;
mod refused_member;
mod replication;
mod s3_buckets;
mod s3_conditional;
mod s3_copy;
mod s3_power_cut;
mod s3door;
mod scale_out;
mod scrub;
mod sync_faults;
mod thumbnails;
mod tus;
mod tus_big;
mod up;
