//! What a worker does with a frame its session accepted: cut it to the
//! session's `packet_length`, apply `rate_limit_pps`, and offer it to every
//! target of the session (a group picks one member by the flow hash).
//!
//! Sampling (`sample`) happens earlier, in the kernel, so sampled-out frames
//! never cross into userspace.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{Config, Dest, Policy};
use crate::kernel::xsk::Loan;
use crate::target::group::TargetGroup;
use crate::target::{Frame, TargetDrop, TargetQueue};

/// One entry of a session's `targets`.
#[derive(Clone)]
pub enum DestQueue {
    One(Arc<TargetQueue>),
    Group(Arc<TargetGroup>),
}

impl DestQueue {
    fn resolve(&self, hash: u32) -> &Arc<TargetQueue> {
        match self {
            DestQueue::One(q) => q,
            DestQueue::Group(g) => g.pick(hash),
        }
    }
}

/// A session as the data plane runs it.
pub struct SessionPlan {
    pub name: String,
    dests: Vec<DestQueue>,
    /// Every queue the session can reach (groups expanded), to wake after a batch.
    pub queues: Vec<Arc<TargetQueue>>,
    pub vni: u32,
    /// The userspace half of each policy slot (`struct mirror_policy`):
    /// a frame is cut and rate-limited by the slot the kernel saw for it.
    slots: [SlotPolicy; 2],
    /// The slot in force, for frames that carry none (no XDP metadata).
    current: AtomicU8,
    /// Frames handed to the targets.
    pub mirrored: AtomicU64,
    /// Frames over the rate limit.
    pub rate_limited: AtomicU64,
}

impl SessionPlan {
    /// The plan of session `s` of `config`, with `targets` / `groups` the
    /// started queues by config index.
    pub fn new(
        config: &Config,
        s: usize,
        targets: &[Arc<TargetQueue>],
        groups: &[Arc<TargetGroup>],
    ) -> SessionPlan {
        let sess = &config.sessions[s];
        let plan = SessionPlan {
            name: sess.name.clone(),
            dests: sess
                .targets
                .iter()
                .map(|d| match *d {
                    Dest::Target(t) => DestQueue::One(targets[t].clone()),
                    Dest::Group(g) => DestQueue::Group(groups[g].clone()),
                })
                .collect(),
            queues: config
                .session_targets(s)
                .into_iter()
                .map(|t| targets[t].clone())
                .collect(),
            vni: sess.vni,
            slots: [SlotPolicy::default(), SlotPolicy::default()],
            current: AtomicU8::new(0),
            mirrored: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        };
        // The session's own settings until the schedule says otherwise.
        plan.set_slot(0, &sess.policy(None));
        plan
    }

    /// Offers `frame` (whole, as received) to the session's targets. Returns
    /// false when the rate limit dropped it. With a `loan` (tap mode), one
    /// interface target whose queue shares the RX queue's UMEM takes the
    /// frame itself instead of a copy, after every other target has copied it
    /// (once lent, the frame may be sent and reused at any moment).
    ///
    /// `slot`: the policy slot the kernel saw for the frame (`None`: the
    /// one in force now).
    pub fn dispatch(
        &self,
        mut frame: Frame<'_>,
        loan: Option<&mut Loan<'_>>,
        slot: Option<u8>,
    ) -> bool {
        let slot = slot.unwrap_or_else(|| self.current.load(Ordering::Acquire));
        let policy = &self.slots[usize::from(slot & 1)];
        let packet_length = policy.packet_length.load(Ordering::Acquire);
        if packet_length > 0 && frame.data.len() > packet_length {
            frame.data = &frame.data[..packet_length];
        }
        frame.vni = self.vni;
        let allowed = !policy.limited.load(Ordering::Acquire)
            || policy.limiter.lock().map_or(true, |mut b| {
                b.as_mut().is_none_or(|b| b.take(Instant::now()))
            });
        if !allowed {
            for d in &self.dests {
                d.resolve(frame.hash).reject(TargetDrop::RateLimited);
            }
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut borrower = None;
        for d in &self.dests {
            let q = d.resolve(frame.hash);
            match &loan {
                Some(l) if borrower.is_none() && q.can_borrow(l) => borrower = Some(q),
                _ => q.offer(&frame),
            }
        }
        if let (Some(q), Some(l)) = (borrower, loan) {
            q.borrow(&frame, l);
        }
        self.mirrored.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// What one policy slot asks of userspace: cut copies to `packet_length`
/// (0: whole), and a rate limit (`limited`: a bucket is set).
#[derive(Default)]
struct SlotPolicy {
    packet_length: AtomicUsize,
    limited: AtomicBool,
    limiter: Mutex<Option<TokenBucket>>,
}

impl SessionPlan {
    /// Writes `policy`'s userspace half into slot `slot`, before the kernel
    /// flips to that slot (frames tagged with it may follow at once).
    pub fn set_slot(&self, slot: u32, policy: &Policy) {
        let p = &self.slots[(slot & 1) as usize];
        p.packet_length
            .store(policy.packet_length as usize, Ordering::Release);
        if let Ok(mut l) = p.limiter.lock() {
            *l = (policy.rate_limit_pps > 0).then(|| TokenBucket::new(policy.rate_limit_pps));
        }
        p.limited
            .store(policy.rate_limit_pps > 0, Ordering::Release);
    }

    /// Records that the kernel now uses slot `slot`.
    pub fn set_current(&self, slot: u32) {
        self.current.store((slot & 1) as u8, Ordering::Release);
    }
}

/// A token bucket: `rate` tokens a second, holding at most a tenth of a
/// second's worth (at least one), so bursts stay short.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: u32) -> TokenBucket {
        let burst = (f64::from(rate) / 10.0).max(1.0);
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::xsk::FRAME_SIZE;
    use crate::target::Oversize;
    use std::time::Duration;

    /// Session `s` of a config with targets `a` and `b` (interface) and `g`
    /// (a group of both); `keys` are the session's own options.
    fn plan(targets: &str, keys: &str, queues: &[Arc<TargetQueue>]) -> SessionPlan {
        let text = format!(
            r#"
[[source]]
name = "s"
interface = "x"
[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[target]]
name = "a"
kind = "interface"
interface = "y"
[[target]]
name = "b"
kind = "interface"
interface = "z"
[[target_group]]
name = "g"
members = ["a", "b"]
[[session]]
name = "t"
source = "s"
filter = "all"
targets = [{targets}]
{keys}
"#
        );
        let config = crate::config::parse(&text, "test").expect("valid config");
        let groups = vec![Arc::new(TargetGroup::new("g", queues.to_vec()))];
        SessionPlan::new(&config, 0, queues, &groups)
    }

    fn queues() -> Vec<Arc<TargetQueue>> {
        ["a", "b"]
            .iter()
            .map(|n| {
                Arc::new(TargetQueue::new(n, "interface", 8, 1518, Oversize::Drop).expect("memory"))
            })
            .collect()
    }

    fn frame(data: &[u8], hash: u32) -> Frame<'_> {
        Frame {
            data,
            orig_len: data.len() as u32,
            hash,
            tstamp_ns: 7,
            vni: 0,
            source: 0,
            egress: false,
        }
    }

    /// The bytes of every copy waiting in `q`.
    fn drain(q: &TargetQueue) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = q.pop_ready() {
            out.push(p.data().to_vec());
            q.recycle(p);
        }
        out
    }

    #[test]
    fn every_target_gets_one_copy_cut_to_packet_length_with_the_session_vni() {
        let q = queues();
        let p = plan(r#""a", "b""#, "packet_length = 60\nvni = 9", &q);
        let long: Vec<u8> = (0..100).collect();
        let exact: Vec<u8> = (0..60).collect();
        let short: Vec<u8> = (0..59).collect();
        for f in [&long, &exact, &short] {
            assert!(p.dispatch(frame(f, 1), None, None));
        }
        for t in &q {
            assert_eq!(
                drain(t),
                vec![long[..60].to_vec(), exact.clone(), short.clone()]
            );
        }
        assert_eq!(p.mirrored.load(Ordering::Relaxed), 3);
        assert_eq!(p.rate_limited.load(Ordering::Relaxed), 0);
        assert_eq!(p.vni, 9);
    }

    /// A frame is cut and limited by the policy slot the kernel tagged it
    /// with, whichever slot is in force when userspace reads it.
    #[test]
    fn each_frame_follows_the_policy_slot_it_was_tagged_with() {
        let q = queues();
        let p = plan(r#""a""#, "packet_length = 60", &q);
        let wide = Policy {
            enabled: true,
            sample: 1,
            rate_limit_pps: 10,
            packet_length: 20,
            flow_cutoff_bytes: 0,
            flow_cutoff_packets: 0,
        };
        p.set_slot(1, &wide);
        p.set_current(1);
        let data: Vec<u8> = (0..100).collect();
        // Tagged slot 0 (seen before the flip): the session's own 60 bytes, no limit.
        for _ in 0..3 {
            assert!(p.dispatch(frame(&data, 0), None, Some(0)));
        }
        // Tagged slot 1, and untagged (the slot in force): 20 bytes, 10 pps.
        assert!(p.dispatch(frame(&data, 0), None, Some(1)));
        assert!(!p.dispatch(frame(&data, 0), None, None), "over 10 pps");
        let got = drain(&q[0]);
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [60, 60, 60, 20]
        );
        assert_eq!(p.rate_limited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_group_sends_each_frame_to_one_member_by_its_hash() {
        let q = queues();
        let p = plan(r#""g""#, "", &q);
        let data = [5u8; 60];
        for hash in 0..64 {
            assert!(p.dispatch(frame(&data, hash), None, None));
            let got: Vec<usize> = q.iter().map(|t| drain(t).len()).collect();
            assert_eq!(got.iter().sum::<usize>(), 1, "hash {hash}: one copy");
            // Both members up: the member rendezvous hashing ranks first.
            let pick = crate::target::group::rank(hash, 2, |_| true);
            assert_eq!(got[pick], 1, "hash {hash}: the member the group picks");
        }
    }

    #[test]
    fn frames_over_the_rate_limit_are_rejected_at_every_target_and_counted() {
        let q = queues();
        let p = plan(r#""a", "b""#, "rate_limit_pps = 10", &q);
        let data = [1u8; 60];
        // The bucket holds a tenth of a second: one frame at 10 pps.
        let passed = (0..5)
            .filter(|_| p.dispatch(frame(&data, 0), None, None))
            .count();
        assert_eq!(passed, 1);
        assert_eq!(p.mirrored.load(Ordering::Relaxed), 1);
        assert_eq!(p.rate_limited.load(Ordering::Relaxed), 4);
        for t in &q {
            assert_eq!(drain(t).len(), 1);
            let s = t.snapshot();
            assert_eq!(s.enqueued, 5);
            assert_eq!(s.dropped["rate_limited"], 4);
        }
    }

    #[test]
    fn a_lent_frame_goes_to_the_one_target_sharing_its_umem_the_rest_copy() {
        // The sharing target first and last in the session's list.
        for order in [r#""a", "b""#, r#""b", "a""#] {
            let f = FRAME_SIZE as usize;
            // `a` shares the RX UMEM (two slots, two RX frames); `b` copies.
            let a = Arc::new(
                TargetQueue::umem("a", "interface", 2, 2, 1518, Oversize::Drop).expect("memory"),
            );
            let b = Arc::new(
                TargetQueue::new("b", "interface", 8, 1518, Oversize::Drop).expect("memory"),
            );
            let q = vec![a.clone(), b.clone()];
            let p = plan(order, "", &q);
            let area = a.memory().clone();
            // Safety: the test owns RX frame 2 of the area; the data sits 256 bytes in.
            let data = unsafe {
                let ptr = area.base().add(2 * f + 256);
                std::ptr::write_bytes(ptr, 0xcd, 60);
                std::slice::from_raw_parts(ptr, 60)
            };
            let mut loan = Loan::new(&area, 2 * f as u64);
            assert!(p.dispatch(frame(data, 0), Some(&mut loan), None));
            assert!(
                loan.taken(),
                "{order}: the sharing target took the frame itself"
            );
            assert_eq!(a.counters.shared.load(Ordering::Relaxed), 1, "{order}");
            assert_eq!(b.counters.shared.load(Ordering::Relaxed), 0, "{order}");
            assert_eq!(drain(&a), vec![vec![0xcd; 60]], "{order}");
            assert_eq!(
                drain(&b),
                vec![vec![0xcd; 60]],
                "{order}: the other target copied"
            );
        }
    }

    #[test]
    fn token_bucket_passes_the_rate_and_a_short_burst() {
        let mut b = TokenBucket::new(1000);
        let t0 = Instant::now();
        // A burst at one instant: 100 tokens (a tenth of a second).
        let burst = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 100);
        // Then 1 ms apart for a second: one a millisecond.
        let steady = (1..=1000)
            .filter(|i| b.take(t0 + Duration::from_millis(*i)))
            .count();
        // (floating-point refill may land a hair under one token once)
        assert!((999..=1000).contains(&steady), "{steady}");
    }

    #[test]
    fn slow_rates_still_pass_one_frame() {
        let mut b = TokenBucket::new(2);
        let t0 = Instant::now();
        assert!(b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(500)));
    }
}
