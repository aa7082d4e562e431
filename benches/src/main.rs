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

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

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

/// Seconds since the epoch, for result file names.
pub fn timestamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
