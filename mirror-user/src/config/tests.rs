//! The config tests: every key, default and error message, with positions.

use super::*;

const GOOD: &str = r#"
[daemon]
control_socket = "/tmp/m.sock"

[[source]]
name = "uplink"
interface = "eth1"

[[filter]]
name = "ids"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
source = "0.0.0.0/0"
destination = "10.0.0.0/8"
source_port = "1024-65535"
destination_port = 443
vlan = 100

[[target]]
name = "ids0"
kind = "interface"
interface = "eth2"

[[session]]
name = "feed"
source = "uplink"
filter = "ids"
targets = ["ids0"]
priority = 1
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml") {
        Ok(_) => panic!("expected errors"),
        Err(e) => {
            let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
            // The structured diagnostics (what `mirror check` counts) say the same.
            let from_diags: Vec<String> = e
                .diagnostics()
                .iter()
                .map(|d| format!("t.toml:{}:{}: {}", d.line, d.column, d.message))
                .collect();
            assert_eq!(from_diags, lines, "diagnostics() and the message agree");
            lines
        }
    }
}

#[test]
fn valid_config_is_resolved_and_rules_sorted_by_number() {
    let c = parse(GOOD, "t.toml").expect("valid");
    assert_eq!(c.daemon.control_socket, PathBuf::from("/tmp/m.sock"));
    assert_eq!(c.sources[0].mode, SourceMode::Tap);
    assert_eq!(c.sources[0].umem_frames, DEFAULT_UMEM_FRAMES);
    let rules = &c.filters[0].rules;
    assert_eq!(
        rules.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![100, 200]
    );
    let r = &rules[0];
    assert_eq!(r.protocol, Some(6));
    assert_eq!(r.destination, Some("10.0.0.0/8".parse().expect("cidr")));
    assert_eq!(
        r.source_port,
        Some(PortRange {
            lo: 1024,
            hi: 65535
        })
    );
    assert_eq!(r.destination_port, Some(PortRange { lo: 443, hi: 443 }));
    assert_eq!(r.vlan, Some(100));
    assert_eq!(c.sessions[0].targets, vec![Dest::Target(0)]);
    assert_eq!(c.sessions[0].priority, 1);
}

#[test]
fn unknown_key_is_reported_with_line_and_column() {
    let text = GOOD.replace("interface = \"eth1\"", "interface = \"eth1\"\nspeed = 10");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:8:1: source[0].speed: unknown field `speed`"),
        "{e:?}"
    );
}

#[test]
fn every_semantic_error_is_reported_with_its_position() {
    let text = GOOD
        .replace(
            "destination = \"10.0.0.0/8\"",
            "destination = \"10.0.0.0/33\"",
        )
        .replace("number = 200", "number = 40000")
        .replace("targets = [\"ids0\"]", "targets = [\"nope\"]");
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with(
            "t.toml:12:10: filter[0].rule[0].number = 40000 is out of range: accepted values are 1 to 32766"
        ),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(
            "t.toml:21:15: filter[0].rule[1].destination = \"10.0.0.0/33\" is not a CIDR"
        ),
        "{e:?}"
    );
    assert!(
        e[2].starts_with(
            "t.toml:35:12: session[0].targets[0]: unknown target or target_group `nope` (defined: ids0)"
        ),
        "{e:?}"
    );
}

#[test]
fn duplicate_rule_numbers_in_one_direction_are_rejected() {
    let text = GOOD.replace("number = 200", "number = 100");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("duplicate rule number 100 for direction ingress"),
        "{e:?}"
    );
    // The same number in the other direction is fine.
    let text = GOOD.replace(
        "number = 200\naction = \"accept\"\ndirection = \"ingress\"",
        "number = 100\naction = \"accept\"\ndirection = \"egress\"",
    );
    parse(&text, "t.toml").expect("same number, other direction");
}

#[test]
fn ports_need_a_protocol_with_ports_and_ranges_must_be_ordered() {
    let e = errors(&GOOD.replace("protocol = \"tcp\"", "protocol = \"icmp\""));
    assert!(
        e[0].contains("source_port needs protocol = \"tcp\", \"udp\" or \"sctp\""),
        "{e:?}"
    );
    let e = errors(&GOOD.replace("\"1024-65535\"", "\"65535-1024\""));
    assert!(e[0].contains("range \"65535-1024\" is reversed"), "{e:?}");
    let e = errors(&GOOD.replace("\"1024-65535\"", "\"70000\""));
    assert!(e[0].contains("\"70000\" is not a port"), "{e:?}");
}

#[test]
fn protocol_accepts_names_and_numbers() {
    for (p, want) in [
        ("\"udp\"", Some(17)),
        ("\"SCTP\"", Some(132)),
        ("47", Some(47)),
        ("\"any\"", None),
    ] {
        let text = GOOD
            .replace("protocol = \"tcp\"", &format!("protocol = {p}"))
            .replace("source_port = \"1024-65535\"\n", "")
            .replace("destination_port = 443\n", "");
        let c = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(c.filters[0].rules[0].protocol, want, "{p}");
    }
    let e = errors(&GOOD.replace("protocol = \"tcp\"", "protocol = \"tcpp\""));
    assert!(
        e[0].contains("protocol = \"tcpp\" is unknown: accepted values are any, tcp"),
        "{e:?}"
    );
}

#[test]
fn mixed_families_in_one_rule_are_rejected() {
    let e = errors(&GOOD.replace("source = \"0.0.0.0/0\"", "source = \"::/0\""));
    assert!(e[0].contains("different IP families"), "{e:?}");
}

#[test]
fn unknown_names_list_what_is_defined() {
    let e = errors(&GOOD.replace("filter = \"ids\"", "filter = \"idz\""));
    assert!(
        e[0].contains("unknown filter `idz` (defined: ids)"),
        "{e:?}"
    );
}

#[test]
fn egress_on_a_tap_source_is_refused_clearly() {
    let e = errors(&GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"eth1\"\ndirection = \"egress\"",
    ));
    assert!(e[0].contains("needs mode = \"copy\""), "{e:?}");
}

/// GOOD's session fed to every kind of target, through a group too.
const ALL_TARGETS: &str = r#"
[[target]]
name = "vx"
kind = "vxlan"
remote = "192.0.2.10"
source = "192.0.2.1"
port = 8472
mtu = 9000

[[target]]
name = "gre6"
kind = "gre"
remote = "2001:db8::12"
key = 7

[[target]]
name = "er"
kind = "erspan"
remote = "192.0.2.11"
version = 3
granularity = "100ns"

[[target]]
name = "archive"
kind = "pcapng"
path = "/var/lib/mirror/uplink.pcapng"
rotate_size = "1GiB"
rotate_interval = "1h"
keep = 24
max_total_size = "500GiB"
min_free = "5%"

[[target_group]]
name = "pool"
members = ["ids0", "vx"]

[[session]]
name = "all"
source = "uplink"
filter = "ids"
targets = ["pool", "gre6", "er", "archive"]
packet_length = 128
vni = 42
sample = 10
rate_limit_pps = 5000
"#;

#[test]
fn every_target_kind_group_and_session_option_is_resolved() {
    let c = parse(&format!("{GOOD}{ALL_TARGETS}"), "t.toml").expect("valid");
    let t = |n: &str| &c.targets.iter().find(|t| t.name == n).expect(n).spec;
    assert_eq!(
        *t("vx"),
        TargetSpec::Vxlan {
            tunnel: Tunnel {
                remote: "192.0.2.10".parse().expect("ip"),
                source: Some("192.0.2.1".parse().expect("ip")),
                mtu: 9000
            },
            port: 8472
        }
    );
    assert!(
        matches!(t("gre6"), TargetSpec::Gre { key: Some(7), tunnel } if tunnel.mtu == DEFAULT_TUNNEL_MTU)
    );
    assert!(matches!(
        t("er"),
        TargetSpec::Erspan {
            version: ErspanVersion::Three,
            granularity: Granularity::Nanos100,
            ..
        }
    ));
    let TargetSpec::Pcapng(p) = t("archive") else {
        panic!("pcapng")
    };
    assert_eq!(p.rotate_size, Some(1 << 30));
    assert_eq!(
        p.rotate_interval,
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!((p.keep, p.max_total_size), (Some(24), Some(500 << 30)));
    assert_eq!(p.min_free, Some(MinFree::Permille(50)));
    assert_eq!(c.groups[0].name, "pool");
    assert_eq!(c.groups[0].members, vec![0, 1]);
    let s = c
        .sessions
        .iter()
        .find(|s| s.name == "all")
        .expect("session");
    assert_eq!(s.targets[0], Dest::Group(0));
    assert_eq!(
        (s.packet_length, s.vni, s.sample, s.rate_limit_pps),
        (128, 42, 10, 5000)
    );
    // Groups expanded, each target once, in order.
    let all = c
        .sessions
        .iter()
        .position(|s| s.name == "all")
        .expect("session");
    assert_eq!(c.session_targets(all), vec![0, 1, 2, 3, 4]);
}

#[test]
fn target_and_session_option_errors_name_the_field() {
    let base = format!("{GOOD}{ALL_TARGETS}");
    for (from, to, want) in [
        (
            "vni = 42",
            "vni = 2000",
            "vni = 2000 is the ERSPAN session id of session `all`, which has 10 bits",
        ),
        (
            "version = 3\n",
            "version = 4\n",
            "version = 4: accepted values are 2 (type II) and 3 (type III)",
        ),
        (
            "version = 3\n",
            "",
            "`granularity` applies to ERSPAN type III only",
        ),
        (
            "source = \"192.0.2.1\"",
            "source = \"2001:db8::1\"",
            "source and remote must be of the same family",
        ),
        (
            "remote = \"192.0.2.10\"",
            "remote = \"collector\"",
            "remote = \"collector\" is not an IPv4 or IPv6 address",
        ),
        (
            "mtu = 9000",
            "mtu = 100",
            "mtu = 100 is out of range: accepted values are 576 to 65535",
        ),
        (
            "rotate_size = \"1GiB\"",
            "rotate_size = \"lots\"",
            "rotate_size = \"lots\": not a size",
        ),
        (
            "rotate_interval = \"1h\"",
            "rotate_interval = \"soon\"",
            "rotate_interval = \"soon\"",
        ),
        (
            "min_free = \"5%\"",
            "min_free = \"500%\"",
            "at least 0% and below 100%",
        ),
        (
            "min_free = \"5%\"",
            "min_free = \"100%\"",
            "100% would leave no room to write anything",
        ),
        (
            "min_free = \"5%\"",
            "min_free = \"99.95%\"",
            "99.95% rounds to 100%",
        ),
        (
            "min_free = \"5%\"",
            "min_free = \"0.04%\"",
            "0.04% rounds to 0%, which is off",
        ),
        (
            "members = [\"ids0\", \"vx\"]",
            "members = [\"ids0\", \"ids0\"]",
            "member `ids0` is listed twice",
        ),
        (
            "members = [\"ids0\", \"vx\"]",
            "members = [\"pool\"]",
            "member `pool` is a target_group; groups cannot contain groups",
        ),
        (
            "members = [\"ids0\", \"vx\"]",
            "members = []",
            "target_group `pool` has no members",
        ),
        (
            "name = \"pool\"",
            "name = \"vx\"",
            "`vx` names both a target and a target_group",
        ),
        ("sample = 10", "sample = 0", "sample = 0 is out of range"),
        (
            "packet_length = 128",
            "packet_length = 8",
            "packet_length (0 = whole frame) = 8 is out of range",
        ),
        (
            "kind = \"vxlan\"\nremote = \"192.0.2.10\"",
            "kind = \"vxlan\"",
            "needs `remote`",
        ),
        (
            "path = \"/var/lib/mirror/uplink.pcapng\"\n",
            "",
            "needs `path`",
        ),
        (
            "interface = \"eth2\"\n",
            "interface = \"eth2\"\nqueue_size = 300000\n",
            "queue_size = 300000 is too large for an interface target",
        ),
    ] {
        assert!(base.contains(from), "fixture lacks {from}");
        let e = errors(&base.replacen(from, to, 1));
        assert!(e.iter().any(|l| l.contains(want)), "{from} -> {to}: {e:?}");
    }
    let e = errors(&base.replace("rotate_size = \"1GiB\"\nrotate_interval = \"1h\"\n", ""));
    assert!(
        e.iter().any(|l| l.contains("`keep` needs rotation")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("`max_total_size` needs rotation")),
        "both keys are named: {e:?}"
    );
}

#[test]
fn keys_of_another_target_kind_are_named() {
    let e = errors(&GOOD.replace(
        "interface = \"eth2\"",
        "interface = \"eth2\"\npath = \"/tmp/x.pcapng\"",
    ));
    assert!(
        e[0].contains("`path` does not apply to a target of kind = \"interface\""),
        "{e:?}"
    );
}

#[test]
fn toml_syntax_error_has_a_position() {
    let e = errors("[[source]\nname = 1");
    assert!(e[0].starts_with("t.toml:1:"), "{e:?}");
}

#[test]
fn sessions_of_orders_by_priority_then_file_order() {
    let text = format!(
        "{GOOD}\n[[session]]\nname = \"b\"\nsource = \"uplink\"\nfilter = \"ids\"\ntargets = [\"ids0\"]\npriority = 0\n\
         [[session]]\nname = \"c\"\nsource = \"uplink\"\nfilter = \"ids\"\ntargets = [\"ids0\"]\npriority = 1\n"
    );
    let c = parse(&text, "t.toml").expect("valid");
    let order: Vec<&str> = c
        .sessions_of(0)
        .iter()
        .map(|&i| c.sessions[i].name.as_str())
        .collect();
    assert_eq!(order, vec!["b", "feed", "c"]);
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\nx", 3), (2, 1));
}

#[test]
fn copy_mode_sources_take_direction_hook_and_ring_size() {
    let text = GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"eth1\"\nmode = \"copy\"\ndirection = \"both\"\ningress_hook = \"tc\"\nring_buffer = \"64KiB\"",
    );
    let c = parse(&text, "t.toml").expect("valid");
    let s = &c.sources[0];
    assert_eq!(s.mode, SourceMode::Copy);
    assert!(s.ingress() && s.egress());
    assert_eq!(s.ingress_hook, IngressHook::Tc);
    assert_eq!(s.ring_buffer, 64 << 10);
    // Defaults: ingress decided at start ("auto": tcx for a session that
    // clones in the kernel, else XDP), a 16 MiB ring.
    let c = parse(
        &GOOD.replace(
            "interface = \"eth1\"",
            "interface = \"eth1\"\nmode = \"copy\"",
        ),
        "t.toml",
    )
    .expect("valid");
    assert_eq!(c.sources[0].ingress_hook, IngressHook::Auto);
    assert_eq!(c.sources[0].ring_buffer, DEFAULT_RING_BUFFER);
    // Tap sources share an interface target's UMEM where zero-copy makes
    // it pay ("auto"), or as told: true, false or "auto".
    assert_eq!(
        parse(GOOD, "t.toml").expect("valid").sources[0].share_umem,
        ShareUmem::Auto
    );
    for (value, want) in [
        ("true", ShareUmem::On),
        ("false", ShareUmem::Off),
        ("\"auto\"", ShareUmem::Auto),
    ] {
        let text = GOOD.replace(
            "interface = \"eth1\"",
            &format!("interface = \"eth1\"\nshare_umem = {value}"),
        );
        assert_eq!(
            parse(&text, "t.toml").expect("valid").sources[0].share_umem,
            want
        );
    }
    let bad = GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"eth1\"\nshare_umem = \"yes\"",
    );
    let e = errors(&bad);
    assert!(
        e[0].starts_with("t.toml:8:14: source[0].share_umem: invalid value: string \"yes\"")
            && e[0].contains("expected true, false or \"auto\""),
        "{e:?}"
    );
    assert!(c.sources[0].ingress() && !c.sources[0].egress());
}

#[test]
fn copy_mode_errors_name_the_field() {
    let copy = |extra: &str| {
        GOOD.replace(
            "interface = \"eth1\"",
            &format!("interface = \"eth1\"\nmode = \"copy\"\n{extra}"),
        )
    };
    for (text, want) in [
        (
            copy("ring_buffer = \"3000\""),
            "ring_buffer = \"3000\": accepted values are powers of two",
        ),
        (
            copy("ring_buffer = \"2GiB\""),
            "powers of two from 4KiB to 1GiB",
        ),
        (
            copy("ring_buffer = \"lots\""),
            "ring_buffer = \"lots\": not a size",
        ),
        (
            copy("ingress_hook = \"bpf\""),
            "unknown variant `bpf`, expected one of `auto`, `xdp`, `tc`",
        ),
        (
            GOOD.replace(
                "interface = \"eth1\"",
                "interface = \"eth1\"\nring_buffer = \"1MiB\"",
            ),
            "ring_buffer applies to mode = \"copy\" only",
        ),
        (
            GOOD.replace(
                "interface = \"eth1\"",
                "interface = \"eth1\"\ningress_hook = \"tc\"",
            ),
            "ingress_hook applies to mode = \"copy\" only",
        ),
        (
            copy("share_umem = false"),
            "share_umem applies to mode = \"tap\" only",
        ),
    ] {
        let e = errors(&text);
        assert!(e.iter().any(|l| l.contains(want)), "want `{want}` in {e:?}");
        assert!(e[0].starts_with("t.toml:"), "file:line:column: {e:?}");
    }
}

#[test]
fn session_path_defaults_to_auto_and_kernel_is_refused_where_userspace_is_needed() {
    let c = parse(GOOD, "t.toml").expect("valid");
    assert_eq!(c.sessions[0].path, SessionPath::Auto);
    assert_eq!(c.kernel_path_obstacle(0), None, "tap, one interface target");
    let with = |extra: &str| GOOD.replace("priority = 1", &format!("priority = 1\n{extra}"));
    for p in [
        ("kernel", SessionPath::Kernel),
        ("userspace", SessionPath::Userspace),
    ] {
        let c = parse(&with(&format!("path = \"{}\"", p.0)), "t.toml").expect("valid");
        assert_eq!(c.sessions[0].path, p.1);
    }
    // Rate limit, cut and sampling all run in the kernel too.
    for extra in ["rate_limit_pps = 10", "packet_length = 100", "sample = 3"] {
        let c = parse(&with(extra), "t.toml").expect("valid");
        assert_eq!(c.kernel_path_obstacle(0), None, "{extra}");
    }
    let cap = GOOD.replace(
        "[[session]]",
        "[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"/tmp/x.pcapng\"\n\n[[session]]",
    );
    // VXLAN over IPv6: its UDP checksum is computed in the kernel.
    let v6 = GOOD
        .replace(
            "[[session]]",
            "[[target]]\nname = \"v6\"\nkind = \"vxlan\"\nremote = \"fd00::2\"\n\n[[session]]",
        )
        .replace("targets = [\"ids0\"]", "targets = [\"v6\"]");
    let c = parse(&v6, "t.toml").expect("valid");
    assert_eq!(c.kernel_path_obstacle(0), None, "IPv6 VXLAN");
    let text = cap.replace("targets = [\"ids0\"]", "targets = [\"ids0\", \"cap\"]");
    let want = "target `cap` is a pcapng target, written by userspace";
    // auto: valid, and the obstacle is named for the log.
    let c = parse(&text, "t.toml").expect("valid");
    assert!(
        c.kernel_path_obstacle(0).is_some_and(|w| w.contains(want)),
        "{:?}",
        c.kernel_path_obstacle(0)
    );
    let e = errors(&text.replace("priority = 1", "priority = 1\npath = \"kernel\""));
    assert!(e.iter().any(|l| l.contains(want)), "want `{want}` in {e:?}");
    // A copy-mode session to interface targets has a kernel path too
    // (tcx clones): see `copy_sessions_clone_in_the_kernel_unless_…`.
    let copy = GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"eth1\"\nmode = \"copy\"",
    );
    let c = parse(&copy, "t.toml").expect("valid");
    assert_eq!(c.kernel_path_obstacle(0), None);
    let e = errors(&GOOD.replace("priority = 1", "path = \"fast\""));
    assert!(e[0].contains("unknown variant `fast`"), "{e:?}");
}

#[test]
fn copy_sessions_clone_in_the_kernel_unless_userspace_or_xdp_is_needed() {
    // GOOD's source in copy mode, both directions, with `source` keys; its
    // session sends to `targets` with `session` keys (ALL_TARGETS defines
    // the other kinds: vx, gre6, er, archive and the group pool).
    let copy = |source: &str, targets: &str, session: &str| {
        format!("{GOOD}{ALL_TARGETS}")
            .replace(
                "interface = \"eth1\"",
                &format!("interface = \"eth1\"\nmode = \"copy\"\ndirection = \"both\"\n{source}"),
            )
            .replace(
                "targets = [\"ids0\"]\npriority = 1",
                &format!("targets = [{targets}]\npriority = 1\n{session}"),
            )
    };
    let ids = "\"ids0\"";
    for hook in ["", "ingress_hook = \"auto\"", "ingress_hook = \"tc\""] {
        let c = parse(&copy(hook, ids, ""), "t.toml").expect("valid");
        assert_eq!(c.kernel_path_obstacle(0), None, "{hook:?}");
        parse(&copy(hook, ids, "path = \"kernel\""), "t.toml").expect("kernel path");
    }
    // VXLAN (IPv4) and GRE targets (and ERSPAN ones, see below) are
    // encapsulated by the source's relay, which also cuts to packet_length;
    // beside interface targets too.
    for (targets, session) in [
        ("\"vx\", \"gre6\"", "packet_length = 100"),
        ("\"ids0\", \"vx\"", ""),
    ] {
        let c = parse(&copy("", targets, session), "t.toml").expect("valid");
        assert_eq!(c.kernel_path_obstacle(0), None, "{targets} {session}");
    }
    // An ERSPAN target another session sends to too: its sequence numbers
    // are one series, kept in userspace (ALL_TARGETS' session "all" has er).
    let c = parse(&copy("", "\"er\"", ""), "t.toml").expect("valid");
    let why = c.kernel_path_obstacle(0);
    assert!(
        why.as_ref()
            .is_some_and(|w| w.contains("ERSPAN target `er` is also a target of session `all`")),
        "{why:?}"
    );
    let v6 = copy("", "\"v6\"", "").replace(
        "[[target_group]]",
        "[[target]]\nname = \"v6\"\nkind = \"vxlan\"\nremote = \"2001:db8::10\"\n\n[[target_group]]",
    );
    let c = parse(&v6, "t.toml").expect("valid");
    assert_eq!(
        c.kernel_path_obstacle(0),
        None,
        "IPv6 VXLAN: the relay computes its checksum"
    );
    // Egress only: the ingress hook does not matter.
    let egress = copy("ingress_hook = \"xdp\"", ids, "")
        .replace("direction = \"both\"", "direction = \"egress\"");
    let c = parse(&egress, "t.toml").expect("valid");
    assert_eq!(c.kernel_path_obstacle(0), None);
    for (source, targets, session, want) in [
        (
            "ingress_hook = \"xdp\"",
            ids,
            "",
            "ingress_hook = \"xdp\": XDP cannot clone a frame and let it pass on",
        ),
        (
            "",
            ids,
            "packet_length = 100",
            "packet_length is applied in userspace for interface targets (target `ids0`",
        ),
        (
            "",
            ids,
            "rate_limit_pps = 10",
            "rate_limit_pps is applied in userspace",
        ),
        (
            "",
            "\"ids0\", \"archive\"",
            "",
            "target `archive` is a pcapng target, written by userspace",
        ),
        ("", "\"pool\"", "", "target group `pool` picks members"),
    ] {
        // auto: valid, and the reason is named for the log...
        let c = parse(&copy(source, targets, session), "t.toml").expect("valid");
        let why = c.kernel_path_obstacle(0);
        assert!(
            why.as_ref().is_some_and(|w| w.contains(want)),
            "want `{want}`: {why:?}"
        );
        // ...and `path = "kernel"` is an error at the key that names it.
        let e = errors(&copy(
            source,
            targets,
            &format!("{session}\npath = \"kernel\""),
        ));
        assert!(
            e.iter()
                .any(|l| l.contains(want) && l.contains("path = \"kernel\": the in-kernel")),
            "want `{want}` in {e:?}"
        );
    }
    // A target port that copy mode mirrors on egress would see the clones
    // again (a loop): such a session goes through userspace.
    let looped = copy("", ids, "").replace("interface = \"eth2\"", "interface = \"eth1\"");
    let c = parse(&looped, "t.toml").expect("valid");
    let why = c.kernel_path_obstacle(0);
    assert!(
        why.as_ref()
            .is_some_and(|w| w.contains("is eth1, whose egress copy-mode source `uplink` mirrors")),
        "{why:?}"
    );
}

#[test]
fn daemon_cpus_take_a_cpu_list_and_a_bad_one_is_reported_at_its_value() {
    let c = parse(GOOD, "t.toml").expect("valid");
    assert_eq!(c.daemon.cpus, None, "default: any CPU");
    let text = GOOD.replace(
        "control_socket = \"/tmp/m.sock\"",
        "control_socket = \"/tmp/m.sock\"\ncpus = \"1,3-4\"",
    );
    let c = parse(&text, "t.toml").expect("valid");
    assert_eq!(c.daemon.cpus.expect("set").cpus(), &[1, 3, 4]);
    let text = GOOD.replace(
        "control_socket = \"/tmp/m.sock\"",
        "control_socket = \"/tmp/m.sock\"\ncpus = \"4-1\"",
    );
    assert_eq!(
        errors(&text),
        vec!["t.toml:4:8: daemon.cpus = \"4-1\": range \"4-1\" is reversed: write \"1-4\""]
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = parse(GOOD, "t.toml").expect("valid");
    let s = &c.sources[0];
    assert_eq!((s.umem_frames, s.ring_size), (4096, 2048));
    assert_eq!(s.ring_buffer, 16 << 20, "16 MiB");
    assert!(s.ingress() && !s.egress(), "a tap source mirrors ingress");
    assert_eq!(c.targets[0].queue_size, 4096);
    let pcapng = GOOD.replace(
        "[[session]]",
        "[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"/tmp/x.pcapng\"\n\n[[session]]",
    );
    let c = parse(&pcapng, "t.toml").expect("valid");
    assert_eq!(
        (c.targets[0].queue_size, c.targets[1].queue_size),
        (4096, 16384),
        "a pcapng target's queue is four times as deep"
    );
    let copy = GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"eth1\"\nmode = \"copy\"\ndirection = \"egress\"",
    );
    let c = parse(&copy, "t.toml").expect("valid");
    assert!(!c.sources[0].ingress() && c.sources[0].egress());
    // The largest interface queue is 1 GiB of 4 KiB frames, no more.
    let q = |n: u32| {
        GOOD.replace(
            "interface = \"eth2\"",
            &format!("interface = \"eth2\"\nqueue_size = {n}"),
        )
    };
    assert_eq!(
        parse(&q(1 << 18), "t.toml").expect("valid").targets[0].queue_size,
        1 << 18
    );
    assert!(errors(&q((1 << 18) + 1))[0].contains("too large for an interface target"));
}

#[test]
fn kinds_and_destination_names_read_back() {
    let c = parse(&format!("{GOOD}{ALL_TARGETS}"), "t.toml").expect("valid");
    let kinds: Vec<&str> = c.targets.iter().map(|t| t.spec.kind()).collect();
    for k in ["interface", "vxlan", "gre", "erspan", "pcapng"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    for (i, t) in c.targets.iter().enumerate() {
        assert_eq!(c.dest_name(Dest::Target(i)), t.name);
    }
    for (i, g) in c.groups.iter().enumerate() {
        assert_eq!(c.dest_name(Dest::Group(i)), g.name);
    }
}

#[test]
fn the_kernel_path_takes_at_most_its_devmap_of_targets() {
    let max = mirror_ebpf::limits::MAX_FAST_TARGETS as usize;
    let config = |n: usize| {
        let mut t =
            String::from("[[source]]\nname = \"s\"\ninterface = \"x\"\n[[filter]]\nname = \"f\"\n");
        for i in 0..n {
            t += &format!(
                "[[target]]\nname = \"t{i}\"\nkind = \"interface\"\ninterface = \"y{i}\"\n"
            );
        }
        let names: Vec<String> = (0..n).map(|i| format!("\"t{i}\"")).collect();
        t += &format!(
            "[[session]]\nname = \"a\"\nsource = \"s\"\nfilter = \"f\"\ntargets = [{}]\n",
            names.join(", ")
        );
        parse(&t, "t.toml").expect("valid")
    };
    assert_eq!(
        config(max).kernel_path_obstacle(0),
        None,
        "{max} targets fit"
    );
    assert!(config(max + 1)
        .kernel_path_obstacle(0)
        .is_some_and(|w| w.contains(&format!(
            "reaches {} targets (groups expanded), more than the kernel path's {max}",
            max + 1
        ))));
}

#[test]
fn the_kernel_path_picks_in_one_group_and_a_target_may_not_also_be_a_member() {
    let targets = "[[target]]\nname = \"a\"\nkind = \"interface\"\ninterface = \"ya\"\n\n\
                   [[target]]\nname = \"b\"\nkind = \"gre\"\nremote = \"10.0.0.2\"\n\n\
                   [[target_group]]\nname = \"g\"\nmembers = [\"ids0\", \"b\"]\n\n\
                   [[target_group]]\nname = \"h\"\nmembers = [\"a\"]\n\n[[session]]";
    let with = |dests: &str| {
        GOOD.replace("[[session]]", targets)
            .replace("targets = [\"ids0\"]", &format!("targets = [{dests}]"))
    };
    let c = parse(&with("\"a\", \"g\""), "t.toml").expect("valid");
    assert_eq!(
        c.kernel_path_obstacle(0),
        None,
        "a target and a group of two"
    );
    for (dests, want) in [
        ("\"g\", \"h\"", "two target groups (`g`, `h`)"),
        (
            "\"b\", \"g\"",
            "target `b` is both a target of the session and a member of its group `g`",
        ),
    ] {
        let c = parse(&with(dests), "t.toml").expect("valid");
        assert!(
            c.kernel_path_obstacle(0).is_some_and(|w| w.contains(want)),
            "{dests}: {:?}",
            c.kernel_path_obstacle(0)
        );
    }
}

#[test]
fn a_live_rule_with_an_error_is_refused_whole() {
    // Each value parses on its own; together they are an error.
    let e = parse_rule(
        "number = 5\naction = \"accept\"\ndirection = \"ingress\"\nprotocol = \"icmp\"\nvlan = 5000",
        "rule",
    )
    .expect_err("vlan out of range");
    assert_eq!(e.diagnostics().len(), 1, "{e}");
    assert!(e.to_string().contains("vlan = 5000 is out of range"), "{e}");
}

#[test]
fn umem_frames_and_ring_size_take_powers_of_two_in_their_range() {
    let with = |key: &str, v: u32| {
        GOOD.replace(
            "interface = \"eth1\"",
            &format!("interface = \"eth1\"\n{key} = {v}\nring_size = 64"),
        )
    };
    for ok in [64, 4096, 1 << 20] {
        let c = parse(&with("umem_frames", ok), "t.toml").expect("valid");
        assert_eq!(c.sources[0].umem_frames, ok);
    }
    for bad in [32, 100, 1 << 21] {
        let e = errors(&with("umem_frames", bad));
        assert!(
            e.iter().any(|l| l.contains(&format!(
                "umem_frames = {bad}: accepted values are powers of two from 64 to 1048576"
            ))),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn interface_names_follow_linux_rules() {
    let with =
        |name: &str| GOOD.replace("interface = \"eth1\"", &format!("interface = \"{name}\""));
    for ok in ["a", "eth1", "fifteen-chars-x"] {
        assert_eq!(
            parse(&with(ok), "t.toml").expect(ok).sources[0].interface,
            ok
        );
    }
    for bad in ["", "sixteen-chars-xx", "a/b", "a:b", "a b", ".", ".."] {
        let e = errors(&with(bad));
        assert!(
            e.iter()
                .any(|l| l.contains("is not a valid interface name")),
            "{bad:?}: {e:?}"
        );
    }
}

#[test]
fn sessions_and_rules_per_source_stop_at_the_kernel_limits() {
    let sessions = |n: u32| {
        let mut t = GOOD.to_string();
        for i in 1..n {
            t += &format!(
                "[[session]]\nname = \"s{i}\"\nsource = \"uplink\"\nfilter = \"ids\"\ntargets = [\"ids0\"]\n"
            );
        }
        t
    };
    let max = mirror_ebpf::limits::MAX_SESSIONS;
    assert_eq!(
        parse(&sessions(max), "t.toml")
            .expect("at the limit")
            .sessions
            .len() as u32,
        max
    );
    let e = errors(&sessions(max + 1));
    assert!(
        e.iter()
            .any(|l| l.contains(&format!("has {} sessions; at most {max}", max + 1))),
        "{e:?}"
    );

    let rules = |n: u32| {
        let mut t = String::from(
            "[[source]]\nname = \"s\"\ninterface = \"x\"\n[[target]]\nname = \"t\"\nkind = \"interface\"\ninterface = \"y\"\n[[filter]]\nname = \"f\"\n",
        );
        for i in 1..=n {
            t += &format!(
                "[[filter.rule]]\nnumber = {i}\naction = \"accept\"\ndirection = \"ingress\"\n"
            );
        }
        t + "[[session]]\nname = \"a\"\nsource = \"s\"\nfilter = \"f\"\ntargets = [\"t\"]\n"
    };
    // Two sessions share the filter: the rules count once per session.
    let max = mirror_ebpf::limits::MAX_RULES;
    let half = rules(max / 2)
        + "[[session]]\nname = \"b\"\nsource = \"s\"\nfilter = \"f\"\ntargets = [\"t\"]\n";
    assert!(
        parse(&half, "t.toml").is_ok(),
        "exactly {max} ingress rules"
    );
    let over = rules(max / 2 + 1)
        + "[[session]]\nname = \"b\"\nsource = \"s\"\nfilter = \"f\"\ntargets = [\"t\"]\n";
    let e = errors(&over);
    assert!(
        e.iter().any(|l| l.contains(&format!(
            "have {} ingress rules together; at most {max}",
            max + 2
        ))),
        "{e:?}"
    );
}

#[test]
fn a_session_on_a_rejected_source_is_reported_not_resolved() {
    // The source fails validation, its session asks for the kernel path:
    // errors for both, and no half-built config is looked at.
    let text = GOOD
        .replace("interface = \"eth1\"", "interface = \"a/b\"")
        .replace("priority = 1", "priority = 1\npath = \"kernel\"");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|l| l.contains("is not a valid interface name")),
        "{e:?}"
    );
    let t = GOOD.replace(
        "kind = \"interface\"\ninterface = \"eth2\"",
        "kind = \"vxlan\"",
    );
    let e = errors(&t.replace("priority = 1", "priority = 1\npath = \"kernel\""));
    assert!(e.iter().any(|l| l.contains("needs `remote`")), "{e:?}");
}

#[test]
fn every_error_names_its_key_path() {
    let two = GOOD.replace(
        "[[filter]]",
        "[[source]]\nname = \"b\"\ninterface = \"eth2\"\nmode = \"mirror\"\n\n[[filter]]",
    );
    for (text, want) in [
        (
            two,
            "t.toml:12:8: source[1].mode: unknown variant `mirror`, expected `tap` or `copy`",
        ),
        (
            GOOD.replace("vlan = 100", "vlan = 100\nlabel = 1"),
            "source_port",
        ),
        (
            GOOD.replace(
                "interface = \"eth2\"",
                "interface = \"eth2\"\nqueue_size = 3",
            ),
            "target[0].queue_size = 3",
        ),
        (
            GOOD.replace("name = \"uplink\"\n", ""),
            "source[0]: missing field `name`",
        ),
    ] {
        let e = errors(&text);
        if want == "source_port" {
            assert!(
                e[0].contains("filter[0].rule[1].label: unknown field `label`"),
                "{e:?}"
            );
            continue;
        }
        assert!(e.iter().any(|l| l.contains(want)), "want `{want}` in {e:?}");
    }
    // An error about the whole file names no key.
    let e = errors(
        &GOOD
            .replace("[[session]]", "[[nosession]]")
            .replace("name = \"feed\"", ""),
    );
    assert!(e.iter().all(|l| !l.contains(": daemon")), "{e:?}");
    // A key whose value is an array or an inline table is named too.
    for value in ["[1]", "{ a = 1 }"] {
        let e = errors(&GOOD.replace("vlan = 100", &format!("vlan = 100\nlabel = {value}")));
        assert!(
            e[0].contains("filter[0].rule[1].label: unknown field `label`"),
            "{value}: {e:?}"
        );
    }
}

/// An unknown variant reads on as the first accepted one; what the
/// validator would say about that stand-in in the same table (`remote` does
/// not apply to an interface target) is not reported, the table's other
/// errors are.
#[test]
fn an_unknown_variant_brings_no_error_about_its_stand_in() {
    let text = GOOD.replace(
        "[[session]]",
        "[[target]]\nname = \"g\"\nkind = \"span\"\nremote = \"10.0.0.9\"\nqueue_size = 3\n\n[[session]]",
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|l| l.contains("target[1].kind: unknown variant `span`")),
        "{e:#?}"
    );
    assert!(
        e.iter().all(|l| !l.contains("does not apply")),
        "no error about the stand-in: {e:#?}"
    );
    assert!(
        e.iter().any(|l| l.contains("target[1].queue_size = 3")),
        "the table's own errors stay: {e:#?}"
    );
    assert_eq!(e.len(), 2, "{e:#?}");
}

#[test]
fn session_and_target_edges_the_mutants_found_unguarded() {
    let pcap = |keys: &str| {
        GOOD.replace(
            "[[session]]",
            &format!("[[target]]\nname = \"cap\"\nkind = \"pcapng\"\n{keys}\n\n[[session]]"),
        )
    };
    let erspan =
        |vni: u32| {
            GOOD.replace(
            "[[session]]",
            "[[target]]\nname = \"er\"\nkind = \"erspan\"\nremote = \"10.0.0.9\"\n\n[[session]]",
        )
        .replace("targets = [\"ids0\"]", &format!("targets = [\"er\"]\nvni = {vni}"))
        };
    // ERSPAN's session id has 10 bits: 1023 is the last.
    assert!(parse(&erspan(1023), "t.toml").is_ok());
    let e = errors(&erspan(1024));
    assert!(e[0].contains("session[0].vni"), "{e:?}");
    for (text, want) in [
        (
            GOOD.replace("targets = [\"ids0\"]", "targets = [\"ids0\", \"ids0\"]"),
            "target `ids0` is listed twice",
        ),
        (
            GOOD.replace("targets = [\"ids0\"]", "targets = [\"ids0\", \"nope\"]"),
            "unknown target or target_group `nope`",
        ),
        (
            format!("{GOOD}\n[[session]]\nname = \"feed\"\nsource = \"uplink\"\nfilter = \"ids\"\ntargets = [\"ids0\"]\n"),
            "session[1].name: duplicate session name `feed`",
        ),
        (
            GOOD.replace("interface = \"eth2\"", "interface = \"eth2\"\n\n[[target]]\nname = \"v\"\nkind = \"vxlan\"\nremote = \"0.0.0.0\""),
            "remote = \"0.0.0.0\" must be a unicast address",
        ),
        (
            GOOD.replace("interface = \"eth2\"", "interface = \"eth2\"\n\n[[target]]\nname = \"v\"\nkind = \"vxlan\"\nremote = \"239.1.1.1\""),
            "remote = \"239.1.1.1\" must be a unicast address",
        ),
        (pcap("path = \"\""), "does not name a file"),
        (pcap("path = \"/\""), "does not name a file"),
        (pcap("path = \"/tmp/x.pcapng/\""), "does not name a file"),
        (
            pcap("path = \"/tmp/x.pcapng\"\nrotate_size = \"4095\""),
            "rotate_size = \"4095\" is below the minimum of 4096 bytes",
        ),
        (
            pcap("path = \"/tmp/x.pcapng\"\nrotate_interval = \"999ms\""),
            "rotate_interval must be at least 1s",
        ),
        (
            pcap("path = \"/tmp/x.pcapng\"\nrotate_size = \"1MiB\"\nkeep = 1"),
            "keep = 1 keeps only the file being written",
        ),
    ] {
        let e = errors(&text);
        assert!(e.iter().any(|l| l.contains(want)), "want `{want}` in {e:?}");
    }
    // The bounds themselves are fine.
    for keys in [
        "path = \"/tmp/x.pcapng\"\nrotate_size = \"4096\"",
        "path = \"/tmp/x.pcapng\"\nrotate_interval = \"1s\"",
        "path = \"/tmp/x.pcapng\"\nrotate_interval = \"1s\"\nkeep = 2",
    ] {
        let text = pcap(keys).replace("targets = [\"ids0\"]", "targets = [\"ids0\", \"cap\"]");
        assert!(parse(&text, "t.toml").is_ok(), "{keys}");
    }
    // packet_length = 0 is "whole frames", anything else from 14.
    let with = |v: &str| {
        GOOD.replace(
            "priority = 1",
            &format!("priority = 1\npacket_length = {v}"),
        )
    };
    assert_eq!(
        parse(&with("0"), "t.toml").expect("valid").sessions[0].packet_length,
        0
    );
    assert!(errors(&with("13"))[0].contains("packet_length"));
    assert_eq!(
        parse(&with("14"), "t.toml").expect("valid").sessions[0].packet_length,
        14
    );
}

#[test]
fn positions_count_characters_not_bytes() {
    // A multi-byte character counts once, and a position inside one does
    // not split it.
    assert_eq!(crate::config::values::line_col("aé\nb", 2), (1, 2));
    assert_eq!(crate::config::values::line_col("aé\nb", 3), (1, 3));
    assert_eq!(crate::config::values::line_col("aé\nb", 5), (2, 2));
}

#[test]
fn daemon_metrics_is_off_by_default_and_takes_an_ip_and_port() {
    let c = parse(GOOD, "t.toml").expect("valid");
    assert_eq!(c.daemon.metrics, None, "default: no metrics endpoint");
    let with = |value: &str| {
        GOOD.replace(
            "control_socket = \"/tmp/m.sock\"",
            &format!("control_socket = \"/tmp/m.sock\"\nmetrics = \"{value}\""),
        )
    };
    let c = parse(&with("127.0.0.1:9464"), "t.toml").expect("valid");
    assert_eq!(
        c.daemon.metrics,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    let c = parse(&with("[::1]:9100"), "t.toml").expect("valid");
    assert_eq!(c.daemon.metrics, Some("[::1]:9100".parse().expect("addr")));
}

#[test]
fn a_bad_metrics_address_is_reported_at_its_value() {
    let with = |value: &str| {
        GOOD.replace(
            "control_socket = \"/tmp/m.sock\"",
            &format!("control_socket = \"/tmp/m.sock\"\nmetrics = \"{value}\""),
        )
    };
    for bad in ["localhost:9464", "127.0.0.1", "9464", "127.0.0.1:99999", ""] {
        let e = errors(&with(bad));
        assert_eq!(
            e,
            vec![format!(
                "t.toml:4:11: daemon.metrics = \"{bad}\" is not an address: expected IP:PORT \
                 (no host names), e.g. \"127.0.0.1:9464\" or \"[::1]:9464\""
            )],
            "{bad}"
        );
    }
    assert_eq!(
        errors(&with("0.0.0.0:0")),
        vec![
            "t.toml:4:11: daemon.metrics = \"0.0.0.0:0\": port 0 would listen on a port the \
             kernel picks, which no Prometheus could be told: give a port, e.g. \"0.0.0.0:9464\""
        ]
    );
    assert!(errors(&with("[::1]:0"))[0].contains("e.g. \"[::1]:9464\""));
    // Not a string at all: the type error, at the value too.
    let e = errors(&GOOD.replace(
        "control_socket = \"/tmp/m.sock\"",
        "control_socket = \"/tmp/m.sock\"\nmetrics = 9464",
    ));
    assert!(e[0].starts_with("t.toml:4:11: "), "{e:?}");
}

/// GOOD's session with `extra` after its keys (schedule windows and such).
fn scheduled(extra: &str) -> String {
    format!("{GOOD}{extra}")
}

#[test]
fn a_disabled_session_parses_with_enabled_false_in_its_policy() {
    let c = parse(
        &GOOD.replace("priority = 1", "priority = 1\nenabled = false"),
        "t.toml",
    )
    .expect("valid");
    let s = &c.sessions[0];
    assert!(!s.enabled);
    assert!(!s.policy(None).enabled);
    assert!(s.schedule.is_empty());
}

#[test]
fn schedule_windows_parse_with_their_overrides_and_defaults() {
    let c = parse(
        &scheduled(
            r#"
sample = 4
rate_limit_pps = 1000
[[session.schedule]]
days = "mon-fri"
hours = "08:00-18:00"
timezone = "Europe/Berlin"
sample = 1
packet_length = 128
[[session.schedule]]
days = "mon-fri"
hours = "18:00-08:00"
timezone = "Europe/Berlin"
enabled = false
[[session.schedule]]
days = "sat,sun"
hours = "08:00-24:00"
timezone = "Europe/Berlin"
rate_limit_pps = 0
flow_cutoff_bytes = 0
"#,
        ),
        "t.toml",
    )
    .expect("valid");
    let s = &c.sessions[0];
    assert_eq!(s.schedule.len(), 3);
    let w = &s.schedule[0];
    assert_eq!((w.days, w.start, w.end), (0b1_1111, 480, 1080));
    assert_eq!(w.zone.name(), "Europe/Berlin");
    assert_eq!(
        crate::config::schedule::describe(&s.schedule[2]),
        "sat,sun 08:00-24:00 Europe/Berlin"
    );
    let base = s.policy(None);
    assert_eq!(
        (
            base.enabled,
            base.sample,
            base.rate_limit_pps,
            base.packet_length
        ),
        (true, 4, 1000, 0)
    );
    let p = s.policy(Some(0));
    assert_eq!(
        (p.enabled, p.sample, p.rate_limit_pps, p.packet_length),
        (true, 1, 1000, 128),
        "a window overrides what it names, the rest is the session's"
    );
    assert!(!s.policy(Some(1)).enabled);
    assert_eq!(s.policy(Some(1)).sample, 4);
    assert_eq!(s.policy(Some(2)).rate_limit_pps, 0);
}

#[test]
fn overlapping_windows_are_errors_at_the_later_windows_hours() {
    let text = scheduled(
        r#"
[[session.schedule]]
days = "mon-fri"
hours = "08:00-18:00"
timezone = "UTC"
[[session.schedule]]
days = "fri"
hours = "17:00-20:00"
timezone = "UTC"
"#,
    );
    let e = errors(&text);
    let line = text
        .lines()
        .position(|l| l == "hours = \"17:00-20:00\"")
        .expect("line")
        + 1;
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("t.toml:{line}:9: session[0].schedule[1].hours")),
        "{e:?}"
    );
    assert!(
        e[0].contains(
            "window 2 (fri 17:00-20:00 UTC) overlaps window 1 (mon-fri 08:00-18:00 UTC) on fri at 17:00"
        ),
        "{e:?}"
    );
}

#[test]
fn a_night_window_overlapping_the_next_mornings_window_is_an_error() {
    // Sunday 22:00-06:00 runs into Monday, where 05:00-09:00 starts.
    let e = errors(&scheduled(
        r#"
[[session.schedule]]
days = "sun"
hours = "22:00-06:00"
timezone = "UTC"
[[session.schedule]]
days = "mon"
hours = "05:00-09:00"
timezone = "UTC"
"#,
    ));
    assert!(
        e[0].contains("overlaps window 1") && e[0].contains("on mon at 05:00"),
        "{e:?}"
    );
    // Adjacent windows are fine.
    parse(
        &scheduled(
            r#"
[[session.schedule]]
days = "sun"
hours = "22:00-06:00"
timezone = "UTC"
[[session.schedule]]
days = "mon"
hours = "06:00-09:00"
timezone = "UTC"
"#,
        ),
        "t.toml",
    )
    .expect("adjacent windows are valid");
}

#[test]
fn bad_days_hours_zones_and_values_in_windows_are_errors_at_their_keys() {
    let text = scheduled(
        r#"
[[session.schedule]]
days = "mon-fry"
hours = "8-18"
timezone = "Mars/Olympus"
sample = 0
packet_length = 10
"#,
    );
    let e = errors(&text);
    assert_eq!(e.len(), 5, "{e:?}");
    let line = |key: &str| text.lines().position(|l| l.starts_with(key)).expect("key") + 1;
    let days = line("days =");
    assert!(
        e[0].starts_with(&format!("t.toml:{days}:8: session[0].schedule[0].days")),
        "{e:?}"
    );
    assert!(e[0].contains("`fry` is not a day"), "{e:?}");
    assert!(
        e[1].contains("schedule[0].hours = \"8-18\": `8` is not a time"),
        "{e:?}"
    );
    let tz = line("timezone =");
    assert!(
        e[2].starts_with(&format!("t.toml:{tz}:12: session[0].schedule[0].timezone")),
        "{e:?}"
    );
    assert!(e[2].contains("unknown time zone `Mars/Olympus`"), "{e:?}");
    assert!(
        e[3].contains("schedule[0].sample = 0 is out of range"),
        "{e:?}"
    );
    assert!(
        e[4].contains("schedule[0].packet_length (0 = whole frame) = 10 is out of range"),
        "{e:?}"
    );
}

#[test]
fn windows_of_one_session_in_two_zones_are_an_error() {
    let e = errors(&scheduled(
        r#"
[[session.schedule]]
hours = "08:00-12:00"
timezone = "UTC"
[[session.schedule]]
hours = "13:00-18:00"
timezone = "America/New_York"
"#,
    ));
    assert!(
        e[0].contains("window 2 is in America/New_York but window 1 is in UTC"),
        "{e:?}"
    );
}

#[test]
fn unknown_keys_in_a_window_are_errors() {
    let e = errors(&scheduled(
        r#"
[[session.schedule]]
hours = "08:00-12:00"
path = "kernel"
"#,
    ));
    assert!(e[0].contains("unknown field `path`"), "{e:?}");
}

#[test]
fn a_flow_cutoff_in_a_window_overrides_the_sessions_own() {
    let c = parse(
        &scheduled(
            r#"
[[session.schedule]]
hours = "08:00-12:00"
flow_cutoff_packets = 10
[[session.schedule]]
hours = "12:00-13:00"
flow_cutoff_bytes = 65536
flow_cutoff_packets = 0
"#,
        )
        .replace("priority = 1", "priority = 1\nflow_cutoff_packets = 3"),
        "t.toml",
    )
    .expect("valid");
    let s = &c.sessions[0];
    let limits = |w: Option<usize>| {
        let p = s.policy(w);
        (p.flow_cutoff_bytes, p.flow_cutoff_packets)
    };
    assert_eq!(limits(None), (0, 3), "the session's own");
    assert_eq!(limits(Some(0)), (0, 10));
    assert_eq!(limits(Some(1)), (65536, 0), "0 turns a limit off");
    // As on the session: a byte cutoff keeps at least an Ethernet header.
    let e = errors(&scheduled(
        r#"
[[session.schedule]]
hours = "08:00-12:00"
flow_cutoff_bytes = 13
"#,
    ));
    assert!(
        e[0].ends_with(
            "session[0].schedule[0].flow_cutoff_bytes (0 = off) = 13 is out of range: accepted \
             values are 0 or 14 to 9223372036854775807"
        ),
        "{e:?}"
    );
}

#[test]
fn a_window_with_rate_or_length_keeps_a_copy_session_off_the_clone_path() {
    let text = r#"
[daemon]
control_socket = "/tmp/m.sock"
[[source]]
name = "live"
interface = "eth1"
mode = "copy"
ingress_hook = "tc"
[[filter]]
name = "all"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[target]]
name = "ids0"
kind = "interface"
interface = "eth2"
[[session]]
name = "s"
source = "live"
filter = "all"
targets = ["ids0"]
"#;
    let c = parse(text, "t.toml").expect("valid");
    assert_eq!(c.clone_path_obstacle(0), None);
    let c = parse(
        &format!("{text}[[session.schedule]]\nhours = \"08:00-18:00\"\nrate_limit_pps = 5\n"),
        "t.toml",
    )
    .expect("valid");
    assert!(c
        .clone_path_obstacle(0)
        .is_some_and(|w| w.contains("rate_limit_pps")));
}

#[test]
fn an_unknown_variant_does_not_hide_the_errors_after_it() {
    // Three errors the deserializer meets one at a time, and one the
    // validator finds after: all four in one report, in file order.
    let text = GOOD
        .replace(
            "interface = \"eth1\"",
            "interface = \"eth1\"\nmode = \"span\"",
        )
        .replace("action = \"reject\"", "action = \"drop\"")
        .replace("vlan = 100", "vlan = 100\nlabel = 1")
        .replace("destination_port = 443", "destination_port = \"443-1\"");
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].contains("source[0].mode: unknown variant `span`, expected `tap` or `copy`"),
        "{e:?}"
    );
    assert!(e[1].contains("unknown variant `drop`"), "{e:?}");
    assert!(e[2].contains("destination_port"), "{e:?}");
    assert!(e[3].contains("unknown field `label`"), "{e:?}");
    // An unknown kind: reported once, not again as a missing `kind`.
    let e = errors(&GOOD.replace("kind = \"interface\"", "kind = \"span\""));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("unknown variant `span`"), "{e:?}");
}

#[test]
fn flow_cutoff_keys_parse_with_a_one_minute_idle_by_default() {
    let with = |keys: &str| GOOD.replace("priority = 1", &format!("priority = 1\n{keys}"));
    let s = &parse(GOOD, "t.toml").expect("valid").sessions[0];
    assert_eq!((s.flow_cutoff_bytes, s.flow_cutoff_packets), (0, 0), "off");
    let s = &parse(&with("flow_cutoff_bytes = 4096"), "t.toml")
        .expect("valid")
        .sessions[0];
    assert_eq!((s.flow_cutoff_bytes, s.flow_cutoff_packets), (4096, 0));
    assert_eq!(s.flow_cutoff_idle, DEFAULT_FLOW_CUTOFF_IDLE);
    assert_eq!(DEFAULT_FLOW_CUTOFF_IDLE, std::time::Duration::from_secs(60));
    let s = &parse(
        &with("flow_cutoff_packets = 10\nflow_cutoff_bytes = 0\nflow_cutoff_idle = \"250ms\""),
        "t.toml",
    )
    .expect("valid")
    .sessions[0];
    assert_eq!((s.flow_cutoff_bytes, s.flow_cutoff_packets), (0, 10));
    assert_eq!(s.flow_cutoff_idle, std::time::Duration::from_millis(250));
    // The bounds themselves are fine: an Ethernet header's worth, and 1ms.
    let s = &parse(
        &with("flow_cutoff_bytes = 14\nflow_cutoff_idle = \"1ms\""),
        "t.toml",
    )
    .expect("valid")
    .sessions[0];
    assert_eq!(s.flow_cutoff_bytes, 14);
    assert_eq!(s.flow_cutoff_idle, std::time::Duration::from_millis(1));
}

#[test]
fn flow_cutoff_errors_name_the_key_and_the_accepted_values() {
    let with = |keys: &str| GOOD.replace("priority = 1", &format!("priority = 1\n{keys}"));
    for (keys, want) in [
        (
            "flow_cutoff_bytes = 13",
            "session[0].flow_cutoff_bytes (0 = off) = 13 is out of range: \
             accepted values are 0 or 14 to 9223372036854775807",
        ),
        (
            "flow_cutoff_bytes = -1",
            "session[0].flow_cutoff_bytes (0 = off) = -1 is out of range",
        ),
        (
            "flow_cutoff_packets = -5",
            "session[0].flow_cutoff_packets (0 = off) = -5 is out of range: \
             accepted values are 0 to",
        ),
        (
            "flow_cutoff_packets = 3\nflow_cutoff_idle = \"soon\"",
            "session[0].flow_cutoff_idle = \"soon\": ",
        ),
        (
            "flow_cutoff_packets = 3\nflow_cutoff_idle = \"999us\"",
            "session[0].flow_cutoff_idle must be at least 1ms",
        ),
        (
            "flow_cutoff_idle = \"10s\"",
            "session[0].flow_cutoff_idle has no effect without \
             flow_cutoff_bytes or flow_cutoff_packets (on the session or in a \
             [[session.schedule]] window)",
        ),
        (
            "flow_cutoff_bytes = \"lots\"",
            "session[0].flow_cutoff_bytes (0 = off) = \"lots\": not a size",
        ),
        (
            "flow_cutoff_bytes = true",
            "session[0].flow_cutoff_bytes: invalid type: boolean `true`, expected a number of \
             bytes or a size such as \"64KiB\"",
        ),
        ("flow_cutoff = 10", "unknown field `flow_cutoff`"),
    ] {
        let e = errors(&with(keys));
        assert!(
            e.iter().any(|l| l.contains(want)),
            "{keys}: want `{want}` in {e:?}"
        );
    }
}

/// `flow_cutoff_bytes` takes a size as `rotate_size` and `max_total_size`
/// do, on the session and in a window (a trial's `"64KiB"` was refused as
/// not an i64); a plain number still works, and a bad or too small size is
/// refused at its line and column with the accepted values.
#[test]
fn flow_cutoff_bytes_takes_a_size_as_the_other_size_keys_do() {
    let text = scheduled(
        r#"
[[session.schedule]]
hours = "08:00-12:00"
flow_cutoff_bytes = "1.5 KiB"
[[session.schedule]]
hours = "12:00-13:00"
flow_cutoff_bytes = "0"
[[session.schedule]]
hours = "13:00-14:00"
flow_cutoff_bytes = 100
"#,
    )
    .replace(
        "priority = 1",
        "priority = 1\nflow_cutoff_bytes = \"64KiB\"",
    );
    let c = parse(&text, "t.toml").expect("valid");
    let s = &c.sessions[0];
    assert_eq!(s.flow_cutoff_bytes, 65536);
    let bytes = |w| s.policy(w).flow_cutoff_bytes;
    assert_eq!(
        [bytes(None), bytes(Some(0)), bytes(Some(1)), bytes(Some(2))],
        [65536, 1536, 0, 100]
    );
    for (size, want) in [
        ("\"65536\"", 65536),
        ("\"10 MB\"", 10_000_000),
        ("\"14\"", 14),
    ] {
        let text = GOOD.replace(
            "priority = 1",
            &format!("priority = 1\nflow_cutoff_bytes = {size}"),
        );
        let c = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{size}: {e}"));
        assert_eq!(c.sessions[0].flow_cutoff_bytes, want, "{size}");
    }
    // A size alone turns on a window's cutoff, so the idle time has an effect.
    let text = scheduled(
        "\n[[session.schedule]]\nhours = \"08:00-12:00\"\nflow_cutoff_bytes = \"4KiB\"\n",
    )
    .replace("priority = 1", "priority = 1\nflow_cutoff_idle = \"5s\"");
    assert!(parse(&text, "t.toml").is_ok());
    // Errors at the value, as the other size keys report theirs.
    let text =
        scheduled("\n[[session.schedule]]\nhours = \"08:00-12:00\"\nflow_cutoff_bytes = \"13B\"\n")
            .replace(
                "priority = 1",
                "priority = 1\nflow_cutoff_bytes = \"64 KiBs\"",
            );
    let line = |key: &str| text.lines().position(|l| l.starts_with(key)).expect("key") + 1;
    assert_eq!(
        errors(&text),
        [
            format!(
                "t.toml:{}:21: session[0].flow_cutoff_bytes (0 = off) = \"64 KiBs\": not a \
                 size: write e.g. \"512MiB\", \"1GiB\" or \"10GB\"",
                line("flow_cutoff_bytes = \"64")
            ),
            format!(
                "t.toml:{}:21: session[0].schedule[0].flow_cutoff_bytes (0 = off) = \"13B\" (13 \
                 bytes) is out of range: accepted values are 0 or 14 to 9223372036854775807 bytes",
                line("flow_cutoff_bytes = \"13B")
            ),
        ]
    );
}

/// A bad `keep` does not hide a `rotate_size` over half the budget, nor a
/// budget too small for two files.
#[test]
fn a_bad_keep_does_not_hide_the_budget_against_the_file_size() {
    for (sizes, want) in [
        (
            "rotate_size = \"1MiB\"\nmax_total_size = \"1MiB\"",
            "rotate_size = \"1MiB\" is more than half of max_total_size",
        ),
        (
            "rotate_size = \"4KiB\"\nmax_total_size = \"4KiB\"",
            "max_total_size = \"4KiB\" holds less than two files",
        ),
    ] {
        let text = GOOD.replace(
            "[[session]]",
            &format!(
                "[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"/tmp/x.pcapng\"\n\
                 {sizes}\nkeep = 1\n\n[[session]]"
            ),
        );
        let e = errors(&text);
        for want in [want, "keep = 1 keeps only the file being written"] {
            assert!(
                e.iter().any(|l| l.contains(want)),
                "want `{want}` in {e:#?}"
            );
        }
    }
}

/// One run of `check` reports every bad key of a pcapng target and of a
/// session, not the first of each.
#[test]
fn every_bad_key_of_a_pcapng_target_and_a_session_is_reported() {
    let text = GOOD
        .replace(
            "[[session]]",
            "[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"/tmp/x.pcapng\"\n\
             rotate_size = \"1\"\nmax_total_size = \"1\"\nkeep = 0\nmin_free = \"150%\"\n\
             rotate_interval = \"soon\"\n\n[[session]]",
        )
        .replace(
            "priority = 1",
            "priority = 1\nsample = 0\npacket_length = 5\nflow_cutoff_bytes = 3\n\
             flow_cutoff_idle = \"never\"\nvni = -1",
        );
    let e = errors(&text);
    for want in [
        "rotate_size = \"1\" is below the minimum",
        "max_total_size = \"1\" is below the minimum",
        "keep = 0 is out of range: accepted values are 2 to 1000000",
        "min_free = \"150%\"",
        "rotate_interval = \"soon\"",
        "sample = 0 is out of range",
        "packet_length (0 = whole frame) = 5 is out of range",
        "flow_cutoff_bytes (0 = off) = 3 is out of range",
        "flow_cutoff_idle = \"never\"",
        "vni = -1 is out of range",
    ] {
        assert!(
            e.iter().any(|l| l.contains(want)),
            "want `{want}` in {e:#?}"
        );
    }
    // A bad path does not hide the target's other keys.
    let e = errors(&GOOD.replace(
        "[[session]]",
        "[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"\"\nmin_free = \"150%\"\n\n[[session]]",
    ));
    for want in ["does not name a file", "min_free = \"150%\""] {
        assert!(
            e.iter().any(|l| l.contains(want)),
            "want `{want}` in {e:#?}"
        );
    }
}

/// The idle time is the session's also when only a window turns a cutoff
/// on; a window that sets the cutoff to 0 (off) does not count.
#[test]
fn flow_cutoff_idle_goes_with_a_cutoff_only_a_window_turns_on() {
    let text = |cut: &str| {
        format!(
            "{}\n[[session.schedule]]\nhours = \"08:00-18:00\"\ntimezone = \"UTC\"\n{cut}\n",
            GOOD.replace("priority = 1", "priority = 1\nflow_cutoff_idle = \"1s\"")
        )
    };
    for cut in ["flow_cutoff_bytes = 100", "flow_cutoff_packets = 3"] {
        let c = parse(&text(cut), "t.toml").unwrap_or_else(|e| panic!("{cut}: {e}"));
        let s = &c.sessions[0];
        assert_eq!(s.flow_cutoff_idle, std::time::Duration::from_secs(1));
        assert_eq!((s.flow_cutoff_bytes, s.flow_cutoff_packets), (0, 0));
    }
    let e = errors(&text("flow_cutoff_bytes = 0"));
    assert!(
        e.iter()
            .any(|l| l.contains("flow_cutoff_idle has no effect")),
        "{e:?}"
    );
}

#[test]
fn unused_targets_and_groups_are_pruned_and_the_rest_renumbered() {
    let text = GOOD.replace(
        "[[session]]",
        "[[target]]\nname = \"a\"\nkind = \"interface\"\ninterface = \"ya\"\n\n\
         [[target]]\nname = \"b\"\nkind = \"gre\"\nremote = \"10.0.0.2\"\n\n\
         [[target]]\nname = \"c\"\nkind = \"interface\"\ninterface = \"yc\"\n\n\
         [[target]]\nname = \"d\"\nkind = \"interface\"\ninterface = \"yd\"\n\n\
         [[target]]\nname = \"e\"\nkind = \"interface\"\ninterface = \"ye\"\n\n\
         [[target_group]]\nname = \"h\"\nmembers = [\"a\"]\n\n\
         [[target_group]]\nname = \"g\"\nmembers = [\"b\", \"c\"]\n\n\
         [[session]]\nname = \"two\"\nsource = \"uplink\"\nfilter = \"ids\"\n\
         targets = [\"g\", \"e\"]\npriority = 2\n\n[[session]]",
    );
    let mut c = parse(&text, "t.toml").expect("valid");
    let names = |c: &Config| -> Vec<String> { c.targets.iter().map(|t| t.name.clone()).collect() };
    assert_eq!(names(&c), ["ids0", "a", "b", "c", "d", "e"]);
    assert_eq!(
        c.prune_unused_targets(),
        ["target group `h`", "target `a`", "target `d`"]
    );
    assert_eq!(names(&c), ["ids0", "b", "c", "e"]);
    assert_eq!(c.groups.len(), 1);
    assert_eq!(
        (c.groups[0].name.as_str(), &c.groups[0].members[..]),
        ("g", &[1, 2][..])
    );
    let two = c.sessions.iter().find(|s| s.name == "two").expect("two");
    assert_eq!(two.targets, [Dest::Group(0), Dest::Target(3)]);
    let feed = c.sessions.iter().find(|s| s.name == "feed").expect("feed");
    assert_eq!(feed.targets, [Dest::Target(0)]);
    // Nothing unused: nothing pruned, nothing moved.
    let mut c = parse(GOOD, "t.toml").expect("valid");
    assert!(c.prune_unused_targets().is_empty());
    assert_eq!(names(&c), ["ids0"]);
}

#[test]
fn a_mirrored_direction_no_accepting_rule_matches_is_named() {
    // GOOD: ingress mirrored, and rule 200 accepts ingress.
    assert!(parse(GOOD, "t.toml")
        .expect("valid")
        .silent_directions()
        .is_empty());
    // Both directions, ingress rules only: egress is silent.
    let both = GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"eth1\"\nmode = \"copy\"\ndirection = \"both\"",
    );
    assert_eq!(
        parse(&both, "t.toml").expect("valid").silent_directions(),
        [
            "source `uplink` mirrors egress frames (direction = \"both\") but no filter of its \
          sessions (`ids`) has an egress rule that accepts: no egress frame is mirrored; add \
          `direction = \"egress\"` rules, or narrow the source's direction"
        ]
    );
    // Only a rejecting ingress rule: ingress is silent too.
    let reject_only = GOOD.replace("action = \"accept\"", "action = \"reject\"");
    let w = parse(&reject_only, "t.toml")
        .expect("valid")
        .silent_directions();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("source `uplink` mirrors ingress frames (direction = \"ingress\")"),
        "{w:?}"
    );
    // A source no session reads says nothing; the other source's filter
    // does not speak for it.
    let two_sources = GOOD.replace(
        "[[filter]]",
        "[[source]]\nname = \"idle\"\ninterface = \"eth3\"\n\n[[filter]]",
    );
    assert!(parse(&two_sources, "t.toml")
        .expect("valid")
        .silent_directions()
        .is_empty());
    let second = two_sources
        .replace("action = \"accept\"", "action = \"reject\"")
        .replace("source = \"uplink\"", "source = \"idle\"");
    let w = parse(&second, "t.toml").expect("valid").silent_directions();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("source `idle` mirrors ingress"), "{w:?}");
}

#[test]
fn a_schedule_window_that_overrides_nothing_is_named() {
    let text = |keys: &str| {
        scheduled(&format!(
            "\n[[session.schedule]]\ndays = \"mon-fri\"\nhours = \"08:00-18:00\"\n\
             timezone = \"UTC\"\n{keys}\n"
        ))
    };
    let w = parse(&text(""), "t.toml").expect("valid").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(
            "schedule window 1 (mon-fri 08:00-18:00 UTC) sets none of enabled, sample, \
             rate_limit_pps, packet_length, flow_cutoff_bytes, flow_cutoff_packets: inside it"
        ),
        "{w:?}"
    );
    assert!(!w[0].contains("  "), "no run of spaces in the text: {w:?}");
    for keys in ["sample = 1", "enabled = true", "flow_cutoff_packets = 0"] {
        let w = parse(&text(keys), "t.toml").expect("valid").warnings();
        assert!(w.is_empty(), "{keys}: {w:?}");
    }
}

#[test]
fn pcapng_sizes_take_a_number_of_bytes_as_flow_cutoff_bytes_does() {
    let pcap = |keys: &str| {
        GOOD.replace(
            "[[session]]",
            &format!("[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"/tmp/x.pcapng\"\n{keys}\n\n[[session]]"),
        )
        .replace("targets = [\"ids0\"]", "targets = [\"ids0\", \"cap\"]")
    };
    let c = parse(
        &pcap("rotate_size = 1073741824\nmax_total_size = 4294967296\nmin_free = 1048576"),
        "t.toml",
    )
    .expect("valid");
    let TargetSpec::Pcapng(p) = &c.targets[1].spec else {
        panic!("pcapng")
    };
    assert_eq!(
        (p.rotate_size, p.max_total_size, p.min_free),
        (Some(1 << 30), Some(4 << 30), Some(MinFree::Bytes(1 << 20)))
    );
    // Messages quote the value as it was written.
    for (keys, want) in [
        (
            "rotate_size = 4095",
            "rotate_size = 4095 is below the minimum of 4096 bytes",
        ),
        (
            "rotate_size = -1",
            "rotate_size = -1: a size cannot be negative",
        ),
        (
            "rotate_size = 1048576\nmax_total_size = \"1MiB\"",
            "rotate_size = 1048576 is more than half of max_total_size = \"1MiB\"",
        ),
        // A floor of a few bytes: a percentage without its `%`, most likely.
        (
            "min_free = \"10\"",
            "min_free = \"10\" is 10 bytes, less than one block of a file system; for a share \
             of the disk write \"10%\", for a size e.g. \"10GiB\" (0 turns it off)",
        ),
        (
            "min_free = 10",
            "min_free = 10 is 10 bytes, less than one block",
        ),
        // No percentage of 100 or more to suggest.
        (
            "min_free = \"1KiB\"",
            "min_free = \"1KiB\" is 1024 bytes, less than one block of a file system; write a \
             size such as \"1GiB\", or a share of the disk such as \"5%\" (0 turns it off)",
        ),
    ] {
        let e = errors(&pcap(keys));
        assert!(e.iter().any(|l| l.contains(want)), "want `{want}` in {e:?}");
    }
    for keys in [
        "min_free = 0",
        "min_free = \"0\"",
        "min_free = 4096",
        "min_free = \"10%\"",
    ] {
        assert!(parse(&pcap(keys), "t.toml").is_ok(), "{keys}");
    }
}

#[test]
fn a_window_of_a_disabled_session_that_does_not_enable_it_is_named() {
    let text = |keys: &str| {
        scheduled(&format!(
            "\n[[session.schedule]]\ndays = \"mon-fri\"\nhours = \"08:00-18:00\"\n\
             timezone = \"UTC\"\n{keys}\n"
        ))
        .replace("priority = 1", "priority = 1\nenabled = false")
    };
    let w = parse(&text("sample = 1"), "t.toml")
        .expect("valid")
        .warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(
            "schedule window 1 (mon-fri 08:00-18:00 UTC) does not set `enabled`, so it keeps \
             the session's `enabled = false` and mirrors nothing"
        ),
        "{w:?}"
    );
    // Enabling it, or disabling it on purpose, is what it says.
    for keys in ["enabled = true\nsample = 1", "enabled = false"] {
        let w = parse(&text(keys), "t.toml").expect("valid").warnings();
        assert!(w.is_empty(), "{keys}: {w:?}");
    }
    // A window that sets nothing gets the one warning it had.
    let w = parse(&text(""), "t.toml").expect("valid").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("sets none of enabled"), "{w:?}");
}

#[test]
fn a_rule_prints_as_toml_keys_with_protocol_names_and_reads_back() {
    let rule = |keys: &str| parse_rule(keys, "rule").expect("valid");
    let full = rule(
        "number = 100\naction = \"reject\"\ndirection = \"ingress\"\nprotocol = \"tcp\"\n\
         source = \"10.0.0.0/8\"\ndestination = \"192.0.2.1/32\"\nsource_port = \"1024-65535\"\n\
         destination_port = 443\nvlan = 7",
    );
    assert_eq!(
        full.to_toml_keys(),
        "number = 100, action = \"reject\", direction = \"ingress\", protocol = \"tcp\", \
         source = \"10.0.0.0/8\", destination = \"192.0.2.1/32\", source_port = \"1024-65535\", \
         destination_port = \"443\", vlan = 7"
    );
    assert_eq!(rule(&full.to_toml_keys().replace(", ", "\n")), full);
    for (p, name) in [
        (6, "\"tcp\""),
        (17, "\"udp\""),
        (1, "\"icmp\""),
        (58, "\"icmpv6\""),
        (132, "\"sctp\""),
        (47, "47"),
    ] {
        let r = rule(&format!(
            "number = 1\naction = \"accept\"\ndirection = \"egress\"\nprotocol = {p}"
        ));
        assert_eq!(
            r.to_toml_keys(),
            format!("number = 1, action = \"accept\", direction = \"egress\", protocol = {name}")
        );
    }
    assert_eq!(
        rule("number = 2\naction = \"accept\"\ndirection = \"ingress\"").to_toml_keys(),
        "number = 2, action = \"accept\", direction = \"ingress\""
    );
}

#[test]
fn reading_on_after_an_error_stops_where_a_line_cannot_be_repaired() {
    let after_rule =
        |extra: &str| GOOD.replace("vlan = 100", &format!("vlan = 100\n{extra}\nnote = 1"));
    let label = "unknown field `label`, expected one of `number`";
    let note = "t.toml:26:1: filter[0].rule[1].note: unknown field `note`";
    // A one-line value is commented out and the reading goes on: `note`
    // is found too.
    for value in ["1", "[1]", "{ a = 1 }"] {
        let e = errors(&after_rule(&format!("label = {value}")));
        assert_eq!(e.len(), 2, "{value}: {e:#?}");
        assert!(
            e[0].starts_with("t.toml:25:1: ") && e[0].contains(label),
            "{e:?}"
        );
        assert!(e[1].starts_with(note), "{value}: {e:?}");
    }
    // Indented: the `#` goes where the key starts, and the columns stay.
    let e = errors(&after_rule("  label = 1"));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("t.toml:25:3: filter[0].rule[1].label: "),
        "{e:?}"
    );
    assert!(e[1].starts_with(note), "{e:?}");
    // A value over several lines is not cut in half: the reading stops.
    for value in ["\"\"\"a\nb\"\"\"", "'''a\nb'''", "[\n1]", "{\na = 1}"] {
        let e = errors(&after_rule(&format!("label = {value}")));
        assert_eq!(e.len(), 1, "{value}: {e:#?}");
        assert!(
            e[0].starts_with("t.toml:25:1: ") && e[0].contains(label),
            "{e:?}"
        );
    }
    // Neither is a table header (even with `=` in its comment), nor a line
    // that starts with a character of several bytes.
    let e = errors(
        &GOOD
            .replace("[[target]]", "[bogus] # a = b\n[[target]]")
            .replace("priority = 1", "priority = 1\nnote = 1"),
    );
    assert_eq!(
        e,
        [
            "t.toml:26:2: bogus: unknown field `bogus`, expected one of `daemon`, `source`, \
          `filter`, `target`, `target_group`, `session`"
        ]
    );
    let e = errors(&after_rule("é = 1"));
    assert_eq!(
        e,
        ["t.toml:25:1: invalid unquoted key, expected letters, numbers, `-`, `_`"]
    );
    // An unknown variant in a string becomes the first variant and the
    // reading goes on; in any other value the line is commented out (a
    // GRE target's `remote` is then not judged as an interface target's).
    let e = errors(
        &GOOD
            .replace("kind = \"interface\"", "kind = \"span\"")
            .replace("priority = 1", "priority = 1\nnote = 1"),
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].contains("target[0].kind: unknown variant `span`"),
        "{e:?}"
    );
    assert!(
        e[1].contains("session[0].note: unknown field `note`"),
        "{e:?}"
    );
    let e = errors(
        &GOOD
            .replace("kind = \"interface\"", "kind = { span = 1 }")
            .replace("interface = \"eth2\"", "remote = \"10.0.0.2\""),
    );
    assert_eq!(
        e,
        [
            "t.toml:28:10: target[0].kind.span: unknown variant `span`, expected one of \
          `interface`, `vxlan`, `gre`, `erspan`, `pcapng`"
        ]
    );
}

#[test]
fn a_window_with_a_bad_value_is_left_out_of_the_overlap_check() {
    // Window 1's value is reported; window 2, which overlaps its hours, is
    // not reported again as overlapping a window that was refused.
    for (key, want) in [
        ("sample = 0", "schedule[0].sample = 0 is out of range"),
        (
            "rate_limit_pps = -1",
            "schedule[0].rate_limit_pps (0 = unlimited) = -1 is out of range",
        ),
        (
            "packet_length = 13",
            "schedule[0].packet_length (0 = whole frame) = 13 is out of range",
        ),
        (
            "flow_cutoff_bytes = -1",
            "schedule[0].flow_cutoff_bytes (0 = off) = -1 is out of range",
        ),
        (
            "flow_cutoff_packets = -1",
            "schedule[0].flow_cutoff_packets (0 = off) = -1 is out of range",
        ),
    ] {
        let e = errors(&scheduled(&format!(
            "\n[[session.schedule]]\nhours = \"08:00-18:00\"\ntimezone = \"UTC\"\n{key}\n\
             [[session.schedule]]\nhours = \"09:00-10:00\"\ntimezone = \"UTC\"\n"
        )));
        assert_eq!(e.len(), 1, "{key}: {e:#?}");
        assert!(e[0].contains(want), "{key}: {e:?}");
    }
    // The same two windows with a good value: the overlap is the error.
    let e = errors(&scheduled(
        "\n[[session.schedule]]\nhours = \"08:00-18:00\"\ntimezone = \"UTC\"\nsample = 2\n\
         [[session.schedule]]\nhours = \"09:00-10:00\"\ntimezone = \"UTC\"\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("window 2 (every day 09:00-10:00 UTC) overlaps window 1"),
        "{e:?}"
    );
}

/// Two pcapng targets may not write one file (they overwrite each other's
/// copies, each counting them written), nor may one write a file named like
/// a rotating one's files (its rotation deletes it); the same stem with
/// another extension, or another directory, is fine.
#[test]
fn two_pcapng_targets_may_not_write_one_file_or_into_ones_rotation() {
    let two = |a: &str, b: &str| {
        GOOD.replace(
            "[[session]]",
            &format!(
                "[[target]]\nname = \"a\"\nkind = \"pcapng\"\n{a}\n\n\
                 [[target]]\nname = \"b\"\nkind = \"pcapng\"\n{b}\n\n[[session]]"
            ),
        )
    };
    for (a, b, want) in [
        (
            "path = \"/tmp/d.pcapng\"",
            "path = \"/tmp/d.pcapng\"",
            "target[2].path: target `b` writes the same file as target `a`",
        ),
        (
            "path = \"/tmp/d.pcapng\"\nrotate_size = \"1MiB\"",
            "path = \"/tmp/./d.pcapng\"\nrotate_interval = \"1h\"",
            "target[2].path: target `b` writes the same file as target `a`",
        ),
        (
            "path = \"/tmp/d.pcapng\"\nrotate_size = \"1MiB\"",
            "path = \"/tmp/d-000001.pcapng\"",
            "target[2].path: target `b` writes a file named like the rotated files of target `a`",
        ),
        (
            "path = \"/tmp/no-such-dir/x/../d.pcapng\"",
            "path = \"/tmp/no-such-dir/d.pcapng\"",
            "target[2].path: target `b` writes the same file as target `a`",
        ),
        (
            "path = \"/tmp/d-0000042.pcapng\"",
            "path = \"/tmp/d.pcapng\"\nrotate_size = \"1MiB\"",
            "target[1].path: target `a` writes a file named like the rotated files of target `b`",
        ),
    ] {
        let e = errors(&two(a, b));
        assert_eq!(e.len(), 1, "{a} / {b}: {e:#?}");
        assert!(e[0].contains(want), "{a} / {b}: {e:?}");
    }
    for (a, b) in [
        ("path = \"/tmp/d.pcapng\"", "path = \"/tmp/e.pcapng\""),
        ("path = \"/tmp/d.pcapng\"", "path = \"/var/tmp/d.pcapng\""),
        (
            "path = \"/tmp/d.pcapng\"\nrotate_size = \"1MiB\"",
            "path = \"/tmp/d.pcap\"\nrotate_size = \"1MiB\"",
        ),
        (
            "path = \"/tmp/d.pcapng\"\nrotate_size = \"1MiB\"",
            "path = \"/tmp/d-1.pcapng\"\nrotate_size = \"1MiB\"",
        ),
        // b rotates: it writes d-000001-NNNNNN.pcapng, never a's names.
        (
            "path = \"/tmp/d.pcapng\"\nrotate_size = \"1MiB\"",
            "path = \"/tmp/d-000001.pcapng\"\nrotate_size = \"1MiB\"",
        ),
    ] {
        assert!(
            parse(&two(a, b), "t.toml").is_ok(),
            "{a} / {b}: {:?}",
            errors(&two(a, b))
        );
    }
}

/// A directory reached through a symbolic link is the directory it links
/// to: two targets writing one file by two names of its directory are
/// refused, also for a directory not made yet under the link.
#[test]
fn two_pcapng_targets_writing_one_file_through_a_symlink_are_refused() {
    let dir = std::env::temp_dir().join(format!("mirror-cfg-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).expect("temp dir");
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).expect("symlink");
    let two = |a: &str, b: &str| {
        GOOD.replace(
            "[[session]]",
            &format!(
                "[[target]]\nname = \"a\"\nkind = \"pcapng\"\npath = \"{}\"\n\n\
                 [[target]]\nname = \"b\"\nkind = \"pcapng\"\npath = \"{}\"\n\n[[session]]",
                dir.join(a).display(),
                dir.join(b).display()
            ),
        )
    };
    let got: Vec<_> = [
        ("real/d.pcapng", "link/d.pcapng"),
        ("real/sub/d.pcapng", "link/sub/d.pcapng"),
    ]
    .into_iter()
    .map(|(a, b)| {
        (
            a,
            b,
            parse(&two(a, b), "t.toml").err().map(|e| e.to_string()),
        )
    })
    .collect();
    std::fs::remove_dir_all(&dir).expect("cleanup");
    for (a, b, e) in got {
        let e = e.unwrap_or_else(|| panic!("{a} / {b}: accepted"));
        assert!(
            e.contains("target `b` writes the same file as target `a`"),
            "{a} / {b}: {e}"
        );
    }
}

/// Errors name windows by their place in the file, also after a window
/// that was refused (which takes no place among the checked ones).
#[test]
fn schedule_errors_number_windows_as_the_file_does_after_a_refused_one() {
    let w = |hours: &str, extra: &str| {
        format!("\n[[session.schedule]]\nhours = \"{hours}\"\ntimezone = \"UTC\"\n{extra}")
    };
    let e = errors(&scheduled(&format!(
        "{}{}{}",
        w("08:00-18:00", "sample = 0\n"),
        w("09:00-10:00", ""),
        w("09:30-11:00", "")
    )));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[1].contains(
            "window 3 (every day 09:30-11:00 UTC) overlaps window 2 (every day 09:00-10:00 UTC)"
        ),
        "{e:?}"
    );
    let e = errors(&scheduled(&format!(
        "{}{}\n[[session.schedule]]\nhours = \"12:00-13:00\"\ntimezone = \"Europe/Berlin\"\n",
        w("08:00-18:00", "sample = 0\n"),
        w("09:00-10:00", ""),
    )));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[1].contains("window 3 is in Europe/Berlin but window 2 is in UTC"),
        "{e:?}"
    );
}

/// The deserializer's errors name their key like the validator's: one a
/// single byte wide (`cpus = 5`), and one whose message merely begins with
/// the key's name (`unknow = 1`: `daemon.unknow: unknown field …`, not the
/// path run into the message, `daemon.unknown field …`). An error about the
/// whole file names no key, also when the file's first byte is in a table.
#[test]
fn errors_name_their_key_whatever_their_width_and_wording() {
    for (text, want) in [
        (
            "[daemon]\ncpus = 5\n",
            "t.toml:2:8: daemon.cpus: invalid type: integer `5`, expected a string",
        ),
        (
            "[daemon]\nunknow = 1\n",
            "t.toml:2:1: daemon.unknow: unknown field `unknow`",
        ),
        (
            "[daemon]\ncontrol_socket = \"/tmp/m.sock\"\n",
            "t.toml:1:1: no [[session]]: nothing would be mirrored",
        ),
    ] {
        let e = errors(text);
        assert!(
            e.iter().any(|l| l.starts_with(want)),
            "want `{want}` in {e:#?}"
        );
    }
}

/// Reading on past an error comments out the erring line only when its
/// value ends there: an array over several lines whose first line holds a
/// `]` is not taken for a one-line value (its next line then got a false
/// `key with no value` error).
#[test]
fn an_array_over_several_lines_is_not_cut_at_a_bracket_of_its_first_line() {
    let text = "[daemon]\ncpus = [[1],\n  2]\n";
    let e = errors(text);
    assert!(
        e.iter().any(|l| l.starts_with("t.toml:2:8: daemon.cpus")),
        "{e:#?}"
    );
    assert!(
        !e.iter().any(|l| l.contains("key with no value")),
        "no false error on the next line: {e:#?}"
    );
    for (value, closes) in [
        ("[[1],", false),
        ("[[1], 2]", true),
        ("[\"]\",", false),
        ("[\"a]\", 'b]']", true),
        ("{ a = [1] ", false),
        ("\"x\" # [", true),
        ("[1] # ]", true),
        // A literal string's brackets do not count either, up to its
        // closing quote (not its first character).
        ("['a [']", true),
        ("'[' # x", true),
        ("['a [', 1", false),
    ] {
        assert_eq!(super::closes_on_its_line(value), closes, "{value}");
    }
}

/// A budget must hold at least two files of `rotate_size`: with one, each
/// rotation would delete the whole record kept so far.
#[test]
fn rotate_size_over_half_of_max_total_size_is_refused_at_its_key() {
    let with = |rotate: &str, budget: &str| {
        format!("{GOOD}{ALL_TARGETS}")
            .replace(
                "rotate_size = \"1GiB\"",
                &format!("rotate_size = \"{rotate}\""),
            )
            .replace(
                "max_total_size = \"500GiB\"",
                &format!("max_total_size = \"{budget}\""),
            )
    };
    let text = with("4MiB", "1MiB");
    let line = text
        .lines()
        .position(|l| l.starts_with("rotate_size"))
        .expect("fixture has rotate_size")
        + 1;
    let e = errors(&text);
    assert!(
        e[0].starts_with(&format!("t.toml:{line}:")),
        "at rotate_size's line {line}: {e:?}"
    );
    assert!(
        e[0].contains("rotate_size = \"4MiB\" is more than half of max_total_size = \"1MiB\"")
            && e[0].contains("at most half of the budget (524288 bytes"),
        "{e:?}"
    );
    assert!(errors(&with("513KiB", "1MiB"))[0].contains("more than half"));
    // A budget too small for two files of the smallest rotate_size says so.
    let e = errors(&with("4KiB", "6KiB"));
    assert!(
        e[0].contains(
            "max_total_size = \"6KiB\" holds less than two files of the smallest rotate_size"
        ),
        "{e:?}"
    );
    // Half of the budget, or less, is fine.
    parse(&with("512KiB", "1MiB"), "t.toml").expect("half the budget");
    parse(&with("256KiB", "1MiB"), "t.toml").expect("a quarter");
}

/// A window's policy is the session's own settings with only the keys the
/// window names replaced: each key falls back to the same key of the
/// session (never another one, never a default), `enabled = false`
/// included.
#[test]
fn a_window_takes_every_key_it_does_not_name_from_the_same_key_of_the_session() {
    let c = parse(
        &scheduled(
            r#"
[[session.schedule]]
hours = "08:00-12:00"
enabled = true
[[session.schedule]]
hours = "12:00-13:00"
flow_cutoff_bytes = 100
[[session.schedule]]
hours = "13:00-14:00"
flow_cutoff_packets = 2
[[session.schedule]]
hours = "14:00-15:00"
sample = 2
"#,
        )
        .replace(
            "priority = 1",
            "priority = 1\nenabled = false\nsample = 4\nrate_limit_pps = 1000\n\
             packet_length = 200\nflow_cutoff_bytes = 5000\nflow_cutoff_packets = 7",
        ),
        "t.toml",
    )
    .expect("valid");
    let s = &c.sessions[0];
    let own = Policy {
        enabled: false,
        sample: 4,
        rate_limit_pps: 1000,
        packet_length: 200,
        flow_cutoff_bytes: 5000,
        flow_cutoff_packets: 7,
    };
    assert_eq!(s.policy(None), own);
    assert_eq!(
        s.policy(Some(0)),
        Policy {
            enabled: true,
            ..own
        }
    );
    assert_eq!(
        s.policy(Some(1)),
        Policy {
            flow_cutoff_bytes: 100,
            ..own
        }
    );
    assert_eq!(
        s.policy(Some(2)),
        Policy {
            flow_cutoff_packets: 2,
            ..own
        }
    );
    assert_eq!(
        s.policy(Some(3)),
        Policy { sample: 2, ..own },
        "a window that does not name `enabled` leaves a disabled session disabled"
    );
    assert_eq!(s.policy(Some(4)), own, "no such window: the session's own");
}
