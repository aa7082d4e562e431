//! End to end, in network namespaces: the running daemon as its operator
//! meets it. `[daemon] cpus` holds every thread of the process; the control
//! socket is mode 0600 and root's; `mirror stats --json` has the SPEC's shape
//! (sources, sessions, targets, groups; a drop counter an object of reasons)
//! and the same numbers as the control socket's own `stats` answer.

mod common;

use common::{assert_reconciles, wait_for};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use mirror_user::control::Client;
use mirror_user::lab::{self, traffic, DaemonProcess, Lab, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

/// Every kind of thread the daemon runs: an RX worker, an interface
/// sender, a tunnel sender (to a collector with no route: its copies are
/// dropped, by reason) and a pcapng writer, the last two in a group.
const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"
@CPUS@

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
name = "nowhere"
kind = "gre"
remote = "10.99.9.9"

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/cap.pcapng"

[[target_group]]
name = "pool"
members = ["nowhere", "cap"]

[[session]]
name = "all"
source = "feed"
filter = "all"
targets = ["ids0", "pool"]
"#;

/// A lab and the daemon running `CONFIG` with `cpus` (a `[daemon]` line or
/// nothing) in its src namespace.
fn start(tag: &str, cpus: &str) -> (Lab, TempDir, DaemonProcess) {
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new(tag).expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, &CONFIG.replace("@CPUS@", cpus));
    (lab, dir, daemon)
}

/// Sends 300 frames of 200 bytes and waits until each target is idle and
/// reconciles: a quiet moment, when no counter moves.
fn traffic_then_quiet(lab: &Lab, client: &mut Client) {
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|i| traffic::frame(traffic::Shape::Udp4, i, 200))
        .collect();
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    assert_eq!(sent, 300);
    let st = wait_for(client, "every copy accounted for", |st| {
        st.sources["feed"].received == 300
            && st.targets["ids0"].sent_packets == 300
            && st.targets["nowhere"].enqueued + st.targets["cap"].enqueued == 300
            && st
                .targets
                .values()
                .all(|t| t.queued == 0 && t.enqueued == t.sent_packets + t.dropped_total())
    });
    for (name, t) in &st.targets {
        assert_reconciles(name, t);
    }
}

/// The CPUs a task may run on, as /proc says (`Cpus_allowed_list`).
fn cpus_allowed(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn daemon_cpus_holds_every_thread_of_the_running_daemon() {
    require_root!();
    let (lab, _dir, daemon) = start("e2e-cpus", "cpus = \"0\"");
    let mut client = Client::connect(&daemon.control).expect("control socket");
    // Traffic and requests, so that every thread the daemon starts lazily
    // (the control plane's blocking pool) exists too.
    traffic_then_quiet(&lab, &mut client);
    let pid = daemon.pid().expect("the daemon's pid");
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert_eq!(
        std::fs::read_to_string(proc.join("comm"))
            .expect("comm")
            .trim(),
        "mirror",
        "the pid is the daemon's own (ip netns exec execs it)"
    );
    let mut names = BTreeSet::new();
    let mut threads = 0;
    for task in std::fs::read_dir(proc.join("task")).expect("tasks") {
        let task = task.expect("task").path();
        // A thread that just ended has no status left: skip it.
        let (Ok(status), Ok(comm)) = (
            std::fs::read_to_string(task.join("status")),
            std::fs::read_to_string(task.join("comm")),
        ) else {
            continue;
        };
        let comm = comm.trim().to_string();
        assert_eq!(
            cpus_allowed(&status),
            Some("0"),
            "thread {} ({comm}) of the daemon may run elsewhere",
            task.display()
        );
        names.insert(comm);
        threads += 1;
    }
    for want in ["mirror", "rx-feed-0", "tx-ids0", "tx-nowhere", "pcapng-cap"] {
        assert!(names.contains(want), "no thread {want}: {names:?}");
    }
    assert!(threads >= 5, "{threads} threads: {names:?}");
    assert!(
        daemon
            .log_text()
            .contains("running on the configured CPUs cpus=0"),
        "{}",
        daemon.log_text()
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_control_socket_is_mode_0600_and_roots() {
    require_root!();
    let (_lab, _dir, daemon) = start("e2e-sockmode", "");
    let meta = std::fs::symlink_metadata(&daemon.control).expect("stat the control socket");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(
        format!("{:o}", meta.mode() & 0o7777),
        "600",
        "only its owner may talk to the daemon"
    );
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "owned by root");
}

/// The object at `v[key]`, failing with what was there instead.
fn object<'a>(v: &'a Value, key: &str) -> &'a serde_json::Map<String, Value> {
    v[key]
        .as_object()
        .unwrap_or_else(|| panic!("`{key}` is not an object: {v}"))
}

/// `v[key]` as a counter.
fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count: {v}"))
}

/// Asserts `v["dropped"]` is an object of exactly the `reasons`, each a
/// count, and returns their sum.
fn dropped(what: &str, v: &Value, reasons: &[&str]) -> u64 {
    let d = object(v, "dropped");
    let keys: Vec<&str> = d.keys().map(String::as_str).collect();
    let mut want = reasons.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "{what}: the drop reasons");
    d.values()
        .map(|n| {
            n.as_u64()
                .unwrap_or_else(|| panic!("{what}: a drop count: {n}"))
        })
        .sum()
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn stats_json_has_the_documented_shape_and_the_sockets_numbers() {
    require_root!();
    let (lab, _dir, daemon) = start("e2e-statsjson", "");
    let mut client = Client::connect(&daemon.control).expect("control socket");
    traffic_then_quiet(&lab, &mut client);

    let out = std::process::Command::new(BIN)
        .args(["stats", "--json", "--control"])
        .arg(&daemon.control)
        .output()
        .expect("mirror stats --json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stats --json is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    // The control socket's own answer, by hand: one JSON line each way.
    let mut sock = UnixStream::connect(&daemon.control).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.write_all(b"{\"cmd\":\"stats\"}\n").expect("request");
    let mut line = String::new();
    BufReader::new(&sock)
        .read_line(&mut line)
        .expect("the reply");
    let reply: Value = serde_json::from_str(&line).expect("the reply is JSON");
    assert_eq!(reply["ok"], Value::Bool(true), "{reply}");
    assert_eq!(
        cli, reply["stats"],
        "stats --json prints what the socket answers"
    );

    // The documented shape, with the numbers of the traffic.
    let top: Vec<&str> = cli
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, ["groups", "sessions", "sources", "targets"]);
    let src = &object(&cli, "sources")["feed"];
    let src_dropped = dropped(
        "source",
        src,
        &[
            "no_buffer",
            "no_metadata",
            "no_socket",
            "rate_limited",
            "ring_full",
        ],
    );
    assert_eq!(src_dropped, 0);
    assert_eq!(
        ["received", "matched", "filtered", "sampled_out", "mirrored"].map(|k| count(src, k)),
        [300, 300, 0, 0, 300]
    );
    assert_eq!(src["xdp_mode"], "native");
    let sess = &object(&cli, "sessions")["all"];
    assert_eq!(
        (count(sess, "matched"), count(sess, "mirrored")),
        (300, 300)
    );
    assert_eq!(sess["path"], "af_xdp");
    assert_eq!(sess["targets"], serde_json::json!(["ids0", "pool"]));
    let targets = object(&cli, "targets");
    let target_reasons = [
        "disk_full",
        "down",
        "queue_full",
        "rate_limited",
        "send_error",
        "too_big",
    ];
    for (name, t) in targets {
        let d = dropped(name, t, &target_reasons);
        assert_eq!(
            count(t, "enqueued"),
            count(t, "sent_packets") + d + count(t, "queued"),
            "{name}: {t}"
        );
    }
    let ids = &targets["ids0"];
    assert_eq!(
        (count(ids, "sent_packets"), count(ids, "sent_bytes")),
        (300, 300 * 200)
    );
    // The group: the GRE member has no route, so after its first failed
    // send (send_error) it is down and its flows go to the file.
    let (gre, cap) = (&targets["nowhere"], &targets["cap"]);
    assert_eq!(gre["up"], false);
    assert_eq!(count(gre, "sent_packets"), 0);
    assert_eq!(count(&gre["dropped"], "send_error"), 1, "{gre}");
    let pool = &object(&cli, "groups")["pool"];
    assert_eq!(pool["members"], serde_json::json!(["nowhere", "cap"]));
    assert_eq!(count(pool, "members_up"), 1);
    assert_eq!(
        count(gre, "enqueued") + count(cap, "enqueued"),
        300,
        "each frame went to one member"
    );
    assert_eq!(count(cap, "sent_packets"), count(cap, "enqueued"), "{cap}");
}

/// Every malformed control request gets one JSON error reply saying what is
/// wrong, and the connection stays usable (a request too long to tell from
/// the next one is answered, then the connection is closed).
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn each_malformed_control_request_gets_an_error_reply() {
    require_root!();
    let (_lab, _dir, daemon) = start("e2e-badreq", "");
    let sock = UnixStream::connect(&daemon.control).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(sock.try_clone().expect("clone"));
    let mut ask = |request: &[u8]| -> Value {
        (&sock).write_all(request).expect("request");
        let mut line = String::new();
        reader.read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    for (request, want) in [
        (&b"\xff\xfe{\"cmd\":\"stats\"}\n"[..], "not UTF-8"),
        (&b"hello\n"[..], "bad request"),
        (
            &b"{\"cmd\":\"frobnicate\"}\n"[..],
            "unknown variant `frobnicate`",
        ),
        (
            &b"{\"cmd\":\"rules_add\",\"filter\":7}\n"[..],
            "bad request",
        ),
        (&b"[1,2,3]\n"[..], "bad request"),
    ] {
        let reply = ask(request);
        assert_eq!(reply["ok"], Value::Bool(false), "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "want `{want}` in {reply}");
        // The same connection still answers a good request.
        let ok = ask(b"{\"cmd\":\"stats\"}\n");
        assert_eq!(ok["ok"], Value::Bool(true), "{ok}");
    }
    // More than 64 KiB without a newline: answered, then closed.
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    let reply = ask(&long);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("request too long"),
        "{reply}"
    );
    let mut rest = String::new();
    let n = reader.read_line(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "closed after the too-long request: {rest}");
}
