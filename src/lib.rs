//! portcullis: an allowlisting egress proxy with a lifetime-bounded upstream pool.
#![forbid(unsafe_code)]

pub mod config;
pub mod connect;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod retry;
pub mod upstream;
pub mod target;
