//! The TX side: one AF_XDP socket per interface target, sending frames that
//! already sit in its UMEM.

use std::sync::Arc;

use xdpilone::xdp::XdpDesc;
use xdpilone::{RingTx, Socket, Umem};

use super::{
    bind, bind_first, if_info, register, Area, Bound, Rings, StatsHandle, UmemHost, Where,
    XskError, FRAME_SIZE,
};
use crate::config::ZeroCopy;

// Safety: a TX queue, like an RX queue, bundles a UMEM mapping with the rings that reference it;
// xdpilone's types hold raw pointers into them and so are not Send. The bundle
// is moved to one data-plane thread as a whole and used only there; nothing
// else keeps a pointer into it (StatsHandle owns a dup'ed fd).
unsafe impl Send for TxQueue {}

/// The TX side of an interface target: sends frames that already sit in its
/// UMEM (the target queue's buffers are the UMEM frames, so nothing is copied
/// here) out of one device queue.
pub struct TxQueue {
    tx: RingTx,
    b: Bound,
    in_flight: u32,
    /// Its rings' sizes, for a [`Spare`] made like it.
    rings: Rings,
}

// Safety: as for TxQueue: a UMEM registration (a socket fd and the area it
// maps) moved to the sender thread as a whole and used only there.
unsafe impl Send for Spare {}

/// A UMEM registration over an interface target's memory, on an AF_XDP
/// socket not bound yet: what the target's sender binds to the interface
/// once it is created again ([`TxQueue::reopen`]). A socket that its
/// device's deletion unbound cannot be bound again, so the spare is made
/// ahead ([`TxQueue::spare`]: at start, and after each pick-up), with
/// `CAP_NET_RAW`, which `mirror run` keeps.
pub struct Spare {
    umem: Umem,
    area: Arc<Area>,
    rings: Rings,
}

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, kernel 6.17+; Debian 12's
/// headers predate it): how many TX descriptors one `sendto` turns into skbs
/// in copy mode (default 32, at most the TX ring's size).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Copy mode sends at most 32 frames per `sendto` unless told otherwise:
/// let one wake-up send the whole ring, a syscall per batch instead of per
/// 32 frames. Older kernels refuse the option; they keep their 32.
fn raise_tx_budget(w: &Where<'_>, fd: libc::c_int, ring: u32) {
    let budget: u32 = ring;
    // Safety: a valid socket fd and a 4-byte option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            interface = w.interface,
            queue = w.queue,
            error = %std::io::Error::last_os_error(),
            "XDP_MAX_TX_SKB_BUDGET not taken: copy-mode TX sends 32 frames per wake-up"
        );
    }
}

impl TxQueue {
    /// Binds a TX socket to `interface` queue `queue` over `area`, whose
    /// [`FRAME_SIZE`] frames the caller fills and hands to [`TxQueue::submit`].
    /// The first `slots` frames of the area are the target's.
    pub fn open(
        interface: &str,
        queue: u32,
        area: &Arc<Area>,
        slots: u32,
        zero_copy: ZeroCopy,
    ) -> Result<Self, XskError> {
        let (mut tx, umem) = Self::bind(interface, queue, area, slots, slots, zero_copy)?;
        tx.b._umem = Some(umem);
        Ok(tx)
    }

    /// As [`TxQueue::open`], and the frames after the first `slots` are for
    /// an RX queue to [join](RxQueue::join) with `rx_ring` descriptors.
    pub(crate) fn open_host(
        interface: &str,
        queue: u32,
        area: &Arc<Area>,
        slots: u32,
        rx_ring: u32,
        zero_copy: ZeroCopy,
        target: &str,
    ) -> Result<(Self, UmemHost), XskError> {
        let (tx, umem) = Self::bind(interface, queue, area, slots, rx_ring, zero_copy)?;
        let frames = (area.len() / FRAME_SIZE as usize) as u32;
        let host = UmemHost {
            umem,
            area: area.clone(),
            zero_copy: tx.zero_copy(),
            rx_first: slots,
            rx_frames: frames - slots,
            target: target.to_string(),
        };
        Ok((tx, host))
    }

    fn bind(
        interface: &str,
        queue: u32,
        area: &Arc<Area>,
        slots: u32,
        rx_ring: u32,
        zero_copy: ZeroCopy,
    ) -> Result<(Self, Umem), XskError> {
        let w = Where { interface, queue };
        // In flight at most: every slot of the target.
        let ring = slots.next_power_of_two().clamp(64, 1 << 15);
        let rings = Rings {
            fill: ring.max(rx_ring),
            ring,
            rx: false,
        };
        let (b, umem) = bind(&w, area, rings, zero_copy)?;
        let tx = b
            .user
            .map_tx()
            .map_err(|e| w.err("mapping the TX ring", e, b.zero_copy))?;
        if !b.zero_copy {
            raise_tx_budget(&w, b.user.as_raw_fd(), ring);
        }
        Ok((
            TxQueue {
                tx,
                b,
                in_flight: 0,
                rings,
            },
            umem,
        ))
    }

    /// A [`Spare`] over this queue's memory (all of it: frames an RX queue
    /// lends keep their offsets) with this queue's ring sizes. Needs
    /// `CAP_NET_RAW`, and `CAP_IPC_LOCK` unless `RLIMIT_MEMLOCK` has room
    /// (the pages are those pinned already; the kernel counts them again).
    pub(crate) fn spare(&self, interface: &str, queue: u32) -> Result<Spare, XskError> {
        let w = Where { interface, queue };
        let umem = register(&w, &self.b.area, self.rings, self.b.zero_copy)?;
        Ok(Spare {
            umem,
            area: self.b.area.clone(),
            rings: self.rings,
        })
    }

    /// Binds `spare` to `interface` queue `queue` as it is now (a device
    /// created again under the name), in zero-copy mode or not: a TX queue
    /// over the same memory as the one it replaces. Its own UMEM registration:
    /// a tap source's RX queue that shared the old socket's stays on that
    /// one (same memory, same offsets: its lent frames still go out without
    /// a copy). On failure the spare comes back when it was not used yet
    /// (the interface could not be looked up), else it is spent.
    pub(crate) fn reopen(
        spare: Spare,
        interface: &str,
        queue: u32,
        zero_copy: bool,
    ) -> Result<Self, (XskError, Option<Box<Spare>>)> {
        let w = Where { interface, queue };
        let sock = match if_info(&w, zero_copy).and_then(|info| {
            Socket::with_shared(&info, &spare.umem).map_err(|e| w.err("socket", e, zero_copy))
        }) {
            Ok(sock) => sock,
            Err(e) => return Err((e, Some(Box::new(spare)))),
        };
        let Spare { umem, area, rings } = spare;
        let mut b = bind_first(&w, &umem, &sock, &area, rings, zero_copy).map_err(|e| (e, None))?;
        let tx = b
            .user
            .map_tx()
            .map_err(|e| (w.err("mapping the TX ring", e, zero_copy), None))?;
        if !zero_copy {
            raise_tx_budget(&w, b.user.as_raw_fd(), rings.ring);
        }
        b._umem = Some(umem);
        Ok(TxQueue {
            tx,
            b,
            in_flight: 0,
            rings,
        })
    }

    pub fn zero_copy(&self) -> bool {
        self.b.zero_copy
    }

    pub(crate) fn stats_handle(&self) -> std::io::Result<StatsHandle> {
        StatsHandle::new(self.b.user.as_raw_fd())
    }

    /// Frames handed to the kernel and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Puts frames (UMEM offset, length) on the TX ring and wakes the kernel;
    /// returns how many were taken, in order (fewer when the ring is full).
    pub fn submit(&mut self, frames: impl ExactSizeIterator<Item = (u64, u32)>) -> u32 {
        if frames.len() == 0 {
            return 0;
        }
        let n = {
            let mut w = self.tx.transmit(frames.len() as u32);
            let n = w.insert(frames.map(|(addr, len)| XdpDesc {
                addr,
                len,
                options: 0,
            }));
            w.commit();
            n
        };
        self.in_flight += n;
        self.kick();
        n
    }

    /// Wakes the kernel to transmit, when it asks for it (always in copy mode).
    pub fn kick(&mut self) {
        if self.in_flight > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
        }
    }

    /// Reaps the completion ring, handing each sent frame's UMEM offset to
    /// `done`; returns how many completed.
    pub fn complete(&mut self, mut done: impl FnMut(u64)) -> u32 {
        let mut n = 0;
        let mut r = self.b.device.complete(self.in_flight.max(1));
        while let Some(addr) = r.read() {
            done(addr - addr % u64::from(FRAME_SIZE));
            n += 1;
        }
        r.release();
        self.in_flight -= n;
        n
    }
}
