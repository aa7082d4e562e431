//! `kind = "vxlan" | "gre" | "erspan"`: tunnels to a remote collector, sent
//! through the kernel's IP stack so routing, neighbour resolution, source
//! address selection and firewalls behave as users expect.
//!
//! Each target owns one raw IP socket (`IPPROTO_UDP` for VXLAN, `IPPROTO_GRE`
//! for GRE and ERSPAN): the sender writes the tunnel header and the frame as
//! two iovecs (no copy of the frame), the kernel adds the IP header. Copies go
//! out in batches of up to [`BATCH`] with one `sendmmsg` call. The socket
//! never receives: a classic BPF filter that accepts nothing is attached.
//!
//! Copies whose outer packet would exceed the target's `mtu` are truncated to
//! fit by the queue (counted `truncated`; ERSPAN sets its T bit), like AWS
//! mirroring does, rather than dropped: the collector still sees the headers.

use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::encap::{self, Erspan, MAX_HEADER, VXLAN_LEN};
use super::{Oversize, Packet, TargetDrop, TargetQueue};
use crate::config::{ErspanVersion, Granularity, TargetSpec, Tunnel};

/// Copies per `sendmmsg`.
pub const BATCH: usize = 64;
/// How often a target that lost its route checks whether it is back.
const RETRY_DOWN: Duration = Duration::from_millis(200);
/// How long a stopping sender keeps sending what it holds.
const DRAIN: Duration = Duration::from_secs(1);
/// Socket send buffer: room for a few batches of jumbo frames.
const SNDBUF: libc::c_int = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the target's queue: {0}")]
    Queue(#[from] crate::kernel::xsk::XskError),
}

fn sys(call: &'static str, rc: libc::c_int) -> Result<libc::c_int, TunnelError> {
    if rc < 0 {
        Err(TunnelError::Syscall {
            call,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

/// How a target encapsulates.
#[derive(Debug, Clone, Copy)]
enum Encap {
    Vxlan {
        port: u16,
    },
    Gre {
        key: Option<u32>,
    },
    Erspan {
        version: ErspanVersion,
        granularity: Granularity,
    },
}

impl Encap {
    /// Tunnel header bytes after the outer IP header.
    fn header_len(self) -> usize {
        match self {
            Encap::Vxlan { .. } => VXLAN_LEN,
            Encap::Gre { key } => 4 + if key.is_some() { 4 } else { 0 },
            Encap::Erspan {
                version: ErspanVersion::Two,
                ..
            } => 16,
            Encap::Erspan {
                version: ErspanVersion::Three,
                ..
            } => 20,
        }
    }

    fn protocol(self) -> libc::c_int {
        match self {
            Encap::Vxlan { .. } => libc::IPPROTO_UDP,
            Encap::Gre { .. } | Encap::Erspan { .. } => libc::IPPROTO_GRE,
        }
    }
}

/// The largest mirrored frame a tunnel with this `mtu` carries whole.
pub(crate) fn max_inner(spec: &TargetSpec) -> Option<usize> {
    let (tunnel, encap) = split(spec)?;
    let ip = if tunnel.remote.is_ipv4() { 20 } else { 40 };
    Some((tunnel.mtu as usize).saturating_sub(ip + encap.header_len()))
}

fn split(spec: &TargetSpec) -> Option<(Tunnel, Encap)> {
    match *spec {
        TargetSpec::Vxlan { tunnel, port } => Some((tunnel, Encap::Vxlan { port })),
        TargetSpec::Gre { tunnel, key } => Some((tunnel, Encap::Gre { key })),
        TargetSpec::Erspan {
            tunnel,
            version,
            granularity,
        } => Some((
            tunnel,
            Encap::Erspan {
                version,
                granularity,
            },
        )),
        _ => None,
    }
}

/// Drops every copy of `batch` and of the queue, counted `why`.
fn discard(q: &TargetQueue, batch: &mut Vec<Pending>, why: TargetDrop) {
    for p in batch.drain(..) {
        q.counters.drop(why, 1);
        q.recycle(p.packet);
    }
    while let Some(p) = q.pop_ready() {
        q.counters.drop(why, 1);
        q.recycle(p);
    }
}

/// Opens the target's socket and starts its sender thread.
pub fn start(
    name: &str,
    spec: &TargetSpec,
    queue_size: u32,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<TargetQueue>, std::thread::JoinHandle<()>), TunnelError> {
    let (tunnel, encap) = split(spec).ok_or_else(|| TunnelError::Syscall {
        call: "tunnel target",
        source: io::Error::other("not a tunnel kind"),
    })?;
    let sock = open_socket(&tunnel, encap)?;
    let dest = sockaddr(tunnel.remote, 0);
    let queue = Arc::new(TargetQueue::new(
        name,
        spec.kind(),
        queue_size as usize,
        max_inner(spec).unwrap_or(0),
        Oversize::Truncate,
    )?);
    let q = queue.clone();
    let handle = crate::privileges::spawn(
        std::thread::Builder::new().name(format!("tx-{name}")),
        move || {
            Sender {
                sock,
                dest,
                encap,
                sequence: 0,
                down_since: None,
                tunnel,
            }
            .run(&q, &stop)
        },
    )
    .map_err(|source| TunnelError::Syscall {
        call: "spawning the sender thread",
        source,
    })?;
    Ok((queue, handle))
}

fn open_socket(t: &Tunnel, encap: Encap) -> Result<OwnedFd, TunnelError> {
    let v6 = t.remote.is_ipv6();
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // Safety: plain socket(2) call; the result is checked before use.
    let fd = sys("socket(SOCK_RAW) (needs CAP_NET_RAW)", unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            encap.protocol(),
        )
    })?;
    // Safety: `fd` was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = sock.as_raw_fd();
    if v6 && encap.protocol() == libc::IPPROTO_UDP {
        // The kernel computes the UDP checksum (offset 6), mandatory on IPv6.
        setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_CHECKSUM,
            6,
            "IPV6_CHECKSUM",
        )?;
    }
    // Let the kernel fragment an outer packet larger than the path MTU rather
    // than refuse it (a configured mtu above the path's is the user's call).
    if v6 {
        setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
            "IPV6_MTU_DISCOVER",
        )?;
    } else {
        setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
            "IP_MTU_DISCOVER",
        )?;
    }
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF, "SO_SNDBUF")?;
    // A raw socket gets a copy of every packet of its protocol: accept none.
    let mut reject = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: reject.as_mut_ptr(),
    };
    // Safety: `prog` points at a valid one-instruction filter for the call.
    sys("SO_ATTACH_FILTER", unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    if let Some(src) = t.source {
        sys(
            "bind(source) (is the address configured on this host?)",
            bind_to(fd, src),
        )?;
    }
    Ok(sock)
}

/// bind(2) to `ip` (port 0); returns the call's result.
fn bind_to(fd: libc::c_int, ip: IpAddr) -> libc::c_int {
    let (addr, len) = sockaddr(ip, 0);
    // Safety: `addr` is a valid sockaddr of `len` bytes.
    unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_storage).cast(), len) }
}

/// Whether the kernel has a route to the collector: `connect` on a UDP
/// socket does the route lookup and sends nothing.
fn route_exists(t: &Tunnel) -> bool {
    let family = if t.remote.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // Safety: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return true; // cannot tell: let the next send decide
    }
    // Safety: `fd` was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if t.source
        .is_some_and(|src| bind_to(sock.as_raw_fd(), src) != 0)
    {
        return false;
    }
    let (addr, len) = sockaddr(t.remote, 9);
    // Safety: `addr` is a valid sockaddr of `len` bytes.
    unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        ) == 0
    }
}

fn setsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
    what: &'static str,
) -> Result<(), TunnelError> {
    // Safety: `value` is a c_int that outlives the call; its size is passed.
    sys(what, unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr(ip: IpAddr, port: u16) -> (libc::sockaddr_storage, libc::socklen_t) {
    // Safety: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // Safety: sockaddr_in fits in sockaddr_storage and both are POD.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: port.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // Safety: sockaddr_in6 fits in sockaddr_storage and both are POD.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// A copy with its tunnel header, waiting for `sendmmsg`.
struct Pending {
    packet: Packet,
    header: [u8; MAX_HEADER],
    header_len: usize,
}

struct Sender {
    sock: OwnedFd,
    dest: (libc::sockaddr_storage, libc::socklen_t),
    encap: Encap,
    /// ERSPAN sequence number of the next copy.
    sequence: u32,
    down_since: Option<Instant>,
    tunnel: Tunnel,
}

impl Sender {
    fn run(mut self, q: &TargetQueue, stop: &AtomicBool) {
        q.register_sender();
        let mut batch: Vec<Pending> = Vec::with_capacity(BATCH);
        let mut stopping_since: Option<Instant> = None;
        loop {
            if let Some(since) = self.down_since {
                if since.elapsed() >= RETRY_DOWN && route_exists(&self.tunnel) {
                    tracing::info!(target = %q.name, "tunnel target up: the collector has a route again");
                    self.down_since = None;
                    q.set_up(true);
                } else {
                    if since.elapsed() >= RETRY_DOWN {
                        self.down_since = Some(Instant::now());
                    }
                    // Down: what is queued would go nowhere; count it and move on.
                    discard(q, &mut batch, TargetDrop::Down);
                }
            }
            while batch.len() < BATCH {
                match q.pop_ready() {
                    Some(p) => batch.push(self.encapsulate(p)),
                    None => break,
                }
            }
            let mut blocked = false;
            if !batch.is_empty() {
                match self.send(&batch) {
                    Ok(n) => {
                        let bytes: usize = batch[..n].iter().map(|p| p.packet.data().len()).sum();
                        q.counters
                            .sent_packets
                            .fetch_add(n as u64, Ordering::Relaxed);
                        q.counters
                            .sent_bytes
                            .fetch_add(bytes as u64, Ordering::Relaxed);
                        for p in batch.drain(..n) {
                            q.recycle(p.packet);
                        }
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {
                        blocked = true;
                    }
                    Err(e) => {
                        // The first copy of the batch failed: count it, drop it.
                        let p = batch.remove(0);
                        q.counters.drop(TargetDrop::SendError, 1);
                        q.recycle(p.packet);
                        if matches!(
                            e.raw_os_error(),
                            Some(
                                libc::ENETUNREACH
                                    | libc::EHOSTUNREACH
                                    | libc::ENETDOWN
                                    | libc::EADDRNOTAVAIL
                            )
                        ) {
                            if self.down_since.is_none() {
                                tracing::warn!(target = %q.name, error = %e, "tunnel target down: no route to the collector");
                            }
                            self.down_since = Some(Instant::now());
                            q.set_up(false);
                        }
                    }
                }
            }
            q.in_flight.store(batch.len() as u64, Ordering::Relaxed);

            if stop.load(Ordering::Relaxed) {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if (q.queued() == 0 && batch.is_empty()) || since.elapsed() > DRAIN {
                    // Copies that could not go out before shutdown.
                    discard(q, &mut batch, TargetDrop::SendError);
                    q.in_flight.store(0, Ordering::Relaxed);
                    return;
                }
            }
            if blocked {
                // The socket buffer is full: the kernel drains it within microseconds.
                std::thread::sleep(Duration::from_micros(50));
            } else if batch.is_empty() && q.queued() == 0 {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
    }

    fn encapsulate(&mut self, packet: Packet) -> Pending {
        let mut header = [0u8; MAX_HEADER];
        let header_len = match self.encap {
            Encap::Vxlan { port } => encap::vxlan(
                &mut header,
                port,
                packet.hash,
                packet.vni,
                packet.data().len(),
            ),
            Encap::Gre { key } => encap::gre(&mut header, key),
            Encap::Erspan {
                version,
                granularity,
            } => {
                let mut e = Erspan::for_frame(
                    version,
                    granularity,
                    self.sequence,
                    packet.vni as u16,
                    packet.data(),
                )
                .at(packet.tstamp_ns);
                e.truncated = packet.truncated;
                e.egress = packet.egress;
                self.sequence = self.sequence.wrapping_add(1);
                e.write(&mut header)
            }
        };
        Pending {
            packet,
            header,
            header_len,
        }
    }

    /// One `sendmmsg` of the batch; returns how many went out.
    fn send(&self, batch: &[Pending]) -> io::Result<usize> {
        let mut iov: Vec<[libc::iovec; 2]> = batch
            .iter()
            .map(|p| {
                [
                    libc::iovec {
                        iov_base: p.header.as_ptr() as *mut libc::c_void,
                        iov_len: p.header_len,
                    },
                    libc::iovec {
                        iov_base: p.packet.data().as_ptr() as *mut libc::c_void,
                        iov_len: p.packet.data().len(),
                    },
                ]
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // Safety: msghdr is plain old data; all-zero is a valid value.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = (&self.dest.0 as *const libc::sockaddr_storage) as *mut libc::c_void;
                h.msg_namelen = self.dest.1;
                h.msg_iov = v.as_mut_ptr();
                h.msg_iovlen = 2;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // Safety: every msghdr points at iovecs and buffers that outlive the
        // call (`iov`, `batch`, `self.dest`); the count matches `msgs`.
        let n = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
