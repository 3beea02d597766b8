//! `portcullis check` prints a config that loads back to the same effective config.
//!
//! Shared by the `config_load` fuzz target (through `lib.rs`) and, through `#[path]`, by
//! `tests/config_fixtures.rs` (the shipped configs and the valid fixtures).

use portcullis::config::Config;

/// Print `config`, load the text again under the same source, and compare: the text printed
/// a second time, and every effective value (those `check` does not print included).
pub fn config_round_trip(config: &Config) -> Result<(), String> {
    let printed = config.to_string();
    let again = Config::from_toml(&printed, &config.source)
        .map_err(|e| format!("what check prints does not load:\n{e}\n--- printed\n{printed}"))?;
    let reprinted = again.to_string();
    if reprinted != printed {
        return Err(format!(
            "what check prints prints differently once loaded\n--- first\n{printed}\n--- again\n{reprinted}"
        ));
    }
    same_effective(config, &again)
        .map_err(|what| format!("the round trip changed {what}\n--- printed\n{printed}"))
}

/// Every effective value, compared field by field (a field the printer forgot would come back
/// as its default, and print the same both times).
fn same_effective(a: &Config, b: &Config) -> Result<(), String> {
    // `Debug` of the proxy settings shows every value; TLS material by its files and the
    // intercept CA by its fingerprint, never a key.
    let (pa, pb) = (format!("{:?}", a.proxy), format!("{:?}", b.proxy));
    if pa != pb {
        return Err(format!("[proxy]: {pa} vs {pb}"));
    }
    if a.upstreams.len() != b.upstreams.len() || a.clients.len() != b.clients.len() {
        return Err("the number of upstreams or clients".into());
    }
    for (x, y) in a.upstreams.iter().zip(&b.upstreams) {
        let same = x.name == y.name
            && x.hosts == y.hosts
            && x.ports == y.ports
            && x.tls == y.tls
            && x.connect == y.connect
            && x.ca_file == y.ca_file
            && x.ca_roots == y.ca_roots
            && x.remote_idle_limit == y.remote_idle_limit
            && x.settings == y.settings
            && x.reach == y.reach;
        if !same {
            return Err(format!("upstream {:?}: {x:?} vs {y:?}", x.name));
        }
    }
    for (x, y) in a.clients.iter().zip(&b.clients) {
        let same = x.name == y.name
            && x.cidrs == y.cidrs
            && x.username == y.username
            && x.password == y.password
            && x.password_env == y.password_env
            && x.cert_names == y.cert_names
            && x.upstreams == y.upstreams;
        if !same {
            return Err(format!("client {:?}: {x:?} vs {y:?}", x.name));
        }
    }
    Ok(())
}
