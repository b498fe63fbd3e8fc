//! fdfs CLI.
