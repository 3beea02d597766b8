//! IPv4 addresses as text without `core::fmt`: an IP destination's Host header is written on
//! every request, where `fmt` cost ~1 µs. (The access line writes its client's address itself.)

use std::net::Ipv4Addr;

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
}
