//! `mirror demo`: the whole pipeline in a throw-away namespace lab.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mirror_user::config::{self, Direction};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::filter::classify;
use mirror_user::lab::{self, traffic, Capture, DaemonProcess, Lab};

/// The embedded default: a tap on the lab's feed port, SSH left out, the rest
/// mirrored to the sink's port, to a VXLAN collector (VNI 42) and to a pcapng
/// file. `@CONTROL@` and `@DIR@` are replaced with private paths.
pub const DEMO_CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "uplink"
interface = "feed0"
mode = "tap"
xdp_mode = "auto"

[[filter]]
name = "no-ssh"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "22"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[target]]
name = "collector"
kind = "vxlan"
remote = "10.77.0.2"
mtu = 9000

[[target]]
name = "archive"
kind = "pcapng"
path = "@DIR@/demo.pcapng"

[[session]]
name = "ids-feed"
source = "uplink"
filter = "no-ssh"
targets = ["ids0", "collector", "archive"]
vni = 42
"#;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of traffic to send.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Frames per second offered by the generator.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub pps: u64,
}

pub fn main(a: Args) -> Result<ExitCode> {
    if !mirror_user::is_root() {
        bail!("mirror demo builds network namespaces and attaches XDP: run it as root");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let dir = lab::TempDir::new("demo")?;
    let control = dir.path().join("control.sock");
    let cfg_path = dir.path().join("mirror.toml");
    let text = DEMO_CONFIG
        .replace("@CONTROL@", &control.to_string_lossy())
        .replace("@DIR@", &dir.path().to_string_lossy());
    std::fs::write(&cfg_path, &text)?;
    let cfg = config::parse(&text, "embedded demo config")?;

    println!("mirror demo: building the lab (namespaces gen -> src -> sink)");
    let lab = Lab::new(1)?;
    let collector = vxlan_collector(&lab)?;
    describe_lab(&lab, &collector, dir.path());
    let exe = std::env::current_exe().context("locating the mirror binary")?;
    let mut daemon = DaemonProcess::start(
        &lab.src,
        &exe,
        &cfg_path,
        &control,
        &dir.path().join("daemon.log"),
        Duration::from_secs(20),
    )?;
    println!("  daemon up (log: {})", daemon.log.display());
    let capture = Capture::start(&lab.sink, Lab::SINK_IF)?;
    let decapsulated = Capture::start(&collector, "vx42")?;

    let n = (a.seconds * a.pps).min(u64::from(u32::MAX)) as u32;
    let frames = Arc::new(traffic::mixed(n));
    let expected = expected_copies(&cfg, &frames);
    println!(
        "sending {n} frames at {} fps (IPv4/IPv6, TCP/UDP/ICMP, VLAN and QinQ, 64-1514 bytes); \
         {} should be mirrored, {} (TCP to port 22) filtered",
        a.pps,
        expected.len(),
        n as usize - expected.len()
    );

    // The generator runs on its own thread; counters are printed meanwhile.
    let sender = {
        let (ns, frames, pps) = (lab::Netns::attach(lab.gen.name()), frames.clone(), a.pps);
        std::thread::spawn(move || lab::send_frames(&ns, Lab::GEN_IF, frames, pps))
    };
    let mut client = Client::connect(&control)?;
    let start = Instant::now();
    let mut next_print = Duration::from_secs(1);
    while !sender.is_finished() {
        if interrupted.load(Ordering::Relaxed) {
            println!("interrupted: cleaning up");
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() >= next_print {
            print_live(&client.stats()?, capture.count(), start.elapsed());
            next_print += Duration::from_secs(1);
        }
    }
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))??;

    let stats = wait_until_idle(&mut client, sent, &interrupted)?;
    let received = capture.finish();
    let from_collector = decapsulated.finish();
    // Stopping flushes the capture file.
    let status = daemon.stop(Duration::from_secs(10))?;
    let archived = read_pcapng(&dir.path().join("demo.pcapng"))?;
    print!("final counters:\n{}", super::stats::render(&stats));
    let mut ok = check(&stats, sent);
    ok &= check_copies(
        &stats,
        "ids0",
        "sink (the IDS sensor's port)",
        &expected,
        &received,
    );
    ok &= check_copies(
        &stats,
        "collector",
        "VXLAN collector (decapsulated by Linux)",
        &expected,
        &from_collector,
    );
    ok &= check_copies(&stats, "archive", "pcapng file", &expected, &archived);
    drop(lab);
    println!("lab removed; daemon exited with {status}");
    Ok(if ok && status.success() {
        println!("demo: PASS");
        ExitCode::SUCCESS
    } else {
        println!("demo: FAIL (daemon log was {})", daemon.log.display());
        ExitCode::FAILURE
    })
}

/// Prints the lab's namespaces, links and targets.
fn describe_lab(lab: &Lab, collector: &lab::Netns, dir: &std::path::Path) {
    println!(
        "  {} [{}] --veth--> [{}] {}   (mirror runs here, tap on {})",
        lab.gen.name(),
        Lab::GEN_IF,
        Lab::FEED_IF,
        lab.src.name(),
        Lab::FEED_IF
    );
    println!(
        "  {} [{}] --veth--> [{}] {}   (the IDS sensor's port)",
        lab.src.name(),
        Lab::TARGET_IF,
        Lab::SINK_IF,
        lab.sink.name()
    );
    println!(
        "  {} [col0 10.77.0.1] --veth--> [col1 10.77.0.2] {}   (a VXLAN collector: Linux vxlan device vx42, VNI 42)",
        lab.src.name(),
        collector.name()
    );
    println!("  and a pcapng file: {}", dir.join("demo.pcapng").display());
}

/// The indexes of the frames the demo's filter accepts (the reference classifier).
fn expected_copies(cfg: &config::Config, frames: &[Vec<u8>]) -> Vec<u32> {
    let filters: Vec<&config::Filter> = cfg
        .sessions_of(0)
        .iter()
        .map(|&s| &cfg.filters[cfg.sessions[s].filter])
        .collect();
    frames
        .iter()
        .enumerate()
        .filter(|(_, f)| classify::classify(&filters, Direction::Ingress, f).is_some())
        .map(|(i, _)| i as u32)
        .collect()
}

/// Waits (bounded) until the pipeline is idle: every copy sent or dropped.
fn wait_until_idle(client: &mut Client, sent: u64, interrupted: &AtomicBool) -> Result<Stats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    Ok(loop {
        let s = client.stats()?;
        let idle = s.targets.values().all(|t| t.queued == 0)
            && s.sources
                .values()
                .all(|src| src.received >= sent && src.queued == 0);
        if idle || Instant::now() > deadline || interrupted.load(Ordering::Relaxed) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    })
}

/// The collector namespace: a veth from src and a Linux vxlan device (VNI 42)
/// that decapsulates what the `collector` target sends.
fn vxlan_collector(lab: &Lab) -> Result<lab::Netns> {
    let ns = lab::Netns::new("coll")?;
    lab::wire(
        &lab.src,
        "col0",
        "10.77.0.1",
        &ns,
        "col1",
        "10.77.0.2",
        9000,
    )?;
    lab::vxlan_decap(&ns, "vx42", 42, "10.77.0.2", "col1")?;
    Ok(ns)
}

/// Every packet of a pcapng file, read back with pcap-file's reader.
fn read_pcapng(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    use pcap_file::pcapng::{Block, PcapNgReader};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = PcapNgReader::new(file).context("reading the pcapng header")?;
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(epb) = block.context("reading a pcapng block")? {
            out.push(epb.data.to_vec());
        }
    }
    Ok(out)
}

/// Checks that target `name` delivered exactly the accepted frames (or, when
/// it dropped some, only accepted ones, the rest counted).
fn check_copies(s: &Stats, name: &str, what: &str, expected: &[u32], got: &[Vec<u8>]) -> bool {
    let mut seqs: Vec<u32> = got.iter().filter_map(|f| traffic::seq_of(f)).collect();
    seqs.sort_unstable();
    let dropped = s.targets.get(name).map_or(0, |t| t.dropped_total())
        + s.sources.values().map(|v| v.dropped_total()).sum::<u64>();
    let strays = got.len() - seqs.len();
    let good = strays == 0
        && if dropped == 0 {
            seqs == expected
        } else {
            seqs.iter().all(|g| expected.binary_search(g).is_ok())
                && seqs.len() as u64 + dropped == expected.len() as u64
        };
    println!(
        "  [{}] {what} got {} of the {} accepted frames ({dropped} dropped and counted, {strays} stray)",
        if good { " ok " } else { "FAIL" },
        seqs.len(),
        expected.len(),
    );
    good
}

fn print_live(s: &Stats, sink: u32, t: Duration) {
    for (name, v) in &s.sources {
        println!(
            "  t={:>4.1}s {name}: received {} matched {} filtered {} mirrored {}   sink got {sink}",
            t.as_secs_f64(),
            v.received,
            v.matched,
            v.filtered,
            v.mirrored
        );
    }
}

/// Checks the counters reconcile.
fn check(s: &Stats, sent: u64) -> bool {
    let mut ok = true;
    let mut verdict = |what: &str, good: bool| {
        println!("  [{}] {what}", if good { " ok " } else { "FAIL" });
        ok &= good;
    };
    for v in s.sources.values() {
        verdict(
            &format!("source received every frame sent ({} = {sent})", v.received),
            v.received == sent,
        );
        verdict(
            &format!(
                "received = matched + filtered ({} = {} + {})",
                v.received, v.matched, v.filtered
            ),
            v.received == v.matched + v.filtered,
        );
        verdict(
            &format!(
                "matched = mirrored + dropped ({} = {} + {})",
                v.matched,
                v.mirrored,
                v.dropped_total()
            ),
            v.matched == v.mirrored + v.dropped_total(),
        );
    }
    for v in s.targets.values() {
        verdict(
            &format!(
                "target enqueued = sent + dropped ({} = {} + {})",
                v.enqueued,
                v.sent_packets,
                v.dropped_total()
            ),
            v.enqueued == v.sent_packets + v.dropped_total() && v.queued == 0,
        );
    }
    ok
}
