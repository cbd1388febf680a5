#![no_main]
//! libFuzzer entry point of [`flower_fuzz::npy`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::npy(data));
