//! `mirror-bench`: the benchmark lab behind `cargo xtask bench`.
//!
//! Cases so far:
//! - `filters`: classification cost per frame against the rule count, through
//!   `BPF_PROG_TEST_RUN` in repeat mode (the kernel times the program alone).
//! - `copy`: the monitored traffic's own rate (UDP pps, TCP Mbit/s) with copy
//!   mode off and on, between namespaces through the monitored interface.
//! - `tap`: tap mode into an interface target, the RX queue sharing the
//!   target's UMEM or copying into it, fed by an AF_XDP TX generator.
//!
//! Every case writes `benches/results/<timestamp>-<case>.json`, a Markdown
//! table (`<case>-latest.md`, also printed) and a PNG chart (`<case>-latest.png`).

mod chart;
mod copy;
mod filters;
mod tap;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mirror_user::lab::{DaemonProcess, Netns, TempDir};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "mirror-bench", about = "mirror's benchmark lab")]
struct Cli {
    /// Where results go.
    #[arg(long, default_value = "benches/results", global = true)]
    out: PathBuf,
    #[command(subcommand)]
    case: Case,
}

#[derive(Subcommand)]
enum Case {
    /// Classification cost (ns per frame) from 1 to 10,000 rules, through
    /// BPF_PROG_TEST_RUN in repeat mode.
    Filters(filters::Args),
    /// What copy mode costs the monitored traffic: UDP pps and TCP Mbit/s
    /// with copy mode off, on through XDP, and on through tcx.
    Copy(copy::Args),
    /// Tap mode into an interface target: copies/s with the RX queue sharing
    /// the target's UMEM and with share_umem = false.
    Tap(tap::Args),
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if !mirror_user::is_root() {
        bail!("the benchmarks load BPF programs: run them as root");
    }
    std::fs::create_dir_all(&cli.out)?;
    match cli.case {
        Case::Filters(a) => filters::run(&a, &cli.out)?,
        Case::Copy(a) => copy::run(&a, &cli.out)?,
        Case::Tap(a) => tap::run(&a, &cli.out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The `mirror` binary built next to this one (`cargo xtask bench` builds both).
pub fn mirror_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?
        .parent()
        .context("the bench binary's directory")?
        .join("mirror");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: build it (`cargo xtask bench` does)",
        exe.display()
    );
    Ok(exe)
}

/// Starts `mirror run` in `ns` with config `text` (`@CONTROL@` filled in),
/// keeping its config, socket and log in `dir`.
pub fn start_daemon(ns: &Netns, exe: &Path, dir: &TempDir, text: &str) -> Result<DaemonProcess> {
    let control = dir.path().join("control.sock");
    let cfg = dir.path().join("mirror.toml");
    std::fs::write(&cfg, text.replace("@CONTROL@", &control.to_string_lossy()))?;
    DaemonProcess::start(
        ns,
        exe,
        &cfg,
        &control,
        &dir.path().join("daemon.log"),
        Duration::from_secs(20),
    )
}

/// (median, min, max) of the runs.
pub fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Writes a case's results: `<timestamp>-<case>.json` (the rows),
/// `<case>-latest.md` (the table, also printed) and `<case>-latest.png`
/// (drawn by `chart`).
pub fn save<R: Serialize>(
    out: &Path,
    case: &str,
    rows: &[R],
    table: &str,
    chart: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let json = out.join(format!("{}-{case}.json", timestamp()));
    std::fs::write(&json, serde_json::to_string_pretty(rows)?)?;
    std::fs::write(out.join(format!("{case}-latest.md")), table)?;
    let png = out.join(format!("{case}-latest.png"));
    chart(&png)?;
    println!("{table}");
    println!("results: {} , chart: {}", json.display(), png.display());
    Ok(())
}

/// Seconds since the epoch, for result file names.
pub fn timestamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
