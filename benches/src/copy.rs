//! `copy`: what copy mode costs the monitored traffic. Real UDP and TCP
//! traffic runs between two namespaces through the monitored interface with
//! copy mode off, then on through the ring buffer and userspace (ingress
//! through XDP, and through tcx), then on through the kernel path (tcx
//! clones, no ring), mirroring every frame of both directions to an
//! interface target; the table shows the monitored traffic's own rate in
//! each case, and what was mirrored.
//!
//! ```text
//!  ns cli                 ns srv (`mirror run` here when on)        ns sink
//!  c0 10.9.0.1 ──veth──── s0 10.9.0.2 [copy]         tgt0 ──veth──── sink0
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use mirror_user::control::Client;
use mirror_user::lab::{self, DaemonProcess, Netns, TempDir};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    runs: crate::Runs,
}

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "s0"
mode = "copy"
direction = "both"
ingress_hook = "@HOOK@"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[filter.rule]]
number = 1
action = "accept"
direction = "egress"

[[target]]
name = "ids"
kind = "interface"
interface = "tgt0"

[[session]]
name = "all"
source = "live"
filter = "all"
targets = ["ids"]
path = "@PATH@"
"#;

#[derive(Debug, Clone, Serialize)]
struct Row {
    traffic: &'static str,
    case: &'static str,
    /// UDP: datagrams/s the client sent; TCP: 0.
    offered_pps: f64,
    /// UDP: datagrams/s the server received; TCP: Mbit/s of payload.
    delivered: f64,
    delivered_min: f64,
    delivered_max: f64,
    /// UDP: share of sent datagrams not received.
    loss_pct: f64,
    /// Copies the daemon handed to its target per second (0 when off).
    mirrored_per_s: f64,
    /// Copies lost because the ring buffer was full, per second.
    ring_full_per_s: f64,
}

struct Lab {
    cli: Netns,
    srv: Netns,
    _sink: Netns,
}

fn lab() -> Result<Lab> {
    let l = Lab {
        cli: Netns::new("bcli")?,
        srv: Netns::new("bsrv")?,
        _sink: Netns::new("bsink")?,
    };
    lab::wire(&l.cli, "c0", "10.9.0.1", &l.srv, "s0", "10.9.0.2", 1500)?;
    lab::veth(&l.srv, "tgt0", &l._sink, "sink0", 1)?;
    Ok(l)
}

const UDP: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, 2)),
    5002,
);
const TCP: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, 2)),
    5001,
);

/// UDP datagrams of 18 bytes (60-byte frames) as fast as one thread sends
/// them for `secs`; returns (sent, received).
fn udp_blast(l: &Lab, secs: f64) -> Result<(u64, u64)> {
    let rx = l.srv.run(|| Ok(UdpSocket::bind(UDP)?))?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let tx = l.cli.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(UDP)?;
        Ok(s)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut n, mut buf) = (0u64, [0u8; 64]);
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => n += 1,
                    Err(_) if stop.load(Ordering::Relaxed) => return n,
                    Err(_) => {}
                }
            }
        })
    };
    let payload = [0x5au8; 18];
    let (mut sent, end) = (0u64, Instant::now() + Duration::from_secs_f64(secs));
    while Instant::now() < end {
        for _ in 0..256 {
            if tx.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    Ok((sent, received))
}

/// One TCP stream for `secs`; returns payload bytes received.
fn tcp_stream(l: &Lab, secs: f64) -> Result<u64> {
    let listener = l.srv.run(|| Ok(TcpListener::bind(TCP)?))?;
    let server = std::thread::spawn(move || -> Result<u64> {
        let (mut c, _) = listener.accept()?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let (mut n, mut buf) = (0u64, vec![0u8; 1 << 16]);
        loop {
            match c.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut c = l
        .cli
        .run(|| Ok(TcpStream::connect_timeout(&TCP, Duration::from_secs(5))?))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let chunk = vec![0xa5u8; 1 << 16];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        c.write_all(&chunk)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))?
}

/// (mirrored, ring_full) so far, from the daemon.
fn mirrored(d: Option<&DaemonProcess>) -> Result<(u64, u64)> {
    let Some(d) = d else { return Ok((0, 0)) };
    let s = Client::connect(&d.control)?.stats()?;
    let src = &s.sources["live"];
    Ok((
        src.mirrored,
        src.dropped.get("ring_full").copied().unwrap_or(0),
    ))
}

pub fn run(a: &Args, out: &Path) -> Result<()> {
    let exe = crate::mirror_exe()?;
    let l = lab()?;
    let dir = TempDir::new("bench-copy")?;
    let mut rows = Vec::new();
    // The ring-buffer cases pin `path = "userspace"`: with only an
    // interface target the session would otherwise be cloned in the kernel.
    let cases = [
        ("off", None),
        ("copy, xdp ingress", Some(("xdp", "userspace"))),
        ("copy, tcx ingress", Some(("tc", "userspace"))),
        ("copy, tcx clone", Some(("auto", "kernel"))),
    ];
    let progress = crate::progress(cases.len() as u64 * 2 * a.runs.reps as u64, "copy");
    for (case, setup) in cases {
        let daemon = match setup {
            None => None,
            Some((hook, path)) => Some(crate::start_daemon(
                &l.srv,
                &exe,
                &dir,
                &CONFIG.replace("@HOOK@", hook).replace("@PATH@", path),
            )?),
        };
        for traffic in ["udp 60B", "tcp"] {
            progress.set_message(format!("{case}, {traffic}"));
            let (mut del, mut offered, mut loss, mut mir, mut full) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..a.runs.reps {
                crate::check_interrupted()?;
                let (m0, f0) = mirrored(daemon.as_ref())?;
                let t0 = Instant::now();
                if traffic == "tcp" {
                    let bytes = tcp_stream(&l, a.runs.secs)?;
                    del.push(bytes as f64 * 8.0 / a.runs.secs / 1e6);
                    offered.push(0.0);
                    loss.push(0.0);
                } else {
                    let (sent, got) = udp_blast(&l, a.runs.secs)?;
                    offered.push(sent as f64 / a.runs.secs);
                    del.push(got as f64 / a.runs.secs);
                    loss.push(100.0 * (sent.saturating_sub(got)) as f64 / sent.max(1) as f64);
                }
                // Let the daemon hand on what it holds before reading its counters.
                std::thread::sleep(Duration::from_millis(300));
                let (m1, f1) = mirrored(daemon.as_ref())?;
                let secs = t0.elapsed().as_secs_f64().max(a.runs.secs);
                mir.push((m1 - m0) as f64 / secs);
                full.push((f1 - f0) as f64 / secs);
                progress.inc(1);
            }
            let (d, dmin, dmax) = crate::median(&mut del);
            let row = Row {
                traffic: if traffic == "tcp" { "tcp" } else { "udp 60B" },
                case,
                offered_pps: crate::median(&mut offered).0,
                delivered: d,
                delivered_min: dmin,
                delivered_max: dmax,
                loss_pct: crate::median(&mut loss).0,
                mirrored_per_s: crate::median(&mut mir).0,
                ring_full_per_s: crate::median(&mut full).0,
            };
            crate::say(
                &progress,
                format!(
                    "copy {:>8} {:>18}: {:>12.0} ({:.0}-{:.0}), mirrored {:.0}/s",
                    row.traffic, row.case, d, dmin, dmax, row.mirrored_per_s
                ),
            );
            rows.push(row);
        }
        drop(daemon);
    }
    progress.finish_and_clear();
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.traffic != "tcp")
        .map(|r| (r.case.to_string(), r.delivered / 1000.0))
        .collect();
    crate::save_bars(
        out,
        "copy",
        &rows,
        &table(&rows, a),
        crate::publishes(out),
        "monitored UDP traffic (60-byte frames) with copy mode off / on",
        "kpps delivered to the server",
        &bars,
    )
}

fn table(rows: &[Row], a: &Args) -> String {
    let mut s = format!(
        "Monitored traffic with copy mode off and on (every frame of both directions mirrored to an interface target), \
         median of {} runs of {:.1} s (`cargo xtask bench copy`)\n\n\
         | traffic | case | offered | delivered (min-max) | vs off | loss | mirrored/s | ring_full/s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        a.runs.reps, a.runs.secs
    );
    for r in rows {
        let off = rows
            .iter()
            .find(|o| o.traffic == r.traffic && o.case == "off")
            .map_or(r.delivered, |o| o.delivered);
        let unit = if r.traffic == "tcp" {
            " Mbit/s"
        } else {
            " pps"
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.0}{unit} ({:.0}-{:.0}) | {:.2}x | {:.2}% | {:.0} | {:.0} |\n",
            r.traffic,
            r.case,
            if r.traffic == "tcp" {
                "-".to_string()
            } else {
                format!("{:.0} pps", r.offered_pps)
            },
            r.delivered,
            r.delivered_min,
            r.delivered_max,
            r.delivered / off.max(1e-9),
            r.loss_pct,
            r.mirrored_per_s,
            r.ring_full_per_s,
        ));
    }
    s
}
