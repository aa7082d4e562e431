//! Compiles `src/bpf/*.bpf.c` with clang and generates a libbpf-rs skeleton
//! (Rust types included) for each, from the object's BTF.
//!
//! clang: `$MIRROR_CLANG`, else `clang-19` (Debian 12's `clang` is 14, too old
//! for what we use). `cargo xtask deps` installs it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

/// `mirror`: the daemon's programs; `bench_peers`: what the benchmark lab
/// measures it against.
const PROGRAMS: &[&str] = &["mirror", "bench_peers"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("MIRROR_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    if Command::new(&clang).arg("--version").output().is_err() {
        panic!(
            "`{clang}` not found: the kernel programs need clang 19. \
             Run `cargo xtask deps` (as root it installs clang-19), or set MIRROR_CLANG."
        );
    }
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("unsupported target architecture {other}"),
        Err(_) => panic!("cargo sets CARGO_CFG_TARGET_ARCH"),
    };
    let multiarch = multiarch_include();

    for name in PROGRAMS {
        let src = format!("src/bpf/{name}.bpf.c");
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args([
                format!("-D__TARGET_ARCH_{arch}"),
                "-O2".to_string(),
                "-Wall".to_string(),
                "-Werror".to_string(),
                format!("-I{}", multiarch.display()),
                "-Isrc/bpf".to_string(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {src}: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=MIRROR_CLANG");
}

/// Debian keeps `asm/types.h` in a multiarch directory, which clang's BPF
/// target does not search by itself.
fn multiarch_include() -> PathBuf {
    let triple = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let dir = Path::new("/usr/include").join(triple);
    if !dir.join("asm/types.h").exists() {
        panic!(
            "{}/asm/types.h is missing: install linux-libc-dev (`cargo xtask deps`)",
            dir.display()
        );
    }
    dir
}
