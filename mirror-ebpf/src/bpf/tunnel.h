/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Tunnel encapsulation in the kernel path's DEVMAP programs (tap mode) and
 * copy mode's relay program (see struct mirror_tunnel in abi.h): the outer headers come whole from userspace; here
 * only what changes per copy is written. The bytes match what the userspace
 * sender puts on the wire (target/encap.rs) for the same copy, except the
 * IPv4 ID and IPv6 flow label, which the kernel's IP stack picks there.
 */
#ifndef MIRROR_TUNNEL_H
#define MIRROR_TUNNEL_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

#define TUN_ETH 14
#define TUN_IP4 20
#define TUN_IP6 40

/* What the program knows about the copy before it pushes the headers. */
struct tun_copy {
	__u32 hash;     /* symmetric flow hash (xdp_tap) */
	__u64 tstamp;   /* CLOCK_TAI when xdp_tap saw the frame */
	__u32 len;      /* bytes of the copy, after any cut */
	__u32 sequence; /* ERSPAN sequence number */
	__u64 count;    /* copies this slot encapsulated on this CPU before: the IPv4 ID */
	__u16 tci;      /* the frame's outer VLAN tag (ERSPAN), if tagged */
	bool tagged;
	bool cut;       /* cut to max_inner (ERSPAN's T bit) */
	bool egress;    /* seen on egress (copy mode; ERSPAN III's D bit) */
	/* Copy mode, a copy whose L4 checksum the egress device is still to
	 * fill in (CHECKSUM_PARTIAL): where its sum starts in the copy (0: not
	 * such a copy) and the checksum field's place after that. */
	__u32 csum_start;
	__u16 csum_offset;
};

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * VXLAN over IPv6: the UDP checksum is mandatory (RFC 8200; a collector takes
 * a zero one only with udp6zerocsumrx) and covers the whole copy. The copy is
 * read in chunks into a per-CPU buffer (bpf_xdp_load_bytes /
 * bpf_skb_load_bytes: the same code for both program types, and an skb's
 * paged part too) and summed there by bpf_csum_diff, which takes at most 512
 * bytes, a multiple of 4: the last chunk is padded with zeros, which the
 * Internet checksum ignores. 128 chunks cover 64 KiB, more than any
 * max_inner (a tunnel's mtu is at most 65535).
 */
#define CSUM_CHUNK 512
#define CSUM_CHUNKS 128

struct csum_buf {
	__u8 b[CSUM_CHUNK + 4]; /* + the last chunk's zero padding */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_buf);
} csum_scratch SEC(".maps");

/*
 * The one's-complement sum (32 bits, not folded) of the 16-bit words as
 * stored of copy `c` as it will leave: `ctx` is a struct xdp_md (`xdp`) or a
 * struct __sk_buff. False when a read fails.
 *
 * A copy whose inner L4 checksum the egress device fills in (CHECKSUM_PARTIAL,
 * copy mode: locally sent or from a veth) is summed as the kernel's own
 * tunnels do it (lco_csum): the bytes before the checksummed part, then the
 * complement of the field's current value (the pseudo-header sum), which is
 * what the checksummed part sums to once the device has filled it in.
 */
static __always_inline bool payload_sum(void *ctx, const bool xdp, const struct tun_copy *c,
					__u32 *sum)
{
	__u32 zero = 0, s = 0, len = c->len;
	struct csum_buf *buf = bpf_map_lookup_elem(&csum_scratch, &zero);

	if (!buf)
		return false;
	/* A copy that packet_length cut before the field counts as it is. */
	if (!xdp && c->csum_start && c->csum_start + c->csum_offset + 2 <= c->len) {
		__u16 field;

		if (bpf_skb_load_bytes(ctx, c->csum_start + c->csum_offset, &field, 2))
			return false;
		s = (__u16)~field;
		len = c->csum_start;
	}
	if (len > CSUM_CHUNK * CSUM_CHUNKS)
		return false;
	for (__u32 i = 0; i < CSUM_CHUNKS; i++) {
		__u32 done = i * CSUM_CHUNK, n;
		long r;

		if (done >= len)
			break;
		n = len - done;
		/* Hidden from clang, which would drop the check below as
		 * redundant (done < len); the verifier needs it. */
		asm volatile("" : "+r"(n));
		if (n < 1)
			return false;
		if (n > CSUM_CHUNK)
			n = CSUM_CHUNK;
		if (xdp)
			r = bpf_xdp_load_bytes(ctx, done, buf->b, n);
		else
			r = bpf_skb_load_bytes(ctx, done, buf->b, n);
		if (r)
			return false;
		buf->b[n] = 0;
		buf->b[n + 1] = 0;
		buf->b[n + 2] = 0;
		r = bpf_csum_diff(NULL, 0, (void *)buf->b, (n + 3) & ~3u, s);
		if (r < 0)
			return false;
		s = (__u32)r;
	}
	*sum = s;
	return true;
}

/* Folds a sum of 32-bit partial sums to 16 bits, complemented. */
static __always_inline __u16 csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return csum_fold((__u32)(sum & 0xffff) + (__u32)(sum >> 16));
}

/*
 * Copies the template, `n` bytes (a constant): 8 bytes at a time, then the
 * 16-bit words left (every header length is even). The packet is only
 * 2-byte aligned there; the x86 and arm64 JITs store unaligned words as they
 * are (the verifier checks alignment only under BPF_F_STRICT_ALIGNMENT).
 */
static __always_inline void copy_hdr(void *dst, const struct mirror_tunnel *t, const __u32 n)
{
	__u64 *d8 = dst;
	const __u64 *s8 = (const void *)t->hdr;
	__u16 *d2 = dst + n / 8 * 8;
	const __u16 *s2 = (const void *)t->hdr + n / 8 * 8;

#pragma unroll
	for (__u32 i = 0; i < n / 8; i++)
		d8[i] = s8[i];
#pragma unroll
	for (__u32 i = 0; i < n % 8 / 2; i++)
		d2[i] = s2[i];
}

/* The IP header's per-copy fields; `l4` is the tunnel header's offset. */
static __always_inline void fill_ip(void *data, const struct mirror_tunnel *t,
				    const struct tun_copy *c, const __u32 hl, const bool v6)
{
	if (v6) {
		__u32 *w0 = data + TUN_ETH;
		__u16 *plen = data + TUN_ETH + 4;

		/* Version 6, traffic class 0, the flow label from the flow hash
		 * (ECMP keeps a flow on one path, as for the VXLAN source port). */
		*w0 = bpf_htonl(0x60000000u | (c->hash & 0xfffff));
		*plen = bpf_htons(hl - TUN_ETH - TUN_IP6 + c->len);
	} else {
		__u16 *ip = data + TUN_ETH;
		__u16 tot = bpf_htons(hl - TUN_ETH + c->len);
		/* Unique per CPU for the next 2048 copies, across CPUs for the
		 * first 32: the ID matters only if something fragments them. */
		__u16 id = bpf_htons((__u16)(c->count << 5 | (bpf_get_smp_processor_id() & 31)));

		ip[1] = tot;
		ip[2] = id;
		ip[5] = csum_fold(t->ip_csum + tot + id);
	}
}

/*
 * The tunnel header's per-copy fields, at offset `l4` of `hl` header bytes.
 * Both are constants: a kind whose header would not fit `hl` is left out of
 * that copy of the code (the slot's kind and hdr_len always agree).
 * `payload` is the copy's sum (payload_sum) for VXLAN over IPv6.
 */
static __always_inline void fill_tunnel(void *data, const struct mirror_tunnel *t,
					const struct tun_copy *c, const __u32 l4, const __u32 hl,
					const __u32 payload)
{
	if (l4 + 16 > hl)
		return; /* plain GRE */
	if (t->kind == MIRROR_TUN_VXLAN) {
		__u16 *udp = data + l4;

		udp[0] = bpf_htons(49152 + (c->hash & 0x3fff)); /* = hash % 16384 */
		udp[2] = bpf_htons(16 + c->len);
		if (l4 == TUN_ETH + TUN_IP6) {
			/* The UDP length twice (in the pseudo-header and the
			 * header), the source port, the fixed words, the copy. A
			 * sum of 0 is sent as 0xffff (0 means none). */
			__u16 sum = csum_fold64((__u64)t->udp_csum + payload + udp[0] +
						2 * (__u32)udp[2]);

			udp[3] = sum ? sum : 0xffff;
		}
		return;
	}
	if (t->kind == MIRROR_TUN_ERSPAN2 || t->kind == MIRROR_TUN_ERSPAN3) {
		__u32 *gre_seq = data + l4 + 4;
		__u32 *w0 = data + l4 + 8;
		__u32 bits = 0;

		*gre_seq = bpf_htonl(c->sequence);
		if (c->tagged)
			/* VLAN, COS, En = 3: the tag is kept in the frame. */
			bits = (__u32)(c->tci & 0xfff) << 16 | (__u32)(c->tci >> 13) << 13 | 3 << 11;
		if (c->cut)
			bits |= 1 << 10;
		*w0 |= bpf_htonl(bits);
		if (t->kind == MIRROR_TUN_ERSPAN3 && l4 + 20 <= hl) {
			__u32 *ts = data + l4 + 12;
			__u64 unix_ns = c->tstamp - t->tai_offset;
			__u64 units = t->flags & MIRROR_TUN_F_NANOS100 ? unix_ns / 100 : unix_ns / 100000;

			*ts = bpf_htonl((__u32)units);
			if (c->egress)
				*(__u8 *)(data + l4 + 19) |= 0x08; /* D, in the word after */
		}
	}
	/* GRE: nothing changes per copy. */
}

/*
 * Pushes `hl` bytes (a constant, so every access below is checked at a fixed
 * offset) of outer headers in front of the copy and fills them in: `ctx` is
 * a struct xdp_md (`xdp`, a tap-mode DEVMAP program) or a struct __sk_buff
 * (copy mode's relay); only the push differs. Returns false when the
 * headroom was missing (or the copy could not be read for its checksum).
 */
static __always_inline bool push_headers(void *ctx, const bool xdp, const struct mirror_tunnel *t,
					 const struct tun_copy *c, const __u32 hl, const bool v6)
{
	void *data, *data_end;
	__u32 payload = 0;

	/* Before the push: the copy starts at offset 0. */
	if (v6 && hl == TUN_ETH + TUN_IP6 + 16 && t->kind == MIRROR_TUN_VXLAN &&
	    !payload_sum(ctx, xdp, c, &payload))
		return false;
	if (xdp) {
		struct xdp_md *x = ctx;

		if (bpf_xdp_adjust_head(x, -(int)hl))
			return false;
		data = (void *)(long)x->data;
		data_end = (void *)(long)x->data_end;
	} else {
		struct __sk_buff *skb = ctx;

		/* Room in front (copying the head if it is shared or short),
		 * zeroed; the MAC header moves to the new front. */
		if (bpf_skb_change_head(skb, hl, 0))
			return false;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	if (data + hl > data_end)
		return false;
	copy_hdr(data, t, hl);
	fill_ip(data, t, c, hl, v6);
	fill_tunnel(data, t, c, TUN_ETH + (v6 ? TUN_IP6 : TUN_IP4), hl, payload);
	return true;
}

/*
 * The header lengths that exist (Ethernet + IP + tunnel header), each its own
 * constant-offset copy of push_headers.
 */
static __always_inline bool encapsulate(void *ctx, const bool xdp, const struct mirror_tunnel *t,
					const struct tun_copy *c)
{
	bool v6 = t->flags & MIRROR_TUN_F_IPV6;

	if (!v6) {
		switch (t->hdr_len) {
		case TUN_ETH + TUN_IP4 + 4: /* GRE */
			return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP4 + 4, false);
		case TUN_ETH + TUN_IP4 + 8: /* GRE with key */
			return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP4 + 8, false);
		case TUN_ETH + TUN_IP4 + 16: /* VXLAN (UDP + VXLAN), ERSPAN II */
			return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP4 + 16, false);
		case TUN_ETH + TUN_IP4 + 20: /* ERSPAN III */
			return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP4 + 20, false);
		}
		return false;
	}
	switch (t->hdr_len) {
	case TUN_ETH + TUN_IP6 + 4:
		return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP6 + 4, true);
	case TUN_ETH + TUN_IP6 + 8:
		return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP6 + 8, true);
	case TUN_ETH + TUN_IP6 + 16:
		return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP6 + 16, true);
	case TUN_ETH + TUN_IP6 + 20:
		return push_headers(ctx, xdp, t, c, TUN_ETH + TUN_IP6 + 20, true);
	}
	return false;
}

#endif /* MIRROR_TUNNEL_H */
