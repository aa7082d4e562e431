//! What the kernel path needs kept current while it runs, by one thread
//! every [`CHECK`]:
//!
//! - tunnel targets (tap mode's DEVMAP programs and copy mode's relay alike):
//!   their outer headers follow the route and the neighbour table. Each one's next hop is looked up again and its headers rewritten
//!   when something changed: a new gateway or collector MAC, a route through
//!   another device (the DEVMAP entry moves with it), a route that is gone
//!   (the tunnel goes down: copies are dropped in the kernel, counted
//!   `down`, until it comes back). Each change is logged.
//! - target groups: which members are up (each member target's own state:
//!   an interface target's sender, a tunnel's route), for the kernel's
//!   member pick;
//! - interface targets, group members among them: a device that goes down
//!   or away leaves the session's DEVMAPs (its copies are counted `down` by
//!   `xdp_tap` from then on); when it is up again, or created again under
//!   its name (a new ifindex), it is put back and sent to. Logged both ways.
//!   Taken out, a target's copies the kernel skipped without a trace while
//!   its device was down before this thread saw it are counted `down` too
//!   (`stats::fast_skipped`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::source::Source;
use crate::config::TargetSpec;
use crate::kernel::fast_path::max_len;
use crate::kernel::route::{self, NextHop};
use crate::kernel::{FastStats, SourceProgram, TunnelHeaders};
use crate::target::kernel_tunnel;
use crate::target::TargetQueue;

/// How often each kernel tunnel's next hop is looked up again.
pub(super) const CHECK: Duration = Duration::from_millis(100);

/// One tunnel target of one kernel-path session.
pub(super) struct KernelTunnel {
    pub source: Arc<Source>,
    /// The session's kernel index in its source.
    pub session: u32,
    /// The target's DEVMAP key in the session.
    pub key: u32,
    pub target: String,
    /// Its queue: its up state is what groups go by.
    pub queue: Arc<TargetQueue>,
    pub spec: TargetSpec,
    pub vni: u32,
    pub tai_offset: u64,
    /// What its headers were built from; `None` while down.
    pub hop: Option<NextHop>,
    /// The device its copies leave through (tap mode: its DEVMAP entry's;
    /// copy mode: the relay's `ifindex` in its headers).
    pub device: u32,
    /// Tap mode: its DEVMAP entry moves with the route. Copy mode: the
    /// headers alone name the device.
    pub devmap: bool,
    pub headers: TunnelHeaders,
    /// Why it is down, as last logged (`None` while up).
    pub why_down: Option<String>,
    /// Every destination of the source's kernel-path sessions that is this
    /// target (this one among them).
    pub dests: Vec<super::stats::FastDestRef>,
}

impl KernelTunnel {
    /// Looks the next hop up again and rewrites what changed. `taken`: the
    /// devices other targets of its source send through (tap mode), which
    /// its copies must not share: the kernel runs one DEVMAP program over a
    /// device's whole transmit batch and `xdp_tunnel` tells targets apart by
    /// their device, so a route onto one of them keeps the tunnel down.
    fn check(&mut self, taken: &[(u32, &str)]) {
        let Some(&crate::config::Tunnel { remote, source, .. }) = self.spec.tunnel() else {
            return;
        };
        let found = route::next_hop(remote, source);
        // A route through a device that is not running (no carrier) is no
        // way out either: the kernel would drop the copies uncounted.
        let running = |h: &NextHop| {
            crate::kernel::netdev::name(h.ifindex)
                .and_then(|n| crate::kernel::netdev::is_running(&n))
                .unwrap_or(false)
        };
        let shared = |h: &NextHop| {
            taken
                .iter()
                .find(|(i, name)| self.devmap && *i == h.ifindex && *name != self.target.as_str())
        };
        let hop = match &found {
            Ok(h) if h.dmac.is_some() && running(h) && shared(h).is_none() => Some(*h),
            _ => None,
        };
        let why = hop.is_none().then(|| match &found {
            Err(e) => e.to_string(),
            Ok(h) => match shared(h) {
                Some((_, other)) => format!(
                    "its route leaves through device {}, which target `{other}` of the same \
                     source sends through: the kernel path needs a device of its own for each \
                     tunnel",
                    h.ifindex
                ),
                None if h.dmac.is_none() => {
                    "the next hop's MAC is not known (no ARP/ND answer)".into()
                }
                None => format!("its egress device {} is not running", h.ifindex),
            },
        });
        if hop == self.hop {
            // Still down, for another reason (a route gone, then back onto
            // another target's device): said, as nothing else changes.
            if why.is_some() && why != self.why_down {
                tracing::warn!(
                    target = %self.target,
                    remote = %remote,
                    why = %why.as_deref().unwrap_or_default(),
                    "kernel tunnel still down: copies are dropped, counted `down`, until it is back"
                );
                self.why_down = why;
            }
            return;
        }
        let Ok(mut program) = self.source.program.lock() else {
            return;
        };
        let built =
            hop.and_then(|h| kernel_tunnel::headers(&self.spec, self.vni, &h, self.tai_offset));
        let result = match (hop, built) {
            (Some(h), Some(headers)) => {
                let moved = h.ifindex != self.device;
                // Back from down (its DEVMAP entry was taken out), or moved.
                let r = if (moved || self.hop.is_none()) && self.devmap {
                    program.set_tunnel_dest(
                        self.session,
                        self.key,
                        Some((h.ifindex, max_len(Some(h.mtu)))),
                    )
                } else {
                    Ok(())
                };
                r.and_then(|()| program.set_tunnel(self.session, self.key, &headers))
                    .map(|()| {
                        tracing::info!(
                            target = %self.target,
                            remote = %remote,
                            next_hop = %h.neighbour,
                            device = h.ifindex,
                            moved,
                            "kernel tunnel: next hop (re)resolved, headers rewritten"
                        );
                        self.headers = headers;
                        self.device = h.ifindex;
                    })
            }
            _ => {
                let mut down = self.headers;
                down.set_down(true);
                let r = if self.devmap {
                    // Counted `down` by xdp_tap, its egress device up or not.
                    program.set_tunnel_dest(self.session, self.key, None)
                } else {
                    Ok(())
                };
                r.and_then(|()| program.set_tunnel(self.session, self.key, &down)).map(|()| {
                    tracing::warn!(
                        target = %self.target,
                        remote = %remote,
                        why = %why.as_deref().unwrap_or_default(),
                        "kernel tunnel down: copies are dropped, counted `down`, until it is back"
                    );
                    self.headers = down;
                })
            }
        };
        match result {
            Ok(()) => {
                let gone = self.hop.is_some() && hop.is_none();
                self.hop = hop;
                self.why_down = why;
                self.queue.set_up(hop.is_some());
                if gone && self.devmap {
                    drop(program);
                    let dests = &self.dests;
                    count_skipped(&self.source, &self.target, dests, |p| {
                        dests.iter().try_fold(FastStats::default(), |mut n, d| {
                            n += p.tunnel_device_stats(d.session as u32, d.key)?;
                            Ok(n)
                        })
                    });
                }
            }
            Err(e) => {
                tracing::warn!(target = %self.target, error = %e, "kernel tunnel: updating its headers")
            }
        }
    }
}

/// The target group of one kernel-path session.
pub(super) struct KernelGroup {
    pub source: Arc<Source>,
    /// The session's kernel index in its source.
    pub session: u32,
    /// Its members, in the group's order.
    pub members: Vec<Arc<TargetQueue>>,
    /// Its interface members' devices, by target name (what a tunnel of the
    /// source must not move onto).
    pub devices: Vec<(u32, String)>,
    /// What the kernel was last told (bit i: member i up).
    pub up: u32,
}

impl KernelGroup {
    fn check(&mut self) {
        let up = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_up())
            .fold(0u32, |b, (i, _)| b | 1 << i);
        if up == self.up {
            return;
        }
        let Ok(mut program) = self.source.program.lock() else {
            return;
        };
        if let Err(e) = program.set_members_up(self.session, up) {
            tracing::warn!(error = %e, "kernel group: updating its members' state");
            return;
        }
        drop(program);
        let (out, back) = (self.up & !up, up & !self.up);
        self.up = up;
        for (i, m) in self.members.iter().enumerate() {
            if back & (1 << i) != 0 {
                tracing::info!(
                    target = %m.name,
                    "kernel path: a group member is up again; its flows come back to it"
                );
            }
            if out & (1 << i) != 0 {
                // What the kernel skipped for it is counted by the keeper
                // of its device (KernelDest) or its tunnel (KernelTunnel).
                tracing::warn!(
                    target = %m.name,
                    members_up = up.count_ones(),
                    "kernel path: a group member is down or gone; its flows go to the members up (none up: counted `down`)"
                );
            }
        }
    }
}

/// An interface target of one kernel-path session: its DEVMAP entry
/// follows its device (out while it is down or gone, onto a new device
/// created under its name). A group member too: whether the kernel picks
/// it for a flow is [`KernelGroup`]'s.
pub(super) struct KernelDest {
    pub source: Arc<Source>,
    /// The session's kernel index in its source.
    pub session: u32,
    /// The target's DEVMAP key in the session.
    pub key: u32,
    pub target: String,
    pub interface: String,
    /// The device its entry sends to (the last one seen up), and its MTU
    /// as `xdp_tap` checks frames against it.
    pub ifindex: u32,
    pub mtu: Option<u32>,
    pub up: bool,
    /// Every device each target has had, by target name: the stats sum
    /// their transmit counters.
    pub devices: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u32>>>>,
    /// Every destination of the source's kernel-path sessions that is this
    /// target (this one among them).
    pub dests: Vec<super::stats::FastDestRef>,
    /// A member of the session's target group (its flows go elsewhere while
    /// it is out, rather than being counted `down`).
    pub member: bool,
}

impl KernelDest {
    fn check(&mut self) {
        let now = crate::kernel::ifindex(&self.interface)
            .ok()
            .filter(|_| crate::kernel::netdev::is_running(&self.interface) == Some(true));
        let mtu = crate::kernel::netdev::mtu(&self.interface);
        let changed = match now {
            Some(i) => !self.up || i != self.ifindex || mtu != self.mtu,
            None => self.up,
        };
        if !changed {
            return;
        }
        let Ok(mut program) = self.source.program.lock() else {
            return;
        };
        if self.up && now.is_some_and(|i| i != self.ifindex) {
            // The device went away and another came under its name between
            // two looks: out first, so what the kernel skipped for the old
            // one is counted, then in with the new one.
            if let Err(e) = program.set_dest(self.session, self.key, None) {
                tracing::warn!(target = %self.target, error = %e, "kernel path: updating a destination");
                return;
            }
            drop(program);
            self.count_out();
            program = match self.source.program.lock() {
                Ok(p) => p,
                Err(_) => return,
            };
        }
        let device = now.map(|i| (i, max_len(mtu)));
        if let Err(e) = program.set_dest(self.session, self.key, device) {
            tracing::warn!(target = %self.target, error = %e, "kernel path: updating a destination");
            return;
        }
        match now {
            Some(i) if i != self.ifindex => {
                tracing::info!(
                    target = %self.target,
                    interface = %self.interface,
                    ifindex = i,
                    "kernel path: the target's interface is back as a new device; sending to it again"
                );
                if let Ok(mut d) = self.devices.lock() {
                    let list = d.entry(self.target.clone()).or_default();
                    if !list.contains(&i) {
                        list.push(i);
                    }
                }
                self.ifindex = i;
            }
            Some(_) if self.up => tracing::info!(
                target = %self.target,
                interface = %self.interface,
                mtu = mtu.unwrap_or(0),
                "kernel path: the target's MTU changed; longer copies are counted `too_big`"
            ),
            Some(_) if self.member => tracing::info!(
                target = %self.target,
                interface = %self.interface,
                "kernel path: the group member's interface is up again; back in its DEVMAPs"
            ),
            Some(_) => tracing::info!(
                target = %self.target,
                interface = %self.interface,
                "kernel path: the target's interface is up again; sending to it"
            ),
            None if self.member => tracing::info!(
                target = %self.target,
                interface = %self.interface,
                "kernel path: the group member's interface is down or gone; out of its DEVMAPs"
            ),
            None => tracing::warn!(
                target = %self.target,
                interface = %self.interface,
                "kernel path: the target's interface is down or gone; its copies are counted `down`"
            ),
        }
        self.up = now.is_some();
        self.mtu = mtu;
        if now.is_none() {
            drop(program);
            self.count_out();
        }
    }

    /// Just taken out of the DEVMAPs: see [`count_skipped`].
    fn count_out(&self) {
        let devices = self
            .devices
            .lock()
            .ok()
            .and_then(|d| d.get(&self.target).cloned())
            .unwrap_or_else(|| vec![self.ifindex]);
        count_skipped(&self.source, &self.target, &self.dests, |p| {
            devices.iter().try_fold(FastStats::default(), |mut n, &i| {
                n += p.fast_stats(i)?;
                Ok(n)
            })
        });
    }
}

/// A kernel-path target just taken out of its source's DEVMAPs: the copies
/// the kernel skipped while its device was down before the daemon saw it
/// are `down` too (see `stats::fast_skipped`; `devices` reads its devices'
/// counts).
fn count_skipped(
    source: &Source,
    target: &str,
    dests: &[super::stats::FastDestRef],
    devices: impl Fn(&SourceProgram) -> Result<FastStats, crate::kernel::LoaderError>,
) {
    use super::stats::Skipped;
    match super::stats::fast_skipped(source, dests, devices) {
        Ok(Skipped::Unexplained(n)) => {
            let before = source.fast_skipped(target);
            if n > before {
                tracing::info!(
                    target = %target,
                    copies = n - before,
                    "kernel path: copies the kernel skipped while the target's device was down, before mirror saw it, are counted `down`"
                );
                source.set_fast_skipped(target, n);
            }
        }
        Ok(Skipped::NotAllOut) => {}
        Ok(Skipped::TooDense) => tracing::warn!(
            target = %target,
            "kernel path: copies the kernel skipped while the target's device was down, before mirror saw it, could not be told apart (no moment between two copies to read the counts in); any stay `unknown`"
        ),
        Err(e) => tracing::warn!(
            target = %target,
            error = %e,
            "kernel path: reading what the kernel skipped while the target's device was down"
        ),
    }
}

/// Keeps `tunnels`, `groups` and `dests` current until `stop`.
pub(super) fn keep(
    mut tunnels: Vec<KernelTunnel>,
    mut groups: Vec<KernelGroup>,
    mut dests: Vec<KernelDest>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        for i in 0..tunnels.len() {
            let (before, rest) = tunnels.split_at_mut(i);
            let Some((t, after)) = rest.split_first_mut() else {
                break;
            };
            let same = |s: &Arc<Source>| Arc::ptr_eq(s, &t.source);
            let taken: Vec<(u32, &str)> = dests
                .iter()
                .filter(|d| same(&d.source))
                .map(|d| (d.ifindex, d.target.as_str()))
                .chain(
                    groups
                        .iter()
                        .filter(|g| same(&g.source))
                        .flat_map(|g| g.devices.iter().map(|(i, n)| (*i, n.as_str()))),
                )
                .chain(
                    before
                        .iter()
                        .chain(after.iter())
                        .filter(|o| same(&o.source) && o.hop.is_some())
                        .map(|o| (o.device, o.target.as_str())),
                )
                .collect();
            t.check(&taken);
        }
        for g in &mut groups {
            g.check();
        }
        for d in &mut dests {
            d.check();
        }
        std::thread::park_timeout(CHECK);
    }
}
