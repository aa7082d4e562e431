//! The TOML file as written: every table and key of `mirror.toml` (see SPEC.md),
//! with source spans kept for the checks that come after parsing.
//!
//! Nothing here is validated beyond types; [`super::validate`] turns it into a
//! [`super::Config`] and reports every problem with file:line:column.

use serde::Deserialize;
use serde_spanned::Spanned;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default, rename = "source")]
    pub sources: Vec<Spanned<RawSource>>,
    #[serde(default, rename = "filter")]
    pub filters: Vec<Spanned<RawFilter>>,
    #[serde(default, rename = "target")]
    pub targets: Vec<Spanned<RawTarget>>,
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<Spanned<RawTargetGroup>>,
    #[serde(default, rename = "session")]
    pub sessions: Vec<Spanned<RawSession>>,
}

/// `[daemon]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    /// Default: [`super::DEFAULT_CONTROL_SOCKET`].
    pub control_socket: Option<Spanned<String>>,
    /// Prometheus listen address; omitted = no metrics endpoint.
    pub metrics: Option<Spanned<String>>,
    /// CPU list the daemon runs on (`taskset -c` syntax); omitted = any.
    pub cpus: Option<Spanned<String>>,
}

/// `[[source]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub name: Spanned<String>,
    pub interface: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<SourceMode>>,
    #[serde(default)]
    pub direction: Option<Spanned<SourceDirection>>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub zero_copy: ZeroCopy,
    /// UMEM frames per RX queue. Default 4096.
    pub umem_frames: Option<Spanned<u32>>,
    /// Descriptors in each RX and fill ring. Default 2048.
    pub ring_size: Option<Spanned<u32>>,
    /// Copy mode: the BPF ring buffer's size, e.g. "16MiB". Default 16 MiB.
    pub ring_buffer: Option<Spanned<String>>,
    /// Copy mode: where ingress frames are seen: "auto" (default), "xdp" or "tc".
    pub ingress_hook: Option<Spanned<IngressHook>>,
    /// Tap mode: whether the first RX queue shares an interface target's
    /// UMEM: true, false or "auto" (the default).
    pub share_umem: Option<Spanned<ShareUmem>>,
}

/// Copy mode: the hook that sees ingress frames.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IngressHook {
    /// tcx when a session of the source is on the kernel path (it clones
    /// frames, which XDP cannot do and let the frame pass), else XDP.
    /// Decided at start and logged.
    #[default]
    Auto,
    /// XDP: earliest, and cheapest for the ring-buffer path; needs the
    /// interface's XDP slot. Sessions of the source then go through
    /// userspace (the reason is logged).
    Xdp,
    /// tcx ingress: runs next to another tool's XDP program; sessions may
    /// clone in the kernel.
    Tc,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// A SPAN/TAP feed port: frames are consumed after mirroring.
    #[default]
    Tap,
    /// A live interface: traffic passes on untouched.
    Copy,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceDirection {
    #[default]
    Ingress,
    Egress,
    Both,
}

/// Which path serves a session (`path`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionPath {
    /// The in-kernel fast path when every target allows it, else userspace
    /// (the reason is logged).
    #[default]
    Auto,
    /// The in-kernel fast path, or refuse to start (saying why).
    Kernel,
    /// Always through userspace (AF_XDP).
    Userspace,
}

/// How the XDP program is attached.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic with a log line.
    #[default]
    Auto,
    Native,
    Generic,
}

/// Tap mode: whether a source's first RX queue shares the UMEM of the first
/// interface target its sessions reach (its frames then go out without a
/// copy in userspace), or else the memory of the first pcapng target (its
/// frames are then written from where the kernel put them). TOML: `true`,
/// `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShareUmem {
    /// With an interface target, share where both devices do AF_XDP
    /// zero-copy (the kernel reports `NETDEV_XDP_ACT_XSK_ZEROCOPY` for
    /// both): there the userspace copy is the only copy. In copy mode (veth,
    /// NICs without zero-copy) the kernel copies every frame anyway and
    /// sharing measured slower, so copy. A pcapng target is shared in any
    /// mode (up to 1 GiB pinned).
    #[default]
    Auto,
    /// Share wherever the kernel allows it (falls back to copying, logged).
    On,
    /// Never share: copy into the target's own UMEM.
    Off,
}

impl<'de> Deserialize<'de> for ShareUmem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Choice;
        impl serde::de::Visitor<'_> for Choice {
            type Value = ShareUmem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<ShareUmem, E> {
                Ok(if on { ShareUmem::On } else { ShareUmem::Off })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ShareUmem, E> {
                match s {
                    "auto" => Ok(ShareUmem::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(Choice)
    }
}

/// A byte count: `65536`, or a size as `rotate_size` takes it (`"64KiB"`,
/// `"1.5 MB"`, `"65536"`); checked by [`super::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSize {
    Number(i64),
    Text(String),
}

impl RawSize {
    /// Whether the value is 0 (off, for a key where 0 is off); one that is
    /// not a size is not.
    pub fn is_zero(&self) -> bool {
        self.bytes() == Ok(0)
    }

    /// The byte count: a number as it is, a text as [`super::values::parse_size`]
    /// reads it.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            RawSize::Number(n) => {
                u64::try_from(*n).map_err(|_| "a size cannot be negative".to_string())
            }
            RawSize::Text(t) => super::values::parse_size(t),
        }
    }
}

/// As the file wrote it: `1073741824`, or `"1GiB"` (quoted), for messages
/// that quote the key's value.
impl std::fmt::Display for RawSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawSize::Number(n) => write!(f, "{n}"),
            RawSize::Text(t) => write!(f, "\"{t}\""),
        }
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Size;
        impl serde::de::Visitor<'_> for Size {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of bytes or a size such as \"64KiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawSize, E> {
                Ok(RawSize::Number(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(s.to_string()))
            }
        }
        d.deserialize_any(Size)
    }
}

/// AF_XDP zero-copy.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// Zero-copy where the driver supports it, else copy mode with a log line.
    #[default]
    Auto,
    On,
    Off,
}

/// `[[filter]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    pub name: Spanned<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RawRule>>,
}

/// `[[filter.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub number: Spanned<i64>,
    pub action: super::Action,
    pub direction: super::Direction,
    #[serde(default)]
    pub protocol: Option<Spanned<RawProtocol>>,
    pub source: Option<Spanned<String>>,
    pub destination: Option<Spanned<String>>,
    pub source_port: Option<Spanned<RawPorts>>,
    pub destination_port: Option<Spanned<RawPorts>>,
    pub vlan: Option<Spanned<i64>>,
}

/// `protocol = "tcp"` or `protocol = 6`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawProtocol {
    Name(String),
    Number(i64),
}

/// `source_port = "443"`, `"1024-65535"` or `443`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawPorts {
    Text(String),
    Number(i64),
}

/// `[[target]]`. One flat table for every kind; [`super::validate`] checks that
/// each key applies to the target's `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    pub name: Spanned<String>,
    pub kind: Spanned<TargetKind>,
    pub interface: Option<Spanned<String>>,
    pub remote: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub source: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
    pub version: Option<Spanned<i64>>,
    pub key: Option<Spanned<i64>>,
    /// ERSPAN type III time stamp units: "100us" (default) or "100ns".
    pub granularity: Option<Spanned<super::Granularity>>,
    pub path: Option<Spanned<String>>,
    pub rotate_size: Option<Spanned<RawSize>>,
    pub rotate_interval: Option<Spanned<String>>,
    pub keep: Option<Spanned<i64>>,
    pub max_total_size: Option<Spanned<RawSize>>,
    pub min_free: Option<Spanned<RawSize>>,
    /// Frames the target's queue holds before it drops (`queue_full`). Default
    /// 4096; 16384 for a pcapng target.
    pub queue_size: Option<Spanned<i64>>,
    pub zero_copy: Option<Spanned<ZeroCopy>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Interface,
    Vxlan,
    Gre,
    Erspan,
    Pcapng,
}

impl TargetKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetKind::Interface => "interface",
            TargetKind::Vxlan => "vxlan",
            TargetKind::Gre => "gre",
            TargetKind::Erspan => "erspan",
            TargetKind::Pcapng => "pcapng",
        }
    }
}

/// `[[target_group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTargetGroup {
    pub name: Spanned<String>,
    pub members: Vec<Spanned<String>>,
}

/// `[[session]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSession {
    pub name: Spanned<String>,
    pub source: Spanned<String>,
    pub filter: Spanned<String>,
    pub targets: Spanned<Vec<Spanned<String>>>,
    pub priority: Option<Spanned<i64>>,
    pub packet_length: Option<Spanned<i64>>,
    pub vni: Option<Spanned<i64>>,
    pub sample: Option<Spanned<i64>>,
    pub rate_limit_pps: Option<Spanned<i64>>,
    pub flow_cutoff_bytes: Option<Spanned<RawSize>>,
    pub flow_cutoff_packets: Option<Spanned<i64>>,
    pub flow_cutoff_idle: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<SessionPath>>,
    pub enabled: Option<Spanned<bool>>,
    #[serde(default)]
    pub schedule: Vec<Spanned<RawSchedule>>,
}

/// `[[session.schedule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub days: Option<Spanned<String>>,
    pub hours: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub sample: Option<Spanned<i64>>,
    pub rate_limit_pps: Option<Spanned<i64>>,
    pub packet_length: Option<Spanned<i64>>,
    pub enabled: Option<Spanned<bool>>,
    pub flow_cutoff_bytes: Option<Spanned<RawSize>>,
    pub flow_cutoff_packets: Option<Spanned<i64>>,
}
