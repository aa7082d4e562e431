//! What a worker does with a frame its session accepted: cut it to the
//! session's `packet_length`, apply `rate_limit_pps`, and offer it to every
//! target of the session (a group picks one member by the flow hash).
//!
//! Sampling (`sample`) happens earlier, in the kernel, so sampled-out frames
//! never cross into userspace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{Config, Dest};
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
    packet_length: usize,
    pub vni: u32,
    limiter: Option<Mutex<TokenBucket>>,
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
        SessionPlan {
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
            packet_length: sess.packet_length as usize,
            vni: sess.vni,
            limiter: (sess.rate_limit_pps > 0)
                .then(|| Mutex::new(TokenBucket::new(sess.rate_limit_pps))),
            mirrored: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Offers `frame` (whole, as received) to the session's targets. Returns
    /// false when the rate limit dropped it. With a `loan` (tap mode), one
    /// interface target whose queue shares the RX queue's UMEM takes the
    /// frame itself instead of a copy, after every other target has copied it
    /// (once lent, the frame may be sent and reused at any moment).
    pub fn dispatch(&self, mut frame: Frame<'_>, loan: Option<&mut Loan<'_>>) -> bool {
        if self.packet_length > 0 && frame.data.len() > self.packet_length {
            frame.data = &frame.data[..self.packet_length];
        }
        frame.vni = self.vni;
        let allowed = match &self.limiter {
            None => true,
            Some(l) => l.lock().map_or(true, |mut b| b.take(Instant::now())),
        };
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
    use std::time::Duration;

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
