//! The running daemon's data plane: for each source a loaded XDP program and
//! one AF_XDP RX socket and worker thread per RX queue; for each target a
//! bounded queue and a sender thread.
//!
//! ```text
//!  feed port ──XDP (classify)──▶ XSKMAP[rxq] ──▶ RX ring ──▶ worker ──▶ target queue ──▶ sender ──▶ target
//!                  │ no match: XDP_DROP (tap mode), counted
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use mirror_ebpf::mirror::types::mirror_counter as C;

use crate::config::{Config, Direction, SourceMode, TargetSpec};
use crate::loader::{AttachMode, SourceProgram};
use crate::netdev;
use crate::ruleset::{self, RuleSet};
use crate::stats::{SessionStats, SourceStats, Stats};
use crate::target::{interface, TargetQueue};
use crate::xsk::{RxQueue, StatsHandle};

/// Frames read from an RX ring per round.
const RX_BATCH: u32 = 64;
/// How long an idle worker sleeps in poll() before checking for shutdown.
const IDLE_POLL_MS: i32 = 100;

struct Source {
    name: String,
    interface: String,
    program: Mutex<SourceProgram>,
    /// Kernel session index -> index into `Config::sessions`.
    sessions: Vec<usize>,
    sockets: Vec<StatsHandle>,
    no_metadata: AtomicU64,
    /// Per kernel session index: frames handed to the session's targets.
    session_mirrored: Vec<AtomicU64>,
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
    targets: Vec<Arc<TargetQueue>>,
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
            stop_workers: Arc::new(AtomicBool::new(false)),
            stop_senders: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            senders: Vec::new(),
        };
        for t in &engine.config.targets {
            match &t.spec {
                TargetSpec::Interface {
                    interface,
                    zero_copy,
                } => {
                    let (started, handle) =
                        interface::start(&t.name, interface, *zero_copy, t.queue_size, engine.stop_senders.clone())
                            .with_context(|| {
                                format!("target `{}`: opening AF_XDP TX on {interface} (does it exist and is it up?)", t.name)
                            })?;
                    tracing::info!(
                        target = %t.name,
                        interface = %interface,
                        zero_copy = started.zero_copy,
                        "interface target ready"
                    );
                    engine.targets.push(started.queue);
                    engine.senders.push(handle);
                }
            }
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

        // Targets of each session, by kernel session index.
        let per_session: Vec<Vec<Arc<TargetQueue>>> = sessions
            .iter()
            .map(|&s| {
                self.config.sessions[s]
                    .targets
                    .iter()
                    .map(|&t| self.targets[t].clone())
                    .collect()
            })
            .collect();
        // Every socket is bound and in the XSKMAP before the program is
        // attached; frames that arrive before the workers start wait in the RX rings.
        let mode = program
            .attach(&cfg.interface, cfg.xdp_mode)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let source = Arc::new(Source {
            name: cfg.name.clone(),
            interface: cfg.interface.clone(),
            program: Mutex::new(program),
            session_mirrored: sessions.iter().map(|_| AtomicU64::new(0)).collect(),
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
            let targets = per_session.clone();
            let stop = self.stop_workers.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rx-{}-{q}", cfg.name))
                .spawn(move || worker(queue, &src, &targets, &stop))
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
            let (counters, session_matched) = {
                let p = src
                    .program
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
                let c = p.counters()?;
                let m: Vec<u64> = (0..src.sessions.len())
                    .map(|i| p.session_matched(i as u32).unwrap_or(0))
                    .collect();
                (c, m)
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
            let mirrored = c(C::MIRROR_CNT_REDIRECTED)
                .saturating_sub(ring_full)
                .saturating_sub(no_buffer)
                .saturating_sub(no_metadata);
            let dropped = [
                ("no_socket", no_socket),
                ("ring_full", ring_full),
                ("no_buffer", no_buffer),
                ("no_metadata", no_metadata),
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
                    sampled_out: 0,
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
                            .map(|&t| self.config.targets[t].name.clone())
                            .collect(),
                        matched: session_matched[k],
                        mirrored: src.session_mirrored[k].load(Ordering::Relaxed),
                        scheduled_out: 0,
                        schedule_window: None,
                    },
                );
            }
        }
        for t in &self.targets {
            out.targets.insert(t.name.clone(), t.snapshot());
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

fn worker(mut q: RxQueue, src: &Source, targets: &[Vec<Arc<TargetQueue>>], stop: &AtomicBool) {
    let magic = mirror_ebpf::limits::META_MAGIC;
    let single = targets.len() == 1;
    let mut touched = vec![false; targets.len()];
    while !stop.load(Ordering::Relaxed) {
        let n = q.receive(RX_BATCH, |meta, data| {
            let session = match read_meta(meta, magic) {
                Some(s) if (s as usize) < targets.len() => s as usize,
                _ if single => 0,
                _ => {
                    src.no_metadata.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            for t in &targets[session] {
                t.offer(data);
            }
            src.session_mirrored[session].fetch_add(1, Ordering::Relaxed);
            touched[session] = true;
        });
        if n == 0 {
            q.wait(IDLE_POLL_MS);
            continue;
        }
        for (s, hit) in touched.iter_mut().enumerate() {
            if std::mem::take(hit) {
                targets[s].iter().for_each(|t| t.notify());
            }
        }
    }
}

/// Reads (and clears) `struct mirror_meta` from the bytes in front of a frame.
fn read_meta(meta: &mut [u8], magic: u16) -> Option<u16> {
    let len = meta.len();
    let m = meta.get_mut(len.checked_sub(4)?..)?;
    if u16::from_ne_bytes([m[0], m[1]]) != magic {
        return None;
    }
    m[0] = 0;
    m[1] = 0;
    Some(u16::from_ne_bytes([m[2], m[3]]))
}
