//! Leaf certificates for intercepted hosts: issued on demand, cached (bounded), renewed early.
//!
//! A leaf names exactly one host (DNS or IP subject alternative name), has its own ECDSA P-256
//! key and a random serial, is valid from an hour ago (clients with a clock a little behind)
//! for at most [`VALIDITY`], and is replaced once less than [`RENEW_BEFORE`] is left. The
//! cache holds at most [`CAPACITY`] hosts (least recently used go first): a wildcard upstream
//! lets clients name any number of hosts. Concurrent handshakes for one host wait for one
//! issuance instead of each signing its own.
//!
//! Issuance runs inline on the async worker, not in `spawn_blocking`: it costs about a
//! P-256 key generation plus one signature (`cargo bench --bench intercept`: ~0.1-0.2 ms, a
//! fraction of the server side of the TLS handshake that tokio-rustls runs inline anyway),
//! and happens once per host in six days. A thread hop would add latency without taking
//! the CPU work off the machine.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::OnceCell;

use super::ca::{random_serial, InterceptCa};
use crate::target::Host;

/// The longest a leaf is valid (SPEC §9: at most 7 days).
pub const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far back a leaf's validity starts, for clients whose clock is behind ours.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// A leaf with less than this left is replaced by a new one.
pub const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);
/// Hosts whose leaves are kept.
pub const CAPACITY: usize = 4096;

/// Why no leaf could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeafError {
    #[error("no intercept CA is loaded (intercept_ca_cert and intercept_ca_key)")]
    NoCa,
    #[error("cannot issue a certificate for {host}: {why}")]
    Issue { host: String, why: String },
}

/// A leaf and its key, as rustls serves them.
#[derive(Debug)]
pub struct Leaf {
    pub certified: Arc<CertifiedKey>,
    pub not_after: SystemTime,
    /// When to replace it; `None` when it already ends with its CA (a new one would too).
    renew_at: Option<SystemTime>,
}

impl Leaf {
    fn renew_due(&self, now: SystemTime) -> bool {
        self.renew_at.is_some_and(|at| now >= at)
    }
}

/// Sign a new leaf for `host` with `ca`, valid around `now`.
pub fn issue(ca: &InterceptCa, host: &Host, now: SystemTime) -> Result<Leaf, LeafError> {
    let fail = |why: String| LeafError::Issue {
        host: host.to_string(),
        why,
    };
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    match host {
        Host::Name(name) => {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| fail(e.to_string()))?;
            params.subject_alt_names = vec![SanType::DnsName(ia5)];
            dn.push(DnType::CommonName, name.as_str());
        }
        // No common name: a verifier that reads the CN as a DNS name would hold an address
        // against the CA's DNS constraints.
        Host::Ip(ip) => params.subject_alt_names = vec![SanType::IpAddress(*ip)],
    }
    dn.push(DnType::OrganizationName, "portcullis interception");
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Names the CA's key, so OpenSSL picks the right CA when an old and a new one share a name.
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial().map_err(fail)?);
    let clamped = ca.not_after() <= now + VALIDITY;
    let not_after = if clamped {
        ca.not_after()
    } else {
        now + VALIDITY
    };
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    let cert = ca.sign(params, &key).map_err(|e| fail(e.to_string()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing =
        rustls::crypto::ring::sign::any_ecdsa_type(&key_der).map_err(|e| fail(e.to_string()))?;
    Ok(Leaf {
        certified: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
        not_after,
        renew_at: (!clamped).then(|| not_after - RENEW_BEFORE),
    })
}

/// One host's leaf, issued at most once, by the CA it was made for.
struct Slot {
    ca: Arc<InterceptCa>,
    leaf: OnceCell<Arc<Leaf>>,
}

/// The current intercept CA and the leaves it has signed.
pub struct LeafCache {
    ca: RwLock<Option<Arc<InterceptCa>>>,
    slots: Mutex<LruCache<Host, Arc<Slot>>>,
    /// Leaves signed since start: how often the cache missed.
    issued: AtomicU64,
}

impl LeafCache {
    pub fn new(ca: Option<Arc<InterceptCa>>) -> LeafCache {
        Self::with_capacity(ca, CAPACITY)
    }

    pub fn with_capacity(ca: Option<Arc<InterceptCa>>, capacity: usize) -> LeafCache {
        LeafCache {
            ca: RwLock::new(ca),
            slots: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            issued: AtomicU64::new(0),
        }
    }

    /// The CA leaves are signed with now.
    pub fn ca(&self) -> Option<Arc<InterceptCa>> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Take the CA of a (re)loaded config. A different certificate drops every cached leaf
    /// (they chain to the old one); the same one keeps them. True when it changed.
    pub fn set_ca(&self, ca: Option<Arc<InterceptCa>>) -> bool {
        let mut current = self.ca.write().unwrap_or_else(|e| e.into_inner());
        let same = match (current.as_ref(), ca.as_ref()) {
            (Some(a), Some(b)) => a.same_as(b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            *current = ca;
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        !same
    }

    /// Cached leaves (issued or being issued).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leaves signed since start.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// The leaf for `host`: cached, or issued now (once, however many ask at the same time).
    pub async fn get(&self, host: &Host) -> Result<Arc<Leaf>, LeafError> {
        self.get_at(host, SystemTime::now()).await
    }

    /// [`get`](Self::get) with the wall-clock time given, so tests can move it.
    pub async fn get_at(&self, host: &Host, now: SystemTime) -> Result<Arc<Leaf>, LeafError> {
        let slot = self.slot(host, now)?;
        let leaf = slot
            .leaf
            .get_or_try_init(|| async {
                self.issued.fetch_add(1, Ordering::Relaxed);
                issue(&slot.ca, host, now).map(Arc::new)
            })
            .await?;
        Ok(leaf.clone())
    }

    /// The slot to issue into or read from: the cached one while its leaf is fresh and from
    /// the current CA, else a new one (which replaces it).
    fn slot(&self, host: &Host, now: SystemTime) -> Result<Arc<Slot>, LeafError> {
        let ca = self.ca().ok_or(LeafError::NoCa)?;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(host) {
            let current = Arc::ptr_eq(&slot.ca, &ca);
            // A slot still being filled is joined: its leaf will be fresh.
            let fresh = slot.leaf.get().is_none_or(|leaf| !leaf.renew_due(now));
            if current && fresh {
                return Ok(slot.clone());
            }
        }
        let slot = Arc::new(Slot {
            ca,
            leaf: OnceCell::new(),
        });
        slots.put(host.clone(), slot.clone());
        Ok(slot)
    }
}

#[cfg(test)]
mod tests;
