//! Which IP addresses count as private (SPEC §4), including the IPv6 forms that carry an IPv4 address.
//!
//! The check runs on the address that will be dialed, so every IPv6 form
//! that a host stack or a translator turns back into an IPv4 address is
//! judged by the IPv4 address it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is private.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Private {
    /// The class, e.g. `"rfc1918"` or `"ipv4-mapped loopback"`: a log field and message word.
    pub class: &'static str,
    /// Link-local in any form (169.254/16, fe80::/10, or an IPv6 form carrying 169.254/16):
    /// where cloud metadata services live, so refused even under `allow_private`.
    pub link_local: bool,
}

/// The private class an address belongs to, or `None` when it is public.
///
/// IPv6 addresses that carry an IPv4 address (mapped, translated, compatible,
/// NAT64, 6to4, Teredo) are labelled with the form and the class of the
/// embedded address, e.g. `"ipv4-mapped loopback"`.
pub fn classify(ip: IpAddr) -> Option<Private> {
    match ip {
        IpAddr::V4(v4) => carried(Carrier::Plain, v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// The IPv4 ranges that are private, whichever way the address is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V4Class {
    Unspecified,
    ThisNetwork,
    Loopback,
    Rfc1918,
    Cgnat,
    LinkLocal,
    IetfProtocol,
    Benchmarking,
    Multicast,
    Broadcast,
    Reserved,
}

/// How an IPv4 address reached us: as itself or inside an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    Plain,
    /// `::ffff:a.b.c.d` (RFC 4291).
    Mapped,
    /// `::ffff:0:a.b.c.d` (RFC 2765 SIIT).
    Translated,
    /// `::a.b.c.d` (deprecated, still parsed by some stacks).
    Compatible,
    /// `64:ff9b::a.b.c.d` (RFC 6052 well-known prefix).
    Nat64,
    /// `2002:AABB:CCDD::/48` (RFC 3056).
    SixToFour,
    /// `2001:0:SSSS:SSSS:…` (RFC 4380): the Teredo server's address, in the clear.
    TeredoServer,
    /// `2001:0:…:CCCC:CCCC` (RFC 4380): the client's public address, every bit inverted.
    TeredoClient,
}

// Labels must be `&'static str` so they can go straight into a metric label
// or a log field; the macro spells out every (carrier, class) pair.
macro_rules! labels {
    ($($class:ident => $name:literal),* $(,)?) => {
        fn label(class: V4Class, carrier: Carrier) -> &'static str {
            match (carrier, class) {
                $(
                    (Carrier::Plain, V4Class::$class) => $name,
                    (Carrier::Mapped, V4Class::$class) => concat!("ipv4-mapped ", $name),
                    (Carrier::Translated, V4Class::$class) => concat!("ipv4-translated ", $name),
                    (Carrier::Compatible, V4Class::$class) => concat!("ipv4-compatible ", $name),
                    (Carrier::Nat64, V4Class::$class) => concat!("nat64 ", $name),
                    (Carrier::SixToFour, V4Class::$class) => concat!("6to4 ", $name),
                    (Carrier::TeredoServer, V4Class::$class) => concat!("teredo-server ", $name),
                    (Carrier::TeredoClient, V4Class::$class) => concat!("teredo-client ", $name),
                )*
            }
        }
    };
}

labels! {
    Unspecified => "unspecified",
    ThisNetwork => "this-network",
    Loopback => "loopback",
    Rfc1918 => "rfc1918",
    Cgnat => "cgnat",
    LinkLocal => "link-local",
    IetfProtocol => "ietf-protocol-assignments",
    Benchmarking => "benchmarking",
    Multicast => "multicast",
    Broadcast => "broadcast",
    Reserved => "reserved",
}

fn v4_class(ip: Ipv4Addr) -> Option<V4Class> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        _ if ip.is_unspecified() => V4Class::Unspecified,
        _ if ip.is_broadcast() => V4Class::Broadcast,
        (0, _, _) => V4Class::ThisNetwork,
        (127, _, _) => V4Class::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => V4Class::Rfc1918,
        (100, 64..=127, _) => V4Class::Cgnat,
        (169, 254, _) => V4Class::LinkLocal,
        (192, 0, 0) => V4Class::IetfProtocol,
        (198, 18..=19, _) => V4Class::Benchmarking,
        (224..=239, _, _) => V4Class::Multicast,
        (240..=255, _, _) => V4Class::Reserved,
        _ => return None,
    };
    Some(class)
}

/// The class of an IPv4 address that arrived by `carrier`.
fn carried(carrier: Carrier, v4: Ipv4Addr) -> Option<Private> {
    v4_class(v4).map(|class| Private {
        class: label(class, carrier),
        link_local: class == V4Class::LinkLocal,
    })
}

/// An IPv6 address's own class (not one it carries).
fn native(class: &'static str) -> Option<Private> {
    Some(Private {
        class,
        link_local: class == "link-local",
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<Private> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        // `::` and `::1` sit inside ::/96 but are IPv6's own addresses.
        [0, 0, 0, 0, 0, 0, 0, 0] => native("unspecified"),
        [0, 0, 0, 0, 0, 0, 0, 1] => native("loopback"),
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => carried(Carrier::Mapped, embedded(hi, lo)),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => carried(Carrier::Translated, embedded(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] => carried(Carrier::Compatible, embedded(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => carried(Carrier::Nat64, embedded(hi, lo)),
        // RFC 8215 local-use NAT64: where the IPv4 address sits depends on a
        // prefix length we cannot know, and the block is never global anyway.
        [0x64, 0xff9b, 1, ..] => native("nat64-local-use"),
        [0x2002, hi, lo, ..] => carried(Carrier::SixToFour, embedded(hi, lo)),
        [0x2001, 0, server_hi, server_lo, _, _, client_hi, client_lo] => {
            let server = carried(Carrier::TeredoServer, embedded(server_hi, server_lo));
            let client = carried(Carrier::TeredoClient, embedded(!client_hi, !client_lo));
            // Either end can be where the packets go; a link-local one is named first, as
            // it alone stays refused under `allow_private`.
            match (client, server) {
                (c, Some(s)) if s.link_local && !c.is_some_and(|c| c.link_local) => Some(s),
                (Some(c), _) => Some(c),
                (None, s) => s,
            }
        }
        [first, ..] if first & 0xff00 == 0xff00 => native("multicast"),
        [first, ..] if first & 0xfe00 == 0xfc00 => native("unique-local"),
        [first, ..] if first & 0xffc0 == 0xfe80 => native("link-local"),
        // Deprecated site-local (RFC 3879): still private wherever it is used.
        [first, ..] if first & 0xffc0 == 0xfec0 => native("site-local"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let cases: &[(&str, Option<&str>)] = &[
            // IPv4 public, including the edges of every private range.
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("11.0.0.0", None),
            ("126.255.255.255", None),
            ("128.0.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.169.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("169.255.0.0", None),
            ("223.255.255.255", None),
            ("191.255.255.255", None),
            ("192.0.1.0", None),
            ("192.0.2.1", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            // IPv4 private.
            ("0.0.0.0", Some("unspecified")),
            ("0.0.0.1", Some("this-network")),
            ("0.255.255.255", Some("this-network")),
            ("127.0.0.1", Some("loopback")),
            ("127.0.0.0", Some("loopback")),
            ("127.255.255.255", Some("loopback")),
            ("10.0.0.0", Some("rfc1918")),
            ("10.255.255.255", Some("rfc1918")),
            ("172.16.0.0", Some("rfc1918")),
            ("172.31.255.255", Some("rfc1918")),
            ("192.168.0.0", Some("rfc1918")),
            ("192.168.255.255", Some("rfc1918")),
            ("100.64.0.0", Some("cgnat")),
            ("100.127.255.255", Some("cgnat")),
            ("169.254.0.0", Some("link-local")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.255.255", Some("link-local")),
            ("192.0.0.0", Some("ietf-protocol-assignments")),
            ("192.0.0.8", Some("ietf-protocol-assignments")),
            ("192.0.0.255", Some("ietf-protocol-assignments")),
            ("198.18.0.0", Some("benchmarking")),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("224.0.0.0", Some("multicast")),
            ("239.255.255.255", Some("multicast")),
            ("240.0.0.0", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
            // IPv6 public.
            ("2606:4700::1", None),
            ("2001:4860:4860::8888", None),
            ("2a00:1450:4001:80b::200e", None),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("fe00::1", None),
            // IPv6 private.
            ("ff00::", Some("multicast")),
            ("::2", Some("ipv4-compatible this-network")),
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fc00::", Some("unique-local")),
            ("fd12:3456:789a::1", Some("unique-local")),
            (
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some("unique-local"),
            ),
            ("fe80::1", Some("link-local")),
            ("febf:ffff::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("ff02::1", Some("multicast")),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("multicast")),
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Some("ipv4-mapped loopback")),
            ("::ffff:10.1.2.3", Some("ipv4-mapped rfc1918")),
            ("::ffff:169.254.169.254", Some("ipv4-mapped link-local")),
            ("::ffff:100.64.0.1", Some("ipv4-mapped cgnat")),
            ("::ffff:0.0.0.0", Some("ipv4-mapped unspecified")),
            ("::ffff:224.0.0.1", Some("ipv4-mapped multicast")),
            ("::ffff:255.255.255.255", Some("ipv4-mapped broadcast")),
            ("::ffff:7f00:1", Some("ipv4-mapped loopback")),
            ("::ffff:8.8.8.8", None),
            ("::ffff:172.32.0.0", None),
            ("::ffff:198.18.0.1", Some("ipv4-mapped benchmarking")),
            (
                "::ffff:192.0.0.1",
                Some("ipv4-mapped ietf-protocol-assignments"),
            ),
            // IPv4-translated (SIIT).
            ("::ffff:0:127.0.0.1", Some("ipv4-translated loopback")),
            ("::ffff:0:a9fe:a9fe", Some("ipv4-translated link-local")),
            ("::ffff:0:10.0.0.1", Some("ipv4-translated rfc1918")),
            ("::ffff:0:198.19.0.1", Some("ipv4-translated benchmarking")),
            ("::ffff:0:0.0.0.0", Some("ipv4-translated unspecified")),
            ("::ffff:0:8.8.8.8", None),
            ("::ffff:1:8.8.8.8", None),
            // IPv4-compatible (deprecated, still parsed by some stacks).
            ("::127.0.0.1", Some("ipv4-compatible loopback")),
            ("::192.168.1.1", Some("ipv4-compatible rfc1918")),
            ("::169.254.169.254", Some("ipv4-compatible link-local")),
            ("::8.8.8.8", None),
            // NAT64 well-known prefix.
            ("64:ff9b::127.0.0.1", Some("nat64 loopback")),
            ("64:ff9b::a9fe:a9fe", Some("nat64 link-local")),
            ("64:ff9b::172.16.0.1", Some("nat64 rfc1918")),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::1", Some("nat64-local-use")),
            ("64:ff9b:1:ffff::8.8.8.8", Some("nat64-local-use")),
            ("64:ff9b:0:1::127.0.0.1", None),
            // 6to4.
            ("2002:7f00:1::", Some("6to4 loopback")),
            ("2002:a9fe:a9fe::1", Some("6to4 link-local")),
            ("2002:c0a8:101::1", Some("6to4 rfc1918")),
            ("2002:6440:1::", Some("6to4 cgnat")),
            ("2002:808:808::1", None),
            ("2002:c612:1::", Some("6to4 benchmarking")),
            ("2002:c000:1::", Some("6to4 ietf-protocol-assignments")),
            // Teredo: server in the clear (bits 32-63), client inverted (bits 96-127).
            // RFC 4380's example: server 65.54.227.120, client 192.0.2.45.
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", None),
            ("2001:0:808:808:8000:63bf:f7f7:f7f7", None),
            ("2001:0:7f00:1::f7f7:f7f7", Some("teredo-server loopback")),
            ("2001:0:a00:1::f7f7:f7f7", Some("teredo-server rfc1918")),
            (
                "2001:0:a9fe:a9fe::f7f7:f7f7",
                Some("teredo-server link-local"),
            ),
            ("2001:0:808:808::80ff:fffe", Some("teredo-client loopback")),
            (
                "2001:0:808:808::5601:5601",
                Some("teredo-client link-local"),
            ),
            (
                "2001:0:808:808::39ed:ffff",
                Some("teredo-client benchmarking"),
            ),
            // A client field of zeros is 255.255.255.255 once inverted.
            ("2001:0:808:808::", Some("teredo-client broadcast")),
            // Both ends private: the link-local one is named.
            ("2001:0:a00:1::5601:5601", Some("teredo-client link-local")),
            (
                "2001:0:a9fe:a9fe::f5ff:fffe",
                Some("teredo-server link-local"),
            ),
            ("2001:0:a00:1::80ff:fffe", Some("teredo-client loopback")),
            // Next to Teredo, not Teredo.
            ("2001:1:7f00:1::80ff:fffe", None),
            ("2001:4860:7f00:1::80ff:fffe", None),
        ];
        for &(text, want) in cases {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(classify(ip).map(|p| p.class), want, "{text}");
        }
    }

    /// Every IPv6 form that carries `v4`.
    fn carriers(v4: Ipv4Addr) -> Vec<(&'static str, IpAddr)> {
        let [a, b, c, d] = v4.octets();
        let hi = u16::from_be_bytes([a, b]);
        let lo = u16::from_be_bytes([c, d]);
        // A public address for the other end of a Teredo address.
        let (pub_hi, pub_lo) = (0x0808, 0x0808);
        vec![
            ("plain", IpAddr::V4(v4)),
            ("mapped", IpAddr::V6(v4.to_ipv6_mapped())),
            (
                "translated",
                IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo)),
            ),
            (
                "compatible",
                IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo)),
            ),
            (
                "nat64",
                IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
            ),
            (
                "6to4",
                IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1)),
            ),
            (
                "teredo server",
                IpAddr::V6(Ipv6Addr::new(
                    0x2001, 0, hi, lo, 0x8000, 0x63bf, !pub_hi, !pub_lo,
                )),
            ),
            (
                "teredo client",
                IpAddr::V6(Ipv6Addr::new(
                    0x2001, 0, pub_hi, pub_lo, 0x8000, 0x63bf, !hi, !lo,
                )),
            ),
        ]
    }

    #[test]
    fn every_v4_class_is_private_in_every_form() {
        let samples = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "10.0.0.1",
            "172.20.0.1",
            "192.168.1.1",
            "100.100.0.1",
            "169.254.169.254",
            "192.0.0.170",
            "198.18.0.1",
            "198.19.255.254",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ];
        for text in samples {
            let v4: Ipv4Addr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let plain = classify(IpAddr::V4(v4)).unwrap_or_else(|| panic!("{text} is private"));
            for (form, ip) in carriers(v4) {
                let got = classify(ip).unwrap_or_else(|| panic!("{ip} ({form}) carries {text}"));
                assert!(got.class.ends_with(plain.class), "{ip} ({form}): {got:?}");
                assert_eq!(got.link_local, plain.link_local, "{ip} ({form})");
            }
        }
    }

    #[test]
    fn public_v4_is_public_in_every_form() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "198.20.0.1",
            "192.0.1.1",
        ] {
            let v4: Ipv4Addr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            for (form, ip) in carriers(v4) {
                assert_eq!(classify(ip), None, "{ip} ({form}) carries {text}");
            }
        }
    }

    #[test]
    fn link_local_in_every_spelling() {
        let cases: &[(&str, bool)] = &[
            ("169.254.169.254", true),
            ("169.254.0.1", true),
            ("fe80::1", true),
            ("febf:ffff::1", true),
            ("fe80::a9fe:a9fe", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:0:169.254.169.254", true),
            ("::169.254.169.254", true),
            ("64:ff9b::169.254.169.254", true),
            ("2002:a9fe:a9fe::", true),
            ("2001:0:a9fe:a9fe::f7f7:f7f7", true),
            ("2001:0:808:808::5601:5601", true),
            ("2001:0:a00:1::5601:5601", true),
            // Private but not link-local.
            ("10.0.0.1", false),
            ("127.0.0.1", false),
            ("fec0::1", false),
            ("fc00::1", false),
            ("ff02::1", false),
            ("64:ff9b:1::a9fe:a9fe", false),
            ("2001:0:a00:1::80ff:fffe", false),
            // Public.
            ("8.8.8.8", false),
            ("2606:4700::1", false),
            ("169.255.0.1", false),
        ];
        for &(text, want) in cases {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(classify(ip).is_some_and(|p| p.link_local), want, "{text}");
        }
    }
}
