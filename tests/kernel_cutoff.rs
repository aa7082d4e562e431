//! The per-flow cutoff (`flow_cutoff_bytes` / `flow_cutoff_packets`)
//! through BPF_PROG_TEST_RUN, frame by frame against a plain Rust model: both
//! directions of a flow count together, the frame crossing the byte cutoff is
//! cut at it (tap: the frame itself; copy: the record), later frames are not
//! mirrored and are counted `cutoff`, flows and sessions count apart, an idle
//! flow starts over, and the counters reconcile.

mod common;

use std::time::Duration;

use common::*;
use mirror_ebpf::mirror::types::mirror_counter as C;
use mirror_user::config;
use mirror_user::filter::ruleset::{self, RuleSet};
use mirror_user::kernel::copy_ring;
use mirror_user::kernel::{test_run, test_run_raw, CutoffCounts, SourceProgram, COUNTERS};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): tcx goes on to the next program, or passes the frame.
const TC_NEXT: u32 = u32::MAX;
const META_LEN: usize = mirror_ebpf::limits::META_LEN;
const ETH_HLEN: u64 = 14;

/// Session 0 mirrors every ingress and egress frame.
const CATCH_ALL: &str = r#"
[[source]]
name = "s"
interface = "x"
mode = "copy"
direction = "both"
[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[filter.rule]]
number = 1
action = "accept"
direction = "egress"
[[target]]
name = "t"
kind = "interface"
interface = "y"
[[session]]
name = "a"
source = "s"
filter = "all"
targets = ["t"]
"#;

fn program(bytes: u64, packets: u64, idle: Duration) -> SourceProgram {
    let config = config::parse(CATCH_ALL, "cutoff").expect("valid config");
    let filters = ruleset::source_filters(&config, 0);
    let ingress = RuleSet::build(&filters, config::Direction::Ingress).expect("ingress");
    let egress = RuleSet::build(&filters, config::Direction::Egress).expect("egress");
    let mut prog =
        SourceProgram::load_with_flows(1 << 20, mirror_ebpf::limits::FLOWS).expect("loads");
    prog.install(&ingress, Some(&egress)).expect("installs");
    prog.set_cutoff(0, bytes, packets, idle).expect("cutoff");
    prog
}

/// TCP between (V4A, a) and (V4B, b), `forward` from A to B, of `len`
/// bytes in all.
fn tcp(a: u16, b: u16, forward: bool, len: usize) -> Vec<u8> {
    let (src, dst, sport, dport) = if forward {
        (V4A, V4B, a, b)
    } else {
        (V4B, V4A, b, a)
    };
    let f = eth(
        0x0800,
        &ipv4(6, src, dst, 0, 0, &l4(sport, dport, len - 34)),
    );
    assert_eq!(f.len(), len);
    f
}

/// The cutoff as the kernel documents it: per flow, the running totals of
/// frames and bytes (both counted while either limit is on); what each frame keeps (its length, less at the byte
/// cutoff, 0 past either cutoff or with less than an Ethernet header left).
#[derive(Default)]
struct Model {
    flows: std::collections::HashMap<u64, (u64, u64)>,
}

impl Model {
    fn keep(&mut self, flow: u64, len: u64, bytes: u64, packets: u64) -> u64 {
        let (n, b) = self.flows.entry(flow).or_default();
        *n += 1;
        let prev = *b;
        *b += len;
        if packets > 0 && *n > packets {
            return 0;
        }
        if bytes == 0 || prev + len <= bytes {
            len
        } else if prev + ETH_HLEN <= bytes {
            bytes - prev
        } else {
            0
        }
    }
}

/// The bytes the tap program mirrors `f` with (0: not mirrored, it comes
/// back as it went in, without metadata).
fn kept(prog: &SourceProgram, f: &[u8]) -> usize {
    let (_, out) = test_run_raw(prog.xdp_tap_fd(), f).expect("test run");
    if out == f {
        0
    } else {
        out.len() - META_LEN
    }
}

/// Whether the tap program mirrors `f`.
fn mirrored(prog: &SourceProgram, f: &[u8]) -> bool {
    kept(prog, f) > 0
}

/// Whether the tap program mirrors `f`, each of `n` times in a row.
fn mirrored_each(prog: &SourceProgram, f: &[u8], n: usize) -> Vec<bool> {
    (0..n).map(|_| mirrored(prog, f)).collect()
}

fn counters(p: &SourceProgram) -> [[u64; COUNTERS]; 2] {
    p.counters_by_direction().expect("counters")
}

fn c(k: &[[u64; COUNTERS]; 2], dir: usize, which: C) -> u64 {
    k[dir][which.0 as usize]
}

/// Tap mode: frames of three flows (one of them a MAC-pair flow of ARP
/// frames), both directions interleaved, sizes crossing the cutoff in every
/// way (exactly at it, one over, with under 14 bytes left).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn tap_mirrors_each_flows_first_bytes_and_cuts_the_boundary_frame() {
    require_root!();
    const N: u64 = 1000;
    let prog = program(N, 0, Duration::from_secs(60));
    let arp = |forward: bool, len: usize| {
        let mut f = eth(0x0806, &vec![0u8; len - 14]);
        if !forward {
            // The other direction: the MACs swapped.
            let (d, s) = (f[0..6].to_vec(), f[6..12].to_vec());
            f[0..6].copy_from_slice(&s);
            f[6..12].copy_from_slice(&d);
        }
        f
    };
    // (flow, frame): flow 0 is 1000 <-> 80 (its third frame cut to 26
    // bytes), flow 1 is 1001 <-> 80 (reaching 1000 bytes exactly), flow 2
    // the ARP pair (its third frame cut to 40 bytes), flow 3 1002 <-> 80
    // (its second frame would leave 10 bytes: under an Ethernet header).
    let frames: Vec<(u64, Vec<u8>)> = vec![
        (0, tcp(1000, 80, true, 74)),
        (1, tcp(1001, 80, true, 600)),
        (0, tcp(1000, 80, false, 900)),
        (2, arp(true, 60)),
        (1, tcp(1001, 80, false, 340)),
        (3, tcp(1002, 80, false, 990)),
        (0, tcp(1000, 80, false, 60)),
        (2, arp(false, 900)),
        (1, tcp(1001, 80, true, 60)),
        (0, tcp(1000, 80, true, 60)),
        (2, arp(true, 60)),
        (3, tcp(1002, 80, true, 60)),
        (2, arp(false, 60)),
        (1, tcp(1001, 80, false, 64)),
    ];
    let before = counters(&prog);
    let mut model = Model::default();
    let (mut kept_frames, mut cut_frames, mut past) = (0, 0, 0);
    for (i, (flow, f)) in frames.iter().enumerate() {
        let want = model.keep(*flow, f.len() as u64, N, 0);
        let (_, out) = test_run_raw(prog.xdp_tap_fd(), f).expect("BPF_PROG_TEST_RUN");
        if want == 0 {
            assert_eq!(
                out, *f,
                "frame {i}: past the cutoff, not mirrored (no metadata)"
            );
            past += 1;
            continue;
        }
        kept_frames += 1;
        cut_frames += u64::from(want < f.len() as u64);
        assert_eq!(
            out.len(),
            META_LEN + want as usize,
            "frame {i} of flow {flow}: {want} of its {} bytes",
            f.len()
        );
        assert_eq!(
            out[META_LEN..],
            f[..want as usize],
            "frame {i}: its first bytes"
        );
    }
    assert_eq!(
        (kept_frames, cut_frames, past),
        (10, 2, 4),
        "the table covers every case"
    );
    let after = counters(&prog);
    let d = |which| c(&after, 0, which) - c(&before, 0, which);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), frames.len() as u64);
    assert_eq!(d(C::MIRROR_CNT_CUTOFF), past);
    assert_eq!(d(C::MIRROR_CNT_CUTOFF_CUT), cut_frames);
    assert_eq!(d(C::MIRROR_CNT_CUTOFF_WHOLE), 0);
    assert_eq!(d(C::MIRROR_CNT_FLOW_UNTRACKED), 0);
    // No AF_XDP socket in a test run: every frame kept is counted no_socket.
    assert_eq!(
        d(C::MIRROR_CNT_MATCHED),
        d(C::MIRROR_CNT_REDIRECTED) + d(C::MIRROR_CNT_DROP_NO_SOCKET) + d(C::MIRROR_CNT_CUTOFF),
        "matched = mirrored + dropped + cutoff"
    );
    assert_eq!(
        prog.session_cutoff(0).expect("counts"),
        CutoffCounts {
            cutoff: past,
            cut: cut_frames,
            whole: 0
        }
    );
}

/// Copy mode: a flow's ingress and egress frames count together; the
/// boundary record is cut (orig_len still the whole frame) and the frame
/// itself always passes on unchanged.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_counts_both_directions_together_and_cuts_the_record() {
    require_root!();
    const N: u64 = 700;
    let prog = program(N, 0, Duration::from_secs(60));
    let ring = prog.copies().expect("ring");
    let [xdp, tc_egress, tc_ingress] = prog.copy_fds();
    let before = counters(&prog);
    let mut model = Model::default();
    // (hook, frame): ingress A->B at XDP or tcx, egress B->A at tcx.
    let frames = [
        (0, tcp(5000, 443, true, 300)),
        (1, tcp(5000, 443, false, 200)),
        (2, tcp(5000, 443, true, 250)),
        (1, tcp(5000, 443, false, 100)),
        (0, tcp(5000, 443, true, 60)),
        (0, tcp(5001, 443, true, 650)),
        (1, tcp(5001, 443, false, 1000)),
    ];
    let (mut cut, mut past) = ([0u64; 2], [0u64; 2]);
    for (i, (hook, f)) in frames.iter().enumerate() {
        // The client's port: the higher one.
        let ports = [
            u16::from_be_bytes([f[34], f[35]]),
            u16::from_be_bytes([f[36], f[37]]),
        ];
        let flow = u64::from(ports[0].max(ports[1]));
        let want = model.keep(flow, f.len() as u64, N, 0);
        let (fd, pass, dir) = match hook {
            0 => (xdp, XDP_PASS, 0),
            1 => (tc_egress, TC_NEXT, 1),
            _ => (tc_ingress, TC_NEXT, 0),
        };
        let (verdict, out) = test_run_raw(fd, f).expect("BPF_PROG_TEST_RUN");
        assert_eq!((verdict, &out), (pass, f), "frame {i} passes on unchanged");
        let recs = copy_ring::drain(&ring).expect("ring");
        if want == 0 {
            assert!(recs.is_empty(), "frame {i}: past the cutoff, no record");
            past[dir] += 1;
            continue;
        }
        let r = recs[0].as_ref().expect("a well-formed record");
        assert_eq!(recs.len(), 1);
        assert_eq!(
            r.orig_len as usize,
            f.len(),
            "frame {i}: the original length"
        );
        assert_eq!(
            r.data,
            f[..want as usize],
            "frame {i}: its first {want} bytes"
        );
        assert!(!r.cut, "not the record maximum");
        cut[dir] += u64::from(want < f.len() as u64);
    }
    assert_eq!((cut, past), ([1, 1], [1, 1]), "the table covers every case");
    let after = counters(&prog);
    for dir in 0..2 {
        let d = |which| c(&after, dir, which) - c(&before, dir, which);
        assert_eq!(d(C::MIRROR_CNT_CUTOFF), past[dir]);
        assert_eq!(d(C::MIRROR_CNT_CUTOFF_CUT), cut[dir]);
        assert_eq!(
            d(C::MIRROR_CNT_MATCHED),
            d(C::MIRROR_CNT_COPIED) + d(C::MIRROR_CNT_CUTOFF),
            "dir {dir}: matched = copied + cutoff"
        );
    }
}

/// flow_cutoff_packets alone, and with flow_cutoff_bytes: whichever comes
/// first; sessions' flows are apart from the other flows.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_packet_cutoff_keeps_the_first_n_frames_and_whichever_limit_comes_first_wins() {
    require_root!();
    let prog = program(0, 3, Duration::from_secs(60));
    let got: Vec<bool> = (0..6)
        .map(|i| mirrored(&prog, &tcp(7000, 22, i % 2 == 0, 1500)))
        .collect();
    assert_eq!(got, [true, true, true, false, false, false]);
    // Another flow has its own three.
    assert!(mirrored(&prog, &tcp(7001, 22, true, 60)));
    let prog = program(200, 3, Duration::from_secs(60));
    let got: Vec<bool> = [60, 60, 60, 60]
        .iter()
        .map(|&n| mirrored(&prog, &tcp(7000, 22, true, n)))
        .collect();
    assert_eq!(got, [true, true, true, false], "three frames: 180 bytes");
    let got: Vec<bool> = [150, 150, 60]
        .iter()
        .map(|&n| mirrored(&prog, &tcp(7002, 22, true, n)))
        .collect();
    assert_eq!(got, [true, true, false], "200 bytes: the second frame cut");
    assert_eq!(
        prog.session_cutoff(0).expect("counts"),
        CutoffCounts {
            cutoff: 2,
            cut: 1,
            whole: 0
        }
    );
}

/// The frame that crosses the byte cutoff keeps what is left when that is
/// at least an Ethernet header (14 bytes: exactly 14 is kept), and is not
/// mirrored when less is left (13).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_crossing_frame_keeps_an_ethernet_header_or_more_else_nothing() {
    require_root!();
    let prog = program(114, 0, Duration::from_secs(60));
    // 100 bytes, then 14 of the next 60 are left: cut to 14.
    assert_eq!(
        [
            kept(&prog, &tcp(7200, 80, true, 100)),
            kept(&prog, &tcp(7200, 80, true, 60))
        ],
        [100, 14]
    );
    // 101 bytes, then 13 are left: not mirrored, counted cutoff.
    assert_eq!(
        [
            kept(&prog, &tcp(7201, 80, true, 101)),
            kept(&prog, &tcp(7201, 80, true, 60))
        ],
        [101, 0]
    );
    assert_eq!(
        prog.session_cutoff(0).expect("counts"),
        CutoffCounts {
            cutoff: 1,
            cut: 1,
            whole: 0
        }
    );
}

/// The limits change under a flow (a schedule window's edge): both totals
/// were counted whichever limit was on, so the flow goes on from its whole
/// count, not from 0.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_flow_keeps_both_totals_when_its_limits_change() {
    require_root!();
    let mut prog = program(0, 3, Duration::from_secs(60));
    let f = tcp(7100, 443, true, 400);
    // Two frames under the packet limit: 800 bytes.
    assert_eq!([kept(&prog, &f), kept(&prog, &f)], [400, 400]);
    // A window of 1,000 bytes and no packet limit: 200 bytes are left.
    prog.set_cutoff(0, 1000, 0, Duration::from_secs(60))
        .expect("window");
    let got = [kept(&prog, &f), kept(&prog, &f)];
    assert_eq!(got, [200, 0], "the third frame cut at 1,000 bytes");
    // Back to three frames: the flow has sent four.
    prog.set_cutoff(0, 0, 3, Duration::from_secs(60))
        .expect("after the window");
    assert_eq!(kept(&prog, &f), 0);
}

/// A flow not seen for longer than the idle timeout starts over; one seen
/// within it does not.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn an_idle_flow_starts_over() {
    require_root!();
    let prog = program(0, 2, Duration::from_millis(200));
    let f = tcp(9000, 53, true, 80);
    assert_eq!(mirrored_each(&prog, &f, 3), [true, true, false]);
    // Idle past the timeout (the kernel's clock decides; 3x the timeout).
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(mirrored_each(&prog, &f, 3), [true, true, false]);
    // Seen again at once: still cut off.
    assert!(!mirrored(&prog, &tcp(9000, 53, false, 80)));
}

/// A small deterministic generator for the traffic mix.
struct Lcg(u64);

impl Lcg {
    /// Uniform in 0..1.
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform between `lo` and `hi`: as many flows of 1-10 KiB as of
    /// 10-100 KiB (a heavy tail).
    fn log_uniform(&mut self, lo: f64, hi: f64) -> u64 {
        (lo * (hi / lo).powf(self.unit())) as u64
    }
}

/// One TCP connection's frames, (from the client, length): handshake, a
/// request of `request` bytes, a response of `response` bytes in full-size
/// (1,514-byte) frames with an ACK per two, and the close.
fn connection(request: usize, response: u64) -> Vec<(bool, usize)> {
    let mut f = vec![(true, 74), (false, 74), (true, 66), (true, 66 + request)];
    let mut left = response;
    let mut n = 0;
    while left > 0 {
        let seg = left.min(1448);
        f.push((false, 66 + seg as usize));
        left -= seg;
        n += 1;
        if n % 2 == 0 {
            f.push((true, 66));
        }
    }
    f.extend([(true, 66), (false, 66), (false, 66), (true, 66)]);
    f
}

/// The README's mix: 2,000 short connections (requests of 200-1,400 bytes,
/// responses log-uniform from 500 B to 64 KiB: page loads, API calls) and 20
/// bulk transfers (responses log-uniform from 1 to 16 MiB: downloads,
/// backups), every frame through `xdp_tap` (BPF_PROG_TEST_RUN) with each
/// cutoff. Prints the share of frames and bytes each cutoff keeps (run with
/// `--nocapture`) and checks the kernel kept what the model says.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn what_the_cutoff_saves_on_a_mix_of_many_short_flows_and_a_few_bulk_ones() {
    require_root!();
    let mut rng = Lcg(2026);
    let mix: Vec<Vec<(bool, usize)>> = (0..2020)
        .map(|i| {
            let request = 200 + (rng.unit() * 1200.0) as usize;
            let response = if i % 101 == 100 {
                rng.log_uniform(1048576.0, 16.0 * 1048576.0)
            } else {
                rng.log_uniform(500.0, 65536.0)
            };
            connection(request, response)
        })
        .collect();
    let total_frames: u64 = mix.iter().map(|f| f.len() as u64).sum();
    let total_bytes: u64 = mix.iter().flatten().map(|f| f.1 as u64).sum();
    let bulk_bytes: u64 = mix
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 101 == 100)
        .flat_map(|(_, f)| f)
        .map(|f| f.1 as u64)
        .sum();
    println!(
        "mix: {} flows ({} bulk), {total_frames} frames, {total_bytes} bytes ({:.1}% in the bulk flows)",
        mix.len(),
        mix.len() / 101,
        100.0 * bulk_bytes as f64 / total_bytes as f64
    );
    let mut prog = program(0, 0, Duration::from_secs(60));
    for (run, (bytes, packets)) in [(4096u64, 0u64), (16384, 0), (65536, 0), (0, 32)]
        .into_iter()
        .enumerate()
    {
        prog.set_cutoff(0, bytes, packets, Duration::from_secs(60))
            .expect("cutoff");
        let before = counters(&prog);
        let mut model = Model::default();
        let (mut frames, mut kept, mut whole) = (0u64, 0u64, 0u64);
        for (i, flow) in mix.iter().enumerate() {
            // Each run's flows are new ones (other ports).
            let port = 10_000 + (run * mix.len() + i) as u16;
            let before = kept;
            for &(forward, len) in flow {
                let f = tcp(port, 443, forward, len);
                let (_, out) = test_run_raw(prog.xdp_tap_fd(), &f).expect("test run");
                let want = model.keep(u64::from(port), len as u64, bytes, packets);
                let got = if out == f {
                    0
                } else {
                    (out.len() - META_LEN) as u64
                };
                assert_eq!(got, want, "flow {i}");
                frames += u64::from(got > 0);
                kept += got;
            }
            whole += u64::from(kept - before == flow.iter().map(|f| f.1 as u64).sum::<u64>());
        }
        let after = counters(&prog);
        let d = |which| c(&after, 0, which) - c(&before, 0, which);
        assert_eq!(d(C::MIRROR_CNT_MATCHED), total_frames);
        assert_eq!(d(C::MIRROR_CNT_DROP_NO_SOCKET), frames);
        assert_eq!(d(C::MIRROR_CNT_CUTOFF), total_frames - frames);
        println!(
            "flow_cutoff_bytes = {bytes}, flow_cutoff_packets = {packets}: {frames} frames \
             ({:.1}%), {kept} bytes ({:.1}%) mirrored; {:.1}% of the bytes saved; \
             {whole} flows ({:.1}%) mirrored whole",
            100.0 * frames as f64 / total_frames as f64,
            100.0 * kept as f64 / total_bytes as f64,
            100.0 - 100.0 * kept as f64 / total_bytes as f64,
            100.0 * whole as f64 / mix.len() as f64
        );
    }
}

/// Two sessions of one source: `a` takes what 10.1.0.1 (V4A) sends, `b`
/// what 10.2.0.1 (V4B) sends, so the two directions of one flow go to two
/// sessions.
const TWO_SESSIONS: &str = r#"
[[source]]
name = "s"
interface = "x"
mode = "copy"
direction = "both"
[[filter]]
name = "from_a"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
source = "10.1.0.1/32"
[[filter.rule]]
number = 1
action = "accept"
direction = "egress"
source = "10.1.0.1/32"
[[filter]]
name = "from_b"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
source = "10.2.0.1/32"
[[filter.rule]]
number = 1
action = "accept"
direction = "egress"
source = "10.2.0.1/32"
[[target]]
name = "t"
kind = "interface"
interface = "y"
[[session]]
name = "a"
source = "s"
filter = "from_a"
targets = ["t"]
priority = 1
[[session]]
name = "b"
source = "s"
filter = "from_b"
targets = ["t"]
priority = 2
"#;

/// A flow's frames tracked per session: the client's frames (session `a`)
/// and the server's (session `b`) of one TCP connection are two flows, each
/// with its own flow_cutoff_packets.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn each_session_counts_its_own_flows() {
    require_root!();
    let config = config::parse(TWO_SESSIONS, "cutoff").expect("valid config");
    let filters = ruleset::source_filters(&config, 0);
    let ingress = RuleSet::build(&filters, config::Direction::Ingress).expect("ingress");
    let egress = RuleSet::build(&filters, config::Direction::Egress).expect("egress");
    let mut prog =
        SourceProgram::load_with_flows(1 << 20, mirror_ebpf::limits::FLOWS).expect("loads");
    prog.install(&ingress, Some(&egress)).expect("installs");
    for session in [0, 1] {
        prog.set_cutoff(session, 0, 2, Duration::from_secs(60))
            .expect("cutoff");
    }
    let session = |f: &[u8]| {
        test_run(prog.xdp_tap_fd(), f)
            .expect("test run")
            .map(|m| m.session)
    };
    let (from_a, from_b) = (tcp(4000, 80, true, 100), tcp(4000, 80, false, 100));
    assert_eq!([session(&from_a), session(&from_a)], [Some(0), Some(0)]);
    assert_eq!(
        [session(&from_b), session(&from_b)],
        [Some(1), Some(1)],
        "session b's first two frames of the flow, whatever session a saw"
    );
    assert_eq!([session(&from_a), session(&from_b)], [None, None]);
    assert_eq!(
        (0..2)
            .map(|s| prog.session_cutoff(s).expect("counts").cutoff)
            .collect::<Vec<_>>(),
        [1, 1]
    );
}

/// What makes two frames one flow: the protocol and the outer VLAN id
/// count too, so TCP and UDP between the same ports, and the same 5-tuple
/// tagged and untagged, are separate flows, each with its own
/// flow_cutoff_packets.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_protocol_and_the_vlan_id_tell_flows_apart() {
    require_root!();
    let prog = program(0, 2, Duration::from_secs(60));
    let tcp_frame = tcp(6000, 80, true, 100);
    let udp_frame = eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(6000, 80, 66)));
    let tagged = vlan_tags(&[(0x8100, 7)], 0x0800, &tcp_frame[14..]);
    let other_vlan = vlan_tags(&[(0x8100, 8)], 0x0800, &tcp_frame[14..]);
    for (what, f) in [
        ("TCP", &tcp_frame),
        ("UDP, same addresses and ports", &udp_frame),
        ("TCP in VLAN 7", &tagged),
        ("TCP in VLAN 8", &other_vlan),
    ] {
        assert_eq!(
            [mirrored(&prog, f), mirrored(&prog, f), mirrored(&prog, f)],
            [true, true, false],
            "{what}: a flow of its own, its first two frames mirrored"
        );
    }
}

/// A flow seen again and again, each time sooner than the idle timeout, is
/// never idle, however long it lasts in all: it stays cut off.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_flow_seen_within_the_idle_timeout_stays_cut_off_however_long_it_lasts() {
    require_root!();
    let idle = Duration::from_millis(500);
    let prog = program(0, 2, idle);
    let f = tcp(9100, 53, true, 80);
    assert_eq!(mirrored_each(&prog, &f, 3), [true, true, false]);
    // Five times the timeout in all, a frame every tenth of it.
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < 5 * idle {
        std::thread::sleep(idle / 10);
        assert!(
            !mirrored(&prog, &f),
            "frame {n}, {:?} in: still cut off",
            start.elapsed()
        );
        n += 1;
    }
}
