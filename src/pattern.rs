//! Name patterns the config holds and policy matches: `[[upstream]].hosts` and `[[client]].cert_names`.
//!
//! Below both config (which parses them) and policy, interception and the memory budget (which
//! match or read them), so none of those has to reach into another to use a pattern.

pub mod cert_name;
pub mod host;

pub use cert_name::{CertName, CertNamePattern};
pub use host::HostPattern;
