//! The kernel's frame parser and classifier fuzzed through
//! `BPF_PROG_TEST_RUN`: well-formed frames with random edits (flipped bytes,
//! cuts, inserted bytes, truncation) and random bytes, run through the tap
//! program under `mirror_user::fuzz`'s rules. Every run must succeed (no
//! verifier or runtime failure), give the verdict of the Rust reference, and
//! the program's counters must add up: one `received` per run, each either
//! `matched` or `filtered`, parse errors never more than the frames.

mod common;

use std::cell::Cell;

use common::fuzzgen::{edit, frame, mutate, runner};
use mirror_ebpf::mirror::types::mirror_counter as C;
use mirror_user::config::Direction;
use mirror_user::filter::ruleset::RuleSet;
use mirror_user::fuzz;
use mirror_user::kernel::{test_classify, SourceProgram, COUNTERS};
use proptest::prelude::*;

fn cnt(d: &[u64; COUNTERS], c: C) -> u64 {
    d[c.0 as usize]
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_kernel_parser_survives_mutated_and_random_frames_and_agrees_with_the_reference() {
    require_root!();
    let mut prog = SourceProgram::load().expect("the tap program loads");
    let refs: Vec<_> = fuzz::frame_config().filters.iter().collect();
    let set = RuleSet::build(&refs, Direction::Ingress).expect("within limits");
    prog.install(&set, None).expect("the rule set installs");
    let before = prog.counters().expect("counters");
    let (runs, matched) = (Cell::new(0u64), Cell::new(0u64));
    let check = |f: &[u8]| -> Result<(), TestCaseError> {
        let got = test_classify(prog.xdp_tap_fd(), f)
            .map_err(|e| TestCaseError::fail(format!("test run of {f:02x?}: {e}")))?;
        runs.set(runs.get() + 1);
        matched.set(matched.get() + u64::from(got.is_some()));
        prop_assert_eq!(
            got.map(usize::from),
            fuzz::frame_verdict(f),
            "frame {:02x?}",
            f
        );
        Ok(())
    };
    runner(0x6e7e1, 20_000)
        .run(
            &(frame(), prop::collection::vec(edit(), 0..4)),
            |(f, edits)| {
                // The kernel takes frames of 14 bytes and more (an Ethernet header).
                let f = mutate(&f, &edits);
                if f.len() < 14 {
                    return Ok(());
                }
                check(&f)
            },
        )
        .expect("mutated frames");
    runner(0x7a4d0, 5_000)
        .run(&prop::collection::vec(any::<u8>(), 14..256), |f| check(&f))
        .expect("random frames");
    let after = prog.counters().expect("counters");
    let mut d = [0u64; COUNTERS];
    for i in 0..COUNTERS {
        d[i] = after[i] - before[i];
    }
    let n = runs.get();
    eprintln!(
        "fuzz kernel: {n} frames, {} matched, parse: non_ip {} truncated {} bad_header {} ext_limit {} vlan_limit {} fragment {}",
        matched.get(),
        cnt(&d, C::MIRROR_CNT_PARSE_NON_IP),
        cnt(&d, C::MIRROR_CNT_PARSE_TRUNCATED),
        cnt(&d, C::MIRROR_CNT_PARSE_BAD_HEADER),
        cnt(&d, C::MIRROR_CNT_PARSE_EXT_LIMIT),
        cnt(&d, C::MIRROR_CNT_PARSE_VLAN_LIMIT),
        cnt(&d, C::MIRROR_CNT_FRAGMENT),
    );
    assert!(n > 20_000, "{n} frames run");
    assert_eq!(cnt(&d, C::MIRROR_CNT_RECEIVED), n);
    assert_eq!(cnt(&d, C::MIRROR_CNT_MATCHED), matched.get());
    assert_eq!(cnt(&d, C::MIRROR_CNT_FILTERED), n - matched.get());
    let parse_errors = cnt(&d, C::MIRROR_CNT_PARSE_NON_IP)
        + cnt(&d, C::MIRROR_CNT_PARSE_TRUNCATED)
        + cnt(&d, C::MIRROR_CNT_PARSE_BAD_HEADER)
        + cnt(&d, C::MIRROR_CNT_PARSE_EXT_LIMIT)
        + cnt(&d, C::MIRROR_CNT_PARSE_VLAN_LIMIT);
    assert!(parse_errors <= n);
    // The mutations reached both sides and the parser's error paths.
    assert!(matched.get() > 0 && matched.get() < n);
    for c in [
        C::MIRROR_CNT_PARSE_NON_IP,
        C::MIRROR_CNT_PARSE_TRUNCATED,
        C::MIRROR_CNT_PARSE_BAD_HEADER,
        C::MIRROR_CNT_PARSE_EXT_LIMIT,
        C::MIRROR_CNT_PARSE_VLAN_LIMIT,
        C::MIRROR_CNT_FRAGMENT,
    ] {
        assert!(cnt(&d, c) > 0, "{c:?} never reached");
    }
}
