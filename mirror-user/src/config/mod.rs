//! `mirror.toml`: parsing, validation, and the validated model the daemon runs.
//!
//! [`load`] / [`parse`] read the file with spans ([`raw`]), then check every
//! section, collecting *all* problems, each with file:line:column, the field,
//! and the accepted values. A [`Config`] that comes back is fully resolved:
//! names are indices, CIDRs are parsed, ranges are ordered.

pub mod cpus;
pub mod raw;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_spanned::Spanned;

pub use raw::{
    IngressHook, SessionPath, ShareUmem, SourceDirection, SourceMode, TargetKind, XdpMode, ZeroCopy,
};
use raw::{RawConfig, RawPorts, RawProtocol, RawRule, RawSession, RawSource, RawTarget};

/// Where the control socket lives unless `[daemon] control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/mirror/control.sock";
/// UMEM frames per RX queue unless `umem_frames` says otherwise.
pub const DEFAULT_UMEM_FRAMES: u32 = 4096;
/// RX / fill ring descriptors unless `ring_size` says otherwise.
pub const DEFAULT_RING_SIZE: u32 = 2048;
/// Copy mode: bytes of the BPF ring buffer between the kernel and the daemon.
pub const DEFAULT_RING_BUFFER: u32 = 16 << 20;
/// Frames a target queues before dropping (`queue_full`) unless `queue_size` says otherwise.
pub const DEFAULT_QUEUE_SIZE: u32 = 4096;
/// Largest `queue_size` of an interface target (1 GiB of UMEM).
pub const MAX_INTERFACE_QUEUE: u32 = 1 << 18;
/// Sessions without `priority` get this one; ties keep file order.
pub const DEFAULT_PRIORITY: u32 = 100;

/// Rule numbers, as AWS allows them.
pub const RULE_NUMBERS: std::ops::RangeInclusive<i64> = 1..=32766;

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
    pub fn to_toml_keys(&self) -> String {
        let mut parts = vec![
            format!("number = {}", self.number),
            format!("action = \"{}\"", self.action),
            format!("direction = \"{}\"", self.direction),
        ];
        if let Some(p) = self.protocol {
            parts.push(format!("protocol = {p}"));
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
#[derive(Debug, Clone)]
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
    /// Copy mode: the hook that sees ingress frames.
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
fn expand_dests(dests: &[Dest], groups: &[Group]) -> Vec<usize> {
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
pub const DEFAULT_TUNNEL_MTU: u32 = 1500;
/// Default VXLAN UDP port (IANA).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

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
    /// Which path serves the session: see [`Config::kernel_path_obstacle`].
    pub path: SessionPath,
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
    /// Every target a session sends to, groups expanded, each once.
    pub fn session_targets(&self, session: usize) -> Vec<usize> {
        expand_dests(&self.sessions[session].targets, &self.groups)
    }

    /// The name a session's `targets` entry refers to.
    pub fn dest_name(&self, d: Dest) -> &str {
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
    pub fn kernel_path_obstacle(&self, session: usize) -> Option<String> {
        let s = &self.sessions[session];
        if self.sources[s.source].mode != SourceMode::Tap {
            return Some(
                "the source is in copy mode (the frame itself must pass on; only tap-mode sources have one)"
                    .into(),
            );
        }
        if s.rate_limit_pps != 0 {
            return Some("rate_limit_pps is applied in userspace".into());
        }
        if s.packet_length != 0 {
            return Some("packet_length is applied in userspace".into());
        }
        for d in &s.targets {
            match *d {
                Dest::Group(g) => {
                    return Some(format!(
                        "target group `{}` picks members (and skips down ones) in userspace",
                        self.groups[g].name
                    ))
                }
                Dest::Target(t) => {
                    let t = &self.targets[t];
                    if !matches!(t.spec, TargetSpec::Interface { .. }) {
                        return Some(format!(
                            "target `{}` is a {} target; only interface targets are served in the kernel",
                            t.name,
                            t.spec.kind()
                        ));
                    }
                }
            }
        }
        if s.targets.len() > mirror_ebpf::limits::MAX_FAST_TARGETS as usize {
            return Some(format!(
                "more than {} targets",
                mirror_ebpf::limits::MAX_FAST_TARGETS
            ));
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

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(file, diagnostics))]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(file: &str, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{file}:{}:{}: {}", d.line, d.column, d.message));
    }
    out
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Validates `text`; `file` names it in error messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut v = Validator {
        text,
        diags: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            v.error(span, e.message().to_string());
            return Err(v.finish(file));
        }
    };
    let config = v.config(raw);
    if v.diags.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    Err(v.finish(file))
}

/// Validates one rule written as the keys of a `[[filter.rule]]` table
/// (`number = 100` …), as `mirror rules add` sends it; `what` names it in
/// error messages.
pub fn parse_rule(text: &str, what: &str) -> Result<Rule, ConfigError> {
    let mut v = Validator {
        text,
        diags: Vec::new(),
    };
    let raw: raw::RawRule = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            v.error(span, e.message().to_string());
            return Err(v.finish(what));
        }
    };
    match v.rule(&raw) {
        Some(rule) if v.diags.is_empty() => Ok(rule),
        _ => Err(v.finish(what)),
    }
}

struct Validator<'t> {
    text: &'t str,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            line,
            column,
            message: message.into(),
        });
    }

    fn finish(mut self, file: &str) -> ConfigError {
        self.diags.sort_by_key(|d| (d.line, d.column));
        ConfigError::Invalid {
            file: file.to_string(),
            diagnostics: self.diags,
        }
    }

    /// Checks that `value` lies in `range`, reporting `what` otherwise.
    fn int_in<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
    ) -> Option<T> {
        let n = *value.get_ref();
        if !range.contains(&n) {
            self.error(
                value.span(),
                format!(
                    "{what} = {n} is out of range: accepted values are {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        T::try_from(n).ok()
    }

    /// Rejects a feature this version parses but cannot run yet.
    fn unsupported(&mut self, span: Range<usize>, what: &str) {
        self.error(
            span,
            format!("{what} is not supported yet by this version of mirror"),
        );
    }

    /// Index names, reporting duplicates.
    fn names<'a>(
        &mut self,
        kind: &str,
        names: impl Iterator<Item = &'a Spanned<String>>,
    ) -> HashMap<String, usize> {
        let mut map = HashMap::new();
        for (i, n) in names.enumerate() {
            let name = n.get_ref();
            if name.is_empty() {
                self.error(n.span(), format!("{kind} name must not be empty"));
            } else if map.insert(name.clone(), i).is_some() {
                self.error(n.span(), format!("duplicate {kind} name `{name}`"));
            }
        }
        map
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let daemon = self.daemon(&raw.daemon);
        let source_names = self.names("source", raw.sources.iter().map(|s| &s.get_ref().name));
        let filter_names = self.names("filter", raw.filters.iter().map(|f| &f.get_ref().name));
        let target_names = self.names("target", raw.targets.iter().map(|t| &t.get_ref().name));
        let groups = self.groups(&raw.target_groups, &target_names);
        // Sessions name targets and groups alike.
        let mut dest_names: HashMap<String, Dest> = target_names
            .iter()
            .map(|(n, &i)| (n.clone(), Dest::Target(i)))
            .collect();
        for (i, g) in groups.iter().enumerate() {
            dest_names.insert(g.name.clone(), Dest::Group(i));
        }

        let sources: Vec<Source> = raw.sources.iter().filter_map(|s| self.source(s)).collect();
        let filters: Vec<Filter> = raw
            .filters
            .iter()
            .map(|f| {
                let f = f.get_ref();
                Filter {
                    name: f.name.get_ref().clone(),
                    rules: self.rules(&f.rules),
                }
            })
            .collect();
        let targets: Vec<Target> = raw.targets.iter().filter_map(|t| self.target(t)).collect();

        let mut sessions = Vec::new();
        for s in &raw.sessions {
            if let Some(s) = self.session(s, &source_names, &filter_names, &dest_names) {
                sessions.push(s);
            }
        }
        if targets.len() == raw.targets.len() {
            self.erspan_session_ids(&raw.sessions, &sessions, &targets, &groups);
        }
        self.session_names(&raw.sessions);

        if raw.sessions.is_empty() {
            self.error(0..0, "no [[session]]: nothing would be mirrored");
        }
        for (i, s) in raw.sources.iter().enumerate() {
            let count = sessions.iter().filter(|x| x.source == i).count();
            if count as u32 > mirror_ebpf::limits::MAX_SESSIONS {
                self.error(
                    s.span(),
                    format!(
                        "source `{}` has {count} sessions; at most {} are supported",
                        s.get_ref().name.get_ref(),
                        mirror_ebpf::limits::MAX_SESSIONS
                    ),
                );
            }
        }
        let rules_per_source = |src: usize, dir: Direction| -> usize {
            sessions
                .iter()
                .filter(|s| s.source == src)
                .filter_map(|s| filters.get(s.filter))
                .map(|f| f.rules.iter().filter(|r| r.direction == dir).count())
                .sum()
        };
        for (i, s) in raw.sources.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let n = rules_per_source(i, dir);
                if n as u32 > mirror_ebpf::limits::MAX_RULES {
                    self.error(
                        s.span(),
                        format!(
                            "the sessions of source `{}` have {n} {dir} rules together; at most {} per direction are supported",
                            s.get_ref().name.get_ref(),
                            mirror_ebpf::limits::MAX_RULES
                        ),
                    );
                }
            }
        }

        if sources.len() != raw.sources.len()
            || targets.len() != raw.targets.len()
            || sessions.len() != raw.sessions.len()
            || groups.len() != raw.target_groups.len()
        {
            return None;
        }
        let config = Config {
            daemon: daemon?,
            sources,
            filters,
            targets,
            groups,
            sessions,
        };
        self.kernel_paths(&raw.sessions, &config);
        Some(config)
    }

    fn groups(
        &mut self,
        raw: &[Spanned<raw::RawTargetGroup>],
        targets: &HashMap<String, usize>,
    ) -> Vec<Group> {
        let names = self.names("target_group", raw.iter().map(|g| &g.get_ref().name));
        let mut out = Vec::new();
        for g in raw {
            let g_ref = g.get_ref();
            let name = g_ref.name.get_ref();
            if targets.contains_key(name) {
                self.error(
                    g_ref.name.span(),
                    format!(
                        "`{name}` names both a target and a target_group: use one name for each"
                    ),
                );
                continue;
            }
            if !names.contains_key(name) {
                continue;
            }
            if g_ref.members.is_empty() {
                self.error(g.span(), format!("target_group `{name}` has no members"));
                continue;
            }
            let mut members = Vec::new();
            let mut ok = true;
            for m in &g_ref.members {
                match targets.get(m.get_ref()) {
                    Some(&t) if members.contains(&t) => {
                        self.error(
                            m.span(),
                            format!("member `{}` is listed twice", m.get_ref()),
                        );
                        ok = false;
                    }
                    Some(&t) => members.push(t),
                    None => {
                        let what = if names.contains_key(m.get_ref()) {
                            "is a target_group; groups cannot contain groups"
                        } else {
                            "is not a defined target"
                        };
                        self.error(m.span(), format!("member `{}` {what}", m.get_ref()));
                        ok = false;
                    }
                }
            }
            if ok {
                out.push(Group {
                    name: name.clone(),
                    members,
                });
            }
        }
        out
    }

    /// ERSPAN carries the session id in 10 bits.
    fn erspan_session_ids(
        &mut self,
        raw: &[Spanned<RawSession>],
        sessions: &[Session],
        targets: &[Target],
        groups: &[Group],
    ) {
        for (r, s) in raw.iter().zip(sessions) {
            let erspan = expand_dests(&s.targets, groups)
                .iter()
                .any(|&t| matches!(targets[t].spec, TargetSpec::Erspan { .. }));
            if erspan && s.vni > 1023 {
                let span = r
                    .get_ref()
                    .vni
                    .as_ref()
                    .map_or_else(|| r.span(), |v| v.span());
                self.error(
                    span,
                    format!(
                        "vni = {} is the ERSPAN session id of session `{}`, which has 10 bits: accepted values are 0 to 1023",
                        s.vni, s.name
                    ),
                );
            }
        }
    }

    fn daemon(&mut self, d: &raw::RawDaemon) -> Option<Daemon> {
        let control_socket = d.control_socket.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_CONTROL_SOCKET),
            |p| PathBuf::from(p.get_ref()),
        );
        let metrics = match &d.metrics {
            None => None,
            Some(m) => match m.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    self.unsupported(m.span(), "`metrics` (the Prometheus endpoint)");
                    Some(addr)
                }
                Err(_) => {
                    self.error(
                        m.span(),
                        format!(
                            "metrics = \"{}\" is not an address: expected IP:PORT, e.g. \"127.0.0.1:9464\"",
                            m.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        let cpus = match &d.cpus {
            None => None,
            Some(c) => match crate::config::cpus::CpuList::parse(c.get_ref()) {
                Ok(l) => Some(l),
                Err(why) => {
                    self.error(c.span(), format!("cpus = \"{}\": {why}", c.get_ref()));
                    return None;
                }
            },
        };
        Some(Daemon {
            control_socket,
            metrics,
            cpus,
        })
    }

    fn source(&mut self, s: &Spanned<RawSource>) -> Option<Source> {
        let s = s.get_ref();
        let mut ok = true;
        let mode = s.mode.as_ref().map_or(SourceMode::Tap, |m| *m.get_ref());
        let direction = s
            .direction
            .as_ref()
            .map_or(SourceDirection::Ingress, |d| *d.get_ref());
        if let Some(d) = &s.direction {
            if *d.get_ref() != SourceDirection::Ingress && mode == SourceMode::Tap {
                self.error(
                    d.span(),
                    "direction = \"egress\" or \"both\" needs mode = \"copy\": a tap-mode feed port only receives",
                );
                ok = false;
            }
        }
        let copy_only = |v: &mut Self, span: Option<std::ops::Range<usize>>, key: &str| {
            if let (Some(span), SourceMode::Tap) = (span, mode) {
                v.error(
                    span,
                    format!("{key} applies to mode = \"copy\" only; this source is in tap mode"),
                );
                return false;
            }
            true
        };
        ok &= copy_only(
            self,
            s.ring_buffer.as_ref().map(|r| r.span()),
            "ring_buffer",
        );
        ok &= copy_only(
            self,
            s.ingress_hook.as_ref().map(|r| r.span()),
            "ingress_hook",
        );
        let ring_buffer = match &s.ring_buffer {
            None => DEFAULT_RING_BUFFER,
            Some(r) => match parse_size(r.get_ref()) {
                Ok(n) if n.is_power_of_two() && (4096..=1 << 30).contains(&n) => n as u32,
                Ok(_) => {
                    self.error(
                        r.span(),
                        format!(
                            "ring_buffer = \"{}\": accepted values are powers of two from 4KiB to 1GiB, e.g. \"16MiB\"",
                            r.get_ref()
                        ),
                    );
                    return None;
                }
                Err(e) => {
                    self.error(r.span(), format!("ring_buffer = \"{}\": {e}", r.get_ref()));
                    return None;
                }
            },
        };
        if !valid_ifname(s.interface.get_ref()) {
            self.error(
                s.interface.span(),
                format!(
                    "interface = \"{}\" is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)",
                    s.interface.get_ref()
                ),
            );
            ok = false;
        }
        let umem_frames = match &s.umem_frames {
            None => DEFAULT_UMEM_FRAMES,
            Some(n) => self.power_of_two(n, 64, 1 << 20, "umem_frames")?,
        };
        let ring_size = match &s.ring_size {
            None => DEFAULT_RING_SIZE,
            Some(n) => self.power_of_two(n, 64, 1 << 16, "ring_size")?,
        };
        if let (Some(sh), SourceMode::Copy) = (&s.share_umem, mode) {
            self.error(
                sh.span(),
                "share_umem applies to mode = \"tap\" only: copy-mode frames come from a ring buffer, not a UMEM",
            );
            ok = false;
        }
        if ring_size > umem_frames {
            self.error(
                s.ring_size.as_ref().map_or(0..0, |r| r.span()),
                format!("ring_size = {ring_size} exceeds umem_frames = {umem_frames}: the fill ring could never be filled"),
            );
            ok = false;
        }
        ok.then(|| Source {
            name: s.name.get_ref().clone(),
            interface: s.interface.get_ref().clone(),
            mode,
            direction,
            xdp_mode: s.xdp_mode,
            zero_copy: s.zero_copy,
            umem_frames,
            ring_size,
            ring_buffer,
            ingress_hook: s
                .ingress_hook
                .as_ref()
                .map_or(IngressHook::Xdp, |h| *h.get_ref()),
            share_umem: s
                .share_umem
                .as_ref()
                .map_or(ShareUmem::Auto, |b| *b.get_ref()),
        })
    }

    fn power_of_two(&mut self, n: &Spanned<u32>, min: u32, max: u32, what: &str) -> Option<u32> {
        let v = *n.get_ref();
        if !v.is_power_of_two() || v < min || v > max {
            self.error(
                n.span(),
                format!("{what} = {v}: accepted values are powers of two from {min} to {max}"),
            );
            return None;
        }
        Some(v)
    }

    fn rules(&mut self, raw: &[Spanned<RawRule>]) -> Vec<Rule> {
        let mut seen: HashMap<(Direction, i64), ()> = HashMap::new();
        let mut rules = Vec::new();
        for r in raw {
            let key = (r.get_ref().direction, *r.get_ref().number.get_ref());
            if seen.insert(key, ()).is_some() {
                self.error(
                    r.get_ref().number.span(),
                    format!(
                        "duplicate rule number {} for direction {}: numbers are unique per filter and direction",
                        key.1, key.0
                    ),
                );
                continue;
            }
            if let Some(rule) = self.rule(r.get_ref()) {
                rules.push(rule);
            }
        }
        rules.sort_by_key(|r| r.number);
        rules
    }

    fn rule(&mut self, r: &RawRule) -> Option<Rule> {
        let number: Option<u16> = self.int_in(&r.number, RULE_NUMBERS, "number");
        let protocol = match &r.protocol {
            None => None,
            Some(p) => match parse_protocol(p.get_ref()) {
                Ok(p) => p,
                Err(msg) => {
                    self.error(p.span(), msg);
                    return None;
                }
            },
        };
        let source = match &r.source {
            None => None,
            Some(s) => Some(self.cidr(s, "source")?),
        };
        let destination = match &r.destination {
            None => None,
            Some(d) => Some(self.cidr(d, "destination")?),
        };
        if let (Some(s), Some(d)) = (&source, &destination) {
            if s.addr().is_ipv4() != d.addr().is_ipv4() {
                self.error(
                    r.destination.as_ref().map_or(0..0, |d| d.span()),
                    "source and destination are of different IP families: such a rule could never match",
                );
                return None;
            }
        }
        let mut ports = [None, None];
        for (i, (field, raw)) in [
            ("source_port", &r.source_port),
            ("destination_port", &r.destination_port),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(raw) = raw else { continue };
            if !protocol.is_some_and(|p| matches!(p, 6 | 17 | 132)) {
                self.error(
                    raw.span(),
                    format!("{field} needs protocol = \"tcp\", \"udp\" or \"sctp\": other protocols have no ports"),
                );
                return None;
            }
            match parse_ports(raw.get_ref()) {
                Ok(p) => ports[i] = Some(p),
                Err(msg) => {
                    self.error(raw.span(), format!("{field}: {msg}"));
                    return None;
                }
            }
        }
        let vlan = match &r.vlan {
            None => None,
            Some(v) => Some(self.int_in::<u16>(v, 0..=4095, "vlan")?),
        };
        Some(Rule {
            number: number?,
            action: r.action,
            direction: r.direction,
            protocol,
            source,
            destination,
            source_port: ports[0],
            destination_port: ports[1],
            vlan,
        })
    }

    fn cidr(&mut self, s: &Spanned<String>, field: &str) -> Option<IpNet> {
        let text = s.get_ref();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error(
                    s.span(),
                    format!("{field} = \"{text}\" is not a CIDR: expected e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""),
                );
                None
            }
        }
    }

    fn target(&mut self, t: &Spanned<RawTarget>) -> Option<Target> {
        let t = t.get_ref();
        let kind = *t.kind.get_ref();
        let mut ok = true;
        // Keys that belong to other kinds are mistakes worth naming.
        let keys: [KindKey<'_>; 15] = [
            (
                "interface",
                t.interface.as_ref().map(|x| x.span()),
                &[TargetKind::Interface],
            ),
            (
                "zero_copy",
                t.zero_copy.as_ref().map(|x| x.span()),
                &[TargetKind::Interface],
            ),
            (
                "remote",
                t.remote.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan, TargetKind::Gre, TargetKind::Erspan],
            ),
            (
                "port",
                t.port.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan],
            ),
            (
                "source",
                t.source.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan, TargetKind::Gre, TargetKind::Erspan],
            ),
            (
                "mtu",
                t.mtu.as_ref().map(|x| x.span()),
                &[TargetKind::Vxlan, TargetKind::Gre, TargetKind::Erspan],
            ),
            (
                "version",
                t.version.as_ref().map(|x| x.span()),
                &[TargetKind::Erspan],
            ),
            ("key", t.key.as_ref().map(|x| x.span()), &[TargetKind::Gre]),
            (
                "granularity",
                t.granularity.as_ref().map(|x| x.span()),
                &[TargetKind::Erspan],
            ),
            (
                "path",
                t.path.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "rotate_size",
                t.rotate_size.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "rotate_interval",
                t.rotate_interval.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "keep",
                t.keep.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "max_total_size",
                t.max_total_size.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
            (
                "min_free",
                t.min_free.as_ref().map(|x| x.span()),
                &[TargetKind::Pcapng],
            ),
        ];
        for (key, span, kinds) in keys {
            if let Some(span) = span {
                if !kinds.contains(&kind) {
                    self.error(
                        span,
                        format!(
                            "`{key}` does not apply to a target of kind = \"{}\"",
                            kind.as_str()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let queue_size = match (&t.queue_size, kind) {
            (None, _) => DEFAULT_QUEUE_SIZE,
            // Each queued copy of an interface target is one 4 KiB UMEM frame,
            // which the kernel pins: 1 GiB at most.
            (Some(q), TargetKind::Interface) if *q.get_ref() > i64::from(MAX_INTERFACE_QUEUE) => {
                self.error(
                    q.span(),
                    format!(
                        "queue_size = {} is too large for an interface target: its queue is \
                         its AF_XDP UMEM, one 4 KiB frame per copy, at most {MAX_INTERFACE_QUEUE} (1 GiB)",
                        q.get_ref()
                    ),
                );
                return None;
            }
            (Some(q), _) => self.int_in::<u32>(q, 16..=1 << 20, "queue_size")?,
        };
        let spec = match kind {
            TargetKind::Interface => {
                let Some(iface) = &t.interface else {
                    self.error(
                        t.kind.span(),
                        format!(
                            "target `{}` of kind = \"interface\" needs `interface`",
                            t.name.get_ref()
                        ),
                    );
                    return None;
                };
                if !valid_ifname(iface.get_ref()) {
                    self.error(
                        iface.span(),
                        format!(
                            "interface = \"{}\" is not a valid interface name",
                            iface.get_ref()
                        ),
                    );
                    return None;
                }
                TargetSpec::Interface {
                    interface: iface.get_ref().clone(),
                    zero_copy: t
                        .zero_copy
                        .as_ref()
                        .map_or(ZeroCopy::Auto, |z| *z.get_ref()),
                }
            }
            TargetKind::Vxlan => TargetSpec::Vxlan {
                tunnel: self.tunnel(t)?,
                port: match &t.port {
                    None => DEFAULT_VXLAN_PORT,
                    Some(p) => self.int_in::<u16>(p, 1..=65535, "port")?,
                },
            },
            TargetKind::Gre => TargetSpec::Gre {
                tunnel: self.tunnel(t)?,
                key: match &t.key {
                    None => None,
                    Some(k) => Some(self.int_in::<u32>(k, 0..=u32::MAX as i64, "key")?),
                },
            },
            TargetKind::Erspan => {
                let version = match &t.version {
                    None => ErspanVersion::Two,
                    Some(v) => match *v.get_ref() {
                        2 => ErspanVersion::Two,
                        3 => ErspanVersion::Three,
                        n => {
                            self.error(
                                v.span(),
                                format!("version = {n}: accepted values are 2 (type II) and 3 (type III)"),
                            );
                            return None;
                        }
                    },
                };
                if let (Some(g), ErspanVersion::Two) = (&t.granularity, version) {
                    self.error(
                        g.span(),
                        "`granularity` applies to ERSPAN type III only: add version = 3",
                    );
                    return None;
                }
                TargetSpec::Erspan {
                    tunnel: self.tunnel(t)?,
                    version,
                    granularity: t
                        .granularity
                        .as_ref()
                        .map_or(Granularity::Micros100, |g| *g.get_ref()),
                }
            }
            TargetKind::Pcapng => TargetSpec::Pcapng(self.pcapng(t)?),
        };
        ok.then(|| Target {
            name: t.name.get_ref().clone(),
            spec,
            queue_size,
        })
    }

    fn tunnel(&mut self, t: &RawTarget) -> Option<Tunnel> {
        let name = t.name.get_ref();
        let kind = t.kind.get_ref().as_str();
        let Some(remote) = &t.remote else {
            self.error(
                t.kind.span(),
                format!("target `{name}` of kind = \"{kind}\" needs `remote` (the collector's IP address)"),
            );
            return None;
        };
        let ip = |v: &mut Self, x: &Spanned<String>, key: &str| -> Option<IpAddr> {
            match x.get_ref().parse::<IpAddr>() {
                Ok(a) if a.is_unspecified() || a.is_multicast() => {
                    v.error(
                        x.span(),
                        format!("{key} = \"{a}\" must be a unicast address"),
                    );
                    None
                }
                Ok(a) => Some(a),
                Err(_) => {
                    v.error(
                        x.span(),
                        format!("{key} = \"{}\" is not an IPv4 or IPv6 address", x.get_ref()),
                    );
                    None
                }
            }
        };
        let remote_ip = ip(self, remote, "remote")?;
        let source = match &t.source {
            None => None,
            Some(s) => {
                let a = ip(self, s, "source")?;
                if a.is_ipv4() != remote_ip.is_ipv4() {
                    self.error(
                        s.span(),
                        "source and remote must be of the same family (both IPv4 or both IPv6)",
                    );
                    return None;
                }
                Some(a)
            }
        };
        let min_mtu = if remote_ip.is_ipv4() { 576 } else { 1280 };
        let mtu = match &t.mtu {
            None => DEFAULT_TUNNEL_MTU,
            Some(m) => self.int_in::<u32>(m, min_mtu..=65535, "mtu")?,
        };
        Some(Tunnel {
            remote: remote_ip,
            source,
            mtu,
        })
    }

    fn pcapng(&mut self, t: &RawTarget) -> Option<PcapngSpec> {
        let Some(path) = &t.path else {
            self.error(
                t.kind.span(),
                format!(
                    "target `{}` of kind = \"pcapng\" needs `path` (the file to write)",
                    t.name.get_ref()
                ),
            );
            return None;
        };
        let p = PathBuf::from(path.get_ref());
        if path.get_ref().is_empty() || p.file_name().is_none() {
            self.error(
                path.span(),
                format!("path = \"{}\" does not name a file", path.get_ref()),
            );
            return None;
        }
        let size = |v: &mut Self,
                    x: &Option<Spanned<String>>,
                    key: &str,
                    min: u64|
         -> Result<Option<u64>, ()> {
            let Some(x) = x else { return Ok(None) };
            match parse_size(x.get_ref()) {
                Ok(n) if n >= min => Ok(Some(n)),
                Ok(_) => {
                    v.error(
                        x.span(),
                        format!(
                            "{key} = \"{}\" is below the minimum of {min} bytes",
                            x.get_ref()
                        ),
                    );
                    Err(())
                }
                Err(e) => {
                    v.error(x.span(), format!("{key} = \"{}\": {e}", x.get_ref()));
                    Err(())
                }
            }
        };
        let rotate_size = size(self, &t.rotate_size, "rotate_size", 4096).ok()?;
        let max_total_size = size(self, &t.max_total_size, "max_total_size", 4096).ok()?;
        let rotate_interval = match &t.rotate_interval {
            None => None,
            Some(x) => {
                match humantime::parse_duration(x.get_ref()) {
                    Ok(d) if d >= std::time::Duration::from_secs(1) => Some(d),
                    Ok(_) => {
                        self.error(x.span(), "rotate_interval must be at least 1s");
                        return None;
                    }
                    Err(e) => {
                        self.error(
                        x.span(),
                        format!("rotate_interval = \"{}\": {e} (write e.g. \"30s\", \"15m\", \"1h\")", x.get_ref()),
                    );
                        return None;
                    }
                }
            }
        };
        let keep = match &t.keep {
            None => None,
            Some(k) => Some(self.int_in::<u32>(k, 1..=1_000_000, "keep")?),
        };
        let min_free = match &t.min_free {
            None => None,
            Some(x) => match parse_min_free(x.get_ref()) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.error(x.span(), format!("min_free = \"{}\": {e}", x.get_ref()));
                    return None;
                }
            },
        };
        let spec = PcapngSpec {
            path: p,
            rotate_size,
            rotate_interval,
            keep,
            max_total_size,
            min_free,
        };
        if !spec.rotates() {
            for (key, x) in [
                ("keep", t.keep.as_ref().map(|k| k.span())),
                (
                    "max_total_size",
                    t.max_total_size.as_ref().map(|k| k.span()),
                ),
            ] {
                if let Some(span) = x {
                    self.error(
                        span,
                        format!("`{key}` needs rotation: add rotate_size and/or rotate_interval"),
                    );
                    return None;
                }
            }
        }
        Some(spec)
    }

    fn session(
        &mut self,
        s: &Spanned<RawSession>,
        sources: &HashMap<String, usize>,
        filters: &HashMap<String, usize>,
        dests: &HashMap<String, Dest>,
    ) -> Option<Session> {
        let s = s.get_ref();
        let mut ok = true;
        let lookup = |v: &mut Self, known: Vec<&str>, n: &Spanned<String>, kind: &str| {
            let mut known = known;
            known.sort_unstable();
            v.error(
                n.span(),
                format!(
                    "unknown {kind} `{}` (defined: {})",
                    n.get_ref(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        };
        let source = sources.get(s.source.get_ref()).copied();
        if source.is_none() {
            lookup(
                self,
                sources.keys().map(String::as_str).collect(),
                &s.source,
                "source",
            );
        }
        let filter = filters.get(s.filter.get_ref()).copied();
        if filter.is_none() {
            lookup(
                self,
                filters.keys().map(String::as_str).collect(),
                &s.filter,
                "filter",
            );
        }
        let mut tgt = Vec::new();
        if s.targets.get_ref().is_empty() {
            self.error(s.targets.span(), "targets must name at least one target");
            ok = false;
        }
        for t in s.targets.get_ref() {
            match dests.get(t.get_ref()).copied() {
                Some(d) if tgt.contains(&d) => {
                    self.error(
                        t.span(),
                        format!("target `{}` is listed twice", t.get_ref()),
                    );
                    ok = false;
                }
                Some(d) => tgt.push(d),
                None => {
                    lookup(
                        self,
                        dests.keys().map(String::as_str).collect(),
                        t,
                        "target or target_group",
                    );
                    ok = false;
                }
            }
        }
        let priority = match &s.priority {
            None => DEFAULT_PRIORITY,
            Some(p) => self.int_in::<u32>(p, 0..=u32::MAX as i64, "priority")?,
        };
        let packet_length = match &s.packet_length {
            None => 0,
            Some(p) if *p.get_ref() == 0 => 0,
            Some(p) => self.int_in::<u32>(p, 14..=65535, "packet_length (0 = whole frame)")?,
        };
        let sample = match &s.sample {
            None => 1,
            Some(p) => self.int_in::<u32>(p, 1..=u32::MAX as i64, "sample")?,
        };
        let rate_limit_pps = match &s.rate_limit_pps {
            None => 0,
            Some(p) => {
                self.int_in::<u32>(p, 0..=u32::MAX as i64, "rate_limit_pps (0 = unlimited)")?
            }
        };
        let vni = match &s.vni {
            None => 0,
            Some(p) => self.int_in::<u32>(p, 0..=0xff_ffff, "vni")?,
        };
        if let Some(p) = &s.enabled {
            if !*p.get_ref() {
                self.unsupported(p.span(), "enabled = false");
                ok = false;
            }
        }
        if let Some(w) = s.schedule.first() {
            self.unsupported(w.span(), "[[session.schedule]]");
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(Session {
            name: s.name.get_ref().clone(),
            source: source?,
            filter: filter?,
            targets: tgt,
            priority,
            packet_length,
            vni,
            sample,
            rate_limit_pps,
            path: s.path.as_ref().map_or(SessionPath::Auto, |p| *p.get_ref()),
        })
    }

    /// `path = "kernel"` on a session the fast path cannot serve: an error at the key.
    fn kernel_paths(&mut self, raw: &[Spanned<RawSession>], config: &Config) {
        for (i, s) in raw.iter().enumerate() {
            let Some(p) = &s.get_ref().path else { continue };
            if *p.get_ref() != SessionPath::Kernel {
                continue;
            }
            if let Some(why) = config.kernel_path_obstacle(i) {
                self.error(
                    p.span(),
                    format!(
                        "path = \"kernel\": the in-kernel fast path cannot serve this session: {why}; \
                         use path = \"auto\" (falls back to userspace) or \"userspace\""
                    ),
                );
            }
        }
    }

    fn session_names(&mut self, sessions: &[Spanned<RawSession>]) {
        self.names("session", sessions.iter().map(|s| &s.get_ref().name));
    }
}

/// A target key: its name, where it is written (if it is), and the kinds it applies to.
type KindKey<'a> = (&'a str, Option<Range<usize>>, &'a [TargetKind]);

/// `"1GiB"`, `"500 MB"`, `"65536"`: a size in bytes (binary and decimal units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| "not a size: write e.g. \"512MiB\", \"1GiB\" or \"10GB\"".to_string())
}

/// `"5%"` or a size: free space to keep on a capture file system.
pub fn parse_min_free(text: &str) -> Result<MinFree, String> {
    if let Some(pct) = text.trim().strip_suffix('%') {
        let v: f64 = pct
            .trim()
            .parse()
            .map_err(|_| "not a percentage: write e.g. \"5%\"".to_string())?;
        if !(0.0..=100.0).contains(&v) {
            return Err("a percentage must be between 0% and 100%".into());
        }
        return Ok(MinFree::Permille((v * 10.0).round() as u32));
    }
    parse_size(text).map(MinFree::Bytes)
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// `"tcp"`, `6`, `"any"`: the protocol number, or `None` for any.
pub fn parse_protocol(p: &RawProtocol) -> Result<Option<u8>, String> {
    const NAMES: &str = "any, tcp, udp, icmp, icmpv6, sctp, or a number 0 to 255";
    match p {
        RawProtocol::Number(n) => u8::try_from(*n)
            .map(Some)
            .map_err(|_| format!("protocol = {n} is out of range: accepted values are {NAMES}")),
        RawProtocol::Name(name) => match name.to_ascii_lowercase().as_str() {
            "any" | "all" | "-1" => Ok(None),
            "tcp" => Ok(Some(6)),
            "udp" => Ok(Some(17)),
            "icmp" => Ok(Some(1)),
            "icmpv6" => Ok(Some(58)),
            "sctp" => Ok(Some(132)),
            other => other.parse::<u8>().map(Some).map_err(|_| {
                format!("protocol = \"{name}\" is unknown: accepted values are {NAMES}")
            }),
        },
    }
}

/// `"443"`, `"1024-65535"`, `443`.
pub fn parse_ports(p: &RawPorts) -> Result<PortRange, String> {
    let port = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("\"{s}\" is not a port: expected 0 to 65535"))
    };
    match p {
        RawPorts::Number(n) => u16::try_from(*n)
            .map(|v| PortRange { lo: v, hi: v })
            .map_err(|_| format!("{n} is not a port: expected 0 to 65535")),
        RawPorts::Text(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let v = port(s)?;
                    (v, v)
                }
            };
            if lo > hi {
                return Err(format!("range \"{s}\" is reversed: write \"{hi}-{lo}\""));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(pos)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, pos: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut pos: usize) -> usize {
        while pos > 0 && !self.is_char_boundary(pos) {
            pos -= 1;
        }
        pos
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

#[cfg(test)]
mod tests;
