//! `mirror stats [--json] [--watch]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the counters as JSON: {"sources": {…}, "sessions": {…},
    /// "targets": {…}, "groups": {…}}, each by name.
    #[arg(long)]
    pub json: bool,
    /// Print again every second until interrupted, with the time and rates
    /// per second since the last print; on a terminal the table is redrawn
    /// in place, else appended (a file, a pipe).
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
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut prev: Option<(Stats, Instant)> = None;
    loop {
        let stats = client.stats()?;
        let now = Instant::now();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else if a.watch {
            let mut text = format!(
                "mirror stats at {} (every 1 s; Ctrl-C to stop)\n",
                clock(SystemTime::now())
            );
            text.push_str(&render(&stats));
            text.push_str(&rates(
                prev.as_ref()
                    .map(|(p, at)| (p, now.duration_since(*at).as_secs_f64())),
                &stats,
            ));
            if tty {
                // Home, the table, then clear what a longer last one left.
                print!("\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n"));
            } else {
                print!("{text}");
            }
            std::io::Write::flush(&mut std::io::stdout())?;
        } else {
            print!("{}", render(&stats));
        }
        if !a.watch {
            return Ok(ExitCode::SUCCESS);
        }
        prev = Some((stats, now));
        std::thread::sleep(Duration::from_secs(1));
        if !tty || a.json {
            println!();
        }
    }
}

/// The local time of day, `HH:MM:SS` (UTC when the zone is unknown).
fn clock(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // Safety: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // Safety: localtime_r fills `tm` from `secs`; both live for the call.
    let local = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if local {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let s = secs as u64 % 86_400;
        format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
    }
}

/// Per second since `prev` (taken `secs` seconds before `cur`): what each
/// source received and mirrored, each session mirrored, each target sent.
/// The first print has nothing to compare with and says so.
pub fn rates(prev: Option<(&Stats, f64)>, cur: &Stats) -> String {
    let Some((prev, secs)) = prev.filter(|(_, secs)| *secs > 0.0) else {
        return "RATES (per second): from the next print on\n".into();
    };
    let per =
        |now: u64, before: Option<u64>| now.saturating_sub(before.unwrap_or(now)) as f64 / secs;
    let mut out = format!("RATES (per second, over the last {secs:.1} s)\n");
    for (name, v) in &cur.sources {
        let p = prev.sources.get(name);
        out.push_str(&format!(
            "  source  {name:<16} received {:>12.0}/s  mirrored {:>12.0}/s\n",
            per(v.received, p.map(|p| p.received)),
            per(v.mirrored, p.map(|p| p.mirrored)),
        ));
    }
    for (name, v) in &cur.sessions {
        let p = prev.sessions.get(name);
        out.push_str(&format!(
            "  session {name:<16} mirrored {:>12.0}/s\n",
            per(v.mirrored, p.map(|p| p.mirrored)),
        ));
    }
    for (name, v) in &cur.targets {
        let p = prev.targets.get(name);
        out.push_str(&format!(
            "  target  {name:<16} sent     {:>12.0}/s  {:>12.1} Mbit/s\n",
            per(v.sent_packets, p.map(|p| p.sent_packets)),
            per(v.sent_bytes, p.map(|p| p.sent_bytes)) * 8.0 / 1e6,
        ));
    }
    out
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

/// `  key=n` for each count that is not 0, for the end of a table row.
fn nonzero(counts: &[(&str, u64)]) -> String {
    counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("  {k}={n}"))
        .collect()
}

/// What the sessions' policies left out of `matched`, when any (matched =
/// mirrored + these + dropped), labelled so that they do not read as drop
/// reasons (a trial read them so): `  left out by policy: sampled_out=…`.
fn left_out(sampled_out: u64, scheduled_out: u64, cutoff: u64) -> String {
    match nonzero(&[
        ("sampled_out", sampled_out),
        ("scheduled_out", scheduled_out),
        ("cutoff", cutoff),
    ]) {
        l if l.is_empty() => l,
        l => format!("  left out by policy: {}", l.trim_start()),
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
        let by_policy = left_out(v.sampled_out, v.scheduled_out, v.cutoff);
        out.push_str(&format!(
            "{:<16} {:>12} {:>12} {:>12} {:>12}  {}{by_policy}   ({} {how}, {} rules, {} rule set(s) installed)\n",
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
                "  {:<14} {:>12} {:>12} {:>12} {:>12}  ring_full={}{}{}{}\n",
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
                },
                left_out(d.sampled_out, d.scheduled_out, d.cutoff)
            ));
        }
    }
    out.push_str(&format!(
        "{:<16} {:>12} {:>12} {:>12} {:>13}  {}\n",
        "SESSION", "matched", "mirrored", "sampled_out", "scheduled_out", "path"
    ));
    for (name, v) in &s.sessions {
        let window = match (&v.schedule_window, &v.schedule_next_edge) {
            (Some(w), Some(edge)) => format!("   schedule: {w}, next edge {edge}"),
            (Some(w), None) => format!("   schedule: {w}"),
            _ => String::new(),
        };
        // What the per-flow cutoff left out or cut, when any.
        let extra = nonzero(&[
            ("cutoff", v.cutoff),
            ("cutoff_cut", v.cutoff_cut),
            ("cutoff_whole", v.cutoff_whole),
        ]);
        out.push_str(&format!(
            "{:<16} {:>12} {:>12} {:>12} {:>13}  {}{extra}{window}\n",
            name, v.matched, v.mirrored, v.sampled_out, v.scheduled_out, v.path
        ));
    }
    out.push_str(&format!(
        "{:<16} {:>12} {:>12} {:>14} {:>8}  {}\n",
        "TARGET", "enqueued", "sent", "sent_bytes", "queued", "dropped"
    ));
    for (name, v) in &s.targets {
        out.push_str(&format!(
            "{:<16} {:>12} {:>12} {:>14} {:>8}  {}{}{}\n",
            name,
            v.enqueued,
            v.sent_packets,
            v.sent_bytes,
            v.queued,
            reasons(&v.dropped),
            nonzero(&[
                ("truncated", v.truncated),
                ("shared_umem", v.shared_umem),
                ("kernel_path", v.kernel_path),
                ("deleted_files", v.deleted_files),
                ("deleted_bytes", v.deleted_bytes),
            ]),
            if v.up { "" } else { "  (down)" }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::stats::SessionStats;

    #[test]
    fn the_table_shows_scheduled_out_and_a_scheduled_sessions_window_and_next_edge() {
        let mut s = Stats::default();
        s.sessions.insert(
            "night".into(),
            SessionStats {
                path: "af_xdp".into(),
                matched: 40,
                mirrored: 10,
                sampled_out: 30,
                scheduled_out: 7,
                schedule_window: Some("window 1 (mon-fri 08:00-18:00 UTC)".into()),
                schedule_next_edge: Some("2026-12-07T18:00:00Z".into()),
                ..Default::default()
            },
        );
        s.sessions.insert(
            "plain".into(),
            SessionStats {
                path: "kernel".into(),
                ..Default::default()
            },
        );
        let text = render(&s);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            line("SESSION"),
            "SESSION matched mirrored sampled_out scheduled_out path"
        );
        assert_eq!(
            line("night"),
            "night 40 10 30 7 af_xdp schedule: window 1 (mon-fri 08:00-18:00 UTC), next edge \
             2026-12-07T18:00:00Z"
        );
        assert_eq!(line("plain"), "plain 0 0 0 0 kernel");
    }

    /// The source row shows what the policies left out of `matched`, so
    /// its equation can be read off the table too.
    #[test]
    fn the_source_and_direction_rows_show_what_the_policies_left_out() {
        let mut s = Stats::default();
        let src = s.sources.entry("feed".into()).or_default();
        src.interface = "eth1".into();
        src.mode = "tap".into();
        src.xdp_mode = "native".into();
        src.queues = 1;
        (src.received, src.matched, src.filtered) = (2100, 2000, 100);
        (src.mirrored, src.sampled_out, src.cutoff) = (1021, 900, 79);
        let d = src.directions.entry("ingress".into()).or_default();
        (d.received, d.matched, d.filtered, d.copied) = (2100, 2000, 100, 1021);
        (d.sampled_out, d.scheduled_out, d.cutoff) = (900, 0, 79);
        let text = render(&s);
        // Each direction's row too (a trial found only the source's).
        let dir = text
            .lines()
            .find(|l| l.trim_start().starts_with("ingress"))
            .expect("an ingress row");
        assert!(
            dir.ends_with("ring_full=0  left out by policy: sampled_out=900  cutoff=79"),
            "{dir}"
        );
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("feed"))
            .expect("a feed row")
            .split_whitespace()
            .collect();
        assert_eq!(
            row[..12],
            [
                "feed",
                "2100",
                "2000",
                "100",
                "1021",
                "0",
                "left",
                "out",
                "by",
                "policy:",
                "sampled_out=900",
                "cutoff=79"
            ]
        );
    }

    #[test]
    fn rates_are_per_second_since_the_last_print() {
        let mut a = Stats::default();
        a.sources.entry("feed".into()).or_default().received = 1000;
        a.sources.get_mut("feed").expect("feed").mirrored = 400;
        a.sessions.entry("s".into()).or_default().mirrored = 400;
        let t: mirror_user::target::TargetStats = serde_json::from_value(serde_json::json!({
            "kind": "interface", "up": true, "enqueued": 400, "sent_packets": 400,
            "sent_bytes": 40_000, "dropped": {}, "queued": 0
        }))
        .expect("target stats");
        a.targets.insert("ids0".into(), t);
        let mut b = a.clone();
        b.sources.get_mut("feed").expect("feed").received = 3000;
        b.sources.get_mut("feed").expect("feed").mirrored = 1400;
        b.sessions.get_mut("s").expect("s").mirrored = 1400;
        let t = b.targets.get_mut("ids0").expect("ids0");
        t.sent_packets = 1400;
        t.sent_bytes = 290_000;
        assert_eq!(
            rates(Some((&a, 2.0)), &b),
            "RATES (per second, over the last 2.0 s)\n\
             \x20 source  feed             received         1000/s  mirrored          500/s\n\
             \x20 session s                mirrored          500/s\n\
             \x20 target  ids0             sent              500/s           1.0 Mbit/s\n"
        );
        assert_eq!(
            rates(None, &b),
            "RATES (per second): from the next print on\n"
        );
    }

    #[test]
    fn the_clock_reads_hours_minutes_seconds() {
        let c = clock(SystemTime::UNIX_EPOCH + Duration::from_secs(3 * 3600 + 25 * 60 + 7));
        let hms = &c[..8];
        assert_eq!(hms.len(), 8, "{c}");
        // Zones differ by whole minutes: the seconds are the seconds.
        assert!(hms.ends_with(":07") && hms.as_bytes()[2] == b':', "{c}");
    }
}
