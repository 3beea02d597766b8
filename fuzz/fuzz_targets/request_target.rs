//! libFuzzer entry for `request_target`; the invariants are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::request_target(data));
