//! End to end, in network namespaces: the per-flow cutoff
//! (`flow_cutoff_bytes` / `flow_cutoff_packets`) on the real `mirror run`,
//! tap mode and copy mode, to a pcapng file and to an interface. Fifty flows
//! of varied sizes (many short, a few bulk; IPv4 and IPv6, TCP and UDP) send
//! frames in both directions; each flow's copies must be exactly its first
//! bytes and frames as the kernel documents it (checked frame by frame
//! against a plain model), the frame crossing the byte cutoff cut at it
//! (mirrored whole where the path cannot cut: copy mode's tcx clones), an
//! idle flow starts over, and every counter reconciles exactly.
//!
//! Frames are sent in phases (frame k of every flow, one direction at a
//! time), each waited for in the counters, so the order the kernel sees a
//! flow's frames in is the order sent. A flow's MAC pair names it (client
//! 02:77:00:00:00:ii, server 02:78:00:00:00:ii), so a copy cut short of its
//! IP header still tells its flow and direction.

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use common::{assert_reconciles, assert_source_reconciles, read_pcapng, wait_for};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::lab::{self, Capture, Netns, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");
/// flow_cutoff_bytes and flow_cutoff_packets of the session.
const N_BYTES: u64 = 1000;
const N_PACKETS: u64 = 8;
/// flow_cutoff_idle: far longer than a phase, short enough to wait out.
const IDLE: Duration = Duration::from_secs(2);
const FLOWS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tap,
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Pcapng,
    Interface,
}

/// One flow: its frames in order, each (from the client, total length).
struct Flow {
    v6: bool,
    tcp: bool,
    frames: Vec<(bool, usize)>,
}

/// A small deterministic generator (no dependency for the mix).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Fifty flows: every tenth a bulk transfer (a request, then full-size
/// frames back with acks), the rest short exchanges of 2 to 6 frames of
/// 80 to 500 bytes; flow 1 leaves 10 bytes before its cutoff (less than an
/// Ethernet header: its next frame is not mirrored), flow 2 reaches it
/// exactly, flow 3 has more frames than the packet cutoff.
fn flows() -> Vec<Flow> {
    let mut rng = Lcg(19);
    (0..FLOWS)
        .map(|i| {
            let frames = match i {
                1 => vec![(true, 990), (false, 80), (true, 80)],
                2 => vec![(true, 500), (false, 500), (true, 80)],
                3 => (0..12).map(|k| (k % 2 == 0, 90)).collect(),
                i if i % 10 == 0 => {
                    let mut f = vec![(true, 120)];
                    for k in 0..10 {
                        f.push((false, 1400));
                        if k % 3 == 2 {
                            f.push((true, 90));
                        }
                    }
                    f
                }
                _ => (0..2 + rng.next(5))
                    .map(|k| (k % 2 == 0, 80 + rng.next(421) as usize))
                    .collect(),
            };
            Flow {
                v6: i % 4 == 3,
                tcp: i % 3 != 1,
                frames,
            }
        })
        .collect()
}

fn mac(side: u8, flow: usize) -> [u8; 6] {
    [0x02, side, 0, 0, 0, flow as u8]
}

/// Frame `k` of flow `i`: `len` bytes, from the client when `forward`.
fn frame(i: usize, f: &Flow, k: usize, forward: bool, len: usize) -> Vec<u8> {
    let (cmac, smac) = (mac(0x77, i), mac(0x78, i));
    let (cport, sport) = (20_000 + i as u16, if f.tcp { 80 } else { 53 });
    let (src_mac, dst_mac, src_port, dst_port) = if forward {
        (cmac, smac, cport, sport)
    } else {
        (smac, cmac, sport, cport)
    };
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac);
    let (c4, s4) = ([10, 77, 0, i as u8 + 1], [10, 78, 0, 1]);
    let mut c6 = [0u8; 16];
    c6[..2].copy_from_slice(&[0xfd, 0x77]);
    c6[15] = i as u8 + 1;
    let mut s6 = c6;
    s6[1] = 0x78;
    s6[15] = 1;
    let b = match (f.v6, forward) {
        (false, true) => b.ipv4(c4, s4, 64),
        (false, false) => b.ipv4(s4, c4, 64),
        (true, true) => b.ipv6(c6, s6, 64),
        (true, false) => b.ipv6(s6, c6, 64),
    };
    let mut payload = lab::traffic::MARKER.to_vec();
    payload.extend_from_slice(&[i as u8, k as u8]);
    let mut out = Vec::with_capacity(len);
    if f.tcp {
        let b = b.tcp(src_port, dst_port, k as u32, 1024);
        payload.resize(len - b.size(0), 0xa5);
        b.write(&mut out, &payload).expect("a frame");
    } else {
        let b = b.udp(src_port, dst_port);
        payload.resize(len - b.size(0), 0xa5);
        b.write(&mut out, &payload).expect("a frame");
    }
    assert_eq!(out.len(), len);
    out
}

/// The flow a copy belongs to and its direction, from its MAC pair.
fn flow_of(copy: &[u8]) -> Option<(usize, bool)> {
    let (dst, src) = (copy.get(0..6)?, copy.get(6..12)?);
    match (src[1], dst[1]) {
        (0x77, 0x78) if src[5] == dst[5] => Some((usize::from(src[5]), true)),
        (0x78, 0x77) if src[5] == dst[5] => Some((usize::from(src[5]), false)),
        _ => None,
    }
}

/// The cutoff as documented: per flow, frames and bytes seen since it
/// (re)started; a frame keeps its length, less where it crosses the byte
/// cutoff, nothing past either cutoff or with under 14 bytes left. A path
/// that cannot cut (`cuts` false) keeps the crossing frame whole.
#[derive(Default)]
struct Model {
    seen: BTreeMap<usize, (u64, u64)>,
    /// Flows whose crossing frame had under 14 bytes left (not mirrored).
    short_remainder: Vec<usize>,
}

impl Model {
    /// (bytes kept, whether the frame crossed the byte cutoff and was kept).
    fn keep(&mut self, flow: usize, len: u64, cuts: bool) -> (u64, bool) {
        let (n, b) = self.seen.entry(flow).or_default();
        *n += 1;
        if *n > N_PACKETS {
            return (0, false);
        }
        let prev = *b;
        *b += len;
        if prev + len <= N_BYTES {
            (len, false)
        } else if prev >= N_BYTES {
            (0, false)
        } else if prev + 14 > N_BYTES {
            self.short_remainder.push(flow);
            (0, false)
        } else if cuts {
            (N_BYTES - prev, true)
        } else {
            (len, true)
        }
    }
}

/// One sent frame and what the model says becomes of it.
struct Sent {
    flow: usize,
    frame: Vec<u8>,
    keep: u64,
    /// It crossed its flow's byte cutoff (cut there, or whole where the
    /// path cannot cut).
    boundary: bool,
}

impl Sent {
    fn new(
        model: &mut Model,
        flows: &[Flow],
        i: usize,
        k: usize,
        fwd: bool,
        len: usize,
        cuts: bool,
    ) -> Sent {
        let (keep, boundary) = model.keep(i, len as u64, cuts);
        Sent {
            flow: i,
            frame: frame(i, &flows[i], k, fwd, len),
            keep,
            boundary,
        }
    }
}

/// Filter: our test prefixes only (no stray neighbour discovery), both
/// directions of a tap feed on ingress; copy mode's egress too.
fn config(mode: Mode, target: Target, capture: &str) -> String {
    let mut rules = String::new();
    let dirs: &[&str] = match mode {
        Mode::Tap => &["ingress"],
        Mode::Copy => &["ingress", "egress"],
    };
    let mut n = 10;
    for dir in dirs {
        for (field, prefix) in [
            ("source", "10.77.0.0/16"),
            ("destination", "10.77.0.0/16"),
            ("source", "fd77::/16"),
            ("destination", "fd77::/16"),
        ] {
            rules.push_str(&format!(
                "[[filter.rule]]\nnumber = {n}\naction = \"accept\"\ndirection = \"{dir}\"\n{field} = \"{prefix}\"\n"
            ));
            n += 1;
        }
    }
    let (source, interface) = match mode {
        Mode::Tap => ("mode = \"tap\"", "feed0"),
        Mode::Copy => ("mode = \"copy\"\ndirection = \"both\"", "s0"),
    };
    let target = match target {
        Target::Pcapng => format!("kind = \"pcapng\"\npath = \"{capture}\"\nqueue_size = 16384"),
        Target::Interface => "kind = \"interface\"\ninterface = \"tgt0\"".to_string(),
    };
    format!(
        r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "src"
interface = "{interface}"
{source}

[[filter]]
name = "lab"
{rules}
[[target]]
name = "t"
{target}

[[session]]
name = "s"
source = "src"
filter = "lab"
targets = ["t"]
flow_cutoff_bytes = {N_BYTES}
flow_cutoff_packets = {N_PACKETS}
flow_cutoff_idle = "{}ms"
"#,
        IDLE.as_millis()
    )
}

/// The namespaces: tap mode `gen` -> `mon` (feed0); copy mode `cli` (c0)
/// -- `mon` (s0), frames sent from both ends; `mon` (tgt0) -> `sink`.
struct Setup {
    mon: Netns,
    sink: Netns,
    /// Sends client-to-server frames (tap mode: both directions).
    forward: OwnedFd,
    /// Sends server-to-client frames (copy mode: out of s0, seen at tcx egress).
    reverse: OwnedFd,
    _peer: Netns,
    dir: TempDir,
}

impl Setup {
    fn new(mode: Mode, tag: &str) -> Setup {
        let peer = Netns::new("peer").expect("netns");
        let mon = Netns::new("mon").expect("netns");
        let sink = Netns::new("sink").expect("netns");
        let dir = TempDir::new(tag).expect("temp dir");
        let (peer_if, mon_if) = match mode {
            Mode::Tap => ("gen0", "feed0"),
            Mode::Copy => ("c0", "s0"),
        };
        lab::veth(&peer, peer_if, &mon, mon_if, 1).expect("veth");
        lab::veth(&mon, "tgt0", &sink, "sink0", 1).expect("veth");
        let forward = peer
            .run(move || lab::packet_socket(peer_if))
            .expect("socket");
        let reverse = match mode {
            Mode::Tap => peer.run(move || lab::packet_socket(peer_if)),
            Mode::Copy => mon.run(move || lab::packet_socket(mon_if)),
        }
        .expect("socket");
        Setup {
            mon,
            sink,
            forward,
            reverse,
            _peer: peer,
            dir,
        }
    }

    fn send(&self, forward: bool, f: &[u8]) {
        let fd = if forward {
            &self.forward
        } else {
            &self.reverse
        };
        // Safety: `f` is a valid buffer of its length.
        let rc = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(rc, f.len() as isize, "{}", std::io::Error::last_os_error());
    }
}

/// Sends `batch` (one direction), then waits until the kernel matched every
/// frame so far and the target was offered every copy the model expects:
/// the next batch then meets the flow state this one left.
fn send_batch(
    s: &Setup,
    client: &mut Client,
    forward: bool,
    batch: &[Sent],
    sent: &mut u64,
    kept: &mut u64,
) {
    for b in batch {
        s.send(forward, &b.frame);
    }
    *sent += batch.len() as u64;
    *kept += batch.iter().filter(|b| b.keep > 0).count() as u64;
    let (sent, kept) = (*sent, *kept);
    wait_for(client, "the batch matched and offered", |st: &Stats| {
        let t = &st.targets["t"];
        st.sources["src"].matched == sent && t.enqueued == kept
    });
}

/// One daemon at a time: four loading their programs at once on a loaded
/// two-core machine can miss the daemon's start timeout (the verifier).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run(mode: Mode, target: Target) {
    let _serial = one_at_a_time();
    let tag = format!("e2e-cutoff-{mode:?}-{target:?}").to_lowercase();
    let s = Setup::new(mode, &tag);
    let capture = s.dir.path().join("cut.pcapng");
    let text = config(mode, target, &capture.to_string_lossy());
    let (mut daemon, _) = common::start_daemon(BIN, &s.mon, &s.dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let sink = Capture::start(&s.sink, "sink0").expect("capture");
    // Copy mode's interface target is served by tcx clones: they cannot be cut.
    let cuts = !(mode == Mode::Copy && target == Target::Interface);

    let flows = flows();
    let mut model = Model::default();
    let mut all: Vec<Sent> = Vec::new();
    let (mut sent, mut kept) = (0, 0);
    let phases = flows.iter().map(|f| f.frames.len()).max().unwrap_or(0);
    for k in 0..phases {
        for forward in [true, false] {
            let batch: Vec<Sent> = flows
                .iter()
                .enumerate()
                .filter_map(|(i, f)| {
                    let &(fwd, len) = f.frames.get(k)?;
                    (fwd == forward).then(|| Sent::new(&mut model, &flows, i, k, fwd, len, cuts))
                })
                .collect();
            send_batch(&s, &mut client, forward, &batch, &mut sent, &mut kept);
            all.extend(batch);
        }
    }
    assert_eq!(
        model.short_remainder,
        [1],
        "flow 1 is the one left under 14 bytes"
    );
    // Idle past the timeout: the first frames of a few cut-off flows are
    // mirrored again, from the start.
    std::thread::sleep(IDLE + IDLE / 2);
    let again: Vec<usize> = vec![0, 1, 3, 10, 20];
    for &i in &again {
        model.seen.remove(&i);
    }
    for forward in [true, false] {
        let batch: Vec<Sent> = again
            .iter()
            .map(|&i| Sent::new(&mut model, &flows, i, 99, forward, 300, cuts))
            .collect();
        assert!(
            batch.iter().all(|b| b.keep == 300),
            "restarted flows are under the cutoff"
        );
        send_batch(&s, &mut client, forward, &batch, &mut sent, &mut kept);
        all.extend(batch);
    }

    // Every copy delivered, and the counters reconcile exactly.
    let st = wait_for(&mut client, "every copy sent", |st| {
        let t = &st.targets["t"];
        t.queued == 0 && t.sent_packets + t.dropped_total() == t.enqueued
    });
    let src = &st.sources["src"];
    let sess = &st.sessions["s"];
    let t = &st.targets["t"];
    assert_source_reconciles("src", src);
    assert_reconciles("t", t);
    let past = all.iter().filter(|b| b.keep == 0).count() as u64;
    let boundary = all.iter().filter(|b| b.boundary).count() as u64;
    assert_eq!(src.matched, all.len() as u64, "{src:#?}");
    assert_eq!((src.cutoff, sess.cutoff), (past, past), "{sess:#?}");
    assert_eq!(src.mirrored, kept);
    assert_eq!(src.dropped_total(), 0, "{src:#?}");
    assert_eq!(t.dropped_total(), 0, "{t:#?}");
    assert_eq!(t.sent_packets, kept);
    let want_bytes: u64 = all.iter().map(|b| b.keep).sum();
    assert_eq!(
        t.sent_bytes, want_bytes,
        "the target's bytes are the flows' first bytes"
    );
    assert!(
        boundary >= 10,
        "the mix crosses the cutoff often: {boundary}"
    );
    if cuts {
        assert_eq!((src.cutoff_cut, sess.cutoff_cut), (boundary, boundary));
        assert_eq!((src.cutoff_whole, sess.cutoff_whole), (0, 0));
    } else {
        assert_eq!((src.cutoff_cut, sess.cutoff_cut), (0, 0));
        assert_eq!((src.cutoff_whole, sess.cutoff_whole), (boundary, boundary));
    }
    assert!(past > 50, "the mix has bulk to cut off: {past}");
    if mode == Mode::Copy {
        let (i, e) = (&src.directions["ingress"], &src.directions["egress"]);
        assert_eq!(i.cutoff + e.cutoff, past);
        assert!(
            i.cutoff > 0 && e.cutoff > 0,
            "both directions cut off: {i:?} {e:?}"
        );
    }

    let status = daemon.stop(Duration::from_secs(10)).expect("daemon stops");
    assert!(status.success(), "{}", daemon.log_text());
    let copies: Vec<(Vec<u8>, u32)> = match target {
        Target::Pcapng => read_pcapng(&capture)
            .into_iter()
            .map(|r| (r.data, r.orig_len))
            .collect(),
        Target::Interface => sink
            .finish()
            .into_iter()
            .filter(|f| flow_of(f).is_some())
            .map(|f| {
                let n = f.len() as u32;
                (f, n)
            })
            .collect(),
    };
    // Per flow, in order: each copy is the next kept frame's first bytes.
    let mut got: BTreeMap<usize, Vec<(Vec<u8>, u32)>> = BTreeMap::new();
    for c in copies {
        let (flow, _) = flow_of(&c.0).expect("a copy of a lab flow");
        got.entry(flow).or_default().push(c);
    }
    for (i, flow) in flows.iter().enumerate() {
        let want: Vec<&Sent> = all.iter().filter(|b| b.flow == i && b.keep > 0).collect();
        let have = got.remove(&i).unwrap_or_default();
        assert_eq!(have.len(), want.len(), "flow {i}: mirrored frames");
        let bytes: u64 = have.iter().map(|c| c.0.len() as u64).sum();
        let want_bytes: u64 = want.iter().map(|b| b.keep).sum();
        assert_eq!(bytes, want_bytes, "flow {i}: mirrored bytes");
        for (n, (c, w)) in have.iter().zip(&want).enumerate() {
            assert_eq!(c.0, w.frame[..w.keep as usize], "flow {i}, copy {n}");
            // pcapng records the original length: copy mode's ring records
            // keep it, tap mode's metadata carries it past the frame's cut.
            let orig = if target == Target::Pcapng {
                w.frame.len() as u32
            } else {
                w.keep as u32
            };
            assert_eq!(c.1, orig, "flow {i}, copy {n}: original length");
        }
        let first_bytes = flow
            .frames
            .iter()
            .map(|f| f.1 as u64)
            .take(N_PACKETS as usize)
            .sum::<u64>();
        let plain = !model.short_remainder.contains(&i) && !again.contains(&i);
        if cuts && plain && flow.frames.len() as u64 <= N_PACKETS {
            // The model agrees with the plain statement: a flow's copies
            // are its first N_BYTES bytes (all of a shorter one).
            assert_eq!(want_bytes, first_bytes.min(N_BYTES), "flow {i}");
        }
    }
    assert!(
        got.is_empty(),
        "no copy of an unknown flow: {:?}",
        got.keys()
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn tap_mode_pcapng_keeps_each_flows_first_bytes_and_cuts_the_boundary_frame() {
    require_root!();
    run(Mode::Tap, Target::Pcapng);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn tap_mode_kernel_path_keeps_each_flows_first_bytes_and_cuts_the_boundary_frame() {
    require_root!();
    run(Mode::Tap, Target::Interface);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_pcapng_keeps_each_flows_first_bytes_both_directions_and_cuts_the_record() {
    require_root!();
    run(Mode::Copy, Target::Pcapng);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_clones_keep_each_flows_first_bytes_and_the_boundary_frame_whole() {
    require_root!();
    run(Mode::Copy, Target::Interface);
}
