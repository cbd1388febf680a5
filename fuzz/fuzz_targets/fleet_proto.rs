#![no_main]
//! libFuzzer entry point of [`flower_fuzz::fleet_proto`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::fleet_proto(data));
