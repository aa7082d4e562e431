//! `mirror-bench`: the benchmark lab behind `cargo xtask bench`.
//!
//! Cases so far:
//! - `filters`: classification cost per frame against the rule count, through
//!   `BPF_PROG_TEST_RUN` in repeat mode (the kernel times the program alone).
//! - `copy`: the monitored traffic's own rate (UDP pps, TCP Mbit/s) with copy
//!   mode off and on, between namespaces through the monitored interface.
//! - `span`: mirror against the software SPANs (tc mirred, bare XDP
//!   redirect and broadcast, daemonlogger), a C AF_XDP forwarder, tcpdump
//!   -w, and the XDP_DROP ceiling, same lab and generator; its VXLAN, GRE
//!   and ERSPAN targets against tc mirred to a Linux VXLAN device; its
//!   kernel path with `packet_length`, `rate_limit_pps` and a target group
//!   against the plain kernel path; copy mode (to an interface and a VXLAN
//!   target) against tc mirred while the monitored namespace routes the
//!   traffic it mirrors; and a second table, `span-capture`: the capture
//!   cases again where the consumer has a core of its own, as on a capture
//!   host.
//!
//! Every table (one per case; `span` makes two) is written as
//! `benches/results/<timestamp>-<table>.json`, a Markdown table
//! (`<table>-latest.md`, also printed, and put into README.md between
//! `<!-- bench:<table> -->` markers where it has them) and a PNG chart
//! (`<table>-latest.png`).

mod chart;
mod copy;
mod filters;
mod soak;
mod span;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mirror_user::config::ZeroCopy;
use mirror_user::kernel::xsk::{Area, TxQueue, FRAME_SIZE};
use mirror_user::lab::{traffic, DaemonProcess, Lab, Netns, TempDir};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "mirror-bench", about = "mirror's benchmark lab")]
struct Cli {
    /// Where results go.
    #[arg(long, default_value = RESULTS, global = true)]
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
    /// with copy mode off, on through the ring buffer (ingress at XDP, at
    /// tcx), and on through the kernel path (tcx clones).
    Copy(copy::Args),
    /// mirror against the software SPANs and capture tools on one lab:
    /// XDP_DROP ceiling, tc mirred, a bare XDP redirect and broadcast, a C
    /// AF_XDP forwarder, daemonlogger, tcpdump -w; mirror's kernel,
    /// userspace and copy-mode paths, to one and two target ports and to a
    /// pcapng file; the kernel path with a cut, a rate limit and a target
    /// group; remote mirroring: tc mirred to a Linux VXLAN device
    /// against mirror's vxlan, gre and erspan targets; copy mode against tc
    /// mirred (to an interface, to VXLAN) while the monitored namespace
    /// routes the traffic. A whole run adds a second table, `span-capture`:
    /// the ceiling, tcpdump -w and the pcapng target on a capture host's
    /// layout (the consumer on a core of its own).
    Span(span::Args),
    /// The daemon for a long while under everything at once: two sources
    /// (tap to the kernel path with a flapping target, copy mode to
    /// rotating pcapng files), traffic, live rule updates, SIGHUPs; samples
    /// RSS, fds, BPF maps and threads over time and fails on growth after
    /// the warm-up or on counters that do not reconcile.
    Soak(soak::Args),
}

/// Set by SIGINT/SIGTERM: the lab stops before its next run and cleans up
/// (namespaces, daemons, tools, tmpfs) as it unwinds.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Fails once SIGINT or SIGTERM arrived, so the caller unwinds and every
/// guard of the lab runs.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("interrupted: stopping and cleaning up the lab");
    }
    Ok(())
}

fn main() -> Result<ExitCode> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // Safety: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let cli = Cli::parse();
    if !mirror_user::is_root() {
        bail!("the benchmarks load BPF programs: run them as root");
    }
    std::fs::create_dir_all(&cli.out)?;
    let done = match cli.case {
        Case::Filters(a) => filters::run(&a, &cli.out),
        Case::Copy(a) => copy::run(&a, &cli.out),
        Case::Span(a) => span::run(&a, &cli.out),
        Case::Soak(a) => soak::run(&a, &cli.out),
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // Whatever failed after a signal (a daemon that got it too), the
        // lab has been taken down by now.
        Err(_) if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("mirror-bench: interrupted; the lab is cleaned up");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// Where a whole run's results go, and the README's tables come from.
pub const RESULTS: &str = "benches/results";

/// Whether a run into `out` publishes its table into the README: only a
/// run into [`RESULTS`] (the committed results).
pub fn publishes(out: &Path) -> bool {
    out == Path::new(RESULTS)
}

/// How long and how often each measurement of a traffic case runs.
#[derive(clap::Args)]
pub struct Runs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Runs of each measurement; the median is reported, with min and max.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

/// The `mirror` binary built next to this one (`cargo xtask bench` builds both).
pub fn mirror_exe() -> Result<PathBuf> {
    sibling_exe("mirror")
}

/// A program built next to this one: `mirror`, and the C peer `xsk-fwd`
/// (`cargo xtask bench` builds them).
pub fn sibling_exe(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?
        .parent()
        .context("the bench binary's directory")?
        .join(name);
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: build it (`cargo xtask bench` does)",
        exe.display()
    );
    Ok(exe)
}

/// A progress bar on stderr over `total` measurements (drawn only on a
/// terminal); print through [`say`] so lines stay above it.
pub fn progress(total: u64, case: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{case} [{{bar:30}}] {{pos}}/{{len}} runs, {{elapsed}} elapsed, ~{{eta}} left: {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
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
        // Loading verifies several programs: seconds on a busy machine.
        Duration::from_secs(60),
    )
}

/// Sends `size`-byte lab UDP frames out of gen0 through AF_XDP for `secs`,
/// as fast as the kernel takes them or, with `rate`, paced to that many
/// frames/s (batches of up to 64 on a schedule, sleeping in between), from
/// a thread on `cpu`; returns how many the kernel completed.
pub fn generate(lab: &Lab, size: usize, secs: f64, rate: Option<f64>, cpu: usize) -> Result<u64> {
    check_interrupted()?;
    lab.gen.run(move || {
        pin_current_thread(cpu)?;
        // Paced sleeps of tens of microseconds: no 50 µs default slack.
        // Safety: prctl with an integer argument; affects this thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        const SLOTS: u32 = 4096;
        const BATCH: usize = 64;
        // Paced: frames per burst (a veth RX ring holds 256).
        const PACED: u64 = 32;
        let area = Arc::new(Area::new(SLOTS as usize * FRAME_SIZE as usize, true)?);
        let mut tx = TxQueue::open(Lab::GEN_IF, 0, &area, SLOTS, ZeroCopy::Off)?;
        let mut free = Vec::with_capacity(SLOTS as usize);
        for i in 0..SLOTS {
            let f = traffic::frame(traffic::SHAPES[1], i % 256, size);
            let at = u64::from(i) * u64::from(FRAME_SIZE);
            // Safety: frame `i` of our own area, not yet given to the kernel.
            unsafe {
                std::ptr::copy_nonoverlapping(f.as_ptr(), area.base().add(at as usize), f.len())
            };
            free.push((at, f.len() as u32));
        }
        let len = free[0].1;
        let (mut done, mut sent) = (0u64, 0u64);
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut now = start;
        while now < end {
            done += u64::from(tx.complete(|addr| free.push((addr, len))));
            // Frames due by now (all there are, unpaced).
            let due = rate.map_or(usize::MAX, |r| {
                ((r * (now - start).as_secs_f64()) as u64).saturating_sub(sent) as usize
            });
            let n = free.len().min(BATCH).min(due);
            let from = free.len() - n;
            // The ring takes a prefix of the batch; the rest stay free.
            let taken = tx.submit(free[from..].iter().copied()) as usize;
            free.drain(from..from + taken);
            sent += taken as u64;
            if let (Some(r), true) = (rate, due < BATCH) {
                // Ahead of the schedule: sleep until PACED more are due
                // (kicking what is in flight first).
                tx.kick();
                let next = (sent + PACED) as f64 / r;
                let wait = next - (now - start).as_secs_f64();
                if wait > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(wait.min(0.01)));
                }
            } else if taken < n {
                std::thread::yield_now();
            }
            now = Instant::now();
        }
        let drain = Instant::now() + Duration::from_millis(200);
        while tx.in_flight() > 0 && Instant::now() < drain {
            done += u64::from(tx.complete(|_| {}));
            tx.kick();
        }
        Ok(done)
    })
}

/// Where the feed port's frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Feed {
    /// AF_XDP TX on gen0 (copy mode): each frame reaches feed0 as an skb
    /// with a small kmalloc'ed head, which veth copies into a page-pool page
    /// before an XDP program at feed0 may run (`skb_pp_cow_data`), a copy
    /// no NIC makes.
    Skb,
    /// The kernel's XDP traffic generator (`BPF_PROG_TEST_RUN` with live
    /// frames): an XDP program redirects page-pool frames into gen0, and
    /// feed0 receives them as `xdp_frame`s, as a NIC's driver holds a frame
    /// in the page it DMA'd into: XDP runs on it in place, the stack gets
    /// an skb built around it. No backpressure: a full RX ring drops.
    Xdp,
    /// The kernel's XDP traffic generator passing its page-pool frames to
    /// the stack of a port beside gen0 (genp0), which builds an skb around
    /// each page as a NIC's driver does and forwards it out of gen0 (tcx):
    /// feed0 receives skbs whose head is a page with XDP's headroom, which
    /// XDP at feed0 runs on in place (no copy). gen0's queue (a 4,096-frame
    /// `pfifo`) holds what feed0's ring cannot take yet, as a NIC's RX ring
    /// does; it drops when full, and those drops are the run's loss.
    Page,
}

/// Sends `size`-byte lab UDP frames into feed0 for `secs` from `feed`, at
/// full speed or paced to `rate` frames/s, from a thread on the core `core`
/// names; returns how many were sent.
pub fn generate_from(
    feed: Feed,
    core: GenCore,
    lab: &Lab,
    size: usize,
    secs: f64,
    rate: Option<f64>,
) -> Result<u64> {
    let cpu = core.cpu();
    match feed {
        Feed::Skb => generate(lab, size, secs, rate, cpu),
        Feed::Xdp => generate_live(lab, size, secs, rate, None, cpu),
        Feed::Page => generate_live(lab, size, secs, rate, Some(PAGE_FEED_IF), cpu),
    }
}

/// Which core the generator's thread runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenCore {
    /// [`GEN_CPU`], which the userspace consumers (the daemon, tcpdump)
    /// share with it: the generator sends with the CPU they leave.
    Consumer,
    /// [`NAPI_CPU`], feed0's RX core: the consumers get a core of their
    /// own, as a capture host's NIC leaves them; what the generator
    /// offers then depends on feed0's NAPI work, not on the consumer's.
    Rx,
}

impl GenCore {
    pub fn cpu(self) -> usize {
        match self {
            GenCore::Consumer => GEN_CPU,
            GenCore::Rx => NAPI_CPU,
        }
    }
}

/// [`Feed::Page`]'s port in the generator's namespace: its stack receives
/// the generator's frames and forwards them out of gen0.
pub const PAGE_FEED_IF: &str = "genp0";

/// Frames a late paced schedule of [`Feed::Xdp`] sends back to back to
/// catch up: feed0's veth RX ring, which they go straight into, holds 256.
const XDP_BURST: u64 = 64;
/// The same for [`Feed::Page`], whose frames go through gen0's 4,096-frame
/// queue: a quarter of it. The generator is off its core while the RX
/// core's NAPI thread runs and for the grace period that ends each call;
/// with 64 a pace of 650 kpps offered ~430 kpps.
pub const PAGE_BURST: u64 = 1024;

/// [`Feed::Xdp`]: `BPF_PROG_TEST_RUN` of the bench peers' `xdp_gen` with
/// `BPF_F_TEST_XDP_LIVE_FRAMES`, its DEVMAP slot on gen0; [`Feed::Page`]:
/// `xdp_gen_pass` on `pass_to`'s RX queue 0 instead. Each repetition
/// runs the program on a frame of the kernel's own page pool, which sends it
/// (batches of 64) or, paced, drops it when it is not yet due; the program
/// counts what it sent. The 256 flows take turns, one call each. A call
/// ends with the kernel waiting ~20 ms (an RCU grace period as its page
/// pool goes), so calls are long (~100 ms, 500 ms paced) and sized to end
/// with the run.
/// The thread is `SCHED_IDLE`: the consumers that share its core get all
/// the CPU they ask for, as a NIC's traffic costs the host nothing before
/// it arrives; it sends with what is left.
fn generate_live(
    lab: &Lab,
    size: usize,
    secs: f64,
    rate: Option<f64>,
    pass_to: Option<&'static str>,
    cpu: usize,
) -> Result<u64> {
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    use libbpf_rs::MapCore;
    check_interrupted()?;
    lab.gen.run(move || {
        pin_current_thread(cpu)?;
        let param = libc::sched_param { sched_priority: 0 };
        // Safety: sets this thread's own policy from a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SCHED_IDLE for the generator");
        }
        let mut storage = std::mem::MaybeUninit::uninit();
        let skel = mirror_ebpf::bench_peers::BenchPeersSkelBuilder::default()
            .open(&mut storage)
            .context("opening the bench peer programs")?
            .load()
            .context("loading the bench peer programs")?;
        // The DEVMAP resolves the index in this (gen's) namespace.
        let gen0 = mirror_user::kernel::query::ifindex(Lab::GEN_IF)
            .with_context(|| format!("{} in ns gen", Lab::GEN_IF))?;
        let any = libbpf_rs::MapFlags::ANY;
        skel.maps
            .port
            .update(&0u32.to_ne_bytes(), &gen0.to_ne_bytes(), any)
            .context("putting gen0 in the generator's DEVMAP")?;
        // struct gen_pace: interval_ns, next_ns, sent, burst.
        let interval = rate.map_or(0, |r| (1e9 / r.max(1.0)) as u64);
        let burst = match pass_to {
            Some(_) => PAGE_BURST,
            None => XDP_BURST,
        };
        let mut pace = [0u8; 32];
        pace[..8].copy_from_slice(&interval.to_ne_bytes());
        // The schedule starts now (bpf_ktime_get_ns is CLOCK_MONOTONIC),
        // not with a catch-up burst.
        pace[8..16].copy_from_slice(&mirror_user::dataplane::clock::monotonic_ns().to_ne_bytes());
        pace[24..].copy_from_slice(&burst.to_ne_bytes());
        skel.maps
            .pace
            .update(&0u32.to_ne_bytes(), &pace, any)
            .context("setting the generator's pace")?;
        let frames: Vec<Vec<u8>> = (0..256)
            .map(|i| traffic::frame(traffic::SHAPES[1], i, size))
            .collect();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex: the ingress port, and the frame's
        // end (set per call; the kernel checks it against the frame).
        let mut ctx = [0u8; 24];
        let prog = match pass_to {
            Some(dev) => {
                let ifindex = mirror_user::kernel::query::ifindex(dev)
                    .with_context(|| format!("{dev} in ns gen"))?;
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                &skel.progs.xdp_gen_pass
            }
            None => &skel.progs.xdp_gen,
        };
        // Repetitions per call: the first is a guess, the next are sized
        // from the last call's time per repetition. Paced calls are longer:
        // the grace period that ends each call sends nothing, and a paced
        // schedule catches up only a burst after it (100 ms calls offered
        // ~80% of the pace); the flows then take turns more slowly.
        let call_len = match rate {
            Some(_) => Duration::from_millis(500),
            None => Duration::from_millis(100),
        };
        let (mut reps, mut call) = (1u32 << 16, 0usize);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let t0 = Instant::now();
            let frame = &frames[call % frames.len()];
            let mut ctx = ctx;
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            let input = libbpf_rs::ProgramInput {
                context_in: pass_to.map(|_| &mut ctx[..]),
                data_in: Some(frame),
                flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
                repeat: reps,
                ..Default::default()
            };
            call += 1;
            prog.test_run(input)
                .context("BPF_PROG_TEST_RUN with live frames")?;
            let now = Instant::now();
            let per_rep = (now - t0).as_secs_f64() / f64::from(reps);
            let left = end.saturating_duration_since(now).min(call_len);
            // A call costs its repetitions and a grace period.
            let fit = (left.as_secs_f64() - 0.02) / per_rep;
            if fit < 1.0 {
                break;
            }
            reps = fit.min(f64::from(u32::MAX)) as u32;
        }
        let out = skel
            .maps
            .pace
            .lookup(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .context("reading what the generator sent")?
            .context("the generator's pace entry")?;
        let sent: [u8; 8] = out[16..24].try_into().context("gen_pace.sent")?;
        Ok(u64::from_ne_bytes(sent))
    })
}

/// The CPU the generator runs on; the feed port's NAPI thread gets the other
/// (see `Lab::tune_feed_port`, then [`pin_napi_threads`]).
pub const GEN_CPU: usize = 1;
pub const NAPI_CPU: usize = 0;

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    pin(0, cpu)
}

/// Pins thread `tid` (0: the calling thread) to `cpu`.
fn pin(tid: i32, cpu: usize) -> Result<()> {
    mirror_user::config::cpus::CpuList::one(cpu)
        .with_context(|| format!("CPU {cpu} is beyond what an affinity mask names"))?
        .pin_thread(tid)
        .context("sched_setaffinity")
}

/// Pins every NAPI kernel thread of `dev` (`napi/<dev>-<id>`) to `cpu`; the
/// kernel re-creates them when XDP is attached or detached, so call this
/// after each change. Returns how many were pinned.
pub fn pin_napi_threads(dev: &str, cpu: usize) -> Result<usize> {
    Ok(napi_threads(dev)?
        .into_iter()
        .filter(|&pid| pin(pid, cpu).is_ok())
        .count())
}

/// The NAPI kernel threads of `dev` (`napi/<dev>-<id>`, threaded NAPI).
pub fn napi_threads(dev: &str) -> Result<Vec<i32>> {
    let prefix = format!("napi/{dev}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// CPU time so far, ns, of every thread of process `pid` and of every
/// process below it (`/proc/<pid>/task/<tid>/schedstat`'s first field: the
/// scheduler's own account, to the nanosecond, where `stat`'s ticks are 10
/// ms). A thread or process gone meanwhile counts 0.
pub fn tree_cpu_ns(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut ns = 0;
    for task in tasks.flatten() {
        let path = task.path();
        ns += std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let children = std::fs::read_to_string(path.join("children")).unwrap_or_default();
        ns += children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(tree_cpu_ns)
            .sum::<u64>();
    }
    ns
}

/// (median, min, max) of the runs.
pub fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Writes a case's results: `<timestamp>-<case>.json` (the rows),
/// `<case>-latest.md` (the table, also printed) and `<case>-latest.png`
/// (drawn by `chart`); with `publish` (a whole run into benches/results),
/// also the README's copy of the table.
pub fn save<R: Serialize>(
    out: &Path,
    case: &str,
    rows: &[R],
    table: &str,
    publish: bool,
    chart: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let json = out.join(format!("{}-{case}.json", timestamp()));
    std::fs::write(&json, serde_json::to_string_pretty(rows)?)?;
    std::fs::write(out.join(format!("{case}-latest.md")), table)?;
    let png = out.join(format!("{case}-latest.png"));
    chart(&png)?;
    println!("{table}");
    println!("results: {} , chart: {}", json.display(), png.display());
    if publish && update_readme(Path::new("README.md"), case, table)? {
        println!("README.md: the {case} table replaced");
    }
    Ok(())
}

/// Replaces what stands between `<!-- bench:CASE -->` and
/// `<!-- /bench:CASE -->` in `readme` with `table`, so the README shows the
/// latest run; returns whether it did (no README or no markers: nothing).
pub fn update_readme(readme: &Path, case: &str, table: &str) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(readme) else {
        return Ok(false);
    };
    let (open, close) = (
        format!("<!-- bench:{case} -->"),
        format!("<!-- /bench:{case} -->"),
    );
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        return Ok(false);
    };
    if b < a {
        bail!("{}: {close} comes before {open}", readme.display());
    }
    let new = format!("{}{open}\n{}\n{}", &text[..a], table.trim_end(), &text[b..]);
    std::fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))?;
    Ok(true)
}

/// [`save`] with a bar chart of `bars` (label, value) as the PNG.
#[expect(
    clippy::too_many_arguments,
    reason = "save's arguments and the chart's"
)]
pub fn save_bars<R: Serialize>(
    out: &Path,
    case: &str,
    rows: &[R],
    table: &str,
    publish: bool,
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
) -> Result<()> {
    save(out, case, rows, table, publish, |png| {
        chart::bars(png, title, y_label, bars)
    })
}

/// Prints `line` on stderr above the progress bar (also when the bar is
/// hidden, off a terminal).
pub fn say(bar: &indicatif::ProgressBar, line: impl std::fmt::Display) {
    bar.suspend(|| eprintln!("{line}"));
}

/// Seconds since the epoch, for result file names.
pub fn timestamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that spins is counted with its parent, to the scheduler's
    /// own account.
    #[test]
    fn a_process_trees_cpu_time_counts_its_children() {
        /// Killed and reaped however the test ends.
        struct Spinner(std::process::Child);
        impl Drop for Spinner {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let me = std::process::id() as i32;
        let before = tree_cpu_ns(me);
        // A bounded spin (a few seconds at most), its own process: killed
        // directly (a `timeout` in front would die and leave it spinning).
        let _spinner = Spinner(
            std::process::Command::new("sh")
                .args(["-c", "i=0; while [ $i -lt 5000000 ]; do i=$((i+1)); done"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("sh"),
        );
        let start = Instant::now();
        // The child has spun a while (on a busy machine it may wait its turn).
        let spun = loop {
            let now = tree_cpu_ns(me);
            if now - before >= 100_000_000 || start.elapsed() > Duration::from_secs(4) {
                break now - before;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(spun >= 100_000_000, "counted {spun} ns");
        assert_eq!(tree_cpu_ns(i32::MAX), 0, "no such process");
    }
}
