#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wanmig_fuzz_harness::overlay_control::run(data));
