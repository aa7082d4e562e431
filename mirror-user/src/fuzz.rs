//! Fuzzing entry points: each takes arbitrary bytes, feeds them to one input
//! family of the daemon, and panics only when a property the daemon relies
//! on is broken (a panic in the code under test is such a break too).
//!
//! The same functions back the `cargo fuzz` targets in `fuzz/` (libFuzzer,
//! where a nightly toolchain exists) and the fixed-seed property tests in
//! `tests/fuzz_inputs.rs`, which always run, so a crash either finds is
//! replayed by the other.
//!
//! Families: config files, live rule text, control requests, frames (the
//! parser's Rust reference against the compiled rule tables), and the tunnel
//! encoders (encoded, decoded back, compared). The kernel parser is fuzzed
//! through `BPF_PROG_TEST_RUN` by `tests/fuzz_kernel.rs`, against
//! [`frame_verdict`].

use std::sync::OnceLock;

use crate::config::{self, Config, ConfigError, Direction, ErspanVersion, Granularity};
use crate::control::protocol::Request;
use crate::filter::classify::{self, parse_frame};
use crate::filter::ruleset::RuleSet;
use crate::target::encap::{self, Erspan, MAX_HEADER, VXLAN_LEN};

/// Checks that every diagnostic of `e` points into `text` (1-based line and
/// column, at most one past the end of its line) and says something.
fn check_diagnostics(text: &str, e: &ConfigError) {
    let ConfigError::Invalid { diagnostics, .. } = e else {
        panic!("a text parse fails only as invalid: {e}");
    };
    assert!(!diagnostics.is_empty(), "an error without a diagnostic");
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diagnostics {
        assert!(!d.message.is_empty(), "an empty message");
        assert!(
            d.line >= 1 && d.line <= lines.len(),
            "line {} of a {}-line text: {}",
            d.line,
            lines.len(),
            d.message
        );
        let width = lines[d.line - 1].chars().count();
        assert!(
            d.column >= 1 && d.column <= width + 1,
            "column {} of a {width}-character line: {}",
            d.column,
            d.message
        );
    }
    // Printing it never panics either.
    let _ = e.to_string();
}

/// A config file: parsed and validated, or refused with diagnostics that
/// point into the text. Text that is not UTF-8 never gets this far (the
/// file is read as a string first).
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, "fuzz.toml") {
        Ok(c) => {
            // A valid config classifies: its rule sets build within limits
            // or say why.
            for d in [Direction::Ingress, Direction::Egress] {
                let refs: Vec<&config::Filter> = c.filters.iter().collect();
                let _ = RuleSet::build(&refs, d);
            }
        }
        Err(e) => check_diagnostics(text, &e),
    }
}

/// A live rule (`mirror rules add`): parsed, or refused with diagnostics;
/// a parsed rule reads back the same from how `rules list` prints it.
pub fn rule_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse_rule(text, "rule") {
        Ok(rule) => {
            // `rules list` prints the keys on one line, comma-separated (no
            // value of a rule holds a comma): one per line is rule text again.
            let printed = rule.to_toml_keys().replace(", ", "\n");
            let again = config::parse_rule(&printed, "rule")
                .unwrap_or_else(|e| panic!("`{printed}` does not read back: {e}"));
            assert_eq!(again, rule, "`{printed}` reads back as another rule");
        }
        Err(e) => check_diagnostics(text, &e),
    }
}

/// A control request line: decoded, or refused with a message; a decoded
/// request encodes and decodes to itself.
pub fn control_request(data: &[u8]) {
    match Request::decode(data) {
        Ok(req) => {
            let line = serde_json::to_vec(&req).expect("a request encodes");
            let again = Request::decode(&line).expect("an encoded request decodes");
            assert_eq!(again, req);
        }
        Err(msg) => assert!(!msg.is_empty(), "a refusal without a reason"),
    }
}

/// The rules the frame family classifies against: both families, ports,
/// protocols, VLANs, rejects and a catch-all, over two sessions.
const FRAME_RULES: &str = r#"
[[source]]
name = "s"
interface = "lo"

[[target]]
name = "t"
kind = "pcapng"
path = "/tmp/fuzz.pcapng"

[[filter]]
name = "a"
[[filter.rule]]
number = 10
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "443"
[[filter.rule]]
number = 20
action = "accept"
direction = "ingress"
source = "10.0.0.0/8"
[[filter.rule]]
number = 30
action = "accept"
direction = "ingress"
destination = "2001:db8::/32"
protocol = "udp"
source_port = "1024-65535"
[[filter.rule]]
number = 40
action = "accept"
direction = "ingress"
vlan = 100

[[filter]]
name = "b"
[[filter.rule]]
number = 10
action = "reject"
direction = "ingress"
protocol = 58
[[filter.rule]]
number = 20
action = "accept"
direction = "ingress"
destination = "0.0.0.0/0"
[[filter.rule]]
number = 30
action = "accept"
direction = "ingress"
source = "::/0"

[[session]]
name = "first"
source = "s"
filter = "a"
targets = ["t"]
priority = 1

[[session]]
name = "second"
source = "s"
filter = "b"
targets = ["t"]
priority = 2
"#;

/// The rule set of [`FRAME_RULES`] (the config the kernel fuzz loads too).
pub fn frame_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| config::parse(FRAME_RULES, "fuzz-rules.toml").expect("valid"))
}

/// The session the Rust reference gives `frame` under [`frame_config`].
pub fn frame_verdict(frame: &[u8]) -> Option<usize> {
    let refs: Vec<&config::Filter> = frame_config().filters.iter().collect();
    classify::classify(&refs, Direction::Ingress, frame)
}

/// A frame: the parser's Rust reference and the compiled tables (what the
/// kernel evaluates) agree on it under [`frame_config`].
pub fn frame(data: &[u8]) {
    static TABLES: OnceLock<RuleSet> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let refs: Vec<&config::Filter> = frame_config().filters.iter().collect();
        RuleSet::build(&refs, Direction::Ingress).expect("within limits")
    });
    let view = parse_frame(data);
    assert_eq!(
        tables.classify(&view),
        frame_verdict(data),
        "frame {data:02x?}"
    );
}

/// Reads fields from fuzz bytes (zeros past the end).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

/// The tunnel encoders: headers built from arbitrary field values decode
/// back to those values (masked to their widths), and decoding arbitrary
/// bytes never panics.
pub fn tunnel_header(data: &[u8]) {
    let _ = encap::decode_gre(data);
    let mut f = Fields(data);
    let mut h = [0u8; MAX_HEADER];
    match f.u8() % 4 {
        0 => {
            let (port, hash, vni) = (f.u16(), f.u32(), f.u32());
            let payload = usize::from(f.u16());
            assert_eq!(encap::vxlan(&mut h, port, hash, vni, payload), VXLAN_LEN);
            let (udp, rest) =
                etherparse::UdpHeader::from_slice(&h[..VXLAN_LEN]).expect("a UDP header");
            assert_eq!(udp.source_port, encap::vxlan_source_port(hash));
            assert!(udp.source_port >= 49152, "outside the dynamic range");
            assert_eq!(udp.destination_port, port);
            assert_eq!(usize::from(udp.length), (VXLAN_LEN + payload).min(0xffff));
            assert_eq!(rest[0], 0x08, "the I flag");
            assert_eq!(
                u32::from_be_bytes([0, rest[4], rest[5], rest[6]]),
                vni & 0xff_ffff
            );
            assert_eq!(rest[7], 0);
        }
        1 => {
            let key = (f.u8() & 1 == 1).then(|| f.u32());
            let n = encap::gre(&mut h, key);
            let d = encap::decode_gre(&h[..n]).expect("decodes");
            assert_eq!(
                (d.protocol, d.key, d.sequence, d.payload),
                (encap::GRE_PROTO_TEB, key, None, n)
            );
        }
        _ => {
            let version = if f.u8() & 1 == 0 {
                ErspanVersion::Two
            } else {
                ErspanVersion::Three
            };
            let granularity = if f.u8() & 1 == 0 {
                Granularity::Micros100
            } else {
                Granularity::Nanos100
            };
            let (sequence, session, tstamp) = (f.u32(), f.u16(), f.u64());
            let bits = f.u8();
            let frame = f.take::<18>();
            let mut e =
                Erspan::for_frame(version, granularity, sequence, session, &frame).at(tstamp);
            e.truncated = bits & 1 == 1;
            e.egress = bits & 2 == 2 && version == ErspanVersion::Three;
            let n = e.write(&mut h);
            let d = encap::decode_gre(&h[..n]).expect("decodes");
            assert_eq!(d.sequence, Some(sequence));
            assert_eq!(d.payload, n);
            // Type II carries neither time stamp nor granularity.
            let mut want = e;
            if version == ErspanVersion::Two {
                want.timestamp = 0;
                want.granularity = Granularity::Micros100;
            }
            assert_eq!(d.erspan, Some(want), "{version:?}");
            let got = d.erspan.expect("checked");
            assert_eq!(got.session_id, session & 0x3ff);
            assert!(got.vlan <= 0xfff && got.cos <= 7);
        }
    }
}
