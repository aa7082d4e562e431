// SPDX-License-Identifier: GPL-2.0-only
/*
 * mirror: kernel side of tap-mode sources.
 *
 * xdp_tap runs on a SPAN/TAP feed port. Every frame is parsed, classified
 * against the source's rules (sessions by priority, each session's rules by
 * number, first match decides), and either redirected into the AF_XDP socket
 * of its RX queue with the matching session in the XDP metadata, or dropped:
 * a feed port's frames have nowhere else to go. Every outcome is counted.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "parse.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load: how many slots of `rules` are in use. */
const volatile __u32 rule_count = 0;

/* Rules in evaluation order; see struct mirror_rule. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MIRROR_MAX_RULES);
	__type(key, __u32);
	__type(value, struct mirror_rule);
} rules SEC(".maps");

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

/* Keep every ABI type in the object's BTF, so the skeleton generates it for Rust. */
struct mirror_meta abi_anchor_meta = {};
enum mirror_counter abi_anchor_counter = MIRROR_CNT_MAX;
enum mirror_limits abi_anchor_limits = MIRROR_MAX_RULES;
enum mirror_parse_flags abi_anchor_parse_flags = MIRROR_PF_VLAN;
enum mirror_action abi_anchor_action = MIRROR_ACTION_ACCEPT;
enum mirror_rule_match abi_anchor_rule_match = MIRROR_RM_PROTO;

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline void count_session(__u32 session)
{
	__u64 *v = bpf_map_lookup_elem(&session_matched, &session);

	if (v)
		*v += 1;
}

static __always_inline bool masked_equal(const __u32 *a, const __u8 *addr, const __u8 *mask)
{
	const __u32 *b = (const __u32 *)addr;
	const __u32 *m = (const __u32 *)mask;

	return ((a[0] ^ b[0]) & m[0]) == 0 && ((a[1] ^ b[1]) & m[1]) == 0 &&
	       ((a[2] ^ b[2]) & m[2]) == 0 && ((a[3] ^ b[3]) & m[3]) == 0;
}

#define RM_NEEDS_IP                                                                       \
	(MIRROR_RM_PROTO | MIRROR_RM_SRC | MIRROR_RM_DST | MIRROR_RM_SPORT | MIRROR_RM_DPORT | \
	 MIRROR_RM_IPV4 | MIRROR_RM_IPV6)

/*
 * Does rule `r` match frame `p`? A constraint on a field the parser could not
 * read never matches; a rule without IP constraints also matches non-IP frames.
 */
static __always_inline bool rule_matches(const struct mirror_rule *r, const struct pkt *p)
{
	__u16 m = r->fields;
	__u16 f = p->flags;

	if ((m & MIRROR_RM_VLAN) && (!(f & MIRROR_PF_VLAN) || p->vlan != r->vlan))
		return false;
	if ((m & RM_NEEDS_IP) && !(f & (MIRROR_PF_IPV4 | MIRROR_PF_IPV6)))
		return false;
	if ((m & MIRROR_RM_IPV4) && !(f & MIRROR_PF_IPV4))
		return false;
	if ((m & MIRROR_RM_IPV6) && !(f & MIRROR_PF_IPV6))
		return false;
	if ((m & MIRROR_RM_PROTO) && (!(f & MIRROR_PF_PROTO) || p->proto != r->proto))
		return false;
	if ((m & (MIRROR_RM_SRC | MIRROR_RM_DST)) && !(f & MIRROR_PF_ADDRS))
		return false;
	if ((m & MIRROR_RM_SRC) && !masked_equal(p->src, r->src_addr, r->src_mask))
		return false;
	if ((m & MIRROR_RM_DST) && !masked_equal(p->dst, r->dst_addr, r->dst_mask))
		return false;
	if ((m & (MIRROR_RM_SPORT | MIRROR_RM_DPORT)) && !(f & MIRROR_PF_PORTS))
		return false;
	if ((m & MIRROR_RM_SPORT) && (p->sport < r->sport_lo || p->sport > r->sport_hi))
		return false;
	if ((m & MIRROR_RM_DPORT) && (p->dport < r->dport_lo || p->dport > r->dport_hi))
		return false;
	return true;
}

struct classify_ctx {
	const struct pkt *pkt;
	__u64 rejected;   /* bit per session whose filter already rejected the frame */
	__s32 session;    /* result: accepting session, or -1 */
};

static long classify_step(__u64 i, void *data)
{
	struct classify_ctx *ctx = data;
	__u32 key = i;
	struct mirror_rule *r = bpf_map_lookup_elem(&rules, &key);
	__u64 bit;

	if (!r)
		return 1;
	if (r->session >= MIRROR_MAX_SESSIONS)
		return 0;
	bit = 1ULL << r->session;
	if (ctx->rejected & bit)
		return 0; /* that session's first match already decided */
	if (!rule_matches(r, ctx->pkt))
		return 0;
	if (r->action == MIRROR_ACTION_ACCEPT) {
		ctx->session = r->session;
		return 1;
	}
	ctx->rejected |= bit;
	return 0;
}

/*
 * Linear first match over the flattened rule list (sessions by priority, rules
 * by number). The filter-engine issue replaces this with bit-vector
 * classification; the semantics stay those of mirror-user's reference
 * classifier.
 */
static __always_inline __s32 classify(const struct pkt *p)
{
	struct classify_ctx ctx = { .pkt = p, .rejected = 0, .session = -1 };
	__u32 n = rule_count;

	if (n > MIRROR_MAX_RULES)
		n = MIRROR_MAX_RULES;
	bpf_loop(n, classify_step, &ctx, 0);
	return ctx.session;
}

/* Puts the session in the metadata area in front of the frame. */
static __always_inline void write_meta(struct xdp_md *ctx, __u32 session)
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

	session = classify(&p);
	if (session < 0) {
		count(MIRROR_CNT_FILTERED);
		return XDP_DROP;
	}
	count(MIRROR_CNT_MATCHED);
	count_session(session);

	write_meta(ctx, session);
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
