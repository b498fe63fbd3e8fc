//! fdfs storage.
