//! portcullis: an allowlisting egress proxy with a lifetime-bounded upstream pool.
#![forbid(unsafe_code)]

pub mod config;
pub mod http1;
pub mod target;
pub mod policy;
