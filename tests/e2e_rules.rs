//! End to end, in network namespaces: `mirror rules add|delete` on a running
//! daemon change what the traffic does, phase by phase, with exact counts.
//!
//! Each phase sends a known set of numbered frames after a rule change and
//! waits (bounded) until the counters settle; the counts and the frames that
//! came out are checked against an oracle written here from the frames' shapes
//! and ports (not the crate's classifier or rule editing, which are under test).
//!
//! - Tap mode: a `reject` rule numbered below the accept-all stops one port's
//!   frames, an `accept` rule numbered below a `reject` lets another port's
//!   through, and deleting each brings the filter's own verdicts back.
//! - Copy mode: an ingress and an egress rule with the same number; deleting
//!   one direction's rule stops only that direction's copies.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{read_pcapng, Record};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::lab::traffic::{self, Shape, PORTS, SHAPES};
use mirror_user::lab::{self, Capture, Lab, Netns, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

/// Runs `mirror ARGS… --control SOCKET`; fails the test unless it succeeds.
fn cli(control: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(BIN)
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
    assert!(out.status.success(), "mirror {}: {text}", args.join(" "));
    text
}

/// Polls until `done` holds and two snapshots 100 ms apart are equal (no
/// frame still on its way), failing after 20 s with the last counters.
fn settle(client: &mut Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = client.stats().expect("stats");
        std::thread::sleep(Duration::from_millis(100));
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

// ---------------------------------------------------------------- tap mode

const TAP: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
mode = "tap"
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

/// Frames per phase: a multiple of 32, so every (shape, port) pair of
/// [`traffic::frame`] occurs equally often (800 / 32 = 25 each).
const PER_PHASE: u32 = 800;

/// Frame `seq` of the tap test: shapes change fastest, then ports (as in
/// `traffic::mixed`), then sizes.
fn tap_frame(seq: u32) -> Vec<u8> {
    const SIZES: [usize; 5] = [64, 128, 512, 1024, 1514];
    let i = seq as usize;
    traffic::frame(SHAPES[i % 8], seq, SIZES[(i / 32) % SIZES.len()])
}

/// The shape and destination port of frame `seq` (see `traffic::frame`).
fn shape_port(seq: u32) -> (Shape, u16) {
    let i = seq as usize;
    (SHAPES[i % 8], PORTS[(i / 8) % PORTS.len()])
}

fn is_tcp(s: Shape) -> bool {
    matches!(s, Shape::Tcp4 | Shape::Tcp6 | Shape::VlanTcp4)
}

fn is_udp(s: Shape) -> bool {
    matches!(s, Shape::Udp4 | Shape::Udp6 | Shape::QinQUdp6)
}

/// The file's filter (`common::IDS_FILTER`): every frame but TCP port 22 and ICMPv6.
fn file_verdict(s: Shape, port: u16) -> bool {
    !(is_tcp(s) && port == 22) && s != Shape::Icmp6
}

struct TapPhase {
    name: &'static str,
    /// Sequence number of the phase's first frame (a multiple of 32).
    first: u32,
    /// Whether a frame of this shape and port is mirrored in this phase.
    mirrored: fn(Shape, u16) -> bool,
    /// The exact number of those among the phase's frames.
    want: u64,
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn rules_added_and_deleted_live_change_what_is_mirrored_exactly() {
    require_root!();
    let lab = Lab::new(2).expect("lab");
    let dir = TempDir::new("e2e-rules-tap").expect("temp dir");
    let (daemon, _) = common::start_daemon(
        BIN,
        &lab.src,
        &dir,
        &TAP.replace("@FILTER@", common::IDS_FILTER),
    );
    let control = daemon.control.clone();
    let mut client = Client::connect(&control).expect("control socket");
    let capture = Capture::start(&lab.sink, Lab::SINK_IF).expect("capture");

    // Per phase, of 800 frames: 3/8 are TCP, 3/8 UDP, 1/8 ICMP, 1/8 ICMPv6,
    // each spread evenly over ports 22, 80, 443 and 53 (75 TCP or UDP
    // frames per port).
    let phases = [
        TapPhase {
            name: "the file's rules",
            first: 0,
            mirrored: file_verdict,
            want: 800 - 75 - 100,
        },
        TapPhase {
            name: "+ rule 150: reject UDP port 53",
            first: 1024,
            mirrored: |s, p| file_verdict(s, p) && !(is_udp(s) && p == 53),
            want: 800 - 75 - 100 - 75,
        },
        TapPhase {
            name: "- rule 150",
            first: 2048,
            mirrored: file_verdict,
            want: 800 - 75 - 100,
        },
        TapPhase {
            name: "+ rule 50: accept TCP port 22",
            first: 3072,
            mirrored: |s, p| file_verdict(s, p) || (is_tcp(s) && p == 22),
            want: 800 - 100,
        },
        TapPhase {
            name: "- rule 50",
            first: 4096,
            mirrored: file_verdict,
            want: 800 - 75 - 100,
        },
    ];
    let rule_changes: [&[&str]; 5] = [
        &[],
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
            "53",
        ],
        &["rules", "delete", "--filter", "ids", "--number", "150"],
        &[
            "rules",
            "add",
            "--filter",
            "ids",
            "--number",
            "50",
            "--action",
            "accept",
            "--protocol",
            "tcp",
            "--destination-port",
            "22",
        ],
        &["rules", "delete", "--filter", "ids", "--number", "50"],
    ];
    let rules_after = [3, 4, 3, 4, 3];

    let mut before = client.stats().expect("stats");
    let mut total_sent = 0u64;
    for (k, phase) in phases.iter().enumerate() {
        let name = phase.name;
        if !rule_changes[k].is_empty() {
            let out = cli(&control, rule_changes[k]);
            assert!(
                out.contains(&format!(
                    "source feed: {} rules in force (both directions)",
                    rules_after[k]
                )),
                "{name}: {out}"
            );
        }
        let seqs: Vec<u32> = (phase.first..phase.first + PER_PHASE).collect();
        let frames: Vec<Vec<u8>> = seqs.iter().map(|&s| tap_frame(s)).collect();
        let want: Vec<&Vec<u8>> = frames
            .iter()
            .zip(&seqs)
            .filter(|(_, &s)| {
                let (shape, port) = shape_port(s);
                (phase.mirrored)(shape, port)
            })
            .map(|(f, _)| f)
            .collect();
        assert_eq!(want.len() as u64, phase.want, "{name}: the oracle");
        let want_bytes: u64 = want.iter().map(|f| f.len() as u64).sum();

        let sent =
            lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send frames");
        assert_eq!(sent, u64::from(PER_PHASE));
        total_sent += sent;
        let st = settle(&mut client, name, |st| {
            let src = &st.sources["feed"];
            let t = &st.targets["ids0"];
            src.received == total_sent
                && src.matched
                    == src.mirrored + src.sampled_out + src.scheduled_out + src.dropped_total()
                && t.enqueued == src.mirrored
                && t.queued == 0
        });

        let (src, src0) = (&st.sources["feed"], &before.sources["feed"]);
        let (sess, sess0) = (&st.sessions["ids-feed"], &before.sessions["ids-feed"]);
        let (t, t0) = (&st.targets["ids0"], &before.targets["ids0"]);
        assert_eq!(src.rules, rules_after[k], "{name}: rules in force");
        assert_eq!(
            src.rule_sets_installed,
            1 + k as u64,
            "{name}: one swap per change"
        );
        assert_eq!(src.received - src0.received, sent, "{name}: received");
        assert_eq!(src.matched - src0.matched, phase.want, "{name}: matched");
        assert_eq!(
            src.filtered - src0.filtered,
            sent - phase.want,
            "{name}: filtered"
        );
        assert_eq!(src.mirrored - src0.mirrored, phase.want, "{name}: mirrored");
        assert_eq!(src.dropped_total(), 0, "{name}: {:?}", src.dropped);
        assert_eq!(
            sess.matched - sess0.matched,
            phase.want,
            "{name}: session matched"
        );
        assert_eq!(
            t.sent_packets - t0.sent_packets,
            phase.want,
            "{name}: target sent"
        );
        assert_eq!(
            t.sent_bytes - t0.sent_bytes,
            want_bytes,
            "{name}: target bytes"
        );
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
        common::assert_reconciles("ids0", t);
        before = st;
    }

    // The sink got exactly each phase's mirrored frames, nothing else.
    let deadline = Instant::now() + Duration::from_secs(10);
    while u64::from(capture.count()) < before.targets["ids0"].sent_packets {
        assert!(
            Instant::now() < deadline,
            "the sink has {} frames of {}",
            capture.count(),
            before.targets["ids0"].sent_packets
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got: BTreeSet<u32> = capture
        .finish()
        .iter()
        .map(|f| traffic::seq_of(f).expect("a lab frame"))
        .collect();
    for phase in &phases {
        let want: BTreeSet<u32> = (phase.first..phase.first + PER_PHASE)
            .filter(|&s| {
                let (shape, port) = shape_port(s);
                (phase.mirrored)(shape, port)
            })
            .collect();
        let have: BTreeSet<u32> = got
            .range(phase.first..phase.first + PER_PHASE)
            .copied()
            .collect();
        assert_eq!(have.len(), want.len(), "{}: frames at the sink", phase.name);
        assert_eq!(have, want, "{}: which frames reached the sink", phase.name);
    }
    drop(daemon);
}

// --------------------------------------------------------------- copy mode

/// Rule 10 in both directions: UDP is mirrored both ways, TCP never.
const COPY: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "s0"
mode = "copy"
direction = "both"

[[filter]]
name = "f"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
protocol = "udp"
[[filter.rule]]
number = 10
action = "accept"
direction = "egress"
protocol = "udp"

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/live.pcapng"

[[session]]
name = "s"
source = "live"
filter = "f"
targets = ["cap"]
"#;

/// Frames per direction per phase: half UDP (seq even), half TCP (odd).
const PER_DIRECTION: u32 = 200;

fn copy_frame(seq: u32) -> Vec<u8> {
    let shape = if seq % 2 == 0 {
        Shape::Udp4
    } else {
        Shape::Tcp4
    };
    traffic::frame(shape, seq, 200)
}

struct CopyPhase {
    name: &'static str,
    change: &'static [&'static str],
    /// Ingress (and egress) frames mirrored: their UDP half, or none.
    ingress: bool,
    egress: bool,
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn deleting_an_egress_rule_leaves_the_ingress_rule_of_the_same_number() {
    require_root!();
    // No addresses and IPv6 off: only the test's frames cross the veth.
    let cli_ns = Netns::new("cli").expect("netns");
    let srv = Netns::new("srv").expect("netns");
    lab::veth(&cli_ns, "c0", &srv, "s0", 1).expect("veth");
    let dir = TempDir::new("e2e-rules-copy").expect("temp dir");
    // The same source with only its ingress rule mirrors no egress frame:
    // the start-up log says so first thing (this start then fails: no s9).
    let only_ingress = COPY
        .replace(
            "[[filter.rule]]\nnumber = 10\naction = \"accept\"\ndirection = \"egress\"\nprotocol = \"udp\"\n",
            "",
        )
        .replace("interface = \"s0\"", "interface = \"s9\"")
        .replace("@CONTROL@", &dir.path().join("other.sock").to_string_lossy())
        .replace("@DIR@", &dir.path().to_string_lossy());
    let file = dir.path().join("only-ingress.toml");
    std::fs::write(&file, &only_ingress).expect("write");
    let out = srv
        .command(&["timeout", "60", BIN, "run", "-c", &file.to_string_lossy()])
        .output()
        .expect("mirror run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "WARN mirror_user::cli::run: source `live` mirrors egress frames (direction = \"both\") \
             but no filter of its sessions (`f`) has an egress rule that accepts: no egress frame is mirrored"
        ),
        "{err}"
    );
    let (daemon, _) = common::start_daemon(BIN, &srv, &dir, COPY);
    assert!(
        !daemon.log_text().contains("mirrors egress frames"),
        "{}",
        daemon.log_text()
    );
    let control = daemon.control.clone();
    let mut client = Client::connect(&control).expect("control socket");
    let capture = dir.path().join("live.pcapng");

    let phases = [
        CopyPhase {
            name: "the file's rules",
            change: &[],
            ingress: true,
            egress: true,
        },
        CopyPhase {
            name: "- rule 10 egress",
            change: &[
                "rules",
                "delete",
                "--filter",
                "f",
                "--number",
                "10",
                "--direction",
                "egress",
            ],
            ingress: true,
            egress: false,
        },
        CopyPhase {
            name: "+ rule 10 egress",
            change: &[
                "rules",
                "add",
                "--filter",
                "f",
                "--number",
                "10",
                "--direction",
                "egress",
                "--action",
                "accept",
                "--protocol",
                "udp",
            ],
            ingress: true,
            egress: true,
        },
        CopyPhase {
            name: "- rule 10 (ingress, the default)",
            change: &["rules", "delete", "--filter", "f", "--number", "10"],
            ingress: false,
            egress: true,
        },
    ];
    let listed = [
        "",
        "filter f (sessions: s)\n\
         \x20   number = 10, action = \"accept\", direction = \"ingress\", protocol = \"udp\"\n",
        "filter f (sessions: s)\n\
         \x20   number = 10, action = \"accept\", direction = \"ingress\", protocol = \"udp\"\n\
         \x20   number = 10, action = \"accept\", direction = \"egress\", protocol = \"udp\"\n",
        "filter f (sessions: s)\n\
         \x20   number = 10, action = \"accept\", direction = \"egress\", protocol = \"udp\"\n",
    ];

    let mut before = client.stats().expect("stats");
    let mut total = 0u64;
    // Sequence numbers: phase k sends ingress frames from k * 1000 and
    // egress frames from k * 1000 + 500.
    let ranges = |k: usize| {
        let base = k as u32 * 1000;
        (
            base..base + PER_DIRECTION,
            base + 500..base + 500 + PER_DIRECTION,
        )
    };
    for (k, phase) in phases.iter().enumerate() {
        let name = phase.name;
        if !phase.change.is_empty() {
            cli(&control, phase.change);
        }
        let (ing, eg) = ranges(k);
        let ingress: Vec<Vec<u8>> = ing.map(copy_frame).collect();
        let egress: Vec<Vec<u8>> = eg.map(copy_frame).collect();
        // Into s0 from its peer (ingress), and out of s0 (egress).
        let sent_in =
            lab::send_frames(&cli_ns, "c0", Arc::new(ingress), 10_000).expect("send ingress");
        let sent_out = lab::send_frames(&srv, "s0", Arc::new(egress), 10_000).expect("send egress");
        assert_eq!((sent_in, sent_out), (200, 200));
        total += sent_in + sent_out;
        let st = settle(&mut client, name, |st| {
            let src = &st.sources["live"];
            let t = &st.targets["cap"];
            src.received == total
                && src.matched
                    == src.mirrored + src.sampled_out + src.scheduled_out + src.dropped_total()
                && t.enqueued == src.mirrored
                && t.queued == 0
        });

        let half = u64::from(PER_DIRECTION / 2);
        let want_in = if phase.ingress { half } else { 0 };
        let want_out = if phase.egress { half } else { 0 };
        let src = &st.sources["live"];
        let src0 = &before.sources["live"];
        for (dir, sent, want) in [
            ("ingress", sent_in, want_in),
            ("egress", sent_out, want_out),
        ] {
            let (d, d0) = (&src.directions[dir], &src0.directions[dir]);
            assert_eq!(d.received - d0.received, sent, "{name}: {dir} received");
            assert_eq!(d.matched - d0.matched, want, "{name}: {dir} matched");
            assert_eq!(
                d.filtered - d0.filtered,
                sent - want,
                "{name}: {dir} filtered"
            );
            assert_eq!(d.copied - d0.copied, want, "{name}: {dir} copied");
        }
        assert_eq!(src.received - src0.received, 400, "{name}: received");
        assert_eq!(
            src.matched - src0.matched,
            want_in + want_out,
            "{name}: matched"
        );
        assert_eq!(
            src.filtered - src0.filtered,
            400 - want_in - want_out,
            "{name}: filtered"
        );
        assert_eq!(src.dropped_total(), 0, "{name}: {:?}", src.dropped);
        assert_eq!(src.rule_sets_installed, 1 + k as u64, "{name}");
        let (sess, sess0) = (&st.sessions["s"], &before.sessions["s"]);
        assert_eq!(
            sess.matched - sess0.matched,
            want_in + want_out,
            "{name}: session matched"
        );
        let (t, t0) = (&st.targets["cap"], &before.targets["cap"]);
        assert_eq!(
            t.sent_packets - t0.sent_packets,
            want_in + want_out,
            "{name}: target sent"
        );
        assert_eq!(t.dropped_total(), 0, "{name}: {:?}", t.dropped);
        common::assert_reconciles("cap", t);
        // And `rules list` says the same (checked after the traffic, which
        // is what the change is for).
        if !phase.change.is_empty() {
            assert_eq!(cli(&control, &["rules", "list"]), listed[k], "{name}");
        }
        before = st;
    }

    // The capture: exactly the UDP frames of each phase's mirrored
    // directions, each with its direction, in the order sent.
    let records: Vec<Record> = read_pcapng(&capture);
    assert_eq!(
        records.len() as u64,
        before.targets["cap"].sent_packets,
        "records in the file"
    );
    for (k, phase) in phases.iter().enumerate() {
        let (ing, eg) = ranges(k);
        for (dir, range, on, outbound) in [
            ("ingress", ing, phase.ingress, false),
            ("egress", eg, phase.egress, true),
        ] {
            let have: Vec<u32> = records
                .iter()
                .filter(|r| r.outbound == Some(outbound))
                .filter_map(|r| traffic::seq_of(&r.data))
                .filter(|s| range.contains(s))
                .collect();
            let want: Vec<u32> = if on {
                range.filter(|s| s % 2 == 0).collect()
            } else {
                Vec::new()
            };
            assert_eq!(have, want, "{}: {dir} frames in the capture", phase.name);
        }
    }
    assert!(
        records.iter().all(|r| r.outbound.is_some()),
        "every record has a direction"
    );
    drop(daemon);
}
