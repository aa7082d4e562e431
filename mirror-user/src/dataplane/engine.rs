//! Starting and stopping the data plane, and swapping its rules live: every
//! target opened, every source's programs loaded, filled and attached, the
//! threads started; [`Engine::update`] installs new rule sets atomically.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use super::plan::{join_host, plan_paths, resolve_hops, share_plan, Hops, PathChoice};
use super::schedule::{Entry, Scheduler};
use super::session::SessionPlan;
use super::source::{rule_count, source_rule_sets, Prepared, Source};
use super::worker::{copy_reader, worker, COPY_WAKE_BYTES};
use crate::config::{Config, IngressHook, SourceMode, TargetSpec};
use crate::kernel::fast_path::max_len;
use crate::kernel::netdev;
use crate::kernel::xsk::{RxQueue, StatsHandle, UmemHost};
use crate::kernel::{AttachMode, CopyHooks, FastDest, FastSession, SourceProgram};
use crate::target::group::TargetGroup;
use crate::target::interface::ShareWith;
use crate::target::{interface, kernel_tunnel, pcapng, tunnel, TargetQueue};

/// A kernel tunnel set up by `set_fast_paths` (tap mode) or `clones::set_up`
/// (copy mode), before its source exists.
pub(super) struct PendingTunnel {
    pub session: u32,
    pub key: u32,
    pub target: usize,
    pub hop: crate::kernel::route::NextHop,
    pub headers: crate::kernel::TunnelHeaders,
    pub tai_offset: u64,
}

/// A source's ingress and (copy mode) egress rule sets.
type SourceSets = (
    crate::filter::ruleset::RuleSet,
    Option<crate::filter::ruleset::RuleSet>,
);

/// An edit of the live config (a rule added or deleted, a reloaded file).
type RuleChange = Box<dyn FnOnce(&mut Config) -> Result<()> + Send>;

/// A rule change waiting in [`Engine::update`]'s group, and where its
/// outcome goes.
struct PendingChange {
    change: RuleChange,
    reply: std::sync::mpsc::Sender<Result<Vec<(String, usize)>>>,
}

/// A running data plane. Dropping it (or [`Engine::shutdown`]) detaches every
/// program and stops every thread.
pub struct Engine {
    /// The config the engine started with; sources, targets and sessions
    /// never change while it runs.
    pub(super) config: Config,
    /// The config whose filters are in force: `config` with live rule
    /// changes and reloaded filters. Its lock also serialises updates.
    pub(super) live: Mutex<Config>,
    /// Rule changes waiting for the next install (see [`Engine::update`]).
    pending: Mutex<Vec<PendingChange>>,
    pub(super) sources: Vec<Arc<Source>>,
    /// Started targets, by index in `Config::targets`.
    pub(super) targets: Vec<Arc<TargetQueue>>,
    pub(super) groups: Vec<Arc<TargetGroup>>,
    /// Per session (index in `Config::sessions`): the path chosen at start.
    pub(super) paths: Vec<PathChoice>,
    /// Per target: its device's ifindex, for interface targets.
    pub(super) target_ifindex: Vec<Option<u32>>,
    /// Per target: a tunnel's next hop as resolved at start (see `plan`).
    pub(super) target_hops: Hops,
    /// Tunnel targets of kernel-path sessions, until the keeper thread
    /// takes them (`tunnels::keep`).
    kernel_tunnels: Vec<super::tunnels::KernelTunnel>,
    /// Target groups of kernel-path sessions, likewise.
    kernel_groups: Vec<super::tunnels::KernelGroup>,
    /// Interface targets of kernel-path sessions, likewise.
    kernel_dests: Vec<super::tunnels::KernelDest>,
    /// Per target: every device an interface target has sent through on the
    /// kernel path (more than one when its port was created again).
    pub(super) target_devices: Arc<Mutex<Vec<Vec<u32>>>>,
    /// Destinations of kernel-path copy sessions, until the thread that
    /// watches their devices takes them (`clones::watch`).
    clone_watch: Vec<super::clones::Watched>,
    pub(super) stop_workers: Arc<AtomicBool>,
    pub(super) stop_senders: Arc<AtomicBool>,
    /// Set once the whole start-up succeeded: until then no target touches
    /// a file (pcapng opens, rotates and deletes nothing).
    pub(super) started: Arc<AtomicBool>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) senders: Vec<JoinHandle<()>>,
    /// Per session: the schedule position its policy was set for at start.
    started_at: Vec<Option<crate::config::schedule::Position>>,
    /// Switches scheduled sessions at their window edges.
    pub(super) scheduler: Arc<Scheduler>,
}

impl Engine {
    /// Opens every target, loads and attaches every source.
    pub fn start(config: Config) -> Result<Engine> {
        if let Some(t) = super::clock::init_from_env().map_err(anyhow::Error::msg)? {
            tracing::warn!(now = %t, "running on a fake clock ({}): the schedule goes by it, and the control request set_time moves it", super::clock::FAKE_NOW_ENV);
        }
        let sources = config.sources.len();
        let target_ifindex = config
            .targets
            .iter()
            .map(|t| match &t.spec {
                TargetSpec::Interface { interface, .. } => crate::kernel::ifindex(interface).ok(),
                _ => None,
            })
            .collect::<Vec<_>>();
        let target_hops = resolve_hops(&config);
        let paths = plan_paths(&config, &target_ifindex, &target_hops)?;
        let target_devices: Arc<Mutex<Vec<Vec<u32>>>> = Arc::new(Mutex::new(
            target_ifindex
                .iter()
                .map(|i| i.iter().copied().collect::<Vec<u32>>())
                .collect(),
        ));
        let mut engine = Engine {
            live: Mutex::new(config.clone()),
            pending: Mutex::new(Vec::new()),
            config,
            sources: Vec::new(),
            targets: Vec::new(),
            groups: Vec::new(),
            paths,
            target_ifindex,
            target_hops,
            kernel_tunnels: Vec::new(),
            kernel_groups: Vec::new(),
            kernel_dests: Vec::new(),
            target_devices,
            clone_watch: Vec::new(),
            stop_workers: Arc::new(AtomicBool::new(false)),
            stop_senders: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            senders: Vec::new(),
            started_at: Vec::new(),
            scheduler: Arc::new(Scheduler::new(&[], Vec::new(), Vec::new())),
        };
        engine.started_at = vec![None; engine.config.sessions.len()];
        let share = share_plan(&engine.config);
        let mut hosts: Vec<Option<UmemHost>> = (0..sources).map(|_| None).collect();
        for (ti, &shared_by) in share.iter().enumerate() {
            let host = engine.open_target(ti, shared_by)?;
            if let (Some(s), Some(host)) = (shared_by, host) {
                hosts[s] = Some(host);
            }
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
        let tunnels = std::mem::take(&mut engine.kernel_tunnels);
        let groups = std::mem::take(&mut engine.kernel_groups);
        let dests = std::mem::take(&mut engine.kernel_dests);
        if !tunnels.is_empty() || !groups.is_empty() || !dests.is_empty() {
            let stop = engine.stop_senders.clone();
            let handle = crate::privileges::spawn(
                std::thread::Builder::new().name("kernel-path".into()),
                move || super::tunnels::keep(tunnels, groups, dests, &stop),
            )
            .context("spawning the kernel path's next-hop and group thread")?;
            engine.senders.push(handle);
        }
        let watched = std::mem::take(&mut engine.clone_watch);
        if !watched.is_empty() {
            let stop = engine.stop_workers.clone();
            let handle = crate::privileges::spawn(
                std::thread::Builder::new().name("clone-links".into()),
                move || super::clones::watch(watched, &stop),
            )
            .context("spawning the kernel-path targets' link thread")?;
            engine.workers.push(handle);
        }
        engine.start_scheduler()?;
        engine.started.store(true, Ordering::Release);
        Ok(engine)
    }

    /// The scheduler thread, when a session has a schedule: each session is
    /// in the policy its source was started with, the thread takes it on.
    fn start_scheduler(&mut self) -> Result<()> {
        let mut entries = Vec::new();
        let mut started = Vec::new();
        for src in &self.sources {
            for (kidx, &s) in src.sessions.iter().enumerate() {
                if let Some(p) = self.started_at[s] {
                    entries.push(Entry {
                        session: s,
                        source: src.clone(),
                        kidx: kidx as u32,
                    });
                    started.push(p);
                }
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        let scheduler = Arc::new(Scheduler::new(&self.config.sessions, entries, started));
        self.scheduler = scheduler.clone();
        let handle = crate::privileges::spawn(
            std::thread::Builder::new().name("schedule".into()),
            move || scheduler.run(),
        )
        .context("spawning the schedule thread")?;
        self.workers.push(handle);
        Ok(())
    }

    /// Test clock: moves the fake clock to `time` (RFC 3339) and switches
    /// every scheduled session whose window that changes, before returning.
    /// Refused unless the daemon started with `MIRROR_FAKE_NOW`.
    pub fn set_time(&self, time: &str) -> Result<()> {
        let t = super::clock::parse_time(time).map_err(anyhow::Error::msg)?;
        self.scheduler.set_time(t).map_err(anyhow::Error::msg)?;
        tracing::info!(now = %t, "fake clock set");
        Ok(())
    }

    /// Opens target `ti` and starts its sender. `share`: the tap source that
    /// will share its UMEM (interface targets), whose RX queue then joins the
    /// returned host.
    fn open_target(&mut self, ti: usize, share: Option<usize>) -> Result<Option<UmemHost>> {
        let t = &self.config.targets[ti];
        let stop = self.stop_senders.clone();
        let mut host = None;
        let (queue, handle) = match &t.spec {
            TargetSpec::Interface {
                interface,
                zero_copy,
            } => {
                let with = share.map(|s| {
                    let src = &self.config.sources[s];
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
                host = started.host;
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
                    .with_context(|| format!("target `{}`: opening the tunnel socket", t.name))?;
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
                let interfaces = self
                    .config
                    .sources
                    .iter()
                    .map(|s| (s.name.clone(), s.interface.clone()))
                    .collect();
                let started = pcapng::start(
                    &t.name,
                    spec,
                    interfaces,
                    t.queue_size,
                    self.started.clone(),
                    stop,
                )
                .with_context(|| format!("target `{}`: opening the capture file", t.name))?;
                tracing::info!(target = %t.name, path = %spec.path.display(), "pcapng target ready");
                started
            }
        };
        self.targets.push(queue);
        self.senders.push(handle);
        Ok(host)
    }

    fn start_source(&mut self, idx: usize, host: Option<UmemHost>) -> Result<()> {
        let cfg = &self.config.sources[idx];
        let sessions = self.config.sessions_of(idx);
        let (ingress, egress) = source_rule_sets(&self.config, idx)
            .with_context(|| format!("source `{}`: compiling the rules", cfg.name))?;
        // A copy source whose sessions all clone in the kernel writes no
        // ring record: it gets the smallest ring.
        let ring_used = sessions.iter().any(|&s| !self.paths[s].kernel);
        // The flow table is sized only when a session has a per-flow cutoff.
        let cutoff = sessions.iter().any(|&s| {
            let sess = &self.config.sessions[s];
            sess.flow_cutoff_bytes != 0 || sess.flow_cutoff_packets != 0
        });
        let mut program = SourceProgram::load_with_flows(
            match cfg.mode {
                SourceMode::Copy if ring_used => cfg.ring_buffer,
                _ => mirror_ebpf::limits::RING_MIN,
            },
            if cutoff {
                mirror_ebpf::limits::FLOWS
            } else {
                1
            },
        )
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
        let now = super::clock::now();
        for (k, &s) in sessions.iter().enumerate() {
            let sess = &self.config.sessions[s];
            // The policy in force now (a window's, or the session's own),
            // in slot 0 of the kernel and of the plan, before anything attaches.
            let window = if sess.schedule.is_empty() {
                None
            } else {
                let pos = crate::config::schedule::position(&sess.schedule, now);
                self.started_at[s] = Some(pos);
                tracing::info!(
                    session = %sess.name,
                    "session {}: {} active until {}",
                    sess.name,
                    match pos.active {
                        Some(i) => format!(
                            "window {} ({})",
                            i + 1,
                            crate::config::schedule::describe(&sess.schedule[i])
                        ),
                        None => "no window (the session's own settings)".into(),
                    },
                    pos.next_edge.map_or_else(|| "further notice".into(), |t| t.to_string())
                );
                pos.active
            };
            let policy = sess.policy(window);
            plans[k].set_slot(0, &policy);
            program
                .set_policy(k as u32, &policy, true)
                .with_context(|| format!("source `{}`: setting the session policies", cfg.name))?;
            program
                .set_cutoff(
                    k as u32,
                    sess.flow_cutoff_bytes,
                    sess.flow_cutoff_packets,
                    sess.flow_cutoff_idle,
                )
                .with_context(|| format!("source `{}`: setting the flow cutoff", cfg.name))?;
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
        host: Option<UmemHost>,
    ) -> Result<()> {
        // A copy: setting the fast paths may change `self.paths`.
        let cfg = &self.config.sources[idx].clone();
        let (rx, sockets) = open_rx_queues(cfg, &prepared.program, host)?;
        let queues = rx.len();
        let program = &mut prepared.program;
        let zero_copy = rx.iter().all(RxQueue::zero_copy);
        // Every socket is bound and in the XSKMAP before the program is
        // attached; frames that arrive before the workers start wait in the RX rings.
        let mode = program
            .attach(&cfg.interface, cfg.xdp_mode)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let tunnels = self.set_fast_paths(&mut prepared, cfg, mode)?;
        let source = Arc::new(prepared.into_source(cfg, idx, mode.as_str(), sockets, zero_copy));
        for (kidx, &s) in source.sessions.iter().enumerate() {
            if !source.paths[kidx].kernel {
                continue;
            }
            let group = self.config.sessions[s]
                .targets
                .iter()
                .find_map(|d| match *d {
                    crate::config::Dest::Group(g) => Some(&self.config.groups[g]),
                    crate::config::Dest::Target(_) => None,
                });
            let members: &[usize] = group.map_or(&[], |g| &g.members[..]);
            for (key, t) in self.config.session_targets(s).into_iter().enumerate() {
                let TargetSpec::Interface { interface, .. } = &self.config.targets[t].spec else {
                    continue;
                };
                let Some(ifindex) = self.target_ifindex[t].filter(|_| !members.contains(&t)) else {
                    continue;
                };
                self.kernel_dests.push(super::tunnels::KernelDest {
                    source: source.clone(),
                    session: kidx as u32,
                    key: key as u32,
                    target: self.config.targets[t].name.clone(),
                    interface: interface.clone(),
                    ifindex,
                    mtu: netdev::mtu(interface),
                    up: true,
                    devices: self.target_devices.clone(),
                    index: t,
                });
            }
            if let Some(g) = group {
                self.kernel_groups.push(super::tunnels::KernelGroup {
                    source: source.clone(),
                    session: kidx as u32,
                    members: g.members.iter().map(|&m| self.targets[m].clone()).collect(),
                    up: ((1u16 << g.members.len()) - 1) as u8,
                });
            }
        }
        self.keep_tunnels(&source, tunnels, true);
        for (q, queue) in rx.into_iter().enumerate() {
            let src = source.clone();
            let stop = self.stop_workers.clone();
            let handle = crate::privileges::spawn(
                std::thread::Builder::new().name(format!("rx-{}-{q}", cfg.name)),
                move || worker(queue, &src, &stop),
            )
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

    /// Hands `source`'s kernel tunnels to the keeper thread (`devmap`: tap
    /// mode's, whose DEVMAP entry moves with the route).
    fn keep_tunnels(&mut self, source: &Arc<Source>, tunnels: Vec<PendingTunnel>, devmap: bool) {
        for p in tunnels {
            let t = &self.config.targets[p.target];
            self.kernel_tunnels.push(super::tunnels::KernelTunnel {
                source: source.clone(),
                session: p.session,
                key: p.key,
                target: t.name.clone(),
                queue: self.targets[p.target].clone(),
                spec: t.spec.clone(),
                vni: self.config.sessions[source.sessions[p.session as usize]].vni,
                tai_offset: p.tai_offset,
                hop: p.hop.dmac.map(|_| p.hop),
                device: p.hop.ifindex,
                devmap,
                headers: p.headers,
            });
        }
    }

    /// Puts the sessions planned for the kernel path on it, once the XDP
    /// mode is known. A session with tunnel targets goes back to userspace
    /// when the source ended up in generic XDP (its DEVMAP programs would
    /// not see the metadata), or fails when it asked for `path = "kernel"`.
    fn set_fast_paths(
        &mut self,
        prepared: &mut Prepared,
        cfg: &crate::config::Source,
        mode: AttachMode,
    ) -> Result<Vec<PendingTunnel>> {
        // Only now is the XDP mode known, which decides how the fast path
        // counts; frames its sessions accepted until here went through
        // userspace (their plans serve them too) and were counted there.
        let source_ifindex = crate::kernel::ifindex(&cfg.interface)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let tai_offset = super::clock::tai_offset_ns();
        let mut pending = Vec::new();
        for (k, &s) in prepared.sessions.iter().enumerate() {
            if !prepared.paths[k].kernel {
                continue;
            }
            let sess = &self.config.sessions[s];
            let targets = self.config.session_targets(s);
            let tunnels = targets.iter().any(|&t| self.target_hops[t].is_some());
            if tunnels && mode == AttachMode::Generic {
                let why = "its tunnel targets need native XDP on the source, which attached in \
                           generic mode (DEVMAP programs do not see the metadata there)";
                if sess.path == crate::config::SessionPath::Kernel {
                    bail!("session `{}`: path = \"kernel\", but {why}", sess.name);
                }
                prepared.paths[k] = PathChoice {
                    kernel: false,
                    reason: why.into(),
                };
                self.paths[s] = prepared.paths[k].clone();
                continue;
            }
            let mut devices = Vec::new();
            for (key, &t) in targets.iter().enumerate() {
                let spec = &self.config.targets[t].spec;
                if let Some(Ok(hop)) = &self.target_hops[t] {
                    let headers = kernel_tunnel::headers(spec, sess.vni, hop, tai_offset)
                        .with_context(|| {
                            format!(
                                "target `{}`: no kernel tunnel headers",
                                self.config.targets[t].name
                            )
                        })?;
                    devices.push(FastDest {
                        ifindex: hop.ifindex,
                        max_len: max_len(Some(hop.mtu)),
                        tunnel: Some(headers),
                    });
                    pending.push(PendingTunnel {
                        session: k as u32,
                        key: key as u32,
                        target: t,
                        hop: *hop,
                        headers,
                        tai_offset,
                    });
                    continue;
                }
                let Some(ifindex) = self.target_ifindex[t] else {
                    bail!(
                        "target `{}`: its interface is gone",
                        self.config.targets[t].name
                    );
                };
                let mtu = match spec {
                    TargetSpec::Interface { interface, .. } => netdev::mtu(interface),
                    _ => None,
                };
                devices.push(FastDest::new(ifindex, mtu));
            }
            let group = sess
                .targets
                .iter()
                .find_map(|d| match *d {
                    crate::config::Dest::Group(g) => Some(&self.config.groups[g].members),
                    crate::config::Dest::Target(_) => None,
                })
                .map(|members| {
                    members
                        .iter()
                        .filter_map(|m| targets.iter().position(|t| t == m))
                        .map(|k| k as u32)
                        .collect()
                })
                .unwrap_or_default();
            let fast = FastSession {
                dests: devices,
                group,
            };
            prepared
                .program
                .set_fast_path(k as u32, source_ifindex, &fast, mode == AttachMode::Generic)
                .with_context(|| {
                    format!(
                        "session `{}`: setting up the in-kernel fast path",
                        sess.name
                    )
                })?;
        }
        Ok(pending)
    }

    /// Copy mode: the programs, then a reader thread on the ring buffer
    /// (records wait in the ring until it starts). Kernel-path sessions get
    /// their clone destinations before anything is attached.
    fn start_copy(&mut self, idx: usize, mut prepared: Prepared) -> Result<()> {
        // A copy: handing the tunnels to the keeper needs `self`.
        let cfg = &self.config.sources[idx].clone();
        let ring = prepared
            .program
            .copies()
            .context("opening the ring buffer")?;
        prepared
            .program
            .set_wake_bytes(COPY_WAKE_BYTES.min(u64::from(cfg.ring_buffer) / 4))
            .context("setting the ring's wake-up threshold")?;
        let source_ifindex = crate::kernel::ifindex(&cfg.interface)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let (devices, tunnels) = super::clones::set_up(
            &self.config,
            &mut prepared,
            source_ifindex,
            &self.target_ifindex,
            &self.target_hops,
        )
        .with_context(|| format!("source `{}`", cfg.name))?;
        let ingress_hook = super::clones::ingress_hook(cfg, &prepared.paths);
        let hooks = CopyHooks {
            ingress: cfg.ingress().then_some(ingress_hook),
            egress: cfg.egress(),
        };
        super::clones::log_ingress_hook(&self.config, idx, &prepared, ingress_hook);
        let attached = prepared
            .program
            .attach_copy(&cfg.interface, hooks, cfg.xdp_mode)
            .with_context(|| format!("source `{}`", cfg.name))?;
        let attach_mode = match (attached, hooks.ingress) {
            (Some(m), _) => m.as_str(),
            (None, Some(IngressHook::Tc)) => "tcx",
            _ => "none",
        };
        let ring_used = prepared.paths.iter().any(|p| !p.kernel);
        let source = Arc::new(prepared.into_source(cfg, idx, attach_mode, Vec::new(), false));
        self.clone_watch
            .extend(devices.into_iter().map(|device| super::clones::Watched {
                source: source.clone(),
                device,
            }));
        self.keep_tunnels(&source, tunnels, false);
        if ring_used {
            let (src, stop) = (source.clone(), self.stop_workers.clone());
            let handle = crate::privileges::spawn(
                std::thread::Builder::new().name(format!("copy-{}", cfg.name)),
                move || copy_reader(&ring, &src, &stop),
            )
            .context("spawning the ring-buffer reader thread")?;
            self.workers.push(handle);
        }
        tracing::info!(
            source = %cfg.name,
            interface = %cfg.interface,
            ingress = match hooks.ingress {
                None => "off",
                Some(IngressHook::Tc) => "tcx",
                Some(_) => "xdp",
            },
            xdp_mode = source.attach_mode,
            egress = if hooks.egress { "tcx" } else { "off" },
            ring_buffer_bytes = if ring_used { cfg.ring_buffer } else { 0 },
            "source attached (copy mode: every frame passes on untouched)"
        );
        self.log_paths(&source);
        self.sources.push(source);
        Ok(())
    }

    fn log_paths(&self, source: &Source) {
        for (&s, path) in source.sessions.iter().zip(&source.paths) {
            let sess = &self.config.sessions[s];
            if path.kernel && source.mode == SourceMode::Copy {
                tracing::info!(
                    session = %sess.name,
                    sample = sess.sample,
                    path = path.name_in(source.mode),
                    relay = source.relay.as_deref().unwrap_or("none"),
                    "session served in the kernel: tcx clones each mirrored frame to each target \
                     device (bpf_clone_redirect), tunnel targets through the relay device that \
                     encapsulates them, and passes the frame on; no ring buffer, no userspace copy"
                );
            } else if path.kernel {
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
                    path = path.name_in(source.mode),
                    why = %path.reason,
                    "session served through userspace"
                );
            }
        }
    }

    /// The config in force: the started one with live rule changes.
    pub(crate) fn live_config(&self) -> Result<Config> {
        Ok(self
            .live
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .clone())
    }

    /// Changes the rules in force: `change` edits a copy of the live config;
    /// then every source's new rule set is compiled (any error refuses this
    /// change and leaves the running rules untouched) and installed
    /// atomically per source ([`SourceProgram::install`]: each frame is
    /// classified by the old or the new set, whole, and none is lost).
    /// Returns the new rule count per source.
    ///
    /// Changes commit in groups: an install waits several RCU grace periods
    /// (tens of milliseconds under load), so changes that arrive while one
    /// runs wait for it, then the first of them applies all of them in
    /// arrival order (each checked on its own: a refused one drops out
    /// alone) and installs once. Each caller gets its own change's outcome;
    /// frames never see a set between two changes of one group. Without
    /// this, a SIGHUP every 50 ms left live rule updates ~2 a second.
    pub fn update<F>(&self, change: F) -> Result<Vec<(String, usize)>>
    where
        F: FnOnce(&mut Config) -> Result<()> + Send + 'static,
    {
        fn poisoned<T>(_: T) -> anyhow::Error {
            anyhow::anyhow!("poisoned lock")
        }
        let (reply, outcome) = std::sync::mpsc::channel();
        self.pending.lock().map_err(poisoned)?.push(PendingChange {
            change: Box::new(change),
            reply,
        });
        let mut live = self.live.lock().map_err(poisoned)?;
        // The installer before us may have taken ours in its group.
        if let Ok(done) = outcome.try_recv() {
            return done;
        }
        let group = std::mem::take(&mut *self.pending.lock().map_err(poisoned)?);
        let mut new = live.clone();
        let mut sets = None;
        let mut accepted = Vec::new();
        for p in group {
            let mut next = new.clone();
            match (p.change)(&mut next).and_then(|()| self.rule_sets(&next)) {
                Ok(built) => {
                    new = next;
                    sets = Some(built);
                    accepted.push(p.reply);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        if let Some(sets) = sets {
            match self.install_sets(&live, &sets) {
                Ok(counts) => {
                    *live = new;
                    for r in accepted {
                        let _ = r.send(Ok(counts.clone()));
                    }
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    for r in accepted {
                        let _ = r.send(Err(anyhow::anyhow!("{why}")));
                    }
                }
            }
        }
        drop(live);
        outcome
            .recv()
            .map_err(|_| anyhow::anyhow!("the rule update was lost"))?
    }

    /// Each source's rule sets for `new`, if it may be applied live.
    fn rule_sets(&self, new: &Config) -> Result<Vec<SourceSets>> {
        crate::filter::rules::check_reloadable(&self.config, new)?;
        self.sources
            .iter()
            .enumerate()
            .map(|(i, src)| {
                source_rule_sets(new, i)
                    .with_context(|| format!("source `{}`: the new rules", src.name))
            })
            .collect()
    }

    /// Installs `sets` (one per source); on an error puts the sources
    /// already switched back on `live`'s rules.
    fn install_sets(&self, live: &Config, sets: &[SourceSets]) -> Result<Vec<(String, usize)>> {
        for (i, (src, (ingress, egress))) in self.sources.iter().zip(sets).enumerate() {
            let installed = src
                .program
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                .install(ingress, egress.as_ref());
            if let Err(e) = installed {
                for (j, s) in self.sources.iter().enumerate().take(i) {
                    let (old_in, old_out) = source_rule_sets(live, j)?;
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
        Ok(self
            .sources
            .iter()
            .zip(sets)
            .map(|(s, (i, e))| (s.name.clone(), rule_count(i, e) as usize))
            .collect())
    }

    /// Detaches every program, then stops the workers and lets the targets
    /// send what they hold (bounded), then stops them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.scheduler.stop();
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

/// One AF_XDP socket per RX queue of a tap source's interface, each in the
/// XSKMAP slot of its queue. The first queue joins `host` (an interface
/// target's UMEM) when given and when it can.
fn open_rx_queues(
    cfg: &crate::config::Source,
    program: &SourceProgram,
    mut host: Option<UmemHost>,
) -> Result<(Vec<RxQueue>, Vec<StatsHandle>)> {
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
    Ok((rx, sockets))
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
