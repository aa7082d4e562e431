//! `cargo fuzz run control`: see `mirror_user::fuzz::control_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_user::fuzz::control_request(data));
