//! The counters of a [`Stats`] snapshot (and the process's own) as metric
//! families, encoded by `prometheus-client` in the Prometheus text format
//! (version 0.0.4): it writes the names (`_total` on counters, `_info` on
//! info metrics), `# HELP` and `# TYPE` lines, label escaping and values.
//!
//! The mapping is one rule, so that every number of `mirror stats --json`
//! has exactly one series and a dashboard can be read against the JSON:
//! `SECTION.NAME.KEY` is `mirror_SECTION_KEY{SECTION="NAME"}` (`_total` for
//! a counter), a drop or parser map adds `reason=`, a copy-mode source's
//! `directions.DIR.KEY` is `mirror_source_direction_KEY_total{direction=}`,
//! a true/false is a 0/1 gauge, and strings and lists are labels of an info
//! metric (`mirror_session_info{session, source, path}` 1). Gauges are what
//! can go down: `queued`, `queues`, `rules`, `up`, `zero_copy`,
//! `members`, `members_up`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::process::ProcessStats;
use crate::dataplane::stats::Stats;

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes `stats` (and `process`, when read) in the Prometheus text format.
pub fn encode(stats: &Stats, process: Option<&ProcessStats>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families(stats, process))));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Label pairs of one series, in the order they are written.
type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(u64),
    Float(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Always 1; the labels are the information.
    Info,
}

/// One metric family: its name as registered (prometheus-client adds
/// `_total` to a counter's and `_info` to an info metric's), help and
/// series.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    series: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            series: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels, v: u64) {
        self.series.push((labels, Value::Int(v)));
    }
}

/// The families of one section (source, session, target, group), indexed
/// by name as they are first pushed, so each is written once with all its
/// series together (the text format wants a family's series in one block).
#[derive(Debug, Default)]
struct Section(Vec<Family>);

impl Section {
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut Family {
        match self.0.iter().position(|f| f.name == name) {
            Some(i) => &mut self.0[i],
            None => {
                self.0.push(Family::new(name, kind, help));
                let last = self.0.len() - 1;
                &mut self.0[last]
            }
        }
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        self.family(name, Kind::Counter, help).push(labels, v);
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        self.family(name, Kind::Gauge, help).push(labels, v);
    }

    fn info(&mut self, name: &'static str, help: &'static str, labels: Labels) {
        self.family(name, Kind::Info, help).push(labels, 1);
    }
}

fn l1(k: &'static str, v: &str) -> Labels {
    vec![(k, v.to_string())]
}

fn l2(k: &'static str, v: &str, k2: &'static str, v2: &str) -> Labels {
    vec![(k, v.to_string()), (k2, v2.to_string())]
}

/// Every family of the snapshot, sources first, then sessions, targets,
/// groups, the build and the process.
fn families(stats: &Stats, process: Option<&ProcessStats>) -> Vec<Family> {
    let mut out = Section::default();
    sources(&mut out, stats);
    sessions(&mut out, stats);
    targets(&mut out, stats);
    groups(&mut out, stats);
    out.info(
        "mirror_build",
        "The mirror daemon's version.",
        l1("version", env!("CARGO_PKG_VERSION")),
    );
    let mut families = out.0;
    if let Some(p) = process {
        families.extend(process_families(p));
    }
    families
}

fn sources(out: &mut Section, stats: &Stats) {
    for (name, s) in &stats.sources {
        let l = || l1("source", name);
        out.info(
            "mirror_source",
            "A source: its interface, mode (tap or copy) and how ingress is hooked \
             (xdp_mode: native or generic XDP, tcx, none).",
            vec![
                ("source", name.clone()),
                ("interface", s.interface.clone()),
                ("mode", s.mode.clone()),
                ("xdp_mode", s.xdp_mode.clone()),
            ],
        );
        out.gauge(
            "mirror_source_zero_copy",
            "1 if the source's AF_XDP sockets run in zero-copy mode, else 0.",
            l(),
            u64::from(s.zero_copy),
        );
        out.gauge(
            "mirror_source_queues",
            "RX queues (AF_XDP sockets) the source reads.",
            l(),
            u64::from(s.queues),
        );
        for (key, help, v) in [
            (
                "mirror_source_received",
                "Frames the source's kernel program saw.",
                s.received,
            ),
            (
                "mirror_source_matched",
                "Frames some session's filter accepted.",
                s.matched,
            ),
            (
                "mirror_source_filtered",
                "Frames no session's filter accepted (not mirrored).",
                s.filtered,
            ),
            (
                "mirror_source_sampled_out",
                "Matched frames a session's 1-in-sample sampling skipped.",
                s.sampled_out,
            ),
            (
                "mirror_source_scheduled_out",
                "Matched frames left out while their session was disabled (its schedule, enabled = false).",
                s.scheduled_out,
            ),
            (
                "mirror_source_cutoff",
                "Matched frames past their flow's flow_cutoff_bytes/packets (not mirrored).",
                s.cutoff,
            ),
            (
                "mirror_source_cutoff_cut",
                "Mirrored frames cut where they crossed their flow's flow_cutoff_bytes.",
                s.cutoff_cut,
            ),
            (
                "mirror_source_cutoff_whole",
                "Mirrored frames that crossed their flow's flow_cutoff_bytes where the \
                 copy cannot be cut (copy mode's kernel path): mirrored whole.",
                s.cutoff_whole,
            ),
            (
                "mirror_source_mirrored",
                "Frames handed to their session's targets.",
                s.mirrored,
            ),
        ] {
            out.counter(key, help, l(), v);
        }
        out.gauge(
            "mirror_source_queued",
            "Frames the kernel handed over that no thread has read yet (0 when idle).",
            l(),
            s.queued,
        );
        for (reason, &v) in &s.dropped {
            out.counter(
                "mirror_source_dropped",
                "Matched frames lost before reaching a target, by reason.",
                l2("source", name, "reason", reason),
                v,
            );
        }
        for (reason, &v) in &s.parser {
            out.counter(
                "mirror_source_parser",
                "Frames the parser could not read to the end (still classified on what \
                 it read), by reason.",
                l2("source", name, "reason", reason),
                v,
            );
        }
        out.gauge(
            "mirror_source_rules",
            "Filter rules in force, both directions, all sessions together.",
            l(),
            s.rules,
        );
        out.counter(
            "mirror_source_rule_sets_installed",
            "Rule sets installed since start (1, plus live changes and reloads).",
            l(),
            s.rule_sets_installed,
        );
        out.counter(
            "mirror_source_no_rule_set",
            "Frames classified while a rule-set map was missing (counted filtered; \
             should never happen).",
            l(),
            s.no_rule_set,
        );
        out.counter(
            "mirror_source_classify_scans",
            "Frames classified by a bitmap scan (their class tuple was not in the \
             verdict cache).",
            l(),
            s.classify_scans,
        );
        out.counter(
            "mirror_source_flow_untracked",
            "Frames of a session with a per-flow cutoff for which no flow entry could be \
             made (mirrored as if under the cutoff; should never happen).",
            l(),
            s.flow_untracked,
        );
        for (dir, d) in &s.directions {
            let l = || l2("source", name, "direction", dir);
            for (key, help, v) in [
                (
                    "mirror_source_direction_received",
                    "Copy mode: frames the kernel saw in this direction.",
                    d.received,
                ),
                (
                    "mirror_source_direction_matched",
                    "Copy mode: frames of this direction some session's filter accepted.",
                    d.matched,
                ),
                (
                    "mirror_source_direction_filtered",
                    "Copy mode: frames of this direction no filter accepted.",
                    d.filtered,
                ),
                (
                    "mirror_source_direction_sampled_out",
                    "Copy mode: matched frames of this direction skipped by sampling.",
                    d.sampled_out,
                ),
                (
                    "mirror_source_direction_scheduled_out",
                    "Copy mode: matched frames of this direction left out while their \
                     session was disabled.",
                    d.scheduled_out,
                ),
                (
                    "mirror_source_direction_cutoff",
                    "Copy mode: matched frames of this direction past their flow's cutoff.",
                    d.cutoff,
                ),
                (
                    "mirror_source_direction_cutoff_cut",
                    "Copy mode: copies of this direction cut at their flow's byte cutoff.",
                    d.cutoff_cut,
                ),
                (
                    "mirror_source_direction_cutoff_whole",
                    "Copy mode: frames of this direction cloned whole across their \
                     flow's byte cutoff (a clone cannot be cut).",
                    d.cutoff_whole,
                ),
                (
                    "mirror_source_direction_copied",
                    "Copy mode: records of this direction written to the ring buffer.",
                    d.copied,
                ),
                (
                    "mirror_source_direction_ring_full",
                    "Copy mode: matched frames of this direction not copied because the \
                     ring buffer was full (the frame still passed).",
                    d.ring_full,
                ),
                (
                    "mirror_source_direction_copy_cut",
                    "Copy mode: copies of this direction cut at the per-record maximum.",
                    d.copy_cut,
                ),
                (
                    "mirror_source_direction_copy_error",
                    "Copy mode: matched frames of this direction whose copy could not be \
                     read into its record (never expected; the frame still passed).",
                    d.copy_error,
                ),
                (
                    "mirror_source_direction_cloned",
                    "Copy mode: frames of this direction sent down the kernel path \
                     (cloned at tcx, no ring record).",
                    d.cloned,
                ),
            ] {
                out.counter(key, help, l(), v);
            }
        }
    }
}

fn sessions(out: &mut Section, stats: &Stats) {
    for (name, s) in &stats.sessions {
        let l = || l1("session", name);
        out.info(
            "mirror_session",
            "A session: its source and the path that serves it (kernel; af_xdp or \
             ring_buffer through userspace).",
            vec![
                ("session", name.clone()),
                ("source", s.source.clone()),
                ("path", s.path.clone()),
            ],
        );
        for t in &s.targets {
            out.info(
                "mirror_session_target",
                "A target or target group the session sends every copy to.",
                l2("session", name, "target", t),
            );
        }
        if let Some(window) = &s.schedule_window {
            let mut labels = l2("session", name, "window", window);
            labels.push((
                "next_edge",
                s.schedule_next_edge.clone().unwrap_or_default(),
            ));
            out.info(
                "mirror_session_schedule",
                "A scheduled session's active window (\"none\" outside every window) and \
                 when its next edge comes (RFC 3339).",
                labels,
            );
        }
        for (key, help, v) in [
            (
                "mirror_session_matched",
                "Frames the session's filter accepted.",
                s.matched,
            ),
            (
                "mirror_session_mirrored",
                "Frames the session handed to its targets.",
                s.mirrored,
            ),
            (
                "mirror_session_sampled_out",
                "Frames the session's 1-in-sample sampling skipped.",
                s.sampled_out,
            ),
            (
                "mirror_session_rate_limited",
                "Frames over the session's rate_limit_pps (each target counts them \
                 dropped, reason rate_limited).",
                s.rate_limited,
            ),
            (
                "mirror_session_scheduled_out",
                "Frames left out while the session was disabled (its schedule, enabled = false).",
                s.scheduled_out,
            ),
            (
                "mirror_session_cutoff",
                "Frames past their flow's flow_cutoff_bytes/packets (not mirrored).",
                s.cutoff,
            ),
            (
                "mirror_session_cutoff_cut",
                "Mirrored frames cut where they crossed their flow's flow_cutoff_bytes.",
                s.cutoff_cut,
            ),
            (
                "mirror_session_cutoff_whole",
                "Mirrored frames that crossed their flow's flow_cutoff_bytes on copy \
                 mode's kernel path, which cannot cut a clone: mirrored whole.",
                s.cutoff_whole,
            ),
        ] {
            out.counter(key, help, l(), v);
        }
    }
}

fn targets(out: &mut Section, stats: &Stats) {
    for (name, t) in &stats.targets {
        let l = || l1("target", name);
        out.info(
            "mirror_target",
            "A target and its kind (interface, vxlan, gre, erspan, pcapng).",
            l2("target", name, "kind", &t.kind),
        );
        out.gauge(
            "mirror_target_up",
            "1 if the target can send now (its device up, its route there), else 0.",
            l(),
            u64::from(t.up),
        );
        for (key, help, v) in [
            (
                "mirror_target_enqueued",
                "Copies offered to the target: sent + dropped + queued.",
                t.enqueued,
            ),
            (
                "mirror_target_sent_packets",
                "Copies the target sent (or wrote).",
                t.sent_packets,
            ),
            (
                "mirror_target_sent_bytes",
                "Bytes of the copies the target sent (or wrote).",
                t.sent_bytes,
            ),
            (
                "mirror_target_truncated",
                "Copies cut to fit the target's MTU or buffers (sent, not dropped).",
                t.truncated,
            ),
            (
                "mirror_target_shared_umem",
                "Copies taken straight from the source's RX frame, with no copy made (then sent, written or dropped).",
                t.shared_umem,
            ),
            (
                "mirror_target_kernel_path",
                "Copies the in-kernel path sent (included in sent_packets).",
                t.kernel_path,
            ),
            (
                "mirror_target_deleted_files",
                "pcapng: capture files deleted (oldest first) to hold keep and max_total_size.",
                t.deleted_files,
            ),
            (
                "mirror_target_deleted_bytes",
                "pcapng: bytes of the capture files deleted to hold keep and max_total_size.",
                t.deleted_bytes,
            ),
        ] {
            out.counter(key, help, l(), v);
        }
        for (reason, &v) in &t.dropped {
            out.counter(
                "mirror_target_dropped",
                "Copies the target did not send, by reason.",
                l2("target", name, "reason", reason),
                v,
            );
        }
        out.gauge(
            "mirror_target_queued",
            "Copies waiting in the target's queue or TX ring (0 when idle).",
            l(),
            t.queued,
        );
    }
}

fn groups(out: &mut Section, stats: &Stats) {
    for (name, g) in &stats.groups {
        let l = || l1("group", name);
        for m in &g.members {
            out.info(
                "mirror_group_member",
                "A target that is a member of the group.",
                l2("group", name, "target", m),
            );
        }
        out.gauge(
            "mirror_group_members",
            "Members of the group.",
            l(),
            g.members.len() as u64,
        );
        out.gauge(
            "mirror_group_members_up",
            "Members of the group that are up.",
            l(),
            u64::from(g.members_up),
        );
        out.counter(
            "mirror_group_rehashed",
            "Copies moved to another member because their flow's member was down.",
            l(),
            g.rehashed,
        );
        out.counter(
            "mirror_group_all_down",
            "Copies not sent because every member was down (counted down at the \
             flow's first member).",
            l(),
            g.all_down,
        );
    }
}

/// The process's own families, under the names every Prometheus client
/// library uses (`process_…`), so stock dashboards and alerts fit.
fn process_families(p: &ProcessStats) -> Vec<Family> {
    let one = |name, kind, help, v| Family {
        name,
        help,
        kind,
        series: vec![(Vec::new(), v)],
    };
    vec![
        one(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            Value::Int(p.resident_memory_bytes),
        ),
        one(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            Value::Int(p.virtual_memory_bytes),
        ),
        one(
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors.",
            Value::Int(p.open_fds),
        ),
        one(
            "process_max_fds",
            Kind::Gauge,
            "The limit on open file descriptors (RLIMIT_NOFILE, soft).",
            Value::Int(p.max_fds),
        ),
        one(
            "process_threads",
            Kind::Gauge,
            "Threads of the process.",
            Value::Int(p.threads),
        ),
        one(
            "process_cpu_seconds",
            Kind::Counter,
            "User and system CPU time spent, in seconds.",
            Value::Float(p.cpu_seconds),
        ),
    ]
}

/// The families as a `prometheus-client` collector: encoded on each scrape,
/// from the snapshot it holds.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for f in self.0.iter().filter(|f| !f.series.is_empty()) {
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Info => MetricType::Info,
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, value) in &f.series {
                if f.kind == Kind::Info {
                    metric.encode_info(labels)?;
                    continue;
                }
                let series = metric.encode_family(labels)?;
                match (f.kind, *value) {
                    (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(series)?,
                    (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(series)?,
                    (_, Value::Int(v)) => ConstGauge::new(v).encode(series)?,
                    (_, Value::Float(v)) => ConstGauge::new(v).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dataplane::stats::{
        DirectionStats, GroupStats, SessionStats, SourceStats, TargetStats,
    };

    fn reasons(r: &[(&str, u64)]) -> BTreeMap<String, u64> {
        r.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    fn target(kind: &str, up: bool, n: u64) -> TargetStats {
        TargetStats {
            kind: kind.into(),
            up,
            enqueued: 10 * n + 1,
            sent_packets: 10 * n,
            sent_bytes: 1000 * n,
            truncated: n + 2,
            shared_umem: n + 3,
            kernel_path: n + 4,
            deleted_files: n + 6,
            deleted_bytes: 1000 * n + 7,
            dropped: reasons(&[("queue_full", n + 5), ("down", 0), ("send_error", 1)]),
            queued: 0,
        }
    }

    /// Every section and shape: a tap and a copy source (directions), a
    /// kernel-path and a scheduled session, targets up and down, a group.
    fn snapshot() -> Stats {
        let mut s = Stats::default();
        s.sources.insert(
            "feed".into(),
            SourceStats {
                interface: "eth1".into(),
                mode: "tap".into(),
                xdp_mode: "native".into(),
                zero_copy: true,
                queues: 2,
                received: 1_000_000_000_007,
                matched: 900,
                filtered: 107,
                sampled_out: 3,
                scheduled_out: 4,
                cutoff: 8,
                cutoff_cut: 9,
                cutoff_whole: 10,
                mirrored: 890,
                queued: 1,
                dropped: reasons(&[("ring_full", 2), ("no_socket", 0)]),
                parser: reasons(&[("truncated", 5), ("non_ip", 6)]),
                rules: 12,
                rule_sets_installed: 3,
                no_rule_set: 0,
                classify_scans: 77,
                flow_untracked: 11,
                directions: BTreeMap::new(),
            },
        );
        let dir = |n| DirectionStats {
            received: n,
            matched: n + 1,
            filtered: n + 2,
            sampled_out: n + 3,
            scheduled_out: n + 8,
            cutoff: n + 9,
            cutoff_cut: n + 10,
            cutoff_whole: n + 11,
            copied: n + 4,
            ring_full: n + 5,
            copy_cut: n + 6,
            copy_error: n + 12,
            cloned: n + 7,
        };
        s.sources.insert(
            "web".into(),
            SourceStats {
                interface: "eth0".into(),
                mode: "copy".into(),
                xdp_mode: "tcx".into(),
                received: 50,
                directions: [("egress".to_string(), dir(20)), ("ingress".into(), dir(30))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        );
        s.sessions.insert(
            "ids".into(),
            SessionStats {
                source: "feed".into(),
                path: "af_xdp".into(),
                targets: vec!["ids0".into(), "pool".into()],
                matched: 900,
                mirrored: 890,
                sampled_out: 3,
                rate_limited: 2,
                scheduled_out: 4,
                cutoff: 5,
                cutoff_cut: 6,
                cutoff_whole: 7,
                schedule_window: Some("window 1 (mon-fri 08:00-18:00 UTC)".into()),
                schedule_next_edge: Some("2026-12-07T18:00:00Z".into()),
            },
        );
        s.sessions.insert(
            "fast".into(),
            SessionStats {
                source: "web".into(),
                path: "kernel".into(),
                targets: vec!["ids0".into()],
                ..Default::default()
            },
        );
        s.targets
            .insert("ids0".into(), target("interface", true, 1));
        s.targets
            .insert("gre \"a\"".into(), target("gre", false, 2));
        s.targets.insert("cap".into(), target("pcapng", true, 3));
        s.groups.insert(
            "pool".into(),
            GroupStats {
                members: vec!["gre \"a\"".into(), "cap".into()],
                members_up: 1,
                rehashed: 17,
                all_down: 2,
            },
        );
        s
    }

    /// One sample line: `name{k="v",...} value`, labels unescaped.
    type Series = (String, BTreeMap<String, String>, String);

    /// The samples of `text` (a reader of this test's own, for what the
    /// encoder writes: the end-to-end test reads it with Prometheus's).
    fn samples(text: &str) -> Vec<Series> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let mut labels = BTreeMap::new();
                    let mut chars = rest.strip_suffix('}').expect("}").chars().peekable();
                    while chars.peek().is_some() {
                        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                        assert_eq!(chars.next(), Some('"'));
                        let mut value = String::new();
                        while let Some(c) = chars.next() {
                            match c {
                                '"' => break,
                                '\\' => match chars.next() {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("cut escape"),
                                },
                                c => value.push(c),
                            }
                        }
                        if chars.peek() == Some(&',') {
                            chars.next();
                        }
                        labels.insert(key, value);
                    }
                    (name.to_string(), labels)
                }
            };
            out.push((name, labels, value.to_string()));
        }
        out
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The series the README's rule gives every number and flag of the
    /// snapshot's JSON, walked generically: a field added to the stats
    /// without a metric fails here.
    fn expected(stats: &Stats) -> Vec<Series> {
        let json = serde_json::to_value(stats).expect("JSON");
        let mut out = Vec::new();
        for (section, label) in [
            ("sources", "source"),
            ("sessions", "session"),
            ("targets", "target"),
            ("groups", "group"),
        ] {
            let singular = &section[..section.len() - 1];
            for (name, obj) in json[section].as_object().expect("section") {
                for (key, v) in obj.as_object().expect("object") {
                    let base = format!("mirror_{singular}_{key}");
                    let l = labels(&[(label, name)]);
                    let gauge = ["queued", "queues", "rules", "up", "zero_copy", "members_up"]
                        .contains(&key.as_str());
                    match v {
                        serde_json::Value::Number(n) => {
                            let name = if gauge { base } else { format!("{base}_total") };
                            out.push((name, l, n.to_string()));
                        }
                        serde_json::Value::Bool(b) => {
                            out.push((base, l, u8::from(*b).to_string()));
                        }
                        serde_json::Value::Object(m) if key == "directions" => {
                            for (dir, counts) in m {
                                for (k, n) in counts.as_object().expect("direction") {
                                    out.push((
                                        format!("mirror_source_direction_{k}_total"),
                                        labels(&[(label, name), ("direction", dir)]),
                                        n.to_string(),
                                    ));
                                }
                            }
                        }
                        serde_json::Value::Object(m) => {
                            for (reason, n) in m {
                                out.push((
                                    format!("{base}_total"),
                                    labels(&[(label, name), ("reason", reason)]),
                                    n.to_string(),
                                ));
                            }
                        }
                        // Strings and lists: the info metrics (below).
                        _ => {}
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_number_of_the_stats_json_is_one_series_with_its_value() {
        let stats = snapshot();
        let text = encode(&stats, None).expect("encodes");
        let got = samples(&text);
        let want = expected(&stats);
        for w in &want {
            let found: Vec<&Series> = got.iter().filter(|g| g.0 == w.0 && g.1 == w.1).collect();
            assert_eq!(found.len(), 1, "{w:?} once in:\n{text}");
            assert_eq!(found[0].2, w.2, "{w:?}");
        }
        // And nothing else but the info metrics and a group's member count.
        for g in &got {
            assert!(
                want.iter().any(|w| w.0 == g.0 && w.1 == g.1)
                    || g.0.ends_with("_info")
                    || g.0 == "mirror_group_members",
                "{g:?} is not in the JSON"
            );
        }
    }

    #[test]
    fn strings_and_lists_are_info_metrics_of_value_one() {
        let stats = snapshot();
        let got = samples(&encode(&stats, None).expect("encodes"));
        let info = |name: &str| -> Vec<BTreeMap<String, String>> {
            got.iter()
                .filter(|g| g.0 == name)
                .map(|g| {
                    assert_eq!(g.2, "1", "{g:?}");
                    g.1.clone()
                })
                .collect()
        };
        assert_eq!(
            info("mirror_session_info"),
            [
                labels(&[("session", "fast"), ("source", "web"), ("path", "kernel")]),
                labels(&[("session", "ids"), ("source", "feed"), ("path", "af_xdp")]),
            ]
        );
        assert_eq!(
            info("mirror_session_schedule_info"),
            [labels(&[
                ("session", "ids"),
                ("window", "window 1 (mon-fri 08:00-18:00 UTC)"),
                ("next_edge", "2026-12-07T18:00:00Z")
            ])],
            "only the session with a window has one"
        );
        assert_eq!(
            info("mirror_session_target_info"),
            [
                labels(&[("session", "fast"), ("target", "ids0")]),
                labels(&[("session", "ids"), ("target", "ids0")]),
                labels(&[("session", "ids"), ("target", "pool")]),
            ]
        );
        assert_eq!(
            info("mirror_source_info"),
            [
                labels(&[
                    ("source", "feed"),
                    ("interface", "eth1"),
                    ("mode", "tap"),
                    ("xdp_mode", "native")
                ]),
                labels(&[
                    ("source", "web"),
                    ("interface", "eth0"),
                    ("mode", "copy"),
                    ("xdp_mode", "tcx")
                ]),
            ]
        );
        assert_eq!(
            info("mirror_target_info"),
            [
                labels(&[("target", "cap"), ("kind", "pcapng")]),
                labels(&[("target", "gre \"a\""), ("kind", "gre")]),
                labels(&[("target", "ids0"), ("kind", "interface")]),
            ]
        );
        assert_eq!(
            info("mirror_group_member_info"),
            [
                labels(&[("group", "pool"), ("target", "gre \"a\"")]),
                labels(&[("group", "pool"), ("target", "cap")]),
            ]
        );
        assert_eq!(
            info("mirror_build_info"),
            [labels(&[("version", env!("CARGO_PKG_VERSION"))])]
        );
        let members: Vec<&Series> = got
            .iter()
            .filter(|g| g.0 == "mirror_group_members")
            .collect();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].2, "2");
    }

    #[test]
    fn each_family_is_one_block_with_its_help_and_type() {
        let text = encode(&snapshot(), Some(&ProcessStats::default())).expect("encodes");
        let mut seen = std::collections::BTreeSet::new();
        let mut current: Option<(String, String)> = None;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name").to_string();
                assert!(seen.insert(name.clone()), "{name} written twice");
                let ty = lines[i + 1]
                    .strip_prefix(&format!("# TYPE {name} "))
                    .unwrap_or_else(|| panic!("TYPE after HELP of {name}"));
                current = Some((name, ty.to_string()));
            } else if !line.starts_with('#') {
                let (name, ty) = current.as_ref().expect("a sample after its HELP");
                let sample = line.split(['{', ' ']).next().expect("name");
                assert_eq!(sample, name, "{line} outside its family's block");
                let want = if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                assert_eq!(
                    ty, want,
                    "{name}: counters end in _total, all else is a gauge"
                );
            }
        }
        for name in [
            "mirror_source_received_total",
            "mirror_source_queued",
            "mirror_target_dropped_total",
            "mirror_target_up",
            "mirror_group_members_up",
            "mirror_session_info",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_cpu_seconds_total",
        ] {
            assert!(seen.contains(name), "{name} in:\n{text}");
        }
    }

    #[test]
    fn the_text_is_what_prometheus_reads() {
        // One source, one session, one target, no group: the whole text.
        let mut stats = Stats::default();
        stats.sources.insert(
            "s".into(),
            SourceStats {
                interface: "x".into(),
                mode: "tap".into(),
                xdp_mode: "generic".into(),
                queues: 1,
                received: 5,
                matched: 4,
                filtered: 1,
                mirrored: 4,
                dropped: reasons(&[("ring_full", 0)]),
                rules: 1,
                rule_sets_installed: 1,
                ..Default::default()
            },
        );
        let text = encode(&stats, None).expect("encodes");
        let head: Vec<&str> = text.lines().take(9).collect();
        assert_eq!(
            head,
            [
                "# HELP mirror_source_info A source: its interface, mode (tap or copy) and how \
                 ingress is hooked (xdp_mode: native or generic XDP, tcx, none).",
                "# TYPE mirror_source_info gauge",
                "mirror_source_info{source=\"s\",interface=\"x\",mode=\"tap\",xdp_mode=\"generic\"} 1",
                "# HELP mirror_source_zero_copy 1 if the source's AF_XDP sockets run in zero-copy \
                 mode, else 0.",
                "# TYPE mirror_source_zero_copy gauge",
                "mirror_source_zero_copy{source=\"s\"} 0",
                "# HELP mirror_source_queues RX queues (AF_XDP sockets) the source reads.",
                "# TYPE mirror_source_queues gauge",
                "mirror_source_queues{source=\"s\"} 1",
            ]
        );
        assert!(text.contains(
            "# HELP mirror_source_received_total Frames the source's kernel program saw.\n\
             # TYPE mirror_source_received_total counter\n\
             mirror_source_received_total{source=\"s\"} 5\n"
        ));
        assert!(text.contains("mirror_source_dropped_total{source=\"s\",reason=\"ring_full\"} 0\n"));
        assert!(
            text.ends_with("mirror_build_info{version=\"0.1.0\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("mirror_source_direction_"),
            "no direction families for a tap source"
        );
        assert!(
            !text.contains("process_"),
            "no process families when not read"
        );
    }

    #[test]
    fn process_figures_use_the_standard_names() {
        let p = ProcessStats {
            resident_memory_bytes: 123 << 20,
            virtual_memory_bytes: 1 << 30,
            open_fds: 57,
            max_fds: 1024,
            threads: 9,
            cpu_seconds: 2.25,
        };
        let got = samples(&encode(&Stats::default(), Some(&p)).expect("encodes"));
        let values: BTreeMap<&str, &str> = got
            .iter()
            .filter(|g| g.0.starts_with("process_"))
            .map(|g| (g.0.as_str(), g.2.as_str()))
            .collect();
        assert_eq!(
            values,
            [
                ("process_cpu_seconds_total", "2.25"),
                ("process_max_fds", "1024"),
                ("process_open_fds", "57"),
                ("process_resident_memory_bytes", "128974848"),
                ("process_threads", "9"),
                ("process_virtual_memory_bytes", "1073741824"),
            ]
            .into_iter()
            .collect()
        );
    }

    /// The metric names (`mirror_…`, `process_…`) in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<&str> {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("mirror_") || t.starts_with("process_"))
            .collect()
    }

    /// The labels of each `by (…)` of a PromQL expression.
    fn by_labels(expr: &str) -> Vec<&str> {
        expr.match_indices("by (")
            .flat_map(|(i, m)| {
                let rest = &expr[i + m.len()..];
                rest[..rest.find(')').expect("a closed by (…)")]
                    .split(',')
                    .map(str::trim)
            })
            .collect()
    }

    /// contrib/grafana/mirror.json is built on exactly the names (and
    /// labels) the endpoint writes: every metric of every panel's query is
    /// one, and every label it sums by is one of that metric's (or the
    /// scrape's own `instance`).
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_and_labels_the_endpoint_writes() {
        let text = encode(&snapshot(), Some(&ProcessStats::default())).expect("encodes");
        let got = samples(&text);
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../contrib/grafana/mirror.json"
        )))
        .expect("the dashboard is JSON");
        let mut exprs = Vec::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                exprs.push(t["expr"].as_str().expect("an expr").to_string());
            }
        }
        for v in dashboard["templating"]["list"]
            .as_array()
            .expect("variables")
        {
            if let Some(q) = v["definition"].as_str() {
                exprs.push(q.to_string());
            }
        }
        assert!(exprs.len() >= 6, "{exprs:?}");
        let mut used = std::collections::BTreeSet::new();
        for expr in &exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}: no metric");
            for name in &names {
                used.insert(*name);
                assert!(
                    got.iter().any(|g| g.0 == *name),
                    "{expr}: {name} is not a metric of the endpoint"
                );
            }
            for label in by_labels(expr) {
                assert!(
                    label == "instance"
                        || got
                            .iter()
                            .any(|g| names.contains(&g.0.as_str()) && g.1.contains_key(label)),
                    "{expr}: no label {label} on {names:?}"
                );
            }
        }
        for name in [
            "mirror_session_mirrored_total",
            "mirror_target_dropped_total",
            "mirror_session_info",
            "process_resident_memory_bytes",
        ] {
            assert!(used.contains(name), "the dashboard shows {name}");
        }
    }
}
