// SPDX-License-Identifier: GPL-2.0-only
/*
 * xsk-fwd: a minimal single-core AF_XDP forwarder written against libxdp,
 * the peer `mirror`'s userspace (AF_XDP) path is measured against in the
 * span lab (`cargo xtask bench span`, case `xskfwd`).
 *
 *   xsk-fwd IN OUT SECONDS
 *
 * Receives every frame of IN's queue 0 (libxdp loads its default XDP program
 * that redirects to the socket) and transmits it on OUT's queue 0 from the
 * same UMEM: the RX socket and the TX socket share one UMEM, so a frame is
 * never copied in userspace; its address goes from the RX ring to the TX
 * ring, and back to the fill ring once the kernel completes it. One thread,
 * busy polling, batches of 64, a TX kick (sendto) per loop while frames are
 * outstanding, as libxdp's own samples do in copy mode. A frame that finds the TX ring full is dropped
 * (returned to the fill ring) and counted.
 *
 * Says "xsk-fwd: forwarding IN -> OUT" on stderr once both sockets are
 * bound. Runs for SECONDS, or until SIGINT/SIGTERM, then prints one line:
 *   rx=N tx=N tx_full=N rx_dropped=N rx_ring_full=N fill_empty=N
 * (the last three: the RX socket's XDP_STATISTICS)
 * and removes its sockets (and with them libxdp's XDP program).
 */
#include <errno.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <linux/if_xdp.h>
#include <xdp/xsk.h>

#define FRAMES 8192
#define FRAME_SIZE XSK_UMEM__DEFAULT_FRAME_SIZE
#define RING 4096
#define BATCH 64

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "xsk-fwd: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct xsk_ring_prod fill, fill_tx, tx;
	struct xsk_ring_cons comp, comp_tx, rx;
	struct xsk_socket *in = NULL, *out = NULL;
	struct xsk_umem *umem = NULL;
	unsigned long long n_rx = 0, n_tx = 0, n_done = 0, n_full = 0;
	double seconds, end;
	__u32 idx, i;
	void *area;
	int err;

	if (argc != 4 || (seconds = atof(argv[3])) <= 0) {
		fprintf(stderr, "usage: xsk-fwd IN OUT SECONDS\n");
		return 2;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	area = mmap(NULL, (size_t)FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		die("mmap", errno);
	struct xsk_umem_config ucfg = {
		.fill_size = RING,
		.comp_size = RING,
		.frame_size = FRAME_SIZE,
		.frame_headroom = 0,
	};
	err = xsk_umem__create(&umem, area, (__u64)FRAMES * FRAME_SIZE, &fill, &comp, &ucfg);
	if (err)
		die("xsk_umem__create", err);

	/* RX: libxdp loads and attaches its default XDP program on IN. */
	struct xsk_socket_config rcfg = {
		.rx_size = RING,
		.tx_size = 0,
		.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
	};
	err = xsk_socket__create(&in, argv[1], 0, umem, &rx, NULL, &rcfg);
	if (err)
		die("xsk_socket__create (IN)", err);
	/* TX on OUT, sharing the UMEM (its own fill and completion rings;
	 * a shared-UMEM socket binds with no mode flags). */
	struct xsk_socket_config tcfg = {
		.rx_size = 0,
		.tx_size = RING,
		.bind_flags = 0,
	};
	err = xsk_socket__create_shared(&out, argv[2], 0, umem, NULL, &tx, &fill_tx, &comp_tx,
					&tcfg);
	if (err)
		die("xsk_socket__create_shared (OUT)", err);

	/* Half the frames wait in the fill ring; the rest circulate through TX. */
	if (xsk_ring_prod__reserve(&fill, RING, &idx) != RING)
		die("fill ring", ENOSPC);
	for (i = 0; i < RING; i++)
		*xsk_ring_prod__fill_addr(&fill, idx + i) = (__u64)i * FRAME_SIZE;
	xsk_ring_prod__submit(&fill, RING);

	fprintf(stderr, "xsk-fwd: forwarding %s -> %s\n", argv[1], argv[2]);
	end = now() + seconds;
	for (unsigned long spin = 0; !stop; spin++) {
		__u32 idx_rx, idx_tx, idx_c, idx_f, n, room;

		if ((spin & 0xffff) == 0 && now() >= end)
			break;

		/* Copy mode transmits only inside sendto, at most 32 frames a
		 * call (the kernel's TX budget): kick while any are outstanding,
		 * as libxdp's xdpsock l2fwd does, or frames wait on the TX ring
		 * while the fill ring runs dry. */
		if (n_tx > n_done)
			sendto(xsk_socket__fd(out), NULL, 0, MSG_DONTWAIT, NULL, 0);

		/* Completed transmits: their frames go back to the fill ring. */
		n = xsk_ring_cons__peek(&comp_tx, BATCH, &idx_c);
		if (n) {
			n_done += n;
			while (xsk_ring_prod__reserve(&fill, n, &idx_f) != n)
				;
			for (i = 0; i < n; i++)
				*xsk_ring_prod__fill_addr(&fill, idx_f + i) =
					*xsk_ring_cons__comp_addr(&comp_tx, idx_c + i);
			xsk_ring_prod__submit(&fill, n);
			xsk_ring_cons__release(&comp_tx, n);
		}

		n = xsk_ring_cons__peek(&rx, BATCH, &idx_rx);
		if (!n) {
			if (xsk_ring_prod__needs_wakeup(&fill))
				recvfrom(xsk_socket__fd(in), NULL, 0, MSG_DONTWAIT, NULL, NULL);
			continue;
		}
		n_rx += n;
		room = xsk_ring_prod__reserve(&tx, n, &idx_tx);
		for (i = 0; i < room; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, idx_rx + i);
			struct xdp_desc *t = xsk_ring_prod__tx_desc(&tx, idx_tx + i);

			t->addr = d->addr;
			t->len = d->len;
		}
		if (room)
			xsk_ring_prod__submit(&tx, room);
		if (room < n) {
			/* TX ring full: these frames go straight back to the fill ring. */
			__u32 back = n - room;

			while (xsk_ring_prod__reserve(&fill, back, &idx_f) != back)
				;
			for (i = 0; i < back; i++)
				*xsk_ring_prod__fill_addr(&fill, idx_f + i) =
					xsk_ring_cons__rx_desc(&rx, idx_rx + room + i)->addr;
			xsk_ring_prod__submit(&fill, back);
			n_full += back;
		}
		xsk_ring_cons__release(&rx, n);
		n_tx += room;
	}

	struct xdp_statistics st = { 0 };
	socklen_t st_len = sizeof(st);

	if (getsockopt(xsk_socket__fd(in), SOL_XDP, XDP_STATISTICS, &st, &st_len))
		memset(&st, 0, sizeof(st));
	printf("rx=%llu tx=%llu tx_full=%llu rx_dropped=%llu rx_ring_full=%llu fill_empty=%llu\n",
	       n_rx, n_tx, n_full, (unsigned long long)st.rx_dropped,
	       (unsigned long long)st.rx_ring_full,
	       (unsigned long long)st.rx_fill_ring_empty_descs);
	fflush(stdout);
	xsk_socket__delete(out);
	xsk_socket__delete(in);
	xsk_umem__delete(umem);
	munmap(area, (size_t)FRAMES * FRAME_SIZE);
	return 0;
}
