#![no_main]
//! libFuzzer entry point of [`flower_fuzz::fleet_objects`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| flower_fuzz::fleet_objects(data));
