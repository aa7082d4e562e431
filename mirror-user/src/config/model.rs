//! The validated model: what the daemon runs, every name resolved to an
//! index, with the defaults the file may omit.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::raw::{
    IngressHook, SessionPath, ShareUmem, SourceDirection, SourceMode, XdpMode, ZeroCopy,
};

/// Where the control socket lives unless `[daemon] control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/mirror/control.sock";
/// UMEM frames per RX queue unless `umem_frames` says otherwise.
pub(crate) const DEFAULT_UMEM_FRAMES: u32 = 4096;
/// RX / fill ring descriptors unless `ring_size` says otherwise.
pub(crate) const DEFAULT_RING_SIZE: u32 = 2048;
/// Copy mode: bytes of the BPF ring buffer between the kernel and the daemon.
pub(crate) const DEFAULT_RING_BUFFER: u32 = 16 << 20;
/// Frames a target queues before dropping (`queue_full`) unless `queue_size` says otherwise.
pub(crate) const DEFAULT_QUEUE_SIZE: u32 = 4096;
/// The same for a pcapng target, whose writer is held back longer and more
/// often (a rotation, the file system's own work): four times as deep. In
/// the span lab at 1,500 B, with the consumer on a core of its own, 4,096
/// lost 0.2-0.7% of a ~600 kpps bursty feed (`queue_full`) where this lost
/// none; its slots cost 64 MiB more (80 MiB, with the quarter its writes hold).
pub(crate) const DEFAULT_PCAPNG_QUEUE_SIZE: u32 = 16384;
/// Largest `queue_size` of an interface target (1 GiB of UMEM).
pub(crate) const MAX_INTERFACE_QUEUE: u32 = 1 << 18;
/// Sessions without `priority` get this one; ties keep file order.
pub(crate) const DEFAULT_PRIORITY: u32 = 100;
/// Sessions with a per-flow cutoff and no `flow_cutoff_idle`: a flow not
/// seen for a minute starts over (a new connection reusing its ports, or a
/// long-quiet one, is mirrored again from its first bytes).
pub const DEFAULT_FLOW_CUTOFF_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Rule numbers, as AWS allows them.
pub(crate) const RULE_NUMBERS: std::ops::RangeInclusive<i64> = 1..=32766;

/// Accept or reject: what the first matching rule decides.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Reject,
}

/// The direction a rule applies to.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Rule {
    /// A rule of `direction` that constrains no field: it matches every frame.
    pub fn any(number: u16, action: Action, direction: Direction) -> Rule {
        Rule {
            number,
            action,
            direction,
            protocol: None,
            source: None,
            destination: None,
            source_port: None,
            destination_port: None,
            vlan: None,
        }
    }

    /// The rule as the keys of a `[[filter.rule]]` table, one line, e.g.
    /// `number = 100, action = "reject", direction = "ingress", protocol = 6`.
    /// [`parse_rule`] reads it back (with newlines for commas).
    pub(crate) fn to_toml_keys(&self) -> String {
        let mut parts = vec![
            format!("number = {}", self.number),
            format!("action = \"{}\"", self.action),
            format!("direction = \"{}\"", self.direction),
        ];
        if let Some(p) = self.protocol {
            match protocol_name(p) {
                Some(name) => parts.push(format!("protocol = \"{name}\"")),
                None => parts.push(format!("protocol = {p}")),
            }
        }
        if let Some(n) = &self.source {
            parts.push(format!("source = \"{n}\""));
        }
        if let Some(n) = &self.destination {
            parts.push(format!("destination = \"{n}\""));
        }
        if let Some(p) = &self.source_port {
            parts.push(format!("source_port = \"{p}\""));
        }
        if let Some(p) = &self.destination_port {
            parts.push(format!("destination_port = \"{p}\""));
        }
        if let Some(v) = self.vlan {
            parts.push(format!("vlan = {v}"));
        }
        parts.join(", ")
    }
}

/// The name `protocol` takes for IP protocol `p` (as the config accepts it),
/// if it has one.
pub fn protocol_name(p: u8) -> Option<&'static str> {
    match p {
        6 => Some("tcp"),
        17 => Some("udp"),
        1 => Some("icmp"),
        58 => Some("icmpv6"),
        132 => Some("sctp"),
        _ => None,
    }
}

/// One validated filter rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub number: u16,
    pub action: Action,
    pub direction: Direction,
    /// IP protocol number; `None` = any.
    pub protocol: Option<u8>,
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    pub source_port: Option<PortRange>,
    pub destination_port: Option<PortRange>,
    pub vlan: Option<u16>,
}

/// A named, ordered list of rules (sorted by number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub interface: String,
    pub mode: SourceMode,
    pub direction: SourceDirection,
    pub xdp_mode: XdpMode,
    pub zero_copy: ZeroCopy,
    pub umem_frames: u32,
    pub ring_size: u32,
    /// Copy mode: bytes of the ring buffer (a power of two).
    pub ring_buffer: u32,
    /// Copy mode: the hook that sees ingress frames (`Auto`: decided at
    /// start, tcx when a session clones in the kernel).
    pub ingress_hook: IngressHook,
    /// Tap mode: whether the first RX queue shares an interface target's
    /// UMEM (frames sent on without a copy); see [`ShareUmem`].
    pub share_umem: ShareUmem,
}

impl Source {
    /// Mirrors frames arriving on the interface.
    pub fn ingress(&self) -> bool {
        self.direction != SourceDirection::Egress
    }

    /// Mirrors frames leaving the interface (copy mode only).
    pub fn egress(&self) -> bool {
        self.direction != SourceDirection::Ingress
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// AF_XDP TX out of a local interface.
    Interface {
        interface: String,
        zero_copy: ZeroCopy,
    },
    /// RFC 7348 VXLAN over UDP; VNI from the session.
    Vxlan { tunnel: Tunnel, port: u16 },
    /// GRE, protocol 0x6558 (transparent Ethernet bridging), optional key.
    Gre { tunnel: Tunnel, key: Option<u32> },
    /// ERSPAN type II or III over GRE; session id from the session's `vni`.
    Erspan {
        tunnel: Tunnel,
        version: ErspanVersion,
        granularity: Granularity,
    },
    /// Rotating pcapng files.
    Pcapng(PcapngSpec),
}

impl TargetSpec {
    /// Where a VXLAN, GRE or ERSPAN target sends; `None` for other kinds.
    pub fn tunnel(&self) -> Option<&Tunnel> {
        match self {
            TargetSpec::Vxlan { tunnel, .. }
            | TargetSpec::Gre { tunnel, .. }
            | TargetSpec::Erspan { tunnel, .. } => Some(tunnel),
            TargetSpec::Interface { .. } | TargetSpec::Pcapng(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TargetSpec::Interface { .. } => "interface",
            TargetSpec::Vxlan { .. } => "vxlan",
            TargetSpec::Gre { .. } => "gre",
            TargetSpec::Erspan { .. } => "erspan",
            TargetSpec::Pcapng(_) => "pcapng",
        }
    }
}

/// Where a tunnel target sends and how large its packets may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub remote: IpAddr,
    /// Local address to send from; default: what the route picks.
    pub source: Option<IpAddr>,
    /// Largest outer IP packet; larger copies are truncated to fit (counted `truncated`).
    pub mtu: u32,
}

/// The targets `dests` reach, groups expanded, each once, in order.
pub(crate) fn expand_dests(dests: &[Dest], groups: &[Group]) -> Vec<usize> {
    let mut out = Vec::new();
    for d in dests {
        let members = match *d {
            Dest::Target(t) => vec![t],
            Dest::Group(g) => groups.get(g).map_or_else(Vec::new, |g| g.members.clone()),
        };
        for t in members {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// Default `mtu` of tunnel targets: a standard Ethernet path.
pub(crate) const DEFAULT_TUNNEL_MTU: u32 = 1500;
/// Default VXLAN UDP port (IANA).
pub(crate) const DEFAULT_VXLAN_PORT: u16 = 4789;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErspanVersion {
    /// Type II (GRE protocol 0x88BE).
    Two,
    /// Type III (GRE protocol 0x22EB), with a time stamp.
    Three,
}

/// Units of the ERSPAN type III time stamp (its `Gra` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Granularity {
    /// Gra = 00: 100 microseconds.
    #[serde(rename = "100us")]
    Micros100,
    /// Gra = 01: 100 nanoseconds.
    #[serde(rename = "100ns")]
    Nanos100,
}

/// `min_free`: bytes, or a share of the file system in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    Permille(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapngSpec {
    pub path: PathBuf,
    pub rotate_size: Option<u64>,
    pub rotate_interval: Option<std::time::Duration>,
    /// Files kept (the one being written included); oldest deleted first.
    pub keep: Option<u32>,
    /// Newest files kept within this many bytes.
    pub max_total_size: Option<u64>,
    pub min_free: Option<MinFree>,
}

impl PcapngSpec {
    /// Whether files rotate (and so carry sequence numbers).
    pub fn rotates(&self) -> bool {
        self.rotate_size.is_some() || self.rotate_interval.is_some()
    }
}

/// `[[target_group]]`: flow-symmetric load balancing over member targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// Indices into [`Config::targets`].
    pub members: Vec<usize>,
}

/// What a session's `targets` entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Index into [`Config::targets`].
    Target(usize),
    /// Index into [`Config::groups`].
    Group(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub spec: TargetSpec,
    pub queue_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    /// Index into [`Config::sources`].
    pub source: usize,
    /// Index into [`Config::filters`].
    pub filter: usize,
    /// Targets and groups, in the order written.
    pub targets: Vec<Dest>,
    pub priority: u32,
    /// Truncate each copy to this many bytes (0: whole frame).
    pub packet_length: u32,
    /// VXLAN VNI / ERSPAN session id of this session's tunnel copies.
    pub vni: u32,
    /// Mirror 1 in `sample` matching frames.
    pub sample: u32,
    /// At most this many copies per second (0: unlimited); excess counted `rate_limited`.
    pub rate_limit_pps: u32,
    /// Per-flow cutoff: mirror only the first this many bytes of each flow,
    /// both directions together (0: no byte limit).
    pub flow_cutoff_bytes: u64,
    /// Per-flow cutoff: mirror only the first this many frames of each flow
    /// (0: no frame limit).
    pub flow_cutoff_packets: u64,
    /// A flow not seen for this long starts over (`flow_cutoff_idle`,
    /// default [`DEFAULT_FLOW_CUTOFF_IDLE`]).
    pub flow_cutoff_idle: std::time::Duration,
    /// Which path serves the session: see [`Config::kernel_path_obstacle`].
    pub path: SessionPath,
    /// `enabled = false`: the session mirrors nothing (counted `scheduled_out`)
    /// outside the windows that enable it.
    pub enabled: bool,
    /// `[[session.schedule]]` windows, in file order; none overlap.
    pub schedule: Vec<crate::config::schedule::Window>,
}

/// What a session does with the frames it accepts at one moment: its own
/// settings, or a schedule window's overrides of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enabled: bool,
    pub sample: u32,
    pub rate_limit_pps: u32,
    pub packet_length: u32,
    /// The per-flow cutoff (0: no limit; both 0: off).
    pub flow_cutoff_bytes: u64,
    pub flow_cutoff_packets: u64,
}

impl Session {
    /// The settings in force in window `window` (`None`: outside every window).
    pub fn policy(&self, window: Option<usize>) -> Policy {
        let base = Policy {
            enabled: self.enabled,
            sample: self.sample,
            rate_limit_pps: self.rate_limit_pps,
            packet_length: self.packet_length,
            flow_cutoff_bytes: self.flow_cutoff_bytes,
            flow_cutoff_packets: self.flow_cutoff_packets,
        };
        let Some(o) = window
            .and_then(|w| self.schedule.get(w))
            .map(|w| w.overrides)
        else {
            return base;
        };
        Policy {
            enabled: o.enabled.unwrap_or(base.enabled),
            sample: o.sample.unwrap_or(base.sample),
            rate_limit_pps: o.rate_limit_pps.unwrap_or(base.rate_limit_pps),
            packet_length: o.packet_length.unwrap_or(base.packet_length),
            flow_cutoff_bytes: o.flow_cutoff_bytes.unwrap_or(base.flow_cutoff_bytes),
            flow_cutoff_packets: o.flow_cutoff_packets.unwrap_or(base.flow_cutoff_packets),
        }
    }

    /// Every policy the session can be in: its own, then each window's.
    pub fn policies(&self) -> impl Iterator<Item = Policy> + '_ {
        std::iter::once(None)
            .chain((0..self.schedule.len()).map(Some))
            .map(|w| self.policy(w))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub control_socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// The CPUs every thread of the daemon runs on (`cpus = "1-3"`); `None`:
    /// any, as the scheduler decides.
    pub cpus: Option<crate::config::cpus::CpuList>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: Daemon,
    pub sources: Vec<Source>,
    pub filters: Vec<Filter>,
    pub targets: Vec<Target>,
    pub groups: Vec<Group>,
    pub sessions: Vec<Session>,
}

impl Config {
    /// Removes the targets (and target groups) no session sends to, which
    /// `mirror run` then neither opens nor counts; returns their names, for
    /// the warning `mirror check` and the start-up log give.
    pub fn prune_unused_targets(&mut self) -> Vec<String> {
        let used_groups: Vec<bool> = (0..self.groups.len())
            .map(|g| {
                self.sessions
                    .iter()
                    .any(|s| s.targets.contains(&Dest::Group(g)))
            })
            .collect();
        let used: Vec<bool> = (0..self.targets.len())
            .map(|t| (0..self.sessions.len()).any(|s| self.session_targets(s).contains(&t)))
            .collect();
        let mut unused: Vec<String> = Vec::new();
        for (g, u) in self.groups.iter().zip(&used_groups) {
            if !u {
                unused.push(format!("target group `{}`", g.name));
            }
        }
        for (t, u) in self.targets.iter().zip(&used) {
            if !u {
                unused.push(format!("target `{}`", t.name));
            }
        }
        if unused.is_empty() {
            return unused;
        }
        let sources = vec![true; self.sources.len()];
        self.retain_parts(&sources, &used, &used_groups);
        unused
    }

    /// Keeps the sources, targets and groups whose flag is set (one flag
    /// per entry of each list) and renumbers what refers to them: a group
    /// loses the members that go, and a session goes with its source or
    /// any of its targets. Filters stay as they are.
    pub(crate) fn retain_parts(&mut self, sources: &[bool], targets: &[bool], groups: &[bool]) {
        fn renumber(kept: &[bool]) -> Vec<Option<usize>> {
            let mut next = 0;
            kept.iter()
                .map(|&k| {
                    let i = next;
                    next += usize::from(k);
                    k.then_some(i)
                })
                .collect()
        }
        fn retain<T>(list: &mut Vec<T>, kept: &[bool]) {
            let mut flags = kept.iter();
            list.retain(|_| flags.next().copied().unwrap_or(false));
        }
        let (src_new, tgt_new, grp_new) = (renumber(sources), renumber(targets), renumber(groups));
        retain(&mut self.sources, sources);
        retain(&mut self.targets, targets);
        retain(&mut self.groups, groups);
        for g in &mut self.groups {
            g.members = g.members.iter().filter_map(|&m| tgt_new[m]).collect();
        }
        let sessions = std::mem::take(&mut self.sessions);
        self.sessions = sessions
            .into_iter()
            .filter_map(|mut s| {
                s.source = src_new[s.source]?;
                s.targets = s
                    .targets
                    .iter()
                    .map(|&d| match d {
                        Dest::Target(t) => tgt_new[t].map(Dest::Target),
                        Dest::Group(g) => grp_new[g].map(Dest::Group),
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(s)
            })
            .collect();
    }

    /// What `mirror check` and the start-up log warn of: the sentences of
    /// [`Config::silent_directions`], of schedule windows that override
    /// nothing (inside one the session's own values apply, as outside every
    /// window: most likely a key left out), and of windows of a disabled
    /// session that do not enable it (they mirror nothing either).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.silent_directions();
        for s in &self.sessions {
            for (i, w) in s.schedule.iter().enumerate() {
                if w.overrides == crate::config::schedule::Overrides::default() {
                    out.push(format!(
                        "session `{}`: schedule window {} ({}) sets none of enabled, sample, \
                         rate_limit_pps, packet_length, flow_cutoff_bytes, flow_cutoff_packets: \
                         inside it the session's own values apply, as outside every window",
                        s.name,
                        i + 1,
                        crate::config::schedule::describe(w)
                    ));
                } else if !s.enabled && w.overrides.enabled.is_none() {
                    // Its other keys never apply: a window of a disabled
                    // session that does not enable it mirrors nothing.
                    out.push(format!(
                        "session `{}`: schedule window {} ({}) does not set `enabled`, so it keeps \
                         the session's `enabled = false` and mirrors nothing, whatever else it \
                         sets; add `enabled = true` to the window to mirror inside it",
                        s.name,
                        i + 1,
                        crate::config::schedule::describe(w)
                    ));
                }
            }
        }
        out
    }

    /// Directions a source mirrors that no rule of its sessions' filters
    /// can match (`direction = "both"` with only ingress rules mirrors no
    /// egress frame), and rules of its sessions' filters for a direction it
    /// does not mirror (egress rules on a tap source): one sentence each,
    /// for `mirror check` and the start-up log.
    pub fn silent_directions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            let mut filters: Vec<&Filter> = self
                .sessions
                .iter()
                .filter(|s| s.source == i)
                .map(|s| &self.filters[s.filter])
                .collect();
            filters.sort_by_key(|f| &f.name);
            filters.dedup_by_key(|f| &f.name);
            if filters.is_empty() {
                continue;
            }
            for (mirrored, dir, name) in [
                (src.ingress(), Direction::Ingress, "ingress"),
                (src.egress(), Direction::Egress, "egress"),
            ] {
                if !mirrored {
                    for f in &filters {
                        let n = f.rules.iter().filter(|r| r.direction == dir).count();
                        if n > 0 {
                            out.push(format!(
                                "source `{}` does not mirror {name} frames ({}), so the {n} \
                                 {name} rule(s) of filter `{}` never apply to it",
                                src.name,
                                match (src.mode, src.direction) {
                                    (SourceMode::Tap, _) => "a tap source mirrors ingress only",
                                    (_, SourceDirection::Ingress) => "direction = \"ingress\"",
                                    _ => "direction = \"egress\"",
                                },
                                f.name
                            ));
                        }
                    }
                    continue;
                }
                let matched = filters.iter().any(|f| {
                    f.rules
                        .iter()
                        .any(|r| r.direction == dir && r.action == Action::Accept)
                });
                if !matched {
                    let names = filters
                        .iter()
                        .map(|f| format!("`{}`", f.name))
                        .collect::<Vec<_>>()
                        .join(", ");
                    out.push(format!(
                        "source `{}` mirrors {name} frames (direction = \"{}\") but no filter of its \
                         sessions ({names}) has an {name} rule that accepts: no {name} frame is mirrored; \
                         add `direction = \"{name}\"` rules, or narrow the source's direction",
                        src.name,
                        match src.direction {
                            SourceDirection::Ingress => "ingress",
                            SourceDirection::Egress => "egress",
                            SourceDirection::Both => "both",
                        }
                    ));
                }
            }
        }
        out
    }

    /// Every target a session sends to, groups expanded, each once.
    pub(crate) fn session_targets(&self, session: usize) -> Vec<usize> {
        expand_dests(&self.sessions[session].targets, &self.groups)
    }

    /// The first target group among a session's `targets` (the kernel path
    /// takes sessions with at most one), if any.
    pub(crate) fn session_group(&self, session: usize) -> Option<&Group> {
        self.sessions[session]
            .targets
            .iter()
            .find_map(|d| match *d {
                Dest::Group(g) => Some(&self.groups[g]),
                Dest::Target(_) => None,
            })
    }

    /// The name a session's `targets` entry refers to.
    pub(crate) fn dest_name(&self, d: Dest) -> &str {
        match d {
            Dest::Target(t) => &self.targets[t].name,
            Dest::Group(g) => &self.groups[g].name,
        }
    }

    /// Why the in-kernel fast path cannot serve session `session`, judging by
    /// the config alone (the target devices' XDP support is checked at start),
    /// or `None` when it can. The fast path broadcasts the frame, whole, to a
    /// DEVMAP of the session's targets: every target must be a local
    /// interface, and everything that needs userspace per frame rules it out.
    /// A copy-mode session's kernel path clones at tcx instead: see
    /// [`Config::clone_path_obstacle`].
    pub(crate) fn kernel_path_obstacle(&self, session: usize) -> Option<String> {
        let s = &self.sessions[session];
        if self.sources[s.source].mode == SourceMode::Copy {
            return self.clone_path_obstacle(session);
        }
        let mut groups = s.targets.iter().filter_map(|d| match *d {
            Dest::Group(g) => Some(g),
            Dest::Target(_) => None,
        });
        if let (Some(a), Some(b)) = (groups.next(), groups.next()) {
            return Some(format!(
                "it has two target groups (`{}`, `{}`); the kernel path picks a member of one",
                self.groups[a].name, self.groups[b].name
            ));
        }
        for d in &s.targets {
            let members: Vec<usize> = match *d {
                Dest::Group(g) => self.groups[g].members.clone(),
                Dest::Target(t) => vec![t],
            };
            for t in members {
                let t = &self.targets[t];
                match &t.spec {
                    TargetSpec::Interface { .. }
                    | TargetSpec::Vxlan { .. }
                    | TargetSpec::Gre { .. }
                    | TargetSpec::Erspan { .. } => {}
                    TargetSpec::Pcapng(_) => {
                        return Some(format!(
                            "target `{}` is a pcapng target, written by userspace",
                            t.name
                        ))
                    }
                }
            }
            if let Dest::Group(g) = *d {
                let direct = s.targets.iter().find_map(|o| match *o {
                    Dest::Target(t) if self.groups[g].members.contains(&t) => Some(t),
                    _ => None,
                });
                if let Some(t) = direct {
                    return Some(format!(
                        "target `{}` is both a target of the session and a member of its group `{}`",
                        self.targets[t].name, self.groups[g].name
                    ));
                }
            }
        }
        let expanded = self.session_targets(session).len();
        if expanded > mirror_ebpf::limits::MAX_FAST_TARGETS as usize {
            return Some(format!(
                "it reaches {expanded} targets (groups expanded), more than the kernel path's {}",
                mirror_ebpf::limits::MAX_FAST_TARGETS
            ));
        }
        None
    }

    /// Why copy mode's kernel path cannot serve copy-mode session `session`,
    /// judging by the config alone (the target devices and the tunnels'
    /// routes are looked up at start), or `None` when it can. That path
    /// clones each mirrored frame at tcx to the egress of each target device
    /// (`bpf_clone_redirect`), or for a VXLAN, GRE or ERSPAN
    /// target to the source's relay device, whose program encapsulates it,
    /// and lets the frame pass on: every target must be a local interface or
    /// such a tunnel, nothing may need userspace per frame, and the source's
    /// ingress must be hooked at tcx (XDP can pass a frame or redirect it,
    /// not both). Interface targets get whole frames, so `packet_length`
    /// (which the relay applies to tunnels) rules them out.
    pub(crate) fn clone_path_obstacle(&self, session: usize) -> Option<String> {
        let s = &self.sessions[session];
        let src = &self.sources[s.source];
        if s.policies().any(|p| p.rate_limit_pps != 0) {
            return Some("rate_limit_pps is applied in userspace".into());
        }
        let interface = s.targets.iter().find_map(|d| match *d {
            Dest::Target(t) if matches!(self.targets[t].spec, TargetSpec::Interface { .. }) => {
                Some(&self.targets[t].name)
            }
            _ => None,
        });
        if let (true, Some(name)) = (s.policies().any(|p| p.packet_length != 0), interface) {
            return Some(format!(
                "packet_length is applied in userspace for interface targets (target `{name}`: \
                 the kernel path clones whole frames to them)"
            ));
        }
        for d in &s.targets {
            let t = match *d {
                Dest::Group(g) => {
                    return Some(format!(
                        "target group `{}` picks members (and skips down ones) in userspace",
                        self.groups[g].name
                    ))
                }
                Dest::Target(t) => (t, &self.targets[t]),
            };
            let (t_idx, t) = t;
            match &t.spec {
                TargetSpec::Interface { interface, .. } => {
                    let looping = self.sources.iter().find(|o| {
                        o.mode == SourceMode::Copy && o.egress() && &o.interface == interface
                    });
                    if let Some(o) = looping {
                        return Some(format!(
                            "target `{}` is {interface}, whose egress copy-mode source `{}` \
                             mirrors: its clones would be classified there again (a loop); \
                             userspace sends them past tcx",
                            t.name, o.name
                        ));
                    }
                }
                TargetSpec::Vxlan { .. } | TargetSpec::Gre { .. } => {}
                TargetSpec::Erspan { .. } => {
                    let other = (0..self.sessions.len())
                        .find(|&o| o != session && self.session_targets(o).contains(&t_idx));
                    if let Some(o) = other {
                        return Some(format!(
                            "ERSPAN target `{}` is also a target of session `{}`: its sequence \
                             numbers are one series per target, which only userspace keeps \
                             across sessions",
                            t.name, self.sessions[o].name
                        ));
                    }
                }
                TargetSpec::Pcapng(_) => {
                    return Some(format!(
                        "target `{}` is a pcapng target, written by userspace",
                        t.name
                    ))
                }
            }
        }
        if s.targets.len() > mirror_ebpf::limits::MAX_FAST_TARGETS as usize {
            return Some(format!(
                "more than {} targets",
                mirror_ebpf::limits::MAX_FAST_TARGETS
            ));
        }
        if src.ingress() && src.ingress_hook == IngressHook::Xdp {
            return Some(
                "ingress_hook = \"xdp\": XDP cannot clone a frame and let it pass on; the \
                 kernel path needs ingress at tcx (ingress_hook = \"auto\" or \"tc\")"
                    .into(),
            );
        }
        None
    }

    /// The sessions of source `source`, in evaluation order: priority, then file order.
    pub fn sessions_of(&self, source: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| self.sessions[i].source == source)
            .collect();
        v.sort_by_key(|&i| (self.sessions[i].priority, i));
        v
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
        })
    }
}
