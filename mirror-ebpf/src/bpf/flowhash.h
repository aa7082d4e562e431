/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * A symmetric flow hash: both directions of a flow get the same value, so a
 * target group sends a connection's two halves to the same member (what
 * Suricata's cluster_flow and a collector load balancer expect), and a VXLAN
 * feed's outer UDP source port (ECMP entropy) is stable per flow.
 *
 * Each endpoint (address, port) is hashed on its own with murmur3's mixing
 * steps; the two endpoint hashes are added (order-free), then mixed with the
 * protocol, the family and the outer VLAN id. Frames without IP addresses are
 * hashed by their MAC pair the same way.
 */
#ifndef MIRROR_FLOWHASH_H
#define MIRROR_FLOWHASH_H

#include <linux/types.h>
#include <linux/if_ether.h>

#include "abi.h"
#include "parse.h"

#define MIRROR_HASH_SEED 0x6d697272u /* "mirr" */

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* One murmur3 block step. */
static __always_inline __u32 hash_word(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51u;
	k = rotl32(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64u;
}

/* murmur3's finaliser: every input bit affects every output bit. */
static __always_inline __u32 hash_final(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 endpoint_hash(const __u32 addr[4], __u32 port)
{
	__u32 h = MIRROR_HASH_SEED;

	h = hash_word(h, addr[0]);
	h = hash_word(h, addr[1]);
	h = hash_word(h, addr[2]);
	h = hash_word(h, addr[3]);
	h = hash_word(h, port);
	return hash_final(h);
}

/* The symmetric hash of the frame `p` describes (`data`..`data_end` for the MACs). */
static __always_inline __u32 flow_hash(const struct pkt *p, void *data, void *data_end)
{
	__u32 both, kind;

	if (p->flags & MIRROR_PF_ADDRS) {
		__u32 sport = 0, dport = 0;

		if (p->flags & MIRROR_PF_PORTS) {
			sport = p->sport;
			dport = p->dport;
		}
		both = endpoint_hash(p->src, sport) + endpoint_hash(p->dst, dport);
		kind = ((p->flags & MIRROR_PF_IPV6) ? 0x600 : 0x400) | p->proto;
	} else {
		struct ethhdr *eth = data;
		__u32 a[4] = {}, b[4] = {};

		if ((void *)(eth + 1) > data_end)
			return 0;
		__builtin_memcpy(a, eth->h_source, ETH_ALEN);
		__builtin_memcpy(b, eth->h_dest, ETH_ALEN);
		both = endpoint_hash(a, 0) + endpoint_hash(b, 0);
		kind = 0;
	}
	both = hash_word(both, kind);
	if (p->flags & MIRROR_PF_VLAN)
		both = hash_word(both, 0x10000 | p->vlan);
	return hash_final(both);
}

#endif /* MIRROR_FLOWHASH_H */
