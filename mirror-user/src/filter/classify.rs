//! Filter semantics: what the kernel classifier is given, and a plain Rust
//! reference that defines what it must answer.
//!
//! Semantics (AWS VPC Traffic Mirroring's, plus what a SPAN user expects):
//! - A source's sessions are evaluated by priority (lowest first, ties in file
//!   order). Within a session's filter the rules of the frame's direction are
//!   evaluated by number; the first matching rule decides: `accept` mirrors the
//!   frame for that session (and no later one), `reject` passes it to the next
//!   session. No match in any session: not mirrored.
//! - An omitted field matches anything. A rule whose CIDRs are IPv4 never
//!   matches IPv6 and vice versa. A rule with no IP constraint at all (no
//!   protocol, CIDR or port) also matches non-IP frames (ARP, LLDP, ...).
//! - A constraint on a field the parser could not read never matches: a
//!   truncated frame, a non-first fragment (no ports), an IPv6 extension chain
//!   longer than the kernel's bound (no protocol, no ports). The first fragment
//!   of a fragmented packet carries its ports and is classified with them.
//! - `vlan` matches the outermost 802.1Q/802.1ad tag's VLAN id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{Action, Direction, Filter, Rule};
use ipnet::IpNet;

/// What the parser could read of a frame; `None` = could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameView {
    pub vlan: Option<u16>,
    /// `Some(true)` IPv4, `Some(false)` IPv6, `None` not IP.
    pub ipv4: Option<bool>,
    pub addrs: Option<(IpAddr, IpAddr)>,
    pub proto: Option<u8>,
    pub ports: Option<(u16, u16)>,
}

const MAX_VLAN_DEPTH: usize = 2;
const MAX_IPV6_EXT: usize = 8;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses a frame the way the kernel program does (same bounds), written
/// independently of it.
pub fn parse_frame(b: &[u8]) -> FrameView {
    let mut v = FrameView::default();
    let Some(mut ethertype) = be16(b, 12) else {
        return v;
    };
    let mut off = 14;
    let mut tags = 0;
    while (ethertype == 0x8100 || ethertype == 0x88a8) && tags < MAX_VLAN_DEPTH {
        let (Some(tci), Some(next)) = (be16(b, off), be16(b, off + 2)) else {
            return v;
        };
        if tags == 0 {
            v.vlan = Some(tci & 0x0fff);
        }
        ethertype = next;
        off += 4;
        tags += 1;
    }
    match ethertype {
        0x0800 => parse_v4(b, off, &mut v),
        0x86dd => parse_v6(b, off, &mut v),
        _ => {}
    }
    v
}

fn parse_v4(b: &[u8], off: usize, v: &mut FrameView) {
    v.ipv4 = Some(true);
    let Some(h) = b.get(off..off + 20) else {
        return;
    };
    if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
        return;
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    v.addrs = Some((src.into(), dst.into()));
    v.proto = Some(h[9]);
    let hlen = usize::from(h[0] & 0x0f) * 4;
    if b.len() < off + hlen {
        return;
    }
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if frag_off != 0 {
        return;
    }
    v.ports = l4_ports(b, off + hlen, h[9]);
}

fn parse_v6(b: &[u8], off: usize, v: &mut FrameView) {
    v.ipv4 = Some(false);
    let Some(h) = b.get(off..off + 40) else {
        return;
    };
    if h[0] >> 4 != 6 {
        return;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    v.addrs = Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()));
    let mut next = h[6];
    let mut at = off + 40;
    // Up to MAX_IPV6_EXT headers, and one more step to find what follows.
    for _ in 0..=MAX_IPV6_EXT {
        match next {
            0 | 43 | 60 | 51 => {
                let (Some(&nh), Some(&len)) = (b.get(at), b.get(at + 1)) else {
                    return;
                };
                let total = if next == 51 {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                if b.len() < at + total {
                    return;
                }
                next = nh;
                at += total;
            }
            44 => {
                let Some(f) = b.get(at..at + 8) else { return };
                next = f[0];
                at += 8;
                if u16::from_be_bytes([f[2], f[3]]) & 0xfff8 != 0 {
                    v.proto = Some(next);
                    return;
                }
            }
            proto => {
                v.proto = Some(proto);
                v.ports = l4_ports(b, at, proto);
                return;
            }
        }
    }
}

fn l4_ports(b: &[u8], at: usize, proto: u8) -> Option<(u16, u16)> {
    if !matches!(proto, 6 | 17 | 132) {
        return None;
    }
    Some((be16(b, at)?, be16(b, at + 2)?))
}

fn net_contains(net: &IpNet, addr: &IpAddr) -> bool {
    net.contains(addr)
}

/// Does `rule` match the frame described by `f`?
pub(crate) fn rule_matches(rule: &Rule, f: &FrameView) -> bool {
    if let Some(vlan) = rule.vlan {
        if f.vlan != Some(vlan) {
            return false;
        }
    }
    let needs_ip = rule.protocol.is_some()
        || rule.source.is_some()
        || rule.destination.is_some()
        || rule.source_port.is_some()
        || rule.destination_port.is_some();
    if !needs_ip {
        return true;
    }
    let Some(is_v4) = f.ipv4 else { return false };
    for net in [&rule.source, &rule.destination].into_iter().flatten() {
        if matches!(net, IpNet::V4(_)) != is_v4 {
            return false;
        }
    }
    if let Some(p) = rule.protocol {
        if f.proto != Some(p) {
            return false;
        }
    }
    if rule.source.is_some() || rule.destination.is_some() {
        let Some((src, dst)) = &f.addrs else {
            return false;
        };
        if rule.source.as_ref().is_some_and(|n| !net_contains(n, src))
            || rule
                .destination
                .as_ref()
                .is_some_and(|n| !net_contains(n, dst))
        {
            return false;
        }
    }
    if rule.source_port.is_some() || rule.destination_port.is_some() {
        let Some((sp, dp)) = f.ports else {
            return false;
        };
        if rule.source_port.is_some_and(|r| !r.contains(sp))
            || rule.destination_port.is_some_and(|r| !r.contains(dp))
        {
            return false;
        }
    }
    true
}

/// First match within one filter: `Some(action)` of the first matching rule.
pub(crate) fn filter_decision(
    filter: &Filter,
    direction: Direction,
    f: &FrameView,
) -> Option<Action> {
    filter
        .rules
        .iter()
        .filter(|r| r.direction == direction)
        .find(|r| rule_matches(r, f))
        .map(|r| r.action)
}

/// The reference classifier: the position in `filters` (sessions in priority
/// order) of the session that mirrors `frame`, or `None`.
pub fn classify(filters: &[&Filter], direction: Direction, frame: &[u8]) -> Option<usize> {
    let view = parse_frame(frame);
    filters
        .iter()
        .position(|f| filter_decision(f, direction, &view) == Some(Action::Accept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;

    fn any(number: u16, action: Action) -> Rule {
        Rule::any(number, action, Direction::Ingress)
    }

    fn tcp_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1024);
        let mut out = Vec::new();
        b.write(&mut out, b"payload").expect("vec write");
        out
    }

    #[test]
    fn aws_example_rejects_https_then_accepts_everything_else() {
        let mut reject = any(100, Action::Reject);
        reject.protocol = Some(6);
        reject.destination_port = Some(PortRange { lo: 443, hi: 443 });
        let filter = Filter {
            name: "f".into(),
            rules: vec![reject, any(200, Action::Accept)],
        };
        let https = tcp_v4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 443);
        let ssh = tcp_v4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 22);
        assert_eq!(classify(&[&filter], Direction::Ingress, &https), None);
        assert_eq!(classify(&[&filter], Direction::Ingress, &ssh), Some(0));
        assert_eq!(classify(&[&filter], Direction::Egress, &ssh), None);
    }

    #[test]
    fn rejected_frame_falls_through_to_next_session() {
        let mut reject = any(1, Action::Reject);
        reject.protocol = Some(6);
        let first = Filter {
            name: "a".into(),
            rules: vec![reject],
        };
        let second = Filter {
            name: "b".into(),
            rules: vec![any(1, Action::Accept)],
        };
        let frame = tcp_v4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        assert_eq!(
            classify(&[&first, &second], Direction::Ingress, &frame),
            Some(1)
        );
    }

    #[test]
    fn v4_rule_never_matches_v6_and_truncated_ports_never_match() {
        let mut v4 = any(1, Action::Accept);
        v4.source = Some("0.0.0.0/0".parse().expect("cidr"));
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6([1; 16], [2; 16], 64)
            .udp(53, 53);
        let mut v6 = Vec::new();
        b.write(&mut v6, b"x").expect("vec write");
        assert!(!rule_matches(&v4, &parse_frame(&v6)));

        let mut port = any(1, Action::Accept);
        port.protocol = Some(6);
        port.destination_port = Some(PortRange { lo: 0, hi: 65535 });
        let full = tcp_v4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        assert!(rule_matches(&port, &parse_frame(&full)));
        assert!(!rule_matches(&port, &parse_frame(&full[..14 + 20 + 3])));
        // The catch-all still matches what is left.
        assert!(rule_matches(
            &any(2, Action::Accept),
            &parse_frame(&full[..10])
        ));
    }

    /// Ethernet (+ VLAN tags) + IPv4 with `ihl` words, flags/fragment
    /// `frag`, UDP 1111 -> 2222.
    fn udp_v4(tags: usize, ihl: u8, frag: u16) -> Vec<u8> {
        let mut f = vec![4u8; 6];
        f.extend_from_slice(&[2; 6]);
        for i in 0..tags {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 10 + i as u8]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let hlen = usize::from(ihl) * 4;
        let mut ip = vec![0u8; hlen.max(20)];
        ip[0] = 0x40 | ihl;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x04, 0x57, 0x08, 0xae, 0, 8, 0, 0]);
        f
    }

    /// What the parser must read of the first `len` bytes of a frame whose
    /// IPv4 header starts at `ip`, is `hlen` bytes long and carries ports
    /// when `ports` (not a later fragment).
    fn expected_v4(
        len: usize,
        ip: usize,
        hlen: usize,
        vlan: Option<u16>,
        ports: bool,
    ) -> FrameView {
        let mut v = FrameView::default();
        // The first tag counts once it is whole (TCI and the next type).
        if len >= 18 {
            v.vlan = vlan;
        }
        if len < ip {
            return v;
        }
        v.ipv4 = Some(true);
        if len < ip + 20 {
            return v;
        }
        v.addrs = Some((
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
        ));
        v.proto = Some(17);
        if ports && len >= ip + hlen + 4 {
            v.ports = Some((1111, 2222));
        }
        v
    }

    #[test]
    fn ipv4_frames_cut_at_every_byte_read_exactly_what_is_there() {
        for (tags, ihl, frag, ports) in [
            (0, 5, 0, true),
            (0, 6, 0, true),       // an option: the ports are 4 bytes further
            (0, 15, 0, true),      // the longest header
            (1, 5, 0x2000, true),  // MF set, offset 0: the first fragment has ports
            (2, 5, 0x4000, true),  // DF
            (0, 5, 0x0001, false), // a later fragment: no ports
            (1, 5, 0x1fff, false),
        ] {
            let full = udp_v4(tags, ihl, frag);
            let ip = 14 + 4 * tags;
            let vlan = (tags > 0).then_some(10);
            for len in 0..=full.len() {
                let want = expected_v4(len, ip, usize::from(ihl) * 4, vlan, ports);
                assert_eq!(
                    parse_frame(&full[..len]),
                    want,
                    "{tags} tags, ihl {ihl}, frag {frag:#x}, cut at {len}"
                );
            }
        }
    }

    #[test]
    fn a_third_vlan_tag_and_bad_ipv4_headers_stop_the_parser() {
        // Two tags are walked; behind a third, the "ethertype" is 0x8100: not IP.
        let f = udp_v4(3, 5, 0);
        let v = parse_frame(&f);
        assert_eq!((v.vlan, v.ipv4), (Some(10), None));
        for (byte0, what) in [(0x44u8, "ihl 4"), (0x65, "version 6 in an IPv4 frame")] {
            let mut f = udp_v4(0, 5, 0);
            f[14] = byte0;
            let v = parse_frame(&f);
            assert_eq!(
                (v.ipv4, v.addrs, v.proto, v.ports),
                (Some(true), None, None, None),
                "{what}"
            );
        }
        let mut f = udp_v4(0, 5, 0);
        f[14] = 0x45;
        f[23] = 1; // ICMP: no ports
        assert_eq!(parse_frame(&f).ports, None);
        for proto in [6u8, 17, 132] {
            f[23] = proto;
            assert_eq!(
                parse_frame(&f).ports,
                Some((1111, 2222)),
                "protocol {proto}"
            );
        }
    }

    /// Ethernet + IPv6 + the extension headers `ext` (each: type, length
    /// byte, bytes) + UDP.
    fn udp_v6(ext: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut f = vec![4u8; 6];
        f.extend_from_slice(&[2; 6]);
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = ext.first().map_or(17, |e| e.0);
        ip[8..24].copy_from_slice(&[1; 16]);
        ip[24..40].copy_from_slice(&[2; 16]);
        f.extend_from_slice(&ip);
        for (i, (_, body)) in ext.iter().enumerate() {
            let mut h = body.clone();
            h[0] = ext.get(i + 1).map_or(17, |e| e.0);
            f.extend_from_slice(&h);
        }
        f.extend_from_slice(&[0x04, 0x57, 0x08, 0xae, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn ipv6_extension_headers_are_walked_by_their_own_lengths_and_bounds() {
        let hop = |len: u8| {
            (0u8, {
                let mut h = vec![0u8; (usize::from(len) + 1) * 8];
                h[1] = len;
                h
            })
        };
        let ah = (51u8, {
            let mut h = vec![0u8; 12];
            h[1] = 1;
            h
        }); // (1 + 2) * 4 bytes
        let frag = |off: u16| {
            (44u8, {
                let mut h = vec![0u8; 8];
                h[2..4].copy_from_slice(&off.to_be_bytes());
                h
            })
        };
        let addrs = Some((
            Ipv6Addr::from([1; 16]).into(),
            Ipv6Addr::from([2; 16]).into(),
        ));
        for (ext, ports) in [
            (vec![], true),
            (vec![hop(0)], true),
            (vec![hop(2), ah.clone()], true),
            (
                vec![
                    ah.clone(),
                    (60, {
                        let mut h = vec![0u8; 8];
                        h[1] = 0;
                        h
                    }),
                ],
                true,
            ),
            (vec![frag(0)], true),       // the first fragment
            (vec![frag(8 << 3)], false), // a later one: protocol, no ports
        ] {
            let f = udp_v6(&ext);
            let v = parse_frame(&f);
            assert_eq!(v.addrs, addrs);
            assert_eq!(v.proto, Some(17), "{} headers", ext.len());
            assert_eq!(v.ports.is_some(), ports, "{} headers", ext.len());
            // Cut inside the last header or the ports: no ports.
            let cut = parse_frame(&f[..f.len() - 5]);
            assert_eq!(cut.ports, None);
            // Cut anywhere in the chain: never more than was there; cut
            // inside an extension header, not even the protocol.
            let chain_end = f.len() - 8;
            for len in 54..f.len() {
                let v = parse_frame(&f[..len]);
                assert_eq!(v.addrs, addrs);
                assert!(
                    v.ports.is_none() || len >= f.len() - 4,
                    "ports from {len} bytes"
                );
                if len < chain_end {
                    assert_eq!(v.proto, None, "{} headers cut at {len}", ext.len());
                }
            }
        }
        // Eight extension headers are walked; a ninth is past the bound.
        let eight: Vec<_> = (0..8).map(|_| hop(0)).collect();
        assert_eq!(parse_frame(&udp_v6(&eight)).ports, Some((1111, 2222)));
        let nine: Vec<_> = (0..9).map(|_| hop(0)).collect();
        let v = parse_frame(&udp_v6(&nine));
        assert_eq!((v.proto, v.ports), (None, None));
        // Version 4 in an IPv6 frame: nothing read.
        let mut bad = udp_v6(&[]);
        bad[14] = 0x40;
        assert_eq!(parse_frame(&bad).addrs, None);
    }

    #[test]
    fn each_rule_field_decides_on_its_own_and_only_when_set() {
        let v4 = parse_frame(&tcp_v4([10, 0, 0, 1], [192, 168, 0, 2], 40000, 443));
        let mut tagged_frame = udp_v4(1, 5, 0);
        tagged_frame[15] = 7; // VLAN 7
        let tagged = parse_frame(&tagged_frame);
        let mut arp_frame = vec![0xff; 14];
        arp_frame[12..14].copy_from_slice(&[0x08, 0x06]);
        let arp = parse_frame(&arp_frame);
        let rule = |f: &dyn Fn(&mut Rule)| {
            let mut r = any(1, Action::Accept);
            f(&mut r);
            r
        };
        // Nothing set: everything matches, non-IP too.
        for f in [&v4, &tagged, &arp] {
            assert!(rule_matches(&rule(&|_| {}), f));
        }
        // VLAN: only the tagged frame with that id.
        assert!(rule_matches(&rule(&|r| r.vlan = Some(7)), &tagged));
        assert!(!rule_matches(&rule(&|r| r.vlan = Some(8)), &tagged));
        assert!(!rule_matches(&rule(&|r| r.vlan = Some(7)), &v4));
        // Any IP field: never a non-IP frame.
        let ip_rules: Vec<Rule> = vec![
            rule(&|r| r.protocol = Some(6)),
            rule(&|r| r.source = Some("0.0.0.0/0".parse().expect("cidr"))),
            rule(&|r| r.destination = Some("0.0.0.0/0".parse().expect("cidr"))),
            rule(&|r| {
                r.protocol = Some(6);
                r.source_port = Some(PortRange { lo: 0, hi: 65535 });
            }),
            rule(&|r| {
                r.protocol = Some(6);
                r.destination_port = Some(PortRange { lo: 0, hi: 65535 });
            }),
        ];
        for r in &ip_rules {
            assert!(rule_matches(r, &v4), "{r:?}");
            assert!(!rule_matches(r, &arp), "{r:?} on ARP");
        }
        // Each field: in and out.
        assert!(!rule_matches(&rule(&|r| r.protocol = Some(17)), &v4));
        let net = |s: &str| -> Option<IpNet> { Some(s.parse().expect("cidr")) };
        assert!(rule_matches(&rule(&|r| r.source = net("10.0.0.0/8")), &v4));
        assert!(!rule_matches(
            &rule(&|r| r.source = net("192.168.0.0/16")),
            &v4
        ));
        assert!(rule_matches(
            &rule(&|r| r.destination = net("192.168.0.0/16")),
            &v4
        ));
        assert!(!rule_matches(
            &rule(&|r| r.destination = net("10.0.0.0/8")),
            &v4
        ));
        // An IPv6 CIDR never matches IPv4, on either side.
        assert!(!rule_matches(&rule(&|r| r.source = net("::/0")), &v4));
        assert!(!rule_matches(&rule(&|r| r.destination = net("::/0")), &v4));
        let port = |lo, hi| Some(PortRange { lo, hi });
        assert!(rule_matches(
            &rule(&|r| r.source_port = port(40000, 40000)),
            &v4
        ));
        assert!(!rule_matches(
            &rule(&|r| r.source_port = port(1, 39999)),
            &v4
        ));
        assert!(rule_matches(
            &rule(&|r| r.destination_port = port(443, 443)),
            &v4
        ));
        assert!(!rule_matches(
            &rule(&|r| r.destination_port = port(444, 500)),
            &v4
        ));
        // Both ends of a range are in it.
        assert!(rule_matches(
            &rule(&|r| r.destination_port = port(400, 443)),
            &v4
        ));
        assert!(rule_matches(
            &rule(&|r| r.destination_port = port(443, 500)),
            &v4
        ));
        // All set fields must hold: one miss is a miss.
        let all = rule(&|r| {
            r.protocol = Some(6);
            r.source = net("10.0.0.0/8");
            r.destination = net("192.168.0.0/16");
            r.source_port = port(40000, 40000);
            r.destination_port = port(443, 443);
        });
        assert!(rule_matches(&all, &v4));
        for broken in [
            rule(&|r| {
                *r = all.clone();
                r.source_port = port(1, 1);
            }),
            rule(&|r| {
                *r = all.clone();
                r.destination_port = port(1, 1);
            }),
            rule(&|r| {
                *r = all.clone();
                r.source = net("11.0.0.0/8");
            }),
            rule(&|r| {
                *r = all.clone();
                r.destination = net("11.0.0.0/8");
            }),
        ] {
            assert!(!rule_matches(&broken, &v4), "{broken:?}");
        }
        // A frame without addresses or ports (cut short) never matches a
        // rule that needs them.
        let short = parse_frame(&tcp_v4([10, 0, 0, 1], [192, 168, 0, 2], 1, 2)[..30]);
        assert!(!rule_matches(
            &rule(&|r| r.source = net("0.0.0.0/0")),
            &short
        ));
        assert!(!rule_matches(
            &rule(&|r| r.destination_port = port(0, 65535)),
            &short
        ));
    }

    #[test]
    fn the_first_rule_of_the_direction_decides() {
        let mut r1 = any(1, Action::Reject);
        r1.protocol = Some(6);
        let r2 = any(2, Action::Accept);
        let mut egress = any(0, Action::Accept);
        egress.direction = Direction::Egress;
        let f = Filter {
            name: "f".into(),
            rules: vec![egress, r1, r2],
        };
        let tcp = parse_frame(&tcp_v4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2));
        let udp = parse_frame(&udp_v4(0, 5, 0));
        assert_eq!(
            filter_decision(&f, Direction::Ingress, &tcp),
            Some(Action::Reject)
        );
        assert_eq!(
            filter_decision(&f, Direction::Ingress, &udp),
            Some(Action::Accept)
        );
        assert_eq!(
            filter_decision(&f, Direction::Egress, &tcp),
            Some(Action::Accept)
        );
        let empty = Filter {
            name: "e".into(),
            rules: vec![],
        };
        assert_eq!(filter_decision(&empty, Direction::Ingress, &tcp), None);
    }
}
