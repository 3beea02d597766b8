//! A request target split into scheme, authority and path-and-query where `http::Uri` splits it, and refused where it refuses, as slices of the text: nothing copied, no `Uri` built.
//!
//! Building an `http::Uri` from a request's target copied it into `Bytes`, split it (a second
//! allocation) and dropped it again: about a fifth of routing an absolute-form request. The
//! rules below are `http` 1.x's (`Uri::from_shared`, `Scheme2::parse`, `Authority::parse`,
//! `scan_path_and_query`), kept byte for byte so that what portcullis accepts does not move;
//! the tests compare the two over tables and generated inputs.

/// The scheme as `http::Uri` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemeText<'a> {
    None,
    /// `http://`, any case.
    Http,
    /// `https://`, any case.
    Https,
    /// Any other `scheme://`, as written (possibly empty: `://h`).
    Other(&'a str),
}

/// A request target's parts, as slices of its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    pub scheme: SchemeText<'a>,
    /// Userinfo, host and port as written; empty when the target has no authority.
    pub authority: &'a str,
    /// Path and query without the fragment: empty (no path, or only a fragment), or starting
    /// with `/` or `?`, or `*`. `/` when a scheme and authority are followed by nothing.
    pub path_and_query: &'a str,
}

/// The target is not one `http::Uri` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// `http::Uri`'s longest URI.
pub(super) const MAX_LEN: usize = u16::MAX as usize - 1;
/// `http::Uri`'s longest scheme other than http and https.
const MAX_SCHEME_LEN: usize = 64;

/// Split `s` as `http::Uri::from_str` would, or refuse it where that would.
pub fn split(s: &str) -> Result<Parts<'_>, Malformed> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_LEN {
        return Err(Malformed);
    }
    let path_only = |path_and_query| Parts {
        scheme: SchemeText::None,
        authority: "",
        path_and_query,
    };
    let authority_only = |authority| Parts {
        scheme: SchemeText::None,
        authority,
        path_and_query: "",
    };
    if b.len() == 1 {
        return match b[0] {
            b'/' | b'*' => Ok(path_only(s)),
            _ if authority_end(b)? == 1 => Ok(authority_only(s)),
            _ => Err(Malformed),
        };
    }
    if b[0] == b'/' {
        return Ok(path_only(path_and_query(s)?));
    }
    let (scheme, skip) = scheme(s)?;
    // `skip` ends just after an ASCII `://`, a character boundary.
    let rest = &s[skip..];
    let end = authority_end(rest.as_bytes())?;
    if scheme == SchemeText::None {
        // Authority-form (`host:port`), or nothing `http` reads.
        return if end == rest.len() {
            Ok(authority_only(rest))
        } else {
            Err(Malformed)
        };
    }
    if end == 0 {
        return Err(Malformed);
    }
    // `end` is the length of the text or the index of an ASCII `/`, `?` or `#`.
    let (authority, tail) = rest.split_at(end);
    let path_and_query = if tail.is_empty() {
        "/"
    } else {
        path_and_query(tail)?
    };
    Ok(Parts {
        scheme,
        authority,
        path_and_query,
    })
}

/// The scheme and how many bytes it takes with its `://`: `Scheme2::parse`.
fn scheme(s: &str) -> Result<(SchemeText<'_>, usize), Malformed> {
    let b = s.as_bytes();
    if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        return Ok((SchemeText::Http, 7));
    }
    if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        return Ok((SchemeText::Https, 8));
    }
    if b.len() > 3 {
        for (i, &c) in b.iter().enumerate() {
            match c {
                b':' => {
                    if b.len() < i + 3 || &b[i + 1..i + 3] != b"//" {
                        break;
                    }
                    if i > MAX_SCHEME_LEN {
                        return Err(Malformed);
                    }
                    // `i` is the index of an ASCII `:`.
                    return Ok((SchemeText::Other(&s[..i]), i + 3));
                }
                c if is_scheme_char(c) => {}
                _ => break,
            }
        }
    }
    Ok((SchemeText::None, 0))
}

/// `http`'s `SCHEME_CHARS`, less the `:` that ends a scheme.
fn is_scheme_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'~')
}

/// Where the authority at the start of `s` ends (the first `/`, `?` or `#`, else the end),
/// once it passed `http`'s checks: `validate_authority_bytes`.
fn authority_end(s: &[u8]) -> Result<usize, Malformed> {
    /// `[FEDC:BA98:7654:3210:FEDC:BA98:7654:3210]:80`
    const MAX_COLONS: u32 = 8;
    if s.is_empty() {
        return Err(Malformed);
    }
    let mut colons: u32 = 0;
    let mut start_bracket = false;
    let mut end_bracket = false;
    let mut has_percent = false;
    let mut end = s.len();
    let mut at_sign = s.len();
    for (i, &c) in s.iter().enumerate() {
        let class = AUTHORITY[usize::from(c)];
        if class == PLAIN {
            continue;
        }
        match class {
            b'/' | b'?' | b'#' => {
                end = i;
                break;
            }
            // Percent-encoded userinfo is allowed; the flag is cleared if an `@` follows.
            b'%' => has_percent = true,
            b':' => {
                if colons >= MAX_COLONS {
                    return Err(Malformed);
                }
                colons += 1;
            }
            b'[' => {
                if has_percent || start_bracket {
                    return Err(Malformed);
                }
                start_bracket = true;
            }
            b']' => {
                if !start_bracket || end_bracket {
                    return Err(Malformed);
                }
                end_bracket = true;
                // Those were inside an IPv6 address.
                colons = 0;
                has_percent = false;
            }
            b'@' => {
                at_sign = i;
                // Those were in the userinfo.
                colons = 0;
                has_percent = false;
            }
            _ => return Err(Malformed),
        }
    }
    if start_bracket != end_bracket || colons > 1 || (end > 0 && at_sign == end - 1) || has_percent
    {
        return Err(Malformed);
    }
    Ok(end)
}

/// An authority byte with no rule of its own.
const PLAIN: u8 = 1;

/// Each byte's class in an authority: [`PLAIN`], the byte itself for those with a rule, or 0
/// for those refused. One load per byte: most of a target is its authority.
const AUTHORITY: [u8; 256] = authority_classes();

const fn authority_classes() -> [u8; 256] {
    let mut t = [0; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b'/' | b'?' | b'#' | b'%' | b':' | b'[' | b']' | b'@' => c,
            _ if is_authority_char(c) => PLAIN,
            _ => 0,
        };
        i += 1;
    }
    t
}

/// `http`'s `URI_CHARS` other than those `authority_end` treats itself.
const fn is_authority_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'-'
                | b'.'
                | b';'
                | b'='
                | b'_'
                | b'~'
        )
}

/// The path and query of `s` without its fragment, once they passed `http`'s checks:
/// `PathAndQuery::from_shared`. `s` is not empty.
pub(super) fn path_and_query(s: &str) -> Result<&str, Malformed> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_LEN {
        return Err(Malformed);
    }
    if s == "*" {
        return Ok(s);
    }
    if !matches!(b[0], b'/' | b'?' | b'#') {
        return Err(Malformed);
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        if PATH[usize::from(c)] {
            continue;
        }
        match c {
            b'?' => break,
            // A fragment never leaves; what follows it is not checked.
            b'#' => return Ok(&s[..i - 1]),
            _ => return Err(Malformed),
        }
    }
    for (at, &c) in b.iter().enumerate().skip(i) {
        if QUERY[usize::from(c)] {
            continue;
        }
        return match c {
            b'#' => Ok(&s[..at]),
            _ => Err(Malformed),
        };
    }
    Ok(s)
}

/// Bytes a path carries as they are: `http`'s `PATH_MAP`, with `"`, `{` and `}`, and the
/// bytes of multi-byte characters (`s` is a `str`: they are valid UTF-8).
const PATH: [bool; 256] = byte_set(false);
/// The same for a query: `QUERY_MAP` (a `?` included).
const QUERY: [bool; 256] = byte_set(true);

const fn byte_set(query: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = i >= 0x80
            || if query {
                is_query_char(c)
            } else {
                is_path_char(c)
            };
        i += 1;
    }
    t
}

const fn is_path_char(c: u8) -> bool {
    matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E)
        || matches!(c, b'"' | b'{' | b'}')
}

const fn is_query_char(c: u8) -> bool {
    matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E)
}

/// Every string of up to four bytes from `alphabet` after each of `prefixes`: the generated
/// inputs the parsers' tests hand to a reference and to ours.
#[cfg(test)]
pub(crate) fn each_generated(prefixes: &[&str], alphabet: &[u8], mut check: impl FnMut(&str)) {
    let mut text = String::new();
    for prefix in prefixes {
        for len in 0..=4u32 {
            for mut n in 0..alphabet.len().pow(len) {
                text.clear();
                text.push_str(prefix);
                for _ in 0..len {
                    text.push(char::from(alphabet[n % alphabet.len()]));
                    n /= alphabet.len();
                }
                check(&text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `http::Uri` makes of `s`, in the terms of [`Parts`].
    fn theirs(s: &str) -> Result<(Option<String>, String, String), Malformed> {
        let uri: http::Uri = s.parse().map_err(|_| Malformed)?;
        let scheme = uri.scheme_str().map(str::to_string);
        let authority = uri.authority().map_or("", |a| a.as_str()).to_string();
        let pq = uri
            .path_and_query()
            .map_or("", |pq| pq.as_str())
            .to_string();
        Ok((scheme, authority, pq))
    }

    /// Ours in the same terms: `PathAndQuery::as_str` shows an empty one as `/`.
    fn ours(s: &str) -> Result<(Option<String>, String, String), Malformed> {
        let p = split(s)?;
        let scheme = match p.scheme {
            SchemeText::None => None,
            SchemeText::Http => Some("http".to_string()),
            SchemeText::Https => Some("https".to_string()),
            SchemeText::Other(o) => Some(o.to_string()),
        };
        let has_path = p.scheme != SchemeText::None || p.authority.is_empty();
        let pq = match p.path_and_query {
            "" if has_path => "/",
            pq => pq,
        };
        Ok((scheme, p.authority.to_string(), pq.to_string()))
    }

    fn agree(s: &str) {
        assert_eq!(ours(s), theirs(s), "{s:?}");
    }

    #[test]
    fn splits_as_http_does() {
        let long_scheme = format!("{}://h/", "a".repeat(MAX_SCHEME_LEN));
        let longer_scheme = format!("{}://h/", "a".repeat(MAX_SCHEME_LEN + 1));
        let long_uri = format!("http://h/{}", "a".repeat(MAX_LEN - 9));
        let longer_uri = format!("http://h/{}", "a".repeat(MAX_LEN - 8));
        let cases: &[&str] = &[
            "",
            "/",
            "*",
            "a",
            "?",
            "#",
            "@",
            "%",
            ":",
            "[",
            "]",
            "//",
            "/a?b#c",
            "/a#b?c",
            "/a b",
            "/a<b",
            "/\"{}\"",
            "/?\"",
            "/é?é",
            "*x",
            "**",
            "http://",
            "http:///p",
            "http://h",
            "http://h/",
            "http://h?q",
            "http://h#f",
            "http://h?#",
            "HtTp://h/",
            "https://h:443/p?q#f",
            "HTTPS://h",
            "http:/h",
            "http:h",
            "ftp://h/",
            "FTP://h/",
            "://h/",
            "a+b-c.d~://h/",
            "a_b://h/",
            "1://h/",
            &long_scheme,
            &longer_scheme,
            "x://",
            "abc:",
            "abc://",
            "h:80",
            "h:80/p",
            "h:80:90",
            "[::1]:80",
            "[::1]",
            "http://[::1]:80/",
            "http://[::1/",
            "http://::1]/",
            "http://[[::1]]/",
            "http://[::1]x/",
            "http://a@b/",
            "http://a@/",
            "http://@/",
            "http://a:b@c:d/",
            "http://a:b:c/",
            "http://a%20b@h/",
            "http://h%20/",
            "http://%@h/",
            "http://[fe80::1%25eth0]/",
            "http://a%[::1]/",
            "http://1:2:3:4:5:6:7:8:9/",
            "http://[1:2:3:4:5:6:7:8]:9/",
            "http://a:1:2:3:4:5:6:7:8:9@h/",
            "http://h\\/",
            "http://h^/",
            "http://é/",
            "http://h/é",
            "http://h/|`",
            "http://h/a?`{|}",
            "http://h/%zz",
            &long_uri,
            &longer_uri,
        ];
        for s in cases {
            agree(s);
        }
    }

    /// Every string of up to four bytes from an alphabet of the characters that steer the
    /// parse, after each scheme-like prefix; then longer pseudo-random ones.
    #[test]
    fn splits_generated_targets_as_http_does() {
        const ALPHABET: &[u8] = b"a1.:/?#@[]%*<~+";
        let prefixes = ["", "http://", "HTTPS://", "ftp://", "h", "/"];
        each_generated(&prefixes, ALPHABET, agree);
        let mut text = String::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const WIDER: &[u8] = b"aF0.:/?#@[]%*<~+-_!$&'()=,;\"{}|`^\\ ";
        for _ in 0..100_000 {
            text.clear();
            text.push_str(prefixes[(next() % 6) as usize]);
            for _ in 0..next() % 24 {
                text.push(char::from(WIDER[(next() % WIDER.len() as u64) as usize]));
            }
            agree(&text);
        }
    }
}
