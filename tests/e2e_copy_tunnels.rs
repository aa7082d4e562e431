//! End to end, in network namespaces: copy mode's kernel tunnels. A routed
//! copy-mode source mirrors UDP both ways to a VXLAN, a GRE and two ERSPAN
//! collectors; its tcx programs clone each frame to the source's relay (a
//! TAP device the daemon holds), whose program encapsulates it and sends it
//! to the collector. No copy goes through the ring buffer or userspace.
//!
//! ```text
//!  ns gen                ns rtr (mirror runs here)                 ns sink
//!  g0 10.31.1.1 ──veth── m0 10.31.1.2 [copy: tcx]  o0 10.31.2.2 ──veth── k0 10.31.2.1
//!                        mirror-r<m0> (relay TAP, tc_relay)
//!                        c0 10.31.3.1 ──veth── x0 10.31.3.2 (vx0: Linux vxlan, VNI 42)   ns col
//!                        c1 10.31.4.1 ──veth── y0 10.31.4.2 (GRE collector)
//! ```

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_reconciles, assert_source_reconciles, ipv4_payload, udp6_checksum_errors,
    udp6_checksum_ok, wait_for, Window,
};
use mirror_user::config::{ErspanVersion, Granularity};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::kernel;
use mirror_user::lab::{self, Capture, Netns, TempDir};
use mirror_user::target::encap::{self, GRE_PROTO_TEB};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0x31, 0, 1];
const MON_MAC: [u8; 6] = [0x02, 0, 0, 0x31, 0, 2];
const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0x32, 0, 2];
const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0x32, 0, 1];
const X_MAC: [u8; 6] = [0x02, 0, 0, 0x33, 0, 2];
const Y_MAC: [u8; 6] = [0x02, 0, 0, 0x34, 0, 2];
const GEN_IP: [u8; 4] = [10, 31, 1, 1];
const SINK_IP: [u8; 4] = [10, 31, 2, 1];
const X_IP: Ipv4Addr = Ipv4Addr::new(10, 31, 3, 2);
const Y_IP: Ipv4Addr = Ipv4Addr::new(10, 31, 4, 2);
const TO_SINK: u16 = 7000;
const TO_GEN: u16 = 7001;
/// Frame sizes cycled through: small to full-size.
const SIZES: [usize; 5] = [64, 200, 577, 1000, 1514];

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The copy tests share the machine's two CPUs; one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Routed {
    gen: Netns,
    rtr: Netns,
    sink: Netns,
    col: Netns,
    dir: TempDir,
}

impl Routed {
    fn new(tag: &str) -> Routed {
        let r = Routed {
            gen: Netns::new("gen").expect("netns"),
            rtr: Netns::new("rtr").expect("netns"),
            sink: Netns::new("sink").expect("netns"),
            col: Netns::new("col").expect("netns"),
            dir: TempDir::new(tag).expect("temp dir"),
        };
        lab::wire(&r.gen, "g0", "10.31.1.1", &r.rtr, "m0", "10.31.1.2", 1500).expect("veth");
        lab::wire(&r.rtr, "o0", "10.31.2.2", &r.sink, "k0", "10.31.2.1", 1500).expect("veth");
        // The VXLAN collector's link carries whole copies of 1514-byte frames.
        lab::wire(&r.rtr, "c0", "10.31.3.1", &r.col, "x0", "10.31.3.2", 9000).expect("veth");
        lab::wire(&r.rtr, "c1", "10.31.4.1", &r.col, "y0", "10.31.4.2", 1500).expect("veth");
        for (ns, dev, m) in [
            (&r.gen, "g0", GEN_MAC),
            (&r.rtr, "m0", MON_MAC),
            (&r.rtr, "o0", OUT_MAC),
            (&r.sink, "k0", SINK_MAC),
            (&r.col, "x0", X_MAC),
            (&r.col, "y0", Y_MAC),
        ] {
            ns.ip(&["link", "set", dev, "address", &mac(m)])
                .expect("set MAC");
        }
        r.gen
            .ip(&["route", "add", "10.31.2.0/24", "via", "10.31.1.2"])
            .expect("route");
        r.sink
            .ip(&["route", "add", "10.31.1.0/24", "via", "10.31.2.2"])
            .expect("route");
        for (ns, ip, m, dev) in [
            (&r.rtr, "10.31.1.1", GEN_MAC, "m0"),
            (&r.rtr, "10.31.2.1", SINK_MAC, "o0"),
            (&r.rtr, "10.31.3.2", X_MAC, "c0"),
            (&r.rtr, "10.31.4.2", Y_MAC, "c1"),
            (&r.gen, "10.31.1.2", MON_MAC, "g0"),
            (&r.sink, "10.31.2.2", OUT_MAC, "k0"),
        ] {
            ns.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .expect("permanent neighbour");
        }
        r.rtr
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .expect("ip_forward");
        lab::vxlan_decap(&r.col, "vx0", 42, "10.31.3.2", "x0").expect("vxlan device");
        r
    }

    fn attached(&self, dev: &str) -> kernel::Attached {
        let dev = dev.to_string();
        self.rtr
            .run(move || Ok(kernel::attached(&dev)?))
            .expect("querying a device")
    }

    /// The relay's name: `mirror-r` and m0's ifindex.
    fn relay(&self) -> String {
        let i = self
            .rtr
            .run(|| Ok(kernel::ifindex("m0")?))
            .expect("m0's ifindex");
        kernel::relay::relay_name(i)
    }

    fn has_device(&self, name: &str) -> bool {
        let name = name.to_string();
        self.rtr
            .run(move || Ok(kernel::ifindex(&name).is_ok()))
            .expect("looking a device up")
    }
}

/// Frame `seq` of a direction: UDP from the generator to the sink
/// (`to_sink`) or back, carrying the lab marker and sequence number.
fn routed_frame(to_sink: bool, seq: u32, size: usize) -> Vec<u8> {
    let (smac, dmac, sip, dip, dport) = if to_sink {
        (GEN_MAC, MON_MAC, GEN_IP, SINK_IP, TO_SINK)
    } else {
        (SINK_MAC, OUT_MAC, SINK_IP, GEN_IP, TO_GEN)
    };
    let mut payload = lab::traffic::MARKER.to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.resize(size - 14 - 20 - 8, (seq % 251) as u8);
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(sip, dip, 64)
        .udp(40000, dport);
    let mut out = Vec::with_capacity(size);
    b.write(&mut out, &payload).expect("write a frame");
    out
}

/// Receives UDP datagrams on `addr` in `ns` until `n` arrived (or 10 s of
/// silence).
fn udp_sink(ns: &Netns, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let sock = ns
        .run(move || Ok(std::net::UdpSocket::bind(addr)?))
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::thread::spawn(move || {
        let (mut got, mut buf) = (Vec::new(), vec![0u8; 2048]);
        while got.len() < n {
            match sock.recv(&mut buf) {
                Ok(k) => got.push(buf[..k].to_vec()),
                Err(_) => break,
            }
        }
        got
    })
}

/// `frame` with an 802.1Q tag (`tci`) after its MAC addresses.
fn tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// The IPv4 header and datagram as routed: the same bytes as sent but for
/// the TTL (one less) and the header checksum.
fn forwarded_unchanged(sent: &[u8], forwarded: &[u8]) -> bool {
    if sent.len() != forwarded.len() || forwarded[14 + 8] != sent[14 + 8] - 1 {
        return false;
    }
    let strip = |f: &[u8]| {
        let mut ip = f[14..].to_vec();
        ip[8] = 0;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip
    };
    strip(sent) == strip(forwarded)
}

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "mon"
interface = "m0"
mode = "copy"
direction = "both"

[[filter]]
name = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "7000"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"
destination_port = "7001"

[[target]]
name = "vx"
kind = "vxlan"
remote = "10.31.3.2"
mtu = 9000

[[target]]
name = "gre"
kind = "gre"
remote = "10.31.4.2"
key = 7

[[target]]
name = "er2"
kind = "erspan"
remote = "10.31.3.2"

[[target]]
name = "er3"
kind = "erspan"
remote = "10.31.3.2"
version = 3
granularity = "100ns"

[[session]]
name = "tun"
source = "mon"
filter = "udp"
targets = ["vx", "gre", "er2", "er3"]
vni = 42
path = "kernel"
"#;

const TUNNELS: [&str; 4] = ["vx", "gre", "er2", "er3"];

/// Polls (bounded, 10 s) until the daemon's log says `text`.
fn wait_log(daemon: &lab::DaemonProcess, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no `{text}`:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until two snapshots 150 ms apart are equal and `done` holds.
fn wait_settled(client: &mut Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = client.stats().expect("stats");
        std::thread::sleep(Duration::from_millis(150));
        let b = client.stats().expect("stats");
        if a == b && done(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {b:#?}"
        );
    }
}

/// The outer packets of one capture, as (kind, IP payload): "vx" for UDP,
/// else the GRE protocol's target kind.
fn outer_packets(frames: &[Vec<u8>], dst: Ipv4Addr) -> Vec<(&'static str, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(d, _, _)| *d == dst)
        .filter_map(|(_, proto, p)| match proto {
            17 => Some(("vx", p)),
            47 => {
                let d = encap::decode_gre(&p)?;
                let kind = match d.erspan.map(|e| e.version) {
                    None => "gre",
                    Some(ErspanVersion::Two) => "er2",
                    Some(ErspanVersion::Three) => "er3",
                };
                Some((kind, p))
            }
            _ => None,
        })
        .collect()
}

/// Copy-mode sessions whose targets are VXLAN, GRE and ERSPAN tunnels are
/// served in the kernel: every frame mirrored both ways reaches each
/// collector encapsulated as the tap-mode tunnel programs do it (the Linux
/// vxlan device decapsulates each copy byte for byte; GRE and ERSPAN II/III
/// decoded field by field, ERSPAN III with its direction and time), cut to
/// each tunnel's mtu and counted `truncated`; VLAN-tagged frames (whose tag
/// the kernel holds outside the frame at tcx) reach the collectors with
/// their tag; every production frame is routed on unchanged; every counter
/// reconciles exactly; and a SIGKILLed daemon leaves no program on m0 and no
/// relay device.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_tunnels_encapsulate_in_the_kernel_and_reconcile() {
    require_root!();
    let _serial = one_at_a_time();
    let r = Routed::new("copy-tun");
    let (mut daemon, _) = common::start_daemon(BIN, &r.rtr, &r.dir, CONFIG);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let relay = r.relay();
    assert!(r.has_device(&relay), "the relay device {relay} exists");
    let on_m0 = r.attached("m0");
    assert_eq!(
        (
            on_m0.xdp.len(),
            on_m0.tcx_ingress.len(),
            on_m0.tcx_egress.len()
        ),
        (0, 1, 1),
        "{on_m0:?}"
    );
    let on_relay = r.attached(&relay);
    assert_eq!(
        on_relay.tcx_egress.len(),
        1,
        "tc_relay on {relay}: {on_relay:?}"
    );

    const N: u32 = 500;
    // And 20 VLAN-tagged frames in (VLAN 100, priority 5): mirrored, not
    // routed (m0 has no VLAN device).
    const T: u32 = 20;
    const TCI: u16 = 5 << 13 | 100;
    let n = 2 * u64::from(N) + u64::from(T);
    let to_sink: Vec<Vec<u8>> = (0..N)
        .map(|i| routed_frame(true, i, SIZES[i as usize % SIZES.len()]))
        .collect();
    let to_gen: Vec<Vec<u8>> = (0..N)
        .map(|i| routed_frame(false, i, SIZES[(i as usize + 2) % SIZES.len()]))
        .collect();
    let vlan: Vec<Vec<u8>> = (0..T)
        .map(|i| {
            tagged(
                &routed_frame(true, 10_000 + i, [200, 1000][i as usize % 2]),
                TCI,
            )
        })
        .collect();
    let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), N as usize);
    let gen_rx = udp_sink(&r.gen, SocketAddr::from((GEN_IP, TO_GEN)), N as usize);
    let outer_x = Capture::start(&r.col, "x0").expect("capture x0");
    let outer_y = Capture::start(&r.col, "y0").expect("capture y0");
    let inner = Capture::start(&r.col, "vx0").expect("capture vx0");
    let at_sink = Capture::start(&r.sink, "k0").expect("capture k0");
    let at_gen = Capture::start(&r.gen, "g0").expect("capture g0");
    let mut window = Window::open();
    let sent = lab::send_frames(&r.gen, "g0", Arc::new(to_sink.clone()), 5_000).expect("send");
    assert_eq!(sent, u64::from(N));
    let sent = lab::send_frames(&r.gen, "g0", Arc::new(vlan.clone()), 5_000).expect("send");
    assert_eq!(sent, u64::from(T));
    let sent = lab::send_frames(&r.sink, "k0", Arc::new(to_gen.clone()), 5_000).expect("send");
    assert_eq!(sent, u64::from(N));
    let st = wait_settled(&mut client, "every copy accounted", |st| {
        TUNNELS.iter().all(|t| {
            let t = &st.targets[*t];
            t.sent_packets + t.dropped_total() == n
        })
    });
    window.close();

    // Production: every frame routed on, unchanged.
    let datagram = |f: &[u8]| f[14 + 20 + 8..].to_vec();
    assert_eq!(
        sink_rx.join().expect("sink reader"),
        to_sink.iter().map(|f| datagram(f)).collect::<Vec<_>>(),
        "the sink got every datagram, in order, unchanged"
    );
    assert_eq!(
        gen_rx.join().expect("generator reader"),
        to_gen.iter().map(|f| datagram(f)).collect::<Vec<_>>(),
        "the generator got every datagram back, in order, unchanged"
    );
    let forwarded_in = at_sink.finish();
    let forwarded_out: Vec<Vec<u8>> = at_gen
        .finish()
        .into_iter()
        .filter(|f| f[12..14] == [0x08, 0x00])
        .collect();
    assert_eq!(forwarded_in.len(), N as usize, "frames at k0");
    assert_eq!(forwarded_out.len(), N as usize, "frames at g0");
    let bytes = |v: &[Vec<u8>]| v.iter().map(|f| f.len() as u64).sum::<u64>();
    assert_eq!(bytes(&forwarded_in), bytes(&to_sink), "bytes at k0");
    for (sent, fwd) in to_sink.iter().zip(&forwarded_in) {
        assert!(forwarded_unchanged(sent, fwd), "routed on unchanged");
    }
    for (sent, fwd) in to_gen.iter().zip(&forwarded_out) {
        assert!(forwarded_unchanged(sent, fwd), "routed back unchanged");
    }

    // What m0 saw: arriving as sent, leaving as routed out.
    let seen: Vec<(bool, Vec<u8>)> = to_sink
        .iter()
        .chain(&vlan)
        .map(|f| (false, f.clone()))
        .chain(forwarded_out.iter().map(|f| (true, f.clone())))
        .collect();
    let mut want: Vec<Vec<u8>> = seen.iter().map(|(_, f)| f.clone()).collect();
    want.sort();
    // The Linux vxlan device decapsulated every copy, whole, byte for byte.
    let mut decap = inner.finish();
    decap.sort();
    assert_eq!(decap.len(), want.len(), "frames vx0 decapsulated");
    assert!(decap == want, "every VXLAN copy byte-identical, each once");

    let mut outer = outer_packets(&outer_x.finish(), X_IP);
    outer.extend(outer_packets(&outer_y.finish(), Y_IP));
    let of = |kind: &str| -> Vec<Vec<u8>> {
        outer
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, p)| p.clone())
            .collect()
    };
    // The flow hash of the frame as on the wire: tcx sees a tagged frame
    // without its tag in the data, and hashes with the tag the kernel took
    // out (skb->vlan_tci), as XDP does with it in the data.
    let hashes = common::kernel_flow_hashes(want.iter().map(|f| f.as_slice()));
    for udp in of("vx") {
        let h = encap::decode_vxlan(&udp).expect("a VXLAN header");
        assert_eq!((h.vni, h.dest_port), (42, 4789));
        let i = want
            .iter()
            .position(|f| f[..] == udp[16..])
            .expect("a copy of a frame m0 saw");
        assert_eq!(
            h.source_port,
            encap::vxlan_source_port(hashes[i]),
            "the source port from the flow hash"
        );
        assert_eq!(usize::from(h.udp_len), udp.len(), "UDP length");
    }
    for (kind, max) in [("gre", 1500 - 28), ("er2", 1500 - 36), ("er3", 1500 - 40)] {
        let packets = of(kind);
        assert_eq!(packets.len() as u64, n, "{kind}: packets at the collector");
        let mut seqs = BTreeSet::new();
        for p in &packets {
            let d = encap::decode_gre(p).expect("a GRE header");
            let copy = &p[d.payload..];
            let (egress, full) = seen
                .iter()
                .find(|(_, f)| f.len() >= copy.len() && f[..copy.len()] == *copy)
                .expect("a copy of a frame m0 saw");
            assert_eq!(
                copy.len(),
                full.len().min(max),
                "{kind}: cut to the mtu only"
            );
            match kind {
                "gre" => assert_eq!(
                    (d.protocol, d.key, d.sequence),
                    (GRE_PROTO_TEB, Some(7), None)
                ),
                _ => {
                    let h = d.erspan.expect("an ERSPAN header");
                    assert_eq!(h.session_id, 42);
                    assert_eq!(h.truncated, full.len() > max, "{kind}: T bit");
                    let is_tagged = full[12..14] == [0x81, 0x00];
                    assert_eq!(
                        (h.encap, h.vlan, h.cos),
                        if is_tagged { (3, 100, 5) } else { (0, 0, 0) },
                        "{kind}: VLAN, COS and En/BSO"
                    );
                    assert!(seqs.insert(h.sequence), "{kind}: sequence numbers unique");
                    if kind == "er3" {
                        assert_eq!(h.granularity, Granularity::Nanos100);
                        assert_eq!(h.egress, *egress, "er3: the direction m0 saw it in");
                        window.assert_holds_erspan("ERSPAN III copy", h.timestamp, 100);
                    }
                }
            }
        }
        if kind != "gre" {
            assert_eq!(
                seqs,
                (0..n as u32).collect::<BTreeSet<_>>(),
                "{kind}: sequence numbers 0..n"
            );
        }
    }
    assert_eq!(of("vx").len() as u64, n, "vx: packets at the collector");

    // Counters: exact, counted where it happened.
    let src = &st.sources["mon"];
    assert_source_reconciles("mon", src);
    assert_eq!((src.matched, src.mirrored), (n, n));
    for (dir, d) in &src.directions {
        let m = u64::from(N) + if dir == "ingress" { u64::from(T) } else { 0 };
        assert_eq!(
            (d.matched, d.cloned, d.copied),
            (m, m, 0),
            "{dir}: every match cloned in the kernel, none through the ring"
        );
    }
    let sess = &st.sessions["tun"];
    assert_eq!(sess.path, "kernel");
    assert_eq!((sess.matched, sess.mirrored), (n, n));
    let longer = |m: usize| want.iter().filter(|f| f.len() > m).count() as u64;
    for (name, max) in [
        ("vx", 9000 - 36),
        ("gre", 1500 - 28),
        ("er2", 1500 - 36),
        ("er3", 1500 - 40),
    ] {
        let t = &st.targets[name];
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
        assert_eq!(
            (t.enqueued, t.sent_packets, t.kernel_path),
            (n, n, n),
            "{name}"
        );
        assert_eq!(t.truncated, longer(max), "{name}: cut to the tunnel's mtu");
        let mirrored: u64 = want.iter().map(|f| f.len().min(max) as u64).sum();
        assert_eq!(t.sent_bytes, mirrored, "{name}: the copies' bytes");
    }
    let log = daemon.log_text();
    assert!(
        log.contains("relay device created") && log.contains("session served in the kernel"),
        "the log names the relay and the path:\n{log}"
    );

    // SIGKILL: the links and the relay die with the daemon.
    daemon.signal(libc::SIGKILL);
    daemon
        .wait(Duration::from_secs(10))
        .expect("the daemon dies");
    assert_eq!(
        r.attached("m0"),
        kernel::Attached::default(),
        "fail-open detach"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.has_device(&relay) {
        assert!(Instant::now() < deadline, "{relay} left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), 50);
    let after: Vec<Vec<u8>> = (N..N + 50).map(|i| routed_frame(true, i, 300)).collect();
    lab::send_frames(&r.gen, "g0", Arc::new(after), 5_000).expect("send");
    assert_eq!(
        sink_rx.join().expect("sink reader").len(),
        50,
        "traffic flows on"
    );
}

/// The GRE collector's route is deleted: its copies are dropped in the
/// relay, counted `down` (the other collectors carry on); once the route is
/// back they are sent again. Every copy is accounted for, and a clean stop
/// leaves neither program nor relay.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_copy_mode_tunnel_whose_route_goes_counts_down_and_resumes() {
    require_root!();
    let _serial = one_at_a_time();
    let r = Routed::new("copy-tun-route");
    let (mut daemon, _) = common::start_daemon(BIN, &r.rtr, &r.dir, CONFIG);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let send = |first: u32| {
        let frames: Vec<Vec<u8>> = (first..first + 200)
            .map(|i| routed_frame(true, i, 300))
            .collect();
        let rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), 200);
        assert_eq!(
            lab::send_frames(&r.gen, "g0", Arc::new(frames), 5_000).expect("send"),
            200
        );
        assert_eq!(rx.join().expect("sink").len(), 200, "production flows");
    };
    let settled = |client: &mut Client, total: u64| -> Stats {
        wait_for(client, "every copy counted", |st| {
            TUNNELS.iter().all(|t| {
                let t = &st.targets[*t];
                t.sent_packets + t.dropped_total() == total
            })
        })
    };
    send(0);
    let st = settled(&mut client, 200);
    assert_eq!(st.targets["gre"].sent_packets, 200);

    r.rtr
        .ip(&["route", "del", "10.31.4.0/24", "dev", "c1"])
        .expect("route del");
    wait_log(&daemon, "kernel tunnel down");
    send(200);
    let st = settled(&mut client, 400);
    let gre = &st.targets["gre"];
    assert_reconciles("gre", gre);
    assert_eq!(gre.sent_packets, 200, "{:?}", gre.dropped);
    assert_eq!(gre.dropped.get("down"), Some(&200), "{:?}", gre.dropped);
    for name in ["vx", "er2", "er3"] {
        assert_eq!(st.targets[name].sent_packets, 400, "{name} carries on");
    }

    r.rtr
        .ip(&["route", "add", "10.31.4.0/24", "dev", "c1"])
        .expect("route add");
    wait_log(&daemon, "headers rewritten");
    let got = Capture::start(&r.col, "y0").expect("capture");
    send(400);
    let st = settled(&mut client, 600);
    let gre = &st.targets["gre"];
    assert_reconciles("gre", gre);
    assert_eq!((gre.sent_packets, gre.kernel_path), (400, 400));
    assert_eq!(gre.dropped.get("down"), Some(&200));
    let back = outer_packets(&got.finish(), Y_IP)
        .iter()
        .filter(|(k, _)| *k == "gre")
        .count();
    assert_eq!(back, 200, "the collector gets the copies again");
    assert_source_reconciles("mon", &st.sources["mon"]);
    let relay = r.relay();
    assert!(r.has_device(&relay));
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("daemon stops")
        .success());
    assert!(!r.has_device(&relay), "a clean stop deletes the relay too");
    assert_eq!(r.attached("m0"), kernel::Attached::default());
}

/// The IPv6 VXLAN collector of `VXLAN6`: link c6 - z0, device vx6 (VNI 43).
fn vxlan6_collector(r: &Routed) {
    lab::wire6(
        &r.rtr,
        "c6",
        "fd00:31:5::1",
        &r.col,
        "z0",
        "fd00:31:5::2",
        1500,
    )
    .expect("veth");
    lab::vxlan_decap(&r.col, "vx6", 43, "fd00:31:5::2", "z0").expect("vxlan device");
}

/// [`vxlan6_collector`] with c6's transmit checksum offload off: the kernel
/// completes every checksum a clone left to the device in software before
/// it leaves.
fn collector_checksumming_in_software(r: &Routed) {
    vxlan6_collector(r);
    r.rtr
        .run(|| {
            kernel::netdev::set_tx_csum("c6", false)
                .ok_or_else(|| anyhow::anyhow!("ETHTOOL_STXCSUM on c6 failed"))
        })
        .expect("transmit checksum offload off");
}

/// Sends each payload from a UDP socket in ns gen to the sink (checksums
/// left to the device: the clones are CHECKSUM_PARTIAL).
fn send_from_socket(r: &Routed, payloads: &[Vec<u8>]) {
    let to_send = payloads.to_vec();
    r.gen
        .run(move || {
            let sock = std::net::UdpSocket::bind(SocketAddr::from((GEN_IP, 0)))?;
            for p in &to_send {
                sock.send_to(p, SocketAddr::from((SINK_IP, TO_SINK)))?;
            }
            Ok(())
        })
        .expect("send from a socket");
}

/// Datagram `i` of a socket test: the lab marker and `i`, then `fill` up
/// to `len` bytes.
fn marked_datagram(i: usize, len: usize, fill: u8) -> Vec<u8> {
    let mut p = lab::traffic::MARKER.to_vec();
    p.extend_from_slice(&(i as u32).to_be_bytes());
    p.resize(len, fill);
    p
}

/// Sends `payloads` from a socket (see [`send_from_socket`]) while the
/// daemon behind `client` mirrors them to its `vx6` target, and waits until
/// it has accounted for every copy. Production must reach the sink
/// unchanged, and every copy must be sent on the kernel path, none dropped
/// (`what` names the case in a failure). Returns the settled stats.
fn send_and_settle(r: &Routed, client: &mut Client, payloads: &[Vec<u8>], what: &str) -> Stats {
    let k = payloads.len();
    let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), k);
    send_from_socket(r, payloads);
    let st = wait_settled(client, "every copy accounted", |st| {
        let t = &st.targets["vx6"];
        t.sent_packets + t.dropped_total() == k as u64
    });
    assert_eq!(sink_rx.join().expect("sink reader"), payloads, "production");
    let t = &st.targets["vx6"];
    assert_reconciles("vx6", t);
    assert_eq!(t.dropped_total(), 0, "{what}: {:?}", t.dropped);
    assert_eq!((t.sent_packets, t.kernel_path), (k as u64, k as u64));
    st
}

/// One VXLAN collector over IPv6 (link c6 - z0), whole copies or
/// `packet_length` ones; `path` auto.
const VXLAN6: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "mon"
interface = "m0"
mode = "copy"
direction = "both"

[[filter]]
name = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "7000"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"
destination_port = "7001"

[[target]]
name = "vx6"
kind = "vxlan"
remote = "fd00:31:5::2"

[[session]]
name = "tun6"
source = "mon"
filter = "udp"
targets = ["vx6"]
vni = 43
packet_length = @SNAP@
"#;

/// Copy mode's relay computes VXLAN over IPv6's mandatory UDP checksum over
/// the whole copy: with `path = "auto"` the session is served in the kernel,
/// and a Linux vxlan device with default settings (it verifies the checksum
/// and takes no zero one) decapsulates every copy of both directions
/// byte-identical, at 64 bytes, ~1400 bytes, odd lengths, cut to the
/// tunnel's mtu, and cut to an odd `packet_length`; every counter exact.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_ipv6_vxlan_is_encapsulated_in_the_kernel_with_a_checksum_linux_accepts() {
    require_root!();
    let _serial = one_at_a_time();
    let r = Routed::new("copy-vx6");
    let (from, to): (Ipv6Addr, Ipv6Addr) = (
        "fd00:31:5::1".parse().expect("ip"),
        "fd00:31:5::2".parse().expect("ip"),
    );
    vxlan6_collector(&r);
    const SIZES6: [usize; 5] = [64, 65, 1400, 1401, 1514];
    // 1500 - 40 (IPv6) - 16 (UDP + VXLAN): the longest copy sent whole.
    const MAX: usize = 1444;
    const N: u32 = 200;
    let n = 2 * u64::from(N);
    for snap in [0usize, 99] {
        let (mut daemon, _) = common::start_daemon(
            BIN,
            &r.rtr,
            &r.dir,
            &VXLAN6.replace("@SNAP@", &snap.to_string()),
        );
        let mut client = Client::connect(&daemon.control).expect("control socket");
        let first = if snap == 0 { 0 } else { N };
        let to_sink: Vec<Vec<u8>> = (first..first + N)
            .map(|i| routed_frame(true, i, SIZES6[i as usize % SIZES6.len()]))
            .collect();
        let to_gen: Vec<Vec<u8>> = (first..first + N)
            .map(|i| routed_frame(false, i, SIZES6[(i as usize + 2) % SIZES6.len()]))
            .collect();
        let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), N as usize);
        let gen_rx = udp_sink(&r.gen, SocketAddr::from((GEN_IP, TO_GEN)), N as usize);
        let outer = Capture::start(&r.col, "z0").expect("capture z0");
        let inner = Capture::start(&r.col, "vx6").expect("capture vx6");
        let at_gen = Capture::start(&r.gen, "g0").expect("capture g0");
        let errors_before = udp6_checksum_errors(&r.col);
        for (ns, dev, frames) in [(&r.gen, "g0", &to_sink), (&r.sink, "k0", &to_gen)] {
            let sent = lab::send_frames(ns, dev, Arc::new(frames.clone()), 5_000).expect("send");
            assert_eq!(sent, u64::from(N));
        }
        let st = wait_settled(&mut client, "every copy accounted", |st| {
            let t = &st.targets["vx6"];
            t.sent_packets + t.dropped_total() == n
        });
        assert_eq!(sink_rx.join().expect("sink reader").len(), N as usize);
        assert_eq!(gen_rx.join().expect("generator reader").len(), N as usize);
        // m0 saw: to_sink as sent, to_gen as routed out (at g0).
        let forwarded_out: Vec<Vec<u8>> = at_gen
            .finish()
            .into_iter()
            .filter(|f| f[12..14] == [0x08, 0x00])
            .collect();
        assert_eq!(forwarded_out.len(), N as usize, "frames at g0");
        let limit = if snap == 0 { MAX } else { snap };
        let seen: Vec<&Vec<u8>> = to_sink.iter().chain(&forwarded_out).collect();
        let mut want: Vec<Vec<u8>> = seen
            .iter()
            .map(|f| f[..f.len().min(limit)].to_vec())
            .collect();
        want.sort();
        let mut decap = inner.finish();
        decap.sort();
        assert_eq!(decap.len(), want.len(), "{snap}: frames vx6 decapsulated");
        assert!(
            decap == want,
            "{snap}: every copy byte-identical, each once"
        );
        let udp: Vec<Vec<u8>> = outer
            .finish()
            .iter()
            .filter_map(|f| {
                let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
                match p.net? {
                    etherparse::NetSlice::Ipv6(ip)
                        if ip.header().destination_addr() == to
                            && ip.payload().ip_number.0 == 17 =>
                    {
                        assert_eq!(ip.header().source_addr(), from, "outer source");
                        assert_eq!(ip.header().hop_limit(), 64);
                        Some(ip.payload().payload.to_vec())
                    }
                    _ => None,
                }
            })
            .collect();
        assert_eq!(udp.len() as u64, n, "{snap}: packets at the collector");
        for u in &udp {
            assert!(udp6_checksum_ok(from, to, u), "{snap}: UDP checksum");
            let h = encap::decode_vxlan(u).expect("a VXLAN header");
            assert_eq!((h.vni, h.dest_port), (43, 4789));
            assert_eq!(usize::from(h.udp_len), u.len(), "UDP length");
        }
        assert_eq!(
            udp6_checksum_errors(&r.col),
            errors_before,
            "{snap}: the collector's stack found no bad UDP checksum"
        );

        let src = &st.sources["mon"];
        assert_source_reconciles("mon", src);
        assert_eq!((src.matched, src.mirrored), (n, n));
        for (dir, d) in &src.directions {
            let m = u64::from(N);
            assert_eq!((d.matched, d.cloned, d.copied), (m, m, 0), "{dir}");
        }
        assert_eq!(st.sessions["tun6"].path, "kernel", "path = auto");
        let t = &st.targets["vx6"];
        assert_reconciles("vx6", t);
        assert_eq!(t.dropped_total(), 0, "{snap}: {:?}", t.dropped);
        assert_eq!((t.enqueued, t.sent_packets, t.kernel_path), (n, n, n));
        let longer = seen.iter().filter(|f| f.len() > MAX).count() as u64;
        let truncated = if snap == 0 { longer } else { 0 };
        assert_eq!(t.truncated, truncated, "{snap}: cut to the tunnel's mtu");
        let bytes: u64 = seen.iter().map(|f| f.len().min(limit) as u64).sum();
        assert_eq!(t.sent_bytes, bytes, "{snap}: the copies' bytes");
        assert!(daemon
            .stop(Duration::from_secs(10))
            .expect("daemon stops")
            .success());
    }
}

/// Datagrams from a socket in `gen` leave through a veth with their UDP
/// checksum still to be filled in (CHECKSUM_PARTIAL: the stack leaves it to
/// the device), and m0 clones them so. The relay's egress toward the
/// collector completes that checksum in software (transmit checksum offload
/// off, as a NIC completes it in hardware) after the relay summed the copy:
/// the outer UDP checksum accounts for it, so the collector's stack (which
/// verifies: the checksum is complete by then) drops none, and the copy
/// arrives with a correct inner checksum.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_ipv6_vxlan_checksum_accounts_for_the_inner_checksum_the_device_completes() {
    require_root!();
    let _serial = one_at_a_time();
    let r = Routed::new("copy-vx6-partial");
    let (from, to): (Ipv6Addr, Ipv6Addr) = (
        "fd00:31:5::1".parse().expect("ip"),
        "fd00:31:5::2".parse().expect("ip"),
    );
    collector_checksumming_in_software(&r);
    let (mut daemon, _) = common::start_daemon(BIN, &r.rtr, &r.dir, &VXLAN6.replace("@SNAP@", "0"));
    let mut client = Client::connect(&daemon.control).expect("control socket");
    const K: usize = 100;
    let outer = Capture::start(&r.col, "z0").expect("capture z0");
    let inner = Capture::start(&r.col, "vx6").expect("capture vx6");
    let errors_before = udp6_checksum_errors(&r.col);
    let payloads: Vec<Vec<u8>> = (0..K)
        .map(|i| marked_datagram(i, [20, 21, 1000, 1001][i % 4], (i % 251) as u8))
        .collect();
    let st = send_and_settle(&r, &mut client, &payloads, "whole copies");
    assert_eq!(st.sessions["tun6"].path, "kernel");

    let udp: Vec<Vec<u8>> = outer
        .finish()
        .iter()
        .filter_map(|f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match p.net? {
                etherparse::NetSlice::Ipv6(ip)
                    if ip.header().destination_addr() == to && ip.payload().ip_number.0 == 17 =>
                {
                    Some(ip.payload().payload.to_vec())
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(udp.len(), K, "packets at the collector");
    for u in &udp {
        assert!(
            udp6_checksum_ok(from, to, u),
            "outer UDP checksum of {u:02x?}"
        );
    }
    assert_eq!(
        udp6_checksum_errors(&r.col),
        errors_before,
        "the collector's stack found no bad UDP checksum"
    );
    // The copies, decapsulated: each datagram once, its checksum complete.
    let mut got = Vec::new();
    for f in inner.finish() {
        let p = etherparse::SlicedPacket::from_ethernet(&f).expect("a frame");
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(u))) =
            (p.net.clone(), p.transport.clone())
        else {
            panic!("not UDP over IPv4: {f:02x?}");
        };
        let want = u
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), u.payload())
            .expect("fits");
        assert_eq!(u.checksum(), want, "inner UDP checksum completed");
        got.push(u.payload().to_vec());
    }
    got.sort();
    let mut want = payloads.clone();
    want.sort();
    assert!(got == want, "every datagram decapsulated once");
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("daemon stops")
        .success());
}

/// A copy the device finishes the checksum of (CHECKSUM_PARTIAL) cut by
/// `packet_length` before its checksum field: the clone still asks for the
/// checksum, which the egress device (transmit checksum offload off: the
/// kernel does it in software) cannot write into bytes the copy no longer
/// has. Every copy still reaches the collector, cut to `packet_length`, and
/// none is counted lost.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_partial_checksum_copy_cut_before_its_checksum_field_still_reaches_the_collector() {
    require_root!();
    let _serial = one_at_a_time();
    let r = Routed::new("copy-vx6-cut");
    collector_checksumming_in_software(&r);
    // Ethernet 14 + IPv4 20 + UDP ports and length 6: the checksum is at
    // 40-41; cut at 40, and at 41 (half of it).
    for snap in [40usize, 41] {
        let (mut daemon, _) = common::start_daemon(
            BIN,
            &r.rtr,
            &r.dir,
            &VXLAN6.replace("@SNAP@", &snap.to_string()),
        );
        let mut client = Client::connect(&daemon.control).expect("control socket");
        const K: usize = 50;
        let inner = Capture::start(&r.col, "vx6").expect("capture vx6");
        let payloads: Vec<Vec<u8>> = (0..K)
            .map(|i| marked_datagram(i, 100 + i, i as u8))
            .collect();
        send_and_settle(&r, &mut client, &payloads, &format!("packet_length {snap}"));
        let got = inner.finish();
        assert_eq!(
            got.len(),
            K,
            "copies at the collector, packet_length {snap}"
        );
        for f in &got {
            assert_eq!(f.len(), snap, "cut to packet_length: {f:02x?}");
            // IPv4, UDP, to the sink's port.
            assert_eq!((f[12], f[13], f[23]), (0x08, 0x00, 17));
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), TO_SINK);
        }
        assert!(daemon
            .stop(Duration::from_secs(10))
            .expect("daemon stops")
            .success());
    }
}
