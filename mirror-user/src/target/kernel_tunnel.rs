//! The outer headers of a tunnel target on the kernel path: Ethernet (egress
//! device -> next hop), IPv4/IPv6 (source -> collector) and the tunnel header
//! the userspace sender writes ([`super::encap`]), with every field fixed
//! that does not change per copy. The DEVMAP program fills in the rest (see
//! `struct mirror_tunnel` in abi.h), so both paths put the same tunnel header
//! and frame on the wire.

use std::net::IpAddr;

use mirror_ebpf::mirror::types::{mirror_tunnel, mirror_tunnel_flags, mirror_tunnel_kind};

use super::encap::{self, Erspan};
use super::tunnel::max_inner;
use crate::config::{ErspanVersion, Granularity, TargetSpec};
use crate::kernel::route::NextHop;
use crate::kernel::TunnelHeaders;

/// Time to live / hop limit of the outer header: Linux's default, what the
/// userspace sender's raw socket uses.
const TTL: u8 = 64;

/// The headers of tunnel target `spec` for a session with `vni`, through
/// `hop`; `tai_offset_ns` turns the kernel's time stamps into Unix time
/// (ERSPAN III). `None` for a spec that is not a tunnel the kernel serves
/// (see `Config::kernel_path_obstacle`). Marked down while the next hop's MAC
/// is unknown.
pub fn headers(
    spec: &TargetSpec,
    vni: u32,
    hop: &NextHop,
    tai_offset_ns: u64,
) -> Option<TunnelHeaders> {
    let mut t = mirror_tunnel {
        max_inner: max_inner(spec)?.min(usize::from(u16::MAX)) as u16,
        ifindex: hop.ifindex,
        tai_offset: tai_offset_ns,
        ..Default::default()
    };
    let mut tun = [0u8; encap::MAX_HEADER];
    let (kind, tun_len, proto) = match *spec {
        TargetSpec::Vxlan { port, .. } => (
            mirror_tunnel_kind::MIRROR_TUN_VXLAN,
            encap::vxlan(&mut tun, port, 0, vni, 0),
            17u8,
        ),
        TargetSpec::Gre { key, .. } => (
            mirror_tunnel_kind::MIRROR_TUN_GRE,
            encap::gre(&mut tun, key),
            47,
        ),
        TargetSpec::Erspan {
            version,
            granularity,
            ..
        } => {
            if granularity == Granularity::Nanos100 {
                t.flags |= mirror_tunnel_flags::MIRROR_TUN_F_NANOS100.0 as u8;
            }
            let kind = match version {
                ErspanVersion::Two => mirror_tunnel_kind::MIRROR_TUN_ERSPAN2,
                ErspanVersion::Three => mirror_tunnel_kind::MIRROR_TUN_ERSPAN3,
            };
            // Sequence, VLAN, COS, T bit and time stamp are per copy.
            let e = Erspan::for_frame(version, granularity, 0, vni as u16, &[]);
            (kind, e.write(&mut tun), 47)
        }
        _ => return None,
    };
    t.kind = kind.0 as u8;
    let hdr = &mut t.hdr;
    hdr[0..6].copy_from_slice(&hop.dmac.unwrap_or([0; 6]));
    hdr[6..12].copy_from_slice(&hop.smac);
    let ip_len = match (hop.source, spec.tunnel()?.remote) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            hdr[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut hdr[14..34];
            ip[0] = 0x45;
            // tos 0; total length, ID per copy; no DF (as the userspace
            // sender's IP_PMTUDISC_DONT); checksum per copy.
            ip[8] = TTL;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            t.ip_csum = ip
                .chunks(2)
                .map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]])))
                .sum();
            20
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            hdr[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            t.flags |= mirror_tunnel_flags::MIRROR_TUN_F_IPV6.0 as u8;
            let ip = &mut hdr[14..54];
            ip[0] = 0x60; // flow label and payload length per copy
            ip[6] = proto;
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            40
        }
        _ => return None, // source and remote of different families: refused by `mirror check`
    };
    let at = 14 + ip_len;
    hdr[at..at + tun_len].copy_from_slice(&tun[..tun_len]);
    t.hdr_len = (at + tun_len) as u16;
    if ip_len == 40 && proto == 17 {
        t.udp_csum = udp6_seed(&hdr[22..54], &hdr[at..at + tun_len]);
    }
    let mut h = TunnelHeaders(t);
    h.set_down(hop.dmac.is_none());
    Some(h)
}

/// VXLAN over IPv6: the one's-complement sum, as the program adds it (16-bit
/// words as stored), of what the UDP checksum covers and is the same for
/// every copy: the pseudo-header's source and destination `addresses` and
/// next header (17), and the UDP + VXLAN header `udp` without its per-copy
/// words (source port, length, checksum). The program adds the UDP length
/// twice (pseudo-header and header), the source port and the copy's bytes.
fn udp6_seed(addresses: &[u8], udp: &[u8]) -> u32 {
    let words = |b: &[u8]| -> u32 {
        b.chunks(2)
            .map(|w| u32::from(u16::from_ne_bytes([w[0], w[1]])))
            .sum()
    };
    // The pseudo-header's next-header field is 32 bits: 0, 0, 0, 17.
    words(addresses) + words(&[0, 0, 0, 17]) + words(&udp[2..4]) + words(&udp[8..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tunnel;
    use std::net::Ipv4Addr;

    fn hop() -> NextHop {
        NextHop {
            ifindex: 7,
            mtu: 1500,
            smac: [2, 0, 0, 0, 0, 1],
            dmac: Some([2, 0, 0, 0, 0, 2]),
            source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            neighbour: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        }
    }

    fn tunnel() -> Tunnel {
        Tunnel {
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            source: None,
            mtu: 1500,
        }
    }

    #[test]
    fn vxlan_headers_are_ethernet_ipv4_udp_vxlan_with_a_checksum_base_that_completes() {
        let spec = TargetSpec::Vxlan {
            tunnel: tunnel(),
            port: 4789,
        };
        let h = headers(&spec, 42, &hop(), 0).expect("a kernel tunnel").0;
        assert_eq!(h.hdr_len, 14 + 20 + 16);
        assert_eq!(h.max_inner, 1500 - 20 - 16);
        assert_eq!(
            h.ifindex, 7,
            "copy mode's relay sends to the next hop's device"
        );
        assert_eq!(&h.hdr[0..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(&h.hdr[12..14], &[0x08, 0x00]);
        assert_eq!(h.hdr[14 + 9], 17);
        assert_eq!(
            &h.hdr[36..38],
            &4789u16.to_be_bytes(),
            "UDP destination port"
        );
        assert_eq!(
            &h.hdr[42..50],
            &[0x08, 0, 0, 0, 0, 0, 42, 0],
            "VXLAN I flag and VNI"
        );
        // The kernel adds total length and ID to the base, folds, and the
        // header then sums to 0xffff: check with a 100-byte copy.
        let mut ip = h.hdr[14..34].to_vec();
        let tot = (20u16 + 16 + 100).to_be_bytes();
        ip[2..4].copy_from_slice(&tot);
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let mut sum = h.ip_csum
            + u32::from(u16::from_ne_bytes(tot))
            + u32::from(u16::from_ne_bytes(0x1234u16.to_be_bytes()));
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_ne_bytes());
        let hdr = etherparse::Ipv4HeaderSlice::from_slice(&ip).expect("an IPv4 header");
        let parsed = hdr.to_header();
        assert_eq!(parsed.header_checksum, parsed.calc_header_checksum());
        assert!(!parsed.dont_fragment);
        assert_eq!(parsed.time_to_live, 64);
        // The UDP checksum's seed is VXLAN over IPv6's alone: over IPv4
        // the checksum is 0 (none), and the slot's field stays 0.
        assert_eq!(h.udp_csum, 0, "no UDP checksum seed over IPv4");
    }

    #[test]
    fn erspan_headers_leave_the_per_copy_fields_zero_and_keep_the_session_id() {
        let spec = TargetSpec::Erspan {
            tunnel: tunnel(),
            version: ErspanVersion::Three,
            granularity: Granularity::Nanos100,
        };
        let h = headers(&spec, 0x3ff, &hop(), 37_000_000_000)
            .expect("a kernel tunnel")
            .0;
        assert_eq!(h.hdr_len, 14 + 20 + 20);
        assert_eq!(h.kind, mirror_tunnel_kind::MIRROR_TUN_ERSPAN3.0 as u8);
        assert_ne!(
            h.flags & mirror_tunnel_flags::MIRROR_TUN_F_NANOS100.0 as u8,
            0
        );
        assert_eq!(h.tai_offset, 37_000_000_000);
        let gre = &h.hdr[34..54];
        assert_eq!(&gre[0..4], &[0x10, 0x00, 0x22, 0xeb], "S bit, ERSPAN III");
        assert_eq!(&gre[4..8], &[0; 4], "sequence: per copy");
        assert_eq!(
            u32::from_be_bytes(gre[8..12].try_into().expect("4 bytes")),
            2 << 28 | 0x3ff
        );
        assert_eq!(&gre[12..16], &[0; 4], "time stamp: per copy");
    }

    #[test]
    fn an_unresolved_next_hop_starts_down() {
        let mut h = hop();
        h.dmac = None;
        let gre = TargetSpec::Gre {
            tunnel: tunnel(),
            key: Some(9),
        };
        let t = headers(&gre, 0, &h, 0).expect("a kernel tunnel");
        assert!(t.is_down());
        assert_eq!(t.0.hdr_len, 14 + 20 + 8);
    }

    fn hop6() -> NextHop {
        NextHop {
            source: "fd00:98:1::1".parse().expect("an address"),
            neighbour: "fd00:98:1::2".parse().expect("an address"),
            ..hop()
        }
    }

    /// What the program does per copy (tunnel.h): the copy's 16-bit words
    /// as stored, zero-padded, added to the seed with the source port and
    /// the UDP length twice, folded; a sum of 0 goes out as 0xffff.
    /// Returns the checksum field as stored.
    fn kernel_checksum(seed: u32, source_port: u16, copy: &[u8]) -> [u8; 2] {
        let word = |v: u16| u64::from(u16::from_ne_bytes(v.to_be_bytes()));
        let payload: u64 = copy
            .chunks(2)
            .map(|w| u64::from(u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        let len = 16 + copy.len() as u16;
        let mut sum = u64::from(seed) + payload + word(source_port) + 2 * word(len);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let folded = !(sum as u16);
        if folded == 0 { 0xffffu16 } else { folded }.to_ne_bytes()
    }

    #[test]
    fn ipv6_vxlan_checksum_seed_completes_to_the_udp_checksum_etherparse_computes() {
        let spec = TargetSpec::Vxlan {
            tunnel: Tunnel {
                remote: "fd00:98:1::2".parse().expect("an address"),
                source: None,
                mtu: 1500,
            },
            port: 4789,
        };
        let h = headers(&spec, 0xabcdef, &hop6(), 0)
            .expect("IPv6 VXLAN is a kernel tunnel")
            .0;
        assert_ne!(h.flags & mirror_tunnel_flags::MIRROR_TUN_F_IPV6.0 as u8, 0);
        assert_eq!(h.hdr_len, 14 + 40 + 16);
        assert_eq!(h.max_inner, 1500 - 40 - 16);
        assert_eq!(
            (h.hdr[20], h.hdr[21]),
            (17, 64),
            "next header UDP, hop limit 64"
        );
        let udp = &h.hdr[54..70];
        assert_eq!(&udp[2..4], &4789u16.to_be_bytes());
        assert_eq!(&udp[8..16], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        let addr = |a: &str| a.parse::<std::net::Ipv6Addr>().expect("ip").octets();
        let (src, dst) = (addr("fd00:98:1::1"), addr("fd00:98:1::2"));
        // Copies of every length class the program's chunks meet: odd and
        // even, shorter and longer than a 512-byte chunk, the longest.
        let mut x = 0x1234_5678u32;
        for (i, len) in [14usize, 15, 64, 511, 512, 513, 1025, 1400, 1443, 1444]
            .into_iter()
            .enumerate()
        {
            let copy: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            let sport = encap::vxlan_source_port(i as u32 * 7919);
            let got = kernel_checksum(h.udp_csum, sport, &copy);
            let mut payload = udp[8..16].to_vec();
            payload.extend_from_slice(&copy);
            let want = etherparse::UdpHeader {
                source_port: sport,
                destination_port: 4789,
                length: (8 + payload.len()) as u16,
                checksum: 0,
            }
            .calc_checksum_ipv6_raw(src, dst, &payload)
            .expect("fits");
            assert_eq!(u16::from_be_bytes(got), want, "a {len}-byte copy");
        }
        // A copy whose sum is 0 (its last word cancels the rest): sent as
        // 0xffff, as etherparse (and Linux) compute it.
        let mut copy = vec![0x5au8; 100];
        copy[98..100].fill(0);
        let sport = encap::vxlan_source_port(1);
        let fill = kernel_checksum(h.udp_csum, sport, &copy);
        copy[98..100].copy_from_slice(&fill);
        assert_eq!(kernel_checksum(h.udp_csum, sport, &copy), [0xff, 0xff]);
        let mut payload = udp[8..16].to_vec();
        payload.extend_from_slice(&copy);
        let want = etherparse::UdpHeader {
            source_port: sport,
            destination_port: 4789,
            length: (8 + payload.len()) as u16,
            checksum: 0,
        }
        .calc_checksum_ipv6_raw(src, dst, &payload)
        .expect("fits");
        assert_eq!(want, 0xffff);
    }

    #[test]
    fn gre_over_ipv6_headers_carry_the_addresses_and_leave_length_and_label_per_copy() {
        let spec = TargetSpec::Gre {
            tunnel: Tunnel {
                remote: "fd00::2".parse().expect("an address"),
                source: None,
                mtu: 1280,
            },
            key: Some(7),
        };
        let hop = NextHop {
            source: "fd00::1".parse().expect("an address"),
            neighbour: "fd00::2".parse().expect("an address"),
            ..hop()
        };
        let h = headers(&spec, 0, &hop, 0).expect("a kernel tunnel").0;
        assert_ne!(h.flags & mirror_tunnel_flags::MIRROR_TUN_F_IPV6.0 as u8, 0);
        assert_eq!(h.hdr_len, 14 + 40 + 8);
        assert_eq!(h.max_inner, 1280 - 40 - 8);
        assert_eq!(&h.hdr[12..14], &[0x86, 0xdd]);
        assert_eq!(h.hdr[14], 0x60);
        assert_eq!(&h.hdr[18..20], &[0, 0], "payload length: per copy");
        assert_eq!(
            (h.hdr[20], h.hdr[21]),
            (47, 64),
            "next header GRE, hop limit 64"
        );
        assert_eq!(
            h.hdr[22..38],
            "fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets()
        );
        assert_eq!(
            h.hdr[38..54],
            "fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets()
        );
        assert_eq!(&h.hdr[54..62], &[0x20, 0x00, 0x65, 0x58, 0, 0, 0, 7]);
        assert_eq!(h.udp_csum, 0, "GRE has no UDP checksum to seed");
        // Families that do not agree build nothing.
        let mixed = NextHop {
            source: "10.0.0.1".parse().expect("an address"),
            ..hop
        };
        assert!(headers(&spec, 0, &mixed, 0).is_none());
    }
}
