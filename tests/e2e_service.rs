//! End to end, in network namespaces: the daemon as `contrib/mirror.service`
//! runs it. It holds exactly the capabilities of the unit's
//! `CapabilityBoundingSet` (root without the others, as systemd leaves it,
//! with `setpriv`) under the 8 MiB `RLIMIT_MEMLOCK` the kernel and systemd
//! give a service, and speaks the `sd_notify` protocol of `Type=notify` to a
//! `NOTIFY_SOCKET` the test binds: `READY=1` only once the control socket
//! answers, `RELOADING=1` then `READY=1` around each SIGHUP (also a rejected
//! one, whose `STATUS=` says so), `STOPPING=1` on SIGTERM, then exit 0.
//!
//! With those capabilities every kind of program and socket must work: a
//! tap source (XDP, AF_XDP RX) whose first session runs in the kernel
//! (a GRE target's DEVMAP program) and whose second goes through userspace to
//! an interface target (AF_XDP TX) and a pcapng file; a copy-mode source
//! (XDP ingress, tcx egress, the ring buffer) to a second pcapng file. And
//! each capability of the unit is needed: without any one of them the daemon
//! exits 1 at start, naming what failed, and sends no `READY=1`.
//!
//! ```text
//!  ns gen          ns src (mirror runs here)                 ns sink
//!  gen0 ──veth── feed0 [tap]                    tgt0 ──veth── sink0
//!                cp0 [copy]            ──veth── cp1           ns col
//!                gr0 10.98.1.1 [GRE]   ──veth── gr1 10.98.1.2 ns col
//! ```

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_reconciles, wait_for};
use mirror_user::control::{Client, Request};
use mirror_user::kernel;
use mirror_user::lab::{self, traffic, Lab, Netns, Process, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

const CONFIG: &str = r#"
[daemon]
control_socket = "@DIR@/control.sock"

[[source]]
name = "feed"
interface = "feed0"

[[source]]
name = "live"
interface = "cp0"
mode = "copy"
direction = "both"

[[filter]]
name = "dns"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
destination_port = "53"

[[filter]]
name = "all"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"

[[target]]
name = "gre"
kind = "gre"
remote = "10.98.1.2"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/feed.pcapng"

[[target]]
name = "cap2"
kind = "pcapng"
path = "@DIR@/live.pcapng"

[[session]]
name = "dns"
source = "feed"
filter = "dns"
targets = ["gre"]
priority = 1
path = "kernel"

[[session]]
name = "rest"
source = "feed"
filter = "all"
targets = ["ids0", "cap"]
priority = 2

[[session]]
name = "live"
source = "live"
filter = "all"
targets = ["cap2"]
"#;

/// Capability names (as the unit writes them) and their bits
/// (linux/capability.h).
const CAP_BITS: [(&str, u32); 8] = [
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// The capabilities of the unit's `CapabilityBoundingSet=` line.
fn unit_capabilities() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/mirror.service");
    let text = std::fs::read_to_string(&unit).expect("contrib/mirror.service");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet= line");
    line.split_whitespace().map(str::to_string).collect()
}

/// The capability mask of `caps`, as /proc/PID/status shows it.
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| {
            let (_, bit) = CAP_BITS
                .iter()
                .find(|(name, _)| name == c)
                .unwrap_or_else(|| panic!("{c}: add its bit to CAP_BITS"));
            1u64 << bit
        })
        .fold(0, |a, b| a | b)
}

/// The daemon started through `ip netns exec` → `timeout` → `prlimit` →
/// `setpriv` (each of the last three execs the next): `timeout`'s child.
fn daemon_pid(timeout_pid: u32) -> u32 {
    let path = format!("/proc/{timeout_pid}/task/{timeout_pid}/children");
    let children = std::fs::read_to_string(&path).expect("children of timeout");
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("timeout has a child")
}

/// The capabilities the daemon keeps once it runs (`privileges::RUN`).
fn run_mask() -> u64 {
    mirror_user::privileges::RUN
        .iter()
        .fold(0, |m, c| m | c.bitmask())
}

/// Every thread of `pid` has `effective` as its effective and permitted
/// sets, `bounding` as its bounding set, and nothing inheritable or ambient.
fn assert_capabilities(pid: u32, effective: u64, bounding: u64) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    let mut n = 0;
    for t in tasks {
        let tid: u32 = t
            .expect("task")
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("tid");
        let status = format!("/proc/{pid}/task/{tid}/status");
        let text = std::fs::read_to_string(&status).expect("task status");
        let get = |key: &str| {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {status}"));
            u64::from_str_radix(v.trim(), 16).expect("hex")
        };
        let name = text.lines().next().unwrap_or("").to_string();
        for (key, want) in [
            ("CapEff:", effective),
            ("CapPrm:", effective),
            ("CapBnd:", bounding),
            ("CapInh:", 0),
            ("CapAmb:", 0),
        ] {
            assert_eq!(
                get(key),
                want,
                "{key} of thread {tid} ({name}) of pid {pid}: {:#x}",
                get(key)
            );
        }
        n += 1;
    }
    assert!(n > 3, "the daemon's threads: {n}");
}

/// Sends `sig` to the daemon itself: `timeout(1)`, its parent, would pass a
/// signal on twice (to its child and again to its process group).
fn signal(pid: u32, sig: i32) {
    // Safety: kill() on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

/// The next datagram on the fake NOTIFY_SOCKET, failing after 20 s.
fn next_notification(sock: &UnixDatagram, daemon: &mut Process, what: &str) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification"),
        Err(e) => panic!(
            "no notification ({what}): {e}; daemon running: {:?}\n{}",
            daemon.check_running().is_ok(),
            daemon.log_text()
        ),
    }
}

/// The `KEY=value` lines of a notification.
fn fields(msg: &str) -> Vec<(&str, &str)> {
    msg.lines().filter_map(|l| l.split_once('=')).collect()
}

fn has(msg: &str, key: &str, value: &str) -> bool {
    fields(msg).iter().any(|&(k, v)| k == key && v == value)
}

/// The lab of this file: the standard one, plus a collector namespace with
/// the GRE target's link and the copy-mode source's peer.
struct ServiceLab {
    lab: Lab,
    col: Netns,
}

fn lab() -> ServiceLab {
    let lab = Lab::new(1).expect("lab");
    let col = Netns::new("col").expect("netns");
    lab::wire(&lab.src, "gr0", "10.98.1.1", &col, "gr1", "10.98.1.2", 1500).expect("wire");
    // The GRE target's port takes frames redirected by XDP (kernel path).
    lab::gro_on(&col, "gr1").expect("GRO on");
    lab::veth(&lab.src, "cp0", &col, "cp1", 1).expect("veth");
    ServiceLab { lab, col }
}

/// The daemon on `CONFIG`, started as systemd starts the unit.
struct Run {
    daemon: Process,
    notify: UnixDatagram,
    config: PathBuf,
    text: String,
}

impl Run {
    /// Starts `mirror run` in the lab's src namespace the way systemd runs
    /// it for root with `CapabilityBoundingSet=caps`: that bounding set, and
    /// so those permitted and effective capabilities, nothing inheritable;
    /// `RLIMIT_MEMLOCK` 8 MiB (the kernel's default since 5.16, and
    /// systemd's); `NOTIFY_SOCKET` set, here to a socket of the test's.
    fn start(lab: &ServiceLab, dir: &TempDir, caps: &[String]) -> Run {
        Run::start_with(lab, dir, Some(caps), &[])
    }

    /// As [`Run::start`]; `caps: None` leaves root all its capabilities;
    /// `env`: more `KEY=value`s for the daemon.
    fn start_with(lab: &ServiceLab, dir: &TempDir, caps: Option<&[String]>, env: &[&str]) -> Run {
        let text = CONFIG.replace("@DIR@", &dir.path().to_string_lossy());
        let config = dir.path().join("mirror.toml");
        std::fs::write(&config, &text).expect("config");
        let notify_path = dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind the fake NOTIFY_SOCKET");
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let bounding = std::iter::once("-all".to_string())
            .chain(caps.unwrap_or_default().iter().map(|c| {
                format!(
                    "+{}",
                    c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase()
                )
            }))
            .collect::<Vec<_>>()
            .join(",");
        let notify_env = format!("NOTIFY_SOCKET={}", notify_path.display());
        let bounding_arg = format!("--bounding-set={bounding}");
        let config_arg = config.to_string_lossy().into_owned();
        let mut args = vec!["env", &notify_env, "RUST_LOG=info"];
        args.extend_from_slice(env);
        args.extend(["prlimit", "--memlock=8388608:8388608"]);
        if caps.is_some() {
            args.extend(["setpriv", "--inh-caps=-all", &bounding_arg, "--"]);
        }
        args.extend([BIN, "run", "-c", &config_arg]);
        let daemon = Process::start(
            &lab.lab.src,
            &args,
            &dir.path().join("daemon.log"),
            Duration::from_secs(120),
        )
        .expect("start the daemon");
        Run {
            daemon,
            notify,
            config,
            text,
        }
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn under_the_units_capabilities_it_mirrors_every_way_and_notifies_systemd() {
    require_root!();
    let caps = unit_capabilities();
    for needed in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW"] {
        assert!(caps.iter().any(|c| c == needed), "{needed} in {caps:?}");
    }
    let lab = lab();
    let dir = TempDir::new("e2e-service").expect("temp dir");
    let mut run = Run::start(&lab, &dir, &caps);
    let (config, text) = (run.config.clone(), run.text.clone());
    let (notify, daemon) = (&run.notify, &mut run.daemon);
    let control = dir.path().join("control.sock");

    // READY=1 comes first, and only once mirroring has begun: at that moment
    // both sources' programs are attached and the control socket answers.
    let ready = next_notification(notify, daemon, "READY=1 at start");
    assert!(has(&ready, "READY", "1"), "first notification: {ready:?}");
    let (feed, live) = lab
        .lab
        .src
        .run(|| Ok((kernel::attached("feed0")?, kernel::attached("cp0")?)))
        .expect("attached programs");
    assert_eq!(
        feed.xdp.len(),
        1,
        "feed0's XDP program at READY=1: {feed:?}"
    );
    assert_eq!(
        live.tcx_egress.len(),
        1,
        "cp0's tcx program at READY=1: {live:?}"
    );
    let mut client = Client::connect(&control).expect("control socket up at READY=1");
    let st = client.stats().expect("stats at READY=1");
    assert!(
        fields(&ready)
            .iter()
            .any(|&(k, v)| k == "STATUS" && v.starts_with("mirroring")),
        "{ready:?}"
    );

    // It holds exactly the unit's capabilities.
    let pid = daemon_pid(daemon.pid().expect("pid"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "mirror", "pid {pid} is the daemon");
    // Started with the unit's capabilities, every thread keeps only what the
    // rest of the run needs; the bounding set stays the unit's (shrinking it
    // needs CAP_SETPCAP, which the unit does not give).
    assert_capabilities(pid, run_mask(), mask(&caps));
    assert_eq!(
        st.sessions["dns"].path, "kernel",
        "{:?}",
        st.sessions["dns"]
    );

    // Tap source: port 53 to GRE in the kernel, the rest through userspace.
    let frames: Vec<Vec<u8>> = (0..160)
        .map(|i| traffic::frame(traffic::Shape::Udp4, i, 200))
        .collect();
    let dns = frames
        .iter()
        .filter(|f| f[14 + 20 + 2..14 + 20 + 4] == 53u16.to_be_bytes())
        .count() as u64;
    assert!(dns > 0 && dns < 160);
    let sent = lab::send_frames(&lab.lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    assert_eq!(sent, 160);
    // Copy source: ingress frames from its peer.
    let live: Vec<Vec<u8>> = (0..40)
        .map(|i| traffic::frame(traffic::Shape::Tcp4, i, 300))
        .collect();
    let live_sent = lab::send_frames(&lab.col, "cp1", Arc::new(live), 10_000).expect("send");
    assert_eq!(live_sent, 40);
    let st = wait_for(&mut client, "every copy delivered", |st| {
        st.targets["gre"].sent_packets == dns
            && st.targets["ids0"].sent_packets == 160 - dns
            && st.targets["cap"].sent_packets == 160 - dns
            && st.targets["cap2"].sent_packets >= 40
            && st.targets.values().all(|t| t.queued == 0)
    });
    assert_eq!(
        st.targets["gre"].kernel_path, dns,
        "{:?}",
        st.targets["gre"]
    );
    for (name, t) in &st.targets {
        assert_reconciles(name, t);
        assert_eq!(t.dropped_total(), 0, "{name}: {t:?}");
    }

    // SIGHUP with a changed filter: RELOADING=1 (with the monotonic time
    // systemd's notify-reload wants), then READY=1.
    let changed = text.replace("destination_port = \"53\"", "destination_port = \"80\"");
    std::fs::write(&config, &changed).expect("config");
    signal(pid, libc::SIGHUP);
    let reloading = next_notification(notify, daemon, "RELOADING=1");
    assert!(has(&reloading, "RELOADING", "1"), "{reloading:?}");
    assert!(
        fields(&reloading)
            .iter()
            .any(|&(k, v)| k == "MONOTONIC_USEC" && v.parse::<u64>().is_ok_and(|t| t > 0)),
        "{reloading:?}"
    );
    let again = next_notification(notify, daemon, "READY=1 after a reload");
    assert!(has(&again, "READY", "1"), "{again:?}");
    let filters = client
        .request(&Request::RulesList)
        .expect("rules list")
        .filters
        .expect("filters");
    let dns = filters
        .iter()
        .find(|f| f.name == "dns")
        .expect("filter dns");
    assert!(
        dns.rules[0].contains("destination_port = \"80\""),
        "the new filter is in force: {dns:?}"
    );
    // A live rule change builds new maps too: it works with what is kept.
    let added = std::process::Command::new(BIN)
        .args(["rules", "--control"])
        .arg(&control)
        .args([
            "add", "--filter", "dns", "--number", "20", "--action", "accept",
        ])
        .args(["--protocol", "udp", "--destination-port", "5353"])
        .output()
        .expect("mirror rules add");
    assert!(added.status.success(), "{added:?}\n{}", daemon.log_text());

    // A file whose changed source's interface does not exist is rejected:
    // still RELOADING=1 then READY=1 (the daemon mirrors on), and STATUS
    // says it was rejected.
    std::fs::write(&config, changed.replace("\"cp0\"", "\"cp9\"")).expect("config");
    signal(pid, libc::SIGHUP);
    let reloading = next_notification(notify, daemon, "RELOADING=1 (rejected)");
    assert!(has(&reloading, "RELOADING", "1"), "{reloading:?}");
    let again = next_notification(notify, daemon, "READY=1 after a rejected reload");
    assert!(has(&again, "READY", "1"), "{again:?}");
    assert!(
        fields(&again)
            .iter()
            .any(|&(k, v)| k == "STATUS" && v.contains("reload rejected")),
        "{again:?}\n{}",
        daemon.log_text()
    );
    client.stats().expect("still serving");
    drop(client);

    // SIGTERM: STOPPING=1, then exit 0.
    signal(pid, libc::SIGTERM);
    let stopping = next_notification(notify, daemon, "STOPPING=1");
    assert!(has(&stopping, "STOPPING", "1"), "{stopping:?}");
    let status = daemon.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(notify.recv(&mut buf).is_err(), "nothing after STOPPING=1");
}

/// What the daemon says when it lacks each capability of the unit: each is
/// needed, for the reason the unit's comment gives.
/// (The order is the unit's. Each start fails at its first need: the targets
/// open before the programs load, so CAP_NET_RAW shows at the GRE target's
/// raw socket before the AF_XDP sockets that need it too.)
const WITHOUT: [(&str, &str); 5] = [
    ("CAP_BPF", "Couldn't load trivial BPF program"),
    ("CAP_NET_ADMIN", "map 'xsks': failed to create: -EPERM"),
    (
        "CAP_NET_RAW",
        "socket(SOCK_RAW) (needs CAP_NET_RAW): Operation not permitted",
    ),
    ("CAP_PERFMON", "pointer comparison prohibited"),
    (
        "CAP_IPC_LOCK",
        "UMEM registration on tgt0 queue 0: No buffer space available",
    ),
];

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn each_capability_of_the_unit_is_needed() {
    require_root!();
    let caps = unit_capabilities();
    let listed: Vec<&str> = WITHOUT.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        caps, listed,
        "the unit's capabilities are the ones this test knows the need of"
    );
    let lab = lab();
    for (cap, says) in WITHOUT {
        let dir = TempDir::new("e2e-service-cap").expect("temp dir");
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        // Refused up front, naming the one missing and what it is for...
        let mut run = Run::start(&lab, &dir, &fewer);
        let status = run.daemon.wait(Duration::from_secs(60)).expect("exits");
        let log = run.daemon.log_text();
        assert_eq!(status.code(), Some(1), "without {cap}: {status}\n{log}");
        assert!(
            log.contains("mirror run needs 1 capability it does not have")
                && log.contains(&format!("\n  {cap}: ")),
            "without {cap}: expected the refusal in\n{log}"
        );
        // ...and needed indeed: told to start anyway, it fails where the
        // kernel refuses.
        let dir = TempDir::new("e2e-service-cap").expect("temp dir");
        let mut run = Run::start_with(
            &lab,
            &dir,
            Some(&fewer),
            &["MIRROR_SKIP_CAPABILITY_CHECK=1"],
        );
        let status = run.daemon.wait(Duration::from_secs(60)).expect("exits");
        let log = run.daemon.log_text();
        assert_eq!(status.code(), Some(1), "without {cap}: {status}\n{log}");
        assert!(
            log.contains(says),
            "without {cap}: expected `{says}` in\n{log}"
        );
        run.notify
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        assert!(
            run.notify.recv(&mut buf).is_err(),
            "without {cap}: no READY=1 for a start that failed"
        );
    }
}

/// Root with every capability: once mirroring, every thread holds only what
/// the rest of the run needs (effective, permitted and bounding), and a
/// reload (SIGHUP) and a live rule change still work with it.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn root_keeps_only_the_run_capabilities_and_reloads_with_them() {
    require_root!();
    let lab = lab();
    let dir = TempDir::new("e2e-service-root").expect("temp dir");
    let mut run = Run::start_with(&lab, &dir, None, &[]);
    let (config, text) = (run.config.clone(), run.text.clone());
    let (notify, daemon) = (&run.notify, &mut run.daemon);
    let ready = next_notification(notify, daemon, "READY=1 at start");
    assert!(
        has(&ready, "READY", "1"),
        "{ready:?}\n{}",
        daemon.log_text()
    );
    let pid = daemon_pid(daemon.pid().expect("pid"));
    assert_capabilities(pid, run_mask(), run_mask());
    assert!(
        daemon.log_text().contains(
            "dropped every capability but the ones reloads and live rule changes need kept=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_PERFMON CAP_IPC_LOCK"
        ),
        "{}",
        daemon.log_text()
    );

    std::fs::write(
        &config,
        text.replace("destination_port = \"53\"", "destination_port = \"80\""),
    )
    .expect("config");
    signal(pid, libc::SIGHUP);
    let _reloading = next_notification(notify, daemon, "RELOADING=1");
    let again = next_notification(notify, daemon, "READY=1 after a reload");
    assert!(
        has(&again, "READY", "1")
            && fields(&again)
                .iter()
                .any(|&(k, v)| k == "STATUS" && !v.contains("reload")),
        "{again:?}\n{}",
        daemon.log_text()
    );
    let control = dir.path().join("control.sock");
    let added = std::process::Command::new(BIN)
        .args(["rules", "--control"])
        .arg(&control)
        .args([
            "add", "--filter", "all", "--number", "5", "--action", "reject",
        ])
        .args(["--protocol", "icmp"])
        .output()
        .expect("mirror rules add");
    assert!(added.status.success(), "{added:?}\n{}", daemon.log_text());
    let mut client = Client::connect(&control).expect("control");
    let filters = client
        .request(&Request::RulesList)
        .expect("rules list")
        .filters
        .expect("filters");
    let dns = filters.iter().find(|f| f.name == "dns").expect("dns");
    assert!(dns.rules[0].contains("\"80\""), "{dns:?}");
    let all = filters.iter().find(|f| f.name == "all").expect("all");
    assert_eq!(all.rules.len(), 3, "{all:?}");
    drop(client);

    // A reload that restarts the copy-mode source and its pcapng target (a
    // new file): with the capabilities kept, the programs load and attach
    // and the file opens again (its counters carry on).
    let cap2_before = Client::connect(&control)
        .expect("control")
        .stats()
        .expect("stats")
        .targets["cap2"]
        .sent_packets;
    let current = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, current.replace("live.pcapng", "live2.pcapng")).expect("config");
    signal(pid, libc::SIGHUP);
    let _reloading = next_notification(notify, daemon, "RELOADING=1 (restarting)");
    let again = next_notification(notify, daemon, "READY=1 after a restarting reload");
    assert!(
        has(&again, "READY", "1")
            && fields(&again)
                .iter()
                .any(|&(k, v)| k == "STATUS" && !v.contains("reload")),
        "{again:?}\n{}",
        daemon.log_text()
    );
    assert!(
        daemon
            .log_text()
            .contains("restarted source live, target cap2; everything else kept running"),
        "{}",
        daemon.log_text()
    );
    let live: Vec<Vec<u8>> = (0..20)
        .map(|i| traffic::frame(traffic::Shape::Tcp4, i, 300))
        .collect();
    lab::send_frames(&lab.col, "cp1", Arc::new(live), 10_000).expect("send");
    let mut client = Client::connect(&control).expect("control");
    wait_for(&mut client, "20 more copies to cap2", |st| {
        st.targets["cap2"].sent_packets == cap2_before + 20 && st.targets["cap2"].queued == 0
    });
    drop(client);

    // `stats --watch` on a terminal (script(1) gives it one): redrawn in
    // place (cursor home, no scrolling), with the time and, from the second
    // print on, rates per second; into a pipe: appended, no escapes.
    let watch = format!(
        "timeout -s INT 3.5 {BIN} stats --watch --control {}",
        control.display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qfec", &watch, "/dev/null"])
        .output()
        .expect("script");
    let tty = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.matches("\x1b[H").count() >= 2, "{tty:?}");
    assert!(tty.contains("mirror stats at "), "{tty:?}");
    assert!(
        tty.contains("RATES (per second, over the last 1."),
        "{tty:?}"
    );
    let piped = std::process::Command::new("timeout")
        .args(["-s", "INT", "2.5", BIN, "stats", "--watch", "--control"])
        .arg(&control)
        .output()
        .expect("stats --watch");
    let piped = String::from_utf8_lossy(&piped.stdout);
    assert!(piped.matches("mirror stats at ").count() >= 2, "{piped}");
    assert!(!piped.contains('\u{1b}'), "{piped:?}");
    signal(pid, libc::SIGTERM);
    let status = daemon.wait(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    // The restarted target wrote its copies to the new file.
    assert_eq!(
        common::read_pcapng(&dir.path().join("live2.pcapng")).len(),
        20
    );
}

/// Not root and no capabilities: refused before anything is touched, with
/// every missing capability named with what it is for.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_non_root_run_is_refused_naming_the_missing_capabilities() {
    require_root!();
    let dir = TempDir::new("e2e-service-nobody").expect("temp dir");
    let text = CONFIG.replace("@DIR@", &dir.path().to_string_lossy());
    let config = dir.path().join("mirror.toml");
    std::fs::write(&config, &text).expect("config");
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), config.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = std::process::Command::new("timeout")
        .args(["30", "prlimit", "--memlock=8388608:8388608", "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .output()
        .expect("mirror run as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mirror run needs 5 capabilities it does not have"),
        "{err}"
    );
    for cap in unit_capabilities() {
        assert!(err.contains(&format!("\n  {cap}: ")), "{cap} in {err}");
    }
    assert!(!dir.path().join("control.sock").exists());
}
