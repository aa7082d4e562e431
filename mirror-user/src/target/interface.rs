//! `kind = "interface"`: AF_XDP TX out of a local port (an IDS sensor's NIC).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Oversize, Packet, TargetDrop, TargetQueue};
use crate::config::ZeroCopy;
use crate::kernel::netdev;
use crate::kernel::xsk::{Spare, StatsHandle, TxQueue, UmemHost, XskError, FRAME_SIZE};

/// Frames moved from the queue to the TX ring per round.
const BATCH: usize = 64;
/// How often the link state is read.
const LINK_CHECK: Duration = Duration::from_millis(100);
/// How often an idle sender looks for completions still in flight.
const COMPLETION_POLL: Duration = Duration::from_micros(50);
/// How long an idle sender with nothing in flight sleeps unless woken.
const IDLE: Duration = Duration::from_millis(10);
/// How long a stopping sender waits for its last frames to complete.
const DRAIN: Duration = Duration::from_secs(1);
/// How many times (one per link check) the sender tries to bind to an
/// interface created again under its name before it gives up on that device.
const REOPEN_TRIES: u32 = 10;

/// A started interface target.
pub struct InterfaceTarget {
    pub queue: Arc<TargetQueue>,
    pub zero_copy: bool,
    /// The UMEM a tap source's first RX queue can join, when asked for.
    pub host: Option<UmemHost>,
}

/// RX frames and ring size to reserve for a tap source joining the target's UMEM.
#[derive(Debug, Clone, Copy)]
pub struct ShareWith {
    pub frames: u32,
    pub ring_size: u32,
}

/// The largest frame `interface` carries: its MTU plus an Ethernet header and
/// one VLAN tag (what veth and most drivers forward), at most one UMEM frame.
pub(crate) fn max_frame(interface: &str) -> usize {
    max_frame_now(interface).unwrap_or((1500 + 14 + 4).min(FRAME_SIZE as usize))
}

/// [`max_frame`] of the device `interface` names now, if there is one.
fn max_frame_now(interface: &str) -> Option<usize> {
    netdev::mtu(interface).map(|mtu| (mtu as usize + 14 + 4).min(FRAME_SIZE as usize))
}

/// Opens the TX socket on queue 0 of `interface` and starts the sender thread.
/// The target's queue is the socket's UMEM: a worker copies a mirrored frame
/// into a free UMEM frame once, and the sender puts that frame on the TX ring.
/// With `share`, the UMEM has room for a tap source's RX queue to join it,
/// whose frames then go out without any copy ([`TargetQueue::borrow`]).
pub fn start(
    name: &str,
    interface: &str,
    zero_copy: ZeroCopy,
    queue_size: u32,
    share: Option<ShareWith>,
    stop: Arc<AtomicBool>,
) -> Result<(InterfaceTarget, std::thread::JoinHandle<()>), XskError> {
    let extra = share.map_or(0, |s| s.frames);
    let queue = Arc::new(TargetQueue::umem(
        name,
        "interface",
        queue_size as usize,
        extra as usize,
        max_frame(interface),
        Oversize::Drop,
    )?);
    let (tx, host) = match share {
        None => (
            TxQueue::open(interface, 0, queue.memory(), queue_size, zero_copy)?,
            None,
        ),
        Some(s) => {
            let (tx, host) = TxQueue::open_host(
                interface,
                0,
                queue.memory(),
                queue_size,
                s.ring_size,
                zero_copy,
                name,
            )?;
            (tx, Some(host))
        }
    };
    let frames = queue_size + extra;
    let errors = Arc::new(KernelErrors::default());
    errors.replace(tx.stats_handle().ok());
    let read = errors.clone();
    queue.set_kernel_send_errors(Box::new(move || read.read()));
    // Made ahead, and again after each pick-up: see `Spare`.
    let spare = match tx.spare(interface, 0) {
        Ok(spare) => Some(spare),
        Err(e) => {
            tracing::warn!(
                target = name,
                interface,
                error = %e,
                "no spare AF_XDP socket: if the interface is deleted and created again, mirror \
                 will not pick the new one up (restart mirror then)"
            );
            None
        }
    };
    let reopen = Reopen {
        spare,
        zero_copy,
        shared_with_rx: host.is_some(),
        errors,
        tried: None,
        given_up: false,
    };
    let zc = tx.zero_copy();
    let (q, ifname) = (queue.clone(), interface.to_string());
    let handle = crate::privileges::spawn(
        std::thread::Builder::new().name(format!("tx-{name}")),
        move || run(tx, &q, &ifname, &stop, frames as usize, reopen),
    )
    .expect("spawning a thread");
    Ok((
        InterfaceTarget {
            queue,
            zero_copy: zc,
            host,
        },
        handle,
    ))
}

/// The kernel's count of descriptors it refused (`send_error`), over every
/// socket the target has had: the current one's, plus what the ones before
/// it had counted when they were replaced.
#[derive(Default)]
struct KernelErrors(Mutex<(u64, Option<StatsHandle>)>);

impl KernelErrors {
    fn read(&self) -> u64 {
        self.0.lock().map_or(0, |g| {
            g.0 + g.1.as_ref().map_or(0, |h| h.drops().tx_invalid_descs)
        })
    }

    /// From now on the socket behind `handle` counts; the last one's count stays.
    fn replace(&self, handle: Option<StatsHandle>) {
        if let Ok(mut g) = self.0.lock() {
            if let Some(old) = g.1.take() {
                g.0 += old.drops().tx_invalid_descs;
            }
            g.1 = handle;
        }
    }
}

/// What the sender needs to bind again to its interface created again
/// under its name.
struct Reopen {
    /// The socket to bind: one at a time ([`Spare`]).
    spare: Option<Spare>,
    zero_copy: ZeroCopy,
    /// The first socket's UMEM was offered to a tap source's RX queue.
    shared_with_rx: bool,
    errors: Arc<KernelErrors>,
    /// The device last tried, and how many times.
    tried: Option<(u32, u32)>,
    /// Logged that no socket is left to bind.
    given_up: bool,
}

impl Reopen {
    /// Tries to bind to the device `interface` names now, `ifindex` (a new
    /// one), at most [`REOPEN_TRIES`] times per device; `old` is the
    /// socket its deletion unbound.
    fn attempt(
        &mut self,
        old: &TxQueue,
        target: &str,
        interface: &str,
        ifindex: u32,
    ) -> Option<TxQueue> {
        let tries = match self.tried {
            Some((i, n)) if i == ifindex => n,
            _ => 0,
        };
        if tries >= REOPEN_TRIES {
            return None;
        }
        let Some(spare) = self.spare.take() else {
            if !self.given_up {
                self.given_up = true;
                tracing::error!(
                    target,
                    interface,
                    ifindex,
                    "the target's interface was created again, but no AF_XDP socket is left to \
                     bind to it (a new one needs CAP_NET_RAW, which mirror run keeps only while \
                     it starts): its copies stay counted `down`; restart mirror to send to it"
                );
            }
            return None;
        };
        let zero_copy = match self.zero_copy {
            ZeroCopy::Off => false,
            ZeroCopy::On => true,
            ZeroCopy::Auto => crate::kernel::xdp_features(ifindex)
                .is_ok_and(|f| f & crate::kernel::query::XDP_ACT_XSK_ZEROCOPY != 0),
        };
        match TxQueue::reopen(spare, interface, 0, zero_copy) {
            Ok(tx) => {
                self.tried = None;
                self.errors.replace(tx.stats_handle().ok());
                if self.shared_with_rx {
                    tracing::info!(
                        target,
                        interface,
                        ifindex,
                        zero_copy,
                        "the target's interface was created again: picked up again, on a socket \
                         with a UMEM of its own (the one it offered a tap source's RX queue \
                         cannot be bound again: its first socket's device is gone); frames that \
                         RX queue lends still go out without a copy (the same memory)"
                    );
                } else {
                    tracing::info!(
                        target,
                        interface,
                        ifindex,
                        zero_copy,
                        "the target's interface was created again: picked up again"
                    );
                }
                self.spare = match tx.spare(interface, 0) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(
                            target,
                            interface,
                            error = %e,
                            "no spare AF_XDP socket for a next time: if the interface is deleted \
                             and created again once more, mirror will not pick it up"
                        );
                        None
                    }
                };
                Some(tx)
            }
            Err((e, back)) => {
                self.tried = Some((ifindex, tries + 1));
                self.spare = back.map(|b| *b).or_else(|| old.spare(interface, 0).ok());
                if tries + 1 >= REOPEN_TRIES {
                    tracing::error!(
                        target,
                        interface,
                        ifindex,
                        error = %e,
                        "the target's interface was created again, but binding to it failed \
                         {REOPEN_TRIES} times: its copies stay counted `down`; restart mirror to \
                         send to it"
                    );
                } else {
                    tracing::warn!(
                        target,
                        interface,
                        ifindex,
                        error = %e,
                        "the target's interface was created again; binding to it failed, retrying"
                    );
                }
                None
            }
        }
    }
}

fn run(
    mut tx: TxQueue,
    q: &TargetQueue,
    interface: &str,
    stop: &AtomicBool,
    frames: usize,
    mut reopen: Reopen,
) {
    q.register_sender();
    // The device the socket is bound to; deleted (or replaced by another of
    // the same name), the kernel unbinds the socket for good: the sender
    // binds another one once a device of that name is there again.
    let mut bound_to = crate::kernel::ifindex(interface).ok();
    let mut gone = false;
    let mut max_len = q.max_len();
    let mut batch = Vec::with_capacity(BATCH);
    // Copies on the TX ring, by UMEM frame, until their completion comes back
    // (any frame of the UMEM: lent RX frames take the place of slots).
    let mut sending: Vec<Option<Packet>> = (0..frames).map(|_| None).collect();
    let mut last_check = Instant::now() - LINK_CHECK;
    let mut stopping_since: Option<Instant> = None;
    loop {
        if gone {
            // The socket is unbound: nothing on its rings will be sent or
            // completed, and the kernel no longer reads those UMEM frames.
            // Every copy held here is lost: count it and free its slot.
            let held = batch
                .drain(..)
                .chain(sending.iter_mut().filter_map(Option::take))
                .chain(std::iter::from_fn(|| q.pop_ready()));
            let mut lost = 0;
            for p in held {
                q.recycle(p);
                lost += 1;
            }
            if lost > 0 {
                q.counters.drop(TargetDrop::Down, lost);
            }
            q.in_flight.store(0, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if last_check.elapsed() >= LINK_CHECK {
                last_check = Instant::now();
                let now = crate::kernel::ifindex(interface).ok();
                if let Some(new) = now.and_then(|i| reopen.attempt(&tx, &q.name, interface, i)) {
                    // Copies offered until now were counted `down` (the
                    // queue is marked down); from here they go out.
                    tx = new;
                    bound_to = now;
                    gone = false;
                    last_check = Instant::now() - LINK_CHECK;
                    continue;
                }
            }
            std::thread::park_timeout(IDLE);
            continue;
        }
        let (mut packets, mut bytes) = (0u64, 0u64);
        tx.complete(|addr| {
            if let Some(p) = sending[(addr / u64::from(FRAME_SIZE)) as usize].take() {
                packets += 1;
                bytes += p.data().len() as u64;
                q.recycle(p);
            }
        });
        if packets > 0 {
            q.counters
                .sent_packets
                .fetch_add(packets, Ordering::Relaxed);
            q.counters.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
        }

        while batch.len() < BATCH {
            match q.pop_ready() {
                // Queued before the MTU was lowered, and longer than it
                // takes now.
                Some(p) if p.data().len() > max_len => {
                    q.recycle(p);
                    q.counters.drop(TargetDrop::TooBig, 1);
                }
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if !batch.is_empty() {
            let taken = tx.submit(batch.iter().map(|p| (q.offset(p), p.data().len() as u32)));
            // Frames the ring refused stay first in line for the next round.
            for p in batch.drain(..taken as usize) {
                let slot = p.slot();
                sending[slot] = Some(p);
            }
        }
        tx.kick();
        q.in_flight.store(
            u64::from(tx.in_flight()) + batch.len() as u64,
            Ordering::Relaxed,
        );

        if last_check.elapsed() >= LINK_CHECK {
            let now = crate::kernel::ifindex(interface).ok();
            if now != bound_to {
                gone = true;
                q.set_up(false);
                tracing::error!(
                    target = %q.name,
                    interface,
                    "the target's interface was deleted (or replaced): its copies are dropped \
                     and counted `down` until a device of that name is there again"
                );
            } else {
                if let Some(len) = max_frame_now(interface).filter(|&l| l != max_len) {
                    q.set_max_len(len);
                    max_len = q.max_len();
                    tracing::info!(
                        target = %q.name,
                        interface,
                        max_frame = max_len,
                        "the target's MTU changed: longer copies are counted `too_big`"
                    );
                }
                q.set_up(netdev::is_running(interface).unwrap_or(false));
            }
            last_check = Instant::now();
        }

        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            let idle = q.queued() == 0 && tx.in_flight() == 0 && batch.is_empty();
            if idle || since.elapsed() > DRAIN {
                return;
            }
        }
        if !batch.is_empty() {
            // The TX ring is full: the kernel frees room within microseconds.
            std::thread::yield_now();
        } else if q.queued() == 0 {
            // Nothing to send: sleep until a worker queues more (it wakes
            // this thread), or briefly while completions are still due
            // (copy mode completes most of them inside the kick itself).
            std::thread::park_timeout(if tx.in_flight() > 0 {
                COMPLETION_POLL
            } else {
                IDLE
            });
        }
    }
}
