//! libFuzzer entry for `target_parse`; the invariants are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::target_parse(data));
