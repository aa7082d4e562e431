//! `kind = "interface"`: AF_XDP TX out of a local port (an IDS sensor's NIC).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Oversize, Packet, TargetQueue};
use crate::config::ZeroCopy;
use crate::kernel::netdev;
use crate::kernel::xsk::{TxQueue, UmemHost, XskError, FRAME_SIZE};

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
    let mtu = netdev::mtu(interface).unwrap_or(1500);
    (mtu as usize + 14 + 4).min(FRAME_SIZE as usize)
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
    if let Ok(h) = tx.stats_handle() {
        queue.set_kernel_send_errors(Box::new(move || h.drops().tx_invalid_descs));
    }
    let zc = tx.zero_copy();
    let (q, ifname) = (queue.clone(), interface.to_string());
    let handle = crate::privileges::spawn(
        std::thread::Builder::new().name(format!("tx-{name}")),
        move || run(tx, &q, &ifname, &stop, frames as usize),
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

fn run(mut tx: TxQueue, q: &TargetQueue, interface: &str, stop: &AtomicBool, frames: usize) {
    q.register_sender();
    // The device the socket is bound to; deleted (or replaced by another of
    // the same name), the kernel unbinds the socket for good.
    let bound_to = crate::kernel::ifindex(interface).ok();
    let mut gone = false;
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
                q.counters.drop(super::TargetDrop::Down, lost);
            }
            q.in_flight.store(0, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                return;
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
            if !gone && now != bound_to {
                gone = true;
                tracing::error!(
                    target = %q.name,
                    interface,
                    "the target's interface was deleted (or replaced): its copies are dropped \
                     and counted `down` from now on; restart mirror to send to a new one"
                );
            }
            q.set_up(!gone && netdev::is_running(interface).unwrap_or(false));
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
