//! `tap`: tap mode feeding an interface target, with the source's RX queue
//! sharing the target's UMEM (frames go out as received, no copy) and with
//! `share_umem = false` (one copy per frame into the target's UMEM). An
//! AF_XDP TX generator (mirror's own `TxQueue`, copy mode on veth) sends
//! 60- and 1,500-byte UDP frames of 256 flows into the feed port as fast as
//! it can; every frame is accepted and mirrored.
//!
//! ```text
//!  ns gen              ns src (`mirror run`)              ns sink
//!  gen0 ──veth──── feed0 [XDP → AF_XDP]  tgt0 [AF_XDP TX] ──veth──── sink0
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use mirror_user::control::Client;
use mirror_user::lab::{DaemonProcess, Lab, TempDir};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    runs: crate::Runs,
}

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
share_umem = @SHARE@

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[target]]
name = "ids"
kind = "interface"
interface = "tgt0"

[[session]]
name = "all"
source = "feed"
filter = "all"
targets = ["ids"]
"#;

#[derive(Debug, Clone, Serialize)]
struct Row {
    frame: usize,
    case: &'static str,
    /// Frames/s the generator's socket completed (handed to gen0).
    offered_pps: f64,
    /// Frames/s the source received (XDP saw them and the worker read them).
    received_pps: f64,
    /// Copies/s sent out of the target (median, min, max).
    mirrored_pps: f64,
    mirrored_min: f64,
    mirrored_max: f64,
    /// Share of the sent copies that went out without a copy.
    shared_pct: f64,
    /// Copies/s dropped by the target (any reason).
    dropped_pps: f64,
    /// Frames/s the source lost (RX ring full: the worker fell behind).
    source_dropped_pps: f64,
}

/// (received by the source, sent by the target, shared, dropped by the
/// target, dropped by the source).
fn counters(d: &DaemonProcess) -> Result<(u64, u64, u64, u64, u64)> {
    let s = Client::connect(&d.control)?.stats()?;
    let t = &s.targets["ids"];
    let src = &s.sources["feed"];
    Ok((
        src.received,
        t.sent_packets,
        t.shared_umem,
        t.dropped_total(),
        src.dropped_total(),
    ))
}

pub fn run(a: &Args, out: &Path) -> Result<()> {
    let exe = crate::mirror_exe()?;
    let lab = Lab::new(1)?;
    let dir = TempDir::new("bench-tap")?;
    let mut rows = Vec::new();
    for (case, share) in [
        ("copied (share_umem = false)", false),
        ("shared UMEM", true),
    ] {
        let text = CONFIG.replace("@SHARE@", if share { "true" } else { "false" });
        let daemon = crate::start_daemon(&lab.src, &exe, &dir, &text)?;
        for size in [60usize, 1500] {
            let (mut off, mut rx, mut mir, mut sh, mut dr, mut sd) = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for _ in 0..a.runs.reps {
                let c0 = counters(&daemon)?;
                let offered = crate::generate(&lab, size, a.runs.secs)?;
                // Let the daemon hand on what it holds before reading its counters.
                std::thread::sleep(Duration::from_millis(300));
                let c1 = counters(&daemon)?;
                let per_s = |x: u64| x as f64 / a.runs.secs;
                off.push(per_s(offered));
                rx.push(per_s(c1.0 - c0.0));
                mir.push(per_s(c1.1 - c0.1));
                sh.push(100.0 * (c1.2 - c0.2) as f64 / (c1.1 - c0.1).max(1) as f64);
                dr.push(per_s(c1.3 - c0.3));
                sd.push(per_s(c1.4 - c0.4));
            }
            let (m, mmin, mmax) = crate::median(&mut mir);
            let row = Row {
                frame: size,
                case,
                offered_pps: crate::median(&mut off).0,
                received_pps: crate::median(&mut rx).0,
                mirrored_pps: m,
                mirrored_min: mmin,
                mirrored_max: mmax,
                shared_pct: crate::median(&mut sh).0,
                dropped_pps: crate::median(&mut dr).0,
                source_dropped_pps: crate::median(&mut sd).0,
            };
            eprintln!(
                "tap {:>5}B {:>28}: offered {:.0}/s, mirrored {:.0}/s ({:.0}-{:.0})",
                size, case, row.offered_pps, m, mmin, mmax
            );
            rows.push(row);
        }
        drop(daemon);
    }
    let bars: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (format!("{}B, {}", r.frame, r.case), r.mirrored_pps / 1000.0))
        .collect();
    crate::save_bars(
        out,
        "tap",
        &rows,
        &table(&rows, a),
        "tap mode → interface target: copies sent per second",
        "kpps mirrored",
        &bars,
    )
}

fn table(rows: &[Row], a: &Args) -> String {
    let mut s = format!(
        "Tap mode feeding an interface target (every frame mirrored), AF_XDP TX generator, \
         median of {} runs of {:.1} s (`cargo xtask bench tap`)\n\n\
         | frame | case | offered | received | source drops/s | mirrored (min-max) | sent uncopied | target drops/s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
        a.runs.reps, a.runs.secs
    );
    for r in rows {
        s.push_str(&format!(
            "| {} B | {} | {:.0} pps | {:.0} pps | {:.0} | {:.0} pps ({:.0}-{:.0}) | {:.0}% | {:.0} |\n",
            r.frame,
            r.case,
            r.offered_pps,
            r.received_pps,
            r.source_dropped_pps,
            r.mirrored_pps,
            r.mirrored_min,
            r.mirrored_max,
            r.shared_pct,
            r.dropped_pps,
        ));
    }
    s
}
