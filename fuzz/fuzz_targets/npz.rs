#![no_main]
//! libFuzzer entry point of [`flower_fuzz::npz`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::npz(data));
