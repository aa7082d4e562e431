// SPDX-License-Identifier: GPL-2.0-only
/*
 * mirror: kernel side of tap-mode sources.
 *
 * xdp_tap runs on a SPAN/TAP feed port. Every frame is parsed, classified
 * against the source's ingress rule set (classify.h: sessions by priority,
 * each session's rules by number, first match decides), and either
 * redirected into the AF_XDP socket of its RX queue with the matching session
 * in the XDP metadata, or dropped: a feed port's frames have nowhere else to go. Every outcome is counted.
 *
 * xdp_copy (ingress) and tc_copy_egress / tc_copy_ingress (tcx) run on a live
 * interface in copy mode: the same classification, then a copy of the frame
 * goes into the `copies` ring buffer and the frame itself always passes on
 * (XDP_PASS, TC_ACT_UNSPEC: the next tcx program or the default action).
 * Ring full, parse trouble or a missing map never stop the frame: fail open.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "abi.h"
#include "parse.h"
#include "classify.h"
#include "flowhash.h"
#include "tunnel.h"

char LICENSE[] SEC("license") = "GPL";

/* One AF_XDP socket per RX queue of the source. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MIRROR_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/*
 * In-kernel fast path: slot (session * MIRROR_FAST_VARIANTS + variant) *
 * MIRROR_DEST_VERSIONS + version holds a DEVMAP_HASH of that session's
 * destinations (keyed by destination index; see struct
 * mirror_fast_session); an empty slot means the session goes through
 * userspace. This is the template: userspace sizes each inner map to
 * the destinations it holds (the kernel checks an inner DEVMAP's type, key,
 * value and flags against it, not its size), as a broadcast walks every
 * bucket.
 */
struct fast_targets {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__uint(value_size, sizeof(struct bpf_devmap_val));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_FAST_VARIANTS * MIRROR_DEST_VERSIONS);
	__type(key, __u32);
	__array(values, struct fast_targets);
} fast_sessions SEC(".maps");

/* Kernel path: what each group member was picked for (struct mirror_pick_count). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__type(value, struct mirror_pick_count);
} fast_picks SEC(".maps");

/* Kernel path: per session, its group's rehashed / all-down copies. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct mirror_group_count);
} fast_groups SEC(".maps");

/* Kernel path: per session, frames over its rate_limit_pps (not sent). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} session_rate_limited SEC(".maps");

/*
 * Kernel path: each rate-limited session's limiter, shared by all CPUs (so
 * the limit holds for the session as a whole): GCRA, the token bucket's
 * equivalent with one word of state, the theoretical arrival time `tat` of
 * the next frame, advanced by `interval` (1 s / rate) per frame passed; a
 * frame passes when it is no more than `tolerance` ((burst - 1) intervals,
 * burst = a tenth of a second's worth, at least 1) ahead of it. Interval and
 * tolerance are the session's policy's (struct mirror_policy), so a schedule
 * window changes the rate, not the state. Updated by compare-and-swap: no
 * lock, no interrupts turned off.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct mirror_rate);
} rate_buckets SEC(".maps");

/* Fast-path counters per target device (egress ifindex), entries made by
 * userspace: room for every session's targets. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__type(value, struct mirror_fast_stats);
} fast_stats SEC(".maps");

/* Frames and bytes each session sent down the fast path, indexed by session. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct mirror_fast_count);
} session_kernel SEC(".maps");

/*
 * In-kernel tunnels: the outer headers of each tunnel target of a kernel-path
 * session, slot session * MIRROR_MAX_FAST_TARGETS + K (K: the target's DEVMAP
 * key), written by userspace (again whenever the next hop changes).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__type(value, struct mirror_tunnel);
} tunnels SEC(".maps");

/* Per tunnel slot: what its program did with the copies it was given. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__type(value, struct mirror_tunnel_stats);
} tunnel_stats SEC(".maps");

/* Per tunnel slot: the next ERSPAN sequence number, shared by all CPUs so
 * numbers are unique and increasing per target. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__type(value, __u64);
} tunnel_seq SEC(".maps");

/* Indexed by direction * MIRROR_CNT_MAX + enum mirror_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_DIRECTIONS * MIRROR_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Frames accepted by each session, indexed by session. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} session_matched SEC(".maps");

/* Matched frames left out because the session is disabled (enabled = false
 * or its schedule's active window), indexed by session. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} session_scheduled_out SEC(".maps");

/* Matched frames skipped by their session's sampling, indexed by session. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} session_sampled_out SEC(".maps");

/*
 * Per-flow cutoff: what each flow of a session with flow_cutoff_* sent
 * (struct mirror_flow). LRU: when full, the least recently seen flow is
 * forgotten (and starts over if it comes back). Sized by userspace before
 * load (one entry when no session of the source has a cutoff).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MIRROR_FLOWS);
	__type(key, struct mirror_flow_key);
	__type(value, struct mirror_flow);
} flows SEC(".maps");

/* Per session: frames past their flow's cutoff, and boundary frames. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct mirror_cutoff_count);
} session_cutoff_count SEC(".maps");

/*
 * Copy mode: records (struct mirror_copy + frame bytes) for userspace. Sized
 * per source by userspace before load (`ring_buffer`); one page in tap mode.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MIRROR_RING_MIN);
} copies SEC(".maps");

/*
 * Each session's two policy slots and the word that picks one (see struct
 * mirror_policy), written by userspace: whole before the programs attach,
 * then at each schedule edge (the idle slot, then the word).
 */
struct mirror_policy session_policy[MIRROR_MAX_SESSIONS * MIRROR_POLICY_SLOTS];
__u32 policy_slot[MIRROR_MAX_SESSIONS];
/*
 * Per-session 1-in-N sampling (the policy's `sample`): the sequence is one
 * shared atomic per session rather than per CPU, so exactly ceil(matched / N)
 * frames are mirrored whatever CPU and direction they arrive on; it is
 * touched only by sessions that sample.
 */
__u64 session_sample_seq[MIRROR_MAX_SESSIONS];
/* Where flow_cutoff builds a new flow's entry (per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct mirror_flow);
	__uint(max_entries, 1);
} flow_scratch SEC(".maps");
/* Per-flow cutoff's idle timeout of each session, set by userspace before
 * the program is attached (the limits are in the policy). */
struct mirror_cutoff session_cutoff[MIRROR_MAX_SESSIONS];
/*
 * Copy mode: wake the reader each time the bytes waiting in the ring reach
 * another multiple of this (it also polls every millisecond; see
 * wake_flags); 0 = the ring's default (wake whenever the reader had caught
 * up). Batches wake-ups under load.
 */
__u64 copy_wake_bytes;
/* The source's ifindex and its network namespace (the inode number of
 * /proc/self/ns/net), for telling its fast-path transmits from others':
 * ifindexes repeat across namespaces. */
__u32 source_ifindex;
__u32 source_netns;
/* Fast path: each session's settings (see struct mirror_fast_session). */
struct mirror_fast_session fast_session[MIRROR_MAX_SESSIONS];
/* Copies a tunnel program got without metadata (a driver without an XDP
 * metadata area): dropped, as no session can be told. Never expected. */
__u64 tunnel_no_meta;
/* Fast path: the session's destinations, and the longest frame all of them
 * take: a frame longer than that is checked against each, and counted
 * too_big where the kernel would skip it (one comparison per frame
 * otherwise). */
struct mirror_fast_dest fast_dests[MIRROR_MAX_SESSIONS][MIRROR_MAX_FAST_TARGETS];
__u32 fast_ndests[MIRROR_MAX_SESSIONS];
__u32 fast_max_len[MIRROR_MAX_SESSIONS];

/* Keep every ABI type in the object's BTF, so the skeleton generates it for Rust. */
struct mirror_meta abi_anchor_meta = {};
enum mirror_counter abi_anchor_counter = MIRROR_CNT_MAX;
enum mirror_limits abi_anchor_limits = MIRROR_MAX_RULES;
enum mirror_parse_flags abi_anchor_parse_flags = MIRROR_PF_VLAN;
enum mirror_index abi_anchor_index = MIRROR_IX_SLOTS;
enum mirror_constant abi_anchor_constant = MIRROR_CONST_NONE;
enum mirror_rule_word abi_anchor_rule_word = MIRROR_RW_ACCEPT;
enum mirror_addr_field abi_anchor_addr_field = MIRROR_ADDR_SRC;
enum mirror_direction abi_anchor_direction = MIRROR_DIR_INGRESS;
enum mirror_copy_flags abi_anchor_copy_flags = MIRROR_COPY_F_CUT;
struct mirror_copy abi_anchor_copy = {};
struct mirror_fast_stats abi_anchor_fast_stats = {};
struct mirror_fast_count abi_anchor_fast_count = {};
struct mirror_fast_dest abi_anchor_fast_dest = {};
struct mirror_cache_entry abi_anchor_cache_entry = {};
struct mirror_tunnel abi_anchor_tunnel = {};
struct mirror_pick_count abi_anchor_pick_count = {};
struct mirror_group_count abi_anchor_group_count = {};
struct mirror_rate abi_anchor_rate = {};
struct mirror_policy abi_anchor_policy = {};
enum mirror_policy_bits abi_anchor_policy_bits = MIRROR_POLICY_SLOTS;
struct mirror_tunnel_stats abi_anchor_tunnel_stats = {};
enum mirror_tunnel_kind abi_anchor_tunnel_kind = MIRROR_TUN_NONE;
enum mirror_tunnel_flags abi_anchor_tunnel_flags = MIRROR_TUN_F_IPV6;
enum mirror_tunnel_limits abi_anchor_tunnel_limits = MIRROR_TUN_HDR_MAX;
struct mirror_cutoff abi_anchor_cutoff = {};
struct mirror_flow_key abi_anchor_flow_key = {};
struct mirror_flow abi_anchor_flow = {};
struct mirror_cutoff_count abi_anchor_cutoff_count = {};

/* Keeps the compiler from merging or reordering range checks on `var`. */
#define barrier_var(var) asm volatile("" : "+r"(var))

static __always_inline void count(__u32 dir, __u32 counter)
{
	__u32 idx = dir * MIRROR_CNT_MAX + counter;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline void count_session(void *map, __u32 session)
{
	__u64 *v = bpf_map_lookup_elem(map, &session);

	if (v)
		*v += 1;
}

/* True when 1-in-`n` sampling skips this frame of the session. */
static __always_inline bool sampled_out(__u32 session, __u32 n)
{
	if (session >= MIRROR_MAX_SESSIONS)
		return false;
	if (n <= 1)
		return false;
	return __sync_fetch_and_add(&session_sample_seq[session], 1) % n != 0;
}

/* The policy in force for a frame of `session`: one read of its slot word,
 * so everything after sees one whole slot. */
static __always_inline const struct mirror_policy *policy_of(__u32 session, __u32 *slot)
{
	__u32 s = session & (MIRROR_MAX_SESSIONS - 1);
	__u32 i = *(volatile __u32 *)&policy_slot[s] & (MIRROR_POLICY_SLOTS - 1);

	*slot = i;
	return &session_policy[s * MIRROR_POLICY_SLOTS + i];
}

/* The per-flow cutoff's idle timeout of session `session` (its limits are
 * the policy's: a schedule window may change them). */
static __always_inline __u64 cutoff_idle_ns(__u32 session)
{
	return session_cutoff[session & (MIRROR_MAX_SESSIONS - 1)].idle_ns;
}

/* True when endpoint (a, ap) sorts before (b, bp). */
static __always_inline bool endpoint_less(const __u32 a[4], __u16 ap, const __u32 b[4], __u16 bp)
{
	for (int i = 0; i < 4; i++)
		if (a[i] != b[i])
			return a[i] < b[i];
	return ap < bp;
}

/* A frame's first bytes, destination then source MAC: the flow of a frame
 * without IP addresses. */
struct mac_pair {
	__u8 b[2 * ETH_ALEN];
};

/* The flow of the frame `p` and `macs` describe, in session `session`, the
 * same for both directions (struct mirror_flow_key). */
static __always_inline void flow_key(struct mirror_flow_key *k, const struct pkt *p,
				     const struct mac_pair *macs, __u32 session)
{
	__u32 a[4] = {}, b[4] = {};
	__u16 ap = 0, bp = 0;

	if (p->flags & MIRROR_PF_ADDRS) {
		__builtin_memcpy(a, p->src, sizeof(a));
		__builtin_memcpy(b, p->dst, sizeof(b));
		if (p->flags & MIRROR_PF_PORTS) {
			ap = p->sport;
			bp = p->dport;
		}
		k->proto = p->proto;
		k->family = (p->flags & MIRROR_PF_IPV6) ? 6 : 4;
	} else {
		__builtin_memcpy(a, macs->b + ETH_ALEN, ETH_ALEN);
		__builtin_memcpy(b, macs->b, ETH_ALEN);
	}
	if (endpoint_less(b, bp, a, ap)) {
		__builtin_memcpy(k->lo, b, sizeof(b));
		__builtin_memcpy(k->hi, a, sizeof(a));
		k->lo_port = bp;
		k->hi_port = ap;
	} else {
		__builtin_memcpy(k->lo, a, sizeof(a));
		__builtin_memcpy(k->hi, b, sizeof(b));
		k->lo_port = ap;
		k->hi_port = bp;
	}
	if (p->flags & MIRROR_PF_VLAN)
		k->vlan = 0x8000 | p->vlan;
	k->session = session;
}

/*
 * The per-flow cutoff of a frame of `len` bytes (parsed into `p`, its MACs
 * in `macs`) that session `session` mirrors: how many of its bytes to mirror (`len`: all; less: cut
 * where it crosses flow_cutoff_bytes) or 0 (past the cutoff, counted). Each
 * frame takes its place in the flow with one atomic add, so CPUs agree on
 * which frames are the first N. A boundary frame with less than an Ethernet
 * header left to keep is past the cutoff (XDP cannot cut a frame shorter).
 * A flow idle for longer than idle_ns starts over; a frame of it racing the
 * restart on another CPU may count in the old run.
 *
 * A global function: the verifier checks it once, not once per path of
 * every program that reaches it (xdp_tap's count is close to the limit).
 */
__noinline __u32 flow_cutoff(const struct pkt *p, const struct mac_pair *macs, __u32 session,
			     __u32 dir_slot, __u32 len)
{
	/* Five arguments at most: the direction (bit 0) and the policy slot the
	 * frame saw (above it) share one, so the limits are that slot's. */
	__u32 dir = dir_slot & 1;
	const struct mirror_policy *pol =
		&session_policy[(session & (MIRROR_MAX_SESSIONS - 1)) * MIRROR_POLICY_SLOTS +
				((dir_slot >> 1) & (MIRROR_POLICY_SLOTS - 1))];
	__u64 max_bytes = pol->cutoff_bytes, max_packets = pol->cutoff_packets;
	__u64 idle_ns = cutoff_idle_ns(session);
	struct mirror_flow_key k;
	struct mirror_flow *e;
	__u64 now, last, prev, packets;

	if (!p || !macs)
		return len; /* cannot happen: the callers pass their stack */
	__builtin_memset(&k, 0, sizeof(k));
	flow_key(&k, p, macs, session);
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&flows, &k);
	if (!e) {
		/* This CPU's scratch entry, not the stack: this function's stack
		 * adds to every caller's, which is near the limit. */
		struct mirror_flow *fresh = bpf_map_lookup_elem(&flow_scratch, &(__u32){ 0 });

		if (!fresh)
			return len; /* cannot happen: a one-entry array */
		fresh->bytes = 0;
		fresh->packets = 0;
		fresh->last_seen = now;
		/* Another CPU may have made it meanwhile: then theirs counts. */
		bpf_map_update_elem(&flows, &k, fresh, BPF_NOEXIST);
		e = bpf_map_lookup_elem(&flows, &k);
		if (!e) {
			count(dir, MIRROR_CNT_FLOW_UNTRACKED);
			return len;
		}
	}
	last = e->last_seen;
	if (idle_ns && now > last && now - last > idle_ns) {
		/* Idle: the CPU that moves last_seen on starts the flow over. */
		if (__sync_val_compare_and_swap(&e->last_seen, last, now) == last) {
			e->bytes = 0;
			e->packets = 0;
		}
	} else if (now > last) {
		e->last_seen = now;
	}
	/* Both totals count whichever limit is on, so a window that switches
	 * from one kind of limit to the other finds the flow's whole count. */
	packets = __sync_fetch_and_add(&e->packets, 1);
	prev = __sync_fetch_and_add(&e->bytes, len);
	if (max_packets && packets >= max_packets)
		goto past;
	if (!max_bytes || prev + len <= max_bytes)
		return len;
	if (prev + ETH_HLEN <= max_bytes)
		return max_bytes - prev;
past:
	{
		struct mirror_cutoff_count *c = bpf_map_lookup_elem(&session_cutoff_count, &session);

		if (c)
			c->cutoff += 1;
	}
	count(dir, MIRROR_CNT_CUTOFF);
	return 0;
}

/* Counts a mirrored frame that crossed its flow's byte cutoff: `cut` to
 * it, or (a path that cannot cut) whole. */
static __always_inline void count_boundary(__u32 session, __u32 dir, bool cut)
{
	struct mirror_cutoff_count *c = bpf_map_lookup_elem(&session_cutoff_count, &session);

	if (c) {
		if (cut)
			c->cut += 1;
		else
			c->whole += 1;
	}
	count(dir, cut ? MIRROR_CNT_CUTOFF_CUT : MIRROR_CNT_CUTOFF_WHOLE);
}

/* Puts the session, flow hash, (when `stamp`: it costs a clock read) the
 * time stamp and the length before a cut (`orig_len`, 0: not cut) in the
 * metadata area in front of the frame. */
static __always_inline void write_meta_at(struct xdp_md *ctx, __u32 session, __u32 hash,
					  bool stamp, __u32 orig_len)
{
	struct mirror_meta *meta;
	void *data;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		/* No metadata area (native XDP on drivers such as sfc or TI cpsw):
		 * userspace sees no magic; see place_frame in dataplane/worker.rs. */
		return;
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if ((void *)(meta + 1) > data)
		return;
	meta->magic = MIRROR_META_MAGIC;
	meta->session = session;
	meta->hash = hash;
	meta->tstamp = stamp ? bpf_ktime_get_tai_ns() : 0;
	meta->orig_len = orig_len;
	meta->pad = 0;
}

/*
 * Classifies a parsed frame (`len` bytes at `data`) and applies its
 * session's policy (disabled, sampling) and per-flow cutoff. Returns the
 * session that mirrors it, with the policy it saw in `*pol` and that
 * policy's slot in `*slot`, or -1 (filtered, scheduled out, sampled out or
 * past its flow's cutoff), and in `*keep` how many bytes of it to mirror
 * (less than `len`: the caller cuts it and counts that with
 * count_boundary). Counted.
 */
static __always_inline __s32 select_session(struct pkt *p, __u32 dir, __u32 parse_result,
					    const struct mirror_policy **pol, __u32 *slot,
					    void *data, void *data_end, __u32 len, __u32 *keep)
{
	bool scanned = false;
	__s32 session;

	count(dir, MIRROR_CNT_RECEIVED);
	if (parse_result)
		count(dir, parse_result);

	session = classify(p, dir, &scanned);
	if (scanned)
		count(dir, MIRROR_CNT_CLASSIFY_SCAN);
	if (session == -2)
		count(dir, MIRROR_CNT_NO_RULE_SET);
	if (session < 0) {
		count(dir, MIRROR_CNT_FILTERED);
		return -1;
	}
	count(dir, MIRROR_CNT_MATCHED);
	count_session(&session_matched, session);
	*pol = policy_of(session, slot);
	if ((*pol)->disabled) {
		count(dir, MIRROR_CNT_SCHEDULED_OUT);
		count_session(&session_scheduled_out, session);
		return -1;
	}
	if (sampled_out(session, (*pol)->sample)) {
		count(dir, MIRROR_CNT_SAMPLED_OUT);
		count_session(&session_sampled_out, session);
		return -1;
	}
	if ((*pol)->cutoff_bytes || (*pol)->cutoff_packets) {
		struct mac_pair macs = {};

		if (data + sizeof(macs) <= data_end)
			__builtin_memcpy(macs.b, data, sizeof(macs));
		*keep = flow_cutoff(p, &macs, session, dir | (*slot << 1), len);
		if (!*keep)
			return -1;
	}
	return session;
}

/*
 * Counts `too_big` for each destination of session `s` in `keys` (bit k:
 * DEVMAP key k) that cannot take a frame of `len` bytes (the kernel skips
 * them). Returns how many. A global function, as are the other loops over a
 * session's destinations below: checked once, not once per path into them
 * (up to MIRROR_MAX_FAST_TARGETS turns each would pass xdp_tap's limit).
 */
__noinline __u32 count_too_big(__u32 s, __u32 len, __u32 keys)
{
	__u32 n = fast_ndests[s & (MIRROR_MAX_SESSIONS - 1)];
	__u32 skipped = 0;

	for (__u32 i = 0; i < MIRROR_MAX_FAST_TARGETS; i++) {
		struct mirror_fast_dest *d;
		struct mirror_fast_stats *st;

		if (i >= n)
			break;
		if (!(keys & (1u << i)))
			continue;
		d = &fast_dests[s & (MIRROR_MAX_SESSIONS - 1)][i];
		if (len <= d->max_len)
			continue;
		skipped++;
		st = bpf_map_lookup_elem(&fast_stats, &d->ifindex);
		if (st)
			st->too_big += 1;
	}
	return skipped;
}

/* True when the session's limiter lets this frame pass (see rate_buckets),
 * at the policy's rate. */
static __always_inline bool take_token(__u32 session, const struct mirror_policy *pol)
{
	struct mirror_rate *b = bpf_map_lookup_elem(&rate_buckets, &session);
	__u64 now, old, tat, interval = pol->rate_interval, tolerance = pol->rate_tolerance;

	if (!b || !interval)
		return true;
	now = bpf_ktime_get_ns();
	for (int i = 0; i < 8; i++) {
		old = b->tat;
		tat = old > now ? old : now;
		if (tat - now > tolerance)
			return false;
		if (__sync_val_compare_and_swap(&b->tat, old, tat + interval) == old)
			return true;
	}
	return false; /* eight CPUs raced for it: counted as over the limit */
}

/* A group member's weight for a flow: splitmix64's finaliser over both, as
 * target/group.rs scores it. */
static __always_inline __u64 member_score(__u32 hash, __u32 member)
{
	__u64 z = ((__u64)hash << 32 | member) + 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * The group member of session `session` (struct mirror_fast_session) a
 * flow goes to: the highest-scoring member (ties: the later one, as Rust's
 * max_by_key), or, when it is down, the highest-scoring member that is up
 * (counted `rehashed`); every member down: the first choice (counted there
 * as `down`) with MIRROR_PICK_ALL_DOWN set. A global function (see
 * count_too_big).
 */
#define MIRROR_PICK_ALL_DOWN 0x100

/* pick_member's running state, one bpf_loop step per member. */
struct pick {
	__u64 first_score, best_score;
	__u32 hash, up, first, best, any;
};

static long pick_step(__u64 i, void *data)
{
	struct pick *p = data;
	__u64 sc = member_score(p->hash, (__u32)i);

	if (i == 0 || sc >= p->first_score) {
		p->first_score = sc;
		p->first = (__u32)i;
	}
	if (p->up & (1u << (i & 31)) && (!p->any || sc >= p->best_score)) {
		p->best_score = sc;
		p->best = (__u32)i;
		p->any = 1;
	}
	return 0;
}

__noinline __u32 pick_member(__u32 session, __u32 hash)
{
	const struct mirror_fast_session *f = &fast_session[session & (MIRROR_MAX_SESSIONS - 1)];
	struct pick p = { .hash = hash, .up = f->members_up };
	__u32 n = f->group_n;
	struct mirror_group_count *g;

	/* A bpf_loop, not a loop the verifier walks once per turn: with
	 * MIRROR_MAX_FAST_TARGETS members, the scores' branches would pass its
	 * limit. */
	bpf_loop(n < MIRROR_MAX_FAST_TARGETS ? n : MIRROR_MAX_FAST_TARGETS, pick_step, &p, 0);
	if (p.any && p.best == p.first)
		return p.first & (MIRROR_MAX_FAST_TARGETS - 1);
	g = bpf_map_lookup_elem(&fast_groups, &session);
	if (g) {
		if (p.any)
			g->rehashed += 1;
		else
			g->all_down += 1;
	}
	if (p.any)
		return p.best & (MIRROR_MAX_FAST_TARGETS - 1);
	return (p.first & (MIRROR_MAX_FAST_TARGETS - 1)) | MIRROR_PICK_ALL_DOWN;
}

static __always_inline void count_pick(__u32 session, __u32 key, __u32 len, int what)
{
	__u32 slot = session * MIRROR_MAX_FAST_TARGETS + (key & (MIRROR_MAX_FAST_TARGETS - 1));
	struct mirror_pick_count *c = bpf_map_lookup_elem(&fast_picks, &slot);

	if (!c)
		return;
	if (what == 0) {
		c->packets += 1;
		c->bytes += len;
	} else if (what == 1) {
		c->down += 1;
	} else {
		c->rate_limited += 1;
	}
}

/* Counts `down` for each destination of the session in `down` (bit k:
 * DEVMAP key k). A global function (see count_too_big). */
__noinline int count_down(__u32 session, __u32 down)
{
	for (__u32 i = 0; i < MIRROR_MAX_FAST_TARGETS; i++)
		if (down & (1u << i))
			count_pick(session, i, 0, 1);
	return 0;
}

/*
 * The kernel path of session `s` (see struct mirror_fast_session): pick the
 * group member, apply the rate limit, cut to packet_length, count, and
 * redirect to the variant's DEVMAP (broadcast for several destinations).
 */
static __always_inline int fast_path(struct xdp_md *ctx, struct pkt *p, __u64 s,
				     const struct mirror_policy *pol)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct mirror_fast_session *f = &fast_session[s & (MIRROR_MAX_SESSIONS - 1)];
	__u32 key = s, session = s, len = data_end - data, variant = 0, member = 0, hash = 0;
	__u32 snap, single, keys, down, version;
	struct mirror_fast_count *n;
	bool all_down = false, pick_after = false;
	void *fast;

	if (f->tunnels || f->group_n)
		hash = flow_hash(p, data, data_end);
	if (f->group_n) {
		variant = pick_member(key, hash);
		all_down = variant & MIRROR_PICK_ALL_DOWN;
		variant &= MIRROR_MAX_FAST_TARGETS - 1;
		member = f->group_keys[variant];
		if (all_down)
			variant = f->group_n;
	}
	if (pol->rate_interval && !take_token(key, pol)) {
		__u64 *rl = bpf_map_lookup_elem(&session_rate_limited, &key);

		if (rl)
			*rl += 1;
		if (f->group_n)
			count_pick(key, member, 0, 2);
		return XDP_DROP;
	}
	snap = pol->packet_length;
	if (snap && len > snap) {
		if (!bpf_xdp_adjust_tail(ctx, (int)snap - (int)len))
			len = snap;
	}
	variant &= MIRROR_FAST_VARIANTS - 1;
	keys = f->variant_keys[variant];
	single = f->variant_single[variant];
	/* One read: the down bits and the DEVMAP below are of one version. */
	version = *(volatile __u8 *)&f->version & (MIRROR_DEST_VERSIONS - 1);
	down = keys & f->dests_down[version];
	keys &= ~down;
	if (f->group_n) {
		/* The member picked counts the copy once: `down` when every member
		 * is down, or when it is itself out of the DEVMAPs (a tunnel whose
		 * route went, before the group takes it out of the picks). A
		 * member alone in its variant is counted after its redirect, which
		 * fails when its device was deleted (the kernel took the entry). */
		__u32 mbit = all_down ? 0 : 1u << (member & (MIRROR_MAX_FAST_TARGETS - 1));
		int what = all_down || (down & mbit) ? 1 : 0;

		pick_after = !what && single == member + 1;
		if (!pick_after)
			count_pick(key, member, len, what);
		down &= ~mbit;
	}
	if (down)
		/* Devices userspace saw go down or away: their entries are out of
		 * the DEVMAPs; count what they would have got. */
		count_down(session, down);
	/* The session's frame after its destinations' `down`: a reader of both
	 * (fast_skipped in userspace) never sees a frame whose `down` is still
	 * to come. */
	n = bpf_map_lookup_elem(&session_kernel, &session);
	if (n) {
		n->packets += 1;
		n->bytes += len;
	}
	if (!keys)
		return XDP_DROP;
	if (len > fast_max_len[s & (MIRROR_MAX_SESSIONS - 1)] && count_too_big(s, len, keys) && single) {
		if (pick_after)
			count_pick(session, member, len, 0); /* picked; its device's too_big */
		return XDP_DROP; /* its one destination cannot take it */
	}
	if (f->tunnels)
		write_meta_at(ctx, session | (version ? MIRROR_META_VERSION : 0), hash,
			      f->tunnels > 1, 0);
	key = (session * MIRROR_FAST_VARIANTS + variant) * MIRROR_DEST_VERSIONS + version;
	fast = bpf_map_lookup_elem(&fast_sessions, &key);
	if (!fast) {
		if (pick_after)
			count_pick(session, member, 0, 1);
		return XDP_DROP; /* no destination left (every member down, nothing else) */
	}
	if (single) {
		long verdict = bpf_redirect_map(fast, single - 1, XDP_DROP);

		/* No entry: its device was deleted, before userspace noticed. */
		if (verdict != XDP_REDIRECT)
			count_pick(session, single - 1, 0, 1);
		else if (pick_after)
			count_pick(session, member, len, 0);
		return verdict;
	}
	/* One clone per destination; the kernel queues them to each device. */
	return bpf_redirect_map(fast, 0, BPF_F_BROADCAST);
}

static __always_inline int try_xdp_tap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct mirror_policy *pol = 0;
	__u32 why, slot = 0, len = data_end - data, keep = len;
	struct pkt p = {};
	__s32 session;
	__u64 s;
	long verdict;

	why = parse_frame(data, data_end, &p);
	session = select_session(&p, MIRROR_DIR_INGRESS, why, &pol, &slot, data, data_end, len,
				 &keep);
	if (session < 0)
		return XDP_DROP;
	if (keep < len) {
		/* Cut where the frame crosses its flow's cutoff, as packet_length
		 * cuts; the packet pointers are stale after this. */
		bool cut = !bpf_xdp_adjust_tail(ctx, (int)keep - (int)len);

		count_boundary(session, MIRROR_DIR_INGRESS, cut);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
	}
	/* In range (select_session bounds it), checked where the verifier sees
	 * it: `s` indexes the per-session arrays. */
	s = (__u32)session; /* 64-bit: the check and the index use one register */
	barrier_var(s);
	if (s >= MIRROR_MAX_SESSIONS || !pol)
		return XDP_DROP;
	if (fast_session[s].active)
		return fast_path(ctx, &p, s, pol);

	write_meta_at(ctx, session | (slot ? MIRROR_META_SLOT : 0), flow_hash(&p, data, data_end),
		      true, keep < len ? len : 0);
	verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
	if (verdict == XDP_REDIRECT)
		count(MIRROR_DIR_INGRESS, MIRROR_CNT_REDIRECTED);
	else
		count(MIRROR_DIR_INGRESS, MIRROR_CNT_DROP_NO_SOCKET);
	return verdict;
}

/* Tap mode: the feed port's frames are consumed; matching ones go to userspace. */
SEC("xdp")
int xdp_tap(struct xdp_md *ctx)
{
	return try_xdp_tap(ctx);
}

/*
 * Fast path, generic XDP only: runs once per destination, just before the
 * target device transmits the frame. Counts it; never changes it. (Native
 * XDP counts in fast_xmit instead, which costs nothing per frame.)
 */
SEC("xdp/devmap")
int xdp_fast_target(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->egress_ifindex;
	struct mirror_fast_stats *s = bpf_map_lookup_elem(&fast_stats, &ifindex);

	if (s) {
		s->packets += 1;
		s->bytes += ctx->data_end - ctx->data;
	}
	return XDP_PASS;
}

/*
 * The key of session s's destination on device `ifindex`, or
 * MIRROR_MAX_FAST_TARGETS when it has none there. Userspace gives each
 * tunnel of a source an egress device no other target of the source uses
 * (at start, plan.rs's tunnels_not_for_the_kernel; while running, a route
 * that moves onto such a device keeps the tunnel down, tunnels.rs), so the
 * device tells the tunnel. A key that is down in the version of the
 * session's destinations the copy went out with is out of its DEVMAPs and
 * is skipped: its device may be another's by now.
 */
static __always_inline __u32 dest_key(__u32 s, __u32 version, __u32 ifindex)
{
	const struct mirror_fast_dest *d = fast_dests[s & (MIRROR_MAX_SESSIONS - 1)];
	__u32 n = fast_ndests[s & (MIRROR_MAX_SESSIONS - 1)];
	__u32 down = fast_session[s & (MIRROR_MAX_SESSIONS - 1)]
			     .dests_down[version & (MIRROR_DEST_VERSIONS - 1)];

	for (__u32 k = 0; k < MIRROR_MAX_FAST_TARGETS; k++) {
		if (k >= n)
			break;
		if (down & (1u << k))
			continue; /* out of the DEVMAPs: its device is not its own now */
		if (d[k].ifindex == ifindex)
			return k;
	}
	return MIRROR_MAX_FAST_TARGETS;
}

/*
 * In-kernel tunnels: what a session's tunnel target does with a copy (see
 * struct mirror_tunnel). Every tunnel entry of every DEVMAP runs this one
 * program, and it finds the target from the copy's session (metadata) and
 * egress device, never from which entry's program runs: the kernel queues a
 * device's redirected frames per CPU and runs the program of the first frame
 * queued over the whole batch (bq_enqueue in kernel/bpf/devmap.c), so copies
 * of two sessions, or of two keys, share a run. Runs once per copy, on the
 * CPU that redirected it, just before the egress device transmits. Every
 * copy it is given ends in exactly one of its counters, but for one whose
 * device no destination of its session has (a route moving, between the
 * DEVMAP's update and fast_dests'), counted in the device's no_key.
 */
SEC("xdp/devmap")
int xdp_tunnel(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct mirror_meta *meta = (void *)(long)ctx->data_meta;
	struct mirror_tunnel_stats *st;
	struct mirror_tunnel *t;
	struct tun_copy c = {};
	__u32 session, ifindex, key, slot, len;
	__u64 *seq;

	if ((void *)(meta + 1) > data || meta->magic != MIRROR_META_MAGIC) {
		__sync_fetch_and_add(&tunnel_no_meta, 1);
		return XDP_DROP;
	}
	session = meta->session & (MIRROR_MAX_SESSIONS - 1);
	ifindex = ctx->egress_ifindex;
	key = dest_key(session, !!(meta->session & MIRROR_META_VERSION), ifindex);
	if (key >= MIRROR_MAX_FAST_TARGETS) {
		struct mirror_fast_stats *fs = bpf_map_lookup_elem(&fast_stats, &ifindex);

		if (fs)
			fs->no_key += 1;
		return XDP_DROP;
	}
	slot = session * MIRROR_MAX_FAST_TARGETS + key;
	c.hash = meta->hash;
	c.tstamp = meta->tstamp;
	t = bpf_map_lookup_elem(&tunnels, &slot);
	st = bpf_map_lookup_elem(&tunnel_stats, &slot);
	if (!t || !st)
		return XDP_DROP; /* cannot happen: slot < max_entries */
	if (t->flags & MIRROR_TUN_F_DOWN) {
		st->down += 1;
		return XDP_DROP;
	}
	if (t->kind == MIRROR_TUN_NONE)
		goto error;
	if (data + ETH_HLEN + 4 <= data_end) {
		__u8 *b = data;
		__u16 proto = (__u16)b[12] << 8 | b[13];

		if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
			c.tagged = true;
			c.tci = (__u16)b[14] << 8 | b[15];
		}
	}
	len = data_end - data;
	if (len > t->max_inner) {
		if (bpf_xdp_adjust_tail(ctx, (int)t->max_inner - (int)len))
			goto error;
		len = t->max_inner;
		c.cut = true;
	}
	c.len = len;
	c.count = st->packets;
	if (t->kind == MIRROR_TUN_ERSPAN2 || t->kind == MIRROR_TUN_ERSPAN3) {
		seq = bpf_map_lookup_elem(&tunnel_seq, &slot);
		if (!seq)
			goto error;
		c.sequence = (__u32)__sync_fetch_and_add(seq, 1);
	}
	if (!encapsulate(ctx, true, t, &c))
		goto error;
	st->packets += 1;
	st->bytes += len;
	if (c.cut)
		st->truncated += 1;
	return XDP_PASS;
error:
	st->errors += 1;
	return XDP_DROP;
}

/* Only the fields we read; CO-RE finds their offsets in the running
 * kernel's BTF. */
struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct net_device {
	int ifindex;
	possible_net_t nd_net;
} __attribute__((preserve_access_index));

/*
 * Fast path, native XDP: after each bulk transmit to a device (up to 16
 * frames), how many it took and how many it refused (a veth whose peer is
 * down, a full TX ring). Fires for every DEVMAP user on the machine, in
 * every network namespace; counts only this source's transmits (its device,
 * in its namespace) to devices it has counters for.
 */
SEC("tp_btf/xdp_devmap_xmit")
int fast_xmit(__u64 *ctx)
{
	const struct net_device *from = (void *)ctx[0];
	const struct net_device *to = (void *)ctx[1];
	int sent = (int)ctx[2];
	int drops = (int)ctx[3];
	struct mirror_fast_stats *s;
	__u32 ifindex;

	if (from->ifindex != source_ifindex || sent < 0 || drops < 0)
		return 0;
	if (from->nd_net.net->ns.inum != source_netns)
		return 0;
	ifindex = to->ifindex;
	s = bpf_map_lookup_elem(&fast_stats, &ifindex);
	if (s) {
		s->packets += sent + drops;
		s->xmit_drops += drops;
	}
	return 0;
}

/*
 * Copy mode. A record's size must be a constant for bpf_ringbuf_reserve, so
 * copies go into the smallest of a few size classes that holds them; the
 * frame is read straight into the reserved record (one copy).
 */
struct copy_job {
	void *ctx;
	bool xdp; /* ctx is a struct xdp_md, else a struct __sk_buff */
	struct mirror_copy hdr;
};

/*
 * The wake-up flag for a record taking `bytes` of the ring (its header
 * included): a forced wake-up for a record that takes the bytes waiting
 * across a multiple of copy_wake_bytes, none for the others. Every record
 * past the threshold forcing one (as before) raised an irq_work, a
 * self-IPI, per record while the reader was behind: 12% of the generator's
 * core at 1,500 B in the span lab. Records reserved at once on other CPUs
 * can make a crossing record see more than its own bytes past it and not
 * wake: the next multiple wakes, and the reader's millisecond poll reads
 * them anyway.
 */
static __always_inline __u64 wake_flags(__u64 bytes)
{
	__u64 threshold = copy_wake_bytes;
	__u64 waiting;

	if (!threshold)
		return 0;
	waiting = bpf_ringbuf_query(&copies, BPF_RB_AVAIL_DATA);
	/* Counts this record's own reservation: at least `bytes`. */
	if (waiting < bytes)
		return BPF_RB_NO_WAKEUP;
	return waiting / threshold != (waiting - bytes) / threshold ? BPF_RB_FORCE_WAKEUP
								     : BPF_RB_NO_WAKEUP;
}

/* Reserves a record with room for `room` frame bytes and fills it. */
static __always_inline int copy_into_class(struct copy_job *job, const __u32 room)
{
	struct mirror_copy *rec;
	__u64 len = job->hdr.cap_len; /* 64-bit: the checks and the call use one register */
	long err;

	rec = bpf_ringbuf_reserve(&copies, sizeof(*rec) + room, 0);
	if (!rec)
		return MIRROR_CNT_DROP_RING_FULL;
	/*
	 * copy_out picked `room` >= cap_len >= 1. Checked again, one bound per
	 * test, behind a compiler barrier, so the verifier sees len in 1..room.
	 */
	barrier_var(len);
	if (len > room)
		goto fail;
	barrier_var(len);
	if (len < 1)
		goto fail;
	*rec = job->hdr;
	rec->cap_len = len;
	/* Stamped once the record has its place in the ring, so records from
	 * different CPUs are out of time order by nanoseconds at most. */
	rec->tstamp = bpf_ktime_get_tai_ns();
	if (job->xdp)
		err = bpf_xdp_load_bytes(job->ctx, 0, rec->data, len);
	else
		err = bpf_skb_load_bytes(job->ctx, 0, rec->data, len);
	if (err)
		goto fail;
	/* What the record takes of the ring: with its 8-byte header, rounded
	 * up to 8 bytes, as the kernel reserves it. */
	bpf_ringbuf_submit(rec, wake_flags((sizeof(*rec) + room + BPF_RINGBUF_HDR_SZ + 7) & ~7ULL));
	return MIRROR_CNT_COPIED;
fail:
	bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
	return MIRROR_CNT_COPY_ERROR;
}

static __always_inline int copy_out(struct copy_job *job)
{
	__u32 len = job->hdr.cap_len;

	if (len <= 128)
		return copy_into_class(job, 128);
	if (len <= 256)
		return copy_into_class(job, 256);
	if (len <= 512)
		return copy_into_class(job, 512);
	if (len <= 1024)
		return copy_into_class(job, 1024);
	if (len <= 1536)
		return copy_into_class(job, 1536);
	if (len <= 2048)
		return copy_into_class(job, 2048);
	if (len <= 4096)
		return copy_into_class(job, 4096);
	return copy_into_class(job, MIRROR_COPY_MAX);
}

/*
 * Copy mode's kernel path (see struct mirror_clone_dest): per session, the
 * target devices its frames are cloned to, set by userspace before the tcx
 * programs attach (`down` also while they run); 0 destinations: the session
 * goes through the ring buffer.
 */
struct mirror_clone_dest clone_dests[MIRROR_MAX_SESSIONS][MIRROR_MAX_FAST_TARGETS];
__u32 clone_ndests[MIRROR_MAX_SESSIONS];
/* 1: one of the session's destinations is a tunnel (its clones carry the
 * flow hash to the relay). */
__u32 clone_tunnels[MIRROR_MAX_SESSIONS];
/* Frames tc_relay saw without the relay mark (dropped): never expected, the
 * relay has no address and no IPv6. */
__u64 relay_foreign;

/* Per destination slot (session * MIRROR_MAX_FAST_TARGETS + destination):
 * what became of the frames cloned to it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS * MIRROR_MAX_FAST_TARGETS);
	__type(key, __u32);
	__type(value, struct mirror_clone_stats);
} clone_stats SEC(".maps");

/* Frames each direction sent down copy mode's kernel path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_DIRECTIONS);
	__type(key, __u32);
	__type(value, __u64);
} clone_dir SEC(".maps");

struct mirror_clone_dest abi_anchor_clone_dest = {};
struct mirror_clone_stats abi_anchor_clone_stats = {};
enum mirror_relay abi_anchor_relay = MIRROR_RELAY_MAGIC;

/* The relay mark's fields (enum mirror_relay) hold every destination and session. */
_Static_assert(1 << MIRROR_RELAY_SESSION_SHIFT == MIRROR_MAX_FAST_TARGETS, "relay mark: destination");
_Static_assert(1 << (MIRROR_RELAY_DIR_SHIFT - MIRROR_RELAY_SESSION_SHIFT) == MIRROR_MAX_SESSIONS,
	       "relay mark: session");
/* Key masks are u32 (struct mirror_fast_session); a group's variants fit. */
_Static_assert(MIRROR_MAX_FAST_TARGETS <= 32, "fast path: key masks");
_Static_assert(MIRROR_FAST_VARIANTS > MIRROR_MAX_FAST_TARGETS, "fast path: variants");
_Static_assert((int)MIRROR_MAX_SESSIONS <= (int)MIRROR_META_VERSION, "meta: session bits");
_Static_assert(MIRROR_DEST_VERSIONS == 2, "fast path: a version is one bit");

/* ENETDOWN (uapi asm-generic/errno.h), which the BPF target's headers lack. */
#define MIRROR_ENETDOWN 100

/* What tc_relay makes the egress of a clone it took (NET_XMIT_DROP: it never
 * lets one through to the TAP). */
#define MIRROR_NET_XMIT_DROP 1

/*
 * Copy mode's kernel tunnels (see enum mirror_relay): one clone of the frame
 * to the relay `relay`, marked with its slot (session `s`, destination `i`)
 * and carrying the flow hash; the frame's own mark and priority are put back
 * at once. tc_relay runs within the call and counts the clone's outcome in
 * the tunnel slot, then drops it: the kernel reports that as NET_XMIT_DROP,
 * here 0 (handed to the relay); anything else is the relay's own failure.
 */
static __always_inline long relay_out(struct __sk_buff *skb, __u32 relay, __u32 s, __u32 i,
				      __u32 dir, __u32 hash, __u32 pslot)
{
	__u32 mark = skb->mark, priority = skb->priority;
	long err;

	skb->mark = (__u32)MIRROR_RELAY_MAGIC << MIRROR_RELAY_MAGIC_SHIFT |
		    (pslot & 1) << MIRROR_RELAY_PSLOT_SHIFT | (dir & 1) << MIRROR_RELAY_DIR_SHIFT |
		    s << MIRROR_RELAY_SESSION_SHIFT | i;
	skb->priority = hash;
	err = bpf_clone_redirect(skb, relay, 0);
	skb->mark = mark;
	skb->priority = priority;
	if (err == MIRROR_NET_XMIT_DROP)
		return 0;
	/* 0: the TAP queued it, so tc_relay did not run (detached?): an error. */
	return err ? err : -1;
}

/*
 * Copy mode's kernel path: one clone of the frame to each of the session's
 * target devices, out of their egress (bpf_clone_redirect, as tc mirred
 * sends); no ring record, no userspace. The frame itself is never changed
 * and passes on (the helper only gives it a private copy of its headers
 * after cloning, as skbs written by tc programs must have). Counted where it
 * happens: the session and direction once, then each destination's outcome.
 */
static __always_inline void clone_out(struct __sk_buff *skb, __u32 session, __u32 dir, bool gso,
				      __u32 hash, __u32 pslot)
{
	__u32 s = session & (MIRROR_MAX_SESSIONS - 1);
	__u32 n = clone_ndests[s];
	/* What too_big compares with the device's limit, as the kernel does
	 * (is_skb_forwardable): skb->len, without an outer tag the kernel
	 * holds outside the data (VLAN acceleration). */
	__u32 len = skb->len;
	/* The bytes of a clone as sent: with that tag, which the clone keeps
	 * and the device sends (or the relay puts back in). */
	__u32 bytes = len + (skb->vlan_present ? sizeof(struct vlan_tag) : 0);
	struct mirror_fast_count *k = bpf_map_lookup_elem(&session_kernel, &s);
	__u64 *d = bpf_map_lookup_elem(&clone_dir, &dir);

	if (k) {
		k->packets += 1;
		k->bytes += bytes;
	}
	if (d)
		*d += 1;
	for (__u32 i = 0; i < MIRROR_MAX_FAST_TARGETS; i++) {
		struct mirror_clone_dest *t;
		struct mirror_clone_stats *st;
		__u32 slot;
		long err;

		if (i >= n)
			break;
		t = &clone_dests[s][i];
		slot = s * MIRROR_MAX_FAST_TARGETS + i;
		st = bpf_map_lookup_elem(&clone_stats, &slot);
		if (!st)
			continue; /* cannot happen: slot < max_entries (it would show as unknown) */
		if (t->down) {
			st->down += 1;
			continue;
		}
		if (t->tunnel) {
			/* A GSO super-frame is refused, counted: the relay would
			 * have to cut it, and its segments need the stack. */
			if (gso) {
				st->too_big += 1;
				continue;
			}
			err = relay_out(skb, t->ifindex, s, i, dir, hash, pslot);
		} else {
			if (!gso && len > t->max_len) {
				st->too_big += 1;
				continue;
			}
			err = bpf_clone_redirect(skb, t->ifindex, 0);
		}
		if (err == 0) {
			st->packets += 1;
			st->bytes += bytes;
		} else if (err == -MIRROR_ENETDOWN) {
			st->down += 1;
		} else {
			st->errors += 1;
		}
	}
}

/*
 * Classifies one frame of a live interface and, when a session accepts it,
 * copies it into the ring buffer, or at tcx for a kernel-path session clones
 * it to the session's targets. Never changes the frame; the caller passes it
 * on whatever happens here.
 */
static __always_inline void try_copy(void *ctx, bool xdp, void *data, void *data_end,
				     __u32 frame_len, __u32 ifindex, __u32 dir, bool gso,
				     __u32 accel_vlan)
{
	struct copy_job job = { .ctx = ctx, .xdp = xdp };
	const struct mirror_policy *pol = 0;
	/* The frame as it was on the wire: with the outer tag the kernel took
	 * out of the data (tc), which every copy carries, so the cutoff counts
	 * it and `keep` is in these bytes. */
	__u32 wire_len = frame_len + (accel_vlan ? sizeof(struct vlan_tag) : 0);
	__u32 why, snap, cap, slot = 0, keep = wire_len, tag_kept = 0;
	struct pkt p = {};
	__s32 session;

	why = parse_frame(data, data_end, &p);
	if (accel_vlan) {
		/* The outer tag, which the kernel took out of the data (tc):
		 * rules and flows see it as they would in the data. */
		p.flags |= MIRROR_PF_VLAN;
		p.vlan = accel_vlan & 0xfff;
		job.hdr.flags |= MIRROR_COPY_F_VLAN;
		if ((accel_vlan >> 16) == ETH_P_8021AD)
			job.hdr.flags |= MIRROR_COPY_F_QINQ;
	}
	session = select_session(&p, dir, why, &pol, &slot, data, data_end, wire_len, &keep);
	if (session < 0 || session >= MIRROR_MAX_SESSIONS || !pol)
		return;
	if (!xdp && clone_ndests[session]) {
		/* The kernel path: clones, no record (the packet pointers are
		 * stale after a clone; nothing below them is used). A clone
		 * cannot be cut: a frame crossing its flow's cutoff goes whole. */
		if (keep < wire_len)
			count_boundary(session, dir, false);
		clone_out(ctx, session, dir, gso,
			  clone_tunnels[session] ? flow_hash(&p, data, data_end) : 0, slot);
		return;
	}

	cap = frame_len;
	if (keep < wire_len) {
		/* Cut at the flow's last byte of the frame as on the wire. The
		 * record holds the data, the tag goes back after the MACs: */
		cap = keep;
		if (accel_vlan && keep >= 2 * ETH_ALEN + sizeof(struct vlan_tag)) {
			cap = keep - sizeof(struct vlan_tag);
		} else if (accel_vlan) {
			/* a cut inside the tag (14 or 15 bytes): the MACs, and
			 * that many of the tag's bytes (struct mirror_copy). */
			cap = 2 * ETH_ALEN;
			tag_kept = keep - 2 * ETH_ALEN;
		}
		count_boundary(session, dir, true);
	}
	snap = pol->packet_length;
	if (snap && snap < cap)
		cap = snap;
	if (cap > MIRROR_COPY_MAX) {
		cap = MIRROR_COPY_MAX;
		job.hdr.flags |= MIRROR_COPY_F_CUT;
		count(dir, MIRROR_CNT_COPY_CUT);
	}
	if (gso)
		job.hdr.flags |= MIRROR_COPY_F_GSO;
	job.hdr.session = session;
	job.hdr.slot = slot | (tag_kept << 1) | (accel_vlan << 16);
	job.hdr.direction = dir;
	job.hdr.ifindex = ifindex;
	job.hdr.orig_len = frame_len;
	job.hdr.cap_len = cap;
	job.hdr.hash = flow_hash(&p, data, data_end);
	count(dir, copy_out(&job));
}

/* Copy mode, ingress: classify, copy, and always pass the frame on. */
SEC("xdp")
int xdp_copy(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	try_copy(ctx, true, data, data_end, data_end - data, ctx->ingress_ifindex,
		 MIRROR_DIR_INGRESS, false, 0);
	return XDP_PASS;
}

static __always_inline int tc_copy(struct __sk_buff *skb, __u32 dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	/* An outer tag out of the data (VLAN acceleration: always at tc
	 * ingress, at egress when the device offloads it): TPID << 16 | TCI. */
	__u32 accel = skb->vlan_present ? (__u32)bpf_ntohs(skb->vlan_proto) << 16 | skb->vlan_tci
					: 0;

	/* Headers outside the linear part count as truncated: the skb is never pulled. */
	try_copy(skb, false, data, data_end, skb->len, skb->ifindex, dir, skb->gso_segs > 1, accel);
	return TC_ACT_UNSPEC;
}

/* Copy mode, egress (tcx): the same, for frames leaving the interface. */
SEC("tcx/egress")
int tc_copy_egress(struct __sk_buff *skb)
{
	return tc_copy(skb, MIRROR_DIR_EGRESS);
}

/* Copy mode, ingress at tcx instead of XDP (`ingress_hook = "tc"`, or "auto"
 * when a session clones in the kernel, which XDP cannot): runs next to any
 * XDP program another tool attached. */
SEC("tcx/ingress")
int tc_copy_ingress(struct __sk_buff *skb)
{
	return tc_copy(skb, MIRROR_DIR_INGRESS);
}

/* The fields of the kernel's skb the relay reads (bpf_cast_to_kern_ctx);
 * CO-RE finds them in the running kernel's BTF. */
struct sk_buff {
	__u8 ip_summed : 2;
	__u16 csum_start; /* from head */
	__u16 csum_offset;
	__u16 mac_header; /* from head */
	__u16 network_header;
	unsigned char *head;
	unsigned char *data;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

enum {
	MIRROR_CHECKSUM_PARTIAL = 3, /* CHECKSUM_PARTIAL in include/linux/skbuff.h */
};

/*
 * VXLAN over IPv6 in the relay: a clone whose L4 checksum is left to the
 * device (CHECKSUM_PARTIAL) keeps it so through the encapsulation (the field
 * is filled on the way out, in software or by the NIC), so its UDP checksum
 * must count the field as it will be (see payload_sum). Where that
 * checksum starts in the copy, if the copy is such a clone.
 */
static __always_inline void partial_checksum(struct __sk_buff *skb, struct tun_copy *c)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	__u64 at;

	if (BPF_CORE_READ_BITFIELD(k, ip_summed) != MIRROR_CHECKSUM_PARTIAL)
		return;
	at = k->data - k->head;
	if (k->csum_start <= at)
		return; /* not inside the copy: cannot happen */
	c->csum_start = k->csum_start - (__u32)at;
	c->csum_offset = k->csum_offset;
}

/* The farthest into a copy a device-finished checksum may start for
 * drop_partial_checksum (bytes moved in chunks of RELAY_CHUNK). */
#define RELAY_PULL_MAX 256
#define RELAY_CHUNK 32

/* Moves `n` (at most RELAY_PULL_MAX) bytes of the packet from `from` to `to`
 * (ranges apart). */
static __always_inline bool skb_move(struct __sk_buff *skb, __u32 from, __u32 to, __u32 n)
{
	__u8 buf[RELAY_CHUNK];
	int i;

	for (i = 0; i < RELAY_PULL_MAX / RELAY_CHUNK; i++) {
		/* 64-bit: no zero-extension between the bounds check and the
		 * helper call, so the verifier sees the bounds on the register
		 * the helpers get. */
		__u64 at = (__u64)i * RELAY_CHUNK, k;

		if (at >= n)
			break;
		k = (__u64)n - at;
		if (k > RELAY_CHUNK)
			k = RELAY_CHUNK;
		barrier_var(k);
		if (k < 1 || k > RELAY_CHUNK)
			break;
		if (bpf_skb_load_bytes(skb, from + (__u32)at, buf, k) ||
		    bpf_skb_store_bytes(skb, to + (__u32)at, buf, k, 0))
			return false;
	}
	return true;
}

/*
 * A clone whose L4 checksum the device is to finish (CHECKSUM_PARTIAL) cut
 * to `cap` bytes, short of that checksum's field: the kernel cuts such a
 * clone no shorter than the end of the field (bpf_skb_change_tail's
 * minimum), and a copy without the field must stop asking for it. Taking
 * bytes out of the packet past where the checksum starts makes the kernel
 * drop the request (CHECKSUM_NONE: skb_postpull_rcsum); they are kept at the
 * tail meanwhile and put back. Leaves the first `cap` bytes as they were
 * and at least `cap` bytes in all (the caller cuts the rest); false when
 * that cannot be done (counted by the caller).
 */
static __always_inline bool drop_partial_checksum(struct __sk_buff *skb, __u32 cap)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	__u32 at, start, end, off, pull, keep, stash;

	if (BPF_CORE_READ_BITFIELD(k, ip_summed) != MIRROR_CHECKSUM_PARTIAL)
		return true;
	at = k->data - k->head;
	if (k->csum_start < at || k->network_header < k->mac_header)
		return false;
	start = k->csum_start - at;
	end = start + k->csum_offset + 2;
	if (cap >= end)
		return true; /* the field stays: the device fills it in the cut copy */
	/* bpf_skb_adjust_room takes bytes out from the end of the MAC header:
	 * `pull` of them puts the data's start past the checksum's. Only the
	 * first `end` bytes are needed (the kernel cuts no shorter); the ones
	 * after the MAC header (`keep`) wait at the tail (`stash`), out of the
	 * way of the pull. */
	off = k->network_header - k->mac_header;
	pull = start + 1;
	if (off >= start || pull > RELAY_PULL_MAX || end - off > RELAY_PULL_MAX)
		return false;
	keep = end - off;
	stash = end > off + pull ? end : off + pull;
	if (skb->len > end && bpf_skb_change_tail(skb, end, 0))
		return false;
	if (bpf_skb_change_tail(skb, stash + keep, 0) || !skb_move(skb, off, stash, keep))
		return false;
	if (bpf_skb_adjust_room(skb, -(__s32)pull, BPF_ADJ_ROOM_MAC, 0))
		return false;
	/* CHECKSUM_NONE now. Room again, and the bytes back where they were. */
	if (bpf_skb_adjust_room(skb, (__s32)pull, BPF_ADJ_ROOM_MAC, 0) ||
	    !skb_move(skb, stash, off, keep))
		return false;
	return true;
}

/*
 * Copy mode's kernel tunnels: the relay's egress (see enum mirror_relay).
 * Every clone a source sent here ends in exactly one counter of its tunnel
 * slot; nothing is ever passed on to the TAP driver.
 */
static __always_inline void try_relay(struct __sk_buff *skb)
{
	__u32 mark = skb->mark, session, slot, len, snap, cap;
	struct mirror_tunnel_stats *st;
	struct mirror_tunnel *t;
	struct tun_copy c = {};
	void *data, *data_end;
	__u64 *seq;
	long err;

	if (mark >> MIRROR_RELAY_MAGIC_SHIFT != MIRROR_RELAY_MAGIC) {
		__sync_fetch_and_add(&relay_foreign, 1);
		return;
	}
	session = mark >> MIRROR_RELAY_SESSION_SHIFT & (MIRROR_MAX_SESSIONS - 1);
	slot = session * MIRROR_MAX_FAST_TARGETS + (mark & (MIRROR_MAX_FAST_TARGETS - 1));
	c.hash = skb->priority;
	c.egress = mark >> MIRROR_RELAY_DIR_SHIFT & 1;
	t = bpf_map_lookup_elem(&tunnels, &slot);
	st = bpf_map_lookup_elem(&tunnel_stats, &slot);
	if (!t || !st)
		return; /* cannot happen: slot < max_entries (it would show as unknown) */
	if (t->flags & MIRROR_TUN_F_DOWN) {
		st->down += 1;
		return;
	}
	if (t->kind == MIRROR_TUN_NONE)
		goto error;
	if (skb->vlan_present) {
		/* The outer tag is out of the data (VLAN acceleration): put it
		 * back in, as the kernel's own tunnels do, so the collector gets
		 * the frame as it was on the wire. */
		__u16 tci = skb->vlan_tci;
		__u16 proto = skb->vlan_proto; /* network order */
		__u32 *w;

		if (bpf_skb_vlan_pop(skb) || skb->vlan_present || bpf_skb_change_head(skb, 4, 0))
			goto error; /* a second accelerated tag (QinQ) */
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + 4 > data_end)
			goto error;
		w = data;
		w[0] = w[1];
		w[1] = w[2];
		w[2] = w[3];
		*(__u16 *)(data + 12) = proto;
		*(__u16 *)(data + 14) = bpf_htons(tci);
		c.tagged = true;
		c.tci = tci;
	} else {
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (data + ETH_HLEN + 4 <= data_end) {
			__u8 *b = data;
			__u16 proto = (__u16)b[12] << 8 | b[13];

			if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
				c.tagged = true;
				c.tci = (__u16)b[14] << 8 | b[15];
			}
		}
	}
	/* The session's packet_length first, as userspace cuts; then the
	 * tunnel's mtu: only that cut is `truncated` (ERSPAN's T bit). */
	len = skb->len;
	/* The policy slot the frame was classified under (MIRROR_RELAY_PSLOT_SHIFT). */
	snap = session_policy[session * MIRROR_POLICY_SLOTS + (mark >> MIRROR_RELAY_PSLOT_SHIFT & 1)].packet_length;
	cap = snap && snap < len ? snap : len;
	if (cap > t->max_inner) {
		cap = t->max_inner;
		c.cut = true;
	}
	if (len > cap) {
		if (!drop_partial_checksum(skb, cap) || bpf_skb_change_tail(skb, cap, 0))
			goto error;
		len = cap;
	}
	c.len = len;
	c.count = st->packets;
	c.tstamp = bpf_ktime_get_tai_ns();
	if (t->kind == MIRROR_TUN_ERSPAN2 || t->kind == MIRROR_TUN_ERSPAN3) {
		seq = bpf_map_lookup_elem(&tunnel_seq, &slot);
		if (!seq)
			goto error;
		c.sequence = (__u32)__sync_fetch_and_add(seq, 1);
	}
	if (t->kind == MIRROR_TUN_VXLAN && t->flags & MIRROR_TUN_F_IPV6)
		partial_checksum(skb, &c);
	if (!encapsulate(skb, false, t, &c))
		goto error;
	/* Leaves clean: nothing on the egress device reads our slot. */
	skb->mark = 0;
	skb->priority = 0;
	err = bpf_clone_redirect(skb, t->ifindex, 0);
	if (err == 0) {
		st->packets += 1;
		st->bytes += len;
		if (c.cut)
			st->truncated += 1;
	} else if (err == -MIRROR_ENETDOWN) {
		st->down += 1;
	} else {
		st->errors += 1;
	}
	return;
error:
	st->errors += 1;
}

SEC("tcx/egress")
int tc_relay(struct __sk_buff *skb)
{
	try_relay(skb);
	return TC_ACT_SHOT;
}
