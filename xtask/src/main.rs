//! `cargo xtask`: the project's build, test and demo entry points.
//!
//! - `cargo xtask deps`  installs missing Debian packages (as root), else prints the command;
//!   and kubernetes-validate (PyPI) into a venv under `target/tools/`
//! - `cargo xtask test`  deps, format and lint checks, build, unit tests, kernel and end-to-end tests;
//!   ends with `tests: N passed, M failed, K skipped`, and with `CI` set fails when K > 0
//!   (tests that need a container engine, on a machine without one, excepted: counted skipped)
//! - `cargo xtask demo`  deps, release build, then `mirror demo`
//! - `cargo xtask dist`  release build, then `dist/`: the binary, man pages, completions,
//!   the systemd unit and the example configs
//! - `cargo xtask bench` deps, release build, then the benchmark lab (`benches/`)
//! - `cargo xtask mutants` mutation testing (cargo-mutants by group, and C mutants)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod mutants;

/// Debian packages the build and the tests need.
const PACKAGES: &[&str] = &[
    "clang-19",       // compiles the kernel programs (Debian 12's `clang` is 14)
    "llvm-19",        // llvm-strip etc. for BPF objects
    "libelf-dev",     // libbpf
    "zlib1g-dev",     // libbpf
    "pkg-config",     // libbpf-sys finds libelf/zlib
    "linux-libc-dev", // uapi headers: linux/bpf.h, asm/types.h
    "make",
    "gcc",               // libbpf-sys builds libbpf from source
    "iproute2",          // ip netns / veth for the lab
    "procps",            // sysctl inside lab namespaces
    "fonts-dejavu-core", // labels of the benchmark charts
    // A GRE/ERSPAN II/III decoder the project did not write (scapy, for
    // Debian's /usr/bin/python3; much lighter than tshark): e2e_targets
    // checks the tunnel headers with it. Pulls in only python3 and netbase.
    "python3-scapy",
    // The Prometheus project's text-format parser (its Python client, for the
    // same python3): e2e_metrics reads the daemon's /metrics with it.
    "python3-prometheus-client",
    "systemd",      // systemd-analyze: tests/packaging.rs verifies contrib/mirror.service
    "man-db",       // man: the unit's Documentation= pages, and `man mirror`, are checked
    "util-linux",   // setpriv, prlimit: e2e_service runs the daemon with the unit's capabilities
    "python3-venv", // the venv kubernetes-validate (PyPI) is installed into
    "tzdata",       // /usr/share/zoneinfo: the zones of session schedules (and their tests)
];

/// kubernetes-validate, from PyPI: tests/packaging.rs validates
/// contrib/kubernetes/ with it. Pinned: its version is the newest
/// Kubernetes schema it knows.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Debian packages only the benchmark lab needs: the tools `span` measures
/// mirror against, and libxdp for the C AF_XDP forwarder peer.
const BENCH_PACKAGES: &[&str] = &[
    "tcpdump",      // `span` case tcpdump: tcpdump -w vs a pcapng target
    "daemonlogger", // `span` case daemonlogger: its soft tap
    "libxdp-dev",   // benches/peers/xsk_fwd.c (pulls in libbpf-dev)
];

/// Benchmark cases `mirror-bench` implements.
const BENCH_CASES: &[&str] = &["filters", "copy", "span"];

#[derive(Parser)]
#[command(name = "xtask", about = "Build, test and demo tasks for mirror")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing Debian packages (as root), or print the command to run.
    Deps,
    /// Everything CI runs: deps, fmt, clippy, cargo deny, build, all tests (kernel tests need root:
    /// as another user they are reported skipped, and with `CI` set that fails),
    /// then a one-minute soak (`cargo xtask soak`; as root, when no test filter is given).
    ///
    /// The kernel and end-to-end tests load BPF programs and build network
    /// namespaces, so they need root: they are marked `#[ignore]`, and as root
    /// this passes `--include-ignored` to `cargo test` so that every test runs.
    /// As another user they do not run and are reported as skipped, never as
    /// passed. The run ends with one line over every test binary:
    /// `tests: N passed, M failed, K skipped`.
    ///
    /// With the environment variable `CI` set (to anything but empty), a run
    /// that skipped any test fails: CI must run every test, so run it as root.
    /// One exception: a test that needs a container engine (`#[ignore =
    /// "needs a container engine…"]`), on a machine where `docker info`
    /// fails, is left out, named, and counted skipped without failing CI.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build in release mode and run `mirror demo` (needs root).
    Demo {
        /// Arguments for `mirror demo`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build in release mode and write `dist/`: the binary, man pages
    /// (`man/man1/mirror.1` and one per subcommand), bash/zsh/fish
    /// completions, the systemd unit and the example configs. Replaces
    /// `dist/`.
    Dist,
    /// Mutation testing: cargo-mutants over the userspace crate by group
    /// (config, filter, target, session), each judged by the tests that
    /// run in seconds and cover it, then hand-made mutations of the kernel
    /// programs that the kernel-table tests must catch (as root). Installs
    /// cargo-mutants when missing. Writes benches/results/mutants.md and, for a
    /// whole run, the README's table. Takes hours on 2 cores: not part of
    /// `test`.
    Mutants {
        /// Groups to run; every group and the C mutants when omitted.
        groups: Vec<String>,
        /// Only the C mutants.
        #[arg(long, conflicts_with = "rust_only")]
        c_only: bool,
        /// Only the Rust groups.
        #[arg(long)]
        rust_only: bool,
        /// Mutants built and tested at once (each needs its own build).
        #[arg(long, default_value_t = 1)]
        jobs: u32,
        /// Only shard K of N of each group's mutants (`K/N`, K from 0), to
        /// spread a group over several sessions; results per shard.
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
    },
    /// The daemon for a while under everything at once (`mirror-bench soak`:
    /// two sources, traffic, live rule updates, SIGHUPs, a flapping
    /// target): RSS, fds, BPF maps and threads sampled over time, written
    /// as a table and a chart (benches/results/soak-latest.md, .png); fails
    /// on growth after the warm-up or counters that do not reconcile.
    /// `cargo xtask test` ends with a one-minute soak. Needs root.
    Soak {
        /// Minutes to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// `cargo deny` over the dependency tree (deny.toml): licences, duplicate
    /// crates, sources, RustSec advisories (see the README's Supply chain).
    /// Installs cargo-deny when missing. Part of `cargo xtask test`.
    Deny,
    /// libFuzzer over each input family (`fuzz/`: config, rule, control,
    /// frame, tunnel; the properties are `mirror_user::fuzz`'s). Needs a
    /// nightly toolchain and cargo-fuzz, which this project does not
    /// install (its machines have only stable): without them it fails and
    /// says so. The same properties run on stable, with fixed seeds, in
    /// `cargo xtask test` (tests/fuzz_inputs.rs, and the kernel parser in
    /// tests/fuzz_kernel.rs).
    Fuzz {
        /// Targets to run; all when omitted.
        targets: Vec<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// The benchmark lab: `cargo xtask bench [NAME…] [--sizes 60,1500] [--rules 1,100,10000] [--reps 3]`.
    /// Cases: filters (classification cost vs rule count), copy (what copy
    /// mode costs the monitored traffic, through sockets), span (mirror vs XDP_DROP ceiling, tc mirred,
    /// bare XDP redirect/broadcast, a C AF_XDP forwarder, daemonlogger,
    /// tcpdump -w vs a pcapng target, tc mirred to a VXLAN device vs the
    /// vxlan/gre/erspan targets, the kernel path with a cut, a rate limit
    /// and a target group vs without, copy mode vs tc mirred while the
    /// monitored namespace routes the traffic; and a second table,
    /// span-capture: the capture cases on a capture host's layout). Installs
    /// tcpdump, daemonlogger and libxdp-dev. Results go to benches/results/
    /// as JSON, a Markdown table and a PNG chart per table. Needs root.
    Bench {
        /// Cases to run; all implemented ones when omitted.
        names: Vec<String>,
        /// Rule counts for `filters`.
        #[arg(long)]
        rules: Option<String>,
        /// Frame sizes for `span` (bytes without FCS).
        #[arg(long)]
        sizes: Option<String>,
        /// Runs per measurement (median reported).
        #[arg(long)]
        reps: Option<u32>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Mutants {
            groups,
            c_only,
            rust_only,
            jobs,
            shard,
        } => mutants::main(&root(), &groups, c_only, rust_only, jobs, shard.as_deref()),
        Cmd::Deps => deps(),
        Cmd::Test { no_lint, args } => test(no_lint, &args),
        Cmd::Demo { args } => demo(&args),
        Cmd::Dist => dist(),
        Cmd::Fuzz { targets, seconds } => fuzz(&targets, seconds),
        Cmd::Deny => deny(),
        Cmd::Soak { minutes } => {
            deps()?;
            soak(minutes, &root().join("benches/results"))
        }
        Cmd::Bench {
            names,
            rules,
            sizes,
            reps,
        } => bench(&names, rules, sizes, reps),
    }
}

/// The libFuzzer targets of `fuzz/Cargo.toml`.
const FUZZ_TARGETS: &[&str] = &["config", "rule", "control", "frame", "tunnel"];

fn fuzz(targets: &[String], seconds: u32) -> Result<()> {
    for t in targets {
        if !FUZZ_TARGETS.contains(&t.as_str()) {
            bail!(
                "no fuzz target `{t}`; the targets are {}",
                FUZZ_TARGETS.join(", ")
            );
        }
    }
    let works = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works(&["+nightly", "--version"]) || !works(&["+nightly", "fuzz", "--version"]) {
        bail!(
            "cargo fuzz needs a nightly toolchain and cargo-fuzz, and this machine lacks them \
             (rustup toolchain install nightly && cargo +nightly install cargo-fuzz). \
             The same properties run on stable with fixed seeds: \
             cargo test -p mirror-user --test fuzz_inputs (and, as root, \
             --test fuzz_kernel -- --include-ignored)"
        );
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        FUZZ_TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    for t in chosen {
        run(Command::new("cargo")
            .current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", t, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn deps() -> Result<()> {
    install(PACKAGES)?;
    python_tools()
}

/// The venv of the Python tools the tests use, under the workspace's target
/// directory (`cargo clean` removes it; the next `deps` makes it again).
fn venv() -> PathBuf {
    root().join("target/tools/venv")
}

/// Installs kubernetes-validate from PyPI into [`venv`], unless there.
fn python_tools() -> Result<()> {
    let venv = venv();
    if venv.join("bin/kubernetes-validate").exists() {
        return Ok(());
    }
    // Debian's Python (python3-venv), not whichever `python3` is first on PATH.
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
}

/// Installs the missing ones of `packages` (as root), else fails with the command to run.
fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing Debian packages: {}\nrun as root:\n    {cmd}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn test(no_lint: bool, args: &[String]) -> Result<()> {
    deps()?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    deny()?;
    let tests = marked_tests(&root().join("tests"))?;
    unmarked_root_tests(&tests)?;
    let root = is_root();
    // The tests that need root are `#[ignore]`d: as root run them too, unless
    // the caller chose which ones (libtest refuses both flags together).
    let choose_ignored = args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    if !root {
        eprintln!(
            "xtask: not root: the kernel and end-to-end tests (BPF, network namespaces) \
             will not run and are counted as skipped"
        );
    }
    // Library, integration tests and unit tests of the binary crate's library;
    // `--all-targets` would also run bins and xtask, which have no tests.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--lib", "--tests", "--"]);
    // Tests that need a container engine are `#[ignore]`d too. As root they
    // would run with the rest, and fail where no engine answers: then they
    // are left out by name and counted skipped here instead (libtest would
    // call them "filtered out", which no total counts).
    let mut no_engine = Vec::new();
    if root && !choose_ignored {
        cmd.arg("--include-ignored");
        let engine_tests: Vec<&str> = tests
            .iter()
            .filter(|t| t.needs_engine)
            .map(|t| t.name.as_str())
            .collect();
        if !engine_tests.is_empty() && !container_engine() {
            for name in engine_tests {
                cmd.args(["--skip", name]);
                no_engine.push(name.to_string());
            }
        }
    }
    let counts = cargo_test(cmd.args(args), &no_engine)?;
    // CI must run every test it can: a test skipped for want of root fails
    // it; one skipped for want of a container engine does not, as no engine
    // runs on this project's CI machines (README, "Skipped tests").
    let must_run = counts.skipped - no_engine.len() as u64;
    if must_run > 0 && ci() {
        let why = if root {
            "`#[ignore]`d tests were left out"
        } else {
            "not root: the kernel and end-to-end tests need BPF and network namespaces"
        };
        bail!(
            "CI is set and {must_run} test(s) were skipped ({why}); CI must run every test: \
             run `cargo xtask test` as root",
        );
    }
    // A short soak closes the run (as root; a filter of tests skips it).
    if root && args.is_empty() {
        soak(SOAK_CI_MINUTES, &self::root().join("target/soak"))?;
    } else if ci() {
        bail!("CI is set and the soak did not run: run `cargo xtask test` as root, without a test filter");
    }
    Ok(())
}

/// `cargo deny` (deny.toml): licences, duplicate crates and sources must
/// pass; then the RustSec advisories, from the database on github.com, or,
/// where that cannot be fetched (these machines resolve no github.com), from
/// a copy already on disk (`~/.cargo/advisory-dbs`, its date printed), or
/// else a loud line that they were not checked.
fn deny() -> Result<()> {
    let found = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("xtask: installing cargo-deny (once)");
        run(Command::new("cargo").args(["install", "--locked", "cargo-deny"]))?;
    }
    run(cargo().args(["deny", "check", "bans", "licenses", "sources"]))?;
    let out = cargo()
        .args(["deny", "check", "advisories"])
        .output()
        .context("running cargo deny")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let fetch_failed = text.contains("failed to fetch advisory database");
    if !out.status.success() && !fetch_failed {
        eprint!("{text}");
        bail!("cargo deny: a dependency has a RustSec advisory (above)");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let local = std::fs::read_dir(home.join(".cargo/advisory-dbs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join(".git").exists());
    let Some(db) = local else {
        eprintln!(
            "xtask: advisories NOT CHECKED: the RustSec database (github.com/RustSec/advisory-db) \
             cannot be fetched from this machine and no copy is in ~/.cargo/advisory-dbs"
        );
        return Ok(());
    };
    if fetch_failed {
        run(cargo().args(["deny", "--offline", "check", "advisories"]))?;
    }
    let date = Command::new("git")
        .arg("-C")
        .arg(&db)
        .args(["log", "-1", "--format=%cs"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "xtask: advisories ok against the RustSec database as of {date} ({})",
        db.display()
    );
    Ok(())
}

/// Minutes of soak that close `cargo xtask test`.
const SOAK_CI_MINUTES: f64 = 1.0;

/// Builds the daemon and the bench lab and runs `mirror-bench soak`.
fn soak(minutes: f64, out: &Path) -> Result<()> {
    if !is_root() {
        bail!("the soak loads BPF programs and builds namespaces: run it as root");
    }
    run(cargo().args(["build", "-p", "mirror-bench", "-p", "mirror-user"]))?;
    run(Command::new(root().join("target/debug/mirror-bench"))
        .current_dir(root())
        .arg("--out")
        .arg(out)
        .args(["soak", "--minutes", &minutes.to_string()]))
}

/// True when a container engine answers (`docker info` succeeds).
fn container_engine() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `#[test]` in `tests/*.rs`, as far as `cargo xtask test` needs to know it.
struct MarkedTest {
    file: PathBuf,
    name: String,
    /// `#[ignore …]`d.
    ignored: bool,
    /// Its body starts with `require_root!`.
    needs_root: bool,
    /// `#[ignore = "needs a container engine…"]`.
    needs_engine: bool,
}

/// Every `#[test]` of the `.rs` files in `dir`, with its markings.
fn marked_tests(dir: &Path) -> Result<Vec<MarkedTest>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for chunk in text.split("#[test]").skip(1) {
            // The attributes and signature, then the first lines of the body.
            let Some(fn_at) = chunk.find("fn ") else {
                continue;
            };
            let (attrs, rest) = chunk.split_at(fn_at);
            let name: String = rest[3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let head: String = rest.lines().take(4).collect::<Vec<_>>().join("\n");
            out.push(MarkedTest {
                file: path.clone(),
                name,
                ignored: attrs.contains("#[ignore"),
                needs_root: head.contains("require_root!"),
                needs_engine: attrs.contains("#[ignore = \"needs a container engine"),
            });
        }
    }
    Ok(out)
}

/// Fails naming every test that needs root (`require_root!`) but is not
/// `#[ignore]`d: run unprivileged it would fail instead of counting as
/// skipped, and the skipped count would lie.
fn unmarked_root_tests(tests: &[MarkedTest]) -> Result<()> {
    let bad: Vec<String> = tests
        .iter()
        .filter(|t| t.needs_root && !t.ignored)
        .map(|t| format!("{}: {}", t.file.display(), t.name))
        .collect();
    if !bad.is_empty() {
        bail!(
            "these tests need root (`require_root!`) but are not `#[ignore = \"needs root: …\"]`, \
             so an unprivileged run would fail them instead of counting them skipped:\n  {}",
            bad.join("\n  ")
        );
    }
    Ok(())
}

/// True when the environment variable `CI` is set and not empty.
fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Totals over every test binary of one `cargo test` run.
#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    /// libtest's "ignored": tests that did not run.
    skipped: u64,
}

impl Counts {
    /// Adds the counts of one libtest summary line, e.g.
    /// `test result: ok. 5 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s`;
    /// other lines are left alone.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            match (
                words.next().and_then(|n| n.parse::<u64>().ok()),
                words.next(),
            ) {
                (Some(n), Some("passed")) => self.passed += n,
                (Some(n), Some("failed")) => self.failed += n,
                (Some(n), Some("ignored")) => self.skipped += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, passing its output through, and closes with one total
/// line over every test binary: `tests: N passed, M failed, K skipped`.
/// `left_out` are tests kept from running with `--skip` (for want of a
/// container engine): they are named and counted skipped.
fn cargo_test(cmd: &mut Command, left_out: &[String]) -> Result<Counts> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut counts = Counts::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait()?;
    for name in left_out {
        println!("skipped (needs a container engine; `docker info` failed here): {name}");
    }
    counts.skipped += left_out.len() as u64;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    );
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(counts)
}

fn demo(args: &[String]) -> Result<()> {
    deps()?;
    run(cargo().args(["build", "--release", "-p", "mirror-user", "--bin", "mirror"]))?;
    let exe = root().join("target/release/mirror");
    run(Command::new(exe).arg("demo").args(args))
}

/// Where cargo puts build output: `CARGO_TARGET_DIR`, else `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root().join(d) })
        .unwrap_or_else(|| root().join("target"))
}

fn dist() -> Result<()> {
    deps()?;
    // The binary, and the program that writes the rest from its clap
    // definition (mirror-user/examples/dist.rs: not part of the binary).
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "mirror-user",
        "--bin",
        "mirror",
        "--example",
        "dist",
    ]))?;
    let out = root().join("dist");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let release = target_dir().join("release");
    run(Command::new(release.join("examples/dist"))
        .arg(&out)
        .arg(release.join("mirror"))
        .arg(root().join("contrib")))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

fn bench(
    names: &[String],
    rules: Option<String>,
    sizes: Option<String>,
    reps: Option<u32>,
) -> Result<()> {
    for n in names {
        if !BENCH_CASES.contains(&n.as_str()) {
            bail!(
                "there is no benchmark `{n}`; available: {}",
                BENCH_CASES.join(", ")
            );
        }
    }
    if !is_root() {
        bail!("the benchmarks load BPF programs and build namespaces: run `cargo xtask bench` as root");
    }
    deps()?;
    install(BENCH_PACKAGES)?;
    // `copy` runs the real daemon, next to the bench binary.
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "mirror-bench",
        "-p",
        "mirror-user",
    ]))?;
    // The C peer of the userspace path, next to them too.
    run(Command::new("gcc")
        .current_dir(root())
        .args(["-O2", "-Wall", "-Werror", "-o", "target/release/xsk-fwd"])
        .arg("benches/peers/xsk_fwd.c")
        .args(["-lxdp", "-lbpf"]))?;
    let exe = root().join("target/release/mirror-bench");
    let cases: Vec<&str> = if names.is_empty() {
        BENCH_CASES.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    for case in cases {
        let mut cmd = Command::new(&exe);
        cmd.current_dir(root()).arg(case);
        if let (Some(r), "filters") = (&rules, case) {
            cmd.args(["--rules", r]);
        }
        if let (Some(s), "span") = (&sizes, case) {
            cmd.args(["--sizes", s]);
        }
        if let Some(r) = reps {
            cmd.args(["--reps", &r.to_string()]);
        }
        run(&mut cmd)?;
    }
    Ok(())
}

/// Replaces what stands between `<!-- NAME -->` and `<!-- /NAME -->` in
/// `path` with `body`; fails when the markers are missing.
fn replace_between_markers(path: &Path, name: &str, body: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (open, close) = (format!("<!-- {name} -->\n"), format!("<!-- /{name} -->"));
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        bail!("{} has no {open} … {close} markers", path.display());
    };
    let new = format!("{}{open}{body}{}", &text[..a], &text[b..]);
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
