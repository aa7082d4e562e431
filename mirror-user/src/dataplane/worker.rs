//! The data-plane threads that read what the kernel hands over: one
//! [`worker`] per tap-mode RX queue, one [`copy_reader`] per copy-mode ring
//! buffer. Each hands every frame to its session's plan and wakes the
//! touched targets once per batch.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libbpf_rs::{MapHandle, RingBufferBuilder};

use super::clock::{realtime_ns, tai_offset_ns, tai_to_unix};
use super::session::SessionPlan;
use super::source::Source;
use crate::kernel::copy_ring::Record;
use crate::kernel::xsk::RxQueue;
use crate::kernel::{read_meta, Meta};
use crate::target::Frame;

/// Frames read from an RX ring per round.
pub(super) const RX_BATCH: u32 = 64;
/// How long an idle worker sleeps in poll() before checking for shutdown.
pub(super) const IDLE_POLL_MS: i32 = 100;
/// Copy mode: records handled between two wake-ups of the targets.
pub(super) const COPY_BATCH: u32 = 64;
/// Copy mode: the reader is woken each time another multiple of this much
/// of the ring is filled (at most a quarter of it), and otherwise reads
/// every [`COPY_POLL`]. A
/// wake-up is a self-IPI on the producing CPU (the kernel's irq_work),
/// costly in a VM: the millisecond poll does the reading; this only
/// guards the ring against a burst. At 256 KiB, 1,500-byte copies at 500
/// kpps (750 KB a millisecond) crossed it within every poll; the default
/// 16 MiB ring is woken at 4 MiB, which only 4 GB/s reaches in one.
pub(super) const COPY_WAKE_BYTES: u64 = 4 << 20;
pub(super) const COPY_POLL: Duration = Duration::from_millis(1);

/// Tap mode: the longest a worker naps once its RX ring is empty (see
/// [`RxPace`]; the sleep's timer slack, 50 us by default, comes on top):
/// a burst from quiet must bring more than a ring in this time (4 Mpps
/// into the default 2,048 entries) to overflow it during a nap, more than
/// a worker reads per queue anyway.
pub(super) const NAP_MAX: Duration = Duration::from_micros(500);
/// Tap mode: a nap shorter than this is not taken: the worker waits for the
/// kernel's wake-up instead.
pub(super) const NAP_MIN: Duration = Duration::from_micros(50);

/// The time slice a reader thread asks the scheduler for: the least
/// Linux's EEVDF takes (`sched_attr.sched_runtime`, 6.12 and later).
pub(super) const READER_SLICE: Duration = Duration::from_micros(100);

/// Asks the scheduler for a [`READER_SLICE`] time slice for the calling
/// thread, its policy and nice value unchanged. A thread that reads a ring
/// the kernel fills must run soon after it wakes: with the default slice
/// (1.4 ms on 2 cores) a woken worker waited up to 5 ms behind another
/// thread of its core (`perf sched`), its target's writer say, while the
/// kernel dropped what its ring could not hold (`source ring_full`). EEVDF
/// gives a task with a shorter slice an earlier deadline, so it preempts
/// sooner; its share of the CPU is unchanged. Returns whether the call was
/// made and succeeded: a kernel before 6.12 takes it and ignores the slice;
/// a real-time or `SCHED_IDLE` thread is left alone.
pub(super) fn ask_short_slice() -> bool {
    // Safety: sched_getscheduler takes a pid (0: the calling thread).
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        return false;
    }
    let Some(nice) = own_nice() else {
        return false;
    };
    // Safety: an all-zero sched_attr is valid; the fields are set below.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_policy = policy as u32;
    attr.sched_nice = nice;
    attr.sched_runtime = READER_SLICE.as_nanos() as u64;
    // Safety: sched_setattr(pid 0: the calling thread, a valid attr of
    // `attr.size` bytes, flags 0) reads attr only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "asking for a short time slice");
        return false;
    }
    true
}

/// The calling thread's nice value.
pub(super) fn own_nice() -> Option<i32> {
    // getpriority returns -1 both for nice -1 and for an error: errno tells.
    // Safety: writes the calling thread's errno.
    unsafe { *libc::__errno_location() = 0 };
    // Safety: getpriority reads its integer arguments only (PRIO_PROCESS
    // with 0: the calling thread on Linux).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    (nice != -1 || errno == Some(0)).then_some(nice)
}

/// How a tap-mode worker waits once its RX ring is empty.
///
/// Waiting in `poll()` wakes the worker at the kernel's next flush of the
/// ring (a NAPI poll, a few dozen frames at most), and it wakes its targets'
/// threads in turn: at a million frames a second that is tens of thousands
/// of wake-ups a second each, more CPU per frame than the frames' own work
/// (`tcpdump` wakes once per filled block of its packet ring). So once the
/// rate seen since the last empty ring says frames keep coming, the worker
/// naps instead, for as long as a quarter of its RX ring takes to fill at
/// that rate (at most [`NAP_MAX`]), and reads them in one go: NIC
/// interrupt coalescing, done where the frames are read. Quiet traffic (too
/// few frames for a worthwhile nap) is waited for in `poll()` as before, so
/// an idle source costs nothing and a lone frame is not held back. Time
/// stamps are the kernel's (XDP metadata), so a nap moves no copy in time;
/// it only delays it, by [`NAP_MAX`] and the timer's slack at most.
pub(super) struct RxPace {
    /// A quarter of the RX ring: what a nap lets the kernel put there.
    quarter: u32,
    /// When the ring was last found empty, and frames read since.
    since: Instant,
    frames: u64,
}

impl RxPace {
    pub(super) fn new(ring_size: u32, now: Instant) -> RxPace {
        RxPace {
            quarter: ring_size / 4,
            since: now,
            frames: 0,
        }
    }

    /// `n` frames were read.
    pub(super) fn got(&mut self, n: u32) {
        self.frames += u64::from(n);
    }

    /// The ring is empty at `now`: how long to nap before reading it again,
    /// or `None` to wait for the kernel's wake-up.
    pub(super) fn idle(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.since);
        let frames = std::mem::take(&mut self.frames);
        self.since = now;
        if frames == 0 || self.quarter == 0 {
            return None;
        }
        // The time a quarter of the ring takes to fill at the rate seen.
        let fill = elapsed.mul_f64(f64::from(self.quarter) / frames as f64);
        let nap = fill.min(NAP_MAX);
        // Worth it only when the nap gathers at least a batch of frames.
        let gathered = frames as f64 * nap.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
        (nap >= NAP_MIN && gathered >= f64::from(RX_BATCH)).then_some(nap)
    }
}

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

/// Where a tap-mode frame goes: (session, flow hash, Unix time stamp), read
/// from the metadata `xdp_tap` wrote in front of it, or `None` when the
/// frame cannot be placed (counted `no_metadata`).
///
/// A frame without metadata is not always a bug: `bpf_xdp_adjust_meta`
/// fails on NIC drivers whose native XDP has no metadata area (sfc, TI
/// cpsw, MediaTek's mtk_eth_soc, ... call `xdp_prepare_buff(..., false)`);
/// the program then redirects the frame without it. A source with one
/// session still knows its session, so such frames are mirrored, with flow
/// hash 0 (groups send them all to one member, VXLAN uses one source port)
/// and the time `now` gives (when userspace reads them). With several
/// sessions the session is unknown and the frame is counted. Metadata that
/// names a session the source does not have can only come from a bug, and
/// is counted whatever the number of sessions.
pub(super) fn place_frame(
    meta: Option<Meta>,
    sessions: usize,
    tai_offset: u64,
    now: impl FnOnce() -> u64,
) -> Option<(usize, u32, u64)> {
    match meta {
        Some(m) if (m.session as usize) < sessions => Some((
            m.session as usize,
            m.hash,
            tai_to_unix(m.tstamp, tai_offset),
        )),
        Some(_) => None,
        None if sessions == 1 => Some((0, 0, now())),
        None => None,
    }
}

pub(super) fn worker(mut q: RxQueue, src: &Source, stop: &AtomicBool) {
    let plans = &src.plans;
    let mut touched = Touched::new(plans.len());
    let tai_offset = tai_offset_ns();
    let mut said_no_metadata = false;
    // Once stopped (the program is detached first), what is left in the RX
    // ring is still handed on: at most this many more batches.
    let mut drain = DRAIN_BATCHES;
    let mut pace = RxPace::new(q.ring_size(), Instant::now());
    ask_short_slice();
    loop {
        if stop.load(Ordering::Relaxed) {
            if drain == 0 {
                break;
            }
            drain -= 1;
        }
        let n = q.receive(RX_BATCH, |meta, data, loan| {
            let meta = read_meta(meta);
            let slot = meta.map(|m| m.slot);
            // A frame its flow's cutoff cut in the kernel keeps its length
            // before the cut, as a copy `packet_length` cuts here does.
            let orig_len = meta.map_or(0, |m| m.orig_len).max(data.len() as u32);
            if meta.is_none() && plans.len() == 1 && !std::mem::replace(&mut said_no_metadata, true)
            {
                tracing::warn!(
                    source = %src.name,
                    "frames arrive without XDP metadata (this driver's native XDP has none): \
                     mirrored to the source's one session with flow hash 0 and time-stamped \
                     when read; xdp_mode = \"generic\" has metadata"
                );
            }
            let Some((session, hash, tstamp_ns)) =
                place_frame(meta, plans.len(), tai_offset, realtime_ns)
            else {
                src.no_metadata.fetch_add(1, Ordering::Relaxed);
                return;
            };
            plans[session].dispatch(
                Frame {
                    data,
                    orig_len,
                    hash,
                    tstamp_ns,
                    vni: 0,
                    source: src.index,
                    egress: false,
                },
                Some(loan),
                slot,
            );
            touched.mark(session);
        });
        if n == 0 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match pace.idle(Instant::now()) {
                Some(nap) => std::thread::sleep(nap),
                None => q.wait(IDLE_POLL_MS),
            }
            continue;
        }
        pace.got(n);
        touched.wake(plans);
    }
}

/// Batches a stopping worker still reads from its RX ring (more than a ring
/// holds: [`RX_BATCH`] times this).
const DRAIN_BATCHES: u32 = 1024;

/// `data` with the VLAN tag `tag` (TPID, TCI; fewer bytes of it for a copy
/// cut inside the tag) put back after its MAC addresses, into `out`: the
/// frame as it was on the wire. A copy cut shorter than the addresses gets
/// the tag after what it has.
pub(super) fn retag(out: &mut Vec<u8>, data: &[u8], tag: &[u8]) {
    let at = data.len().min(12);
    out.clear();
    out.extend_from_slice(&data[..at]);
    out.extend_from_slice(tag);
    out.extend_from_slice(&data[at..]);
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
/// ring is empty. The kernel wakes it only when the ring fills past each
/// multiple of [`COPY_WAKE_BYTES`]; otherwise it reads every [`COPY_POLL`] (batches of
/// records per wake-up instead of one wake-up per record).
pub(super) fn copy_reader(ring: &MapHandle, src: &Source, stop: &AtomicBool) {
    ask_short_slice();
    let plans = &src.plans;
    let touched = RefCell::new(Touched::new(plans.len()));
    let tai_offset = tai_offset_ns();
    // A frame whose tag the kernel took out of the data, with it put back.
    let retagged = RefCell::new(Vec::with_capacity(64 * 1024));
    let on_record = |bytes: &[u8]| -> i32 {
        let rec = Record::parse(bytes);
        let Some((session, mut frame)) =
            rec.and_then(|r| record_frame(&r, plans.len(), tai_offset, src.index))
        else {
            src.no_metadata.fetch_add(1, Ordering::Relaxed);
            return 0;
        };
        let mut buf = retagged.borrow_mut();
        if let Some((tag, kept)) = rec.and_then(|r| Some((r.vlan_header()?, r.vlan_len()))) {
            retag(&mut buf, frame.data, &tag[..kept]);
            frame.data = &buf;
            frame.orig_len += 4;
        }
        plans[session].dispatch(frame, None, rec.map(|r| r.slot));
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
    use crate::lab::process::{kernel_at_least, slice_ns};

    /// A reader thread gets the short slice (where the kernel has custom
    /// slices), and keeps its nice value (raised to 5 first, as `Nice=5` in
    /// a unit would) and its policy.
    #[test]
    fn a_reader_asks_for_a_short_slice_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            let nice = own_nice().expect("getpriority").max(5);
            // Safety: setpriority with integer arguments, this thread only
            // (raising a nice value needs no privilege).
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) }, 0);
            // Safety: sched_getscheduler takes a pid (0: this thread).
            let policy = unsafe { libc::sched_getscheduler(0) };
            let asked = ask_short_slice();
            assert_eq!(own_nice(), Some(nice));
            // Safety: as above.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, policy);
            if kernel_at_least(6, 12)
                && (policy == libc::SCHED_OTHER || policy == libc::SCHED_BATCH)
            {
                assert!(asked);
                let own = slice_ns(std::path::Path::new("/proc/thread-self"));
                assert_eq!(own, Some(READER_SLICE.as_nanos() as u64));
            }
        })
        .join()
        .expect("the thread's checks");
    }

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1_735_689_600 * S;

    fn meta(session: u16) -> Option<Meta> {
        Some(Meta {
            session,
            slot: 0,
            hash: 0xdead_beef,
            tstamp: NOW + 37 * S,
            orig_len: 0,
        })
    }

    /// What `RxPace` says after `frames` were read over `us` microseconds.
    fn nap_after(ring: u32, frames: u32, us: u64) -> Option<Duration> {
        let t0 = Instant::now();
        let mut p = RxPace::new(ring, t0);
        p.got(frames);
        p.idle(t0 + Duration::from_micros(us))
    }

    #[test]
    fn a_busy_ring_is_read_once_a_quarter_of_it_has_filled_at_the_rate_seen() {
        // 2 Mpps into a 2,048-entry ring: 512 frames take 256 us.
        assert_eq!(nap_after(2048, 1280, 640), Some(Duration::from_micros(256)));
        // 400 kpps: 1.28 ms, capped.
        assert_eq!(nap_after(2048, 400, 1000), Some(NAP_MAX));
    }

    #[test]
    fn quiet_traffic_is_waited_for_in_poll() {
        // 100 kpps: a 500 us nap would gather 50 frames, less than a batch.
        assert_eq!(nap_after(2048, 100, 1000), None);
        assert_eq!(nap_after(2048, 128, 1000), Some(NAP_MAX));
        // One frame after a long wait.
        assert_eq!(nap_after(2048, 1, 100_000), None);
        assert_eq!(nap_after(2048, 0, 1000), None);
    }

    #[test]
    fn a_ring_too_small_for_a_worthwhile_nap_is_waited_for_in_poll() {
        // 10 Mpps into 64 entries: 16 frames are 1.6 us, under NAP_MIN.
        assert_eq!(nap_after(64, 1000, 100), None);
        assert_eq!(nap_after(0, 1000, 100), None);
    }

    #[test]
    fn each_empty_ring_starts_a_new_count() {
        let t0 = Instant::now();
        let mut p = RxPace::new(2048, t0);
        p.got(640);
        let t1 = t0 + Duration::from_micros(640);
        assert!(p.idle(t1).is_some());
        // Nothing came during the nap: back to poll.
        assert_eq!(p.idle(t1 + Duration::from_micros(512)), None);
        // The rate is counted from the last empty ring, the nap included:
        // 200 frames in 1 ms is 200 kpps (a nap), 100 in 1 ms is not.
        p.got(200);
        let t2 = t1 + Duration::from_micros(1512);
        assert_eq!(p.idle(t2), Some(NAP_MAX));
        p.got(100);
        assert_eq!(p.idle(t2 + Duration::from_millis(1)), None);
    }

    #[test]
    fn a_frame_with_metadata_goes_to_its_session_with_its_hash_and_unix_time() {
        for sessions in [1, 3] {
            let got = place_frame(meta(0), sessions, 37 * S, || panic!("not read"));
            assert_eq!(got, Some((0, 0xdead_beef, NOW)), "{sessions} sessions");
        }
        assert_eq!(
            place_frame(meta(2), 3, 37 * S, || 0),
            Some((2, 0xdead_beef, NOW))
        );
    }

    /// Native XDP on a driver without a metadata area: one session still
    /// mirrors (not counted), several cannot tell the session (counted).
    #[test]
    fn a_frame_without_metadata_goes_to_the_only_session_else_is_counted() {
        assert_eq!(
            place_frame(None, 1, 37 * S, || NOW + 5),
            Some((0, 0, NOW + 5))
        );
        assert_eq!(place_frame(None, 2, 37 * S, || NOW), None);
    }

    #[test]
    fn a_copy_record_goes_to_its_session_with_unix_time_and_its_direction() {
        let rec = Record {
            slot: 1,
            session: 1,
            egress: true,
            cut: false,
            gso: false,
            ifindex: 3,
            orig_len: 1500,
            hash: 7,
            tstamp_tai: NOW + 37 * S,
            vlan: None,
            vlan_kept: 0,
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

    /// A tag the kernel took out of the data goes back after the MACs.
    #[test]
    fn a_tag_out_of_the_data_goes_back_after_the_mac_addresses() {
        let frame: Vec<u8> = (0..20).collect();
        let mut out = Vec::new();
        retag(&mut out, &frame, &[0x81, 0x00, 0x20, 0x64]);
        let mut want: Vec<u8> = (0..12).collect();
        want.extend([0x81, 0x00, 0x20, 0x64]);
        want.extend(12..20);
        assert_eq!(out, want);
        // Reused: nothing of the previous frame stays.
        retag(&mut out, &frame[..10], &[0x88, 0xa8, 0, 5]);
        let mut short: Vec<u8> = (0..10).collect();
        short.extend([0x88, 0xa8, 0, 5]);
        assert_eq!(out, short);
        // The record carries it as TPID << 16 | TCI.
        let rec = Record {
            slot: 0,
            session: 0,
            egress: false,
            cut: false,
            gso: false,
            ifindex: 3,
            orig_len: 20,
            hash: 0,
            tstamp_tai: 0,
            vlan: Some(0x8100_2064),
            vlan_kept: 0,
            data: &frame[..],
        };
        assert_eq!(rec.vlan_header(), Some([0x81, 0x00, 0x20, 0x64]));
        assert_eq!(rec.vlan_len(), 4);
    }

    /// A copy the flow cutoff cut inside the tag (14 or 15 bytes of the
    /// frame as on the wire) is the MACs and the tag's first bytes.
    #[test]
    fn a_copy_cut_inside_the_tag_keeps_only_the_tags_first_bytes() {
        let frame: Vec<u8> = (0..12).collect();
        for kept in [2u8, 3] {
            let rec = Record {
                slot: 0,
                session: 0,
                egress: false,
                cut: false,
                gso: false,
                ifindex: 3,
                orig_len: 56,
                hash: 0,
                tstamp_tai: 0,
                vlan: Some(0x8100_0064),
                vlan_kept: kept,
                data: &frame[..],
            };
            let tag = rec.vlan_header().expect("tagged");
            let mut out = Vec::new();
            retag(&mut out, rec.data, &tag[..rec.vlan_len()]);
            let mut want: Vec<u8> = (0..12).collect();
            want.extend(&[0x81, 0x00, 0x00][..usize::from(kept)]);
            assert_eq!(out, want, "{kept} bytes of the tag");
        }
    }

    /// The kernel and the daemon disagree on the sessions: a bug, counted
    /// even when the source has one session.
    #[test]
    fn metadata_naming_an_unknown_session_is_counted() {
        assert_eq!(place_frame(meta(1), 1, 0, || NOW), None);
        assert_eq!(place_frame(meta(3), 3, 0, || NOW), None);
    }
}
