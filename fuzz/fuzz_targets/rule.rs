//! `cargo fuzz run rule`: see `mirror_user::fuzz::rule_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_user::fuzz::rule_text(data));
