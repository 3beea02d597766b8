//! What an upstream may reach, and how: the keys whose change on reload closes its pooled connections (SPEC §8).
//!
//! A connection pooled under the old config was made by the old rules: dialed to an address
//! the old `hosts`, `ports` and `allow_private` allowed, with the old `tls` and `connect`,
//! verified against the old trust roots. When a reload changes any of these, no request may be served on such
//! a connection. Each upstream carries a fingerprint of exactly these keys; the pool stamps
//! every connection with the fingerprint it was dialed under and closes those that differ.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use rustls::pki_types::CertificateDer;

use super::{ConnectMode, TlsMode};
use crate::pattern::HostPattern;

/// The keys that decide what an upstream may reach and how, as loaded.
pub struct Reach<'a> {
    pub hosts: &'a [HostPattern],
    pub ports: &'a [u16],
    pub allow_private: bool,
    pub tls: TlsMode,
    /// How a CONNECT is served (tunnel or intercept): intercepted requests share the pool of
    /// TLS origination to the destination.
    pub connect: ConnectMode,
    pub ca_file: Option<&'a Path>,
    /// The certificates `ca_file` held when the config was loaded: a rotated bundle at the
    /// same path changes the reach too.
    pub ca_roots: &'a [CertificateDer<'static>],
}

impl Reach<'_> {
    /// Equal for two upstreams exactly when every key above is equal (order of `hosts` and
    /// `ports` included: a reordering closes connections needlessly, but never wrongly).
    pub fn fingerprint(&self) -> u64 {
        // SipHash with fixed keys: the same value for the same config in every process.
        let mut h = DefaultHasher::new();
        self.hosts.hash(&mut h);
        self.ports.hash(&mut h);
        self.allow_private.hash(&mut h);
        self.tls.hash(&mut h);
        self.connect.hash(&mut h);
        self.ca_file.hash(&mut h);
        self.ca_roots.len().hash(&mut h);
        for cert in self.ca_roots {
            cert.as_ref().hash(&mut h);
        }
        h.finish()
    }
}
