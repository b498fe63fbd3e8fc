//! fdfs gateway.
