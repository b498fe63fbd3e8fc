//! Tracker tests: a real tracker in this process on 127.0.0.1:0, one module per behaviour, in one test binary.

mod http;
