#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_shield::__fuzz::json(data));
