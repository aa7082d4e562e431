//! `cargo fuzz run frame`: see `mirror_user::fuzz::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_user::fuzz::frame(data));
