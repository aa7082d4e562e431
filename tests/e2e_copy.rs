//! End to end, in network namespaces: copy mode on a live interface. Real TCP
//! and UDP traffic between a client and a server crosses the mirrored
//! interface while the real `mirror run` copies both directions to a pcapng
//! file and an interface target; the traffic must arrive intact with nothing
//! lost, the copies must reconcile exactly with what was sent, and the
//! traffic must keep flowing when a target blocks, the ring fills, or the
//! daemon is SIGKILLed and restarted.
//!
//! ```text
//!  ns cli               ns srv (mirror runs here)              ns sink
//!  c0 10.9.0.1 ──veth── s0 10.9.0.2 [copy: XDP/tcx]   tgt0 ──veth── sink0
//! ```

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_reconciles, assert_source_reconciles, ipv4_payload, read_pcapng, wait_for, Record,
    Window,
};
use mirror_user::config::{ErspanVersion, Granularity};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::kernel;
use mirror_user::lab::stream::{self, EchoServer};
use mirror_user::lab::{self, Capture, Netns, TempDir};
use mirror_user::target::encap;

const BIN: &str = env!("CARGO_BIN_EXE_mirror");
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;

fn server(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 9, 0, 2], port))
}

/// Two sessions, so UDP and TCP counts are separate: "udp" mirrors UDP to the
/// server port (ingress) and its echoes (egress); "tcp" the same for TCP.
const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "s0"
mode = "copy"
direction = "both"
@SOURCE@

[[filter]]
name = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "5002"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"
source_port = "5002"

[[filter]]
name = "tcp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "tcp"
destination_port = "5001"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "tcp"
source_port = "5001"

[[target]]
name = "cap"
kind = "pcapng"
path = "@CAPTURE@"

[[target]]
name = "ids"
kind = "interface"
interface = "tgt0"
queue_size = 16384   # absorbs a TCP burst while a loaded CI box starves the sender

[[session]]
name = "udp"
source = "live"
filter = "udp"
targets = ["cap", "ids"]
priority = 1

[[session]]
name = "tcp"
source = "live"
filter = "tcp"
targets = ["cap", "ids"]
priority = 2
"#;

struct Live {
    cli: Netns,
    srv: Netns,
    sink: Netns,
    dir: TempDir,
}

impl Live {
    /// Sends `data` from the client to the server over TCP paced to
    /// [`PACED_TCP`]: it must arrive whole and byte-identical, and every
    /// segment retransmitted must be one the server already had (D-SACK: a
    /// timer that fired early on a starved CPU) or, a handful at most, one
    /// c0's veth dropped because s0's receive ring was full
    /// ([`Live::ring_drops`]): a burst from a starved CPU. A program slow
    /// enough to overflow the ring at this pace would drop far more, and the
    /// server never gets a segment twice unless it was sent twice (mirror
    /// never duplicates a frame).
    fn paced_stream_arrives_untouched(&self, data: &[u8]) {
        let drops_before = self.ring_drops();
        let tcp = stream::tcp_transfer_paced(
            &self.cli,
            &self.srv,
            server(TCP_PORT),
            data,
            Some(PACED_TCP),
        )
        .expect("the TCP stream arrives intact");
        let ring_drops = self.ring_drops() - drops_before;
        assert_eq!(tcp.bytes, data.len());
        assert!(
            tcp.spurious <= tcp.retransmits,
            "the server got segments twice that were sent once: {tcp:?}"
        );
        assert!(
            u64::from(tcp.lost()) <= ring_drops.min(STARVED_RING_DROPS),
            "the monitored stream lost segments: {tcp:?}, {ring_drops} frames dropped \
             by c0 for a full ring (at most {STARVED_RING_DROPS} excused)"
        );
    }

    /// Frames c0 dropped because s0's receive ring was full (c0's
    /// `tx_dropped`): the client's data direction.
    fn ring_drops(&self) -> u64 {
        self.cli
            .device_counter("c0", "tx_dropped")
            .expect("c0's tx_dropped")
    }

    fn new(tag: &str) -> Live {
        let live = Live {
            cli: Netns::new("cli").expect("netns"),
            srv: Netns::new("srv").expect("netns"),
            sink: Netns::new("sink").expect("netns"),
            dir: TempDir::new(tag).expect("temp dir"),
        };
        lab::wire(
            &live.cli, "c0", "10.9.0.1", &live.srv, "s0", "10.9.0.2", 1500,
        )
        .expect("veth");
        lab::veth(&live.srv, "tgt0", &live.sink, "sink0", 1).expect("veth");
        live
    }

    fn config(&self, source_extra: &str, capture: &str) -> String {
        CONFIG
            .replace("@SOURCE@", source_extra)
            .replace("@CAPTURE@", capture)
    }

    /// What is attached to the monitored interface right now.
    fn attached(&self) -> kernel::Attached {
        self.srv
            .run(|| Ok(kernel::attached("s0")?))
            .expect("querying s0")
    }
}

/// Polls until two snapshots 150 ms apart are equal and `done` holds: the
/// traffic has settled (TCP's closing segments included) and every copy is
/// accounted for.
fn wait_settled(client: &mut Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = client.stats().expect("stats");
        std::thread::sleep(Duration::from_millis(150));
        let b = client.stats().expect("stats");
        if a == b && done(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {b:#?}"
        );
    }
}

/// (source port, destination port, transport payload) of a UDP/TCP over IPv4 frame.
fn ports_payload(frame: &[u8]) -> Option<(u16, u16, Option<u32>, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match p.transport? {
        etherparse::TransportSlice::Udp(u) => Some((
            u.source_port(),
            u.destination_port(),
            None,
            u.payload().to_vec(),
        )),
        etherparse::TransportSlice::Tcp(t) => Some((
            t.source_port(),
            t.destination_port(),
            Some(t.sequence_number()),
            t.payload().to_vec(),
        )),
        _ => None,
    }
}

/// The client's byte stream rebuilt from mirrored TCP segments (by sequence
/// number, retransmissions collapsed).
fn reassemble(records: &[&Record]) -> Vec<u8> {
    let mut segs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut isn = None;
    for r in records {
        let (_, _, Some(seq), payload) = ports_payload(&r.data).expect("a TCP frame") else {
            continue;
        };
        if payload.is_empty() {
            // SYN (or a bare ACK/FIN): the data starts at SYN's seq + 1.
            isn.get_or_insert(seq);
            continue;
        }
        segs.insert(seq, payload);
    }
    let mut out = Vec::new();
    let Some(mut next) = isn.map(|s: u32| s.wrapping_add(1)) else {
        return out;
    };
    while let Some(p) = segs.remove(&next) {
        next = next.wrapping_add(p.len() as u32);
        out.extend(p);
    }
    out
}

fn payload_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Several tests here assert that a TCP stream through the monitored
/// interface loses no segment. Run on two cores alongside the other tests'
/// streams and daemons, the veths' receive rings sometimes overflow from
/// CPU starvation alone (the kernel drops, not mirror: it only ever passes
/// frames), so the tests of this file run one at a time, those streams are
/// paced, and what the rings drop is counted apart
/// ([`Live::paced_stream_arrives_untouched`]).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Segments a paced stream may lose to a full veth ring on a starved CPU
/// ([`Live::paced_stream_arrives_untouched`]).
const STARVED_RING_DROPS: u64 = 4;

/// The streams that must lose nothing are paced to 200 Mbit/s:
/// TCP's line-rate bursts overflow a veth's 256-frame XDP ring whenever its
/// NAPI waits for a CPU, program or not (see `tcp_transfer_paced`).
const PACED_TCP: u32 = 25_000_000;

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_mirrors_both_directions_of_tcp_and_udp_and_leaves_them_intact() {
    require_root!();
    let _serial = one_at_a_time();
    let live = Live::new("copy-both");
    let capture = live.dir.path().join("live.pcapng");
    let (mut daemon, _) = common::start_daemon(
        BIN,
        &live.srv,
        &live.dir,
        &live.config("", &capture.to_string_lossy()),
    );
    let mut client = Client::connect(&daemon.control).expect("control socket");
    // The ring buffer's reader asked for a short time slice (Linux 6.12).
    if mirror_user::lab::process::kernel_at_least(6, 12) {
        let pid = daemon.pid().expect("the daemon runs");
        assert_eq!(
            common::wait_thread_slices(pid, "copy-live", 1, 100_000),
            vec![100_000]
        );
    }
    let sink = Capture::start(&live.sink, "sink0").expect("capture");

    const N: u32 = 1000;
    let echo = EchoServer::start(&live.srv, server(UDP_PORT)).expect("echo server");
    let progress = AtomicU32::new(0);
    let mut window = Window::open();
    let exchanged = stream::udp_exchange(&live.cli, server(UDP_PORT), N, 200, &progress)
        .expect("every datagram echoed intact, in order");
    assert_eq!(exchanged, N);
    assert_eq!(echo.finish(&live.cli).expect("echo server"), N);
    let data = payload_data(2 << 20);
    live.paced_stream_arrives_untouched(&data);

    let st = wait_settled(&mut client, "every copy delivered", |st| {
        let src = &st.sources["live"];
        ["cap", "ids"].iter().all(|t| {
            let t = &st.targets[*t];
            t.queued == 0 && t.sent_packets + t.dropped_total() == src.mirrored
        })
    });
    window.close();
    let src = &st.sources["live"];
    assert_eq!(src.mode, "copy");
    assert_eq!(src.received, src.matched + src.filtered);
    assert_eq!(
        src.matched,
        src.mirrored + src.sampled_out + src.scheduled_out + src.dropped_total()
    );
    assert_eq!(src.dropped_total(), 0, "{src:#?}");
    let (ingress, egress) = (&src.directions["ingress"], &src.directions["egress"]);
    for d in [ingress, egress] {
        assert_eq!(d.received, d.matched + d.filtered);
        assert_eq!(d.matched, d.copied);
    }
    // The UDP session saw exactly the generator's datagrams, both ways.
    // (plus the one datagram that ends the echo server)
    let udp = &st.sessions["udp"];
    assert_eq!(udp.path, "ring_buffer", "a pcapng target needs userspace");
    assert_eq!(
        src.xdp_mode, "native",
        "ingress_hook = \"auto\" keeps XDP then"
    );
    assert_eq!(udp.matched, 2 * u64::from(N) + 1);
    assert_eq!(udp.mirrored, 2 * u64::from(N) + 1);
    for name in ["cap", "ids"] {
        let t = &st.targets[name];
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {t:?}");
        assert_eq!(t.sent_packets, src.mirrored);
    }

    // The capture holds every copy with its direction.
    let records = read_pcapng(&capture);
    assert_eq!(records.len() as u64, src.mirrored);
    let (mut udp_in, mut udp_out, mut tcp_in, mut tcp_out) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &records {
        assert_eq!(r.orig_len as usize, r.data.len(), "whole frames");
        // The kernel's stamp, in Unix time: between the first datagram and
        // the last copy.
        window.assert_holds("a copy-mode pcapng record", r.ts_ns);
        let (sport, dport, seq, payload) = ports_payload(&r.data).expect("UDP or TCP");
        match (seq.is_some(), r.outbound) {
            (false, Some(false)) => {
                assert_eq!(dport, UDP_PORT);
                udp_in.push(payload)
            }
            (false, Some(true)) => {
                assert_eq!(sport, UDP_PORT);
                udp_out.push(payload)
            }
            (true, Some(false)) => {
                assert_eq!(dport, TCP_PORT);
                tcp_in.push(r)
            }
            (true, Some(true)) => {
                assert_eq!(sport, TCP_PORT);
                tcp_out.push(r)
            }
            (_, None) => panic!("a record without a direction"),
        }
    }
    let mut want: Vec<Vec<u8>> = (0..N).map(|i| stream::datagram(i, 200)).collect();
    assert_eq!(udp_out, want, "every echo mirrored on egress, in order");
    want.push(stream::END.to_vec());
    assert_eq!(udp_in, want, "every datagram mirrored on ingress, in order");
    assert_eq!(tcp_in.len() as u64 + udp_in.len() as u64, ingress.copied);
    assert_eq!(tcp_out.len() as u64 + udp_out.len() as u64, egress.copied);
    assert_eq!(
        reassemble(&tcp_in),
        data,
        "the mirrored ingress segments rebuild the whole stream"
    );
    assert!(
        !tcp_out.is_empty(),
        "the server's ACKs are mirrored on egress"
    );
    // Time stamps: each datagram is seen before its echo, each echo before
    // the next datagram (records of concurrent frames from two CPUs, like the
    // TCP segments and ACKs, may differ from ring order by nanoseconds).
    let udp_ts: Vec<u64> = records
        .iter()
        .filter(|r| ports_payload(&r.data).is_some_and(|p| p.2.is_none()))
        .map(|r| r.ts_ns)
        .collect();
    assert_eq!(udp_ts.len() as u32, 2 * N + 1);
    assert!(udp_ts.windows(2).all(|w| w[0] <= w[1]), "causal order");

    // The interface target put every copy on the wire.
    let frames = sink.finish();
    assert_eq!(frames.len() as u64, src.mirrored);
    daemon.stop(Duration::from_secs(10)).expect("clean exit");
    let after = live.attached();
    assert_eq!(after, kernel::Attached::default(), "everything detached");
}

/// Copy mode to an ERSPAN III collector (and a pcapng file): both
/// directions of a UDP exchange.
const ERSPAN_III: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "s0"
mode = "copy"
direction = "both"

[[filter]]
name = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "5002"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"
source_port = "5002"

[[target]]
name = "er3"
kind = "erspan"
remote = "10.9.3.2"
version = 3               # granularity: the default, 100 us

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/live.pcapng"

[[session]]
name = "udp"
source = "live"
filter = "udp"
targets = ["er3", "cap"]
vni = 5
"#;

/// ERSPAN III says which way each copy went: the D bit is egress exactly
/// for the echoes leaving the server (tcx egress) and ingress for the
/// datagrams arriving (XDP), and each time stamp is the kernel's, in 100 us
/// units, between the first datagram and the last copy (and equal to the
/// pcapng record's of the same frame).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_erspan_iii_copies_carry_their_direction_and_time() {
    require_root!();
    let _serial = one_at_a_time();
    let live = Live::new("copy-erspan");
    let col = Netns::new("erc").expect("netns");
    lab::wire(&live.srv, "er0", "10.9.3.1", &col, "er1", "10.9.3.2", 1500).expect("veth");
    let (mut daemon, _) = common::start_daemon(BIN, &live.srv, &live.dir, ERSPAN_III);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let capture = Capture::start(&col, "er1").expect("capture");

    const N: u32 = 500;
    let echo = EchoServer::start(&live.srv, server(UDP_PORT)).expect("echo server");
    let progress = AtomicU32::new(0);
    let mut window = Window::open();
    stream::udp_exchange(&live.cli, server(UDP_PORT), N, 200, &progress)
        .expect("every datagram echoed intact");
    assert_eq!(echo.finish(&live.cli).expect("echo server"), N);
    let copies = 2 * u64::from(N) + 1; // and the datagram that ends the echo server
    let st = wait_settled(&mut client, "every copy sent", |st| {
        ["er3", "cap"]
            .iter()
            .all(|t| st.targets[*t].sent_packets == copies && st.targets[*t].queued == 0)
    });
    window.close();
    assert_eq!(st.sessions["udp"].mirrored, copies);
    for name in ["er3", "cap"] {
        assert_reconciles(name, &st.targets[name]);
        assert_eq!(st.targets[name].dropped_total(), 0, "{name}");
    }
    daemon.stop(Duration::from_secs(10)).expect("clean exit");

    // The pcapng records, by (datagram, leaving the server): each in the
    // window, with its direction.
    let records = read_pcapng(&live.dir.path().join("live.pcapng"));
    assert_eq!(records.len() as u64, copies);
    let mut stamped: BTreeMap<(Vec<u8>, bool), u64> = BTreeMap::new();
    for r in &records {
        let (sport, _, _, payload) = ports_payload(&r.data).expect("UDP");
        let leaving = sport == UDP_PORT;
        window.assert_holds("a pcapng record", r.ts_ns);
        assert_eq!(r.outbound, Some(leaving), "pcapng direction");
        let again = stamped.insert((payload, leaving), r.ts_ns);
        assert!(again.is_none(), "one copy per datagram and direction");
    }

    // The ERSPAN III copies, in the order sent.
    let mut count: BTreeMap<bool, u32> = BTreeMap::new();
    let mut sequence = 0;
    for f in capture.finish() {
        let Some((dst, 47, gre)) = ipv4_payload(&f) else {
            continue;
        };
        assert_eq!(dst, Ipv4Addr::new(10, 9, 3, 2));
        let d = encap::decode_gre(&gre).expect("a GRE header we wrote");
        let h = d.erspan.expect("an ERSPAN header");
        assert_eq!(
            (h.version, h.session_id, h.granularity),
            (ErspanVersion::Three, 5, Granularity::Micros100)
        );
        assert_eq!(h.sequence, sequence, "consecutive sequence numbers");
        sequence += 1;
        let (sport, dport, _, payload) = ports_payload(&gre[d.payload..]).expect("UDP");
        // An echo leaves the server from the port; a datagram arrives at it.
        let leaving = sport == UDP_PORT;
        assert_eq!(leaving, dport != UDP_PORT);
        let what = format!(
            "ERSPAN III copy {} of a datagram {}",
            h.sequence,
            if leaving {
                "leaving (egress)"
            } else {
                "arriving (ingress)"
            }
        );
        assert_eq!(h.egress, leaving, "{what}: the D bit");
        window.assert_holds_erspan(&what, h.timestamp, 100_000);
        assert_eq!(
            h.timestamp,
            (stamped[&(payload, leaving)] / 100_000) as u32,
            "{what}: the frame's kernel time stamp"
        );
        *count.entry(leaving).or_default() += 1;
    }
    assert_eq!(
        (count.get(&false), count.get(&true)),
        (Some(&(N + 1)), Some(&N)),
        "every datagram arriving and every echo leaving"
    );
}

/// Runs a UDP exchange while the daemon is SIGKILLed, then restarted: no
/// datagram is lost, nothing stays attached after the kill, and the new
/// daemon attaches exactly once and mirrors.
fn survives_sigkill_and_restart(hook: &str) {
    let live = Live::new(&format!("copy-kill-{hook}"));
    // A NIC receives through NAPI whatever is attached. A veth does only
    // while an XDP program or GRO asks for it: without GRO, the detach at
    // the kill turns s0's NAPI off and the kernel frees the frames still in
    // its ring (`veth_disable_xdp`), a datagram now and then lost to veth,
    // not to mirror. GRO on keeps s0's NAPI across the kill, as a NIC's.
    lab::gro_on(&live.srv, "s0").expect("GRO on s0");
    let capture = live.dir.path().join("live.pcapng");
    let text = live.config(
        &format!("ingress_hook = \"{hook}\""),
        &capture.to_string_lossy(),
    );
    let (daemon, _) = common::start_daemon(BIN, &live.srv, &live.dir, &text);
    let attached = live.attached();
    let ingress_hooks = attached.xdp.len() + attached.tcx_ingress.len();
    assert_eq!(
        (ingress_hooks, attached.tcx_egress.len()),
        (1, 1),
        "{attached:?}"
    );

    // Runs until told to stop (bounded by N), across the kill and the restart.
    const N: u32 = 1_000_000;
    let echo = EchoServer::start(&live.srv, server(UDP_PORT)).expect("echo server");
    let progress = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let exchange = {
        let (cli, p, s) = (
            Netns::attach(live.cli.name()),
            progress.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            stream::udp_exchange_until(&cli, server(UDP_PORT), N, 100, &p, &s)
        })
    };
    let mut exchange = Some(exchange);
    let mut wait_progress = |n: u32| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while progress.load(Ordering::Relaxed) < n {
            if exchange.as_ref().is_some_and(|h| h.is_finished()) {
                let result = exchange.take().map(|h| h.join());
                panic!("the exchange stopped early: {result:?}");
            }
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_progress(1000);
    daemon.signal(libc::SIGKILL);
    let mut daemon = daemon;
    daemon
        .wait(Duration::from_secs(10))
        .expect("the daemon dies");
    // The links died with the process: nothing of mirror is left on s0.
    assert_eq!(
        live.attached(),
        kernel::Attached::default(),
        "fail-open detach"
    );
    let at_kill = progress.load(Ordering::Relaxed);
    wait_progress(at_kill + 1000);

    // A new daemon takes over while the traffic flows.
    let (restarted, _) = common::start_daemon(BIN, &live.srv, &live.dir, &text);
    let attached = live.attached();
    let ingress_hooks = attached.xdp.len() + attached.tcx_ingress.len();
    assert_eq!(
        (ingress_hooks, attached.tcx_egress.len()),
        (1, 1),
        "no duplicate programs: {attached:?}"
    );
    let mut client = Client::connect(&restarted.control).expect("control socket");
    wait_for(&mut client, "the new daemon mirroring", |st| {
        st.sessions["udp"].mirrored >= 2000
    });
    stop.store(true, Ordering::Relaxed);
    let done = exchange
        .take()
        .expect("exchange running")
        .join()
        .expect("exchange thread")
        .expect("no datagram lost while the daemon was killed and restarted");
    assert!(done > at_kill + 1000 && done < N, "{done}");
    assert_eq!(echo.finish(&live.cli).expect("echo server"), done);
    drop(restarted);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn sigkill_mid_stream_loses_nothing_and_a_restart_takes_over_xdp() {
    require_root!();
    let _serial = one_at_a_time();
    survives_sigkill_and_restart("xdp");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn sigkill_mid_stream_loses_nothing_and_a_restart_takes_over_tc() {
    require_root!();
    let _serial = one_at_a_time();
    survives_sigkill_and_restart("tc");
}

/// A FIFO nobody reads: a capture target whose writes block for good once
/// the pipe is full. The read end is held (non-blocking) so the daemon can
/// open it; [`BlockedFifo::drain`] empties it until the daemon closes it.
struct BlockedFifo {
    path: std::path::PathBuf,
    reader: std::fs::File,
}

impl BlockedFifo {
    fn new(path: std::path::PathBuf) -> BlockedFifo {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::OpenOptionsExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // Safety: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("open the FIFO's read end");
        BlockedFifo { path, reader }
    }

    /// Reads until the writer closes (bounded by `timeout`); returns the bytes.
    fn drain(mut self, timeout: Duration) -> std::thread::JoinHandle<usize> {
        use std::io::Read;
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            let (mut total, mut buf) = (0, vec![0u8; 1 << 16]);
            while Instant::now() < deadline {
                match self.reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("reading {}: {e}", self.path.display()),
                }
            }
            total
        })
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_blocked_target_loses_only_its_own_copies_and_never_the_traffic() {
    require_root!();
    let _serial = one_at_a_time();
    let live = Live::new("copy-blocked");
    let fifo = BlockedFifo::new(live.dir.path().join("blocked.pcapng"));
    // The capture target's writer blocks on the FIFO; its queue holds 64.
    let text = live
        .config("", &fifo.path.to_string_lossy())
        .replace("kind = \"pcapng\"", "kind = \"pcapng\"\nqueue_size = 64");
    let (mut daemon, _) = common::start_daemon(BIN, &live.srv, &live.dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");

    // 10,001 copies of ~240 bytes: far more than the writer's 1 MiB buffer,
    // the 64 KiB pipe and the queue together.
    const N: u32 = 5000;
    let echo = EchoServer::start(&live.srv, server(UDP_PORT)).expect("echo server");
    let progress = AtomicU32::new(0);
    stream::udp_exchange(&live.cli, server(UDP_PORT), N, 200, &progress)
        .expect("every datagram echoed while the target is blocked");
    assert_eq!(echo.finish(&live.cli).expect("echo server"), N);
    let data = payload_data(2 << 20);
    live.paced_stream_arrives_untouched(&data);

    let st = wait_settled(&mut client, "the interface target idle", |st| {
        let ids = &st.targets["ids"];
        ids.queued == 0 && ids.enqueued == st.sources["live"].mirrored
    });
    let src = &st.sources["live"];
    assert_eq!(src.dropped_total(), 0, "{src:#?}");
    assert_eq!(st.sessions["udp"].mirrored, 2 * u64::from(N) + 1);
    // The blocked target dropped its own copies...
    let cap = &st.targets["cap"];
    assert!(cap.dropped["queue_full"] > 0, "{cap:?}");
    assert_eq!(cap.enqueued, src.mirrored);
    assert_eq!(
        cap.enqueued,
        cap.sent_packets + cap.dropped_total() + cap.queued,
        "{cap:?}"
    );
    // ...and the other target lost none.
    let ids = &st.targets["ids"];
    assert_reconciles("ids", ids);
    assert_eq!(ids.dropped_total(), 0, "{ids:?}");
    assert_eq!(ids.sent_packets, src.mirrored);

    // Unblock the writer so the daemon can flush and exit cleanly.
    let drained = fifo.drain(Duration::from_secs(20));
    daemon.stop(Duration::from_secs(15)).expect("clean exit");
    assert!(drained.join().expect("drain thread") > 0);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_full_ring_is_counted_and_the_stream_is_untouched() {
    require_root!();
    let _serial = one_at_a_time();
    let live = Live::new("copy-ring");
    let capture = live.dir.path().join("live.pcapng");
    // One page: two full-size copies.
    let text = live.config("ring_buffer = \"4KiB\"", &capture.to_string_lossy());
    let (_daemon, _) = common::start_daemon(BIN, &live.srv, &live.dir, &text);
    let mut client = Client::connect(&_daemon.control).expect("control socket");
    let data = payload_data(4 << 20);
    live.paced_stream_arrives_untouched(&data);
    let st = wait_settled(&mut client, "every copy delivered", |st| {
        let src = &st.sources["live"];
        ["cap", "ids"].iter().all(|t| {
            let t = &st.targets[*t];
            t.queued == 0 && t.enqueued == src.mirrored
        })
    });
    let src = &st.sources["live"];
    let ring_full = src.dropped["ring_full"];
    assert!(
        ring_full > 0,
        "a one-page ring overflows under a TCP burst: {src:#?}"
    );
    assert_eq!(src.matched, src.mirrored + src.dropped_total());
    assert_eq!(src.dropped_total(), ring_full);
    let (i, e) = (&src.directions["ingress"], &src.directions["egress"]);
    assert_eq!(i.ring_full + e.ring_full, ring_full);
    assert_eq!(i.copied + e.copied, src.mirrored);
    for name in ["cap", "ids"] {
        let t = &st.targets[name];
        assert_reconciles(name, t);
        assert_eq!(t.sent_packets, src.mirrored, "{name}: {t:?}");
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_second_xdp_program_is_refused_by_name_and_tc_ingress_runs_beside_it() {
    require_root!();
    let _serial = one_at_a_time();
    let live = Live::new("copy-coexist");
    let capture = live.dir.path().join("first.pcapng");
    let (first, _) = common::start_daemon(
        BIN,
        &live.srv,
        &live.dir,
        &live.config("", &capture.to_string_lossy()),
    );
    // A second daemon on the same interface, capture only.
    let second_text = |hook: &str, dir: &TempDir| {
        live.config(hook, &dir.path().join("second.pcapng").to_string_lossy())
            .replace(
                "[[target]]\nname = \"ids\"\nkind = \"interface\"\ninterface = \"tgt0\"\nqueue_size = 16384   # absorbs a TCP burst while a loaded CI box starves the sender\n",
                "",
            )
            .replace("targets = [\"cap\", \"ids\"]", "targets = [\"cap\"]")
    };
    let dir_b = TempDir::new("copy-coexist-b").expect("temp dir");
    // Its own control socket, the one waited for below: with the
    // placeholder left in, it would take a relative `@CONTROL@` in the
    // test's directory, which another daemon may hold (it once failed with
    // "another mirror daemon answers on @CONTROL@" before its XDP attach).
    let control_b = dir_b.path().join("control.sock");
    let text = second_text("", &dir_b).replace("@CONTROL@", &control_b.to_string_lossy());
    std::fs::write(dir_b.path().join("mirror.toml"), &text).expect("config");
    let refused = lab::DaemonProcess::start(
        &live.srv,
        std::path::Path::new(BIN),
        &dir_b.path().join("mirror.toml"),
        &control_b,
        &dir_b.path().join("daemon.log"),
        Duration::from_secs(20),
    );
    let err = format!(
        "{:#}",
        refused.err().expect("the second XDP attach is refused")
    );
    assert!(err.contains("another XDP program, `xdp_copy`"), "{err}");
    assert!(err.contains("ingress_hook = \"tc\""), "{err}");
    assert_eq!(
        live.attached().xdp.len(),
        1,
        "the first daemon's program stays"
    );

    let dir_c = TempDir::new("copy-coexist-c").expect("temp dir");
    let (second, _) = common::start_daemon(
        BIN,
        &live.srv,
        &dir_c,
        &second_text("ingress_hook = \"tc\"", &dir_c),
    );
    let attached = live.attached();
    assert_eq!(
        (
            attached.xdp.len(),
            attached.tcx_ingress.len(),
            attached.tcx_egress.len()
        ),
        (1, 1, 2),
        "{attached:?}"
    );

    const N: u32 = 500;
    let echo = EchoServer::start(&live.srv, server(UDP_PORT)).expect("echo server");
    let progress = AtomicU32::new(0);
    stream::udp_exchange(&live.cli, server(UDP_PORT), N, 100, &progress).expect("exchange");
    assert_eq!(echo.finish(&live.cli).expect("echo server"), N);
    // Both daemons see every datagram both ways (and the closing one).
    for d in [&first, &second] {
        let mut client = Client::connect(&d.control).expect("control socket");
        wait_for(&mut client, "every datagram mirrored", |st| {
            st.sessions["udp"].mirrored == 2 * u64::from(N) + 1
        });
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn gso_super_frames_are_cut_counted_and_too_big_for_interface_targets() {
    require_root!();
    let _serial = one_at_a_time();
    // Without XDP on s0 the client's veth keeps TSO, so tcx ingress sees
    // the stack's GSO super-frames (up to 64 KiB), as tcpdump would.
    let live = Live::new("copy-gso");
    let capture = live.dir.path().join("live.pcapng");
    let text = live.config("ingress_hook = \"tc\"", &capture.to_string_lossy());
    let (mut daemon, _) = common::start_daemon(BIN, &live.srv, &live.dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let data = payload_data(4 << 20);
    // Intact, but not retransmit-free: veth without XDP delivers through the
    // per-CPU backlog, which overflows under GSO bursts with or without mirror.
    let tcp = stream::tcp_transfer(&live.cli, &live.srv, server(TCP_PORT), &data)
        .expect("the TCP stream arrives intact");
    assert_eq!(tcp.bytes, data.len());
    let st = wait_settled(&mut client, "every copy accounted for", |st| {
        let src = &st.sources["live"];
        ["cap", "ids"].iter().all(|t| {
            let t = &st.targets[*t];
            t.queued == 0 && t.enqueued == src.mirrored
        })
    });
    daemon.stop(Duration::from_secs(10)).expect("clean exit");
    let src = &st.sources["live"];
    let (i, e) = (&src.directions["ingress"], &src.directions["egress"]);
    let cut = i.copy_cut + e.copy_cut;
    assert!(
        i.copy_cut > 0,
        "super-frames over 9,216 bytes arrived: {src:#?}"
    );
    assert_eq!(src.dropped_total(), 0);
    assert_eq!(src.mirrored, i.copied + e.copied);

    let records = read_pcapng(&capture);
    assert_eq!(records.len() as u64, src.mirrored);
    // The kernel cuts copies of frames over COPY_MAX (copy_cut); the pcapng
    // target then cuts what exceeds its SNAPLEN (its own `truncated`).
    let max = mirror_ebpf::limits::COPY_MAX as usize;
    let over_max = records.iter().filter(|r| r.orig_len as usize > max).count() as u64;
    assert_eq!(
        over_max, cut,
        "every frame over COPY_MAX is counted copy_cut"
    );
    let snaplen = mirror_user::target::pcapng::SNAPLEN;
    let short: Vec<&Record> = records
        .iter()
        .filter(|r| r.data.len() < r.orig_len as usize)
        .collect();
    assert_eq!(short.len() as u64, st.targets["cap"].truncated);
    assert!(short.iter().all(|r| r.data.len() == snaplen));
    // The interface target cannot send more than tgt0's MTU + Ethernet + one tag.
    let over_mtu = records
        .iter()
        .filter(|r| r.orig_len as usize > 1500 + 14 + 4)
        .count() as u64;
    let ids = &st.targets["ids"];
    assert!(over_mtu >= cut);
    assert_eq!(ids.dropped["too_big"], over_mtu, "{ids:?}");
    assert_eq!(ids.sent_packets + over_mtu, src.mirrored);
    assert_reconciles("ids", ids);
    assert_reconciles("cap", &st.targets["cap"]);
    assert_eq!(st.targets["cap"].sent_packets, src.mirrored);
}

// ------------------------------------------------ copy mode's kernel path

/// A routed copy-mode lab: a generator, a router whose port toward it is
/// the monitored interface, a sink behind the router's second port, and two
/// collectors behind the router's target ports.
///
/// ```text
///  ns gen             ns rtr (mirror runs here, ip_forward=1)        ns sink
///  g0 10.31.1.1 ──veth── m0 10.31.1.2 [copy]   o0 10.31.2.2 ──veth── k0 10.31.2.1
///                        tgt0 ──veth── col0 (ns col)
///                        tgt1 ──veth── col1 (ns col)
/// ```
///
/// Frames are built by hand, with permanent neighbours everywhere, so the
/// only frames that cross m0 are the test's own.
struct Routed {
    gen: Netns,
    rtr: Netns,
    sink: Netns,
    col: Netns,
    dir: TempDir,
}

const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0x31, 0, 1];
const MON_MAC: [u8; 6] = [0x02, 0, 0, 0x31, 0, 2];
const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0x32, 0, 2];
const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0x32, 0, 1];
const GEN_IP: [u8; 4] = [10, 31, 1, 1];
const SINK_IP: [u8; 4] = [10, 31, 2, 1];
/// UDP port of the frames the generator sends to the sink (ingress on m0).
const TO_SINK: u16 = 7000;
/// UDP port of the frames the sink sends to the generator (egress on m0).
const TO_GEN: u16 = 7001;

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

impl Routed {
    fn new(tag: &str) -> Routed {
        let r = Routed {
            gen: Netns::new("gen").expect("netns"),
            rtr: Netns::new("rtr").expect("netns"),
            sink: Netns::new("sink").expect("netns"),
            col: Netns::new("col").expect("netns"),
            dir: TempDir::new(tag).expect("temp dir"),
        };
        lab::wire(&r.gen, "g0", "10.31.1.1", &r.rtr, "m0", "10.31.1.2", 1500).expect("veth");
        lab::wire(&r.rtr, "o0", "10.31.2.2", &r.sink, "k0", "10.31.2.1", 1500).expect("veth");
        lab::veth(&r.rtr, "tgt0", &r.col, "col0", 1).expect("veth");
        lab::veth(&r.rtr, "tgt1", &r.col, "col1", 1).expect("veth");
        for (ns, dev, m) in [
            (&r.gen, "g0", GEN_MAC),
            (&r.rtr, "m0", MON_MAC),
            (&r.rtr, "o0", OUT_MAC),
            (&r.sink, "k0", SINK_MAC),
        ] {
            ns.ip(&["link", "set", dev, "address", &mac(m)])
                .expect("set MAC");
        }
        r.gen
            .ip(&["route", "add", "10.31.2.0/24", "via", "10.31.1.2"])
            .expect("route");
        r.sink
            .ip(&["route", "add", "10.31.1.0/24", "via", "10.31.2.2"])
            .expect("route");
        for (ns, ip, m, dev) in [
            (&r.rtr, "10.31.1.1", GEN_MAC, "m0"),
            (&r.rtr, "10.31.2.1", SINK_MAC, "o0"),
            (&r.gen, "10.31.1.2", MON_MAC, "g0"),
            (&r.sink, "10.31.2.2", OUT_MAC, "k0"),
        ] {
            ns.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .expect("permanent neighbour");
        }
        r.rtr
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .expect("ip_forward");
        r
    }

    /// What is attached to the monitored interface right now.
    fn attached(&self) -> kernel::Attached {
        self.rtr
            .run(|| Ok(kernel::attached("m0")?))
            .expect("querying m0")
    }
}

/// Frame `seq` of a direction: UDP from the generator to the sink (`to_sink`,
/// addressed to the router's m0) or back (addressed to its o0), carrying the
/// lab marker and sequence number, `size` bytes in all.
fn routed_frame(to_sink: bool, seq: u32, size: usize) -> Vec<u8> {
    let (smac, dmac, sip, dip, dport) = if to_sink {
        (GEN_MAC, MON_MAC, GEN_IP, SINK_IP, TO_SINK)
    } else {
        (SINK_MAC, OUT_MAC, SINK_IP, GEN_IP, TO_GEN)
    };
    let mut payload = lab::traffic::MARKER.to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.resize(size - 14 - 20 - 8, (seq % 251) as u8);
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(sip, dip, 64)
        .udp(40000, dport);
    let mut out = Vec::with_capacity(size);
    b.write(&mut out, &payload).expect("write a frame");
    out
}

/// Frame sizes cycled through: small to full-size.
const ROUTED_SIZES: [usize; 5] = [64, 200, 577, 1000, 1514];

/// Receives UDP datagrams on `addr` in `ns` until `n` arrived (or 10 s of
/// silence); returns their payloads in arrival order.
fn udp_sink(ns: &Netns, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let sock = ns
        .run(move || Ok(std::net::UdpSocket::bind(addr)?))
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Large enough for every datagram of a test even if it is read late.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let size: libc::c_int = 8 << 20;
    // Safety: a valid socket and an int option that outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    std::thread::spawn(move || {
        let (mut got, mut buf) = (Vec::new(), vec![0u8; 2048]);
        while got.len() < n {
            match sock.recv(&mut buf) {
                Ok(k) => got.push(buf[..k].to_vec()),
                Err(_) => break,
            }
        }
        got
    })
}

const ROUTED: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "mon"
interface = "m0"
mode = "copy"
direction = "both"
@SOURCE@

[[filter]]
name = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "7000"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"
destination_port = "7001"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "ids1"
kind = "interface"
interface = "tgt1"

[[session]]
name = "clone"
source = "mon"
filter = "udp"
targets = ["ids0", "ids1"]
@SESSION@
"#;

/// The monitored port's IPv4 header and UDP datagram as forwarded: the same
/// bytes as sent but for the TTL (one less) and the header checksum.
fn forwarded_unchanged(sent: &[u8], forwarded: &[u8]) -> bool {
    if sent.len() != forwarded.len() || forwarded[14 + 8] != sent[14 + 8] - 1 {
        return false;
    }
    let strip = |f: &[u8]| {
        let mut ip = f[14..].to_vec();
        ip[8] = 0;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip
    };
    strip(sent) == strip(forwarded)
}

/// A copy-mode session whose targets are all interfaces is served in the
/// kernel: tcx clones every frame it mirrors, in both directions, to both
/// target ports, byte for byte, while every production frame is routed on
/// unchanged; nothing crosses the ring buffer, every counter reconciles
/// exactly, ingress is hooked at tcx by `ingress_hook = "auto"`, and a
/// SIGKILLed daemon leaves no program on the interface and the traffic
/// flowing.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_sessions_to_interfaces_clone_in_the_kernel_both_ways_and_fail_open() {
    require_root!();
    let _serial = one_at_a_time();
    let r = Routed::new("copy-clone");
    let text = ROUTED
        .replace("@SOURCE@", "")
        .replace("@SESSION@", "path = \"kernel\"");
    let (mut daemon, _) = common::start_daemon(BIN, &r.rtr, &r.dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let attached = r.attached();
    assert_eq!(
        (
            attached.xdp.len(),
            attached.tcx_ingress.len(),
            attached.tcx_egress.len()
        ),
        (0, 1, 1),
        "ingress_hook = \"auto\" hooks ingress at tcx for a cloning session: {attached:?}"
    );

    const N: u32 = 1000;
    let to_sink: Vec<Vec<u8>> = (0..N)
        .map(|i| routed_frame(true, i, ROUTED_SIZES[i as usize % ROUTED_SIZES.len()]))
        .collect();
    let to_gen: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            routed_frame(
                false,
                i,
                ROUTED_SIZES[(i as usize + 2) % ROUTED_SIZES.len()],
            )
        })
        .collect();
    let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), N as usize);
    let gen_rx = udp_sink(&r.gen, SocketAddr::from((GEN_IP, TO_GEN)), N as usize);
    let caps: Vec<Capture> = ["col0", "col1"]
        .iter()
        .map(|d| Capture::start(&r.col, d).expect("capture"))
        .collect();
    let at_sink = Capture::start(&r.sink, "k0").expect("capture k0");
    let at_gen = Capture::start(&r.gen, "g0").expect("capture g0");
    // Paced: the veths' per-CPU backlog, not mirror, would drop a burst.
    let sent = lab::send_frames(&r.gen, "g0", Arc::new(to_sink.clone()), 5_000).expect("send");
    assert_eq!(sent, u64::from(N));
    let sent = lab::send_frames(&r.sink, "k0", Arc::new(to_gen.clone()), 5_000).expect("send");
    assert_eq!(sent, u64::from(N));

    let st = wait_settled(&mut client, "every frame cloned to both targets", |st| {
        ["ids0", "ids1"]
            .iter()
            .all(|t| st.targets[*t].sent_packets == 2 * u64::from(N))
    });
    // Production: every frame routed on, its datagram unchanged.
    let datagram = |f: &[u8]| f[14 + 20 + 8..].to_vec();
    let got = sink_rx.join().expect("sink reader");
    assert_eq!(
        got,
        to_sink.iter().map(|f| datagram(f)).collect::<Vec<_>>(),
        "the sink got every datagram, in order, unchanged"
    );
    let got = gen_rx.join().expect("generator reader");
    assert_eq!(
        got,
        to_gen.iter().map(|f| datagram(f)).collect::<Vec<_>>(),
        "the generator got every datagram back, in order, unchanged"
    );
    let forwarded_in = at_sink.finish();
    let forwarded_out = at_gen.finish();
    assert_eq!(forwarded_in.len(), N as usize, "frames at k0");
    assert_eq!(forwarded_out.len(), N as usize, "frames at g0");
    for (sent, fwd) in to_sink.iter().zip(&forwarded_in) {
        assert!(forwarded_unchanged(sent, fwd), "routed on unchanged");
    }
    for (sent, fwd) in to_gen.iter().zip(&forwarded_out) {
        assert!(forwarded_unchanged(sent, fwd), "routed back unchanged");
    }

    // The copies: at each target's far end, exactly the frames as m0 saw
    // them (arriving as sent; leaving as routed out), each once.
    let mut want: Vec<Vec<u8>> = to_sink.iter().chain(&forwarded_out).cloned().collect();
    want.sort();
    for (name, cap) in ["col0", "col1"].iter().zip(caps) {
        let mut have = cap.finish();
        have.sort();
        assert_eq!(have.len(), want.len(), "copies at {name}");
        assert!(have == want, "{name}: every copy byte-identical, each once");
    }

    let src = &st.sources["mon"];
    assert_source_reconciles("mon", src);
    assert_eq!(src.xdp_mode, "tcx");
    assert_eq!(src.matched, 2 * u64::from(N));
    assert_eq!(src.mirrored, 2 * u64::from(N));
    assert_eq!(src.dropped_total(), 0, "{src:#?}");
    for (dir, d) in &src.directions {
        assert_eq!(d.received, d.matched + d.filtered, "{dir}");
        assert_eq!(
            (d.matched, d.cloned, d.copied, d.ring_full),
            (u64::from(N), u64::from(N), 0, 0),
            "{dir}: every match cloned, none through the ring"
        );
    }
    let sess = &st.sessions["clone"];
    assert_eq!(sess.path, "kernel");
    assert_eq!(
        (sess.matched, sess.mirrored),
        (2 * u64::from(N), 2 * u64::from(N))
    );
    let bytes: u64 = to_sink.iter().chain(&to_gen).map(|f| f.len() as u64).sum();
    for name in ["ids0", "ids1"] {
        let t = &st.targets[name];
        assert_reconciles(name, t);
        assert_eq!(t.enqueued, 2 * u64::from(N), "{name}");
        assert_eq!(t.dropped_total(), 0, "{name}: {t:?}");
        assert_eq!(t.kernel_path, t.sent_packets, "{name}: all in the kernel");
        assert_eq!(t.sent_bytes, bytes, "{name}");
    }
    let log = daemon.log_text();
    assert!(
        log.contains("ingress_hook = \"auto\": ingress at tcx")
            && log.contains("session served in the kernel: tcx clones"),
        "the log says where ingress is hooked and why, and the path:\n{log}"
    );

    // One target's far end goes down: its device would discard clones
    // while the kernel reports them sent, so they are counted `down` and
    // not made; the other target is not held back.
    r.col
        .ip(&["link", "set", "col1", "down"])
        .expect("col1 down");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log_text()
        .contains("kernel-path target down (or gone)")
    {
        assert!(Instant::now() < deadline, "no down: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let more: Vec<Vec<u8>> = (N..N + 100).map(|i| routed_frame(true, i, 300)).collect();
    let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), 100);
    lab::send_frames(&r.gen, "g0", Arc::new(more), 5_000).expect("send");
    assert_eq!(sink_rx.join().expect("sink reader").len(), 100);
    let st = wait_settled(&mut client, "100 more clones accounted", |st| {
        st.targets["ids0"].sent_packets == 2 * u64::from(N) + 100
            && st.targets["ids1"].dropped.get("down") == Some(&100)
    });
    for name in ["ids0", "ids1"] {
        assert_reconciles(name, &st.targets[name]);
        assert_eq!(st.targets[name].enqueued, 2 * u64::from(N) + 100);
    }
    assert_eq!(st.targets["ids1"].sent_packets, 2 * u64::from(N));
    assert_eq!(st.targets["ids1"].dropped_total(), 100);
    assert_source_reconciles("mon", &st.sources["mon"]);

    // SIGKILL: the links die with the daemon; nothing stays on m0, and the
    // traffic flows on, no longer cloned.
    daemon.signal(libc::SIGKILL);
    daemon
        .wait(Duration::from_secs(10))
        .expect("the daemon dies");
    assert_eq!(
        r.attached(),
        kernel::Attached::default(),
        "fail-open detach"
    );
    let caps: Vec<Capture> = ["col0", "col1"]
        .iter()
        .map(|d| Capture::start(&r.col, d).expect("capture"))
        .collect();
    let after: Vec<Vec<u8>> = (N + 100..N + 200)
        .map(|i| routed_frame(true, i, 200))
        .collect();
    let sink_rx = udp_sink(&r.sink, SocketAddr::from((SINK_IP, TO_SINK)), 100);
    lab::send_frames(&r.gen, "g0", Arc::new(after), 5_000).expect("send");
    assert_eq!(sink_rx.join().expect("sink reader").len(), 100);
    for cap in caps {
        assert!(cap.finish().is_empty(), "no clone without the daemon");
    }
}

/// Copy-mode config of the client/server lab with one kernel-path session
/// for the TCP stream, both ways, to the interface target alone.
const TCP_CLONE: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "s0"
mode = "copy"
direction = "both"

[[filter]]
name = "tcp"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "tcp"
destination_port = "5001"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "tcp"
source_port = "5001"

[[target]]
name = "ids"
kind = "interface"
interface = "tgt0"

[[session]]
name = "tcp"
source = "live"
filter = "tcp"
targets = ["ids"]
path = "kernel"
"#;

/// (IPv4 total length, TCP payload) of a TCP over IPv4 frame.
fn tcp_frame(frame: &[u8]) -> Option<(usize, u32, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let total = match p.net.as_ref()? {
        etherparse::NetSlice::Ipv4(ip) => ip.header().total_len() as usize,
        _ => return None,
    };
    match p.transport? {
        etherparse::TransportSlice::Tcp(t) => {
            Some((total, t.sequence_number(), t.payload().to_vec()))
        }
        _ => None,
    }
}

/// The kernel path clones GSO super-frames whole: with TSO and GSO on the
/// monitored veth's link, a TCP stream's client-to-server super-frames
/// (tcx ingress) reach the target's far end as they were, never cut, and
/// their payload is every byte of the stream exactly once; the stream
/// itself arrives intact with no retransmission.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn gso_super_frames_are_cloned_whole_and_the_target_gets_every_byte() {
    require_root!();
    let _serial = one_at_a_time();
    let live = Live::new("copy-clone-gso");
    for (ns, dev) in [(&live.cli, "c0"), (&live.srv, "s0")] {
        let dev = dev.to_string();
        ns.run(move || {
            mirror_user::kernel::netdev::set_tso(&dev, true)
                .ok_or_else(|| anyhow::anyhow!("TSO on {dev}"))
        })
        .expect("TSO on");
    }
    let (mut daemon, _) = common::start_daemon(BIN, &live.srv, &live.dir, TCP_CLONE);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let seen = Capture::start(&live.srv, "s0").expect("capture s0");
    let copies = Capture::start(&live.sink, "sink0").expect("capture sink0");
    let data = payload_data(8 << 20);
    live.paced_stream_arrives_untouched(&data);
    let st = wait_settled(&mut client, "every clone counted", |st| {
        let t = &st.targets["ids"];
        t.enqueued > 0 && t.enqueued == t.sent_packets + t.dropped_total()
    });
    daemon.stop(Duration::from_secs(10)).expect("clean exit");

    let src = &st.sources["live"];
    assert_source_reconciles("live", src);
    assert_eq!(src.dropped_total(), 0, "{src:#?}");
    let (i, e) = (&src.directions["ingress"], &src.directions["egress"]);
    assert_eq!(
        (i.copied, e.copied, i.copy_cut),
        (0, 0, 0),
        "no ring record"
    );
    assert_eq!(i.cloned, i.matched);
    assert_eq!(e.cloned, e.matched);
    assert_eq!(st.sessions["tcp"].path, "kernel");
    let ids = &st.targets["ids"];
    assert_reconciles("ids", ids);
    assert_eq!(ids.dropped_total(), 0, "{ids:?}");
    assert_eq!(ids.sent_packets, i.cloned + e.cloned);

    // What s0 received of the stream, and what reached the target's far end.
    let to_server = |f: &Vec<u8>| ports_payload(f).is_some_and(|p| p.1 == TCP_PORT);
    let mut seen: Vec<Vec<u8>> = seen.finish().into_iter().filter(to_server).collect();
    let copies = copies.finish();
    let mut cloned_in: Vec<Vec<u8>> = copies.iter().filter(|f| to_server(f)).cloned().collect();
    assert_eq!(
        cloned_in.len() as u64,
        i.cloned,
        "every ingress clone arrived"
    );
    assert_eq!(copies.len() as u64, ids.sent_packets, "every clone arrived");
    let super_frames = cloned_in.iter().filter(|f| f.len() > 1514).count();
    assert!(
        super_frames > 0,
        "GSO super-frames crossed s0 and were cloned: {} frames",
        cloned_in.len()
    );
    let mut payload_bytes = 0;
    for f in &cloned_in {
        let (total, _, payload) = tcp_frame(f).expect("TCP over IPv4");
        assert_eq!(total + 14, f.len(), "a clone is the whole frame, never cut");
        payload_bytes += payload.len();
    }
    assert_eq!(
        payload_bytes,
        data.len(),
        "the target got every byte of the stream exactly once"
    );
    let records: Vec<Record> = cloned_in
        .iter()
        .map(|f| Record {
            ts_ns: 0,
            orig_len: f.len() as u32,
            data: f.clone(),
            outbound: Some(false),
        })
        .collect();
    assert_eq!(
        reassemble(&records.iter().collect::<Vec<_>>()),
        data,
        "the cloned segments rebuild the stream"
    );
    seen.sort();
    cloned_in.sort();
    assert!(
        seen == cloned_in,
        "each clone is byte-identical to a frame s0 received ({} seen, {} cloned)",
        seen.len(),
        cloned_in.len()
    );
}
