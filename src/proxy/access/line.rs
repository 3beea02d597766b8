//! Writes one access line (text or JSON) straight into a byte buffer: the access log's hot path.
//!
//! tracing-subscriber's generic formatter (a visitor per field, `fmt::Debug` for every value,
//! ANSI styling checks) cost ~11 % of the proxy's CPU per forwarded request; this writes the
//! same fields in the same shapes with integer arithmetic. Each format is its own copy of the
//! code (a const parameter), so every field name and separator is a constant the compiler
//! turns into a few stores (`Cursor::lit`); only values are copied by length. Other log lines
//! still go through tracing-subscriber.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cursor::Cursor;
use super::Record;

/// The line format chosen by `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The line for `r`, logged at `now`, ending in `\n`, written into `scratch` (whose length is
/// its room: grown when a line does not fit, never shrunk).
pub fn write<'b>(
    scratch: &'b mut Vec<u8>,
    format: Format,
    now: SystemTime,
    r: &Record<'_>,
) -> &'b [u8] {
    fill(scratch, |c| match format {
        Format::Text => line::<false>(c, now, r),
        Format::Json => line::<true>(c, now, r),
    })
}

/// The fields of `r` in the text format (` name=value` each), for a tracing event.
pub fn text_fields(r: &Record<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    let len = fill(&mut buf, |c| fields::<false>(c, r)).len();
    buf.truncate(len);
    buf
}

/// Run `write` over `scratch` until what it writes fits, and return that.
#[inline(always)]
fn fill(scratch: &mut Vec<u8>, write: impl Fn(&mut Cursor<'_>)) -> &[u8] {
    /// Room for an ordinary line (~330 bytes) and a long path.
    const ROOM: usize = 1024;
    if scratch.len() < ROOM {
        scratch.resize(ROOM, 0);
    }
    let len = loop {
        let mut c = Cursor::new(scratch);
        write(&mut c);
        match c.finish() {
            (len, true) => break len,
            // The same line again writes the same bytes: `len` is enough.
            (len, false) => scratch.resize(len.max(scratch.len()), 0),
        }
    };
    scratch.get(..len).unwrap_or_default()
}

#[inline(always)]
fn line<const JSON: bool>(c: &mut Cursor<'_>, now: SystemTime, r: &Record<'_>) {
    if JSON {
        c.lit(b"{\"timestamp\":\"");
        timestamp(c, now);
        c.lit(b"\",\"level\":\"INFO\"");
    } else {
        timestamp(c, now);
        c.lit(b"  INFO access:");
    }
    fields::<JSON>(c, r);
    if JSON {
        c.lit(b",\"target\":\"access\"}\n");
    } else {
        c.byte(b'\n');
    }
}

/// The fields of `r`: ` name=value` each (text) or `,"name":value` each (JSON).
#[inline(always)]
fn fields<const JSON: bool>(c: &mut Cursor<'_>, r: &Record<'_>) {
    // With `JSON` a constant, every separator is one too: a few stores each.
    let sep = |c: &mut Cursor<'_>, i: usize| {
        let (text, json) = SEPARATORS[i];
        c.bytes(if JSON { json } else { text });
    };
    let l = r.lineage.unwrap_or_default();
    sep(c, 0);
    socket_addr(c, r.client);
    sep(c, 1);
    string::<JSON>(c, r.client_name.unwrap_or("-"));
    sep(c, 2);
    string::<JSON>(c, r.upstream);
    sep(c, 3);
    string::<JSON>(c, r.method);
    sep(c, 4);
    string::<JSON>(c, r.host);
    sep(c, 5);
    c.uint(u64::from(r.port));
    sep(c, 6);
    string::<JSON>(c, r.path);
    sep(c, 7);
    c.uint(u64::from(r.status));
    sep(c, 8);
    thousandths(c, micros(r.duration));
    sep(c, 9);
    c.uint(r.bytes_in);
    sep(c, 10);
    c.uint(r.bytes_out);
    sep(c, 11);
    c.uint(l.conn_id);
    sep(c, 12);
    if l.reused {
        c.lit(b"true");
    } else {
        c.lit(b"false");
    }
    sep(c, 13);
    thousandths(c, millis(l.age));
    sep(c, 14);
    thousandths(c, millis(l.idle));
    sep(c, 15);
    c.uint(u64::from(r.attempts));
    sep(c, 16);
    string::<JSON>(c, r.mode);
    sep(c, 17);
    string::<JSON>(c, r.error.unwrap_or("-"));
    sep(c, 18);
}

/// What comes before each value of [`fields`] in text and in JSON (and after the last): the
/// previous value's closing quote, the field's name, its opening quote. Strings are quoted in
/// both formats, the client's address in JSON only.
const SEPARATORS: [(&[u8], &[u8]); 19] = [
    (b" client=", b",\"client\":\""),
    (b" client_name=\"", b"\",\"client_name\":\""),
    (b"\" upstream=\"", b"\",\"upstream\":\""),
    (b"\" method=\"", b"\",\"method\":\""),
    (b"\" host=\"", b"\",\"host\":\""),
    (b"\" port=", b"\",\"port\":"),
    (b" path=\"", b",\"path\":\""),
    (b"\" status=", b"\",\"status\":"),
    (b" duration_ms=", b",\"duration_ms\":"),
    (b" bytes_in=", b",\"bytes_in\":"),
    (b" bytes_out=", b",\"bytes_out\":"),
    (b" conn_id=", b",\"conn_id\":"),
    (b" reused=", b",\"reused\":"),
    (b" conn_age_s=", b",\"conn_age_s\":"),
    (b" conn_idle_s=", b",\"conn_idle_s\":"),
    (b" attempts=", b",\"attempts\":"),
    (b" mode=\"", b",\"mode\":\""),
    (b"\" error=\"", b"\",\"error\":\""),
    (b"\"", b"\""),
];

/// Whole microseconds, in the 64 bits the line's arithmetic uses (u128 division is a call into
/// compiler-rt of ~100 instructions; 2^64 µs is over half a million years).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds, as [`micros`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Thousandths as a decimal with three places: 1234 → `1.234`.
#[inline(always)]
fn thousandths(c: &mut Cursor<'_>, units: u64) {
    c.uint(units / 1000);
    c.byte(b'.');
    c.padded::<3>(units % 1000);
}

/// A string's text between its quotes, escaped the way each format reads it back.
#[inline(always)]
fn string<const JSON: bool>(c: &mut Cursor<'_>, v: &str) {
    // The usual case (names, methods, paths): nothing to escape.
    if !c.bytes_if(v.as_bytes(), |b| PLAIN[usize::from(b)]) {
        c.detached(|c| escaped::<JSON>(c, v));
    }
}

/// Bytes written as they are inside quotes: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// `v` with quotes, backslashes and control characters escaped (text: as Rust's `Debug`
/// writes them; JSON: as JSON requires); other characters as they are.
#[cold]
#[inline(never)]
fn escaped<const JSON: bool>(c: &mut Cursor<'_>, v: &str) {
    use std::fmt::Write;
    for ch in v.chars() {
        match ch {
            '"' => c.lit(b"\\\""),
            '\\' => c.lit(b"\\\\"),
            '\n' => c.lit(b"\\n"),
            '\r' => c.lit(b"\\r"),
            '\t' => c.lit(b"\\t"),
            ch if ch.is_control() => {
                let _ = if JSON {
                    write!(c, "\\u{:04x}", ch as u32)
                } else {
                    write!(c, "\\u{{{:x}}}", ch as u32)
                };
            }
            ch => c.bytes(ch.encode_utf8(&mut [0u8; 4]).as_bytes()),
        }
    }
}

/// `addr` as `Display` writes it (`1.2.3.4:5`, `[::1]:5`).
#[inline(always)]
fn socket_addr(c: &mut Cursor<'_>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    c.byte(b'.');
                }
                match octet {
                    100.. => c.padded::<3>(u64::from(octet)),
                    10.. => c.padded::<2>(u64::from(octet)),
                    _ => c.padded::<1>(u64::from(octet)),
                }
            }
            c.byte(b':');
            c.uint(u64::from(a.port()));
        }
        std::net::SocketAddr::V6(_) => c.detached(|c| formatted(c, addr)),
    }
}

/// `v` through `core::fmt`, for what is rare (an IPv6 client).
#[cold]
#[inline(never)]
fn formatted(c: &mut Cursor<'_>, v: impl std::fmt::Display) {
    use std::fmt::Write;
    let _ = write!(c, "{v}");
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber writes it: `2026-11-22T05:30:43.865938Z`.
///
/// The date and time of day are formatted by `humantime` once per second per thread and kept;
/// each line adds only its microseconds. The cache is keyed on the whole second, so a clock
/// that steps back or jumps ahead formats the new second anew. Formatting the whole timestamp
/// for every line went through `core::fmt` and cost about 580 instructions of a forwarded
/// request's ~54 000.
#[inline(always)]
fn timestamp(c: &mut Cursor<'_>, now: SystemTime) {
    thread_local! {
        /// The last second formatted on this thread, and its text.
        static SECOND: std::cell::Cell<Option<(u64, [u8; SECOND_LEN])>> =
            const { std::cell::Cell::new(None) };
    }
    // humantime panics on a time before 1970 (a clock set wrong): log the epoch instead.
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let text = match SECOND.get() {
        Some((cached, text)) if cached == secs => text,
        _ => {
            let text = second_text(secs);
            SECOND.set(Some((secs, text)));
            text
        }
    };
    c.lit(&text);
    c.byte(b'.');
    c.padded::<6>(u64::from(since.subsec_micros()));
    c.byte(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS`.
const SECOND_LEN: usize = 19;

/// The whole seconds of a timestamp; past year 9999 (which humantime refuses), its last
/// second.
#[inline(never)]
fn second_text(secs: u64) -> [u8; SECOND_LEN] {
    use std::fmt::Write;
    let mut text = *b"9999-12-31T23:59:59";
    let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) else {
        return text;
    };
    let mut formatted = String::with_capacity(SECOND_LEN + 1);
    // An error (past year 9999) leaves the string empty: the last second stands.
    if write!(formatted, "{}", humantime::format_rfc3339_seconds(at)).is_ok() {
        if let Some(head) = formatted.as_bytes().get(..SECOND_LEN) {
            text.copy_from_slice(head);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::Lineage;
    use super::*;
    use std::time::Duration;

    fn record<'a>(path: &'a str, client_name: Option<&'a str>) -> Record<'a> {
        Record {
            client: "127.0.0.1:60642".parse().unwrap(),
            client_name,
            upstream: "origin",
            method: "POST",
            host: "api.example",
            port: 443,
            path,
            status: 201,
            duration: Duration::from_micros(1_234_567),
            bytes_in: 8,
            bytes_out: 3,
            lineage: Some(Lineage {
                conn_id: 7,
                reused: true,
                age: Duration::from_millis(61_005),
                idle: Duration::from_micros(250),
            }),
            attempts: 2,
            mode: "forward",
            error: None,
        }
    }

    const AT: u64 = 1_795_325_443; // 2026-11-22T05:30:43Z

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(AT) + Duration::from_micros(65_938)
    }

    fn line(format: Format, now: SystemTime, r: &Record<'_>) -> String {
        String::from_utf8(write(&mut Vec::new(), format, now, r).to_vec()).unwrap()
    }

    #[test]
    fn text_line_has_every_field_in_order() {
        assert_eq!(
            line(Format::Text, at(), &record("/v1/charges", Some("app"))),
            "2026-11-22T05:30:43.065938Z  INFO access: client=127.0.0.1:60642 client_name=\"app\" \
             upstream=\"origin\" method=\"POST\" host=\"api.example\" port=443 path=\"/v1/charges\" \
             status=201 duration_ms=1234.567 bytes_in=8 bytes_out=3 conn_id=7 reused=true \
             conn_age_s=61.005 conn_idle_s=0.000 attempts=2 mode=\"forward\" error=\"-\"\n"
        );
    }

    #[test]
    fn json_line_parses_with_the_same_values() {
        let mut r = record("/a\"b\\c\u{1}", None);
        r.error = Some("http_request_denied");
        let line = line(Format::Json, at(), &r);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-11-22T05:30:43.065938Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["client"], "127.0.0.1:60642");
        assert_eq!(v["client_name"], "-");
        assert_eq!(v["path"], "/a\"b\\c\u{1}");
        assert_eq!(v["port"], 443);
        assert_eq!(v["status"], 201);
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["conn_id"], 7);
        assert_eq!(v["reused"], true);
        assert_eq!(v["conn_age_s"], 61.005);
        assert_eq!(v["conn_idle_s"], 0.0);
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["mode"], "forward");
        assert_eq!(v["error"], "http_request_denied");
    }

    #[test]
    fn text_escapes_quotes_and_controls() {
        let line = line(Format::Text, at(), &record("/a\"b\nc", None));
        assert!(line.contains(r#"path="/a\"b\nc""#), "{line}");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
    }

    /// The lines as the formatter before the cursor (283c8de) wrote them, byte for byte:
    /// escapes in both formats, IPv6, extreme numbers, no lineage.
    #[test]
    fn lines_are_byte_for_byte_as_before() {
        let base = record("/v1/charges", Some("app"));
        let mut escapes = record("/a\"b\\c\u{1}\n\r\t\u{7f}\u{85}é☃😀\u{9f}", None);
        escapes.client = "[2001:db8::1]:8080".parse().unwrap();
        escapes.host = "h\u{0}st";
        escapes.error = Some("http_request_denied");
        escapes.lineage = None;
        escapes.attempts = 0;
        escapes.duration = Duration::ZERO;
        let mut extremes = record("", Some("app"));
        extremes.client = "0.0.0.0:0".parse().unwrap();
        extremes.bytes_in = u64::MAX;
        extremes.bytes_out = 10_000_000_000;
        extremes.duration = Duration::from_secs(u64::MAX);
        extremes.lineage = Some(Lineage {
            conn_id: u64::MAX,
            reused: false,
            age: Duration::from_millis(999),
            idle: Duration::from_secs(86_400 * 365),
        });
        extremes.port = 65535;
        extremes.status = 100;
        extremes.attempts = 255;
        extremes.method = "";
        extremes.mode = "tunnel";
        let mut rounding = record("/v1/charges", Some("app"));
        rounding.client = "255.10.9.100:65535".parse().unwrap();
        rounding.duration = Duration::from_micros(999);
        rounding.lineage = Some(Lineage {
            conn_id: 0,
            reused: false,
            age: Duration::from_micros(1_000_999),
            idle: Duration::from_millis(10),
        });
        let cases = [
            (0, &base, [G0T, G0J, G0F]),
            (1_795_325_443, &escapes, [G1T, G1J, G1F]),
            (1_767_225_599, &extremes, [G2T, G2J, G2F]),
            (1_767_225_600, &rounding, [G3T, G3J, G3F]),
        ];
        for (i, (secs, r, [text, json, fields])) in cases.into_iter().enumerate() {
            let at =
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(65_938 * i as u64);
            assert_eq!(line(Format::Text, at, r), text, "case {i}");
            assert_eq!(line(Format::Json, at, r), json, "case {i}");
            assert_eq!(
                String::from_utf8(text_fields(r)).unwrap(),
                fields,
                "case {i}"
            );
            serde_json::from_str::<serde_json::Value>(json).unwrap();
        }
    }

    #[test]
    fn a_line_longer_than_the_scratch_room_is_written_whole() {
        let long = format!("/{}", "ab\"".repeat(2000));
        let r = record(&long, Some("app"));
        let mut scratch = Vec::new();
        let want_path = format!("path=\"/{}\"", "ab\\\"".repeat(2000));
        for _ in 0..2 {
            let text =
                String::from_utf8(write(&mut scratch, Format::Text, at(), &r).to_vec()).unwrap();
            assert!(text.contains(&want_path));
            assert!(text.ends_with("error=\"-\"\n"), "{text}");
            assert!(text.starts_with("2026-11-22T05:30:43.065938Z  INFO access: client="));
        }
        // A short line after it, in the grown scratch, is only itself.
        assert_eq!(
            write(&mut scratch, Format::Text, at(), &record("/", None)),
            line(Format::Text, at(), &record("/", None)).as_bytes()
        );
    }

    /// Cut anywhere (inside an escaped string too), a line is either whole or measured at least
    /// as long as it is, so that the next try fits.
    #[test]
    fn every_room_short_of_a_line_is_noticed() {
        let r = record("/a\"b\u{1}c\u{85}d", Some("app\\"));
        for json in [false, true] {
            let write = |c: &mut Cursor<'_>| {
                if json {
                    super::line::<true>(c, at(), &r)
                } else {
                    super::line::<false>(c, at(), &r)
                }
            };
            let mut full = vec![0u8; 1024];
            let mut c = Cursor::new(&mut full);
            write(&mut c);
            let (want, whole) = c.finish();
            assert!(whole);
            for room in 0..want {
                let mut buf = vec![0u8; room];
                let mut c = Cursor::new(&mut buf);
                write(&mut c);
                let (len, whole) = c.finish();
                assert!(!whole && len >= want, "room {room}: {len} of {want}");
            }
        }
    }

    fn stamp(at: SystemTime) -> String {
        let mut buf = [0u8; 64];
        let mut c = Cursor::new(&mut buf);
        timestamp(&mut c, at);
        let (len, whole) = c.finish();
        assert!(whole);
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    #[test]
    fn dates_match_the_calendar() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (1_709_164_799, "2024-02-28T23:59:59.000000Z"),
            (4_102_444_800, "2100-01-01T00:00:00.000000Z"),
            // The same second again (from the per-thread cache), then the next one.
            (4_102_444_800, "2100-01-01T00:00:00.000000Z"),
            (4_102_444_801, "2100-01-01T00:00:01.000000Z"),
            (253_402_300_799, "9999-12-31T23:59:59.000000Z"),
            (253_402_300_800, "9999-12-31T23:59:59.000000Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                stamp(UNIX_EPOCH + Duration::from_secs(secs)),
                want,
                "{secs}"
            );
        }
        // A clock set before 1970 logs the epoch rather than panicking.
        assert_eq!(
            stamp(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000Z"
        );
        // Microseconds are zero-padded to six digits, within a cached second.
        for (micros, want) in [
            (0, "000000"),
            (7, "000007"),
            (65_938, "065938"),
            (865_938, "865938"),
            (999_999, "999999"),
        ] {
            assert_eq!(
                stamp(
                    UNIX_EPOCH + Duration::from_secs(1_764_999_043) + Duration::from_micros(micros)
                ),
                format!("2025-12-06T05:30:43.{want}Z")
            );
        }
    }

    /// The per-second cache across a second, a day and a year, and a clock that steps back
    /// over them or jumps ahead: every line carries its own second.
    #[test]
    fn the_cached_second_follows_the_clock_whichever_way_it_goes() {
        let at = |secs: u64, micros: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
        };
        let new_year = 1_767_225_600; // 2026-01-01T00:00:00Z
        let steps = [
            (new_year - 1, 999_999, "2025-12-31T23:59:59.999999Z"),
            (new_year, 0, "2026-01-01T00:00:00.000000Z"),
            (new_year, 1, "2026-01-01T00:00:00.000001Z"),
            // Stepped back over the year, then forward again.
            (new_year - 1, 500_000, "2025-12-31T23:59:59.500000Z"),
            (new_year, 2, "2026-01-01T00:00:00.000002Z"),
            // Back a whole day to the same time of day, then a jump of years.
            (new_year - 86_400, 3, "2025-12-31T00:00:00.000003Z"),
            (
                new_year + 86_400 * 365 * 3,
                4,
                "2028-12-31T00:00:00.000004Z",
            ),
            // To midnight of the next day.
            (new_year + 86_399, 5, "2026-01-01T23:59:59.000005Z"),
            (new_year + 86_400, 6, "2026-01-02T00:00:00.000006Z"),
        ];
        for (secs, micros, want) in steps {
            assert_eq!(stamp(at(secs, micros)), want, "{secs}.{micros}");
        }
    }

    const G0T: &str = "1970-01-01T00:00:00.000000Z  INFO access: client=127.0.0.1:60642 client_name=\"app\" upstream=\"origin\" method=\"POST\" host=\"api.example\" port=443 path=\"/v1/charges\" status=201 duration_ms=1234.567 bytes_in=8 bytes_out=3 conn_id=7 reused=true conn_age_s=61.005 conn_idle_s=0.000 attempts=2 mode=\"forward\" error=\"-\"\n";
    const G0J: &str = "{\"timestamp\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"INFO\",\"client\":\"127.0.0.1:60642\",\"client_name\":\"app\",\"upstream\":\"origin\",\"method\":\"POST\",\"host\":\"api.example\",\"port\":443,\"path\":\"/v1/charges\",\"status\":201,\"duration_ms\":1234.567,\"bytes_in\":8,\"bytes_out\":3,\"conn_id\":7,\"reused\":true,\"conn_age_s\":61.005,\"conn_idle_s\":0.000,\"attempts\":2,\"mode\":\"forward\",\"error\":\"-\",\"target\":\"access\"}\n";
    const G0F: &str = " client=127.0.0.1:60642 client_name=\"app\" upstream=\"origin\" method=\"POST\" host=\"api.example\" port=443 path=\"/v1/charges\" status=201 duration_ms=1234.567 bytes_in=8 bytes_out=3 conn_id=7 reused=true conn_age_s=61.005 conn_idle_s=0.000 attempts=2 mode=\"forward\" error=\"-\"";
    const G1T: &str = "2026-11-22T05:30:43.065938Z  INFO access: client=[2001:db8::1]:8080 client_name=\"-\" upstream=\"origin\" method=\"POST\" host=\"h\\u{0}st\" port=443 path=\"/a\\\"b\\\\c\\u{1}\\n\\r\\t\\u{7f}\\u{85}é☃😀\\u{9f}\" status=201 duration_ms=0.000 bytes_in=8 bytes_out=3 conn_id=0 reused=false conn_age_s=0.000 conn_idle_s=0.000 attempts=0 mode=\"forward\" error=\"http_request_denied\"\n";
    const G1J: &str = "{\"timestamp\":\"2026-11-22T05:30:43.065938Z\",\"level\":\"INFO\",\"client\":\"[2001:db8::1]:8080\",\"client_name\":\"-\",\"upstream\":\"origin\",\"method\":\"POST\",\"host\":\"h\\u0000st\",\"port\":443,\"path\":\"/a\\\"b\\\\c\\u0001\\n\\r\\t\\u007f\\u0085é☃😀\\u009f\",\"status\":201,\"duration_ms\":0.000,\"bytes_in\":8,\"bytes_out\":3,\"conn_id\":0,\"reused\":false,\"conn_age_s\":0.000,\"conn_idle_s\":0.000,\"attempts\":0,\"mode\":\"forward\",\"error\":\"http_request_denied\",\"target\":\"access\"}\n";
    const G1F: &str = " client=[2001:db8::1]:8080 client_name=\"-\" upstream=\"origin\" method=\"POST\" host=\"h\\u{0}st\" port=443 path=\"/a\\\"b\\\\c\\u{1}\\n\\r\\t\\u{7f}\\u{85}é☃😀\\u{9f}\" status=201 duration_ms=0.000 bytes_in=8 bytes_out=3 conn_id=0 reused=false conn_age_s=0.000 conn_idle_s=0.000 attempts=0 mode=\"forward\" error=\"http_request_denied\"";
    const G2T: &str = "2025-12-31T23:59:59.131876Z  INFO access: client=0.0.0.0:0 client_name=\"app\" upstream=\"origin\" method=\"\" host=\"api.example\" port=65535 path=\"\" status=100 duration_ms=18446744073709551.615 bytes_in=18446744073709551615 bytes_out=10000000000 conn_id=18446744073709551615 reused=false conn_age_s=0.999 conn_idle_s=31536000.000 attempts=255 mode=\"tunnel\" error=\"-\"\n";
    const G2J: &str = "{\"timestamp\":\"2025-12-31T23:59:59.131876Z\",\"level\":\"INFO\",\"client\":\"0.0.0.0:0\",\"client_name\":\"app\",\"upstream\":\"origin\",\"method\":\"\",\"host\":\"api.example\",\"port\":65535,\"path\":\"\",\"status\":100,\"duration_ms\":18446744073709551.615,\"bytes_in\":18446744073709551615,\"bytes_out\":10000000000,\"conn_id\":18446744073709551615,\"reused\":false,\"conn_age_s\":0.999,\"conn_idle_s\":31536000.000,\"attempts\":255,\"mode\":\"tunnel\",\"error\":\"-\",\"target\":\"access\"}\n";
    const G2F: &str = " client=0.0.0.0:0 client_name=\"app\" upstream=\"origin\" method=\"\" host=\"api.example\" port=65535 path=\"\" status=100 duration_ms=18446744073709551.615 bytes_in=18446744073709551615 bytes_out=10000000000 conn_id=18446744073709551615 reused=false conn_age_s=0.999 conn_idle_s=31536000.000 attempts=255 mode=\"tunnel\" error=\"-\"";
    const G3T: &str = "2026-01-01T00:00:00.197814Z  INFO access: client=255.10.9.100:65535 client_name=\"app\" upstream=\"origin\" method=\"POST\" host=\"api.example\" port=443 path=\"/v1/charges\" status=201 duration_ms=0.999 bytes_in=8 bytes_out=3 conn_id=0 reused=false conn_age_s=1.000 conn_idle_s=0.010 attempts=2 mode=\"forward\" error=\"-\"\n";
    const G3J: &str = "{\"timestamp\":\"2026-01-01T00:00:00.197814Z\",\"level\":\"INFO\",\"client\":\"255.10.9.100:65535\",\"client_name\":\"app\",\"upstream\":\"origin\",\"method\":\"POST\",\"host\":\"api.example\",\"port\":443,\"path\":\"/v1/charges\",\"status\":201,\"duration_ms\":0.999,\"bytes_in\":8,\"bytes_out\":3,\"conn_id\":0,\"reused\":false,\"conn_age_s\":1.000,\"conn_idle_s\":0.010,\"attempts\":2,\"mode\":\"forward\",\"error\":\"-\",\"target\":\"access\"}\n";
    const G3F: &str = " client=255.10.9.100:65535 client_name=\"app\" upstream=\"origin\" method=\"POST\" host=\"api.example\" port=443 path=\"/v1/charges\" status=201 duration_ms=0.999 bytes_in=8 bytes_out=3 conn_id=0 reused=false conn_age_s=1.000 conn_idle_s=0.010 attempts=2 mode=\"forward\" error=\"-\"";
}
