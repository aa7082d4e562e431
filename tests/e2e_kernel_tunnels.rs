//! End to end, in network namespaces: VXLAN, GRE and ERSPAN II/III targets
//! on the kernel path (tap mode), where each copy is encapsulated by its
//! target's DEVMAP program and never reaches userspace. The same frames then
//! go through the same session on the userspace path: both put the same
//! tunnel headers and frames on the wire. A collector whose route goes is
//! counted `down` in the kernel until the route is back, and a reload plans
//! a running tunnel with its route of the moment.

mod common;

use common::{
    assert_reconciles, ipv4_payload, udp6_checksum_errors, udp6_checksum_ok, wait_for, Window,
};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use mirror_user::config::{Direction, ErspanVersion, Granularity};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::filter::classify;
use mirror_user::lab::{self, traffic, Capture, DaemonProcess, Lab, Netns, TempDir};
use mirror_user::target::encap::{self, GRE_PROTO_TEB};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

use common::IDS_FILTER as FILTER;

/// Four collectors, each behind a link of its own (the kernel path counts
/// transmits per device).
const TUNNELS: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
@FILTER@
[[target]]
name = "vx"
kind = "vxlan"
remote = "10.99.1.2"
mtu = 9000

[[target]]
name = "gre"
kind = "gre"
remote = "10.99.2.2"
key = 7
mtu = 1000

[[target]]
name = "er2"
kind = "erspan"
remote = "10.99.3.2"
mtu = 1000

[[target]]
name = "er3"
kind = "erspan"
remote = "10.99.4.2"
version = 3
granularity = "100ns"

[[session]]
name = "all"
source = "feed"
filter = "ids"
targets = ["vx", "gre", "er2", "er3"]
vni = 42
path = "@PATH@"
"#;

/// (target, link in the source namespace, link at the collector, subnet)
const LINKS: [(&str, &str, &str, u8); 4] = [
    ("vx", "col0", "col1", 1),
    ("gre", "gr0", "gr1", 2),
    ("er2", "e20", "e21", 3),
    ("er3", "e30", "e31", 4),
];

/// The collectors' namespace, wired to the lab's source namespace. The
/// collector ends of the links have GRO on, so their veth peers take frames
/// redirected by XDP (as a NIC would).
fn collectors(lab: &Lab) -> Netns {
    let col = Netns::new("col").expect("netns");
    for (_, a, b, net) in LINKS {
        let mtu = if net == 1 { 9000 } else { 1500 };
        lab::wire(
            &lab.src,
            a,
            &format!("10.99.{net}.1"),
            &col,
            b,
            &format!("10.99.{net}.2"),
            mtu,
        )
        .expect("wire");
        lab::gro_on(&col, b).expect("gro");
    }
    lab::vxlan_decap(&col, "vx0", 42, "10.99.1.2", "col1").expect("vxlan device");
    col
}

/// What one run put on the wire.
struct Run {
    stats: Stats,
    /// Per target: each outer packet's IP payload (tunnel header + frame).
    outer: BTreeMap<&'static str, Vec<Vec<u8>>>,
    /// What the Linux vxlan device decapsulated.
    decapsulated: Vec<Vec<u8>>,
    window: Window,
    log: String,
}

/// Starts the daemon with `path`, sends `frames`, waits until every copy of
/// the `n` accepted ones is sent (or counted), and stops it.
fn run(lab: &Lab, col: &Netns, path: &str, frames: &Arc<Vec<Vec<u8>>>, n: u64) -> Run {
    let dir = TempDir::new("e2e-ktun").expect("temp dir");
    let text = TUNNELS.replace("@FILTER@", FILTER).replace("@PATH@", path);
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    let caps: Vec<(&'static str, Capture)> = LINKS
        .iter()
        .map(|&(t, _, b, _)| (t, Capture::start(col, b).expect("capture")))
        .collect();
    let inner = Capture::start(col, "vx0").expect("capture");
    let mut window = Window::open();
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let stats = wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && st
                .targets
                .values()
                .all(|t| t.queued == 0 && t.sent_packets + t.dropped_total() >= n)
    });
    window.close();
    let mut outer = BTreeMap::new();
    for (t, cap) in caps {
        let net = LINKS.iter().find(|l| l.0 == t).expect("link").3;
        let dst = Ipv4Addr::new(10, 99, net, 2);
        let packets = cap
            .finish()
            .iter()
            .filter_map(|f| ipv4_payload(f))
            .filter(|(d, proto, _)| *d == dst && (*proto == 17 || *proto == 47))
            .map(|(_, _, p)| p)
            .collect();
        outer.insert(t, packets);
    }
    let decapsulated = inner.finish();
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("daemon stops")
        .success());
    Run {
        stats,
        outer,
        decapsulated,
        window,
        log: daemon.log_text(),
    }
}

fn by_seq(frames: &[Vec<u8>]) -> BTreeMap<u32, Vec<u8>> {
    frames
        .iter()
        .map(|f| (traffic::seq_of(f).expect("lab frame"), f.clone()))
        .collect()
}

/// The ERSPAN III time stamp (the second word of the ERSPAN header, after 8
/// bytes of GRE with a sequence number) of an outer payload, zeroed: it is
/// the capture time, which differs between two runs.
fn without_time_stamp(payload: &[u8]) -> Vec<u8> {
    let mut p = payload.to_vec();
    p[12..16].fill(0);
    p
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn kernel_tunnels_put_the_userspace_paths_bytes_on_the_wire_and_count_every_copy() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = collectors(&lab);
    let frames = Arc::new(traffic::mixed(2000));
    let cfg = mirror_user::config::parse(
        &TUNNELS
            .replace("@FILTER@", FILTER)
            .replace("@CONTROL@", "/x")
            .replace("@PATH@", "auto"),
        "t",
    )
    .expect("valid");
    let filters = vec![&cfg.filters[0]];
    let expected: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&filters, Direction::Ingress, f).is_some())
        .cloned()
        .collect();
    let n = expected.len() as u64;
    assert!(n > 1400, "the filter passes most of the mix: {n}");
    let want = by_seq(&expected);

    let kernel = run(&lab, &col, "kernel", &frames, n);
    assert_eq!(
        kernel.stats.sessions["all"].path, "kernel",
        "{}",
        kernel.log
    );
    assert!(
        kernel.log.contains("session served in the kernel"),
        "{}",
        kernel.log
    );
    let longer = |m: usize| expected.iter().filter(|f| f.len() > m).count() as u64;
    for (name, cut_at) in [
        ("vx", 9000 - 36),
        ("gre", 1000 - 28),
        ("er2", 1000 - 36),
        ("er3", 1500 - 40),
    ] {
        let t = &kernel.stats.targets[name];
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
        assert_eq!(
            (t.enqueued, t.sent_packets, t.kernel_path),
            (n, n, n),
            "{name}: every copy sent in the kernel"
        );
        assert_eq!(
            t.truncated,
            longer(cut_at),
            "{name}: copies cut to the tunnel's mtu"
        );
        assert_eq!(
            kernel.outer[name].len() as u64,
            n,
            "{name}: packets at the collector"
        );
    }
    let src = &kernel.stats.sources["feed"];
    assert_eq!((src.matched, src.mirrored), (n, n));
    common::assert_source_reconciles("feed", src);

    // The Linux vxlan device decapsulated every copy, byte for byte.
    assert_eq!(
        by_seq(&kernel.decapsulated),
        want,
        "frames the vxlan device decapsulated"
    );
    // One UDP source port per flow, from the kernel's flow hash.
    let hashes = common::kernel_flow_hashes(frames.iter().map(|f| f.as_slice()));
    for udp in &kernel.outer["vx"] {
        let h = encap::decode_vxlan(udp).expect("a VXLAN header");
        assert_eq!((h.vni, h.dest_port), (42, 4789));
        let seq = traffic::seq_of(&udp[16..]).expect("lab frame");
        assert_eq!(
            h.source_port,
            encap::vxlan_source_port(hashes[seq as usize]),
            "frame {seq}"
        );
    }
    // GRE and ERSPAN, decoded field by field.
    for (name, version, max) in [
        ("gre", None, 972usize),
        ("er2", Some(ErspanVersion::Two), 964),
        ("er3", Some(ErspanVersion::Three), 1460),
    ] {
        for (i, p) in kernel.outer[name].iter().enumerate() {
            let d = encap::decode_gre(p).expect("a GRE header");
            let inner = &p[d.payload..];
            let seq = traffic::seq_of(inner).expect("lab frame");
            let full = &want[&seq];
            assert!(
                inner == &full[..full.len().min(max)],
                "{name}: frame {seq} differs"
            );
            match version {
                None => assert_eq!(
                    (d.protocol, d.key, d.sequence),
                    (GRE_PROTO_TEB, Some(7), None)
                ),
                Some(v) => {
                    let h = d.erspan.expect("an ERSPAN header");
                    assert_eq!(h.version, v);
                    assert_eq!(h.sequence, i as u32, "{name}: consecutive sequence numbers");
                    assert_eq!(h.session_id, 42);
                    assert_eq!(
                        h.truncated,
                        full.len() > max,
                        "{name}: T bit of frame {seq}"
                    );
                    let tagged = matches!(full[12..14], [0x81, 0x00] | [0x88, 0xa8]);
                    assert_eq!(h.encap, if tagged { 3 } else { 0 });
                    let vlan = if tagged {
                        u16::from_be_bytes([full[14], full[15]]) & 0xfff
                    } else {
                        0
                    };
                    assert_eq!(h.vlan, vlan, "{name}: frame {seq}");
                    if v == ErspanVersion::Three {
                        assert_eq!(h.granularity, Granularity::Nanos100);
                        assert!(!h.egress);
                        kernel.window.assert_holds_erspan(
                            &format!("ERSPAN III copy of frame {seq}"),
                            h.timestamp,
                            100,
                        );
                    }
                }
            }
        }
    }

    // The same frames through the userspace path: the same bytes after the
    // outer IP header (ERSPAN III's capture-time stamp aside).
    let user = run(&lab, &col, "userspace", &frames, n);
    assert_eq!(user.stats.sessions["all"].path, "af_xdp");
    for (name, _, _, _) in LINKS {
        let t = &user.stats.targets[name];
        assert_eq!((t.sent_packets, t.kernel_path), (n, 0), "{name}");
        let strip = |v: &[Vec<u8>]| -> Vec<Vec<u8>> {
            v.iter()
                .map(|p| {
                    if name == "er3" {
                        without_time_stamp(p)
                    } else {
                        p.clone()
                    }
                })
                .collect()
        };
        let (k, u) = (strip(&kernel.outer[name]), strip(&user.outer[name]));
        assert_eq!(k.len(), u.len(), "{name}");
        for (i, (a, b)) in k.iter().zip(&u).enumerate() {
            assert!(
                a == b,
                "{name}: packet {i} differs between the paths:\n{a:02x?}\n{b:02x?}"
            );
        }
    }
}

/// The route and reload tests' daemon: the four tunnels on the kernel path
/// (`path = "kernel"`), every frame accepted.
fn start_accepting_all(lab: &Lab, dir: &TempDir) -> DaemonProcess {
    let accept_all = "\n[[filter]]\nname = \"ids\"\n[[filter.rule]]\nnumber = 1\naction = \"accept\"\ndirection = \"ingress\"\n";
    let text = TUNNELS
        .replace("@FILTER@", accept_all)
        .replace("@PATH@", "kernel");
    common::start_daemon(BIN, &lab.src, dir, &text).0
}

/// Sends 200 TCP frames, numbered from `first`, into feed0; returns how
/// many were sent.
fn send_200(lab: &Lab, first: u32) -> u64 {
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (first..first + 200)
            .map(|i| traffic::frame(traffic::SHAPES[0], i, 200))
            .collect(),
    );
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames, 10_000).expect("send")
}

/// The stats once every target has counted `total` copies, sent or dropped.
fn settled(client: &mut Client, total: u64) -> Stats {
    wait_for(client, "every copy counted", |st| {
        st.targets
            .values()
            .all(|t| t.sent_packets + t.dropped_total() == total)
    })
}

/// How many of `frames` are GRE packets to gre's collector (10.99.2.2).
fn gre_packets(frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(d, proto, _)| *d == Ipv4Addr::new(10, 99, 2, 2) && *proto == 47)
        .count()
}

/// Rewrites the daemon's config with `edit` and reloads it: the reload must
/// succeed; returns what `mirror reload` printed.
fn reload_with(
    daemon: &mut DaemonProcess,
    dir: &TempDir,
    edit: impl FnOnce(String) -> String,
) -> String {
    let config = dir.path().join("mirror.toml");
    let running = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, edit(running)).expect("new config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    assert!(out.status.success(), "{out:?}\n{}", daemon.log_text());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A collector whose route is deleted: the kernel path drops its copies,
/// counted `down` (the other targets carry on), and sends again once the
/// route is back; every copy is accounted for.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kernel_tunnel_whose_route_goes_or_moves_onto_another_targets_device_counts_down_and_resumes() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = collectors(&lab);
    let dir = TempDir::new("e2e-ktun-route").expect("temp dir");
    let mut daemon = start_accepting_all(&lab, &dir);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    assert_eq!(send_200(&lab, 0), 200);
    let st = settled(&mut client, 200);
    assert_eq!(st.targets["gre"].sent_packets, 200);

    // The GRE collector's route moves onto vx's link (col0; col1 answers
    // ARP for 10.99.2.2 too). The kernel runs one DEVMAP program over a
    // device's whole transmit batch, so gre and vx copies must not share a
    // device: gre stays down, its copies counted, none out of col0.
    // The route goes first (the keeper, every 100 ms, says why it is down),
    // then comes back onto col0 (it says the new reason, still down).
    lab.src
        .ip(&["route", "del", "10.99.2.0/24", "dev", "gr0"])
        .expect("route del");
    daemon
        .wait_for_log("no route to 10.99.2.2", Duration::from_secs(5))
        .expect("gre down: no route");
    lab.src
        .ip(&["route", "add", "10.99.2.0/24", "dev", "col0"])
        .expect("route add");
    daemon
        .wait_for_log("target `vx` of the same source", Duration::from_secs(5))
        .expect("gre still down: vx's device");
    let on_col1 = Capture::start(&col, "col1").expect("capture");
    assert_eq!(send_200(&lab, 200), 200);
    let st = settled(&mut client, 400);
    let stray = on_col1
        .finish()
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(d, _, _)| *d != Ipv4Addr::new(10, 99, 1, 2))
        .count();
    assert_eq!(stray, 0, "only vx's copies leave through col0");
    let gre = &st.targets["gre"];
    assert_reconciles("gre", gre);
    assert_eq!(gre.sent_packets, 200, "{:?}", gre.dropped);
    assert_eq!(gre.dropped.get("down"), Some(&200), "{:?}", gre.dropped);
    for name in ["vx", "er2", "er3"] {
        assert_eq!(st.targets[name].sent_packets, 400, "{name} carries on");
    }

    lab.src
        .ip(&["route", "del", "10.99.2.0/24", "dev", "col0"])
        .expect("route del");
    lab.src
        .ip(&["route", "add", "10.99.2.0/24", "dev", "gr0"])
        .expect("route add");
    daemon
        .wait_for_log("headers rewritten", Duration::from_secs(5))
        .expect("gre's keeper sees its route back");
    let got = Capture::start(&col, "gr1").expect("capture");
    assert_eq!(send_200(&lab, 400), 200);
    let st = settled(&mut client, 600);
    let gre = &st.targets["gre"];
    assert_reconciles("gre", gre);
    assert_eq!((gre.sent_packets, gre.kernel_path), (400, 400));
    assert_eq!(gre.dropped.get("down"), Some(&200));
    assert_eq!(gre.dropped.get("unknown"), Some(&0));
    assert_eq!(
        gre_packets(&got.finish()),
        200,
        "the collector gets the copies again"
    );
    let log = daemon.log_text();
    assert!(log.contains("kernel tunnel down"), "{log}");
    assert!(log.contains("target `vx` of the same source"), "{log}");
    assert!(log.contains("headers rewritten"), "{log}");

    // SIGKILL: the XDP link dies with the process, and with it the DEVMAPs
    // and their tunnel programs; nothing stays attached to the feed port.
    daemon.signal(libc::SIGKILL);
    daemon.wait(Duration::from_secs(10)).expect("daemon dies");
    let attached = || {
        let out = lab
            .src
            .command(&["ip", "-d", "link", "show", "dev", Lab::FEED_IF])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while attached() {
        assert!(
            std::time::Instant::now() < deadline,
            "XDP still attached after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GRE and ERSPAN III to IPv6 collectors, each behind an IPv6 link of its own.
const IPV6: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[target]]
name = "gre6"
kind = "gre"
remote = "fd00:98:1::2"
key = 7
mtu = 1280   # the least IPv6 allows

[[target]]
name = "er6"
kind = "erspan"
remote = "fd00:98:2::2"
version = 3

[[session]]
name = "s"
source = "feed"
filter = "all"
targets = ["gre6", "er6"]
vni = 9
path = "@PATH@"
"#;

/// (source, next header, hop limit, payload) of the IPv6 packets to `to`.
fn ipv6_to(
    frames: &[Vec<u8>],
    to: std::net::Ipv6Addr,
) -> Vec<(std::net::Ipv6Addr, u8, u8, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match p.net? {
                etherparse::NetSlice::Ipv6(ip) if ip.header().destination_addr() == to => Some((
                    ip.header().source_addr(),
                    ip.payload().ip_number.0,
                    ip.header().hop_limit(),
                    ip.payload().payload.to_vec(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// The kernel path's IPv6 outer headers: from the link's address, hop limit
/// 64, a payload length etherparse accepts, and after them the bytes the
/// userspace path sends (ERSPAN III's capture time aside).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn kernel_tunnels_over_ipv6_send_the_userspace_paths_bytes() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = Netns::new("col6").expect("netns");
    for (a, b, net) in [("g60", "g61", 1), ("e60", "e61", 2)] {
        lab::wire6(
            &lab.src,
            a,
            &format!("fd00:98:{net}::1"),
            &col,
            b,
            &format!("fd00:98:{net}::2"),
            1500,
        )
        .expect("wire");
        lab::gro_on(&col, b).expect("gro");
    }
    let frames = Arc::new(traffic::mixed(1000));
    let mut runs = Vec::new();
    for path in ["kernel", "userspace"] {
        let dir = TempDir::new("e2e-ktun6").expect("temp dir");
        let (mut daemon, _) =
            common::start_daemon(BIN, &lab.src, &dir, &IPV6.replace("@PATH@", path));
        let caps = [
            Capture::start(&col, "g61").expect("capture"),
            Capture::start(&col, "e61").expect("capture"),
        ];
        let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
        let mut client = Client::connect(&daemon.control).expect("control socket");
        let st = wait_for(&mut client, "every copy sent", |st| {
            st.sources["feed"].received == sent
                && st
                    .targets
                    .values()
                    .all(|t| t.queued == 0 && t.sent_packets == 1000)
        });
        assert_eq!(
            st.sessions["s"].path,
            if path == "kernel" { "kernel" } else { "af_xdp" }
        );
        for (name, t) in &st.targets {
            assert_reconciles(name, t);
            assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
        }
        // 1280 - 40 (IPv6) - 8 (GRE with key), 1500 - 40 - 20 (ERSPAN III).
        let longer = |m: usize| frames.iter().filter(|f| f.len() > m).count() as u64;
        assert_eq!(st.targets["gre6"].truncated, longer(1232));
        assert_eq!(st.targets["er6"].truncated, longer(1440));
        let payloads: Vec<_> = [1u16, 2]
            .iter()
            .map(|net| {
                let to: std::net::Ipv6Addr = format!("fd00:98:{net}::2").parse().expect("ip");
                let from: std::net::Ipv6Addr = format!("fd00:98:{net}::1").parse().expect("ip");
                (to, from, 47u8)
            })
            .collect();
        let [g, e] = caps;
        let got: Vec<Vec<Vec<u8>>> = [g.finish(), e.finish()]
            .iter()
            .zip(&payloads)
            .map(|(frames, (to, from, next))| {
                ipv6_to(frames, *to)
                    .into_iter()
                    .filter(|(_, nh, _, _)| nh == next) // not the neighbour discovery
                    .map(|(src, _, hops, payload)| {
                        assert_eq!((src, hops), (*from, 64), "{path}: outer IPv6");
                        payload
                    })
                    .collect()
            })
            .collect();
        assert_eq!(got[0].len(), 1000, "{path}: GRE packets");
        assert_eq!(got[1].len(), 1000, "{path}: ERSPAN packets");
        runs.push(got);
        assert!(daemon
            .stop(Duration::from_secs(10))
            .expect("stops")
            .success());
    }
    for (i, name) in ["gre6", "er6"].iter().enumerate() {
        let strip = |v: &[Vec<u8>]| -> Vec<Vec<u8>> {
            v.iter()
                .map(|p| {
                    if i == 1 {
                        without_time_stamp(p)
                    } else {
                        p.clone()
                    }
                })
                .collect()
        };
        let (k, u) = (strip(&runs[0][i]), strip(&runs[1][i]));
        for (n, (a, b)) in k.iter().zip(&u).enumerate() {
            assert!(a == b, "{name}: packet {n} differs between the paths");
        }
    }
}

/// One VXLAN collector over IPv6, whole copies or `packet_length` ones.
const VXLAN6: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[target]]
name = "vx6"
kind = "vxlan"
remote = "fd00:97:1::2"

[[session]]
name = "s"
source = "feed"
filter = "all"
targets = ["vx6"]
vni = 42
packet_length = @SNAP@
path = "@PATH@"
"#;

/// What one run of [`VXLAN6`] put on the wire.
struct Run6 {
    stats: Stats,
    /// Each outer packet's UDP datagram, by the inner frame's sequence number.
    udp: BTreeMap<u32, Vec<u8>>,
    /// What the Linux vxlan device decapsulated, by sequence number.
    decapsulated: BTreeMap<u32, Vec<u8>>,
}

fn run6(lab: &Lab, col: &Netns, path: &str, snap: usize, frames: &Arc<Vec<Vec<u8>>>) -> Run6 {
    let (from, to): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
        "fd00:97:1::1".parse().expect("ip"),
        "fd00:97:1::2".parse().expect("ip"),
    );
    let n = frames.len() as u64;
    let dir = TempDir::new("e2e-vx6").expect("temp dir");
    let text = VXLAN6
        .replace("@PATH@", path)
        .replace("@SNAP@", &snap.to_string());
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    let outer = Capture::start(col, "v61").expect("capture");
    let inner = Capture::start(col, "vx0").expect("capture");
    let errors_before = udp6_checksum_errors(col);
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    assert_eq!(sent, n);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let stats = wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && st
                .targets
                .values()
                .all(|t| t.queued == 0 && t.sent_packets + t.dropped_total() >= n)
    });
    let mut udp = BTreeMap::new();
    for (src, next, hops, payload) in ipv6_to(&outer.finish(), to) {
        if next != 17 {
            continue; // the neighbour discovery
        }
        assert_eq!((src, hops), (from, 64), "{path}: outer IPv6");
        assert!(
            udp6_checksum_ok(from, to, &payload),
            "{path}: the UDP checksum of {payload:02x?}"
        );
        let seq = traffic::seq_of(&payload[16..]).expect("a lab frame");
        assert!(
            udp.insert(seq, payload).is_none(),
            "{path}: frame {seq} once"
        );
    }
    let decapsulated = by_seq(&inner.finish());
    assert_eq!(
        udp6_checksum_errors(col),
        errors_before,
        "{path}: the collector's stack found no bad UDP checksum"
    );
    let log = daemon.log_text();
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("daemon stops")
        .success());
    let want = if path == "kernel" { "kernel" } else { "af_xdp" };
    assert_eq!(stats.sessions["s"].path, want, "{log}");
    Run6 {
        stats,
        udp,
        decapsulated,
    }
}

/// VXLAN over IPv6 on the kernel path (tap mode): the DEVMAP program
/// computes the mandatory UDP checksum over the whole copy, so a Linux vxlan
/// device with default settings (it verifies the checksum and takes no zero
/// one) decapsulates every copy byte-identical, at 64 bytes, ~1400 bytes,
/// odd lengths, cut to the tunnel's mtu, and cut to an odd `packet_length`;
/// every counter exact; and the UDP datagrams are the userspace path's,
/// checksum included, byte for byte.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn ipv6_vxlan_in_the_kernel_carries_a_checksum_linux_accepts_and_the_userspace_paths_bytes() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = Netns::new("colv6").expect("netns");
    lab::wire6(
        &lab.src,
        "v60",
        "fd00:97:1::1",
        &col,
        "v61",
        "fd00:97:1::2",
        1500,
    )
    .expect("wire");
    lab::gro_on(&col, "v61").expect("gro");
    lab::vxlan_decap(&col, "vx0", 42, "fd00:97:1::2", "v61").expect("vxlan device");
    const SIZES: [usize; 5] = [64, 65, 1400, 1401, 1514];
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..400u32)
            .map(|i| {
                let shape = traffic::SHAPES[i as usize % traffic::SHAPES.len()];
                traffic::frame(shape, i, SIZES[(i as usize / 8) % SIZES.len()])
            })
            .collect(),
    );
    let n = frames.len() as u64;
    let want = by_seq(&frames);
    // 1500 - 40 (IPv6) - 16 (UDP + VXLAN): the longest copy sent whole.
    const MAX: usize = 1444;
    let cut = |m: usize| -> BTreeMap<u32, Vec<u8>> {
        want.iter()
            .map(|(s, f)| (*s, f[..f.len().min(m)].to_vec()))
            .collect()
    };
    let bytes = |m: usize| frames.iter().map(|f| f.len().min(m) as u64).sum::<u64>();
    let longer = frames.iter().filter(|f| f.len() > MAX).count() as u64;
    assert!(longer > 0 && frames.iter().any(|f| f.len() % 2 == 1));

    let mut runs = Vec::new();
    for (path, snap) in [("kernel", 0usize), ("userspace", 0), ("kernel", 99)] {
        let run = run6(&lab, &col, path, snap, &frames);
        let t = &run.stats.targets["vx6"];
        assert_reconciles("vx6", t);
        assert_eq!(t.dropped_total(), 0, "{path} {snap}: {:?}", t.dropped);
        assert_eq!(
            (t.enqueued, t.sent_packets),
            (n, n),
            "{path} {snap}: every copy sent"
        );
        let kernel = if path == "kernel" { n } else { 0 };
        assert_eq!(t.kernel_path, kernel, "{path} {snap}");
        let (limit, truncated) = if snap == 0 { (MAX, longer) } else { (snap, 0) };
        assert_eq!(t.truncated, truncated, "{path} {snap}: cut to the mtu");
        assert_eq!(
            t.sent_bytes,
            bytes(limit),
            "{path} {snap}: the copies' bytes"
        );
        let src = &run.stats.sources["feed"];
        assert_eq!((src.matched, src.mirrored), (n, n));
        common::assert_source_reconciles("feed", src);
        assert_eq!(
            run.udp.len() as u64,
            n,
            "{path} {snap}: packets at the collector"
        );
        assert!(
            run.decapsulated == cut(limit),
            "{path} {snap}: the vxlan device decapsulated every copy byte-identical"
        );
        for udp in run.udp.values() {
            let h = encap::decode_vxlan(udp).expect("a VXLAN header");
            assert_eq!((h.vni, h.dest_port), (42, 4789));
            assert_eq!(usize::from(h.udp_len), udp.len(), "UDP length");
        }
        runs.push(run);
    }
    // The same datagrams from both paths: ports, length, checksum, frame.
    let (k, u) = (&runs[0].udp, &runs[1].udp);
    for (seq, a) in k {
        assert!(
            Some(a) == u.get(seq),
            "frame {seq} differs between the paths:\n{a:02x?}\n{:02x?}",
            u.get(seq)
        );
    }
}

/// One tunnel target in two sessions of a source, at a different DEVMAP key
/// in each (`vx` is session a's key 0 and session b's key 1), with a second
/// tunnel at b's key 0 (`gre`).
const SHARED: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "tcp"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
protocol = "tcp"

[[filter]]
name = "udp"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
protocol = "udp"

[[target]]
name = "vx"
kind = "vxlan"
remote = "10.99.1.2"
mtu = 9000

[[target]]
name = "gre"
kind = "gre"
remote = "10.99.2.2"
key = 7
mtu = 1000

[[session]]
name = "a"
source = "feed"
filter = "tcp"
targets = ["vx"]
vni = 42
path = "kernel"

[[session]]
name = "b"
source = "feed"
filter = "udp"
targets = ["gre", "vx"]
vni = 42
path = "kernel"
"#;

/// The kernel transmits a device's redirected frames in batches and runs
/// one DEVMAP program over a whole batch: the program of the batch's first
/// frame (`bq_enqueue` in kernel/bpf/devmap.c). Copies of two sessions that
/// reach one tunnel at different keys share such batches, so the tunnel
/// must not learn its target from the program: each copy is encapsulated
/// and counted as its own session's, whatever copy came first.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_tunnel_in_two_sessions_encapsulates_each_sessions_copies_in_shared_batches() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = collectors(&lab);
    // feed0 receives in batches, as a NIC's RX core does.
    lab.tune_feed_port().expect("feed0 as a NIC");
    let dir = TempDir::new("e2e-ktun-shared").expect("temp dir");
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, SHARED);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let vx = Capture::start(&col, "col1").expect("capture");
    let gre = Capture::start(&col, "gr1").expect("capture");
    let inner = Capture::start(&col, "vx0").expect("capture");
    // TCP (session a) and UDP (session b) in turn, as fast as the socket
    // takes them, so that feed0's NAPI polls see both.
    const N: u32 = 2000;
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..N)
            .map(|i| {
                let shape = if i % 2 == 0 {
                    traffic::Shape::Tcp4
                } else {
                    traffic::Shape::Udp4
                };
                traffic::frame(shape, i, 200)
            })
            .collect(),
    );
    assert_eq!(
        lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 0).expect("send"),
        u64::from(N)
    );
    let st = wait_for(&mut client, "every copy counted", |st| {
        st.targets["vx"].sent_packets + st.targets["vx"].dropped_total() >= u64::from(N)
            && st.targets["gre"].sent_packets + st.targets["gre"].dropped_total()
                >= u64::from(N / 2)
    });
    for s in ["a", "b"] {
        assert_eq!(st.sessions[s].path, "kernel", "session {s}");
        assert_eq!(st.sessions[s].mirrored, u64::from(N / 2), "session {s}");
    }
    for (t, want) in [("vx", N), ("gre", N / 2)] {
        let ts = &st.targets[t];
        assert_reconciles(t, ts);
        assert_eq!(
            (ts.sent_packets, ts.dropped_total()),
            (u64::from(want), 0),
            "target {t}: {:?}",
            ts.dropped
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let outer = |cap: Capture, dst: Ipv4Addr| -> (usize, usize) {
        let p: Vec<_> = cap
            .finish()
            .iter()
            .filter_map(|f| ipv4_payload(f))
            .filter(|(d, _, _)| *d == dst)
            .map(|(_, proto, _)| proto)
            .collect();
        (
            p.iter().filter(|&&x| x == 17).count(),
            p.iter().filter(|&&x| x == 47).count(),
        )
    };
    // (UDP = VXLAN, GRE) packets at each collector: nothing crosses over.
    assert_eq!(outer(vx, Ipv4Addr::new(10, 99, 1, 2)), (N as usize, 0));
    assert_eq!(outer(gre, Ipv4Addr::new(10, 99, 2, 2)), (0, N as usize / 2));
    let mut got = by_seq(&inner.finish());
    assert_eq!(
        got.len(),
        N as usize,
        "the vxlan device decapsulates every copy"
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(got.remove(&(i as u32)).as_ref(), Some(f), "frame {i}");
    }
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("daemon stops")
        .success());
}

/// A reload that restarts a source plans its tunnels with their routes of
/// the moment, not of the tunnels' start. gre's route moves from gr0 to a
/// new link (gb0) while the daemon runs, and the reload gives the session an
/// interface target on gr0. Planned with gre's start-time hop, gr0 would
/// carry both and the kernel path (`path = "kernel"`) be refused; with
/// today's, gre leaves through gb0 and the interface target through gr0.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_reload_plans_a_running_tunnel_with_its_route_of_the_moment() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = collectors(&lab);
    lab::wire(&lab.src, "gb0", "10.99.5.1", &col, "gb1", "10.99.5.2", 1500).expect("wire");
    lab::gro_on(&col, "gb1").expect("gro");
    let dir = TempDir::new("e2e-ktun-reload").expect("temp dir");
    let mut daemon = start_accepting_all(&lab, &dir);

    // gb1 answers ARP for 10.99.2.2 too (an address of its namespace).
    lab.src
        .ip(&["route", "del", "10.99.2.0/24", "dev", "gr0"])
        .expect("route del");
    lab.src
        .ip(&["route", "add", "10.99.2.0/24", "dev", "gb0"])
        .expect("route add");
    daemon
        .wait_for_log("headers rewritten", Duration::from_secs(5))
        .expect("gre's keeper follows its route");

    let stdout = reload_with(&mut daemon, &dir, |running| {
        running.replace(
            r#"targets = ["vx", "gre", "er2", "er3"]"#,
            r#"targets = ["vx", "gre", "er2", "er3", "raw"]"#,
        ) + "\n[[target]]\nname = \"raw\"\nkind = \"interface\"\ninterface = \"gr0\"\n"
    });
    assert!(stdout.contains("restarted source feed"), "{stdout}");

    let on_gr1 = Capture::start(&col, "gr1").expect("capture");
    let on_gb1 = Capture::start(&col, "gb1").expect("capture");
    assert_eq!(send_200(&lab, 0), 200);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let st = settled(&mut client, 200);
    assert_eq!(st.sessions["all"].path, "kernel");
    for name in ["vx", "gre", "er2", "er3", "raw"] {
        let t = &st.targets[name];
        assert_reconciles(name, t);
        assert_eq!(
            (t.sent_packets, t.kernel_path),
            (200, 200),
            "{name}: {:?}",
            t.dropped
        );
    }
    let (gr1, gb1) = (on_gr1.finish(), on_gb1.finish());
    assert_eq!(
        gre_packets(&gb1),
        200,
        "gre's copies leave through its route of the moment"
    );
    assert_eq!(gre_packets(&gr1), 0, "none through its old device");
    let raw = gr1
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(_, proto, _)| *proto == 6)
        .count();
    assert_eq!(
        raw, 200,
        "the interface target's copies (TCP) leave through gr0"
    );
}

/// A reload that starts a source keeps the running one whose kernel tunnel
/// has no route at that moment, and the tunnel's counters with it: the
/// planner's checks are for what starts, and a kept tunnel's route is its
/// keeper's business.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_reload_keeps_a_kernel_tunnel_whose_route_is_gone_and_counts_it() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = collectors(&lab);
    let dir = TempDir::new("e2e-ktun-gone").expect("temp dir");
    let mut daemon = start_accepting_all(&lab, &dir);
    lab.src
        .ip(&["route", "del", "10.99.2.0/24", "dev", "gr0"])
        .expect("route del");
    daemon
        .wait_for_log("kernel tunnel down", Duration::from_secs(5))
        .expect("gre's keeper sees its route go");

    // A second source starts (its own port, a session to vx): feed, its
    // session and its targets are kept.
    lab::wire(
        &lab.src,
        "fd1",
        "10.98.0.1",
        &col,
        "fd1p",
        "10.98.0.2",
        1500,
    )
    .expect("wire");
    let stdout = reload_with(&mut daemon, &dir, |running| {
        running
            + "\n[[source]]\nname = \"feed1\"\ninterface = \"fd1\"\n\n[[session]]\nname = \"b\"\n\
               source = \"feed1\"\nfilter = \"ids\"\ntargets = [\"vx\"]\nvni = 43\n"
    });
    assert!(stdout.contains("started source feed1"), "{stdout}");
    assert!(!stdout.contains("restarted"), "{stdout}");

    let mut client = Client::connect(&daemon.control).expect("control socket");
    assert_eq!(send_200(&lab, 0), 200);
    let st = settled(&mut client, 200);
    assert_eq!(st.sessions["all"].path, "kernel");
    let gre = &st.targets["gre"];
    assert_reconciles("gre", gre);
    assert_eq!(
        (gre.sent_packets, gre.dropped.get("down")),
        (0, Some(&200)),
        "{:?}",
        gre.dropped
    );

    let got = Capture::start(&col, "gr1").expect("capture");
    lab.src
        .ip(&["route", "add", "10.99.2.0/24", "dev", "gr0"])
        .expect("route add");
    daemon
        .wait_for_log("headers rewritten", Duration::from_secs(5))
        .expect("gre's keeper sees its route back");
    assert_eq!(send_200(&lab, 200), 200);
    let st = settled(&mut client, 400);
    let gre = &st.targets["gre"];
    assert_reconciles("gre", gre);
    assert_eq!((gre.sent_packets, gre.kernel_path), (200, 200));
    assert_eq!(gre.dropped.get("down"), Some(&200));
    for name in ["vx", "er2", "er3"] {
        assert_eq!(st.targets[name].sent_packets, 400, "{name} carries on");
    }
    assert_eq!(
        gre_packets(&got.finish()),
        200,
        "the collector gets the copies again"
    );
}
