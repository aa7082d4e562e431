//! The running daemon's data plane: for each source its loaded kernel
//! programs and the threads that read what they hand over; for each target a
//! bounded queue and a sender thread (AF_XDP TX, tunnel socket, or pcapng writer).
//!
//! ```text
//! tap:  feed port ──XDP (classify, sample)──▶ XSKMAP[rxq] ──▶ RX ring ──▶ worker ─┐
//!                     no match / sampled out: XDP_DROP, counted                 │
//! copy: live port ──XDP / tcx (classify, sample, copy)──▶ ring buffer ──▶ reader ─┤
//!                     every frame: XDP_PASS / TC_ACT_UNSPEC (never held)        │
//!        ┌──────────────────────────────────────────────────────────────────────┘
//!        └▶ session plan (truncate, rate limit, group pick) ──▶ target queues ──▶ senders
//! ```

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapHandle, RingBufferBuilder};
use mirror_ebpf::mirror::types::mirror_counter as C;

use crate::config::{
    Config, Direction, IngressHook, SessionPath, ShareUmem, SourceMode, TargetSpec, ZeroCopy,
};
use crate::dataplane::session::SessionPlan;
use crate::dataplane::stats::{DirectionStats, SessionStats, SourceStats, Stats, TargetStats};
use crate::filter::ruleset::{self, RuleSet};
use crate::kernel::copy_ring::Record;
use crate::kernel::netdev;
use crate::kernel::xsk::{RxQueue, StatsHandle, UmemHost};
use crate::kernel::{read_meta, AttachMode, CopyHooks, FastStats, SourceProgram, COUNTERS};
use crate::target::group::TargetGroup;
use crate::target::interface::ShareWith;
use crate::target::{interface, pcapng, tunnel, Frame, TargetQueue};

/// Frames read from an RX ring per round.
const RX_BATCH: u32 = 64;
/// How long an idle worker sleeps in poll() before checking for shutdown.
const IDLE_POLL_MS: i32 = 100;
/// Copy mode: records handled between two wake-ups of the targets.
const COPY_BATCH: u32 = 64;
/// Copy mode: the reader is woken once this much of the ring is filled
/// (at most a quarter of it), and otherwise reads every [`COPY_POLL`].
const COPY_WAKE_BYTES: u64 = 256 << 10;
const COPY_POLL: Duration = Duration::from_millis(1);

struct Source {
    name: String,
    /// Index in `Config::sources` (the pcapng interface id).
    index: u16,
    interface: String,
    mode: SourceMode,
    program: Mutex<SourceProgram>,
    /// Kernel session index -> index into `Config::sessions`.
    sessions: Vec<usize>,
    /// Per kernel session index: what the workers do with its frames.
    plans: Vec<SessionPlan>,
    /// Per kernel session index: the path serving it.
    paths: Vec<PathChoice>,
    sockets: Vec<StatsHandle>,
    no_metadata: AtomicU64,
    /// How ingress is hooked: "native" / "generic" XDP, "tcx", or "none".
    attach_mode: &'static str,
    zero_copy: bool,
    /// Rules in force (both directions) and how many rule sets were installed.
    rules: AtomicU64,
    rule_sets_installed: AtomicU64,
}

/// A source's loaded programs and session plans, before attaching.
struct Prepared {
    program: SourceProgram,
    plans: Vec<SessionPlan>,
    paths: Vec<PathChoice>,
    sessions: Vec<usize>,
    rules: u64,
}

impl Prepared {
    fn into_source(
        self,
        cfg: &crate::config::Source,
        idx: usize,
        attach_mode: &'static str,
        sockets: Vec<StatsHandle>,
        zero_copy: bool,
    ) -> Source {
        Source {
            name: cfg.name.clone(),
            index: idx as u16,
            interface: cfg.interface.clone(),
            mode: cfg.mode,
            program: Mutex::new(self.program),
            sessions: self.sessions,
            plans: self.plans,
            paths: self.paths,
            sockets,
            no_metadata: AtomicU64::new(0),
            attach_mode,
            zero_copy,
            rules: AtomicU64::new(self.rules),
            rule_sets_installed: AtomicU64::new(1),
        }
    }
}

/// The rule sets a source's programs classify with: ingress always (empty
/// when the source does not mirror ingress), egress for copy-mode sources
/// that mirror egress.
fn source_rule_sets(config: &Config, idx: usize) -> Result<(RuleSet, Option<RuleSet>)> {
    let src = &config.sources[idx];
    let filters = ruleset::source_filters(config, idx);
    let ingress = if src.ingress() {
        RuleSet::build(&filters, Direction::Ingress)?
    } else {
        RuleSet::build(&[], Direction::Ingress)?
    };
    let egress = if src.mode == SourceMode::Copy && src.egress() {
        Some(RuleSet::build(&filters, Direction::Egress)?)
    } else {
        None
    };
    Ok((ingress, egress))
}

fn rule_count(ingress: &RuleSet, egress: &Option<RuleSet>) -> u64 {
    (ingress.rules + egress.as_ref().map_or(0, |e| e.rules)) as u64
}

/// A running data plane. Dropping it (or [`Engine::shutdown`]) detaches every
/// program and stops every thread.
pub struct Engine {
    /// The config the engine started with; sources, targets and sessions
    /// never change while it runs.
    config: Config,
    /// The config whose filters are in force: `config` with live rule
    /// changes and reloaded filters. Its lock also serialises updates.
    live: Mutex<Config>,
    sources: Vec<Arc<Source>>,
    /// Started targets, by index in `Config::targets`.
    targets: Vec<Arc<TargetQueue>>,
    groups: Vec<Arc<TargetGroup>>,
    /// Per session (index in `Config::sessions`): the path chosen at start.
    paths: Vec<PathChoice>,
    /// Per target: its device's ifindex, for interface targets.
    target_ifindex: Vec<Option<u32>>,
    stop_workers: Arc<AtomicBool>,
    stop_senders: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Opens every target, loads and attaches every source.
    pub fn start(config: Config) -> Result<Engine> {
        let sources = config.sources.len();
        let target_ifindex = config
            .targets
            .iter()
            .map(|t| match &t.spec {
                TargetSpec::Interface { interface, .. } => crate::kernel::ifindex(interface).ok(),
                _ => None,
            })
            .collect::<Vec<_>>();
        let paths = plan_paths(&config, &target_ifindex)?;
        let mut engine = Engine {
            live: Mutex::new(config.clone()),
            config,
            sources: Vec::new(),
            targets: Vec::new(),
            groups: Vec::new(),
            paths,
            target_ifindex,
            stop_workers: Arc::new(AtomicBool::new(false)),
            stop_senders: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            senders: Vec::new(),
        };
        let share = share_plan(&engine.config);
        let mut hosts: Vec<Option<UmemHost>> = (0..sources).map(|_| None).collect();
        for (ti, t) in engine.config.targets.iter().enumerate() {
            let stop = engine.stop_senders.clone();
            let (queue, handle) = match &t.spec {
                TargetSpec::Interface {
                    interface,
                    zero_copy,
                } => {
                    let with = share[ti].map(|s| {
                        let src = &engine.config.sources[s];
                        ShareWith {
                            frames: src.umem_frames,
                            ring_size: src.ring_size,
                        }
                    });
                    let (started, handle) =
                        interface::start(&t.name, interface, *zero_copy, t.queue_size, with, stop)
                            .with_context(|| {
                                format!("target `{}`: opening AF_XDP TX on {interface} (does it exist and is it up?)", t.name)
                            })?;
                    if let (Some(s), Some(host)) = (share[ti], started.host) {
                        hosts[s] = Some(host);
                    }
                    tracing::info!(
                        target = %t.name,
                        interface = %interface,
                        zero_copy = started.zero_copy,
                        "interface target ready"
                    );
                    (started.queue, handle)
                }
                TargetSpec::Vxlan { tunnel: tun, .. }
                | TargetSpec::Gre { tunnel: tun, .. }
                | TargetSpec::Erspan { tunnel: tun, .. } => {
                    let started = tunnel::start(&t.name, &t.spec, t.queue_size, stop)
                        .with_context(|| {
                            format!("target `{}`: opening the tunnel socket", t.name)
                        })?;
                    tracing::info!(
                        target = %t.name,
                        kind = t.spec.kind(),
                        remote = %tun.remote,
                        mtu = tun.mtu,
                        "tunnel target ready"
                    );
                    started
                }
                TargetSpec::Pcapng(spec) => {
                    let interfaces = engine
                        .config
                        .sources
                        .iter()
                        .map(|s| (s.name.clone(), s.interface.clone()))
                        .collect();
                    let started = pcapng::start(&t.name, spec, interfaces, t.queue_size, stop)
                        .with_context(|| {
                            format!("target `{}`: opening the capture file", t.name)
                        })?;
                    tracing::info!(target = %t.name, path = %spec.path.display(), "pcapng target ready");
                    started
                }
            };
            engine.targets.push(queue);
            engine.senders.push(handle);
        }
        for g in &engine.config.groups {
            let members = g
                .members
                .iter()
                .map(|&t| engine.targets[t].clone())
                .collect();
            engine
                .groups
                .push(Arc::new(TargetGroup::new(&g.name, members)));
        }
        for (i, host) in hosts.into_iter().enumerate() {
            engine.start_source(i, host)?;
        }
        Ok(engine)
    }

    fn start_source(&mut self, idx: usize, host: Option<UmemHost>) -> Result<()> {
        let cfg = &self.config.sources[idx];
        let sessions = self.config.sessions_of(idx);
        let (ingress, egress) = source_rule_sets(&self.config, idx)
            .with_context(|| format!("source `{}`: compiling the rules", cfg.name))?;
        let mut program = SourceProgram::load_with_ring(match cfg.mode {
            SourceMode::Tap => mirror_ebpf::limits::RING_MIN,
            SourceMode::Copy => cfg.ring_buffer,
        })
        .with_context(|| format!("source `{}`: loading the kernel programs", cfg.name))?;
        program
            .install(&ingress, egress.as_ref())
            .with_context(|| format!("source `{}`: installing the rules", cfg.name))?;
        let rules = rule_count(&ingress, &egress);
        tracing::info!(
            source = %cfg.name,
            rules,
            classes = ingress.bitmaps.len() + egress.as_ref().map_or(0, |e| e.bitmaps.len()),
            kib = (ingress.memory_bytes() + egress.as_ref().map_or(0, |e| e.memory_bytes())) / 1024,
            "rule set installed"
        );
        let plans: Vec<SessionPlan> = sessions
            .iter()
            .map(|&s| SessionPlan::new(&self.config, s, &self.targets, &self.groups))
            .collect();
        let paths: Vec<PathChoice> = sessions.iter().map(|&s| self.paths[s].clone()).collect();
        for (k, &s) in sessions.iter().enumerate() {
            let sess = &self.config.sessions[s];
            program
                .set_sampling(k as u32, sess.sample)
                .with_context(|| format!("source `{}`: setting the sampling", cfg.name))?;
            if cfg.mode == SourceMode::Copy {
                // Copy mode cuts in the kernel: only packet_length bytes cross.
                program
                    .set_snap(k as u32, sess.packet_length)
                    .with_context(|| format!("source `{}`: setting packet_length", cfg.name))?;
            }
        }
        let prepared = Prepared {
            program,
            plans,
            paths,
            sessions,
            rules,
        };
        match cfg.mode {
            SourceMode::Tap => self.start_tap(idx, prepared, host),
            SourceMode::Copy => self.start_copy(idx, prepared),
        }
    }

    /// Tap mode: one AF_XDP socket and worker per RX queue, then XDP. The
    /// first RX queue joins `host` (an interface target's UMEM) when given.
    fn start_tap(
        &mut self,
        idx: usize,
        mut prepared: Prepared,
        mut host: Option<UmemHost>,
    ) -> Result<()> {
        let cfg = &self.config.sources[idx];
        let program = &mut prepared.program;
        let mut sockets = Vec::new();
        let queues = match netdev::rx_queues(&cfg.interface) {
            Some(n) => n,
            None => {
                crate::kernel::ifindex(&cfg.interface)
                    .with_context(|| format!("source `{}`", cfg.name))?;
                tracing::info!(interface = %cfg.interface, "driver reports no channels; assuming 1 RX queue");
                1
            }
        };
        if queues > mirror_ebpf::limits::MAX_QUEUES {
            bail!(
                "source `{}`: {} has {queues} RX queues; at most {} are supported",
                cfg.name,
                cfg.interface,
                mirror_ebpf::limits::MAX_QUEUES
            );
        }
        let mut rx = Vec::new();
        for q in 0..queues {
            let queue = match host.take().and_then(|h| join_host(cfg, q, &h)) {
                Some(queue) => Ok(queue),
                None => RxQueue::open(
                    &cfg.interface,
                    q,
                    cfg.umem_frames,
                    cfg.ring_size,
                    cfg.zero_copy,
                ),
            }
            .with_context(|| {
                format!(
                    "source `{}`: AF_XDP socket on {} queue {q}",
                    cfg.name, cfg.interface
                )
            })?;
            program.set_socket(q, queue.fd())?;
            sockets.push(
                queue
                    .stats_handle()
                    .context("duplicating the AF_XDP socket")?,
            );
            rx.push(queue);
        }
        let zero_copy = rx.iter().all(RxQueue::zero_copy);
        // Every socket is bound and in the XSKMAP before the program is
        // attached; frames that arrive before the workers start wait in the RX rings.
        let mode = program
            .attach(&cfg.interface, cfg.xdp_mode)
            .with_context(|| format!("source `{}`", cfg.name))?;
        // Only now is the XDP mode known, which decides how the fast path
        // counts; frames its sessions accepted until here went through
        // userspace (their plans serve them too) and were counted there.
        let source_ifindex = crate::kernel::ifindex(&cfg.interface)
            .with_context(|| format!("source `{}`", cfg.name))?;
        for (k, &s) in prepared.sessions.iter().enumerate() {
            if !prepared.paths[k].kernel {
                continue;
            }
            let devices: Vec<u32> = self
                .config
                .session_targets(s)
                .into_iter()
                .filter_map(|t| self.target_ifindex[t])
                .collect();
            program
                .set_fast_path(
                    k as u32,
                    source_ifindex,
                    &devices,
                    mode == AttachMode::Generic,
                )
                .with_context(|| {
                    format!(
                        "session `{}`: setting up the in-kernel fast path",
                        self.config.sessions[s].name
                    )
                })?;
        }
        let source = Arc::new(prepared.into_source(cfg, idx, mode.as_str(), sockets, zero_copy));
        for (q, queue) in rx.into_iter().enumerate() {
            let src = source.clone();
            let stop = self.stop_workers.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rx-{}-{q}", cfg.name))
                .spawn(move || worker(queue, &src, &stop))
                .context("spawning a worker thread")?;
            self.workers.push(handle);
        }
        tracing::info!(
            source = %cfg.name,
            interface = %cfg.interface,
            xdp_mode = mode.as_str(),
            queues,
            zero_copy = source.zero_copy,
            "source attached (tap mode: the feed port's frames are consumed)"
        );
        self.log_paths(&source);
        self.sources.push(source);
        Ok(())
    }

    /// Copy mode: the programs, then a reader thread on the ring buffer
    /// (records wait in the ring until it starts).
    fn start_copy(&mut self, idx: usize, mut prepared: Prepared) -> Result<()> {
        let cfg = &self.config.sources[idx];
        let ring = prepared
            .program
            .copies()
            .context("opening the ring buffer")?;
        prepared
            .program
            .set_wake_bytes(COPY_WAKE_BYTES.min(u64::from(cfg.ring_buffer) / 4))
            .context("setting the ring's wake-up threshold")?;
        let hooks = CopyHooks {
            ingress: cfg.ingress().then_some(cfg.ingress_hook),
            egress: cfg.egress(),
        };
        let attached = prepared
            .program
            .attach_copy(&cfg.interface, hooks, cfg.xdp_mode)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let attach_mode = match (attached, hooks.ingress) {
            (Some(m), _) => m.as_str(),
            (None, Some(IngressHook::Tc)) => "tcx",
            _ => "none",
        };
        let source = Arc::new(prepared.into_source(cfg, idx, attach_mode, Vec::new(), false));
        let (src, stop) = (source.clone(), self.stop_workers.clone());
        let handle = std::thread::Builder::new()
            .name(format!("copy-{}", cfg.name))
            .spawn(move || copy_reader(&ring, &src, &stop))
            .context("spawning the ring-buffer reader thread")?;
        self.workers.push(handle);
        tracing::info!(
            source = %cfg.name,
            interface = %cfg.interface,
            ingress = match hooks.ingress {
                None => "off",
                Some(IngressHook::Xdp) => "xdp",
                Some(IngressHook::Tc) => "tcx",
            },
            xdp_mode = source.attach_mode,
            egress = if hooks.egress { "tcx" } else { "off" },
            ring_buffer_bytes = cfg.ring_buffer,
            "source attached (copy mode: every frame passes on untouched)"
        );
        self.log_paths(&source);
        self.sources.push(source);
        Ok(())
    }

    fn log_paths(&self, source: &Source) {
        for (&s, path) in source.sessions.iter().zip(&source.paths) {
            let sess = &self.config.sessions[s];
            if path.kernel {
                tracing::info!(
                    session = %sess.name,
                    sample = sess.sample,
                    path = path.name(),
                    "session served in the kernel: XDP redirects each mirrored frame to its targets' DEVMAP (a broadcast for several), no userspace copy"
                );
            } else {
                tracing::info!(
                    session = %sess.name,
                    sample = sess.sample,
                    rate_limit_pps = sess.rate_limit_pps,
                    packet_length = sess.packet_length,
                    path = path.name(),
                    why = %path.reason,
                    "session served through userspace"
                );
            }
        }
    }

    /// A consistent-enough snapshot of every counter.
    pub fn stats(&self) -> Result<Stats> {
        let mut out = Stats::default();
        // Per target: what the kernel path sent it (all sources together).
        let mut fast = vec![FastTarget::default(); self.targets.len()];
        for src in &self.sources {
            let (by_dir, session_matched, session_sampled_out, session_kernel) = {
                let p = src
                    .program
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
                let c = p.counters_by_direction()?;
                let per_session = |f: &dyn Fn(u32) -> Result<u64, crate::kernel::LoaderError>| {
                    (0..src.sessions.len() as u32)
                        .map(|i| f(i).unwrap_or(0))
                        .collect::<Vec<u64>>()
                };
                let kernel: Vec<(u64, u64)> = (0..src.sessions.len() as u32)
                    .map(|i| p.session_kernel(i).unwrap_or_default())
                    .collect();
                (
                    c,
                    per_session(&|i| p.session_matched(i)),
                    per_session(&|i| p.session_sampled_out(i)),
                    kernel,
                )
            };
            // Read after the sessions' counts, so a target's kernel-path
            // `enqueued` never lags what its devices were handed.
            let generic = src.attach_mode == AttachMode::Generic.as_str();
            for (k, &s) in src.sessions.iter().enumerate() {
                if src.paths[k].kernel {
                    for t in self.config.session_targets(s) {
                        fast[t].enqueued += session_kernel[k].0;
                        fast[t].generic |= generic;
                        if !generic {
                            fast[t].bytes += session_kernel[k].1;
                        }
                    }
                }
            }
            let counters: [u64; COUNTERS] = std::array::from_fn(|i| by_dir[0][i] + by_dir[1][i]);
            let c = |k: C| counters[k.0 as usize];
            let no_metadata = src.no_metadata.load(Ordering::Relaxed);
            let rate_limited: u64 = src
                .plans
                .iter()
                .map(|p| p.rate_limited.load(Ordering::Relaxed))
                .sum();
            let (handed_over, kernel_drops): (u64, Vec<(&str, u64)>) = match src.mode {
                SourceMode::Tap => {
                    let (mut ring_full, mut no_buffer) = (0, 0);
                    for s in &src.sockets {
                        let d = s.drops();
                        ring_full += d.rx_ring_full;
                        no_buffer += d.rx_dropped;
                    }
                    // The kernel counts what it redirected; the socket what
                    // it then could not queue.
                    (
                        c(C::MIRROR_CNT_REDIRECTED)
                            .saturating_sub(ring_full)
                            .saturating_sub(no_buffer),
                        vec![
                            ("no_socket", c(C::MIRROR_CNT_DROP_NO_SOCKET)),
                            ("ring_full", ring_full),
                            ("no_buffer", no_buffer),
                        ],
                    )
                }
                SourceMode::Copy => (
                    c(C::MIRROR_CNT_COPIED),
                    vec![
                        ("ring_full", c(C::MIRROR_CNT_DROP_RING_FULL)),
                        ("copy_error", c(C::MIRROR_CNT_COPY_ERROR)),
                    ],
                ),
            };
            let mirrored = handed_over
                .saturating_sub(no_metadata)
                .saturating_sub(rate_limited)
                + session_kernel.iter().map(|k| k.0).sum::<u64>();
            let dropped = kernel_drops
                .into_iter()
                .chain([("no_metadata", no_metadata), ("rate_limited", rate_limited)])
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let directions = match src.mode {
                SourceMode::Tap => Default::default(),
                SourceMode::Copy => [("ingress", &by_dir[0]), ("egress", &by_dir[1])]
                    .into_iter()
                    .map(|(name, d)| {
                        let c = |k: C| d[k.0 as usize];
                        (
                            name.to_string(),
                            DirectionStats {
                                received: c(C::MIRROR_CNT_RECEIVED),
                                matched: c(C::MIRROR_CNT_MATCHED),
                                filtered: c(C::MIRROR_CNT_FILTERED),
                                sampled_out: c(C::MIRROR_CNT_SAMPLED_OUT),
                                copied: c(C::MIRROR_CNT_COPIED),
                                ring_full: c(C::MIRROR_CNT_DROP_RING_FULL),
                                copy_cut: c(C::MIRROR_CNT_COPY_CUT),
                            },
                        )
                    })
                    .collect(),
            };
            let parser = [
                ("non_ip", C::MIRROR_CNT_PARSE_NON_IP),
                ("truncated", C::MIRROR_CNT_PARSE_TRUNCATED),
                ("bad_header", C::MIRROR_CNT_PARSE_BAD_HEADER),
                ("ipv6_ext_limit", C::MIRROR_CNT_PARSE_EXT_LIMIT),
                ("vlan_limit", C::MIRROR_CNT_PARSE_VLAN_LIMIT),
                ("fragment", C::MIRROR_CNT_FRAGMENT),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), c(v)))
            .collect();
            out.sources.insert(
                src.name.clone(),
                SourceStats {
                    interface: src.interface.clone(),
                    mode: match src.mode {
                        SourceMode::Tap => "tap".into(),
                        SourceMode::Copy => "copy".into(),
                    },
                    xdp_mode: src.attach_mode.into(),
                    zero_copy: src.zero_copy,
                    queues: src.sockets.len() as u32,
                    received: c(C::MIRROR_CNT_RECEIVED),
                    matched: c(C::MIRROR_CNT_MATCHED),
                    filtered: c(C::MIRROR_CNT_FILTERED),
                    sampled_out: c(C::MIRROR_CNT_SAMPLED_OUT),
                    scheduled_out: 0,
                    mirrored,
                    dropped,
                    parser,
                    rules: src.rules.load(Ordering::Relaxed),
                    rule_sets_installed: src.rule_sets_installed.load(Ordering::Relaxed),
                    no_rule_set: c(C::MIRROR_CNT_NO_RULE_SET),
                    classify_scans: c(C::MIRROR_CNT_CLASSIFY_SCAN),
                    directions,
                },
            );
            for (k, &s) in src.sessions.iter().enumerate() {
                let sess = &self.config.sessions[s];
                out.sessions.insert(
                    sess.name.clone(),
                    SessionStats {
                        source: src.name.clone(),
                        path: src.paths[k].name().into(),
                        targets: sess
                            .targets
                            .iter()
                            .map(|&d| self.config.dest_name(d).to_string())
                            .collect(),
                        matched: session_matched[k],
                        mirrored: src.plans[k].mirrored.load(Ordering::Relaxed)
                            + session_kernel[k].0,
                        sampled_out: session_sampled_out[k],
                        rate_limited: src.plans[k].rate_limited.load(Ordering::Relaxed),
                        scheduled_out: 0,
                        schedule_window: None,
                    },
                );
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            let mut snap = t.snapshot();
            if let Some(ifindex) = self.target_ifindex[i].filter(|_| fast[i].enqueued > 0) {
                let mut dev = FastStats::default();
                for src in &self.sources {
                    let f = src
                        .program
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                        .fast_stats(ifindex)?;
                    dev.packets += f.packets;
                    dev.bytes += f.bytes;
                    dev.xmit_drops += f.xmit_drops;
                }
                add_fast_path(&mut snap, &fast[i], dev);
            }
            out.targets.insert(t.name.clone(), snap);
        }
        for g in &self.groups {
            out.groups.insert(g.name.clone(), g.snapshot());
        }
        Ok(out)
    }

    /// The config in force: the started one with live rule changes.
    pub fn live_config(&self) -> Result<Config> {
        Ok(self
            .live
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .clone())
    }

    /// Changes the rules in force: `change` edits a copy of the live config;
    /// then every source's new rule set is compiled (any error leaves the
    /// running rules untouched) and installed atomically per source
    /// ([`SourceProgram::install`]: each frame is classified by the old or the
    /// new set, whole, and none is lost). Updates are serialised. Returns the
    /// new rule count per source.
    pub fn update<F>(&self, change: F) -> Result<Vec<(String, usize)>>
    where
        F: FnOnce(&mut Config) -> Result<()>,
    {
        let mut live = self
            .live
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        let mut new = live.clone();
        change(&mut new)?;
        crate::filter::rules::check_reloadable(&self.config, &new)?;
        let mut sets = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            let set = source_rule_sets(&new, i)
                .with_context(|| format!("source `{}`: the new rules", src.name))?;
            sets.push(set);
        }
        for (i, (src, (ingress, egress))) in self.sources.iter().zip(&sets).enumerate() {
            let installed = src
                .program
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                .install(ingress, egress.as_ref());
            if let Err(e) = installed {
                // Put the sources already switched back on the running rules.
                for (j, s) in self.sources.iter().enumerate().take(i) {
                    let (old_in, old_out) = source_rule_sets(&live, j)?;
                    if let Ok(mut p) = s.program.lock() {
                        if let Err(e) = p.install(&old_in, old_out.as_ref()) {
                            tracing::error!(source = %s.name, error = %e, "restoring the previous rules failed");
                        }
                    }
                }
                return Err(e)
                    .with_context(|| format!("source `{}`: installing the new rules", src.name));
            }
            src.rules
                .store(rule_count(ingress, egress), Ordering::Relaxed);
            src.rule_sets_installed.fetch_add(1, Ordering::Relaxed);
        }
        *live = new;
        Ok(self
            .sources
            .iter()
            .zip(&sets)
            .map(|(s, (i, e))| (s.name.clone(), rule_count(i, e) as usize))
            .collect())
    }

    /// Detaches every program, then stops the workers and lets the targets
    /// send what they hold (bounded), then stops them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for s in &self.sources {
            if let Ok(mut p) = s.program.lock() {
                p.detach();
            }
        }
        self.stop_workers.store(true, Ordering::Relaxed);
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        self.stop_senders.store(true, Ordering::Relaxed);
        for t in &self.targets {
            t.notify();
        }
        for h in self.senders.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the in-kernel fast path sent one target, from its sessions' counts.
#[derive(Debug, Clone, Copy, Default)]
struct FastTarget {
    /// Copies the sessions sent to it.
    enqueued: u64,
    /// Their bytes (sources in native XDP mode; generic mode counts per device).
    bytes: u64,
    generic: bool,
}

/// Adds what the in-kernel fast path did for a target to its userspace
/// counters: `enqueued` copies the sessions sent it, of which the kernel
/// handed `dev.packets` to the device (a destination it skips, the frame
/// being over the device's MTU or the device down, counts `too_big`), and
/// the device refused `dev.xmit_drops` (`send_error`). `sent_bytes` are the
/// bytes handed to the device (generic XDP) or, in native mode, where no
/// program runs per destination, the bytes of every copy sent to it.
fn add_fast_path(snap: &mut TargetStats, t: &FastTarget, dev: FastStats) {
    let sent = dev.packets.saturating_sub(dev.xmit_drops);
    snap.enqueued += t.enqueued;
    snap.sent_packets += sent;
    snap.sent_bytes += if t.generic { dev.bytes } else { t.bytes };
    snap.kernel_path += sent;
    *snap.dropped.entry("send_error".into()).or_default() += dev.xmit_drops;
    *snap.dropped.entry("too_big".into()).or_default() += t.enqueued.saturating_sub(dev.packets);
}

/// The path that serves a session, and why it is not the kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChoice {
    /// The in-kernel fast path (DEVMAP redirect or broadcast), else AF_XDP through userspace.
    pub kernel: bool,
    /// Why userspace serves it (empty on the kernel path).
    pub reason: String,
}

impl PathChoice {
    /// As `mirror stats` and the log name it.
    pub fn name(&self) -> &'static str {
        if self.kernel {
            "kernel"
        } else {
            "af_xdp"
        }
    }
}

/// Picks each session's path (`Config::sessions` order): the in-kernel fast
/// path when the config allows it ([`Config::kernel_path_obstacle`]) and
/// every target device accepts frames redirected from XDP
/// (`NETDEV_XDP_ACT_NDO_XMIT`); `path = "kernel"` makes a refusal an error.
fn plan_paths(config: &Config, target_ifindex: &[Option<u32>]) -> Result<Vec<PathChoice>> {
    let mut out = Vec::new();
    for (i, sess) in config.sessions.iter().enumerate() {
        let userspace = |reason: String| PathChoice {
            kernel: false,
            reason,
        };
        let choice = match sess.path {
            SessionPath::Userspace => userspace("path = \"userspace\"".into()),
            SessionPath::Auto | SessionPath::Kernel => {
                match config
                    .kernel_path_obstacle(i)
                    .or_else(|| devices_refusing_redirects(config, i, target_ifindex))
                {
                    None => PathChoice {
                        kernel: true,
                        reason: String::new(),
                    },
                    Some(why) if sess.path == SessionPath::Kernel => bail!(
                        "session `{}`: path = \"kernel\", but the in-kernel fast path cannot serve it: {why}",
                        sess.name
                    ),
                    Some(why) => userspace(why),
                }
            }
        };
        out.push(choice);
    }
    Ok(out)
}

/// The first of session `i`'s interface targets whose device cannot take
/// frames redirected by XDP, as a reason, or `None`.
fn devices_refusing_redirects(
    config: &Config,
    i: usize,
    target_ifindex: &[Option<u32>],
) -> Option<String> {
    for t in config.session_targets(i) {
        let TargetSpec::Interface { interface, .. } = &config.targets[t].spec else {
            continue;
        };
        let Some(ifindex) = target_ifindex[t] else {
            return Some(format!(
                "interface {interface} (target `{}`) does not exist",
                config.targets[t].name
            ));
        };
        match crate::kernel::xdp_features(ifindex) {
            Ok(f) if f & crate::kernel::query::XDP_ACT_NDO_XMIT != 0 => {}
            Ok(_) => {
                return Some(format!(
                    "interface {interface} (target `{}`) does not accept frames redirected by XDP \
                     (its driver lacks ndo_xdp_xmit; a veth needs an XDP program or GRO on its peer)",
                    config.targets[t].name
                ))
            }
            Err(e) => {
                return Some(format!(
                    "cannot query the XDP features of {interface} (target `{}`): {e}",
                    config.targets[t].name
                ))
            }
        }
    }
    None
}

/// Which tap source (if any) shares its first RX queue's UMEM with each
/// target: every tap source that may share picks the first interface target
/// its sessions reach that no other source took. A socket has one UMEM, so
/// a target shares with one source; other sources copy into its queue as
/// before. `share_umem = "auto"` shares only between devices that both do
/// AF_XDP zero-copy (see [`ShareUmem::Auto`]), and says so when it does not.
fn share_plan(config: &Config) -> Vec<Option<usize>> {
    let mut plan = vec![None; config.targets.len()];
    for (s, src) in config.sources.iter().enumerate() {
        if src.mode != SourceMode::Tap || src.share_umem == ShareUmem::Off {
            continue;
        }
        let pick = config
            .sessions_of(s)
            .into_iter()
            .flat_map(|k| config.session_targets(k))
            .find(|&t| {
                plan[t].is_none() && matches!(config.targets[t].spec, TargetSpec::Interface { .. })
            });
        let Some(t) = pick else { continue };
        if src.share_umem == ShareUmem::Auto {
            let TargetSpec::Interface {
                interface,
                zero_copy,
            } = &config.targets[t].spec
            else {
                continue;
            };
            let zc =
                |setting: ZeroCopy, dev: &str| setting != ZeroCopy::Off && zero_copy_capable(dev);
            if !zc(src.zero_copy, &src.interface) || !zc(*zero_copy, interface) {
                tracing::info!(
                    source = %src.name,
                    target = %config.targets[t].name,
                    "not sharing the target's UMEM (share_umem = \"auto\"): AF_XDP zero-copy \
                     is not available on both devices, and in copy mode the kernel copies every \
                     frame anyway; set share_umem = true to share regardless"
                );
                continue;
            }
        }
        plan[t] = Some(s);
    }
    plan
}

/// Whether `interface`'s driver reports AF_XDP zero-copy.
fn zero_copy_capable(interface: &str) -> bool {
    crate::kernel::ifindex(interface)
        .ok()
        .and_then(|i| crate::kernel::xdp_features(i).ok())
        .is_some_and(|f| f & crate::kernel::query::XDP_ACT_XSK_ZEROCOPY != 0)
}

/// Binds RX queue `q` of a tap source to `host`'s UMEM, or says why not (the
/// caller then opens a queue with a UMEM of its own).
fn join_host(cfg: &crate::config::Source, q: u32, host: &UmemHost) -> Option<RxQueue> {
    let wanted = match cfg.zero_copy {
        ZeroCopy::Auto => true,
        ZeroCopy::On => host.zero_copy(),
        ZeroCopy::Off => !host.zero_copy(),
    };
    if !wanted {
        tracing::info!(
            source = %cfg.name,
            target = %host.target,
            "not sharing the target's UMEM: its zero-copy mode differs from the source's zero_copy setting"
        );
        return None;
    }
    match RxQueue::join(&cfg.interface, q, host, cfg.ring_size) {
        Ok(queue) => {
            tracing::info!(
                source = %cfg.name,
                queue = q,
                target = %host.target,
                "RX queue shares the interface target's UMEM: its frames go out without a copy"
            );
            Some(queue)
        }
        Err(e) => {
            tracing::info!(
                source = %cfg.name,
                target = %host.target,
                error = %e,
                "cannot share the target's UMEM; copying into it instead"
            );
            None
        }
    }
}

/// The sessions that got frames since their targets were last woken: a
/// reader offers a batch, then wakes each touched session's targets once.
struct Touched {
    hit: Vec<bool>,
    /// Frames marked since the last wake-up.
    pending: u32,
}

impl Touched {
    fn new(sessions: usize) -> Touched {
        Touched {
            hit: vec![false; sessions],
            pending: 0,
        }
    }

    fn mark(&mut self, session: usize) {
        self.hit[session] = true;
        self.pending += 1;
    }

    fn wake(&mut self, plans: &[SessionPlan]) {
        for (s, hit) in self.hit.iter_mut().enumerate() {
            if std::mem::take(hit) {
                plans[s].queues.iter().for_each(|t| t.notify());
            }
        }
        self.pending = 0;
    }
}

fn worker(mut q: RxQueue, src: &Source, stop: &AtomicBool) {
    let plans = &src.plans;
    let single = plans.len() == 1;
    let mut touched = Touched::new(plans.len());
    let tai_offset = tai_offset_ns();
    while !stop.load(Ordering::Relaxed) {
        let n = q.receive(RX_BATCH, |meta, data, loan| {
            let (session, hash, tstamp_ns) = match read_meta(meta) {
                Some(m) if (m.session as usize) < plans.len() => (
                    m.session as usize,
                    m.hash,
                    m.tstamp.wrapping_sub(tai_offset),
                ),
                _ if single => (0, 0, realtime_ns()),
                _ => {
                    src.no_metadata.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            plans[session].dispatch(
                Frame {
                    data,
                    orig_len: data.len() as u32,
                    hash,
                    tstamp_ns,
                    vni: 0,
                    source: src.index,
                    egress: false,
                },
                Some(loan),
            );
            touched.mark(session);
        });
        if n == 0 {
            q.wait(IDLE_POLL_MS);
            continue;
        }
        touched.wake(plans);
    }
}

/// Copy mode: reads the source's ring buffer and feeds every record to its
/// session, waking the targets every [`COPY_BATCH`] records and whenever the
/// ring is empty. The kernel wakes it only when the ring fills past
/// [`COPY_WAKE_BYTES`]; otherwise it reads every [`COPY_POLL`] (batches of
/// records per wake-up instead of one wake-up per record).
fn copy_reader(ring: &MapHandle, src: &Source, stop: &AtomicBool) {
    let plans = &src.plans;
    let touched = RefCell::new(Touched::new(plans.len()));
    let tai_offset = tai_offset_ns();
    let on_record = |bytes: &[u8]| -> i32 {
        let rec = match Record::parse(bytes) {
            Some(r) if (r.session as usize) < plans.len() => r,
            _ => {
                src.no_metadata.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
        };
        plans[rec.session as usize].dispatch(
            Frame {
                data: rec.data,
                orig_len: rec.orig_len,
                hash: rec.hash,
                tstamp_ns: rec.tstamp_tai.wrapping_sub(tai_offset),
                vni: 0,
                source: src.index,
                egress: rec.egress,
            },
            None,
        );
        let mut t = touched.borrow_mut();
        t.mark(rec.session as usize);
        if t.pending >= COPY_BATCH {
            t.wake(plans);
        }
        0
    };
    let mut builder = RingBufferBuilder::new();
    let built = match builder.add(ring, on_record) {
        Ok(_) => builder.build(),
        Err(e) => Err(e),
    };
    let ring = match built {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(source = %src.name, error = %e, "cannot read the ring buffer; copies are lost (counted as ring_full by the kernel once it fills)");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        // Woken early when the ring fills past the threshold; then read
        // whatever is there, woken or not.
        let polled = ring.poll(COPY_POLL).and_then(|()| ring.consume());
        if let Err(e) = polled {
            if e.kind() != libbpf_rs::ErrorKind::Interrupted {
                tracing::warn!(source = %src.name, error = %e, "reading the ring buffer");
                std::thread::sleep(Duration::from_millis(IDLE_POLL_MS as u64));
            }
        }
        touched.borrow_mut().wake(plans);
    }
    // The programs are detached: hand on what is still in the ring.
    let _ = ring.consume();
    touched.borrow_mut().wake(plans);
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // Safety: timespec is plain old data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // Safety: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Now, nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// CLOCK_TAI minus CLOCK_REALTIME (the leap seconds, 0 when NTP never set
/// them), to turn the kernel's `bpf_ktime_get_tai_ns()` into Unix time.
pub fn tai_offset_ns() -> u64 {
    let tai = clock_ns(libc::CLOCK_TAI);
    let real = clock_ns(libc::CLOCK_REALTIME);
    // Round to whole seconds: the offset is an integer number of them.
    (tai.saturating_sub(real) + 500_000_000) / 1_000_000_000 * 1_000_000_000
}
