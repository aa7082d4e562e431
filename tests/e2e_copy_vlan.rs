//! End to end, in network namespaces: VLAN-tagged frames in copy mode at
//! tcx. The kernel takes a frame's outer tag out of its data before tc
//! ingress (and a VLAN device's egress leaves it out of the data: VLAN
//! acceleration), so the program must classify by `skb->vlan_tci` and the
//! copies must carry the tag back, as the frame was on the wire.
//!
//! The per-flow cutoff counts such a frame's bytes as they were on the wire,
//! tag included, on both of copy mode's paths at tcx: the ring buffer (the
//! record cut at the flow's N-th byte of the tagged frame) and the kernel's
//! clones (the crossing frame whole).
//!
//! (This kernel has no VLAN devices, so the egress case, a VLAN device's
//! frames leaving with their tag accelerated, is not reproduced here; it
//! takes the same code.)
//!
//! ```text
//!  ns gen                 ns src (mirror, copy mode, tcx ingress)
//!  gen0 ──veth── feed0 ── tagged and untagged frames
//! ```

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_reconciles, assert_source_reconciles, read_pcapng, wait_for};
use mirror_user::control::Client;
use mirror_user::lab::{self, traffic, Capture, Lab, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "feed0"
mode = "copy"
ingress_hook = "tc"

[[filter]]
name = "vlan100"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
vlan = 100

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/vlan.pcapng"

[[session]]
name = "tagged"
source = "live"
filter = "vlan100"
targets = ["cap"]
"#;

/// The VLAN id of an 802.1Q-tagged Ethernet frame.
fn vid(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && frame[12..14] == [0x81, 0x00])
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0xfff)
}

/// 50 frames tagged VLAN 100 and 50 untagged reach feed0; the rule
/// `vlan = 100` matches exactly the tagged ones, and each copy is the frame
/// as sent, tag included.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_at_tcx_classifies_by_the_accelerated_tag_and_the_copies_keep_it() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-copy-vlan").expect("temp dir");
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, CONFIG);
    let mut client = Client::connect(&daemon.control).expect("control socket");

    let tagged: Vec<Vec<u8>> = (0..50)
        .map(|i| traffic::frame(traffic::Shape::VlanTcp4, i, 200))
        .collect();
    assert!(tagged.iter().all(|f| vid(f) == Some(100)));
    let plain: Vec<Vec<u8>> = (0..50)
        .map(|i| traffic::frame(traffic::Shape::Tcp4, i, 200))
        .collect();
    let mut frames = tagged.clone();
    frames.extend(plain);
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    let st = wait_for(&mut client, "100 frames in, every copy written", |s| {
        s.sources["live"].directions["ingress"].received == 100
            && s.sources["live"].queued == 0
            && s.targets["cap"].queued == 0
    });
    let src = &st.sources["live"];
    let ingress = &src.directions["ingress"];
    assert_eq!((ingress.matched, ingress.filtered), (50, 50), "{ingress:?}");
    assert_source_reconciles("live", src);
    assert_reconciles("cap", &st.targets["cap"]);
    assert_eq!(st.targets["cap"].sent_packets, 50);

    daemon
        .stop(std::time::Duration::from_secs(10))
        .expect("stop");
    let records = read_pcapng(&dir.path().join("vlan.pcapng"));
    assert_eq!(records.len(), 50);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.data, tagged[i],
            "copy {i}: the frame as sent, tag included"
        );
        assert_eq!(r.orig_len as usize, tagged[i].len(), "copy {i}");
    }
}

/// flow_cutoff_bytes of the cutoff tests.
const CUTOFF: u64 = 1000;

/// The cutoff tests' source: copy mode at tcx (`ingress_hook` "tc" for the
/// pcapng target's ring buffer; "auto" hooks tcx for the interface target's
/// clones), one session with `flow_cutoff_bytes = cutoff` (0: off).
fn cutoff_config(target: &str, cutoff: u64) -> String {
    let hook = if target.contains("pcapng") {
        "ingress_hook = \"tc\""
    } else {
        ""
    };
    format!(
        r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "feed0"
mode = "copy"
{hook}

[[filter]]
name = "vlan100"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
vlan = 100

[[target]]
name = "t"
{target}

[[session]]
name = "tagged"
source = "live"
filter = "vlan100"
targets = ["t"]
flow_cutoff_bytes = {cutoff}
"#
    )
}

/// Frame `seq` of flow `flow`: UDP, tagged VLAN 100, `len` bytes on the
/// wire (tag included). The flow is in the MAC addresses, so a copy cut
/// to 14 bytes still tells it.
fn tagged_udp(flow: u8, seq: u8, len: usize) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(
        [0x02, 0x71, 0, 0, 0, flow],
        [0x02, 0x72, 0, 0, 0, flow],
    )
    .single_vlan(etherparse::VlanId::try_new(100).expect("valid id"))
    .ipv4([10, 71, 0, flow], [10, 72, 0, 1], 64)
    .udp(30_000 + u16::from(flow), 53);
    let mut payload = traffic::MARKER.to_vec();
    payload.extend_from_slice(&[flow, seq]);
    payload.resize(len - b.size(0), 0xa5);
    let mut out = Vec::with_capacity(len);
    b.write(&mut out, &payload).expect("a frame");
    assert_eq!((out.len(), vid(&out)), (len, Some(100)));
    out
}

/// The flow of a copy of a [`tagged_udp`] frame, from its MAC addresses.
fn flow_of(copy: &[u8]) -> Option<u8> {
    (copy.len() >= 12 && copy[..5] == [0x02, 0x72, 0, 0, 0] && copy[6..11] == [0x02, 0x71, 0, 0, 0])
        .then_some(copy[5])
        .filter(|&f| f == copy[11])
}

/// One flow's frames as the cutoff documents them: (frame, bytes kept:
/// its length, less where it crosses CUTOFF when `cuts`, 0 past it or with
/// under 14 bytes left), the bytes counted being the wire's, tag included.
fn cut_flow(frames: Vec<Vec<u8>>, cuts: bool) -> Vec<(Vec<u8>, u64)> {
    let mut seen = 0u64;
    frames
        .into_iter()
        .map(|f| {
            let (prev, len) = (seen, f.len() as u64);
            seen += len;
            let keep = if prev + len <= CUTOFF {
                len
            } else if prev + 14 > CUTOFF {
                0
            } else if cuts {
                CUTOFF - prev
            } else {
                len
            };
            (f, keep)
        })
        .collect()
}

/// The tester's flows: 30 frames of 60 bytes (the 17th crosses 1000 bytes:
/// 40 of it are kept), 10 of 300 (the 4th: 100), and two that leave 14 and
/// 15 bytes for their second frame (a cut inside the tag: the MAC
/// addresses and 2 or 3 of the tag's bytes).
fn cutoff_flows(cuts: bool) -> BTreeMap<u8, Vec<(Vec<u8>, u64)>> {
    let sized = |flow: u8, lens: &[usize]| -> Vec<Vec<u8>> {
        lens.iter()
            .enumerate()
            .map(|(k, &len)| tagged_udp(flow, k as u8, len))
            .collect()
    };
    BTreeMap::from([
        (1, cut_flow(sized(1, &[60; 30]), cuts)),
        (2, cut_flow(sized(2, &[300; 10]), cuts)),
        (3, cut_flow(sized(3, &[986, 60, 60, 60]), cuts)),
        (4, cut_flow(sized(4, &[985, 60, 60]), cuts)),
    ])
}

/// Sends every flow's frames, flows interleaved (each flow's in order).
fn send_flows(lab: &Lab, flows: &BTreeMap<u8, Vec<(Vec<u8>, u64)>>) -> u64 {
    let longest = flows.values().map(Vec::len).max().unwrap_or(0);
    let frames: Vec<Vec<u8>> = (0..longest)
        .flat_map(|k| {
            flows
                .values()
                .filter_map(move |f| f.get(k).map(|x| x.0.clone()))
        })
        .collect();
    let n = frames.len() as u64;
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    n
}

/// Each flow's copies, in order, are exactly its kept frames' first bytes
/// (tag included); `orig` says whether a copy records its frame's length.
fn assert_copies(
    flows: &BTreeMap<u8, Vec<(Vec<u8>, u64)>>,
    copies: Vec<(Vec<u8>, u32)>,
    orig: bool,
) {
    let mut got: BTreeMap<u8, Vec<(Vec<u8>, u32)>> = BTreeMap::new();
    for c in copies {
        let flow = flow_of(&c.0).expect("a copy of a test flow");
        got.entry(flow).or_default().push(c);
    }
    for (flow, frames) in flows {
        let want: Vec<&(Vec<u8>, u64)> = frames.iter().filter(|f| f.1 > 0).collect();
        let have = got.remove(flow).unwrap_or_default();
        let bytes: u64 = have.iter().map(|c| c.0.len() as u64).sum();
        let want_bytes: u64 = want.iter().map(|f| f.1).sum();
        assert_eq!(
            (have.len(), bytes),
            (want.len(), want_bytes),
            "flow {flow}: mirrored frames and bytes"
        );
        for (n, (c, (f, keep))) in have.iter().zip(&want).enumerate() {
            assert_eq!(
                c.0,
                f[..*keep as usize],
                "flow {flow}, copy {n}: its first bytes"
            );
            let len = if orig { f.len() } else { *keep as usize };
            assert_eq!(c.1 as usize, len, "flow {flow}, copy {n}: original length");
        }
    }
    assert!(got.is_empty(), "no other copies: {:?}", got.keys());
}

/// Copy mode's ring buffer at tcx: the cutoff counts each tagged frame's
/// wire bytes, tag included, and the record of the crossing frame is cut at
/// the flow's 1000th byte of the frame as it was on the wire.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_cutoff_at_tcx_counts_the_accelerated_tag_and_cuts_the_record_at_the_wire_byte() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-copy-vlan-cutoff").expect("temp dir");
    let target = "kind = \"pcapng\"\npath = \"@DIR@/cut.pcapng\"";
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &cutoff_config(target, CUTOFF));
    let mut client = Client::connect(&daemon.control).expect("control socket");

    let flows = cutoff_flows(true);
    let sent = send_flows(&lab, &flows);
    let st = wait_for(&mut client, "every frame in, every copy written", |s| {
        s.sources["live"].matched == sent
            && s.sources["live"].queued == 0
            && s.targets["t"].queued == 0
    });
    let (src, sess, t) = (
        &st.sources["live"],
        &st.sessions["tagged"],
        &st.targets["t"],
    );
    assert_source_reconciles("live", src);
    assert_reconciles("t", t);
    assert_eq!(sess.path, "ring_buffer");
    // 13 + 6 + 2 + 1 frames past the cutoff; each flow's crossing frame cut.
    assert_eq!(
        (sess.cutoff, sess.cutoff_cut, sess.cutoff_whole),
        (22, 4, 0),
        "{sess:#?}"
    );
    assert_eq!(
        (src.cutoff, src.cutoff_cut, src.mirrored),
        (22, 4, sent - 22),
        "{src:#?}"
    );
    assert_eq!(
        (t.sent_packets, t.sent_bytes),
        (sent - 22, 4 * CUTOFF),
        "{t:#?}"
    );

    let status = daemon.stop(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{}", daemon.log_text());
    let copies = read_pcapng(&dir.path().join("cut.pcapng"))
        .into_iter()
        .map(|r| (r.data, r.orig_len))
        .collect();
    assert_copies(&flows, copies, true);
}

/// Copy mode's kernel path (tcx clones to an interface target): the cutoff
/// counts each tagged frame's wire bytes, tag included; the crossing frame
/// goes whole, as a clone cannot be cut.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_cutoff_of_kernel_clones_counts_the_accelerated_tag() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-copy-vlan-clone-cutoff").expect("temp dir");
    let target = "kind = \"interface\"\ninterface = \"tgt0\"";
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &cutoff_config(target, CUTOFF));
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");

    let flows = cutoff_flows(false);
    let sent = send_flows(&lab, &flows);
    // The clones and their counts are made in the run that matched the frame.
    let st = wait_for(&mut client, "every frame in", |s| {
        s.sources["live"].matched == sent
    });
    let (src, sess, t) = (
        &st.sources["live"],
        &st.sessions["tagged"],
        &st.targets["t"],
    );
    assert_source_reconciles("live", src);
    assert_reconciles("t", t);
    assert_eq!(sess.path, "kernel");
    // 13 + 6 + 2 + 1 frames past the cutoff; each flow's crossing frame whole.
    assert_eq!(
        (sess.cutoff, sess.cutoff_cut, sess.cutoff_whole),
        (22, 0, 4),
        "{sess:#?}"
    );
    assert_eq!(
        (src.cutoff, src.cutoff_whole, src.mirrored),
        (22, 4, sent - 22),
        "{src:#?}"
    );
    // The bytes of the clones as sent: tag included.
    let kept_bytes: u64 = flows.values().flatten().map(|f| f.1).sum();
    assert_eq!(
        (t.sent_packets, t.kernel_path, t.sent_bytes),
        (sent - 22, sent - 22, kept_bytes),
        "{t:#?}"
    );

    let status = daemon.stop(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{}", daemon.log_text());
    let copies = sink
        .finish()
        .into_iter()
        .filter(|f| flow_of(f).is_some())
        .map(|f| {
            let n = f.len() as u32;
            (f, n)
        })
        .collect();
    assert_copies(&flows, copies, false);
}

/// Copy mode's kernel path: a clone of a tagged frame carries the tag the
/// kernel holds outside the data, so `sent_bytes` (the bytes of the copies
/// as sent) counts it: the bytes the target's far end receives.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn kernel_clones_of_tagged_frames_count_the_tag_in_sent_bytes() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-copy-vlan-clone-bytes").expect("temp dir");
    let target = "kind = \"interface\"\ninterface = \"tgt0\"";
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &cutoff_config(target, 0));
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");

    let frames: Vec<Vec<u8>> = (0..20u8)
        .map(|k| tagged_udp(5, k, 60 + 37 * usize::from(k)))
        .collect();
    let wire_bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames.clone()), 10_000).expect("send");
    // The clones and their counts are made in the run that matched the frame.
    let st = wait_for(&mut client, "every frame in", |s| {
        s.sources["live"].matched == 20
    });
    let t = &st.targets["t"];
    assert_reconciles("t", t);
    assert_eq!(st.sessions["tagged"].path, "kernel");
    assert_eq!(
        (t.sent_packets, t.kernel_path, t.sent_bytes),
        (20, 20, wire_bytes),
        "{t:#?}"
    );

    let status = daemon.stop(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{}", daemon.log_text());
    let got: Vec<Vec<u8>> = sink
        .finish()
        .into_iter()
        .filter(|f| flow_of(f).is_some())
        .collect();
    assert_eq!(got, frames, "each clone is the frame as sent, tag included");
}
