//! Where a tunnel's copies leave this host, asked of the kernel over
//! rtnetlink (what `ip route get` and `ip neigh` print): the route to the
//! collector (egress device, gateway, source address), the egress device's
//! MAC and MTU, and the next hop's MAC from the neighbour table. The kernel
//! path builds its outer headers from these; XDP has no IP stack to ask.
//!
//! A next hop the neighbour table does not know yet is looked up by the
//! kernel itself (`NTF_USE`, the same as a packet to it would trigger), so
//! mirror never sends anything to find it.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one request waits for the kernel's answer.
const ANSWER: Duration = Duration::from_secs(1);

/// The way to a collector, as the kernel's tables give it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The egress device.
    pub ifindex: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC: the outer source address.
    pub smac: [u8; 6],
    /// The next hop's MAC (the collector's, or the gateway's): `None` while
    /// the neighbour table has no usable entry for it.
    pub dmac: Option<[u8; 6]>,
    /// The outer source address: the configured one, else the route's.
    pub source: IpAddr,
    /// The address whose MAC `dmac` is: the gateway, or the collector itself.
    pub neighbour: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no route to {remote}: {source}")]
    NoRoute {
        remote: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("{remote} is an address of this host")]
    Local { remote: IpAddr },
    #[error("the route to {remote} names no {what}")]
    Incomplete { remote: IpAddr, what: &'static str },
    #[error("rtnetlink ({what}): {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The next hop toward `remote` (from `source` when given), without waiting
/// for the neighbour table: `dmac` is `None` when it has no usable entry, and
/// the kernel has then been asked to resolve it ([`probe`]).
pub fn next_hop(remote: IpAddr, source: Option<IpAddr>) -> Result<NextHop, RouteError> {
    let route = route_get(remote, source)?;
    let (smac, mtu) = link(route.ifindex)?;
    let neighbour = route.gateway.unwrap_or(remote);
    let dmac = match neighbour_mac(route.ifindex, neighbour)? {
        Some((mac, state)) => {
            if state == NeighbourState::Stale {
                // Still good, but not confirmed lately: let the kernel check
                // it, as the stack would on its next packet.
                probe(route.ifindex, neighbour)?;
            }
            Some(mac)
        }
        None => {
            probe(route.ifindex, neighbour)?;
            None
        }
    };
    Ok(NextHop {
        ifindex: route.ifindex,
        mtu,
        smac,
        dmac,
        source: source.unwrap_or(route.source),
        neighbour,
    })
}

/// [`next_hop`], waiting up to `wait` for the neighbour table to learn the
/// next hop's MAC (it asks the next hop: an ARP or neighbour solicitation).
pub fn resolve(
    remote: IpAddr,
    source: Option<IpAddr>,
    wait: Duration,
) -> Result<NextHop, RouteError> {
    let deadline = Instant::now() + wait;
    loop {
        let hop = next_hop(remote, source)?;
        if hop.dmac.is_some() || Instant::now() >= deadline {
            return Ok(hop);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Route {
    ifindex: u32,
    gateway: Option<IpAddr>,
    source: IpAddr,
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_get(remote: IpAddr, source: Option<IpAddr>) -> Result<Route, RouteError> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(remote);
    msg.header.destination_prefix_length = if remote.is_ipv4() { 32 } else { 128 };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(remote)));
    if let Some(src) = source {
        msg.header.source_prefix_length = if src.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Source(RouteAddress::from(src)));
    }
    let answers = request(RouteNetlinkMessage::GetRoute(msg), 0)
        .map_err(|source| RouteError::NoRoute { remote, source })?;
    let Some(RouteNetlinkMessage::NewRoute(r)) = answers.into_iter().next() else {
        return Err(RouteError::Incomplete {
            remote,
            what: "answer",
        });
    };
    if r.header.kind == netlink_packet_route::route::RouteType::Local {
        return Err(RouteError::Local { remote });
    }
    let (mut ifindex, mut gateway, mut prefsrc) = (None, None, None);
    for a in r.attributes {
        match a {
            RouteAttribute::Oif(i) => ifindex = Some(i),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => prefsrc = ip_of(s),
            _ => {}
        }
    }
    Ok(Route {
        ifindex: ifindex.ok_or(RouteError::Incomplete {
            remote,
            what: "egress device",
        })?,
        gateway,
        source: prefsrc.or(source).ok_or(RouteError::Incomplete {
            remote,
            what: "source address (set `source` on the target)",
        })?,
    })
}

fn ip_of(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(v4.into()),
        RouteAddress::Inet6(v6) => Some(v6.into()),
        _ => None,
    }
}

/// The device's MAC and MTU.
fn link(ifindex: u32) -> Result<([u8; 6], u32), RouteError> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let answers =
        request(RouteNetlinkMessage::GetLink(msg), 0).map_err(|source| RouteError::Netlink {
            what: "the egress device",
            source,
        })?;
    let (mut mac, mut mtu) = (None, None);
    for a in answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.attributes),
            _ => None,
        })
        .flatten()
    {
        match a {
            LinkAttribute::Address(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = Some(m),
            _ => {}
        }
    }
    match (mac, mtu) {
        (Some(mac), Some(mtu)) => Ok((mac, mtu)),
        _ => Err(RouteError::Netlink {
            what: "the egress device",
            source: io::Error::other(format!(
                "device {ifindex} has no Ethernet address (the kernel path needs an Ethernet device)"
            )),
        }),
    }
}

/// The neighbour table's MAC for `addr` on `ifindex` and the entry's state,
/// or `None` when it has no usable one (none, incomplete, failed).
fn neighbour_mac(
    ifindex: u32,
    addr: IpAddr,
) -> Result<Option<([u8; 6], NeighbourState)>, RouteError> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(addr);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(addr)));
    let answers = match request(RouteNetlinkMessage::GetNeighbour(msg), 0) {
        Ok(a) => a,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(source) => {
            return Err(RouteError::Netlink {
                what: "the neighbour table",
                source,
            })
        }
    };
    for m in answers {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        let state = n.header.state;
        if matches!(
            state,
            NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
        ) {
            return Ok(None);
        }
        for a in n.attributes {
            if let NeighbourAttribute::LinkLocalAddress(b) = a {
                if let Ok(mac) = <[u8; 6]>::try_from(b.as_slice()) {
                    return Ok(Some((mac, state)));
                }
            }
        }
    }
    Ok(None)
}

fn neighbour_address(addr: IpAddr) -> NeighbourAddress {
    match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// Asks the kernel to resolve (or re-confirm) `addr` on `ifindex`, as a
/// packet to it would (`NTF_USE`): it sends the ARP request or neighbour
/// solicitation itself. That request needs `CAP_NET_ADMIN`, which `mirror
/// run` drops once started: then an empty UDP datagram to `addr`'s discard
/// port (9) makes the stack resolve it, as any packet to it would.
pub fn probe(ifindex: u32, addr: IpAddr) -> Result<(), RouteError> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(addr);
    msg.header.ifindex = ifindex;
    msg.header.flags = NeighbourFlags::Use;
    msg.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(addr)));
    let asked = request(
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_ACK,
    );
    let asked = match asked {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => nudge(addr),
        other => other.map(drop),
    };
    asked.map_err(|source| RouteError::Netlink {
        what: "asking the kernel to resolve the next hop",
        source,
    })
}

/// Sends an empty UDP datagram to `addr` port 9 (discard): the stack
/// resolves the neighbour it goes through (no capability needed).
fn nudge(addr: IpAddr) -> io::Result<()> {
    let any: std::net::SocketAddr = match addr {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any)?
        .send_to(&[], (addr, 9))
        .map(drop)
}

/// One rtnetlink request; the answers until the kernel's ACK, error or the
/// end of a multi-part answer (at most [`ANSWER`] of waiting).
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let timeout = libc::timeval {
        tv_sec: ANSWER.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // Safety: `timeout` is a valid timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at < n {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = answer.header.length as usize;
            let multi = answer.header.flags & netlink_packet_core::NLM_F_MULTIPART != 0;
            match answer.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(out), // the ACK
                    };
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    if !multi && flags & NLM_F_ACK == 0 {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}
