//! libFuzzer entry for `http1_head`; the invariants are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::http1_head(data));
