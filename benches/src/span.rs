//! `span`: `mirror` against the software SPANs on one lab, one generator,
//! one run (the `span` table; a whole run adds `span-capture`, below).
//! Every case mirrors every frame of the feed port to the target
//! port(s) and consumes the feed (a SPAN/TAP port's frames have nowhere
//! else to go), except copy mode's (9., 10. and the routed 22. to 26.),
//! whose monitored traffic goes on:
//!
//! 1. `XDP_DROP at feed0`: the ceiling, what the generator and veth carry;
//! 2. `tc mirred`: clsact ingress on feed0, `u32` match-all, `mirred egress
//!    mirror dev tgt0` (Linux's software SPAN); the original then goes up
//!    feed0's stack, which drops it (no address; this kernel has no `gact`
//!    module for an explicit `action drop`);
//! 3. `XDP redirect`: a bare XDP program redirecting to tgt0 through a DEVMAP
//!    (the in-kernel ceiling for one target);
//! 4. `mirror` (kernel path): a tap session to an interface target;
//! 5. `mirror` (userspace path): the same with `path = "userspace"` (AF_XDP);
//! 6. `mirror` (userspace path, shared UMEM): the RX queue shares the
//!    target's UMEM, so frames go out as received;
//! 7. `xsk-fwd`: a minimal single-core AF_XDP forwarder in C against libxdp
//!    (`benches/peers/xsk_fwd.c`), the peer of the userspace path;
//! 8. `daemonlogger -i feed0 -o tgt0`: daemonlogger's soft tap (libpcap);
//! 9. the monitored traffic alone (`pass`): feed0's frames go up its stack,
//!    counted by a tcx program there, no mirror: the copy-mode baseline;
//! 10. `mirror` copy mode: the same traffic passes on, counted the same way,
//!     and its copies go through the BPF ring buffer to the target;
//! 11. `XDP broadcast ×2`: a bare XDP program broadcasting to tgt0 and tgt1
//!     (the in-kernel ceiling for fan-out);
//! 12. `mirror ×2` (kernel path): a session with two interface targets;
//! 13. `tcpdump -w` to a tmpfs file, and 14. `mirror` with a pcapng target on
//!     the same tmpfs: capture to a file, counted as frames written (and
//!     `pcapng-copy`: the same target from a copy-mode source hooked at
//!     tcx, where tcpdump's packet socket sees the frames: the ring
//!     buffer path a live interface's capture takes);
//! 15. `tc mirred` to a VXLAN device (`tcvxlan`): the same `u32` match-all on
//!     feed0, `mirred egress mirror dev vx0`, a Linux `vxlan` device (VNI 42)
//!     over tgt0 to 10.77.0.2: the kernel's own remote mirror, the peer of
//!     the next three;
//! 16. `mirror` to a `vxlan` target, 17. to a `gre` target and 18. to an
//!     `erspan` (type II) target, remote 10.77.0.2 over tgt0: a tap session
//!     (`path = "auto"`, VNI / session id 42) on whatever path mirror picks
//!     (the table names it, from `mirror stats`);
//! 19. `cut`, 20. `ratelimit`, 21. `group`: the kernel-path session of 4.
//!     (`path = "kernel"`, to t0) with one session option each, against 4.:
//!     `packet_length = 64` (every longer copy cut by `bpf_xdp_adjust_tail`;
//!     the 60-byte frames are shorter and go whole), `rate_limit_pps =
//!     100000000` (far above what the generator offers: every frame takes a
//!     token from the session's bucket and none is limited, so this is the
//!     limiter's cost, not limiting), and a `[[target_group]]` of t0 and t1
//!     as its only target (each frame to one member, picked by its flow's
//!     hash: delivered is the sum over both sinks, with the split);
//! 22. to 26., the routed cases: copy mode where the monitored namespace
//!     routes production traffic. feed0 takes the generator's frames as its
//!     own (their destination MAC) and ns src forwards them (IP forwarding)
//!     out of out0 to a next hop on sink2, whose XDP counter counts
//!     production forwarded; each frame's copy goes to the copy sink
//!     (sink0), and a tcx counter on feed0 counts the frames that reached
//!     the stack, each of which should be copied. `routed`: no mirror (the
//!     baseline); `routed-tc`: `tc mirred` as in 2.; `routed-tcvx`: `tc
//!     mirred` to the VXLAN device as in 15.; `routed-copy`: mirror copy
//!     mode, ingress only, to t0 (`path = "auto"`: the kernel path, tcx
//!     clones); `routed-copyvx`: the same to a VXLAN target (remote
//!     10.77.0.2, VNI 42), on whatever path mirror picks (the table names
//!     the path and the ingress hook, from `mirror stats`). Production
//!     forwarded is compared with `routed` and `routed-tc`, copies with
//!     `routed-tc`; copies lost are the frames fed minus the copies
//!     delivered, shown with what counted them (mirror's drop counters, or
//!     for tc the mirred action's and the devices' counters).
//!
//! The remote cases give tgt0 10.77.0.1/24 and sink0 10.77.0.2/24, a
//! permanent neighbour entry on tgt0 for 10.77.0.2 (sink0's MAC: no ARP
//! during runs) and a 1600-byte MTU on both (a 1,500-byte frame plus its
//! tunnel headers fits, unfragmented and untruncated); sink0's counter then
//! counts the outer packets reaching the collector. The lab is set up this
//! way only when one of these cases runs.
//!
//! The routed cases add out0 10.88.0.1/24 -- sink2 10.88.0.2/24, a route to
//! the generator's destination (10.2.0.0/24) via 10.88.0.2 with a permanent
//! neighbour entry (no ARP during runs), IP forwarding on in ns src and
//! reverse-path filtering off (the generator's sources have no route back),
//! again only when one of them runs. Only a routed case gives feed0 the
//! generator's destination MAC (its own is put back after it): every other
//! case's frames still reach feed0's stack addressed to another host and
//! are dropped there, so nothing is forwarded.
//!
//! Each case runs `--reps` times at the generator's full rate, then its
//! lossless rate is searched with the generator paced (`--search`). Every
//! userspace consumer (the daemon, xsk-fwd, daemonlogger, tcpdump) runs on
//! the generator's CPU (with `--gen-core rx` the generator moves to the RX
//! core and the consumer has its CPU alone), never on the feed port's RX
//! core.
//!
//! A whole run (no `--cases`) then makes a second table, `span-capture`:
//! the capture cases (drop, tcpdump, pcapng, pcapng-copy) on a lab of
//! their own laid out as a capture host is (`--feed page --gen-core rx`:
//! frames built as a NIC's driver builds them, the generator on feed0's
//! RX core, the consumer on a core of its own), so that the README shows
//! the capture target against `tcpdump -w` where each is offered the same.
//! `--tables` picks the tables.
//!
//! ```text
//!  ns gen                 ns src                        ns sink
//!  gen0 ──veth── feed0 [case under test] tgt0 ──veth── sink0 [XDP count + drop]
//!                                        tgt1 ──veth── sink1 [XDP count + drop]
//!
//!  remote cases: feed0 [tc mirred -> vx0 | mirror] tunnel to 10.77.0.2
//!                10.77.0.1/24 tgt0 ──veth── sink0 10.77.0.2/24 [XDP count + drop]
//!
//!  routed cases: feed0 [tcx count; case under test] -> IP forwarding
//!                10.88.0.1/24 out0 ──veth── sink2 10.88.0.2/24 [XDP count + drop]
//!                copies: tgt0 (or vx0 / the VXLAN target over it) ── sink0
//! ```
//!
//! The generator is the AF_XDP TX generator of every tap case (256 UDP
//! flows over 200 source addresses and 4 destination ports, built once into
//! its UMEM, so `group` has flows to split at no cost to it); what arrived
//! is counted by an XDP program on each sink port (which also lets the veth
//! in front of it take redirected frames, as a NIC would).

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use mirror_ebpf::bench_peers::{BenchPeersSkel, BenchPeersSkelBuilder};
use mirror_user::lab::{self, traffic, DaemonProcess, Lab, Netns, Process, TempDir, Tmpfs};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    runs: crate::Runs,
    /// Frame sizes in bytes, without the FCS (60 is a 64-byte frame on the wire).
    #[arg(long, value_delimiter = ',', default_value = "60,1500")]
    sizes: Vec<usize>,
    /// Only these cases (drop, tc, redirect, mirror, filtered, cut, ratelimit,
    /// group, userspace, shared, xskfwd, daemonlogger, pass, copy, broadcast,
    /// mirror2, tcpdump, pcapng, pcapng-copy, and to a remote collector: tcvxlan, vxlan,
    /// gre, erspan; copy mode while ns src routes the traffic: routed,
    /// routed-tc, routed-tcvx, routed-copy, routed-copyvx); default all.
    /// Ratios need their reference case in the run (the remote cases:
    /// tcvxlan and mirror; cut, ratelimit, group: mirror; the routed ones:
    /// routed and routed-tc, routed-copyvx also routed-tcvx). These are
    /// the `span` table's; a whole run (none named) also makes
    /// `span-capture` (`--tables`).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Paced runs that search each case's lossless rate (the highest offered
    /// rate it carries with at most 0.1% loss), by bisection; 0: no search.
    #[arg(long, default_value_t = 6)]
    search: u32,
    /// Seconds of each paced run of the search.
    #[arg(long, default_value_t = 1.0)]
    trial_secs: f64,
    /// Where feed0's frames come from: `skb` (AF_XDP TX on gen0; veth
    /// copies each into a page before XDP at feed0 may run), `xdp` (the
    /// kernel's XDP traffic generator: page-pool frames, as a NIC's RX ring
    /// holds them; no backpressure) or `page` (the same generator's frames
    /// as skbs built around their pages, as a NIC's driver builds them,
    /// through gen0's 4,096-frame queue). The `span` table's; `span-capture`
    /// always has `page`.
    #[arg(long, value_enum, default_value_t = crate::Feed::Skb)]
    feed: crate::Feed,
    /// The generator's core: `consumer` (the one the daemon and the tools
    /// run on, which they share with it) or `rx` (feed0's RX core, where
    /// its NAPI thread runs: the consumer then has a core of its own, as on
    /// a capture host, and what the generator offers no longer depends on
    /// the consumer). With `rx` use `--feed page` or `--feed xdp`: their
    /// generator runs `SCHED_IDLE`, yielding to the NAPI thread; the
    /// default feed's AF_XDP generator would take half of that core. The
    /// `span` table's; `span-capture` always has `rx`.
    #[arg(long, value_enum, default_value_t = crate::GenCore::Consumer)]
    gen_core: crate::GenCore,
    /// `queue_size` of the pcapng target (`pcapng`, `pcapng-copy`): copies
    /// its queue holds, 4 KiB each; default: the daemon's (16,384 for a
    /// pcapng target).
    #[arg(long)]
    pcapng_queue_size: Option<u32>,
    /// The tables to make: `span` (the cases asked for, on the layout
    /// `--feed` and `--gen-core` ask for) and `span-capture` (drop,
    /// tcpdump, pcapng and pcapng-copy on a capture host's layout, `--feed
    /// page --gen-core rx`, whatever those two say). Default: both on a
    /// whole run; `span` alone with `--cases`, or when `--feed page
    /// --gen-core rx` make `span` that layout already.
    #[arg(long, value_enum, value_delimiter = ',')]
    tables: Vec<Table>,
}

impl Args {
    /// The `span` table's lab, as `--feed` and `--gen-core` ask for it.
    fn layout(&self) -> Layout {
        Layout {
            feed: self.feed,
            gen_core: self.gen_core,
        }
    }
}

/// A table a run makes, and the name its results are written under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Table {
    /// The cases asked for on the layout asked for.
    Span,
    /// The capture cases ([`CAPTURE_CASES`]) on [`Layout::CAPTURE_HOST`].
    SpanCapture,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Span => "span",
            Table::SpanCapture => "span-capture",
        }
    }
}

/// How long xsk-fwd's start is retried while a queue it binds is still
/// held by the case before (the daemon retries its own binds as long).
const XSK_BUSY_RETRY: Duration = Duration::from_secs(3);

/// Loss a run may have and still count as lossless (0.1%).
const LOSSLESS: f64 = 0.001;

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"
cpus = "@CPUS@"

[[source]]
name = "feed"
interface = "feed0"
@SOURCE@

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

# AWS's documentation example: every frame is classified (the UDP feed
# matches rule 200, after rule 100 missed).
[[filter]]
name = "aws"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "443"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"

[[target]]
name = "t0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "t1"
kind = "interface"
interface = "tgt1"

[[target]]
name = "cap"
kind = "pcapng"
path = "@CAPTURE@/mirror.pcapng"
rotate_size = "256MiB"
keep = 4
@CAP_QUEUE@
@EXTRA@
[[session]]
name = "all"
source = "feed"
filter = "@FILTER@"
targets = [@TARGETS@]
path = "@PATH@"
@SESSION@
"#;

/// The remote cases' tunnel: tgt0's and sink0's addresses (the collector's
/// is the tunnels' `remote`), the VNI / ERSPAN session id, and the MTU of
/// both ports and of the tunnel targets (a 1,500-byte frame plus the largest
/// header here, VXLAN's 50 bytes, fits).
const TUNNEL_LOCAL: &str = "10.77.0.1";
const TUNNEL_REMOTE: &str = "10.77.0.2";
const TUNNEL_PREFIX: &str = "24";
const TUNNEL_VNI: &str = "42";
const TUNNEL_MTU: &str = "1600";
/// The kernel VXLAN device of `tcvxlan`.
const VXLAN_DEV: &str = "vx0";

/// The routed cases' production path: the src namespace forwards the
/// generator's frames (to 10.2.0.1) from feed0 out of [`ROUTE_IF`], to the
/// next hop [`ROUTE_NEXT_HOP`] on [`ROUTE_SINK_IF`] in the sink namespace,
/// whose XDP counter counts what was forwarded.
const ROUTE_IF: &str = "out0";
const ROUTE_SINK_IF: &str = "sink2";
const ROUTE_LOCAL: &str = "10.88.0.1";
const ROUTE_NEXT_HOP: &str = "10.88.0.2";
const ROUTE_PREFIX: &str = "24";
/// The generator's destination network (its frames go to 10.2.0.1).
const ROUTED_NET: &str = "10.2.0.0/24";
/// The routed copy-mode cases' source: mirror the live interface's
/// ingress, as a router's uplink is mirrored.
const COPY_INGRESS: &str = "mode = \"copy\"\ndirection = \"ingress\"";

/// The pcapng case's source: RX buffers sized for a busy port.
const BUSY_PORT_RX: &str = "ring_size = 8192\numem_frames = 16384";

/// `pcapng-copy`'s source: copy mode, ingress, hooked at tcx.
const COPY_TC: &str = "mode = \"copy\"\ndirection = \"ingress\"\ningress_hook = \"tc\"";

/// `cut`'s `packet_length`: every copy of a longer frame is cut to this
/// (the 60-byte frames are shorter, so there only the length is checked).
const CUT_LENGTH: u32 = 64;
/// `ratelimit`'s `rate_limit_pps`: far above what the generator can offer
/// (~2 Mpps here), so the limiter never says no: every frame passes it (a
/// clock read and a compare-and-swap) and none is limited. It measures what
/// the limiter costs, not limiting.
const RATE_LIMIT_PPS: u32 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    XdpDrop,
    TcMirred,
    XdpRedirect,
    MirrorKernel,
    MirrorFiltered,
    MirrorCut,
    MirrorRateLimit,
    MirrorGroup,
    MirrorUserspace,
    MirrorShared,
    XskFwd,
    Daemonlogger,
    Pass,
    MirrorCopy,
    XdpBroadcast,
    MirrorKernel2,
    Tcpdump,
    MirrorPcapng,
    MirrorPcapngCopy,
    TcVxlan,
    MirrorVxlan,
    MirrorGre,
    MirrorErspan,
    Routed,
    RoutedTc,
    RoutedTcVxlan,
    RoutedCopy,
    RoutedCopyVxlan,
}

impl Case {
    const ALL: [Case; 28] = [
        Case::XdpDrop,
        Case::TcMirred,
        Case::XdpRedirect,
        Case::MirrorKernel,
        Case::MirrorFiltered,
        Case::MirrorCut,
        Case::MirrorRateLimit,
        Case::MirrorGroup,
        Case::MirrorUserspace,
        Case::MirrorShared,
        Case::XskFwd,
        Case::Daemonlogger,
        Case::Pass,
        Case::MirrorCopy,
        Case::XdpBroadcast,
        Case::MirrorKernel2,
        Case::Tcpdump,
        Case::MirrorPcapng,
        Case::MirrorPcapngCopy,
        Case::TcVxlan,
        Case::MirrorVxlan,
        Case::MirrorGre,
        Case::MirrorErspan,
        Case::Routed,
        Case::RoutedTc,
        Case::RoutedTcVxlan,
        Case::RoutedCopy,
        Case::RoutedCopyVxlan,
    ];

    /// Short name for `--cases`.
    fn id(self) -> &'static str {
        match self {
            Case::XdpDrop => "drop",
            Case::TcMirred => "tc",
            Case::XdpRedirect => "redirect",
            Case::MirrorKernel => "mirror",
            Case::MirrorFiltered => "filtered",
            Case::MirrorCut => "cut",
            Case::MirrorRateLimit => "ratelimit",
            Case::MirrorGroup => "group",
            Case::MirrorUserspace => "userspace",
            Case::MirrorShared => "shared",
            Case::XskFwd => "xskfwd",
            Case::Daemonlogger => "daemonlogger",
            Case::Pass => "pass",
            Case::MirrorCopy => "copy",
            Case::XdpBroadcast => "broadcast",
            Case::MirrorKernel2 => "mirror2",
            Case::Tcpdump => "tcpdump",
            Case::MirrorPcapng => "pcapng",
            Case::MirrorPcapngCopy => "pcapng-copy",
            Case::TcVxlan => "tcvxlan",
            Case::MirrorVxlan => "vxlan",
            Case::MirrorGre => "gre",
            Case::MirrorErspan => "erspan",
            Case::Routed => "routed",
            Case::RoutedTc => "routed-tc",
            Case::RoutedTcVxlan => "routed-tcvx",
            Case::RoutedCopy => "routed-copy",
            Case::RoutedCopyVxlan => "routed-copyvx",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::XdpDrop => "ceiling: XDP_DROP at feed0",
            Case::TcMirred => "tc mirred (software SPAN)",
            Case::XdpRedirect => "XDP redirect (in-kernel ceiling)",
            Case::MirrorKernel => "mirror, kernel path",
            Case::MirrorFiltered => "mirror, kernel path, 2-rule filter",
            Case::MirrorCut => "mirror, kernel path, packet_length = 64",
            Case::MirrorRateLimit => "mirror, kernel path, rate_limit_pps = 100M (never reached)",
            Case::MirrorGroup => "mirror, kernel path, group of t0 + t1 (sum of both)",
            Case::MirrorUserspace => "mirror, userspace (AF_XDP)",
            Case::MirrorShared => "mirror, userspace, shared UMEM",
            Case::XskFwd => "xsk-fwd (C, libxdp, one core)",
            Case::Daemonlogger => "daemonlogger soft tap",
            Case::Pass => "monitored traffic, no mirror (copy-mode baseline)",
            Case::MirrorCopy => "mirror, copy mode (ring buffer)",
            Case::XdpBroadcast => "XDP broadcast x2 (fan-out ceiling)",
            Case::MirrorKernel2 => "mirror x2, kernel path",
            Case::Tcpdump => "tcpdump -w (tmpfs)",
            Case::MirrorPcapng => "mirror, pcapng target (tmpfs)",
            Case::MirrorPcapngCopy => "mirror copy mode (tcx), pcapng target (tmpfs)",
            Case::TcVxlan => "tc mirred to a VXLAN device (remote SPAN)",
            Case::MirrorVxlan => "mirror, VXLAN target",
            Case::MirrorGre => "mirror, GRE target",
            Case::MirrorErspan => "mirror, ERSPAN II target",
            Case::Routed => "routed: feed0 -> out0 forwarded, no mirror (routed baseline)",
            Case::RoutedTc => "routed + tc mirred",
            Case::RoutedTcVxlan => "routed + tc mirred to a VXLAN device",
            Case::RoutedCopy => "routed + mirror copy mode",
            Case::RoutedCopyVxlan => "routed + mirror copy mode, VXLAN target",
        }
    }

    /// The remote cases: a tunnel to 10.77.0.2 over tgt0 (see
    /// [`tunnel_lab`]).
    fn remote(self) -> bool {
        matches!(self, Case::TcVxlan | Case::RoutedTcVxlan) || self.tunnel().is_some()
    }

    /// The routed cases: the src namespace forwards the generator's frames
    /// from feed0 to out0 (see [`routed_lab`]) while they are mirrored.
    fn routed(self) -> bool {
        matches!(
            self,
            Case::Routed
                | Case::RoutedTc
                | Case::RoutedTcVxlan
                | Case::RoutedCopy
                | Case::RoutedCopyVxlan
        )
    }

    /// The `tc mirred` cases: a clsact qdisc on feed0 mirroring every frame
    /// to tgt0, or to the VXLAN device over it.
    fn tc_mirred(self) -> bool {
        matches!(
            self,
            Case::TcMirred | Case::TcVxlan | Case::RoutedTc | Case::RoutedTcVxlan
        )
    }

    /// Whether the case's `tc mirred` goes to the VXLAN device.
    fn tc_vxlan(self) -> bool {
        matches!(self, Case::TcVxlan | Case::RoutedTcVxlan)
    }

    /// mirror's tunnel target of the case (its `[[target]]` keys after
    /// `kind`), for the mirror remote cases.
    fn tunnel(self) -> Option<&'static str> {
        match self {
            Case::MirrorVxlan => Some("kind = \"vxlan\""),
            Case::MirrorGre => Some("kind = \"gre\""),
            Case::MirrorErspan => Some("kind = \"erspan\"\nversion = 2"),
            Case::RoutedCopyVxlan => Some("kind = \"vxlan\""),
            _ => None,
        }
    }

    /// The `tc mirred` case this one's "vs tc mirred" ratio is taken
    /// against: the VXLAN device for the remote cases (`tcvxlan`, the
    /// kernel's remote mirror), plain `tc mirred` for every other case with
    /// target ports; for the routed cases, `routed-tc` (the copies of the
    /// same routed traffic).
    fn tc_peer(self) -> Option<Case> {
        match self {
            Case::TcMirred | Case::Routed | Case::RoutedTc => None,
            // The routed cases' copies against the routed `tc mirred`.
            c if c.routed() => Some(Case::RoutedTc),
            c if c.tunnel().is_some() => Some(Case::TcVxlan),
            c if c.targets() > 0 && !c.captures() => Some(Case::TcMirred),
            _ => None,
        }
    }

    /// Target ports each frame is sent to (0: none, the ceiling and the
    /// copy-mode baseline; a file counts as one). What the sinks count is
    /// divided by this: delivered per target. A group counts as one: each
    /// frame reaches one member, so its delivered rate is the sum over both
    /// members' sinks (the split is reported next to it).
    fn targets(self) -> usize {
        match self {
            Case::XdpDrop | Case::Pass | Case::Routed => 0,
            Case::XdpBroadcast | Case::MirrorKernel2 => 2,
            _ => 1,
        }
    }

    /// Whether the case's one target is a group of both ports (t0, t1):
    /// each frame goes to one member, picked by its flow.
    fn group(self) -> bool {
        matches!(self, Case::MirrorGroup)
    }

    /// Whether the case writes a file instead of sending to target ports.
    fn captures(self) -> bool {
        matches!(
            self,
            Case::Tcpdump | Case::MirrorPcapng | Case::MirrorPcapngCopy
        )
    }

    /// Whether feed0's traffic goes on up its stack, counted there (tcx):
    /// copy mode and its baseline, and the routed cases (whose traffic
    /// passed on is what out0's sink counted; the tcx counter then gives
    /// the frames that reached feed0's stack, each of which should be
    /// copied). The lossless rate is then the monitored traffic's, as copy
    /// mode promises to lose none of it.
    fn monitored(self) -> bool {
        matches!(self, Case::Pass | Case::MirrorCopy) || self.routed()
    }

    /// The case this one is compared with: the in-kernel ceilings for the
    /// kernel path and tc, the C AF_XDP forwarder for the userspace path,
    /// tc mirred for copy mode (both leave the original untouched), tcpdump
    /// for the pcapng target, and mirror's kernel path to an interface
    /// target for its tunnel targets (what a tunnel costs mirror) and for
    /// its session options on that path (what a cut, a rate limit or a
    /// group costs it); routed copy mode to a VXLAN target against routed
    /// `tc mirred` to the VXLAN device.
    fn reference(self) -> Option<Case> {
        match self {
            Case::TcMirred | Case::MirrorKernel | Case::MirrorFiltered => Some(Case::XdpRedirect),
            Case::MirrorUserspace | Case::MirrorShared => Some(Case::XskFwd),
            Case::MirrorCopy => Some(Case::TcMirred),
            Case::RoutedCopyVxlan => Some(Case::RoutedTcVxlan),
            Case::MirrorKernel2 => Some(Case::XdpBroadcast),
            Case::MirrorPcapng | Case::MirrorPcapngCopy => Some(Case::Tcpdump),
            Case::MirrorVxlan
            | Case::MirrorGre
            | Case::MirrorErspan
            | Case::MirrorCut
            | Case::MirrorRateLimit
            | Case::MirrorGroup => Some(Case::MirrorKernel),
            _ => None,
        }
    }

    /// The external program the case runs, when it needs one.
    fn tool(self) -> Option<&'static str> {
        match self {
            Case::Daemonlogger => Some("daemonlogger"),
            Case::Tcpdump => Some("tcpdump"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    frame: usize,
    /// The table's lab, as `--feed` and `--gen-core` name it.
    feed: String,
    gen_core: String,
    /// Short name (`--cases`), for the chart.
    id: &'static str,
    /// The case's name; for the remote mirror cases with the path mirror
    /// picked.
    case: String,
    /// mirror cases: the session's path as `mirror stats` names it
    /// (`kernel`, `af_xdp` or `ring_buffer`).
    session_path: Option<String>,
    /// mirror cases: how its source hooks ingress (`mirror stats`'s
    /// `xdp_mode`: `native`, `generic` or `tcx`).
    ingress_hook: Option<String>,
    /// Frames/s the generator's socket completed (handed to gen0).
    offered_pps: f64,
    /// Frames/s that arrived at each target's sink (at feed0 for the
    /// ceiling): median, min, max.
    delivered_pps: f64,
    delivered_min: f64,
    delivered_max: f64,
    /// Every full-rate run's delivered rate, in order.
    delivered_runs: Vec<f64>,
    /// `group`: frames/s at each member's sink (t0's sink0, t1's sink1) in
    /// the median run; `delivered_pps` is their sum (each frame reaches one
    /// member).
    delivered_split_pps: Option<[f64; 2]>,
    /// Offered frames that did not arrive (at every target), percent.
    loss_pct: f64,
    /// Copy mode and its baseline: frames/s of the monitored traffic that
    /// went on up feed0's stack (at max rate), and its loss, percent.
    monitored_pps: Option<f64>,
    monitored_loss_pct: Option<f64>,
    /// The highest paced rate found that lost at most 0.1% (per target; the
    /// monitored traffic for copy mode), and whether it is a floor: the
    /// generator's own maximum (the case then carries all it can offer), or
    /// the most its paced runs offered when none of them lost.
    lossless_pps: Option<f64>,
    lossless_at_max: bool,
    /// Of the frames the search's lossy paced runs lost, the share lost at
    /// feed0's RX (see `lost_before_feed0_pps`).
    lossless_lost_before_feed0: Option<f64>,
    /// Frames/s dropped at feed0's RX in the median full-rate run, before
    /// any program or socket there saw them: gen0's TX drops (feed0's ring
    /// full) and its queue's drops (`--feed page`), counted by the kernel.
    /// A NIC's `rx_missed`: the port's NAPI, which runs the case's XDP or
    /// tc program and the stack, was behind (its work, or a late wake-up).
    lost_before_feed0_pps: f64,
    /// Copy mode: its monitored rate and lossless rate over the baseline's
    /// (`pass`, same size), i.e. what copy mode leaves of the traffic; the
    /// routed cases: over `routed`'s.
    monitored_vs_pass: Option<f64>,
    lossless_vs_pass: Option<f64>,
    /// The routed mirror cases: production forwarded over `routed-tc`'s.
    monitored_vs_tc: Option<f64>,
    /// The routed cases: frames/s that reached feed0's stack (its tcx
    /// counter), each of which should have been copied (median run).
    fed_pps: Option<f64>,
    /// The routed cases with a target: copies/s lost, i.e. frames that
    /// reached feed0's stack and whose copy did not reach the copy sink.
    copies_lost_pps: Option<f64>,
    /// The routed cases: CPU ns per production frame forwarded, per core
    /// (`ns_per_frame` is then their sum).
    ns_per_frame_per_core: Option<Vec<f64>>,
    /// Of `ns_per_frame`: the userspace consumer's process (the daemon,
    /// tcpdump, the peer tool; its threads and children), and feed0's NAPI
    /// threads (the kernel's receive on the RX core, the case's programs
    /// there included). The rest is the generator's core outside the
    /// consumer (sending, the sinks, softirqs).
    consumer_ns_per_frame: Option<f64>,
    napi_ns_per_frame: Option<f64>,
    /// Busy share of each core over the run, percent.
    cpu_pct: Vec<f64>,
    /// Run time per frame of the BPF programs on feed0 (XDP and tcx
    /// ingress: the work on the RX core), ns, from one extra full-rate run
    /// with the kernel's BPF run-time statistics on (they add a little).
    feed_bpf_ns: Option<f64>,
    /// CPU time per delivered frame (all cores), ns; the routed cases: per
    /// production frame forwarded.
    ns_per_frame: f64,
    /// Resident memory of `mirror run`, KiB (mirror cases only).
    rss_kib: Option<u64>,
    /// mirror cases: frames/s its source received.
    mirror_received_pps: Option<f64>,
    /// mirror cases: mean bytes per copy its targets sent (median run);
    /// below the frame size when copies were cut (`cut`).
    copy_bytes: Option<f64>,
    /// Drops/s the case reported: mirror's targets by reason (all targets
    /// together) and its source's (`source ring_full`, ...), tcpdump's "dropped by
    /// kernel", the routed `tc mirred` cases' kernel counters (the mirred
    /// action's, the devices' on the copies' way).
    drops: std::collections::BTreeMap<String, f64>,
    /// The reference case's id and delivered / its delivered (see
    /// `Case::reference`).
    reference: Option<&'static str>,
    vs_reference: Option<f64>,
    /// The `tc mirred` case's id (see `Case::tc_peer`) and delivered / its
    /// delivered.
    tc_mirred: Option<&'static str>,
    vs_tc_mirred: Option<f64>,
}

/// One loaded instance of the reference programs.
struct Peer {
    skel: BenchPeersSkel<'static>,
}

impl Peer {
    fn load() -> Result<Peer> {
        // The skeleton borrows its object storage for its whole life; a few
        // small allocations per bench run.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let skel = BenchPeersSkelBuilder::default()
            .open(storage)
            .context("opening the bench peer programs")?
            .load()
            .context("loading the bench peer programs")?;
        Ok(Peer { skel })
    }

    fn frames(&self) -> Result<u64> {
        Ok(mirror_user::kernel::percpu_sum(&self.skel.maps.frames, 0)?)
    }

    fn fd(&self, case: Case) -> RawFd {
        let p = &self.skel.progs;
        match case {
            Case::XdpRedirect => p.xdp_redirect.as_fd().as_raw_fd(),
            Case::XdpBroadcast => p.xdp_broadcast.as_fd().as_raw_fd(),
            _ => p.xdp_count_drop.as_fd().as_raw_fd(),
        }
    }

    /// Points the redirect programs at `devices` (resolved in `ns`: a DEVMAP
    /// takes ifindexes of the updating thread's namespace).
    fn set_ports(&self, ns: &Netns, devices: &[&str]) -> Result<()> {
        let port = self.skel.maps.port.as_fd().as_raw_fd();
        let ports = self.skel.maps.ports.as_fd().as_raw_fd();
        // `port` (redirect) takes the first device, `ports` (broadcast) all.
        if let Some(first) = devices.first() {
            put_ifindex(ns, port, 0, first)?;
        }
        for (i, d) in devices.iter().enumerate() {
            put_ifindex(ns, ports, i as u32, d)?;
        }
        Ok(())
    }
}

/// Puts `dev`'s ifindex (resolved in `ns`) at `key` of the map `map`, from
/// a thread in `ns`: a DEVMAP takes ifindexes of the updating thread's
/// namespace.
fn put_ifindex(ns: &Netns, map: RawFd, key: u32, dev: &str) -> Result<()> {
    let dev = dev.to_string();
    ns.run(move || {
        let ifindex = mirror_user::kernel::ifindex(&dev)?;
        // Safety: a valid map fd, 4-byte key and value.
        let rc = unsafe {
            libbpf_sys::bpf_map_update_elem(
                map,
                (&key as *const u32).cast(),
                (&ifindex as *const u32).cast(),
                0,
            )
        };
        if rc != 0 {
            bail!(
                "putting {dev}'s ifindex in a map: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })
}

/// Makes tgt0 -> sink0 an IP link to the remote cases' collector:
/// [`TUNNEL_LOCAL`] on tgt0, [`TUNNEL_REMOTE`] on sink0, [`TUNNEL_MTU`] on
/// both, and a permanent neighbour entry on tgt0 for the collector with
/// sink0's MAC, so no ARP is sent or awaited during a run (sink0's XDP
/// program drops whatever arrives, ARP requests included).
fn tunnel_lab(lab: &Lab) -> Result<()> {
    for (ns, dev, addr) in [
        (&lab.src, Lab::TARGET_IF, TUNNEL_LOCAL),
        (&lab.sink, Lab::SINK_IF, TUNNEL_REMOTE),
    ] {
        ns.ip(&["link", "set", dev, "mtu", TUNNEL_MTU])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/{TUNNEL_PREFIX}"),
            "dev",
            dev,
        ])?;
    }
    let mac = mac(&lab.sink, Lab::SINK_IF)?;
    lab.src.ip(&[
        "neigh",
        "replace",
        TUNNEL_REMOTE,
        "lladdr",
        &mac,
        "dev",
        Lab::TARGET_IF,
        "nud",
        "permanent",
    ])
}

/// The MAC of `dev` in `ns`.
fn mac(ns: &Netns, dev: &str) -> Result<String> {
    // `ip netns exec` mounts the namespace's own sysfs.
    let out = ns
        .command(&["cat", &format!("/sys/class/net/{dev}/address")])
        .stdin(std::process::Stdio::null())
        .output()?;
    let mac = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || mac.len() != 17 {
        bail!(
            "reading {dev}'s MAC: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(mac)
}

/// The routed cases' production path (the lab is set up this way only when
/// one of them runs): out0 in ns src -- sink2 in ns sink, [`ROUTE_LOCAL`]
/// and [`ROUTE_NEXT_HOP`] on them, a route to [`ROUTED_NET`] via the next
/// hop with a permanent neighbour entry (sink2's MAC: no ARP during runs),
/// IP forwarding on in ns src and reverse-path filtering off (the
/// generator's source addresses have no route back). Nothing is forwarded
/// until a routed case gives feed0 the generator's destination MAC: the
/// other cases' frames still reach feed0's stack addressed to another host,
/// and are dropped there as before.
fn routed_lab(lab: &Lab) -> Result<()> {
    lab::veth(&lab.src, ROUTE_IF, &lab.sink, ROUTE_SINK_IF, 1)?;
    for (ns, dev, addr) in [
        (&lab.src, ROUTE_IF, ROUTE_LOCAL),
        (&lab.sink, ROUTE_SINK_IF, ROUTE_NEXT_HOP),
    ] {
        ns.ip(&["addr", "add", &format!("{addr}/{ROUTE_PREFIX}"), "dev", dev])?;
    }
    let mac = mac(&lab.sink, ROUTE_SINK_IF)?;
    lab.src.ip(&[
        "neigh",
        "replace",
        ROUTE_NEXT_HOP,
        "lladdr",
        &mac,
        "dev",
        ROUTE_IF,
        "nud",
        "permanent",
    ])?;
    lab.src.ip(&[
        "route",
        "add",
        ROUTED_NET,
        "via",
        ROUTE_NEXT_HOP,
        "dev",
        ROUTE_IF,
    ])?;
    for setting in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        &format!("net.ipv4.conf.{}.rp_filter=0", Lab::FEED_IF),
    ] {
        lab.src.exec(&["sysctl", "-qw", setting])?;
    }
    Ok(())
}

/// [`crate::Feed::Page`]'s port beside gen0: genp0 (its peer genp1 idle),
/// where `xdp_pass` makes the kernel register the RX queue the generator
/// runs on and `tc_forward` sends every skb its stack receives out of gen0,
/// whose queue becomes a 4,096-frame `pfifo` (a veth has none: a frame
/// feed0's ring cannot take would be dropped, not held). Detached when the
/// returned peer and links drop; the ports go with the lab.
fn page_feed(lab: &Lab) -> Result<(Peer, [OwnedFd; 2])> {
    lab::veth(&lab.gen, crate::PAGE_FEED_IF, &lab.gen, "genp1", 1)?;
    gen_queue(lab, 4096)?;
    let p = Peer::load()?;
    let forward = p.skel.maps.forward.as_fd().as_raw_fd();
    put_ifindex(&lab.gen, forward, 0, Lab::GEN_IF).context("setting tc_forward's port")?;
    let xdp = attach(
        &lab.gen,
        crate::PAGE_FEED_IF,
        p.skel.progs.xdp_pass.as_fd().as_raw_fd(),
    )?;
    let fd = p.skel.progs.tc_forward.as_fd().as_raw_fd();
    let tcx = attach_tcx_ingress(&lab.gen, crate::PAGE_FEED_IF, fd)?;
    Ok((p, [xdp, tcx]))
}

/// Makes gen0's queue a `pfifo` of `limit` frames.
fn gen_queue(lab: &Lab, limit: u32) -> Result<()> {
    let limit = limit.to_string();
    lab.gen.exec(&[
        "tc",
        "qdisc",
        "replace",
        "dev",
        Lab::GEN_IF,
        "root",
        "pfifo",
        "limit",
        &limit,
    ])
}

/// Attaches the tcx program `fd` to `dev`'s ingress in `ns` through a
/// link; dropping the returned fd detaches it.
fn attach_tcx_ingress(ns: &Netns, dev: &str, fd: RawFd) -> Result<OwnedFd> {
    let dev = dev.to_string();
    ns.run(move || {
        let ifindex = mirror_user::kernel::ifindex(&dev)?;
        mirror_user::kernel::link_create(fd, ifindex, libbpf_sys::BPF_TCX_INGRESS, 0)
            .with_context(|| format!("attaching a tcx program to {dev}'s ingress"))
    })
}

/// Attaches program `fd` to `dev` in `ns` (native XDP) through a link;
/// dropping the returned fd detaches it.
fn attach(ns: &Netns, dev: &str, fd: RawFd) -> Result<OwnedFd> {
    let dev = dev.to_string();
    ns.run(move || {
        let ifindex = mirror_user::kernel::ifindex(&dev)?;
        mirror_user::kernel::link_create(
            fd,
            ifindex,
            libbpf_sys::BPF_XDP,
            libbpf_sys::XDP_FLAGS_DRV_MODE,
        )
        .with_context(|| format!("attaching XDP to {dev}"))
    })
}

/// `tc` in `ns`, failing on a non-zero exit.
fn tc(ns: &Netns, args: &[&str]) -> Result<()> {
    let mut all = vec!["tc"];
    all.extend_from_slice(args);
    ns.exec(&all)
}

/// Per-core (busy, total) jiffies from /proc/stat.
fn cpu_times() -> Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait are not busy.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect())
}

/// A mirror case's counters so far.
struct MirrorCounts {
    /// Frames its source received.
    received: u64,
    /// Its targets' drops by reason (all targets together).
    drops: std::collections::BTreeMap<String, u64>,
    /// Its source's drops by reason, named `source <reason>` (`source
    /// ring_full`: the AF_XDP RX ring or the BPF ring buffer was full).
    source_drops: std::collections::BTreeMap<String, u64>,
    /// Copies its targets sent, and their bytes (all targets together).
    sent_packets: u64,
    sent_bytes: u64,
}

fn mirror_stats(r: &Running<'_>) -> Result<Option<MirrorCounts>> {
    let Some(d) = &r.daemon else { return Ok(None) };
    let s = mirror_user::control::Client::connect(&d.control)?.stats()?;
    let mut c = MirrorCounts {
        received: s.sources["feed"].received,
        drops: std::collections::BTreeMap::new(),
        source_drops: s.sources["feed"]
            .dropped
            .iter()
            .map(|(k, v)| (format!("source {k}"), *v))
            .collect(),
        sent_packets: 0,
        sent_bytes: 0,
    };
    for t in s.targets.values() {
        for (k, v) in &t.dropped {
            *c.drops.entry(k.clone()).or_default() += v;
        }
        c.sent_packets += t.sent_packets;
        c.sent_bytes += t.sent_bytes;
    }
    Ok(Some(c))
}

/// The routed `tc mirred` cases: what the kernel counts of the copies it
/// lost so far: the mirred action's `overlimits` (a copy its device's
/// transmit refused) and `drops`, and `tx_dropped` / `tx_errors` of the
/// devices on the copies' way (tgt0, and the VXLAN device); `None` for the
/// other cases.
fn tc_kernel_counts(
    lab: &Lab,
    case: Case,
) -> Result<Option<std::collections::BTreeMap<String, u64>>> {
    if !(case.routed() && case.tc_mirred()) {
        return Ok(None);
    }
    let mut counts = std::collections::BTreeMap::new();
    let out = lab
        .src
        .command(&[
            "tc",
            "-s",
            "-j",
            "filter",
            "show",
            "dev",
            Lab::FEED_IF,
            "ingress",
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "tc filter show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let filters: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("tc filter show's JSON")?;
    let actions = filters
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.pointer("/options/actions")?.as_array())
        .flatten()
        .filter(|a| a["kind"] == "mirred");
    for a in actions {
        for what in ["overlimits", "drops"] {
            *counts.entry(format!("mirred {what}")).or_default() +=
                a["stats"][what].as_u64().unwrap_or(0);
        }
    }
    let mut devices = vec![(Lab::TARGET_IF, "tx_dropped")];
    if case.tc_vxlan() {
        devices.extend([(VXLAN_DEV, "tx_dropped"), (VXLAN_DEV, "tx_errors")]);
    }
    let files: Vec<String> = devices
        .iter()
        .map(|(dev, what)| format!("/sys/class/net/{dev}/statistics/{what}"))
        .collect();
    let mut args = vec!["cat"];
    args.extend(files.iter().map(String::as_str));
    // `ip netns exec` mounts the namespace's own sysfs.
    let out = lab
        .src
        .command(&args)
        .stdin(std::process::Stdio::null())
        .output()?;
    let values: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if !out.status.success() || values.len() != devices.len() {
        bail!(
            "reading {}: {}",
            files.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for ((dev, what), v) in devices.iter().zip(values) {
        counts.insert(format!("{dev} {what}"), v);
    }
    Ok(Some(counts))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What a running case is: the attached programs / qdisc / daemon / tool,
/// undone on drop.
struct Running<'a> {
    case: Case,
    /// The case's own program at feed0 (ceiling, redirect, broadcast).
    peer: Option<Peer>,
    link: Option<OwnedFd>,
    daemon: Option<DaemonProcess>,
    /// xsk-fwd or daemonlogger, for the whole case.
    process: Option<Process>,
    /// The namespace whose feed0 has the case's clsact qdisc.
    tc: Option<&'a Netns>,
    /// The namespace holding `tcvxlan`'s VXLAN device.
    vxlan: Option<&'a Netns>,
    /// mirror cases: the session's path as `mirror stats` names it.
    path: Option<String>,
    /// mirror cases: how the source hooks ingress (`mirror stats`'s
    /// `xdp_mode`).
    hook: Option<String>,
    /// The namespace whose feed0 got an address for the case (daemonlogger
    /// will not start on an interface without one).
    address: Option<&'a Netns>,
    /// Where capture cases write (a tmpfs), emptied after the case.
    capture: Option<&'a Path>,
    /// tcpdump: one process through the case's runs; frames it wrote in
    /// the runs so far, and its counts after the last run.
    tcpdump: Option<Process>,
    written: u64,
    tcpdump_counts: TcpdumpCounts,
    /// Copy mode and its baseline: the tcx counter on feed0's ingress.
    monitor: Option<(Peer, OwnedFd)>,
    /// The routed cases: the counter on out0's sink (production forwarded).
    forward: Option<&'a Peer>,
    /// The routed cases: feed0's own MAC, put back on drop (the case gives
    /// feed0 the MAC the generator's frames are sent to).
    feed_mac: Option<(&'a Netns, String)>,
}

/// An address for feed0 that no lab frame is sent to.
const FEED_ADDRESS: &str = "192.0.2.1/32";

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.link = None;
        self.monitor = None;
        self.process = None;
        self.tcpdump = None;
        if let Some(ns) = self.tc {
            let _ = tc(ns, &["qdisc", "del", "dev", Lab::FEED_IF, "clsact"]);
        }
        if let Some(ns) = self.vxlan {
            let _ = ns.ip(&["link", "del", VXLAN_DEV]);
        }
        if let Some(ns) = self.address {
            let _ = ns.ip(&["addr", "del", FEED_ADDRESS, "dev", Lab::FEED_IF]);
        }
        self.daemon = None;
        if let Some((ns, mac)) = self.feed_mac.take() {
            let _ = ns.ip(&["link", "set", Lab::FEED_IF, "address", &mac]);
        }
        if let Some(dir) = self.capture {
            let _ = empty(dir);
        }
    }
}

/// Removes every file in `dir`.
fn empty(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        std::fs::remove_file(e?.path())?;
    }
    Ok(())
}

/// The CPU every userspace consumer runs on (mirror's daemon through
/// `[daemon] cpus`, the tools through `taskset`): never the feed port's RX
/// core, as one keeps them off a NIC's IRQ cores; they share it with the
/// generator alike, unless `--gen-core rx` puts the generator there.
const USER_CPU: usize = crate::GEN_CPU;

/// How long an external tool of the lab may run at most.
const TOOL_LIMIT: Duration = Duration::from_secs(900);

impl Running<'_> {
    /// The userspace process that consumes the case's frames, if any: the
    /// daemon, tcpdump or the peer tool (the tools under their `timeout`,
    /// which [`crate::tree_cpu_ns`] counts with them).
    fn consumer_pid(&self) -> Option<i32> {
        self.daemon
            .as_ref()
            .and_then(|d| d.pid())
            .or_else(|| self.tcpdump.as_ref().and_then(|p| p.pid()))
            .or_else(|| self.process.as_ref().and_then(|p| p.pid()))
            .map(|p| p as i32)
    }

    /// Frames delivered so far: what the sinks counted, what XDP saw (the
    /// ceiling), or what was written to a file (capture cases).
    fn delivered(&self, sinks: &[Peer; 2]) -> Result<u64> {
        match self.case {
            Case::XdpDrop => self
                .peer
                .as_ref()
                .context("the ceiling's program")?
                .frames(),
            Case::Tcpdump => Ok(self.written),
            Case::Pass | Case::Routed => self.monitored().map(|m| m.unwrap_or(0)),
            Case::MirrorPcapng | Case::MirrorPcapngCopy => {
                let d = self.daemon.as_ref().context("the daemon")?;
                let s = mirror_user::control::Client::connect(&d.control)?.stats()?;
                Ok(s.targets["cap"].sent_packets)
            }
            _ => Ok(sinks[0].frames()? + sinks[1].frames()?),
        }
    }

    /// Frames of the monitored traffic that passed on so far: that reached
    /// feed0's stack (copy mode and its baseline), that were forwarded to
    /// out0's sink (the routed cases).
    fn monitored(&self) -> Result<Option<u64>> {
        if let Some(f) = self.forward {
            return f.frames().map(Some);
        }
        self.fed()
    }

    /// Frames that reached feed0's stack so far (its tcx counter): copy
    /// mode, its baseline and the routed cases.
    fn fed(&self) -> Result<Option<u64>> {
        self.monitor.as_ref().map(|(p, _)| p.frames()).transpose()
    }

    /// Before a run: tcpdump is listening when this returns. It starts
    /// before the case's first run and then runs through all of them, as a
    /// user runs it and as the daemon runs through its case: a tcpdump
    /// started for each 2-second run would be measured mostly before its
    /// first `-W` wrap, when it starts truncating its oldest file.
    fn begin(&mut self, lab: &Lab, dir: &TempDir) -> Result<()> {
        if self.case != Case::Tcpdump || self.tcpdump.is_some() {
            return Ok(());
        }
        let file = self
            .capture
            .context("the capture tmpfs")?
            .join("tcpdump.pcap");
        let p = tool(
            lab,
            dir,
            "tcpdump",
            &[
                "tcpdump",
                "-i",
                Lab::FEED_IF,
                "-n",
                "-s",
                "0",
                "-B",
                TCPDUMP_BUFFER_KIB,
                "-Z",
                "root",
                "-w",
                &file.to_string_lossy(),
                "-C",
                "256",
                "-W",
                "4",
            ],
            "listening on",
        )?;
        self.tcpdump = Some(p);
        self.tcpdump_counts = TcpdumpCounts::default();
        Ok(())
    }

    /// After a run: what tcpdump wrote in it (its "N packets captured",
    /// asked for with SIGUSR1, minus the count after the run before) is
    /// added up; returns its kernel drops in the run.
    fn end(&mut self) -> Result<Option<u64>> {
        let Some(p) = self.tcpdump.as_mut() else {
            return Ok(None);
        };
        // libpcap hands tcpdump a TPACKET_V3 block when it is full or after
        // tcpdump's 1 s buffer timeout: wait for the last one, else its
        // frames would count in the next run.
        std::thread::sleep(TCPDUMP_BUFFER_TIMEOUT);
        let now = tcpdump_counts(p).context("tcpdump")?;
        let before = std::mem::replace(&mut self.tcpdump_counts, now);
        self.written += now.captured - before.captured;
        Ok(Some(now.dropped - before.dropped))
    }
}

/// What tcpdump says it captured and lost so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct TcpdumpCounts {
    captured: u64,
    dropped: u64,
}

/// Asks tcpdump for its counts (SIGUSR1: it prints `tcpdump: N packets
/// captured, N packets received by filter, N packets dropped by kernel`) and
/// reads the new line from its log, within 5 s.
fn tcpdump_counts(p: &mut Process) -> Result<TcpdumpCounts> {
    let lines = |log: &str| log.lines().filter(|l| l.contains(" captured, ")).count();
    let seen = lines(&p.log_text());
    // `timeout` (the process started) would end on SIGUSR1 itself: signal
    // its child, tcpdump (`taskset` execs it).
    let pid = p.pid().context("no pid")?;
    let child: i32 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .context("tcpdump is not running under its timeout")?;
    // Safety: kill() on our child's own child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = p.log_text();
        if lines(&log) > seen {
            let line = log
                .lines()
                .rfind(|l| l.contains(" captured, "))
                .context("the counts line")?;
            return parse_tcpdump_counts(line)
                .with_context(|| format!("tcpdump's counts in `{line}`"));
        }
        p.check_running()?;
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "tcpdump printed no counts after SIGUSR1:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tcpdump: 12 packets captured, 14 packets received by filter, 0 packets
/// dropped by kernel` (one packet: `packet`).
fn parse_tcpdump_counts(line: &str) -> Option<TcpdumpCounts> {
    let count = |what: &str| -> Option<u64> {
        let part = line.split(", ").find(|p| p.ends_with(what))?;
        let words: Vec<&str> = part.split_whitespace().collect();
        let at = words.iter().position(|w| w.starts_with("packet"))?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    Some(TcpdumpCounts {
        captured: count("captured")?,
        dropped: count("by kernel")?,
    })
}

/// tcpdump's packet buffer timeout (libpcap's `to_ms`, 1000 unless
/// `--immediate-mode`), with a margin.
const TCPDUMP_BUFFER_TIMEOUT: Duration = Duration::from_millis(1200);

/// tcpdump's capture buffer (`-B`, KiB): 16 MiB, 8x its default, as one
/// tunes it for a busy port.
const TCPDUMP_BUFFER_KIB: &str = "16384";

fn start<'a>(case: Case, rig: &Rig<'a>, exe: &Path, capture: &'a Path) -> Result<Running<'a>> {
    let (lab, forward, dir, cap_queue) = (rig.lab, rig.forward, rig.dir, rig.cap_queue);
    let mut run = Running {
        case,
        peer: None,
        link: None,
        daemon: None,
        process: None,
        tc: None,
        vxlan: None,
        path: None,
        hook: None,
        address: None,
        capture: None,
        tcpdump: None,
        written: 0,
        tcpdump_counts: TcpdumpCounts::default(),
        monitor: None,
        forward: None,
        feed_mac: None,
    };
    if case.routed() {
        // feed0 takes the generator's frames as its own (their destination
        // MAC), so its stack forwards them to out0; put back on drop.
        run.forward = Some(forward.context("the routed lab (out0's sink)")?);
        let own = mac(&lab.src, Lab::FEED_IF)?;
        let to = traffic::frame(traffic::SHAPES[1], 0, 60)[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        lab.src.ip(&["link", "set", Lab::FEED_IF, "address", &to])?;
        run.feed_mac = Some((&lab.src, own));
    }
    if case.monitored() {
        let p = Peer::load()?;
        let fd = p.skel.progs.tc_count.as_fd().as_raw_fd();
        let link = attach_tcx_ingress(&lab.src, Lab::FEED_IF, fd)?;
        run.monitor = Some((p, link));
    }
    if case.captures() {
        run.capture = Some(capture);
    }
    match case {
        Case::XdpDrop | Case::XdpRedirect | Case::XdpBroadcast => {
            let p = Peer::load()?;
            p.set_ports(&lab.src, &[Lab::TARGET_IF, "tgt1"])?;
            run.link = Some(attach(&lab.src, Lab::FEED_IF, p.fd(case))?);
            run.peer = Some(p);
        }
        Case::TcMirred | Case::TcVxlan | Case::RoutedTc | Case::RoutedTcVxlan => {
            let dev = if case.tc_vxlan() {
                lab.src.ip(&[
                    "link",
                    "add",
                    VXLAN_DEV,
                    "type",
                    "vxlan",
                    "id",
                    TUNNEL_VNI,
                    "remote",
                    TUNNEL_REMOTE,
                    "local",
                    TUNNEL_LOCAL,
                    "dstport",
                    "4789",
                    "dev",
                    Lab::TARGET_IF,
                ])?;
                run.vxlan = Some(&lab.src);
                lab.src.ip(&["link", "set", VXLAN_DEV, "up"])?;
                VXLAN_DEV
            } else {
                Lab::TARGET_IF
            };
            tc(&lab.src, &["qdisc", "add", "dev", Lab::FEED_IF, "clsact"])?;
            run.tc = Some(&lab.src);
            tc(
                &lab.src,
                &[
                    "filter",
                    "add",
                    "dev",
                    Lab::FEED_IF,
                    "ingress",
                    "protocol",
                    "all",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "u32",
                    "0",
                    "0",
                    "action",
                    "mirred",
                    "egress",
                    "mirror",
                    "dev",
                    dev,
                ],
            )?;
        }
        Case::XskFwd => {
            let fwd = crate::sibling_exe("xsk-fwd")?;
            let args = [
                fwd.to_string_lossy().into_owned(),
                Lab::FEED_IF.to_string(),
                Lab::TARGET_IF.to_string(),
                TOOL_LIMIT.as_secs().to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // The case before (the daemon's AF_XDP sockets on the same
            // ports) may still hold a queue: the kernel releases a closed
            // socket's queue asynchronously, and xsk-fwd does not wait for
            // it as the daemon does. Retried as long as the daemon would.
            let deadline = std::time::Instant::now() + XSK_BUSY_RETRY;
            let p = loop {
                match tool(lab, dir, "xsk-fwd", &args, "xsk-fwd: forwarding") {
                    Err(e)
                        if format!("{e:#}").contains("Device or resource busy")
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => break other?,
                }
            };
            run.process = Some(p);
        }
        Case::Daemonlogger => {
            lab.src
                .ip(&["addr", "add", FEED_ADDRESS, "dev", Lab::FEED_IF])?;
            run.address = Some(&lab.src);
            let pid_dir = dir.path().to_string_lossy();
            let mut p = tool(
                lab,
                dir,
                "daemonlogger",
                &[
                    // Line-buffered, so its start-up line reaches the log.
                    "stdbuf",
                    "-oL",
                    "daemonlogger",
                    "-i",
                    Lab::FEED_IF,
                    "-o",
                    Lab::TARGET_IF,
                    "-P",
                    &pid_dir,
                ],
                "sniffing on interface",
            )?;
            // It opens the interfaces after that line; a failure exits.
            std::thread::sleep(Duration::from_millis(500));
            p.check_running().context("daemonlogger")?;
            run.process = Some(p);
        }
        Case::Tcpdump | Case::Pass | Case::Routed => {}
        Case::MirrorKernel
        | Case::MirrorFiltered
        | Case::MirrorCut
        | Case::MirrorRateLimit
        | Case::MirrorGroup
        | Case::MirrorUserspace
        | Case::MirrorShared
        | Case::MirrorCopy
        | Case::MirrorKernel2
        | Case::MirrorPcapng
        | Case::MirrorPcapngCopy
        | Case::MirrorVxlan
        | Case::MirrorGre
        | Case::MirrorErspan
        | Case::RoutedCopy
        | Case::RoutedCopyVxlan => {
            let (targets, path, source) = match case {
                // Copy mode as a user sets it up: the path mirror picks.
                Case::RoutedCopy => ("\"t0\"", "auto", COPY_INGRESS),
                Case::RoutedCopyVxlan => ("\"remote\"", "auto", COPY_INGRESS),
                _ if case.tunnel().is_some() => ("\"remote\"", "auto", ""),
                Case::MirrorUserspace => ("\"t0\"", "userspace", ""),
                Case::MirrorShared => ("\"t0\"", "userspace", "share_umem = true"),
                Case::MirrorCopy => ("\"t0\"", "userspace", "mode = \"copy\""),
                // The capture cases' buffers as one sets them for a busy
                // port, as tcpdump gets `-B 16384` (8x its default): an RX
                // ring of 8,192 (4x the default) over 16,384 UMEM frames.
                Case::MirrorPcapng => ("\"cap\"", "userspace", BUSY_PORT_RX),
                // A live interface's traffic to a file, hooked where
                // tcpdump's packet socket sees it (the skb, no XDP copy).
                Case::MirrorPcapngCopy => ("\"cap\"", "userspace", COPY_TC),
                Case::MirrorKernel2 => ("\"t0\", \"t1\"", "kernel", ""),
                // The group of t0 and t1 (below) as the only target.
                Case::MirrorGroup => ("\"pool\"", "kernel", ""),
                _ => ("\"t0\"", "kernel", ""),
            };
            let filter = if case == Case::MirrorFiltered {
                "aws"
            } else {
                "all"
            };
            let text = CONFIG
                .replace("@SOURCE@", source)
                .replace("@TARGETS@", targets)
                .replace("@PATH@", path)
                .replace("@FILTER@", filter)
                .replace("@CAPTURE@", &capture.to_string_lossy())
                .replace("@CPUS@", &USER_CPU.to_string())
                .replace(
                    "@CAP_QUEUE@",
                    &cap_queue.map_or(String::new(), |n| format!("queue_size = {n}")),
                );
            // More targets and session options: the remote cases' target
            // (remote 10.77.0.2) and their VNI / ERSPAN session id, the
            // group of t0 and t1, the cut and the rate limit; nothing for
            // the others.
            let (extra, session) = match (case.tunnel(), case) {
                (Some(kind), _) => (
                    format!(
                        "\n[[target]]\nname = \"remote\"\n{kind}\nremote = \"{TUNNEL_REMOTE}\"\nmtu = {TUNNEL_MTU}\n"
                    ),
                    format!("vni = {TUNNEL_VNI}"),
                ),
                (None, Case::MirrorGroup) => (
                    "\n[[target_group]]\nname = \"pool\"\nmembers = [\"t0\", \"t1\"]\n".to_string(),
                    String::new(),
                ),
                (None, Case::MirrorCut) => (String::new(), format!("packet_length = {CUT_LENGTH}")),
                (None, Case::MirrorRateLimit) => {
                    (String::new(), format!("rate_limit_pps = {RATE_LIMIT_PPS}"))
                }
                _ => (String::new(), String::new()),
            };
            let text = text
                .replace("@EXTRA@", &extra)
                .replace("@SESSION@", &session);
            let daemon = crate::start_daemon(&lab.src, exe, dir, &text)?;
            let stats = mirror_user::control::Client::connect(&daemon.control)?.stats()?;
            run.path = stats.sessions.get("all").map(|s| s.path.clone());
            run.hook = stats.sources.get("feed").map(|s| s.xdp_mode.clone());
            run.daemon = Some(daemon);
        }
    }
    Ok(run)
}

/// Starts an external program of the lab in the src namespace on
/// [`USER_CPU`] (`taskset`), under [`TOOL_LIMIT`], logging to `NAME.log` in
/// `dir`, and waits until its log shows `ready`.
fn tool(lab: &Lab, dir: &TempDir, name: &str, args: &[&str], ready: &str) -> Result<Process> {
    let cpu = USER_CPU.to_string();
    let mut all = vec!["taskset", "-c", &cpu];
    all.extend_from_slice(args);
    let mut p = Process::start(
        &lab.src,
        &all,
        &dir.path().join(format!("{name}.log")),
        TOOL_LIMIT,
    )?;
    p.wait_for_log(ready, Duration::from_secs(10))
        .with_context(|| name.to_string())?;
    Ok(p)
}

/// Whether `tool` is on the PATH.
fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// What one run of a case measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Frames/s the generator completed.
    offered: f64,
    /// Frames/s delivered per target (see [`Running::delivered`]).
    delivered: f64,
    /// Frames/s of the monitored traffic that went on (copy mode, baseline;
    /// the routed cases: forwarded to out0's sink).
    monitored: Option<f64>,
    /// The routed cases: frames/s that reached feed0's stack.
    fed: Option<f64>,
    cpu: Vec<f64>,
    /// CPU ns over the run of the userspace consumer (the daemon, the tool
    /// with its children) and of feed0's NAPI threads, where there is one.
    consumer_ns: Option<u64>,
    napi_ns: u64,
    /// Seconds between the two CPU readings.
    window_s: f64,
    /// mirror: frames/s its source received.
    received: Option<f64>,
    /// mirror: mean bytes per copy its targets sent.
    copy_bytes: Option<f64>,
    /// Frames/s counted at sink0 and sink1 (what `delivered` adds up).
    per_sink: [f64; 2],
    /// Drops/s by reason (mirror's targets, and its source in the routed
    /// cases; tcpdump's kernel drops; the routed tc cases' kernel counters).
    drops: std::collections::BTreeMap<String, f64>,
    /// Frames/s lost before feed0 (see `Row::lost_before_feed0_pps`).
    before_feed0: f64,
}

impl Sample {
    /// The loss a lossless rate is judged by: the monitored traffic's for
    /// copy mode and its baseline, else what was delivered per target.
    fn loss(&self, case: Case) -> f64 {
        let got = if case.monitored() {
            self.monitored.unwrap_or(0.0)
        } else {
            self.delivered
        };
        if self.offered > 0.0 {
            (1.0 - got / self.offered).max(0.0)
        } else {
            1.0
        }
    }
}

/// What every run of the lab uses: the namespaces, a scratch directory and
/// the meters on the sink ports.
struct Rig<'a> {
    lab: &'a Lab,
    dir: &'a TempDir,
    sinks: &'a [Peer; 2],
    /// The routed cases: the counter on out0's sink (sink2).
    forward: Option<&'a Peer>,
    layout: Layout,
    /// The pcapng target's `queue_size`, when not the daemon's default.
    cap_queue: Option<u32>,
}

/// One run of `secs`: the generator at full speed or paced to `rate`.
fn measure(
    running: &mut Running<'_>,
    rig: &Rig<'_>,
    size: usize,
    secs: f64,
    rate: Option<f64>,
) -> Result<Sample> {
    let (lab, dir, sinks) = (rig.lab, rig.dir, rig.sinks);
    let case = running.case;
    running.begin(lab, dir).with_context(|| case.name())?;
    let napi = crate::napi_threads(Lab::FEED_IF)?;
    let napi_ns = || napi.iter().map(|&t| crate::tree_cpu_ns(t)).sum::<u64>();
    let consumer = running.consumer_pid();
    let g0 = lost_before_feed0(lab)?;
    let (d0, n0, f0, cpu0, c0, (r0, t0), m0, s0, k0) = (
        running.delivered(sinks)?,
        running.monitored()?,
        running.fed()?,
        cpu_times()?,
        consumer.map(crate::tree_cpu_ns),
        (napi_ns(), std::time::Instant::now()),
        mirror_stats(running)?,
        [sinks[0].frames()?, sinks[1].frames()?],
        tc_kernel_counts(lab, case)?,
    );
    let offered =
        crate::generate_from(rig.layout.feed, rig.layout.gen_core, lab, size, secs, rate)?;
    std::thread::sleep(Duration::from_millis(200));
    // The CPU of the run, for every case alike: before tcpdump's counts are
    // asked for after a wait of its own.
    let cpu1 = cpu_times()?;
    let (c1, r1, window_s) = (
        consumer.map(crate::tree_cpu_ns),
        napi_ns(),
        t0.elapsed().as_secs_f64(),
    );
    let tool_drops = running.end().with_context(|| case.name())?;
    let g1 = lost_before_feed0(lab)?;
    let (d1, n1, f1, m1, s1, k1) = (
        running.delivered(sinks)?,
        running.monitored()?,
        running.fed()?,
        mirror_stats(running)?,
        [sinks[0].frames()?, sinks[1].frames()?],
        tc_kernel_counts(lab, case)?,
    );
    let per_sec = |n: u64| n as f64 / secs;
    let mut drops = std::collections::BTreeMap::new();
    // Counters that grew in the run, per second.
    let mut add_drops = |b: &std::collections::BTreeMap<String, u64>,
                         e: &std::collections::BTreeMap<String, u64>| {
        for (k, v) in e {
            let n = v.saturating_sub(b.get(k).copied().unwrap_or(0));
            if n > 0 {
                *drops.entry(k.clone()).or_default() += per_sec(n);
            }
        }
    };
    if let Some((b, e)) = k0.zip(k1) {
        add_drops(&b, &e);
    }
    let mut copy_bytes = None;
    let received = m0.zip(m1).map(|(b, e)| {
        add_drops(&b.drops, &e.drops);
        // What the source lost too (`source ring_full`: the kernel found
        // the AF_XDP RX ring or the BPF ring buffer full, ...): copies lost
        // before any target saw them.
        add_drops(&b.source_drops, &e.source_drops);
        let sent = e.sent_packets - b.sent_packets;
        if sent > 0 {
            copy_bytes = Some((e.sent_bytes - b.sent_bytes) as f64 / sent as f64);
        }
        per_sec(e.received - b.received)
    });
    if let Some(n) = tool_drops.filter(|&n| n > 0) {
        drops.insert("dropped by kernel".to_string(), per_sec(n));
    }
    Ok(Sample {
        offered: per_sec(offered),
        delivered: (d1 - d0) as f64 / case.targets().max(1) as f64 / secs,
        monitored: n0.zip(n1).map(|(b, e)| per_sec(e - b)),
        fed: f0.zip(f1).map(|(b, e)| per_sec(e - b)),
        cpu: cpu0
            .iter()
            .zip(&cpu1)
            .map(|(b, e)| 100.0 * (e.0 - b.0) as f64 / (e.1 - b.1).max(1) as f64)
            .collect(),
        consumer_ns: c0.zip(c1).map(|(b, e)| e.saturating_sub(b)),
        napi_ns: r1.saturating_sub(r0),
        window_s,
        received,
        copy_bytes,
        per_sink: [per_sec(s1[0] - s0[0]), per_sec(s1[1] - s0[1])],
        drops,
        before_feed0: per_sec(g1.saturating_sub(g0)),
    })
}

/// Frames dropped so far at feed0's RX: gen0's TX drops (veth drops a
/// frame its peer's ring cannot take) and the drops of gen0's queue (`tc
/// -s qdisc`), read in the generator's namespace.
fn lost_before_feed0(lab: &Lab) -> Result<u64> {
    lab.gen.run(|| {
        // /proc/thread-self/net: this thread's namespace (gen).
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        let tx_dropped = dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{}:", Lab::GEN_IF)))
            .and_then(|rest| rest.split_whitespace().nth(11)?.parse::<u64>().ok())
            .with_context(|| format!("{}'s TX drops in /proc/net/dev", Lab::GEN_IF))?;
        // A child forked by this thread is in its namespace.
        let out = std::process::Command::new("tc")
            .args(["-s", "-j", "qdisc", "show", "dev", Lab::GEN_IF])
            .output()
            .context("tc -s qdisc")?;
        let qdiscs: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).context("tc -s -j qdisc's output")?;
        let queued_drops: u64 = qdiscs.iter().filter_map(|q| q["drops"].as_u64()).sum();
        Ok(tx_dropped + queued_drops)
    })
}

/// The highest paced rate at which the case loses at most [`LOSSLESS`]:
/// bisection between 0 and the generator's full rate, `steps` paced runs,
/// the first just under what the full-speed run delivered. Returns the
/// rate the case carried there (per target), and `at_max` when the
/// full-speed run itself was lossless (no search: the generator is the limit).
fn lossless_rate(
    running: &mut Running<'_>,
    rig: &Rig<'_>,
    size: usize,
    full: &Sample,
    a: &Args,
    progress: &indicatif::ProgressBar,
) -> Result<(f64, bool, Option<f64>)> {
    let case = running.case;
    if full.loss(case) <= LOSSLESS {
        progress.inc(u64::from(a.search));
        return Ok((full.offered * (1.0 - full.loss(case)), true, None));
    }
    // Frames/s the lossy paced runs lost, and of them before feed0.
    let (mut lost, mut before) = (0.0_f64, 0.0_f64);
    let carried = |s: &Sample| s.offered * (1.0 - s.loss(case));
    let (mut lo, mut hi) = (0.0_f64, full.offered);
    let mut best = 0.0_f64;
    let mut rate = (carried(full) * 0.95).max(full.offered / 64.0);
    for _ in 0..a.search {
        let s = measure(running, rig, size, a.trial_secs, Some(rate))?;
        crate::say(
            progress,
            format!(
                "  {size:>5}B {}: paced at {rate:.0}/s: offered {:.0}/s, lost {:.3}%, at feed0's RX {:.0}/s",
                case.id(),
                s.offered,
                100.0 * s.loss(case),
                s.before_feed0
            ),
        );
        if s.loss(case) <= LOSSLESS {
            lo = rate;
            best = best.max(carried(&s));
        } else {
            hi = rate;
            lost += s.offered * s.loss(case);
            before += s.before_feed0;
        }
        progress.inc(1);
        rate = (lo + hi) / 2.0;
    }
    let share = (lost > 0.0).then(|| (before / lost).min(1.0));
    // No paced run lost more than the bound (`hi` never came down): the
    // paced generator offered less than the case takes (on a shared core
    // it offers less paced than at full rate), so `best` is a floor, as
    // the generator's maximum is.
    Ok((best, hi == full.offered, share))
}

/// (run time ns, runs) summed over the BPF programs on feed0 (XDP and tcx
/// ingress); `None` when it has none.
fn feed_prog_stats(lab: &Lab) -> Result<Option<(u64, u64)>> {
    lab.src.run(|| {
        let on = mirror_user::kernel::attached(Lab::FEED_IF)?;
        let ids: Vec<u32> = on.xdp.iter().chain(&on.tcx_ingress).map(|p| p.0).collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let mut sum = (0, 0);
        for id in ids {
            if let Some(info) = mirror_user::kernel::prog_info(id) {
                sum.0 += info.run_time_ns;
                sum.1 += info.run_cnt;
            }
        }
        Ok(Some(sum))
    })
}

/// One full-rate run of `secs` with the kernel's BPF run-time statistics on
/// (`BPF_ENABLE_STATS`, off again when its fd closes): ns per run of feed0's
/// programs.
fn feed_bpf_ns(
    running: &mut Running<'_>,
    rig: &Rig<'_>,
    size: usize,
    secs: f64,
) -> Result<Option<f64>> {
    if feed_prog_stats(rig.lab)?.is_none() {
        return Ok(None);
    }
    // Safety: plain syscall wrapper; returns a new fd or a negative errno.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        bail!(
            "BPF_ENABLE_STATS: {}",
            std::io::Error::from_raw_os_error(-fd)
        );
    }
    // Safety: the kernel just returned this fd and nothing else owns it.
    let _stats = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let before = feed_prog_stats(rig.lab)?;
    measure(running, rig, size, secs, None)?;
    let after = feed_prog_stats(rig.lab)?;
    Ok(before.zip(after).and_then(|(b, e)| {
        let runs = e.1.saturating_sub(b.1);
        (runs > 0).then(|| e.0.saturating_sub(b.0) as f64 / runs as f64)
    }))
}

/// Starts `case` and pins the feed port's NAPI thread again (attaching XDP
/// re-creates it).
fn start_pinned<'a>(
    case: Case,
    rig: &Rig<'a>,
    exe: &Path,
    capture: &'a Path,
) -> Result<Running<'a>> {
    let running = start(case, rig, exe, capture).with_context(|| case.name())?;
    std::thread::sleep(Duration::from_millis(100));
    if crate::pin_napi_threads(Lab::FEED_IF, crate::NAPI_CPU)? == 0 {
        bail!(
            "no NAPI thread for {} (threaded NAPI not on?)",
            Lab::FEED_IF
        );
    }
    Ok(running)
}

/// Stops a case; a peer tool's own account of it (xsk-fwd: rx, tx,
/// tx_full) goes to the log.
///
/// A peer tool may leave its XDP program on feed0 (xsk-fwd's libxdp
/// attaches `xsk_def_prog` through netlink, and it stays when the sockets
/// go): it is detached once the case's own attachments are gone, so the
/// next case finds feed0 bare, as it expects.
fn finish(lab: &Lab, mut running: Running<'_>, progress: &indicatif::ProgressBar) {
    let case = running.case;
    if let Some(mut p) = running.process.take() {
        let _ = p.stop(Duration::from_secs(10));
        if let Some(line) = p.log_text().lines().find(|l| l.starts_with("rx=")) {
            crate::say(progress, format!("span {}: {line}", case.id()));
        }
    }
    drop(running);
    let left = lab
        .src
        .run(|| Ok(mirror_user::kernel::attached(Lab::FEED_IF)?.xdp));
    if let Some(xdp) = left.ok().filter(|x| !x.is_empty()) {
        let off = lab
            .src
            .exec(&["ip", "link", "set", "dev", Lab::FEED_IF, "xdp", "off"]);
        crate::say(
            progress,
            format!(
                "span {}: XDP left on {} after the case ({xdp:?}): detached{}",
                case.id(),
                Lab::FEED_IF,
                off.err()
                    .map_or(String::new(), |e| format!(" failed: {e:#}"))
            ),
        );
    }
}

/// One table's lab: where feed0's frames come from and which core the
/// generator runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    feed: crate::Feed,
    gen_core: crate::GenCore,
}

impl Layout {
    /// A capture host's: frames as a NIC's driver builds them (`--feed
    /// page`), the generator on feed0's RX core, the consumer (the daemon,
    /// tcpdump) on a core of its own (`--gen-core rx`).
    const CAPTURE_HOST: Layout = Layout {
        feed: crate::Feed::Page,
        gen_core: crate::GenCore::Rx,
    };

    fn check(self) -> Result<()> {
        if (self.feed, self.gen_core) == (crate::Feed::Skb, crate::GenCore::Rx) {
            bail!(
                "--gen-core rx needs --feed page or --feed xdp: the default feed's AF_XDP \
                 generator runs at normal priority and would take half of feed0's RX core"
            );
        }
        Ok(())
    }
}

/// `v` as its command-line option names it (`page`, `rx`).
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

/// The capture-host table a whole run adds ([`Layout::CAPTURE_HOST`]):
/// the ceiling and the capture tools.
const CAPTURE_CASES: [Case; 4] = [
    Case::XdpDrop,
    Case::Tcpdump,
    Case::MirrorPcapng,
    Case::MirrorPcapngCopy,
];

/// The tables a run makes (`--tables`), each with its lab and cases.
fn tables(a: &Args) -> Result<Vec<(Table, Layout, Vec<Case>)>> {
    let main = a.layout();
    let asked = if !a.tables.is_empty() {
        a.tables.clone()
    } else if a.cases.is_empty() && main != Layout::CAPTURE_HOST {
        vec![Table::Span, Table::SpanCapture]
    } else {
        vec![Table::Span]
    };
    if !a.cases.is_empty() && asked.contains(&Table::SpanCapture) {
        bail!(
            "--cases picks the cases of the `span` table; `span-capture` has its own ({})",
            CAPTURE_CASES.map(Case::id).join(", ")
        );
    }
    Ok(asked
        .into_iter()
        .map(|t| match t {
            Table::Span => {
                let wanted = Case::ALL
                    .into_iter()
                    .filter(|c| a.cases.is_empty() || a.cases.iter().any(|id| id == c.id()))
                    .collect();
                (t, main, wanted)
            }
            Table::SpanCapture => (t, Layout::CAPTURE_HOST, CAPTURE_CASES.to_vec()),
        })
        .collect())
}

pub fn run(a: &Args, out: &Path) -> Result<()> {
    a.layout().check()?;
    let exe = crate::mirror_exe()?;
    for id in &a.cases {
        if !Case::ALL.iter().any(|c| c.id() == id) {
            let all: Vec<&str> = Case::ALL.iter().map(|c| c.id()).collect();
            bail!("unknown case `{id}`: the cases are {}", all.join(", "));
        }
    }
    for (t, layout, cases) in tables(a)? {
        let rows = measure_layout(a, t, layout, cases, &exe)?;
        save(a, out, t, layout, &rows)?;
    }
    Ok(())
}

/// Measures `wanted` on a lab of its own laid out as `layout`; the rows
/// with their ratios against the reference cases among them.
fn measure_layout(
    a: &Args,
    t: Table,
    layout: Layout,
    wanted: Vec<Case>,
    exe: &Path,
) -> Result<Vec<Row>> {
    let lab = Lab::new(1)?;
    lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1)?;
    lab.tune_feed_port()?;
    let _page_feed = match layout.feed {
        crate::Feed::Page => Some(page_feed(&lab)?),
        _ => None,
    };
    // Addresses, neighbour and MTU only when a remote case runs: the other
    // cases keep the lab they always had.
    if wanted.iter().any(|c| c.remote()) {
        tunnel_lab(&lab)?;
    }
    // The routed cases' second port and its meter, only when one runs.
    let forward = if wanted.iter().any(|c| c.routed()) {
        routed_lab(&lab)?;
        let p = Peer::load()?;
        let link = attach(&lab.sink, ROUTE_SINK_IF, p.fd(Case::XdpDrop))?;
        Some((p, link))
    } else {
        None
    };
    let dir = TempDir::new("bench-span")?;
    // Capture cases write here (unmounted before `dir` is removed).
    let tmpfs = Tmpfs::mount(dir.path().join("capture"), "3g")?;
    // Meters on the sink ports, for the whole run.
    let sinks = [Peer::load()?, Peer::load()?];
    let _sink_links = [
        attach(&lab.sink, Lab::SINK_IF, sinks[0].fd(Case::XdpDrop))?,
        attach(&lab.sink, "sink1", sinks[1].fd(Case::XdpDrop))?,
    ];
    let mut rows: Vec<Row> = Vec::new();
    let rig = Rig {
        lab: &lab,
        dir: &dir,
        sinks: &sinks,
        forward: forward.as_ref().map(|(p, _)| p),
        layout,
        cap_queue: a.pcapng_queue_size,
    };
    // Full-rate runs, one with BPF statistics, the search's paced runs.
    let per_size = a.runs.reps as u64 + 1 + u64::from(a.search);
    let progress = crate::progress(
        wanted.len() as u64 * a.sizes.len() as u64 * per_size,
        t.name(),
    );
    // Cases whose tool is missing are skipped, with the reason.
    let mut cases = Vec::new();
    for case in wanted {
        let missing = match case {
            Case::XskFwd => crate::sibling_exe("xsk-fwd").err().map(|e| e.to_string()),
            _ => case
                .tool()
                .filter(|t| !have(t))
                .map(|t| format!("{t} is not installed (`cargo xtask bench` installs it)")),
        };
        match missing {
            Some(why) => {
                crate::say(
                    &progress,
                    format!("{}: skipping `{}`: {why}", t.name(), case.id()),
                );
                progress.inc(a.sizes.len() as u64 * per_size);
            }
            None => cases.push(case),
        }
    }
    // Full-rate runs in rounds: each round starts every case in turn and
    // runs it once per size, so a slow spell of the machine (they last
    // seconds here) lands on different cases in different rounds instead of
    // on every run of one case.
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); a.sizes.len()]; cases.len()];
    for round in 0..a.runs.reps {
        for (c, &case) in cases.iter().enumerate() {
            progress.set_message(format!("round {}: {}", round + 1, case.name()));
            let mut running = start_pinned(case, &rig, exe, tmpfs.path())?;
            for (z, &size) in a.sizes.iter().enumerate() {
                samples[c][z].push(measure(&mut running, &rig, size, a.runs.secs, None)?);
                progress.inc(1);
            }
            finish(&lab, running, &progress);
        }
    }
    // Then per case: the BPF statistics run and the lossless-rate search.
    for (c, &case) in cases.iter().enumerate() {
        progress.set_message(format!("{}: lossless rate", case.name()));
        let mut running = start_pinned(case, &rig, exe, tmpfs.path())?;
        for (z, &size) in a.sizes.iter().enumerate() {
            let runs = &samples[c][z];
            let delivered_runs: Vec<f64> = runs.iter().map(|r| r.delivered).collect();
            let (med, min, max) = crate::median(&mut delivered_runs.clone());
            // The run whose delivered rate is the median: its offered rate and CPU.
            let median_run = runs
                .iter()
                .find(|r| r.delivered == med)
                .cloned()
                .unwrap_or_default();
            let bpf_ns = feed_bpf_ns(&mut running, &rig, size, a.trial_secs)?;
            progress.inc(1);
            let lossless = if a.search > 0 {
                Some(lossless_rate(
                    &mut running,
                    &rig,
                    size,
                    &median_run,
                    a,
                    &progress,
                )?)
            } else {
                None
            };
            let Sample {
                offered,
                cpu,
                consumer_ns,
                napi_ns,
                window_s,
                received,
                copy_bytes,
                per_sink,
                drops,
                monitored,
                fed,
                before_feed0,
                ..
            } = median_run;
            let busy: f64 = cpu.iter().sum::<f64>() / 100.0;
            let rss = running
                .daemon
                .as_ref()
                .and_then(|d| d.pid())
                .and_then(rss_kib);
            let loss = |got: f64| {
                if offered > 0.0 {
                    (100.0 * (1.0 - got / offered)).max(0.0)
                } else {
                    0.0
                }
            };
            // The remote mirror cases name the path mirror picked for them,
            // the routed ones also how ingress is hooked.
            let label = match (&running.path, case.tunnel()) {
                (Some(path), _) if case.routed() => format!(
                    "{} (path: {path}, ingress: {})",
                    case.name(),
                    match running.hook.as_deref() {
                        Some("native") => "XDP",
                        Some("generic") => "generic XDP",
                        Some(h) => h,
                        None => "?",
                    }
                ),
                (Some(path), Some(_)) => format!("{} (path: {path})", case.name()),
                _ => case.name().to_string(),
            };
            // The routed cases: CPU per production frame forwarded, per core.
            let forwarded = monitored.filter(|&m| case.routed() && m > 0.0);
            let per_core =
                forwarded.map(|f| cpu.iter().map(|c| c / 100.0 * 1e9 / f).collect::<Vec<_>>());
            // Frames/s the CPU is shared over, as `ns_per_frame` counts them.
            let frames = forwarded.unwrap_or(med * case.targets().max(1) as f64);
            let per_frame =
                |ns: u64| (frames > 0.0 && window_s > 0.0).then(|| ns as f64 / window_s / frames);
            let row = Row {
                frame: size,
                feed: value_name(layout.feed),
                gen_core: value_name(layout.gen_core),
                id: case.id(),
                case: label,
                session_path: running.path.clone(),
                ingress_hook: running.hook.clone(),
                offered_pps: offered,
                delivered_pps: med,
                delivered_min: min,
                delivered_max: max,
                delivered_runs,
                delivered_split_pps: case.group().then_some(per_sink),
                loss_pct: loss(med),
                monitored_pps: monitored,
                monitored_loss_pct: monitored.map(loss),
                lossless_pps: lossless.map(|l| l.0),
                lossless_at_max: lossless.is_some_and(|l| l.1),
                lossless_lost_before_feed0: lossless.and_then(|l| l.2),
                lost_before_feed0_pps: before_feed0,
                ns_per_frame: match (&per_core, med > 0.0) {
                    (Some(p), _) => p.iter().sum(),
                    (None, true) => busy * 1e9 / (med * case.targets().max(1) as f64),
                    (None, false) => 0.0,
                },
                ns_per_frame_per_core: per_core,
                consumer_ns_per_frame: consumer_ns.and_then(per_frame),
                napi_ns_per_frame: per_frame(napi_ns),
                fed_pps: fed.filter(|_| case.routed()),
                copies_lost_pps: fed
                    .filter(|_| case.routed() && case.targets() > 0)
                    .map(|f| (f - med).max(0.0)),
                cpu_pct: cpu,
                feed_bpf_ns: bpf_ns,
                rss_kib: rss,
                mirror_received_pps: received,
                copy_bytes,
                drops,
                reference: None,
                vs_reference: None,
                tc_mirred: None,
                vs_tc_mirred: None,
                monitored_vs_pass: None,
                lossless_vs_pass: None,
                monitored_vs_tc: None,
            };
            crate::say(
                &progress,
                format!(
                    "{} {size:>5}B {:<36}: offered {:>8.0}/s, delivered {:>8.0}/s per target ({:.0}-{:.0}; runs {}){}{}{}",
                    t.name(),
                    row.case,
                    row.offered_pps,
                    med,
                    min,
                    max,
                    row.delivered_runs
                        .iter()
                        .map(|r| format!("{:.0}k", r / 1e3))
                        .collect::<Vec<_>>()
                        .join(" "),
                    row.lossless_pps
                        .map_or(String::new(), |l| format!(", lossless {l:.0}/s")),
                    row.delivered_split_pps
                        .map_or(String::new(), |[a, b]| format!(", sink0 {a:.0}/s + sink1 {b:.0}/s")),
                    row.session_path
                        .as_ref()
                        .map_or(String::new(), |p| format!(", path {p}")),
                ),
            );
            rows.push(row);
        }
        finish(&lab, running, &progress);
    }
    progress.finish_and_clear();
    // Ratios, per frame size, against the reference cases of the same run.
    let lookup = |rows: &[Row], size: usize, c: Case| {
        rows.iter()
            .find(|r| r.frame == size && r.id == c.id())
            .map(|r| r.delivered_pps)
            .filter(|&v| v > 0.0)
    };
    let snapshot = rows.clone();
    for r in &mut rows {
        let case = Case::ALL
            .into_iter()
            .find(|c| c.id() == r.id)
            .unwrap_or(Case::XdpDrop);
        if let Some(refc) = case.reference() {
            r.reference = Some(refc.id());
            r.vs_reference = lookup(&snapshot, r.frame, refc).map(|v| r.delivered_pps / v);
        }
        if let Some(tcc) = case.tc_peer() {
            r.tc_mirred = Some(tcc.id());
            r.vs_tc_mirred = lookup(&snapshot, r.frame, tcc).map(|v| r.delivered_pps / v);
        }
        let over =
            |a: Option<f64>, b: Option<f64>| a.zip(b.filter(|&v| v > 0.0)).map(|(a, b)| a / b);
        let frame = r.frame;
        let row_of = |c: Case| snapshot.iter().find(|p| p.frame == frame && p.id == c.id());
        // What copy mode (the routed cases: a mirror) leaves of the traffic
        // it monitors, against the same traffic with no mirror.
        let baseline = match case {
            Case::MirrorCopy => Some(Case::Pass),
            Case::Routed => None,
            c if c.routed() => Some(Case::Routed),
            _ => None,
        };
        if let Some(base) = baseline.map(row_of) {
            r.monitored_vs_pass = over(r.monitored_pps, base.and_then(|p| p.monitored_pps));
            r.lossless_vs_pass = over(r.lossless_pps, base.and_then(|p| p.lossless_pps));
        }
        if case.routed() && !matches!(case, Case::Routed | Case::RoutedTc) {
            let tc = row_of(Case::RoutedTc);
            r.monitored_vs_tc = over(r.monitored_pps, tc.and_then(|p| p.monitored_pps));
        }
    }
    Ok(rows)
}

/// Writes one table's results ([`crate::save`]): its rows, its table, a
/// chart; into the README (between `<!-- bench:NAME -->` markers) only
/// from a whole run into benches/results.
fn save(a: &Args, out: &Path, t: Table, layout: Layout, rows: &[Row]) -> Result<()> {
    // One group per case (by id, in run order), one bar per frame size.
    let mut ids: Vec<&str> = Vec::new();
    for r in rows {
        if !ids.contains(&r.id) {
            ids.push(r.id);
        }
    }
    let series: Vec<(String, Vec<f64>)> = a
        .sizes
        .iter()
        .map(|&size| {
            let values = ids
                .iter()
                .map(|id| {
                    rows.iter()
                        .find(|r| r.id == *id && r.frame == size)
                        .map_or(0.0, |r| r.delivered_pps / 1000.0)
                })
                .collect();
            (format!("{size} B frames"), values)
        })
        .collect();
    let groups: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    crate::save(
        out,
        t.name(),
        rows,
        &table(rows, a, t, layout),
        // Only a whole run stands for the lab in the README.
        crate::publishes(out) && a.cases.is_empty(),
        |png| {
            crate::chart::grouped_bars(
                png,
                match t {
                    Table::Span => "mirror vs software SPAN and capture tools: kpps delivered per target (or written), full rate",
                    Table::SpanCapture => "capture to a file on a capture host's layout: kpps written (drop: received), full rate",
                },
                "kpps delivered",
                &groups,
                &series,
            )
        },
    )
}

fn table(rows: &[Row], a: &Args, t: Table, layout: Layout) -> String {
    let mut s = format!(
        "{}, same lab and generator \
         ({}, 2 cores{}{}), median of {} runs of {:.1} s at full rate; lossless: the \
         highest paced rate with at most 0.1% loss ({} runs of {:.1} s, bisection; ≥: the generator's \
         own maximum, or the most its paced runs offered when none of them lost) (`cargo xtask bench span`)\n\n\
         | frame | case | offered | delivered per target (min-max) | loss | lossless | vs reference | vs tc mirred | monitored traffic passed on (vs no mirror) | CPU % per core | CPU ns/frame | of which: feed0's NAPI / consumer process | BPF ns/frame at feed0 | mirror RSS | mirror received; drops/s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|\n",
        match t {
            Table::Span => "mirror against the software SPANs and capture tools",
            Table::SpanCapture => {
                "The capture cases on a capture host's layout, the second table of a whole run \
                 (`--tables span-capture` makes it alone)"
            }
        },
        match layout.feed {
            crate::Feed::Skb => "AF_XDP TX on veth",
            crate::Feed::Xdp => "the kernel's XDP traffic generator into veth, `--feed xdp`",
            crate::Feed::Page =>
                "the kernel's XDP traffic generator's pages as skbs into veth, `--feed page`",
        },
        match layout.gen_core {
            crate::GenCore::Consumer => "",
            crate::GenCore::Rx => {
                "; the generator on feed0's RX core, the consumer on a core of its own, \
                 `--gen-core rx`"
            }
        },
        a.pcapng_queue_size
            .map_or(String::new(), |n| format!("; the pcapng target's queue_size = {n}")),
        a.runs.reps,
        a.runs.secs,
        a.search,
        a.trial_secs
    );
    let ratio = |v: Option<f64>| v.map_or("".to_string(), |x| format!("{x:.2}x"));
    for r in rows {
        let reference = match (r.vs_reference, r.reference) {
            (Some(v), Some(id)) => format!("{} {id}", ratio(Some(v))),
            _ => String::new(),
        };
        // Against plain tc mirred a bare ratio; against the remote peer
        // (`tcvxlan`) named, as the reference column does.
        let vs_tc = match (r.vs_tc_mirred, r.tc_mirred) {
            (Some(v), Some(id)) if id != Case::TcMirred.id() => {
                format!("{} {id}", ratio(Some(v)))
            }
            (v, _) => ratio(v),
        };
        let lossless = r.lossless_pps.map_or(String::new(), |l| {
            let at = if r.lossless_at_max { "≥ " } else { "" };
            let vs = r
                .lossless_vs_pass
                .map_or(String::new(), |v| format!(" ({v:.2}x)"));
            // Where the search's lossy runs lost their frames: at feed0's
            // RX (its NAPI behind) or past it (a consumer's counters).
            let lab = r.lossless_lost_before_feed0.map_or(String::new(), |f| {
                format!("; above it {:.0}% of the loss at feed0's RX", 100.0 * f)
            });
            format!("{at}{l:.0} pps{vs}{lab}")
        });
        let monitored = r.monitored_pps.map_or(String::new(), |m| {
            let vs = r
                .monitored_vs_pass
                .map_or(String::new(), |v| format!(", {v:.2}x"));
            // The routed mirror cases: also against routed tc mirred's.
            let vs_tc = r.monitored_vs_tc.map_or(String::new(), |v| {
                format!(", {v:.2}x {}", Case::RoutedTc.id())
            });
            format!(
                "{m:.0} pps ({:.1}% lost{vs}{vs_tc})",
                r.monitored_loss_pct.unwrap_or(0.0)
            )
        });
        // The routed cases: per production frame forwarded, with each
        // core's share.
        let ns_per_frame = match &r.ns_per_frame_per_core {
            Some(cores) => format!(
                "{:.0} ({})",
                r.ns_per_frame,
                cores
                    .iter()
                    .map(|c| format!("{c:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
            None => format!("{:.0}", r.ns_per_frame),
        };
        // Where it went: the RX core's NAPI threads and the consumer's process.
        let ns = |n: Option<f64>| n.map_or("-".to_string(), |n| format!("{n:.0}"));
        let of_which = match (r.napi_ns_per_frame, r.consumer_ns_per_frame) {
            (None, None) => String::new(),
            (napi, consumer) => format!("{} / {}", ns(napi), ns(consumer)),
        };
        let received = r
            .mirror_received_pps
            .map_or(String::new(), |rx| format!("{rx:.0} pps"));
        // Copies cut below the frame (`cut`): their mean length, so the
        // row shows the cut happened.
        let cut = r
            .copy_bytes
            .filter(|&b| b < r.frame as f64)
            .map_or(String::new(), |b| format!("copies {b:.0} B"));
        let drops: Vec<String> = r.drops.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
        // The routed cases: copies lost, and what counted them (mirror's
        // counters, the kernel's for tc mirred).
        let drops = match r.copies_lost_pps {
            Some(lost) => {
                let who = if r.session_path.is_some() {
                    "mirror"
                } else {
                    "kernel"
                };
                let counted = if drops.is_empty() {
                    if lost > 0.0 {
                        ", not counted".to_string()
                    } else {
                        String::new()
                    }
                } else {
                    format!(", counted ({who}): {}", drops.join(", "))
                };
                vec![format!("copies lost {lost:.0}{counted}")]
            }
            None => drops,
        };
        let mut drops = drops;
        if r.lost_before_feed0_pps >= 0.5 {
            drops.push(format!("feed0 RX full {:.0}", r.lost_before_feed0_pps));
        }
        // A group's frames each reach one member: the sum, and how it split.
        let split = r.delivered_split_pps.map_or(String::new(), |[a, b]| {
            let all = (a + b).max(1.0);
            format!(
                ", sum of sink0 {:.0}% + sink1 {:.0}%",
                100.0 * a / all,
                100.0 * b / all
            )
        });
        s.push_str(&format!(
            "| {} B | {} | {:.0} pps | {:.0} pps ({:.0}-{:.0}{split}) | {:.1}% | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.frame,
            r.case,
            r.offered_pps,
            r.delivered_pps,
            r.delivered_min,
            r.delivered_max,
            r.loss_pct,
            lossless,
            reference,
            vs_tc,
            monitored,
            r.cpu_pct
                .iter()
                .map(|c| format!("{c:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            ns_per_frame,
            of_which,
            r.feed_bpf_ns.map_or(String::new(), |n| format!("{n:.0}")),
            r.rss_kib.map_or("".to_string(), |k| format!("{} MiB", k / 1024)),
            [received, cut, drops.join(", ")]
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if rows.iter().any(|r| r.delivered_split_pps.is_some()) {
        s.push_str(
            "\nThe group row's \"delivered\" is the sum over both members' sinks: each frame \
             goes to one member (picked by its flow's hash among the generator's 256 flows), \
             so it is the frames copied out per second, as for one target; the split is the \
             median run's.\n",
        );
    }
    if rows.iter().any(|r| r.ns_per_frame_per_core.is_some()) {
        s.push_str(
            "\nThe routed rows: feed0's namespace forwards the generator's frames to out0 \
             (IP forwarding) while they are mirrored. \"delivered\" is the copies reaching the \
             copy sink (routed: the frames forwarded); \"monitored traffic passed on\" is \
             production forwarded to out0's sink, against `routed` and against `routed-tc`; \
             \"vs tc mirred\" is the copies against `routed-tc`'s; CPU ns/frame is per \
             production frame forwarded, all cores (each core's in parentheses); the last \
             column's copies lost are frames that reached feed0's stack without a copy at the \
             copy sink, per second, and what counted them: mirror's drop counters, or for tc \
             mirred the kernel's (the mirred action's, the devices' tx_dropped / tx_errors); \
             \"not counted\" when none did. Their BPF ns/frame at feed0 includes, on mirror's \
             kernel path, the clone's transmit (`bpf_clone_redirect` sends it to tgt0 inside \
             the program), which tc mirred does outside any BPF program: compare CPU ns/frame.\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by each test that runs traffic through a lab: they pin the
    /// generator and feed0's NAPI thread to the same two CPUs, and one's
    /// slow consumer would starve the other's generator.
    static LAB_CPUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn lab_cpus() -> std::sync::MutexGuard<'static, ()> {
        // A test that failed holding it leaves it poisoned; the CPUs are free.
        LAB_CPUS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `mirror-bench span ARGS`'s arguments.
    fn span_args(args: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("span").chain(args.iter().copied()))
            .expect("arguments")
            .a
    }

    /// `--gen-core rx` moves the generator to the RX core, and is refused
    /// with the default feed (before anything is built or started).
    #[test]
    fn the_generator_core_is_the_rx_core_with_gen_core_rx_and_needs_a_live_feed() {
        assert_eq!(crate::GenCore::Consumer.cpu(), crate::GEN_CPU);
        assert_eq!(crate::GenCore::Rx.cpu(), crate::NAPI_CPU);
        assert_ne!(
            crate::GenCore::Rx.cpu(),
            USER_CPU,
            "the consumer keeps its core"
        );
        let e =
            run(&span_args(&["--gen-core", "rx"]), Path::new("/nonexistent")).expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("--gen-core rx needs --feed page or --feed xdp"),
            "{e}"
        );
    }

    #[test]
    fn a_whole_run_adds_the_capture_cases_on_a_capture_hosts_layout() {
        let tables = |args: &[&str]| {
            tables(&span_args(args)).map(|tables| {
                tables
                    .into_iter()
                    .map(|(t, layout, cases)| {
                        let ids: Vec<&str> = cases.iter().map(|c| c.id()).collect();
                        (t.name(), layout, ids.join(","))
                    })
                    .collect::<Vec<_>>()
            })
        };
        let default = Layout {
            feed: crate::Feed::Skb,
            gen_core: crate::GenCore::Consumer,
        };
        let all = Case::ALL.map(Case::id).join(",");
        let capture = (
            "span-capture",
            Layout::CAPTURE_HOST,
            "drop,tcpdump,pcapng,pcapng-copy".to_string(),
        );
        assert_eq!(
            tables(&[]).expect("tables"),
            [("span", default, all.clone()), capture.clone()]
        );
        // Another layout's whole run still gets the capture host's table.
        let xdp = Layout {
            feed: crate::Feed::Xdp,
            gen_core: crate::GenCore::Consumer,
        };
        assert_eq!(
            tables(&["--feed", "xdp"]).expect("tables"),
            [("span", xdp, all.clone()), capture.clone()]
        );
        // A case list, or the capture host's layout itself: one table.
        assert_eq!(
            tables(&["--cases", "pcapng,tcpdump"]).expect("tables"),
            [("span", default, "tcpdump,pcapng".to_string())]
        );
        assert_eq!(
            tables(&["--feed", "page", "--gen-core", "rx"]).expect("tables"),
            [("span", Layout::CAPTURE_HOST, all.clone())]
        );
        // Asked for by name.
        assert_eq!(
            tables(&["--tables", "span-capture"]).expect("tables"),
            [capture]
        );
        assert_eq!(
            tables(&["--tables", "span"]).expect("tables"),
            [("span", default, all)]
        );
        let e =
            tables(&["--cases", "pcapng", "--tables", "span,span-capture"]).expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("--cases picks the cases of the `span` table"),
            "{e}"
        );
        assert_eq!(value_name(crate::Feed::Page), "page");
        assert_eq!(value_name(crate::GenCore::Rx), "rx");
    }

    #[test]
    fn tcpdump_counts_are_read_from_its_sigusr1_line() {
        let line = "tcpdump: 1234 packets captured, 1240 packets received by filter, \
                    6 packets dropped by kernel";
        assert_eq!(
            parse_tcpdump_counts(line),
            Some(TcpdumpCounts {
                captured: 1234,
                dropped: 6
            })
        );
        let one =
            "tcpdump: 1 packet captured, 1 packet received by filter, 0 packets dropped by kernel";
        assert_eq!(
            parse_tcpdump_counts(one),
            Some(TcpdumpCounts {
                captured: 1,
                dropped: 0
            })
        );
        assert_eq!(parse_tcpdump_counts("tcpdump: listening on feed0"), None);
    }

    /// `--feed page` delivers to feed0 every frame the generator counts as
    /// sent, exactly, and paced it sends no more than its pace allows: the
    /// schedule starts when the run does and a catch-up only returns to it,
    /// so the bound is the pace plus the last call's overrun (half a
    /// catch-up burst: 25 ms here), which a burst at the start would pass.
    #[test]
    #[ignore = "needs root: BPF and network namespaces"]
    fn the_page_feed_delivers_to_feed0_every_frame_it_counts_sent() {
        let _cpus = lab_cpus();
        let lab = Lab::new(1).expect("lab");
        let _feed = page_feed(&lab).expect("the page feed's port");
        let meter = Peer::load().expect("meter");
        let _link =
            attach(&lab.src, Lab::FEED_IF, meter.fd(Case::XdpDrop)).expect("meter on feed0");
        let (rate, secs) = (20_000.0, 0.5);
        let sent = crate::generate_from(
            crate::Feed::Page,
            crate::GenCore::Consumer,
            &lab,
            60,
            secs,
            Some(rate),
        )
        .expect("generator");
        // What is in flight (gen0's queue, feed0's ring) arrives within
        // 200 ms at this rate; a bounded wait for it.
        let t0 = std::time::Instant::now();
        while meter.frames().expect("count") < sent && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sent > 1_000, "sent {sent}");
        assert!(
            sent as f64 <= rate * secs + (crate::PAGE_BURST / 2) as f64,
            "sent {sent} paced to {rate}/s for {secs} s"
        );
        assert_eq!(meter.frames().expect("count"), sent);
        // Nothing was lost at feed0's RX at this pace, and the counters read.
        assert_eq!(lost_before_feed0(&lab).expect("gen0's drop counters"), 0);
    }

    /// With a consumer at feed0 slower than the feed (`xdp_slow_drop`,
    /// ~60 µs a frame: feed0's NAPI takes ~15 kpps), what feed0's RX cannot take is counted by
    /// [`lost_before_feed0`] to the frame, on every feed: each frame the
    /// generator counts as sent either reached feed0's XDP or is there.
    #[test]
    #[ignore = "needs root: BPF and network namespaces"]
    fn every_frame_sent_reaches_feed0_or_is_counted_lost_before_it_on_every_feed() {
        let _cpus = lab_cpus();
        for feed in [crate::Feed::Skb, crate::Feed::Xdp, crate::Feed::Page] {
            let lab = Lab::new(1).expect("lab");
            lab.tune_feed_port().expect("threaded NAPI on feed0");
            let _page = (feed == crate::Feed::Page).then(|| {
                let page = page_feed(&lab).expect("page feed");
                // A 64-frame queue instead of 4,096, so that it overflows
                // within the run: its drops are the page feed's loss.
                gen_queue(&lab, 64).expect("pfifo 64");
                page
            });
            let slow = Peer::load().expect("the bench peers");
            let fd = slow.skel.progs.xdp_slow_drop.as_fd().as_raw_fd();
            let _link = attach(&lab.src, Lab::FEED_IF, fd).expect("xdp_slow_drop on feed0");
            // Its NAPI thread (re-created by the attach) on a core of its
            // own, as in the bench: the generator keeps sending meanwhile.
            let pinned = crate::pin_napi_threads(Lab::FEED_IF, crate::NAPI_CPU).expect("pin");
            assert!(pinned > 0, "{feed:?}: no NAPI thread for feed0");
            let sent = crate::generate_from(
                feed,
                crate::GenCore::Consumer,
                &lab,
                60,
                0.5,
                Some(50_000.0),
            )
            .expect("generator");
            // What is in flight (feed0's 256-frame ring, gen0's queue on the
            // page feed) drains at ~15 kpps: a bounded wait for it.
            let settled = || {
                let (arrived, lost) = (slow.frames().expect("count"), lost_before_feed0(&lab));
                (arrived, lost.expect("gen0's drop counters"))
            };
            let t0 = std::time::Instant::now();
            let (mut arrived, mut lost) = settled();
            while arrived + lost < sent && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
                (arrived, lost) = settled();
            }
            assert!(sent > 2_000, "{feed:?}: sent {sent}");
            assert!(
                arrived > 0 && lost > 0,
                "{feed:?}: arrived {arrived}, lost {lost}"
            );
            assert_eq!(
                arrived + lost,
                sent,
                "{feed:?}: arrived {arrived} + lost {lost}"
            );
        }
    }
}
