//! The RX side: one AF_XDP socket per source queue, its fill ring kept full,
//! and the [`Loan`] of a received frame to a target in the same UMEM.

use std::sync::Arc;

use xdpilone::xdp::XdpDesc;
use xdpilone::RingRx;

use super::{
    bind, join, retrying_busy, Area, Bound, MemoryHost, Rings, StatsHandle, UmemHost, Where,
    XskError, FRAME_SIZE,
};
use crate::config::ZeroCopy;

// Safety: a queue bundles a UMEM mapping with the rings that reference it;
// xdpilone's types hold raw pointers into them and so are not Send. The bundle
// is moved to one data-plane thread as a whole and used only there; nothing
// else keeps a pointer into it (StatsHandle owns a dup'ed fd).
unsafe impl Send for RxQueue {}

/// The RX side of one source queue: the XDP program redirects into it.
pub struct RxQueue {
    rx: RingRx,
    b: Bound,
    /// Frame addresses not currently owned by the kernel.
    spare: Vec<u64>,
    /// The descriptors of the batch being handled, read off the RX ring
    /// before any frame is touched (see [`RxQueue::receive`]).
    batch: Vec<XdpDesc>,
    /// Entries of the RX ring (and of the fill ring).
    ring_size: u32,
}

impl RxQueue {
    /// Binds an RX socket to `interface` queue `queue` and fills its fill ring.
    pub fn open(
        interface: &str,
        queue: u32,
        frames: u32,
        ring_size: u32,
        zero_copy: ZeroCopy,
    ) -> Result<Self, XskError> {
        let area = Arc::new(Area::new(frames as usize * FRAME_SIZE as usize, true)?);
        Self::open_in(interface, queue, &area, 0..frames, ring_size, zero_copy)
    }

    /// Binds an RX socket to `interface` queue `queue` over the memory of a
    /// pcapng target ([`MemoryHost`]), registered as this socket's UMEM,
    /// using the host's RX frames.
    pub fn open_over(
        interface: &str,
        queue: u32,
        host: &MemoryHost,
        ring_size: u32,
        zero_copy: ZeroCopy,
    ) -> Result<Self, XskError> {
        Self::open_in(
            interface,
            queue,
            &host.area,
            host.frames(),
            ring_size,
            zero_copy,
        )
    }

    /// Registers `area` as a UMEM, binds an RX socket over it and gives the
    /// kernel `frames` of it.
    fn open_in(
        interface: &str,
        queue: u32,
        area: &Arc<Area>,
        frames: std::ops::Range<u32>,
        ring_size: u32,
        zero_copy: ZeroCopy,
    ) -> Result<Self, XskError> {
        let w = Where { interface, queue };
        let rings = Rings {
            fill: ring_size,
            ring: ring_size,
            rx: true,
        };
        let (mut b, umem) = bind(&w, area, rings, zero_copy)?;
        b._umem = Some(umem);
        Self::start(&w, b, frames, ring_size)
    }

    /// Binds an RX socket to `interface` queue `queue` over the UMEM of an
    /// interface target ([`UmemHost`]), using the host's RX frames.
    pub fn join(
        interface: &str,
        queue: u32,
        host: &UmemHost,
        ring_size: u32,
    ) -> Result<Self, XskError> {
        let w = Where { interface, queue };
        let rings = Rings {
            fill: ring_size,
            ring: ring_size,
            rx: true,
        };
        let b = retrying_busy(&w, || join(&w, host, rings))?;
        Self::start(
            &w,
            b,
            host.rx_first..host.rx_first + host.rx_frames,
            ring_size,
        )
    }

    fn start(
        w: &Where<'_>,
        b: Bound,
        frames: std::ops::Range<u32>,
        ring_size: u32,
    ) -> Result<Self, XskError> {
        let rx = b
            .user
            .map_rx()
            .map_err(|e| w.err("mapping the RX ring", e, b.zero_copy))?;
        let spare = frames
            .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
            .collect();
        let mut q = RxQueue {
            rx,
            b,
            spare,
            batch: Vec::new(),
            ring_size,
        };
        q.refill();
        Ok(q)
    }

    /// The memory its frames live in.
    pub fn area(&self) -> &Arc<Area> {
        &self.b.area
    }

    /// Entries of its RX ring: frames the kernel can hand over before they
    /// are read.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    pub fn zero_copy(&self) -> bool {
        self.b.zero_copy
    }

    pub fn fd(&self) -> libc::c_int {
        self.b.user.as_raw_fd()
    }

    pub(crate) fn stats_handle(&self) -> std::io::Result<StatsHandle> {
        StatsHandle::new(self.fd())
    }

    /// Gives every spare frame the fill ring has room for to the kernel.
    ///
    /// Wakes the driver when it asks for it (zero-copy drivers set the flag
    /// when they found the fill ring empty), frames given or not: a worker
    /// about to nap rather than `poll()` (which would wake it) must not
    /// leave a NIC without buffers for the nap.
    fn refill(&mut self) {
        if !self.spare.is_empty() {
            let n = {
                let mut w = self.b.device.fill(self.spare.len() as u32);
                let n = w.insert(self.spare.iter().rev().copied()) as usize;
                w.commit();
                n
            };
            let keep = self.spare.len() - n;
            self.spare.truncate(keep);
        }
        if self.b.device.needs_wakeup() {
            self.b.device.wake();
        }
    }

    /// Waits up to `timeout_ms` for received frames.
    pub fn wait(&self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Safety: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    }

    /// Hands up to `max` received frames to `f` (with the bytes in front of the
    /// frame, where the XDP metadata lives, and a [`Loan`] through which the
    /// frame can be handed on without a copy), then returns them (or the
    /// frames swapped for them) to the kernel. Returns how many were handled.
    ///
    /// The kernel wrote each frame from another core a moment ago, so the
    /// first read of each misses the cache. The batch's descriptors are read
    /// off the ring first, and each frame's metadata line is prefetched
    /// [`PREFETCH_AHEAD`] frames before it is handed on, so that its miss
    /// is over by then (prefetching the whole batch at once left the first
    /// frames stalling, and asked for more lines than the core tracks).
    pub fn receive(&mut self, max: u32, mut f: impl FnMut(&mut [u8], &[u8], &mut Loan<'_>)) -> u32 {
        let area = &self.b.area;
        let (base, area_len) = (area.base(), area.len());
        self.batch.clear();
        {
            let mut r = self.rx.receive(max);
            while let Some(d) = r.read() {
                self.batch.push(d);
            }
            // The frames stay ours until they are put on the fill ring;
            // the ring's slots can go back now.
            r.release();
        }
        let meta_line = |d: &XdpDesc| {
            prefetch(
                base.wrapping_add((d.addr as usize).saturating_sub(mirror_ebpf::limits::META_LEN)),
            )
        };
        self.batch.iter().take(PREFETCH_AHEAD).for_each(meta_line);
        for (i, &XdpDesc { addr, len, .. }) in self.batch.iter().enumerate() {
            if let Some(d) = self.batch.get(i + PREFETCH_AHEAD) {
                meta_line(d);
            }
            let start = addr as usize;
            let end = start + len as usize;
            let chunk = start - start % FRAME_SIZE as usize;
            let mut loan = Loan::new(area, chunk as u64);
            if end <= area_len {
                // Safety: [chunk, end) lies in our mapping, and the kernel
                // handed this frame to us until we put it on the fill ring.
                let (meta, data) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(base.add(chunk), start - chunk),
                        std::slice::from_raw_parts(base.add(start), len as usize),
                    )
                };
                f(meta, data, &mut loan);
            }
            self.spare.push(loan.swapped.unwrap_or(chunk as u64));
        }
        let n = self.batch.len() as u32;
        self.refill();
        n
    }
}

/// How many frames ahead of the one handed on [`RxQueue::receive`]
/// prefetches a frame's metadata.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to bring the cache line at `p` in ahead of its use (a hint:
/// it never faults, whatever `p` is).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // Safety: a prefetch is a hint and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A received frame that can be lent to one target whose queue lives in the
/// same UMEM: the target takes the frame itself and gives the RX queue one of
/// its free frames in exchange, so both keep their number of frames and a
/// slow target can only ever hold its own share.
pub struct Loan<'a> {
    area: &'a Arc<Area>,
    chunk: u64,
    swapped: Option<u64>,
}

impl<'a> Loan<'a> {
    /// A loan of the frame at `chunk` of `area` (what [`RxQueue::receive`]
    /// hands out; public for tests of the targets).
    pub fn new(area: &'a Arc<Area>, chunk: u64) -> Loan<'a> {
        Loan {
            area,
            chunk,
            swapped: None,
        }
    }

    /// The memory the frame lives in.
    pub fn area(&self) -> &Arc<Area> {
        self.area
    }

    /// The frame's offset in the area.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Whether the frame was already lent.
    pub fn taken(&self) -> bool {
        self.swapped.is_some()
    }

    /// The frame the RX queue got in exchange, once lent.
    pub fn swapped(&self) -> Option<u64> {
        self.swapped
    }

    /// Takes the frame, giving the RX queue the frame at `with` instead.
    pub fn swap(&mut self, with: u64) {
        self.swapped = Some(with);
    }
}
