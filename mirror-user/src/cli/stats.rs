//! `mirror stats [--json] [--watch]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the counters as JSON (SPEC shape: sources, sessions, targets).
    #[arg(long)]
    pub json: bool,
    /// Print again every second until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Find the control socket in this config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let path = super::control_path(a.control.as_deref(), a.config.as_deref())?;
    let mut client = Client::connect(&path)?;
    loop {
        let stats = client.stats()?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            print!("{}", render(&stats));
        }
        if !a.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
        println!();
    }
}

fn reasons(m: &std::collections::BTreeMap<String, u64>) -> String {
    let nonzero: Vec<String> = m
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if nonzero.is_empty() {
        "0".into()
    } else {
        nonzero.join(" ")
    }
}

/// The human-readable table.
pub fn render(s: &Stats) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:>12} {:>12} {:>12} {:>12}  {}\n",
        "SOURCE", "received", "matched", "filtered", "mirrored", "dropped"
    ));
    for (name, v) in &s.sources {
        let how = if v.mode == "copy" {
            format!("copy mode, ingress {}", v.xdp_mode)
        } else {
            format!(
                "{} xdp, {} queue(s){}",
                v.xdp_mode,
                v.queues,
                if v.zero_copy { ", zero-copy" } else { "" }
            )
        };
        out.push_str(&format!(
            "{:<16} {:>12} {:>12} {:>12} {:>12}  {}   ({} {how}, {} rules, {} rule set(s) installed)\n",
            name,
            v.received,
            v.matched,
            v.filtered,
            v.mirrored,
            reasons(&v.dropped),
            v.interface,
            v.rules,
            v.rule_sets_installed
        ));
        for (dir, d) in &v.directions {
            out.push_str(&format!(
                "  {:<14} {:>12} {:>12} {:>12} {:>12}  ring_full={}{}{}\n",
                dir,
                d.received,
                d.matched,
                d.filtered,
                d.copied + d.cloned,
                d.ring_full,
                if d.copy_cut > 0 {
                    format!("  cut={}", d.copy_cut)
                } else {
                    String::new()
                },
                if d.cloned > 0 {
                    format!("  cloned={}", d.cloned)
                } else {
                    String::new()
                }
            ));
        }
    }
    out.push_str(&format!(
        "{:<16} {:>12} {:>12}  {}\n",
        "SESSION", "matched", "mirrored", "path"
    ));
    for (name, v) in &s.sessions {
        // What the session did not mirror, or mirrored cut, when any.
        let extra: String = [
            ("sampled_out", v.sampled_out),
            ("cutoff", v.cutoff),
            ("cutoff_cut", v.cutoff_cut),
            ("cutoff_whole", v.cutoff_whole),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("  {k}={n}"))
        .collect();
        out.push_str(&format!(
            "{:<16} {:>12} {:>12}  {}{extra}\n",
            name, v.matched, v.mirrored, v.path
        ));
    }
    out.push_str(&format!(
        "{:<16} {:>12} {:>12} {:>14} {:>8}  {}\n",
        "TARGET", "enqueued", "sent", "sent_bytes", "queued", "dropped"
    ));
    for (name, v) in &s.targets {
        out.push_str(&format!(
            "{:<16} {:>12} {:>12} {:>14} {:>8}  {}{}\n",
            name,
            v.enqueued,
            v.sent_packets,
            v.sent_bytes,
            v.queued,
            reasons(&v.dropped),
            [
                ("truncated", v.truncated),
                ("shared_umem", v.shared_umem),
                ("kernel_path", v.kernel_path),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("  {k}={n}"))
            .chain((!v.up).then(|| "  (down)".to_string()))
            .collect::<String>()
        ));
    }
    for (name, g) in &s.groups {
        out.push_str(&format!(
            "group {name}: {}/{} members up, {} copies rehashed off a down member\n",
            g.members_up,
            g.members.len(),
            g.rehashed
        ));
    }
    out
}
