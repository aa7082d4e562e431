//! End to end, in network namespaces: VLAN-tagged frames in copy mode at
//! tcx. The kernel takes a frame's outer tag out of its data before tc
//! ingress (and a VLAN device's egress leaves it out of the data: VLAN
//! acceleration), so the program must classify by `skb->vlan_tci` and the
//! copies must carry the tag back, as the frame was on the wire.
//!
//! (This kernel has no VLAN devices, so the egress case, a VLAN device's
//! frames leaving with their tag accelerated, is not reproduced here; it
//! takes the same code.)
//!
//! ```text
//!  ns gen                 ns src (mirror, copy mode, tcx ingress)
//!  gen0 ──veth── feed0 ── tagged and untagged frames
//! ```

mod common;

use std::sync::Arc;

use common::{assert_reconciles, assert_source_reconciles, read_pcapng, wait_for};
use mirror_user::control::Client;
use mirror_user::lab::{self, traffic, Lab, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mirror");

const CONFIG: &str = r#"
[daemon]
control_socket = "@CONTROL@"

[[source]]
name = "live"
interface = "feed0"
mode = "copy"
ingress_hook = "tc"

[[filter]]
name = "vlan100"
[[filter.rule]]
number = 10
action = "accept"
direction = "ingress"
vlan = 100

[[target]]
name = "cap"
kind = "pcapng"
path = "@DIR@/vlan.pcapng"

[[session]]
name = "tagged"
source = "live"
filter = "vlan100"
targets = ["cap"]
"#;

/// The VLAN id of an 802.1Q-tagged Ethernet frame.
fn vid(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && frame[12..14] == [0x81, 0x00])
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0xfff)
}

/// 50 frames tagged VLAN 100 and 50 untagged reach feed0; the rule
/// `vlan = 100` matches exactly the tagged ones, and each copy is the frame
/// as sent, tag included.
#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn copy_mode_at_tcx_classifies_by_the_accelerated_tag_and_the_copies_keep_it() {
    require_root!();
    let lab = Lab::new(1).expect("lab");
    let dir = TempDir::new("e2e-copy-vlan").expect("temp dir");
    let (mut daemon, _) = common::start_daemon(BIN, &lab.src, &dir, CONFIG);
    let mut client = Client::connect(&daemon.control).expect("control socket");

    let tagged: Vec<Vec<u8>> = (0..50)
        .map(|i| traffic::frame(traffic::Shape::VlanTcp4, i, 200))
        .collect();
    assert!(tagged.iter().all(|f| vid(f) == Some(100)));
    let plain: Vec<Vec<u8>> = (0..50)
        .map(|i| traffic::frame(traffic::Shape::Tcp4, i, 200))
        .collect();
    let mut frames = tagged.clone();
    frames.extend(plain);
    lab::send_frames(&lab.gen, Lab::GEN_IF, Arc::new(frames), 10_000).expect("send");
    let st = wait_for(&mut client, "100 frames in, every copy written", |s| {
        s.sources["live"].directions["ingress"].received == 100
            && s.sources["live"].queued == 0
            && s.targets["cap"].queued == 0
    });
    let src = &st.sources["live"];
    let ingress = &src.directions["ingress"];
    assert_eq!((ingress.matched, ingress.filtered), (50, 50), "{ingress:?}");
    assert_source_reconciles("live", src);
    assert_reconciles("cap", &st.targets["cap"]);
    assert_eq!(st.targets["cap"].sent_packets, 50);

    daemon
        .stop(std::time::Duration::from_secs(10))
        .expect("stop");
    let records = read_pcapng(&dir.path().join("vlan.pcapng"));
    assert_eq!(records.len(), 50);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.data, tagged[i],
            "copy {i}: the frame as sent, tag included"
        );
        assert_eq!(r.orig_len as usize, tagged[i].len(), "copy {i}");
    }
}
