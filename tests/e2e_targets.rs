//! End to end, in network namespaces: the real `mirror run` (tap mode) sending
//! to every kind of target at once — an interface, a VXLAN collector that a
//! Linux `vxlan` device decapsulates, GRE and ERSPAN II/III collectors decoded
//! field by field (by the project's decoder, and by scapy from a pcap, with
//! a copy-mode session for the ERSPAN III direction bit), and pcapng files
//! read back by an independent parser — plus tunnels to IPv6 collectors,
//! rotation, truncation, sampling, rate limiting, target isolation,
//! targets that resume and flow-symmetric groups that fail back.

mod common;

use common::{assert_reconciles, ipv4_payload, read_pcapng, wait_for, Record, Window};

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_user::config::{Direction, ErspanVersion, Granularity};
use mirror_user::control::Client;
use mirror_user::filter::classify;
use mirror_user::lab::{self, traffic, Capture, DaemonProcess, Lab, Netns, TempDir};
use mirror_user::target::encap::{self, GRE_PROTO_TEB};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

use common::IDS_FILTER as FILTER;

/// (source, destination, next header, IP payload) of an IPv6 frame.
fn ipv6_payload(frame: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u8, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match p.net? {
        etherparse::NetSlice::Ipv6(ip) => Some((
            ip.header().source_addr(),
            ip.header().destination_addr(),
            ip.payload().ip_number.0,
            ip.payload().payload.to_vec(),
        )),
        _ => None,
    }
}

/// Asserts two captures hold the same frames, naming the first that differ
/// rather than printing kilobytes of bytes.
fn assert_same(what: &str, got: &BTreeMap<u32, Vec<u8>>, want: &BTreeMap<u32, Vec<u8>>) {
    let missing: Vec<u32> = want
        .keys()
        .filter(|k| !got.contains_key(k))
        .take(10)
        .copied()
        .collect();
    let extra: Vec<u32> = got
        .keys()
        .filter(|k| !want.contains_key(k))
        .take(10)
        .copied()
        .collect();
    let differ: Vec<u32> = got
        .iter()
        .filter(|(k, v)| want.get(k).is_some_and(|w| w != *v))
        .take(10)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{what}: {} frames, want {}; missing {missing:?}, unexpected {extra:?}, different {differ:?}",
        got.len(),
        want.len()
    );
}

fn by_seq(frames: &[Vec<u8>]) -> BTreeMap<u32, Vec<u8>> {
    frames
        .iter()
        .map(|f| (traffic::seq_of(f).expect("a lab frame"), f.clone()))
        .collect()
}

const ALL_KINDS: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
umem_frames = 2048
ring_size = 1024
share_umem = true
@FILTER@
[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

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
remote = "10.99.2.3"
mtu = 1000

[[target]]
name = "er3"
kind = "erspan"
remote = "10.99.2.4"
version = 3
granularity = "100ns"

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/feed.pcapng"

[[session]]
name = "all"
source = "feed"
filter = "ids"
targets = ["ids0", "vx", "gre", "er2", "er3", "cap"]
vni = 42
"#;

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn every_target_kind_carries_every_mirrored_frame() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let vxc = Netns::new("vxc").expect("netns");
    let grec = Netns::new("grec").expect("netns");
    lab::wire(
        &lab.src,
        "col0",
        "10.99.1.1",
        &vxc,
        "col1",
        "10.99.1.2",
        9000,
    )
    .expect("wire");
    lab::wire(
        &lab.src,
        "gre0",
        "10.99.2.1",
        &grec,
        "gre1",
        "10.99.2.2",
        1500,
    )
    .expect("wire");
    for ip in ["10.99.2.3/24", "10.99.2.4/24"] {
        grec.ip(&["addr", "add", ip, "dev", "gre1"])
            .expect("address");
    }
    // The collector: a Linux VXLAN device that only takes VNI 42.
    lab::vxlan_decap(&vxc, "vx0", 42, "10.99.1.2", "col1").expect("vxlan device");

    let dir = TempDir::new("e2e-kinds").expect("temp dir");
    let (daemon, cfg) =
        common::start_daemon(BIN, &lab.src, &dir, &ALL_KINDS.replace("@FILTER@", FILTER));
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    let inner = Capture::start(&vxc, "vx0").expect("capture");
    let outer_vx = Capture::start(&vxc, "col1").expect("capture");
    let outer_gre = Capture::start(&grec, "gre1").expect("capture");

    let frames = Arc::new(traffic::mixed(2000));
    let mut window = Window::open();
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let filters = vec![&cfg.filters[0]];
    let expected: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&filters, Direction::Ingress, f).is_some())
        .collect();
    let n = expected.len() as u64;
    assert!(n > 1400, "the filter passes most of the mix: {n}");

    let mut client = Client::connect(&daemon.control).expect("control socket");
    let stats = wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && st
                .targets
                .values()
                .all(|t| t.queued == 0 && t.sent_packets == n)
    });
    // Every copy is out: the kernel stamped each frame before this.
    window.close();
    let src = &stats.sources["feed"];
    assert_eq!((src.matched, src.mirrored), (n, n));
    for (name, t) in &stats.targets {
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
    }
    // Exactly the frames longer than 1000 - 20 (IP) - 8 (GRE with key) and
    // 1000 - 20 - 16 (GRE with sequence + ERSPAN II) were cut.
    let longer = |m: usize| expected.iter().filter(|f| f.len() > m).count() as u64;
    assert_eq!(stats.targets["gre"].truncated, longer(972));
    assert_eq!(stats.targets["er2"].truncated, longer(964));
    assert_eq!(stats.targets["er3"].truncated, longer(1460)); // default mtu 1500
    assert_eq!(stats.targets["vx"].truncated, 0);
    // The source's one RX queue shares the interface target's UMEM: every
    // frame went out of ids0 as received, without a copy (and after the five
    // other targets had copied it, or their bytes would differ below).
    assert_eq!(stats.targets["ids0"].shared_umem, n);
    for name in ["vx", "gre", "er2", "er3", "cap"] {
        assert_eq!(stats.targets[name].shared_umem, 0, "{name} copies");
    }
    let want = by_seq(&expected.iter().map(|f| f.to_vec()).collect::<Vec<_>>());

    // Interface target and VXLAN collector: byte-identical frames.
    assert_eq!(by_seq(&sink.finish()), want, "interface target");
    assert_eq!(
        by_seq(&inner.finish()),
        want,
        "frames the vxlan device decapsulated"
    );
    let outer: Vec<Vec<u8>> = outer_vx
        .finish()
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(dst, proto, _)| *dst == Ipv4Addr::new(10, 99, 1, 2) && *proto == 17)
        .map(|(_, _, udp)| udp)
        .collect();
    assert_eq!(outer.len() as u64, n);
    for udp in &outer {
        let h = encap::decode_vxlan(udp).expect("a VXLAN header");
        assert_eq!((h.vni, h.dest_port), (42, 4789));
    }
    // Frame i of the mix has sequence number i.
    let hashes = common::kernel_flow_hashes(frames.iter().map(|f| f.as_slice()));
    assert_vxlan_source_ports(&outer, |seq| hashes[seq as usize]);

    // GRE and ERSPAN: decoded field by field.
    let mut gre = Vec::new();
    let mut er: BTreeMap<u8, Vec<(encap::Erspan, Vec<u8>)>> = BTreeMap::new();
    for f in outer_gre.finish() {
        let Some((dst, 47, payload)) = ipv4_payload(&f) else {
            continue;
        };
        let d = encap::decode_gre(&payload).expect("a GRE header we wrote");
        let inner = payload[d.payload..].to_vec();
        match dst.octets()[3] {
            2 => {
                assert_eq!(
                    (d.protocol, d.key, d.sequence),
                    (GRE_PROTO_TEB, Some(7), None)
                );
                gre.push(inner);
            }
            last @ (3 | 4) => er
                .entry(last)
                .or_default()
                .push((d.erspan.expect("an ERSPAN header"), inner)),
            other => panic!("GRE to an unexpected address .{other}"),
        }
    }
    let check_prefixes = |what: &str, got: &[Vec<u8>], max: usize| {
        let got = by_seq(got);
        assert_eq!(got.len(), want.len(), "{what}: every frame");
        for (seq, f) in &got {
            let full = &want[seq];
            assert!(
                f.as_slice() == &full[..full.len().min(max)],
                "{what}: frame {seq} differs"
            );
        }
    };
    check_prefixes("gre", &gre, 972);
    for (last, version, max) in [
        (3u8, ErspanVersion::Two, 964usize),
        (4, ErspanVersion::Three, 1460),
    ] {
        let copies = &er[&last];
        check_prefixes(
            &format!("erspan {version:?}"),
            &copies.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
            max,
        );
        for (i, (h, inner)) in copies.iter().enumerate() {
            assert_eq!(h.version, version);
            assert_eq!(h.sequence, i as u32, "consecutive sequence numbers");
            assert_eq!(h.session_id, 42);
            let seq = traffic::seq_of(inner).expect("lab frame");
            assert_eq!(h.truncated, want[&seq].len() > max, "T bit of frame {seq}");
            let tagged = matches!(inner[12..14], [0x81, 0x00] | [0x88, 0xa8]);
            assert_eq!(h.encap, if tagged { 3 } else { 0 });
            assert_eq!(
                h.vlan,
                if tagged {
                    u16::from_be_bytes([inner[14], inner[15]]) & 0xfff
                } else {
                    0
                }
            );
            if version == ErspanVersion::Three {
                assert_eq!(h.granularity, Granularity::Nanos100);
                assert!(!h.egress, "frame {seq} was seen on ingress");
            }
        }
    }

    // pcapng: every frame, in time order, with its original length and the
    // kernel's time stamp in Unix time: after the send began, before the
    // last copy was out.
    let records = read_pcapng(&dir.path().join("feed.pcapng"));
    assert_eq!(records.len() as u64, n);
    let mut last = 0;
    let mut stamped = BTreeMap::new();
    for (r, f) in records.iter().zip(&expected) {
        assert_eq!(&r.data, *f);
        assert_eq!(r.orig_len as usize, f.len());
        assert!(r.ts_ns >= last, "time stamps in order");
        last = r.ts_ns;
        let seq = traffic::seq_of(&r.data).expect("lab frame");
        window.assert_holds(&format!("pcapng record of frame {seq}"), r.ts_ns);
        stamped.insert(seq, r.ts_ns);
    }
    // ERSPAN III: each copy carries the same kernel time stamp, in units of
    // 100 ns (the low 32 bits), in the same window.
    for (h, inner) in &er[&4] {
        let seq = traffic::seq_of(inner).expect("lab frame");
        let what = format!("ERSPAN III copy of frame {seq}");
        window.assert_holds_erspan(&what, h.timestamp, 100);
        assert_eq!(
            h.timestamp,
            (stamped[&seq] / 100) as u32,
            "{what}: the frame's kernel time stamp"
        );
    }
}

/// Asserts the outer UDP source port of each VXLAN packet (`udp`: from its
/// UDP header on) is `vxlan_source_port` of the kernel's flow hash of the
/// frame inside (`hash_of` its sequence number), so one port per flow, and
/// that the flows do not all share one port.
fn assert_vxlan_source_ports(outer: &[Vec<u8>], hash_of: impl Fn(u32) -> u32) {
    let mut by_flow: BTreeMap<common::FlowKey, std::collections::BTreeSet<u16>> = BTreeMap::new();
    for udp in outer {
        let h = encap::decode_vxlan(udp).expect("a VXLAN header");
        let inner = &udp[encap::VXLAN_LEN..];
        let seq = traffic::seq_of(inner).expect("a lab frame");
        assert_eq!(
            h.source_port,
            encap::vxlan_source_port(hash_of(seq)),
            "frame {seq}: the port of its flow hash"
        );
        by_flow
            .entry(common::flow_key(inner).expect("an IP frame"))
            .or_default()
            .insert(h.source_port);
    }
    for (flow, ports) in &by_flow {
        assert_eq!(
            ports.len(),
            1,
            "one source port per flow: {flow:?} {ports:?}"
        );
    }
    let ports: std::collections::BTreeSet<u16> = by_flow.values().flatten().copied().collect();
    assert!(
        by_flow.len() < 2 || ports.len() > 1,
        "{} flows all on port {ports:?}",
        by_flow.len()
    );
}

const IPV6_REMOTES: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
@FILTER@
[[target]]
name = "vx"
kind = "vxlan"
remote = "fd00:99:1::2"
mtu = 9000

[[target]]
name = "gre"
kind = "gre"
remote = "fd00:99:2::2"
key = 7
mtu = 1280   # the least IPv6 allows

[[session]]
name = "s"
source = "feed"
filter = "ids"
targets = ["vx", "gre"]
vni = 42
"#;

/// VXLAN and GRE to collectors with IPv6 addresses, over IPv6-only links:
/// a Linux `vxlan` device decapsulates every copy byte-identical (this
/// kernel has no GRE devices: GRE is read back from the capture), and GRE
/// copies are cut to fit the IPv6 overhead exactly.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn tunnels_to_ipv6_collectors_deliver_every_copy_byte_identical() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let vxc = Netns::new("vxc6").expect("netns");
    let grec = Netns::new("grec6").expect("netns");
    let (src_vx, col_vx) = ("fd00:99:1::1", "fd00:99:1::2");
    let (src_gre, col_gre) = ("fd00:99:2::1", "fd00:99:2::2");
    lab::wire6(&lab.src, "col0", src_vx, &vxc, "col1", col_vx, 9000).expect("wire");
    lab::wire6(&lab.src, "gre0", src_gre, &grec, "gre1", col_gre, 9000).expect("wire");
    lab::vxlan_decap(&vxc, "vx0", 42, col_vx, "col1").expect("vxlan device");

    let dir = TempDir::new("e2e-ipv6").expect("temp dir");
    let (daemon, mut client) = accept_all_daemon(&lab, &dir, IPV6_REMOTES);
    let inner_vx = Capture::start(&vxc, "vx0").expect("capture");
    let outer_vx = Capture::start(&vxc, "col1").expect("capture");
    let outer_gre = Capture::start(&grec, "gre1").expect("capture");

    let frames = Arc::new(traffic::mixed(1000));
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let st = wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && st
                .targets
                .values()
                .all(|t| t.queued == 0 && t.sent_packets == 1000)
    });
    // 1280 - 40 (IPv6) - 8 (GRE with key): the longest frame sent whole.
    let max = 1232;
    let longer = frames.iter().filter(|f| f.len() > max).count() as u64;
    assert_eq!(longer, 200, "the 1514-byte fifth of the mix");
    for (name, t) in &st.targets {
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
    }
    let bytes = |cut: usize| frames.iter().map(|f| f.len().min(cut) as u64).sum::<u64>();
    let (vx, gre) = (&st.targets["vx"], &st.targets["gre"]);
    assert_eq!((vx.truncated, vx.sent_bytes), (0, bytes(usize::MAX)));
    assert_eq!((gre.truncated, gre.sent_bytes), (longer, bytes(max)));

    let want = by_seq(&frames);
    assert_same(
        "VXLAN over IPv6, decapsulated by Linux",
        &by_seq(&inner_vx.finish()),
        &want,
    );

    // The outer packets: IPv6 from the link's own address (the route's
    // choice) to the collector, VXLAN with the VNI and a UDP checksum
    // (mandatory on IPv6: Linux drops the packet without one), GRE with
    // the key and the frame cut to fit.
    let outer = |frames: Vec<Vec<u8>>, from: &str, to: &str, next: u8| -> Vec<Vec<u8>> {
        let (from, to): (Ipv6Addr, Ipv6Addr) = (from.parse().expect("ip"), to.parse().expect("ip"));
        frames
            .iter()
            .filter_map(|f| ipv6_payload(f))
            .filter(|(_, dst, nh, _)| *dst == to && *nh == next)
            .map(|(src, _, _, payload)| {
                assert_eq!(src, from, "the source address");
                payload
            })
            .collect()
    };
    let udp = outer(outer_vx.finish(), src_vx, col_vx, 17);
    assert_eq!(udp.len(), 1000, "VXLAN packets at the collector");
    for u in &udp {
        let h = encap::decode_vxlan(u).expect("a VXLAN header");
        assert_eq!((h.vni, h.dest_port), (42, 4789));
        assert_ne!(
            u16::from_be_bytes([u[6], u[7]]),
            0,
            "the UDP checksum is set"
        );
    }
    let packets = outer(outer_gre.finish(), src_gre, col_gre, 47);
    assert_eq!(packets.len(), 1000, "GRE packets at the collector");
    let mut inner_gre = Vec::new();
    for g in &packets {
        let d = encap::decode_gre(g).expect("GRE");
        assert_eq!(
            (d.protocol, d.key, d.sequence),
            (GRE_PROTO_TEB, Some(7), None)
        );
        inner_gre.push(g[d.payload..].to_vec());
    }
    let cut: BTreeMap<u32, Vec<u8>> = want
        .iter()
        .map(|(k, f)| (*k, f[..f.len().min(max)].to_vec()))
        .collect();
    assert_same("GRE over IPv6", &by_seq(&inner_gre), &cut);
    drop(daemon);
}

/// A tap session to GRE and both ERSPAN types, and a copy-mode session
/// (both directions of a UDP exchange) to ERSPAN III with its own id: the
/// values a parser must find in the headers.
const DECODED: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[source]]
name = "live"
interface = "s0"
mode = "copy"
direction = "both"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[filter]]
name = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "5002"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"
source_port = "5002"

[[target]]
name = "gre"
kind = "gre"
remote = "10.99.2.2"
key = 7
mtu = 1000

[[target]]
name = "er2"
kind = "erspan"
remote = "10.99.2.3"
mtu = 1000

[[target]]
name = "er3"
kind = "erspan"
remote = "10.99.2.4"
version = 3
granularity = "100ns"
mtu = 1000

[[session]]
name = "tap"
source = "feed"
filter = "all"
targets = ["gre", "er2", "er3"]
vni = 42

[[session]]
name = "live"
source = "live"
filter = "udp"
targets = ["er3"]
vni = 43
"#;

/// Writes `frames` to a classic pcap file (Ethernet).
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    use pcap_file::pcap::{PcapPacket, PcapWriter};
    let file = std::fs::File::create(path).expect("create the pcap");
    let mut w = PcapWriter::new(file).expect("pcap header");
    for f in frames {
        w.write_packet(&PcapPacket::new(Duration::ZERO, f.len() as u32, f))
            .expect("write a packet");
    }
}

/// scapy's reading of every GRE packet in `pcap` (tests/scapy_gre.py), one
/// JSON object each.
fn scapy_decode(pcap: &std::path::Path) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/scapy_gre.py");
    let out = std::process::Command::new("timeout")
        .args(["120", "/usr/bin/python3", script])
        .arg(pcap)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "scapy could not decode the capture (Debian's python3-scapy is needed: \
         `cargo xtask deps` installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `v[key]` as a number.
fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

/// What ERSPAN must say about a frame's outer VLAN tag: (vlan, cos, 3 if
/// tagged else 0).
fn vlan_fields(frame: &[u8]) -> (u64, u64, u64) {
    match frame[12..16] {
        [0x81, 0x00, a, b] | [0x88, 0xa8, a, b] => {
            let tci = u16::from_be_bytes([a, b]);
            (u64::from(tci & 0xfff), u64::from(tci >> 13), 3)
        }
        _ => (0, 0, 0),
    }
}

/// GRE and ERSPAN II/III as the collectors receive them, decoded by scapy
/// (a parser the project did not write) from a pcap of the capture: every
/// header field is what the config and the mirrored frame say, and the
/// encapsulated frame is the mirrored one, cut to fit `mtu`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn gre_and_erspan_headers_read_by_scapy_match_the_config() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let grec = Netns::new("grec").expect("netns");
    let cli = Netns::new("cli").expect("netns");
    lab::wire(
        &lab.src,
        "gre0",
        "10.99.2.1",
        &grec,
        "gre1",
        "10.99.2.2",
        1500,
    )
    .expect("wire");
    for ip in ["10.99.2.3/24", "10.99.2.4/24"] {
        grec.ip(&["addr", "add", ip, "dev", "gre1"])
            .expect("address");
    }
    lab::wire(&cli, "c0", "10.9.0.1", &lab.src, "s0", "10.9.0.2", 1500).expect("wire");
    let server_addr = std::net::SocketAddr::from(([10, 9, 0, 2], 5002));
    let dir = TempDir::new("e2e-scapy").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, DECODED);
    // After the daemon: the server ends after 5 s without a datagram.
    let server = lab::stream::EchoServer::start(&lab.src, server_addr).expect("echo server");
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let cap = Capture::start(&grec, "gre1").expect("capture");

    let frames = Arc::new(traffic::mixed(400));
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let progress = std::sync::atomic::AtomicU32::new(0);
    let echoed =
        lab::stream::udp_exchange(&cli, server_addr, 50, 100, &progress).expect("UDP exchange");
    assert_eq!(echoed, 50);
    server.finish(&cli).expect("echo server");
    let st = wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && [("gre", 400), ("er2", 400), ("er3", 501)]
                .iter()
                .all(|(t, n)| st.targets[*t].sent_packets == *n && st.targets[*t].queued == 0)
    });
    for (name, t) in &st.targets {
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
    }
    let gre_frames: Vec<Vec<u8>> = cap
        .finish()
        .into_iter()
        .filter(|f| matches!(ipv4_payload(f), Some((_, 47, _))))
        .collect();
    // The live session: 50 requests, 50 echoes, and the datagram that ends
    // the echo server.
    assert_eq!(gre_frames.len(), 1301);
    let pcap = dir.path().join("collector.pcap");
    write_pcap(&pcap, &gre_frames);
    let decoded = scapy_decode(&pcap);
    assert_eq!(decoded.len(), 1301, "scapy read every GRE packet");

    let want = by_seq(&frames);
    let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut directions = [0u32; 2];
    for d in &decoded {
        let (dst, gre, e) = (d["dst"].as_str().expect("dst"), &d["gre"], &d["erspan"]);
        let inner = (0..d["inner"].as_str().expect("inner").len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&d["inner"].as_str().expect("hex")[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .expect("hex");
        assert_eq!(
            ["chksum_present", "routing_present", "version"].map(|k| num(gre, k)),
            [0, 0, 0],
            "{d}"
        );
        // The longest frame each target carries whole: mtu - IPv4 - its headers.
        let (proto, key, max) = match dst {
            "10.99.2.2" => (0x6558, Some(7), 1000 - 20 - 8),
            "10.99.2.3" => (0x88be, None, 1000 - 20 - 8 - 8),
            "10.99.2.4" => (0x22eb, None, 1000 - 20 - 8 - 12),
            other => panic!("GRE to {other}"),
        };
        assert_eq!(num(gre, "proto"), proto, "{d}");
        assert_eq!(gre["key"].as_u64(), key, "{d}");
        let seq = traffic::seq_of(&inner);
        let orig_len = match seq {
            Some(s) => {
                let full = &want[&s];
                assert_eq!(inner, full[..full.len().min(max)], "frame {s} in {d}");
                full.len()
            }
            None => inner.len(),
        };
        if dst == "10.99.2.2" {
            assert_eq!(
                (num(gre, "seqnum_present"), &e),
                (0, &&serde_json::Value::Null)
            );
            assert!(seq.is_some(), "only the tap session goes to gre");
            continue;
        }
        // ERSPAN: GRE with a per-target sequence number, no key.
        assert_eq!(
            (num(gre, "seqnum_present"), num(gre, "key_present")),
            (1, 0)
        );
        sequences
            .entry(dst.into())
            .or_default()
            .push(num(gre, "sequence"));
        let (vlan, cos, en) = vlan_fields(&inner);
        assert_eq!(
            [num(e, "vlan"), num(e, "cos"), num(e, "t")],
            [vlan, cos, u64::from(orig_len > max)],
            "VLAN, COS and T bit of {d}"
        );
        if dst == "10.99.2.3" {
            assert_eq!(
                ["ver", "session_id", "en", "index", "reserved"].map(|k| num(e, k)),
                [1, 42, en, 0, 0],
                "ERSPAN II {d}"
            );
            continue;
        }
        // ERSPAN III: the session's id, 100 ns granularity, a time stamp, an
        // Ethernet frame, and the direction the copy was seen in.
        let (session, egress) = match seq {
            Some(_) => (42, false),
            None => {
                // The live session: the UDP exchange, requests in, echoes out.
                let udp = etherparse::SlicedPacket::from_ethernet(&inner).expect("a frame");
                let Some(etherparse::TransportSlice::Udp(u)) = udp.transport else {
                    panic!("the live session mirrors UDP: {d}");
                };
                assert!(u.destination_port() == 5002 || u.source_port() == 5002);
                (43, u.source_port() == 5002)
            }
        };
        directions[usize::from(egress)] += u32::from(session == 43);
        assert_eq!(
            [
                "ver",
                "session_id",
                "bso",
                "gra",
                "p",
                "ft",
                "hw",
                "o",
                "sgt_other",
                "d"
            ]
            .map(|k| num(e, k)),
            [2, session, en, 1, 1, 0, 0, 0, 0, u64::from(egress)],
            "ERSPAN III {d}"
        );
        assert_ne!(num(e, "timestamp"), 0, "a time stamp: {d}");
    }
    assert_eq!(directions, [51, 50], "51 datagrams in, 50 echoes out");
    for (dst, seqs) in &sequences {
        let n = if dst == "10.99.2.4" { 501 } else { 400 };
        assert_eq!(
            *seqs,
            (0..n).collect::<Vec<u64>>(),
            "{dst}: one sequence number each, in order"
        );
    }
    drop(daemon);
}

const ACCEPT_ALL: &str = r#"
[[filter]]
name = "ids"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
"#;

const ROTATING: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
@FILTER@
[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/cap/feed.pcapng"
rotate_size = "16KiB"
keep = 3

[[session]]
name = "s"
source = "feed"
filter = "ids"
targets = ["cap"]
packet_length = 100
sample = 2
"#;

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn pcapng_rotates_keeps_the_newest_files_and_records_original_lengths() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-rotate").expect("temp dir");
    std::fs::create_dir(dir.path().join("cap")).expect("capture dir");
    let (daemon, _) = common::start_daemon(
        BIN,
        &lab.src,
        &dir,
        &ROTATING.replace("@FILTER@", ACCEPT_ALL),
    );
    let frames = Arc::new(traffic::mixed(2000));
    let mut window = Window::open();
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let stats = wait_for(&mut client, "every copy written", |st| {
        st.sources["feed"].received == sent
            && st.targets["cap"].sent_packets == 1000
            && st.targets["cap"].queued == 0
    });
    window.close();
    // Sampling 1 in 2, in the kernel: frames 0, 2, 4, …
    let src = &stats.sources["feed"];
    assert_eq!(
        (src.matched, src.sampled_out, src.mirrored),
        (2000, 1000, 1000)
    );
    assert_eq!(stats.sessions["s"].sampled_out, 1000);
    let t = &stats.targets["cap"];
    assert_reconciles("cap", t);
    assert_eq!(t.dropped_total(), 0);
    let cut: u64 = frames
        .iter()
        .step_by(2)
        .map(|f| f.len().min(100) as u64)
        .sum();
    assert_eq!(t.sent_bytes, cut, "every copy cut to packet_length");

    let files = mirror_user::target::pcapng::rotated_files(&dir.path().join("cap/feed.pcapng"));
    assert_eq!(files.len(), 3, "keep = 3: {files:?}");
    let records: Vec<Vec<Record>> = files.iter().map(|(_, p)| read_pcapng(p)).collect();
    // No file passes 16 KiB, and each but the newest was closed because the
    // next block would have.
    for (i, (_, p)) in files.iter().enumerate() {
        let size = std::fs::metadata(p).expect("size").len();
        assert!(size <= 16384, "{} is {size} bytes", p.display());
        if i < 2 {
            assert!(
                size > 16384 - 144,
                "{} closed early at {size} bytes",
                p.display()
            );
        }
    }
    let seqs: Vec<u64> = files.iter().map(|f| f.0).collect();
    let newest = seqs[2];
    assert_eq!(
        seqs,
        vec![newest - 2, newest - 1, newest],
        "the oldest were deleted"
    );
    assert!(
        newest >= 6,
        "1000 copies of up to 144 bytes fill several 16 KiB files"
    );
    // The kept files hold the last copies, in order, cut to 100 bytes with
    // their original lengths.
    let kept: Vec<&Record> = records.iter().flatten().collect();
    let first = 2000 - 2 * kept.len();
    for (i, r) in kept.iter().enumerate() {
        let f = &frames[first + 2 * i];
        assert_eq!(r.data.as_slice(), &f[..f.len().min(100)], "copy {i}");
        assert_eq!(r.orig_len as usize, f.len());
        window.assert_holds(&format!("kept copy {i}"), r.ts_ns);
    }
}

const TWO_COLLECTORS: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
@FILTER@
[[target]]
name = "a"
kind = "gre"
remote = "10.99.1.2"
mtu = 9000

[[target]]
name = "b"
kind = "gre"
remote = "10.99.2.2"
mtu = 9000
@GROUP@
[[session]]
name = "s"
source = "feed"
filter = "ids"
targets = @TARGETS@
"#;

/// Two GRE collectors, each alone in its namespace, and the daemon.
struct TwoCollectors {
    lab: Lab,
    a: Option<Netns>,
    b: Option<Netns>,
    daemon: DaemonProcess,
    _dir: TempDir,
}

fn two_collectors(tag: &str, group: bool) -> TwoCollectors {
    let lab = Lab::new(1).expect("lab");
    let a = Netns::new("cola").expect("netns");
    let b = Netns::new("colb").expect("netns");
    lab::wire(
        &lab.src,
        "cola0",
        "10.99.1.1",
        &a,
        "cola1",
        "10.99.1.2",
        9000,
    )
    .expect("wire");
    lab::wire(
        &lab.src,
        "colb0",
        "10.99.2.1",
        &b,
        "colb1",
        "10.99.2.2",
        9000,
    )
    .expect("wire");
    let dir = TempDir::new(tag).expect("temp dir");
    let text = TWO_COLLECTORS.replace("@FILTER@", ACCEPT_ALL);
    let text = if group {
        text.replace(
            "@GROUP@",
            "[[target_group]]\nname = \"pool\"\nmembers = [\"a\", \"b\"]\n",
        )
        .replace("@TARGETS@", "[\"pool\"]")
    } else {
        text.replace("@GROUP@", "")
            .replace("@TARGETS@", "[\"a\", \"b\"]")
    };
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    TwoCollectors {
        lab,
        a: Some(a),
        b: Some(b),
        daemon,
        _dir: dir,
    }
}

/// The inner frames of the GRE packets a collector received.
fn gre_inner(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(_, proto, _)| *proto == 47)
        .map(|(_, _, p)| {
            let d = encap::decode_gre(&p).expect("GRE");
            p[d.payload..].to_vec()
        })
        .collect()
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_dead_collector_loses_only_its_own_copies() {
    require_root!();
    let mut t = two_collectors("e2e-isolation", false);
    let cap_b = Capture::start(t.b.as_ref().expect("b"), "colb1").expect("capture");
    let frames = Arc::new(traffic::mixed(3000));
    let (gen, frames2) = (Netns::attach(t.lab.gen.name()), frames.clone());
    let sender = std::thread::spawn(move || {
        lab::send_frames(&gen, Lab::GEN_IF, frames2, 6_000).expect("send")
    });
    let mut client = Client::connect(&t.daemon.control).expect("control socket");
    wait_for(&mut client, "a third of the traffic", |st| {
        st.sources["feed"].received >= 1000
    });
    // Collector a disappears mid-run, its veth and route with it.
    drop(t.a.take());
    let sent = sender.join().expect("sender");
    let stats = wait_for(&mut client, "every copy accounted for", |st| {
        st.sources["feed"].received == sent
            && st
                .targets
                .values()
                .all(|x| x.queued == 0 && x.enqueued == 3000)
            && st.targets["b"].sent_packets == 3000
    });
    let (a, b) = (&stats.targets["a"], &stats.targets["b"]);
    assert_reconciles("a", a);
    assert_reconciles("b", b);
    assert_eq!(b.dropped_total(), 0, "{:?}", b.dropped);
    assert!(!a.up, "a is down without its route");
    assert!(
        a.dropped["down"] + a.dropped["send_error"] > 0,
        "{:?}",
        a.dropped
    );
    assert_eq!(
        a.dropped_total(),
        a.dropped["down"] + a.dropped["send_error"]
    );
    let want = by_seq(&frames);
    assert_same(
        "b got every frame",
        &by_seq(&gre_inner(&cap_b.finish())),
        &want,
    );
}

/// UDP frames of flow `i`, `reverse` = the answer direction.
fn flow_frame(i: u16, reverse: bool, seq: u32) -> Vec<u8> {
    flow_frame_padded(i, reverse, seq, 0)
}

/// [`flow_frame`] with `pad` more bytes of payload.
fn flow_frame_padded(i: u16, reverse: bool, seq: u32, pad: usize) -> Vec<u8> {
    let (mut a, mut b) = (
        ([10, 1, (i >> 8) as u8, i as u8], 1024 + i),
        ([10, 2, 0, 1], 53),
    );
    if reverse {
        std::mem::swap(&mut a, &mut b);
    }
    let mut out = Vec::new();
    let mut payload = traffic::MARKER.to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.resize(payload.len() + pad, 0xa5);
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(a.0, b.0, 64)
        .udp(a.1, b.1)
        .write(&mut out, &payload)
        .expect("build");
    out
}

const VXLAN_ONLY: &str = r#"
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

[[session]]
name = "s"
source = "feed"
filter = "ids"
targets = ["vx"]
"#;

/// VXLAN's outer UDP source port (ECMP entropy) comes from the kernel's
/// symmetric flow hash: one port per flow, whatever the frame's length, the
/// same for both directions, `vxlan_source_port` of the flow's hash, and
/// different flows spread over many ports.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn vxlan_gives_each_flow_one_source_port_in_both_directions_from_its_hash() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = Netns::new("vxc").expect("netns");
    lab::wire(
        &lab.src,
        "col0",
        "10.99.1.1",
        &col,
        "col1",
        "10.99.1.2",
        9000,
    )
    .expect("wire");
    let dir = TempDir::new("e2e-vxports").expect("temp dir");
    let (daemon, mut client) = accept_all_daemon(&lab, &dir, VXLAN_ONLY);
    let capture = Capture::start(&col, "col1").expect("capture");
    // 100 flows, three rounds of one frame each way, every frame of a flow
    // of another length. Frame `seq` is flow `flow_of[seq]`, reverse or not.
    let flows = 100u16;
    let (mut frames, mut flow_of) = (Vec::new(), Vec::new());
    for round in 0..3usize {
        for i in 0..flows {
            for reverse in [false, true] {
                let seq = frames.len() as u32;
                let pad = 100 * round + 2 * usize::from(i) + usize::from(reverse);
                frames.push(flow_frame_padded(i, reverse, seq, pad));
                flow_of.push((i, reverse));
            }
        }
    }
    let hashes = common::kernel_flow_hashes(frames.iter().map(|f| f.as_slice()));
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && st.targets["vx"].sent_packets == sent
            && st.targets["vx"].queued == 0
    });
    let outer: Vec<Vec<u8>> = capture
        .finish()
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(dst, proto, _)| *dst == Ipv4Addr::new(10, 99, 1, 2) && *proto == 17)
        .map(|(_, _, udp)| udp)
        .collect();
    assert_eq!(outer.len() as u64, sent, "every copy captured");
    assert_vxlan_source_ports(&outer, |seq| hashes[seq as usize]);

    // Per flow and direction, the ports seen.
    let mut ports: BTreeMap<(u16, bool), std::collections::BTreeSet<u16>> = BTreeMap::new();
    for udp in &outer {
        let h = encap::decode_vxlan(udp).expect("a VXLAN header");
        let seq = traffic::seq_of(&udp[encap::VXLAN_LEN..]).expect("a lab frame");
        ports
            .entry(flow_of[seq as usize])
            .or_default()
            .insert(h.source_port);
    }
    assert_eq!(
        ports.len(),
        2 * usize::from(flows),
        "both directions of every flow"
    );
    let mut distinct: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
    for i in 0..flows {
        let (fwd, rev) = (&ports[&(i, false)], &ports[&(i, true)]);
        assert_eq!(
            fwd.len(),
            1,
            "flow {i}: one port for its 3 forward frames: {fwd:?}"
        );
        assert_eq!(fwd, rev, "flow {i}: the same port both ways");
        distinct.extend(fwd);
    }
    assert!(
        distinct.len() > usize::from(flows) * 9 / 10,
        "{flows} flows on only {} ports",
        distinct.len()
    );
    drop(daemon);
}

/// Sends `probe` until the daemon sees `member` down (its first failed send
/// marks it), bounded to 10 s.
fn probe_until_down(client: &mut Client, lab: &Lab, probe: &Arc<Vec<Vec<u8>>>, member: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = client.stats().expect("stats");
        if !st.targets[member].up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{member} never went down: {st:#?}"
        );
        lab::send_frames(&lab.gen, Lab::GEN_IF, probe.clone(), 0).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn groups_keep_both_directions_of_a_flow_on_one_member_and_skip_a_dead_one() {
    require_root!();
    let mut t = two_collectors("e2e-group", true);
    let cap_a = Capture::start(t.a.as_ref().expect("a"), "cola1").expect("capture");
    let cap_b = Capture::start(t.b.as_ref().expect("b"), "colb1").expect("capture");
    let flows = 200u16;
    let frames: Vec<Vec<u8>> = (0..flows)
        .flat_map(|i| {
            [
                flow_frame(i, false, 2 * u32::from(i)),
                flow_frame(i, true, 2 * u32::from(i) + 1),
            ]
        })
        .collect();
    let sent = lab::send_frames(&t.lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    let mut client = Client::connect(&t.daemon.control).expect("control socket");
    wait_for(&mut client, "both members idle", |st| {
        st.sources["feed"].received == sent
            && st.targets["a"].sent_packets + st.targets["b"].sent_packets == sent
    });
    let member = |frames: &[Vec<u8>]| -> Vec<u32> {
        gre_inner(frames)
            .iter()
            .filter_map(|f| traffic::seq_of(f))
            .collect()
    };
    let (got_a, got_b) = (member(&cap_a.finish()), member(&cap_b.finish()));
    assert_eq!(got_a.len() + got_b.len(), 2 * flows as usize);
    for i in 0..u32::from(flows) {
        let (fwd, rev) = (2 * i, 2 * i + 1);
        assert_eq!(
            got_a.contains(&fwd),
            got_a.contains(&rev),
            "flow {i} split between members"
        );
    }
    let on_a = got_a.len() / 2;
    assert!(
        (40..160).contains(&on_a),
        "flows spread over both members: {on_a} of {flows} on a"
    );

    // Member a dies: once it is seen down, all flows go to b, counted `rehashed`.
    drop(t.a.take());
    // Probe with every flow: the first copy for a fails and marks it down.
    let probe = Arc::new(
        (0..flows)
            .map(|i| flow_frame(i, false, 1_000_000))
            .collect::<Vec<_>>(),
    );
    probe_until_down(&mut client, &t.lab, &probe, "a");
    let before = client.stats().expect("stats");
    let cap_b = Capture::start(t.b.as_ref().expect("b"), "colb1").expect("capture");
    let again: Vec<Vec<u8>> = (0..flows)
        .map(|i| flow_frame(i, false, 2 * u32::from(i)))
        .collect();
    let sent = lab::send_frames(&t.lab.gen, Lab::GEN_IF, Arc::new(again), 10_000).expect("send");
    let st = wait_for(&mut client, "the second round", |st| {
        st.targets["b"].sent_packets == before.targets["b"].sent_packets + sent
    });
    assert_eq!(
        gre_inner(&cap_b.finish()).len() as u64,
        sent,
        "b took every flow"
    );
    assert_eq!(
        st.groups["pool"].rehashed - before.groups["pool"].rehashed,
        on_a as u64,
        "exactly a's flows moved"
    );
    assert_eq!(
        st.targets["a"].enqueued, before.targets["a"].enqueued,
        "nothing more offered to a"
    );
    for (name, x) in &st.targets {
        assert_reconciles(name, x);
    }
    assert_eq!(st.groups["pool"].members_up, 1);

    // Member b dies too: copies go to each flow's first choice, which counts
    // them `down`, and the group counts them `all_down`.
    drop(t.b.take());
    probe_until_down(&mut client, &t.lab, &probe, "b");
    let before = client.stats().expect("stats");
    let sent = lab::send_frames(&t.lab.gen, Lab::GEN_IF, probe.clone(), 10_000).expect("send");
    let received = before.sources["feed"].received + sent;
    let st = wait_for(&mut client, "the third round", |st| {
        st.sources["feed"].received == received
            && st.targets["a"].enqueued + st.targets["b"].enqueued
                == before.targets["a"].enqueued + before.targets["b"].enqueued + sent
    });
    let pool = &st.groups["pool"];
    assert_eq!(pool.members_up, 0);
    assert_eq!(pool.all_down - before.groups["pool"].all_down, sent);
    let down = |s: &mirror_user::dataplane::stats::Stats| {
        s.targets["a"].dropped["down"] + s.targets["b"].dropped["down"]
    };
    assert_eq!(down(&st) - down(&before), sent, "every copy counted down");
    assert_eq!(
        st.targets["a"].sent_packets + st.targets["b"].sent_packets,
        before.targets["a"].sent_packets + before.targets["b"].sent_packets,
        "nothing sent"
    );
    for (name, x) in &st.targets {
        assert_reconciles(name, x);
    }
}

/// Deletes (`present` false) or puts back the src namespace's route to
/// collector `member` ("a" or "b" of [`two_collectors`]): without it every
/// copy for the member fails to send (ENETUNREACH), as when its network
/// goes away, and the member's link stays up.
fn route_to(lab: &Lab, member: &str, present: bool) {
    let (net, dev, src) = match member {
        "a" => ("10.99.1.0/24", "cola0", "10.99.1.1"),
        _ => ("10.99.2.0/24", "colb0", "10.99.2.1"),
    };
    let mut args = vec![
        "route",
        if present { "add" } else { "del" },
        net,
        "dev",
        dev,
    ];
    if present {
        args.extend(["proto", "kernel", "scope", "link", "src", src]);
    }
    lab.src.ip(&args).expect("route");
}

/// Waits (bounded, 20 s) until `member` is up again and returns the counters.
fn wait_until_up(client: &mut Client, member: &str) -> mirror_user::dataplane::stats::Stats {
    wait_for(client, &format!("{member} up again"), |st| {
        st.targets[member].up
    })
}

/// `count` 200-byte UDP lab frames of one flow, numbered from `first`.
fn small_frames(first: u32, count: u32) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (first..first + count)
            .map(|i| traffic::frame(traffic::Shape::Udp4, i, 200))
            .collect(),
    )
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_tunnel_target_whose_route_returns_resumes_sending_and_reconciles() {
    require_root!();
    let t = two_collectors("e2e-resume", false);
    let mut client = Client::connect(&t.daemon.control).expect("control socket");
    let a = t.a.as_ref().expect("a");
    let settled = |st: &mirror_user::dataplane::stats::Stats, n: u64| {
        st.sources["feed"].received == n
            && st.targets.values().all(|x| {
                x.queued == 0 && x.enqueued == n && x.enqueued == x.sent_packets + x.dropped_total()
            })
    };

    // 1. Both collectors take everything.
    let cap = Capture::start(a, "cola1").expect("capture");
    let mut sent =
        lab::send_frames(&t.lab.gen, Lab::GEN_IF, small_frames(0, 100), 10_000).expect("send");
    let st = wait_for(&mut client, "round 1 sent", |st| {
        settled(st, sent) && st.targets["a"].sent_packets == sent
    });
    assert_eq!(st.targets["b"].sent_packets, sent);
    assert_same(
        "a before",
        &by_seq(&gre_inner(&cap.finish())),
        &by_seq(&small_frames(0, 100)),
    );

    // 2. a's route goes: its first failed copy is a send_error and marks
    // it down; every later copy is counted down, none is sent; b loses none.
    route_to(&t.lab, "a", false);
    let probe = small_frames(1_000_000, 1);
    probe_until_down(&mut client, &t.lab, &probe, "a");
    let before = client.stats().expect("stats");
    sent = before.sources["feed"].received;
    sent +=
        lab::send_frames(&t.lab.gen, Lab::GEN_IF, small_frames(100, 300), 10_000).expect("send");
    let st = wait_for(&mut client, "round 2 accounted for", |st| settled(st, sent));
    let (x, y) = (&st.targets["a"], &before.targets["a"]);
    assert!(!x.up);
    assert_eq!(x.sent_packets, 100, "nothing sent without a route");
    assert_eq!(
        x.dropped["send_error"], 1,
        "the copy that found the route gone: {:?}",
        x.dropped
    );
    assert_eq!(
        x.dropped["down"] - y.dropped["down"],
        300,
        "{:?}",
        x.dropped
    );
    assert_eq!(
        x.dropped_total(),
        x.dropped["send_error"] + x.dropped["down"]
    );
    assert_eq!(st.targets["b"].sent_packets, sent, "b loses nothing");

    // 3. The route returns: a is up again within its 200 ms check and sends
    // every new copy, byte-identical; all of it reconciles.
    route_to(&t.lab, "a", true);
    let before = wait_until_up(&mut client, "a");
    let cap = Capture::start(a, "cola1").expect("capture");
    sent +=
        lab::send_frames(&t.lab.gen, Lab::GEN_IF, small_frames(400, 300), 10_000).expect("send");
    let st = wait_for(&mut client, "round 3 sent", |st| {
        settled(st, sent) && st.targets["a"].sent_packets == before.targets["a"].sent_packets + 300
    });
    let x = &st.targets["a"];
    assert!(x.up);
    assert_eq!(x.dropped, before.targets["a"].dropped, "no new drop");
    assert_eq!(x.sent_packets, 400);
    assert_eq!(
        x.enqueued,
        x.sent_packets + x.dropped["send_error"] + x.dropped["down"]
    );
    assert_eq!(st.targets["b"].sent_packets, sent);
    for (name, x) in &st.targets {
        assert_reconciles(name, x);
    }
    assert_same(
        "a after",
        &by_seq(&gre_inner(&cap.finish())),
        &by_seq(&small_frames(400, 300)),
    );
    assert!(
        t.daemon
            .log_text()
            .contains("tunnel target up: the collector has a route again"),
        "{}",
        t.daemon.log_text()
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_group_member_that_returns_gets_its_flows_back() {
    require_root!();
    let t = two_collectors("e2e-failback", true);
    let mut client = Client::connect(&t.daemon.control).expect("control socket");
    let (a, b) = (t.a.as_ref().expect("a"), t.b.as_ref().expect("b"));
    let flows = 200u16;
    // One frame of each flow, numbered round * 1000 + flow.
    let round = |r: u32| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (0..flows)
                .map(|i| flow_frame(i, false, r * 1000 + u32::from(i)))
                .collect(),
        )
    };
    // Sends a round and returns the flows each member got, once all is sent.
    let run = |r: u32, client: &mut Client| -> (Vec<u32>, Vec<u32>) {
        let (cap_a, cap_b) = (
            Capture::start(a, "cola1").expect("capture"),
            Capture::start(b, "colb1").expect("capture"),
        );
        let before = client.stats().expect("stats");
        let sent = lab::send_frames(&t.lab.gen, Lab::GEN_IF, round(r), 10_000).expect("send");
        let total = |st: &mirror_user::dataplane::stats::Stats| {
            st.targets["a"].sent_packets + st.targets["b"].sent_packets
        };
        wait_for(client, &format!("round {r}"), |st| {
            total(st) == total(&before) + sent && st.targets.values().all(|x| x.queued == 0)
        });
        let flows_of = |frames: Vec<Vec<u8>>| -> Vec<u32> {
            let mut v: Vec<u32> = gre_inner(&frames)
                .iter()
                .filter_map(|f| traffic::seq_of(f))
                .map(|s| s - r * 1000)
                .collect();
            v.sort_unstable();
            v
        };
        (flows_of(cap_a.finish()), flows_of(cap_b.finish()))
    };

    let (on_a, on_b) = run(1, &mut client);
    assert_eq!(on_a.len() + on_b.len(), usize::from(flows));
    assert!(
        (40..160).contains(&on_a.len()),
        "{} of {flows} flows on a",
        on_a.len()
    );

    // a goes down: its flows, and only those, move to b.
    route_to(&t.lab, "a", false);
    let probe = Arc::new(
        (0..flows)
            .map(|i| flow_frame(i, false, 1_000_000))
            .collect::<Vec<_>>(),
    );
    probe_until_down(&mut client, &t.lab, &probe, "a");
    let before = client.stats().expect("stats");
    let (none, all) = run(2, &mut client);
    let st = client.stats().expect("stats");
    assert!(none.is_empty(), "nothing reached a: {none:?}");
    assert_eq!(all.len(), usize::from(flows), "b took every flow");
    assert_eq!(
        st.groups["pool"].rehashed - before.groups["pool"].rehashed,
        on_a.len() as u64,
        "exactly a's flows moved"
    );
    assert_eq!(
        st.targets["a"].enqueued, before.targets["a"].enqueued,
        "nothing offered to a"
    );

    // a returns: each flow goes back where it was, and nothing is rehashed.
    route_to(&t.lab, "a", true);
    wait_until_up(&mut client, "a");
    let before = client.stats().expect("stats");
    assert_eq!(before.groups["pool"].members_up, 2);
    let (back_a, back_b) = run(3, &mut client);
    assert_eq!(
        (back_a, back_b),
        (on_a, on_b),
        "every flow on its first member again"
    );
    let st = client.stats().expect("stats");
    assert_eq!(
        st.groups["pool"].rehashed, before.groups["pool"].rehashed,
        "no flow moved"
    );
    for (name, x) in &st.targets {
        assert_reconciles(name, x);
    }
}

const LIMITS: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
@FILTER@
[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/cap/feed.pcapng"

[[session]]
name = "s"
source = "feed"
filter = "ids"
targets = ["cap"]
@LIMIT@
"#;

/// Starts the daemon in `lab`'s src namespace on `text` with ACCEPT_ALL as
/// its `@FILTER@` (and `dir` as `@DIR@`), and connects to its control socket.
fn accept_all_daemon(lab: &Lab, dir: &TempDir, text: &str) -> (DaemonProcess, Client) {
    let text = text.replace("@FILTER@", ACCEPT_ALL);
    let (daemon, _) = common::start_daemon(BIN, &lab.src, dir, &text);
    let client = Client::connect(&daemon.control).expect("control socket");
    (daemon, client)
}

/// `count` 1000-byte lab frames numbered from `first`.
fn kilo_frames(first: u32, count: u32) -> Vec<Vec<u8>> {
    (first..first + count)
        .map(|i| traffic::frame(traffic::SHAPES[1], i, 1000))
        .collect()
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_full_disk_drops_whole_buffers_counts_them_and_writing_resumes() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-diskfull").expect("temp dir");
    let fs = lab::Tmpfs::mount(dir.path().join("cap"), "2m").expect("a 2 MiB tmpfs");
    // Leave about 400 KiB: room for ~350 of the 1,000 copies below.
    let ballast = fs.path().join("ballast");
    let leave = 400 << 10;
    std::fs::write(
        &ballast,
        vec![0u8; (fs.free().expect("statvfs") - leave) as usize],
    )
    .expect("ballast");
    let (daemon, mut client) = accept_all_daemon(&lab, &dir, &LIMITS.replace("@LIMIT@", ""));
    let file = fs.path().join("feed.pcapng");
    let settled = |st: &mirror_user::dataplane::stats::Stats, n: u64| {
        st.sources["feed"].received == n
            && st.targets["cap"].enqueued == n
            && st.targets["cap"].queued == 0
    };

    // Round 1: 1,000 KB of copies into 400 KiB of space, paced over half a
    // second so the writer flushes several buffers (one per 100 ms).
    let first = kilo_frames(0, 1000);
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(first), 2_000).expect("send");
    let st = wait_for(&mut client, "round 1 written or dropped", |st| {
        settled(st, sent)
    });
    let cap = &st.targets["cap"];
    assert_reconciles("cap", cap);
    let full = cap.dropped["disk_full"];
    assert!(full > 0, "the disk filled: {cap:?}");
    assert!(cap.sent_packets > 0, "some copies fit: {cap:?}");
    assert_eq!(cap.dropped_total(), full, "{:?}", cap.dropped);
    // Only whole blocks: the file parses to exactly the copies counted sent.
    let records = read_pcapng(&file);
    assert_eq!(records.len() as u64, cap.sent_packets);

    // Space returns: the next copies are written, none dropped.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let second = kilo_frames(5000, 200);
    let more = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(second), 2_000).expect("send");
    let st2 = wait_for(&mut client, "round 2 written", |st| {
        settled(st, sent + more)
    });
    let cap2 = &st2.targets["cap"];
    assert_reconciles("cap", cap2);
    assert_eq!(cap2.dropped["disk_full"], full, "no new disk_full");
    assert_eq!(cap2.sent_packets, cap.sent_packets + more);
    let records = read_pcapng(&file);
    assert_eq!(records.len() as u64, cap2.sent_packets);
    let seqs: Vec<u32> = records
        .iter()
        .filter_map(|r| traffic::seq_of(&r.data))
        .collect();
    assert_eq!(
        seqs[seqs.len() - more as usize..],
        (5000..5200).collect::<Vec<u32>>()[..],
        "round 2 is in the file, in order, after round 1's survivors"
    );
    assert!(seqs[..seqs.len() - more as usize].iter().all(|&s| s < 1000));
    drop(daemon);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_rate_limit_passes_its_rate_and_counts_every_frame_over_it() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-ratelimit").expect("temp dir");
    std::fs::create_dir(dir.path().join("cap")).expect("capture directory");
    let text = LIMITS.replace("@LIMIT@", "rate_limit_pps = 500\n");
    let (daemon, mut client) = accept_all_daemon(&lab, &dir, &text);
    // 3,000 frames at 5,000 a second: ten times the limit for 0.6 s.
    let frames = kilo_frames(0, 3000);
    let started = Instant::now();
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 5_000).expect("send");
    let st = wait_for(&mut client, "every frame mirrored or limited", |st| {
        st.sources["feed"].received == sent
            && st.targets["cap"].enqueued == sent
            && st.targets["cap"].queued == 0
    });
    let took = started.elapsed().as_secs_f64();
    let (s, cap) = (&st.sessions["s"], &st.targets["cap"]);
    assert_reconciles("cap", cap);
    assert_eq!(s.matched, sent);
    assert_eq!(s.mirrored + s.rate_limited, sent, "{s:?}");
    assert_eq!(cap.dropped["rate_limited"], s.rate_limited);
    assert_eq!(cap.sent_packets, s.mirrored);
    assert_eq!(cap.dropped_total(), s.rate_limited, "{:?}", cap.dropped);
    // A burst of a tenth of a second's tokens, then 500 a second.
    let most = 50.0 + 500.0 * took + 1.0;
    assert!(
        (s.mirrored as f64) <= most && s.mirrored >= 250,
        "{} mirrored in {took:.2} s (at most {most:.0})",
        s.mirrored
    );
    drop(daemon);
    let records = read_pcapng(&dir.path().join("cap/feed.pcapng"));
    assert_eq!(records.len() as u64, s.mirrored);
}

const SMALL_QUEUE: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
umem_frames = 512
ring_size = 512
share_umem = true
@FILTER@
[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"
queue_size = 16

[[session]]
name = "s"
source = "feed"
filter = "ids"
targets = ["ids0"]
"#;

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_target_sharing_the_sources_umem_overflows_only_its_own_queue() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-shared").expect("temp dir");
    let (daemon, mut client) = accept_all_daemon(&lab, &dir, SMALL_QUEUE);
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    // Bursts far over a 16-copy queue, in rounds the 512-frame RX ring holds.
    let mut sent = 0;
    for round in 0..10u32 {
        let frames = kilo_frames(round * 400, 400);
        sent += lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 0).expect("send");
        wait_for(&mut client, "the round to be read", |st| {
            st.sources["feed"].received == sent && st.targets["ids0"].queued == 0
        });
    }
    let st = client.stats().expect("stats");
    let (src, t) = (&st.sources["feed"], &st.targets["ids0"]);
    // The source lost nothing: lending never takes frames from its RX queue.
    assert_eq!(src.dropped_total(), 0, "{:?}", src.dropped);
    assert_eq!(src.mirrored, sent);
    assert_reconciles("ids0", t);
    assert_eq!(t.enqueued, sent);
    assert!(t.dropped["queue_full"] > 0, "the queue overflowed: {t:?}");
    assert_eq!(t.dropped_total(), t.dropped["queue_full"]);
    assert_eq!(t.shared_umem, t.sent_packets, "every copy sent uncopied");
    let got = sink.finish();
    assert_eq!(got.len() as u64, t.sent_packets);
    // Each delivered frame is the one received, byte for byte.
    let want: BTreeMap<u32, Vec<u8>> = (0..10 * 400)
        .map(|i| (i, traffic::frame(traffic::SHAPES[1], i, 1000)))
        .collect();
    for f in &got {
        let seq = traffic::seq_of(f).expect("a lab frame");
        assert_eq!(Some(f), want.get(&seq), "frame {seq}");
    }
    drop(daemon);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn share_umem_false_copies_every_frame_into_the_targets_own_umem() {
    require_root!();
    copies_every_frame_into_the_targets_own_umem("share_umem = false", "e2e-noshare");
}

/// The default, "auto", shares only between zero-copy devices: a veth has
/// no AF_XDP zero-copy, so every frame is copied, and the log says why.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn share_umem_auto_copies_on_devices_without_zero_copy_and_says_why() {
    require_root!();
    let log = copies_every_frame_into_the_targets_own_umem("", "e2e-autoshare");
    assert!(
        log.contains(
            "not sharing the target's UMEM (share_umem = \"auto\"): AF_XDP zero-copy is not available"
        ),
        "{log}"
    );
}

/// Runs 500 frames through a tap source whose `share_umem` line is
/// `share`: each is copied into the target's UMEM (none lent), sent and
/// delivered byte-identical. Returns the daemon's log. Needs root.
fn copies_every_frame_into_the_targets_own_umem(share: &str, tag: &str) -> String {
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new(tag).expect("temp dir");
    let text = SMALL_QUEUE
        .replace("queue_size = 16", "queue_size = 1024")
        .replace("share_umem = true", share);
    let (daemon, mut client) = accept_all_daemon(&lab, &dir, &text);
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(kilo_frames(0, 500)), 20_000)
        .expect("send");
    let st = wait_for(&mut client, "every copy sent", |st| {
        st.targets["ids0"].sent_packets == sent && st.targets["ids0"].queued == 0
    });
    assert_eq!(st.targets["ids0"].shared_umem, 0);
    assert_reconciles("ids0", &st.targets["ids0"]);
    assert_eq!(by_seq(&sink.finish()), by_seq(&kilo_frames(0, 500)));
    let log = daemon.log_text();
    assert!(!log.contains("RX queue shares the interface target's UMEM"));
    log
}
