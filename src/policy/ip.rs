//! Which IP addresses count as private (SPEC §4): loopback, RFC 1918, CGNAT, link-local, ULA, mapped forms.
//!
//! The check runs on the address that will be dialed, so every IPv6 form
//! that a host stack or a translator turns back into an IPv4 address is
//! judged by the IPv4 address it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The private class an address belongs to, or `None` when it is public.
///
/// IPv6 addresses that carry an IPv4 address (mapped, compatible, NAT64,
/// 6to4) are labelled with the form and the class of the embedded address,
/// e.g. `"ipv4-mapped loopback"`.
pub fn private_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4).map(|class| label(class, Carrier::Plain)),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// Whether a destination at this address needs `allow_private = true`.
pub fn is_private(ip: IpAddr) -> bool {
    private_class(ip).is_some()
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
    Multicast,
    Broadcast,
    Reserved,
}

/// How an IPv4 address reached us: as itself or inside an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    Plain,
    Mapped,
    Compatible,
    Nat64,
    SixToFour,
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
                    (Carrier::Compatible, V4Class::$class) => concat!("ipv4-compatible ", $name),
                    (Carrier::Nat64, V4Class::$class) => concat!("nat64 ", $name),
                    (Carrier::SixToFour, V4Class::$class) => concat!("6to4 ", $name),
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
    Multicast => "multicast",
    Broadcast => "broadcast",
    Reserved => "reserved",
}

fn v4_class(ip: Ipv4Addr) -> Option<V4Class> {
    let [a, b, _, _] = ip.octets();
    let class = match (a, b) {
        _ if ip.is_unspecified() => V4Class::Unspecified,
        _ if ip.is_broadcast() => V4Class::Broadcast,
        (0, _) => V4Class::ThisNetwork,
        (127, _) => V4Class::Loopback,
        (10, _) | (172, 16..=31) | (192, 168) => V4Class::Rfc1918,
        (100, 64..=127) => V4Class::Cgnat,
        (169, 254) => V4Class::LinkLocal,
        (224..=239, _) => V4Class::Multicast,
        (240..=255, _) => V4Class::Reserved,
        _ => return None,
    };
    Some(class)
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    let carried = |carrier: Carrier, v4: Ipv4Addr| v4_class(v4).map(|class| label(class, carrier));
    match s {
        // `::` and `::1` sit inside ::/96 but are IPv6's own addresses.
        [0, 0, 0, 0, 0, 0, 0, 0] => Some("unspecified"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Some("loopback"),
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => carried(Carrier::Mapped, embedded(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] => carried(Carrier::Compatible, embedded(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => carried(Carrier::Nat64, embedded(hi, lo)),
        // RFC 8215 local-use NAT64: where the IPv4 address sits depends on a
        // prefix length we cannot know, and the block is never global anyway.
        [0x64, 0xff9b, 1, ..] => Some("nat64-local-use"),
        [0x2002, hi, lo, ..] => carried(Carrier::SixToFour, embedded(hi, lo)),
        [first, ..] if first & 0xff00 == 0xff00 => Some("multicast"),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some("unique-local"),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some("link-local"),
        // Deprecated site-local (RFC 3879): still private wherever it is used.
        [first, ..] if first & 0xffc0 == 0xfec0 => Some("site-local"),
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
        ];
        for &(text, want) in cases {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(private_class(ip), want, "{text}");
            assert_eq!(is_private(ip), want.is_some(), "{text}");
        }
    }

    #[test]
    fn every_v4_class_has_a_private_mapped_form() {
        let samples = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "10.0.0.1",
            "172.20.0.1",
            "192.168.1.1",
            "100.100.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ];
        for text in samples {
            let v4: Ipv4Addr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            let forms = [
                IpAddr::V4(v4),
                IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo)),
                IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
                IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1)),
            ];
            for ip in forms {
                assert!(is_private(ip), "{ip} carries {text}");
            }
        }
    }
}
