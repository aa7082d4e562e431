//! End to end, in network namespaces: interfaces and collectors that change
//! under a running daemon. Every copy stays accounted for, by reason.

mod common;

use std::sync::Arc;

use common::{assert_reconciles, assert_source_reconciles, wait_for};
use mirror_user::control::Client;
use mirror_user::lab::{self, traffic, Lab, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "feed"
interface = "feed0"
mode = "tap"

[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"

[[target]]
name = "ids0"
kind = "interface"
interface = "tgt0"

[[session]]
name = "ids-feed"
source = "feed"
filter = "all"
targets = ["ids0"]
path = "userspace"
"#;

fn frames(first: u32, n: u32) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (first..first + n)
            .map(|i| traffic::frame(traffic::SHAPES[1], i, 200))
            .collect(),
    )
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_deleted_target_interface_counts_every_copy_down() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-churn-del").expect("temp dir");
    let (daemon, _) = common::start_daemon(BIN, &lab.src, &dir, CONFIG);
    let mut client = Client::connect(&daemon.control).expect("control socket");

    lab::send_frames(&lab.gen, Lab::GEN_IF, frames(0, 100), 10_000).expect("send");
    wait_for(&mut client, "100 copies sent", |s| {
        s.targets["ids0"].sent_packets == 100
    });

    // The target's port goes away (with its peer); copies keep coming, some
    // of them while the sender has not noticed yet.
    lab.src.ip(&["link", "del", "tgt0"]).expect("delete tgt0");
    lab::send_frames(&lab.gen, Lab::GEN_IF, frames(100, 300), 20_000).expect("send");
    let s = wait_for(&mut client, "400 copies accounted", |s| {
        let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
        src.received == 400
            && src.queued == 0
            && t.enqueued == 400
            && t.queued == 0
            && t.enqueued == t.sent_packets + t.dropped_total()
    });
    let (src, t) = (&s.sources["feed"], &s.targets["ids0"]);
    assert_source_reconciles("feed", src);
    assert_reconciles("ids0", t);
    assert_eq!(src.mirrored, 400);
    assert_eq!(t.sent_packets, 100, "{t:?}");
    assert_eq!(t.dropped["down"], 300, "every copy after the delete: {t:?}");
    assert!(!t.up);
    assert!(
        daemon
            .log_text()
            .contains("the target's interface was deleted"),
        "{}",
        daemon.log_text()
    );
}
