//! Starting, changing and stopping the data plane: every target opened,
//! every source's programs loaded, filled and attached, the threads
//! started; [`Engine::update`] installs new rule sets atomically and
//! [`Engine::reload`] applies any other change of the file as a diff (see
//! `reload`): what it keeps runs on untouched, the rest stops or starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use super::plan::{
    join_host, plan_paths, resolve_hops, share_plan, Hops, PathChoice, RESOLVE_WAIT,
};
use super::reload::{self, Keep};
use super::schedule::{Entry, Scheduler};
use super::session::SessionPlan;
use super::source::{rule_count, source_rule_sets, Prepared, Source};
use super::stats::Stats;
use super::worker::{copy_reader, worker, COPY_WAKE_BYTES};
use crate::config::schedule::Position;
use crate::config::{Config, IngressHook, SourceMode, TargetSpec};
use crate::kernel::fast_path::max_len;
use crate::kernel::netdev;
use crate::kernel::xsk::{RxHost, RxQueue, StatsHandle};
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
    /// The config whose filters are in force: the running one with live
    /// rule changes. Its lock also serialises updates and reloads.
    live: Mutex<Config>,
    /// Rule changes waiting for the next install (see [`Engine::update`]).
    pending: Mutex<Vec<PendingChange>>,
    /// What runs. Read by counters and rule installs, written by a reload.
    plane: RwLock<Plane>,
    /// Set when the daemon stops: the sources' watcher ends.
    closing: AtomicBool,
}

/// Threads that stop together: a source's workers and the kernel-path
/// threads that watch its devices, or a target's sender.
#[derive(Default)]
struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    fn spawn<F>(&mut self, name: String, f: F) -> Result<()>
    where
        F: FnOnce(&AtomicBool) + Send + 'static,
    {
        let stop = self.stop.clone();
        let handle =
            crate::privileges::spawn(std::thread::Builder::new().name(name.clone()), move || {
                f(&stop)
            })
            .with_context(|| format!("spawning the thread {name}"))?;
        self.handles.push(handle);
        Ok(())
    }

    /// Sets the flag and waits for every thread.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Everything running, indexed like `config`.
pub(super) struct Plane {
    /// The sources, targets, groups and sessions running (filters as
    /// started or last reloaded; live rule changes are in `Engine::live`).
    pub(super) config: Config,
    pub(super) sources: Vec<Arc<Source>>,
    /// Per source name: its threads.
    source_threads: HashMap<String, Threads>,
    /// Started targets, by index in `config.targets`.
    pub(super) targets: Vec<Arc<TargetQueue>>,
    /// Per target name: its sender.
    target_threads: HashMap<String, Threads>,
    pub(super) groups: Vec<Arc<TargetGroup>>,
    /// Per session (index in `config.sessions`): the path chosen at its start.
    pub(super) paths: Vec<PathChoice>,
    /// Per target: its device's ifindex, for interface targets.
    pub(super) target_ifindex: Vec<Option<u32>>,
    /// Per target: a tunnel's next hop as resolved at its start (see `plan`).
    pub(super) target_hops: Hops,
    /// Per target name: every device an interface target has sent through
    /// on the kernel path (more than one when its port was created again).
    pub(super) target_devices: Arc<Mutex<HashMap<String, Vec<u32>>>>,
    /// Switches scheduled sessions at their window edges.
    pub(super) scheduler: Arc<Scheduler>,
    scheduler_thread: Threads,
    /// Counters of what a reload stopped and started again under the same
    /// name (sources, sessions, targets, groups), added to the running
    /// ones' so no counter goes back.
    pub(super) retired: Stats,
}

/// What a source's start leaves for the threads that keep its kernel path.
#[derive(Default)]
struct KernelKeep {
    tunnels: Vec<super::tunnels::KernelTunnel>,
    groups: Vec<super::tunnels::KernelGroup>,
    dests: Vec<super::tunnels::KernelDest>,
    clones: Vec<super::clones::Watched>,
}

/// A started source, before the plane takes it.
struct Started {
    source: Arc<Source>,
    threads: Threads,
    /// Its scheduled sessions (config index) and the window each is in.
    positions: Vec<(usize, Position)>,
}

/// What a reload did, for its reply and log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rules in force per source, as `mirror rules` reports them.
    pub rules: Vec<(String, usize)>,
    /// Sources, targets and groups started, stopped and restarted, by name
    /// (`source feed`, `target ids0`, ...).
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    /// Whether the file's filters differ from the rules that ran before
    /// (live rule changes included, which a reload replaces).
    pub filters_changed: bool,
}

/// Whether `new` mirrors by other rules than `old`: a filter's rules, or
/// the filter a session uses (by name).
fn rules_differ(old: &Config, new: &Config) -> bool {
    let uses = |c: &Config| {
        let mut v: Vec<(String, String)> = c
            .sessions
            .iter()
            .map(|s| (s.name.clone(), c.filters[s.filter].name.clone()))
            .collect();
        v.sort();
        v
    };
    old.filters != new.filters || uses(old) != uses(new)
}

impl Applied {
    /// One line: `started target vx2, session...; stopped ...; kept the rest`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, list) in [
            ("started", &self.started),
            ("stopped", &self.stopped),
            ("restarted", &self.restarted),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what} {}", list.join(", ")));
            }
        }
        if parts.is_empty() && !self.filters_changed {
            "nothing changed: the file is what was running".into()
        } else if parts.is_empty() {
            "filters only; everything else kept running".into()
        } else {
            format!("{}; everything else kept running", parts.join("; "))
        }
    }
}

impl Engine {
    /// Opens every target, loads and attaches every source.
    pub fn start(config: Config) -> Result<Engine> {
        if let Some(t) = super::clock::init_from_env().map_err(anyhow::Error::msg)? {
            tracing::warn!(now = %t, "running on a fake clock ({}): the schedule goes by it, and the control request set_time moves it", super::clock::FAKE_NOW_ENV);
        }
        let mut plane = Plane::empty(&config);
        // On an error the plane stops whatever it had started (its drop).
        plane.start_phase(&config, &config)?;
        Ok(Engine {
            live: Mutex::new(config),
            pending: Mutex::new(Vec::new()),
            plane: RwLock::new(plane),
            closing: AtomicBool::new(false),
        })
    }

    /// Counters of everything running (see `stats`).
    pub fn stats(&self) -> Result<Stats> {
        self.plane
            .read()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .stats()
    }

    /// Test clock: moves the fake clock to `time` (RFC 3339) and switches
    /// every scheduled session whose window that changes, before returning.
    /// Refused unless the daemon started with `MIRROR_FAKE_NOW`.
    pub fn set_time(&self, time: &str) -> Result<()> {
        let t = super::clock::parse_time(time).map_err(anyhow::Error::msg)?;
        let scheduler = self
            .plane
            .read()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .scheduler
            .clone();
        scheduler.set_time(t).map_err(anyhow::Error::msg)?;
        tracing::info!(now = %t, "fake clock set");
        Ok(())
    }

    /// The config in force: the running one with live rule changes.
    pub(crate) fn live_config(&self) -> Result<Config> {
        Ok(self
            .live
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .clone())
    }

    /// Applies `new` (a reloaded file) to the running data plane. When only
    /// filters changed, that is a rule update ([`Engine::update`]): nothing
    /// restarts. Otherwise a diff, by name (see `reload`): the sources,
    /// targets and groups it keeps run on, losing no frame and no counter
    /// (their rules are installed live); those it drops stop (their
    /// counters with them); changed ones stop and start again alone (their
    /// counters carry on); new ones start. Live rule changes since the last
    /// reload give way to the file, as with a filter reload.
    ///
    /// Before anything stops, what the new parts need from this host is
    /// checked (interfaces, pcapng directories, free queues), so most
    /// errors refuse the file with nothing changed. If a start still fails,
    /// what this reload started is stopped, the stopped parts are started
    /// again as they were, and the error is returned.
    pub fn reload(&self, new: Config) -> Result<Applied> {
        fn poisoned<T>(_: T) -> anyhow::Error {
            anyhow::anyhow!("poisoned lock")
        }
        let mut live = self.live.lock().map_err(poisoned)?;
        let running = self.plane.read().map_err(poisoned)?.config.clone();
        if running.daemon != new.daemon {
            bail!(
                "the [daemon] section changed (control socket, metrics address, cpus): that needs \
                 a restart of mirror; the running config stays"
            );
        }
        let keep = reload::keep(&running, &new);
        // Filters only: everything kept, in the same places, and no session
        // setting changed (`check_reloadable` compares what the rule sets
        // index by; `keep` every setting, by name).
        let structural = keep.sources.len() != running.sources.len()
            || keep.sources.len() != new.sources.len()
            || keep.targets.len() != running.targets.len()
            || keep.targets.len() != new.targets.len()
            || keep.groups.len() != running.groups.len()
            || keep.groups.len() != new.groups.len()
            || running.sessions.len() != new.sessions.len()
            || crate::filter::rules::check_reloadable(&running, &new).is_err();
        if !structural {
            drop(live);
            // Against the rules in force when the change is applied (a live
            // rule change may come in between).
            let changed = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&changed);
            let rules = self.update(move |l| {
                seen.store(rules_differ(l, &new), Ordering::Relaxed);
                *l = new;
                Ok(())
            })?;
            return Ok(Applied {
                rules,
                filters_changed: changed.load(Ordering::Relaxed),
                ..Default::default()
            });
        }
        let filters_changed = rules_differ(&live, &new);
        // The file's filters, compiled for every source first: a rule error
        // refuses the file before anything stops. (A filter-only reload is
        // compiled by `update`.)
        for i in 0..new.sources.len() {
            source_rule_sets(&new, i)
                .with_context(|| format!("source `{}`: the new rules", new.sources[i].name))?;
        }
        preflight(&new, &keep)?;
        let mut plane = self.plane.write().map_err(poisoned)?;
        let applied = match plane.apply(&running, &live, &new, &keep) {
            Ok(a) => a,
            Err(e) => {
                // What runs (the previous config, or what both shared when
                // it could not start again either), with the rules in force.
                *live = Config {
                    filters: live.filters.clone(),
                    ..plane.config.clone()
                };
                return Err(e);
            }
        };
        *live = new;
        let rules = plane
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.rules.load(Ordering::Relaxed) as usize))
            .collect();
        Ok(Applied {
            rules,
            filters_changed,
            ..applied
        })
    }

    /// Looks at every source's interface: one that is gone is said once (its
    /// frames cannot be seen, so none is counted); one that is back as a new
    /// device (deleted and created again under its name) is started again on
    /// it, alone, its counters carried on. What [`Engine::watch_sources`]
    /// runs twice a second.
    pub fn check_sources(&self) -> Result<()> {
        let mut back = Vec::new();
        {
            let plane = self
                .plane
                .read()
                .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
            for src in &plane.sources {
                match crate::kernel::ifindex(&src.interface).ok() {
                    None => {
                        if !src.gone.swap(true, Ordering::Relaxed) {
                            tracing::error!(
                                source = %src.name,
                                interface = %src.interface,
                                "the source's interface is gone: nothing arrives to mirror; \
                                 mirror attaches to it again when it is back"
                            );
                        }
                    }
                    Some(i) if i != src.ifindex => back.push((src.name.clone(), i)),
                    Some(_) => {}
                }
            }
        }
        if back.is_empty() {
            return Ok(());
        }
        for (name, ifindex) in &back {
            tracing::warn!(source = %name, ifindex, "the source's interface is back as a new device: attaching to it again");
        }
        let names: Vec<String> = back.into_iter().map(|(n, _)| n).collect();
        let mut live = self
            .live
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        let mut plane = self
            .plane
            .write()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        let running = plane.config.clone();
        // The same config, filters as in force: only these restart.
        let keep = reload::keep_but(&running, &live, &names);
        let applied = plane.apply(&running, &live, &live, &keep);
        if applied.is_err() {
            // As in `reload`: the config in force is what runs.
            let filters = live.filters.clone();
            *live = Config {
                filters,
                ..plane.config.clone()
            };
        }
        match &applied {
            Ok(a) => {
                tracing::info!(changes = %a.summary(), "re-attached to the re-created interface")
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "attaching to the re-created interface failed")
            }
        }
        applied.map(|_| ())
    }

    /// A thread that runs [`Engine::check_sources`] every 500 ms for as long
    /// as the engine lives (it holds it only weakly).
    pub fn watch_sources(engine: &Arc<Engine>) -> Result<JoinHandle<()>> {
        let weak = Arc::downgrade(engine);
        crate::privileges::spawn(
            std::thread::Builder::new().name("sources".into()),
            move || loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                let Some(engine) = weak.upgrade() else { return };
                if engine.closing.load(Ordering::Relaxed) {
                    return;
                }
                let _ = engine.check_sources();
            },
        )
        .context("spawning the thread that watches the sources' interfaces")
    }

    /// Tells [`Engine::watch_sources`]'s thread to end (before the engine is
    /// unwrapped for shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
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
        let plane = self.plane.read().map_err(poisoned)?;
        let group = std::mem::take(&mut *self.pending.lock().map_err(poisoned)?);
        let mut new = live.clone();
        let mut sets = None;
        let mut accepted = Vec::new();
        for p in group {
            let mut next = new.clone();
            match (p.change)(&mut next).and_then(|()| plane.rule_sets(&next)) {
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
            match plane.install_sets(&live, &sets) {
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
        drop(plane);
        drop(live);
        outcome
            .recv()
            .map_err(|_| anyhow::anyhow!("the rule update was lost"))?
    }

    /// Detaches every program, then stops the workers and lets the targets
    /// send what they hold (bounded), then stops them.
    pub fn shutdown(self) {
        drop(self);
    }
}

/// Checks what the parts of `new` that `keep` does not keep need from this
/// host, as `mirror check` does: their interfaces exist, pcapng directories
/// are writable. Errors name each problem; nothing has stopped yet.
fn preflight(new: &Config, keep: &Keep) -> Result<()> {
    let mut problems = Vec::new();
    for s in &new.sources {
        if !keep.sources.contains(&s.name) && crate::kernel::ifindex(&s.interface).is_err() {
            problems.push(format!(
                "source `{}`: interface {} does not exist in this network namespace",
                s.name, s.interface
            ));
        }
    }
    for t in &new.targets {
        if keep.targets.contains(&t.name) {
            continue;
        }
        match &t.spec {
            TargetSpec::Interface { interface, .. }
                if crate::kernel::ifindex(interface).is_err() =>
            {
                problems.push(format!(
                    "target `{}`: interface {interface} does not exist in this network namespace",
                    t.name
                ));
            }
            TargetSpec::Pcapng(spec) => {
                if let Err(e) = pcapng::check_directory(&spec.path) {
                    problems.push(format!("target `{}`: {e}", t.name));
                }
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the new config cannot start here, nothing was changed:\n  {}",
            problems.join("\n  ")
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(mut plane) = self.plane.write() {
            plane.stop_all();
        }
    }
}

impl Plane {
    /// Nothing running yet, for `config`'s daemon settings.
    fn empty(config: &Config) -> Plane {
        Plane {
            config: Config {
                sources: Vec::new(),
                targets: Vec::new(),
                groups: Vec::new(),
                sessions: Vec::new(),
                ..config.clone()
            },
            sources: Vec::new(),
            source_threads: HashMap::new(),
            targets: Vec::new(),
            target_threads: HashMap::new(),
            groups: Vec::new(),
            paths: Vec::new(),
            target_ifindex: Vec::new(),
            target_hops: Vec::new(),
            target_devices: Arc::new(Mutex::new(HashMap::new())),
            scheduler: Arc::new(Scheduler::new(&[], Vec::new(), Vec::new())),
            scheduler_thread: Threads::default(),
            retired: Stats::default(),
        }
    }

    /// A reload from `running` (what runs now, with the rules of `live`) to
    /// `new`, keeping `keep`.
    fn apply(
        &mut self,
        running: &Config,
        live: &Config,
        new: &Config,
        keep: &Keep,
    ) -> Result<Applied> {
        let mut applied = Applied::default();
        let kinds = |c: &Config| -> Vec<String> {
            c.sources
                .iter()
                .map(|s| format!("source {}", s.name))
                .chain(c.targets.iter().map(|t| format!("target {}", t.name)))
                .chain(c.groups.iter().map(|g| format!("target group {}", g.name)))
                .collect()
        };
        let kept: Vec<String> = keep
            .sources
            .iter()
            .map(|s| format!("source {s}"))
            .chain(keep.targets.iter().map(|t| format!("target {t}")))
            .chain(keep.groups.iter().map(|g| format!("target group {g}")))
            .collect();
        let (before, after) = (kinds(running), kinds(new));
        for name in &before {
            if kept.contains(name) {
                continue;
            }
            if after.contains(name) {
                applied.restarted.push(name.clone());
            } else {
                applied.stopped.push(name.clone());
            }
        }
        applied.started = after
            .iter()
            .filter(|n| !before.contains(n))
            .cloned()
            .collect();
        self.stop_phase(keep, new)?;
        if let Err(e) = self.start_phase(new, new) {
            tracing::error!(error = %format!("{e:#}"), "reload: starting the new config failed; starting the previous one again");
            let back = self.start_phase(running, live);
            if let Err(e2) = back {
                tracing::error!(error = %format!("{e2:#}"), "reload: the previous config did not start again either; what runs is what both kept");
                return Err(e.context(format!(
                    "starting the new config failed, and so did starting the previous one again \
                     ({e2:#}): only what both share runs now"
                )));
            }
            return Err(e.context("starting the new config failed; the previous config runs again"));
        }
        Ok(applied)
    }

    /// Stops every source, target and group `keep` does not name (sources
    /// first, each detached and drained), keeps the counters of those that
    /// `next` has again under the same name, and leaves the plane indexed
    /// like the running config without them.
    fn stop_phase(&mut self, keep: &Keep, next: &Config) -> Result<()> {
        self.stop_scheduler();
        let in_next = |kind: &str, name: &str| match kind {
            "source" => next.sources.iter().any(|s| s.name == name),
            "session" => next.sessions.iter().any(|s| s.name == name),
            "target" => next.targets.iter().any(|t| t.name == name),
            _ => next.groups.iter().any(|g| g.name == name),
        };
        let stopping: Vec<Arc<Source>> = self
            .sources
            .iter()
            .filter(|s| !keep.sources.contains(&s.name))
            .cloned()
            .collect();
        // The stopped scheduler keeps the kept sessions' positions for the
        // next one, and lets go of the stopping sources (it held them, and
        // with them their AF_XDP sockets, which the restarted source could
        // then not bind).
        let gone = |s: &Source| !keep.sources.contains(&s.name);
        self.scheduler = Arc::new(self.scheduler.without_sources(&gone));
        for src in &stopping {
            if let Ok(mut p) = src.program.lock() {
                p.detach();
            }
            if let Some(mut t) = self.source_threads.remove(&src.name) {
                t.stop();
            }
        }
        // Final counts of what stopped, while the plane still indexes it.
        let mut part = self.kernel_stats(&stopping)?;
        for t in &self.targets {
            if keep.targets.contains(&t.name) {
                continue;
            }
            if let Some(mut th) = self.target_threads.remove(&t.name) {
                th.stop.store(true, Ordering::Relaxed);
                t.wake();
                th.stop();
            }
            let mut snap = t.snapshot();
            if let Some(k) = part.targets.get(&t.name) {
                super::stats::absorb(&mut snap, k);
            }
            part.targets.insert(t.name.clone(), snap);
        }
        for g in &self.groups {
            if keep.groups.contains(&g.name) {
                continue;
            }
            let mut snap = g.snapshot();
            if let Some(k) = part.groups.get(&g.name) {
                super::stats::absorb(&mut snap, k);
            }
            part.groups.insert(g.name.clone(), snap);
        }
        // Carried on under the same name; forgotten when gone. A kept target
        // or group is in `part` only with what the stopping sources' kernel
        // paths did for it (their maps go with them): kept too.
        part.sources.retain(|n, _| in_next("source", n));
        part.sessions.retain(|n, _| in_next("session", n));
        part.targets.retain(|n, _| in_next("target", n));
        part.groups.retain(|n, _| in_next("group", n));
        super::stats::absorb_all(&mut self.retired, &part, true);
        self.retired.sources.retain(|n, _| in_next("source", n));
        self.retired.sessions.retain(|n, _| in_next("session", n));
        self.retired.targets.retain(|n, _| in_next("target", n));
        self.retired.groups.retain(|n, _| in_next("group", n));
        if let Ok(mut d) = self.target_devices.lock() {
            d.retain(|n, _| keep.targets.contains(n));
        }
        drop(stopping);
        // Indexed like the running config without what stopped.
        let mid = reload::subset(&self.config, keep);
        let by_name = |v: &[Arc<Source>], n: &str| v.iter().find(|s| s.name == n).cloned();
        let old = std::mem::replace(&mut self.config, mid);
        let target_pos = |n: &str| old.targets.iter().position(|t| t.name == n);
        self.sources = self
            .config
            .sources
            .iter()
            .filter_map(|s| by_name(&self.sources, &s.name))
            .collect();
        let pick = |t: &crate::config::Target| target_pos(&t.name).unwrap_or(0);
        self.targets = self
            .config
            .targets
            .iter()
            .map(|t| self.targets[pick(t)].clone())
            .collect();
        self.target_ifindex = self
            .config
            .targets
            .iter()
            .map(|t| self.target_ifindex[pick(t)])
            .collect();
        self.target_hops = self
            .config
            .targets
            .iter()
            .map(|t| self.target_hops[pick(t)].clone())
            .collect();
        self.groups = self
            .config
            .groups
            .iter()
            .filter_map(|g| self.groups.iter().find(|x| x.name == g.name).cloned())
            .collect();
        self.paths = self
            .config
            .sessions
            .iter()
            .map(|s| {
                let o = old
                    .sessions
                    .iter()
                    .position(|x| x.name == s.name)
                    .unwrap_or(0);
                self.paths[o].clone()
            })
            .collect();
        for (i, src) in self.sources.iter().enumerate() {
            src.set_sessions(self.config.sessions_of(i));
        }
        Ok(())
    }

    /// Starts whatever of `new` is not running, and indexes the plane like
    /// `new`. Everything running must be in `new` with the same definition
    /// (as `stop_phase` leaves it). On an error, stops what it started and
    /// leaves the plane as it was. Sources already running get the rules of
    /// `rules` (`new` with other filters, e.g. live rule changes).
    fn start_phase(&mut self, new: &Config, rules: &Config) -> Result<()> {
        let before = self.index_snapshot();
        let go = Arc::new(AtomicBool::new(false));
        let mut started_targets = Vec::new();
        let mut started_sources = Vec::new();
        let result = self.start_new(new, rules, &go, &mut started_targets, &mut started_sources);
        match result {
            Ok(positions) => {
                go.store(true, Ordering::Release);
                self.start_scheduler(positions)?;
                Ok(())
            }
            Err(e) => {
                for name in started_sources {
                    if let Some(src) = self.sources.iter().find(|s| s.name == name) {
                        if let Ok(mut p) = src.program.lock() {
                            p.detach();
                        }
                    }
                    if let Some(mut t) = self.source_threads.remove(&name) {
                        t.stop();
                    }
                }
                for name in started_targets {
                    if let Some(mut t) = self.target_threads.remove(&name) {
                        t.stop.store(true, Ordering::Relaxed);
                        if let Some(q) = self.targets.iter().find(|q| q.name == name) {
                            q.wake();
                        }
                        t.stop();
                    }
                }
                self.restore(before);
                let _ = self.start_scheduler(Vec::new());
                Err(e)
            }
        }
    }

    /// The plane's indexing, to put back when a start fails.
    fn index_snapshot(&self) -> IndexSnapshot {
        IndexSnapshot {
            config: self.config.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| (s.clone(), s.sessions()))
                .collect(),
            targets: self.targets.clone(),
            groups: self.groups.clone(),
            paths: self.paths.clone(),
            target_ifindex: self.target_ifindex.clone(),
            target_hops: self.target_hops.clone(),
        }
    }

    fn restore(&mut self, s: IndexSnapshot) {
        self.config = s.config;
        self.sources = s
            .sources
            .into_iter()
            .map(|(src, sessions)| {
                src.set_sessions(sessions);
                src
            })
            .collect();
        self.targets = s.targets;
        self.groups = s.groups;
        self.paths = s.paths;
        self.target_ifindex = s.target_ifindex;
        self.target_hops = s.target_hops;
    }

    /// `start_phase`'s work: returns the scheduled sessions' windows.
    fn start_new(
        &mut self,
        new: &Config,
        rules: &Config,
        go: &Arc<AtomicBool>,
        started_targets: &mut Vec<String>,
        started_sources: &mut Vec<String>,
    ) -> Result<Vec<(usize, Position)>> {
        let running_target = |name: &str| self.config.targets.iter().position(|t| t.name == name);
        let running_source = |name: &str| self.sources.iter().find(|s| s.name == name).cloned();
        let target_ifindex: Vec<Option<u32>> = new
            .targets
            .iter()
            .map(|t| match running_target(&t.name) {
                Some(o) => self.target_ifindex[o],
                None => match &t.spec {
                    TargetSpec::Interface { interface, .. } => {
                        crate::kernel::ifindex(interface).ok()
                    }
                    _ => None,
                },
            })
            .collect();
        // Every tunnel's next hop as it is now, a running target's too: a
        // source that starts now plans with today's routes (a tunnel whose
        // route moved since its start onto another target's device must not
        // pass the planner's device check on the old one). A running
        // target's is looked up without waiting, as its keeper does.
        let target_hops = resolve_hops(new, &|t| {
            if running_target(&new.targets[t].name).is_some() {
                std::time::Duration::ZERO
            } else {
                RESOLVE_WAIT
            }
        });
        // Paths: a running source's sessions keep theirs, unchecked (today's
        // hops may fail a check their running set-up passed: a route gone
        // for a moment is its keeper's business); the others are planned.
        let mut kept: Vec<Option<PathChoice>> = vec![None; new.sessions.len()];
        for (i, s) in new.sources.iter().enumerate() {
            if let Some(src) = running_source(&s.name) {
                for (kidx, k) in new.sessions_of(i).into_iter().enumerate() {
                    kept[k] = Some(src.paths[kidx].clone());
                }
            }
        }
        let paths = plan_paths(new, &target_ifindex, &target_hops, &kept)?;
        // Targets, then groups.
        let share = share_plan(new);
        let mut hosts: Vec<Option<RxHost>> = (0..new.sources.len()).map(|_| None).collect();
        let mut targets = Vec::new();
        for (ti, t) in new.targets.iter().enumerate() {
            if let Some(o) = running_target(&t.name) {
                targets.push(self.targets[o].clone());
                continue;
            }
            // Only a source that starts now can join a new target's UMEM.
            let shared_by = share[ti].filter(|&s| running_source(&new.sources[s].name).is_none());
            let (queue, threads, host) = open_target(new, ti, shared_by, go)?;
            started_targets.push(t.name.clone());
            self.target_threads.insert(t.name.clone(), threads);
            if let (Some(s), Some(host)) = (shared_by, host) {
                hosts[s] = Some(host);
            }
            targets.push(queue);
        }
        let groups = new
            .groups
            .iter()
            .map(|g| {
                self.groups
                    .iter()
                    .find(|x| x.name == g.name)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(TargetGroup::new(
                            &g.name,
                            g.members.iter().map(|&m| targets[m].clone()).collect(),
                        ))
                    })
            })
            .collect();
        if let Ok(mut d) = self.target_devices.lock() {
            for (t, i) in new.targets.iter().zip(&target_ifindex) {
                if let Some(i) = i {
                    d.entry(t.name.clone()).or_insert_with(|| vec![*i]);
                }
            }
        }
        let running: Vec<Arc<Source>> = self.sources.clone();
        // From here the plane is indexed like `new`.
        self.config = new.clone();
        self.targets = targets;
        self.groups = groups;
        self.paths = paths;
        self.target_ifindex = target_ifindex;
        self.target_hops = target_hops;
        let mut sources = Vec::new();
        let mut positions = Vec::new();
        for (i, s) in new.sources.iter().enumerate() {
            if let Some(src) = running.iter().find(|x| x.name == s.name) {
                src.set_sessions(new.sessions_of(i));
                sources.push(src.clone());
                continue;
            }
            let started = self.start_source(i, hosts[i].take())?;
            started_sources.push(s.name.clone());
            self.source_threads.insert(s.name.clone(), started.threads);
            positions.extend(started.positions);
            sources.push(started.source.clone());
            // Seen by the rollback and the stats as soon as it runs.
            self.sources.push(started.source);
        }
        self.sources = sources;
        // Running sources get the rules of `rules` (the file's, or on a
        // rollback the live ones): installed atomically, as a rule update.
        for (i, src) in self.sources.iter().enumerate() {
            if !running.iter().any(|r| Arc::ptr_eq(r, src)) {
                continue;
            }
            let (ingress, egress) = source_rule_sets(rules, i)
                .with_context(|| format!("source `{}`: compiling the rules", src.name))?;
            src.program
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                .install(&ingress, egress.as_ref())
                .with_context(|| format!("source `{}`: installing the rules", src.name))?;
            src.rules
                .store(rule_count(&ingress, &egress), Ordering::Relaxed);
            src.rule_sets_installed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(positions)
    }

    /// Stops the scheduler thread (its positions stay readable).
    fn stop_scheduler(&mut self) {
        self.scheduler.stop();
        self.scheduler_thread.stop();
    }

    /// A scheduler for every scheduled session running: those kept through
    /// a reload where the previous scheduler left them, those just started
    /// in the window `positions` says.
    fn start_scheduler(&mut self, positions: Vec<(usize, Position)>) -> Result<()> {
        self.stop_scheduler();
        let previous = self.scheduler.positions();
        let mut entries = Vec::new();
        let mut started = Vec::new();
        for src in &self.sources {
            for (kidx, s) in src.sessions().into_iter().enumerate() {
                let sess = &self.config.sessions[s];
                if sess.schedule.is_empty() {
                    continue;
                }
                let pos = positions
                    .iter()
                    .find(|(k, _)| *k == s)
                    .map(|(_, p)| *p)
                    .or_else(|| {
                        previous
                            .iter()
                            .find(|(n, _)| *n == sess.name)
                            .map(|(_, p)| *p)
                    });
                let Some(pos) = pos else { continue };
                entries.push(Entry {
                    session: s,
                    source: src.clone(),
                    kidx: kidx as u32,
                });
                started.push(pos);
            }
        }
        self.scheduler = Arc::new(Scheduler::new(&self.config.sessions, entries, started));
        self.scheduler_thread = Threads::default();
        if self.scheduler.is_empty() {
            return Ok(());
        }
        let scheduler = self.scheduler.clone();
        self.scheduler_thread
            .spawn("schedule".into(), move |_| scheduler.run())
    }

    /// Detaches every program, then stops the workers and lets the targets
    /// send what they hold (bounded), then stops them.
    fn stop_all(&mut self) {
        self.stop_scheduler();
        for s in &self.sources {
            if let Ok(mut p) = s.program.lock() {
                p.detach();
            }
        }
        for (_, mut t) in self.source_threads.drain() {
            t.stop();
        }
        for t in self.target_threads.values() {
            t.stop.store(true, Ordering::Relaxed);
        }
        for t in &self.targets {
            t.wake();
        }
        for (_, mut t) in self.target_threads.drain() {
            t.stop();
        }
    }

    /// Loads source `idx`'s programs, fills them and attaches them; starts
    /// its threads.
    fn start_source(&mut self, idx: usize, host: Option<RxHost>) -> Result<Started> {
        let cfg = &self.config.sources[idx];
        let sessions = self.config.sessions_of(idx);
        let (ingress, egress) = source_rule_sets(&self.config, idx)
            .with_context(|| format!("source `{}`: compiling the rules", cfg.name))?;
        // A copy source whose sessions all clone in the kernel writes no
        // ring record: it gets the smallest ring.
        let ring_used = sessions.iter().any(|&s| !self.paths[s].kernel);
        // The flow table is sized only when a session has a per-flow cutoff.
        let cutoff = sessions.iter().any(|&s| {
            self.config.sessions[s]
                .policies()
                .any(|p| p.flow_cutoff_bytes != 0 || p.flow_cutoff_packets != 0)
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
        let mut positions = Vec::new();
        for (k, &s) in sessions.iter().enumerate() {
            let sess = &self.config.sessions[s];
            // The policy in force now (a window's, or the session's own),
            // in slot 0 of the kernel and of the plan, before anything attaches.
            let pos = (!sess.schedule.is_empty())
                .then(|| crate::config::schedule::position(&sess.schedule, now));
            let policy = sess.policy(pos.and_then(|p| p.active));
            if let Some(pos) = pos {
                super::schedule::log_in_force(sess, &pos, &policy);
                positions.push((s, pos));
            }
            plans[k].set_slot(0, &policy);
            program
                .set_policy(k as u32, &policy, true)
                .with_context(|| format!("source `{}`: setting the session policies", cfg.name))?;
            program
                .set_cutoff_idle(k as u32, sess.flow_cutoff_idle)
                .with_context(|| format!("source `{}`: setting the flow cutoff", cfg.name))?;
        }
        let prepared = Prepared {
            program,
            plans,
            paths,
            sessions,
            rules,
        };
        let mut threads = Threads::default();
        let mut keep = KernelKeep::default();
        let source = match cfg.mode {
            SourceMode::Tap => self.start_tap(idx, prepared, host, &mut threads, &mut keep),
            SourceMode::Copy => self.start_copy(idx, prepared, &mut threads, &mut keep),
        };
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                threads.stop();
                return Err(e);
            }
        };
        let name = &self.config.sources[idx].name;
        let KernelKeep {
            tunnels,
            groups,
            dests,
            clones,
        } = keep;
        let spawned = (|| -> Result<()> {
            if !tunnels.is_empty() || !groups.is_empty() || !dests.is_empty() {
                threads
                    .spawn(format!("kpath-{name}"), move |stop| {
                        super::tunnels::keep(tunnels, groups, dests, stop)
                    })
                    .context("spawning the kernel path's next-hop and group thread")?;
            }
            if !clones.is_empty() {
                threads
                    .spawn(format!("clones-{name}"), move |stop| {
                        super::clones::watch(clones, stop)
                    })
                    .context("spawning the kernel-path targets' link thread")?;
            }
            Ok(())
        })();
        if let Err(e) = spawned {
            if let Ok(mut p) = source.program.lock() {
                p.detach();
            }
            threads.stop();
            return Err(e);
        }
        Ok(Started {
            source,
            threads,
            positions,
        })
    }

    /// Every destination of `source`'s kernel-path sessions that is target
    /// `t`, directly or as a member of the session's group.
    fn fast_dests_of(&self, source: &Source, t: usize) -> Vec<super::stats::FastDestRef> {
        let mut out = Vec::new();
        for (kidx, s) in source.sessions().into_iter().enumerate() {
            if !source.paths[kidx].kernel {
                continue;
            }
            let member = self
                .config
                .session_group(s)
                .is_some_and(|g| g.members.contains(&t));
            for (key, t2) in self.config.session_targets(s).into_iter().enumerate() {
                if t2 == t {
                    out.push(super::stats::FastDestRef {
                        session: kidx,
                        key: key as u32,
                        member,
                    });
                }
            }
        }
        out
    }

    /// Tap mode: one AF_XDP socket and worker per RX queue, then XDP. The
    /// first RX queue joins `host` (an interface target's UMEM) when given.
    fn start_tap(
        &mut self,
        idx: usize,
        mut prepared: Prepared,
        host: Option<RxHost>,
        threads: &mut Threads,
        keep: &mut KernelKeep,
    ) -> Result<Arc<Source>> {
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
        for (kidx, s) in source.sessions().into_iter().enumerate() {
            if !source.paths[kidx].kernel {
                continue;
            }
            let group = self.config.session_group(s);
            let members: &[usize] = group.map_or(&[], |g| &g.members[..]);
            for (key, t) in self.config.session_targets(s).into_iter().enumerate() {
                let TargetSpec::Interface { interface, .. } = &self.config.targets[t].spec else {
                    continue;
                };
                let Some(ifindex) = self.target_ifindex[t] else {
                    continue;
                };
                let dests = self.fast_dests_of(&source, t);
                keep.dests.push(super::tunnels::KernelDest {
                    source: source.clone(),
                    session: kidx as u32,
                    key: key as u32,
                    target: self.config.targets[t].name.clone(),
                    interface: interface.clone(),
                    ifindex,
                    mtu: netdev::mtu(interface),
                    up: true,
                    devices: self.target_devices.clone(),
                    dests,
                    member: members.contains(&t),
                });
            }
            if let Some(g) = group {
                keep.groups.push(super::tunnels::KernelGroup {
                    source: source.clone(),
                    session: kidx as u32,
                    members: g.members.iter().map(|&m| self.targets[m].clone()).collect(),
                    devices: g
                        .members
                        .iter()
                        .filter_map(|&m| {
                            let name = &self.config.targets[m].name;
                            self.target_ifindex[m].map(|i| (i, name.clone()))
                        })
                        .collect(),
                    up: crate::kernel::fast_path::low_bits(g.members.len()),
                });
            }
        }
        self.keep_tunnels(&source, tunnels, true, keep);
        for (q, queue) in rx.into_iter().enumerate() {
            let src = source.clone();
            threads
                .spawn(format!("rx-{}-{q}", cfg.name), move |stop| {
                    worker(queue, &src, stop)
                })
                .context("spawning a worker thread")?;
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
        Ok(source)
    }

    /// Hands `source`'s kernel tunnels to its keeper thread (`devmap`: tap
    /// mode's, whose DEVMAP entry moves with the route).
    fn keep_tunnels(
        &self,
        source: &Arc<Source>,
        tunnels: Vec<PendingTunnel>,
        devmap: bool,
        keep: &mut KernelKeep,
    ) {
        let sessions = source.sessions();
        for p in tunnels {
            let t = &self.config.targets[p.target];
            keep.tunnels.push(super::tunnels::KernelTunnel {
                source: source.clone(),
                session: p.session,
                key: p.key,
                target: t.name.clone(),
                queue: self.targets[p.target].clone(),
                spec: t.spec.clone(),
                vni: self.config.sessions[sessions[p.session as usize]].vni,
                tai_offset: p.tai_offset,
                hop: p.hop.dmac.map(|_| p.hop),
                device: p.hop.ifindex,
                devmap,
                headers: p.headers,
                why_down: None,
                dests: self.fast_dests_of(source, p.target),
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
            let group = self
                .config
                .session_group(s)
                .map(|g| {
                    g.members
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
    fn start_copy(
        &mut self,
        idx: usize,
        mut prepared: Prepared,
        threads: &mut Threads,
        keep: &mut KernelKeep,
    ) -> Result<Arc<Source>> {
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
        keep.clones
            .extend(devices.into_iter().map(|device| super::clones::Watched {
                source: source.clone(),
                device,
            }));
        self.keep_tunnels(&source, tunnels, false, keep);
        if ring_used {
            let src = source.clone();
            threads
                .spawn(format!("copy-{}", cfg.name), move |stop| {
                    copy_reader(&ring, &src, stop)
                })
                .context("spawning the ring-buffer reader thread")?;
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
        Ok(source)
    }

    fn log_paths(&self, source: &Source) {
        for (s, path) in source.sessions().into_iter().zip(&source.paths) {
            let sess = &self.config.sessions[s];
            // A scheduled session's settings are its window's: the schedule
            // logs the ones in force (`session …: … active until …`).
            let own = |v: u32| sess.schedule.is_empty().then_some(v);
            if path.kernel && source.mode == SourceMode::Copy {
                tracing::info!(
                    session = %sess.name,
                    sample = own(sess.sample),
                    path = path.name_in(source.mode),
                    relay = source.relay.as_deref().unwrap_or("none"),
                    "session served in the kernel: tcx clones each mirrored frame to each target \
                     device (bpf_clone_redirect), tunnel targets through the relay device that \
                     encapsulates them, and passes the frame on; no ring buffer, no userspace copy"
                );
            } else if path.kernel {
                tracing::info!(
                    session = %sess.name,
                    sample = own(sess.sample),
                    path = path.name(),
                    "session served in the kernel: XDP redirects each mirrored frame to its targets' DEVMAP (a broadcast for several), no userspace copy"
                );
            } else {
                tracing::info!(
                    session = %sess.name,
                    sample = own(sess.sample),
                    rate_limit_pps = own(sess.rate_limit_pps),
                    packet_length = own(sess.packet_length),
                    path = path.name_in(source.mode),
                    why = %path.reason,
                    "session served through userspace"
                );
            }
        }
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
}

/// The plane's indexing before a start, to put back if it fails.
struct IndexSnapshot {
    config: Config,
    sources: Vec<(Arc<Source>, Vec<usize>)>,
    targets: Vec<Arc<TargetQueue>>,
    groups: Vec<Arc<TargetGroup>>,
    paths: Vec<PathChoice>,
    target_ifindex: Vec<Option<u32>>,
    target_hops: Hops,
}

/// Opens target `ti` of `config` and starts its sender. `share`: the tap
/// source that will share its UMEM (interface targets), whose RX queue then
/// joins the returned host. `go`: set once the whole start succeeded (a
/// pcapng target touches no file before).
fn open_target(
    config: &Config,
    ti: usize,
    share: Option<usize>,
    go: &Arc<AtomicBool>,
) -> Result<(Arc<TargetQueue>, Threads, Option<RxHost>)> {
    let t = &config.targets[ti];
    let mut threads = Threads::default();
    let stop = threads.stop.clone();
    let mut host = None;
    let (queue, handle) = match &t.spec {
        TargetSpec::Interface {
            interface,
            zero_copy,
        } => {
            let with = share.map(|s| {
                let src = &config.sources[s];
                ShareWith {
                    frames: src.umem_frames,
                    ring_size: src.ring_size,
                }
            });
            let (started, handle) =
                interface::start(&t.name, interface, *zero_copy, t.queue_size, with, stop)
                    .with_context(|| {
                        format!(
                    "target `{}`: opening AF_XDP TX on {interface} (does it exist and is it up?)",
                    t.name
                )
                    })?;
            host = started.host.map(RxHost::Umem);
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
            let interfaces = config
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.interface.clone()))
                .collect();
            let started = pcapng::start(
                &t.name,
                spec,
                interfaces,
                t.queue_size,
                share.map(|s| config.sources[s].umem_frames),
                go.clone(),
                stop,
            )
            .with_context(|| format!("target `{}`: opening the capture file", t.name))?;
            tracing::info!(target = %t.name, path = %spec.path.display(), "pcapng target ready");
            host = started.host.map(RxHost::Memory);
            (started.queue, started.handle)
        }
    };
    threads.handles.push(handle);
    Ok((queue, threads, host))
}

/// One AF_XDP socket per RX queue of a tap source's interface, each in the
/// XSKMAP slot of its queue. The first queue joins `host` (an interface
/// target's UMEM) when given and when it can.
fn open_rx_queues(
    cfg: &crate::config::Source,
    program: &SourceProgram,
    mut host: Option<RxHost>,
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

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_FILTERS: &str = r#"
[[source]]
name = "feed"
interface = "eth1"

[[filter]]
name = "f"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[filter]]
name = "g"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "eth2"

[[session]]
name = "a"
source = "feed"
filter = "f"
targets = ["ids0"]
"#;

    fn parse(text: &str) -> Config {
        crate::config::parse(text, "t.toml").expect("valid")
    }

    /// A reload changes the rules when a filter's rules change, and when a
    /// session moves to another filter with the same rules (a review found
    /// that said "nothing changed").
    #[test]
    fn rules_differ_by_a_filters_rules_or_the_filter_a_session_uses() {
        let old = parse(TWO_FILTERS);
        assert!(!rules_differ(&old, &parse(TWO_FILTERS)));
        let moved = TWO_FILTERS.replace("filter = \"f\"\ntargets", "filter = \"g\"\ntargets");
        assert!(rules_differ(&old, &parse(&moved)));
        let reject = TWO_FILTERS.replacen("action = \"accept\"", "action = \"reject\"", 1);
        assert!(rules_differ(&old, &parse(&reject)));
    }

    #[test]
    fn a_reloads_summary_says_what_it_did() {
        let mut a = Applied::default();
        assert_eq!(a.summary(), "nothing changed: the file is what was running");
        a.filters_changed = true;
        assert_eq!(a.summary(), "filters only; everything else kept running");
        a.started = vec!["target ids1".into()];
        a.restarted = vec!["source feed2".into()];
        assert_eq!(
            a.summary(),
            "started target ids1; restarted source feed2; everything else kept running"
        );
    }
}
