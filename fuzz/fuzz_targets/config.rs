//! `cargo fuzz run config`: see `mirror_user::fuzz::config_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_user::fuzz::config_text(data));
