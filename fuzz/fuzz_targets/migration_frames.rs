#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wanmig_fuzz_harness::migration_frames::run(data));
