//! `kind = "interface"`: AF_XDP TX out of a local port (an IDS sensor's NIC).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Oversize, TargetQueue};
use crate::config::ZeroCopy;
use crate::netdev;
use crate::xsk::{TxQueue, XskError, FRAME_SIZE};

/// Frames moved from the queue to the TX ring per round.
const BATCH: usize = 64;
/// How often the link state is read.
const LINK_CHECK: Duration = Duration::from_millis(100);
/// How long a stopping sender waits for its last frames to complete.
const DRAIN: Duration = Duration::from_secs(1);

/// A started interface target.
pub struct InterfaceTarget {
    pub queue: Arc<TargetQueue>,
    pub zero_copy: bool,
}

/// The largest frame `interface` carries: its MTU plus an Ethernet header and
/// one VLAN tag (what veth and most drivers forward), at most one UMEM frame.
pub fn max_frame(interface: &str) -> usize {
    let mtu = netdev::mtu(interface).unwrap_or(1500);
    (mtu as usize + 14 + 4).min(FRAME_SIZE as usize)
}

/// Opens the TX socket on queue 0 of `interface` and starts the sender thread.
pub fn start(
    name: &str,
    interface: &str,
    zero_copy: ZeroCopy,
    queue_size: u32,
    stop: Arc<AtomicBool>,
) -> Result<(InterfaceTarget, std::thread::JoinHandle<()>), XskError> {
    let frames = queue_size.next_power_of_two().clamp(64, 1 << 15);
    let tx = TxQueue::open(interface, 0, frames, zero_copy)?;
    let queue = Arc::new(TargetQueue::new(
        name,
        "interface",
        queue_size as usize,
        max_frame(interface),
        Oversize::Drop,
    ));
    if let Ok(h) = tx.stats_handle() {
        queue.set_kernel_send_errors(Box::new(move || h.drops().tx_invalid_descs));
    }
    let zc = tx.zero_copy();
    let (q, ifname) = (queue.clone(), interface.to_string());
    let handle = std::thread::Builder::new()
        .name(format!("tx-{name}"))
        .spawn(move || run(tx, &q, &ifname, &stop))
        .expect("spawning a thread");
    Ok((
        InterfaceTarget {
            queue,
            zero_copy: zc,
        },
        handle,
    ))
}

fn run(mut tx: TxQueue, q: &TargetQueue, interface: &str, stop: &AtomicBool) {
    q.register_sender();
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_check = Instant::now() - LINK_CHECK;
    let mut stopping_since: Option<Instant> = None;
    loop {
        let done = tx.complete();
        if done.packets > 0 {
            q.counters
                .sent_packets
                .fetch_add(done.packets, Ordering::Relaxed);
            q.counters
                .sent_bytes
                .fetch_add(done.bytes, Ordering::Relaxed);
        }

        // Move what the UMEM has room for from the queue onto the TX ring.
        while tx.has_room() && batch.len() < BATCH {
            match q.pop_ready() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if !batch.is_empty() {
            let taken = tx.send(batch.iter().map(|p| p.data())) as usize;
            // Frames the ring refused stay first in line for the next round.
            for p in batch.drain(..taken) {
                q.recycle(p);
            }
        }
        tx.kick();
        q.in_flight.store(
            u64::from(tx.in_flight()) + batch.len() as u64,
            Ordering::Relaxed,
        );

        if last_check.elapsed() >= LINK_CHECK {
            q.set_up(netdev::is_running(interface).unwrap_or(true));
            last_check = Instant::now();
        }

        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            let idle = q.queued() == 0 && tx.in_flight() == 0 && batch.is_empty();
            if idle || since.elapsed() > DRAIN {
                return;
            }
        }
        if tx.in_flight() > 0 || !batch.is_empty() {
            // Completions come back within microseconds: spin politely.
            std::thread::yield_now();
        } else if q.queued() == 0 {
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
}
