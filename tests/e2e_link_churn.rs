//! End to end, in network namespaces: links that change under a running
//! daemon on every path. A target interface created again under its name
//! (AF_XDP: picked up on a socket bound again, with or without the UMEM a
//! tap source shared), targets set down and up (AF_XDP, the kernel path's
//! DEVMAP, copy mode's clones and its ring buffer path, a kernel tunnel's
//! egress device), a source set down and up (tap and copy mode), a
//! target's MTU lowered. After each: exact counts, every lost copy counted
//! by reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_reconciles, assert_source_reconciles, ipv4_payload, wait_for, wait_log};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::lab::{self, traffic, Capture, DaemonProcess, Lab, Netns, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

/// A tap source mirrored whole to one interface target, tgt0.
const TAP: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
mode = "tap"
@SOURCE@
[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[session]]
name = "ids-feed"
source = "feed"
filter = "all"
targets = ["ids0"]
path = "@PATH@"
"#;

/// A copy-mode source (ingress) mirrored whole to one interface target.
const COPY: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
mode = "copy"
direction = "ingress"

[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[session]]
name = "ids-feed"
source = "feed"
filter = "all"
targets = ["ids0"]
path = "@PATH@"
"#;

fn tap(source: &str, path: &str) -> String {
    TAP.replace("@SOURCE@", source).replace("@PATH@", path)
}

/// `n` UDP frames of `size` bytes, numbered from `first`.
fn frames(first: u32, n: u32, size: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (first..first + n)
            .map(|i| traffic::frame(traffic::SHAPES[1], i, size))
            .collect(),
    )
}

fn send(lab: &Lab, frames: Arc<Vec<Vec<u8>>>) {
    let n = frames.len() as u64;
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames, 10_000).expect("send");
    assert_eq!(sent, n);
}

/// Waits until the source has read `total` frames and the target `ids0`
/// has every copy offered to it sent or dropped.
fn settled(client: &mut Client, total: u64) -> Stats {
    wait_for(client, "every copy accounted", |s| {
        let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
        src.received == total
            && src.queued == 0
            && t.enqueued == total
            && t.queued == 0
            && t.enqueued == t.sent_packets + t.dropped_total()
    })
}

/// The lab frames among `got` (the sink may see nothing else, but a
/// device coming up could send its own).
fn lab_frames(got: &[Vec<u8>]) -> Vec<&Vec<u8>> {
    got.iter()
        .filter(|f| traffic::seq_of(f).is_some())
        .collect()
}

/// The AF_XDP sender binds again to tgt0 created again under its name:
/// copies while it is gone are `down`, the ones after reach the new
/// device. With `share_umem = true` the first socket hosted the source's RX
/// queue; the new one has a UMEM of its own over the same memory, so the
/// source's frames still go out uncopied. The socket it binds is made
/// ahead (a spare, made again after each pick-up): a second re-creation is
/// picked up as well.
fn recreated_target_is_picked_up(source: &str, tag: &str, shared: bool) {
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new(tag).expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &tap(source, "userspace"));
    let mut client = Client::connect(&daemon.control).expect("control socket");

    send(&lab, frames(0, 100, 200));
    let s = settled(&mut client, 100);
    assert_eq!(s.targets["ids0"].sent_packets, 100);
    assert_eq!(s.targets["ids0"].shared_umem > 0, shared, "{s:?}");

    lab.src.ip(&["link", "del", "tgt0"]).expect("delete tgt0");
    wait_for(&mut client, "the sender sees tgt0 gone", |s| {
        !s.targets["ids0"].up
    });
    send(&lab, frames(100, 100, 200));
    let s = settled(&mut client, 200);
    let t = &s.targets["ids0"];
    assert_eq!((t.sent_packets, t.dropped["down"]), (100, 100), "{t:?}");

    // Under its name again: picked up, and sent to.
    lab::veth(&lab.src, "tgt0", &lab.sink, "sink0", 1).expect("tgt0 again");
    wait_for(&mut client, "the sender picks tgt0 up", |s| {
        s.targets["ids0"].up
    });
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    send(&lab, frames(200, 100, 200));
    let s = settled(&mut client, 300);
    let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", src);
    assert_reconciles("ids0", t);
    assert_eq!(src.mirrored, 300);
    assert_eq!((t.sent_packets, t.dropped["down"]), (200, 100), "{t:?}");
    assert_eq!(t.dropped_total(), 100, "{t:?}");
    if shared {
        // Lent RX frames go out of the new socket as they are.
        assert_eq!(t.shared_umem, t.sent_packets, "{t:?}");
    } else {
        assert_eq!(t.shared_umem, 0);
    }
    let got = sink.finish();
    let want = frames(200, 100, 200);
    let got = lab_frames(&got);
    assert_eq!(got.len(), 100, "the new device gets the copies");
    assert!(got.iter().all(|f| want.contains(f)), "byte for byte");
    let log = daemon.log_text();
    assert!(log.contains("picked up again"), "{log}");
    if shared {
        assert!(log.contains("a UMEM of its own"), "{log}");
    }

    // Once more: the spare socket was made again after the first pick-up
    // (mirror run keeps CAP_NET_RAW, which a reload needs too), so the
    // second re-creation is picked up as well.
    lab.src.ip(&["link", "del", "tgt0"]).expect("delete tgt0");
    wait_for(&mut client, "the sender sees tgt0 gone", |s| {
        !s.targets["ids0"].up
    });
    send(&lab, frames(300, 100, 200));
    settled(&mut client, 400);
    lab::veth(&lab.src, "tgt0", &lab.sink, "sink0", 1).expect("tgt0 again");
    wait_log(&daemon, "picked up again", 2);
    wait_for(&mut client, "the sender picks tgt0 up again", |s| {
        s.targets["ids0"].up
    });
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    send(&lab, frames(400, 100, 200));
    let s = settled(&mut client, 500);
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!((t.sent_packets, t.dropped["down"]), (300, 200), "{t:?}");
    assert_eq!(
        lab_frames(&sink.finish()).len(),
        100,
        "the third device gets the copies"
    );
    assert!(!daemon.log_text().contains("no AF_XDP socket is left"));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn an_af_xdp_target_created_again_under_its_name_is_picked_up() {
    require_root!();
    recreated_target_is_picked_up("share_umem = false", "e2e-lc-recreate", false);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn an_af_xdp_target_sharing_the_sources_umem_created_again_is_picked_up_unshared() {
    require_root!();
    recreated_target_is_picked_up("share_umem = true", "e2e-lc-recreate-shared", true);
}

/// Sizes around a 1000-byte MTU: 1,018 bytes fit (MTU + Ethernet header +
/// a VLAN tag's room), 1,019 and 1,200 do not.
const AROUND_1000: [usize; 3] = [1018, 1019, 1200];

/// 300 frames from `first`: 100 of each of [`AROUND_1000`].
fn around_1000(first: u32) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (0..300)
            .map(|i| traffic::frame(traffic::SHAPES[1], first + i, AROUND_1000[i as usize / 100]))
            .collect(),
    )
}

/// Sets tgt0 down and up, then lowers its MTU to 1000, under a daemon on
/// `config` whose target `ids0` is served by tgt0; `changed_mtu` is what
/// the daemon logs once it has seen the new MTU, `down_seen`/`up_seen`
/// what it logs (or `None`: wait for the target's `up` in the stats).
/// Copies while down: `down`, exactly; after up: sent; over the new MTU:
/// `too_big`, exactly.
fn target_down_up_and_mtu(
    lab: &Lab,
    daemon: &DaemonProcess,
    down_seen: Option<&str>,
    up_seen: Option<&str>,
    changed_mtu: &str,
) {
    let mut client = Client::connect(&daemon.control).expect("control socket");
    send(lab, frames(0, 100, 200));
    let s = settled(&mut client, 100);
    assert_eq!(s.targets["ids0"].sent_packets, 100, "{s:?}");

    lab.src.ip(&["link", "set", "tgt0", "down"]).expect("down");
    match down_seen {
        Some(text) => wait_log(daemon, text, 1),
        None => {
            wait_for(&mut client, "ids0 seen down", |s| !s.targets["ids0"].up);
        }
    }
    send(lab, frames(100, 100, 200));
    let s = settled(&mut client, 200);
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!((t.sent_packets, t.dropped["down"]), (100, 100), "{t:?}");

    lab.src.ip(&["link", "set", "tgt0", "up"]).expect("up");
    lab::netns::wait_oper_up(&lab.src, "tgt0").expect("tgt0 running");
    match up_seen {
        Some(text) => wait_log(daemon, text, 1),
        None => {
            wait_for(&mut client, "ids0 seen up", |s| s.targets["ids0"].up);
        }
    }
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    send(lab, frames(200, 100, 200));
    let s = settled(&mut client, 300);
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!((t.sent_packets, t.dropped["down"]), (200, 100), "{t:?}");
    assert_eq!(lab_frames(&sink.finish()).len(), 100, "resumed after up");

    // The MTU lowered under the running daemon: once it has seen it, the
    // copies over the new bound are `too_big`, exactly, and only the
    // fitting ones reach the port.
    lab.src
        .ip(&["link", "set", "tgt0", "mtu", "1000"])
        .expect("mtu");
    wait_log(daemon, changed_mtu, 1);
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    send(lab, around_1000(300));
    let s = settled(&mut client, 600);
    let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", src);
    assert_reconciles("ids0", t);
    assert_eq!(src.mirrored, 600);
    assert_eq!(t.sent_packets, 300, "{t:?}");
    assert_eq!(t.dropped["too_big"], 200, "{t:?}");
    assert_eq!(t.dropped["down"], 100, "{t:?}");
    assert_eq!(t.dropped_total(), 300, "{t:?}");
    let got = sink.finish();
    let got = lab_frames(&got);
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|f| f.len() == 1018), "only the fitting ones");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn an_af_xdp_target_set_down_and_up_and_its_mtu_lowered_counts_every_copy() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-lc-afxdp").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &tap("", "userspace"));
    target_down_up_and_mtu(&lab, &daemon, None, None, "the target's MTU changed");
    assert_eq!(daemon.log_text().matches("picked up again").count(), 0);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kernel_path_target_set_down_and_up_and_its_mtu_lowered_counts_every_copy() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    // The target port takes frames redirected by XDP.
    lab::gro_on(&lab.sink, Lab::SINK_IF).expect("GRO on");
    let dir = TempDir::new("e2e-lc-devmap").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &tap("", "kernel"));
    target_down_up_and_mtu(
        &lab,
        &daemon,
        Some("the target's interface is down or gone"),
        Some("the target's interface is up again"),
        "kernel path: the target's MTU changed",
    );
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let s = client.stats().expect("stats");
    assert_eq!(s.sessions["ids-feed"].path, "kernel");
    assert_eq!(s.targets["ids0"].kernel_path, 300);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_copy_mode_clone_target_set_down_and_up_and_its_mtu_lowered_counts_every_copy() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-lc-clone").expect("temp dir");
    let text = COPY.replace("@PATH@", "kernel");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    target_down_up_and_mtu(
        &lab,
        &daemon,
        Some("kernel-path target down (or gone)"),
        Some("kernel-path target up again"),
        "kernel-path target's MTU changed",
    );
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let s = client.stats().expect("stats");
    assert_eq!(s.sessions["ids-feed"].path, "kernel");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_copy_mode_ring_buffer_target_set_down_and_up_and_its_mtu_lowered_counts_every_copy() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-lc-ring").expect("temp dir");
    let text = COPY.replace("@PATH@", "userspace");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    target_down_up_and_mtu(&lab, &daemon, None, None, "the target's MTU changed");
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let s = client.stats().expect("stats");
    assert_eq!(s.sessions["ids-feed"].path, "ring_buffer");
}

/// A GRE target on the kernel path whose egress device is set down: its
/// route goes with it, every copy is `down` (exactly: counted once the
/// next-hop thread has seen it), and once the device is up the route, the
/// neighbour and the copies come back.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kernel_tunnels_egress_device_set_down_and_up_counts_down_and_resumes() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = Netns::new("col").expect("netns");
    lab::wire(&lab.src, "gr0", "10.99.2.1", &col, "gr1", "10.99.2.2", 1500).expect("wire");
    lab::gro_on(&col, "gr1").expect("GRO on");
    let dir = TempDir::new("e2e-lc-ktun").expect("temp dir");
    let text = tap("", "kernel").replace(
        "kind = \"interface\"\ninterface = \"tgt0\"",
        "kind = \"gre\"\nremote = \"10.99.2.2\"\nkey = 7",
    );
    assert!(text.contains("kind = \"gre\""));
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let rewritten = "headers rewritten";
    let before = daemon.log_text().matches(rewritten).count();

    send(&lab, frames(0, 100, 200));
    let s = settled(&mut client, 100);
    assert_eq!(s.targets["ids0"].sent_packets, 100, "{s:?}");
    assert_eq!(s.sessions["ids-feed"].path, "kernel");

    lab.src.ip(&["link", "set", "gr0", "down"]).expect("down");
    wait_log(&daemon, "kernel tunnel down", 1);
    send(&lab, frames(100, 100, 200));
    let s = settled(&mut client, 200);
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert!(!t.up);
    assert_eq!((t.sent_packets, t.dropped["down"]), (100, 100), "{t:?}");

    lab.src.ip(&["link", "set", "gr0", "up"]).expect("up");
    lab::netns::wait_oper_up(&lab.src, "gr0").expect("gr0 running");
    wait_log(&daemon, rewritten, before + 1);
    let got = Capture::start(&col, "gr1").expect("capture");
    send(&lab, frames(200, 100, 200));
    let s = settled(&mut client, 300);
    let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", src);
    assert_reconciles("ids0", t);
    assert!(t.up);
    assert_eq!((t.sent_packets, t.kernel_path), (200, 200), "{t:?}");
    assert_eq!(t.dropped["down"], 100, "{t:?}");
    assert_eq!(t.dropped_total(), 100, "{t:?}");
    let gre = got
        .finish()
        .iter()
        .filter_map(|f| ipv4_payload(f))
        .filter(|(d, proto, _)| *d == std::net::Ipv4Addr::new(10, 99, 2, 2) && *proto == 47)
        .count();
    assert_eq!(gre, 100, "the collector gets the copies again");

    // The neighbour entry goes stale (nothing in the stack talks to the
    // collector: the copies leave by XDP): re-confirming it must not take
    // the tunnel down (the netlink request for that needs CAP_NET_ADMIN,
    // which mirror run no longer has).
    let out = lab
        .src
        .command(&["ip", "neigh", "show", "10.99.2.2", "dev", "gr0"])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no neighbour entry: {text:?}"))
        .to_string();
    lab.src
        .ip(&[
            "neigh",
            "change",
            "10.99.2.2",
            "dev",
            "gr0",
            "lladdr",
            &mac,
            "nud",
            "stale",
        ])
        .expect("stale");
    // The next-hop thread looks every 100 ms: give it a few rounds.
    std::thread::sleep(Duration::from_millis(500));
    send(&lab, frames(300, 100, 200));
    let s = settled(&mut client, 400);
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!((t.sent_packets, t.dropped["down"]), (300, 100), "{t:?}");
    assert_eq!(
        daemon.log_text().matches("kernel tunnel down").count(),
        1,
        "{}",
        daemon.log_text()
    );
}

/// A kernel tunnel's egress device set down and up again under a stream
/// (50 kpps): the kernel drops a redirect to a device that is down without
/// a trace, until mirror sees the route gone and counts the copies `down`
/// itself; what the kernel dropped before is counted `down` then. Every
/// copy in exactly one counter, none `unknown`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kernel_tunnels_egress_device_set_down_under_a_stream_counts_every_copy() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let col = Netns::new("col").expect("netns");
    lab::wire(&lab.src, "gr0", "10.99.2.1", &col, "gr1", "10.99.2.2", 1500).expect("wire");
    lab::gro_on(&col, "gr1").expect("GRO on");
    let dir = TempDir::new("e2e-lc-ktun-stream").expect("temp dir");
    let text = tap("", "kernel").replace(
        "kind = \"interface\"\ninterface = \"tgt0\"",
        "kind = \"gre\"\nremote = \"10.99.2.2\"\nkey = 7",
    );
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let sent = flap_tunnel_under_a_stream(&lab, &daemon, "gr0");
    let s = settled(&mut client, sent);
    let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", src);
    assert_reconciles("ids0", t);
    assert!(t.dropped["down"] > 0, "{t:?}");
    assert_eq!(
        t.sent_packets + t.dropped["down"] + t.dropped["send_error"],
        sent,
        "{t:?}"
    );
}

/// The same with the tunnel a member of a target group (two GRE
/// collectors, the session's only target): until mirror sees the route
/// gone, the kernel picks the member for its flows and drops the copies
/// without a trace; then it counts them `down` while the group takes the
/// member out and its flows go to the other. Each copy still in exactly one
/// counter of one member, none `unknown`.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kernel_tunnel_group_members_egress_device_set_down_under_a_stream_counts_every_copy() {
    require_root!();
    let g = GreGroup::start("e2e-lc-kgroup-stream");
    let sent = flap_tunnel_under_a_stream(&g.lab, &g.daemon, "ga0");
    let ta = g.settled(sent);
    assert_eq!(
        ta.sent_packets + ta.dropped["down"] + ta.dropped["send_error"],
        ta.enqueued,
        "{ta:?}"
    );
}

/// The same group with member a's egress device deleted under a stream:
/// each member alone in its DEVMAP, the redirect to the deleted device
/// fails until mirror sees the route gone, and each copy is still counted
/// once, at one member.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kernel_tunnel_group_members_egress_device_deleted_under_a_stream_counts_every_copy() {
    require_root!();
    let g = GreGroup::start("e2e-lc-kgroup-del");
    let stream = frames(0, 100_000, 200);
    let sent = std::thread::scope(|scope| {
        let sender = scope
            .spawn(|| lab::send_frames(&g.lab.gen, Lab::GEN_IF, stream, 50_000).expect("send"));
        std::thread::sleep(Duration::from_millis(300));
        g.lab.src.ip(&["link", "del", "ga0"]).expect("delete");
        wait_log(&g.daemon, "kernel tunnel down", 1);
        sender.join().expect("sender")
    });
    assert_eq!(sent, 100_000);
    g.settled(sent);
}

/// Two GRE collectors (a through ga0, b through gb0) as the members of a
/// target group, the kernel-path session's only target.
struct GreGroup {
    // Dropped in this order: the daemon before its lab.
    daemon: DaemonProcess,
    _dir: TempDir,
    _b: Netns,
    _a: Netns,
    lab: Lab,
}

impl GreGroup {
    fn start(tag: &str) -> GreGroup {
        let lab = Lab::new(1).expect("lab");
        let a = Netns::new("cola").expect("netns");
        let b = Netns::new("colb").expect("netns");
        lab::wire(&lab.src, "ga0", "10.99.1.1", &a, "ga1", "10.99.1.2", 1500).expect("wire");
        lab::wire(&lab.src, "gb0", "10.99.2.1", &b, "gb1", "10.99.2.2", 1500).expect("wire");
        lab::gro_on(&a, "ga1").expect("GRO on");
        lab::gro_on(&b, "gb1").expect("GRO on");
        let dir = TempDir::new(tag).expect("temp dir");
        let text = tap("", "kernel")
            .replace(
                "name = \"ids0\"\nkind = \"interface\"\ninterface = \"tgt0\"",
                "name = \"a\"\nkind = \"gre\"\nremote = \"10.99.1.2\"\n\n\
                 [[target]]\nname = \"b\"\nkind = \"gre\"\nremote = \"10.99.2.2\"\n\n\
                 [[target_group]]\nname = \"pool\"\nmembers = [\"a\", \"b\"]",
            )
            .replace("targets = [\"ids0\"]", "targets = [\"pool\"]");
        assert!(text.contains("[[target_group]]"), "{text}");
        let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
        GreGroup {
            daemon,
            _dir: dir,
            _b: b,
            _a: a,
            lab,
        }
    }

    /// Waits until both members have counted the `sent` copies between
    /// them; checks every counter reconciles, a counted some `down` and b
    /// lost none. Returns a's counters.
    fn settled(&self, sent: u64) -> mirror_user::dataplane::stats::TargetStats {
        let mut client = Client::connect(&self.daemon.control).expect("control socket");
        let s = wait_for(&mut client, "every copy accounted", |s| {
            let src = &s.sources["feed"];
            let (a, b) = (&s.targets["a"], &s.targets["b"]);
            src.received == sent
                && a.enqueued + b.enqueued == sent
                && [a, b]
                    .iter()
                    .all(|t| t.enqueued == t.sent_packets + t.dropped_total())
        });
        assert_eq!(s.sessions["ids-feed"].path, "kernel");
        assert_source_reconciles("feed", &s.sources["feed"]);
        let (ta, tb) = (&s.targets["a"], &s.targets["b"]);
        assert_reconciles("a", ta);
        assert_reconciles("b", tb);
        assert!(ta.dropped["down"] > 0, "{ta:?}");
        assert_eq!(tb.dropped_total(), 0, "{tb:?}");
        ta.clone()
    }
}

/// Sends 150,000 frames at 50 kpps while setting the kernel tunnel's egress
/// device `dev` down and up (at most 6 times, each time waiting for mirror
/// to see the tunnel go and come back); returns the frames sent.
fn flap_tunnel_under_a_stream(lab: &Lab, daemon: &DaemonProcess, dev: &str) -> u64 {
    const FRAMES: u32 = 150_000;
    let rewritten = "headers rewritten";
    let before = daemon.log_text().matches(rewritten).count();
    common::flap_during_a_stream(lab, frames(0, FRAMES, 200), 50_000, (2, 6), |n| {
        lab.src.ip(&["link", "set", dev, "down"]).expect("down");
        wait_log(daemon, "kernel tunnel down", n);
        lab.src.ip(&["link", "set", dev, "up"]).expect("up");
        lab::netns::wait_oper_up(&lab.src, dev).expect("device running");
        wait_log(daemon, rewritten, before + n);
    })
}

/// The source port set down and up: its programs stay attached (XDP for a
/// tap source, tcx for a copy-mode one), and frames after up are mirrored
/// and counted as before.
fn source_down_up(config: &str, tag: &str, copy: bool) {
    let lab = Lab::new(1).expect("lab");
    if !copy {
        lab::gro_on(&lab.sink, Lab::SINK_IF).expect("GRO on");
    }
    let dir = TempDir::new(tag).expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, config);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let attached = || {
        lab.src
            .run(|| Ok(mirror_user::kernel::attached(Lab::FEED_IF)?))
            .expect("attached programs")
    };
    // Copy mode clones at tcx (kernel path) or hooks XDP (ring buffer).
    let programs = |a: &mirror_user::kernel::Attached| a.xdp.len() + a.tcx_ingress.len();
    let at_start = attached();
    assert_eq!(programs(&at_start), 1, "{at_start:?}");

    send(&lab, frames(0, 100, 200));
    settled(&mut client, 100);
    for round in 1..=2u32 {
        lab.src
            .ip(&["link", "set", Lab::FEED_IF, "down"])
            .expect("down");
        lab.src
            .ip(&["link", "set", Lab::FEED_IF, "up"])
            .expect("up");
        lab::netns::wait_oper_up(&lab.src, Lab::FEED_IF).expect("feed0 running");
        lab::netns::wait_oper_up(&lab.gen, Lab::GEN_IF).expect("gen0 running");
        let now = attached();
        assert_eq!(
            (now.xdp, now.tcx_ingress),
            (at_start.xdp.clone(), at_start.tcx_ingress.clone()),
            "the same programs, still attached"
        );
        let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
        send(&lab, frames(100 * round, 100, 200));
        let s = settled(&mut client, 100 * u64::from(round + 1));
        let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
        assert_source_reconciles("feed", src);
        assert_reconciles("ids0", t);
        assert_eq!(src.mirrored, 100 * u64::from(round + 1));
        assert_eq!(t.sent_packets, 100 * u64::from(round + 1), "{t:?}");
        assert_eq!(t.dropped_total(), 0, "{t:?}");
        assert_eq!(lab_frames(&sink.finish()).len(), 100, "mirrored after up");
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_tap_source_set_down_and_up_keeps_mirroring_on_both_paths() {
    require_root!();
    source_down_up(&tap("", "userspace"), "e2e-lc-src-af", false);
    source_down_up(&tap("", "kernel"), "e2e-lc-src-k", false);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_copy_mode_source_set_down_and_up_keeps_mirroring_on_both_paths() {
    require_root!();
    source_down_up(&COPY.replace("@PATH@", "kernel"), "e2e-lc-src-clone", true);
    source_down_up(
        &COPY.replace("@PATH@", "userspace"),
        "e2e-lc-src-ring",
        true,
    );
}

/// Copy mode's kernel clones: a target port deleted is `down` (exactly,
/// once the watcher has seen it), and created again under its name it is
/// cloned to again (the new device).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_copy_mode_clone_target_created_again_under_its_name_is_picked_up() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-lc-clone-re").expect("temp dir");
    let text = COPY.replace("@PATH@", "kernel");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &text);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    send(&lab, frames(0, 100, 200));
    let s = settled(&mut client, 100);
    assert_eq!(s.targets["ids0"].sent_packets, 100, "{s:?}");
    assert_eq!(s.sessions["ids-feed"].path, "kernel");

    lab.src.ip(&["link", "del", "tgt0"]).expect("delete tgt0");
    wait_log(&daemon, "kernel-path target down (or gone)", 1);
    send(&lab, frames(100, 100, 200));
    let s = settled(&mut client, 200);
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!((t.sent_packets, t.dropped["down"]), (100, 100), "{t:?}");

    lab::veth(&lab.src, "tgt0", &lab.sink, "sink0", 1).expect("tgt0 again");
    wait_log(&daemon, "kernel-path target up again", 1);
    let sink = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");
    send(&lab, frames(200, 100, 200));
    let s = settled(&mut client, 300);
    let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", src);
    assert_reconciles("ids0", t);
    assert_eq!((t.sent_packets, t.dropped["down"]), (200, 100), "{t:?}");
    assert_eq!(t.dropped_total(), 100, "{t:?}");
    let got = sink.finish();
    let want = frames(200, 100, 200);
    let got = lab_frames(&got);
    assert_eq!(got.len(), 100, "the new device gets the clones");
    assert!(got.iter().all(|f| want.contains(f)), "byte for byte");
    assert!(daemon.log_text().contains("picked up again"));
}
