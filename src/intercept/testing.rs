//! Unit-test helpers: CAs made by `init::generate`, written to a fresh folder and loaded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ca::InterceptCa;
use super::constraints::Constraints;
use crate::pattern::HostPattern;

/// A new empty folder under the system's temp folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-unit-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp folder");
    dir
}

pub fn constraints_for(hosts: &[&str]) -> Constraints {
    let patterns: Vec<HostPattern> = hosts
        .iter()
        .map(|h| HostPattern::parse(h).expect("host pattern"))
        .collect();
    Constraints::for_hosts(&patterns.iter().collect::<Vec<_>>())
}

/// A CA for `hosts` written into `dir` as `ca.pem` / `ca-key.pem` (0600); their paths.
pub fn write_ca(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) =
        super::init::generate(&constraints_for(hosts), time::OffsetDateTime::now_utc())
            .expect("generate CA");
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write CA");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (cert_path, key_path)
}

/// A loaded CA for `hosts`.
pub fn ca_for(hosts: &[&str]) -> Arc<InterceptCa> {
    let dir = temp_dir("ca");
    let (cert, key) = write_ca(&dir, hosts);
    Arc::new(InterceptCa::load(&cert, &key).expect("load CA"))
}
