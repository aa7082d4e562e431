//! Raw packet sockets: send frames out of an interface, and capture what
//! arrives on one (with the VLAN tag the kernel took off, if any).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Netns;

/// An AF_PACKET socket bound to `interface`, created in the current thread's namespace.
pub fn packet_socket(interface: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // Safety: plain socket() call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket (needs root)");
    }
    // Safety: the fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = crate::kernel::ifindex(interface)?;
    // Safety: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // Safety: `sll` is a valid, fully sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    // The capture relies on both: VLAN tags from auxdata, and the timeout to stop.
    set_option(
        &fd,
        libc::SOL_PACKET,
        libc::PACKET_AUXDATA,
        &1 as &libc::c_int,
    )
    .context("PACKET_AUXDATA")?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).context("SO_RCVTIMEO")?;
    // Large buffers are best effort: they only make loss under bursts less likely.
    let bufsize: libc::c_int = 64 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let _ = set_option(&fd, libc::SOL_SOCKET, opt, &bufsize);
    }
    Ok(fd)
}

/// setsockopt with a plain value.
fn set_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // Safety: `value` points to a live `T` of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// (length, outgoing?, stripped VLAN tag as (TPID, TCI)).
type Received = (usize, bool, Option<(u16, u16)>);

/// Receives one frame; returns (length, outgoing?, VLAN tag the driver
/// stripped as (TPID, TCI)), or `None` on timeout. As libpcap does, the tag
/// comes from PACKET_AUXDATA.
fn recv_with_auxdata(fd: libc::c_int, buf: &mut [u8]) -> Option<Received> {
    #[repr(C)]
    struct TpacketAuxdata {
        tp_status: u32,
        tp_len: u32,
        tp_snaplen: u32,
        tp_mac: u16,
        tp_net: u16,
        tp_vlan_tci: u16,
        tp_vlan_tpid: u16,
    }
    const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
    const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
    // Safety: all-zero is a valid sockaddr_ll / msghdr.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Safety: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // Safety: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let mut vlan = None;
    // Safety: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<TpacketAuxdata>());
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    vlan = Some((tpid, aux.tp_vlan_tci));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Some((n as usize, from.sll_pkttype == libc::PACKET_OUTGOING, vlan))
}

/// Sends `frames` out of `interface` in namespace `ns`, pacing to at most
/// `pps` frames per second (0 = as fast as the socket takes them).
pub fn send_frames(
    ns: &Netns,
    interface: &str,
    frames: Arc<Vec<Vec<u8>>>,
    pps: u64,
) -> Result<u64> {
    let interface = interface.to_string();
    let fd = ns.run(move || packet_socket(&interface))?;
    let start = Instant::now();
    let mut sent = 0u64;
    for (i, f) in frames.iter().enumerate() {
        if pps > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / pps as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        loop {
            // Safety: `f` is a valid buffer of its length.
            let rc = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if rc >= 0 {
                sent += 1;
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                std::thread::yield_now();
                continue;
            }
            return Err(e).context("sending a frame");
        }
    }
    Ok(sent)
}

/// Frames received on an interface, collected on a background thread.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Vec<u8>>>>,
    count: Arc<AtomicU32>,
}

impl Capture {
    /// Starts capturing frames *received* by `interface` in `ns`.
    pub fn start(ns: &Netns, interface: &str) -> Result<Capture> {
        let name = interface.to_string();
        let fd = ns.run(move || packet_socket(&name))?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU32::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let handle = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Some((n, outgoing, vlan)) = recv_with_auxdata(fd.as_raw_fd(), &mut buf) else {
                    // Timeout: stop only once asked and the socket is drained.
                    if s.load(Ordering::Relaxed) {
                        return frames;
                    }
                    continue;
                };
                if outgoing {
                    continue;
                }
                let mut frame = buf[..n].to_vec();
                if let (Some((tpid, tci)), true) = (vlan, n >= 12) {
                    // The driver stripped the tag into skb metadata; put it back.
                    let tag = [tpid.to_be_bytes(), tci.to_be_bytes()].concat();
                    frame.splice(12..12, tag);
                }
                frames.push(frame);
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Capture {
            stop,
            handle: Some(handle),
            count,
        })
    }

    /// Frames captured so far.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops (after the socket has been idle for 100 ms) and returns the frames.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
