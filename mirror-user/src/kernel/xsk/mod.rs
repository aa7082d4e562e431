//! AF_XDP sockets on top of `xdpilone`: the UMEM memory, one RX socket per
//! source queue (fill + RX rings) and one TX socket per interface target
//! (TX + completion rings). Ring handling is xdpilone's; this module owns the
//! memory and the frame bookkeeping: [`rx`] (a source queue's socket and the
//! loan of a received frame), [`tx`] (an interface target's socket).

mod rx;
mod tx;

pub(crate) use rx::prefetch;
pub use rx::{Loan, RxQueue};
pub use tx::{Spare, TxQueue};

use std::ffi::CString;
use std::num::NonZeroU32;
use std::ptr::NonNull;
use std::sync::Arc;

use xdpilone::{DeviceQueue, IfInfo, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::config::ZeroCopy;

/// Bytes per UMEM frame: one page, the most AF_XDP accepts without multi-buffer.
pub const FRAME_SIZE: u32 = 4096;

// Bind flags (linux/if_xdp.h).
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("allocating {bytes} bytes of packet memory: {source}")]
    Mmap {
        bytes: usize,
        source: std::io::Error,
    },
    #[error(
        "AF_XDP bind on {interface} queue {queue}: the queue is taken by another AF_XDP socket: \
         {holders}; stop that process, or mirror another interface"
    )]
    Busy {
        interface: String,
        queue: u32,
        /// Who holds it, as [`crate::kernel::holders`] finds it.
        holders: String,
    },
    #[error("AF_XDP {step} on {interface} queue {queue}: {errno}{hint}")]
    Socket {
        step: &'static str,
        interface: String,
        queue: u32,
        errno: std::io::Error,
        hint: &'static str,
    },
}

fn errno(e: xdpilone::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.get_raw())
}

/// Page-aligned anonymous memory: a UMEM, or the buffers of a target queue.
///
/// Whoever holds a region of it (a frame index handed out by a free list, or a
/// descriptor the kernel gave back) is its only reader and writer; the area
/// itself only hands out the base address.
pub struct Area {
    ptr: NonNull<[u8]>,
}

// Safety: the area is plain memory; exclusive use of each frame is arranged
// by the queues that own the frame indices (see above).
unsafe impl Send for Area {}
// Safety: as above.
unsafe impl Sync for Area {}

impl Area {
    /// Maps `bytes` of zeroed memory. `populate` faults every page in now
    /// (UMEMs, which the kernel pins anyway); otherwise pages come on first use.
    pub fn new(bytes: usize, populate: bool) -> Result<Self, XskError> {
        let populate = if populate { libc::MAP_POPULATE } else { 0 };
        // Safety: an anonymous private mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(XskError::Mmap {
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        let slice = std::ptr::slice_from_raw_parts_mut(p.cast::<u8>(), bytes);
        Ok(Area {
            ptr: NonNull::new(slice).expect("mmap never returns NULL on success"),
        })
    }

    pub fn base(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    pub fn len(&self) -> usize {
        self.ptr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ptr.is_empty()
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // Safety: we own this mapping; every ring and queue that referenced it
        // holds an `Arc` to it, so none is left.
        unsafe { libc::munmap(self.base().cast(), self.len()) };
    }
}

/// Which queue an AF_XDP socket serves, for error messages.
struct Where<'a> {
    interface: &'a str,
    queue: u32,
}

impl Where<'_> {
    fn err(&self, step: &'static str, e: xdpilone::Errno, zero_copy: bool) -> XskError {
        let raw = e.get_raw();
        XskError::Socket {
            step,
            interface: self.interface.to_string(),
            queue: self.queue,
            errno: errno(e),
            hint: if zero_copy
                && step == "bind"
                && matches!(raw, libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT)
            {
                " (zero-copy needs driver support: try zero_copy = \"off\")"
            } else {
                ""
            },
        }
    }
}

/// A socket bound to one device queue, with that queue's fill and
/// completion rings, over a UMEM it registered or joined.
struct Bound {
    device: DeviceQueue,
    user: User,
    /// The UMEM, when this socket registered it and nobody took it over
    /// ([`UmemHost`]); the kernel keeps it while any socket uses it.
    _umem: Option<Umem>,
    area: Arc<Area>,
    zero_copy: bool,
}

/// Ring sizes of a socket: its fill/completion pair (`fill`), and its RX
/// ring (`rx`) or TX ring (otherwise) of `ring` descriptors.
#[derive(Clone, Copy)]
struct Rings {
    fill: u32,
    ring: u32,
    rx: bool,
}

impl Rings {
    fn socket_config(self, bind_flags: u16) -> SocketConfig {
        let ring = NonZeroU32::new(self.ring);
        SocketConfig {
            rx_size: if self.rx { ring } else { None },
            tx_size: if self.rx { None } else { ring },
            bind_flags,
        }
    }
}

fn bind(
    w: &Where<'_>,
    area: &Arc<Area>,
    rings: Rings,
    zero_copy: ZeroCopy,
) -> Result<(Bound, Umem), XskError> {
    let tries: &[bool] = match zero_copy {
        ZeroCopy::Auto => &[true, false],
        ZeroCopy::On => &[true],
        ZeroCopy::Off => &[false],
    };
    let mut last = None;
    for &zc in tries {
        match retrying_busy(w, || bind_once(w, area, rings, zc)) {
            Ok(b) => return Ok(b),
            // Taken: copy mode would find it taken too.
            Err(e @ XskError::Busy { .. }) => return Err(e),
            Err(e) => {
                if zero_copy == ZeroCopy::Auto && zc {
                    let unsupported = matches!(
                        &e,
                        XskError::Socket { errno, .. } if errno.raw_os_error() == Some(libc::EOPNOTSUPP)
                    );
                    if unsupported && w.queue == 0 {
                        // The expected case on most drivers: one calm line.
                        tracing::info!(
                            interface = w.interface,
                            "the driver has no AF_XDP zero-copy: using copy mode"
                        );
                    } else if unsupported {
                        tracing::debug!(
                            interface = w.interface,
                            queue = w.queue,
                            "no AF_XDP zero-copy"
                        );
                    } else {
                        tracing::warn!(
                            interface = w.interface,
                            queue = w.queue,
                            error = %e,
                            "AF_XDP zero-copy failed, using copy mode"
                        );
                    }
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one bind was tried"))
}

/// How long a queue still held by a previous socket is retried: after a
/// daemon is killed the kernel releases its sockets' queues asynchronously.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

fn retrying_busy<T>(
    w: &Where<'_>,
    mut once: impl FnMut() -> Result<T, XskError>,
) -> Result<T, XskError> {
    let deadline = std::time::Instant::now() + BUSY_RETRY;
    let mut logged = false;
    let busy = |holders: String| XskError::Busy {
        interface: w.interface.to_string(),
        queue: w.queue,
        holders,
    };
    loop {
        match once() {
            Err(XskError::Socket { errno, .. }) if errno.raw_os_error() == Some(libc::EBUSY) => {
                // Another process's socket: no use waiting for it. Only
                // when that is certain (the kernel's socket diagnostics, or
                // a process that also holds the interface's XDP program):
                // without them any process with an AF_XDP socket would do,
                // another namespace's too, while this queue may be a socket
                // of ours the kernel is still releasing (a reload restarted
                // its target or source).
                let ifindex = crate::kernel::ifindex(w.interface).unwrap_or(0);
                let holders = crate::kernel::holders::xsk_holders(ifindex, Some(w.queue), false);
                if !holders.is_empty() {
                    return Err(busy(holders.join("; ")));
                }
                if std::time::Instant::now() >= deadline {
                    let maybe = crate::kernel::holders::xsk_holders(ifindex, Some(w.queue), true);
                    return Err(busy(if maybe.is_empty() {
                        format!(
                            "no process found holding it after {} s (try `ss --xdp -p` and \
                             `bpftool net` as root)",
                            BUSY_RETRY.as_secs()
                        )
                    } else {
                        format!(
                            "still taken after {} s; {}",
                            BUSY_RETRY.as_secs(),
                            maybe.join("; ")
                        )
                    }));
                }
                if !logged {
                    tracing::info!(
                        interface = w.interface,
                        queue = w.queue,
                        "AF_XDP queue busy (a previous socket is being released); retrying"
                    );
                    logged = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn if_info(w: &Where<'_>, zc: bool) -> Result<IfInfo, XskError> {
    let mut info = IfInfo::invalid();
    let name = CString::new(w.interface).map_err(|_| XskError::Socket {
        step: "interface name",
        interface: w.interface.to_string(),
        queue: w.queue,
        errno: std::io::Error::from_raw_os_error(libc::EINVAL),
        hint: "",
    })?;
    info.from_name(&name)
        .map_err(|e| w.err("interface lookup", e, zc))?;
    info.set_queue(w.queue);
    Ok(info)
}

/// Registers `area` as a new UMEM and binds its first socket.
fn bind_once(
    w: &Where<'_>,
    area: &Arc<Area>,
    rings: Rings,
    zc: bool,
) -> Result<(Bound, Umem), XskError> {
    let umem = register(w, area, rings, zc)?;
    let info = if_info(w, zc)?;
    let sock = Socket::with_shared(&info, &umem).map_err(|e| w.err("socket", e, zc))?;
    let b = bind_first(w, &umem, &sock, area, rings, zc)?;
    Ok((b, umem))
}

/// Registers `area` as a new UMEM, on a new AF_XDP socket (`CAP_NET_RAW`)
/// that is not bound yet ([`bind_first`] binds it).
fn register(w: &Where<'_>, area: &Arc<Area>, rings: Rings, zc: bool) -> Result<Umem, XskError> {
    let config = UmemConfig {
        fill_size: rings.fill,
        complete_size: rings.fill,
        frame_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
    };
    // Safety: `area` is page aligned, a whole number of frames, and outlives
    // the Umem (every socket over it holds an Arc to it).
    unsafe { Umem::new(config, area.ptr) }.map_err(|e| w.err("UMEM registration", e, zc))
}

/// Gives `umem`'s own socket `sock` its rings and binds it to the queue
/// `sock` names. A socket gets its rings once: whatever fails here, it cannot
/// be bound again.
fn bind_first(
    w: &Where<'_>,
    umem: &Umem,
    sock: &Socket,
    area: &Arc<Area>,
    rings: Rings,
    zc: bool,
) -> Result<Bound, XskError> {
    let device = umem
        .fq_cq(sock)
        .map_err(|e| w.err("fill/completion rings", e, zc))?;
    let cfg = rings.socket_config(XDP_USE_NEED_WAKEUP | if zc { XDP_ZEROCOPY } else { XDP_COPY });
    let user = umem
        .rx_tx(sock, &cfg)
        .map_err(|e| w.err("rx/tx rings", e, zc))?;
    umem.bind(&user).map_err(|e| w.err("bind", e, zc))?;
    Ok(Bound {
        device,
        user,
        _umem: None,
        area: area.clone(),
        zero_copy: zc,
    })
}

/// Binds a socket on another device queue to `host`'s UMEM
/// (XDP_SHARED_UMEM): its own fill/completion pair, the copy/zero-copy mode
/// of the UMEM's first socket (the kernel takes no flags for a shared bind).
fn join(w: &Where<'_>, host: &UmemHost, rings: Rings) -> Result<Bound, XskError> {
    let zc = host.zero_copy;
    let info = if_info(w, zc)?;
    let sock = Socket::new(&info).map_err(|e| w.err("socket", e, zc))?;
    let device = host
        .umem
        .fq_cq(&sock)
        .map_err(|e| w.err("fill/completion rings", e, zc))?;
    let user = host
        .umem
        .rx_tx(&sock, &rings.socket_config(0))
        .map_err(|e| w.err("rx/tx rings", e, zc))?;
    host.umem
        .bind(&user)
        .map_err(|e| w.err("shared-UMEM bind", e, zc))?;
    Ok(Bound {
        device,
        user,
        _umem: None,
        area: host.area.clone(),
        zero_copy: zc,
    })
}

/// The UMEM of an interface target that a tap source's first RX queue can
/// join, so the frames it receives can go out of the target without a copy:
/// frames `[rx_first, rx_first + rx_frames)` of the area are the RX queue's,
/// the ones before are the target queue's slots.
pub struct UmemHost {
    umem: Umem,
    area: Arc<Area>,
    zero_copy: bool,
    rx_first: u32,
    rx_frames: u32,
    /// The target it belongs to, for logs.
    pub target: String,
}

impl UmemHost {
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }
}

/// Memory a tap source's first RX queue registers as its own UMEM: a pcapng
/// target's queue, whose frames `[rx_first, rx_first + rx_frames)` are the
/// RX queue's and the ones before it the queue's slots. A received frame is
/// then written to the file from where the kernel put it, with no copy in
/// userspace (the target takes the RX frame and gives one of its free slots
/// in exchange, [`Loan`]).
pub struct MemoryHost {
    area: Arc<Area>,
    rx_first: u32,
    rx_frames: u32,
    /// The target it belongs to, for logs.
    pub target: String,
}

impl MemoryHost {
    /// The frames of `area` from `rx_first` on, for an RX queue.
    pub(crate) fn new(area: &Arc<Area>, rx_first: u32, target: &str) -> MemoryHost {
        let frames = (area.len() / FRAME_SIZE as usize) as u32;
        MemoryHost {
            area: area.clone(),
            rx_first,
            rx_frames: frames.saturating_sub(rx_first),
            target: target.to_string(),
        }
    }

    /// The RX queue's frames, by index in the area.
    pub(crate) fn frames(&self) -> std::ops::Range<u32> {
        self.rx_first..self.rx_first + self.rx_frames
    }
}

/// What a tap source's first RX queue may share with a target, so that the
/// frames it receives reach the target without a copy in userspace.
pub enum RxHost {
    /// An interface target's UMEM, joined (`XDP_SHARED_UMEM`).
    Umem(UmemHost),
    /// A pcapng target's queue memory, registered as the RX queue's UMEM.
    Memory(MemoryHost),
}

/// Kernel-side drops of one socket (XDP_STATISTICS).
#[derive(Debug, Default, Clone, Copy)]
pub struct SocketDrops {
    /// RX ring full.
    pub rx_ring_full: u64,
    /// No frame available (fill ring empty) or frame too large.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

/// Statistics handle that can be read from another thread.
#[derive(Clone)]
pub(crate) struct StatsHandle {
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl StatsHandle {
    fn new(raw: libc::c_int) -> std::io::Result<Self> {
        // Safety: dup of a valid socket fd owned by the ring.
        let fd = unsafe { libc::dup(raw) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Safety: `fd` was just created by dup and is owned by nobody else.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(StatsHandle {
            fd: std::sync::Arc::new(owned),
        })
    }

    /// Reads XDP_STATISTICS of the socket.
    pub fn drops(&self) -> SocketDrops {
        #[repr(C)]
        #[derive(Default)]
        struct XdpStatistics {
            rx_dropped: u64,
            rx_invalid_descs: u64,
            tx_invalid_descs: u64,
            rx_ring_full: u64,
            rx_fill_ring_empty_descs: u64,
            tx_ring_empty_descs: u64,
        }
        const SOL_XDP: libc::c_int = 283;
        const XDP_STATISTICS: libc::c_int = 7;
        let mut s = XdpStatistics::default();
        let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
        // Safety: `s` and `len` are valid out-pointers sized for the option.
        let rc = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&*self.fd),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut s as *mut XdpStatistics).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return SocketDrops::default();
        }
        SocketDrops {
            rx_ring_full: s.rx_ring_full,
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
        }
    }
}
