//! IPv4 and socket addresses as text without `core::fmt`: they are written on every request
//! (the access line's client, an IP destination's Host header), where `fmt` cost ~1 µs each.

use std::net::{Ipv4Addr, SocketAddr};

/// An IPv4 address in dotted-quad text, on the stack.
pub struct Ipv4Text {
    buf: [u8; 15],
    len: u8,
}

impl Ipv4Text {
    pub fn new(ip: Ipv4Addr) -> Ipv4Text {
        let mut t = Ipv4Text {
            buf: [0; 15],
            len: 0,
        };
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                t.push(b'.');
            }
            if octet >= 100 {
                t.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                t.push(b'0' + octet / 10 % 10);
            }
            t.push(b'0' + octet % 10);
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len as usize] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and dots were written.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// Append `addr` as `Display` would write it (`1.2.3.4:5`, `[::1]:5`).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.extend_from_slice(Ipv4Text::new(*a.ip()).as_str().as_bytes());
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(out, "{addr}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_matches_display_for_every_octet_width() {
        for ip in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(9, 10, 99, 100),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(1, 22, 203, 40),
        ] {
            assert_eq!(Ipv4Text::new(ip).as_str(), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = Ipv4Addr::new(n, 255 - n, n / 3, n.wrapping_mul(7));
            assert_eq!(Ipv4Text::new(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn socket_addr_text_matches_display() {
        for a in [
            "127.0.0.1:60642",
            "10.0.0.255:0",
            "[::1]:8080",
            "[fe80::1]:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }
}
