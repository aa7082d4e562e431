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
	MIRROR_MAX_RULES = 16384,  /* rules per source and direction, all sessions together */
	MIRROR_BITMAP_WORDS = 256, /* MIRROR_MAX_RULES / 64 */
	MIRROR_SUMMARY_WORDS = 4,  /* MIRROR_BITMAP_WORDS / 64 */
	MIRROR_MAX_SESSIONS = 64,  /* sessions per source */
	MIRROR_MAX_QUEUES = 256,   /* RX queues per source (XSKMAP slots) */
	MIRROR_MAX_VLAN_DEPTH = 2, /* 802.1Q / 802.1ad tags walked */
	MIRROR_MAX_IPV6_EXT = 8,   /* IPv6 extension headers walked */
	MIRROR_META_MAGIC = 0x4d52, /* "MR", see struct mirror_meta */
	MIRROR_RULE_SETS = 4,      /* outer map slots: 2 directions x 2 generations */
	MIRROR_DIRECTIONS = 2,     /* enum mirror_direction */
	MIRROR_COPY_MAX = 9216,    /* bytes of a frame a copy-mode record carries at most */
	MIRROR_RING_MIN = 4096,    /* smallest ring buffer (one page) */
	MIRROR_MAX_FAST_TARGETS = 32, /* targets (groups expanded) of one kernel-path session:
					  * the bits of a u32 key mask. A broadcast walks every
					  * bucket of its DEVMAP_HASH, so userspace sizes each of a
					  * session's DEVMAPs to the destinations it holds */
	MIRROR_CACHE_SLOTS = 1024, /* verdict cache entries per rule set and CPU (power of 2) */
	MIRROR_FAST_VARIANTS = 64, /* DEVMAPs per kernel-path session: one per target-group
				    * member picked (up to MIRROR_MAX_FAST_TARGETS), one for
				    * "every member down"; a power of 2 */
	MIRROR_DEST_VERSIONS = 2,  /* versions of a kernel-path session's destinations, see
				    * struct mirror_fast_session */
	MIRROR_FLOWS = 65536,      /* flows a source tracks for flow_cutoff_* (LRU) */
};

/* Where a frame was seen. Counters and rule sets are kept per direction. */
enum mirror_direction {
	MIRROR_DIR_INGRESS = 0,
	MIRROR_DIR_EGRESS = 1,
};

/*
 * Per-source counters, one BPF_MAP_TYPE_PERCPU_ARRAY slot each per direction
 * (slot = direction * MIRROR_CNT_MAX + counter); userspace sums the CPUs.
 * Invariants (checked by tests), per direction:
 *   RECEIVED = MATCHED + FILTERED
 *   MATCHED  = REDIRECTED + DROP_NO_SOCKET          (tap mode)
 *            + COPIED + DROP_RING_FULL + COPY_ERROR (copy mode)
 *            + SAMPLED_OUT + SCHEDULED_OUT + CUTOFF
 *            + the fast path's frames (per session: `session_kernel`)
 * The PARSE_* slots are diagnostics: a frame counts in at most one of them and
 * is still classified on what could be read. COPY_CUT counts copies (also in
 * COPIED) of frames longer than MIRROR_COPY_MAX, e.g. GSO super-frames on egress.
 * CUTOFF_CUT and CUTOFF_WHOLE count mirrored frames (also in the terms above)
 * that crossed their flow's flow_cutoff_bytes (see struct mirror_flow).
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
	MIRROR_CNT_NO_RULE_SET,     /* should never happen: a rule-set map was missing;
				     * the frame was counted FILTERED */
	MIRROR_CNT_SAMPLED_OUT,     /* matched, but skipped by its session's 1-in-N sampling */
	MIRROR_CNT_COPIED,          /* copy mode: a record went into the ring buffer */
	MIRROR_CNT_DROP_RING_FULL,  /* copy mode: no room in the ring buffer (frame passed on) */
	MIRROR_CNT_COPY_ERROR,      /* should never happen: reading the frame into the record failed */
	MIRROR_CNT_COPY_CUT,        /* copy mode: frame longer than MIRROR_COPY_MAX, copy cut */
	MIRROR_CNT_CLASSIFY_SCAN,   /* classified by a bitmap scan: not in the verdict cache */
	MIRROR_CNT_SCHEDULED_OUT,   /* matched, but its session is disabled (enabled = false,
				     * or by its schedule's active window) */
	MIRROR_CNT_CUTOFF,          /* matched, but past its flow's cutoff: not mirrored */
	MIRROR_CNT_CUTOFF_CUT,      /* mirrored, cut where it crossed its flow's byte cutoff */
	MIRROR_CNT_CUTOFF_WHOLE,    /* crossed it where the copy cannot be cut (copy mode's
				     * tcx clones; bpf_xdp_adjust_tail refusing, never
				     * expected): mirrored whole */
	MIRROR_CNT_FLOW_UNTRACKED,  /* should never happen: no flow entry could be made;
				     * the frame was mirrored as if under its cutoff */
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

/*
 * Bit-vector classification (Lakshman & Stiliadis, SIGCOMM '98).
 *
 * A source's rules for one direction are numbered 0..n-1 in evaluation order
 * (sessions by priority, each session's rules by number). For each field the
 * kernel looks up, from the frame's value, the class of that value: the set of
 * rules whose constraint on the field the value satisfies (an unconstrained
 * field is satisfied by everything), as a bitmap with bit i = rule i. ANDing
 * the six field bitmaps gives the rules that match the frame; the lowest set
 * bit is the first match. Each bitmap carries a summary (bit w set when word w
 * has any bit set), so the scan touches only words where every field has a
 * candidate.
 *
 * Field classes come from:
 *   - source / destination address: a multibit trie, one byte per level
 *     (struct mirror_addr_node);
 *   - everything else: slots of the rule set's index array (enum mirror_index).
 *
 * A rule set is the (index array, address trie, bitmap array, verdict cache)
 * in one slot of the four outer maps; slot = direction * 2 + generation. Userspace builds
 * a new set in the idle generation and flips `active_generation`, so every
 * frame is classified by exactly one whole set.
 */

/* Slots of a rule set's index array (u32 values). */
enum mirror_index {
	MIRROR_IX_SPORT = 0,                 /* 65536 ports, then "no ports" */
	MIRROR_IX_DPORT = 65537,             /* 65536 ports, then "no ports" */
	MIRROR_IX_L3 = 131074,               /* family (0 non-IP, 1 IPv4, 2 IPv6) * 257
					      * + protocol (256: unknown) */
	MIRROR_IX_VLAN = 131845,             /* 4096 VLAN ids, then "untagged" */
	MIRROR_IX_SRC_UNKNOWN = 135942,      /* class of a frame without addresses */
	MIRROR_IX_DST_UNKNOWN = 135943,
	MIRROR_IX_WORDS = 135944,            /* bitmap words in use: ceil(n / 64) */
	MIRROR_IX_CONSTANT = 135945,         /* the verdict when no frame field can change
					      * it (see MIRROR_CONST_*), else 0 */
	MIRROR_IX_ROOTS = 135946,            /* the address tries' 4 root nodes (node
					      * field * 2 + IPv6), 256 entries each: a
					      * copy of trie nodes 0..3, read here so
					      * the first level is an inlined lookup */
	MIRROR_IX_RULES = 136970,            /* MIRROR_MAX_RULES rule words, see below */
	MIRROR_IX_SLOTS = 153354,
};

/*
 * MIRROR_IX_CONSTANT: a rule set whose first deciding rule matches every
 * frame (no field constrained: "mirror everything", or sessions that reject
 * everything ahead of one that accepts everything) has one verdict for all
 * frames; the kernel then skips classification.
 */
enum mirror_constant {
	MIRROR_CONST_NONE = 0,     /* classify each frame */
	MIRROR_CONST_NOTHING = 1,  /* no frame is mirrored */
	MIRROR_CONST_SESSION = 2,  /* + s: every frame goes to session s */
};

/*
 * A rule word (index slot MIRROR_IX_RULES + i): what rule i does once it is
 * the first match of its session.
 *   bits 0..15   first rule of the next session (where a reject continues)
 *   bits 16..21  session index
 *   bit  24      accept
 */
enum mirror_rule_word {
	MIRROR_RW_NEXT_MASK = 0xffff,
	MIRROR_RW_SESSION_SHIFT = 16,
	MIRROR_RW_SESSION_MASK = 0x3f,
	MIRROR_RW_ACCEPT = 1 << 24,
};

enum mirror_addr_field {
	MIRROR_ADDR_SRC = 0,
	MIRROR_ADDR_DST = 1,
};

/*
 * A node of the address trie: one entry per value of the address byte at the
 * node's depth. An entry with MIRROR_ADDR_LEAF set holds a class (the rules
 * whose prefix contains that whole range); otherwise the index of the child
 * node for the next byte. Nodes 0..3 are the roots of (field * 2 + is_ipv6).
 */
enum mirror_addr_entry {
	MIRROR_ADDR_LEAF = (int)0x80000000u,
};

struct mirror_addr_node {
	__u32 entry[256];
};

/* A class: the rules a field value satisfies. */
struct mirror_bitmap {
	__u64 summary[MIRROR_SUMMARY_WORDS]; /* bit w: word[w] != 0 */
	__u64 word[MIRROR_BITMAP_WORDS];     /* bit i of word w: rule w * 64 + i */
};

/*
 * The verdict cache: a frame's verdict depends only on its six field classes,
 * so each rule set has a direct-mapped, per-CPU cache (PERCPU_ARRAY of
 * MIRROR_CACHE_SLOTS) from the class tuple to the verdict. A hit replaces the
 * six bitmap lookups and the scan (whose cost grows with the rule count when
 * rules overlap) by one inlined array lookup; a miss scans and fills the slot.
 * The cache is an inner map of the rule set's slot like the others, so a new
 * rule set starts with an empty one and no verdict outlives its rules.
 *
 * Per CPU, so neither locks nor atomics: the programs that share a cache (one
 * source, one direction) never run nested on one CPU (XDP and tcx ingress run
 * in softirq, tcx egress with bottom halves off), so an entry is written
 * whole before anyone on that CPU reads it.
 */
struct mirror_cache_entry {
	__u32 cls[6];  /* the class tuple, in classify()'s field order */
	__s32 session; /* the verdict: accepting session, or -1 */
	__u32 valid;   /* 1 once written */
};

/*
 * Placed in the XDP metadata area in front of every redirected frame. Userspace
 * clears `magic` after reading, so a frame whose driver refused the metadata
 * is never mistaken for one carrying a stale session.
 *
 * `hash` is symmetric: both directions of a flow (addresses and ports swapped)
 * get the same value; it feeds target groups and the VXLAN source port.
 * `tstamp` is bpf_ktime_get_tai_ns() when the program saw the frame.
 */
struct mirror_meta {
	__u16 magic;
	__u16 session; /* | MIRROR_META_SLOT when the frame saw policy slot 1,
			* | MIRROR_META_VERSION (kernel path) */
	__u32 hash;
	__u64 tstamp;
	__u32 orig_len; /* the frame's length before the kernel cut it (its flow's
			 * cutoff), else 0; pcapng records it as the original length */
	__u32 pad;
};

/*
 * A session's policy: everything a schedule window can change, read by every
 * path through one word. Each session has two slots (session * 2 + slot of
 * `session_policy`) and `policy_slot[session]` says which is in force:
 * userspace writes the idle slot whole, then flips the word with one store,
 * so a frame sees the old settings or the new ones, never a mix. Frames that
 * go on to userspace carry the slot they saw (MIRROR_META_SLOT, struct
 * mirror_copy's `slot`), and userspace applies its half of the same slot
 * (rate limit and cut on the AF_XDP path). All zero is a session mirroring
 * every frame whole, unlimited.
 */
struct mirror_policy {
	__u32 disabled;       /* 1: mirrors nothing; counted SCHEDULED_OUT */
	__u32 sample;         /* mirror 1 in N (0 or 1: every frame) */
	__u32 packet_length;  /* cut copies to N bytes (0: whole frame): the kernel
			       * path and copy mode's records */
	__u32 rate_pps;       /* rate_limit_pps (0: none) */
	__u64 rate_interval;  /* the kernel path's limiter: 1 s / rate_pps, ns (0: none) */
	__u64 rate_tolerance; /* and its burst, ns (see rate_buckets) */
	__u64 cutoff_bytes;   /* per-flow cutoff: the first N bytes of each flow
			       * (0: no byte limit) */
	__u64 cutoff_packets; /* and the first N frames (0: no frame limit) */
};

enum mirror_policy_bits {
	MIRROR_POLICY_SLOTS = 2,
	MIRROR_META_SLOT = 0x8000, /* in mirror_meta.session: the frame saw slot 1 */
	MIRROR_META_VERSION = 0x4000, /* and a kernel-path copy went out with version 1
				       * of its session's destinations, which its
				       * tunnel program looks its key up in */
};

/*
 * Copy mode: one ring-buffer record per mirrored frame, the frame's first
 * `cap_len` bytes following this header. Records come in a few fixed sizes
 * (the ring needs a constant size per reservation), so `cap_len` may be less
 * than the record's room.
 */
enum mirror_copy_flags {
	MIRROR_COPY_F_CUT = 1 << 0, /* cap_len < orig_len because of MIRROR_COPY_MAX */
	MIRROR_COPY_F_GSO = 1 << 1, /* a GSO super-frame: the stack will cut it into segments */
	MIRROR_COPY_F_VLAN = 1 << 2, /* the frame's outer tag is in `slot`, not in the data
				      * (tc: the kernel took it out, VLAN acceleration) */
	MIRROR_COPY_F_QINQ = 1 << 3, /* and its TPID is 0x88a8 (802.1ad), not 0x8100 */
};

struct mirror_copy {
	__u16 session;
	__u8 direction; /* enum mirror_direction */
	__u8 flags;     /* enum mirror_copy_flags */
	__u32 ifindex;
	__u32 orig_len; /* length of the whole frame */
	__u32 cap_len;  /* bytes of it that follow */
	__u32 hash;     /* symmetric flow hash, as in struct mirror_meta */
	__u32 slot;     /* bit 0: the policy slot the frame saw (struct mirror_policy);
			 * with MIRROR_COPY_F_VLAN, bits 16-31: the TCI of the outer tag
			 * (TPID 0x8100, or 0x88a8 with MIRROR_COPY_F_QINQ), which
			 * userspace puts back after the MAC addresses (orig_len and
			 * cap_len count the data without it), and bits 1-2: 0, or,
			 * when the flow cutoff cut the frame inside that tag (14 or
			 * 15 bytes of the frame as on the wire), how many of the tag's
			 * bytes the copy keeps (2 or 3; cap_len is then 12: the MAC
			 * addresses). In `slot`: the header's size weighs on the copy
			 * programs' stack. */
	__u64 tstamp;   /* bpf_ktime_get_tai_ns() */
	__u8 data[];
};

/*
 * In-kernel fast path (tap mode). A session whose every target the kernel can
 * serve has DEVMAP_HASHes of those targets in slots of `fast_sessions`
 * (struct mirror_fast_session); xdp_tap redirects the frame to it (one target) or
 * broadcasts it (BPF_F_BROADCAST: one clone per entry) instead of handing it
 * to userspace, counting it per session (struct mirror_fast_count).
 *
 * Per target device (key: egress ifindex), summed over CPUs:
 *   packets     frames handed to the device's XDP transmit; a destination
 *               the kernel skips (frame longer than the device's MTU, device
 *               down) never gets here;
 *   bytes       their bytes (generic XDP only, see below);
 *   xmit_drops  of those, what the device's ndo_xdp_xmit refused;
 *   too_big     frames xdp_tap did not hand it because they are longer than
 *               the device takes (its MTU + Ethernet header + one VLAN tag,
 *               what the kernel's xdp_ok_fwd_dev allows), counted before the
 *               redirect: the kernel would skip them without a trace.
 * Native XDP counts in a tp_btf program on xdp:xdp_devmap_xmit (once per
 * bulk of up to 16 frames, nothing per frame; no bytes). Generic XDP does
 * not fire that tracepoint, so there each DEVMAP entry runs xdp_fast_target
 * (a BPF_XDP_DEVMAP program) that counts packets and bytes per frame, and a
 * refusal is not seen.
 */
struct mirror_fast_stats {
	__u64 packets;
	__u64 bytes;
	__u64 xmit_drops;
	__u64 too_big;
	__u64 no_key; /* tunnel copies xdp_tunnel found no destination for on this
		       * device (a route moving): dropped, in xmit_drops too */
};

/* One destination of a session's fast path, as xdp_tap checks it. */
struct mirror_fast_dest {
	__u32 ifindex; /* for a tunnel its egress device, which also tells xdp_tunnel
			* which of the session's tunnels a copy is for */
	__u32 max_len; /* longest frame the device takes */
};

struct mirror_fast_count {
	__u64 packets;
	__u64 bytes;
};

/*
 * A kernel-path session's settings, written by userspace before its DEVMAPs
 * go into `fast_sessions` (members_up also later, as members come and go).
 *
 * A session reaches its targets through one of up to MIRROR_FAST_VARIANTS
 * DEVMAPs (each in two versions, below), keyed by the target's place in the session (groups expanded): without a
 * target group there is one, variant 0, holding every target. With one
 * group of n members, variant i holds the session's other targets and
 * member i, variant n the other targets alone (every member down). The
 * member is picked as userspace's groups pick it (rendezvous hashing on the
 * flow hash over the members that are up), so both halves of a flow reach
 * the same member and only a down member's flows move.
 *
 * A destination going down or up changes two things, its `dests_down` bit
 * and its DEVMAP entries, and a broadcast sends to whatever entries the
 * DEVMAP holds: a frame between the two would be counted `down` and sent,
 * or neither. So both come in two versions (slot (session *
 * MIRROR_FAST_VARIANTS + variant) * MIRROR_DEST_VERSIONS + version of
 * fast_sessions), `version` says which is in force, and xdp_tap reads it
 * once per frame: userspace changes the idle version, flips `version` with
 * one store, waits an RCU grace period (no program still runs on the old
 * one) and changes the old version the same way.
 */
struct mirror_fast_session {
	__u8 tunnels;     /* 1: xdp_tap writes the metadata its tunnel programs read;
			   * 2: with the time stamp (an ERSPAN III target) */
	__u8 group_n;     /* members of its target group, 0: none */
	__u8 active;      /* 1: the session is on the kernel path (set last) */
	__u8 version;     /* which of the two versions of dests_down and of the
			   * DEVMAPs is in force (see below) */
	__u32 members_up; /* bit i: member i is up */
	__u32 dests_down[MIRROR_DEST_VERSIONS]; /* per version, bit k: destination k
						 * (interface or tunnel) is down or gone
						 * (out of that version's DEVMAPs): its
						 * copies are counted `down` */
	__u8 group_keys[MIRROR_MAX_FAST_TARGETS];   /* DEVMAP key of member i */
	__u32 variant_keys[MIRROR_FAST_VARIANTS];  /* bit k: key k is in the variant */
	__u8 variant_single[MIRROR_FAST_VARIANTS]; /* 1 + its key when the variant has
						    * one destination (a plain redirect,
						    * cheaper than a broadcast), else 0 */
};

/* Per kernel-path destination (slot session * MIRROR_MAX_FAST_TARGETS + key):
 * a group member's picks, any destination's `down`. */
struct mirror_pick_count {
	__u64 packets;      /* group member: copies sent to it */
	__u64 bytes;
	__u64 down;         /* not sent: a member picked while every member was down,
			     * or a destination whose device is down or gone */
	__u64 rate_limited; /* picked, then over the session's rate limit */
};

/* A kernel-path session's rate limiter state (see rate_buckets in
 * mirror.bpf.c); its interval and tolerance are in the session's policy. */
struct mirror_rate {
	__u64 tat; /* CLOCK_MONOTONIC ns the next frame is due; 0: never limited yet */
};

/* Per kernel-path session with a target group. */
struct mirror_group_count {
	__u64 rehashed; /* first choice down: another member took the flow */
	__u64 all_down; /* every member down */
};

/*
 * In-kernel tunnels (tap mode). A VXLAN, GRE or ERSPAN target of a
 * kernel-path session is a DEVMAP entry whose device is the route's egress
 * device toward the collector and whose program is xdp_tunnel. xdp_tap puts
 * the session, flow hash and time stamp in the frame's XDP metadata (struct
 * mirror_meta); xdp_tunnel reads them, finds the target's key K (its place in
 * the session) from the copy's egress device, which no other target of the
 * source uses, cuts the copy to `max_inner`, pushes the outer
 * headers userspace prepared in slot session * MIRROR_MAX_FAST_TARGETS + K of
 * `tunnels` and fills in what changes per copy: IP length, ID and checksum,
 * the VXLAN source port (from the flow hash) and, over IPv6, its UDP checksum
 * (over the whole copy, see payload_sum in tunnel.h), the ERSPAN sequence number,
 * VLAN/COS/T bits and time stamp. The device then sends it.
 */
enum mirror_tunnel_kind {
	MIRROR_TUN_NONE = 0, /* slot unused: a copy sent here is counted `errors` */
	MIRROR_TUN_VXLAN = 1,
	MIRROR_TUN_GRE = 2,
	MIRROR_TUN_ERSPAN2 = 3,
	MIRROR_TUN_ERSPAN3 = 4,
};

enum mirror_tunnel_flags {
	MIRROR_TUN_F_IPV6 = 1 << 0,     /* the outer header is IPv6 (else IPv4) */
	MIRROR_TUN_F_DOWN = 1 << 1,     /* no route or neighbour to the collector:
					 * copies are dropped, counted `down` */
	MIRROR_TUN_F_NANOS100 = 1 << 2, /* ERSPAN III granularity 100 ns (else 100 us) */
};

enum mirror_tunnel_limits {
	MIRROR_TUN_HDR_MAX = 80, /* Ethernet + IPv6 + GRE with sequence + ERSPAN III = 74 */
};

struct mirror_tunnel {
	__u8 kind;        /* enum mirror_tunnel_kind */
	__u8 flags;       /* enum mirror_tunnel_flags */
	__u16 hdr_len;    /* bytes of hdr: Ethernet + IP + tunnel header */
	__u16 max_inner;  /* longest copy carried whole; longer ones are cut to it */
	__u16 reserved;
	__u32 ip_csum;    /* IPv4: one's-complement sum of the IP header's 16-bit
			   * words as stored, with total length, ID and checksum 0 */
	__u32 ifindex;    /* the egress device toward the next hop (copy mode's
			   * relay sends there; tap mode's DEVMAP entry holds it) */
	__u64 tai_offset; /* ERSPAN III: CLOCK_TAI - CLOCK_REALTIME, ns */
	__u8 hdr[MIRROR_TUN_HDR_MAX]; /* the outer headers with every fixed field set */
	__u32 udp_csum;   /* VXLAN over IPv6: one's-complement sum of the UDP checksum's
			   * fixed 16-bit words as stored: the pseudo-header's addresses
			   * and next header, the destination port, the VXLAN header
			   * (source port, lengths and the copy are added per copy) */
	__u32 reserved2;
};

/* Per tunnel slot, summed over CPUs. */
struct mirror_tunnel_stats {
	__u64 packets;   /* encapsulated and handed to the device */
	__u64 bytes;     /* their mirrored bytes (the copy, without the outer headers) */
	__u64 truncated; /* of the packets, cut to max_inner */
	__u64 down;      /* dropped: MIRROR_TUN_F_DOWN */
	__u64 errors;    /* dropped: no metadata, no headroom, empty slot (never expected) */
};

/*
 * Copy mode's kernel path (tcx only). A copy-mode session whose targets are
 * all local interfaces has them in `clone_dests[session]` (set by userspace
 * before the tcx programs attach); tc_copy_ingress / tc_copy_egress then
 * clone each frame the session mirrors to each of them with
 * bpf_clone_redirect (the target device's egress, the skb clone tc mirred
 * sends) instead of writing a ring-buffer record, and pass the frame itself
 * on untouched. XDP cannot clone a frame and let it pass, so such a source's
 * ingress is hooked at tcx. A GSO super-frame is cloned whole: the target
 * device (or the stack for it) segments it on transmit.
 *
 * Counted where it happens: the session's frames in `session_kernel` and
 * the direction's in `clone_dir`, before the clones; then each destination
 * ends every frame in exactly one of its `struct mirror_clone_stats`
 * counters (slot session * MIRROR_MAX_FAST_TARGETS + destination).
 */
struct mirror_clone_dest {
	__u32 ifindex;
	__u32 max_len; /* longest frame the device takes (MTU + Ethernet + one VLAN tag);
			* a longer one that is not GSO is counted too_big, not cloned */
	__u32 down;    /* 1 while userspace sees the device down or gone: counted
			* `down`, not cloned (the kernel would report a clone its
			* down device discards as sent) */
	__u32 tunnel;  /* 1: a tunnel target; `ifindex` is the source's relay
			* device (see below) */
};

/*
 * Copy mode's kernel tunnels. A tunnel destination's clone goes to the
 * source's relay, a TAP device the daemon holds open (deleted by the kernel
 * when the daemon dies), with skb->mark = MIRROR_RELAY_MAGIC << 16 |
 * policy slot << 12 | direction << 11 | session << 5 | destination (the
 * MIRROR_RELAY_* shifts below) and
 * skb->priority = the symmetric flow hash
 * (both restored on the frame itself right after the clone: it leaves as it
 * came). tc_relay, at the relay's tcx egress, takes every clone before the
 * TAP driver: it reads the tunnel slot (struct mirror_tunnel, the same as tap
 * mode's), cuts the copy to packet_length / max_inner, pushes and fills the
 * outer headers as the XDP tunnel programs do, and clones it to the egress
 * device toward the collector (`ifindex` of the slot); the copy itself is
 * then dropped, never queued to the TAP. Its outcome is counted in the
 * slot's struct mirror_tunnel_stats; a frame without the mark (IPv6 noise of
 * the device, never expected) in `relay_foreign`.
 */
enum mirror_relay {
	MIRROR_RELAY_MAGIC = 0x4d54, /* "MT" */
	MIRROR_RELAY_SESSION_SHIFT = 5,  /* the destination below: log2(MIRROR_MAX_FAST_TARGETS) */
	MIRROR_RELAY_DIR_SHIFT = 11,     /* the session below: log2(MIRROR_MAX_SESSIONS) more */
	MIRROR_RELAY_PSLOT_SHIFT = 12,
	MIRROR_RELAY_MAGIC_SHIFT = 16,
};

/* Per destination slot, summed over CPUs. A tunnel destination's `packets`
 * and `bytes` are the clones handed to the relay, whose tunnel_stats slot
 * then counts what became of each. */
struct mirror_clone_stats {
	__u64 packets; /* clones the device took (bpf_clone_redirect returned 0) */
	__u64 bytes;   /* their bytes, with an outer VLAN tag the kernel holds
			* outside the data (tc): the clone carries it */
	__u64 too_big; /* not cloned: longer than the device takes, and not GSO;
			* to a tunnel: a GSO super-frame (never cut silently) */
	__u64 down;    /* not cloned: `down` set; or the kernel said -ENETDOWN */
	__u64 errors;  /* bpf_clone_redirect failed otherwise: no such device, no
			* memory, the device's queue dropped it (-ENOBUFS) */
};

/*
 * Per-flow cutoff (session keys flow_cutoff_bytes / flow_cutoff_packets,
 * also in schedule windows): a session mirrors only the first
 * `cutoff_bytes` bytes and `cutoff_packets` frames of each flow, both
 * directions together, counted over the frames its sampling keeps. The
 * limits are the policy's (struct mirror_policy: the slot the frame saw);
 * per session here only the idle timeout: a flow not seen for `idle_ns`
 * starts over.
 */
struct mirror_cutoff {
	__u64 idle_ns;
};

/*
 * A flow, as the cutoff tracks it (LRU hash `flows`, per source): both
 * directions meet because the endpoints are stored in order, the lower
 * (address, port) first. IP frames: addresses, ports (TCP/UDP/SCTP; else 0,
 * also for non-first fragments), protocol. Frames without IP addresses
 * (ARP, LLDP, a truncated IP header): the MAC pair, family 0.
 */
struct mirror_flow_key {
	__u32 lo[4];    /* the lower endpoint's address (IPv4: lo[0]; MAC: 6 bytes) */
	__u32 hi[4];
	__u16 lo_port;
	__u16 hi_port;
	__u16 vlan;     /* outer VLAN id | 0x8000, or 0: untagged */
	__u8 proto;
	__u8 family;    /* 0: MAC pair, 4: IPv4, 6: IPv6 */
	__u32 session;  /* kernel session index: each session counts its own */
};

/* What a flow has sent since it (re)started, updated with atomics so that
 * every CPU agrees on each frame's place in the flow. */
struct mirror_flow {
	__u64 bytes;     /* frame bytes seen (the frame crossing the cutoff whole) */
	__u64 packets;   /* frames seen */
	__u64 last_seen; /* bpf_ktime_get_ns() of its latest frame */
};

/* Per session, summed over CPUs: see MIRROR_CNT_CUTOFF*. */
struct mirror_cutoff_count {
	__u64 cutoff;
	__u64 cut;
	__u64 whole;
};

#endif /* MIRROR_ABI_H */
