//! portcullis: an allowlisting egress proxy with a lifetime-bounded upstream pool.
#![forbid(unsafe_code)]

pub mod accept;
pub mod addr_text;
pub mod admin;
pub mod app;
pub mod budget;
pub mod config;
pub mod connect;
pub mod error;
pub mod file;
pub mod http1;
pub mod intercept;
pub mod learn;
pub mod log_writer;
pub mod metrics;
pub mod pattern;
pub mod pem;
pub mod phase;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod retry;
pub mod server_tls;
pub mod state;
pub mod target;
pub mod trust;
pub mod upstream;
pub mod workers;
