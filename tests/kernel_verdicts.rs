//! Verdict tables for the tap-mode XDP program, run through BPF_PROG_TEST_RUN:
//! every supported frame shape, well formed and truncated at every byte, with
//! exact counter deltas, checked against explicit expectations and against
//! the plain Rust reference classifier.

mod common;

use common::*;
use mirror_ebpf::mirror::types::mirror_counter as C;
use mirror_user::config::{self, Config, Direction, Filter};
use mirror_user::filter::classify;
use mirror_user::filter::ruleset::{self, RuleSet};
use mirror_user::kernel::{SourceProgram, COUNTERS};

const XDP_DROP: u32 = 1;

/// Two sessions on one source, exercising every rule field.
const RULES: &str = r#"
[[source]]
name = "s"
interface = "feed0"

[[filter]]
name = "first"          # session "a", priority 1
[[filter.rule]]
number = 10
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "443"
[[filter.rule]]
number = 20
action = "accept"
direction = "ingress"
protocol = "tcp"
destination = "10.2.0.0/16"
[[filter.rule]]
number = 30
action = "accept"
direction = "ingress"
protocol = "udp"
source_port = "5000-5010"
[[filter.rule]]
number = 40
action = "accept"
direction = "ingress"
vlan = 100
[[filter.rule]]
number = 50
action = "accept"
direction = "ingress"
protocol = "sctp"
[[filter.rule]]
number = 60
action = "accept"
direction = "egress"    # never applies to ingress frames

[[filter]]
name = "second"         # session "b", priority 2
[[filter.rule]]
number = 10
action = "reject"
direction = "ingress"
protocol = "icmp"
[[filter.rule]]
number = 20
action = "accept"
direction = "ingress"
source = "2001:db8::/32"
[[filter.rule]]
number = 30
action = "accept"
direction = "ingress"
protocol = 17
[[filter.rule]]
number = 40
action = "accept"
direction = "ingress"
protocol = 50

[[target]]
name = "t"
kind = "interface"
interface = "tgt0"

[[session]]
name = "b"
source = "s"
filter = "second"
targets = ["t"]
priority = 2

[[session]]
name = "a"
source = "s"
filter = "first"
targets = ["t"]
priority = 1
"#;

struct Fixture {
    config: Config,
    sessions: Vec<usize>,
    prog: SourceProgram,
}

impl Fixture {
    fn new(text: &str) -> Fixture {
        let config = config::parse(text, "rules").expect("valid rules");
        let sessions = config.sessions_of(0);
        let set = RuleSet::build(&ruleset::source_filters(&config, 0), Direction::Ingress)
            .expect("the rules compile");
        let mut prog = SourceProgram::load().expect("the program loads");
        prog.install(&set, None).expect("the rules install");
        Fixture {
            config,
            sessions,
            prog,
        }
    }

    fn filters(&self) -> Vec<&Filter> {
        self.sessions
            .iter()
            .map(|&s| &self.config.filters[self.config.sessions[s].filter])
            .collect()
    }

    fn session_counts(&self) -> Vec<u64> {
        (0..self.sessions.len() as u32)
            .map(|s| self.prog.session_matched(s).expect("session counter"))
            .collect()
    }

    /// Runs one frame; returns (kernel session, counter deltas).
    fn run(&self, frame: &[u8]) -> (Option<usize>, [u64; COUNTERS]) {
        let before = self.prog.counters().expect("counters");
        let sessions_before = self.session_counts();
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            ..Default::default()
        };
        let out = self
            .prog
            .xdp_tap()
            .test_run(input)
            .expect("BPF_PROG_TEST_RUN");
        // No AF_XDP socket in the XSKMAP: matched frames fall back to XDP_DROP
        // (counted no_socket), filtered ones are dropped: tap mode consumes.
        assert_eq!(out.return_value, XDP_DROP, "verdict for {frame:02x?}");
        let after = self.prog.counters().expect("counters");
        let mut delta = [0u64; COUNTERS];
        for i in 0..COUNTERS {
            delta[i] = after[i] - before[i];
        }
        let hits: Vec<usize> = self
            .session_counts()
            .iter()
            .zip(&sessions_before)
            .enumerate()
            .filter(|(_, (a, b))| a > b)
            .map(|(i, _)| i)
            .collect();
        assert!(
            hits.len() <= 1,
            "a frame is mirrored by one session at most"
        );
        (hits.first().copied(), delta)
    }
}

fn cnt(d: &[u64; COUNTERS], c: C) -> u64 {
    d[c.0 as usize]
}

/// Every frame is received once, and is either matched or filtered; a match
/// with no socket is dropped and counted.
fn assert_accounting(d: &[u64; COUNTERS], session: Option<usize>) {
    assert_eq!(cnt(d, C::MIRROR_CNT_RECEIVED), 1);
    assert_eq!(cnt(d, C::MIRROR_CNT_MATCHED), u64::from(session.is_some()));
    assert_eq!(cnt(d, C::MIRROR_CNT_FILTERED), u64::from(session.is_none()));
    assert_eq!(
        cnt(d, C::MIRROR_CNT_DROP_NO_SOCKET),
        u64::from(session.is_some())
    );
    assert_eq!(cnt(d, C::MIRROR_CNT_REDIRECTED), 0);
    let parse: u64 = PARSER.iter().map(|&(c, _)| cnt(d, c)).sum();
    assert!(parse <= 1, "at most one parse counter per frame");
}

/// The `parser` counters of `mirror stats`, by their names there.
const PARSER: [(C, &str); 6] = [
    (C::MIRROR_CNT_PARSE_NON_IP, "non_ip"),
    (C::MIRROR_CNT_PARSE_TRUNCATED, "truncated"),
    (C::MIRROR_CNT_PARSE_BAD_HEADER, "bad_header"),
    (C::MIRROR_CNT_PARSE_EXT_LIMIT, "ipv6_ext_limit"),
    (C::MIRROR_CNT_PARSE_VLAN_LIMIT, "vlan_limit"),
    (C::MIRROR_CNT_FRAGMENT, "fragment"),
];

/// Every parser counter moved by exactly what `want` says: one for the
/// expected counter, zero for every other (and for all of them when the
/// frame parsed whole).
fn assert_parser(what: &str, d: &[u64; COUNTERS], want: Option<C>) {
    for (c, name) in PARSER {
        assert_eq!(
            cnt(d, c),
            u64::from(want == Some(c)),
            "{what}: parser counter {name}"
        );
    }
}

const A: Option<usize> = Some(0); // session "a" (priority 1)
const B: Option<usize> = Some(1); // session "b" (priority 2)
const NONE: Option<usize> = None;

/// (what it shows, frame, expected session, expected parse counter)
type Case = (&'static str, Vec<u8>, Option<usize>, Option<C>);

fn table() -> Vec<Case> {
    let tcp = |dport| l4(40000, dport, 20);
    vec![
        (
            "tcp4 to 443 is rejected by a, and b has no tcp rule",
            eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &tcp(443))),
            NONE,
            None,
        ),
        (
            "tcp4 to 10.2/16 accepted by a",
            eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &tcp(80))),
            A,
            None,
        ),
        (
            "tcp4 elsewhere: no rule of a or b",
            eth(0x0800, &ipv4(6, V4B, V4A, 0, 0, &tcp(80))),
            NONE,
            None,
        ),
        (
            "udp4 from port 5005 accepted by a",
            eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(5005, 53, 8))),
            A,
            None,
        ),
        (
            "udp4 from another port falls to b's udp rule",
            eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(6000, 53, 8))),
            B,
            None,
        ),
        (
            "icmp4 rejected by b",
            eth(0x0800, &ipv4(1, V4A, V4B, 0, 0, &[8, 0, 0, 0, 0, 1, 0, 1])),
            NONE,
            None,
        ),
        (
            "sctp4 accepted by a",
            eth(0x0800, &ipv4(132, V4A, V4B, 0, 0, &l4(1, 2, 12))),
            A,
            None,
        ),
        (
            "esp4 (proto 50) accepted by b",
            eth(0x0800, &ipv4(50, V4A, V4B, 0, 0, &[0; 8])),
            B,
            None,
        ),
        (
            "ipv4 with 40 bytes of options: ports still read",
            eth(0x0800, &ipv4(17, V4A, V4B, 40, 0, &l4(5001, 1, 8))),
            A,
            None,
        ),
        (
            "ipv4 first fragment (MF, offset 0) keeps its ports",
            eth(0x0800, &ipv4(17, V4A, V4B, 0, 0x2000, &l4(5001, 1, 8))),
            A,
            None,
        ),
        (
            "ipv4 non-first fragment has no ports: b's udp rule",
            eth(0x0800, &ipv4(17, V4A, V4B, 0, 0x0010, &l4(5001, 1, 8))),
            B,
            Some(C::MIRROR_CNT_FRAGMENT),
        ),
        (
            "ipv4 IHL < 5 is a bad header: only non-IP-constraint rules",
            eth(0x0800, &{
                let mut h = ipv4(17, V4A, V4B, 0, 0, &l4(5001, 1, 8));
                h[0] = 0x44;
                h
            }),
            NONE,
            Some(C::MIRROR_CNT_PARSE_BAD_HEADER),
        ),
        (
            "tcp6 from 2001:db8::/32 accepted by b",
            eth(0x86dd, &ipv6(6, V6A, V6B, &tcp(80))),
            B,
            None,
        ),
        (
            "tcp6 to 443 rejected by a, then b's source rule",
            eth(0x86dd, &ipv6(6, V6A, V6B, &tcp(443))),
            B,
            None,
        ),
        (
            "udp6 from elsewhere: b's udp rule",
            eth(0x86dd, &ipv6(17, V6B, V6A, &l4(1, 2, 8))),
            B,
            None,
        ),
        (
            "icmpv6 from elsewhere: nothing",
            eth(0x86dd, &ipv6(58, V6B, V6A, &[128, 0, 0, 0, 0, 1, 0, 1])),
            NONE,
            None,
        ),
        (
            "ipv6 hop-by-hop + routing + dst opts before udp 5003",
            eth(
                0x86dd,
                &ipv6(
                    0,
                    V6B,
                    V6A,
                    &[ext8(43), ext8(60), ext8(17), l4(5003, 1, 8)].concat(),
                ),
            ),
            A,
            None,
        ),
        (
            "ipv6 first fragment keeps ports",
            eth(
                0x86dd,
                &ipv6(44, V6B, V6A, &[frag6(17, 0), l4(5003, 1, 8)].concat()),
            ),
            A,
            None,
        ),
        (
            "ipv6 non-first fragment: proto known, no ports",
            eth(
                0x86dd,
                &ipv6(44, V6B, V6A, &[frag6(17, 3), l4(5003, 1, 8)].concat()),
            ),
            B,
            Some(C::MIRROR_CNT_FRAGMENT),
        ),
        (
            "ipv6 AH then udp",
            eth(
                0x86dd,
                &ipv6(
                    51,
                    V6B,
                    V6A,
                    &[vec![17, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], l4(5003, 1, 8)].concat(),
                ),
            ),
            A,
            None,
        ),
        (
            "ipv6 chain of exactly 8 ext headers before udp 5003: parsed",
            eth(
                0x86dd,
                &ipv6(
                    0,
                    V6B,
                    V6A,
                    &[
                        (0..7).flat_map(|_| ext8(0)).collect::<Vec<u8>>(),
                        ext8(17),
                        l4(5003, 1, 8),
                    ]
                    .concat(),
                ),
            ),
            A,
            None,
        ),
        (
            "ipv6 chain longer than 8 ext headers: protocol unknown",
            eth(
                0x86dd,
                &ipv6(
                    0,
                    V6B,
                    V6A,
                    &[
                        (0..9).flat_map(|_| ext8(0)).collect::<Vec<u8>>(),
                        l4(5003, 1, 8),
                    ]
                    .concat(),
                ),
            ),
            NONE,
            Some(C::MIRROR_CNT_PARSE_EXT_LIMIT),
        ),
        (
            "vlan 100 matches a's vlan rule",
            vlan_tags(&[(0x8100, 100)], 0x0800, &ipv4(6, V4B, V4A, 0, 0, &tcp(80))),
            A,
            None,
        ),
        (
            "qinq: outer id 200 is the rule's vlan, not 100",
            vlan_tags(
                &[(0x88a8, 200), (0x8100, 100)],
                0x86dd,
                &ipv6(17, V6B, V6A, &l4(1, 2, 8)),
            ),
            B,
            None,
        ),
        (
            "three tags exceed the vlan bound",
            vlan_tags(
                &[(0x88a8, 100), (0x8100, 2), (0x8100, 3)],
                0x0800,
                &ipv4(17, V4A, V4B, 0, 0, &l4(5001, 1, 8)),
            ),
            A,
            Some(C::MIRROR_CNT_PARSE_VLAN_LIMIT),
        ),
        (
            "ipv4 header cut short: no address, protocol or ports to match",
            eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &tcp(80))[..12]),
            NONE,
            Some(C::MIRROR_CNT_PARSE_TRUNCATED),
        ),
        (
            "tcp4 header cut after 2 bytes: no ports, a's address rule still holds",
            eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &[0x9c, 0x40])),
            A,
            Some(C::MIRROR_CNT_PARSE_TRUNCATED),
        ),
        (
            "ipv6 extension header cut short: b's source rule still holds",
            eth(0x86dd, &ipv6(0, V6A, V6B, &ext8(17)[..4])),
            B,
            Some(C::MIRROR_CNT_PARSE_TRUNCATED),
        ),
        (
            "arp: non-IP, no rule without IP constraints",
            eth(0x0806, &[0; 28]),
            NONE,
            Some(C::MIRROR_CNT_PARSE_NON_IP),
        ),
    ]
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn every_frame_shape_gets_its_expected_verdict_and_counters() {
    require_root!();
    let fx = Fixture::new(RULES);
    let filters = fx.filters();
    for (what, frame, want, parse) in table() {
        let (got, d) = fx.run(&frame);
        assert_eq!(got, want, "{what}");
        assert_eq!(
            classify::classify(&filters, Direction::Ingress, &frame),
            want,
            "reference: {what}"
        );
        assert_accounting(&d, got);
        assert_parser(what, &d, parse);
    }
}

/// The verdict cache answers a class tuple it has seen (per CPU, per rule
/// set) with the verdict the scan gave; `classify_scans` counts the rest.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_verdict_cache_scans_each_class_tuple_once_per_rule_set() {
    require_root!();
    pin_current_thread(0);
    let mut fx = Fixture::new(RULES);
    let scans = |d: &[u64; COUNTERS]| cnt(d, C::MIRROR_CNT_CLASSIFY_SCAN);
    // TCP to 10.2.0.0/16: session a. x2 differs from x only inside the same
    // classes (another address in the /16, another source port outside
    // 5000-5010), so it shares x's class tuple.
    let x = eth(
        0x0800,
        &ipv4(6, V4A, [10, 2, 0, 1], 0, 0, &l4(40000, 80, 20)),
    );
    let x2 = eth(
        0x0800,
        &ipv4(6, V4A, [10, 2, 0, 9], 0, 0, &l4(40001, 80, 20)),
    );
    // UDP to port 53: session b.
    let y = eth(0x0800, &ipv4(17, V4A, V4B, 0, 0, &l4(40000, 53, 8)));
    for (what, frame, want, scanned) in [
        ("x, first", &x, A, 1),
        ("x, again", &x, A, 0),
        ("x2, same classes", &x2, A, 0),
        ("y, first", &y, B, 1),
        ("y, again", &y, B, 0),
        ("x, after y", &x, A, 0),
    ] {
        let (got, d) = fx.run(frame);
        assert_eq!(got, want, "{what}");
        assert_eq!(scans(&d), scanned, "{what}: classify_scans");
        assert_accounting(&d, got);
    }

    // 1,000 more runs of x in one call: all answered by the cache.
    let before = fx.prog.counters().expect("counters");
    let input = libbpf_rs::ProgramInput {
        data_in: Some(&x),
        repeat: 1000,
        ..Default::default()
    };
    fx.prog
        .xdp_tap()
        .test_run(input)
        .expect("BPF_PROG_TEST_RUN");
    let after = fx.prog.counters().expect("counters");
    let d = |c: C| after[c.0 as usize] - before[c.0 as usize];
    assert_eq!(d(C::MIRROR_CNT_RECEIVED), 1000);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 1000);
    assert_eq!(d(C::MIRROR_CNT_CLASSIFY_SCAN), 0);

    // A new rule set (the same rules) comes with an empty cache.
    let set = RuleSet::build(&ruleset::source_filters(&fx.config, 0), Direction::Ingress)
        .expect("the rules compile");
    fx.prog.install(&set, None).expect("the rules install");
    let (got, d) = fx.run(&x);
    assert_eq!((got, scans(&d)), (A, 1), "x under the new rule set");

    // Every frame shape: the cached verdict (second run) is the scanned one.
    for (what, frame, want, _) in table() {
        let (first, _) = fx.run(&frame);
        let (second, d) = fx.run(&frame);
        assert_eq!((first, second), (want, want), "{what}");
        assert_eq!(scans(&d), 0, "{what}: the second run is cached");
    }
}

/// A rule set whose verdict no frame field can change is answered without
/// classification: every frame shape (non-IP and truncated ones too) gets
/// the constant verdict, and nothing is scanned.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_filter_no_field_can_change_decides_every_frame_without_a_scan() {
    require_root!();
    let accept_all = "[[filter.rule]]\nnumber = 1\naction = \"accept\"\ndirection = \"ingress\"\n";
    let reject_all = "[[filter.rule]]\nnumber = 1\naction = \"reject\"\ndirection = \"ingress\"\n";
    let with_first = |first: &str, second: &str| {
        RULES
            .replacen(
                "[[filter]]\nname = \"first\"",
                &format!("[[filter]]\nname = \"first\"\n{first}"),
                1,
            )
            .replacen(
                "[[filter]]\nname = \"second\"",
                &format!("[[filter]]\nname = \"second\"\n{second}"),
                1,
            )
    };
    for (what, text, want) in [
        ("session a accepts all", with_first(accept_all, ""), A),
        (
            "a rejects all, b accepts all",
            with_first(reject_all, accept_all),
            B,
        ),
        ("both reject all", with_first(reject_all, reject_all), NONE),
    ] {
        let fx = Fixture::new(&text);
        let filters = fx.filters();
        for (shape, frame, _, parse) in table() {
            let (got, d) = fx.run(&frame);
            assert_eq!(got, want, "{what}: {shape}");
            assert_parser(&format!("{what}: {shape}"), &d, parse);
            assert_eq!(
                classify::classify(&filters, Direction::Ingress, &frame),
                want,
                "reference, {what}: {shape}"
            );
            assert_eq!(cnt(&d, C::MIRROR_CNT_CLASSIFY_SCAN), 0, "{what}: {shape}");
            assert_accounting(&d, got);
        }
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn frames_truncated_at_every_byte_agree_with_the_reference() {
    require_root!();
    let fx = Fixture::new(RULES);
    let filters = fx.filters();
    let mut runs = 0;
    for (what, frame, _, _) in table() {
        // BPF_PROG_TEST_RUN needs at least an Ethernet header.
        for len in 14..=frame.len() {
            let cut = &frame[..len];
            let (got, d) = fx.run(cut);
            let want = classify::classify(&filters, Direction::Ingress, cut);
            assert_eq!(got, want, "{what}, cut to {len} bytes");
            assert_accounting(&d, got);
            runs += 1;
        }
    }
    let total = fx.prog.counters().expect("counters");
    assert_eq!(total[C::MIRROR_CNT_RECEIVED.0 as usize], runs);
    assert_eq!(
        total[C::MIRROR_CNT_MATCHED.0 as usize] + total[C::MIRROR_CNT_FILTERED.0 as usize],
        runs
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_catch_all_rule_mirrors_non_ip_and_truncated_frames() {
    require_root!();
    let fx = Fixture::new(&RULES.replace(
        "number = 60\naction = \"accept\"\ndirection = \"egress\"",
        "number = 60\naction = \"accept\"\ndirection = \"ingress\"",
    ));
    for frame in [eth(0x0806, &[0; 28]), eth(0x0800, &[0x45, 0])] {
        let (got, d) = fx.run(&frame);
        assert_eq!(got, A);
        assert_accounting(&d, got);
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn no_rules_mirrors_nothing() {
    require_root!();
    let fx = Fixture::new(
        r#"
[[source]]
name = "s"
interface = "x"
[[filter]]
name = "empty"
[[target]]
name = "t"
kind = "interface"
interface = "y"
[[session]]
name = "a"
source = "s"
filter = "empty"
targets = ["t"]
"#,
    );
    let (got, d) = fx.run(&eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(1, 2, 20))));
    assert_eq!(got, NONE);
    assert_accounting(&d, got);
}

/// Before any rule set is installed (never the case in the daemon, which
/// installs before attaching), frames are filtered and counted `no_rule_set`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn frames_without_a_rule_set_are_filtered_and_counted() {
    require_root!();
    let prog = SourceProgram::load().expect("the program loads");
    let frame = eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(1, 2, 20)));
    let before = prog.counters().expect("counters");
    assert_eq!(
        mirror_user::kernel::test_classify(prog.xdp_tap_fd(), &frame).expect("test run"),
        None
    );
    let after = prog.counters().expect("counters");
    let d = |c: C| after[c.0 as usize] - before[c.0 as usize];
    assert_eq!(d(C::MIRROR_CNT_RECEIVED), 1);
    assert_eq!(d(C::MIRROR_CNT_FILTERED), 1);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 0);
    assert_eq!(d(C::MIRROR_CNT_NO_RULE_SET), 1);
    assert_eq!(
        d(C::MIRROR_CNT_RECEIVED),
        d(C::MIRROR_CNT_MATCHED) + d(C::MIRROR_CNT_FILTERED)
    );
}

/// Everything accepted by one session that samples 1 in `sample`.
fn catch_all(sample: u32) -> SourceProgram {
    let text = common::catch_all_config(sample);
    let mut fx = Fixture::new(&text);
    let n = fx.config.sessions[0].sample;
    fx.prog.set_sampling(0, n).expect("sampling set");
    fx.prog
}

fn meta_of(prog: &SourceProgram, frame: &[u8]) -> Option<mirror_user::kernel::Meta> {
    mirror_user::kernel::test_run(prog.xdp_tap_fd(), frame).expect("test run")
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn flow_hash_is_the_same_in_both_directions_and_differs_between_flows() {
    require_root!();
    let prog = catch_all(1);
    let tcp = |src, dst, sport, dport| eth(0x0800, &ipv4(6, src, dst, 0, 0, &l4(sport, dport, 20)));
    let tcp6 = |src, dst, sport, dport| eth(0x86dd, &ipv6(6, src, dst, &l4(sport, dport, 20)));
    let hash = |f: &[u8]| meta_of(&prog, f).expect("mirrored").hash;
    let mut seen = std::collections::HashSet::new();
    for (a, b) in [
        (tcp(V4A, V4B, 40000, 443), tcp(V4B, V4A, 443, 40000)),
        (tcp(V4A, V4B, 40001, 443), tcp(V4B, V4A, 443, 40001)),
        (tcp6(V6A, V6B, 5000, 53), tcp6(V6B, V6A, 53, 5000)),
        (
            vlan_tags(
                &[(0x8100, 7)],
                0x0800,
                &ipv4(17, V4A, V4B, 0, 0, &l4(1, 2, 8)),
            ),
            vlan_tags(
                &[(0x8100, 7)],
                0x0800,
                &ipv4(17, V4B, V4A, 0, 0, &l4(2, 1, 8)),
            ),
        ),
    ] {
        assert_eq!(hash(&a), hash(&b), "both directions of a flow");
        assert!(seen.insert(hash(&a)), "two flows share a hash");
    }
    // The VLAN id is part of the flow.
    let untagged = ipv4(17, V4A, V4B, 0, 0, &l4(1, 2, 8));
    assert_ne!(
        hash(&eth(0x0800, &untagged)),
        hash(&vlan_tags(&[(0x8100, 7)], 0x0800, &untagged))
    );
    // Non-IP frames: by MAC pair, in both directions.
    let mut arp = eth(0x0806, &[0; 28]);
    let h1 = hash(&arp);
    arp[..12].rotate_left(6); // swap destination and source MACs
    assert_eq!(h1, hash(&arp));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn sampling_mirrors_exactly_one_in_n_and_counts_the_rest() {
    require_root!();
    let prog = catch_all(3);
    let frame = eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(1, 2, 20)));
    let before = prog.counters().expect("counters");
    let mirrored = (0..10).filter(|_| meta_of(&prog, &frame).is_some()).count();
    let after = prog.counters().expect("counters");
    let d = |c: C| after[c.0 as usize] - before[c.0 as usize];
    // Frames 0, 3, 6 and 9 of the session's sequence.
    assert_eq!(mirrored, 4);
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 10);
    assert_eq!(d(C::MIRROR_CNT_SAMPLED_OUT), 6);
    assert_eq!(prog.session_sampled_out(0).expect("counter"), 6);
    assert_eq!(
        d(C::MIRROR_CNT_MATCHED),
        d(C::MIRROR_CNT_REDIRECTED)
            + d(C::MIRROR_CNT_DROP_NO_SOCKET)
            + d(C::MIRROR_CNT_SAMPLED_OUT)
            + d(C::MIRROR_CNT_SCHEDULED_OUT)
    );
}

/// A session's policy switches whole, with one word: the frame after the
/// flip sees the new slot (its metadata says which, for userspace's half); a
/// disabled policy mirrors nothing and counts every matched frame
/// `scheduled_out`, per direction and per session; flipping back re-enables
/// it with the new slot's sampling.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_policy_flip_takes_effect_with_the_next_frame_and_disabled_counts_scheduled_out() {
    require_root!();
    let mut prog = catch_all(1);
    let frame = eth(0x0800, &ipv4(6, V4A, V4B, 0, 0, &l4(1, 2, 20)));
    // catch_all's set_sampling already flipped once: slot 1 is in force.
    let first = prog.policy_slot(0).expect("slot");
    assert_eq!(meta_of(&prog, &frame).expect("mirrored").slot, first as u8);
    let policy = |enabled, sample| mirror_user::config::Policy {
        enabled,
        sample,
        rate_limit_pps: 0,
        packet_length: 0,
        flow_cutoff_bytes: 0,
        flow_cutoff_packets: 0,
    };
    let before = prog.counters().expect("counters");
    let off = prog.set_policy(0, &policy(false, 1), false).expect("flip");
    assert_eq!(off, first ^ 1, "the idle slot");
    assert_eq!(prog.policy_slot(0).expect("slot"), off);
    assert!((0..5).all(|_| meta_of(&prog, &frame).is_none()), "disabled");
    let on = prog
        .set_policy(0, &policy(true, 2), false)
        .expect("flip back");
    assert_eq!(on, first);
    let metas: Vec<_> = (0..4).filter_map(|_| meta_of(&prog, &frame)).collect();
    assert_eq!(metas.len(), 2, "1 in 2");
    assert!(metas.iter().all(|m| m.slot == on as u8));
    let after = prog.counters().expect("counters");
    let d = |c: C| after[c.0 as usize] - before[c.0 as usize];
    assert_eq!(d(C::MIRROR_CNT_MATCHED), 9);
    assert_eq!(d(C::MIRROR_CNT_SCHEDULED_OUT), 5);
    assert_eq!(d(C::MIRROR_CNT_SAMPLED_OUT), 2);
    assert_eq!(prog.session_scheduled_out(0).expect("counter"), 5);
    assert_eq!(
        d(C::MIRROR_CNT_MATCHED),
        d(C::MIRROR_CNT_REDIRECTED)
            + d(C::MIRROR_CNT_DROP_NO_SOCKET)
            + d(C::MIRROR_CNT_SAMPLED_OUT)
            + d(C::MIRROR_CNT_SCHEDULED_OUT)
    );
}

/// UDP frame of flow `i` (10.1.x.y:1024+i -> 10.2.0.1:53), `size` bytes.
fn flow(i: u16, size: usize) -> Vec<u8> {
    let src = [10, 1, (i >> 8) as u8, i as u8];
    eth(
        0x0800,
        &ipv4(17, src, V4B, 0, 0, &l4(1024 + i, 53, size - 34)),
    )
}

/// The kernel path of the tap program, through BPF_PROG_TEST_RUN in a
/// namespace of 32 devices d0..d31 (veth pairs), one per DEVMAP key: a session of
/// the most destinations it may have, a group of 31 members (keys 0-30) and
/// one plain target (key 31, whose device takes 100-byte frames at most).
/// Each flow goes to the member the userspace path picks among those up,
/// whatever its place in the group (counted `rehashed` when its first choice
/// is down); with every member down, to the plain target alone (counted
/// `down` at the first choice, and `all_down`), which cannot take it; and
/// each destination's `too_big` and `down` are counted at its own key, the
/// last one included.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_thirty_two_target_kernel_path_picks_and_counts_at_every_key() {
    require_root!();
    use mirror_user::kernel::{fast_path::low_bits, FastDest, FastSession, PickCount};
    use mirror_user::target::group::rank;
    const XDP_REDIRECT: u32 = 4;
    const SIZE: usize = 200;
    let most = mirror_ebpf::limits::MAX_FAST_TARGETS;
    let members = most - 1;
    let ns = mirror_user::lab::Netns::new("fast32").expect("netns");
    for k in (0..most).step_by(2) {
        let (a, b) = (format!("d{k}"), format!("d{}", k + 1));
        mirror_user::lab::veth(&ns, &a, &ns, &b, 1).expect("veth");
    }
    let _inside = Inside::enter(&ns);
    let ifindex: Vec<u32> = (0..most)
        .map(|k| mirror_user::kernel::ifindex(&format!("d{k}")).expect("ifindex"))
        .collect();
    let mut prog = catch_all(1);
    let mut dests: Vec<FastDest> = ifindex.iter().map(|&i| FastDest::new(i, None)).collect();
    dests[members as usize].max_len = 100;
    let fast = FastSession {
        dests,
        group: (0..members).collect(),
    };
    prog.set_fast_path(0, ifindex[0], &fast, false)
        .expect("kernel path");
    let frames: Vec<Vec<u8>> = (0..64).map(|i| flow(i, SIZE)).collect();
    let hashes = kernel_flow_hashes(frames.iter().map(Vec::as_slice));
    let first: Vec<usize> = hashes
        .iter()
        .map(|&h| rank(h, members as usize, |_| true))
        .collect();
    assert!(
        first.iter().any(|&m| m >= 16),
        "some flow's first choice is member 16 or later"
    );
    let picks = |prog: &SourceProgram| -> Vec<PickCount> {
        (0..most)
            .map(|k| prog.pick_count(0, k).expect("pick count"))
            .collect()
    };
    let too_big = |prog: &SourceProgram| prog.fast_stats(ifindex[31]).expect("stats").too_big;
    // Sends every frame; asserts each verdict; returns each key's pick
    // counts, (rehashed, all_down) and the last device's too_big, as deltas.
    let pass = |prog: &SourceProgram, verdict: u32| {
        let (p0, g0, t0) = (
            picks(prog),
            prog.group_count(0).expect("group"),
            too_big(prog),
        );
        for f in &frames {
            let (v, _) = mirror_user::kernel::test_run_raw(prog.xdp_tap_fd(), f).expect("run");
            assert_eq!(v, verdict);
        }
        let (p1, g1, t1) = (
            picks(prog),
            prog.group_count(0).expect("group"),
            too_big(prog),
        );
        let d: Vec<PickCount> = p0
            .iter()
            .zip(&p1)
            .map(|(a, b)| PickCount {
                packets: b.packets - a.packets,
                bytes: b.bytes - a.bytes,
                down: b.down - a.down,
                rate_limited: b.rate_limited - a.rate_limited,
            })
            .collect();
        (d, (g1.0 - g0.0, g1.1 - g0.1), t1 - t0)
    };
    // What each key should count: `to` its packets (SIZE bytes each), `down`.
    let want = |to: &[usize], down: &[usize]| -> Vec<PickCount> {
        (0..most as usize)
            .map(|k| {
                let n = to.iter().filter(|&&m| m == k).count() as u64;
                PickCount {
                    packets: n,
                    bytes: n * SIZE as u64,
                    down: down.iter().filter(|&&m| m == k).count() as u64,
                    rate_limited: 0,
                }
            })
            .collect()
    };
    let n = frames.len() as u64;

    // Every member up: the first choice, with the plain target (a broadcast
    // of two), which is too small for every frame.
    let (d, g, t) = pass(&prog, XDP_REDIRECT);
    assert_eq!(d, want(&first, &[]), "all up");
    assert_eq!((g, t), ((0, 0), n), "all up: no rehash; too_big at key 31");

    // Members 0-7 up only: flows whose first choice is later are rehashed.
    prog.set_members_up(0, 0xff).expect("members");
    let low: Vec<usize> = hashes
        .iter()
        .map(|&h| rank(h, members as usize, |i| i < 8))
        .collect();
    let moved = first.iter().filter(|&&m| m >= 8).count() as u64;
    assert!(moved > 0);
    let (d, g, t) = pass(&prog, XDP_REDIRECT);
    assert_eq!(d, want(&low, &[]), "members 0-7 up");
    assert_eq!((g, t), ((moved, 0), n), "members 0-7 up");

    // Every member down: the plain target alone, which cannot take the frame.
    prog.set_members_up(0, 0).expect("members");
    let (d, g, t) = pass(&prog, XDP_DROP);
    assert_eq!(
        d,
        want(&[], &first),
        "all down: counted at the first choice"
    );
    assert_eq!((g, t), ((0, n), n), "all down");

    // Every member up, the plain target's device gone: counted down at key 31.
    prog.set_members_up(0, low_bits(members as usize))
        .expect("members");
    prog.set_dest(0, members, None).expect("down");
    let (d, g, t) = pass(&prog, XDP_REDIRECT);
    let last = vec![members as usize; frames.len()];
    assert_eq!(d, want(&first, &last), "key 31 down");
    assert_eq!((g, t), ((0, 0), 0), "key 31 down: not too big");

    // Every member's destination out of the DEVMAPs too (a tunnel member
    // whose route went, before its group takes it out of the picks): each
    // copy counted once at its pick, `down`, not also as picked.
    for k in 0..members {
        prog.set_dest(0, k, None).expect("down");
    }
    let (d, g, t) = pass(&prog, XDP_DROP);
    let mut downs = first.clone();
    downs.extend(&last);
    assert_eq!(d, want(&[], &downs), "members out of the DEVMAPs");
    assert_eq!((g, t), ((0, 0), 0), "members out of the DEVMAPs");
}

/// The kernel path's tunnel targets, frames sent for real
/// (BPF_F_TEST_XDP_LIVE_FRAMES) in a namespace: a session of 32 VXLAN
/// targets, each with its own VNI and its own veth (a0..a31; the kernel runs
/// one DEVMAP program per device and flush, the first copy's). One frame is
/// broadcast to all of them, and each copy is encapsulated by its own key's
/// slot (xdp_tunnel finds the key from the copy's egress device): each slot
/// counts exactly one copy, and the wire carries each VNI once, out of its
/// own device.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn each_kernel_tunnel_key_encapsulates_by_its_own_slot() {
    require_root!();
    use mirror_user::config::TargetSpec;
    use mirror_user::kernel::{FastDest, FastSession, TunnelStats};
    use mirror_user::lab::{self, Capture, Netns};
    use mirror_user::target::{encap, kernel_tunnel};
    let most = mirror_ebpf::limits::MAX_FAST_TARGETS;
    let ns = Netns::new("tun32").expect("netns");
    for k in 0..most {
        let (a, b) = (format!("a{k}"), format!("b{k}"));
        lab::veth(&ns, &a, &ns, &b, 1).expect("veth");
        // bK takes XDP frames (ndo_xdp_xmit) from aK.
        lab::gro_on(&ns, &b).expect("gro");
    }
    let _inside = Inside::enter(&ns);
    let a: Vec<u32> = (0..most)
        .map(|k| mirror_user::kernel::ifindex(&format!("a{k}")).expect("ifindex"))
        .collect();
    let hop = |k: u32| lab_hop(a[k as usize]);
    let vxlan = TargetSpec::Vxlan {
        tunnel: lab_tunnel(),
        port: 4789,
    };
    let dests: Vec<FastDest> = (0..most)
        .map(|k| FastDest {
            tunnel: kernel_tunnel::headers(&vxlan, 100 + k, &hop(k), 0),
            ..FastDest::new(a[k as usize], Some(1500))
        })
        .collect();
    assert!(dests.iter().all(|d| d.tunnel.is_some()));
    let mut prog = catch_all(1);
    let fast = FastSession {
        dests,
        group: Vec::new(),
    };
    prog.set_fast_path(0, a[0], &fast, false)
        .expect("kernel path");
    let caps: Vec<Capture> = (0..most)
        .map(|k| Capture::start(&ns, &format!("b{k}")).expect("capture"))
        .collect();
    let frame = flow(7, 200);
    let input = libbpf_rs::ProgramInput {
        data_in: Some(&frame),
        flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
        repeat: 1,
        ..Default::default()
    };
    prog.xdp_tap()
        .test_run(input)
        .expect("BPF_PROG_TEST_RUN with live frames");
    for k in 0..most {
        assert_eq!(
            prog.tunnel_stats(0, k).expect("stats"),
            TunnelStats {
                packets: 1,
                bytes: frame.len() as u64,
                ..Default::default()
            },
            "key {k}"
        );
    }
    for (k, cap) in (0..most).zip(caps) {
        let vnis: Vec<u32> = cap
            .finish()
            .iter()
            .filter_map(|p| encap::decode_vxlan(p.get(34..)?))
            .map(|h| h.vni)
            .collect();
        assert_eq!(vnis, [100 + k], "b{k}");
    }
}
