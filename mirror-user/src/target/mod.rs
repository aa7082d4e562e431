//! Targets: where mirrored frames go.
//!
//! Every target has its own bounded queue ([`TargetQueue`]) and its own sender
//! thread. Workers offer copies to the queue and never wait: a full queue drops
//! the copy and counts `queue_full`, so a slow or dead target loses only its
//! own copies and never stalls a source or another target.

pub mod encap;
pub mod group;
pub mod interface;
pub mod pcapng;
pub mod tunnel;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

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

    pub fn as_str(self) -> &'static str {
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

/// A copy waiting in a target queue.
pub struct Packet {
    len: usize,
    pub orig_len: u32,
    pub hash: u32,
    pub tstamp_ns: u64,
    pub vni: u32,
    pub source: u16,
    pub egress: bool,
    /// The queue cut it to fit the target (`truncated`).
    pub truncated: bool,
    buf: Box<[u8]>,
}

impl Packet {
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
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
/// Two lock-free queues of preallocated buffers: `free` and `ready`. Offering
/// takes a free buffer (none = `queue_full`), copies, and pushes it ready; the
/// sender returns it to `free` once the frame is in its own UMEM.
pub struct TargetQueue {
    pub name: String,
    pub kind: &'static str,
    free: ArrayQueue<Packet>,
    ready: ArrayQueue<Packet>,
    pub counters: TargetCounters,
    /// Copies the sender holds (taken from the queue, not yet completed).
    pub in_flight: AtomicU64,
    up: AtomicBool,
    /// Largest frame the target carries.
    max_len: usize,
    oversize: Oversize,
    sender: OnceLock<Thread>,
    /// Extra drop reasons read from the kernel at snapshot time (send_error).
    kernel_send_errors: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl TargetQueue {
    pub fn new(
        name: &str,
        kind: &'static str,
        capacity: usize,
        max_len: usize,
        oversize: Oversize,
    ) -> Self {
        let free = ArrayQueue::new(capacity);
        for _ in 0..capacity {
            let _ = free.push(Packet {
                len: 0,
                orig_len: 0,
                hash: 0,
                tstamp_ns: 0,
                vni: 0,
                source: 0,
                egress: false,
                truncated: false,
                buf: vec![0u8; max_len].into_boxed_slice(),
            });
        }
        TargetQueue {
            name: name.to_string(),
            kind,
            free,
            ready: ArrayQueue::new(capacity),
            counters: TargetCounters::default(),
            in_flight: AtomicU64::new(0),
            up: AtomicBool::new(true),
            max_len,
            oversize,
            sender: OnceLock::new(),
            kernel_send_errors: OnceLock::new(),
        }
    }

    /// Offers a copy of `frame`; never blocks. Counted as enqueued, and either
    /// queued or dropped with a reason.
    pub fn offer(&self, frame: &Frame<'_>) {
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        if !self.up.load(Ordering::Relaxed) {
            self.counters.drop(TargetDrop::Down, 1);
            return;
        }
        let mut len = frame.data.len();
        if len > self.max_len {
            if self.oversize == Oversize::Drop {
                self.counters.drop(TargetDrop::TooBig, 1);
                return;
            }
            len = self.max_len;
        }
        let Some(mut p) = self.free.pop() else {
            self.counters.drop(TargetDrop::QueueFull, 1);
            return;
        };
        p.buf[..len].copy_from_slice(&frame.data[..len]);
        p.len = len;
        p.orig_len = frame.orig_len;
        p.hash = frame.hash;
        p.tstamp_ns = frame.tstamp_ns;
        p.vni = frame.vni;
        p.source = frame.source;
        p.egress = frame.egress;
        p.truncated = len < frame.data.len();
        if p.truncated {
            self.counters.truncated.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(p) = self.ready.push(p) {
            // Cannot happen: both queues share one capacity and one set of
            // buffers. Count it rather than lose the buffer silently.
            let _ = self.free.push(p);
            self.counters.drop(TargetDrop::QueueFull, 1);
        }
    }

    /// Counts a copy the session dropped before it reached the queue
    /// (`rate_limited`): offered, and dropped with that reason.
    pub fn reject(&self, why: TargetDrop) {
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        self.counters.drop(why, 1);
    }

    /// Wakes the sender thread after a batch of offers.
    pub fn notify(&self) {
        if let Some(t) = self.sender.get() {
            t.unpark();
        }
    }

    /// Called once by the sender thread.
    pub fn register_sender(&self) {
        let _ = self.sender.set(std::thread::current());
    }

    pub fn pop_ready(&self) -> Option<Packet> {
        self.ready.pop()
    }

    pub fn recycle(&self, p: Packet) {
        let _ = self.free.push(p);
    }

    pub fn queued(&self) -> usize {
        self.ready.len()
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Called once by the sender: where to read kernel-side send errors.
    pub fn set_kernel_send_errors(&self, f: Box<dyn Fn() -> u64 + Send + Sync>) {
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
            up: self.is_up(),
            enqueued: c.enqueued.load(Ordering::Relaxed),
            sent_packets: c.sent_packets.load(Ordering::Relaxed),
            sent_bytes: c.sent_bytes.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
            dropped,
            queued: self.queued() as u64 + self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// `mirror stats` view of a target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Copies waiting in the target's queue or TX ring right now (0 when idle).
    pub queued: u64,
}
