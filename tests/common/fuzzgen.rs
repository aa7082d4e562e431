//! Input generators shared by the fuzz tests: fixed-seed runners, text and
//! byte mutations, well-formed frames for `mirror_user::fuzz`'s rules.

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngSeed, TestRunner};

use super::{eth, ext8, ipv4, ipv6, l4, vlan_tags};

/// A runner of `cases` cases from a fixed seed (the same inputs every run).
pub fn runner(seed: u64, cases: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..PtConfig::default()
    })
}

/// Tokens that make TOML and config values interesting.
pub const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\n",
    "#",
    ",",
    "{",
    "}",
    ".",
    "-",
    "0",
    "-1",
    "4294967296",
    "1e99",
    "nan",
    "true",
    "\"\"",
    "\"tcp\"",
    "\"udp\"",
    "\"icmp\"",
    "\"0.0.0.0/0\"",
    "\"::/129\"",
    "\"10.0.0.0/33\"",
    "\"1-0\"",
    "\"65536\"",
    "\"ingress\"",
    "\"both\"",
    "\"tap\"",
    "\"copy\"",
    "\"mirror\"",
    "\"1GiB\"",
    "\"1h\"",
    "\"5%\"",
    "\"101%\"",
    "\"0s\"",
    "\u{e9}",
    "\u{1f600}",
    "\t",
    "\\",
    "\\u0000",
    "name",
    "number",
    "action",
    "protocol",
    "source",
    "destination",
    "source_port",
    "destination_port",
    "vlan",
    "direction",
    "[[source]]",
    "[[target]]",
    "[[filter]]",
    "[[filter.rule]]",
    "[[session]]",
    "[daemon]",
    "targets",
    "sample",
    "vni",
    "kind",
    "interface",
    "remote",
    "path",
    "keep",
    "mtu",
    "queue_size",
];

/// One edit of a text.
#[derive(Debug, Clone)]
pub enum Edit {
    FlipByte(usize, u8),
    Cut(usize, usize),
    Insert(usize, &'static str),
    DuplicateLine(usize),
    DeleteLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::FlipByte(a, b)),
        (any::<usize>(), 1usize..40).prop_map(|(a, n)| Edit::Cut(a, n)),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(a, t)| Edit::Insert(a, t)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// Applies `edits` to `text` as bytes (a flip may leave it not UTF-8).
pub fn mutate(text: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = text.to_vec();
    for e in edits {
        let n = b.len().max(1);
        match *e {
            Edit::FlipByte(at, x) => {
                if !b.is_empty() {
                    b[at % n] ^= x | 1;
                }
            }
            Edit::Cut(at, len) => {
                let at = at % n;
                let end = (at + len).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Edit::Insert(at, t) => {
                let at = at % (b.len() + 1);
                b.splice(at..at, t.bytes());
            }
            Edit::DuplicateLine(i) | Edit::DeleteLine(i) | Edit::SwapLines(i, _) => {
                let mut lines: Vec<Vec<u8>> =
                    b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                let k = i % lines.len();
                match *e {
                    Edit::DuplicateLine(_) => {
                        let l = lines[k].clone();
                        lines.insert(k, l);
                    }
                    Edit::DeleteLine(_) => {
                        lines.remove(k);
                    }
                    Edit::SwapLines(_, j) => {
                        let j = j % lines.len();
                        lines.swap(k, j);
                    }
                    _ => unreachable!(),
                }
                b = lines.join(&b'\n');
            }
            Edit::Truncate(at) => b.truncate(at % n),
        }
    }
    b
}

/// A well-formed frame that the fuzz rules care about: both families,
/// VLAN tags, ports the rules name, protocols they name.
pub fn frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::sample::select(&[6u8, 17, 58, 1, 132, 47][..]),
        prop::sample::select(&[0u16, 443, 1023, 1024, 65535][..]),
        prop::sample::select(&[0u16, 443, 80][..]),
        any::<[u8; 4]>(),
        prop::sample::select(&[[10u8, 1, 2, 3], [192, 168, 0, 1]][..]),
        0u8..5,
        (0usize..64, 0usize..12),
    )
        .prop_map(|(v6, proto, sport, dport, a, b, tags, (payload, exts))| {
            let body = l4(sport, dport, payload);
            let (ty, l3) = if v6 {
                let mut dst = [0u8; 16];
                dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                dst[12..].copy_from_slice(&a);
                // A chain of destination-options headers, up to past the
                // parser's bound of 8.
                let mut chain = Vec::new();
                for i in 0..exts {
                    chain.extend(ext8(if i + 1 == exts { proto } else { 60 }));
                }
                chain.extend(body);
                let next = if exts > 0 { 60 } else { proto };
                (0x86dd, ipv6(next, [0xfd; 16], dst, &chain))
            } else {
                (0x0800, ipv4(proto, b, a, 0, 0, &body))
            };
            match tags {
                0 => vlan_tags(&[(0x8100, 100)], ty, &l3),
                1 => vlan_tags(&[(0x88a8, 7), (0x8100, 100)], ty, &l3),
                // One tag more than the parser follows.
                2 => vlan_tags(&[(0x88a8, 7), (0x8100, 100), (0x8100, 5)], ty, &l3),
                _ => eth(ty, &l3),
            }
        })
}
