#![no_main]
//! libFuzzer entry point of [`flower_fuzz::client_message`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::client_message(data));
