//! `soak`: the daemon for a long while under everything at once. Two
//! sources (a tap feed mirrored in the kernel to two ports, one of which
//! flaps; a copy-mode port written to rotating pcapng files), paced traffic
//! on both, live rule updates (10 a second, changing tables but no verdict)
//! and a SIGHUP every 2 s. Every `--every` seconds it samples the daemon's
//! RSS, open fds, BPF maps held and threads, and the counters; it fails if
//! RSS keeps growing past the warm-up (the first fifth of the run; see
//! `lab::process::rss_leak`) or grows more than 64 MiB, or fds more than 8,
//! if the daemon holds other BPF objects or fds at rest
//! afterwards than before, if a counter ever goes down, or if the counters
//! do not reconcile exactly at the end (every frame sent received, each
//! matched, and every copy sent or dropped by reason, `unknown` 0).
//!
//! Writes `soak-latest.md` (the samples as a table and the verdict),
//! `soak-latest.png` (RSS and fds over time) and the samples as JSON.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mirror_user::control::{Client, Request};
use mirror_user::dataplane::stats::Stats;
use mirror_user::lab::process::{held_fds as fds, status_field as status};
use mirror_user::lab::{self, traffic, Lab, Netns, TempDir};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Minutes to run.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Frames per second on each source.
    #[arg(long, default_value_t = 5_000)]
    pub pps: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
}

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
mode = "tap"

[[source]]
name = "live"
interface = "feed1"
mode = "copy"

[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "flapping"
kind = "interface"
interface = "tgt1"

[[target]]
name = "archive"
kind = "pcapng"
path = "@DIR@/cap/soak.pcapng"
rotate_size = "1MiB"
keep = 3

[[session]]
name = "ids"
source = "feed"
filter = "all"
targets = ["ids0", "flapping"]

[[session]]
name = "capture"
source = "live"
filter = "all"
targets = ["archive"]
"#;

/// One sample of the daemon.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    secs: u64,
    rss_kib: u64,
    fds: usize,
    bpf_maps: usize,
    threads: usize,
    feed_received: u64,
    feed_mirrored: u64,
    live_received: u64,
    archive_sent: u64,
    flapping_down: u64,
}

fn sample(pid: u32, t: Duration, s: &Stats) -> Sample {
    let (all, maps, _, _) = fds(pid);
    Sample {
        secs: t.as_secs(),
        rss_kib: status(pid, "VmRSS"),
        fds: all,
        bpf_maps: maps,
        threads: status(pid, "Threads") as usize,
        feed_received: s.sources["feed"].received,
        feed_mirrored: s.sources["feed"].mirrored,
        live_received: s.sources["live"].received,
        archive_sent: s.targets["archive"].sent_packets,
        flapping_down: s.targets["flapping"]
            .dropped
            .get("down")
            .copied()
            .unwrap_or(0),
    }
}

/// Sends one second's worth of frames (`pps`) out of `dev` in `ns`, again
/// and again, until `stop`; returns how many went out.
fn traffic_until(ns: &Netns, dev: &str, shape: usize, pps: u64, stop: &AtomicBool) -> Result<u64> {
    let second: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..pps as u32)
            .map(|i| traffic::frame(traffic::SHAPES[shape], i, 200))
            .collect(),
    );
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        crate::check_interrupted()?;
        sent += lab::send_frames(ns, dev, second.clone(), pps)?;
    }
    Ok(sent)
}

fn stats(control: &Path) -> Result<Stats> {
    Client::connect(control)?.stats()
}

pub fn run(a: &Args, out: &Path) -> Result<()> {
    ensure!(
        a.minutes > 0.0 && a.every > 0,
        "--minutes and --every must be positive"
    );
    let exe = crate::mirror_exe()?;
    let lab = Lab::new(1)?;
    lab::veth(&lab.gen, "gen1", &lab.src, "feed1", 1)?;
    lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1)?;
    let dir = TempDir::new("soak")?;
    std::fs::create_dir_all(dir.path().join("cap"))?;
    let text = CONFIG.replace("@DIR@", &dir.path().to_string_lossy());
    let daemon = crate::start_daemon(&lab.src, &exe, &dir, &text)?;
    let control = daemon.control.clone();
    let pid = daemon.pid().context("the daemon's pid")?;
    // One rule update first: it fills each source's second rule-set
    // generation, whose maps are then kept to be rewritten in place; then,
    // quiet, what the daemon holds at rest.
    Client::connect(&control)
        .and_then(|mut c| {
            c.request(&Request::RulesAdd {
                filter: "all".into(),
                rule:
                    "number = 49\naction = \"accept\"\ndirection = \"ingress\"\nprotocol = \"udp\""
                        .into(),
            })
        })
        .context("the warm-up rule update")?;
    let at_rest = fds(pid);
    let length = Duration::from_secs_f64(a.minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    eprintln!(
        "soak: {:.1} min, {} frames/s on each of two sources, rule updates 10/s, SIGHUP every 2 s, \
         a target flapping every 10 s",
        a.minutes, a.pps
    );

    let mut workers = Vec::new();
    for (dev, shape) in [(Lab::GEN_IF, 1usize), ("gen1", 4usize)] {
        let (gen, stop, pps) = (lab.gen.name().to_string(), stop.clone(), a.pps);
        workers.push(std::thread::spawn(move || -> Result<u64> {
            traffic_until(&Netns::attach(&gen), dev, shape, pps, &stop)
        }));
    }
    // Rule updates that change the tables but no verdict: everything is
    // accepted anyway.
    let rules = {
        let (control, stop) = (control.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u64> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let req = if n % 2 == 0 {
                    Request::RulesAdd {
                        filter: "all".into(),
                        rule: "number = 50\naction = \"accept\"\ndirection = \"ingress\"\nprotocol = \"udp\"".into(),
                    }
                } else {
                    Request::RulesDelete {
                        filter: "all".into(),
                        number: 50,
                        direction: mirror_user::config::Direction::Ingress,
                    }
                };
                match Client::connect(&control).and_then(|mut c| c.request(&req)) {
                    Ok(_) => {}
                    // A reload put the file's rules back in between.
                    Err(e) if format!("{e:#}").contains("has no rule") => {}
                    Err(e) if format!("{e:#}").contains("already has") => {}
                    Err(e) => return Err(e.context("a live rule update")),
                }
                n += 1;
            }
            Ok(n)
        })
    };
    // SIGHUP every 2 s; the second target's far end down and up every 5 s.
    let churn = {
        let (stop, sink) = (stop.clone(), lab.sink.name().to_string());
        std::thread::spawn(move || -> Result<(u64, u64)> {
            let sink = Netns::attach(&sink);
            let (mut hups, mut flaps) = (0u64, 0u64);
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let tick = t.elapsed().as_millis() / 500;
                if tick % 4 == 0 {
                    // Safety: kill(2) of the daemon this run started.
                    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
                    hups += 1;
                }
                if tick % 10 == 0 {
                    let state = if flaps % 2 == 0 { "down" } else { "up" };
                    sink.ip(&["link", "set", "sink1", state])?;
                    flaps += 1;
                }
            }
            // Leave the port up for the final count.
            sink.ip(&["link", "set", "sink1", "up"])?;
            Ok((hups, flaps))
        })
    };

    let mut samples: Vec<Sample> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    while started.elapsed() < length {
        std::thread::sleep(
            Duration::from_secs(a.every).min(length.saturating_sub(started.elapsed())),
        );
        if crate::check_interrupted().is_err() {
            break;
        }
        let s = stats(&control)?;
        let now = sample(pid, started.elapsed(), &s);
        if let Some(prev) = samples.last() {
            for (what, before, after) in [
                ("feed received", prev.feed_received, now.feed_received),
                ("feed mirrored", prev.feed_mirrored, now.feed_mirrored),
                ("live received", prev.live_received, now.live_received),
                ("archive sent", prev.archive_sent, now.archive_sent),
                ("flapping down", prev.flapping_down, now.flapping_down),
            ] {
                if after < before {
                    problems.push(format!(
                        "{what} went down at {} s: {before} -> {after}",
                        now.secs
                    ));
                }
            }
        }
        eprintln!(
            "soak: {:>5} s  rss {:>7} KiB  fds {:>3}  maps {:>3}  threads {:>3}  feed {:>10} received  live {:>10}",
            now.secs, now.rss_kib, now.fds, now.bpf_maps, now.threads, now.feed_received, now.live_received
        );
        samples.push(now);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for w in workers {
        sent.push(
            w.join()
                .map_err(|_| anyhow::anyhow!("a traffic thread panicked"))??,
        );
    }
    let updates = rules
        .join()
        .map_err(|_| anyhow::anyhow!("the rule thread panicked"))??;
    let (hups, flaps) = churn
        .join()
        .map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;

    // Quiet: every frame accounted for, exactly.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = stats(&control)?;
        let settled = s.sources["feed"].received == sent[0]
            && s.sources["live"].received == sent[1]
            && s.sources.values().all(|x| x.queued == 0)
            && s.targets.values().all(|t| t.queued == 0);
        if settled {
            break s;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "not settled 30 s after the traffic stopped: sent {sent:?}, {:?}",
                s.sources
            ));
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (name, src) in &s.sources {
        if src.received != src.matched + src.filtered
            || src.matched
                != src.mirrored
                    + src.sampled_out
                    + src.scheduled_out
                    + src.cutoff
                    + src.dropped_total()
            || src.filtered != 0
        {
            problems.push(format!("source {name} does not reconcile: {src:?}"));
        }
    }
    for (name, t) in &s.targets {
        if t.enqueued != t.sent_packets + t.dropped.values().sum::<u64>()
            || t.dropped.get("unknown").copied().unwrap_or(0) != 0
        {
            problems.push(format!("target {name} does not reconcile: {t:?}"));
        }
    }
    // Growth after the warm-up.
    let warm = samples.len() / 5;
    if let Some(base) = samples.get(warm) {
        let rss: Vec<u64> = samples[warm..].iter().map(|x| x.rss_kib).collect();
        let rss_max = rss.iter().copied().max().unwrap_or(0);
        let fds_max = samples[warm..].iter().map(|x| x.fds).max().unwrap_or(0);
        // Growth that keeps on between the halves is a leak; a plateau the
        // allocator reaches after the first bursts is not.
        if let Some(leak) = mirror_user::lab::process::rss_leak(&rss, 4 * 1024) {
            problems.push(leak);
        }
        if rss_max > base.rss_kib + 64 * 1024 {
            problems.push(format!(
                "RSS grew from {} KiB to {rss_max} KiB after the warm-up",
                base.rss_kib
            ));
        }
        if fds_max > base.fds + 8 {
            problems.push(format!(
                "fds grew from {} to {fds_max} after the warm-up",
                base.fds
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = fds(pid);
    if (after.1, after.2, after.3) != (at_rest.1, at_rest.2, at_rest.3) {
        problems.push(format!(
            "BPF objects held at rest before (fds, maps, programs, links) {at_rest:?}, after {after:?}"
        ));
    }
    // The capture file opens with the first copy: compare with the warm-up.
    if let Some(base) = samples.get(warm) {
        if after.0 > base.fds {
            problems.push(format!(
                "{} fds at rest after, {} at the warm-up",
                after.0, base.fds
            ));
        }
    }
    drop(daemon);

    let mut table = String::from(
        "| t (s) | RSS (KiB) | fds | BPF maps | threads | feed received | feed mirrored | live received | archive sent | flapping down |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for x in &samples {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            x.secs,
            x.rss_kib,
            x.fds,
            x.bpf_maps,
            x.threads,
            x.feed_received,
            x.feed_mirrored,
            x.live_received,
            x.archive_sent,
            x.flapping_down
        ));
    }
    table.push_str(&format!(
        "\n{:.1} min: {} + {} frames sent, {updates} rule updates, {hups} SIGHUPs, {flaps} flaps; \
         at rest before/after (fds, maps, programs, links): {at_rest:?} / {after:?}; {}\n",
        a.minutes,
        sent[0],
        sent[1],
        if problems.is_empty() {
            "every counter reconciles, nothing grew: PASS".to_string()
        } else {
            format!("FAIL: {}", problems.join("; "))
        }
    ));
    let series = vec![
        (
            "RSS (MiB)".to_string(),
            samples
                .iter()
                .map(|x| (x.secs as f64, x.rss_kib as f64 / 1024.0))
                .collect(),
        ),
        (
            "open fds".to_string(),
            samples
                .iter()
                .map(|x| (x.secs as f64, x.fds as f64))
                .collect(),
        ),
        (
            "BPF maps held".to_string(),
            samples
                .iter()
                .map(|x| (x.secs as f64, x.bpf_maps as f64))
                .collect(),
        ),
    ];
    crate::save(out, "soak", &samples, &table, false, |png| {
        crate::chart::over_time(png, "mirror soak: the daemon over time", "seconds", &series)
    })?;
    if !problems.is_empty() {
        bail!("soak failed: {}", problems.join("; "));
    }
    Ok(())
}
