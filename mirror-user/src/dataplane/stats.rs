//! The counters `mirror stats` and the control socket report (SPEC "Counters").
//!
//! Invariants, at any quiescent moment (no frame in flight):
//! - per source: `received = matched + filtered` and
//!   `matched = mirrored + sampled_out + scheduled_out + cutoff + sum(dropped) + queued`,
//!   where `queued` is 0 once the source is idle;
//!
//! and every term is counted where it happens, never derived from the
//! others, so a frame lost on the way breaks an equation. The one derived
//! counter is a kernel-path target's `dropped.unknown` (copies the kernel
//! dropped where mirror cannot see why), which tests assert is 0; of what
//! it would hold, the copies the kernel skipped while a device of the target
//! was down are moved to `down` when the daemon sees it (`fast_skipped`).
//! - per target: `enqueued = sent_packets + sum(dropped) + queued`, where
//!   `queued` is 0 once the target is idle.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use anyhow::Result;
use mirror_ebpf::mirror::types::mirror_counter as C;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::engine::Plane;
use super::source::Source;
use crate::config::SourceMode;
use crate::kernel::{
    AttachMode, CloneStats, CutoffCounts, FastStats, SourceProgram, TunnelStats, COUNTERS,
};

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
    /// Frames past their flow's cutoff (`flow_cutoff_*`): not mirrored.
    #[serde(default)]
    pub cutoff: u64,
    /// Of `mirrored`: frames cut where they crossed their flow's
    /// `flow_cutoff_bytes`.
    #[serde(default)]
    pub cutoff_cut: u64,
    /// Of `mirrored`: frames that crossed it on a path that cannot cut a
    /// copy (copy mode's kernel path clones whole frames), mirrored whole.
    #[serde(default)]
    pub cutoff_whole: u64,
    /// Frames handed to the sessions' targets.
    pub mirrored: u64,
    /// Frames the kernel handed over (AF_XDP RX rings, the copy ring) that
    /// no thread has read yet: 0 once the source is idle.
    #[serde(default)]
    pub queued: u64,
    /// Matched frames lost before reaching a target, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Frames the parser could not fully read (still classified; see README).
    pub parser: BTreeMap<String, u64>,
    /// Rules in force, both directions, all sessions together.
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
    /// Should never happen: frames of a session with a per-flow cutoff for
    /// which no flow entry could be made (mirrored as if under the cutoff).
    #[serde(default)]
    pub flow_untracked: u64,
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
    /// Matched while their session was disabled (its schedule, `enabled`).
    #[serde(default)]
    pub scheduled_out: u64,
    /// Past their flow's cutoff: not copied.
    #[serde(default)]
    pub cutoff: u64,
    /// Copied, cut where they crossed their flow's byte cutoff.
    #[serde(default)]
    pub cutoff_cut: u64,
    /// Cloned whole across it (the kernel path cannot cut a clone).
    #[serde(default)]
    pub cutoff_whole: u64,
    /// Records written to the ring buffer.
    pub copied: u64,
    /// Matched, but the ring buffer was full (the frame still passed).
    pub ring_full: u64,
    /// Copies cut at the per-record maximum (GSO super-frames on egress).
    pub copy_cut: u64,
    /// Matched, but reading the frame into its record failed (should never
    /// happen; the frame passed).
    #[serde(default)]
    pub copy_error: u64,
    /// Frames sent down the kernel path (cloned at tcx to their session's
    /// targets, no ring record).
    #[serde(default)]
    pub cloned: u64,
}

impl SourceStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionStats {
    pub source: String,
    /// Which path serves the session: "kernel" (the in-kernel fast path:
    /// a DEVMAP broadcast in tap mode, tcx clones in copy mode, tunnels
    /// through the source's relay), "af_xdp"
    /// (through userspace, tap mode) or "ring_buffer" (through userspace,
    /// copy mode).
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
    /// Matched while the session was disabled (`enabled = false`, or by its
    /// schedule's active window): not mirrored.
    #[serde(default)]
    pub scheduled_out: u64,
    /// Past their flow's cutoff (`flow_cutoff_*`): not mirrored.
    #[serde(default)]
    pub cutoff: u64,
    /// Of `mirrored`: cut where they crossed their flow's `flow_cutoff_bytes`.
    #[serde(default)]
    pub cutoff_cut: u64,
    /// Of `mirrored`: crossed it on copy mode's kernel path, which cannot
    /// cut a clone: mirrored whole.
    #[serde(default)]
    pub cutoff_whole: u64,
    /// A scheduled session's active window, `window 2 (mon-fri 08:00-18:00
    /// Europe/Berlin)`, or `none` outside every window; absent without a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_window: Option<String>,
    /// When the next window edge comes (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_next_edge: Option<String>,
}

impl TargetStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

impl Plane {
    /// A consistent-enough snapshot of every counter: the running sources',
    /// sessions', targets' and groups', plus what a reload stopped and
    /// started again under the same name (`retired`).
    pub(super) fn stats(&self) -> Result<Stats> {
        let mut out = self.kernel_stats(&self.sources)?;
        let parts = std::mem::take(&mut out.targets);
        for t in &self.targets {
            let mut snap = t.snapshot();
            if let Some(p) = parts.get(&t.name) {
                absorb(&mut snap, p);
            }
            out.targets.insert(t.name.clone(), snap);
        }
        let parts = std::mem::take(&mut out.groups);
        for g in &self.groups {
            let mut snap = g.snapshot();
            if let Some(p) = parts.get(&g.name) {
                absorb(&mut snap, p);
            }
            out.groups.insert(g.name.clone(), snap);
        }
        absorb_all(&mut out, &self.retired, false);
        Ok(out)
    }

    /// The counters of `sources` and their sessions, and what they did for
    /// each target and group on the kernel paths (only those parts: a
    /// target's own queue and sender counters are its snapshot's).
    pub(super) fn kernel_stats(&self, sources: &[Arc<Source>]) -> Result<Stats> {
        let mut out = Stats::default();
        // Per target: what the kernel path sent it.
        let mut fast = vec![FastTarget::default(); self.targets.len()];
        // Per target: what copy mode's kernel path cloned to it.
        let mut clones = vec![CloneTarget::default(); self.targets.len()];
        for src in sources {
            // Copy mode's kernel path counts a frame for its session before
            // its destinations: read them first, so no outcome is read
            // without the frame it belongs to.
            let outcomes = match src.mode {
                SourceMode::Copy => self.clone_outcomes(src)?,
                SourceMode::Tap => Vec::new(),
            };
            let k = KernelCounts::read(src)?;
            if src.mode == SourceMode::Copy {
                add_clone_sessions(&k, outcomes, &mut clones);
            } else {
                // Read after the sessions' counts, so a target's kernel-path
                // `enqueued` never lags what its devices were handed.
                self.add_fast_sessions(src, &k, &mut fast)?;
            }
            out.sources.insert(src.name.clone(), source_stats(src, &k));
            for (kidx, s) in src.sessions().into_iter().enumerate() {
                let sess = &self.config.sessions[s];
                out.sessions
                    .insert(sess.name.clone(), self.session_stats(src, &k, kidx, s));
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            let mut part = TargetStats::default();
            let mut any = false;
            let skipped = sources.iter().map(|s| s.fast_skipped(&t.name)).sum();
            if fast[i].tunnel {
                add_fast_tunnel(&mut part, &fast[i], skipped);
                any = true;
            } else if fast[i].enqueued > 0 {
                // Every device the target had (its port may have been
                // created again under its name).
                let devices = self
                    .target_devices
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                    .get(&t.name)
                    .cloned()
                    .unwrap_or_default();
                let mut dev = FastStats::default();
                for ifindex in devices {
                    dev += fast_stats(sources, ifindex)?;
                }
                add_fast_path(&mut part, &fast[i], dev, skipped);
                any = true;
            }
            if clones[i].sessions > 0 {
                add_clone_path(&mut part, &clones[i]);
                any = true;
            }
            if any {
                out.targets.insert(t.name.clone(), part);
            }
        }
        for (gi, g) in self.groups.iter().enumerate() {
            let (rehashed, all_down) = self.kernel_group_counts(sources, gi)?;
            out.groups.insert(
                g.name.clone(),
                GroupStats {
                    rehashed,
                    all_down,
                    ..Default::default()
                },
            );
        }
        Ok(out)
    }

    /// Adds what `src`'s kernel-path sessions sent to each of their targets,
    /// and for tunnel targets what their DEVMAP programs and egress devices
    /// did with it (read after the sessions' counts, as for devices).
    fn add_fast_sessions(
        &self,
        src: &Source,
        k: &KernelCounts,
        fast: &mut [FastTarget],
    ) -> Result<()> {
        let generic = src.attach_mode == AttachMode::Generic.as_str();
        let program = src
            .program
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        for (kidx, s) in src.sessions().into_iter().enumerate() {
            if !src.paths[kidx].kernel {
                continue;
            }
            let members: &[usize] = self.config.session_group(s).map_or(&[], |g| &g.members[..]);
            for (key, t) in self.config.session_targets(s).into_iter().enumerate() {
                let f = &mut fast[t];
                f.generic |= generic;
                let dest = FastDestRef {
                    session: kidx,
                    key: key as u32,
                    member: members.contains(&t),
                };
                f.add_dest(&program, k, dest, generic)?;
                // A tunnel on the kernel path had a route when it was set up
                // (the planner requires one); its hop of the last reload may
                // be gone since, its DEVMAP entry and counters are not.
                if self.config.targets[t].spec.tunnel().is_some() {
                    let slot = program.tunnel_stats(kidx as u32, key as u32)?;
                    let dev = program.tunnel_device_stats(kidx as u32, key as u32)?;
                    let f = &mut fast[t];
                    f.tunnel = true;
                    f.slot.packets += slot.packets;
                    f.slot.bytes += slot.bytes;
                    f.slot.truncated += slot.truncated;
                    f.slot.down += slot.down;
                    f.slot.errors += slot.errors;
                    f.dev += dev;
                }
            }
        }
        Ok(())
    }

    /// What became of the frames each destination of `src`'s kernel-path
    /// copy sessions was given: (kernel session index, target, outcomes,
    /// and for a tunnel what its relay slot did with the clones it got).
    fn clone_outcomes(&self, src: &Source) -> Result<Vec<CloneOutcome>> {
        let program = src
            .program
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        let mut out = Vec::new();
        for (kidx, s) in src.sessions().into_iter().enumerate() {
            if !src.paths[kidx].kernel {
                continue;
            }
            for (key, t) in self.config.session_targets(s).into_iter().enumerate() {
                // The clone stage first: no relay outcome is read without
                // the clone it belongs to.
                let clone = program.clone_stats(kidx as u32, key as u32)?;
                let relay = match self.config.targets[t].spec.tunnel() {
                    Some(_) => Some(program.tunnel_stats(kidx as u32, key as u32)?),
                    None => None,
                };
                out.push((kidx, t, clone, relay));
            }
        }
        Ok(out)
    }

    /// The session at kernel index `kidx` of `src` (index `s` in the config).
    fn session_stats(&self, src: &Source, k: &KernelCounts, kidx: usize, s: usize) -> SessionStats {
        let sess = &self.config.sessions[s];
        let shown = self.scheduler.shown(s);
        SessionStats {
            source: src.name.clone(),
            path: src.paths[kidx].name_in(src.mode).into(),
            targets: sess
                .targets
                .iter()
                .map(|&d| self.config.dest_name(d).to_string())
                .collect(),
            matched: k.session_matched[kidx],
            mirrored: src.plans[kidx].mirrored.load(Ordering::Relaxed) + k.session_kernel[kidx].0,
            sampled_out: k.session_sampled_out[kidx],
            rate_limited: src.plans[kidx].rate_limited.load(Ordering::Relaxed)
                + k.session_rate_limited[kidx],
            scheduled_out: k.session_scheduled_out[kidx],
            cutoff: k.session_cutoff[kidx].cutoff,
            cutoff_cut: k.session_cutoff[kidx].cut,
            cutoff_whole: k.session_cutoff[kidx].whole,
            schedule_window: shown.as_ref().map(|w| w.window.clone()),
            schedule_next_edge: shown.and_then(|w| w.next_edge).map(|t| t.to_string()),
        }
    }

    /// What the kernel path's member picks of group `gi` counted, over
    /// every kernel-path session of `sources` using it: (rehashed, all_down).
    fn kernel_group_counts(&self, sources: &[Arc<Source>], gi: usize) -> Result<(u64, u64)> {
        let mut out = (0, 0);
        for src in sources {
            for (kidx, s) in src.sessions().into_iter().enumerate() {
                let uses = self.config.sessions[s]
                    .targets
                    .contains(&crate::config::Dest::Group(gi));
                if src.paths[kidx].kernel && uses {
                    let (r, a) = src
                        .program
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned lock"))?
                        .group_count(kidx as u32)?;
                    out.0 += r;
                    out.1 += a;
                }
            }
        }
        Ok(out)
    }
}

/// Fast-path counters of target device `ifindex`, over `sources`.
fn fast_stats(sources: &[Arc<Source>], ifindex: u32) -> Result<FastStats> {
    let mut dev = FastStats::default();
    for src in sources {
        dev += src
            .program
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .fast_stats(ifindex)?;
    }
    Ok(dev)
}

/// Counters that say how things are now, not how many: never summed.
const GAUGES: [&str; 4] = ["queued", "queues", "rules", "members_up"];

/// Adds `part`'s counters to `live`'s (numbers, in maps too: drop reasons),
/// keeping `live`'s settings, states and [`GAUGES`].
pub(super) fn absorb<T: Serialize + serde::de::DeserializeOwned>(live: &mut T, part: &T) {
    fn add(live: &mut serde_json::Value, part: &serde_json::Value) {
        use serde_json::Value;
        match (live, part) {
            (Value::Object(l), Value::Object(p)) => {
                for (k, pv) in p {
                    if GAUGES.contains(&k.as_str()) {
                        continue;
                    }
                    match l.get_mut(k) {
                        Some(lv) => add(lv, pv),
                        None if pv.is_number() || pv.is_object() => {
                            l.insert(k.clone(), pv.clone());
                        }
                        None => {}
                    }
                }
            }
            (Value::Number(l), Value::Number(p)) => {
                if let (Some(a), Some(b)) = (l.as_u64(), p.as_u64()) {
                    *l = (a + b).into();
                }
            }
            _ => {}
        }
    }
    let (Ok(mut l), Ok(p)) = (serde_json::to_value(&*live), serde_json::to_value(part)) else {
        return;
    };
    add(&mut l, &p);
    if let Ok(v) = serde_json::from_value(l) {
        *live = v;
    }
}

/// [`absorb`] for every source, session, target and group `part` has that
/// `live` has too; with `insert`, those it lacks are added as they are.
pub(super) fn absorb_all(live: &mut Stats, part: &Stats, insert: bool) {
    fn each<T: Serialize + serde::de::DeserializeOwned + Clone>(
        live: &mut BTreeMap<String, T>,
        part: &BTreeMap<String, T>,
        insert: bool,
    ) {
        for (name, p) in part {
            match live.get_mut(name) {
                Some(l) => absorb(l, p),
                None if insert => {
                    live.insert(name.clone(), p.clone());
                }
                None => {}
            }
        }
    }
    each(&mut live.sources, &part.sources, insert);
    each(&mut live.sessions, &part.sessions, insert);
    each(&mut live.targets, &part.targets, insert);
    each(&mut live.groups, &part.groups, insert);
}

/// One source's kernel counters, read under its program lock.
struct KernelCounts {
    /// `enum mirror_counter`, `[ingress, egress]`.
    by_dir: [[u64; COUNTERS]; 2],
    session_matched: Vec<u64>,
    session_sampled_out: Vec<u64>,
    session_scheduled_out: Vec<u64>,
    /// Per session: the per-flow cutoff's counts.
    session_cutoff: Vec<CutoffCounts>,
    /// Per session: (frames, bytes) sent down the kernel path.
    session_kernel: Vec<(u64, u64)>,
    /// Per session: frames over its rate limit on the kernel path.
    session_rate_limited: Vec<u64>,
    /// Copy mode: frames each direction sent down the kernel path.
    clone_dir: [u64; 2],
}

impl KernelCounts {
    fn read(src: &Source) -> Result<KernelCounts> {
        let p = src
            .program
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        let sessions = 0..src.sessions().len() as u32;
        let per_session = |f: &dyn Fn(u32) -> Result<u64, crate::kernel::LoaderError>| {
            sessions
                .clone()
                .map(|i| f(i).unwrap_or(0))
                .collect::<Vec<u64>>()
        };
        Ok(KernelCounts {
            by_dir: p.counters_by_direction()?,
            session_matched: per_session(&|i| p.session_matched(i)),
            session_sampled_out: per_session(&|i| p.session_sampled_out(i)),
            session_scheduled_out: per_session(&|i| p.session_scheduled_out(i)),
            session_cutoff: sessions
                .clone()
                .map(|i| p.session_cutoff(i).unwrap_or_default())
                .collect(),
            session_kernel: sessions
                .clone()
                .map(|i| p.session_kernel(i).unwrap_or_default())
                .collect(),
            session_rate_limited: per_session(&|i| p.kernel_rate_limited(i)),
            clone_dir: match src.mode {
                SourceMode::Copy => p.clone_dir()?,
                SourceMode::Tap => [0; 2],
            },
        })
    }

    /// Both directions together.
    fn total(&self) -> [u64; COUNTERS] {
        std::array::from_fn(|i| self.by_dir[0][i] + self.by_dir[1][i])
    }
}

/// A source's counters: the kernel's, its sockets' or ring's drops, and
/// what its threads could not hand on.
fn source_stats(src: &Source, k: &KernelCounts) -> SourceStats {
    let counters = k.total();
    let c = |k: C| counters[k.0 as usize];
    let no_metadata = src.no_metadata.load(Ordering::Relaxed);
    let user_rate_limited: u64 = src
        .plans
        .iter()
        .map(|p| p.rate_limited.load(Ordering::Relaxed))
        .sum();
    let rate_limited = user_rate_limited + k.session_rate_limited.iter().sum::<u64>();
    let (handed_over, kernel_drops) = handed_over(src, &counters);
    // Each counted where it happens: the kernel path's frames by xdp_tap,
    // the rest by the sessions' plans as they hand a frame to its targets.
    let offered: u64 = src
        .plans
        .iter()
        .map(|p| p.mirrored.load(Ordering::Relaxed))
        .sum();
    let mirrored = offered + k.session_kernel.iter().map(|k| k.0).sum::<u64>();
    // Handed over by the kernel, not yet read by a thread (0 once idle; a
    // frame lost on the way would stay here).
    let queued = handed_over.saturating_sub(offered + user_rate_limited + no_metadata);
    let dropped = kernel_drops
        .into_iter()
        .chain([("no_metadata", no_metadata), ("rate_limited", rate_limited)])
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
        scheduled_out: c(C::MIRROR_CNT_SCHEDULED_OUT),
        cutoff: c(C::MIRROR_CNT_CUTOFF),
        cutoff_cut: c(C::MIRROR_CNT_CUTOFF_CUT),
        cutoff_whole: c(C::MIRROR_CNT_CUTOFF_WHOLE),
        mirrored,
        queued,
        dropped,
        parser,
        rules: src.rules.load(Ordering::Relaxed),
        rule_sets_installed: src.rule_sets_installed.load(Ordering::Relaxed),
        no_rule_set: c(C::MIRROR_CNT_NO_RULE_SET),
        classify_scans: c(C::MIRROR_CNT_CLASSIFY_SCAN),
        flow_untracked: c(C::MIRROR_CNT_FLOW_UNTRACKED),
        directions: match src.mode {
            SourceMode::Tap => Default::default(),
            SourceMode::Copy => direction_stats(&k.by_dir, &k.clone_dir),
        },
    }
}

/// What the kernel handed `src`'s threads (AF_XDP sockets, or the copy
/// ring), and the drops on the way, by reason.
fn handed_over(src: &Source, counters: &[u64; COUNTERS]) -> (u64, Vec<(&'static str, u64)>) {
    let c = |k: C| counters[k.0 as usize];
    match src.mode {
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
    }
}

/// Copy mode: the counters of each direction.
fn direction_stats(
    by_dir: &[[u64; COUNTERS]; 2],
    cloned: &[u64; 2],
) -> BTreeMap<String, DirectionStats> {
    [("ingress", &by_dir[0]), ("egress", &by_dir[1])]
        .into_iter()
        .zip(cloned)
        .map(|((name, d), &cloned)| {
            let c = |k: C| d[k.0 as usize];
            (
                name.to_string(),
                DirectionStats {
                    received: c(C::MIRROR_CNT_RECEIVED),
                    matched: c(C::MIRROR_CNT_MATCHED),
                    filtered: c(C::MIRROR_CNT_FILTERED),
                    sampled_out: c(C::MIRROR_CNT_SAMPLED_OUT),
                    scheduled_out: c(C::MIRROR_CNT_SCHEDULED_OUT),
                    cutoff: c(C::MIRROR_CNT_CUTOFF),
                    cutoff_cut: c(C::MIRROR_CNT_CUTOFF_CUT),
                    cutoff_whole: c(C::MIRROR_CNT_CUTOFF_WHOLE),
                    copied: c(C::MIRROR_CNT_COPIED),
                    ring_full: c(C::MIRROR_CNT_DROP_RING_FULL),
                    copy_cut: c(C::MIRROR_CNT_COPY_CUT),
                    copy_error: c(C::MIRROR_CNT_COPY_ERROR),
                    cloned,
                },
            )
        })
        .collect()
}

/// What the in-kernel fast path sent one target, from its sessions' counts.
#[derive(Debug, Clone, Copy, Default)]
struct FastTarget {
    /// Copies the sessions sent to it.
    enqueued: u64,
    /// Their bytes (sources in native XDP mode; generic mode counts per device).
    bytes: u64,
    generic: bool,
    /// A tunnel on the kernel path: what its DEVMAP programs did (`slot`)
    /// and what its egress devices were handed and refused (`dev`).
    tunnel: bool,
    slot: TunnelStats,
    dev: FastStats,
    /// Of `enqueued`: not sent, as its group had no member up (it was the
    /// flow's first choice), or over the session's rate limit.
    down: u64,
    rate_limited: u64,
}

/// One destination of a source's kernel-path session: the session's kernel
/// index, the destination's DEVMAP key, and whether it is a member of the
/// session's target group (picked per flow) or gets every copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FastDestRef {
    pub session: usize,
    pub key: u32,
    pub member: bool,
}

impl FastTarget {
    /// Adds what the kernel path sent to destination `d` of a source whose
    /// counters are `k` and program `program`.
    fn add_dest(
        &mut self,
        program: &SourceProgram,
        k: &KernelCounts,
        d: FastDestRef,
        generic: bool,
    ) -> Result<()> {
        let (kidx, key) = (d.session, d.key);
        if d.member {
            // A group member: what the kernel picked it for.
            let c = program.pick_count(kidx as u32, key)?;
            self.enqueued += c.packets + c.down + c.rate_limited;
            self.down += c.down;
            self.rate_limited += c.rate_limited;
            if !generic {
                self.bytes += c.bytes;
            }
        } else {
            let rl = k.session_rate_limited[kidx];
            self.enqueued += k.session_kernel[kidx].0 + rl;
            self.rate_limited += rl;
            // Copies while its device was down or gone.
            self.down += program.pick_count(kidx as u32, key)?.down;
            if !generic {
                self.bytes += k.session_kernel[kidx].1;
            }
        }
        Ok(())
    }

    /// Of the copies sent to an interface target, those its devices `dev`
    /// were never handed: not counted `down`, `rate_limited` or `too_big`,
    /// and not in the devices' transmit counts.
    fn unexplained(&self, dev: &FastStats) -> u64 {
        self.enqueued
            .saturating_sub(self.down + self.rate_limited)
            .saturating_sub(dev.packets)
            .saturating_sub(dev.too_big)
    }
}

/// What [`fast_skipped`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skipped {
    /// What no counter explains of the target's copies from this source.
    Unexplained(u64),
    /// Another destination of the target (in another session) is still in
    /// the DEVMAPs: the count waits for the last one out.
    NotAllOut,
    /// Every try met a copy between the reads.
    TooDense,
}

/// The copies of `src`'s kernel path to an interface or tunnel target (its
/// destinations `dests` in `src`'s sessions; `devices` reads its devices'
/// counts) that no counter explains, read when the daemon has seen the
/// target's device down or gone and taken every destination of it out of
/// the DEVMAPs (a group member's entry too: its device's keeper takes it
/// out like any other).
///
/// A broadcast skips a device that is down (or whose entry the kernel
/// removed with it) and a redirect to one fails, and nothing counts either;
/// from the switch on, `xdp_tap` counts such copies `down`. So what no
/// counter explains by then is what the kernel skipped while the device was
/// down before the daemon saw it (or dropped for another reason mirror
/// cannot see, since the last time).
///
/// With every destination out, after an RCU grace period no copy is on
/// its way to the devices: their counts are final. Each new copy then adds
/// one to its destination's `down` and then one to its session's frames
/// (in that order, mirror.bpf.c), and the two are read one after the other,
/// the frames again after: equal, no copy came between, and a copy caught
/// between its two counts only makes the result lower. So it is never more
/// than the copies unexplained. A group member's copies are what it was
/// picked for: sent on, or `down` (out of the DEVMAPs but still picked
/// until its group learns it, or its flows' first choice when every member
/// is down), one count per copy, read in the same sum. Tried up to 1,000
/// times (a few milliseconds).
pub(super) fn fast_skipped(
    src: &Source,
    dests: &[FastDestRef],
    devices: impl Fn(&SourceProgram) -> Result<FastStats, crate::kernel::LoaderError>,
) -> Result<Skipped> {
    {
        let program = src
            .program
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        for d in dests {
            if !program.dest_is_down(d.session as u32, d.key)? {
                return Ok(Skipped::NotAllOut);
            }
        }
    }
    crate::kernel::rcu_grace_period()?;
    let program = src
        .program
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
    let dev = devices(&program)?;
    // A destination's copies: its session's frames, or what a group member
    // was picked for (one count each, so a copy between the reads changes
    // the sum).
    let frames = |p: &SourceProgram| -> Result<u64> {
        dests.iter().try_fold(0u64, |n, d| {
            Ok(n + if d.member {
                let c = p.pick_count(d.session as u32, d.key)?;
                c.packets + c.down
            } else {
                p.session_kernel(d.session as u32)?.0
            })
        })
    };
    for _ in 0..1000 {
        let before = frames(&program)?;
        let mut down = 0;
        for d in dests {
            down += program.pick_count(d.session as u32, d.key)?.down;
        }
        if frames(&program)? == before {
            // As the stats count it, rate-limited frames aside (in neither).
            let sent = FastTarget {
                enqueued: before,
                down,
                ..FastTarget::default()
            };
            return Ok(Skipped::Unexplained(sent.unexplained(&dev)));
        }
    }
    Ok(Skipped::TooDense)
}

/// Adds what the in-kernel fast path did for a target to its userspace
/// counters, each counted where it happened: `enqueued` copies the sessions
/// sent it (`xdp_tap`), `too_big` those longer than the device takes (also
/// `xdp_tap`, before the redirect), `dev.packets` those the kernel handed the
/// device (the xmit tracepoint, or the per-destination program in generic
/// XDP), of which it refused `dev.xmit_drops` (`send_error`). What is left
/// over, a copy the kernel dropped for a reason mirror cannot see, is
/// `down` up to `skipped` (what was left over when the daemon saw a device
/// of the target down: see [`fast_skipped`]) and `unknown` beyond, which
/// tests assert is 0. `down` takes all of `skipped` even when a read under
/// traffic finds less unexplained (so it never goes back); at rest
/// `skipped` is never more than it.
/// `sent_bytes` are the bytes handed to the device (generic XDP) or, in
/// native mode, where no program runs per destination, the bytes of every
/// copy sent to it.
fn add_fast_path(snap: &mut TargetStats, t: &FastTarget, dev: FastStats, skipped: u64) {
    let unexplained = t.unexplained(&dev);
    let sent = dev.packets.saturating_sub(dev.xmit_drops);
    snap.enqueued += t.enqueued;
    snap.sent_packets += sent;
    snap.sent_bytes += if t.generic { dev.bytes } else { t.bytes };
    snap.kernel_path += sent;
    *snap.dropped.entry("send_error".into()).or_default() += dev.xmit_drops;
    *snap.dropped.entry("too_big".into()).or_default() += dev.too_big;
    *snap.dropped.entry("down".into()).or_default() += t.down + skipped;
    *snap.dropped.entry("rate_limited".into()).or_default() += t.rate_limited;
    *snap.dropped.entry("unknown".into()).or_default() += unexplained.saturating_sub(skipped);
}

/// Adds what the kernel path did for a tunnel target, each counted where it
/// happened: `enqueued` by `xdp_tap` (its sessions' copies), `too_big` by
/// `xdp_tap` (longer than the egress device takes: skipped before the tunnel
/// program could cut them), the egress device's transmit counts (every copy
/// of a bulk, `dev.packets`, and the ones not sent, `dev.xmit_drops`), and
/// the tunnel program's own (`slot`: encapsulated, of which truncated;
/// dropped `down` or on an error; and, per device, `no_key`: dropped in the
/// moment its route moved, when no key of the session was on the device,
/// counted `down`). The device's refusals are the copies it did not send
/// that the program had not dropped itself (`send_error`, with the
/// program's errors). What is left over is `down` up to `skipped` (see
/// [`add_fast_path`]) and `unknown` beyond, asserted 0.
fn add_fast_tunnel(snap: &mut TargetStats, t: &FastTarget, skipped: u64) {
    let unexplained = t.unexplained(&t.dev);
    let not_sent = t.dev.xmit_drops;
    let refused = not_sent.saturating_sub(t.slot.down + t.slot.errors + t.dev.no_key);
    let sent = t.slot.packets.saturating_sub(refused);
    snap.enqueued += t.enqueued;
    snap.sent_packets += sent;
    snap.sent_bytes += t.slot.bytes;
    snap.kernel_path += sent;
    snap.truncated += t.slot.truncated;
    *snap.dropped.entry("send_error".into()).or_default() += refused + t.slot.errors;
    *snap.dropped.entry("down".into()).or_default() +=
        t.slot.down + t.dev.no_key + t.down + skipped;
    *snap.dropped.entry("rate_limited".into()).or_default() += t.rate_limited;
    *snap.dropped.entry("too_big".into()).or_default() += t.dev.too_big;
    *snap.dropped.entry("unknown".into()).or_default() += unexplained.saturating_sub(skipped);
}

/// Adds what a source's kernel-path copy sessions cloned to each target
/// (`outcomes` from `Engine::clone_outcomes`): every frame of a session is
/// offered to each of its targets.
fn add_clone_sessions(k: &KernelCounts, outcomes: Vec<CloneOutcome>, clones: &mut [CloneTarget]) {
    for (kidx, t, o, relay) in outcomes {
        let c = &mut clones[t];
        c.sessions += 1;
        c.enqueued += k.session_kernel[kidx].0;
        c.outcomes.add(&o);
        if let Some(r) = relay {
            c.tunnel = true;
            c.relay.packets += r.packets;
            c.relay.bytes += r.bytes;
            c.relay.truncated += r.truncated;
            c.relay.down += r.down;
            c.relay.errors += r.errors;
        }
    }
}

/// One destination of a kernel-path copy session: (kernel session index,
/// target, its clone outcomes, its relay slot's outcomes when a tunnel).
type CloneOutcome = (usize, usize, CloneStats, Option<TunnelStats>);

/// What copy mode's kernel path did for one target, over every session and
/// source that clones to it.
#[derive(Debug, Clone, Copy, Default)]
struct CloneTarget {
    /// Kernel-path sessions that clone to it.
    sessions: u32,
    /// Frames those sessions sent down the kernel path, each offered to it.
    enqueued: u64,
    /// What became of them at this destination.
    outcomes: CloneStats,
    /// A tunnel target: `outcomes.packets` went to the relay, and this is
    /// what its program did with them.
    tunnel: bool,
    relay: TunnelStats,
}

/// Adds what copy mode's kernel path did for a target, each counted where it
/// happened: `enqueued` by the tcx program as its session sent a frame down
/// the kernel path, then per destination, by the same program run, a clone
/// the device took (`sent_packets`, `kernel_path`, `sent_bytes`), a frame
/// longer than the device takes (`too_big`), one not cloned because the
/// device is down or gone (`down`), or a clone the kernel refused
/// (`send_error`). Nothing is derived but `unknown`, the frames no outcome
/// was counted for, which tests assert is 0.
fn add_clone_path(snap: &mut TargetStats, t: &CloneTarget) {
    let o = &t.outcomes;
    if t.tunnel {
        return add_clone_tunnel(snap, t);
    }
    snap.enqueued += t.enqueued;
    snap.sent_packets += o.packets;
    snap.sent_bytes += o.bytes;
    snap.kernel_path += o.packets;
    *snap.dropped.entry("too_big".into()).or_default() += o.too_big;
    *snap.dropped.entry("down".into()).or_default() += o.down;
    *snap.dropped.entry("send_error".into()).or_default() += o.errors;
    *snap.dropped.entry("unknown".into()).or_default() += t.enqueued.saturating_sub(o.outcomes());
}

/// Adds what copy mode's kernel path did for a tunnel target, each counted
/// where it happened: `enqueued` by the source's tcx program (its sessions'
/// frames), then at the clone stage, by the same run, a GSO super-frame
/// refused (`too_big`) or a clone the relay device did not take (`down`,
/// `send_error`); then, by the relay's program within the clone, each clone
/// it took: encapsulated and taken by the egress device (`sent_packets`,
/// with its mirrored bytes, of which `truncated` were cut to the tunnel's
/// `mtu`), dropped with the tunnel down or the egress device down (`down`),
/// or failed (`send_error`: no headroom, or the egress device refused it).
/// What is left over is `unknown`, asserted 0.
fn add_clone_tunnel(snap: &mut TargetStats, t: &CloneTarget) {
    let (o, r) = (&t.outcomes, &t.relay);
    snap.enqueued += t.enqueued;
    snap.sent_packets += r.packets;
    snap.sent_bytes += r.bytes;
    snap.kernel_path += r.packets;
    snap.truncated += r.truncated;
    *snap.dropped.entry("too_big".into()).or_default() += o.too_big;
    *snap.dropped.entry("down".into()).or_default() += o.down + r.down;
    *snap.dropped.entry("send_error".into()).or_default() += o.errors + r.errors;
    *snap.dropped.entry("unknown".into()).or_default() += t
        .enqueued
        .saturating_sub(o.too_big + o.down + o.errors)
        .saturating_sub(r.packets + r.down + r.errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel tunnel's copies end in exactly one counter: 10 sent its way,
    /// 6 encapsulated and sent, 1 encapsulated and refused by the device, 1
    /// dropped `down` by the program, 2 dropped in the moment its route
    /// moved (`no_key`: no key of the session on the device), which the
    /// device's transmit count holds as not sent too.
    #[test]
    fn a_kernel_tunnels_copies_dropped_while_its_route_moved_count_down_not_send_error() {
        let t = FastTarget {
            enqueued: 10,
            bytes: 0,
            generic: false,
            tunnel: true,
            slot: TunnelStats {
                packets: 7,
                bytes: 700,
                truncated: 0,
                down: 1,
                errors: 0,
            },
            dev: FastStats {
                packets: 10,
                bytes: 0,
                xmit_drops: 4,
                too_big: 0,
                no_key: 2,
            },
            down: 0,
            rate_limited: 0,
        };
        let mut snap = TargetStats::default();
        add_fast_tunnel(&mut snap, &t, 0);
        assert_eq!(snap.sent_packets, 6);
        let d = |k: &str| snap.dropped.get(k).copied().unwrap_or(0);
        assert_eq!(
            (d("down"), d("send_error"), d("unknown")),
            (3, 1, 0),
            "{:?}",
            snap.dropped
        );
    }

    /// Copies the kernel skipped while an interface target's device was
    /// down (found when the daemon saw it: `skipped`) are `down`; what no
    /// counter explains beyond them stays `unknown`. More `skipped` than is
    /// unexplained (a read under traffic) still counts whole: `down` never
    /// goes back, and the equation shows the excess.
    #[test]
    fn copies_the_kernel_skipped_while_a_device_was_down_count_down_up_to_what_is_unexplained() {
        let t = FastTarget {
            enqueued: 100,
            down: 20,
            rate_limited: 5,
            ..Default::default()
        };
        let dev = FastStats {
            packets: 60,
            xmit_drops: 3,
            too_big: 5,
            ..Default::default()
        };
        // 100 - 20 - 5 - 60 - 5 = 10 unexplained.
        for (skipped, down, unknown) in [(0, 20, 10), (7, 27, 3), (10, 30, 0), (15, 35, 0)] {
            let mut snap = TargetStats::default();
            add_fast_path(&mut snap, &t, dev, skipped);
            let d = |k: &str| snap.dropped.get(k).copied().unwrap_or(0);
            assert_eq!(
                (d("down"), d("unknown")),
                (down, unknown),
                "skipped {skipped}"
            );
            assert_eq!(snap.sent_packets, 57);
            assert_eq!(
                snap.enqueued + skipped.saturating_sub(10),
                snap.sent_packets + snap.dropped.values().sum::<u64>(),
                "skipped {skipped}"
            );
        }
        // The same for a tunnel: its devices' counts are in `t.dev`.
        let t = FastTarget {
            tunnel: true,
            dev,
            slot: TunnelStats {
                packets: 60,
                ..Default::default()
            },
            ..t
        };
        let mut snap = TargetStats::default();
        add_fast_tunnel(&mut snap, &t, 7);
        let d = |k: &str| snap.dropped.get(k).copied().unwrap_or(0);
        assert_eq!((d("down"), d("unknown")), (27, 3));
    }

    /// Copy mode's per-direction counts: each field is its own kernel
    /// counter of its own direction (every counter a different value here,
    /// so a field read from another counter or direction shows).
    #[test]
    fn each_directions_counts_come_from_its_own_counters() {
        let mut by_dir = [[0u64; COUNTERS]; 2];
        for (d, counters) in by_dir.iter_mut().enumerate() {
            for (i, v) in counters.iter_mut().enumerate() {
                *v = (d as u64 + 1) * 1000 + i as u64;
            }
        }
        let c = |d: usize, k: C| (d as u64 + 1) * 1000 + k.0 as u64;
        let got = direction_stats(&by_dir, &[7, 9]);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["egress", "ingress"],
            "one entry per direction"
        );
        for (d, name, cloned) in [(0, "ingress", 7), (1, "egress", 9)] {
            assert_eq!(
                got[name],
                DirectionStats {
                    received: c(d, C::MIRROR_CNT_RECEIVED),
                    matched: c(d, C::MIRROR_CNT_MATCHED),
                    filtered: c(d, C::MIRROR_CNT_FILTERED),
                    sampled_out: c(d, C::MIRROR_CNT_SAMPLED_OUT),
                    scheduled_out: c(d, C::MIRROR_CNT_SCHEDULED_OUT),
                    cutoff: c(d, C::MIRROR_CNT_CUTOFF),
                    cutoff_cut: c(d, C::MIRROR_CNT_CUTOFF_CUT),
                    cutoff_whole: c(d, C::MIRROR_CNT_CUTOFF_WHOLE),
                    copied: c(d, C::MIRROR_CNT_COPIED),
                    ring_full: c(d, C::MIRROR_CNT_DROP_RING_FULL),
                    copy_cut: c(d, C::MIRROR_CNT_COPY_CUT),
                    copy_error: c(d, C::MIRROR_CNT_COPY_ERROR),
                    cloned,
                },
                "{name}"
            );
        }
    }
}
