//! The data-plane threads that read what the kernel hands over: one
//! [`worker`] per tap-mode RX queue, one [`copy_reader`] per copy-mode ring
//! buffer. Each hands every frame to its session's plan and wakes the
//! touched targets once per batch.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libbpf_rs::{MapHandle, RingBufferBuilder};

use super::clock::{realtime_ns, tai_offset_ns, tai_to_unix};
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
                    tai_to_unix(m.tstamp, tai_offset),
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

/// Copy mode: the session of a ring-buffer record and the frame it hands on
/// (Unix time stamp, direction, original length); `None` when the record
/// names a session the source does not have (counted `no_metadata`).
pub(super) fn record_frame<'a>(
    rec: &Record<&'a [u8]>,
    sessions: usize,
    tai_offset: u64,
    source: u16,
) -> Option<(usize, Frame<'a>)> {
    let session = rec.session as usize;
    (session < sessions).then_some((
        session,
        Frame {
            data: rec.data,
            orig_len: rec.orig_len,
            hash: rec.hash,
            tstamp_ns: tai_to_unix(rec.tstamp_tai, tai_offset),
            vni: 0,
            source,
            egress: rec.egress,
        },
    ))
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
        let Some((session, frame)) =
            Record::parse(bytes).and_then(|r| record_frame(&r, plans.len(), tai_offset, src.index))
        else {
            src.no_metadata.fetch_add(1, Ordering::Relaxed);
            return 0;
        };
        plans[session].dispatch(frame, None);
        let mut t = touched.borrow_mut();
        t.mark(session);
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1_735_689_600 * S;

    #[test]
    fn a_copy_record_goes_to_its_session_with_unix_time_and_its_direction() {
        let rec = Record {
            session: 1,
            egress: true,
            cut: false,
            gso: false,
            ifindex: 3,
            orig_len: 1500,
            hash: 7,
            tstamp_tai: NOW + 37 * S,
            data: &[1u8, 2, 3][..],
        };
        let (session, f) = record_frame(&rec, 2, 37 * S, 4).expect("placed");
        assert_eq!(session, 1);
        assert_eq!(
            (f.data, f.orig_len, f.hash, f.tstamp_ns, f.source, f.egress),
            (&[1u8, 2, 3][..], 1500, 7, NOW, 4, true)
        );
        assert!(record_frame(&rec, 1, 37 * S, 4).is_none(), "no session 1");
    }
}
