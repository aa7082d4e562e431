//! The data-plane threads that read what the kernel hands over: one
//! [`worker`] per tap-mode RX queue, one [`copy_reader`] per copy-mode ring
//! buffer. Each hands every frame to its session's plan and wakes the
//! touched targets once per batch.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libbpf_rs::{MapHandle, RingBufferBuilder};

use super::clock::{realtime_ns, tai_offset_ns};
use super::session::SessionPlan;
use super::source::Source;
use crate::kernel::copy_ring::Record;
use crate::kernel::read_meta;
use crate::kernel::xsk::RxQueue;
use crate::target::Frame;

/// Frames read from an RX ring per round.
pub(super) const RX_BATCH: u32 = 64;
/// How long an idle worker sleeps in poll() before checking for shutdown.
pub(super) const IDLE_POLL_MS: i32 = 100;
/// Copy mode: records handled between two wake-ups of the targets.
pub(super) const COPY_BATCH: u32 = 64;
/// Copy mode: the reader is woken once this much of the ring is filled
/// (at most a quarter of it), and otherwise reads every [`COPY_POLL`].
pub(super) const COPY_WAKE_BYTES: u64 = 256 << 10;
pub(super) const COPY_POLL: Duration = Duration::from_millis(1);

/// The sessions that got frames since their targets were last woken: a
/// reader offers a batch, then wakes each touched session's targets once.
pub(super) struct Touched {
    hit: Vec<bool>,
    /// Frames marked since the last wake-up.
    pending: u32,
}

impl Touched {
    fn new(sessions: usize) -> Touched {
        Touched {
            hit: vec![false; sessions],
            pending: 0,
        }
    }

    fn mark(&mut self, session: usize) {
        self.hit[session] = true;
        self.pending += 1;
    }

    fn wake(&mut self, plans: &[SessionPlan]) {
        for (s, hit) in self.hit.iter_mut().enumerate() {
            if std::mem::take(hit) {
                plans[s].queues.iter().for_each(|t| t.notify());
            }
        }
        self.pending = 0;
    }
}

pub(super) fn worker(mut q: RxQueue, src: &Source, stop: &AtomicBool) {
    let plans = &src.plans;
    let single = plans.len() == 1;
    let mut touched = Touched::new(plans.len());
    let tai_offset = tai_offset_ns();
    while !stop.load(Ordering::Relaxed) {
        let n = q.receive(RX_BATCH, |meta, data, loan| {
            let (session, hash, tstamp_ns) = match read_meta(meta) {
                Some(m) if (m.session as usize) < plans.len() => (
                    m.session as usize,
                    m.hash,
                    m.tstamp.wrapping_sub(tai_offset),
                ),
                _ if single => (0, 0, realtime_ns()),
                _ => {
                    src.no_metadata.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            plans[session].dispatch(
                Frame {
                    data,
                    orig_len: data.len() as u32,
                    hash,
                    tstamp_ns,
                    vni: 0,
                    source: src.index,
                    egress: false,
                },
                Some(loan),
            );
            touched.mark(session);
        });
        if n == 0 {
            q.wait(IDLE_POLL_MS);
            continue;
        }
        touched.wake(plans);
    }
}

/// Copy mode: reads the source's ring buffer and feeds every record to its
/// session, waking the targets every [`COPY_BATCH`] records and whenever the
/// ring is empty. The kernel wakes it only when the ring fills past
/// [`COPY_WAKE_BYTES`]; otherwise it reads every [`COPY_POLL`] (batches of
/// records per wake-up instead of one wake-up per record).
pub(super) fn copy_reader(ring: &MapHandle, src: &Source, stop: &AtomicBool) {
    let plans = &src.plans;
    let touched = RefCell::new(Touched::new(plans.len()));
    let tai_offset = tai_offset_ns();
    let on_record = |bytes: &[u8]| -> i32 {
        let rec = match Record::parse(bytes) {
            Some(r) if (r.session as usize) < plans.len() => r,
            _ => {
                src.no_metadata.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
        };
        plans[rec.session as usize].dispatch(
            Frame {
                data: rec.data,
                orig_len: rec.orig_len,
                hash: rec.hash,
                tstamp_ns: rec.tstamp_tai.wrapping_sub(tai_offset),
                vni: 0,
                source: src.index,
                egress: rec.egress,
            },
            None,
        );
        let mut t = touched.borrow_mut();
        t.mark(rec.session as usize);
        if t.pending >= COPY_BATCH {
            t.wake(plans);
        }
        0
    };
    let mut builder = RingBufferBuilder::new();
    let built = match builder.add(ring, on_record) {
        Ok(_) => builder.build(),
        Err(e) => Err(e),
    };
    let ring = match built {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(source = %src.name, error = %e, "cannot read the ring buffer; copies are lost (counted as ring_full by the kernel once it fills)");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        // Woken early when the ring fills past the threshold; then read
        // whatever is there, woken or not.
        let polled = ring.poll(COPY_POLL).and_then(|()| ring.consume());
        if let Err(e) = polled {
            if e.kind() != libbpf_rs::ErrorKind::Interrupted {
                tracing::warn!(source = %src.name, error = %e, "reading the ring buffer");
                std::thread::sleep(Duration::from_millis(IDLE_POLL_MS as u64));
            }
        }
        touched.borrow_mut().wake(plans);
    }
    // The programs are detached: hand on what is still in the ring.
    let _ = ring.consume();
    touched.borrow_mut().wake(plans);
}
