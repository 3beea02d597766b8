//! A byte cursor over a fixed slice that writes an access line's pieces without a call, a capacity check or `core::fmt` per piece; a line too long for the slice is measured instead, to be written again into a larger one.
//!
//! `Vec::extend_from_slice` per field cost a call to `memcpy` and a capacity check each (~40
//! instructions for a field name); here a piece whose length is a constant (a field name, a
//! separator, the cached second of the timestamp) becomes a few stores once inlined, and
//! numbers are written digit pairs straight into place.
//!
//! The hot methods are inlined and the cursor is a local of the function that writes the line,
//! so its two words stay in registers (a cursor reached through a pointer was reloaded after
//! every byte stored, which might have changed it). Rare paths run out of line on a cursor of
//! their own ([`Cursor::detached`]).

/// `"00" "01" … "99"`: two digits per division by 100.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes into `buf` from its start; pieces that do not fit are skipped but still counted.
///
/// Once a piece is skipped, `len` is past the slice's end and stays there (it only grows, but
/// for [`Cursor::bytes_if`]'s undoing of a piece it wrote): the line fitted if and only if
/// `len` is within the slice at the end.
pub struct Cursor<'a> {
    buf: &'a mut [u8],
    /// Bytes written so far, or that would have been had they fitted.
    len: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Cursor { buf, len: 0 }
    }

    /// The line's length, and whether all of it is in the slice (`false`: the length is enough
    /// room to write the line again).
    pub fn finish(&self) -> (usize, bool) {
        (self.len, self.len <= self.buf.len())
    }

    /// The next `n` bytes of the slice, or `None` past its end.
    #[inline(always)]
    fn take(&mut self, n: usize) -> Option<&mut [u8]> {
        let start = self.len;
        self.len = start + n;
        self.buf.get_mut(start..self.len)
    }

    /// Run `f` (a path kept out of line) on a cursor of its own over the rest of the slice, so
    /// that this one's address is never taken.
    #[inline(always)]
    pub fn detached(&mut self, f: impl FnOnce(&mut Cursor<'_>)) {
        let mut own = Cursor {
            buf: &mut *self.buf,
            len: self.len,
        };
        f(&mut own);
        self.len = own.len;
    }

    /// A piece of known length: with `s` a literal, a few stores once inlined.
    #[inline(always)]
    pub fn lit<const N: usize>(&mut self, s: &[u8; N]) {
        if let Some(dst) = self.take(N) {
            dst.copy_from_slice(s);
        }
    }

    #[inline(always)]
    pub fn bytes(&mut self, s: &[u8]) {
        if let Some(dst) = self.take(s.len()) {
            dst.copy_from_slice(s);
        }
    }

    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        if let Some(dst) = self.take(1).and_then(|d| d.first_mut()) {
            *dst = b;
        }
    }

    /// `v` in decimal, as `Display` writes it; up to three digits (ports aside, most of an
    /// access line's numbers) in line.
    #[inline(always)]
    pub fn uint(&mut self, v: u64) {
        match v {
            0..=9 => self.padded::<1>(v),
            10..=99 => self.padded::<2>(v),
            100..=999 => self.padded::<3>(v),
            _ => self.detached(|c| c.long_uint(v)),
        }
    }

    #[inline(never)]
    fn long_uint(&mut self, v: u64) {
        let n = v.checked_ilog10().unwrap_or(0) as usize + 1;
        if let Some(dst) = self.take(n) {
            digits(dst, v);
        }
    }

    /// `v` in exactly `N` decimal digits, zero-padded (its higher digits dropped).
    #[inline(always)]
    pub fn padded<const N: usize>(&mut self, v: u64) {
        if let Some(dst) = self.take(N) {
            digits(dst, v);
        }
    }

    /// `v` if `plain` holds for each of its bytes (then `true`); otherwise nothing (`false`).
    /// Checks and copies in one pass: the values are short, a call to `memcpy` costs more.
    #[inline(always)]
    pub fn bytes_if(&mut self, v: &[u8], plain: impl Fn(u8) -> bool) -> bool {
        let start = self.len;
        match self.take(v.len()) {
            Some(dst) => {
                let all = dst.iter_mut().zip(v).all(|(d, &b)| {
                    *d = b;
                    plain(b)
                });
                if !all {
                    // Undo the piece, which fitted: `len` is back within the slice.
                    self.len = start;
                }
                all
            }
            // Past the end: `len` stays there, the line is short anyway.
            None => v.iter().all(|&b| plain(b)),
        }
    }
}

/// Fill `dst` with the last `dst.len()` decimal digits of `v`, zero-padded.
#[inline(always)]
fn digits(dst: &mut [u8], mut v: u64) {
    let mut end = dst.len();
    while end >= 2 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        if let (Some(d), Some(p)) = (dst.get_mut(end - 2..end), PAIRS.get(pair..pair + 2)) {
            d.copy_from_slice(p);
        }
        end -= 2;
    }
    if let (1, Some(d)) = (end, dst.first_mut()) {
        *d = b'0' + (v % 10) as u8;
    }
}

impl std::fmt::Write for Cursor<'_> {
    /// For what is rare enough to go through `core::fmt` (IPv6 addresses, escapes).
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut Cursor<'_>), room: usize) -> (String, usize, bool) {
        let mut buf = vec![0u8; room];
        let mut c = Cursor::new(&mut buf);
        f(&mut c);
        let (len, whole) = c.finish();
        let kept = len.min(room);
        (String::from_utf8(buf[..kept].to_vec()).unwrap(), len, whole)
    }

    #[test]
    fn numbers_match_display() {
        let mut cases = vec![0, 1, 9, 10, 99, 100, 101, 999, 1000, 65_535, u64::MAX];
        cases.extend((0..20).map(|p| 10u64.pow(p)));
        cases.extend((1..20).map(|p| 10u64.pow(p) - 1));
        for v in cases {
            let (text, len, whole) = written(|c| c.uint(v), 32);
            assert_eq!(text, v.to_string());
            assert_eq!((len, whole), (text.len(), true));
        }
        for (v, want) in [
            (0, "000"),
            (7, "007"),
            (42, "042"),
            (999, "999"),
            (1234, "234"),
        ] {
            assert_eq!(written(|c| c.padded::<3>(v), 8).0, want);
        }
        assert_eq!(written(|c| c.padded::<6>(65_938), 8).0, "065938");
    }

    #[test]
    fn a_line_too_long_is_measured() {
        let line = |c: &mut Cursor<'_>| {
            c.lit(b"status=");
            c.uint(201);
            c.byte(b' ');
            c.bytes(b"path=/a/b");
        };
        assert_eq!(written(line, 64), ("status=201 path=/a/b".into(), 20, true));
        // Every room short of the whole line says so.
        for room in 0..20 {
            let (_, len, whole) = written(line, room);
            assert_eq!((len, whole), (20, false), "room {room}");
        }
    }

    #[test]
    fn bytes_if_writes_all_or_nothing() {
        let no_quote = |b: u8| b != b'"';
        for room in [0, 3, 64] {
            let (text, len, _) = written(
                |c| {
                    assert!(c.bytes_if(b"abc", no_quote));
                    assert!(!c.bytes_if(b"d\"e", no_quote));
                    assert!(c.bytes_if(b"", no_quote));
                    c.byte(b'!');
                },
                room,
            );
            if room == 64 {
                assert_eq!((text.as_str(), len), ("abc!", 4));
            } else {
                // Short: the length is still enough room for the line.
                assert!(len >= 4, "room {room}: {len}");
            }
        }
    }
}
