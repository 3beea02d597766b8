//! libFuzzer entry for `response_head`; the invariants are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::response_head(data));
