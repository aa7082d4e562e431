//! End to end, in network namespaces: the in-kernel fast path. A tap session
//! whose targets are all interfaces that take XDP frames is served by a
//! DEVMAP broadcast in the kernel (one clone per target, no userspace copy);
//! other sessions of the same source still go through AF_XDP. Counted per
//! session and per target exactly like the userspace path, in native and in
//! generic XDP; `path = "userspace"` keeps a session off it.

mod common;

use common::{assert_reconciles, read_pcapng, wait_for, wait_log};

use std::sync::Arc;
use std::time::Duration;

use mirror_user::config::Direction;
use mirror_user::control::Client;
use mirror_user::filter::classify;
use mirror_user::lab::{self, traffic, Capture, DaemonProcess, Lab, Netns, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

/// Two interface targets for the IDS session (fast path), and SSH, which
/// the IDS filter rejects, to a pcapng file by a second session (userspace).
const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
umem_frames = 2048
ring_size = 1024
@FILTER@
[[filter]]
name = "ssh"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "tcp"
destination_port = "22"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "ids1"
kind = "interface"
interface = "tgt1"

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/ssh.pcapng"

[[session]]
name = "ids-feed"
source = "feed"
filter = "ids"
targets = ["ids0", "ids1"]
priority = 1
@PATH@
[[session]]
name = "ssh-archive"
source = "feed"
filter = "ssh"
targets = ["cap"]
priority = 2
"#;

fn config(path: &str) -> String {
    CONFIG
        .replace("@FILTER@", common::IDS_FILTER)
        .replace("@PATH@", path)
}

/// The standard lab plus a second target port, tgt1 (src) – sink1 (sink).
/// With `gro`, both sink ends have GRO on, so both target veths take XDP
/// frames (as a NIC would).
fn lab(gro: bool) -> Lab {
    let lab = Lab::new(2).expect("lab");
    lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1).expect("second target port");
    if gro {
        for dev in [Lab::SINK_IF, "sink1"] {
            lab::gro_on(&lab.sink, dev).expect("GRO on");
        }
    }
    lab
}

fn start(lab: &Lab, dir: &TempDir, text: &str) -> (DaemonProcess, Client) {
    let (daemon, _) = common::start_daemon(BIN, &lab.src, dir, text);
    let client = Client::connect(&daemon.control).expect("control socket");
    (daemon, client)
}

fn sorted(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = frames.into_iter().collect();
    v.sort_unstable();
    v
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn an_all_interface_session_is_broadcast_in_the_kernel_byte_identical_with_exact_counts() {
    require_root!();
    let lab = lab(true);
    let dir = TempDir::new("e2e-fast").expect("temp dir");
    let (mut daemon, mut client) = start(&lab, &dir, &config(""));
    let caps = [
        Capture::start(&lab.sink, Lab::SINK_IF).expect("capture sink0"),
        Capture::start(&lab.sink, "sink1").expect("capture sink1"),
    ];
    let frames = Arc::new(traffic::mixed(8000));
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 20_000).expect("send");
    assert_eq!(sent, 8000);

    let cfg = mirror_user::config::parse(&config(""), "e2e").expect("valid config");
    let ids = vec![&cfg.filters[0]];
    let ssh = vec![&cfg.filters[1]];
    let expected: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&ids, Direction::Ingress, f).is_some())
        .cloned()
        .collect();
    let archived: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&ids, Direction::Ingress, f).is_none())
        .filter(|f| classify::classify(&ssh, Direction::Ingress, f).is_some())
        .cloned()
        .collect();
    // 3/8 of frames are TCP and 1/4 of those go to port 22; 1/8 are ICMPv6.
    assert_eq!((expected.len(), archived.len()), (8000 - 1750, 750));

    let stats = wait_for(&mut client, "every copy sent", |st| {
        st.sources["feed"].received == sent
            && st.sources["feed"].queued == 0
            && st.targets.values().all(|t| {
                t.queued == 0 && t.enqueued > 0 && t.enqueued == t.sent_packets + t.dropped_total()
            })
    });
    let got: Vec<Vec<Vec<u8>>> = caps.into_iter().map(Capture::finish).collect();

    let src = &stats.sources["feed"];
    assert_eq!(src.received, 8000);
    assert_eq!(src.matched, 8000 - 1000, "all but ICMPv6");
    assert_eq!(src.mirrored, src.matched);
    assert_eq!(src.dropped_total(), 0, "{:?}", src.dropped);
    common::assert_source_reconciles("feed", src);

    let fast = &stats.sessions["ids-feed"];
    assert_eq!(fast.path, "kernel");
    assert_eq!(fast.matched, expected.len() as u64);
    assert_eq!(fast.mirrored, fast.matched);
    let slow = &stats.sessions["ssh-archive"];
    assert_eq!(slow.path, "af_xdp", "a pcapng target needs userspace");
    assert_eq!((slow.matched, slow.mirrored), (750, 750));

    let bytes: u64 = expected.iter().map(|f| f.len() as u64).sum();
    for name in ["ids0", "ids1"] {
        let t = &stats.targets[name];
        assert_reconciles(name, t);
        assert_eq!(t.enqueued, expected.len() as u64, "{name}");
        assert_eq!(t.sent_packets, t.enqueued, "{name}: {:?}", t.dropped);
        assert_eq!(
            t.kernel_path, t.sent_packets,
            "{name}: every copy in the kernel"
        );
        assert_eq!(t.sent_bytes, bytes, "{name}");
        assert_eq!(t.shared_umem, 0);
    }
    let cap = &stats.targets["cap"];
    assert_eq!((cap.sent_packets, cap.kernel_path), (750, 0));

    // Both sinks got exactly the accepted frames, byte for byte, nothing else.
    let want = sorted(expected);
    for (i, g) in got.into_iter().enumerate() {
        let have = sorted(g);
        assert_eq!(have.len(), want.len(), "frames at sink{i}");
        assert!(
            have == want,
            "sink{i}'s frames differ from the accepted ones"
        );
    }
    // SSH went through userspace into the file.
    let stopped = daemon.stop(Duration::from_secs(10)).expect("daemon stops");
    assert!(stopped.success());
    let records = read_pcapng(&dir.path().join("ssh.pcapng"));
    let have = sorted(records.into_iter().map(|r| r.data));
    assert!(
        have == sorted(archived),
        "the SSH archive holds the SSH frames"
    );

    let log = daemon.log_text();
    assert!(
        log.contains("session served in the kernel")
            && log.contains("is a pcapng target, written by userspace"),
        "the log names each session's path, and why userspace:\n{log}"
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn kernel_path_drops_are_counted_per_target_too_big_and_send_error() {
    require_root!();
    let lab = lab(true);
    // tgt1 is the narrow port: frames over its MTU are skipped by the kernel.
    // It takes 1,018-byte frames (MTU 1000 + Ethernet header + a VLAN tag's
    // room, as the kernel checks) and no longer ones: 100 frames fit
    // exactly, 100 are one byte over, 100 far over.
    lab.src
        .ip(&["link", "set", "tgt1", "mtu", "1000"])
        .expect("mtu");
    let dir = TempDir::new("e2e-fast-drops").expect("temp dir");
    let (_daemon, mut client) = start(&lab, &dir, &config("path = \"kernel\""));
    let cap0 = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture sink0");
    let cap1 = Capture::start(&lab.sink, "sink1").expect("capture sink1");
    let sizes = [1018, 1019, 1200];
    let big: Vec<Vec<u8>> = (0..300)
        .map(|i| traffic::frame(traffic::Shape::Udp4, i, sizes[i as usize / 100]))
        .collect();
    let big_bytes: u64 = big.iter().map(|f| f.len() as u64).sum();
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(big), 10_000).expect("send");
    let stats = wait_for(&mut client, "300 copies accounted on both targets", |st| {
        st.sources["feed"].received == sent
            && ["ids0", "ids1"].iter().all(|n| {
                let t = &st.targets[*n];
                t.enqueued == 300 && t.enqueued == t.sent_packets + t.dropped_total()
            })
    });
    let sess = &stats.sessions["ids-feed"];
    assert_eq!(sess.path, "kernel");
    assert_eq!((sess.matched, sess.mirrored), (300, 300));
    let (wide, narrow) = (&stats.targets["ids0"], &stats.targets["ids1"]);
    assert_reconciles("ids0", wide);
    assert_reconciles("ids1", narrow);
    assert_eq!(wide.sent_packets, 300, "{:?}", wide.dropped);
    assert_eq!(narrow.sent_packets, 100, "the frames that fit exactly");
    assert_eq!(
        narrow.dropped["too_big"], 200,
        "exactly the frames over the MTU: {:?}",
        narrow.dropped
    );
    assert_eq!(cap0.finish().len(), 300, "the wide target is not held back");
    let at_narrow = cap1.finish();
    assert_eq!(at_narrow.len(), 100);
    assert!(
        at_narrow.iter().all(|f| f.len() == 1018),
        "only the fitting ones"
    );

    // The sink end of tgt0 goes down: its device refuses every frame, and
    // counts it (`send_error`), until mirror sees the port is not running
    // (within 100 ms) and counts the rest `down`; the other target's
    // counters do not move.
    lab.sink
        .ip(&["link", "set", Lab::SINK_IF, "down"])
        .expect("sink0 down");
    let more: Vec<Vec<u8>> = (300..500)
        .map(|i| traffic::frame(traffic::Shape::Udp4, i, 200))
        .collect();
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(more), 10_000).expect("send");
    let stats = wait_for(&mut client, "200 more copies accounted", |st| {
        st.sources["feed"].received == 500
            && ["ids0", "ids1"].iter().all(|n| {
                let t = &st.targets[*n];
                t.enqueued == 500 && t.enqueued == t.sent_packets + t.dropped_total()
            })
    });
    let (wide, narrow) = (&stats.targets["ids0"], &stats.targets["ids1"]);
    assert_reconciles("ids0", wide);
    assert_reconciles("ids1", narrow);
    assert_eq!(wide.sent_packets, 300, "{:?}", wide.dropped);
    assert_eq!(wide.kernel_path, 300);
    assert_eq!(
        wide.dropped["send_error"] + wide.dropped["down"],
        200,
        "{:?}",
        wide.dropped
    );
    assert_eq!(wide.dropped["too_big"], 0);
    // Bytes handed to the device, refused frames included (documented).
    assert_eq!(wide.sent_bytes, big_bytes + 200 * 200);
    assert_eq!(
        narrow.sent_packets,
        100 + 200,
        "small frames fit the narrow port"
    );
    assert_eq!(narrow.dropped["too_big"], 200);

    // The narrow port's MTU is lowered under the running daemon: once mirror
    // has seen it (within 100 ms), frames over the new bound are counted
    // `too_big` exactly (1000 + 18 takes 1,018 bytes; now 900 + 18).
    lab.src
        .ip(&["link", "set", "tgt1", "mtu", "900"])
        .expect("mtu");
    std::thread::sleep(Duration::from_millis(400));
    let sizes = [918, 919, 1018];
    let more: Vec<Vec<u8>> = (500..800)
        .map(|i| traffic::frame(traffic::Shape::Udp4, i, sizes[(i as usize - 500) / 100]))
        .collect();
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(more), 10_000).expect("send");
    let stats = wait_for(&mut client, "300 more copies accounted", |st| {
        let t = &st.targets["ids1"];
        t.enqueued == 800 && t.enqueued == t.sent_packets + t.dropped_total()
    });
    let narrow = &stats.targets["ids1"];
    assert_reconciles("ids1", narrow);
    assert_eq!(
        narrow.sent_packets,
        300 + 100,
        "only the 918-byte frames fit"
    );
    assert_eq!(narrow.dropped["too_big"], 200 + 200);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_target_that_cannot_take_xdp_frames_keeps_the_session_in_userspace() {
    require_root!();
    // No GRO on the sink ends: the target veths refuse redirected frames.
    let lab = lab(false);
    let dir = TempDir::new("e2e-fast-no").expect("temp dir");
    let (mut daemon, mut client) = start(&lab, &dir, &config(""));
    let cap = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    let frames: Vec<Vec<u8>> = (0..100)
        .map(|i| traffic::frame(traffic::Shape::Udp4, i, 100))
        .collect();
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    let stats = wait_for(&mut client, "100 copies sent", |st| {
        st.targets["ids0"].sent_packets == 100 && st.targets["ids1"].sent_packets == 100
    });
    assert_eq!(stats.sessions["ids-feed"].path, "af_xdp");
    assert_eq!(stats.targets["ids0"].kernel_path, 0);
    assert_eq!(cap.finish().len(), 100);
    daemon.stop(Duration::from_secs(10)).expect("stops");
    let log = daemon.log_text();
    assert!(
        log.contains("does not accept frames redirected by XDP"),
        "the log says why the session is not in the kernel:\n{log}"
    );

    // path = "kernel" makes that an error at start, naming the device.
    let text = config("path = \"kernel\"")
        .replace("@CONTROL@", &dir.path().join("k.sock").to_string_lossy())
        .replace("@DIR@", &dir.path().to_string_lossy());
    let file = dir.path().join("kernel.toml");
    std::fs::write(&file, text).expect("write config");
    let out = run_bounded(&lab.src, &file);
    assert!(!out.status.success(), "path = kernel must refuse to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("path = \"kernel\"") && err.contains("tgt0"),
        "the error names the path and the device: {err}"
    );
}

/// What [`run_ids_mix`] saw.
struct IdsRun {
    stats: mirror_user::dataplane::stats::Stats,
    /// The frames each sink received.
    got: [Vec<Vec<u8>>; 2],
    /// The frames the IDS filter accepts, in order.
    expected: Vec<Vec<u8>>,
}

/// Sends a mix of 2,000 frames through the IDS session (two interface
/// targets) of `text` and waits until every copy is accounted for.
fn run_ids_mix(lab: &Lab, client: &mut Client, text: &str) -> IdsRun {
    let caps = [
        Capture::start(&lab.sink, Lab::SINK_IF).expect("capture sink0"),
        Capture::start(&lab.sink, "sink1").expect("capture sink1"),
    ];
    let frames = Arc::new(traffic::mixed(2000));
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 20_000).expect("send");
    let cfg = mirror_user::config::parse(text, "e2e").expect("valid config");
    let ids = vec![&cfg.filters[0]];
    let expected: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&ids, Direction::Ingress, f).is_some())
        .cloned()
        .collect();
    assert_eq!(expected.len(), 2000 - 189 - 250, "all but SSH and ICMPv6");
    let n = expected.len() as u64;
    // SSH: the second session's, into the pcapng file through AF_XDP.
    let ssh = 189;
    let stats = wait_for(client, "every copy accounted for", |st| {
        st.sources["feed"].received == sent
            && [("ids0", n), ("ids1", n), ("cap", ssh)]
                .iter()
                .all(|(t, want)| {
                    let t = &st.targets[*t];
                    t.queued == 0
                        && t.enqueued == *want
                        && t.enqueued == t.sent_packets + t.dropped_total()
                })
    });
    assert_eq!(
        stats.targets["cap"].sent_packets, ssh,
        "SSH goes through AF_XDP to the file"
    );
    assert_eq!(stats.sessions["ssh-archive"].path, "af_xdp");
    let [a, b] = caps;
    IdsRun {
        stats,
        got: [a.finish(), b.finish()],
        expected,
    }
}

/// Both targets of the IDS session got every accepted frame: counted
/// exactly (`kernel` copies by the fast path, else none), and delivered
/// byte for byte.
fn assert_ids_targets_got_every_frame(run: IdsRun, kernel: bool) {
    let IdsRun {
        stats,
        got,
        expected,
    } = run;
    let n = expected.len() as u64;
    let sess = &stats.sessions["ids-feed"];
    assert_eq!((sess.matched, sess.mirrored), (n, n), "{sess:?}");
    let bytes: u64 = expected.iter().map(|f| f.len() as u64).sum();
    for name in ["ids0", "ids1"] {
        let t = &stats.targets[name];
        assert_reconciles(name, t);
        assert_eq!(
            (t.enqueued, t.sent_packets, t.dropped_total()),
            (n, n, 0),
            "{name}: {t:?}"
        );
        assert_eq!(
            t.kernel_path,
            if kernel { n } else { 0 },
            "{name}: copies sent by the kernel path"
        );
        assert_eq!(t.sent_bytes, bytes, "{name}: bytes");
    }
    let want = sorted(expected);
    for (i, g) in got.into_iter().enumerate() {
        let have = sorted(g);
        assert_eq!(have.len(), want.len(), "frames at sink{i}");
        assert!(
            have == want,
            "sink{i}'s frames differ from the accepted ones"
        );
    }
}

/// `xdp_mode = "generic"`: the program runs in the stack (skb mode), the
/// kernel path still serves the all-interface session, and since generic
/// XDP does not fire the devmap transmit tracepoint, each DEVMAP entry's
/// `xdp_fast_target` counts what it hands each device, bytes included.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn generic_xdp_serves_the_kernel_path_and_counts_each_destination_exactly() {
    require_root!();
    let lab = lab(true);
    let dir = TempDir::new("e2e-fast-generic").expect("temp dir");
    let text = config("").replace(
        "ring_size = 1024\n",
        "ring_size = 1024\nxdp_mode = \"generic\"\n",
    );
    let (mut daemon, mut client) = start(&lab, &dir, &text);
    let run = run_ids_mix(&lab, &mut client, &text);
    assert_eq!(run.stats.sources["feed"].xdp_mode, "generic");
    assert_eq!(run.stats.sessions["ids-feed"].path, "kernel");
    assert_ids_targets_got_every_frame(run, true);

    // `mirror stats` says so, and the program is attached in skb mode.
    let out = common::ctl(BIN, &["stats"], &daemon.control);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(feed0 generic xdp, 2 queue(s)"),
        "mirror stats shows the XDP mode:\n{text}"
    );
    let link = lab
        .src
        .command(&["ip", "-d", "link", "show", "dev", Lab::FEED_IF])
        .output()
        .expect("ip link show");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("xdpgeneric"), "attached in skb mode: {link}");
    daemon.stop(Duration::from_secs(10)).expect("stops");
    assert!(
        daemon.log_text().contains("xdp_mode=\"generic\""),
        "{}",
        daemon.log_text()
    );
}

/// `path = "userspace"` on a session the kernel path could serve (two
/// interface targets that take XDP frames): it goes through AF_XDP, the
/// log says so and why, and every copy arrives byte-identical.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn path_userspace_keeps_a_session_the_kernel_could_serve_on_af_xdp() {
    require_root!();
    let lab = lab(true);
    let dir = TempDir::new("e2e-fast-user").expect("temp dir");
    let text = config("path = \"userspace\"");
    let (mut daemon, mut client) = start(&lab, &dir, &text);
    let run = run_ids_mix(&lab, &mut client, &text);
    assert_eq!(run.stats.sessions["ids-feed"].path, "af_xdp");
    assert_eq!(run.stats.sources["feed"].dropped_total(), 0);
    assert_ids_targets_got_every_frame(run, false);
    daemon.stop(Duration::from_secs(10)).expect("stops");
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("session=ids-feed"))
        .unwrap_or_else(|| panic!("no log line for the session:\n{log}"));
    assert!(
        line.contains("session served through userspace")
            && line.contains("path=\"af_xdp\"")
            && line.contains("why=path = \"userspace\""),
        "the log names the path and the reason: {line}"
    );
}

/// `mirror run -c file` in `ns`, killed after 20 s at most.
fn run_bounded(ns: &Netns, file: &std::path::Path) -> std::process::Output {
    ns.command(&["timeout", "20", BIN, "run", "-c"])
        .arg(file)
        .output()
        .expect("mirror run")
}

#[test]
fn check_refuses_path_kernel_where_userspace_is_needed() {
    let dir = TempDir::new("e2e-fast-check").expect("temp dir");
    let text = config("")
        .replace("priority = 2\n", "priority = 2\npath = \"kernel\"\n")
        .replace("@CONTROL@", "/tmp/unused.sock")
        .replace("@DIR@", &dir.path().to_string_lossy());
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, &text).expect("write config");
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("mirror check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l == "path = \"kernel\"")
        .expect("the path line")
        + 1;
    assert!(
        err.contains(&format!("bad.toml:{line}:8")) && err.contains("pcapng target"),
        "check names the position and the reason: {err}"
    );
}

/// Frame `seq` of flow `i` (UDP 10.1.x.y:1024+i <-> 10.2.0.1:53), forward or
/// reverse, `size` bytes long.
fn flow_frame(i: u16, reverse: bool, seq: u32, size: usize) -> Vec<u8> {
    let (mut a, mut b) = (
        ([10, 1, (i >> 8) as u8, i as u8], 1024 + i),
        ([10, 2, 0, 1], 53),
    );
    if reverse {
        std::mem::swap(&mut a, &mut b);
    }
    let mut payload = traffic::MARKER.to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.resize(size - 42, 0xa5);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(a.0, b.0, 64)
        .udp(a.1, b.1)
        .write(&mut out, &payload)
        .expect("build");
    out
}

/// The flow (`i` of [`flow_frame`]) a frame of either direction belongs to.
fn flow_of(f: &[u8]) -> u16 {
    let sport = u16::from_be_bytes([f[34], f[35]]);
    let dport = u16::from_be_bytes([f[36], f[37]]);
    let client = if sport == 53 { dport } else { sport };
    client - 1024
}

/// ids0 (tgt0) and a group of ids1 (tgt1) and ids2 (tgt2), every frame cut
/// to 100 bytes.
const GROUP_CUT: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "ids1"
kind = "interface"
interface = "tgt1"

[[target]]
name = "ids2"
kind = "interface"
interface = "tgt2"

[[target_group]]
name = "pool"
members = ["ids1", "ids2"]

[[session]]
name = "feed"
source = "feed"
filter = "all"
targets = ["ids0", "pool"]
packet_length = 100
path = "@PATH@"
"#;

/// Which member (1 or 2) each flow's frames reached, both directions, after
/// sending `frames`: asserts every frame reached exactly one member and both
/// halves of a flow the same one.
fn member_of_flows(
    lab: &Lab,
    frames: &Arc<Vec<Vec<u8>>>,
    client: &mut Client,
    total: u64,
) -> (
    std::collections::BTreeMap<u16, u8>,
    mirror_user::dataplane::stats::Stats,
) {
    let caps: Vec<Capture> = ["sink1", "sink2"]
        .iter()
        .map(|d| Capture::start(&lab.sink, d).expect("capture"))
        .collect();
    let ids0 = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let stats = wait_for(client, "every copy counted", |st| {
        st.targets["ids0"].sent_packets == total
            && st.targets["ids1"].enqueued + st.targets["ids2"].enqueued == total
            && ["ids1", "ids2"].iter().all(|t| {
                let t = &st.targets[*t];
                t.sent_packets + t.dropped_total() == t.enqueued
            })
    });
    // ids0: every frame, cut to 100 bytes.
    let got = ids0.finish();
    let mut want: Vec<Vec<u8>> = frames.iter().map(|f| f[..100].to_vec()).collect();
    let mut have = got.clone();
    want.sort_unstable();
    have.sort_unstable();
    assert!(have == want, "ids0 got every frame cut to packet_length");
    let mut member = std::collections::BTreeMap::new();
    let mut seen = 0;
    for (m, cap) in caps.into_iter().enumerate() {
        for f in cap.finish() {
            assert_eq!(f.len(), 100, "cut to packet_length");
            seen += 1;
            let flow = flow_of(&f);
            let prev = member.insert(flow, m as u8 + 1);
            assert!(
                prev.is_none() || prev == Some(m as u8 + 1),
                "flow {flow} reached both members"
            );
        }
    }
    assert_eq!(seen, total, "every copy reached one member");
    (member, stats)
}

/// packet_length and a target group on the kernel path: every copy cut, both
/// halves of each flow on one member, the same member the userspace path
/// picks; a member that goes down loses its flows to the other (counted
/// `rehashed`), and with both down the copies are counted `down` / `all_down`
/// while the plain target still gets them all.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn groups_and_cuts_run_in_the_kernel_and_pick_the_userspace_paths_member() {
    require_root!();
    let lab = lab(true);
    lab::veth(&lab.src, "tgt2", &lab.sink, "sink2", 1).expect("third target port");
    lab::gro_on(&lab.sink, "sink2").expect("GRO on");
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..400u32)
            .map(|seq| flow_frame((seq % 50) as u16, seq % 2 == 1, seq, 300))
            .collect(),
    );
    let n = frames.len() as u64;
    let mut picks = Vec::new();
    for path in ["userspace", "kernel"] {
        let dir = TempDir::new("e2e-fast-group").expect("temp dir");
        let (mut daemon, mut client) = start(&lab, &dir, &GROUP_CUT.replace("@PATH@", path));
        let (member, stats) = member_of_flows(&lab, &frames, &mut client, n);
        let sess = &stats.sessions["feed"];
        assert_eq!(
            sess.path,
            if path == "kernel" { "kernel" } else { "af_xdp" }
        );
        assert_eq!((sess.matched, sess.mirrored), (n, n));
        for t in ["ids0", "ids1", "ids2"] {
            assert_reconciles(t, &stats.targets[t]);
            assert_eq!(stats.targets[t].dropped_total(), 0, "{t}");
        }
        assert_eq!(stats.targets["ids0"].sent_bytes, n * 100, "bytes as cut");
        let g = &stats.groups["pool"];
        assert_eq!((g.rehashed, g.all_down), (0, 0));
        assert!(member.values().any(|&m| m == 1) && member.values().any(|&m| m == 2));
        picks.push(member);
        if path == "kernel" {
            assert_eq!(
                stats.targets["ids1"].kernel_path,
                stats.targets["ids1"].sent_packets
            );
            // ids2 goes down: its flows move to ids1, counted.
            lab.src.ip(&["link", "set", "tgt2", "down"]).expect("down");
            wait_for(&mut client, "ids2 down", |st| {
                st.groups["pool"].members_up == 1
            });
            std::thread::sleep(Duration::from_millis(300)); // the kernel learns it within 100 ms
            let before = stats;
            let moved = frames
                .iter()
                .enumerate()
                .filter(|(seq, _)| picks[1][&((*seq as u16) % 50)] == 2)
                .count() as u64;
            lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
            let st = wait_for(&mut client, "moved copies counted", |st| {
                st.targets["ids0"].sent_packets == 2 * n
                    && st.targets["ids1"].sent_packets == before.targets["ids1"].sent_packets + n
            });
            assert_eq!(st.groups["pool"].rehashed, moved, "each moved copy counted");
            assert_eq!(st.targets["ids2"].enqueued, before.targets["ids2"].enqueued);
            // Both down: nothing for the group, every copy still to ids0.
            lab.src.ip(&["link", "set", "tgt1", "down"]).expect("down");
            wait_for(&mut client, "both down", |st| {
                st.groups["pool"].members_up == 0
            });
            std::thread::sleep(Duration::from_millis(300));
            lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
            let st = wait_for(&mut client, "all-down copies counted", |st| {
                st.targets["ids0"].sent_packets == 3 * n
            });
            assert_eq!(st.groups["pool"].all_down, n);
            let down: u64 = ["ids1", "ids2"]
                .iter()
                .map(|t| st.targets[*t].dropped.get("down").copied().unwrap_or(0))
                .sum();
            assert_eq!(down, n, "each counted down at its flow's first choice");
            for t in ["ids0", "ids1", "ids2"] {
                assert_reconciles(t, &st.targets[t]);
            }
            common::assert_source_reconciles("feed", &st.sources["feed"]);
        }
        assert!(daemon
            .stop(Duration::from_secs(10))
            .expect("stops")
            .success());
    }
    assert_eq!(
        picks[0], picks[1],
        "the kernel picks the member userspace picks"
    );
}

/// rate_limit_pps on the kernel path: a token bucket in the kernel passes
/// its burst and rate, and every frame over it is counted `rate_limited` at
/// the session, the source and the target.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_rate_limit_runs_in_the_kernel_and_counts_every_frame_over_it() {
    require_root!();
    let lab = lab(true);
    lab::veth(&lab.src, "tgt2", &lab.sink, "sink2", 1).expect("third target port");
    let dir = TempDir::new("e2e-fast-rate").expect("temp dir");
    let text = GROUP_CUT
        .replace("targets = [\"ids0\", \"pool\"]", "targets = [\"ids0\"]")
        .replace("packet_length = 100", "rate_limit_pps = 1000")
        .replace("@PATH@", "kernel");
    let (mut daemon, mut client) = start(&lab, &dir, &text);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..3000u32)
            .map(|seq| flow_frame(1, false, seq, 100))
            .collect(),
    );
    let t0 = std::time::Instant::now();
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames, 10_000).expect("send");
    let secs = t0.elapsed().as_secs_f64();
    let st = wait_for(&mut client, "every frame counted", |st| {
        let t = &st.targets["ids0"];
        st.sources["feed"].received == 3000 && t.sent_packets + t.dropped_total() == 3000
    });
    let sess = &st.sessions["feed"];
    assert_eq!(sess.path, "kernel");
    let t = &st.targets["ids0"];
    assert_reconciles("ids0", t);
    let limited = t.dropped.get("rate_limited").copied().unwrap_or(0);
    assert_eq!(t.sent_packets + limited, 3000);
    assert_eq!(sess.rate_limited, limited);
    assert_eq!(sess.mirrored, t.sent_packets);
    assert_eq!(
        st.sources["feed"].dropped.get("rate_limited"),
        Some(&limited)
    );
    common::assert_source_reconciles("feed", &st.sources["feed"]);
    // The burst (a tenth of a second: 100) and 1000 a second while sending.
    let most = 100.0 + 1000.0 * secs + 2.0;
    assert!(
        (t.sent_packets as f64) <= most && t.sent_packets >= 100,
        "{} sent in {secs:.3} s at 1000/s with a burst of 100",
        t.sent_packets
    );
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("stops")
        .success());
}

/// Interface targets `@TARGETS@` of one kernel-path session.
const PLAIN: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "ids1"
kind = "interface"
interface = "tgt1"

[[session]]
name = "feed"
source = "feed"
filter = "all"
targets = [@TARGETS@]
path = "kernel"
"#;

/// A kernel-path target whose port is deleted: every copy after that is
/// counted `down` (with one target, at once, from the redirect's result;
/// with several, once mirror has seen it, within 100 ms), the other target
/// carries on, and when the port is created again under its name mirror
/// sends to the new device; nothing is ever `unknown`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_deleted_kernel_path_target_counts_down_and_a_recreated_one_is_picked_up() {
    require_root!();
    let lab = lab(true);
    let batch = |first: u32| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (first..first + 200)
                .map(|seq| flow_frame((seq % 20) as u16, false, seq, 200))
                .collect(),
        )
    };
    let send = |first| lab::send_frames(&lab.gen, Lab::GEN_IF, batch(first), 10_000).expect("send");
    let settled = |client: &mut Client, total: u64| {
        wait_for(client, "every copy counted", |st| {
            st.sources["feed"].matched == total
                && st
                    .targets
                    .values()
                    .filter(|t| t.enqueued > 0)
                    .all(|t| t.sent_packets + t.dropped_total() == total)
        })
    };
    let recreate = || {
        lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1).expect("the port again");
        lab::gro_on(&lab.sink, "sink1").expect("GRO on");
    };

    // One target: its entry is gone with the device, and the redirect says so.
    let dir = TempDir::new("e2e-fast-del1").expect("temp dir");
    let (mut daemon, mut client) = start(&lab, &dir, &PLAIN.replace("@TARGETS@", "\"ids1\""));
    assert_eq!(send(0), 200);
    settled(&mut client, 200);
    lab.src
        .ip(&["link", "del", "tgt1"])
        .expect("delete the port");
    assert_eq!(send(200), 200);
    let st = settled(&mut client, 400);
    let t = &st.targets["ids1"];
    assert_reconciles("ids1", t);
    assert_eq!(
        (t.sent_packets, t.dropped.get("down").copied()),
        (200, Some(200))
    );
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("stops")
        .success());
    recreate();

    // Two targets: a broadcast; mirror takes the gone one out within 100 ms.
    let dir = TempDir::new("e2e-fast-del2").expect("temp dir");
    let (mut daemon, mut client) = start(
        &lab,
        &dir,
        &PLAIN.replace("@TARGETS@", "\"ids0\", \"ids1\""),
    );
    assert_eq!(send(0), 200);
    settled(&mut client, 200);
    lab.src
        .ip(&["link", "del", "tgt1"])
        .expect("delete the port");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(send(200), 200);
    let st = settled(&mut client, 400);
    assert_eq!(
        st.targets["ids0"].sent_packets, 400,
        "the other target carries on"
    );
    let t = &st.targets["ids1"];
    assert_reconciles("ids1", t);
    assert_eq!(
        (t.sent_packets, t.dropped.get("down").copied()),
        (200, Some(200))
    );

    // The port again, under its name: sent to again.
    recreate();
    std::thread::sleep(Duration::from_millis(400));
    let sink1 = Capture::start(&lab.sink, "sink1").expect("capture");
    assert_eq!(send(400), 200);
    let st = settled(&mut client, 600);
    for name in ["ids0", "ids1"] {
        assert_reconciles(name, &st.targets[name]);
    }
    let t = &st.targets["ids1"];
    assert_eq!((t.sent_packets, t.kernel_path), (400, 400));
    assert_eq!(t.dropped.get("down").copied(), Some(200));
    assert_eq!(sink1.finish().len(), 200, "the new port gets the copies");
    let log = daemon.log_text();
    assert!(
        log.contains("down or gone") && log.contains("back as a new device"),
        "{log}"
    );
    assert!(daemon
        .stop(Duration::from_secs(10))
        .expect("stops")
        .success());
}

/// Interface numbers repeat across network namespaces (each lab's feed0 and
/// tgt0 have the same ifindex in theirs), and the devmap transmit tracepoint
/// fires for every namespace: two daemons in two labs built alike, traffic
/// through one, then the other. Each counts its own transmits exactly,
/// never the other's.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn another_namespaces_kernel_path_transmits_are_not_counted() {
    require_root!();
    let (a, b) = (lab(true), lab(true));
    let ifindex = |lab: &Lab, dev: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", lab.src.name(), "-o", "link", "show", dev])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':').next().unwrap_or("").trim().to_string()
    };
    assert_eq!(
        (ifindex(&a, "feed0"), ifindex(&a, "tgt0")),
        (ifindex(&b, "feed0"), ifindex(&b, "tgt0")),
        "the labs' devices share their numbers"
    );
    let (dir_a, dir_b) = (
        TempDir::new("e2e-fast-ns-a").expect("temp dir"),
        TempDir::new("e2e-fast-ns-b").expect("temp dir"),
    );
    let text = config("");
    let (_da, mut ca) = start(&a, &dir_a, &text);
    let (_db, mut cb) = start(&b, &dir_b, &text);
    let n = 2000 - 189 - 250;
    for (lab, client, name) in [(&a, &mut ca, "lab a"), (&b, &mut cb, "lab b")] {
        let frames = Arc::new(traffic::mixed(2000));
        let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames, 20_000).expect("send");
        assert_eq!(sent, 2000);
        let st = wait_for(client, name, |st| {
            st.sources["feed"].received == 2000
                && ["ids0", "ids1"].iter().all(|t| {
                    let t = &st.targets[*t];
                    t.enqueued == n && t.enqueued == t.sent_packets + t.dropped_total()
                })
        });
        for t in ["ids0", "ids1"] {
            assert_eq!(st.targets[t].sent_packets, n, "{name}: {:?}", st.targets[t]);
            assert_eq!(
                st.targets[t].dropped_total(),
                0,
                "{name}: {:?}",
                st.targets[t]
            );
        }
    }
}

/// Plain interface targets, group members and the VXLAN target of [`wide`].
const WIDE_PLAIN: usize = 13;
const WIDE_MEMBERS: usize = 18;

/// A session of 32 targets, the kernel path's most (groups expanded): 13
/// interfaces p0..p12 (keys 0-12; p11's port takes 256-byte frames), a group
/// of 18 members g0..g17 (keys 13-30) and a VXLAN collector (key 31).
fn wide(path: &str) -> String {
    let mut t = String::from(
        r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
"#,
    );
    for i in 0..WIDE_PLAIN {
        t += &format!(
            "\n[[target]]\nname = \"p{i}\"\nkind = \"interface\"\ninterface = \"tgt{i}\"\n"
        );
    }
    for i in 0..WIDE_MEMBERS {
        t += &format!(
            "\n[[target]]\nname = \"g{i}\"\nkind = \"interface\"\ninterface = \"gm{i}\"\n"
        );
    }
    t += "\n[[target]]\nname = \"vx\"\nkind = \"vxlan\"\nremote = \"10.99.1.2\"\n";
    let members: Vec<String> = (0..WIDE_MEMBERS).map(|i| format!("\"g{i}\"")).collect();
    t += &format!(
        "\n[[target_group]]\nname = \"pool\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let mut targets: Vec<String> = (0..WIDE_PLAIN).map(|i| format!("\"p{i}\"")).collect();
    targets.push("\"pool\"".into());
    targets.push("\"vx\"".into());
    t += &format!(
        "\n[[session]]\nname = \"wide\"\nsource = \"feed\"\nfilter = \"all\"\ntargets = [{}]\nvni = 42\npath = \"{path}\"\n",
        targets.join(", ")
    );
    t
}

/// One pass of [`wide`]'s traffic: what each port and the VXLAN device got.
struct WideRun {
    stats: mirror_user::dataplane::stats::Stats,
    plain: Vec<Vec<Vec<u8>>>,
    /// Flow -> the member (index) that got its frames, both directions.
    member: std::collections::BTreeMap<u16, usize>,
    decapsulated: Vec<Vec<u8>>,
}

/// Sends `frames` and waits until the `total` copies so far of each plain
/// target and of the group are counted; asserts each frame reached exactly
/// one member, both halves of a flow the same one.
fn wide_pass(lab: &Lab, client: &mut Client, frames: &Arc<Vec<Vec<u8>>>, total: u64) -> WideRun {
    let plain: Vec<Capture> = (0..WIDE_PLAIN)
        .map(|i| Capture::start(&lab.sink, &format!("sink{i}")).expect("capture"))
        .collect();
    let members: Vec<Capture> = (0..WIDE_MEMBERS)
        .map(|i| Capture::start(&lab.sink, &format!("gs{i}")).expect("capture"))
        .collect();
    let vx = Capture::start(&lab.sink, "vx0").expect("capture");
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let stats = wait_for(client, "every copy counted", |st| {
        let done = |t: &mirror_user::dataplane::stats::TargetStats| {
            t.queued == 0 && t.sent_packets + t.dropped_total() == t.enqueued
        };
        let group: u64 = (0..WIDE_MEMBERS)
            .map(|i| st.targets[&format!("g{i}")].enqueued)
            .sum();
        st.sources["feed"].matched == total
            && group == total
            && st.targets.values().all(done)
            && (0..WIDE_PLAIN).all(|i| st.targets[&format!("p{i}")].enqueued == total)
            && st.targets["vx"].enqueued == total
    });
    let mut member = std::collections::BTreeMap::new();
    let mut seen = 0;
    for (m, cap) in members.into_iter().enumerate() {
        for f in cap.finish() {
            seen += 1;
            let flow = flow_of(&f);
            let prev = member.insert(flow, m);
            assert!(
                prev.is_none() || prev == Some(m),
                "flow {flow} reached two members"
            );
        }
    }
    assert_eq!(seen, frames.len(), "every frame reached one member");
    WideRun {
        stats,
        plain: plain.into_iter().map(Capture::finish).collect(),
        member,
        decapsulated: vx.finish(),
    }
}

/// More than 8 targets on the kernel path: 32 (groups expanded), each
/// interface target getting every frame byte for byte through one
/// broadcast, a group of 18 picking the member userspace picks for both
/// halves of each flow, a VXLAN target on the last key that the Linux vxlan
/// device decapsulates, and each destination's drops counted at its own key
/// (too big at key 11; down at key 10, a member at key 13 or more rehashed).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_session_of_thirty_two_targets_runs_in_the_kernel_with_every_copy_counted() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    for i in 1..WIDE_PLAIN {
        lab::veth(
            &lab.src,
            &format!("tgt{i}"),
            &lab.sink,
            &format!("sink{i}"),
            1,
        )
        .expect("port");
    }
    for i in 0..WIDE_MEMBERS {
        lab::veth(&lab.src, &format!("gm{i}"), &lab.sink, &format!("gs{i}"), 1).expect("port");
    }
    lab::wire(
        &lab.src,
        "col0",
        "10.99.1.1",
        &lab.sink,
        "col1",
        "10.99.1.2",
        1500,
    )
    .expect("wire");
    lab::vxlan_decap(&lab.sink, "vx0", 42, "10.99.1.2", "col1").expect("vxlan device");
    let sinks = (0..WIDE_PLAIN)
        .map(|i| format!("sink{i}"))
        .chain((0..WIDE_MEMBERS).map(|i| format!("gs{i}")))
        .chain(std::iter::once("col1".to_string()));
    for dev in sinks {
        lab::gro_on(&lab.sink, &dev).expect("GRO on");
    }
    // p11's port takes frames of 256 + 18 bytes: every 300-byte copy is too big.
    lab.src
        .ip(&["link", "set", "tgt11", "mtu", "256"])
        .expect("mtu");
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..400u32)
            .map(|seq| flow_frame((seq % 50) as u16, seq % 2 == 1, seq, 300))
            .collect(),
    );
    let n = frames.len() as u64;
    let want = sorted(frames.iter().cloned());

    let mut picks = Vec::new();
    for path in ["userspace", "kernel"] {
        let dir = TempDir::new("e2e-fast-wide").expect("temp dir");
        let (mut daemon, mut client) = start(&lab, &dir, &wide(path));
        let run = wide_pass(&lab, &mut client, &frames, n);
        let st = &run.stats;
        assert_eq!(
            st.sessions["wide"].path,
            if path == "kernel" { "kernel" } else { "af_xdp" },
            "{}",
            daemon.log_text()
        );
        assert_eq!(
            (st.sessions["wide"].matched, st.sessions["wide"].mirrored),
            (n, n)
        );
        for (i, got) in run.plain.into_iter().enumerate() {
            let t = &st.targets[&format!("p{i}")];
            assert_reconciles(&format!("p{i}"), t);
            if i == 11 {
                assert_eq!(t.sent_packets, 0, "p11: {:?}", t.dropped);
                assert_eq!(t.dropped.get("too_big").copied(), Some(n), "p11");
                continue;
            }
            assert_eq!((t.sent_packets, t.dropped_total()), (n, 0), "p{i}");
            assert!(sorted(got) == want, "p{i} got every frame, byte for byte");
            if path == "kernel" {
                assert_eq!(t.kernel_path, n, "p{i}");
            }
        }
        assert_eq!(sorted(run.decapsulated), want, "the vxlan device's frames");
        assert_eq!(st.targets["vx"].sent_packets, n);
        assert!(
            run.member
                .values()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 8,
            "flows spread over the members: {:?}",
            run.member
        );
        picks.push(run.member.clone());
        if path == "kernel" {
            // The member with the most flows goes down (its key is 13 + its
            // index), and so does p10: its flows move, counted `rehashed`,
            // and p10's copies are counted `down`.
            let mut load = [0usize; WIDE_MEMBERS];
            for &m in run.member.values() {
                load[m] += 1;
            }
            let gone = (0..WIDE_MEMBERS).max_by_key(|&m| load[m]).expect("members");
            lab.src
                .ip(&["link", "set", &format!("gm{gone}"), "down"])
                .expect("down");
            lab.src.ip(&["link", "set", "tgt10", "down"]).expect("down");
            wait_for(&mut client, "a member down", |st| {
                st.groups["pool"].members_up == WIDE_MEMBERS as u32 - 1
            });
            std::thread::sleep(Duration::from_millis(400)); // the kernel learns it within 100 ms
            let moved = frames
                .iter()
                .enumerate()
                .filter(|(seq, _)| run.member[&((*seq as u16) % 50)] == gone)
                .count() as u64;
            let again = wide_pass(&lab, &mut client, &frames, 2 * n);
            let st = &again.stats;
            assert_eq!(st.groups["pool"].rehashed, moved, "each moved copy counted");
            assert!(!again.member.values().any(|&m| m == gone));
            let p10 = &st.targets["p10"];
            assert_reconciles("p10", p10);
            assert_eq!(
                (p10.sent_packets, p10.dropped.get("down").copied()),
                (n, Some(n)),
                "p10: down"
            );
            for (name, t) in &st.targets {
                assert_reconciles(name, t);
            }
            common::assert_source_reconciles("feed", &st.sources["feed"]);
            lab.src
                .ip(&["link", "set", &format!("gm{gone}"), "up"])
                .expect("up");
            lab.src.ip(&["link", "set", "tgt10", "up"]).expect("up");
        }
        assert!(daemon
            .stop(Duration::from_secs(10))
            .expect("stops")
            .success());
    }
    assert_eq!(
        picks[0], picks[1],
        "the kernel picks the member userspace picks"
    );
}

/// A broadcast target flapping under a stream: sink0 set down and up again
/// and again while frames flow. Each copy ends in exactly one of tgt0's
/// counters, whatever moment of a transition it met: sent, `send_error`
/// (refused by the veth before mirror saw the port down) or `down` (after);
/// never two, never none. (The daemon once took a destination out of the
/// broadcast DEVMAP after setting its down bit, so a frame between the two
/// was counted `down` and sent too, and on the way back one between them
/// was neither.) ids1 never flaps and gets every copy.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_broadcast_target_flapping_under_a_stream_counts_each_copy_once() {
    require_root!();
    let lab = lab(true);
    let t = flap_under_a_stream(&lab, "e2e-fast-flap", &lab.sink, Lab::SINK_IF);
    assert!(t.dropped["send_error"] > 0, "{t:?}");
}

/// The same with tgt0 itself set down (administratively) and up: the kernel
/// skips a device that is down without a trace, so until mirror sees it
/// nothing counts those copies. When it does, what was left unexplained is
/// counted `down`: still exactly one outcome per copy, none `send_error`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_broadcast_target_set_down_under_a_stream_counts_what_the_kernel_skipped_down() {
    require_root!();
    let lab = lab(true);
    let t = flap_under_a_stream(&lab, "e2e-fast-flap-admin", &lab.src, "tgt0");
    assert_eq!(t.dropped["send_error"], 0, "{t:?}");
}

/// A target in two kernel-path sessions (TCP to ids0 alone, the rest to
/// ids0 and ids1), its sink end flapping under the stream: what the
/// kernel skipped is read only once both sessions have taken it out, so
/// the second session's copies refused meanwhile are not taken for
/// skipped ones: each copy still counted once.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_target_of_two_kernel_path_sessions_flapping_counts_each_copy_once() {
    require_root!();
    let lab = lab(true);
    let text = config("path = \"kernel\"").replace(
        "[[session]]\nname = \"ssh-archive\"",
        "[[session]]\nname = \"tcp-feed\"\nsource = \"feed\"\nfilter = \"tcp\"\n\
         targets = [\"ids0\"]\npriority = 0\npath = \"kernel\"\n\n\
         [[filter]]\nname = \"tcp\"\n[[filter.rule]]\nnumber = 10\naction = \"accept\"\n\
         direction = \"ingress\"\nprotocol = \"tcp\"\n\n\
         [[session]]\nname = \"ssh-archive\"",
    );
    assert!(text.contains("tcp-feed"));
    let stats = flap_with(
        &lab,
        "e2e-fast-flap-two",
        &lab.sink,
        Lab::SINK_IF,
        &text,
        &[traffic::Shape::Udp4, traffic::Shape::Tcp4],
    );
    assert_eq!(stats.sessions["tcp-feed"].path, "kernel");
    assert_eq!(stats.sessions["tcp-feed"].mirrored, u64::from(FRAMES / 2));
    assert_eq!(stats.targets["ids1"].sent_packets, u64::from(FRAMES / 2));
}

/// Runs the kernel-path config, sends 300,000 copies at 100 kpps while
/// setting `dev` in `ns` down and up (at most 12 times, each time waiting
/// until mirror has seen it), and checks every copy of both targets is
/// counted once, ids1 got all of its and tgt0 some `down`. Returns ids0's
/// counters.
fn flap_under_a_stream(
    lab: &Lab,
    tag: &str,
    ns: &Netns,
    dev: &str,
) -> mirror_user::dataplane::stats::TargetStats {
    let stats = flap_with(
        lab,
        tag,
        ns,
        dev,
        &config("path = \"kernel\""),
        &[traffic::Shape::Udp4],
    );
    let steady = &stats.targets["ids1"];
    assert_eq!(
        steady.sent_packets,
        u64::from(FRAMES),
        "{:?}",
        steady.dropped
    );
    stats.targets["ids0"].clone()
}

/// Copies in the flapping stream.
const FRAMES: u32 = 300_000;

/// Sends `frames` (all [`FRAMES`] of them) at 100 kpps while setting `dev`
/// in its namespace down and up, at most 12 times, each time waiting for
/// the daemon to log `logs` (down, up); returns the frames sent.
fn stream_while_flapping(
    lab: &Lab,
    daemon: &DaemonProcess,
    (ns, dev): (&Netns, &str),
    frames: Arc<Vec<Vec<u8>>>,
    (down, up): (&str, &str),
) -> u64 {
    assert_eq!(frames.len(), FRAMES as usize);
    common::flap_during_a_stream(lab, frames, 100_000, (3, 12), |n| {
        ns.ip(&["link", "set", dev, "down"]).expect("down");
        wait_log(daemon, down, n);
        ns.ip(&["link", "set", dev, "up"]).expect("up");
        wait_log(daemon, up, n);
    })
}

/// [`flap_under_a_stream`] on config `text`, the frames cycling through
/// `shapes`: checks ids0 and ids1 reconcile, ids0 counted every copy once
/// (sent, `send_error` or `down`, some `down`), and returns the counters.
fn flap_with(
    lab: &Lab,
    tag: &str,
    ns: &Netns,
    dev: &str,
    text: &str,
    shapes: &[traffic::Shape],
) -> mirror_user::dataplane::stats::Stats {
    let dir = TempDir::new(tag).expect("temp dir");
    let (daemon, mut client) = start(lab, &dir, text);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..FRAMES)
            .map(|i| traffic::frame(shapes[i as usize % shapes.len()], i, 100))
            .collect(),
    );
    let sent = stream_while_flapping(
        lab,
        &daemon,
        (ns, dev),
        frames,
        (
            "the target's interface is down or gone",
            "the target's interface is up again",
        ),
    );
    let ids1 = sent / shapes.len() as u64
        * shapes
            .iter()
            .filter(|s| **s == traffic::Shape::Udp4)
            .count() as u64;
    let stats = wait_for(&mut client, "every copy reached a counter", |st| {
        st.sources["feed"].received == sent
            && st.sources["feed"].queued == 0
            && st.targets["ids0"].enqueued == sent
            && st.targets["ids1"].enqueued == ids1
    });
    let (flapped, steady) = (&stats.targets["ids0"], &stats.targets["ids1"]);
    assert_reconciles("ids0", flapped);
    assert_reconciles("ids1", steady);
    assert!(flapped.dropped["down"] > 0, "{flapped:?}");
    assert_eq!(
        flapped.sent_packets + flapped.dropped["send_error"] + flapped.dropped["down"],
        sent,
        "{flapped:?}"
    );
    stats
}

/// A target-group member's port set down (administratively) and up under a
/// stream on the kernel path. Until mirror sees the port down the kernel
/// picks the member for its flows and skips the device without a trace;
/// then its flows move to the other member. Each member's copies end in
/// exactly one counter, none `unknown`, and the plain target gets them all.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_group_member_set_down_under_a_stream_counts_each_copy_once() {
    require_root!();
    let lab = lab(true);
    lab::veth(&lab.src, "tgt2", &lab.sink, "sink2", 1).expect("third target port");
    lab::gro_on(&lab.sink, "sink2").expect("GRO on");
    let dir = TempDir::new("e2e-fast-member-flap").expect("temp dir");
    let (daemon, mut client) = start(&lab, &dir, &GROUP_CUT.replace("@PATH@", "kernel"));
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..FRAMES)
            .map(|seq| flow_frame((seq % 50) as u16, seq % 2 == 1, seq, 100))
            .collect(),
    );
    let sent = stream_while_flapping(
        &lab,
        &daemon,
        (&lab.src, "tgt2"),
        frames,
        (
            "a group member is down or gone",
            "a group member is up again",
        ),
    );
    let st = wait_for(&mut client, "every copy reached a counter", |st| {
        st.sources["feed"].received == sent
            && st.targets["ids0"].sent_packets == sent
            && st.targets["ids1"].enqueued + st.targets["ids2"].enqueued == sent
    });
    assert_eq!(st.sessions["feed"].path, "kernel");
    for t in ["ids0", "ids1", "ids2"] {
        assert_reconciles(t, &st.targets[t]);
    }
    let (ids1, ids2) = (&st.targets["ids1"], &st.targets["ids2"]);
    assert_eq!(ids1.dropped_total(), 0, "{ids1:?}");
    assert!(ids2.dropped["down"] > 0, "{ids2:?}");
    assert_eq!(
        ids2.dropped.get("send_error").copied().unwrap_or(0),
        0,
        "{ids2:?}"
    );
}

/// A group member's port deleted and created again under its name, on the
/// kernel path: while it is gone its flows go to the other member (and
/// nothing is `unknown`); once it is back, the new device gets its flows
/// again, every copy counted once.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_deleted_group_member_is_picked_again_on_its_new_device() {
    require_root!();
    let lab = lab(true);
    lab::veth(&lab.src, "tgt2", &lab.sink, "sink2", 1).expect("third target port");
    lab::gro_on(&lab.sink, "sink2").expect("GRO on");
    let dir = TempDir::new("e2e-fast-member-del").expect("temp dir");
    let (daemon, mut client) = start(&lab, &dir, &GROUP_CUT.replace("@PATH@", "kernel"));
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..400u32)
            .map(|seq| flow_frame((seq % 50) as u16, seq % 2 == 1, seq, 300))
            .collect(),
    );
    let n = frames.len() as u64;
    let (member, _) = member_of_flows(&lab, &frames, &mut client, n);
    let on2 = frames
        .iter()
        .enumerate()
        .filter(|(seq, _)| member[&((*seq as u16) % 50)] == 2)
        .count() as u64;
    assert!(on2 > 0 && on2 < n, "both members get flows: {on2} of {n}");

    // Gone: every flow to ids1, nothing lost or unknown.
    lab.src
        .ip(&["link", "del", "tgt2"])
        .expect("delete the port");
    wait_log(&daemon, "a group member is down or gone", 1);
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let st = wait_for(&mut client, "the copies while ids2 is gone", |st| {
        st.targets["ids0"].sent_packets == 2 * n
            && st.targets["ids1"].enqueued + st.targets["ids2"].enqueued == 2 * n
    });
    for t in ["ids0", "ids1", "ids2"] {
        assert_reconciles(t, &st.targets[t]);
    }
    assert_eq!(st.targets["ids1"].sent_packets, (n - on2) + n);
    assert_eq!(st.targets["ids2"].enqueued, on2);

    // Back under its name: its flows return to it, on the new device.
    lab::veth(&lab.src, "tgt2", &lab.sink, "sink2", 1).expect("the port again");
    lab::gro_on(&lab.sink, "sink2").expect("GRO on");
    wait_log(&daemon, "a group member is up again", 1);
    let sink2 = Capture::start(&lab.sink, "sink2").expect("capture");
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 10_000).expect("send");
    let st = wait_for(&mut client, "the copies after ids2 is back", |st| {
        st.targets["ids0"].sent_packets == 3 * n
            && st.targets["ids1"].enqueued + st.targets["ids2"].enqueued == 3 * n
            && ["ids1", "ids2"].iter().all(|t| {
                let t = &st.targets[*t];
                t.sent_packets + t.dropped_total() == t.enqueued
            })
    });
    for t in ["ids0", "ids1", "ids2"] {
        assert_reconciles(t, &st.targets[t]);
    }
    let t = &st.targets["ids2"];
    assert_eq!(
        (t.enqueued, t.sent_packets, t.dropped_total()),
        (2 * on2, 2 * on2, 0),
        "{t:?}"
    );
    assert_eq!(
        sink2.finish().len() as u64,
        on2,
        "the new port gets its flows"
    );
}

/// A group member's port deleted under a stream when the group is the
/// session's only target (so each member is alone in its DEVMAP and the
/// kernel redirects to it rather than broadcasting): until mirror sees it
/// gone the redirect fails, as the kernel took the entry with the device.
/// Each copy is counted once, at one member (it was counted picked and
/// `down`, and the reading of what was skipped then took the extra for
/// skipped copies: 2,192 and 2,256 too many in two runs).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_group_members_port_deleted_under_a_stream_counts_each_copy_once() {
    require_root!();
    let lab = lab(true);
    lab::veth(&lab.src, "tgt2", &lab.sink, "sink2", 1).expect("third target port");
    lab::gro_on(&lab.sink, "sink2").expect("GRO on");
    let dir = TempDir::new("e2e-fast-member-del-stream").expect("temp dir");
    let text = GROUP_CUT
        .replace("targets = [\"ids0\", \"pool\"]", "targets = [\"pool\"]")
        .replace("@PATH@", "kernel");
    let (daemon, mut client) = start(&lab, &dir, &text);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..100_000u32)
            .map(|seq| flow_frame((seq % 50) as u16, seq % 2 == 1, seq, 100))
            .collect(),
    );
    let sent = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            lab::send_frames(&lab.gen, Lab::GEN_IF, frames.clone(), 50_000).expect("send")
        });
        std::thread::sleep(Duration::from_millis(300));
        lab.src
            .ip(&["link", "del", "tgt2"])
            .expect("delete the port");
        wait_log(&daemon, "a group member is down or gone", 1);
        sender.join().expect("sender")
    });
    assert_eq!(sent, frames.len() as u64);
    let st = wait_for(&mut client, "every copy reached a counter", |st| {
        st.sources["feed"].received == sent
            && ["ids1", "ids2"].iter().all(|t| {
                let t = &st.targets[*t];
                t.enqueued == t.sent_packets + t.dropped_total()
            })
    });
    let (ids1, ids2) = (&st.targets["ids1"], &st.targets["ids2"]);
    assert_reconciles("ids1", ids1);
    assert_reconciles("ids2", ids2);
    assert_eq!(ids1.enqueued + ids2.enqueued, sent, "{ids1:?} {ids2:?}");
    assert!(ids2.dropped["down"] > 0, "{ids2:?}");
    assert_eq!(ids1.dropped_total(), 0, "{ids1:?}");
}
