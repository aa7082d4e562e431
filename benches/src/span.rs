//! `span`: `mirror` against the software SPANs on one lab, one generator,
//! one run. Every case mirrors every frame of the feed port to the target
//! port(s) and consumes the feed (a SPAN/TAP port's frames have nowhere
//! else to go):
//!
//! 1. `XDP_DROP at feed0`: the ceiling, what the generator and veth carry;
//! 2. `tc mirred`: clsact ingress on feed0, `u32` match-all, `mirred egress
//!    mirror dev tgt0` (Linux's software SPAN); the original then goes up
//!    feed0's stack, which drops it (no address; this kernel has no `gact`
//!    module for an explicit `action drop`);
//! 3. `XDP redirect`: a bare XDP program redirecting to tgt0 through a DEVMAP
//!    (the in-kernel ceiling for one target);
//! 4. `mirror` (kernel path): a tap session to an interface target;
//! 5. `mirror` (userspace path): the same with `path = "userspace"` (AF_XDP);
//! 6. `XDP broadcast ×2`: a bare XDP program broadcasting to tgt0 and tgt1
//!    (the in-kernel ceiling for fan-out);
//! 7. `mirror ×2` (kernel path): a session with two interface targets.
//!
//! ```text
//!  ns gen                 ns src                        ns sink
//!  gen0 ──veth── feed0 [case under test] tgt0 ──veth── sink0 [XDP count + drop]
//!                                        tgt1 ──veth── sink1 [XDP count + drop]
//! ```
//!
//! The generator is the AF_XDP TX generator of every tap case; what arrived
//! is counted by an XDP program on each sink port (which also lets the veth
//! in front of it take redirected frames, as a NIC would).

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use mirror_ebpf::bench_peers::{BenchPeersSkel, BenchPeersSkelBuilder};
use mirror_user::lab::{self, DaemonProcess, Lab, Netns, TempDir};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    runs: crate::Runs,
    /// Frame sizes in bytes, without the FCS (60 is a 64-byte frame on the wire).
    #[arg(long, value_delimiter = ',', default_value = "60,1500")]
    sizes: Vec<usize>,
    /// Only these cases (drop, tc, redirect, mirror, filtered, userspace, broadcast,
    /// mirror2); default all. Ratios need their reference case in the run.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
}

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

# AWS's documentation example: every frame is classified (the UDP feed
# matches rule 200, after rule 100 missed).
[[filter]]
name = "aws"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "443"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"

[[target]]
name = "t0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "t1"
kind = "interface"
interface = "tgt1"

[[session]]
name = "all"
source = "feed"
filter = "@FILTER@"
targets = [@TARGETS@]
path = "@PATH@"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    XdpDrop,
    TcMirred,
    XdpRedirect,
    MirrorKernel,
    MirrorFiltered,
    MirrorUserspace,
    XdpBroadcast,
    MirrorKernel2,
}

impl Case {
    const ALL: [Case; 8] = [
        Case::XdpDrop,
        Case::TcMirred,
        Case::XdpRedirect,
        Case::MirrorKernel,
        Case::MirrorFiltered,
        Case::MirrorUserspace,
        Case::XdpBroadcast,
        Case::MirrorKernel2,
    ];

    /// Short name for `--cases`.
    fn id(self) -> &'static str {
        match self {
            Case::XdpDrop => "drop",
            Case::TcMirred => "tc",
            Case::XdpRedirect => "redirect",
            Case::MirrorKernel => "mirror",
            Case::MirrorFiltered => "filtered",
            Case::MirrorUserspace => "userspace",
            Case::XdpBroadcast => "broadcast",
            Case::MirrorKernel2 => "mirror2",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::XdpDrop => "ceiling: XDP_DROP at feed0",
            Case::TcMirred => "tc mirred (software SPAN)",
            Case::XdpRedirect => "XDP redirect (in-kernel ceiling)",
            Case::MirrorKernel => "mirror, kernel path",
            Case::MirrorFiltered => "mirror, kernel path, 2-rule filter",
            Case::MirrorUserspace => "mirror, userspace (AF_XDP)",
            Case::XdpBroadcast => "XDP broadcast x2 (fan-out ceiling)",
            Case::MirrorKernel2 => "mirror x2, kernel path",
        }
    }

    /// Target ports the case sends to (0: none, the ceiling).
    fn targets(self) -> usize {
        match self {
            Case::XdpDrop => 0,
            Case::XdpBroadcast | Case::MirrorKernel2 => 2,
            _ => 1,
        }
    }

    /// The case this one is compared with.
    fn reference(self) -> Option<Case> {
        match self {
            Case::TcMirred | Case::MirrorKernel | Case::MirrorFiltered | Case::MirrorUserspace => {
                Some(Case::XdpRedirect)
            }
            Case::MirrorKernel2 => Some(Case::XdpBroadcast),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    frame: usize,
    /// Short name (`--cases`), for the chart.
    id: &'static str,
    case: &'static str,
    /// Frames/s the generator's socket completed (handed to gen0).
    offered_pps: f64,
    /// Frames/s that arrived at each target's sink (at feed0 for the
    /// ceiling): median, min, max.
    delivered_pps: f64,
    delivered_min: f64,
    delivered_max: f64,
    /// Offered frames that did not arrive (at every target), percent.
    loss_pct: f64,
    /// Busy share of each core over the run, percent.
    cpu_pct: Vec<f64>,
    /// CPU time per delivered frame (all cores), ns.
    ns_per_frame: f64,
    /// Resident memory of `mirror run`, KiB (mirror cases only).
    rss_kib: Option<u64>,
    /// mirror cases: frames/s its source received, and copies/s its targets
    /// dropped (by reason, all targets together).
    mirror_received_pps: Option<f64>,
    mirror_target_drops: Option<std::collections::BTreeMap<String, f64>>,
    /// delivered / delivered of the reference case (XDP redirect, or XDP
    /// broadcast for fan-out).
    vs_reference: Option<f64>,
    vs_tc_mirred: Option<f64>,
}

/// One loaded instance of the reference programs.
struct Peer {
    skel: BenchPeersSkel<'static>,
}

impl Peer {
    fn load() -> Result<Peer> {
        // The skeleton borrows its object storage for its whole life; a few
        // small allocations per bench run.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let skel = BenchPeersSkelBuilder::default()
            .open(storage)
            .context("opening the bench peer programs")?
            .load()
            .context("loading the bench peer programs")?;
        Ok(Peer { skel })
    }

    fn frames(&self) -> Result<u64> {
        Ok(mirror_user::loader::percpu_sum(&self.skel.maps.frames, 0)?)
    }

    fn fd(&self, case: Case) -> RawFd {
        let p = &self.skel.progs;
        match case {
            Case::XdpRedirect => p.xdp_redirect.as_fd().as_raw_fd(),
            Case::XdpBroadcast => p.xdp_broadcast.as_fd().as_raw_fd(),
            _ => p.xdp_count_drop.as_fd().as_raw_fd(),
        }
    }

    /// Points the redirect programs at `devices` (resolved in `ns`: a DEVMAP
    /// takes ifindexes of the updating thread's namespace).
    fn set_ports(&self, ns: &Netns, devices: &[&str]) -> Result<()> {
        let port = self.skel.maps.port.as_fd().as_raw_fd();
        let ports = self.skel.maps.ports.as_fd().as_raw_fd();
        let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        ns.run(move || {
            let set = |map: RawFd, key: u32, dev: &str| -> Result<()> {
                let ifindex = mirror_user::loader::ifindex(dev)?;
                // Safety: a valid map fd, 4-byte key and value.
                let rc = unsafe {
                    libbpf_sys::bpf_map_update_elem(
                        map,
                        (&key as *const u32).cast(),
                        (&ifindex as *const u32).cast(),
                        0,
                    )
                };
                if rc != 0 {
                    bail!(
                        "DEVMAP update for {dev}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(())
            };
            // `port` (redirect) takes the first device, `ports` (broadcast) all.
            if let Some(first) = devices.first() {
                set(port, 0, first)?;
            }
            for (i, d) in devices.iter().enumerate() {
                set(ports, i as u32, d)?;
            }
            Ok(())
        })
    }
}

/// Attaches program `fd` to `dev` in `ns` (native XDP) through a link;
/// dropping the returned fd detaches it.
fn attach(ns: &Netns, dev: &str, fd: RawFd) -> Result<OwnedFd> {
    let dev = dev.to_string();
    ns.run(move || {
        let ifindex = mirror_user::loader::ifindex(&dev)?;
        mirror_user::loader::link_create(
            fd,
            ifindex,
            libbpf_sys::BPF_XDP,
            libbpf_sys::XDP_FLAGS_DRV_MODE,
        )
        .with_context(|| format!("attaching XDP to {dev}"))
    })
}

/// `tc` in `ns`, failing on a non-zero exit.
fn tc(ns: &Netns, args: &[&str]) -> Result<()> {
    let mut all = vec!["tc"];
    all.extend_from_slice(args);
    ns.exec(&all)
}

/// Per-core (busy, total) jiffies from /proc/stat.
fn cpu_times() -> Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait are not busy.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect())
}

/// A mirror case's (source received, target drops by reason) so far.
type MirrorCounts = (u64, std::collections::BTreeMap<String, u64>);

fn mirror_stats(r: &Running<'_>) -> Result<Option<MirrorCounts>> {
    let Some(d) = &r.daemon else { return Ok(None) };
    let s = mirror_user::control::Client::connect(&d.control)?.stats()?;
    let mut drops = std::collections::BTreeMap::new();
    for t in s.targets.values() {
        for (k, v) in &t.dropped {
            *drops.entry(k.clone()).or_default() += v;
        }
    }
    Ok(Some((s.sources["feed"].received, drops)))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What a running case is: the attached programs / qdisc / daemon, undone on drop.
struct Running<'a> {
    /// The case's own program at feed0 (ceiling, redirect, broadcast).
    peer: Option<Peer>,
    link: Option<OwnedFd>,
    daemon: Option<DaemonProcess>,
    /// The namespace whose feed0 has the case's clsact qdisc.
    tc: Option<&'a Netns>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.link = None;
        if let Some(ns) = self.tc {
            let _ = tc(ns, &["qdisc", "del", "dev", Lab::FEED_IF, "clsact"]);
        }
    }
}

fn start<'a>(case: Case, lab: &'a Lab, exe: &Path, dir: &TempDir) -> Result<Running<'a>> {
    let mut run = Running {
        peer: None,
        link: None,
        daemon: None,
        tc: None,
    };
    match case {
        Case::XdpDrop | Case::XdpRedirect | Case::XdpBroadcast => {
            let p = Peer::load()?;
            p.set_ports(&lab.src, &[Lab::TARGET_IF, "tgt1"])?;
            run.link = Some(attach(&lab.src, Lab::FEED_IF, p.fd(case))?);
            run.peer = Some(p);
        }
        Case::TcMirred => {
            tc(&lab.src, &["qdisc", "add", "dev", Lab::FEED_IF, "clsact"])?;
            run.tc = Some(&lab.src);
            tc(
                &lab.src,
                &[
                    "filter",
                    "add",
                    "dev",
                    Lab::FEED_IF,
                    "ingress",
                    "protocol",
                    "all",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "u32",
                    "0",
                    "0",
                    "action",
                    "mirred",
                    "egress",
                    "mirror",
                    "dev",
                    Lab::TARGET_IF,
                ],
            )?;
        }
        Case::MirrorKernel | Case::MirrorFiltered | Case::MirrorUserspace | Case::MirrorKernel2 => {
            let (targets, path) = match case {
                Case::MirrorUserspace => ("\"t0\"", "userspace"),
                Case::MirrorKernel2 => ("\"t0\", \"t1\"", "kernel"),
                _ => ("\"t0\"", "kernel"),
            };
            let filter = if case == Case::MirrorFiltered {
                "aws"
            } else {
                "all"
            };
            let text = CONFIG
                .replace("@TARGETS@", targets)
                .replace("@PATH@", path)
                .replace("@FILTER@", filter);
            run.daemon = Some(crate::start_daemon(&lab.src, exe, dir, &text)?);
        }
    }
    Ok(run)
}

pub fn run(a: &Args, out: &Path) -> Result<()> {
    let exe = crate::mirror_exe()?;
    let lab = Lab::new(1)?;
    lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1)?;
    crate::tune_feed_port(&lab)?;
    let dir = TempDir::new("bench-span")?;
    // Meters on the sink ports, for the whole run.
    let sinks = [Peer::load()?, Peer::load()?];
    let _sink_links = [
        attach(&lab.sink, Lab::SINK_IF, sinks[0].fd(Case::XdpDrop))?,
        attach(&lab.sink, "sink1", sinks[1].fd(Case::XdpDrop))?,
    ];
    let mut rows: Vec<Row> = Vec::new();
    for id in &a.cases {
        if !Case::ALL.iter().any(|c| c.id() == id) {
            bail!("unknown case `{id}`: the cases are drop, tc, redirect, mirror, filtered, userspace, broadcast, mirror2");
        }
    }
    let wanted = Case::ALL
        .into_iter()
        .filter(|c| a.cases.is_empty() || a.cases.iter().any(|id| id == c.id()));
    for case in wanted {
        let running = start(case, &lab, &exe, &dir).with_context(|| case.name())?;
        // Attaching XDP re-created the feed port's NAPI thread: pin it again.
        std::thread::sleep(Duration::from_millis(100));
        if crate::pin_napi_threads(Lab::FEED_IF, crate::NAPI_CPU)? == 0 {
            bail!(
                "no NAPI thread for {} (threaded NAPI not on?)",
                Lab::FEED_IF
            );
        }
        for &size in &a.sizes {
            let mut runs = Vec::new();
            for _ in 0..a.runs.reps {
                let meter = |r: &Running<'_>| -> Result<u64> {
                    match (&r.peer, case) {
                        // The ceiling delivers nowhere: count what XDP saw.
                        (Some(p), Case::XdpDrop) => p.frames(),
                        _ => Ok(sinks[0].frames()? + sinks[1].frames()?),
                    }
                };
                let (d0, cpu0, m0) = (meter(&running)?, cpu_times()?, mirror_stats(&running)?);
                let offered = crate::generate(&lab, size, a.runs.secs)?;
                std::thread::sleep(Duration::from_millis(200));
                let (d1, cpu1, m1) = (meter(&running)?, cpu_times()?, mirror_stats(&running)?);
                let per_target = (d1 - d0) as f64 / case.targets().max(1) as f64;
                let cpu: Vec<f64> = cpu0
                    .iter()
                    .zip(&cpu1)
                    .map(|(b, e)| 100.0 * (e.0 - b.0) as f64 / (e.1 - b.1).max(1) as f64)
                    .collect();
                let mirror = m0.zip(m1).map(|(b, e)| {
                    let drops =
                        e.1.iter()
                            .map(|(k, v)| {
                                let before = b.1.get(k).copied().unwrap_or(0);
                                (k.clone(), (v - before) as f64 / a.runs.secs)
                            })
                            .filter(|(_, v)| *v > 0.0)
                            .collect::<std::collections::BTreeMap<_, _>>();
                    ((e.0 - b.0) as f64 / a.runs.secs, drops)
                });
                runs.push((
                    offered as f64 / a.runs.secs,
                    per_target / a.runs.secs,
                    cpu,
                    mirror,
                ));
            }
            let mut delivered: Vec<f64> = runs.iter().map(|r| r.1).collect();
            let (med, min, max) = crate::median(&mut delivered);
            // The run whose delivered rate is the median: its offered rate and CPU.
            let (offered, _, cpu, mirror) = runs
                .iter()
                .find(|r| r.1 == med)
                .cloned()
                .unwrap_or_default();
            let busy: f64 = cpu.iter().sum::<f64>() / 100.0;
            let rss = running
                .daemon
                .as_ref()
                .and_then(|d| d.pid())
                .and_then(rss_kib);
            let row = Row {
                frame: size,
                id: case.id(),
                case: case.name(),
                offered_pps: offered,
                delivered_pps: med,
                delivered_min: min,
                delivered_max: max,
                loss_pct: if offered > 0.0 {
                    (100.0 * (1.0 - med / offered)).max(0.0)
                } else {
                    0.0
                },
                ns_per_frame: if med > 0.0 {
                    busy * 1e9 / (med * case.targets().max(1) as f64)
                } else {
                    0.0
                },
                cpu_pct: cpu,
                rss_kib: rss,
                mirror_received_pps: mirror.as_ref().map(|m| m.0),
                mirror_target_drops: mirror.map(|m| m.1),
                vs_reference: None,
                vs_tc_mirred: None,
            };
            eprintln!(
                "span {size:>5}B {:<36}: offered {:>8.0}/s, delivered {:>8.0}/s per target ({:.0}-{:.0})",
                case.name(),
                row.offered_pps,
                med,
                min,
                max
            );
            rows.push(row);
        }
        drop(running);
    }
    // Ratios, per frame size, against the reference cases of the same run.
    let lookup = |rows: &[Row], size: usize, c: Case| {
        rows.iter()
            .find(|r| r.frame == size && r.case == c.name())
            .map(|r| r.delivered_pps)
    };
    let snapshot = rows.clone();
    for r in &mut rows {
        let case = Case::ALL
            .into_iter()
            .find(|c| c.name() == r.case)
            .unwrap_or(Case::XdpDrop);
        if let Some(refc) = case.reference() {
            r.vs_reference = lookup(&snapshot, r.frame, refc)
                .filter(|&v| v > 0.0)
                .map(|v| r.delivered_pps / v);
        }
        if case.targets() > 0 && case != Case::TcMirred {
            r.vs_tc_mirred = lookup(&snapshot, r.frame, Case::TcMirred)
                .filter(|&v| v > 0.0)
                .map(|v| r.delivered_pps / v);
        }
    }
    let bars: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (format!("{} {}B", r.id, r.frame), r.delivered_pps / 1000.0))
        .collect();
    crate::save_bars(
        out,
        "span",
        &rows,
        &table(&rows, a),
        "mirror vs software SPAN: kpps delivered per target (mirror, mirror2: kernel path; userspace: AF_XDP)",
        "kpps delivered",
        &bars,
    )
}

fn table(rows: &[Row], a: &Args) -> String {
    let mut s = format!(
        "mirror against the software SPANs, same lab and generator (AF_XDP TX on veth, \
         2 cores), median of {} runs of {:.1} s (`cargo xtask bench span`)\n\n\
         | frame | case | offered | delivered per target (min-max) | loss | vs in-kernel ref | vs tc mirred | CPU % per core | ns/frame | mirror RSS | mirror: received, target drops/s |\n\
         |---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|\n",
        a.runs.reps, a.runs.secs
    );
    let ratio = |v: Option<f64>| v.map_or("".to_string(), |x| format!("{x:.2}x"));
    for r in rows {
        s.push_str(&format!(
            "| {} B | {} | {:.0} pps | {:.0} pps ({:.0}-{:.0}) | {:.1}% | {} | {} | {} | {:.0} | {} | {} |\n",
            r.frame,
            r.case,
            r.offered_pps,
            r.delivered_pps,
            r.delivered_min,
            r.delivered_max,
            r.loss_pct,
            ratio(r.vs_reference),
            ratio(r.vs_tc_mirred),
            r.cpu_pct
                .iter()
                .map(|c| format!("{c:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            r.ns_per_frame,
            r.rss_kib.map_or("".to_string(), |k| format!("{} MiB", k / 1024)),
            r.mirror_received_pps.map_or(String::new(), |rx| {
                let drops = r.mirror_target_drops.as_ref().map_or(String::new(), |d| {
                    d.iter()
                        .map(|(k, v)| format!(", {k} {v:.0}"))
                        .collect::<String>()
                });
                format!("{rx:.0} pps{drops}")
            }),
        ));
    }
    s
}
