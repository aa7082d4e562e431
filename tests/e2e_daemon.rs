//! End to end, in network namespaces: the running daemon as its operator
//! meets it. `[daemon] cpus` holds every thread of the process; the control
//! socket is mode 0600 and root's.

mod common;

use common::{assert_reconciles, wait_for};

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;

use mirror_user::control::Client;
use mirror_user::lab::{self, traffic, DaemonProcess, Lab, TempDir};

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
