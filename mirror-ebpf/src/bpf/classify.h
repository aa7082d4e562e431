/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The classifier: bit-vector classification over a source's rule set (see the
 * comment above enum mirror_index in abi.h for the data layout).
 *
 * A rule set whose verdict no field can change (MIRROR_IX_CONSTANT, e.g. one
 * rule that accepts everything) is answered by one index lookup. Otherwise,
 * per frame: six class lookups (two address-trie walks of one lookup per
 * address byte at most, four array slots), then the verdict cache (struct
 * mirror_cache_entry in abi.h): one lookup by the class tuple, and on a hit
 * that is the verdict. On a miss: six bitmap lookups, AND of the 4-word
 * summaries, then a scan of the candidate words in rule order. The scan is a
 * bpf_loop whose every step either skips up to MIRROR_SCAN_BURST words in
 * which the six bitmaps share no rule, or lands on the frame's first matching
 * rule of the current session: an accept ends the scan, a reject moves the
 * scan to the first rule of the next session. So it runs at most
 * MIRROR_BITMAP_WORDS + MIRROR_MAX_SESSIONS + 1 steps, and in the common case
 * (one summary bit survives the AND) exactly one. Rule sets built to defeat
 * the summaries (every word a candidate, no rule surviving in any) make the
 * scan linear in the rule count: the cache is what keeps such a set's cost
 * flat for traffic whose class tuples repeat, which is nearly all traffic.
 *
 * Rule sets are swapped whole: the program reads `active_generation` once per
 * frame and uses only that generation's maps, and userspace waits an RCU grace
 * period (membarrier) after a flip before it touches the old generation.
 */
#ifndef MIRROR_CLASSIFY_H
#define MIRROR_CLASSIFY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "parse.h"

#define MIRROR_FIELDS 6

/* Which generation (0 or 1) of rule sets frames are classified with. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} active_generation SEC(".maps");

/* Inner-map templates; userspace creates the real ones per rule set. */
struct index_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MIRROR_IX_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
};

/* BPF_F_INNER_MAP: each rule set sizes its trie to its node count. */
struct addr_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct mirror_addr_node));
};

/* BPF_F_INNER_MAP: each rule set sizes its bitmap array to its class count. */
struct bitmap_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	/* By size: a pointer-only use leaves the struct a BTF forward declaration. */
	__uint(value_size, sizeof(struct mirror_bitmap));
};

/* Same size in every set (no BPF_F_INNER_MAP): the verifier inlines its lookup. */
struct cache_inner {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIRROR_CACHE_SLOTS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct mirror_cache_entry));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MIRROR_RULE_SETS);
	__type(key, __u32);
	__array(values, struct index_inner);
} rule_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MIRROR_RULE_SETS);
	__type(key, __u32);
	__array(values, struct cache_inner);
} rule_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MIRROR_RULE_SETS);
	__type(key, __u32);
	__array(values, struct addr_inner);
} rule_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MIRROR_RULE_SETS);
	__type(key, __u32);
	__array(values, struct bitmap_inner);
} rule_bitmaps SEC(".maps");

/* Bit index of the lowest set bit of x (x != 0): de Bruijn multiplication,
 * as BPF has no count-trailing-zeros instruction. The table is the inverse
 * of i -> ((1 << i) * 0x03f79d71b4ca8b09) >> 58 (a bug here was caught by
 * tests/filter_differential.rs: keep it generated, not typed). */
static const __u8 debruijn64[64] = {
	0,  1,  56, 2,  57, 49, 28, 3,  61, 58, 42, 50, 38, 29, 17, 4,
	62, 47, 59, 36, 45, 43, 51, 22, 53, 39, 33, 30, 24, 18, 12, 5,
	63, 55, 48, 27, 60, 41, 37, 16, 46, 35, 44, 21, 52, 32, 23, 11,
	54, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9,  13, 8,  7,  6,
};

static __always_inline __u32 lowest_bit(__u64 x)
{
	return debruijn64[((x & -x) * 0x03f79d71b4ca8b09ULL) >> 58];
}

struct scan {
	struct mirror_bitmap *bm[MIRROR_FIELDS];
	void *index;             /* the rule set's index array */
	__u64 summary[MIRROR_SUMMARY_WORDS];
	__u32 words;             /* bitmap words in use */
	__u32 floor;             /* first rule still eligible */
	__s32 session;           /* result: accepting session, or -1 */
};

/* First word >= w whose summary bit survived the AND, or MIRROR_BITMAP_WORDS. */
static __always_inline __u32 next_candidate(const struct scan *s, __u32 w)
{
	__u32 k;

#pragma unroll
	for (k = 0; k < MIRROR_SUMMARY_WORDS; k++) {
		__u64 m = s->summary[k];

		if (k < w / 64)
			continue;
		if (k == w / 64)
			m &= ~0ULL << (w & 63);
		if (m)
			return k * 64 + lowest_bit(m);
	}
	return MIRROR_BITMAP_WORDS;
}

/* Words checked in one scan step once the summaries let through a word in
 * which no rule survives: the following words are read straight away rather
 * than one loop step (and summary search) each. */
#define MIRROR_SCAN_BURST 8

static __always_inline __u64 common_rules(const struct scan *s, __u32 w)
{
	return s->bm[0]->word[w] & s->bm[1]->word[w] & s->bm[2]->word[w] &
	       s->bm[3]->word[w] & s->bm[4]->word[w] & s->bm[5]->word[w];
}

static long scan_step(__u64 i, void *data)
{
	struct scan *s = data;
	__u32 w = next_candidate(s, s->floor / 64);
	__u32 key, *rw, rule, j;
	__u64 x;

	if (w >= s->words || w >= MIRROR_BITMAP_WORDS)
		return 1;
	x = common_rules(s, w);
	if (w == s->floor / 64)
		x &= ~0ULL << (s->floor & 63);
	if (!x) {
#pragma unroll
		for (j = 1; j < MIRROR_SCAN_BURST; j++) {
			if (w + 1 >= s->words || w + 1 >= MIRROR_BITMAP_WORDS)
				return 1;
			w++;
			x = common_rules(s, w);
			if (x)
				break;
		}
		if (!x) {
			s->floor = (w + 1) * 64;
			return 0;
		}
	}
	rule = w * 64 + lowest_bit(x);
	key = MIRROR_IX_RULES + rule;
	rw = bpf_map_lookup_elem(s->index, &key);
	if (!rw)
		return 1;
	if (*rw & MIRROR_RW_ACCEPT) {
		s->session = (*rw >> MIRROR_RW_SESSION_SHIFT) & MIRROR_RW_SESSION_MASK;
		return 1;
	}
	/* A reject decides its session: go on with the next session's rules. */
	if ((*rw & MIRROR_RW_NEXT_MASK) <= rule)
		return 1; /* a malformed rule word; never loop in place */
	s->floor = *rw & MIRROR_RW_NEXT_MASK;
	return 0;
}

static __always_inline __u32 index_class(void *index, __u32 slot, bool *ok)
{
	__u32 *v = bpf_map_lookup_elem(index, &slot);

	if (!v) {
		*ok = false;
		return 0;
	}
	return *v;
}

/* Walks the address trie: one node per address byte until a leaf. The root
 * is read from the index array (MIRROR_IX_ROOTS), the rest from the trie. */
static __always_inline __u32 addr_class(void *index, void *trie, const struct pkt *p,
					__u32 field, __u32 unknown_slot, bool *ok)
{
	__u8 addr[16];
	__u32 node, depth, d, e;

	if (!(p->flags & MIRROR_PF_ADDRS))
		return index_class(index, unknown_slot, ok);
	__builtin_memcpy(addr, field == MIRROR_ADDR_SRC ? p->src : p->dst, 16);
	depth = p->flags & MIRROR_PF_IPV6 ? 16 : 4;
	node = field * 2 + (p->flags & MIRROR_PF_IPV6 ? 1 : 0);
	e = index_class(index, MIRROR_IX_ROOTS + node * 256 + addr[0], ok);
	if (e & MIRROR_ADDR_LEAF)
		return e & ~MIRROR_ADDR_LEAF;
	node = e;
	for (d = 1; d < 16 && d < depth; d++) {
		struct mirror_addr_node *n = bpf_map_lookup_elem(trie, &node);

		if (!n)
			break;
		e = n->entry[addr[d & 15]];
		if (e & MIRROR_ADDR_LEAF)
			return e & ~MIRROR_ADDR_LEAF;
		node = e;
	}
	*ok = false; /* a malformed trie: never happens with a userspace-built one */
	return 0;
}

/* Set to false before load to classify every frame by a scan (to measure
 * and test the scan alone); the verifier then drops the cache code. */
const volatile bool verdict_cache = true;

/* Slot of a class tuple in the verdict cache: a sum of independent products
 * (the CPU does the six multiplications in parallel), folded. */
static __always_inline __u32 cache_slot(const __u32 cls[MIRROR_FIELDS])
{
	__u32 h = cls[0] * 0x9e3779b1u + cls[1] * 0x85ebca6bu + cls[2] * 0xc2b2ae35u +
		  cls[3] * 0x27d4eb2fu + cls[4] * 0x165667b1u + cls[5] * 0xd3a2646du;

	return (h ^ (h >> 15) ^ (h >> 22)) & (MIRROR_CACHE_SLOTS - 1);
}

static __always_inline bool cache_hit(const struct mirror_cache_entry *e,
				      const __u32 cls[MIRROR_FIELDS])
{
	return e->valid && e->cls[0] == cls[0] && e->cls[1] == cls[1] && e->cls[2] == cls[2] &&
	       e->cls[3] == cls[3] && e->cls[4] == cls[4] && e->cls[5] == cls[5];
}

/*
 * The session (index in priority order) that mirrors frame `p` in direction
 * `dir` (0 ingress, 1 egress), or -1; -2 when a rule-set map is missing.
 * `*scanned` is set when the verdict was not cached.
 */
static __always_inline __s32 classify(const struct pkt *p, __u32 dir, bool *scanned)
{
	struct scan s = { .session = -1 };
	__u32 zero = 0, slot, cls[MIRROR_FIELDS], *gen, *words, *constant, fam, proto, i;
	void *index, *trie, *bitmaps, *cache;
	struct mirror_cache_entry *e;
	bool ok = true;
	__s32 v;

	gen = bpf_map_lookup_elem(&active_generation, &zero);
	if (!gen)
		return -2;
	slot = (dir & 1) * 2 + (*gen & 1);
	index = bpf_map_lookup_elem(&rule_index, &slot);
	if (!index)
		return -2;
	constant = bpf_map_lookup_elem(index, &(__u32){ MIRROR_IX_CONSTANT });
	if (!constant)
		return -2;
	if (*constant != MIRROR_CONST_NONE) {
		/* No field can change the verdict: no lookups, no cache. */
		v = *constant == MIRROR_CONST_NOTHING
			    ? -1
			    : (*constant - MIRROR_CONST_SESSION) & (MIRROR_MAX_SESSIONS - 1);
		goto out;
	}
	trie = bpf_map_lookup_elem(&rule_addr, &slot);
	cache = bpf_map_lookup_elem(&rule_cache, &slot);
	if (!trie || !cache)
		return -2;

	fam = p->flags & MIRROR_PF_IPV4 ? 1 : p->flags & MIRROR_PF_IPV6 ? 2 : 0;
	proto = p->flags & MIRROR_PF_PROTO ? p->proto : 256;
	cls[0] = index_class(index, MIRROR_IX_L3 + fam * 257 + proto, &ok);
	cls[1] = index_class(index, MIRROR_IX_VLAN + (p->flags & MIRROR_PF_VLAN ? p->vlan : 4096),
			     &ok);
	cls[2] = index_class(index, MIRROR_IX_SPORT + (p->flags & MIRROR_PF_PORTS ? p->sport : 65536),
			     &ok);
	cls[3] = index_class(index, MIRROR_IX_DPORT + (p->flags & MIRROR_PF_PORTS ? p->dport : 65536),
			     &ok);
	cls[4] = addr_class(index, trie, p, MIRROR_ADDR_SRC, MIRROR_IX_SRC_UNKNOWN, &ok);
	cls[5] = addr_class(index, trie, p, MIRROR_ADDR_DST, MIRROR_IX_DST_UNKNOWN, &ok);
	if (!ok)
		return -2;

	e = bpf_map_lookup_elem(cache, &(__u32){ cache_slot(cls) });
	if (!e)
		return -2;
	if (verdict_cache && cache_hit(e, cls)) {
		v = e->session < 0 ? -1 : e->session & (MIRROR_MAX_SESSIONS - 1);
		goto out;
	}
	*scanned = true;

	/* Not cached: what the scan needs. */
	bitmaps = bpf_map_lookup_elem(&rule_bitmaps, &slot);
	words = bpf_map_lookup_elem(index, &(__u32){ MIRROR_IX_WORDS });
	if (!bitmaps || !words)
		return -2;
	s.words = *words; /* 0: an empty rule set, the scan stops at once */
#pragma unroll
	for (i = 0; i < MIRROR_FIELDS; i++) {
		s.bm[i] = bpf_map_lookup_elem(bitmaps, &cls[i]);
		if (!s.bm[i])
			return -2;
	}
#pragma unroll
	for (i = 0; i < MIRROR_SUMMARY_WORDS; i++)
		s.summary[i] = s.bm[0]->summary[i] & s.bm[1]->summary[i] & s.bm[2]->summary[i] &
			       s.bm[3]->summary[i] & s.bm[4]->summary[i] & s.bm[5]->summary[i];
	s.index = index;
	bpf_loop(MIRROR_BITMAP_WORDS + MIRROR_MAX_SESSIONS + 1, scan_step, &s, 0);
	v = s.session;
	if (verdict_cache) {
		e->valid = 0;
#pragma unroll
		for (i = 0; i < MIRROR_FIELDS; i++)
			e->cls[i] = cls[i];
		e->session = v;
		e->valid = 1;
	}
out:
	/* Every way here leaves v in -1..MIRROR_MAX_SESSIONS-1 by construction
	 * (masks, not range checks, which the compiler may move away from the
	 * register the caller indexes with). */
	return v;
}

#endif /* MIRROR_CLASSIFY_H */
