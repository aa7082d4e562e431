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

use common::{assert_reconciles, ipv4_payload, read_pcapng, wait_for, Record, Window};
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
    /// [`PACED_TCP`]: it must arrive whole and byte-identical with no
    /// segment retransmitted.
    fn paced_stream_arrives_untouched(&self, data: &[u8]) {
        let tcp = stream::tcp_transfer_paced(
            &self.cli,
            &self.srv,
            server(TCP_PORT),
            data,
            Some(PACED_TCP),
        )
        .expect("the TCP stream arrives intact");
        assert_eq!(tcp.bytes, data.len());
        assert_eq!(
            tcp.retransmits, 0,
            "no segment of the monitored stream was lost"
        );
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
/// interface needs no retransmission. Run on two cores alongside the other
/// tests' streams and daemons, the veths' receive rings sometimes overflow
/// from CPU starvation alone (the kernel drops, not mirror: it only ever
/// passes frames), so the tests of this file run one at a time, and those
/// streams are paced.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The streams that must see no retransmission are paced to 200 Mbit/s:
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
        src.mirrored + src.sampled_out + src.dropped_total()
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
    let text = second_text("", &dir_b);
    std::fs::write(dir_b.path().join("mirror.toml"), &text).expect("config");
    let refused = lab::DaemonProcess::start(
        &live.srv,
        std::path::Path::new(BIN),
        &dir_b.path().join("mirror.toml"),
        &dir_b.path().join("control.sock"),
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
