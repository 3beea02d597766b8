//! The header names the codec and the proxy act on, recognised by length and first byte before one case-insensitive compare.

/// A header name the proxy gives a meaning to; every other name is [`Known::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Known {
    /// Any name not below.
    Other,
    /// `Connection`.
    Connection,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-Connection`.
    ProxyConnection,
    /// `Proxy-Authorization`.
    ProxyAuthorization,
    /// `TE`.
    Te,
    /// `Trailer`.
    Trailer,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Upgrade`.
    Upgrade,
    /// `Content-Length`.
    ContentLength,
    /// `Host`.
    Host,
    /// `Expect`.
    Expect,
}

/// Every known name, lower case, with what it is: the general path [`known`] must agree with.
pub const NAMES: [(&str, Known); 11] = [
    ("connection", Known::Connection),
    ("keep-alive", Known::KeepAlive),
    ("proxy-connection", Known::ProxyConnection),
    ("proxy-authorization", Known::ProxyAuthorization),
    ("te", Known::Te),
    ("trailer", Known::Trailer),
    ("transfer-encoding", Known::TransferEncoding),
    ("upgrade", Known::Upgrade),
    ("content-length", Known::ContentLength),
    ("host", Known::Host),
    ("expect", Known::Expect),
];

impl Known {
    /// A field that describes one hop and is never forwarded (RFC 9110 §7.6.1, plus
    /// `Proxy-*`).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::ProxyAuthorization
                | Known::Te
                | Known::Trailer
                | Known::TransferEncoding
                | Known::Upgrade
        )
    }

    /// This kind as one bit, for sets of kinds.
    pub fn bit(self) -> u16 {
        1 << self as u8
    }
}

/// What `name` (any case) is. Most names differ from every known one in length or first
/// byte, and are told apart without comparing the rest.
#[inline]
pub fn known(name: &[u8]) -> Known {
    let Some(&first) = name.first() else {
        return Known::Other;
    };
    // Lower case for letters; a non-letter mapped onto a letter fails the compare below.
    let (want, kind): (&[u8], Known) = match (name.len(), first | 0x20) {
        (2, b't') => (b"te", Known::Te),
        (4, b'h') => (b"host", Known::Host),
        (6, b'e') => (b"expect", Known::Expect),
        (7, b't') => (b"trailer", Known::Trailer),
        (7, b'u') => (b"upgrade", Known::Upgrade),
        (10, b'c') => (b"connection", Known::Connection),
        (10, b'k') => (b"keep-alive", Known::KeepAlive),
        (14, b'c') => (b"content-length", Known::ContentLength),
        (16, b'p') => (b"proxy-connection", Known::ProxyConnection),
        (17, b't') => (b"transfer-encoding", Known::TransferEncoding),
        (19, b'p') => (b"proxy-authorization", Known::ProxyAuthorization),
        _ => return Known::Other,
    };
    if eq_lower(name, want) {
        kind
    } else {
        Known::Other
    }
}

/// `name.eq_ignore_ascii_case(want)` for a lower-case ASCII `want` of the same length, eight
/// bytes at a time.
#[inline]
fn eq_lower(name: &[u8], want: &[u8]) -> bool {
    let n = name.len();
    if n != want.len() {
        return false;
    }
    if n < 8 {
        return name.eq_ignore_ascii_case(want);
    }
    let word =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    // Whole words, then the last eight bytes (overlapping the previous word).
    let mut at = 0;
    while at + 8 <= n {
        if !eq_lower_word(word(name, at), word(want, at)) {
            return false;
        }
        at += 8;
    }
    at == n || eq_lower_word(word(name, n - 8), word(want, n - 8))
}

/// Eight bytes of a name against eight lower-case ASCII bytes: a letter of `want` matches
/// either case, any other byte only itself.
#[inline]
fn eq_lower_word(name: u64, want: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // High bit of each byte of `want` (all below 0x80) set when it is in 'a'..='z': at least
    // 'a' and not above 'z'.
    let at_least_a = want + ONES * (0x80 - u64::from(b'a'));
    let above_z = want + ONES * (0x80 - u64::from(b'z') - 1);
    let letters = at_least_a & !above_z & (ONES * 0x80);
    // 0x20 where `want` has a letter: OR-ing it into an upper-case letter lowers it, and
    // nothing else lands on a lower-case letter.
    (name | (letters >> 2)) == want
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general path: a case-insensitive compare with every known name.
    fn by_list(name: &[u8]) -> Known {
        NAMES
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .map_or(Known::Other, |&(_, k)| k)
    }

    #[test]
    fn the_word_compare_agrees_with_eq_ignore_ascii_case() {
        let wants: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        let mut rng = crate::http1::testio::Lcg(7);
        for want in wants {
            let w = want.as_bytes();
            let mut names = vec![w.to_vec(), w.to_ascii_uppercase()];
            // Every byte value at every position, on either case of the rest.
            for i in 0..w.len() {
                for b in 0..=255u8 {
                    let mut v = if rng.below(2) == 0 {
                        w.to_vec()
                    } else {
                        w.to_ascii_uppercase()
                    };
                    v[i] = b;
                    names.push(v);
                }
            }
            for name in names {
                assert_eq!(
                    eq_lower(&name, w),
                    name.eq_ignore_ascii_case(w),
                    "{name:?} {want}"
                );
            }
        }
    }

    #[test]
    fn the_switch_agrees_with_the_list() {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for (n, _) in NAMES {
            names.push(n.as_bytes().to_vec());
            names.push(n.to_ascii_uppercase().into_bytes());
            // Title case, as most clients send them.
            let title: String = n
                .split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect::<Vec<_>>()
                .join("-");
            names.push(title.into_bytes());
            // One byte off anywhere, a byte longer and shorter.
            for i in 0..n.len() {
                for b in [b'x', b'-', n.as_bytes()[i] ^ 0x20, n.as_bytes()[i] + 1] {
                    let mut v = n.as_bytes().to_vec();
                    v[i] = b;
                    names.push(v);
                }
            }
            names.push(format!("{n}s").into_bytes());
            names.push(n.as_bytes()[1..].to_vec());
            names.push(n.as_bytes()[..n.len() - 1].to_vec());
        }
        for other in [
            "",
            "t",
            "x",
            "date",
            "server",
            "content-type",
            "4eep-alive",
            "Tf",
            "\u{54}E",
            "@e",
            "Host ",
            "via",
            "x-forwarded-for",
            "proxy-status",
        ] {
            names.push(other.as_bytes().to_vec());
        }
        for name in &names {
            let k = known(name);
            assert_eq!(k, by_list(name), "{:?}", String::from_utf8_lossy(name));
            let hop = [
                "connection",
                "keep-alive",
                "proxy-connection",
                "proxy-authorization",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
            ]
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name));
            assert_eq!(
                k.is_hop_by_hop(),
                hop,
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
