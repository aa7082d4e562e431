//! The filter engine against its definition: random rule sets (1 to 2,000
//! rules over 1 to 4 sessions, overlapping CIDRs of both families, port
//! ranges, VLANs, both directions) and random frames, classified four ways
//! that must agree on every frame:
//! - the plain Rust reference (`classify::classify`, linear first match);
//! - the compiled tables evaluated in Rust (`RuleSet::classify`);
//! - the kernel program through BPF_PROG_TEST_RUN, both with the verdict
//!   cache (as the daemon runs it) and scanning every frame.
//!
//! The first two run as any user (`tables_agree_with_the_reference`); the
//! kernel needs root, so `kernel_and_tables_agree_with_the_reference` is
//! `#[ignore]`d, reported as skipped unless run as root with `--include-ignored`
//! (which `cargo xtask test` passes as root).
//!
//! Plus the atomic-swap property: while rule sets flip under a running
//! classifier, every frame gets the verdict of one whole set.
//!
//! Failing cases are kept by proptest in
//! `tests/filter_differential.proptest-regressions` and replayed first on every run.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use ipnet::IpNet;
use mirror_user::config::{Action, Direction, Filter, PortRange, Rule};
use mirror_user::filter::classify::{self, parse_frame};
use mirror_user::filter::ruleset::RuleSet;
use mirror_user::kernel::{test_classify, SourceProgram};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};

/// Addresses rules and frames draw from, so that prefixes overlap and frames
/// fall inside them.
const V4_BASES: [[u8; 4]; 3] = [[10, 0, 0, 0], [10, 1, 2, 0], [192, 168, 0, 0]];
const V6_BASES: [[u8; 16]; 2] = [
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0xfd, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
];
const PORTS: [u16; 9] = [0, 1, 53, 80, 443, 1024, 8080, 40000, 65535];
const PROTOS: [u8; 6] = [6, 17, 132, 1, 58, 50];
const VLANS: [u16; 4] = [0, 1, 100, 4095];

fn cidr(v6: bool) -> impl Strategy<Value = IpNet> {
    if v6 {
        (0..V6_BASES.len(), any::<[u8; 16]>(), 0u8..=128)
            .prop_map(|(b, noise, len)| {
                let mut a = V6_BASES[b];
                // Keep the first 4 bytes of the base, vary the rest.
                a[4..].copy_from_slice(&noise[4..]);
                IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), len)
                    .expect("len <= 128")
                    .trunc()
            })
            .boxed()
    } else {
        (0..V4_BASES.len(), any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(b, noise, len)| {
                let mut a = V4_BASES[b];
                a[2] ^= noise[2] & 3;
                a[3] = noise[3];
                IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len)
                    .expect("len <= 32")
                    .trunc()
            })
            .boxed()
    }
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => prop::sample::select(&PORTS[..]), 1 => any::<u16>()]
}

fn ports() -> impl Strategy<Value = Option<PortRange>> {
    prop_oneof![
        2 => Just(None),
        1 => (port(), 0u16..2000).prop_map(|(lo, w)| Some(PortRange { lo, hi: lo.saturating_add(w) })),
        1 => port().prop_map(|p| Some(PortRange { lo: p, hi: p })),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop_oneof![3 => Just(Action::Accept), 2 => Just(Action::Reject)],
        prop_oneof![5 => Just(Direction::Ingress), 1 => Just(Direction::Egress)],
        prop_oneof![2 => Just(None), 3 => prop::sample::select(&PROTOS[..]).prop_map(Some), 1 => any::<u8>().prop_map(Some)],
        any::<bool>(),
        prop::option::weighted(0.4, cidr(false)),
        prop::option::weighted(0.4, cidr(false)),
        prop::option::weighted(0.4, cidr(true)),
        prop::option::weighted(0.4, cidr(true)),
        ports(),
        ports(),
        prop::option::weighted(0.15, prop::sample::select(&VLANS[..])),
    )
        .prop_map(|(action, direction, protocol, v6, s4, d4, s6, d6, sp, dp, vlan)| {
            let (source, destination) = if v6 { (s6, d6) } else { (s4, d4) };
            let has_ports = protocol.is_some_and(|p| matches!(p, 6 | 17 | 132));
            Rule {
                number: 0,
                action,
                direction,
                protocol,
                source,
                destination,
                source_port: if has_ports { sp } else { None },
                destination_port: if has_ports { dp } else { None },
                vlan,
            }
        })
}

/// 1 to 4 filters (sessions in priority order) with `total` rules in all.
fn filters() -> impl Strategy<Value = Vec<Filter>> {
    let total = prop_oneof![4 => 1usize..20, 3 => 20usize..300, 1 => 300usize..=2000];
    (total, 1usize..=4).prop_flat_map(|(total, sessions)| {
        (
            prop::collection::vec(rule(), total),
            prop::collection::vec(0..sessions, total),
        )
            .prop_map(move |(rules, owner)| {
                let mut out: Vec<Filter> = (0..sessions)
                    .map(|s| Filter {
                        name: format!("f{s}"),
                        rules: Vec::new(),
                    })
                    .collect();
                for (r, s) in rules.into_iter().zip(owner) {
                    let f = &mut out[s];
                    let mut r = r;
                    r.number = f.rules.len() as u16 + 1;
                    f.rules.push(r);
                }
                out
            })
    })
}

/// A small deterministic generator for the frames of one case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

/// An address inside a random rule prefix of the family, or a random one.
fn addr(rng: &mut Rng, rules: &[&Rule], v6: bool, src: bool) -> IpAddr {
    let nets: Vec<IpNet> = rules
        .iter()
        .filter_map(|r| if src { r.source } else { r.destination })
        .filter(|n| n.addr().is_ipv6() == v6)
        .collect();
    let noise = rng.next().to_be_bytes();
    let noise2 = rng.next().to_be_bytes();
    if !nets.is_empty() && rng.below(4) != 0 {
        let net = rng.pick(&nets);
        // Host bits random, network bits from the prefix.
        return match net {
            IpNet::V4(n) => {
                let host = u32::from_be_bytes(noise[..4].try_into().expect("4 bytes"));
                let mask = u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(
                    (u32::from(n.network()) & mask) | (host & !mask),
                ))
            }
            IpNet::V6(n) => {
                let mut h = [0u8; 16];
                h[..8].copy_from_slice(&noise);
                h[8..].copy_from_slice(&noise2);
                let host = u128::from_be_bytes(h);
                let mask = u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(n.network()) & mask) | (host & !mask),
                ))
            }
        };
    }
    if v6 {
        let mut a = rng.pick(&V6_BASES);
        a[8..].copy_from_slice(&noise);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        let mut a = rng.pick(&V4_BASES);
        a[2] ^= noise[0] & 3;
        a[3] = noise[1];
        IpAddr::V4(Ipv4Addr::from(a))
    }
}

/// A port at or next to a rule's range boundary, or a common/random one.
fn frame_port(rng: &mut Rng, rules: &[&Rule], src: bool) -> u16 {
    let ranges: Vec<PortRange> = rules
        .iter()
        .filter_map(|r| {
            if src {
                r.source_port
            } else {
                r.destination_port
            }
        })
        .collect();
    match rng.below(3) {
        0 if !ranges.is_empty() => {
            let r = rng.pick(&ranges);
            rng.pick(&[r.lo, r.hi, r.lo.wrapping_sub(1), r.hi.wrapping_add(1)])
        }
        1 => rng.pick(&PORTS),
        _ => rng.next() as u16,
    }
}

fn frame(rng: &mut Rng, rules: &[&Rule]) -> Vec<u8> {
    let v6 = rng.below(2) == 1;
    let proto = match rng.below(6) {
        0 => rng.next() as u8,
        _ => {
            let protos: Vec<u8> = rules.iter().filter_map(|r| r.protocol).collect();
            if protos.is_empty() || rng.below(2) == 0 {
                rng.pick(&PROTOS)
            } else {
                rng.pick(&protos)
            }
        }
    };
    let l4 = l4(
        frame_port(rng, rules, true),
        frame_port(rng, rules, false),
        20,
    );
    let (src, dst) = (addr(rng, rules, v6, true), addr(rng, rules, v6, false));
    let (ethertype, l3) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // Now and then a non-first fragment (no ports) or IP options.
            let frag = if rng.below(10) == 0 { 0x00b9 } else { 0 };
            let opts = if rng.below(8) == 0 { 8 } else { 0 };
            (0x0800, ipv4(proto, s.octets(), d.octets(), opts, frag, &l4))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let payload = match rng.below(10) {
                0 => [ext8(proto), l4.clone()].concat(),
                1 => [frag6(proto, 0x20), l4.clone()].concat(),
                _ => l4.clone(),
            };
            let next = match rng.below(10) {
                0 => 0,
                1 => 44,
                _ => proto,
            };
            (0x86dd, ipv6(next, s.octets(), d.octets(), &payload))
        }
        _ => unreachable!("one family per frame"),
    };
    let mut f = match rng.below(8) {
        0 => eth(0x0806, &[0u8; 28]), // ARP: not IP
        1 | 2 => {
            let vlans: Vec<u16> = rules.iter().filter_map(|r| r.vlan).collect();
            let vid = if vlans.is_empty() || rng.below(3) == 0 {
                rng.pick(&VLANS)
            } else {
                rng.pick(&vlans)
            };
            let tags: &[(u16, u16)] = if rng.below(3) == 0 {
                &[(0x88a8, vid), (0x8100, 7)]
            } else {
                &[(0x8100, vid)]
            };
            vlan_tags(tags, ethertype, &l3)
        }
        _ => eth(ethertype, &l3),
    };
    // Now and then cut the frame short.
    if rng.below(12) == 0 {
        let cut = 14 + rng.below(f.len() - 13);
        f.truncate(cut);
    }
    f
}

/// Loads the program once per test binary use; rule sets are swapped in.
fn program() -> SourceProgram {
    SourceProgram::load().expect("the tap program loads")
}

thread_local! {
    /// The property test's two programs (verdict cache on, and off), loaded
    /// once per thread (loading verifies four programs: ~1 s) and given a
    /// new rule set per case. A new rule set comes with an empty cache, so
    /// cases cannot see each other's verdicts.
    static PROGRAMS: std::cell::RefCell<Option<(SourceProgram, SourceProgram)>> =
        const { std::cell::RefCell::new(None) };
}

const FRAMES_PER_CASE: usize = 128;

/// One case of the property: `FRAMES_PER_CASE` frames drawn from the rules
/// (so that they hit them), each classified by the reference, the compiled
/// tables and, when given, the two kernel programs, which must all agree.
fn agree(
    filters: &[Filter],
    seed: u64,
    mut kernel: Option<&mut (SourceProgram, SourceProgram)>,
) -> Result<(), TestCaseError> {
    let refs: Vec<&Filter> = filters.iter().collect();
    let set = RuleSet::build(&refs, Direction::Ingress).expect("within limits");
    let all: Vec<&Rule> = filters.iter().flat_map(|f| &f.rules).collect();
    if let Some((cached, scan)) = kernel.as_deref_mut() {
        cached.install(&set, None).expect("the rule set installs");
        scan.install(&set, None).expect("the rule set installs");
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..FRAMES_PER_CASE {
        let f = frame(&mut rng, &all);
        let want = classify::classify(&refs, Direction::Ingress, &f);
        prop_assert_eq!(
            set.classify(&parse_frame(&f)),
            want,
            "tables, frame {:02x?}",
            f
        );
        if let Some((cached, scan)) = kernel.as_deref() {
            let got = test_classify(scan.xdp_tap_fd(), &f).expect("test run");
            prop_assert_eq!(got.map(usize::from), want, "kernel scan, frame {:02x?}", f);
            let got = test_classify(cached.xdp_tap_fd(), &f).expect("test run");
            prop_assert_eq!(
                got.map(usize::from),
                want,
                "kernel cached, frame {:02x?}",
                f
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(PtConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..PtConfig::default()
    })]

    /// Reference and compiled tables agree on every frame (no kernel: runs
    /// as any user; the kernel's half is the test below).
    #[test]
    fn tables_agree_with_the_reference(filters in filters(), seed in any::<u64>()) {
        agree(&filters, seed, None)?;
    }

    /// The cases of `kernel_and_tables_agree_with_the_reference`: not a test
    /// itself, so that it runs only after that test's root check.
    fn kernel_cases(filters in filters(), seed in any::<u64>()) {
        // The daemon's program (verdict cache on) and one that scans every
        // frame; frames drawn from the rules repeat class tuples, so the
        // cached program answers many from its cache.
        PROGRAMS.with_borrow_mut(|progs| {
            let progs = progs.get_or_insert_with(|| {
                (
                    program(),
                    SourceProgram::load_without_cache().expect("the tap program loads"),
                )
            });
            agree(&filters, seed, Some(progs))
        })?;
    }
}

/// Reference, compiled tables and the kernel program (with its verdict cache
/// and without) agree on every frame.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn kernel_and_tables_agree_with_the_reference() {
    require_root!();
    kernel_cases();
}

/// The AWS documentation's example: reject TCP 443 at 100, accept all at 200.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn aws_example_rejects_https_and_mirrors_the_rest_in_the_kernel() {
    require_root!();
    let text = r#"
[[source]]
name = "s"
interface = "feed0"
[[filter]]
name = "f"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "443"
[[target]]
name = "t"
kind = "interface"
interface = "tgt0"
[[session]]
name = "a"
source = "s"
filter = "f"
targets = ["t"]
"#;
    let config = mirror_user::config::parse(text, "aws").expect("valid");
    let set = RuleSet::build(
        &mirror_user::filter::ruleset::source_filters(&config, 0),
        Direction::Ingress,
    )
    .expect("builds");
    let mut prog = program();
    prog.install(&set, None).expect("installs");
    let https = eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(40000, 443, 20)));
    let http = eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(40000, 80, 20)));
    let dns = eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(40000, 443, 20)));
    let fd = prog.xdp_tap_fd();
    assert_eq!(test_classify(fd, &https).expect("run"), None);
    assert_eq!(test_classify(fd, &http).expect("run"), Some(0));
    assert_eq!(
        test_classify(fd, &dns).expect("run"),
        Some(0),
        "UDP 443 is not TCP 443"
    );
}

/// Rule sets flip between A and B about 200 times while another thread
/// classifies frames whose verdicts differ between A and B: each frame gets
/// A's verdict or B's, never a third (what a half-updated set would give).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn swapping_rule_sets_never_exposes_a_half_updated_set() {
    require_root!();
    let rule = |number, action, protocol, dst: &str, dport: Option<u16>| Rule {
        protocol,
        destination: Some(dst.parse().expect("cidr")),
        destination_port: dport.map(|p| PortRange { lo: p, hi: p }),
        ..Rule::any(number, action, Direction::Ingress)
    };
    // A: session 0 takes TCP 80 to 10.2/16; session 1 takes UDP to 10.0/8.
    // B: the other way round, and session 0 rejects TCP first.
    let a = [
        Filter {
            name: "0".into(),
            rules: vec![rule(1, Action::Accept, Some(6), "10.2.0.0/16", Some(80))],
        },
        Filter {
            name: "1".into(),
            rules: vec![rule(1, Action::Accept, Some(17), "10.0.0.0/8", None)],
        },
    ];
    let b = [
        Filter {
            name: "0".into(),
            rules: vec![
                rule(1, Action::Reject, Some(6), "10.0.0.0/8", None),
                rule(2, Action::Accept, Some(17), "10.2.0.0/16", Some(53)),
            ],
        },
        Filter {
            name: "1".into(),
            rules: vec![rule(1, Action::Accept, Some(6), "10.2.0.0/16", Some(80))],
        },
    ];
    let set_a = RuleSet::build(&a.iter().collect::<Vec<_>>(), Direction::Ingress).expect("A");
    let set_b = RuleSet::build(&b.iter().collect::<Vec<_>>(), Direction::Ingress).expect("B");
    let frames = [
        eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(1000, 80, 20))), // A: 0, B: 1
        eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(1000, 53, 20))), // A: 1, B: 0
        eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(1000, 54, 20))), // A: 1, B: none
        eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(1000, 81, 20))), // A: none, B: none
    ];
    let expect: Vec<(Option<u16>, Option<u16>)> = frames
        .iter()
        .map(|f| {
            let v = parse_frame(f);
            let s = |set: &RuleSet| set.classify(&v).map(|s| s as u16);
            (s(&set_a), s(&set_b))
        })
        .collect();
    assert_eq!(
        expect,
        [
            (Some(0), Some(1)),
            (Some(1), Some(0)),
            (Some(1), None),
            (None, None)
        ]
    );

    let probe = frames[0].clone();
    let mut prog = program();
    prog.install(&set_a, None).expect("A installs");
    let fd = prog
        .xdp_tap_fd()
        .try_clone_to_owned()
        .expect("dup the program fd");
    let stop = Arc::new(AtomicBool::new(false));
    let classifier = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut runs = 0u64;
            // Bounded: stops when told, or after 2 million runs.
            while !stop.load(Ordering::Relaxed) && runs < 2_000_000 {
                for (f, &(va, vb)) in frames.iter().zip(&expect) {
                    let got = test_classify(fd.as_fd(), f).expect("test run");
                    assert!(
                        got == va || got == vb,
                        "frame {f:02x?} got {got:?}: neither A's {va:?} nor B's {vb:?}"
                    );
                    runs += 1;
                }
            }
            runs
        })
    };
    for i in 0..200 {
        let (set, want) = if i % 2 == 0 {
            (&set_b, Some(1))
        } else {
            (&set_a, Some(0))
        };
        prog.install(set, None).expect("swap");
        // Once install returns, the new set is the one in force.
        assert_eq!(test_classify(prog.xdp_tap_fd(), &probe).expect("run"), want);
    }
    stop.store(true, Ordering::Relaxed);
    let runs = classifier.join().expect("classifier thread");
    assert!(runs > 0, "the classifier ran during the swaps");
}
