//! `filters`: what classification costs per frame as the rule count grows.
//!
//! The tap program runs through `BPF_PROG_TEST_RUN` with `repeat`, so the
//! kernel times the program alone (parse, classify, counters, redirect
//! attempt; no socket is bound, so the verdict is a counted drop).
//!
//! Two rule sets per size N, one session, all `accept`:
//! - `overlap`: every rule overlaps the probe frame in five of its six fields
//!   and misses it in the sixth, which rotates over the fields (rule i misses
//!   in field i % 6); the last rule matches the frame in all six. Every rule
//!   overlaps every other one and each field's bitmap has 5/6 of its bits set,
//!   so the per-word summaries prune nothing: the bit-vector worst case.
//! - `distinct`: rule i accepts TCP 443 to its own /24; the probe frame is in
//!   the last rule's /24 (AWS-style allow-lists).
//!
//! Probe frames: `first` (matches rule 0: a UDP frame, for `overlap`),
//! `last` (matches only the last rule), `miss` (matches no rule: SCTP).

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use etherparse::{IpNumber, PacketBuilder, VlanId};
use ipnet::{IpNet, Ipv4Net};
use mirror_user::config::{Action, Direction, Filter, PortRange, Rule};
use mirror_user::filter::ruleset::RuleSet;
use mirror_user::kernel::SourceProgram;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rule counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,10000")]
    rules: Vec<usize>,
    /// Runs of each measurement; the median is reported, with min and max.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Program runs per measurement (BPF_PROG_TEST_RUN repeat).
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
}

#[derive(Debug, Serialize)]
struct Row {
    set: &'static str,
    frame: &'static str,
    rules: usize,
    classes: usize,
    memory_kib: usize,
    build_ms: f64,
    install_ms: f64,
    /// With the verdict cache (the daemon's configuration): after the
    /// first run every frame is answered from the cache.
    ns_median: f64,
    ns_min: f64,
    ns_max: f64,
    runs: Vec<f64>,
    /// Without the cache: every frame classified by the bitmap scan (what the
    /// first frame of each class tuple costs).
    scan_median: f64,
    scan_min: f64,
    scan_max: f64,
    scan_runs: Vec<f64>,
}

const SRC: [u8; 4] = [10, 1, 2, 3];
const DST: [u8; 4] = [192, 168, 7, 9];
const SPORT: u16 = 40000;
const DPORT: u16 = 443;
const VLAN: u16 = 100;

/// Rule `i` (number i + 1): accept TCP, nothing else constrained yet.
fn blank(i: usize) -> Rule {
    Rule {
        protocol: Some(6),
        ..Rule::any(i as u16 + 1, Action::Accept, Direction::Ingress)
    }
}

fn net(addr: [u8; 4], len: u8) -> Option<IpNet> {
    Some(IpNet::V4(
        Ipv4Net::new(Ipv4Addr::from(addr), len)
            .expect("prefix length <= 32")
            .trunc(),
    ))
}

/// The `overlap` set: see the module docs.
fn overlap(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let mut r = blank(i);
            if i + 1 == n {
                r.source = net(SRC, 32);
                r.destination = net(DST, 32);
                r.source_port = Some(PortRange {
                    lo: SPORT,
                    hi: SPORT,
                });
                r.destination_port = Some(PortRange {
                    lo: DPORT,
                    hi: DPORT,
                });
                r.vlan = Some(VLAN);
                return r;
            }
            let k = i as u16;
            // Overlapping values, varied so each field has many classes.
            r.source = net(SRC, 8 + (i % 25) as u8);
            r.destination = net(DST, 16 + (i % 17) as u8);
            r.source_port = Some(PortRange {
                lo: SPORT - k % 1000,
                hi: SPORT + k % 777,
            });
            r.destination_port = Some(PortRange {
                lo: DPORT - k % 400,
                hi: DPORT + k % 500,
            });
            r.vlan = if i % 2 == 0 { Some(VLAN) } else { None };
            // ... and one field that misses the probe frame.
            match i % 6 {
                0 => r.protocol = Some(17),
                1 => r.vlan = Some(200 + k % 50),
                2 => {
                    r.source_port = Some(PortRange {
                        lo: 1000 + k % 100,
                        hi: 2000,
                    })
                }
                3 => {
                    r.destination_port = Some(PortRange {
                        lo: 1000,
                        hi: 2000 + k % 100,
                    })
                }
                4 => r.source = net([11, (i % 256) as u8, 0, 0], 8 + (i % 25) as u8),
                _ => r.destination = net([172, 16, (i % 256) as u8, 0], 24),
            }
            r
        })
        .collect()
}

/// The `distinct` set: rule i accepts TCP 443 to its own /24, the last one
/// being the probe frame's.
fn distinct(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let mut r = blank(i);
            r.destination_port = Some(PortRange {
                lo: DPORT,
                hi: DPORT,
            });
            r.destination = if i + 1 == n {
                net(DST, 24)
            } else {
                net([10, 200 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 24)
            };
            r
        })
        .collect()
}

fn frame(proto: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .single_vlan(VlanId::try_new(VLAN).expect("a valid VLAN id"))
        .ipv4(SRC, DST, 64);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&SPORT.to_be_bytes());
    l4.extend_from_slice(&DPORT.to_be_bytes());
    l4.resize(32, 0);
    let mut out = Vec::new();
    b.write(&mut out, IpNumber(proto), &l4)
        .expect("writing to a Vec cannot fail");
    out
}

fn measure(prog: &SourceProgram, data: &[u8], repeat: u32) -> Result<f64> {
    let input = libbpf_rs::ProgramInput {
        data_in: Some(data),
        repeat,
        ..Default::default()
    };
    let out = prog
        .xdp_tap()
        .test_run(input)
        .context("BPF_PROG_TEST_RUN")?;
    Ok(out.duration.as_nanos() as f64)
}

pub fn run(a: &Args, out: &Path) -> Result<()> {
    let mut rows = Vec::new();
    let mut prog = SourceProgram::load().context("loading the tap program")?;
    let mut scan_prog =
        SourceProgram::load_without_cache().context("loading the tap program (no cache)")?;
    type Gen = fn(usize) -> Vec<Rule>;
    /// Probe frames: (name, IP protocol).
    type Probes = &'static [(&'static str, u8)];
    let sets: [(&'static str, Gen, Probes); 2] = [
        (
            "overlap",
            overlap,
            &[("first", 17), ("last", 6), ("miss", 132)],
        ),
        ("distinct", distinct, &[("last", 6), ("miss", 132)]),
    ];
    let steps: usize = sets.iter().map(|s| s.2.len()).sum::<usize>() * a.rules.len();
    let progress = crate::progress(steps as u64, "filters");
    for (set_name, gen, frames) in sets {
        for &n in &a.rules {
            progress.set_message(format!("{set_name}, {n} rules"));
            let filter = Filter {
                name: set_name.into(),
                rules: gen(n),
            };
            let t = std::time::Instant::now();
            let set = RuleSet::build(&[&filter], Direction::Ingress)?;
            let build_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            prog.install(&set, None)?;
            let install_ms = t.elapsed().as_secs_f64() * 1e3;
            scan_prog.install(&set, None)?;
            for &(frame_name, proto) in frames {
                let data = frame(proto);
                let mut runs = Vec::new();
                let mut scan_runs = Vec::new();
                for _ in 0..a.reps.max(1) {
                    crate::check_interrupted()?;
                    runs.push(measure(&prog, &data, a.repeat)?);
                    scan_runs.push(measure(&scan_prog, &data, a.repeat)?);
                }
                let (ns_median, ns_min, ns_max) = crate::median(&mut runs.clone());
                let (scan_median, scan_min, scan_max) = crate::median(&mut scan_runs.clone());
                let row = Row {
                    set: set_name,
                    frame: frame_name,
                    rules: n,
                    classes: set.bitmaps.len(),
                    memory_kib: set.memory_bytes() / 1024,
                    build_ms,
                    install_ms,
                    ns_median,
                    ns_min,
                    ns_max,
                    runs,
                    scan_median,
                    scan_min,
                    scan_max,
                    scan_runs,
                };
                crate::say(&progress, format!(
                    "filters {set_name:>8} {frame_name:>5} {n:>6} rules: {:>7.1} ns/frame cached, {:>7.1} scanned ({} classes, {} KiB)",
                    row.ns_median, row.scan_median, row.classes, row.memory_kib
                ));
                rows.push(row);
                progress.inc(1);
            }
        }
    }

    progress.finish_and_clear();
    // The README keeps its own summary of this table (no markers).
    crate::save(out, "filters", &rows, &table(&rows, a), false, |png| {
        crate::chart::lines(
            png,
            "mirror: classification cost vs rule count (BPF_PROG_TEST_RUN)",
            "rules",
            "ns per frame",
            &series(&rows),
        )
    })
}

fn series(rows: &[Row]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        for (how, ns) in [("cached", r.ns_median), ("scan", r.scan_median)] {
            let name = format!("{} / {} / {how}", r.set, r.frame);
            let point = (r.rules as f64, ns);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, pts)) => pts.push(point),
                None => out.push((name, vec![point])),
            }
        }
    }
    out
}

/// Markdown: one row per (set, frame, rules), cached and scanned, each with
/// the ratio to the same set at the smallest rule count (matched frames to
/// the `last` probe there, misses to the `miss` probe).
fn table(rows: &[Row], a: &Args) -> String {
    let mut s = format!(
        "ns per frame, median of {} runs of {} program runs each (BPF_PROG_TEST_RUN, `cargo xtask bench filters`). \
         cached: the daemon's program, the probe's class tuple in the verdict cache (every run after the first); \
         scan: the program loaded without the cache, every frame classified by the bitmap scan. \
         `vs fewest rules`: against the same set at the fewest rules, a matched probe against the matched (`last`) one, a miss against the miss\n\n\
         | rule set | frame | rules | cached ns/frame (min-max) | vs fewest rules | scan ns/frame (min-max) | vs fewest rules | classes | rule-set memory |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        a.reps, a.repeat
    );
    for r in rows {
        // A matched frame against a matched frame at the fewest rules (at one
        // rule the overlap set's `first` probe matches nothing: its one rule
        // is the `last` rule), a miss against a miss.
        let base_frame = if r.frame == "miss" { "miss" } else { "last" };
        let base = rows
            .iter()
            .find(|b| b.set == r.set && b.frame == base_frame)
            .unwrap_or(r);
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} ({:.1}-{:.1}) | {:.2}x | {:.1} ({:.1}-{:.1}) | {:.2}x | {} | {} KiB |\n",
            r.set,
            r.frame,
            r.rules,
            r.ns_median,
            r.ns_min,
            r.ns_max,
            r.ns_median / base.ns_median,
            r.scan_median,
            r.scan_min,
            r.scan_max,
            r.scan_median / base.scan_median,
            r.classes,
            r.memory_kib
        ));
    }
    s
}
