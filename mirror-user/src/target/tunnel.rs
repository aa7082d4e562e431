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
    let wire = Socket { sock, dest, tunnel };
    let handle = crate::privileges::spawn(
        std::thread::Builder::new().name(format!("tx-{name}")),
        move || Sender::new(wire, encap).run(&q, &stop),
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
    // SO_SNDBUF is capped by net.core.wmem_max (212,992 bytes by default);
    // the daemon has CAP_NET_ADMIN, which lets SO_SNDBUFFORCE pass the cap.
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SNDBUF,
        "SO_SNDBUFFORCE",
    )
    .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF, "SO_SNDBUF"))?;
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

/// What the sender asks of the kernel: sending a batch and, while the
/// target is down, whether the collector has a route again. A seam, so the
/// sender's loop is tested with scripted outcomes as well as real sockets.
trait Wire {
    /// One `sendmmsg` of the batch; returns how many went out.
    fn send(&mut self, batch: &[Pending]) -> io::Result<usize>;
    /// Whether the collector is reachable again.
    fn route_back(&mut self) -> bool;
}

/// The target's socket and where it sends.
struct Socket {
    sock: OwnedFd,
    dest: (libc::sockaddr_storage, libc::socklen_t),
    tunnel: Tunnel,
}

impl Wire for Socket {
    fn send(&mut self, batch: &[Pending]) -> io::Result<usize> {
        send_batch(self.sock.as_raw_fd(), &self.dest, batch)
    }

    fn route_back(&mut self) -> bool {
        route_exists(&self.tunnel)
    }
}

struct Sender<W> {
    wire: W,
    encap: Encap,
    /// ERSPAN sequence number of the next copy.
    sequence: u32,
    down_since: Option<Instant>,
}

impl<W: Wire> Sender<W> {
    fn new(wire: W, encap: Encap) -> Self {
        Sender {
            wire,
            encap,
            sequence: 0,
            down_since: None,
        }
    }

    fn run(mut self, q: &TargetQueue, stop: &AtomicBool) {
        q.register_sender();
        let mut batch: Vec<Pending> = Vec::with_capacity(BATCH);
        let mut stopping_since: Option<Instant> = None;
        loop {
            if let Some(since) = self.down_since {
                if since.elapsed() >= RETRY_DOWN && self.wire.route_back() {
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
                match self.wire.send(&batch) {
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
            } else if idle(batch.len(), q.queued()) {
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
}

/// Whether a sender holding `held` copies with `queued` more waiting has
/// nothing to do, and may sleep until woken (an offer unparks it) or 10 ms.
fn idle(held: usize, queued: usize) -> bool {
    held == 0 && queued == 0
}

/// One `sendmmsg` of `batch` to `dest` on `fd`; returns how many went out.
fn send_batch(
    fd: libc::c_int,
    dest: &(libc::sockaddr_storage, libc::socklen_t),
    batch: &[Pending],
) -> io::Result<usize> {
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
            h.msg_name = (&dest.0 as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_namelen = dest.1;
            h.msg_iov = v.as_mut_ptr();
            h.msg_iovlen = 2;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    // Safety: every msghdr points at iovecs and buffers that outlive the
    // call (`iov`, `batch`, `dest`); the count matches `msgs`.
    let n = unsafe {
        libc::sendmmsg(
            fd,
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

#[cfg(test)]
mod tests {
    //! The sender's loop driven through a scripted [`Wire`] (batching,
    //! partial sends, a full socket buffer, send errors, a lost route and
    //! its return, draining at stop), and the real sockets over loopback.
    use std::collections::VecDeque;
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
    use std::sync::Mutex;

    use super::*;
    use crate::target::Frame;

    /// What the scripted wire does with one `send` call.
    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        /// Takes the first n copies of the batch (capped at its length).
        Take(usize),
        /// Fails with this errno.
        Fail(i32),
    }

    #[derive(Default)]
    struct Log {
        /// Outcomes still to play; then every send takes the whole batch.
        plan: VecDeque<Outcome>,
        /// Answers of `route_back`; then true.
        routes: VecDeque<bool>,
        /// Each copy that went out: header + frame.
        sent: Vec<Vec<u8>>,
        /// Size of each batch handed to `send`.
        batches: Vec<usize>,
        /// When each send failed, and when each route check happened.
        failed_at: Vec<Instant>,
        route_checks: Vec<Instant>,
    }

    #[derive(Clone, Default)]
    struct Script(Arc<Mutex<Log>>);

    impl Script {
        fn log(&self) -> std::sync::MutexGuard<'_, Log> {
            self.0.lock().expect("log")
        }
    }

    impl Wire for Script {
        fn send(&mut self, batch: &[Pending]) -> io::Result<usize> {
            let mut log = self.log();
            log.batches.push(batch.len());
            let n = match log.plan.pop_front() {
                Some(Outcome::Fail(errno)) => {
                    log.failed_at.push(Instant::now());
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Some(Outcome::Take(n)) => n.min(batch.len()),
                None => batch.len(),
            };
            for p in &batch[..n] {
                let mut bytes = p.header[..p.header_len].to_vec();
                bytes.extend_from_slice(p.packet.data());
                log.sent.push(bytes);
            }
            Ok(n)
        }

        fn route_back(&mut self) -> bool {
            let mut log = self.log();
            log.route_checks.push(Instant::now());
            log.routes.pop_front().unwrap_or(true)
        }
    }

    const VXLAN: Encap = Encap::Vxlan { port: 4789 };

    fn queue(capacity: usize) -> Arc<TargetQueue> {
        Arc::new(
            TargetQueue::new("t", "vxlan", capacity, 1400, Oversize::Truncate).expect("memory"),
        )
    }

    /// Frame `i`: `len` bytes of `i`, with a hash and VNI of its own.
    fn offer(q: &TargetQueue, i: u8, len: usize) {
        offer_with(q, &vec![i; len], u32::from(i), false);
    }

    fn offer_with(q: &TargetQueue, data: &[u8], i: u32, egress: bool) {
        q.offer(&Frame {
            data,
            orig_len: data.len() as u32,
            hash: 0x1000 + i,
            tstamp_ns: 1_700_000_000_000_000_000 + u64::from(i) * 1_000,
            vni: 42,
            source: 0,
            egress,
        });
        q.notify();
    }

    /// The VXLAN header the sender must put in front of frame `i` of `len` bytes.
    fn vxlan_copy(i: u8, len: usize) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER];
        let n = encap::vxlan(&mut h, 4789, 0x1000 + u32::from(i), 42, len);
        let mut v = h[..n].to_vec();
        v.extend(std::iter::repeat_n(i, len));
        v
    }

    struct Running {
        q: Arc<TargetQueue>,
        stop: Arc<AtomicBool>,
        handle: Option<std::thread::JoinHandle<()>>,
    }

    impl Running {
        fn start(q: &Arc<TargetQueue>, wire: Script, encap: Encap) -> Running {
            let stop = Arc::new(AtomicBool::new(false));
            let (q2, s2) = (q.clone(), stop.clone());
            let handle = std::thread::spawn(move || Sender::new(wire, encap).run(&q2, &s2));
            Running {
                q: q.clone(),
                stop,
                handle: Some(handle),
            }
        }

        /// Stops the sender; returns how long it took to return.
        fn stop(&mut self) -> Duration {
            let t = Instant::now();
            self.stop.store(true, Ordering::Relaxed);
            self.q.wake();
            let h = self.handle.take().expect("running");
            while !h.is_finished() {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "the sender never returned"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            h.join().expect("sender thread");
            t.elapsed()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if self.handle.is_some() {
                self.stop();
            }
        }
    }

    /// Waits (bounded) until `done` holds.
    fn wait(what: &str, done: impl Fn() -> bool) {
        let t = Instant::now();
        while !done() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn sent(q: &TargetQueue) -> u64 {
        q.counters.sent_packets.load(Ordering::Relaxed)
    }

    fn drops(q: &TargetQueue) -> Vec<(TargetDrop, u64)> {
        TargetDrop::ALL
            .iter()
            .map(|&d| (d, q.counters.dropped(d)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    #[test]
    fn every_copy_goes_out_once_in_order_in_batches_of_at_most_64() {
        let q = queue(256);
        for i in 0..150u8 {
            offer(&q, i, 60 + usize::from(i));
        }
        let wire = Script::default();
        let mut r = Running::start(&q, wire.clone(), VXLAN);
        wait("150 sent", || sent(&q) == 150);
        r.stop();
        let log = wire.log();
        assert_eq!(log.batches, vec![64, 64, 22]);
        let want: Vec<Vec<u8>> = (0..150u8)
            .map(|i| vxlan_copy(i, 60 + usize::from(i)))
            .collect();
        assert_eq!(log.sent, want);
        let bytes: u64 = (0..150u64).map(|i| 60 + i).sum();
        assert_eq!(q.counters.sent_bytes.load(Ordering::Relaxed), bytes);
        assert_eq!(drops(&q), vec![]);
        assert_eq!(q.snapshot().queued, 0);
    }

    #[test]
    fn a_partial_send_and_a_full_socket_buffer_delay_copies_but_lose_none() {
        let q = queue(64);
        for i in 0..20u8 {
            offer(&q, i, 64);
        }
        let wire = Script::default();
        wire.log().plan = VecDeque::from([
            Outcome::Take(7),
            Outcome::Fail(libc::EAGAIN),
            Outcome::Fail(libc::ENOBUFS),
            Outcome::Take(0),
            Outcome::Take(5),
        ]);
        let mut r = Running::start(&q, wire.clone(), VXLAN);
        wait("20 sent", || sent(&q) == 20);
        r.stop();
        let log = wire.log();
        assert_eq!(log.batches, vec![20, 13, 13, 13, 13, 8]);
        let want: Vec<Vec<u8>> = (0..20u8).map(|i| vxlan_copy(i, 64)).collect();
        assert_eq!(log.sent, want);
        assert_eq!(drops(&q), vec![]);
        assert!(q.is_up());
    }

    #[test]
    fn a_failed_send_drops_the_first_copy_of_the_batch_alone() {
        let q = queue(64);
        for i in 0..5u8 {
            offer(&q, i, 100);
        }
        let wire = Script::default();
        wire.log().plan = VecDeque::from([Outcome::Fail(libc::EMSGSIZE)]);
        let mut r = Running::start(&q, wire.clone(), VXLAN);
        wait("4 sent", || sent(&q) == 4);
        r.stop();
        let log = wire.log();
        let want: Vec<Vec<u8>> = (1..5u8).map(|i| vxlan_copy(i, 100)).collect();
        assert_eq!(log.sent, want);
        assert_eq!(drops(&q), vec![(TargetDrop::SendError, 1)]);
        assert!(q.is_up(), "a send error is not a lost route");
        assert!(log.route_checks.is_empty());
    }

    /// Each error that means "no route": the copy that met it is a send
    /// error, what the sender held is `down`, the queue refuses copies
    /// (`down`) until a route check every RETRY_DOWN finds the route again.
    #[test]
    fn a_lost_route_takes_the_target_down_until_the_route_returns() {
        let runs: Vec<_> = [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::EADDRNOTAVAIL,
        ]
        .into_iter()
        .map(|errno| std::thread::spawn(move || lost_route(errno)))
        .collect();
        for r in runs {
            r.join().expect("no panic");
        }
    }

    fn lost_route(errno: i32) {
        let q = queue(64);
        let wire = Script::default();
        {
            let mut log = wire.log();
            log.plan = VecDeque::from([Outcome::Fail(errno)]);
            log.routes = VecDeque::from([false, false]);
        }
        for i in 0..5u8 {
            offer(&q, i, 80);
        }
        let mut r = Running::start(&q, wire.clone(), VXLAN);
        wait("down", || !q.is_up());
        wait("the held copies counted", || {
            q.counters.dropped(TargetDrop::Down) == 4
        });
        for i in 5..15u8 {
            offer(&q, i, 80);
        }
        assert_eq!(q.counters.dropped(TargetDrop::Down), 14, "errno {errno}");
        wait("up again", || q.is_up());
        for i in 15..20u8 {
            offer(&q, i, 80);
        }
        wait("5 sent", || sent(&q) == 5);
        r.stop();
        let log = wire.log();
        let want: Vec<Vec<u8>> = (15..20u8).map(|i| vxlan_copy(i, 80)).collect();
        assert_eq!(log.sent, want, "errno {errno}");
        assert_eq!(
            drops(&q),
            vec![(TargetDrop::SendError, 1), (TargetDrop::Down, 14)],
            "errno {errno}"
        );
        assert_eq!(q.counters.enqueued.load(Ordering::Relaxed), 20);
        // The route is checked once every RETRY_DOWN, not before: three
        // checks (no, no, yes), each at least RETRY_DOWN after the last.
        assert_eq!(log.route_checks.len(), 3, "errno {errno}");
        let mut last = log.failed_at[0];
        for &t in &log.route_checks {
            assert!(
                t.duration_since(last) >= RETRY_DOWN,
                "errno {errno}: checked after {:?}",
                t.duration_since(last)
            );
            last = t;
        }
    }

    #[test]
    fn stopping_sends_what_is_queued_before_returning() {
        let q = queue(256);
        for i in 0..200u8 {
            offer(&q, i, 60);
        }
        let wire = Script::default();
        // Stopped before it starts: it still drains the queue.
        let stop = Arc::new(AtomicBool::new(true));
        let (q2, s2, w2) = (q.clone(), stop.clone(), wire.clone());
        let h = std::thread::spawn(move || Sender::new(w2, VXLAN).run(&q2, &s2));
        let t = Instant::now();
        while !h.is_finished() {
            assert!(t.elapsed() < Duration::from_secs(5), "never returned");
            std::thread::sleep(Duration::from_millis(5));
        }
        h.join().expect("sender");
        assert_eq!(sent(&q), 200);
        assert_eq!(wire.log().sent.len(), 200);
        assert_eq!(drops(&q), vec![]);
    }

    #[test]
    fn a_stopping_sender_that_cannot_send_gives_up_after_the_drain_time() {
        let q = queue(64);
        for i in 0..10u8 {
            offer(&q, i, 60);
        }
        let wire = Script::default();
        wire.log().plan = std::iter::repeat_n(Outcome::Fail(libc::EAGAIN), 1 << 20).collect();
        let mut r = Running::start(&q, wire.clone(), VXLAN);
        wait("tried", || !wire.log().batches.is_empty());
        let took = r.stop();
        assert!(took >= DRAIN, "gave up after {took:?}");
        assert!(took < DRAIN * 3, "gave up only after {took:?}");
        assert_eq!(sent(&q), 0);
        assert_eq!(drops(&q), vec![(TargetDrop::SendError, 10)]);
        assert_eq!(q.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(q.snapshot().queued, 0);
    }

    #[test]
    fn copies_held_while_the_socket_is_full_show_as_queued() {
        let q = queue(64);
        for i in 0..10u8 {
            offer(&q, i, 60);
        }
        let wire = Script::default();
        wire.log().plan = std::iter::repeat_n(Outcome::Fail(libc::EAGAIN), 1 << 20).collect();
        let _r = Running::start(&q, wire.clone(), VXLAN);
        wait("held", || q.in_flight.load(Ordering::Relaxed) == 10);
        assert_eq!(q.snapshot().queued, 10);
        // Drained at stop: counted send_error (checked above).
    }

    #[test]
    fn erspan_copies_carry_consecutive_sequence_numbers_direction_and_t_bit() {
        for version in [ErspanVersion::Two, ErspanVersion::Three] {
            // Room for 100 bytes: the third copy is cut (T bit).
            let q = Arc::new(
                TargetQueue::new("e", "erspan", 8, 100, Oversize::Truncate).expect("memory"),
            );
            let frames: Vec<Vec<u8>> = vec![vec![1; 60], vec![2; 90], vec![3; 150]];
            for (i, f) in frames.iter().enumerate() {
                offer_with(&q, f, i as u32, i == 1);
            }
            let wire = Script::default();
            let encap = Encap::Erspan {
                version,
                granularity: Granularity::Nanos100,
            };
            let mut r = Running::start(&q, wire.clone(), encap);
            wait("3 sent", || sent(&q) == 3);
            r.stop();
            let log = wire.log();
            for (i, f) in frames.iter().enumerate() {
                let kept = &f[..f.len().min(100)];
                let mut e = Erspan::for_frame(version, Granularity::Nanos100, i as u32, 42, kept)
                    .at(1_700_000_000_000_000_000 + i as u64 * 1_000);
                e.truncated = i == 2;
                e.egress = i == 1;
                let mut h = [0u8; MAX_HEADER];
                let n = e.write(&mut h);
                let mut want = h[..n].to_vec();
                want.extend_from_slice(kept);
                assert_eq!(log.sent[i], want, "{version:?} copy {i}");
                assert_eq!(n, encap.header_len());
            }
            assert_eq!(q.counters.truncated.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn gre_copies_carry_the_key_when_there_is_one() {
        for key in [None, Some(0xdead_beef)] {
            let q = queue(8);
            offer(&q, 9, 70);
            let wire = Script::default();
            let encap = Encap::Gre { key };
            let mut r = Running::start(&q, wire.clone(), encap);
            wait("sent", || sent(&q) == 1);
            r.stop();
            let mut h = [0u8; MAX_HEADER];
            let n = encap::gre(&mut h, key);
            assert_eq!(n, encap.header_len());
            let mut want = h[..n].to_vec();
            want.extend_from_slice(&[9; 70]);
            assert_eq!(wire.log().sent, vec![want]);
        }
    }

    fn tunnel(remote: IpAddr, mtu: u32) -> Tunnel {
        Tunnel {
            remote,
            source: None,
            mtu,
        }
    }

    #[test]
    fn the_largest_whole_copy_leaves_room_for_each_outer_header() {
        let v4 = tunnel(Ipv4Addr::LOCALHOST.into(), 1500);
        let v6 = tunnel(Ipv6Addr::LOCALHOST.into(), 1500);
        let cases = [
            (
                TargetSpec::Vxlan {
                    tunnel: v4,
                    port: 4789,
                },
                1500 - 20 - 16,
            ),
            (
                TargetSpec::Vxlan {
                    tunnel: v6,
                    port: 4789,
                },
                1500 - 40 - 16,
            ),
            (
                TargetSpec::Gre {
                    tunnel: v4,
                    key: None,
                },
                1500 - 20 - 4,
            ),
            (
                TargetSpec::Gre {
                    tunnel: v4,
                    key: Some(1),
                },
                1500 - 20 - 8,
            ),
            (
                TargetSpec::Erspan {
                    tunnel: v4,
                    version: ErspanVersion::Two,
                    granularity: Granularity::Nanos100,
                },
                1500 - 20 - 16,
            ),
            (
                TargetSpec::Erspan {
                    tunnel: v6,
                    version: ErspanVersion::Three,
                    granularity: Granularity::Nanos100,
                },
                1500 - 40 - 20,
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(max_inner(&spec), Some(want), "{spec:?}");
        }
        let tiny = TargetSpec::Gre {
            tunnel: tunnel(Ipv4Addr::LOCALHOST.into(), 10),
            key: None,
        };
        assert_eq!(max_inner(&tiny), Some(0));
    }

    /// `send_batch` over real UDP sockets on loopback (no privileges): each
    /// copy is one datagram, header then frame, to the destination address.
    #[test]
    fn a_batch_leaves_as_one_datagram_per_copy_on_loopback() {
        for ip in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let rx = UdpSocket::bind((ip, 0)).expect("bind receiver");
            rx.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let port = rx.local_addr().expect("addr").port();
            let tx = UdpSocket::bind((ip, 0)).expect("bind sender");
            let q = queue(8);
            let mut sender = Sender::new(
                Script::default(),
                Encap::Gre {
                    key: Some(u32::from(port)),
                },
            );
            let batch: Vec<Pending> = (0..3u8)
                .map(|i| {
                    offer(&q, i, 50 + usize::from(i));
                    sender.encapsulate(q.pop_ready().expect("queued"))
                })
                .collect();
            let dest = sockaddr(ip, port);
            assert_eq!(
                send_batch(tx.as_raw_fd(), &dest, &batch).expect("sendmmsg"),
                3
            );
            let mut buf = [0u8; 2048];
            for (i, p) in batch.iter().enumerate() {
                let (n, from) = rx.recv_from(&mut buf).expect("datagram");
                assert_eq!(from, tx.local_addr().expect("addr"));
                let mut want = p.header[..p.header_len].to_vec();
                want.extend(std::iter::repeat_n(i as u8, 50 + i));
                assert_eq!(&buf[..n], &want[..], "{ip} copy {i}");
            }
            for p in batch {
                q.recycle(p.packet);
            }
        }
    }

    #[test]
    fn the_sender_sleeps_only_when_it_holds_nothing_and_nothing_waits() {
        assert!(idle(0, 0));
        assert!(!idle(1, 0), "copies held for a retry");
        assert!(!idle(0, 1), "copies waiting in the queue");
        assert!(!idle(64, 100));
    }

    #[test]
    fn send_batch_returns_the_kernels_error() {
        let q = queue(2);
        offer(&q, 1, 60);
        let mut sender = Sender::new(Script::default(), VXLAN);
        let batch = vec![sender.encapsulate(q.pop_ready().expect("queued"))];
        let dest = sockaddr(Ipv4Addr::LOCALHOST.into(), 9);
        let e = send_batch(-1, &dest, &batch).expect_err("not a socket");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    fn getsockopt(fd: libc::c_int, level: libc::c_int, opt: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // Safety: `v` and `len` are valid out-pointers of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        v
    }

    /// A raw socket of `protocol` on loopback that receives (IPv4: with
    /// the IP header in front).
    fn raw_receiver(family: libc::c_int, protocol: libc::c_int) -> OwnedFd {
        // Safety: plain socket(2) call; checked before use.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // Safety: just returned by socket(2), owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // Safety: `tv` is a valid timeval for SO_RCVTIMEO.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        sock
    }

    fn recv(fd: &OwnedFd) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        // Safety: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0, "recv: {}", io::Error::last_os_error());
        buf.truncate(n as usize);
        buf
    }

    /// The real sender (`start`: raw socket, options, thread) to loopback
    /// receivers: VXLAN over IPv4 and IPv6 (the kernel fills the IPv6 UDP
    /// checksum, without which the receiving socket drops the datagram),
    /// GRE from a chosen source address.
    #[test]
    #[ignore = "needs root: raw sockets (CAP_NET_RAW)"]
    fn start_sends_vxlan_and_gre_through_raw_sockets_on_loopback() {
        assert!(crate::is_root(), "needs root: raw sockets");
        for ip in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let rx = UdpSocket::bind((ip, 0)).expect("bind receiver");
            rx.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let port = rx.local_addr().expect("addr").port();
            let spec = TargetSpec::Vxlan {
                tunnel: tunnel(ip, 1500),
                port,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (q, h) = start("vx", &spec, 64, stop.clone()).expect("start");
            for i in 0..3u8 {
                offer(&q, i, 60 + usize::from(i));
            }
            let mut buf = [0u8; 2048];
            for i in 0..3u8 {
                let (n, from) = rx.recv_from(&mut buf).expect("a VXLAN datagram");
                assert_eq!(from.ip(), ip);
                assert_eq!(from.port(), encap::vxlan_source_port(0x1000 + u32::from(i)));
                let mut h = [0u8; MAX_HEADER];
                let hl = encap::vxlan(&mut h, port, 0x1000 + u32::from(i), 42, 60 + usize::from(i));
                // The receiving socket sees what follows the UDP header.
                assert_eq!(&buf[..n - (60 + usize::from(i))], &h[8..hl], "{ip}");
                assert_eq!(
                    &buf[n - (60 + usize::from(i))..n],
                    &vec![i; 60 + usize::from(i)][..]
                );
            }
            stop.store(true, Ordering::Relaxed);
            q.wake();
            h.join().expect("sender");
            assert_eq!(sent(&q), 3);
            assert_eq!(drops(&q), vec![]);
        }

        let gre_rx = raw_receiver(libc::AF_INET, libc::IPPROTO_GRE);
        let mut t = tunnel(Ipv4Addr::LOCALHOST.into(), 1500);
        t.source = Some(Ipv4Addr::new(127, 0, 0, 9).into());
        let spec = TargetSpec::Gre {
            tunnel: t,
            key: Some(7),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (q, h) = start("gre", &spec, 64, stop.clone()).expect("start");
        offer(&q, 5, 100);
        let pkt = recv(&gre_rx);
        assert_eq!(&pkt[12..16], &[127, 0, 0, 9], "from the configured source");
        assert_eq!(&pkt[16..20], &[127, 0, 0, 1]);
        let mut g = [0u8; MAX_HEADER];
        let gl = encap::gre(&mut g, Some(7));
        assert_eq!(&pkt[20..20 + gl], &g[..gl]);
        assert_eq!(&pkt[20 + gl..], &[5; 100][..]);
        stop.store(true, Ordering::Relaxed);
        q.wake();
        h.join().expect("sender");
    }

    #[test]
    #[ignore = "needs root: raw sockets (CAP_NET_RAW)"]
    fn the_raw_socket_never_receives_and_lets_the_kernel_fragment() {
        assert!(crate::is_root(), "needs root: raw sockets");
        for (ip, encap) in [
            (IpAddr::from(Ipv4Addr::LOCALHOST), VXLAN),
            (Ipv6Addr::LOCALHOST.into(), Encap::Gre { key: None }),
        ] {
            let t = tunnel(ip, 1500);
            let sock = open_socket(&t, encap).expect("socket");
            let fd = sock.as_raw_fd();
            // Never blocks the sender; not inherited by children.
            // Safety: fcntl on an fd we own.
            let (fl, fdfl) = unsafe {
                (
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                )
            };
            assert!(fl & libc::O_NONBLOCK != 0, "blocking socket");
            assert!(fdfl & libc::FD_CLOEXEC != 0, "inherited by children");
            // The kernel doubles the value it was given.
            assert_eq!(
                getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF),
                2 * SNDBUF
            );
            let pmtu = if ip.is_ipv4() {
                getsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
            } else {
                getsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
            };
            assert_eq!(pmtu, libc::IP_PMTUDISC_DONT, "{ip}");
            // A packet of its own protocol to loopback: the filter keeps
            // it from the sender's socket.
            let dest = sockaddr(ip, 0);
            let mut h = [0u8; MAX_HEADER];
            let hl = match encap {
                Encap::Vxlan { .. } => encap::vxlan(&mut h, 4789, 1, 1, 60),
                _ => encap::gre(&mut h, None),
            };
            let mut pkt = h[..hl].to_vec();
            pkt.extend_from_slice(&[0u8; 60]);
            // Safety: `pkt` and `dest` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&dest.0 as *const libc::sockaddr_storage).cast(),
                    dest.1,
                )
            };
            assert_eq!(n, pkt.len() as isize, "{}", io::Error::last_os_error());
            let mut buf = [0u8; 256];
            std::thread::sleep(Duration::from_millis(50));
            // Safety: `buf` is writable for its length.
            let got =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            assert_eq!(got, -1, "the sender's socket received a packet");
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
        }
    }

    /// The real socket and route check in a namespace of the test's own:
    /// no route to the collector → the copy that met it is a send error,
    /// the rest `down`, the target down while the route check (`connect`)
    /// finds none; a route added → up within two checks, sending again.
    #[test]
    #[ignore = "needs root: raw sockets (CAP_NET_RAW)"]
    fn a_collector_without_a_route_is_down_until_the_route_is_added() {
        assert!(crate::is_root(), "needs root: raw sockets and namespaces");
        let ns = crate::lab::Netns::new("tunroute").expect("namespace");
        let stop = Arc::new(AtomicBool::new(false));
        let spec = TargetSpec::Gre {
            tunnel: tunnel(Ipv4Addr::new(192, 0, 2, 1).into(), 1500),
            key: None,
        };
        let (q, h) = {
            let stop = stop.clone();
            ns.run(move || Ok(start("g", &spec, 64, stop)?))
                .expect("started in the namespace")
        };
        for i in 0..5u8 {
            offer(&q, i, 60);
        }
        wait("down", || !q.is_up());
        wait("held copies counted", || {
            q.counters.dropped(TargetDrop::Down) == 4
        });
        // Still no route at the next checks.
        std::thread::sleep(RETRY_DOWN * 2);
        assert!(!q.is_up());
        for i in 0..3u8 {
            offer(&q, i, 60);
        }
        ns.ip(&["route", "add", "192.0.2.0/24", "dev", "lo"])
            .expect("route");
        wait("up", || q.is_up());
        for i in 0..5u8 {
            offer(&q, i, 60);
        }
        wait("5 sent", || sent(&q) == 5);
        stop.store(true, Ordering::Relaxed);
        q.wake();
        h.join().expect("sender");
        assert_eq!(
            drops(&q),
            vec![(TargetDrop::SendError, 1), (TargetDrop::Down, 7)]
        );
    }

    #[test]
    #[ignore = "needs root: raw sockets (CAP_NET_RAW)"]
    fn a_source_address_not_on_this_host_fails_the_start_and_has_no_route() {
        assert!(crate::is_root(), "needs root: raw sockets");
        let mut t = tunnel(Ipv4Addr::LOCALHOST.into(), 1500);
        assert!(route_exists(&t));
        t.source = Some(Ipv4Addr::new(192, 0, 2, 1).into());
        assert!(!route_exists(&t), "cannot send from an address not here");
        let spec = TargetSpec::Gre {
            tunnel: t,
            key: None,
        };
        let e = start("g", &spec, 8, Arc::new(AtomicBool::new(false)))
            .err()
            .expect("refused");
        assert!(e.to_string().starts_with("bind(source)"), "{e}");
        // A kind that is no tunnel is refused.
        let e = start(
            "p",
            &TargetSpec::Interface {
                interface: "lo".into(),
                zero_copy: crate::config::ZeroCopy::Auto,
            },
            8,
            Arc::default(),
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains("not a tunnel kind"), "{e}");
    }
}
