/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The ABI shared by the kernel programs and the `mirror` daemon, defined once.
 *
 * Userspace never hand-copies these: libbpf-cargo generates Rust types from the
 * BTF of the compiled object (see mirror-ebpf/build.rs), and the `abi_anchor`
 * globals in mirror.bpf.c make sure every type here reaches that BTF.
 */
#ifndef MIRROR_ABI_H
#define MIRROR_ABI_H

#include <linux/types.h>

/*
 * Bounds, shared so userspace can reject a config before it reaches a map.
 * An enum rather than #defines so they reach the BTF, and so the Rust side.
 */
enum mirror_limits {
	MIRROR_MAX_RULES = 1024,   /* rules per source, all sessions together */
	MIRROR_MAX_SESSIONS = 64,  /* sessions per source */
	MIRROR_MAX_QUEUES = 256,   /* RX queues per source (XSKMAP slots) */
	MIRROR_MAX_VLAN_DEPTH = 2, /* 802.1Q / 802.1ad tags walked */
	MIRROR_MAX_IPV6_EXT = 8,   /* IPv6 extension headers walked */
	MIRROR_META_MAGIC = 0x4d52, /* "MR", see struct mirror_meta */
};

/*
 * Per-source counters, one BPF_MAP_TYPE_PERCPU_ARRAY slot each; userspace sums
 * the CPUs. Invariants (checked by tests):
 *   RECEIVED = MATCHED + FILTERED
 *   MATCHED  = REDIRECTED + DROP_NO_SOCKET
 * The PARSE_* slots are diagnostics: a frame counts in at most one of them and
 * is still classified on what could be read.
 */
enum mirror_counter {
	MIRROR_CNT_RECEIVED = 0,
	MIRROR_CNT_MATCHED,
	MIRROR_CNT_FILTERED,
	MIRROR_CNT_REDIRECTED,      /* handed to the XSKMAP slot of the RX queue */
	MIRROR_CNT_DROP_NO_SOCKET,  /* matched, but no AF_XDP socket on that queue */
	MIRROR_CNT_PARSE_NON_IP,    /* not IPv4/IPv6 after the VLAN tags */
	MIRROR_CNT_PARSE_TRUNCATED, /* a header ran past the end of the frame */
	MIRROR_CNT_PARSE_BAD_HEADER,/* IPv4 IHL < 5, bad version, ... */
	MIRROR_CNT_PARSE_EXT_LIMIT, /* IPv6 extension chain longer than the bound */
	MIRROR_CNT_PARSE_VLAN_LIMIT,/* more VLAN tags than the bound */
	MIRROR_CNT_FRAGMENT,        /* non-first IP fragment (no ports) */
	MIRROR_CNT_MAX,
};

/* What the parser could read; classification uses only what is set here. */
enum mirror_parse_flags {
	MIRROR_PF_VLAN = 1 << 0,  /* outer VLAN id known */
	MIRROR_PF_IPV4 = 1 << 1,
	MIRROR_PF_IPV6 = 1 << 2,
	MIRROR_PF_ADDRS = 1 << 3, /* source and destination addresses read */
	MIRROR_PF_PROTO = 1 << 4, /* L4 protocol known */
	MIRROR_PF_PORTS = 1 << 5, /* source and destination ports read */
};

enum mirror_action {
	MIRROR_ACTION_ACCEPT = 1,
	MIRROR_ACTION_REJECT = 2,
};

/* Which fields a rule constrains; an unset bit means "any". */
enum mirror_rule_match {
	MIRROR_RM_PROTO = 1 << 0,
	MIRROR_RM_SRC = 1 << 1,
	MIRROR_RM_DST = 1 << 2,
	MIRROR_RM_SPORT = 1 << 3,
	MIRROR_RM_DPORT = 1 << 4,
	MIRROR_RM_VLAN = 1 << 5,
	MIRROR_RM_IPV4 = 1 << 6, /* the rule's CIDRs are IPv4: never matches IPv6 */
	MIRROR_RM_IPV6 = 1 << 7, /* the rule's CIDRs are IPv6: never matches IPv4 */
};

/*
 * One filter rule, already placed in evaluation order by userspace: sessions by
 * priority, then each session's rules by number. Addresses are 16 bytes, IPv4
 * in the first 4, network byte order; masks likewise. Ports in host order.
 */
struct mirror_rule {
	__u8 src_addr[16];
	__u8 src_mask[16];
	__u8 dst_addr[16];
	__u8 dst_mask[16];
	__u16 sport_lo;
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u16 vlan;
	__u16 fields;  /* enum mirror_rule_match: which fields are constrained */
	__u8 proto;
	__u8 action;   /* enum mirror_action */
	__u8 session;  /* index into the source's sessions, < MIRROR_MAX_SESSIONS */
	__u8 pad;
};

/*
 * Placed in the XDP metadata area in front of every redirected frame. Userspace
 * clears `magic` after reading, so a frame whose driver refused the metadata
 * is never mistaken for one carrying a stale session.
 */
struct mirror_meta {
	__u16 magic;
	__u16 session;
};

#endif /* MIRROR_ABI_H */
