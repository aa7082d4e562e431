//! A running source: its loaded programs, its sessions' plans and paths, its
//! sockets, and the counters its threads keep.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use anyhow::Result;

use super::plan::PathChoice;
use super::session::SessionPlan;
use crate::config::{Config, Direction, SourceMode};
use crate::filter::ruleset::{self, RuleSet};
use crate::kernel::xsk::StatsHandle;
use crate::kernel::SourceProgram;

pub(super) struct Source {
    pub(super) name: String,
    /// Index in `Config::sources` (the pcapng interface id).
    pub(super) index: u16,
    pub(super) interface: String,
    pub(super) mode: SourceMode,
    pub(super) program: Mutex<SourceProgram>,
    /// Kernel session index -> index into `Config::sessions` of the config
    /// running now (a reload that keeps the source renumbers them).
    sessions: Mutex<Vec<usize>>,
    /// Per kernel session index: what the workers do with its frames.
    pub(super) plans: Vec<SessionPlan>,
    /// Per kernel session index: the path serving it.
    pub(super) paths: Vec<PathChoice>,
    pub(super) sockets: Vec<StatsHandle>,
    pub(super) no_metadata: AtomicU64,
    /// How ingress is hooked: "native" / "generic" XDP, "tcx", or "none".
    pub(super) attach_mode: &'static str,
    pub(super) zero_copy: bool,
    /// Rules in force (both directions) and how many rule sets were installed.
    pub(super) rules: AtomicU64,
    pub(super) rule_sets_installed: AtomicU64,
    /// Copy mode's relay device (kernel tunnels), by name, when it has one.
    pub(super) relay: Option<String>,
    /// The device its programs attached to (0: unknown), and whether the
    /// daemon saw it gone (see `Engine::check_sources`).
    pub(super) ifindex: u32,
    pub(super) gone: std::sync::atomic::AtomicBool,
    /// Per interface target on the kernel path (by name): the copies the
    /// kernel skipped without a trace while a device of it was down, before
    /// the daemon saw it (see `stats::fast_skipped`), counted `down`.
    fast_skipped: Mutex<std::collections::HashMap<String, u64>>,
}

/// A source's loaded programs and session plans, before attaching.
pub(super) struct Prepared {
    pub(super) program: SourceProgram,
    pub(super) plans: Vec<SessionPlan>,
    pub(super) paths: Vec<PathChoice>,
    pub(super) sessions: Vec<usize>,
    pub(super) rules: u64,
}

impl Prepared {
    pub(super) fn into_source(
        self,
        cfg: &crate::config::Source,
        idx: usize,
        attach_mode: &'static str,
        sockets: Vec<StatsHandle>,
        zero_copy: bool,
    ) -> Source {
        let relay = self.program.relay().map(|r| r.name.clone());
        Source {
            relay,
            ifindex: crate::kernel::ifindex(&cfg.interface).unwrap_or(0),
            gone: std::sync::atomic::AtomicBool::new(false),
            name: cfg.name.clone(),
            index: idx as u16,
            interface: cfg.interface.clone(),
            mode: cfg.mode,
            program: Mutex::new(self.program),
            sessions: Mutex::new(self.sessions),
            plans: self.plans,
            paths: self.paths,
            sockets,
            no_metadata: AtomicU64::new(0),
            attach_mode,
            zero_copy,
            rules: AtomicU64::new(self.rules),
            rule_sets_installed: AtomicU64::new(1),
            fast_skipped: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl Source {
    /// Kernel session index -> index into `Config::sessions`.
    pub(super) fn sessions(&self) -> Vec<usize> {
        self.sessions.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// What `stats::fast_skipped` found for kernel-path target `target`.
    pub(super) fn fast_skipped(&self, target: &str) -> u64 {
        self.fast_skipped
            .lock()
            .ok()
            .and_then(|m| m.get(target).copied())
            .unwrap_or(0)
    }

    /// Records `n` copies of `target` the kernel skipped (the most seen:
    /// the count only grows).
    pub(super) fn set_fast_skipped(&self, target: &str, n: u64) {
        if let Ok(mut m) = self.fast_skipped.lock() {
            let e = m.entry(target.to_string()).or_default();
            *e = (*e).max(n);
        }
    }

    /// After a reload renumbered the config's sessions.
    pub(super) fn set_sessions(&self, sessions: Vec<usize>) {
        if let Ok(mut s) = self.sessions.lock() {
            *s = sessions;
        }
    }
}

/// The rule sets a source's programs classify with: ingress always (empty
/// when the source does not mirror ingress), egress for copy-mode sources
/// that mirror egress.
pub(super) fn source_rule_sets(config: &Config, idx: usize) -> Result<(RuleSet, Option<RuleSet>)> {
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

pub(super) fn rule_count(ingress: &RuleSet, egress: &Option<RuleSet>) -> u64 {
    (ingress.rules + egress.as_ref().map_or(0, |e| e.rules)) as u64
}
