//! Targets: where mirrored frames go.
//!
//! Every target has its own bounded queue ([`TargetQueue`]) and its own sender
//! thread. Workers offer copies to the queue and never wait: a full queue drops
//! the copy and counts `queue_full`, so a slow or dead target loses only its
//! own copies and never stalls a source or another target.

pub mod encap;
pub mod group;
pub mod interface;
pub mod kernel_tunnel;
pub mod pcapng;
pub mod tunnel;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::kernel::xsk::{Area, Loan, XskError, FRAME_SIZE};

/// Why a target dropped a copy. Every reason is reported, zero or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetDrop {
    /// The target's queue was full (the target is slower than the feed).
    QueueFull,
    /// The kernel refused the frame (invalid descriptor) or sending failed.
    SendError,
    /// The target interface was down.
    Down,
    /// Larger than the target can carry.
    TooBig,
    /// Over the session's `rate_limit_pps`.
    RateLimited,
    /// The capture file system is full or below `min_free`.
    DiskFull,
}

impl TargetDrop {
    pub const ALL: [TargetDrop; 6] = [
        TargetDrop::QueueFull,
        TargetDrop::SendError,
        TargetDrop::Down,
        TargetDrop::TooBig,
        TargetDrop::RateLimited,
        TargetDrop::DiskFull,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetDrop::QueueFull => "queue_full",
            TargetDrop::SendError => "send_error",
            TargetDrop::Down => "down",
            TargetDrop::TooBig => "too_big",
            TargetDrop::RateLimited => "rate_limited",
            TargetDrop::DiskFull => "disk_full",
        }
    }
}

/// A mirrored frame as a worker hands it to its session's targets.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The bytes to send (already cut to the session's `packet_length`).
    pub data: &'a [u8],
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Symmetric flow hash (`struct mirror_meta`).
    pub hash: u32,
    /// When the kernel saw it, nanoseconds since the Unix epoch.
    pub tstamp_ns: u64,
    /// The session's VNI / ERSPAN session id.
    pub vni: u32,
    /// Index of the source in the config.
    pub source: u16,
    /// Seen leaving the source interface (egress) rather than arriving.
    pub egress: bool,
}

/// A copy waiting in a target queue: one slot of the queue's memory, owned by
/// whoever holds the `Packet` (a free list, the ready queue, a sender).
pub struct Packet {
    /// Index of the slot in the queue's memory.
    slot: u32,
    /// Start of the data: the slot's first byte, or for a frame lent by an
    /// RX queue ([`Loan`]) where the kernel put it in the frame.
    ptr: NonNull<u8>,
    /// Bytes from the start of the slot to `ptr`.
    head: u32,
    len: usize,
    pub orig_len: u32,
    pub hash: u32,
    pub tstamp_ns: u64,
    pub vni: u32,
    pub source: u16,
    pub egress: bool,
    /// The queue cut it to fit the target (`truncated`).
    pub truncated: bool,
}

// Safety: a Packet is the only handle on its slot (the queues move it between
// threads by value); the memory behind `ptr` lives as long as the queue,
// which every thread holding packets keeps alive through an `Arc`.
unsafe impl Send for Packet {}

impl Packet {
    pub fn data(&self) -> &[u8] {
        // Safety: `ptr` is this packet's slot, at least `len` bytes long,
        // written before the packet was made ready and not aliased.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Asks the CPU for its data (whole cache lines) ahead of reading it:
    /// the kernel or a worker wrote it from another core, so the first
    /// read of each line misses the cache.
    pub(crate) fn prefetch(&self) {
        for at in (0..self.len).step_by(64) {
            crate::kernel::xsk::prefetch(self.ptr.as_ptr().wrapping_add(at));
        }
    }

    /// Index of its slot (for an interface target: its UMEM frame).
    pub(crate) fn slot(&self) -> usize {
        self.slot as usize
    }

    fn fill(&mut self, bytes: &[u8]) {
        // Safety: as in `data`; the slot holds `max_len` >= `bytes.len()` bytes
        // and the holder of a `&mut Packet` is its only user.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr(), bytes.len()) };
        self.len = bytes.len();
    }
}

/// What a queue does with a copy longer than its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Drop it, counted `too_big` (an interface cannot send more than its MTU).
    Drop,
    /// Keep the first bytes, counted `truncated` (tunnels, like AWS mirroring;
    /// the original length is kept for pcapng).
    Truncate,
}

/// Counters of one target, updated by workers (offers) and the sender.
#[derive(Default)]
pub struct TargetCounters {
    pub enqueued: AtomicU64,
    pub sent_packets: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Copies cut to fit the target (delivered, so not a drop).
    pub truncated: AtomicU64,
    /// Copies taken from the source's RX frame without a copy (sent or written
    /// from it, or dropped afterwards like any copy).
    pub shared: AtomicU64,
    /// pcapng: files deleted to hold `keep` and `max_total_size`, and
    /// their bytes.
    pub deleted_files: AtomicU64,
    pub deleted_bytes: AtomicU64,
    dropped: [AtomicU64; 6],
}

impl TargetCounters {
    pub fn drop(&self, why: TargetDrop, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, why: TargetDrop) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }
}

/// The bounded queue between the workers and a target's sender thread.
///
/// `capacity` slots of one memory area, moved between two lock-free queues:
/// `free` and `ready`. Offering takes a free slot (none = `queue_full`),
/// copies the frame into it (the only copy the daemon makes) and pushes it
/// ready; the sender returns it to `free` once the frame has left. For an
/// interface target the area *is* the AF_XDP socket's UMEM, one frame per
/// slot, so the sender puts the slot on the TX ring as it is.
pub struct TargetQueue {
    pub name: String,
    pub kind: &'static str,
    free: ArrayQueue<Packet>,
    ready: ArrayQueue<Packet>,
    /// The slots' memory (`capacity * stride` bytes).
    memory: Arc<Area>,
    /// Bytes from one slot to the next.
    stride: usize,
    pub counters: TargetCounters,
    /// Copies the sender holds (taken from the queue, not yet completed).
    pub in_flight: AtomicU64,
    up: AtomicBool,
    /// The target takes copies but cannot deliver them now (a pcapng
    /// target whose writing is held back): down in its stats, while copies
    /// are still offered to it.
    held: AtomicBool,
    /// Largest frame the target carries (an interface target's follows its
    /// MTU: [`TargetQueue::set_max_len`]).
    max_len: AtomicUsize,
    /// What `max_len` may be at most: the slots' size.
    slot_len: usize,
    oversize: Oversize,
    sender: OnceLock<Thread>,
    /// Copies waiting at which [`TargetQueue::notify`] wakes the sender
    /// (see [`TargetQueue::wake_at`]; 0: always, even with none).
    wake_at: AtomicUsize,
    /// Extra drop reasons read from the kernel at snapshot time (send_error).
    kernel_send_errors: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl TargetQueue {
    /// A queue of `capacity` copies of up to `max_len` bytes in memory of
    /// its own (tunnel and pcapng targets).
    pub fn new(
        name: &str,
        kind: &'static str,
        capacity: usize,
        max_len: usize,
        oversize: Oversize,
    ) -> Result<Self, XskError> {
        let stride = max_len.max(1).next_multiple_of(64);
        let memory = Arc::new(Area::new(capacity * stride, false)?);
        Ok(Self::over(
            name, kind, capacity, max_len, oversize, memory, stride,
        ))
    }

    /// A queue whose slots are the first `capacity` [`FRAME_SIZE`] frames of
    /// a UMEM of `capacity + extra` frames, for an AF_XDP socket to send from
    /// ([`TargetQueue::memory`]); the `extra` frames are for an RX queue to
    /// share the UMEM.
    pub(crate) fn umem(
        name: &str,
        kind: &'static str,
        capacity: usize,
        extra: usize,
        max_len: usize,
        oversize: Oversize,
    ) -> Result<Self, XskError> {
        let stride = FRAME_SIZE as usize;
        let memory = Arc::new(Area::new((capacity + extra) * stride, true)?);
        let mut q = Self::over(
            name,
            kind,
            capacity,
            max_len.min(stride),
            oversize,
            memory,
            stride,
        );
        // A UMEM frame takes any frame a device's MTU may later allow.
        q.slot_len = stride;
        Ok(q)
    }

    fn over(
        name: &str,
        kind: &'static str,
        capacity: usize,
        max_len: usize,
        oversize: Oversize,
        memory: Arc<Area>,
        stride: usize,
    ) -> Self {
        let free = ArrayQueue::new(capacity);
        for slot in 0..capacity {
            // Safety: slot * stride + stride <= memory.len(), as sized above.
            let ptr = unsafe { memory.base().add(slot * stride) };
            let _ = free.push(Packet {
                slot: slot as u32,
                ptr: NonNull::new(ptr).expect("a mapping is never at NULL"),
                head: 0,
                len: 0,
                orig_len: 0,
                hash: 0,
                tstamp_ns: 0,
                vni: 0,
                source: 0,
                egress: false,
                truncated: false,
            });
        }
        TargetQueue {
            name: name.to_string(),
            kind,
            free,
            ready: ArrayQueue::new(capacity),
            memory,
            stride,
            counters: TargetCounters::default(),
            in_flight: AtomicU64::new(0),
            up: AtomicBool::new(true),
            held: AtomicBool::new(false),
            max_len: AtomicUsize::new(max_len),
            slot_len: max_len,
            oversize,
            sender: OnceLock::new(),
            wake_at: AtomicUsize::new(0),
            kernel_send_errors: OnceLock::new(),
        }
    }

    /// The memory the slots live in (for an interface target: its UMEM).
    pub fn memory(&self) -> &Arc<Area> {
        &self.memory
    }

    /// Where packet `p`'s data sits in [`TargetQueue::memory`].
    pub fn offset(&self, p: &Packet) -> u64 {
        (p.slot() * self.stride) as u64 + u64::from(p.head)
    }

    /// Whether a frame of `loan` can go to this queue without a copy: the
    /// queue's slots live in the same UMEM, and nobody took the frame yet.
    pub(crate) fn can_borrow(&self, loan: &Loan<'_>) -> bool {
        !loan.taken() && Arc::ptr_eq(&self.memory, loan.area())
    }

    /// Takes the RX frame behind `loan` (whose data is `frame.data`) as the
    /// copy, giving the RX queue a free slot of this queue in exchange.
    /// Counted as [`TargetQueue::offer`] counts; only when
    /// [`TargetQueue::can_borrow`] said yes.
    pub(crate) fn borrow(&self, frame: &Frame<'_>, loan: &mut Loan<'_>) {
        let Some((mut p, len)) = self.admit(frame.data.len()) else {
            return;
        };
        loan.swap(self.offset(&p));
        let chunk = loan.chunk() as usize;
        let head = frame.data.as_ptr() as usize - (self.memory.base() as usize + chunk);
        debug_assert!(head + len <= self.stride);
        p.slot = (chunk / self.stride) as u32;
        p.ptr = NonNull::from(frame.data).cast();
        p.head = head as u32;
        p.len = len;
        self.stamp(&mut p, frame, len < frame.data.len());
        self.counters.shared.fetch_add(1, Ordering::Relaxed);
        self.make_ready(p);
    }

    /// Counts an offered copy of `len` bytes and takes a free slot for it,
    /// with the bytes it keeps (cut to the queue's largest when it
    /// truncates); `None` when the copy is dropped instead (counted).
    fn admit(&self, len: usize) -> Option<(Packet, usize)> {
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        if !self.up.load(Ordering::Relaxed) {
            self.counters.drop(TargetDrop::Down, 1);
            return None;
        }
        let mut keep = len;
        let max_len = self.max_len();
        if len > max_len {
            if self.oversize == Oversize::Drop {
                self.counters.drop(TargetDrop::TooBig, 1);
                return None;
            }
            keep = max_len;
        }
        let Some(p) = self.free.pop() else {
            self.counters.drop(TargetDrop::QueueFull, 1);
            return None;
        };
        Some((p, keep))
    }

    fn stamp(&self, p: &mut Packet, frame: &Frame<'_>, truncated: bool) {
        p.orig_len = frame.orig_len;
        p.hash = frame.hash;
        p.tstamp_ns = frame.tstamp_ns;
        p.vni = frame.vni;
        p.source = frame.source;
        p.egress = frame.egress;
        p.truncated = truncated;
        if truncated {
            self.counters.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn make_ready(&self, p: Packet) {
        if let Err(p) = self.ready.push(p) {
            // Cannot happen: both queues share one capacity and one set of
            // buffers. Count it rather than lose the buffer silently.
            self.recycle(p);
            self.counters.drop(TargetDrop::QueueFull, 1);
        }
    }

    /// Offers a copy of `frame`; never blocks. Counted as enqueued, and either
    /// queued or dropped with a reason.
    pub fn offer(&self, frame: &Frame<'_>) {
        let Some((mut p, len)) = self.admit(frame.data.len()) else {
            return;
        };
        p.fill(&frame.data[..len]);
        self.stamp(&mut p, frame, len < frame.data.len());
        self.make_ready(p);
    }

    /// Counts a copy the session dropped before it reached the queue
    /// (`rate_limited`): offered, and dropped with that reason.
    pub fn reject(&self, why: TargetDrop) {
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        self.counters.drop(why, 1);
    }

    /// Wakes the sender thread after a batch of offers: always, or once at
    /// least [`TargetQueue::wake_at`] copies wait when that was set.
    pub(crate) fn notify(&self) {
        if let Some(t) = self.sender.get() {
            if self.ready.len() >= self.wake_at.load(Ordering::Relaxed) {
                t.unpark();
            }
        }
    }

    /// Wakes the sender thread whatever waits: to stop it, or to have it
    /// look at something other than the queue.
    pub(crate) fn wake(&self) {
        if let Some(t) = self.sender.get() {
            t.unpark();
        }
    }

    /// [`TargetQueue::notify`] wakes the sender only once `n` copies wait
    /// (at least 1; unset, it always does). For a sender that gathers
    /// copies anyway and wakes on a timer of its own too (the pcapng
    /// writer: its 10 ms), so that it runs once per many batches instead of
    /// once per batch: on the worker's core each wake-up is two context
    /// switches, which at 60 B cost more than the copies' own writing.
    pub(crate) fn wake_at(&self, n: usize) {
        self.wake_at.store(n.max(1), Ordering::Relaxed);
    }

    /// Called once by the sender thread.
    pub(crate) fn register_sender(&self) {
        let _ = self.sender.set(std::thread::current());
    }

    pub(crate) fn pop_ready(&self) -> Option<Packet> {
        self.ready.pop()
    }

    /// Returns a packet's slot to the free list (for a lent frame: the RX
    /// frame, which took the place of the slot given in exchange).
    pub(crate) fn recycle(&self, mut p: Packet) {
        // Safety: slot * stride lies in the memory (every slot index came
        // from it, directly or through a loan of the same area).
        let start = unsafe { self.memory.base().add(p.slot() * self.stride) };
        p.ptr = NonNull::new(start).expect("a mapping is never at NULL");
        p.head = 0;
        let _ = self.free.push(p);
    }

    pub fn queued(&self) -> usize {
        self.ready.len()
    }

    /// The largest copy the target takes now.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len.load(Ordering::Relaxed)
    }

    /// A new bound for copies (an interface target's MTU changed), at most
    /// the slots' size: longer copies offered from now on are dropped
    /// (`too_big`) or cut, as the queue does.
    pub(crate) fn set_max_len(&self, max_len: usize) {
        self.max_len
            .store(max_len.min(self.slot_len), Ordering::Relaxed);
    }

    /// Copies the queue holds at most (its slots).
    pub(crate) fn capacity(&self) -> usize {
        self.free.capacity()
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// See `held`: the copies it takes meanwhile are counted where they
    /// end (a pcapng target: `disk_full`).
    pub(crate) fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    /// Called once by the sender: where to read kernel-side send errors.
    pub(crate) fn set_kernel_send_errors(&self, f: Box<dyn Fn() -> u64 + Send + Sync>) {
        let _ = self.kernel_send_errors.set(f);
    }

    pub fn snapshot(&self) -> TargetStats {
        let c = &self.counters;
        let kernel_errors = self.kernel_send_errors.get().map_or(0, |f| f());
        let dropped = TargetDrop::ALL
            .iter()
            .map(|&d| {
                let extra = if d == TargetDrop::SendError {
                    kernel_errors
                } else {
                    0
                };
                (d.as_str().to_string(), c.dropped(d) + extra)
            })
            .collect();
        TargetStats {
            kind: self.kind.to_string(),
            up: self.is_up() && !self.held.load(Ordering::Relaxed),
            enqueued: c.enqueued.load(Ordering::Relaxed),
            sent_packets: c.sent_packets.load(Ordering::Relaxed),
            sent_bytes: c.sent_bytes.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
            shared_umem: c.shared.load(Ordering::Relaxed),
            kernel_path: 0,
            deleted_files: c.deleted_files.load(Ordering::Relaxed),
            deleted_bytes: c.deleted_bytes.load(Ordering::Relaxed),
            dropped,
            queued: self.queued() as u64 + self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// `mirror stats` view of a target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetStats {
    pub kind: String,
    pub up: bool,
    /// Copies offered to the target: `sent_packets + dropped + queued`.
    pub enqueued: u64,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    /// Copies cut to fit the target's MTU or buffers (delivered, not dropped).
    #[serde(default)]
    pub truncated: u64,
    /// Copies taken straight from the source's RX frame (an interface or
    /// pcapng target sharing its memory with a tap source's RX queue): no
    /// copy was made; then sent or written, or dropped like any copy.
    #[serde(default)]
    pub shared_umem: u64,
    /// Copies the in-kernel fast path sent (included in `sent_packets`).
    #[serde(default)]
    pub kernel_path: u64,
    /// pcapng: capture files deleted to hold `keep` and `max_total_size`
    /// (the oldest first), and their bytes: what aged out of the record.
    #[serde(default)]
    pub deleted_files: u64,
    #[serde(default)]
    pub deleted_bytes: u64,
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Copies waiting in the target's queue or TX ring right now (0 when idle).
    pub queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(data: &[u8]) -> Frame<'_> {
        Frame {
            data,
            orig_len: data.len() as u32,
            hash: 7,
            tstamp_ns: 1,
            vni: 0,
            source: 0,
            egress: false,
        }
    }

    #[test]
    fn offers_copy_once_into_slots_and_a_full_queue_counts_each_drop() {
        let q = TargetQueue::umem("t", "interface", 3, 0, 1518, Oversize::Drop).expect("memory");
        assert_eq!(q.memory().len(), 3 * FRAME_SIZE as usize);
        for i in 0..5u8 {
            q.offer(&frame(&[i; 60]));
        }
        q.offer(&frame(&[9; 1519]));
        let c = &q.counters;
        assert_eq!(c.enqueued.load(Ordering::Relaxed), 6);
        assert_eq!(c.dropped(TargetDrop::QueueFull), 2);
        assert_eq!(c.dropped(TargetDrop::TooBig), 1);
        let mut slots = Vec::new();
        for i in 0..3u8 {
            let p = q.pop_ready().expect("queued");
            assert_eq!(p.data(), &[i; 60][..]);
            // The bytes are where a UMEM descriptor for the slot points.
            let at = q.offset(&p) as usize;
            assert_eq!(at % FRAME_SIZE as usize, 0);
            // Safety: the slot is ours (we hold the packet) and 60 bytes long.
            let umem = unsafe { std::slice::from_raw_parts(q.memory().base().add(at), 60) };
            assert_eq!(umem, p.data());
            slots.push(p.slot());
            q.recycle(p);
        }
        slots.sort_unstable();
        assert_eq!(slots, vec![0, 1, 2]);
        // Recycled slots take copies again.
        q.offer(&frame(&[5; 1518]));
        assert_eq!(q.pop_ready().expect("queued").data().len(), 1518);
    }

    /// `notify` wakes the sender once `wake_at` copies wait, not before:
    /// an unpark leaves a token the sender's next park takes at once.
    #[test]
    fn notify_wakes_the_sender_only_once_wake_at_copies_wait() {
        let q = TargetQueue::new("t", "pcapng", 8, 64, Oversize::Truncate).expect("memory");
        q.register_sender();
        q.wake_at(4);
        // The token an earlier unpark of this test thread may have left.
        std::thread::park_timeout(Duration::ZERO);
        let parked = || {
            let t0 = std::time::Instant::now();
            std::thread::park_timeout(Duration::from_millis(300));
            t0.elapsed()
        };
        for i in 0..3u8 {
            q.offer(&frame(&[i; 60]));
            q.notify();
        }
        assert!(
            parked() >= Duration::from_millis(250),
            "3 waiting: not woken"
        );
        q.offer(&frame(&[3; 60]));
        q.notify();
        assert!(parked() < Duration::from_millis(250), "4 waiting: woken");
        // wake() wakes it whatever waits (a stop).
        while q.pop_ready().is_some() {}
        q.notify();
        assert!(
            parked() >= Duration::from_millis(250),
            "none waiting: not woken"
        );
        q.wake();
        assert!(parked() < Duration::from_millis(250), "wake(): woken");
        // Unset, notify() wakes it every time, none waiting too.
        let other = TargetQueue::new("u", "tunnel", 8, 64, Oversize::Truncate).expect("memory");
        other.register_sender();
        other.notify();
        assert!(parked() < Duration::from_millis(250), "unset: woken");
    }

    #[test]
    fn a_lent_rx_frame_is_sent_in_place_and_swapped_for_a_free_slot() {
        let f = FRAME_SIZE as usize;
        // Two target slots (frames 0, 1) and four RX frames (2..6).
        let q = TargetQueue::umem("t", "interface", 2, 4, 1518, Oversize::Drop).expect("memory");
        let area = q.memory().clone();
        let rx_frame = |chunk: usize, byte: u8| -> &[u8] {
            // Safety: the test owns these RX frames; the data sits 256 bytes in.
            unsafe {
                let p = area.base().add(chunk * f + 256);
                std::ptr::write_bytes(p, byte, 60);
                std::slice::from_raw_parts(p, 60)
            }
        };

        let data = rx_frame(3, 0xab);
        let mut loan = Loan::new(&area, 3 * f as u64);
        assert!(q.can_borrow(&loan));
        q.borrow(&frame(data), &mut loan);
        let given = loan.swapped().expect("lent") as usize;
        assert!(
            given == 0 || given == f,
            "a target slot in exchange: {given}"
        );
        assert!(!q.can_borrow(&loan), "a frame is lent once");
        let p = q.pop_ready().expect("queued");
        assert_eq!(q.offset(&p), (3 * f + 256) as u64, "sent from the RX frame");
        assert_eq!(p.data(), &[0xab; 60][..]);
        assert_eq!(q.counters.shared.load(Ordering::Relaxed), 1);
        // Sent: the RX frame is now one of the target's slots.
        q.recycle(p);
        // Two copies take both free slots (held, as a sender holds them).
        let mut held = Vec::new();
        for i in 0..2u8 {
            q.offer(&frame(&[i; 60]));
            let p = q.pop_ready().expect("queued");
            assert_eq!(q.offset(&p) as usize % f, 0, "copies start at the slot");
            held.push(p);
        }
        let mut slots: Vec<usize> = held.iter().map(Packet::slot).collect();
        slots.sort_unstable();
        // The slot not given away, and the RX frame that took the other's place.
        let kept = 1 - given / f;
        assert_eq!(slots, vec![kept, 3]);

        // No free slot: the frame is not taken and returns to the RX queue.
        let data = rx_frame(4, 1);
        let mut loan = Loan::new(&area, 4 * f as u64);
        q.borrow(&frame(data), &mut loan);
        assert_eq!(loan.swapped(), None);
        assert_eq!(q.counters.dropped(TargetDrop::QueueFull), 1);
        assert_eq!(q.counters.enqueued.load(Ordering::Relaxed), 4);

        // Another UMEM's frames are never borrowed.
        let other = Arc::new(Area::new(f, false).expect("memory"));
        assert!(!q.can_borrow(&Loan::new(&other, 0)));
    }

    #[test]
    fn tunnel_and_file_queues_truncate_to_their_buffers() {
        let q = TargetQueue::new("t", "vxlan", 2, 100, Oversize::Truncate).expect("memory");
        let big: Vec<u8> = (0..=255).collect();
        q.offer(&frame(&big));
        let p = q.pop_ready().expect("queued");
        assert!(p.truncated);
        assert_eq!(p.data(), &big[..100]);
        assert_eq!(p.orig_len, 256);
        assert_eq!(q.counters.truncated.load(Ordering::Relaxed), 1);
    }
}
