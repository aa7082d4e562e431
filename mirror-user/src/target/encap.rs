//! Tunnel headers: VXLAN (RFC 7348), GRE (RFC 2784/2890) with transparent
//! Ethernet bridging, and ERSPAN type II / III (draft-foschiano-erspan) over
//! GRE. Builders write the bytes that go between the outer IP header (which
//! the kernel adds) and the mirrored frame; [`decode_gre`] and
//! [`decode_vxlan`] read them back (tests, and anyone checking a capture).

use crate::config::{ErspanVersion, Granularity};

/// GRE protocol: transparent Ethernet bridging.
pub const GRE_PROTO_TEB: u16 = 0x6558;
/// GRE protocol: ERSPAN type II.
pub(crate) const GRE_PROTO_ERSPAN2: u16 = 0x88be;
/// GRE protocol: ERSPAN type III.
pub(crate) const GRE_PROTO_ERSPAN3: u16 = 0x22eb;

const GRE_KEY: u16 = 0x2000;
const GRE_SEQ: u16 = 0x1000;

/// UDP + VXLAN header bytes.
pub const VXLAN_LEN: usize = 16;
/// Longest header any builder writes (GRE with sequence + ERSPAN III).
pub(crate) const MAX_HEADER: usize = 20;

/// The outer UDP source port of a VXLAN copy: from the flow hash, in the
/// dynamic range 49152..=65535, so ECMP spreads flows and keeps each on one path.
pub fn vxlan_source_port(hash: u32) -> u16 {
    49152 + (hash % 16384) as u16
}

/// UDP header (checksum 0: IPv4 allows it; on IPv6 the kernel fills it in,
/// see `IPV6_CHECKSUM` in tunnel.rs) and VXLAN header with the I flag and
/// `vni`, in the first [`VXLAN_LEN`] bytes of `out`. Returns the bytes written.
pub fn vxlan(out: &mut [u8], dst_port: u16, hash: u32, vni: u32, payload: usize) -> usize {
    let udp_len = (VXLAN_LEN + payload).min(0xffff) as u16;
    out[0..2].copy_from_slice(&vxlan_source_port(hash).to_be_bytes());
    out[2..4].copy_from_slice(&dst_port.to_be_bytes());
    out[4..6].copy_from_slice(&udp_len.to_be_bytes());
    out[6..8].copy_from_slice(&[0, 0]);
    out[8..12].copy_from_slice(&[0x08, 0, 0, 0]);
    out[12..16].copy_from_slice(&((vni & 0xff_ffff) << 8).to_be_bytes());
    VXLAN_LEN
}

/// GRE header for transparent Ethernet bridging, with the key if any.
/// Returns the bytes written (4 or 8).
pub fn gre(out: &mut [u8], key: Option<u32>) -> usize {
    let flags = if key.is_some() { GRE_KEY } else { 0 };
    out[0..2].copy_from_slice(&flags.to_be_bytes());
    out[2..4].copy_from_slice(&GRE_PROTO_TEB.to_be_bytes());
    match key {
        Some(k) => {
            out[4..8].copy_from_slice(&k.to_be_bytes());
            8
        }
        None => 4,
    }
}

/// What an ERSPAN header says about one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erspan {
    pub version: ErspanVersion,
    pub sequence: u32,
    /// 10 bits: the session's `vni`.
    pub session_id: u16,
    /// The mirrored frame's outer VLAN id and priority (0 if untagged).
    pub vlan: u16,
    pub cos: u8,
    /// En (type II) / BSO (type III): 3 = "VLAN tag preserved in frame", else 0.
    pub encap: u8,
    /// The copy was cut short.
    pub truncated: bool,
    /// Type II port index / unused in type III.
    pub index: u32,
    /// Type III: time stamp in `granularity` units (low 32 bits).
    pub timestamp: u32,
    pub granularity: Granularity,
    /// Type III: the frame was seen on egress.
    pub egress: bool,
}

impl Erspan {
    /// The header fields for `frame`: VLAN and COS from its outer
    /// 802.1Q/802.1ad tag; `truncated`, `egress` and the time stamp
    /// ([`Erspan::at`]) are left for the caller.
    pub(crate) fn for_frame(
        version: ErspanVersion,
        granularity: Granularity,
        sequence: u32,
        session_id: u16,
        frame: &[u8],
    ) -> Erspan {
        let (vlan, cos, encap) = match frame.get(12..16) {
            Some([0x81, 0x00, a, b]) | Some([0x88, 0xa8, a, b]) => {
                let tci = u16::from_be_bytes([*a, *b]);
                (tci & 0x0fff, (tci >> 13) as u8, 3)
            }
            _ => (0, 0, 0),
        };
        Erspan {
            version,
            sequence,
            session_id: session_id & 0x3ff,
            vlan,
            cos,
            encap,
            truncated: false,
            index: 0,
            timestamp: 0,
            granularity,
            egress: false,
        }
    }

    /// Sets the type III time stamp from Unix nanoseconds, in the header's units
    /// (the low 32 bits, as the field holds).
    pub fn at(mut self, tstamp_ns: u64) -> Erspan {
        let units = match self.granularity {
            Granularity::Micros100 => tstamp_ns / 100_000,
            Granularity::Nanos100 => tstamp_ns / 100,
        };
        self.timestamp = units as u32;
        self
    }

    /// GRE (S bit, sequence) + ERSPAN header. Returns the bytes written (16 or 20).
    pub fn write(&self, out: &mut [u8]) -> usize {
        let proto = match self.version {
            ErspanVersion::Two => GRE_PROTO_ERSPAN2,
            ErspanVersion::Three => GRE_PROTO_ERSPAN3,
        };
        out[0..2].copy_from_slice(&GRE_SEQ.to_be_bytes());
        out[2..4].copy_from_slice(&proto.to_be_bytes());
        out[4..8].copy_from_slice(&self.sequence.to_be_bytes());
        let ver: u32 = match self.version {
            ErspanVersion::Two => 1,
            ErspanVersion::Three => 2,
        };
        let w0 = ver << 28
            | u32::from(self.vlan & 0xfff) << 16
            | u32::from(self.cos & 7) << 13
            | u32::from(self.encap & 3) << 11
            | u32::from(self.truncated) << 10
            | u32::from(self.session_id & 0x3ff);
        out[8..12].copy_from_slice(&w0.to_be_bytes());
        match self.version {
            ErspanVersion::Two => {
                out[12..16].copy_from_slice(&(self.index & 0xf_ffff).to_be_bytes());
                16
            }
            ErspanVersion::Three => {
                out[12..16].copy_from_slice(&self.timestamp.to_be_bytes());
                let gra: u16 = match self.granularity {
                    Granularity::Micros100 => 0,
                    Granularity::Nanos100 => 1,
                };
                // SGT 0 | P=1 (Ethernet PDU) | FT=0 (Ethernet) | HwID 0 | D | Gra | O=0
                let low: u16 = 1 << 15 | u16::from(self.egress) << 3 | gra << 1;
                out[16..18].copy_from_slice(&0u16.to_be_bytes());
                out[18..20].copy_from_slice(&low.to_be_bytes());
                20
            }
        }
    }
}

/// A GRE packet's header as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedGre {
    pub protocol: u16,
    pub key: Option<u32>,
    pub sequence: Option<u32>,
    pub erspan: Option<Erspan>,
    /// Offset of the mirrored frame.
    pub payload: usize,
}

/// Reads a GRE header (and an ERSPAN II/III header after it) from `b`, which
/// starts at the GRE header. `None` when it is not a GRE header this module writes.
pub fn decode_gre(b: &[u8]) -> Option<DecodedGre> {
    let flags = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    if flags & !(GRE_KEY | GRE_SEQ) != 0 {
        return None; // checksum, routing, version != 0
    }
    let protocol = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    let mut at = 4;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let key = if flags & GRE_KEY != 0 {
        at += 4;
        Some(word(at - 4)?)
    } else {
        None
    };
    let sequence = if flags & GRE_SEQ != 0 {
        at += 4;
        Some(word(at - 4)?)
    } else {
        None
    };
    let erspan = match protocol {
        GRE_PROTO_ERSPAN2 | GRE_PROTO_ERSPAN3 => {
            let w0 = word(at)?;
            let version = match (protocol, w0 >> 28) {
                (GRE_PROTO_ERSPAN2, 1) => ErspanVersion::Two,
                (GRE_PROTO_ERSPAN3, 2) => ErspanVersion::Three,
                _ => return None,
            };
            let mut e = Erspan {
                version,
                sequence: sequence?,
                session_id: (w0 & 0x3ff) as u16,
                vlan: ((w0 >> 16) & 0xfff) as u16,
                cos: ((w0 >> 13) & 7) as u8,
                encap: ((w0 >> 11) & 3) as u8,
                truncated: (w0 >> 10) & 1 == 1,
                index: 0,
                timestamp: 0,
                granularity: Granularity::Micros100,
                egress: false,
            };
            match version {
                ErspanVersion::Two => {
                    e.index = word(at + 4)? & 0xf_ffff;
                    at += 8;
                }
                ErspanVersion::Three => {
                    e.timestamp = word(at + 4)?;
                    let w2 = word(at + 8)?;
                    e.egress = (w2 >> 3) & 1 == 1;
                    e.granularity = match (w2 >> 1) & 3 {
                        0 => Granularity::Micros100,
                        1 => Granularity::Nanos100,
                        _ => return None,
                    };
                    at += 12;
                }
            }
            Some(e)
        }
        _ => None,
    };
    Some(DecodedGre {
        protocol,
        key,
        sequence,
        erspan,
        payload: at,
    })
}

/// A VXLAN-in-UDP header as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedVxlan {
    pub source_port: u16,
    pub dest_port: u16,
    pub udp_len: u16,
    pub vni: u32,
}

/// Reads UDP + VXLAN from `b` (starting at the UDP header).
pub fn decode_vxlan(b: &[u8]) -> Option<DecodedVxlan> {
    let h = b.get(..VXLAN_LEN)?;
    if h[8] & 0x08 == 0 {
        return None;
    }
    Some(DecodedVxlan {
        source_port: u16::from_be_bytes([h[0], h[1]]),
        dest_port: u16::from_be_bytes([h[2], h[3]]),
        udp_len: u16::from_be_bytes([h[4], h[5]]),
        vni: u32::from_be_bytes([h[12], h[13], h[14], h[15]]) >> 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_header_matches_rfc_7348_layout() {
        let mut h = [0u8; VXLAN_LEN];
        assert_eq!(vxlan(&mut h, 4789, 5, 0x12_3456, 100), VXLAN_LEN);
        assert_eq!(
            h,
            [
                0xc0, 0x05, // source port 49152 + 5
                0x12, 0xb5, // 4789
                0x00, 0x74, // 8 + 8 + 100
                0x00, 0x00, // checksum
                0x08, 0x00, 0x00, 0x00, // I flag
                0x12, 0x34, 0x56, 0x00, // VNI
            ]
        );
        let d = decode_vxlan(&h).expect("decodes");
        assert_eq!(
            (d.source_port, d.dest_port, d.udp_len, d.vni),
            (49157, 4789, 116, 0x12_3456)
        );
    }

    #[test]
    fn vxlan_source_port_stays_in_the_dynamic_range() {
        for hash in [0, 1, 16383, 16384, u32::MAX] {
            assert!(vxlan_source_port(hash) >= 49152);
        }
        assert_eq!(vxlan_source_port(16384), 49152);
    }

    #[test]
    fn gre_with_and_without_key() {
        let mut h = [0u8; 8];
        assert_eq!(gre(&mut h, None), 4);
        assert_eq!(h[..4], [0x00, 0x00, 0x65, 0x58]);
        assert_eq!(gre(&mut h, Some(0xdead_beef)), 8);
        assert_eq!(h, [0x20, 0x00, 0x65, 0x58, 0xde, 0xad, 0xbe, 0xef]);
        let d = decode_gre(&h).expect("decodes");
        assert_eq!(
            (d.protocol, d.key, d.sequence, d.payload),
            (0x6558, Some(0xdead_beef), None, 8)
        );
    }

    fn tagged_frame(vid: u16, pcp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&((pcp << 13) | vid).to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f
    }

    #[test]
    fn erspan_type_2_hand_built_vector() {
        // GRE: S bit, proto 0x88BE, sequence 7.
        // ERSPAN II: ver 1, VLAN 100, COS 5, En 3, T 1, session 42; index 0.
        let want = [
            0x10, 0x00, 0x88, 0xbe, 0x00, 0x00, 0x00, 0x07, //
            0x10, 0x64, 0xbc, 0x2a, 0x00, 0x00, 0x00, 0x00,
        ];
        let e = Erspan::for_frame(
            ErspanVersion::Two,
            Granularity::Micros100,
            7,
            42,
            &tagged_frame(100, 5),
        );
        let e = Erspan {
            truncated: true,
            ..e
        };
        let mut out = [0u8; MAX_HEADER];
        assert_eq!(e.write(&mut out), 16);
        assert_eq!(out[..16], want);
        let d = decode_gre(&want).expect("decodes");
        assert_eq!(d.sequence, Some(7));
        assert_eq!(d.payload, 16);
        assert_eq!(d.erspan, Some(e));
    }

    #[test]
    fn erspan_type_3_hand_built_vector() {
        // 1.5 s at 100 us = 15000 = 0x3a98; egress; Gra 00.
        // ERSPAN III: ver 2, VLAN 0, COS 0, BSO 0, T 0, session 1023.
        let want = [
            0x10, 0x00, 0x22, 0xeb, 0x00, 0x00, 0x01, 0x00, //
            0x20, 0x00, 0x03, 0xff, //
            0x00, 0x00, 0x3a, 0x98, //
            0x00, 0x00, 0x80, 0x08,
        ];
        let untagged = [0u8; 14];
        let e = Erspan::for_frame(
            ErspanVersion::Three,
            Granularity::Micros100,
            256,
            1023,
            &untagged,
        )
        .at(1_500_000_000);
        let e = Erspan { egress: true, ..e };
        let mut out = [0u8; MAX_HEADER];
        assert_eq!(e.write(&mut out), 20);
        assert_eq!(out, want);
        let d = decode_gre(&want).expect("decodes");
        assert_eq!(d.erspan, Some(e));
        assert_eq!(d.payload, 20);
    }

    #[test]
    fn erspan_type_3_100ns_granularity_sets_gra_01() {
        let e = Erspan::for_frame(
            ErspanVersion::Three,
            Granularity::Nanos100,
            0,
            1,
            &[0u8; 14],
        )
        .at(1_000);
        assert_eq!(e.timestamp, 10);
        let mut out = [0u8; MAX_HEADER];
        e.write(&mut out);
        assert_eq!(out[18..20], [0x80, 0x02]);
        let d = decode_gre(&out).expect("decodes");
        assert_eq!(d.erspan.map(|e| e.granularity), Some(Granularity::Nanos100));
        assert_eq!(d.erspan, Some(e));
    }

    #[test]
    fn decoder_refuses_what_it_does_not_know() {
        assert!(decode_gre(&[0x80, 0, 0x65, 0x58]).is_none(), "checksum bit");
        assert!(
            decode_gre(&[0x10, 0, 0x88, 0xbe, 0, 0, 0, 1, 0x20, 0, 0, 0, 0, 0, 0, 0]).is_none(),
            "type II with version 2"
        );
        assert!(decode_vxlan(&[0u8; 16]).is_none(), "no I flag");
        assert!(decode_gre(&[0x20, 0, 0x65]).is_none(), "short");
    }
}
