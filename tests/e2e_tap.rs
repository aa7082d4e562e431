//! End to end, in network namespaces: the real `mirror run` in tap mode on a
//! two-queue veth feed port, an interface target towards a sink namespace.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_user::config::{self, Direction};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::filter::classify;
use mirror_user::lab::{self, traffic, Capture, DaemonProcess, Lab, TempDir};

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
mode = "tap"
umem_frames = 2048
ring_size = 1024
share_umem = true
@FILTER@
[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[session]]
name = "ids-feed"
source = "feed"
filter = "ids"
targets = ["ids0"]
"#;

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

fn config() -> String {
    CONFIG.replace("@FILTER@", common::IDS_FILTER)
}

/// A lab, a config in a private directory, and a running daemon.
struct Setup {
    daemon: DaemonProcess,
    cfg: config::Config,
    _dir: TempDir,
    lab: Lab,
}

fn setup(tag: &str) -> Setup {
    let lab = Lab::new(2).expect("lab");
    let dir = TempDir::new(&format!("e2e-{tag}")).expect("temp dir");
    let control = dir.path().join("control.sock");
    let text = config().replace("@CONTROL@", &control.to_string_lossy());
    let path = dir.path().join("mirror.toml");
    std::fs::write(&path, &text).expect("write config");
    let cfg = config::parse(&text, "e2e").expect("valid config");
    let daemon = start(&lab, &path, &control, &dir.path().join("daemon.log"));
    Setup {
        daemon,
        cfg,
        _dir: dir,
        lab,
    }
}

fn start(lab: &Lab, config: &Path, control: &Path, log: &Path) -> DaemonProcess {
    DaemonProcess::start(
        &lab.src,
        Path::new(BIN),
        config,
        control,
        log,
        Duration::from_secs(20),
    )
    .expect("daemon starts")
}

/// Polls (bounded) until `done` holds for the daemon's counters.
fn wait_for(client: &mut Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    common::wait_for_stats(client, what, Duration::from_secs(15), done)
}

fn xdp_attached(lab: &Lab) -> bool {
    let out = lab
        .src
        .command(&["ip", "-d", "link", "show", "dev", Lab::FEED_IF])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn accepted_frames_reach_the_sink_byte_identical_with_exact_counts() {
    require_root!();
    let mut s = setup("mix");
    assert!(
        xdp_attached(&s.lab),
        "the daemon attached XDP to the feed port"
    );
    // Each RX queue's worker (two) asked for a short time slice
    // (dataplane::worker; custom slices are Linux 6.12's).
    if mirror_user::lab::process::kernel_at_least(6, 12) {
        let pid = s.daemon.pid().expect("the daemon runs");
        assert_eq!(
            common::wait_thread_slices(pid, "rx-feed-", 2, 100_000),
            vec![100_000; 2]
        );
    }
    let capture = Capture::start(&s.lab.sink, Lab::SINK_IF).expect("capture");
    let frames = Arc::new(traffic::mixed(8000));
    let sent = lab::send_frames(&s.lab.gen, Lab::GEN_IF, frames.clone(), 20_000).expect("send");
    assert_eq!(sent, 8000);

    let filters = vec![&s.cfg.filters[0]];
    let expected: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&filters, Direction::Ingress, f).is_some())
        .collect();
    // 3/8 of frames are TCP and 1/4 of those go to port 22; 1/8 are ICMPv6.
    assert_eq!(expected.len(), 8000 - 750 - 1000);

    let mut client = Client::connect(&s.daemon.control).expect("control socket");
    let stats = wait_for(&mut client, "every frame to be received and sent", |st| {
        st.sources["feed"].received == sent
            && st.sources["feed"].queued == 0
            && st.targets["ids0"].queued == 0
    });
    let got = capture.finish();

    let src = &stats.sources["feed"];
    assert_eq!(src.received, 8000);
    assert_eq!(src.matched, expected.len() as u64);
    assert_eq!(src.filtered, 1750);
    common::assert_source_reconciles("feed", src);
    assert_eq!(src.dropped_total(), 0, "{:?}", src.dropped);
    assert_eq!(src.mirrored, src.matched);
    assert_eq!(src.queues, 2);
    assert_eq!(src.parser["non_ip"], 0);

    let sess = &stats.sessions["ids-feed"];
    assert_eq!((sess.matched, sess.mirrored), (src.matched, src.mirrored));
    assert_eq!(sess.path, "af_xdp");

    let t = &stats.targets["ids0"];
    assert_eq!(t.enqueued, src.mirrored);
    assert_eq!(t.sent_packets, t.enqueued);
    assert_eq!(t.dropped_total(), 0, "{:?}", t.dropped);
    let bytes: u64 = expected.iter().map(|f| f.len() as u64).sum();
    assert_eq!(t.sent_bytes, bytes);
    // RX queue 0 shares ids0's UMEM (its frames go out uncopied); queue 1
    // copies into ids0's queue.
    assert!(
        t.shared_umem > 0 && t.shared_umem <= t.sent_packets,
        "shared {} of {}",
        t.shared_umem,
        t.sent_packets
    );
    assert!(s
        .daemon
        .log_text()
        .contains("RX queue shares the interface target's UMEM"));

    // Byte for byte: the sink got exactly the accepted frames, nothing else.
    let mut want: Vec<&[u8]> = expected.iter().map(|f| f.as_slice()).collect();
    let mut have: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have.len(), want.len(), "frames at the sink");
    if have != want {
        let missing: Vec<_> = want
            .iter()
            .filter(|w| have.binary_search(w).is_err())
            .take(2)
            .collect();
        panic!("the sink's frames differ from the accepted ones; first missing: {missing:02x?}");
    }

    let status = s
        .daemon
        .stop(Duration::from_secs(10))
        .expect("daemon stops");
    assert!(
        status.success(),
        "SIGTERM: exit 0, got {status}\n{}",
        s.daemon.log_text()
    );
    assert!(!xdp_attached(&s.lab), "SIGTERM detached XDP");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn sigkill_leaves_no_xdp_program_attached_and_a_new_daemon_starts() {
    require_root!();
    let mut s = setup("kill");
    assert!(xdp_attached(&s.lab));
    s.daemon.signal(libc::SIGKILL);
    let status = s.daemon.wait(Duration::from_secs(10)).expect("daemon dies");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // The link's fd died with the process: the kernel detached the program.
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(&s.lab) {
        assert!(
            Instant::now() < deadline,
            "XDP still attached after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A restarted daemon takes over cleanly (stale control socket included).
    let dir = s._dir.path().to_path_buf();
    let mut again = start(
        &s.lab,
        &dir.join("mirror.toml"),
        &dir.join("control.sock"),
        &dir.join("again.log"),
    );
    assert!(xdp_attached(&s.lab));
    let st = again.stop(Duration::from_secs(10)).expect("stops");
    assert!(st.success());
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copies_for_a_down_target_are_dropped_and_counted() {
    require_root!();
    let s = setup("down");
    s.lab
        .sink
        .ip(&["link", "set", Lab::SINK_IF, "down"])
        .expect("sink down");
    let mut client = Client::connect(&s.daemon.control).expect("control socket");
    wait_for(&mut client, "the target to be seen down", |st| {
        !st.targets["ids0"].up
    });
    let frames = Arc::new(traffic::mixed(500));
    let sent = lab::send_frames(&s.lab.gen, Lab::GEN_IF, frames, 10_000).expect("send");
    let stats = wait_for(&mut client, "every frame to be accounted", |st| {
        st.sources["feed"].received == sent
            && st.targets["ids0"].enqueued == st.sources["feed"].mirrored
    });
    let src = &stats.sources["feed"];
    assert_eq!(src.received, 500);
    assert_eq!(src.matched + src.filtered, 500);
    assert_eq!(
        src.mirrored, src.matched,
        "the source loses nothing to a dead target"
    );
    let t = &stats.targets["ids0"];
    assert_eq!(t.dropped["down"], src.mirrored);
    assert_eq!(t.enqueued, t.sent_packets + t.dropped_total());
    assert_eq!(t.sent_packets, 0);
}

/// `check --file-only` skips this host, not the warnings the file alone
/// shows: a target no session uses, rules for a direction the source does
/// not mirror, a schedule window that overrides nothing (a trial saw only
/// `ok` with the flag, and the window's warning without it). The unused
/// target's missing directory is this host's business, and not reported.
#[test]
fn check_file_only_gives_the_warnings_of_the_file_alone() {
    let dir = TempDir::new("e2e-check-warn").expect("temp dir");
    let path = dir.path().join("warn.toml");
    let egress = "[[filter.rule]]\nnumber = 300\naction = \"accept\"\ndirection = \"egress\"\n";
    let spare = "[[target]]\nname = \"spare\"\nkind = \"pcapng\"\n\
                 path = \"/nonexistent-mirror-dir/y.pcapng\"\n\n[[session]]";
    let text = CONFIG
        .replace("@FILTER@", &format!("{}{egress}", common::IDS_FILTER))
        .replace("[[session]]", spare)
        + "[[session.schedule]]\ndays = \"sat,sun\"\ntimezone = \"UTC\"\n";
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--file-only", "-c"])
        .arg(&path)
        .output()
        .expect("run check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("warn.toml: ok ("), "{stdout}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once(": warning: ").map(|(_, w)| w))
        .collect();
    assert_eq!(
        warnings,
        [
            "target `spare` is used by no session: `mirror run` does not open it",
            "source `feed` does not mirror egress frames (a tap source mirrors ingress only), \
             so the 1 egress rule(s) of filter `ids` never apply to it",
            "session `ids-feed`: schedule window 1 (sat,sun 00:00-24:00 UTC) sets none of \
             enabled, sample, rate_limit_pps, packet_length, flow_cutoff_bytes, \
             flow_cutoff_packets: inside it the session's own values apply, as outside every \
             window",
        ],
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "nothing of this host: {stderr}");
}

#[test]
fn check_reports_errors_with_positions_and_run_refuses_a_bad_file() {
    let dir = TempDir::new("e2e-check").expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config().replace("destination_port = \"22\"", "destination_port = \"22-1\""),
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .expect("run check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.toml:20:20: filter[0].rule[0].destination_port: range \"22-1\" is reversed"
        ),
        "{err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config()).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--file-only", "-c"])
        .arg(&good)
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `run` refuses the bad file for what is wrong with it, at its line and
    // column, before it needs root or touches an interface (which fails too:
    // feed0 does not exist here, so the exit status alone proves nothing).
    let out = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.toml:20:20: filter[0].rule[0].destination_port: range \"22-1\" is reversed: write \"1-22\""
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "only the file's error: {err}");
}

/// Runs `mirror ARGS… --control SOCKET`; returns (success, stdout + stderr).
fn cli(control: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .expect("run the mirror client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn live_rule_changes_and_reloads_under_traffic_lose_no_frame() {
    require_root!();
    let s = setup("rules");
    let control = s.daemon.control.clone();
    let mut client = Client::connect(&control).expect("control socket");
    let capture = Capture::start(&s.lab.sink, Lab::SINK_IF).expect("capture");

    // 1. Twenty rule swaps while 12000 frames flow. The rule added and
    // deleted matches nothing in the traffic (UDP port 9), so every frame has
    // one verdict throughout, and the sink must get exactly the accepted ones.
    let frames = Arc::new(traffic::mixed(12_000));
    let sent = std::thread::scope(|scope| {
        let sender =
            scope.spawn(|| lab::send_frames(&s.lab.gen, Lab::GEN_IF, frames.clone(), 10_000));
        for _ in 0..10 {
            let (ok, out) = cli(
                &control,
                &[
                    "rules",
                    "add",
                    "--filter",
                    "ids",
                    "--number",
                    "150",
                    "--action",
                    "reject",
                    "--protocol",
                    "udp",
                    "--destination-port",
                    "9",
                ],
            );
            assert!(ok, "{out}");
            assert!(
                out.contains("source feed: 4 rules in force (both directions)"),
                "{out}"
            );
            let (ok, out) = cli(
                &control,
                &["rules", "delete", "--filter", "ids", "--number", "150"],
            );
            assert!(ok, "{out}");
            assert!(
                out.contains("source feed: 3 rules in force (both directions)"),
                "{out}"
            );
        }
        sender.join().expect("sender").expect("send")
    });
    assert_eq!(sent, 12_000);
    let filters = vec![&s.cfg.filters[0]];
    let expected: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| classify::classify(&filters, Direction::Ingress, f).is_some())
        .collect();
    let stats = wait_for(&mut client, "every frame to be received and sent", |st| {
        st.sources["feed"].received == sent && st.targets["ids0"].queued == 0
    });
    let src = &stats.sources["feed"];
    assert_eq!(src.rule_sets_installed, 21);
    assert_eq!(src.rules, 3);
    assert_eq!(src.no_rule_set, 0);
    assert_eq!(src.matched, expected.len() as u64);
    assert_eq!(src.received, src.matched + src.filtered);
    assert_eq!(src.mirrored, src.matched, "{:?}", src.dropped);
    assert_eq!(stats.targets["ids0"].sent_packets, src.matched);
    assert_eq!(capture.count(), expected.len() as u32, "frames at the sink");

    // 2. A bad live rule is refused with its position; the rules stay.
    let (ok, out) = cli(
        &control,
        &[
            "rules",
            "add",
            "--filter",
            "ids",
            "--number",
            "5",
            "--action",
            "accept",
            "--protocol",
            "icmp",
            "--destination-port",
            "80",
        ],
    );
    assert!(!ok);
    assert!(out.contains("destination_port needs protocol"), "{out}");
    assert!(out.contains("the running rules stay in force"), "{out}");
    // Located at the flag the user typed, not in the text sent for it.
    assert!(
        out.contains("--destination-port \"80\": ") && !out.contains("rule:"),
        "{out}"
    );
    let (ok, out) = cli(
        &control,
        &[
            "rules", "add", "--filter", "nope", "--number", "5", "--action", "accept",
        ],
    );
    assert!(!ok && out.contains("no filter named `nope`"), "{out}");
    let (ok, out) = cli(&control, &["rules", "list"]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "filter ids (sessions: ids-feed)\n\
         \x20   number = 100, action = \"reject\", direction = \"ingress\", protocol = \"tcp\", destination_port = \"22\"\n\
         \x20   number = 110, action = \"reject\", direction = \"ingress\", protocol = \"icmpv6\"\n\
         \x20   number = 200, action = \"accept\", direction = \"ingress\"\n"
    );
    let (ok, out) = cli(&control, &["rules", "list", "--json"]);
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!([{
            "name": "ids",
            "sessions": ["ids-feed"],
            "rules": [
                {"number": 100, "action": "reject", "direction": "ingress",
                 "protocol": "tcp", "destination_port": "22"},
                {"number": 110, "action": "reject", "direction": "ingress", "protocol": "icmpv6"},
                {"number": 200, "action": "accept", "direction": "ingress"},
            ]
        }])
    );
    // Every change, and every refusal, has its line in the daemon's log.
    let log = s.daemon.log_text();
    assert!(
        log.contains("rules add rejected: the running rules stay filter=\"ids\""),
        "{log}"
    );
    assert_eq!(
        log.matches("rules add: rule added live (the config file is unchanged) filter=\"ids\" rule=number = 150, action = \"reject\", direction = \"ingress\", protocol = \"udp\", destination_port = \"9\"").count(),
        10,
        "{log}"
    );
    assert_eq!(
        log.matches("rules delete: rule deleted live (the config file is unchanged) filter=\"ids\" number=150 direction=ingress").count(),
        10,
        "{log}"
    );

    // 3. SIGHUP with a file that now rejects all TCP: the next frames get
    // the new verdicts, exactly.
    let path = s._dir.path().join("mirror.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    let tcp_off = text.replace("destination_port = \"22\"\n", "");
    std::fs::write(&path, &tcp_off).expect("write config");
    s.daemon.signal(libc::SIGHUP);
    let before = wait_for(&mut client, "the reload", |st| {
        st.sources["feed"].rule_sets_installed == 22
    });
    let more = Arc::new(traffic::mixed(800));
    let sent2 = lab::send_frames(&s.lab.gen, Lab::GEN_IF, more.clone(), 10_000).expect("send");
    let new_cfg = config::parse(&tcp_off, "reloaded").expect("valid");
    let want2 = more
        .iter()
        .filter(|f| classify::classify(&[&new_cfg.filters[0]], Direction::Ingress, f).is_some())
        .count() as u64;
    // 3/8 of the frames are TCP; 1/8 ICMPv6.
    assert_eq!(want2, 800 - 300 - 100);
    let after = wait_for(&mut client, "the second batch", |st| {
        st.sources["feed"].received == sent + sent2
    });
    assert_eq!(
        after.sources["feed"].matched - before.sources["feed"].matched,
        want2
    );

    // 4. A reload whose changed target cannot start here, or an invalid
    // file, is refused and the running config stays.
    std::fs::write(&path, tcp_off.replace("tgt0", "tgt9")).expect("write config");
    let (ok, out) = cli(&control, &["reload"]);
    assert!(
        !ok && out.contains(
            "the new config cannot start here, nothing was changed:\n  target `ids0`: \
             interface tgt9 does not exist in this network namespace; the running config \
             stays in force"
        ),
        "{out}"
    );
    std::fs::write(&path, tcp_off.replace("number = 200", "number = 0")).expect("write config");
    let (ok, out) = cli(&control, &["reload"]);
    assert!(!ok && out.contains("mirror.toml:"), "{out}");
    let st = client.stats().expect("stats");
    assert_eq!(st.sources["feed"].rule_sets_installed, 22);
    assert_eq!(st.sources["feed"].rules, 3);
}
