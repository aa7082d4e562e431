// SPDX-License-Identifier: GPL-2.0-only
/*
 * mirror: kernel side of tap-mode sources.
 *
 * xdp_tap runs on a SPAN/TAP feed port. Every frame is parsed, classified
 * against the source's ingress rule set (classify.h: sessions by priority,
 * each session's rules by number, first match decides), and either
 * redirected into the AF_XDP socket of its RX queue with the matching session
 * in the XDP metadata, or dropped: a feed port's frames have nowhere else to go. Every outcome is counted.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "parse.h"
#include "classify.h"
#include "flowhash.h"

char LICENSE[] SEC("license") = "GPL";

/* One AF_XDP socket per RX queue of the source. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MIRROR_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Indexed by enum mirror_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_CNT_MAX);
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

/* Matched frames skipped by their session's sampling, indexed by session. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} session_sampled_out SEC(".maps");

/*
 * Per-session 1-in-N sampling, set by userspace before the program is attached
 * (0 or 1 = every frame). The sequence is one shared atomic per session rather
 * than per CPU, so exactly ceil(matched / N) frames are mirrored whatever CPU
 * they arrive on; it is touched only by sessions that sample.
 */
__u32 session_sample[MIRROR_MAX_SESSIONS];
__u64 session_sample_seq[MIRROR_MAX_SESSIONS];

/* Keep every ABI type in the object's BTF, so the skeleton generates it for Rust. */
struct mirror_meta abi_anchor_meta = {};
enum mirror_counter abi_anchor_counter = MIRROR_CNT_MAX;
enum mirror_limits abi_anchor_limits = MIRROR_MAX_RULES;
enum mirror_parse_flags abi_anchor_parse_flags = MIRROR_PF_VLAN;
enum mirror_index abi_anchor_index = MIRROR_IX_SLOTS;
enum mirror_rule_word abi_anchor_rule_word = MIRROR_RW_ACCEPT;
enum mirror_addr_field abi_anchor_addr_field = MIRROR_ADDR_SRC;

static __always_inline void count(__u32 idx)
{
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

/* True when the session's 1-in-N sampling skips this frame. */
static __always_inline bool sampled_out(__u32 session)
{
	__u32 n;

	if (session >= MIRROR_MAX_SESSIONS)
		return false;
	n = session_sample[session];
	if (n <= 1)
		return false;
	return __sync_fetch_and_add(&session_sample_seq[session], 1) % n != 0;
}

/* Puts the session, flow hash and time stamp in the metadata area in front of the frame. */
static __always_inline void write_meta(struct xdp_md *ctx, __u32 session, __u32 hash)
{
	struct mirror_meta *meta;
	void *data;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		return; /* userspace sees no magic and falls back to the only session */
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if ((void *)(meta + 1) > data)
		return;
	meta->magic = MIRROR_META_MAGIC;
	meta->session = session;
	meta->hash = hash;
	meta->tstamp = bpf_ktime_get_tai_ns();
}

static __always_inline int try_xdp_tap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	__u32 why;
	__s32 session;
	long verdict;

	count(MIRROR_CNT_RECEIVED);
	why = parse_frame(data, data_end, &p);
	if (why)
		count(why);

	session = classify(&p, 0);
	if (session == -2)
		count(MIRROR_CNT_NO_RULE_SET);
	if (session < 0) {
		count(MIRROR_CNT_FILTERED);
		return XDP_DROP;
	}
	count(MIRROR_CNT_MATCHED);
	count_session(&session_matched, session);
	if (sampled_out(session)) {
		count(MIRROR_CNT_SAMPLED_OUT);
		count_session(&session_sampled_out, session);
		return XDP_DROP;
	}

	write_meta(ctx, session, flow_hash(&p, data, data_end));
	verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
	if (verdict == XDP_REDIRECT)
		count(MIRROR_CNT_REDIRECTED);
	else
		count(MIRROR_CNT_DROP_NO_SOCKET);
	return verdict;
}

/* Tap mode: the feed port's frames are consumed; matching ones go to userspace. */
SEC("xdp")
int xdp_tap(struct xdp_md *ctx)
{
	return try_xdp_tap(ctx);
}
