//! Throw-away certificate authorities and leaf certificates, with rustls configs on the ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Always the ring provider, chosen explicitly: tests must not depend on a process-wide default.
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that exists only for one test.
pub struct TestCa {
    name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate (chain without the root) and its private key.
pub struct IssuedCert {
    /// Leaf first; the CA itself is the trust anchor and is not included.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    chain_pem: String,
    key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            name: name.to_string(),
            cert,
            key,
        }
    }

    /// A server certificate for `names`; entries that parse as IP addresses become IP SANs.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        self.sign(leaf_params(names))
    }

    /// Signed by this CA but valid only during the year 2000.
    pub fn expired_cert(&self, names: &[&str]) -> IssuedCert {
        let mut params = leaf_params(names);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        self.sign(params)
    }

    /// A leaf that is its own issuer: no CA trusts it.
    pub fn self_signed(names: &[&str]) -> IssuedCert {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = leaf_params(names)
            .self_signed(&key)
            .expect("self-sign leaf");
        issued(&cert, &key)
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes the CA certificate as `<dir>/<name>-ca.pem` (e.g. for a `ca_file` config key or `curl --cacert`).
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let file: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.join(format!("{file}-ca.pem"));
        std::fs::write(&path, self.pem()).expect("write CA pem");
        path
    }

    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).expect("add CA to root store");
        roots
    }

    /// A client config that trusts only this CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        Arc::new(config)
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client_config())
    }

    /// A client certificate (extended key usage clientAuth) naming `names`: entries with
    /// `://` become URI SANs (SPIFFE IDs), others DNS names, IP addresses IP SANs.
    pub fn client_cert(&self, names: &[&str]) -> IssuedCert {
        self.sign(client_params(names))
    }

    /// A client certificate with no SAN at all: its identity is its subject CN.
    pub fn client_cert_cn_only(&self, common_name: &str) -> IssuedCert {
        let mut params = client_params(&[]);
        params.distinguished_name = distinguished_name(common_name);
        self.sign(params)
    }

    /// A client certificate that was valid only during the year 2000.
    pub fn expired_client_cert(&self, names: &[&str]) -> IssuedCert {
        let mut params = client_params(names);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        self.sign(params)
    }

    /// A client config that trusts only this CA and presents `cert` when asked for one.
    pub fn client_config_with_cert(&self, cert: &IssuedCert) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(self.root_store())
            .with_client_auth_cert(cert.chain.clone(), cert.key())
            .expect("client certificate and key match");
        Arc::new(config)
    }

    /// Like [`Self::client_config`], limited to one TLS version (`&rustls::version::TLS12`).
    pub fn client_config_for(
        &self,
        version: &'static rustls::SupportedProtocolVersion,
        cert: Option<&IssuedCert>,
    ) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[version])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(self.root_store());
        let config = match cert {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key())
                .expect("client certificate and key match"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    fn sign(&self, params: CertificateParams) -> IssuedCert {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        issued(&cert, &key)
    }
}

impl IssuedCert {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Server config offering only `http/1.1` over ALPN, like a plain HTTP/1 API.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key())
            .expect("certificate and key match");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }

    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `<dir>/<stem>.pem` (the chain) and `<dir>/<stem>-key.pem`; their paths.
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, &self.chain_pem).expect("write certificate pem");
        std::fs::write(&key, &self.key_pem).expect("write key pem");
        (cert, key)
    }
}

impl Clone for IssuedCert {
    fn clone(&self) -> Self {
        IssuedCert {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "portcullis tests");
    dn
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("valid subject alt names");
    params.distinguished_name = distinguished_name(names.first().copied().unwrap_or("leaf"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

fn client_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|n| {
            if n.contains("://") {
                SanType::URI((*n).try_into().expect("an IA5 URI"))
            } else if let Ok(ip) = n.parse() {
                SanType::IpAddress(ip)
            } else {
                SanType::DnsName((*n).try_into().expect("an IA5 DNS name"))
            }
        })
        .collect();
    params.distinguished_name = distinguished_name(names.first().copied().unwrap_or("client"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn issued(cert: &rcgen::Certificate, key: &KeyPair) -> IssuedCert {
    IssuedCert {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
