//! libFuzzer target: `audit_gateway_fuzz::checks::page_reference` (fuzz/src/checks.rs says what it asserts).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| audit_gateway_fuzz::checks::page_reference(data));
