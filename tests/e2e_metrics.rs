//! End to end, in network namespaces: the Prometheus endpoint of a running
//! daemon. After traffic through a tap source (a userspace session to an
//! interface and a group of a dead GRE collector and a pcapng file) and a
//! copy-mode source in both directions (a kernel-path session), at a quiet
//! moment, `GET /metrics` on 127.0.0.1 inside the daemon's namespace is read
//! by the Prometheus project's own parser (Python's `prometheus_client`),
//! and every number of `mirror stats --json` taken right after is the value
//! of exactly the series the README names for it, and every series is one
//! of them or an info metric that says what the JSON's strings and lists
//! say. A port that is taken fails the start, with nothing attached.
//!
//! ```text
//!  ns gen                    ns src (mirror runs here)               ns sink
//!  gen0  ──veth── feed0  [tap]                     tgt0   ──veth── sink0
//!  cgen0 ──veth── csrc0  [copy, both ways]         ctgt0  ──veth── csink0
//!                 lo 127.0.0.1:9464  GET /metrics
//! ```

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_reconciles, assert_source_reconciles};
use mirror_user::control::Client;
use mirror_user::dataplane::stats::Stats;
use mirror_user::lab::{self, traffic, Lab, Netns, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mirror");
const METRICS: &str = "127.0.0.1:9464";

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"
metrics = "127.0.0.1:9464"

[[source]]
name = "feed"
interface = "feed0"

[[source]]
name = "web"
interface = "csrc0"
mode = "copy"
direction = "both"

[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"

[[filter]]
name = "both"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[filter.rule]]
number = 1
action = "accept"
direction = "egress"

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

[[target]]
name = "clone0"
kind = "interface"
interface = "ctgt0"

[[target_group]]
name = "pool"
members = ["nowhere", "cap"]

[[session]]
name = "all"
source = "feed"
filter = "all"
targets = ["ids0", "pool"]

[[session]]
name = "web"
source = "web"
filter = "both"
targets = ["clone0"]
"#;

/// The standard lab plus the copy-mode source's port and its target's.
fn lab() -> Lab {
    let lab = Lab::new(1).expect("lab");
    lab::veth(&lab.gen, "cgen0", &lab.src, "csrc0", 1).expect("the copy source's veth");
    lab::veth(&lab.src, "ctgt0", &lab.sink, "csink0", 1).expect("the clone target's veth");
    lab
}

/// `GET path` on the daemon's endpoint, from inside its namespace: the
/// whole answer (the server closes after one).
fn http_get(ns: &Netns, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {METRICS}\r\n\r\n");
    ns.run(move || {
        let addr = METRICS.parse().expect("address");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("an answer from the metrics endpoint")
}

/// The body of a 200 answer with the Prometheus text format's content type.
fn scrape(ns: &Netns) -> String {
    let answer = http_get(ns, "/metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    body.to_string()
}

/// One sample as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    family_type: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `text` read by tests/prom_parse.py (Debian's python3-prometheus-client).
fn parse(text: &str) -> Vec<Sample> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/prom_parse.py");
    let mut child = std::process::Command::new("timeout")
        .args(["60", "/usr/bin/python3", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the text");
    let out = child.wait_with_output().expect("the parser's output");
    assert!(
        out.status.success(),
        "Prometheus's parser refused the text (Debian's python3-prometheus-client is \
         needed: `cargo xtask deps` installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut samples = Vec::new();
    for f in families {
        for s in f["samples"].as_array().expect("samples") {
            samples.push(Sample {
                family: f["name"].as_str().expect("name").to_string(),
                family_type: f["type"].as_str().expect("type").to_string(),
                name: s["name"].as_str().expect("name").to_string(),
                labels: s["labels"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_string()))
                    .collect(),
                value: s["value"].as_f64().expect("a value"),
            });
        }
    }
    samples
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the README's Operations/metrics section promises for one value of
/// `mirror stats --json`.
#[derive(Debug)]
struct Want {
    name: String,
    labels: BTreeMap<String, String>,
    /// `None`: an info metric (value 1).
    value: Option<u64>,
    counter: bool,
}

/// The README's rule, applied to every value of the JSON: `SECTION.NAME.KEY`
/// is `mirror_SECTION_KEY{SECTION="NAME"}`, `_total` and a counter unless
/// it is one of the gauges; a map of reasons adds `reason=`, a copy-mode
/// source's `directions` `direction=`; a flag is a 0/1 gauge; a string is a
/// label of `mirror_SECTION_info`, a list one `mirror_session_target_info`
/// or `mirror_group_member_info` per element.
fn wanted(json: &Value) -> Vec<Want> {
    const GAUGES: [&str; 6] = ["queued", "queues", "rules", "up", "zero_copy", "members_up"];
    let mut out = Vec::new();
    for (section, label) in [
        ("sources", "source"),
        ("sessions", "session"),
        ("targets", "target"),
        ("groups", "group"),
    ] {
        let one = &section[..section.len() - 1];
        for (name, obj) in json[section].as_object().expect("a section") {
            let mut info = labels(&[(label, name)]);
            for (key, v) in obj.as_object().expect("an object") {
                let base = format!("mirror_{one}_{key}");
                let l = labels(&[(label, name)]);
                match v {
                    Value::Number(n) => {
                        let counter = !GAUGES.contains(&key.as_str());
                        out.push(Want {
                            name: if counter {
                                format!("{base}_total")
                            } else {
                                base
                            },
                            labels: l,
                            value: Some(n.as_u64().expect("a count")),
                            counter,
                        });
                    }
                    Value::Bool(b) => out.push(Want {
                        name: base,
                        labels: l,
                        value: Some(u64::from(*b)),
                        counter: false,
                    }),
                    Value::Object(m) if key == "directions" => {
                        for (dir, counts) in m {
                            for (k, n) in counts.as_object().expect("a direction") {
                                out.push(Want {
                                    name: format!("mirror_source_direction_{k}_total"),
                                    labels: labels(&[(label, name), ("direction", dir)]),
                                    value: Some(n.as_u64().expect("a count")),
                                    counter: true,
                                });
                            }
                        }
                    }
                    Value::Object(m) => {
                        for (reason, n) in m {
                            out.push(Want {
                                name: format!("{base}_total"),
                                labels: labels(&[(label, name), ("reason", reason)]),
                                value: Some(n.as_u64().expect("a count")),
                                counter: true,
                            });
                        }
                    }
                    Value::String(s) => {
                        info.insert(key.clone(), s.clone());
                    }
                    Value::Array(items) => {
                        let (metric, item) = match section {
                            "sessions" => ("mirror_session_target_info", "target"),
                            "groups" => ("mirror_group_member_info", "target"),
                            _ => panic!("a list in {section}: {key}"),
                        };
                        for i in items {
                            out.push(Want {
                                name: metric.into(),
                                labels: labels(&[
                                    (label, name),
                                    (item, i.as_str().expect("a name")),
                                ]),
                                value: None,
                                counter: false,
                            });
                        }
                    }
                    // The schedule window, when the session has none.
                    Value::Null => {
                        assert_eq!(key, "schedule_window", "{section}.{name}");
                    }
                }
            }
            out.push(Want {
                name: format!("mirror_{one}_info"),
                labels: info,
                value: None,
                counter: false,
            });
        }
    }
    // Groups have no strings: no mirror_group_info.
    out.retain(|w| w.name != "mirror_group_info");
    out
}

/// Polls until the counters settle (two snapshots 200 ms apart equal) and
/// `done` holds.
fn wait_quiet(client: &mut Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = client.stats().expect("stats");
        std::thread::sleep(Duration::from_millis(200));
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

/// `mirror stats --json`, parsed.
fn stats_json(control: &std::path::Path) -> Value {
    let out = std::process::Command::new("timeout")
        .args(["30", BIN, "stats", "--json", "--control"])
        .arg(control)
        .output()
        .expect("mirror stats --json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// Thread and descriptor counts of `pid` as /proc says from outside.
fn proc_counts(pid: u32) -> (u64, u64) {
    let count = |dir: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/{dir}: {e}"))
            .count() as u64
    };
    (count("task"), count("fd"))
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn metrics_read_by_prometheus_equal_stats_json_at_a_quiet_moment() {
    require_root!();
    let lab = lab();
    let dir = TempDir::new("e2e-metrics").expect("temp dir");
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, CONFIG);
    let mut client = Client::connect(&daemon.control).expect("control socket");
    assert!(
        daemon
            .log_text()
            .contains("serving Prometheus metrics metrics=http://127.0.0.1:9464/metrics"),
        "{}",
        daemon.log_text()
    );

    // Tap: 300 frames into feed0. Copy: 100 frames in through csrc0 and 50
    // out of it, all cloned to ctgt0 in the kernel.
    let frames = |n, size| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (0..n)
                .map(|i| traffic::frame(traffic::Shape::Udp4, i, size))
                .collect(),
        )
    };
    let sent = lab::send_frames(&lab.gen, Lab::GEN_IF, frames(300, 200), 10_000).expect("send");
    assert_eq!(sent, 300);
    let sent = lab::send_frames(&lab.gen, "cgen0", frames(100, 300), 5_000).expect("send");
    assert_eq!(sent, 100);
    let sent = lab::send_frames(&lab.src, "csrc0", frames(50, 400), 5_000).expect("send");
    assert_eq!(sent, 50);
    let st = wait_quiet(&mut client, "every frame and copy accounted for", |st| {
        let web = &st.sources["web"];
        st.sources["feed"].received == 300
            && st.targets["ids0"].sent_packets == 300
            && web.directions["ingress"].matched == 100
            && web.directions["egress"].matched == 50
            && st.targets["clone0"].sent_packets == 150
            && st.targets.values().all(|t| t.queued == 0)
    });
    for (name, s) in &st.sources {
        assert_source_reconciles(name, s);
    }
    for (name, t) in &st.targets {
        assert_reconciles(name, t);
    }
    assert_eq!(st.sessions["web"].path, "kernel");
    assert_eq!(st.sessions["all"].path, "af_xdp");
    assert!(!st.targets["nowhere"].up, "{:?}", st.targets["nowhere"]);

    let pid = daemon.pid().expect("the daemon's pid");
    let before = proc_counts(pid);
    let text = scrape(&lab.src);
    let json = stats_json(&daemon.control);
    let after = proc_counts(pid);
    assert_eq!(
        serde_json::to_value(&st).expect("JSON"),
        json,
        "still quiet: stats --json right after the scrape is what the quiet moment was"
    );

    let samples = parse(&text);
    let wants = wanted(&json);
    assert!(wants.len() > 100, "{} values in the JSON", wants.len());
    for w in &wants {
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == w.name && s.labels == w.labels)
            .collect();
        assert_eq!(found.len(), 1, "{w:?}: one series in\n{text}");
        let s = found[0];
        let value = w.value.unwrap_or(1);
        assert_eq!(s.value, value as f64, "{w:?}: {s:?}");
        let ty = if w.counter { "counter" } else { "gauge" };
        assert_eq!(s.family_type, ty, "{w:?}: {s:?}");
        if w.counter {
            assert_eq!(format!("{}_total", s.family), s.name, "a counter's family");
        }
    }
    // Every mirror series is a value of the JSON, or a group's member count
    // or the build's version.
    for s in samples.iter().filter(|s| s.name.starts_with("mirror_")) {
        let known = wants
            .iter()
            .any(|w| w.name == s.name && w.labels == s.labels);
        match s.name.as_str() {
            "mirror_group_members" => {
                assert_eq!(s.labels, labels(&[("group", "pool")]));
                assert_eq!(s.value, 2.0);
            }
            "mirror_build_info" => {
                assert_eq!(s.labels, labels(&[("version", env!("CARGO_PKG_VERSION"))]));
                assert_eq!(s.value, 1.0);
            }
            _ => assert!(known, "{s:?} is not a value of stats --json"),
        }
    }
    // Spot checks of what a dashboard reads, in the parser's own terms.
    let value = |name: &str, l: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|s| s.name == name && s.labels == labels(l))
            .unwrap_or_else(|| panic!("{name}{l:?} in\n{text}"))
            .value
    };
    assert_eq!(
        value("mirror_session_mirrored_total", &[("session", "all")]),
        300.0
    );
    assert_eq!(
        value("mirror_session_mirrored_total", &[("session", "web")]),
        150.0
    );
    assert_eq!(
        value(
            "mirror_session_info",
            &[("session", "web"), ("source", "web"), ("path", "kernel")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "mirror_source_direction_cloned_total",
            &[("source", "web"), ("direction", "egress")]
        ),
        50.0
    );
    assert_eq!(
        value(
            "mirror_target_dropped_total",
            &[("target", "nowhere"), ("reason", "send_error")]
        ),
        1.0
    );
    assert_eq!(value("mirror_target_up", &[("target", "nowhere")]), 0.0);
    assert_eq!(value("mirror_group_members_up", &[("group", "pool")]), 1.0);

    // The process, from /proc/self at the scrape, against /proc/PID from
    // outside around it: the scrape's own connection and the blocking
    // thread that encoded it may come and go in between.
    let rss = value("process_resident_memory_bytes", &[]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let vm_rss: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(
        rss > vm_rss * 1024.0 / 2.0 && rss < vm_rss * 1024.0 * 2.0,
        "RSS {rss} vs VmRSS {vm_rss} kB"
    );
    let threads = value("process_threads", &[]) as u64;
    let fds = value("process_open_fds", &[]) as u64;
    let within = |v: u64, a: u64, b: u64| v + 2 >= a.min(b) && v <= a.max(b) + 2;
    assert!(
        within(threads, before.0, after.0),
        "{threads} threads vs {before:?} {after:?}"
    );
    assert!(
        within(fds, before.1, after.1),
        "{fds} fds vs {before:?} {after:?}"
    );
    assert!(threads >= 6, "workers, senders, writer, runtime: {threads}");
    assert!(value("process_max_fds", &[]) >= fds as f64);
    assert!(value("process_cpu_seconds_total", &[]) > 0.0);

    // Anything but GET /metrics: not found.
    for path in ["/", "/metrics/", "/stats"] {
        let answer = http_get(&lab.src, path);
        assert!(
            answer.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{path}: {answer}"
        );
    }

    // A scraper's connection left open does not hold up an orderly stop.
    let _idle = lab
        .src
        .run(|| Ok(TcpStream::connect(METRICS)?))
        .expect("connect");
    drop(client);
    let status = daemon.stop(Duration::from_secs(20)).expect("stops");
    assert!(status.success(), "{status:?}: {}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("stopped") && !log.contains("still open"),
        "shut down in order (targets drained), not left to exit: {log}"
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_taken_metrics_port_fails_the_start_with_nothing_attached() {
    require_root!();
    let lab = lab();
    let dir = TempDir::new("e2e-metrics-taken").expect("temp dir");
    // Someone else's exporter on the port, in the daemon's namespace.
    let _taken = lab
        .src
        .run(|| Ok(std::net::TcpListener::bind(METRICS)?))
        .expect("take the port");
    let control = dir.path().join("control.sock");
    let text = CONFIG
        .replace("@CONTROL@", &control.to_string_lossy())
        .replace("@DIR@", &dir.path().to_string_lossy());
    let file = dir.path().join("mirror.toml");
    std::fs::write(&file, text).expect("write config");
    let out = lab
        .src
        .command(&["timeout", "-s", "KILL", "30", BIN, "run", "-c"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("mirror run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "[daemon] metrics = \"127.0.0.1:9464\": cannot listen there (is the port taken by \
             another exporter, or the address not one of this host's?)"
        ) && stderr.contains("Address already in use"),
        "{stderr}"
    );
    assert!(!control.exists(), "no control socket left");
    for dev in ["feed0", "csrc0"] {
        let dev = dev.to_string();
        let attached = lab
            .src
            .run(move || Ok(mirror_user::kernel::attached(&dev)?))
            .expect("query");
        assert!(
            attached.xdp.is_empty()
                && attached.tcx_ingress.is_empty()
                && attached.tcx_egress.is_empty(),
            "nothing attached: {attached:?}"
        );
    }
    assert!(
        !dir.path().join("cap.pcapng").exists(),
        "no capture file opened"
    );
}
