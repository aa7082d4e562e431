//! `cargo fuzz run tunnel`: see `mirror_user::fuzz::tunnel_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_user::fuzz::tunnel_header(data));
