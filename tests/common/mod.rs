//! Helpers shared by the kernel and end-to-end tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod fuzzgen;

/// First line of every test that loads BPF programs or builds network
/// namespaces. Such tests are marked
/// `#[ignore = "needs root: BPF and network namespaces"]`, so a plain
/// `cargo test` as another user reports them as ignored (skipped), and
/// `cargo xtask test` runs them with `--include-ignored` as root. Run anyway
/// without root (`--include-ignored`, `--ignored`), a test fails here with
/// the reason: a test that did not run its body never counts as passed.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            mirror_user::is_root(),
            "needs root (BPF and network namespaces): run it as root, or leave out \
             --include-ignored/--ignored so that it is reported as skipped"
        );
    };
}

/// Ethernet frame: dst, src, ethertype, payload.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// 802.1Q/802.1ad tags in front of `inner_type`, outermost first.
pub fn vlan_tags(tags: &[(u16, u16)], inner_type: u16, payload: &[u8]) -> Vec<u8> {
    let (first_tpid, _) = tags[0];
    let mut body = Vec::new();
    for (i, &(_, vid)) in tags.iter().enumerate() {
        body.extend_from_slice(&vid.to_be_bytes());
        let next = tags.get(i + 1).map_or(inner_type, |t| t.0);
        body.extend_from_slice(&next.to_be_bytes());
    }
    body.extend_from_slice(payload);
    eth(first_tpid, &body)
}

/// IPv4 header (no checksum: XDP does not verify it) + payload.
pub fn ipv4(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: usize,
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 5 + options / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend(std::iter::repeat_n(1u8, options)); // NOP options
    h.extend_from_slice(payload);
    h
}

/// IPv6 header + payload (extension headers go in the payload).
pub fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An 8-byte IPv6 extension header (hop-by-hop, routing or destination options).
pub fn ext8(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header with fragment offset `offset` (in 8-byte units).
pub fn frag6(next: u8, offset: u16) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&(offset << 3).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 7]);
    h
}

/// TCP/UDP/SCTP: the ports and some header bytes.
pub fn l4(sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.resize(len.max(4), 0);
    h
}

pub const V4A: [u8; 4] = [10, 1, 0, 1];
pub const V4B: [u8; 4] = [10, 2, 0, 1];
pub const V6A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const V6B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The filter of the tap and target end-to-end tests: every frame but TCP
/// port 22 and ICMPv6.
pub const IDS_FILTER: &str = r#"
[[filter]]
name = "ids"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "22"
[[filter.rule]]
number = 110
action = "reject"
direction = "ingress"
protocol = "icmpv6"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"
"#;

/// Polls the daemon's counters until `done` holds, failing after `timeout`
/// with the last counters.
pub fn wait_for_stats(
    client: &mut mirror_user::control::Client,
    what: &str,
    timeout: std::time::Duration,
    done: impl Fn(&mirror_user::dataplane::stats::Stats) -> bool,
) -> mirror_user::dataplane::stats::Stats {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let s = client.stats().expect("stats");
        if done(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Polls (bounded, 20 s) until `done` holds for the daemon's counters.
pub fn wait_for(
    client: &mut mirror_user::control::Client,
    what: &str,
    done: impl Fn(&mirror_user::dataplane::stats::Stats) -> bool,
) -> mirror_user::dataplane::stats::Stats {
    wait_for_stats(client, what, std::time::Duration::from_secs(20), done)
}

/// Every frame a source received is accounted for, each term counted where
/// it happened: filtered, or matched and then mirrored, sampled out,
/// scheduled out, past its flow's cutoff or dropped with a reason; nothing
/// left in flight.
pub fn assert_source_reconciles(name: &str, s: &mirror_user::dataplane::stats::SourceStats) {
    assert_eq!(s.queued, 0, "{name} is idle: {s:?}");
    assert_eq!(
        s.received,
        s.matched + s.filtered,
        "{name}: received = matched + filtered: {s:?}"
    );
    assert_eq!(
        s.matched,
        s.mirrored + s.sampled_out + s.scheduled_out + s.cutoff + s.dropped_total(),
        "{name}: matched = mirrored + sampled_out + scheduled_out + cutoff + dropped: {s:?}"
    );
    assert_eq!(
        s.flow_untracked, 0,
        "{name}: every cutoff frame had a flow entry: {s:?}"
    );
    // Copy mode: each direction's matched frames, by what the kernel did.
    for (dir, d) in &s.directions {
        assert_eq!(d.received, d.matched + d.filtered, "{name} {dir}: {d:?}");
        assert_eq!(
            d.matched,
            d.sampled_out
                + d.scheduled_out
                + d.cutoff
                + d.copied
                + d.ring_full
                + d.copy_error
                + d.cloned,
            "{name} {dir}: matched = sampled_out + scheduled_out + cutoff + copied + ring_full \
             + copy_error + cloned: {d:?}"
        );
    }
}

/// Every copy offered to a target is sent or dropped with a reason, and the
/// kernel path lost none for a reason it cannot name.
pub fn assert_reconciles(name: &str, t: &mirror_user::dataplane::stats::TargetStats) {
    assert_eq!(t.queued, 0, "{name} is idle");
    assert_eq!(
        t.dropped.get("unknown").copied().unwrap_or(0),
        0,
        "{name}: no copy lost for an unknown reason: {t:?}"
    );
    assert_eq!(
        t.enqueued,
        t.sent_packets + t.dropped_total(),
        "{name}: enqueued = sent + dropped: {t:?}"
    );
}

/// Writes the config (with `@CONTROL@` / `@DIR@` filled in) to `dir` and
/// starts the daemon `bin` in `ns`.
pub fn start_daemon(
    bin: &str,
    ns: &mirror_user::lab::Netns,
    dir: &mirror_user::lab::TempDir,
    text: &str,
) -> (mirror_user::lab::DaemonProcess, mirror_user::config::Config) {
    start_daemon_with_env(bin, ns, dir, text, &[])
}

/// Runs the CLI against a running daemon, `mirror ARGS --control CONTROL`,
/// and returns what it did (status, stdout, stderr).
pub fn ctl(bin: &str, args: &[&str], control: &std::path::Path) -> std::process::Output {
    std::process::Command::new(bin)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .unwrap_or_else(|e| panic!("mirror {}: {e}", args.join(" ")))
}

/// [`start_daemon`] with extra environment variables for the daemon.
pub fn start_daemon_with_env(
    bin: &str,
    ns: &mirror_user::lab::Netns,
    dir: &mirror_user::lab::TempDir,
    text: &str,
    env: &[(&str, &str)],
) -> (mirror_user::lab::DaemonProcess, mirror_user::config::Config) {
    let control = dir.path().join("control.sock");
    let text = text
        .replace("@CONTROL@", &control.to_string_lossy())
        .replace("@DIR@", &dir.path().to_string_lossy());
    let path = dir.path().join("mirror.toml");
    std::fs::write(&path, &text).expect("write config");
    let cfg = mirror_user::config::parse(&text, "e2e").expect("valid config");
    let daemon = mirror_user::lab::DaemonProcess::start_with_env(
        ns,
        std::path::Path::new(bin),
        &path,
        &control,
        &dir.path().join("daemon.log"),
        std::time::Duration::from_secs(60),
        env,
    )
    .expect("daemon starts");
    (daemon, cfg)
}

/// One packet read back from a pcapng file.
pub struct Record {
    pub ts_ns: u64,
    pub orig_len: u32,
    pub data: Vec<u8>,
    /// epb_flags direction: Some(false) inbound, Some(true) outbound.
    pub outbound: Option<bool>,
}

/// Reads `path` with `pcap-parser` (an implementation independent of the
/// writer's `pcap-file`), checking the interface's nanosecond resolution.
pub fn read_pcapng(path: &std::path::Path) -> Vec<Record> {
    use pcap_parser::traits::PcapReaderIterator;
    use pcap_parser::{Block, PcapBlockOwned, PcapError, PcapNGReader};
    let file = std::fs::File::open(path).expect("open pcapng");
    let mut reader = PcapNGReader::new(1 << 16, file).expect("a pcapng file");
    let mut out = Vec::new();
    let mut tsresol = None;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        assert_eq!(idb.linktype, pcap_parser::Linktype::ETHERNET);
                        tsresol = Some(idb.if_tsresol);
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        assert_eq!(tsresol, Some(9), "nanosecond time stamps");
                        // epb_flags (option 2): bits 0-1 are the direction.
                        let outbound = epb
                            .options
                            .iter()
                            .find(|o| o.code == pcap_parser::OptionCode(2))
                            .and_then(|o| o.value.get(..4))
                            .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]) & 3)
                            .and_then(|d| match d {
                                1 => Some(false),
                                2 => Some(true),
                                _ => None,
                            });
                        out.push(Record {
                            ts_ns: (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low),
                            orig_len: epb.origlen,
                            data: epb.data[..epb.caplen as usize].to_vec(),
                            outbound,
                        });
                    }
                    _ => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => reader.refill().expect("refill"),
            Err(e) => panic!("{}: {e:?}", path.display()),
        }
    }
    out
}

/// Pins the calling thread to `cpu`, so per-CPU kernel state (the verdict
/// cache) is the same between its BPF_PROG_TEST_RUN calls.
pub fn pin_current_thread(cpu: usize) {
    // Safety: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // Safety: `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // Safety: a valid set for the calling thread (tid 0).
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether a UDP datagram over IPv6 from `src` to `dst` carries the
/// checksum etherparse computes for it (never 0: mandatory on IPv6).
pub fn udp6_checksum_ok(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, udp: &[u8]) -> bool {
    let stored = u16::from_be_bytes([udp[6], udp[7]]);
    let header = etherparse::UdpHeader {
        source_port: u16::from_be_bytes([udp[0], udp[1]]),
        destination_port: u16::from_be_bytes([udp[2], udp[3]]),
        length: u16::from_be_bytes([udp[4], udp[5]]),
        checksum: 0,
    };
    let want = header
        .calc_checksum_ipv6_raw(src.octets(), dst.octets(), &udp[8..])
        .expect("fits");
    stored != 0 && stored == want
}

/// `Udp6InCsumErrors` of `ns`: UDP over IPv6 its stack dropped for a bad
/// checksum (a Linux vxlan device's packets included).
pub fn udp6_checksum_errors(ns: &mirror_user::lab::Netns) -> u64 {
    let out = ns
        .command(&["cat", "/proc/net/snmp6"])
        .output()
        .expect("reading /proc/net/snmp6");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Udp6InCsumErrors")
}

/// (destination, IP protocol, IP payload) of an IPv4 frame.
pub fn ipv4_payload(frame: &[u8]) -> Option<(std::net::Ipv4Addr, u8, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match p.net? {
        etherparse::NetSlice::Ipv4(ip) => Some((
            ip.header().destination_addr(),
            ip.payload().ip_number.0,
            ip.payload().payload.to_vec(),
        )),
        _ => None,
    }
}

/// The time a test reads just before it sends and just after the last copy
/// is out, Unix nanoseconds: every time stamp of those frames lies between.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    /// Opens the window: call right before the first frame is sent.
    pub fn open() -> Window {
        let now = mirror_user::dataplane::clock::realtime_ns();
        Window {
            start_ns: now,
            end_ns: now,
        }
    }

    /// Closes it: call once every copy has been counted sent.
    pub fn close(&mut self) {
        self.end_ns = mirror_user::dataplane::clock::realtime_ns();
    }

    /// `ts_ns` (a pcapng stamp) lies in the window.
    pub fn assert_holds(&self, what: &str, ts_ns: u64) {
        assert!(
            (self.start_ns..=self.end_ns).contains(&ts_ns),
            "{what}: time stamp {ts_ns} ns is not between the send ({}) and the last copy ({}): \
             {:+.3} s from the send",
            self.start_ns,
            self.end_ns,
            (ts_ns as f64 - self.start_ns as f64) / 1e9
        );
    }

    /// An ERSPAN III time stamp (the low 32 bits of the time in `unit_ns`
    /// units) lies in the window, taken in the same units.
    pub fn assert_holds_erspan(&self, what: &str, stamp: u32, unit_ns: u64) {
        let (from, to) = (self.start_ns / unit_ns, self.end_ns / unit_ns);
        let after_start = stamp.wrapping_sub(from as u32);
        assert!(
            u64::from(after_start) <= to - from,
            "{what}: ERSPAN time stamp {stamp} is not between {} and {} (units of {unit_ns} ns, \
             low 32 bits)",
            from as u32,
            to as u32
        );
    }
}

/// A config whose one session (on source `s`, to interface target `t`)
/// accepts every ingress frame and mirrors 1 in `sample` of them.
pub fn catch_all_config(sample: u32) -> String {
    format!(
        r#"
[[source]]
name = "s"
interface = "x"
[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[target]]
name = "t"
kind = "interface"
interface = "y"
[[session]]
name = "a"
source = "s"
filter = "all"
targets = ["t"]
sample = {sample}
"#
    )
}

/// The kernel's symmetric flow hash of each frame: what `xdp_tap` writes in
/// its metadata, read back through BPF_PROG_TEST_RUN on a program whose one
/// session mirrors everything. Needs root.
pub fn kernel_flow_hashes<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u32> {
    use mirror_user::filter::ruleset::{self, RuleSet};
    let config = mirror_user::config::parse(&catch_all_config(1), "hash").expect("valid config");
    let set = RuleSet::build(
        &ruleset::source_filters(&config, 0),
        mirror_user::config::Direction::Ingress,
    )
    .expect("the rule compiles");
    let mut prog = mirror_user::kernel::SourceProgram::load().expect("the program loads");
    prog.install(&set, None).expect("the rule installs");
    frames
        .into_iter()
        .map(|f| {
            mirror_user::kernel::test_run(prog.xdp_tap_fd(), f)
                .expect("BPF_PROG_TEST_RUN")
                .expect("mirrored, with metadata")
                .hash
        })
        .collect()
}

/// A frame's flow as the kernel's flow hash sees it, the same for both
/// directions: the outer VLAN id, the IP protocol, and the two endpoints
/// (address, port; port 0 without ports) in order.
pub type FlowKey = (Option<u16>, u8, [(std::net::IpAddr, u16); 2]);

pub fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let vlan = p.vlan_ids().first().map(|v| v.value());
    let (src, dst, proto) = match p.net.as_ref()? {
        etherparse::NetSlice::Ipv4(ip) => (
            std::net::IpAddr::V4(ip.header().source_addr()),
            std::net::IpAddr::V4(ip.header().destination_addr()),
            ip.payload().ip_number.0,
        ),
        etherparse::NetSlice::Ipv6(ip) => (
            std::net::IpAddr::V6(ip.header().source_addr()),
            std::net::IpAddr::V6(ip.header().destination_addr()),
            ip.payload().ip_number.0,
        ),
        _ => return None,
    };
    let (sport, dport) = match &p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        Some(etherparse::TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        _ => (0, 0),
    };
    let mut ends = [(src, sport), (dst, dport)];
    ends.sort();
    Some((vlan, proto, ends))
}

/// This thread inside a network namespace until dropped (then back where it
/// was): for kernel tests whose map updates and devices must see the
/// namespace's interfaces (a DEVMAP entry is resolved in the caller's).
pub struct Inside {
    home: std::fs::File,
}

impl Inside {
    pub fn enter(ns: &mirror_user::lab::Netns) -> Inside {
        use std::os::fd::AsRawFd;
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("this thread's netns");
        let there = std::fs::File::open(std::path::Path::new("/run/netns").join(ns.name()))
            .expect("the namespace");
        // Safety: a namespace fd; setns affects only this thread.
        let rc = unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Inside { home }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // Safety: as in `enter`, back to this thread's own namespace.
        let rc = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!("setns back: {}", std::io::Error::last_os_error());
        }
    }
}

/// The collector the kernel-table tests build tunnels to: 10.0.0.2, reached
/// from 10.0.0.1 over MTU 1500.
pub fn lab_tunnel() -> mirror_user::config::Tunnel {
    mirror_user::config::Tunnel {
        remote: "10.0.0.2".parse().expect("ip"),
        source: None,
        mtu: 1500,
    }
}

/// The next hop to [`lab_tunnel`]'s collector out of device `ifindex`
/// (MACs 02:00:00:00:00:01 to :02), as the daemon would resolve it.
pub fn lab_hop(ifindex: u32) -> mirror_user::kernel::route::NextHop {
    mirror_user::kernel::route::NextHop {
        ifindex,
        mtu: 1500,
        smac: [2, 0, 0, 0, 0, 1],
        dmac: Some([2, 0, 0, 0, 0, 2]),
        source: "10.0.0.1".parse().expect("ip"),
        neighbour: "10.0.0.2".parse().expect("ip"),
    }
}

/// Waits (at most 20 s) until the daemon's log holds `text` at least `n` times.
pub fn wait_log(daemon: &mirror_user::lab::DaemonProcess, text: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while daemon.log_text().matches(text).count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {n}x {text:?} in the log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends every frame of `frames` from the lab's generator at `pps` while
/// calling `flap(n)` for flap n = 1, 2, … (it sets a device down and up
/// and waits for the daemon to see both), at most `most` times and only
/// while the stream lasts; asserts every frame was sent and the stream
/// outlasted at least `fewest` flaps. Returns the frames sent.
pub fn flap_during_a_stream(
    lab: &mirror_user::lab::Lab,
    frames: std::sync::Arc<Vec<Vec<u8>>>,
    pps: u64,
    (fewest, most): (usize, usize),
    mut flap: impl FnMut(usize),
) -> u64 {
    use mirror_user::lab::{self, Lab};
    let n = frames.len() as u64;
    let mut flaps = 0;
    let sent = std::thread::scope(|scope| {
        let sender =
            scope.spawn(|| lab::send_frames(&lab.gen, Lab::GEN_IF, frames, pps).expect("send"));
        while !sender.is_finished() && flaps < most {
            flaps += 1;
            flap(flaps);
        }
        sender.join().expect("sender")
    });
    assert_eq!(sent, n);
    assert!(flaps >= fewest, "the stream outlasted only {flaps} flaps");
    sent
}

/// The time slice (ns) of each thread of process `pid` whose name starts
/// with `prefix`.
pub fn thread_slices(pid: u32, prefix: &str) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .filter_map(|dir| mirror_user::lab::process::slice_ns(&dir))
        .collect()
}

/// [`thread_slices`] once `n` such threads have `slice`, or as they are
/// after 5 s: a thread reported started may not have asked yet.
pub fn wait_thread_slices(pid: u32, prefix: &str, n: usize, slice: u64) -> Vec<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = thread_slices(pid, prefix);
        if (now.len() == n && now.iter().all(|&s| s == slice))
            || std::time::Instant::now() >= deadline
        {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
