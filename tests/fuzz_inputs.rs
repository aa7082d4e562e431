//! Every input family the daemon reads, fuzzed with fixed seeds and real case
//! counts, as any user (no kernel): config files, live rule text, control
//! requests, frames (parser reference against the compiled tables) and the
//! tunnel encoders. Inputs are random bytes, random token soups and
//! mutations (byte flips, cuts, duplicated and deleted lines, inserted
//! tokens) of valid inputs: the shipped example configs, valid rules and
//! requests, well-formed frames. The properties live in `mirror_user::fuzz`,
//! shared with the `cargo fuzz` targets in `fuzz/`.
//!
//! Each family counts its cases and how many were accepted, so that a
//! generator that stops reaching the valid side is noticed (the counts are
//! asserted to be on both sides).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::fuzzgen::{edit, frame, mutate, runner, TOKENS};
use mirror_user::fuzz;
use proptest::prelude::*;

const EXAMPLES: [&str; 3] = [
    include_str!("../contrib/examples/ids-feed.toml"),
    include_str!("../contrib/examples/cloud-collector.toml"),
    include_str!("../contrib/examples/compliance-capture.toml"),
];

/// Cases run and accepted by a family.
#[derive(Default)]
struct Tally {
    cases: AtomicU64,
    accepted: AtomicU64,
}

impl Tally {
    fn count(&self, accepted: bool) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prints the tally and checks that both sides were reached.
    fn report(&self, family: &str) {
        let (n, ok) = (
            self.cases.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
        );
        eprintln!(
            "fuzz {family}: {n} inputs, {ok} accepted, {} refused",
            n - ok
        );
        assert!(
            ok > 0 && ok < n,
            "{family}: the inputs reached only one side ({ok} of {n} accepted)"
        );
    }
}

#[test]
fn config_files_parse_or_are_refused_with_located_errors() {
    let tally = Tally::default();
    let mutated = (0..EXAMPLES.len(), prop::collection::vec(edit(), 0..5));
    runner(0x00c0_ffee, 1500)
        .run(&mutated, |(i, edits)| {
            let text = mutate(EXAMPLES[i].as_bytes(), &edits);
            fuzz::config_text(&text);
            let ok = std::str::from_utf8(&text)
                .is_ok_and(|t| mirror_user::config::parse(t, "f").is_ok());
            tally.count(ok);
            Ok(())
        })
        .expect("config property");
    let soup = prop::collection::vec(prop::sample::select(TOKENS), 0..60);
    runner(0x5005, 1000)
        .run(&soup, |tokens| {
            fuzz::config_text(tokens.join(" ").as_bytes());
            fuzz::config_text(tokens.concat().as_bytes());
            tally.count(false);
            Ok(())
        })
        .expect("token soup");
    runner(0xb17e5, 500)
        .run(&prop::collection::vec(any::<u8>(), 0..400), |bytes| {
            fuzz::config_text(&bytes);
            tally.count(false);
            Ok(())
        })
        .expect("random bytes");
    tally.report("config");
}

/// Valid rule text, one key per line, from the keys `rules add` takes.
fn rule() -> impl Strategy<Value = String> {
    let cidr = prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, l)| format!("\"{}/{l}\"", std::net::Ipv4Addr::from(a))),
        (any::<[u8; 16]>(), 0u8..=128)
            .prop_map(|(a, l)| format!("\"{}/{l}\"", std::net::Ipv6Addr::from(a))),
    ];
    let port = prop_oneof![
        any::<u16>().prop_map(|p| format!("\"{p}\"")),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("\"{}-{}\"", a.min(b), a.max(b))),
    ];
    (
        1u16..=32766,
        prop::sample::select(&["accept", "reject"][..]),
        prop::option::of(prop::sample::select(
            &["\"tcp\"", "\"udp\"", "6", "17", "132", "1", "58"][..],
        )),
        prop::option::of(cidr.clone()),
        prop::option::of(cidr),
        prop::option::of(port.clone()),
        prop::option::of(port),
        prop::option::of(0u16..4096),
        prop::sample::select(&["ingress", "egress"][..]),
    )
        .prop_map(|(n, action, proto, src, dst, sport, dport, vlan, dir)| {
            let mut t = format!("number = {n}\naction = \"{action}\"\n");
            let (sport, dport) =
                if proto.is_some_and(|p| matches!(p, "\"tcp\"" | "\"udp\"" | "6" | "17" | "132")) {
                    (sport, dport)
                } else {
                    (None, None)
                };
            for (k, v) in [
                ("protocol", proto.map(str::to_string)),
                ("source", src),
                ("destination", dst),
                ("source_port", sport),
                ("destination_port", dport),
                ("vlan", vlan.map(|v| v.to_string())),
                ("direction", Some(format!("\"{dir}\""))),
            ] {
                if let Some(v) = v {
                    t.push_str(&format!("{k} = {v}\n"));
                }
            }
            t
        })
}

#[test]
fn live_rules_parse_and_read_back_or_are_refused_with_located_errors() {
    let tally = Tally::default();
    runner(0x4e1e, 3000)
        .run(
            &(rule(), prop::collection::vec(edit(), 0..3)),
            |(text, edits)| {
                let text = mutate(text.as_bytes(), &edits);
                fuzz::rule_text(&text);
                let ok = std::str::from_utf8(&text)
                    .is_ok_and(|t| mirror_user::config::parse_rule(t, "rule").is_ok());
                tally.count(ok);
                Ok(())
            },
        )
        .expect("rule property");
    runner(0x7e47, 1000)
        .run(&prop::collection::vec(any::<u8>(), 0..120), |bytes| {
            fuzz::rule_text(&bytes);
            tally.count(false);
            Ok(())
        })
        .expect("random bytes");
    tally.report("rule");
}

/// Valid control requests, and JSON of the right shape with wrong values.
fn request() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"cmd":"stats"}"#.to_string()),
        Just(r#"{"cmd":"rules_list"}"#.to_string()),
        Just(r#"{"cmd":"reload"}"#.to_string()),
        (".{0,12}", rule()).prop_map(|(f, r)| {
            serde_json::json!({"cmd":"rules_add","filter":f,"rule":r}).to_string()
        }),
        (
            ".{0,12}",
            any::<i64>(),
            prop::sample::select(&["ingress", "egress", "both", ""][..])
        )
            .prop_map(|(f, n, d)| {
                serde_json::json!({"cmd":"rules_delete","filter":f,"number":n,"direction":d})
                    .to_string()
            }),
        ("[a-z_]{0,12}", any::<bool>()).prop_map(|(c, extra)| if extra {
            serde_json::json!({"cmd": c, "extra": 1}).to_string()
        } else {
            serde_json::json!({"cmd": c}).to_string()
        }),
    ]
}

#[test]
fn control_requests_decode_or_get_a_reason() {
    let tally = Tally::default();
    runner(0xc0de, 4000)
        .run(
            &(request(), prop::collection::vec(edit(), 0..3)),
            |(line, edits)| {
                let line = mutate(line.as_bytes(), &edits);
                fuzz::control_request(&line);
                tally.count(mirror_user::control::Request::decode(&line).is_ok());
                Ok(())
            },
        )
        .expect("request property");
    runner(0xdec0de, 1000)
        .run(&prop::collection::vec(any::<u8>(), 0..200), |bytes| {
            fuzz::control_request(&bytes);
            tally.count(false);
            Ok(())
        })
        .expect("random bytes");
    // Longer than the daemon reads: refused, never decoded.
    let long = vec![b' '; 64 * 1024 + 1];
    assert!(mirror_user::control::Request::decode(&long).is_err());
    tally.report("control");
}

#[test]
fn frames_classify_the_same_in_the_reference_and_the_tables() {
    let tally = Tally::default();
    runner(0xf4a3e, 20_000)
        .run(
            &(frame(), prop::collection::vec(edit(), 0..3)),
            |(f, edits)| {
                let f = mutate(&f, &edits);
                fuzz::frame(&f);
                tally.count(fuzz::frame_verdict(&f).is_some());
                Ok(())
            },
        )
        .expect("frame property");
    runner(0xbad_f4a3e, 5_000)
        .run(&prop::collection::vec(any::<u8>(), 0..128), |f| {
            fuzz::frame(&f);
            tally.count(fuzz::frame_verdict(&f).is_some());
            Ok(())
        })
        .expect("random frames");
    tally.report("frame");
}

#[test]
fn tunnel_headers_decode_to_the_fields_they_were_built_from() {
    let tally = Tally::default();
    runner(0x7e1, 20_000)
        .run(&prop::collection::vec(any::<u8>(), 0..64), |bytes| {
            fuzz::tunnel_header(&bytes);
            tally.count(mirror_user::target::encap::decode_gre(&bytes).is_some());
            Ok(())
        })
        .expect("tunnel property");
    eprintln!(
        "fuzz tunnel: {} inputs, {} also decoded as GRE",
        tally.cases.load(Ordering::Relaxed),
        tally.accepted.load(Ordering::Relaxed)
    );
}
