#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wanmig_fuzz_harness::storage_presence::run(data));
