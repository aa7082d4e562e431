// SPDX-License-Identifier: GPL-2.0-only
/*
 * Reference programs for the benchmark lab (`cargo xtask bench span`), not
 * used by the daemon: what `mirror` is measured against on the same ports.
 *
 *   xdp_count_drop  counts and drops every frame: at the feed port, the
 *                   ceiling (what the generator and veth carry); at a sink
 *                   port, the meter of what arrived (and, being an XDP
 *                   program, what lets the veth in front of it take frames
 *                   redirected by XDP).
 *   xdp_redirect    counts and redirects every frame to DEVMAP slot 0: the
 *                   in-kernel ceiling for one target port.
 *   xdp_broadcast   counts and broadcasts every frame to all ports of a
 *                   DEVMAP_HASH: the in-kernel ceiling for fan-out.
 *   tc_count        (tcx ingress) counts every frame that reached the stack
 *                   and lets it go on: the monitored traffic's own rate,
 *                   with and without mirror's copy mode in front of it.
 *   xdp_gen         the generator of `--feed xdp`, run by BPF_PROG_TEST_RUN
 *                   with live frames: redirects each frame to DEVMAP slot 0
 *                   (gen0), paced by `pace` when its interval is set (a frame
 *                   not yet due is dropped, not sent), and counts what it
 *                   sent.
 *   xdp_gen_pass    the generator of `--feed page`, paced and counted as
 *                   xdp_gen: passes each frame due to the stack of the
 *                   run's ingress device (genp0), which builds an skb around
 *                   the page-pool page the frame is in, as a NIC's driver
 *                   does.
 *   tc_forward      (tcx ingress on genp0) sends every skb out of the port
 *                   in `forward` (gen0) as it is: the page-pool skb crosses
 *                   the veth to feed0 through gen0's queue (backpressure).
 *   xdp_pass        passes every frame: on genp0 only so that the kernel
 *                   registers its RX queue, which a live test run needs.
 *   xdp_slow_drop   counts a frame, spends ~60 µs on it, drops it: a
 *                   consumer slower than any feed, so that the bench's
 *                   tests see feed0's ring overflow and check that what it
 *                   lost there is counted (gen0's drops) to the frame.
 *
 * Neither classifies: they are the floor of per-frame work.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} frames SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} port SEC(".maps");

/* Sized to the two ports broadcast to: a broadcast walks every hash bucket,
 * and mirror sizes each session's DEVMAP to its destinations too. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

/* xdp_gen's schedule: one frame every interval_ns (0: as fast as it runs),
 * the next due at next_ns; sent counts the frames redirected; a late
 * schedule sends up to burst frames back to back to catch up (what the
 * queue in front of the feed port takes at once: a veth RX ring holds 256,
 * the page feed's queue 4,096). */
struct gen_pace {
	__u64 interval_ns;
	__u64 next_ns;
	__u64 sent;
	__u64 burst;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_pace);
} pace SEC(".maps");

/* tc_forward's port: an ifindex in the program's namespace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} forward SEC(".maps");

static __always_inline void count(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&frames, &zero);

	if (n)
		*n += 1;
}

SEC("xdp")
int xdp_count_drop(struct xdp_md *ctx)
{
	count();
	return XDP_DROP;
}

SEC("xdp")
int xdp_redirect(struct xdp_md *ctx)
{
	count();
	return bpf_redirect_map(&port, 0, XDP_DROP);
}

SEC("xdp")
int xdp_broadcast(struct xdp_md *ctx)
{
	count();
	return bpf_redirect_map(&ports, 0, BPF_F_BROADCAST);
}

SEC("tcx/ingress")
int tc_count(struct __sk_buff *skb)
{
	count();
	return TC_ACT_UNSPEC;
}

/* Whether the generator sends this frame now (and counts it): always when
 * unpaced, else when it is due. */
static __always_inline int gen_due(void)
{
	__u32 zero = 0;
	struct gen_pace *p = bpf_map_lookup_elem(&pace, &zero);

	if (!p)
		return 0;
	if (p->interval_ns) {
		__u64 now = bpf_ktime_get_ns();
		__u64 floor = now - p->burst * p->interval_ns;

		if (now < p->next_ns)
			return 0;
		p->next_ns = (p->next_ns > floor ? p->next_ns : floor) +
			     p->interval_ns;
	}
	p->sent++;
	return 1;
}

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	if (!gen_due())
		return XDP_DROP;
	return bpf_redirect_map(&port, 0, XDP_DROP);
}

SEC("xdp")
int xdp_gen_pass(struct xdp_md *ctx)
{
	return gen_due() ? XDP_PASS : XDP_DROP;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* xdp_slow_drop's turns per frame: ~7 ns each here, ~60 µs a frame, so
 * feed0's NAPI takes ~15 kpps. (Much longer, and its polls hold off the RCU
 * grace period each generator call ends with: the live generators stall.) */
#define SLOW_TURNS (1 << 13)

static long slow_turn(__u64 i, void *ctx)
{
	return 0;
}

SEC("xdp")
int xdp_slow_drop(struct xdp_md *ctx)
{
	count();
	bpf_loop(SLOW_TURNS, slow_turn, NULL, 0);
	return XDP_DROP;
}

SEC("tcx/ingress")
int tc_forward(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&forward, &zero);

	if (!ifindex || !*ifindex)
		return TC_ACT_SHOT;
	return bpf_redirect(*ifindex, 0);
}
