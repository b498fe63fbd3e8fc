//! fdfs tracker.
