#![no_main]
//! libFuzzer entry point of [`flower_fuzz::fedxgb_json`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::fedxgb_json(data));
