//! End to end, in network namespaces: the in-kernel fast path. A tap session
//! whose targets are all interfaces that take XDP frames is served by a
//! DEVMAP broadcast in the kernel (one clone per target, no userspace copy);
//! other sessions of the same source still go through AF_XDP. Counted per
//! session and per target exactly like the userspace path, in native and in
//! generic XDP; `path = "userspace"` keeps a session off it.

mod common;

use common::{assert_reconciles, read_pcapng, wait_for};

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
    // counts it; the other target's counters do not move.
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
    assert_eq!(wide.dropped["send_error"], 200, "{:?}", wide.dropped);
    assert_eq!(wide.dropped["too_big"], 0);
    // Bytes handed to the device, refused frames included (documented).
    assert_eq!(wide.sent_bytes, big_bytes + 200 * 200);
    assert_eq!(
        narrow.sent_packets,
        100 + 200,
        "small frames fit the narrow port"
    );
    assert_eq!(narrow.dropped["too_big"], 200);
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
    let out = std::process::Command::new(BIN)
        .args(["stats", "--control"])
        .arg(&daemon.control)
        .output()
        .expect("mirror stats");
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
