//! The scheduler: a control-plane thread that puts each scheduled session's
//! policy in force at every window edge (see `config::schedule` for the
//! maths, `struct mirror_policy` in abi.h for the switch).
//!
//! It computes the next edge of every session and sleeps until the earliest
//! (at most [`MAX_SLEEP`], so a wall-clock step is noticed), then switches
//! the sessions whose window changed: the userspace half of the idle policy
//! slot, then the kernel's idle slot, then one store flips the session to it.
//! On the fake clock it sleeps until `set_time` moves the clock, which
//! switches at once, before the request is answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::clock;
use super::source::Source;
use crate::config::schedule::{describe, position, Position};
use crate::config::{Policy, Session};

/// Longest sleep between evaluations on the real clock.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Frames tagged with a slot may still wait in a ring when the session flips
/// away from it: a slot is written again no sooner than this after the flip.
const SLOT_SETTLE: Duration = Duration::from_millis(20);

/// A scheduled session, as the thread switches it.
pub(super) struct Entry {
    /// Index in `Config::sessions`.
    pub(super) session: usize,
    pub(super) source: Arc<Source>,
    /// Kernel session index in its source.
    pub(super) kidx: u32,
}

/// Where one scheduled session is.
#[derive(Debug, Clone, Copy)]
struct Applied {
    position: Position,
    flipped: Option<Instant>,
}

pub struct Scheduler {
    sessions: Vec<Session>,
    entries: Vec<Entry>,
    state: Mutex<Vec<Applied>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// What `mirror stats` shows of a scheduled session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// `window 2 (mon-fri 08:00-18:00 Europe/Berlin)`, or `none`.
    pub window: String,
    pub next_edge: Option<Timestamp>,
}

/// The window text of a position, as logs and stats say it.
fn window_text(s: &Session, p: &Position) -> String {
    match p.active {
        Some(i) => format!("window {} ({})", i + 1, describe(&s.schedule[i])),
        None => "none".into(),
    }
}

impl Scheduler {
    /// `entries`: the scheduled sessions, each already in the policy of
    /// `started[i]` (set before its source attached).
    pub(super) fn new(sessions: &[Session], entries: Vec<Entry>, started: Vec<Position>) -> Self {
        Scheduler {
            sessions: sessions.to_vec(),
            state: Mutex::new(
                started
                    .into_iter()
                    .map(|position| Applied {
                        position,
                        flipped: None,
                    })
                    .collect(),
            ),
            entries,
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// This scheduler without the sessions of the sources `gone` picks, its
    /// thread not started: what a reload keeps readable while those sources
    /// stop. Nothing may hold a stopping source: its AF_XDP sockets close
    /// with it, and the source that replaces it binds the same queues.
    pub(super) fn without_sources(&self, gone: &dyn Fn(&Source) -> bool) -> Scheduler {
        let state = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let (entries, started): (Vec<Entry>, Vec<Position>) = self
            .entries
            .iter()
            .zip(state)
            .filter(|(e, _)| !gone(&e.source))
            .map(|(e, a)| {
                let entry = Entry {
                    session: e.session,
                    source: e.source.clone(),
                    kidx: e.kidx,
                };
                (entry, a.position)
            })
            .unzip();
        Scheduler::new(&self.sessions, entries, started)
    }

    /// Where each scheduled session is, by name: a reload hands the
    /// sessions it keeps to the next scheduler as they are.
    pub(super) fn positions(&self) -> Vec<(String, Position)> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        self.entries
            .iter()
            .zip(state.iter())
            .map(|(e, a)| (self.sessions[e.session].name.clone(), a.position))
            .collect()
    }

    /// What stats show for session `session` (config index), if scheduled.
    pub fn shown(&self, session: usize) -> Option<Shown> {
        let i = self.entries.iter().position(|e| e.session == session)?;
        let state = self.state.lock().ok()?;
        let p = state.get(i)?.position;
        Some(Shown {
            window: window_text(&self.sessions[session], &p),
            next_edge: p.next_edge,
        })
    }

    /// Re-evaluates every scheduled session at [`clock::now`] and switches
    /// those whose window changed. Returns the earliest next edge.
    pub fn tick(&self) -> Option<Timestamp> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let now = clock::now();
        let mut next: Option<Timestamp> = None;
        for (e, applied) in self.entries.iter().zip(state.iter_mut()) {
            let sess = &self.sessions[e.session];
            let pos = position(&sess.schedule, now);
            if pos.active != applied.position.active {
                if let Some(at) = applied.flipped {
                    let since = at.elapsed();
                    if since < SLOT_SETTLE {
                        std::thread::sleep(SLOT_SETTLE - since);
                    }
                }
                match switch(e, sess, &pos) {
                    Ok(()) => applied.flipped = Some(Instant::now()),
                    Err(err) => {
                        tracing::error!(session = %sess.name, error = %format!("{err:#}"), "switching the schedule window failed; the previous settings stay");
                        continue;
                    }
                }
            }
            applied.position = pos;
            next = sooner(next, pos.next_edge);
        }
        next
    }

    /// The thread's loop: tick, sleep until the next edge (or `set_time`,
    /// or [`Scheduler::stop`]).
    pub fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let next = self.tick();
            let wait = if clock::is_fake() {
                MAX_SLEEP
            } else {
                sleep_until(next, clock::now())
            };
            let Ok(state) = self.state.lock() else {
                return;
            };
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = self.wake.wait_timeout(state, wait);
        }
    }

    /// Moves the fake clock to `t` and switches at once.
    pub fn set_time(&self, t: Timestamp) -> Result<(), String> {
        clock::set_fake_now(t)?;
        self.tick();
        self.wake.notify_all();
        Ok(())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Taken so the thread is either waiting (and woken) or sees the flag.
        let _held = self.state.lock();
        self.wake.notify_all();
    }
}

/// The earlier of two next edges (`None`: no edge).
fn sooner(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How long the real clock's thread sleeps at `now` before the edge
/// `next`: until it (at once when past), at most [`MAX_SLEEP`] so a step
/// of the wall clock is noticed.
fn sleep_until(next: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(t) = next else {
        return MAX_SLEEP;
    };
    let ns = t.duration_since(now).as_nanos().max(0);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).min(MAX_SLEEP)
}

/// Puts the policy of `pos` in force for the session of `e`: userspace's
/// half of the idle slot, the kernel's idle slot, then the flip.
fn switch(e: &Entry, sess: &Session, pos: &Position) -> anyhow::Result<()> {
    let policy = sess.policy(pos.active);
    let mut program = e
        .source
        .program
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
    let idle = program.policy_slot(e.kidx)? ^ 1;
    let plan = &e.source.plans[e.kidx as usize];
    plan.set_slot(idle, &policy);
    let slot = program.set_policy(e.kidx, &policy, false)?;
    plan.set_current(slot);
    log_in_force(sess, pos, &policy);
    Ok(())
}

/// Logs the window of `sess` at `pos`, until when, and the settings it
/// puts in force (`policy`): at start-up and at each switch alike.
pub(super) fn log_in_force(sess: &Session, pos: &Position, policy: &Policy) {
    let until = pos
        .next_edge
        .map_or_else(|| "further notice".to_string(), |t| t.to_string());
    tracing::info!(
        session = %sess.name,
        enabled = policy.enabled,
        sample = policy.sample,
        rate_limit_pps = policy.rate_limit_pps,
        packet_length = policy.packet_length,
        flow_cutoff_bytes = policy.flow_cutoff_bytes,
        flow_cutoff_packets = policy.flow_cutoff_packets,
        "session {}: {} active until {until}",
        sess.name,
        match pos.active {
            Some(_) => window_text(sess, pos),
            None => "no window (the session's own settings)".into(),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::session::SessionPlan;
    use crate::dataplane::source::Prepared;
    use crate::kernel::SourceProgram;
    use crate::target::{Frame, Oversize, TargetQueue};

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn the_thread_waits_for_the_earliest_edge_of_all_sessions() {
        let (a, b) = (ts("2026-12-07T08:00:00Z"), ts("2026-12-07T18:00:00Z"));
        let edges = [Some(b), None, Some(a), None];
        assert_eq!(edges.into_iter().fold(None, sooner), Some(a));
        assert_eq!(sooner(None, None), None);
        assert_eq!(sooner(Some(b), None), Some(b));
        assert_eq!(sooner(None, Some(a)), Some(a));
    }

    #[test]
    fn it_sleeps_until_the_edge_and_at_most_a_minute() {
        let now = ts("2026-12-07T07:59:30Z");
        let edge = Some(ts("2026-12-07T08:00:00Z"));
        assert_eq!(sleep_until(edge, now), Duration::from_secs(30));
        assert_eq!(
            sleep_until(Some(ts("2026-12-07T09:00:00Z")), now),
            MAX_SLEEP
        );
        assert_eq!(
            sleep_until(edge, ts("2026-12-07T08:00:01Z")),
            Duration::ZERO
        );
        assert_eq!(sleep_until(None, now), MAX_SLEEP);
    }

    /// A switch writes the new policy's userspace half into the plan's idle
    /// slot and makes it the plan's slot in force, the one the kernel
    /// flipped to: frames tagged with the new slot and frames that carry no
    /// slot (no XDP metadata) alike are cut by the window's packet_length,
    /// and after the switch back by the session's own (none).
    #[test]
    #[ignore = "needs root: BPF and network namespaces"]
    fn a_switch_makes_the_kernels_new_slot_the_plans_slot_in_force() {
        assert!(crate::is_root(), "needs root (BPF)");
        let text = r#"
[[source]]
name = "s"
interface = "lo"
[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[target]]
name = "t"
kind = "interface"
interface = "y"
[[session]]
name = "a"
source = "s"
filter = "all"
targets = ["t"]
[[session.schedule]]
hours = "08:00-18:00"
timezone = "UTC"
packet_length = 100
"#;
        let config = crate::config::parse(text, "test").expect("valid config");
        let sess = &config.sessions[0];
        let queue =
            Arc::new(TargetQueue::new("t", "interface", 8, 1518, Oversize::Drop).expect("memory"));
        let plan = SessionPlan::new(&config, 0, std::slice::from_ref(&queue), &[]);
        let mut program = SourceProgram::load().expect("the programs load");
        program
            .set_policy(0, &sess.policy(None), true)
            .expect("the session's own policy");
        let prepared = Prepared {
            program,
            plans: vec![plan],
            paths: Vec::new(),
            sessions: vec![0],
            rules: 0,
        };
        let source =
            Arc::new(prepared.into_source(&config.sources[0], 0, "none", Vec::new(), false));
        let entry = Entry {
            session: 0,
            source: source.clone(),
            kidx: 0,
        };
        let data = vec![7u8; 300];
        // Offers one frame tagged `slot` (None: untagged) and returns the
        // length of its copy.
        let copy_len = |slot: Option<u8>| {
            let frame = Frame {
                data: &data,
                orig_len: 300,
                hash: 0,
                tstamp_ns: 0,
                vni: 0,
                source: 0,
                egress: false,
            };
            assert!(source.plans[0].dispatch(frame, None, slot));
            let p = queue.pop_ready().expect("a copy");
            let n = p.data().len();
            queue.recycle(p);
            n
        };
        assert_eq!(copy_len(None), 300, "the session's own policy");
        for (at, window, slot, len) in [
            ("2026-12-07T12:00:00Z", Some(0), 1, 100),
            ("2026-12-07T19:00:00Z", None, 0, 300),
        ] {
            let pos = position(&sess.schedule, ts(at));
            assert_eq!(pos.active, window, "{at}");
            switch(&entry, sess, &pos).expect("switch");
            let kernel = source
                .program
                .lock()
                .expect("lock")
                .policy_slot(0)
                .expect("slot");
            assert_eq!(kernel, slot, "{at}: the kernel flipped to the idle slot");
            assert_eq!(copy_len(Some(slot as u8)), len, "{at}: tagged");
            assert_eq!(copy_len(None), len, "{at}: untagged");
        }
    }
}
