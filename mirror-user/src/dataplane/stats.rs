//! The counters `mirror stats` and the control socket report (SPEC "Counters").
//!
//! Invariants, at any quiescent moment (no frame in flight):
//! - per source: `received = matched + filtered` and
//!   `matched = mirrored + sampled_out + scheduled_out + sum(dropped)`;
//! - per target: `enqueued = sent_packets + sum(dropped) + queued`, where
//!   `queued` is 0 once the target is idle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::target::group::GroupStats;
pub use crate::target::TargetStats;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub sources: BTreeMap<String, SourceStats>,
    pub sessions: BTreeMap<String, SessionStats>,
    pub targets: BTreeMap<String, TargetStats>,
    /// Target groups: members, and copies moved off a member that was down.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStats {
    pub interface: String,
    /// "tap" or "copy".
    pub mode: String,
    /// How ingress is hooked: "native" or "generic" XDP, "tcx", or "none".
    pub xdp_mode: String,
    pub zero_copy: bool,
    pub queues: u32,
    pub received: u64,
    pub matched: u64,
    pub filtered: u64,
    pub sampled_out: u64,
    pub scheduled_out: u64,
    /// Frames handed to the sessions' targets.
    pub mirrored: u64,
    /// Matched frames lost before reaching a target, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Frames the parser could not fully read (still classified; see README).
    pub parser: BTreeMap<String, u64>,
    /// Ingress rules in force (all sessions together).
    #[serde(default)]
    pub rules: u64,
    /// Rule sets installed since start (1 + live updates and reloads).
    #[serde(default)]
    pub rule_sets_installed: u64,
    /// Should never happen: frames classified while a rule-set map was
    /// missing (counted in `filtered`).
    #[serde(default)]
    pub no_rule_set: u64,
    /// Frames classified by a bitmap scan because their class tuple was not
    /// in the verdict cache (the rest were answered by the cache).
    #[serde(default)]
    pub classify_scans: u64,
    /// Copy mode: the kernel's counters per direction ("ingress", "egress").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub directions: BTreeMap<String, DirectionStats>,
}

/// Copy mode: what the kernel saw in one direction.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectionStats {
    pub received: u64,
    pub matched: u64,
    pub filtered: u64,
    pub sampled_out: u64,
    /// Records written to the ring buffer.
    pub copied: u64,
    /// Matched, but the ring buffer was full (the frame still passed).
    pub ring_full: u64,
    /// Copies cut at the per-record maximum (GSO super-frames on egress).
    pub copy_cut: u64,
}

impl SourceStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionStats {
    pub source: String,
    /// Which path serves the session: "kernel" (the in-kernel fast path,
    /// a DEVMAP broadcast) or "af_xdp" (through userspace).
    pub path: String,
    pub targets: Vec<String>,
    /// Frames this session's filter accepted.
    pub matched: u64,
    /// Of those, handed to the session's targets.
    pub mirrored: u64,
    /// Skipped by the session's 1-in-`sample` sampling.
    #[serde(default)]
    pub sampled_out: u64,
    /// Over the session's `rate_limit_pps` (each target counts them `rate_limited`).
    #[serde(default)]
    pub rate_limited: u64,
    pub scheduled_out: u64,
    /// The active schedule window, if the session has a schedule.
    pub schedule_window: Option<String>,
}

impl TargetStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}
