//! End to end, in network namespaces: a reload that changes more than
//! filters, applied as a diff under traffic. What it keeps runs on without
//! losing a frame or a counter; what it removes stops, what it adds starts,
//! what it changes restarts alone with its counters carried on.
//!
//! ```text
//!  ns gen         ns src (mirror)                   ns sink
//!  gen0 ──veth── feed0 [tap] ─▶ ids0: tgt0 ──veth── sink0
//!  gen1 ──veth── feed1 [tap] ─▶ cap (pcapng)          (before)
//!                            └▶ ids1: tgt1 ──veth── sink1   (after)
//! ```

mod common;

use std::sync::Arc;

use common::{assert_reconciles, assert_source_reconciles, read_pcapng, wait_for};
use mirror_user::control::Client;
use mirror_user::lab::process::held_fds;
use mirror_user::lab::{self, traffic, Lab, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

const BEFORE: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[source]]
name = "feed2"
interface = "feed1"

[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[filter]]
name = "second"
[[filter.rule]]
number = 100
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
name = "cap"
kind = "pcapng"
path = "@DIR@/b.pcapng"

[[session]]
name = "a"
source = "feed"
filter = "all"
targets = ["ids0"]
path = "userspace"

[[session]]
name = "b"
source = "feed2"
filter = "second"
targets = ["cap"]
"#;

/// `BEFORE` with session `b` (and so `cap`, unused) replaced by `c` to the
/// new interface target `ids1`, and a rule of `second` changed: TCP is
/// rejected now.
fn after(before: &str) -> String {
    before
        .replace(
            "name = \"b\"\nsource = \"feed2\"\nfilter = \"second\"\ntargets = [\"cap\"]",
            "name = \"c\"\nsource = \"feed2\"\nfilter = \"second\"\ntargets = [\"ids1\"]",
        )
        .replace(
            "name = \"second\"\n[[filter.rule]]\nnumber = 100",
            "name = \"second\"\n[[filter.rule]]\nnumber = 50\naction = \"reject\"\n\
             direction = \"ingress\"\nprotocol = \"tcp\"\n[[filter.rule]]\nnumber = 100",
        )
}

/// Frames `first..first + n`, alternating TCP (even) and UDP (odd).
fn mix(first: u32, n: u32) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (first..first + n)
            .map(|i| traffic::frame(traffic::SHAPES[(i % 2) as usize], i, 160))
            .collect(),
    )
}

/// Reload under traffic: source `feed`, session `a` and target `ids0` are
/// untouched and lose nothing (every one of 12,000 frames sent across the
/// reload is mirrored and sent, counters continuous); session `b` and its
/// pcapng target stop (the file holds exactly what was sent before); session
/// `c` and target `ids1` start; source `feed2` restarts with its counters
/// carried on and the changed rule in force; the daemon holds as many BPF
/// programs and links afterwards as before.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_reload_adds_and_removes_sessions_and_targets_under_traffic_and_the_untouched_lose_nothing() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    lab::veth(&lab.gen, "gen1", &lab.src, "feed1", 1).expect("feed1");
    lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1).expect("tgt1");
    let dir = TempDir::new("e2e-reload").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, BEFORE);
    let pid = daemon.pid().expect("running");
    let mut client = Client::connect(&daemon.control).expect("control socket");

    // Before: 100 frames on each source.
    lab::send_frames(&lab.gen, Lab::GEN_IF, mix(0, 100), 10_000).expect("send feed0");
    lab::send_frames(&lab.gen, "gen1", mix(0, 100), 10_000).expect("send feed1");
    wait_for(&mut client, "200 copies", |s| {
        s.targets["ids0"].sent_packets == 100 && s.targets["cap"].sent_packets == 100
    });
    let (_, _, progs0, links0) = held_fds(pid);

    // Traffic on feed0 all through the reload: 12,000 frames in 4 s.
    let total = 12_000u32;
    let sender = {
        let gen = lab.gen.name().to_string();
        let frames = mix(100, total);
        std::thread::spawn(move || {
            lab::send_frames(&lab::Netns::attach(&gen), Lab::GEN_IF, frames, 3_000)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(800));
    let config = dir.path().join("mirror.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, after(&text)).expect("new config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", daemon.log_text());
    assert!(
        stdout.contains(
            "reloaded: started target ids1; stopped target cap; restarted source feed2; \
             everything else kept running"
        ),
        "{stdout}"
    );
    assert_eq!(
        sender.join().expect("sender").expect("send"),
        u64::from(total)
    );

    // After: 100 more frames on feed1, half of them TCP, now rejected.
    lab::send_frames(&lab.gen, "gen1", mix(100, 100), 10_000).expect("send feed1");
    let s = wait_for(&mut client, "every frame accounted", |s| {
        let (feed, feed2) = (&s.sources["feed"], &s.sources["feed2"]);
        feed.received == u64::from(100 + total)
            && feed.queued == 0
            && s.targets["ids0"].queued == 0
            && feed2.received == 200
            && s.targets.get("ids1").is_some_and(|t| t.sent_packets == 50)
    });
    // Untouched: every frame, every copy, no drop.
    let (feed, ids0) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", feed);
    assert_reconciles("ids0", ids0);
    assert_eq!(feed.matched, u64::from(100 + total), "{feed:?}");
    assert_eq!(feed.mirrored, u64::from(100 + total), "{feed:?}");
    assert_eq!(ids0.sent_packets, u64::from(100 + total), "{ids0:?}");
    assert_eq!(ids0.dropped_total(), 0, "{ids0:?}");
    assert_eq!(s.sessions["a"].mirrored, u64::from(100 + total));
    assert_eq!(
        s.sources["feed"].rule_sets_installed, 2,
        "rules installed live"
    );
    // Restarted: its counters carry on across the restart.
    let feed2 = &s.sources["feed2"];
    assert_source_reconciles("feed2", feed2);
    assert_eq!(
        (
            feed2.received,
            feed2.matched,
            feed2.filtered,
            feed2.mirrored
        ),
        (200, 150, 50, 150),
        "{feed2:?}"
    );
    // Removed: gone from the counters; its file holds what it was sent.
    assert!(!s.sessions.contains_key("b"), "{:?}", s.sessions.keys());
    assert!(!s.targets.contains_key("cap"), "{:?}", s.targets.keys());
    assert_eq!(read_pcapng(&dir.path().join("b.pcapng")).len(), 100);
    // Added.
    let ids1 = &s.targets["ids1"];
    assert_reconciles("ids1", ids1);
    assert_eq!((ids1.enqueued, ids1.sent_packets), (50, 50), "{ids1:?}");
    assert_eq!(s.sessions["c"].mirrored, 50);
    let (_, _, progs1, links1) = held_fds(pid);
    assert_eq!(
        (progs1, links1),
        (progs0, links0),
        "BPF programs and links held"
    );
    let log = daemon.log_text();
    assert!(log.contains("reloaded"), "{log}");
}

/// A reload whose new parts cannot start here is refused before anything
/// stops: the running sources and targets keep counting.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_reload_whose_new_target_cannot_start_changes_nothing() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    lab::veth(&lab.gen, "gen1", &lab.src, "feed1", 1).expect("feed1");
    let dir = TempDir::new("e2e-reload-bad").expect("temp dir");
    let (daemon, _) = common::start_daemon(
        BIN,
        &lab.src,
        &dir,
        &BEFORE.replace(
            "[[target]]\nname = \"ids1\"\nkind = \"interface\"\ninterface = \"tgt1\"\n",
            "",
        ),
    );
    let mut client = Client::connect(&daemon.control).expect("control socket");
    lab::send_frames(&lab.gen, Lab::GEN_IF, mix(0, 100), 10_000).expect("send");
    wait_for(&mut client, "100 copies", |s| {
        s.targets["ids0"].sent_packets == 100
    });
    // ids1's interface tgt1 does not exist in this lab.
    let config = dir.path().join("mirror.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let new = after(&text).replace(
        "[[session]]\nname = \"c\"",
        "[[target]]\nname = \"ids1\"\nkind = \"interface\"\ninterface = \"tgt1\"\n\n[[session]]\nname = \"c\"",
    );
    std::fs::write(&config, new).expect("new config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains(
            "the new config cannot start here, nothing was changed:\n  target `ids1`: \
             interface tgt1 does not exist in this network namespace"
        ),
        "{stderr}"
    );
    lab::send_frames(&lab.gen, Lab::GEN_IF, mix(100, 100), 10_000).expect("send");
    let s = wait_for(&mut client, "200 copies", |s| {
        s.targets["ids0"].sent_packets == 200
    });
    assert!(s.targets.contains_key("cap") && s.sessions.contains_key("b"));
    assert_eq!(s.sources["feed"].rule_sets_installed, 1);
    // The daemon's log says it too, on one line (it spread the list of
    // problems over several).
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("mirror reload: reload rejected")
                && l.contains("interface tgt1 does not exist in this network namespace")),
        "{log}"
    );
    // The file as it runs again: a reload says nothing changed (it said
    // "filters only") and restarts nothing.
    std::fs::write(&config, &text).expect("the first config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("reloaded: nothing changed: the file is what was running"),
        "{stdout}"
    );
}

const TWO_SOURCES: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"

[[source]]
name = "live"
interface = "cp0"
mode = "copy"

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

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/live.pcapng"

[[session]]
name = "a"
source = "feed"
filter = "all"
targets = ["ids0"]

[[session]]
name = "b"
source = "live"
filter = "all"
targets = ["cap"]
"#;

/// Deletes the tap source's port feed0 (with its peer) and creates it
/// Changes the daemon's config file (the first `from` becomes `to`), has
/// it reload, and checks that the reply says `reply`.
fn reload_with(
    daemon: &mirror_user::lab::DaemonProcess,
    dir: &TempDir,
    from: &str,
    to: &str,
    reply: &str,
) {
    let config = dir.path().join("mirror.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let changed = text.replacen(from, to, 1);
    assert_ne!(changed, text);
    std::fs::write(&config, changed).expect("new config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", daemon.log_text());
    assert!(stdout.contains(reply), "{stdout}");
}

/// again, waiting until the daemon has said it gone and attached again.
fn recreate_feed(lab: &Lab, daemon: &mut mirror_user::lab::DaemonProcess) {
    lab.src.ip(&["link", "del", "feed0"]).expect("delete feed0");
    daemon
        .wait_for_log(
            "the source's interface is gone",
            std::time::Duration::from_secs(10),
        )
        .expect("said gone");
    lab::veth(&lab.gen, Lab::GEN_IF, &lab.src, Lab::FEED_IF, 1).expect("feed0 again");
    daemon
        .wait_for_log(
            "re-attached to the re-created interface",
            std::time::Duration::from_secs(30),
        )
        .expect("re-attached");
}

/// A source's interface deleted, then created again under its name (tap
/// and copy mode): said once when gone, attached to the new device when
/// back (logged), its counters carried on; the other source runs on.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_source_interface_deleted_and_created_again_is_attached_again() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    lab::veth(&lab.gen, "cp1", &lab.src, "cp0", 1).expect("cp0");
    let dir = TempDir::new("e2e-reload-src").expect("temp dir");
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, TWO_SOURCES);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let send = |port: &str, first: u32| {
        let sent = lab::send_frames(&lab.gen, port, mix(first, 100), 10_000).expect("send");
        assert_eq!(sent, 100);
    };
    send(Lab::GEN_IF, 0);
    send("cp1", 0);
    wait_for(&mut client, "100 copies each", |s| {
        s.targets["ids0"].sent_packets == 100 && s.targets["cap"].sent_packets == 100
    });

    // Tap: the feed port goes (with its peer), then comes back.
    recreate_feed(&lab, &mut daemon);
    send(Lab::GEN_IF, 100);
    send("cp1", 100);
    let s = wait_for(&mut client, "200 copies each", |s| {
        s.targets["ids0"].sent_packets == 200
            && s.targets["cap"].sent_packets == 200
            && s.sources["feed"].queued == 0
    });
    let feed = &s.sources["feed"];
    assert_source_reconciles("feed", feed);
    assert_eq!((feed.received, feed.mirrored), (200, 200), "{feed:?}");
    assert_reconciles("ids0", &s.targets["ids0"]);
    assert_eq!(s.targets["ids0"].dropped_total(), 0);
    assert!(
        daemon
            .log_text()
            .contains("re-attached to the re-created interface changes=restarted source feed"),
        "{}",
        daemon.log_text()
    );

    // Copy mode: the live port, likewise.
    lab.src.ip(&["link", "del", "cp0"]).expect("delete cp0");
    lab::veth(&lab.gen, "cp1", &lab.src, "cp0", 1).expect("cp0 again");
    daemon
        .wait_for_log("restarted source live", std::time::Duration::from_secs(30))
        .expect("re-attached");
    send("cp1", 200);
    let s = wait_for(&mut client, "300 copies in the capture", |s| {
        s.targets["cap"].sent_packets == 300 && s.sources["live"].queued == 0
    });
    let live = &s.sources["live"];
    assert_source_reconciles("live", live);
    assert_eq!((live.received, live.mirrored), (300, 300), "{live:?}");
    assert_eq!(
        s.sources["feed"].received, 200,
        "the other source untouched"
    );
}

/// A tap source restarted (its interface deleted and created again, then
/// by a reload that changes it) whose session runs on the kernel path: what
/// the old programs sent its interface target stays in the target's
/// counters (200 after 100 and 100, then 300).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_restarted_sources_kernel_path_counts_carry_on_in_the_kept_target() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    lab::gro_on(&lab.sink, Lab::SINK_IF).expect("GRO on");
    lab::veth(&lab.gen, "cp1", &lab.src, "cp0", 1).expect("cp0");
    let dir = TempDir::new("e2e-reload-kpath").expect("temp dir");
    let (mut daemon, _) = common::start_daemon(
        BIN,
        &lab.src,
        &dir,
        &TWO_SOURCES.replace(
            "targets = [\"ids0\"]",
            "targets = [\"ids0\"]\npath = \"kernel\"",
        ),
    );
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let send = |first: u32| {
        let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, mix(first, 100), 10_000).expect("send");
        assert_eq!(sent, 100);
    };
    send(0);
    let s = wait_for(&mut client, "100 copies", |s| {
        s.targets["ids0"].sent_packets == 100
    });
    assert_eq!(s.sessions["a"].path, "kernel");
    recreate_feed(&lab, &mut daemon);
    send(100);
    let s = wait_for(&mut client, "200 copies", |s| {
        s.sources["feed"].received == 200 && s.targets["ids0"].enqueued >= 200
    });
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!(
        (t.enqueued, t.sent_packets, t.kernel_path),
        (200, 200, 200),
        "{t:?}"
    );
    assert_eq!(s.sessions["a"].mirrored, 200);

    // A reload that changes the source restarts it, its session and the
    // target its kernel path sends to; their counts carry on.
    reload_with(
        &daemon,
        &dir,
        "interface = \"feed0\"",
        "interface = \"feed0\"\nring_size = 1024",
        "restarted source feed, target ids0",
    );
    send(200);
    let s = wait_for(&mut client, "300 copies", |s| {
        s.sources["feed"].received == 300 && s.targets["ids0"].enqueued >= 300
    });
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!(
        (t.enqueued, t.sent_packets, t.kernel_path),
        (300, 300, 300),
        "{t:?}"
    );
    assert_eq!(s.sessions["a"].mirrored, 300);
}

/// A copy source on the kernel path (tcx clones to ids0), restarted by a
/// reload that changes only its session: the target keeps running, and
/// what the old programs cloned to it stays in its counters (100, then 200).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_kept_target_keeps_what_a_restarted_sources_kernel_path_sent_it() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    lab::gro_on(&lab.sink, Lab::SINK_IF).expect("GRO on");
    lab::veth(&lab.gen, "cp1", &lab.src, "cp0", 1).expect("cp0");
    let dir = TempDir::new("e2e-reload-kept").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, COPY_KERNEL);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    let send = |first: u32| {
        let sent = lab::send_frames(&lab.gen, "cp1", mix(first, 100), 10_000).expect("send");
        assert_eq!(sent, 100);
    };
    send(0);
    let s = wait_for(&mut client, "100 copies", |s| {
        s.targets["ids0"].sent_packets == 100
    });
    assert_eq!(s.sessions["a"].path, "kernel");

    reload_with(
        &daemon,
        &dir,
        "path = \"kernel\"",
        "path = \"kernel\"\nflow_cutoff_bytes = 1000000",
        "restarted source live; everything else kept running",
    );
    let t = &client.stats().expect("stats").targets["ids0"];
    assert_eq!(
        (t.enqueued, t.sent_packets, t.kernel_path),
        (100, 100, 100),
        "right after the reload: {t:?}"
    );
    send(100);
    let s = wait_for(&mut client, "200 copies", |s| {
        s.sources["live"].received == 200 && s.targets["ids0"].sent_packets >= 200
    });
    let t = &s.targets["ids0"];
    assert_reconciles("ids0", t);
    assert_eq!(
        (t.enqueued, t.sent_packets, t.kernel_path),
        (200, 200, 200),
        "{t:?}"
    );
    assert_eq!(s.sessions["a"].mirrored, 200);
}

/// One copy-mode source whose session clones to an interface target in
/// the kernel.
const COPY_KERNEL: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "cp0"
mode = "copy"

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
name = "a"
source = "live"
filter = "all"
targets = ["ids0"]
path = "kernel"
"#;

/// A reload whose new source passes the host checks but which the kernel
/// refuses to attach (native XDP on loopback): what the reload had stopped
/// (`feed2`, whose session changed) starts again as it was, the untouched
/// source never stopped, and the reply says so.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_reload_whose_start_fails_is_rolled_back() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    lab::veth(&lab.gen, "gen1", &lab.src, "feed1", 1).expect("feed1");
    lab::veth(&lab.src, "tgt1", &lab.sink, "sink1", 1).expect("tgt1");
    let dir = TempDir::new("e2e-reload-back").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, BEFORE);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    lab::send_frames(&lab.gen, "gen1", mix(0, 100), 10_000).expect("send");
    wait_for(&mut client, "100 in the capture", |s| {
        s.targets["cap"].sent_packets == 100
    });

    let config = dir.path().join("mirror.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let bad = text.replace(
        "name = \"b\"\nsource = \"feed2\"",
        "name = \"b\"\nsample = 2\nsource = \"feed2\"",
    ) + "\n[[source]]\nname = \"lo\"\ninterface = \"lo\"\nmode = \"copy\"\nxdp_mode = \"native\"\n\
         ingress_hook = \"xdp\"\n\n[[session]]\nname = \"l\"\nsource = \"lo\"\nfilter = \"all\"\n\
         targets = [\"ids0\"]\n";
    std::fs::write(&config, bad).expect("new config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("starting the new config failed; the previous config runs again")
            && stderr.contains("attaching XDP to lo in native mode"),
        "{stderr}"
    );
    // feed2 runs again as before (every frame to cap, no sampling), its
    // counters carried on; feed never stopped.
    lab::send_frames(&lab.gen, "gen1", mix(100, 100), 10_000).expect("send");
    lab::send_frames(&lab.gen, Lab::GEN_IF, mix(0, 50), 10_000).expect("send");
    let s = wait_for(&mut client, "the old config at work", |s| {
        s.targets["cap"].sent_packets == 200 && s.targets["ids0"].sent_packets == 50
    });
    assert!(!s.sources.contains_key("lo"), "{:?}", s.sources.keys());
    let feed2 = &s.sources["feed2"];
    assert_source_reconciles("feed2", feed2);
    assert_eq!(
        (feed2.received, feed2.mirrored, feed2.sampled_out),
        (200, 200, 0)
    );
    let feed = &s.sources["feed"];
    assert_eq!((feed.received, feed.mirrored), (50, 50), "{feed:?}");
    // Never stopped; its rules, the same, installed again by the rollback.
    assert_eq!(feed.rule_sets_installed, 2);
    // And a later, good reload still works.
    std::fs::write(&config, after(&text)).expect("good config");
    let out = common::ctl(BIN, &["reload"], &daemon.control);
    assert!(out.status.success(), "{out:?}\n{}", daemon.log_text());
}
