//! The running daemon's data plane: for each source a loaded XDP program and
//! one AF_XDP RX socket and worker thread per RX queue; for each target a
//! bounded queue and a sender thread (AF_XDP TX, tunnel socket, or pcapng writer).
//!
//! ```text
//!  feed port ──XDP (classify, sample)──▶ XSKMAP[rxq] ──▶ RX ring ──▶ worker ──▶ session plan ──▶ target queues ──▶ senders
//!                  │ no match / sampled out: XDP_DROP (tap mode), counted           (truncate, rate limit, group pick)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use mirror_ebpf::mirror::types::mirror_counter as C;

use crate::config::{Config, Direction, SourceMode, TargetSpec};
use crate::loader::{read_meta, AttachMode, SourceProgram};
use crate::netdev;
use crate::ruleset::{self, RuleSet};
use crate::session::SessionPlan;
use crate::stats::{SessionStats, SourceStats, Stats};
use crate::target::group::TargetGroup;
use crate::target::{interface, pcapng, tunnel, Frame, TargetQueue};
use crate::xsk::{RxQueue, StatsHandle};

/// Frames read from an RX ring per round.
const RX_BATCH: u32 = 64;
/// How long an idle worker sleeps in poll() before checking for shutdown.
const IDLE_POLL_MS: i32 = 100;

struct Source {
    name: String,
    /// Index in `Config::sources` (the pcapng interface id).
    index: u16,
    interface: String,
    program: Mutex<SourceProgram>,
    /// Kernel session index -> index into `Config::sessions`.
    sessions: Vec<usize>,
    /// Per kernel session index: what the workers do with its frames.
    plans: Vec<SessionPlan>,
    sockets: Vec<StatsHandle>,
    no_metadata: AtomicU64,
    attach_mode: AttachMode,
    zero_copy: bool,
    /// Rules in force (ingress) and how many rule sets were installed.
    rules: AtomicU64,
    rule_sets_installed: AtomicU64,
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
    stop_workers: Arc<AtomicBool>,
    stop_senders: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Opens every target, loads and attaches every source.
    pub fn start(config: Config) -> Result<Engine> {
        let sources = config.sources.len();
        let mut engine = Engine {
            live: Mutex::new(config.clone()),
            config,
            sources: Vec::new(),
            targets: Vec::new(),
            groups: Vec::new(),
            stop_workers: Arc::new(AtomicBool::new(false)),
            stop_senders: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            senders: Vec::new(),
        };
        for t in &engine.config.targets {
            let stop = engine.stop_senders.clone();
            let (queue, handle) = match &t.spec {
                TargetSpec::Interface {
                    interface,
                    zero_copy,
                } => {
                    let (started, handle) =
                        interface::start(&t.name, interface, *zero_copy, t.queue_size, stop)
                            .with_context(|| {
                                format!("target `{}`: opening AF_XDP TX on {interface} (does it exist and is it up?)", t.name)
                            })?;
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
        for i in 0..sources {
            engine.start_source(i)?;
        }
        Ok(engine)
    }

    fn start_source(&mut self, idx: usize) -> Result<()> {
        let cfg = &self.config.sources[idx];
        if cfg.mode != SourceMode::Tap {
            bail!(
                "source `{}`: mode = \"copy\" is not supported yet by this version of mirror",
                cfg.name
            );
        }
        let sessions = self.config.sessions_of(idx);
        let set = RuleSet::build(
            &ruleset::source_filters(&self.config, idx),
            Direction::Ingress,
        )
        .with_context(|| format!("source `{}`: compiling the rules", cfg.name))?;
        let mut program = SourceProgram::load()
            .with_context(|| format!("source `{}`: loading the XDP program", cfg.name))?;
        program
            .install(&set, None)
            .with_context(|| format!("source `{}`: installing the rules", cfg.name))?;
        tracing::info!(
            source = %cfg.name,
            rules = set.rules,
            classes = set.bitmaps.len(),
            kib = set.memory_bytes() / 1024,
            "rule set installed"
        );
        let queues = match netdev::rx_queues(&cfg.interface) {
            Some(n) => n,
            None => {
                crate::loader::ifindex(&cfg.interface)
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
        let mut sockets = Vec::new();
        for q in 0..queues {
            let queue = RxQueue::open(
                &cfg.interface,
                q,
                cfg.umem_frames,
                cfg.ring_size,
                cfg.zero_copy,
            )
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

        let plans: Vec<SessionPlan> = sessions
            .iter()
            .map(|&s| SessionPlan::new(&self.config, s, &self.targets, &self.groups))
            .collect();
        for (k, &s) in sessions.iter().enumerate() {
            program
                .set_sampling(k as u32, self.config.sessions[s].sample)
                .with_context(|| format!("source `{}`: setting the sampling", cfg.name))?;
        }
        // Every socket is bound and in the XSKMAP before the program is
        // attached; frames that arrive before the workers start wait in the RX rings.
        let mode = program
            .attach(&cfg.interface, cfg.xdp_mode)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let source = Arc::new(Source {
            name: cfg.name.clone(),
            index: idx as u16,
            interface: cfg.interface.clone(),
            program: Mutex::new(program),
            plans,
            sessions,
            sockets,
            no_metadata: AtomicU64::new(0),
            attach_mode: mode,
            rules: AtomicU64::new(set.rules as u64),
            rule_sets_installed: AtomicU64::new(1),
            zero_copy,
        });
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
            zero_copy,
            rules = set.rules,
            "source attached (tap mode)"
        );
        for &s in &source.sessions {
            let sess = &self.config.sessions[s];
            tracing::info!(
                session = %sess.name,
                sample = sess.sample,
                rate_limit_pps = sess.rate_limit_pps,
                packet_length = sess.packet_length,
                path = "af_xdp",
                "session served through AF_XDP and userspace workers \
                 (the in-kernel fast path is not available in this version)"
            );
        }
        self.sources.push(source);
        Ok(())
    }

    /// A consistent-enough snapshot of every counter.
    pub fn stats(&self) -> Result<Stats> {
        let mut out = Stats::default();
        for src in &self.sources {
            let (counters, session_matched, session_sampled_out) = {
                let p = src
                    .program
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
                let c = p.counters()?;
                let m: Vec<u64> = (0..src.sessions.len())
                    .map(|i| p.session_matched(i as u32).unwrap_or(0))
                    .collect();
                let so: Vec<u64> = (0..src.sessions.len())
                    .map(|i| p.session_sampled_out(i as u32).unwrap_or(0))
                    .collect();
                (c, m, so)
            };
            let c = |k: C| counters[k.0 as usize];
            let (mut ring_full, mut no_buffer) = (0, 0);
            for s in &src.sockets {
                let d = s.drops();
                ring_full += d.rx_ring_full;
                no_buffer += d.rx_dropped;
            }
            let no_metadata = src.no_metadata.load(Ordering::Relaxed);
            let no_socket = c(C::MIRROR_CNT_DROP_NO_SOCKET);
            let rate_limited: u64 = src
                .plans
                .iter()
                .map(|p| p.rate_limited.load(Ordering::Relaxed))
                .sum();
            let mirrored = c(C::MIRROR_CNT_REDIRECTED)
                .saturating_sub(ring_full)
                .saturating_sub(no_buffer)
                .saturating_sub(no_metadata)
                .saturating_sub(rate_limited);
            let dropped = [
                ("no_socket", no_socket),
                ("ring_full", ring_full),
                ("no_buffer", no_buffer),
                ("no_metadata", no_metadata),
                ("rate_limited", rate_limited),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
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
                    mode: "tap".into(),
                    xdp_mode: src.attach_mode.as_str().into(),
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
                },
            );
            for (k, &s) in src.sessions.iter().enumerate() {
                let sess = &self.config.sessions[s];
                out.sessions.insert(
                    sess.name.clone(),
                    SessionStats {
                        source: src.name.clone(),
                        path: "af_xdp".into(),
                        targets: sess
                            .targets
                            .iter()
                            .map(|&d| self.config.dest_name(d).to_string())
                            .collect(),
                        matched: session_matched[k],
                        mirrored: src.plans[k].mirrored.load(Ordering::Relaxed),
                        sampled_out: session_sampled_out[k],
                        rate_limited: src.plans[k].rate_limited.load(Ordering::Relaxed),
                        scheduled_out: 0,
                        schedule_window: None,
                    },
                );
            }
        }
        for t in &self.targets {
            out.targets.insert(t.name.clone(), t.snapshot());
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
        crate::rules::check_reloadable(&self.config, &new)?;
        let mut sets = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            let set = RuleSet::build(&ruleset::source_filters(&new, i), Direction::Ingress)
                .with_context(|| format!("source `{}`: the new rules", src.name))?;
            sets.push(set);
        }
        for (i, (src, set)) in self.sources.iter().zip(&sets).enumerate() {
            let installed = src
                .program
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                .install(set, None);
            if let Err(e) = installed {
                // Put the sources already switched back on the running rules.
                for (j, s) in self.sources.iter().enumerate().take(i) {
                    let old =
                        RuleSet::build(&ruleset::source_filters(&live, j), Direction::Ingress)?;
                    if let Ok(mut p) = s.program.lock() {
                        if let Err(e) = p.install(&old, None) {
                            tracing::error!(source = %s.name, error = %e, "restoring the previous rules failed");
                        }
                    }
                }
                return Err(e)
                    .with_context(|| format!("source `{}`: installing the new rules", src.name));
            }
            src.rules.store(set.rules as u64, Ordering::Relaxed);
            src.rule_sets_installed.fetch_add(1, Ordering::Relaxed);
        }
        *live = new;
        Ok(self
            .sources
            .iter()
            .zip(&sets)
            .map(|(s, set)| (s.name.clone(), set.rules))
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

fn worker(mut q: RxQueue, src: &Source, stop: &AtomicBool) {
    let plans = &src.plans;
    let single = plans.len() == 1;
    let mut touched = vec![false; plans.len()];
    let tai_offset = tai_offset_ns();
    while !stop.load(Ordering::Relaxed) {
        let n = q.receive(RX_BATCH, |meta, data| {
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
            plans[session].dispatch(Frame {
                data,
                orig_len: data.len() as u32,
                hash,
                tstamp_ns,
                vni: 0,
                source: src.index,
                egress: false,
            });
            touched[session] = true;
        });
        if n == 0 {
            q.wait(IDLE_POLL_MS);
            continue;
        }
        for (s, hit) in touched.iter_mut().enumerate() {
            if std::mem::take(hit) {
                plans[s].queues.iter().for_each(|t| t.notify());
            }
        }
    }
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
