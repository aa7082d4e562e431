/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * One bounds-checked parsing cursor over Ethernet, up to MIRROR_MAX_VLAN_DEPTH
 * VLAN tags, IPv4 (options, fragments), IPv6 (a bounded extension-header walk),
 * TCP/UDP/SCTP ports and ICMP/ICMPv6. Shaped after xdp-tools'
 * headers/xdp/parsing_helpers.h: every access is checked against data_end, and
 * a frame that ends early is described by what could be read (pkt.flags), never
 * rejected, so the classifier's answer is deterministic for every input.
 */
#ifndef MIRROR_PARSE_H
#define MIRROR_PARSE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8

struct cursor {
	void *pos;
	void *end;
};

/* What the classifier sees of a frame. Addresses in network order; IPv4 in word 0. */
struct pkt {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u16 vlan;
	__u16 flags; /* enum mirror_parse_flags */
	__u8 proto;
};

/* Returns a pointer to `len` bytes at the cursor and advances it, or NULL. */
static __always_inline void *cursor_take(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

struct vlan_tag {
	__be16 tci;
	__be16 next_proto;
};

/* The two 16-bit fields every port-carrying L4 header (TCP, UDP, SCTP) starts with. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

/* Fixed part of an IPv6 extension header (hop-by-hop, routing, destination, AH). */
struct ipv6_ext {
	__u8 next;
	__u8 len;
};

struct ipv6_frag {
	__u8 next;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

static __always_inline bool l4_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* Reads the ports of a port-carrying protocol, if the frame holds them. */
static __always_inline __u32 parse_l4(struct cursor *c, struct pkt *p)
{
	struct l4_ports *l4;

	if (!l4_has_ports(p->proto))
		return 0;
	l4 = cursor_take(c, sizeof(*l4));
	if (!l4)
		return MIRROR_CNT_PARSE_TRUNCATED;
	p->sport = bpf_ntohs(l4->source);
	p->dport = bpf_ntohs(l4->dest);
	p->flags |= MIRROR_PF_PORTS;
	return 0;
}

static __always_inline __u32 parse_ipv4(struct cursor *c, struct pkt *p)
{
	struct iphdr *ip = c->pos;
	__u32 hdr_len;

	p->flags |= MIRROR_PF_IPV4;
	if ((void *)(ip + 1) > c->end)
		return MIRROR_CNT_PARSE_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return MIRROR_CNT_PARSE_BAD_HEADER;
	p->src[0] = ip->saddr;
	p->dst[0] = ip->daddr;
	p->proto = ip->protocol;
	p->flags |= MIRROR_PF_ADDRS | MIRROR_PF_PROTO;

	hdr_len = ip->ihl * 4; /* 20..60: options are skipped, not read */
	if (!cursor_take(c, hdr_len))
		return MIRROR_CNT_PARSE_TRUNCATED;
	/* A non-first fragment carries no L4 header: classified without ports.
	 * The first fragment (offset 0) is classified like an unfragmented packet. */
	if (ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK))
		return MIRROR_CNT_FRAGMENT;
	return parse_l4(c, p);
}

static __always_inline __u32 parse_ipv6(struct cursor *c, struct pkt *p)
{
	struct ipv6hdr *ip6 = cursor_take(c, sizeof(struct ipv6hdr));
	__u8 next;
	int i;

	p->flags |= MIRROR_PF_IPV6;
	if (!ip6)
		return MIRROR_CNT_PARSE_TRUNCATED;
	if (ip6->version != 6)
		return MIRROR_CNT_PARSE_BAD_HEADER;
	__builtin_memcpy(p->src, &ip6->saddr, 16);
	__builtin_memcpy(p->dst, &ip6->daddr, 16);
	p->flags |= MIRROR_PF_ADDRS;
	next = ip6->nexthdr;

	/* Up to MIRROR_MAX_IPV6_EXT headers, and one more step to find what follows. */
	for (i = 0; i < MIRROR_MAX_IPV6_EXT + 1; i++) {
		struct ipv6_ext *ext;
		struct ipv6_frag *frag;

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			ext = cursor_take(c, sizeof(*ext));
			if (!ext)
				return MIRROR_CNT_PARSE_TRUNCATED;
			next = ext->next;
			/* (len + 1) * 8 bytes in all, 2 already taken. */
			if (!cursor_take(c, (ext->len + 1) * 8 - sizeof(*ext)))
				return MIRROR_CNT_PARSE_TRUNCATED;
			break;
		case IPPROTO_AH:
			ext = cursor_take(c, sizeof(*ext));
			if (!ext)
				return MIRROR_CNT_PARSE_TRUNCATED;
			next = ext->next;
			/* (len + 2) * 4 bytes in all. */
			if (!cursor_take(c, (ext->len + 2) * 4 - sizeof(*ext)))
				return MIRROR_CNT_PARSE_TRUNCATED;
			break;
		case IPPROTO_FRAGMENT:
			frag = cursor_take(c, sizeof(*frag));
			if (!frag)
				return MIRROR_CNT_PARSE_TRUNCATED;
			next = frag->next;
			if (frag->frag_off & bpf_htons(IPV6_FRAG_OFFSET_MASK)) {
				p->proto = next;
				p->flags |= MIRROR_PF_PROTO;
				return MIRROR_CNT_FRAGMENT;
			}
			break;
		default:
			p->proto = next;
			p->flags |= MIRROR_PF_PROTO;
			return parse_l4(c, p);
		}
	}
	/* Still inside the extension chain: the L4 protocol is unknown. */
	return MIRROR_CNT_PARSE_EXT_LIMIT;
}

/*
 * Fills `p` from the frame. Returns 0, or the MIRROR_CNT_PARSE_* / FRAGMENT
 * counter that describes why parsing stopped early.
 */
static __always_inline __u32 parse_frame(void *data, void *data_end, struct pkt *p)
{
	struct cursor c = { .pos = data, .end = data_end };
	struct ethhdr *eth = cursor_take(&c, sizeof(*eth));
	__u16 proto;
	int i;

	if (!eth)
		return MIRROR_CNT_PARSE_TRUNCATED;
	proto = eth->h_proto;

	for (i = 0; i < MIRROR_MAX_VLAN_DEPTH; i++) {
		struct vlan_tag *tag;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		tag = cursor_take(&c, sizeof(*tag));
		if (!tag)
			return MIRROR_CNT_PARSE_TRUNCATED;
		if (i == 0) {
			p->vlan = bpf_ntohs(tag->tci) & 0x0fff;
			p->flags |= MIRROR_PF_VLAN;
		}
		proto = tag->next_proto;
	}
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return MIRROR_CNT_PARSE_VLAN_LIMIT;

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(&c, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(&c, p);
	return MIRROR_CNT_PARSE_NON_IP;
}

#endif /* MIRROR_PARSE_H */
