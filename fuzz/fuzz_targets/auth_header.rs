#![no_main]
//! libFuzzer entry point of [`flower_fuzz::auth_header`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::auth_header(data));
