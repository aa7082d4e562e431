//! Test traffic: frames carrying a marker and sequence number, built with etherparse.

use etherparse::PacketBuilder;

/// Payload prefix that identifies lab frames.
pub const MARKER: &[u8; 8] = b"MIRRORT\0";

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// Builds a frame around a payload.
type Builder = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// The shapes of the mixed workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Tcp4,
    Udp4,
    Icmp4,
    Tcp6,
    Udp6,
    Icmp6,
    VlanTcp4,
    QinQUdp6,
}

pub const SHAPES: [Shape; 8] = [
    Shape::Tcp4,
    Shape::Udp4,
    Shape::Icmp4,
    Shape::Tcp6,
    Shape::Udp6,
    Shape::Icmp6,
    Shape::VlanTcp4,
    Shape::QinQUdp6,
];

/// Destination ports cycled through for TCP/UDP frames.
pub const PORTS: [u16; 4] = [22, 80, 443, 53];

fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(12));
    p.extend_from_slice(MARKER);
    p.extend_from_slice(&seq.to_be_bytes());
    while p.len() < len {
        p.push((p.len() % 251) as u8);
    }
    p
}

/// One frame of `shape`, `seq`, total length `size` (64..=1514 bytes; the
/// payload is padded to reach it).
pub fn frame(shape: Shape, seq: u32, size: usize) -> Vec<u8> {
    // Every shape cycles through every port (shapes change fastest).
    let port = PORTS[(seq as usize / SHAPES.len()) % PORTS.len()];
    let v4s = [10, 1, 0, (seq % 200) as u8 + 1];
    let v4d = [10, 2, 0, 1];
    let mut v6s = [0u8; 16];
    v6s[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6s[15] = (seq % 200) as u8 + 1;
    let mut v6d = v6s;
    v6d[15] = 0xfe;
    let b = || PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
    let (builder_len, build): (usize, Builder) = match shape {
        Shape::Tcp4 => (
            14 + 20 + 20,
            Box::new(move |p| w(b().ipv4(v4s, v4d, 64).tcp(40000, port, seq, 1024), p)),
        ),
        Shape::Udp4 => (
            14 + 20 + 8,
            Box::new(move |p| w(b().ipv4(v4s, v4d, 64).udp(40000, port), p)),
        ),
        Shape::Icmp4 => (
            14 + 20 + 8,
            Box::new(move |p| w(b().ipv4(v4s, v4d, 64).icmpv4_echo_request(1, seq as u16), p)),
        ),
        Shape::Tcp6 => (
            14 + 40 + 20,
            Box::new(move |p| w(b().ipv6(v6s, v6d, 64).tcp(40000, port, seq, 1024), p)),
        ),
        Shape::Udp6 => (
            14 + 40 + 8,
            Box::new(move |p| w(b().ipv6(v6s, v6d, 64).udp(40000, port), p)),
        ),
        Shape::Icmp6 => (
            14 + 40 + 8,
            Box::new(move |p| w(b().ipv6(v6s, v6d, 64).icmpv6_echo_request(1, seq as u16), p)),
        ),
        Shape::VlanTcp4 => (
            18 + 20 + 20,
            Box::new(move |p| {
                w(
                    b().single_vlan(etherparse::VlanId::try_new(100).expect("valid id"))
                        .ipv4(v4s, v4d, 64)
                        .tcp(40000, port, seq, 1024),
                    p,
                )
            }),
        ),
        Shape::QinQUdp6 => (
            22 + 40 + 8,
            Box::new(move |p| {
                w(
                    b().double_vlan(
                        etherparse::VlanId::try_new(200).expect("valid id"),
                        etherparse::VlanId::try_new(300).expect("valid id"),
                    )
                    .ipv6(v6s, v6d, 64)
                    .udp(40000, port),
                    p,
                )
            }),
        ),
    };
    build(&payload(seq, size.saturating_sub(builder_len).max(12)))
}

fn w<B: Writable>(b: B, payload: &[u8]) -> Vec<u8> {
    b.write_to(payload)
}

/// etherparse's final builder steps share no trait; this gives them one.
trait Writable {
    fn write_to(self, payload: &[u8]) -> Vec<u8>;
}

macro_rules! writable {
    ($($t:ty),*) => {$(
        impl Writable for $t {
            fn write_to(self, payload: &[u8]) -> Vec<u8> {
                let mut out = Vec::with_capacity(self.size(payload.len()));
                self.write(&mut out, payload).expect("writing to a Vec cannot fail");
                out
            }
        }
    )*};
}
writable!(
    PacketBuilderStep<etherparse::TcpHeader>,
    PacketBuilderStep<etherparse::UdpHeader>,
    PacketBuilderStep<etherparse::Icmpv4Header>,
    PacketBuilderStep<etherparse::Icmpv6Header>
);
use etherparse::PacketBuilderStep;

/// `n` frames cycling through every shape, sizes cycling through 64..=1514.
pub fn mixed(n: u32) -> Vec<Vec<u8>> {
    const SIZES: [usize; 5] = [64, 128, 512, 1024, 1514];
    (0..n)
        .map(|i| {
            frame(
                SHAPES[i as usize % SHAPES.len()],
                i,
                SIZES[(i as usize / SHAPES.len()) % SIZES.len()],
            )
        })
        .collect()
}

/// The sequence number of a lab frame, if it is one.
pub fn seq_of(frame: &[u8]) -> Option<u32> {
    let at = frame.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}
