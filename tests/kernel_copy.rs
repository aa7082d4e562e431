//! Copy-mode kernel programs through BPF_PROG_TEST_RUN: every frame passes on
//! unchanged whatever happens (fail open), matching frames leave one
//! ring-buffer record with the right session, direction, lengths and bytes,
//! rules select only their own direction, and a full ring is counted.

mod common;

use common::*;
use mirror_ebpf::mirror::types::mirror_counter as C;
use mirror_user::config::{self, Direction};
use mirror_user::filter::ruleset::{self, RuleSet};
use mirror_user::kernel::copy_ring::{self, OwnedRecord};
use mirror_user::kernel::{test_run_raw, SourceProgram, COUNTERS};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): tcx goes on to the next program, or passes the frame.
const TC_NEXT: u32 = u32::MAX;

/// Session "web" mirrors ingress TCP to port 80 and egress TCP from port 80;
/// session "dns" (priority 2) ingress UDP only.
const RULES: &str = r#"
[[source]]
name = "s"
interface = "live0"
mode = "copy"
direction = "both"

[[filter]]
name = "web"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "tcp"
destination_port = "80"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "tcp"
source_port = "80"

[[filter]]
name = "dns"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"

[[target]]
name = "t"
kind = "interface"
interface = "tgt0"

[[session]]
name = "web"
source = "s"
filter = "web"
targets = ["t"]
priority = 1

[[session]]
name = "dns"
source = "s"
filter = "dns"
targets = ["t"]
priority = 2
"#;

struct Copy {
    prog: SourceProgram,
    ring: libbpf_rs::MapHandle,
}

impl Copy {
    fn new(ring_bytes: u32) -> Copy {
        let config = config::parse(RULES, "rules").expect("valid rules");
        let filters = ruleset::source_filters(&config, 0);
        let ingress = RuleSet::build(&filters, Direction::Ingress).expect("ingress rules");
        let egress = RuleSet::build(&filters, Direction::Egress).expect("egress rules");
        let mut prog = SourceProgram::load_with_ring(ring_bytes).expect("the programs load");
        prog.install(&ingress, Some(&egress))
            .expect("the rules install");
        let ring = prog.copies().expect("ring buffer");
        Copy { prog, ring }
    }

    /// Runs `frame` through XDP ingress (`egress` false) or tcx egress;
    /// asserts the frame passed on unchanged, returns the records it left.
    fn run(&self, frame: &[u8], egress: bool) -> Vec<OwnedRecord> {
        let [xdp, tc_egress, _] = self.prog.copy_fds();
        let (prog, pass) = if egress {
            (tc_egress, TC_NEXT)
        } else {
            (xdp, XDP_PASS)
        };
        let (verdict, out) = test_run_raw(prog, frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(verdict, pass, "the frame passes on");
        assert_eq!(out, frame, "the frame is not changed");
        copy_ring::drain(&self.ring)
            .expect("reading the ring")
            .into_iter()
            .map(|r| r.expect("a well-formed record"))
            .collect()
    }

    fn counters(&self) -> [[u64; COUNTERS]; 2] {
        self.prog.counters_by_direction().expect("counters")
    }
}

fn tcp(dport: u16, sport: u16, payload: usize) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(6, V4A, V4B, 0, 0, &l4(sport, dport, 20 + payload)),
    )
}

fn udp(payload: usize) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(17, V4A, V4B, 0, 0, &l4(5353, 53, 8 + payload)),
    )
}

fn delta(before: &[[u64; COUNTERS]; 2], after: &[[u64; COUNTERS]; 2], dir: usize, c: C) -> u64 {
    after[dir][c.0 as usize] - before[dir][c.0 as usize]
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn ingress_copies_carry_session_direction_and_the_whole_frame() {
    require_root!();
    let fx = Copy::new(1 << 20);
    let before = fx.counters();
    // One frame per size class and at its edges.
    for (i, size) in [0usize, 60, 74, 75, 200, 500, 1000, 1460, 2000, 3000]
        .into_iter()
        .enumerate()
    {
        let frame = tcp(80, 1000 + i as u16, size);
        let recs = fx.run(&frame, false);
        assert_eq!(recs.len(), 1, "one record for a {}-byte frame", frame.len());
        let r = &recs[0];
        assert_eq!(r.session, 0, "session web (priority 1)");
        assert!(!r.egress && !r.cut && !r.gso);
        assert_eq!(r.orig_len as usize, frame.len());
        assert_eq!(r.data, frame);
        assert_ne!(r.tstamp_tai, 0);
    }
    let dns = fx.run(&udp(30), false);
    assert_eq!(dns.len(), 1);
    assert_eq!(dns[0].session, 1, "session dns");
    // Not matched by any ingress rule: passed, no record.
    assert!(fx.run(&tcp(443, 1000, 10), false).is_empty());
    // An egress-only rule (TCP from port 80) never matches ingress.
    assert!(fx.run(&tcp(1000, 80, 10), false).is_empty());

    let after = fx.counters();
    let d = |c| delta(&before, &after, 0, c);
    assert_eq!(d(C::MIRROR_CNT_RECEIVED), 13);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 11);
    assert_eq!(d(C::MIRROR_CNT_FILTERED), 2);
    assert_eq!(d(C::MIRROR_CNT_COPIED), 11);
    assert_eq!(d(C::MIRROR_CNT_DROP_RING_FULL), 0);
    assert_eq!(d(C::MIRROR_CNT_COPY_ERROR), 0);
    assert_eq!(d(C::MIRROR_CNT_REDIRECTED), 0);
    // Nothing was counted as egress.
    assert!((0..COUNTERS).all(|i| after[1][i] == before[1][i]));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn egress_rules_select_only_egress_frames() {
    require_root!();
    let fx = Copy::new(1 << 20);
    let before = fx.counters();
    let reply = tcp(1000, 80, 100);
    let recs = fx.run(&reply, true);
    assert_eq!(recs.len(), 1);
    assert!(recs[0].egress);
    assert_eq!(recs[0].session, 0);
    assert_eq!(recs[0].data, reply);
    assert_eq!(recs[0].orig_len as usize, reply.len());
    // Ingress-only rules (TCP to port 80, any UDP) never match egress.
    assert!(fx.run(&tcp(80, 1000, 10), true).is_empty());
    assert!(fx.run(&udp(10), true).is_empty());
    let after = fx.counters();
    let d = |c| delta(&before, &after, 1, c);
    assert_eq!(d(C::MIRROR_CNT_RECEIVED), 3);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 1);
    assert_eq!(d(C::MIRROR_CNT_FILTERED), 2);
    assert_eq!(d(C::MIRROR_CNT_COPIED), 1);
    assert!((0..COUNTERS).all(|i| after[0][i] == before[0][i]));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn packet_length_cuts_the_copy_and_keeps_the_original_length() {
    require_root!();
    let mut fx = Copy::new(1 << 20);
    fx.prog.set_snap(0, 100).expect("snap");
    let frame = tcp(80, 1, 1000);
    for egress in [false, true] {
        let f = if egress {
            tcp(1, 80, 1000)
        } else {
            frame.clone()
        };
        let recs = fx.run(&f, egress);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].data, f[..100]);
        assert_eq!(recs[0].orig_len as usize, f.len());
        assert!(
            !recs[0].cut,
            "cut by packet_length, not by the record maximum"
        );
    }
    // Shorter frames are copied whole.
    let short = tcp(80, 2, 10);
    assert_eq!(fx.run(&short, false)[0].data, short);
    // The cut is the policy's: set_snap wrote the idle slot and flipped to
    // it (slot 1), and each record says which slot it saw, for userspace's
    // half (the rate limit). Flipping back to the whole frame takes the next
    // frame, in slot 0.
    assert_eq!(fx.prog.policy_slot(0).expect("slot"), 1);
    assert_eq!(fx.run(&frame, false)[0].slot, 1);
    fx.prog.set_snap(0, 0).expect("snap");
    let rec = &fx.run(&frame, false)[0];
    assert_eq!((rec.slot, rec.data.len()), (0, frame.len()));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_full_ring_is_counted_and_the_frames_still_pass() {
    require_root!();
    // One page: room for a handful of 1.5 KiB records.
    let fx = Copy::new(mirror_ebpf::limits::RING_MIN);
    let before = fx.counters();
    let frame = tcp(80, 7, 1400);
    let [xdp, _, _] = fx.prog.copy_fds();
    for _ in 0..10 {
        let (verdict, out) = test_run_raw(xdp, &frame).expect("test run");
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame);
    }
    let after = fx.counters();
    let d = |c| delta(&before, &after, 0, c);
    let copied = d(C::MIRROR_CNT_COPIED);
    let full = d(C::MIRROR_CNT_DROP_RING_FULL);
    assert_eq!(copied + full, 10);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 10);
    assert!(full > 0, "a 4 KiB ring cannot hold ten 1.5 KiB copies");
    let recs = copy_ring::drain(&fx.ring).expect("ring");
    assert_eq!(
        recs.len() as u64,
        copied,
        "every counted copy is in the ring"
    );
    // Once drained, there is room again.
    assert_eq!(fx.run(&frame, false).len(), 1);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn without_rules_everything_passes_and_nothing_is_copied() {
    require_root!();
    let prog = SourceProgram::load_with_ring(1 << 16).expect("load");
    let ring = prog.copies().expect("ring");
    let before = prog.counters_by_direction().expect("counters");
    let [xdp, egress, ingress_tc] = prog.copy_fds();
    let frame = tcp(80, 1, 10);
    for (fd, pass) in [(xdp, XDP_PASS), (egress, TC_NEXT), (ingress_tc, TC_NEXT)] {
        let (verdict, out) = test_run_raw(fd, &frame).expect("test run");
        assert_eq!((verdict, out.as_slice()), (pass, frame.as_slice()));
    }
    // Malformed: a bare Ethernet header, and a truncated IPv4 header.
    for f in [eth(0x0800, &[]), eth(0x0800, &[0x45, 0, 0])] {
        let (verdict, out) = test_run_raw(xdp, &f).expect("test run");
        assert_eq!((verdict, out.as_slice()), (XDP_PASS, f.as_slice()));
    }
    assert!(copy_ring::drain(&ring).expect("ring").is_empty());
    let after = prog.counters_by_direction().expect("counters");
    let no_rules = C::MIRROR_CNT_NO_RULE_SET.0 as usize;
    // Two ingress programs ran the first frame, plus the two malformed frames.
    assert_eq!(after[0][no_rules] - before[0][no_rules], 4);
    assert_eq!(after[1][no_rules] - before[1][no_rules], 1);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_samples_exactly_one_in_n_in_both_directions() {
    require_root!();
    let mut fx = Copy::new(1 << 20);
    fx.prog.set_sampling(0, 3).expect("sampling");
    let before = fx.counters();
    // The session's one sequence runs across directions: 6 ingress then 4
    // egress frames are frames 0..9, of which 0, 3, 6 and 9 are copied.
    let copies: Vec<bool> = (0..10)
        .map(|i| {
            let recs = if i < 6 {
                fx.run(&tcp(80, 1000 + i, 10), false)
            } else {
                fx.run(&tcp(1000 + i, 80, 10), true)
            };
            !recs.is_empty()
        })
        .collect();
    assert_eq!(
        copies,
        [true, false, false, true, false, false, true, false, false, true]
    );
    let after = fx.counters();
    for (dir, matched, copied) in [(0, 6, 2), (1, 4, 2)] {
        let d = |c| delta(&before, &after, dir, c);
        assert_eq!(d(C::MIRROR_CNT_MATCHED), matched);
        assert_eq!(d(C::MIRROR_CNT_COPIED), copied);
        assert_eq!(
            d(C::MIRROR_CNT_MATCHED),
            d(C::MIRROR_CNT_COPIED) + d(C::MIRROR_CNT_SAMPLED_OUT) + d(C::MIRROR_CNT_SCHEDULED_OUT),
            "matched = copied + sampled_out + scheduled_out"
        );
    }
    assert_eq!(fx.prog.session_sampled_out(0).expect("counter"), 6);
}

/// Copy mode's kernel path through BPF_PROG_TEST_RUN, in a namespace with
/// two veth pairs (a0-b0, and a1-b1 with MTU 600): a kernel-path session's
/// frames pass on unchanged and leave no ring record; each is cloned, byte
/// for byte, to each destination that takes it; and every frame given to a
/// destination ends in exactly one of its counters: sent (packets, bytes),
/// too_big (longer than its device takes), down (marked down), errors (no
/// such device).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn kernel_path_clones_to_each_destination_and_counts_every_outcome() {
    require_root!();
    use mirror_user::kernel::{fast_path::max_len, CloneDest, CloneStats};
    use mirror_user::lab::{self, Capture, Netns};
    use std::os::fd::AsFd;

    let ns = Netns::new("clone").expect("netns");
    lab::veth(&ns, "a0", &ns, "b0", 1).expect("veth");
    lab::veth(&ns, "a1", &ns, "b1", 1).expect("veth");
    ns.ip(&["link", "set", "a1", "mtu", "600"]).expect("mtu");
    let ifindex = |dev: &'static str| {
        ns.run(move || Ok(mirror_user::kernel::ifindex(dev)?))
            .expect("ifindex")
    };
    let mut fx = Copy::new(1 << 20);
    // Session web (0): egress TCP from port 80, to both ports; session
    // dns (1): ingress UDP, to the most destinations a session has: devices
    // that do not exist, and a0 last.
    let dests = [
        CloneDest {
            ifindex: ifindex("a0"),
            max_len: max_len(Some(1500)),
            tunnel: false,
        },
        CloneDest {
            ifindex: ifindex("a1"),
            max_len: max_len(Some(600)),
            tunnel: false,
        },
    ];
    fx.prog.set_clone_path(0, &dests).expect("clone path");
    let most = mirror_ebpf::limits::MAX_FAST_TARGETS;
    let mut wide = vec![
        CloneDest {
            ifindex: 999_999,
            max_len: u32::MAX,
            tunnel: false,
        };
        most as usize - 1
    ];
    wide.push(dests[0]);
    fx.prog.set_clone_path(1, &wide).expect("clone path");
    let caps = ["b0", "b1"].map(|d| Capture::start(&ns, d).expect("capture"));
    let before = fx.counters();
    // Runs `frame` through a tcx program inside the namespace (where the
    // destinations' ifindexes are); the frame must pass on unchanged.
    let [_, egress, ingress] = fx
        .prog
        .copy_fds()
        .map(|fd| fd.try_clone_to_owned().expect("dup"));
    let run = |prog: &std::os::fd::OwnedFd, frame: Vec<u8>| {
        let fd = prog.try_clone().expect("dup");
        let (verdict, out) = ns
            .run(move || Ok(test_run_raw(fd.as_fd(), &frame).map(|r| (r, frame))?))
            .map(|((v, out), frame)| (v, out == frame))
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!((verdict, out), (TC_NEXT, true), "passed on unchanged");
    };
    // a1 takes frames of up to 618 bytes (MTU 600 + Ethernet + a VLAN
    // tag's room, what the kernel lets through): the last small frame is
    // exactly that, the first big one a byte more.
    let mut small: Vec<Vec<u8>> = (0..3).map(|i| tcp(1000 + i, 80, 100)).collect();
    small.push(tcp(1003, 80, 618 - 54));
    let big: Vec<Vec<u8>> = [619 - 54, 1000]
        .iter()
        .enumerate()
        .map(|(i, &p)| tcp(2000 + i as u16, 80, p))
        .collect();
    assert_eq!((small[3].len(), big[0].len()), (618, 619));
    for f in small.iter().chain(&big) {
        run(&egress, f.clone());
    }
    fx.prog.set_clone_down(0, 1, true).expect("down");
    let late = tcp(3000, 80, 100);
    run(&egress, late.clone());
    let dns = udp(50);
    run(&ingress, dns.clone());
    // Not matched: neither cloned nor copied.
    run(&egress, tcp(1000, 443, 10));

    assert!(
        copy_ring::drain(&fx.ring).expect("ring").is_empty(),
        "no ring record on the kernel path"
    );
    let after = fx.counters();
    for (dir, matched) in [(0, 1), (1, 7)] {
        let d = |c| delta(&before, &after, dir, c);
        assert_eq!(d(C::MIRROR_CNT_MATCHED), matched, "direction {dir}");
        assert_eq!(d(C::MIRROR_CNT_COPIED), 0);
    }
    assert_eq!(fx.prog.clone_dir().expect("clone_dir"), [1, 7]);
    let len = |fs: &[&Vec<u8>]| fs.iter().map(|f| f.len() as u64).sum::<u64>();
    let to_b0: Vec<&Vec<u8>> = small.iter().chain(&big).chain([&late]).collect();
    assert_eq!(
        fx.prog.clone_stats(0, 0).expect("stats"),
        CloneStats {
            packets: 7,
            bytes: len(&to_b0),
            ..Default::default()
        },
        "a0 takes every frame"
    );
    assert_eq!(
        fx.prog.clone_stats(0, 1).expect("stats"),
        CloneStats {
            packets: 4,
            bytes: len(&small.iter().collect::<Vec<_>>()),
            too_big: 2,
            down: 1,
            errors: 0,
        },
        "a1: the frames it takes; the ones over its MTU, by one byte or more, are \
         too_big; then down"
    );
    for key in 0..most - 1 {
        assert_eq!(
            fx.prog.clone_stats(1, key).expect("stats"),
            CloneStats {
                errors: 1,
                ..Default::default()
            },
            "no such device (destination {key})"
        );
    }
    assert_eq!(
        fx.prog.clone_stats(1, most - 1).expect("stats"),
        CloneStats {
            packets: 1,
            bytes: dns.len() as u64,
            ..Default::default()
        },
        "the last destination, a0"
    );
    let [b0, b1] = caps.map(Capture::finish);
    let mut want_b0: Vec<Vec<u8>> = to_b0.into_iter().cloned().collect();
    want_b0.push(dns);
    assert_eq!(b0, want_b0, "b0");
    assert_eq!(b1, small, "b1");
}

/// Copy mode's kernel tunnels, through BPF_PROG_TEST_RUN in a namespace with
/// a veth pair (a0-b0) toward the collector: the source's tcx program sends
/// a tunnel destination's clone to the relay and the frame itself keeps its
/// own mark and priority (a clone nobody's relay program took is an error,
/// not a copy sent); the relay program reads the slot, direction and flow
/// hash the mark and priority carry, cuts the copy to the tunnel's mtu (and
/// the session's packet_length),
/// pushes the slot's headers (the VXLAN source port from the flow hash,
/// ERSPAN III's D bit from the direction), sends it to the slot's device and
/// counts each outcome exactly; a frame without the mark is dropped, counted;
/// a GSO super-frame is refused for a tunnel, counted `too_big`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_relay_encapsulates_by_the_mark_and_the_frame_keeps_its_own() {
    require_root!();
    use mirror_user::config::{ErspanVersion, Granularity, TargetSpec};
    use mirror_user::kernel::{test_run_skb, CloneDest, CloneStats, SkbRun, TunnelStats};
    use mirror_user::lab::{self, Capture, Netns};
    use mirror_user::target::{encap, kernel_tunnel};
    use std::os::fd::AsFd;

    const TC_SHOT: u32 = 2;
    use mirror_ebpf::mirror::types::mirror_relay as relay_mark;
    const MAGIC: u32 = relay_mark::MIRROR_RELAY_MAGIC.0;
    const MAGIC_SHIFT: u32 = relay_mark::MIRROR_RELAY_MAGIC_SHIFT.0;
    const DIR_SHIFT: u32 = relay_mark::MIRROR_RELAY_DIR_SHIFT.0;
    const PSLOT_SHIFT: u32 = relay_mark::MIRROR_RELAY_PSLOT_SHIFT.0;
    let ns = Netns::new("relay").expect("netns");
    lab::veth(&ns, "a0", &ns, "b0", 1).expect("veth");
    lab::veth(&ns, "a1", &ns, "b1", 1).expect("veth");
    let ifindex = |dev: &'static str| {
        ns.run(move || Ok(mirror_user::kernel::ifindex(dev)?))
            .expect("ifindex")
    };
    let fx = Copy::new(1 << 20);
    let mut prog = fx.prog;
    // Session web (0): destination 0 a relay that does not exist, 1 a plain
    // veth, where no relay program takes the clone.
    let tunnel = |ifindex| CloneDest {
        ifindex,
        max_len: u32::MAX,
        tunnel: true,
    };
    prog.set_clone_path(0, &[tunnel(999_999), tunnel(ifindex("a1"))])
        .expect("clone path");
    let run_gso = |fd: std::os::fd::BorrowedFd<'_>, frame: Vec<u8>, mark, priority, gso| {
        let fd = fd.try_clone_to_owned().expect("dup");
        ns.run(move || Ok(test_run_skb(fd.as_fd(), &frame, mark, priority, gso)?))
            .expect("BPF_PROG_TEST_RUN")
    };
    let run = |fd, frame, mark, priority| run_gso(fd, frame, mark, priority, 0);
    let frame = tcp(1000, 80, 100);
    let egress = prog.copy_fds()[1].try_clone_to_owned().expect("dup");
    let egress = egress.as_fd();
    let b1 = Capture::start(&ns, "b1").expect("capture b1");
    assert_eq!(
        run(egress, frame.clone(), 0xabc, 5),
        SkbRun {
            verdict: TC_NEXT,
            frame: frame.clone(),
            mark: 0xabc,
            priority: 5
        },
        "the frame passes on with its own mark and priority"
    );
    // A GSO super-frame is refused for a tunnel, counted, never cut.
    assert_eq!(run_gso(egress, frame.clone(), 0, 0, 2).verdict, TC_NEXT);
    assert_eq!(b1.finish().len(), 1, "the plain veth got the one clone");
    for key in [0, 1] {
        assert_eq!(
            prog.clone_stats(0, key).expect("stats"),
            CloneStats {
                errors: 1,
                too_big: 1,
                ..Default::default()
            },
            "destination {key}: no relay took the frame; the super-frame too_big"
        );
    }

    // The relay: slot (0, 0) VXLAN, (0, 1) ERSPAN III, both out of a0.
    let hop = lab_hop(ifindex("a0"));
    let t = lab_tunnel();
    let vxlan = TargetSpec::Vxlan {
        tunnel: t,
        port: 4789,
    };
    let erspan = TargetSpec::Erspan {
        tunnel: t,
        version: ErspanVersion::Three,
        granularity: Granularity::Nanos100,
    };
    let vx = kernel_tunnel::headers(&vxlan, 42, &hop, 0).expect("headers");
    let er = kernel_tunnel::headers(&erspan, 42, &hop, 0).expect("headers");
    prog.set_tunnel(0, 0, &vx).expect("slot 0");
    prog.set_tunnel(0, 1, &er).expect("slot 1");
    // Session 0: the session bits stay 0.
    let mark = |egress: u32, key: u32| MAGIC << MAGIC_SHIFT | egress << DIR_SHIFT | key;
    let b0 = Capture::start(&ns, "b0").expect("capture b0");
    let relay = prog.relay_fd().try_clone_to_owned().expect("dup");
    let relay = relay.as_fd();
    let long = tcp(1000, 80, 1514 - 54);
    let mut sent = Vec::new();
    for (f, m) in [
        (frame.clone(), mark(0, 0)),
        (long.clone(), mark(0, 0)),
        (frame.clone(), mark(1, 1)),
    ] {
        let r = run(relay, f, m, 0x1234);
        assert_eq!(r.verdict, TC_SHOT, "never passed on to the TAP");
        sent.push(r.frame);
    }
    let got = b0.finish();
    assert_eq!(got, sent, "a0 sent what the program built");
    // VXLAN: the flow hash's source port, the frame whole, then cut to 1464.
    for (p, inner) in got[..2].iter().zip([&frame[..], &long[..1464]]) {
        let h = encap::decode_vxlan(&p[34..]).expect("VXLAN");
        assert_eq!(
            (h.source_port, h.vni, usize::from(h.udp_len)),
            (encap::vxlan_source_port(0x1234), 42, 16 + inner.len())
        );
        assert_eq!(&p[50..], inner);
    }
    let d = encap::decode_gre(&got[2][34..]).expect("GRE");
    let e = d.erspan.expect("ERSPAN");
    assert_eq!((e.session_id, e.egress, e.sequence), (42, true, 0));
    assert_eq!(&got[2][34 + d.payload..], &frame[..]);
    let bytes = (frame.len() + 1464) as u64;
    assert_eq!(
        prog.tunnel_stats(0, 0).expect("stats"),
        TunnelStats {
            packets: 2,
            bytes,
            truncated: 1,
            ..Default::default()
        }
    );
    // The session's packet_length cuts too, and is not the tunnel's cut
    // (no `truncated`, no T bit).
    prog.set_snap(0, 100).expect("packet_length");
    let b0 = Capture::start(&ns, "b0").expect("capture b0");
    // The mark carries the policy slot the frame was classified under.
    let slot = prog.policy_slot(0).expect("policy slot");
    assert_eq!(
        run(relay, long.clone(), mark(0, 1) | slot << PSLOT_SHIFT, 0).verdict,
        TC_SHOT
    );
    let got = b0.finish();
    let d = encap::decode_gre(&got[0][34..]).expect("GRE");
    assert_eq!(&got[0][34 + d.payload..], &long[..100]);
    assert!(
        !d.erspan.expect("ERSPAN").truncated,
        "no T bit for packet_length"
    );
    prog.set_snap(0, 0).expect("packet_length");
    // Down, and a frame without the mark.
    let mut down = er;
    down.set_down(true);
    prog.set_tunnel(0, 1, &down).expect("slot 1");
    assert_eq!(run(relay, frame.clone(), mark(0, 1), 0).verdict, TC_SHOT);
    assert_eq!(run(relay, frame.clone(), 0, 0).verdict, TC_SHOT);
    assert_eq!(
        prog.tunnel_stats(0, 1).expect("stats"),
        TunnelStats {
            packets: 2,
            bytes: frame.len() as u64 + 100,
            down: 1,
            ..Default::default()
        }
    );
    assert_eq!(prog.relay_foreign(), 1, "the unmarked frame");
    // The mark's session and destination fields hold the largest of each:
    // session 63's destination 31 is its own slot.
    const SESSION_SHIFT: u32 = relay_mark::MIRROR_RELAY_SESSION_SHIFT.0;
    let (last_s, last_k) = (
        mirror_ebpf::limits::MAX_SESSIONS - 1,
        mirror_ebpf::limits::MAX_FAST_TARGETS - 1,
    );
    prog.set_tunnel(last_s, last_k, &vx).expect("last slot");
    let b0 = Capture::start(&ns, "b0").expect("capture b0");
    let m = MAGIC << MAGIC_SHIFT | last_s << SESSION_SHIFT | last_k;
    assert_eq!(run(relay, frame.clone(), m, 0x1234).verdict, TC_SHOT);
    let got = b0.finish();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][50..], &frame[..]);
    assert_eq!(
        prog.tunnel_stats(last_s, last_k).expect("stats"),
        TunnelStats {
            packets: 1,
            bytes: frame.len() as u64,
            ..Default::default()
        }
    );
    for (s, k) in [(0, 0), (0, 1)] {
        assert_eq!(
            prog.tunnel_stats(s, k).expect("stats").packets,
            2,
            "{s}/{k}"
        );
    }
}

/// Copy mode's kernel tunnels end to end in the kernel: the source's tcx
/// program marks each tunnel destination's clone with its session and key
/// and sends it to the relay (a TAP whose tcx egress runs `tc_relay`, as
/// the daemon sets it up), which encapsulates it by that slot. Session dns
/// (1, not 0: the session's bits count) has three tunnels on the relay,
/// each with its own VNI, out of a0: b0 gets one copy per VNI, and each
/// slot and each destination counts exactly one.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_source_marks_each_tunnel_clone_with_its_own_slot_for_the_relay() {
    require_root!();
    use mirror_user::config::TargetSpec;
    use mirror_user::kernel::{CloneDest, CloneStats, TunnelStats};
    use mirror_user::lab::{self, Capture, Netns};
    use mirror_user::target::{encap, kernel_tunnel};
    use std::os::fd::AsFd;

    let ns = Netns::new("relaymark").expect("netns");
    lab::veth(&ns, "a0", &ns, "b0", 1).expect("veth");
    let mut fx = Copy::new(1 << 20);
    let _inside = Inside::enter(&ns);
    let a0 = mirror_user::kernel::ifindex("a0").expect("ifindex");
    let relay = fx.prog.attach_relay(a0).expect("relay");
    let hop = lab_hop(a0);
    let vxlan = TargetSpec::Vxlan {
        tunnel: lab_tunnel(),
        port: 4789,
    };
    const KEYS: u32 = 3;
    for k in 0..KEYS {
        let h = kernel_tunnel::headers(&vxlan, 40 + k, &hop, 0).expect("headers");
        fx.prog.set_tunnel(1, k, &h).expect("slot");
    }
    let dest = CloneDest {
        ifindex: relay,
        max_len: u32::MAX,
        tunnel: true,
    };
    fx.prog
        .set_clone_path(1, &[dest; KEYS as usize])
        .expect("clone path");
    let b0 = Capture::start(&ns, "b0").expect("capture");
    let frame = udp(50);
    let [_, _, ingress] = fx.prog.copy_fds();
    let (verdict, out) = test_run_raw(ingress.as_fd(), &frame).expect("BPF_PROG_TEST_RUN");
    assert_eq!((verdict, &out), (TC_NEXT, &frame), "passed on unchanged");
    let got = b0.finish();
    let mut vnis: Vec<u32> = got
        .iter()
        .map(|p| {
            assert_eq!(&p[50..], &frame[..], "the frame whole after the headers");
            encap::decode_vxlan(&p[34..]).expect("VXLAN").vni
        })
        .collect();
    vnis.sort_unstable();
    assert_eq!(vnis, [40, 41, 42], "one copy per slot, each by its own");
    for k in 0..KEYS {
        let one = frame.len() as u64;
        assert_eq!(
            fx.prog.clone_stats(1, k).expect("stats"),
            CloneStats {
                packets: 1,
                bytes: one,
                ..Default::default()
            },
            "destination {k}"
        );
        assert_eq!(
            fx.prog.tunnel_stats(1, k).expect("stats"),
            TunnelStats {
                packets: 1,
                bytes: one,
                ..Default::default()
            },
            "slot 1/{k}"
        );
    }
    assert_eq!(fx.prog.relay_foreign(), 0);
}

/// A disabled policy (`enabled = false`, or a schedule window's) leaves out
/// the session's frames in both directions, at XDP, tcx ingress and tcx
/// egress alike: no record, each counted `scheduled_out` in its own
/// direction and for the session. The other session copies as before.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_disabled_session_copies_nothing_in_either_direction_and_counts_it_scheduled_out() {
    require_root!();
    let mut fx = Copy::new(1 << 20);
    let off = config::Policy {
        enabled: false,
        sample: 1,
        rate_limit_pps: 0,
        packet_length: 0,
        flow_cutoff_bytes: 0,
        flow_cutoff_packets: 0,
    };
    fx.prog.set_policy(0, &off, false).expect("session web off");
    let before = fx.counters();
    assert!(fx.run(&tcp(80, 1000, 10), false).is_empty(), "XDP ingress");
    let [_, _, tc_ingress] = fx.prog.copy_fds();
    let f = tcp(80, 1001, 10);
    let (verdict, out) = test_run_raw(tc_ingress, &f).expect("BPF_PROG_TEST_RUN");
    assert_eq!((verdict, out.as_slice()), (TC_NEXT, f.as_slice()));
    assert!(
        copy_ring::drain(&fx.ring).expect("ring").is_empty(),
        "tcx ingress"
    );
    for i in 0..3 {
        assert!(
            fx.run(&tcp(1000 + i, 80, 10), true).is_empty(),
            "tcx egress"
        );
    }
    assert_eq!(fx.run(&udp(10), false).len(), 1, "session dns copies");
    let after = fx.counters();
    for (dir, scheduled_out, copied) in [(0, 2, 1), (1, 3, 0)] {
        let d = |c| delta(&before, &after, dir, c);
        assert_eq!(
            (d(C::MIRROR_CNT_SCHEDULED_OUT), d(C::MIRROR_CNT_COPIED)),
            (scheduled_out, copied),
            "direction {dir}: (scheduled_out, copied)"
        );
        assert_eq!(
            d(C::MIRROR_CNT_MATCHED),
            d(C::MIRROR_CNT_COPIED) + d(C::MIRROR_CNT_SCHEDULED_OUT)
        );
    }
    assert_eq!(fx.prog.session_scheduled_out(0).expect("counter"), 5);
    assert_eq!(fx.prog.session_scheduled_out(1).expect("counter"), 0);
}

/// An edge-triggered epoll on the ring: one event per wake-up of its
/// readers, whether anyone waits or not.
struct Wakeups(std::os::fd::OwnedFd);

impl Wakeups {
    fn new(ring: &libbpf_rs::MapHandle) -> Wakeups {
        use std::os::fd::{AsRawFd, FromRawFd};
        // Safety: epoll_create1 takes flags only; the fd is ours.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1");
        // Safety: as above.
        let ep = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        let fd = std::os::fd::AsFd::as_fd(ring).as_raw_fd();
        // Safety: valid fds and event.
        let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Wakeups(ep)
    }

    /// Whether the ring woke its readers since the last look (waiting
    /// 20 ms for the kernel's deferred wake-up, an irq_work).
    fn woke(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // Safety: one event of room, a bounded timeout.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, 20) };
        assert!(n >= 0, "epoll_wait");
        n == 1
    }
}

/// The reader is woken when the records waiting cross a multiple of the
/// threshold, not again for each record after it (each wake-up is a
/// self-IPI on the producing CPU), and again after it read: a threshold of
/// exactly three records wakes it at records 3, 6 and 9; one byte more at
/// 4, 7 and 10; three and a half records at 4 and 7.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_ring_wakes_its_reader_when_the_waiting_bytes_cross_each_multiple_of_the_threshold() {
    require_root!();
    let mut fx = Copy::new(1 << 20);
    // A 1,400-byte-payload frame is a record of the 1,536-byte class: the
    // record, its 8-byte header, rounded to 8.
    let record = (std::mem::size_of::<mirror_ebpf::mirror::types::mirror_copy>() + 1536 + 8)
        .next_multiple_of(8) as u64;
    let wakeups = Wakeups::new(&fx.ring);
    let frame = tcp(80, 7, 1400);
    for (threshold, at) in [
        (3 * record, [3, 6, 9].as_slice()),
        (3 * record + 1, &[4, 7, 10]),
        (3 * record + record / 2, &[4, 7]),
    ] {
        fx.prog.set_wake_bytes(threshold).expect("the threshold");
        let [xdp, _, _] = fx.prog.copy_fds();
        for round in 0..2 {
            let mut woke = Vec::new();
            for n in 1..=10 {
                let (verdict, _) = test_run_raw(xdp, &frame).expect("test run");
                assert_eq!(verdict, XDP_PASS);
                if wakeups.woke() {
                    woke.push(n);
                }
            }
            assert_eq!(
                woke, at,
                "threshold {threshold} ({record}-byte records), round {round}"
            );
            assert_eq!(copy_ring::drain(&fx.ring).expect("ring").len(), 10);
        }
    }
}
