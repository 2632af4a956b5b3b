// transport_sock.c: ipc:// (AF_UNIX stream) and tcp:// (TCP_NODELAY)
// connections on plain non-blocking POSIX sockets and epoll, each frame
// preceded by its 4-byte big-endian length. The default for those two
// schemes; the nng stream backend (transport_nng.c) serves tls+tcp:// and
// is still chosen for ipc/tcp by aai_tp_opts.nng_streams or
// AA_TRANSPORT=nng.
//
// Why our own socket I/O: nng 1.5.2 runs each receive completion through
// its poller thread and then a task thread, two wake-ups per received
// batch (8-10 us each on a 2-vCPU VM). Here the thread that epoll wakes
// reads the bytes and runs the frame callbacks itself: one wake-up.
//
// Design notes.
// * Loops. A loop is one thread, one epoll set and one eventfd. A listener
//   owns one loop, which accepts and serves every connection accepted from
//   it; a dialed connection gets a loop of its own. One shared loop for
//   every dialed connection of a process was measured too: the same
//   latency with one connection, 2-3x the calls/s with 100 and 1,000
//   connections in one process (docs/PERFORMANCE.md, "Socket backend").
//   It is not used because freeing one client from a callback of another
//   would then wait for the very thread that runs the callback (free
//   waits for the connection's receive path to end); with a loop per
//   dialed connection that cannot happen between clients. A loop is
//   counted (refs: the listener, and each connection on it); the last
//   unref ends it. On another thread the unref joins the loop thread and
//   frees it; on the loop thread itself (a free deferred from a callback)
//   the thread detaches and frees the loop on its way out. The sloop
//   struct is also the aai_listener, so an event naming the listener
//   never outlives it. Callbacks of connections accepted from one
//   listener share its thread: one of them must not free another (the
//   server layer frees a connection only from its own callbacks or from
//   threads of its own).
// * Receive, on the loop thread only: level-triggered EPOLLIN. Read into
//   rbuf until a short read (a short read means the socket is drained;
//   level triggering wakes us again if more came, which saves the read
//   that would return EAGAIN), deliver every complete frame with
//   aai_conn_rx, keep the partial tail. Only the loop thread reads a
//   connection, so its callbacks are serialised. Level triggering also
//   makes pause and resume a mask change: data left in the socket fires
//   again once EPOLLIN is back.
// * rbuf starts at 4 KiB, doubles while reads fill it (up to 64 KiB), and
//   grows to the exact size of a frame whose header says it is larger
//   (never beyond max_frame + 4). A buffer above 64 KiB is released back
//   to 4 KiB when it is empty and no large read came for RBUF_IDLE_MS: the
//   loop keeps such connections on its `big` list (loop thread only) and
//   wakes to sweep while the list is not empty. Steady large frames keep
//   the buffer, so they do not reallocate per frame.
// * Send: the double buffer and sending token of transport_nng.c, under
//   c->mtx. The token holder writes inline with MSG_DONTWAIT|MSG_NOSIGNAL
//   (no SIGPIPE, never blocks). A short write or EAGAIN passes the token
//   to the loop thread (tx_loop): EPOLLOUT is in the mask exactly while
//   tx_loop is set, and the loop writes the rest when the socket can take
//   it, then the frames queued meanwhile, and clears tx_loop.
// * Idle loops spin only where it pays (as the inproc ends do): a loop
//   remembers which of its last 16 idle gaps (from running out of events
//   to the next one) were short (under SPIN_MAX_US); while at least half
//   were, it polls epoll with a zero timeout for up to SPIN_MAX_US before
//   it sleeps, so a reply that comes within microseconds is taken without
//   a wake-up (a wake-up costs 20-50 us on these VMs: docs/PERFORMANCE.md,
//   "Socket backend"). A count, not an average: the heartbeats of a
//   thousand idle clients give a busy server loop a long gap now and then,
//   which must not switch its spinning off. A loop whose gaps are long
//   sleeps at once, but every
//   SPIN_PROBE-th sleep spins the full SPIN_MAX_US instead: two peers that
//   both sleep see long gaps (each other's wake-ups) and would never find
//   out that spinning pays. Spinning takes one of the process's spinner
//   slots (aai_tp_spin_take, shared with the inproc ends): at most online
//   CPUs - 1 spin at once, none on one CPU; a loop that finds none free
//   sleeps. A 1,000-connection client process thus has at most one
//   spinning loop on two CPUs.
// * Cork: while the loop thread delivers the frames of one read, sends only
//   queue; at its end (uncork) one write carries them all.
// * Flow control as in transport_nng.c: queued counts pend and fly (and the
//   shared budget); past send_max the conn fails with AA_ELIMIT; at the end
//   of a read the loop pauses reading (EPOLLIN off) while queued is over
//   send_pause (or the budget is over with queued > 0); the thread that
//   drains it to half (queue_sub) puts EPOLLIN back. Both decide under
//   c->mtx, where the mask is also changed (update_mask), so a drain cannot
//   slip between the check and the pause.
// * Close (aai_conn_fail → sconn_abort, any thread): shutdown(SHUT_RDWR).
//   That raises EPOLLHUP, which epoll reports whatever the mask (also while
//   paused), so the loop thread reads, sees stop_rx or EOF and ends the
//   receive path: rx_finish deletes the fd from the epoll set *on the loop
//   thread* (no later epoll_wait can name the conn), then aai_conn_rx_end
//   delivers down once. Nobody else ends the receive path, so a conn that
//   is registered cannot be freed before its loop is done with it: free
//   waits for rx_done, which only the loop thread sets.
// * Races and who wins. Close vs a write in flight: the write fails with
//   EPIPE (no signal) and drops the token, or finishes; either way down
//   comes from the loop. Close vs start: start registers the fd even on a
//   closing conn; the HUP already pending ends it with down. Free vs the
//   loop: decided in transport.c (rx_done/free_deferred under c->mtx).
//   Free vs a close still running on another thread: teardown waits
//   (aai_conn_quiesce) before closing the fd, so shutdown never hits a
//   reused fd number. Listener close vs accept: `accepting` under the
//   loop's mutex; a close during an accept leaves closing the fd to the
//   loop thread when the accept batch ends; free waits for it.
// * Out of fds at accept (EMFILE, ENFILE; also ENOBUFS, ENOMEM): the
//   pending connection keeps the listening socket readable, so the loop
//   takes EPOLLIN off it for ACCEPT_RETRY_MS (checkpoint
//   transport.accept_paused) and then tries again, instead of spinning.
// * Dial blocks the caller only: TCP connects non-blocking and polls up to
//   connect_timeout_ms; AF_UNIX connects with SO_SNDTIMEO set to it (a
//   full backlog makes the connect wait, then fail with EAGAIN).
// * fork: the child has none of the loop threads; nothing of ours runs at
//   exit, so a child that never uses the transport exits cleanly.
#define _GNU_SOURCE // accept4, SOCK_NONBLOCK, EPOLLRDHUP

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "transport_impl.h"

#define RBUF_INITIAL    (4u * 1024)
#define RBUF_KEEP       (64u * 1024) // a receive buffer up to this size stays
#define RBUF_IDLE_MS    200          // a larger one goes after this long idle
#define LOOP_EVENTS     64
#define LISTEN_BACKLOG  128
#define IPC_SNDBUF      (1 << 20)
#define ACCEPT_RETRY_MS 100 // accept paused this long when out of fds

typedef struct sloop sloop;
typedef struct sconn sconn;

typedef struct sconn {
	aai_conn base;
	int fd;
	sloop *loop;
	// Loop thread only: the receive buffer and the big-buffer list.
	aai_tbuf rbuf;
	atomic_size_t rx_cap; // rbuf.cap, for the test hook
	sconn *big_next;
	sconn *big_prev;
	bool in_big;
	uint64_t last_big_ms;
	// base.mtx: send buffers, the token, cork, flow control, epoll mask.
	aai_tbuf pend;
	aai_tbuf fly; // the write in flight; owned by the sending token
	size_t fly_off;
	bool sending; // a thread (or the loop: tx_loop) holds the token
	bool tx_loop; // the loop finishes the write when writable
	bool corked;
	size_t queued;
	bool rx_paused;
	bool registered; // in the loop's epoll set
	uint32_t mask;   // events asked for while registered
} sconn;

struct sloop {
	aai_listener base; // used when the loop belongs to a listener
	int epfd;
	int wakefd;
	pthread_t thread;
	pthread_mutex_t mtx; // refs, quit, self_free, listener fields
	pthread_cond_t cv;   // accepting went false
	int refs;
	atomic_bool quit;
	bool self_free; // the loop thread frees the loop on its way out
	// Loop thread only.
	sconn *big;
	int nbig;
	uint64_t last_sweep_ms;
	bool accept_paused; // out of fds: EPOLLIN off on lfd for a while
	uint64_t accept_paused_ms;
	uint16_t short_gaps; // the last 16 idle gaps: bit set if short
	unsigned sleeps;     // counts sleeps between probes
	// Listener (mtx): the accepting socket, closed once.
	bool is_listener;
	int lfd;
	bool lclosed;
	bool accepting;
	bool tcp;
	char *unlink_path; // ipc: the socket file, removed at close
	aai_tp_opts opts;  // for accepted conns; heartbeat frame copied
	uint8_t *hb_frame;
	void (*accept)(void *, aai_conn *);
	void *arg;
};

// The epoll tag of a loop's eventfd (a listener's socket is tagged with
// the loop itself, a connection with its sconn).
static char wake_tag;

// The loop whose thread this is (NULL on other threads).
static _Thread_local sloop *current_loop;

static const aai_conn_ops sconn_ops;

// ---- addresses ----

typedef struct saddr {
	struct sockaddr_storage ss;
	socklen_t len;
	int family;
	bool tcp;
} saddr;

// parse_ipc fills a for ipc://path (the path as nng took it: the rest of
// the URL, relative or absolute).
static int
parse_ipc(saddr *a, const char *path)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(un->sun_path)) {
		return AA_EINVAL;
	}
	memset(a, 0, sizeof(*a));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, n + 1);
	a->len = (socklen_t)sizeof(*un);
	a->family = AF_UNIX;
	a->tcp = false;
	return 0;
}

// resolve_tcp resolves tcp://host:port (host may be a name, an IPv4
// address, [IPv6], empty or * for any) into *res (freeaddrinfo).
static int
resolve_tcp(struct addrinfo **res, const char *hp, bool passive)
{
	char host[256];
	const char *colon;
	const char *h = hp;
	size_t hlen;
	if (hp[0] == '[') {
		const char *end = strchr(hp, ']');
		if (end == NULL || end[1] != ':') {
			return AA_EINVAL;
		}
		h = hp + 1;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(hp, ':');
		if (colon == NULL) {
			return AA_EINVAL;
		}
		hlen = (size_t)(colon - hp);
	}
	if (hlen >= sizeof(host)) {
		return AA_EINVAL;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	const char *port = colon + 1;
	char *endp;
	if (*port == '\0') {
		return AA_EINVAL;
	}
	long pn = strtol(port, &endp, 10);
	if (*endp != '\0' || pn < 0 || pn > 65535) {
		return AA_EINVAL;
	}
	struct addrinfo hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	bool any = hlen == 0 || strcmp(host, "*") == 0;
	if (any) {
		hints.ai_family = AF_INET;
		hints.ai_flags |= AI_PASSIVE;
	} else {
		hints.ai_family = AF_UNSPEC;
		if (passive) {
			hints.ai_flags |= AI_PASSIVE;
		}
	}
	if (getaddrinfo(any ? NULL : host, port, &hints, res) != 0) {
		return AA_EINVAL;
	}
	return 0;
}

static int
map_errno(int e)
{
	switch (e) {
	case ECONNREFUSED:
	case ENOENT:
		return AA_ECONNREF;
	case ETIMEDOUT:
	case EAGAIN:
	case EINPROGRESS:
		return AA_ETIMEDOUT;
	case EADDRINUSE:
		return AA_EBUSY;
	case EADDRNOTAVAIL:
	case EAFNOSUPPORT:
	case EINVAL:
	case ENAMETOOLONG:
	case ENOTDIR:
		return AA_EINVAL;
	case ENOMEM:
	case ENOBUFS:
		return AA_ENOMEM;
	default:
		return AA_ESYSTEM;
	}
}

// set_ipc_sndbuf: an AF_UNIX stream's in-flight bytes are bounded by the
// sender's SO_SNDBUF (208 KiB by default); 1 MiB (the kernel doubles it)
// lets a 1 MiB frame go in one or two writes instead of five wake-ups of
// each side. It costs kernel memory only while bytes are in flight.
// Measured: echo of 1 MiB payloads went from 29-57 % to 75-117 % of a raw
// socket's rate (docs/PERFORMANCE.md, "Socket backend"). TCP keeps the
// kernel's autotuning, which measured as well as a fixed 1 MiB.
static void
set_ipc_sndbuf(int fd)
{
	int n = IPC_SNDBUF;
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof(n));
}

static void
set_nodelay(int fd)
{
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// ---- loops ----

static void *loop_main(void *arg);

static int
loop_alloc(sloop **lpp)
{
	sloop *lp = aai_zalloc(sizeof(*lp));
	if (lp == NULL) {
		return AA_ENOMEM;
	}
	lp->lfd = -1;
	atomic_init(&lp->quit, false);
	lp->epfd = epoll_create1(EPOLL_CLOEXEC);
	lp->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake_tag};
	if (lp->epfd < 0 || lp->wakefd < 0 ||
	    epoll_ctl(lp->epfd, EPOLL_CTL_ADD, lp->wakefd, &ev) != 0) {
		goto fail;
	}
	aai_mtx_init(&lp->mtx);
	aai_cv_init(&lp->cv);
	*lpp = lp;
	return 0;
fail:
	if (lp->epfd >= 0) {
		close(lp->epfd);
	}
	if (lp->wakefd >= 0) {
		close(lp->wakefd);
	}
	aai_free(lp);
	return AA_ESYSTEM;
}

// loop_run starts the loop's thread.
static int
loop_run(sloop *lp)
{
	if (pthread_create(&lp->thread, NULL, loop_main, lp) != 0) {
		return AA_ESYSTEM;
	}
	return 0;
}

static void
loop_destroy(sloop *lp)
{
	close(lp->epfd);
	close(lp->wakefd);
	aai_free(lp->unlink_path);
	aai_free(lp->hb_frame);
	aai_cv_fini(&lp->cv);
	aai_mtx_fini(&lp->mtx);
	aai_free(lp);
}

static void
loop_ref(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	lp->refs++;
	aai_mtx_unlock(&lp->mtx);
}

// loop_unref drops a reference; the last one ends the loop (see notes).
static void
loop_unref(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (--lp->refs > 0) {
		aai_mtx_unlock(&lp->mtx);
		return;
	}
	bool own = current_loop == lp;
	lp->self_free = own;
	atomic_store(&lp->quit, true);
	aai_mtx_unlock(&lp->mtx);
	uint64_t one = 1;
	ssize_t rv = write(lp->wakefd, &one, sizeof(one));
	(void)rv;
	if (own) {
		pthread_detach(pthread_self());
		return; // loop_main frees lp when this event ends
	}
	pthread_join(lp->thread, NULL);
	loop_destroy(lp);
}

// ---- connection: send ----

static bool
budget_over(const aai_conn *c)
{
	return c->budget != NULL && c->budget->max != 0 &&
	       atomic_load(&c->budget->used) > c->budget->max;
}

// update_mask brings the epoll registration in line with rx_paused and
// tx_loop. Expects base.mtx.
static void
update_mask(sconn *sc)
{
	if (!sc->registered) {
		return;
	}
	uint32_t ev = (sc->rx_paused ? 0u : (uint32_t)(EPOLLIN | EPOLLRDHUP)) |
	              (sc->tx_loop ? (uint32_t)EPOLLOUT : 0u);
	if (ev == sc->mask) {
		return;
	}
	sc->mask = ev;
	struct epoll_event e = {.events = ev, .data.ptr = sc};
	(void)epoll_ctl(sc->loop->epfd, EPOLL_CTL_MOD, sc->fd, &e);
}

// queue_sub takes n written bytes off the count and resumes a paused
// receive once queued is down to half (or zero). Expects base.mtx.
static void
queue_sub(sconn *sc, size_t n)
{
	aai_conn *c = &sc->base;
	sc->queued -= n;
	if (c->budget != NULL) {
		atomic_fetch_sub(&c->budget->used, n);
	}
	if (!sc->rx_paused || c->closing ||
	    (sc->queued > c->send_pause / 2 ||
	     (budget_over(c) && sc->queued > 0))) {
		return;
	}
	sc->rx_paused = false;
	atomic_store(&c->rx_paused, false);
	update_mask(sc);
}

// tx_run writes fly, then whatever was queued meanwhile, until nothing is
// left; the caller holds the sending token (as a sender, or as the loop
// thread when tx_loop is set). A write the socket cannot take at once
// passes the token to the loop thread (EPOLLOUT) and returns.
static void
tx_run(sconn *sc)
{
	aai_conn *c = &sc->base;
	for (;;) {
		while (sc->fly_off < sc->fly.len) {
			size_t want = sc->fly.len - sc->fly_off;
			ssize_t n = send(sc->fd, sc->fly.p + sc->fly_off, want,
			                 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0) {
				sc->fly_off += (size_t)n;
				if ((size_t)n == want) {
					break;
				}
			} else if (n < 0 && errno == EINTR) {
				continue;
			} else if (n < 0 && errno != EAGAIN &&
			           errno != EWOULDBLOCK) {
				aai_mtx_lock(&c->mtx);
				sc->sending = false;
				sc->tx_loop = false;
				update_mask(sc);
				aai_mtx_unlock(&c->mtx);
				aai_conn_fail(c, AA_ECONNLOST);
				return;
			}
			// Socket full (short write or EAGAIN): the loop
			// thread writes the rest when it can.
			aai_mtx_lock(&c->mtx);
			sc->tx_loop = true;
			update_mask(sc);
			aai_mtx_unlock(&c->mtx);
			return;
		}
		aai_mtx_lock(&c->mtx);
		queue_sub(sc, sc->fly.len);
		sc->fly.len = 0;
		sc->fly_off = 0;
		if (sc->pend.len == 0 || c->closing) {
			sc->sending = false;
			sc->tx_loop = false;
			update_mask(sc);
			aai_mtx_unlock(&c->mtx);
			return;
		}
		aai_tbuf t = sc->fly;
		sc->fly = sc->pend;
		sc->pend = t;
		aai_mtx_unlock(&c->mtx);
	}
}

// take_token swaps pend into fly for the caller, who now holds the token.
// Expects base.mtx, !sending, pend not empty.
static void
take_token(sconn *sc)
{
	sc->sending = true;
	aai_tbuf t = sc->fly;
	sc->fly = sc->pend;
	sc->pend = t;
	sc->fly_off = 0;
}

static int
sconn_send(aai_conn *c, size_t len, const void *data,
           void (*encode)(void *ctx, uint8_t *dst), void *ctx)
{
	sconn *sc = (sconn *)c;
	aai_mtx_lock(&c->mtx);
	if (c->closing) {
		aai_mtx_unlock(&c->mtx);
		return AA_ECLOSED;
	}
	if (sc->queued + len + AAI_TP_HDR > c->send_max) {
		// The peer reads nothing: drop it rather than grow.
		aai_mtx_unlock(&c->mtx);
		aai_conn_fail(c, AA_ELIMIT);
		return AA_ELIMIT;
	}
	int rv = aai_tbuf_put_frame(&sc->pend, len, data, encode, ctx);
	if (rv == 0) {
		sc->queued += len + AAI_TP_HDR;
		if (c->budget != NULL) {
			atomic_fetch_add(&c->budget->used, len + AAI_TP_HDR);
		}
	}
	if (rv != 0 || sc->sending || sc->corked) {
		aai_mtx_unlock(&c->mtx);
		return rv;
	}
	take_token(sc);
	aai_mtx_unlock(&c->mtx);
	tx_run(sc);
	return 0;
}

// uncork ends a read's batch: what its callbacks queued goes out in one
// write, on the loop thread.
static void
uncork(sconn *sc)
{
	aai_conn *c = &sc->base;
	aai_mtx_lock(&c->mtx);
	sc->corked = false;
	if (sc->sending || sc->pend.len == 0 || c->closing) {
		aai_mtx_unlock(&c->mtx);
		return;
	}
	take_token(sc);
	aai_mtx_unlock(&c->mtx);
	tx_run(sc);
}

// ---- connection: receive (loop thread) ----

static void
big_remove(sconn *sc)
{
	if (!sc->in_big) {
		return;
	}
	sloop *lp = sc->loop;
	if (sc->big_prev != NULL) {
		sc->big_prev->big_next = sc->big_next;
	} else {
		lp->big = sc->big_next;
	}
	if (sc->big_next != NULL) {
		sc->big_next->big_prev = sc->big_prev;
	}
	sc->big_next = sc->big_prev = NULL;
	sc->in_big = false;
	lp->nbig--;
}

static void
big_note(sconn *sc, uint64_t now)
{
	sc->last_big_ms = now;
	if (sc->in_big) {
		return;
	}
	sloop *lp = sc->loop;
	sc->big_prev = NULL;
	sc->big_next = lp->big;
	if (lp->big != NULL) {
		lp->big->big_prev = sc;
	}
	lp->big = sc;
	sc->in_big = true;
	lp->nbig++;
}

// rbuf_resize moves rbuf's bytes into a buffer of cap bytes.
static int
rbuf_resize(sconn *sc, size_t cap)
{
	uint8_t *p = aai_alloc(cap);
	if (p == NULL) {
		return AA_ENOMEM;
	}
	if (sc->rbuf.len > 0) {
		memcpy(p, sc->rbuf.p, sc->rbuf.len);
	}
	aai_free(sc->rbuf.p);
	sc->rbuf.p = p;
	sc->rbuf.cap = cap;
	atomic_store_explicit(&sc->rx_cap, cap, memory_order_relaxed);
	return 0;
}

// rx_finish ends the receive path on the loop thread: the fd leaves the
// epoll set here, so that no later event names sc, then down.
static void
rx_finish(sconn *sc, int err)
{
	aai_conn *c = &sc->base;
	aai_conn_fail(c, err); // sends stop too
	aai_mtx_lock(&c->mtx);
	if (sc->registered) {
		sc->registered = false;
		(void)epoll_ctl(sc->loop->epfd, EPOLL_CTL_DEL, sc->fd, NULL);
	}
	aai_mtx_unlock(&c->mtx);
	big_remove(sc);
	if (aai_conn_rx_end(c, err)) {
		c->ops->teardown(c, true);
	}
}

// rx_pause_now decides, after a read, whether reading pauses for the
// bytes the peer has not read (EPOLLIN off until queue_sub resumes it).
static bool
rx_pause_now(sconn *sc)
{
	aai_conn *c = &sc->base;
	aai_mtx_lock(&c->mtx);
	bool pause =
	    !c->closing && c->send_pause != 0 &&
	    (sc->queued > c->send_pause || (budget_over(c) && sc->queued > 0));
	if (pause) {
		sc->rx_paused = true;
		atomic_store(&c->rx_paused, true);
		if (c->budget != NULL) {
			atomic_fetch_add(&c->budget->pauses, 1);
		}
		update_mask(sc);
	}
	aai_mtx_unlock(&c->mtx);
	return pause;
}

// rx_read reads until the socket is drained (or reading pauses) and
// delivers what came. Returns false when sc is gone (receive path ended).
static bool
rx_read(sconn *sc)
{
	aai_conn *c = &sc->base;
	for (;;) {
		if (atomic_load(&c->stop_rx)) {
			rx_finish(sc, AA_ECONNLOST);
			return false;
		}
		size_t room = sc->rbuf.cap - sc->rbuf.len;
		ssize_t n = recv(sc->fd, sc->rbuf.p + sc->rbuf.len, room, 0);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return true;
		}
		if (n <= 0) {
			rx_finish(sc, AA_ECONNLOST);
			return false;
		}
		sc->rbuf.len += (size_t)n;
		if (sc->rbuf.len > RBUF_KEEP) {
			big_note(sc, aai_tp_now_ms());
		}
		size_t used, need;
		aai_mtx_lock(&c->mtx);
		sc->corked = true;
		aai_mtx_unlock(&c->mtx);
		int err =
		    aai_conn_rx(c, sc->rbuf.p, sc->rbuf.len, &used, &need);
		uncork(sc);
		if (err != 0) {
			rx_finish(sc, err);
			return false;
		}
		if (used > 0) {
			sc->rbuf.len -= used;
			if (sc->rbuf.len > 0) {
				memmove(sc->rbuf.p, sc->rbuf.p + used,
				        sc->rbuf.len);
			}
		}
		size_t want = 0;
		if (need > sc->rbuf.cap) {
			want = need; // the frame whose header we have
		} else if ((size_t)n == room && sc->rbuf.cap < RBUF_KEEP) {
			want = sc->rbuf.cap * 2; // busy stream
		}
		if (want != 0) {
			if (rbuf_resize(sc, want) != 0) {
				rx_finish(sc, AA_ENOMEM);
				return false;
			}
			if (want > RBUF_KEEP) {
				big_note(sc, aai_tp_now_ms());
			}
		}
		if (rx_pause_now(sc)) {
			return true; // a drain or a close wakes us again
		}
		if ((size_t)n < room) {
			return true; // drained; level triggering brings more
		}
	}
}

// conn_event handles one epoll event of sc on its loop thread.
static void
conn_event(sconn *sc, uint32_t ev)
{
	aai_conn *c = &sc->base;
	if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
		aai_mtx_lock(&c->mtx);
		bool mine = sc->tx_loop;
		aai_mtx_unlock(&c->mtx);
		if (mine) {
			tx_run(sc); // we hold the token
		}
	}
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
		(void)rx_read(sc);
	}
}

// sweep releases idle large receive buffers (see notes).
static void
sweep(sloop *lp, uint64_t now)
{
	sconn *sc = lp->big;
	lp->last_sweep_ms = now;
	while (sc != NULL) {
		sconn *next = sc->big_next;
		if (sc->rbuf.len == 0 &&
		    now - sc->last_big_ms >= RBUF_IDLE_MS) {
			if (rbuf_resize(sc, RBUF_INITIAL) == 0) {
				big_remove(sc);
			}
		}
		sc = next;
	}
}

static void listener_accept(sloop *lp);
static void accept_resume(sloop *lp);

#define SPIN_MAX_US 50u // the longest spin, and the gap it pays up to
#define SPIN_PROBE  16u // every SPIN_PROBE-th sleep is a full spin

static atomic_uint_fast64_t n_spins, n_spin_hits;

void
aai_sock_spins(uint64_t *spins, uint64_t *hits)
{
	*spins = atomic_load(&n_spins);
	*hits = atomic_load(&n_spin_hits);
}

// loop_wait waits for events as epoll_wait(timeout) does, spinning first
// where it pays (see the notes). Loop thread only.
static int
loop_wait(sloop *lp, struct epoll_event *evs, int timeout)
{
	uint64_t t0 = aa_clock_us();
	uint64_t budget = 0;
	if (__builtin_popcount(lp->short_gaps) >= 8 ||
	    ++lp->sleeps % SPIN_PROBE == 0) {
		budget = SPIN_MAX_US;
	}
	int n = 0;
	if (budget > 0 && aai_tp_spin_take()) {
		do {
			n = epoll_wait(lp->epfd, evs, LOOP_EVENTS, 0);
			if (n == 0) {
				// A thread of this CPU that has work
				// (a caller woken by a handler) goes
				// first: spinning must not delay it.
				sched_yield();
			}
		} while (n == 0 && !atomic_load(&lp->quit) &&
		         aa_clock_us() - t0 < budget);
		aai_tp_spin_release();
		atomic_fetch_add(&n_spins, 1);
		if (n > 0) {
			atomic_fetch_add(&n_spin_hits, 1);
		}
	}
	if (n == 0 && !atomic_load(&lp->quit)) {
		n = epoll_wait(lp->epfd, evs, LOOP_EVENTS, timeout);
	}
	if (n > 0) {
		bool is_short = aa_clock_us() - t0 < SPIN_MAX_US;
		lp->short_gaps = (uint16_t)(lp->short_gaps << 1 | is_short);
	}
	return n;
}

static void *
loop_main(void *arg)
{
	sloop *lp = arg;
	struct epoll_event evs[LOOP_EVENTS];
	current_loop = lp;
	while (!atomic_load(&lp->quit)) {
		int timeout = lp->nbig > 0 ? RBUF_IDLE_MS / 2 : -1;
		if (lp->accept_paused &&
		    (timeout < 0 || timeout > ACCEPT_RETRY_MS)) {
			timeout = ACCEPT_RETRY_MS;
		}
		int n = loop_wait(lp, evs, timeout);
		if (n < 0 && errno != EINTR) {
			aai_panic("epoll_wait: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &wake_tag) {
				uint64_t v;
				ssize_t rv = read(lp->wakefd, &v, sizeof(v));
				(void)rv;
			} else if (p == lp) {
				listener_accept(lp);
			} else {
				conn_event(p, evs[i].events);
			}
			if (atomic_load(&lp->quit)) {
				break; // the last conn went; lp may be ours
			}
		}
		if (lp->accept_paused &&
		    aai_tp_now_ms() - lp->accept_paused_ms >=
		        ACCEPT_RETRY_MS) {
			accept_resume(lp);
		}
		if (lp->nbig > 0) {
			uint64_t now = aai_tp_now_ms();
			if (now - lp->last_sweep_ms >= RBUF_IDLE_MS / 2) {
				sweep(lp, now);
			}
		}
	}
	aai_mtx_lock(&lp->mtx);
	bool self_free = lp->self_free;
	aai_mtx_unlock(&lp->mtx);
	if (self_free) {
		loop_destroy(lp);
	}
	return NULL;
}

// ---- connection: lifecycle ----

static void
sconn_start(aai_conn *c)
{
	sconn *sc = (sconn *)c;
	aai_mtx_lock(&c->mtx);
	// A send before start may already have left a write to the loop
	// (tx_loop): the first mask asks for EPOLLOUT then.
	sc->mask = (sc->rx_paused ? 0u : (uint32_t)(EPOLLIN | EPOLLRDHUP)) |
	           (sc->tx_loop ? (uint32_t)EPOLLOUT : 0u);
	struct epoll_event e = {.events = sc->mask, .data.ptr = sc};
	int rv = epoll_ctl(sc->loop->epfd, EPOLL_CTL_ADD, sc->fd, &e);
	sc->registered = rv == 0;
	aai_mtx_unlock(&c->mtx);
	if (rv != 0) {
		aai_panic("epoll_ctl add: %s", strerror(errno));
	}
}

// sconn_abort runs after c->closing was set (aai_conn_fail): the HUP it
// raises ends the receive path on the loop thread.
static void
sconn_abort(aai_conn *c)
{
	sconn *sc = (sconn *)c;
	(void)shutdown(sc->fd, SHUT_RDWR);
}

static void
sconn_teardown(aai_conn *c, bool from_rx)
{
	sconn *sc = (sconn *)c;
	(void)from_rx; // the loop thread left the conn before rx_end
	if (c->timer != NULL) {
		nng_aio_stop(c->timer);
	}
	aai_conn_quiesce(c); // a close on another thread may still use fd
	close(sc->fd);
	if (c->budget != NULL) {
		atomic_fetch_sub(&c->budget->used, sc->queued); // never sent
	}
	sloop *lp = sc->loop;
	aai_tbuf_fini(&sc->rbuf);
	aai_tbuf_fini(&sc->pend);
	aai_tbuf_fini(&sc->fly);
	aai_conn_base_fini(c);
	aai_free(sc);
	aai_live_dec(AA_LIVE_OTHER);
	loop_unref(lp);
}

static const aai_conn_ops sconn_ops = {
    .start = sconn_start,
    .send = sconn_send,
    .abort = sconn_abort,
    .teardown = sconn_teardown,
};

// sconn_alloc wraps the connected non-blocking fd on loop lp (taking a
// reference to lp); on error fd is closed.
static int
sconn_alloc(aai_conn **cp, int fd, sloop *lp, const aai_tp_opts *o)
{
	sconn *sc = aai_zalloc(sizeof(*sc));
	int rv;
	if (sc == NULL) {
		close(fd);
		return AA_ENOMEM;
	}
	if ((rv = aai_conn_base_init(&sc->base, &sconn_ops, o)) != 0) {
		close(fd);
		aai_free(sc);
		return rv;
	}
	sc->fd = fd;
	sc->loop = lp;
	if (rbuf_resize(sc, RBUF_INITIAL) != 0) {
		aai_conn_base_fini(&sc->base);
		close(fd);
		aai_free(sc);
		return AA_ENOMEM;
	}
	loop_ref(lp);
	aai_live_inc(AA_LIVE_OTHER);
	*cp = &sc->base;
	return 0;
}

size_t
aai_sock_rx_cap(aai_conn *c)
{
	if (c->ops != &sconn_ops) {
		return 0;
	}
	return atomic_load_explicit(&((sconn *)c)->rx_cap,
	                            memory_order_relaxed);
}

// ---- dial ----

// connect_unix connects fd (blocking) with SO_SNDTIMEO as the bound: a
// full backlog makes connect wait, then fail with EAGAIN.
static int
connect_unix(int fd, const saddr *a, int timeout_ms)
{
	struct timeval tv = {.tv_sec = timeout_ms / 1000,
	                     .tv_usec = (timeout_ms % 1000) * 1000};
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int rv;
	do {
		rv = connect(fd, (const struct sockaddr *)&a->ss, a->len);
	} while (rv != 0 && errno == EINTR);
	if (rv != 0) {
		return map_errno(errno);
	}
	struct timeval zero = {0, 0};
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof(zero));
	return 0;
}

// connect_tcp connects the non-blocking fd within timeout_ms.
static int
connect_tcp(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
	if (connect(fd, sa, len) == 0) {
		return 0;
	}
	if (errno != EINPROGRESS && errno != EINTR) {
		return map_errno(errno);
	}
	struct pollfd pfd = {.fd = fd, .events = POLLOUT};
	int rv;
	do {
		rv = poll(&pfd, 1, timeout_ms);
	} while (rv < 0 && errno == EINTR);
	if (rv == 0) {
		return AA_ETIMEDOUT;
	}
	int err = 0;
	socklen_t elen = sizeof(err);
	if (rv < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) {
		return AA_ESYSTEM;
	}
	return err == 0 ? 0 : map_errno(err);
}

static int
dial_fd(int *fdp, const char *url, int timeout_ms)
{
	if (strncmp(url, "ipc://", 6) == 0) {
		saddr a;
		int rv = parse_ipc(&a, url + 6);
		if (rv != 0) {
			return rv;
		}
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			return map_errno(errno);
		}
		set_ipc_sndbuf(fd);
		if ((rv = connect_unix(fd, &a, timeout_ms)) != 0 ||
		    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
			close(fd);
			return rv != 0 ? rv : AA_ESYSTEM;
		}
		*fdp = fd;
		return 0;
	}
	struct addrinfo *res;
	int rv = resolve_tcp(&res, url + 6, false);
	if (rv != 0) {
		return rv;
	}
	rv = AA_ECONNREF;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family,
		                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			rv = map_errno(errno);
			continue;
		}
		rv = connect_tcp(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms);
		if (rv == 0) {
			set_nodelay(fd);
			*fdp = fd;
			break;
		}
		close(fd);
		if (rv == AA_ETIMEDOUT) {
			break; // the time is spent
		}
	}
	freeaddrinfo(res);
	return rv;
}

int
aai_sock_dial(aai_conn **cp, const char *url, const aai_tp_opts *o)
{
	int fd = -1;
	int rv = dial_fd(&fd, url, o->connect_timeout_ms);
	if (rv != 0) {
		return rv;
	}
	sloop *lp;
	if ((rv = loop_alloc(&lp)) != 0) {
		close(fd);
		return rv;
	}
	if ((rv = sconn_alloc(cp, fd, lp, o)) != 0) {
		loop_destroy(lp);
		return rv;
	}
	if ((rv = loop_run(lp)) != 0) {
		// No thread: undo by hand (the conn holds lp).
		sconn *sc = (sconn *)*cp;
		close(sc->fd);
		aai_tbuf_fini(&sc->rbuf);
		aai_conn_base_fini(&sc->base);
		aai_free(sc);
		aai_live_dec(AA_LIVE_OTHER);
		loop_destroy(lp);
		return rv;
	}
	return 0;
}

// ---- listener ----

// lclose_locked closes the accepting socket once. Expects lp->mtx and
// that the loop thread is not accepting.
static void
lclose_locked(sloop *lp)
{
	if (lp->lfd < 0) {
		return;
	}
	(void)epoll_ctl(lp->epfd, EPOLL_CTL_DEL, lp->lfd, NULL);
	close(lp->lfd);
	lp->lfd = -1;
	if (lp->unlink_path != NULL) {
		(void)unlink(lp->unlink_path);
	}
}

// accept_pause stops accepting for ACCEPT_RETRY_MS when out of fds (or
// memory): the pending connection would keep the level-triggered socket
// readable and the loop would spin. Loop thread.
static void
accept_pause(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (!lp->lclosed && lp->lfd >= 0) {
		struct epoll_event ev = {.events = 0, .data.ptr = lp};
		(void)epoll_ctl(lp->epfd, EPOLL_CTL_MOD, lp->lfd, &ev);
	}
	aai_mtx_unlock(&lp->mtx);
	lp->accept_paused = true;
	lp->accept_paused_ms = aai_tp_now_ms();
	AAI_CHECKPOINT("transport.accept_paused", lp);
}

// accept_resume puts EPOLLIN back on the listening socket. Loop thread.
static void
accept_resume(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (!lp->lclosed && lp->lfd >= 0) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = lp};
		(void)epoll_ctl(lp->epfd, EPOLL_CTL_MOD, lp->lfd, &ev);
	}
	aai_mtx_unlock(&lp->mtx);
	lp->accept_paused = false;
}

// listener_accept runs on the loop thread: accept every pending
// connection and hand each to the accept callback, with no lock held.
static void
listener_accept(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (lp->lclosed || lp->lfd < 0) {
		aai_mtx_unlock(&lp->mtx);
		return;
	}
	lp->accepting = true;
	int lfd = lp->lfd;
	aai_mtx_unlock(&lp->mtx);
	for (int i = 0; i < LOOP_EVENTS; i++) {
		int fd =
		    accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				accept_pause(lp);
			}
			break; // EAGAIN: level triggering brings the next
		}
		if (lp->tcp) {
			set_nodelay(fd);
		} else {
			set_ipc_sndbuf(fd);
		}
		aai_conn *c;
		if (sconn_alloc(&c, fd, lp, &lp->opts) == 0) {
			lp->accept(lp->arg, c);
		}
		aai_mtx_lock(&lp->mtx);
		bool closed = lp->lclosed;
		aai_mtx_unlock(&lp->mtx);
		if (closed) {
			break;
		}
	}
	aai_mtx_lock(&lp->mtx);
	lp->accepting = false;
	if (lp->lclosed) {
		lclose_locked(lp);
	}
	aai_cv_broadcast(&lp->cv);
	aai_mtx_unlock(&lp->mtx);
}

static int
slistener_port(aai_listener *l)
{
	sloop *lp = (sloop *)l;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int port = 0;
	aai_mtx_lock(&lp->mtx);
	if (lp->tcp && lp->lfd >= 0 &&
	    getsockname(lp->lfd, (struct sockaddr *)&ss, &len) == 0) {
		if (ss.ss_family == AF_INET) {
			port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		}
	}
	aai_mtx_unlock(&lp->mtx);
	return port;
}

static void
slistener_close(aai_listener *l)
{
	sloop *lp = (sloop *)l;
	aai_mtx_lock(&lp->mtx);
	lp->lclosed = true;
	if (!lp->accepting) {
		lclose_locked(lp);
	} // else the loop thread closes it when its accept batch ends
	aai_mtx_unlock(&lp->mtx);
}

static void
slistener_free(aai_listener *l)
{
	sloop *lp = (sloop *)l;
	slistener_close(l);
	aai_mtx_lock(&lp->mtx);
	while (lp->accepting) {
		aai_cv_wait(&lp->cv, &lp->mtx);
	}
	aai_mtx_unlock(&lp->mtx);
	aai_live_dec(AA_LIVE_OTHER);
	loop_unref(lp); // the loop lives on while accepted conns do
}

static const aai_listener_ops slistener_ops = {
    .port = slistener_port,
    .close = slistener_close,
    .free = slistener_free,
};

// listen_unix binds path; a stale socket file that nobody listens on is
// replaced (as nng does), a live one is AA_EBUSY.
static int
listen_unix(int *fdp, const saddr *a)
{
	int fd =
	    socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return map_errno(errno);
	}
	const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
	if (bind(fd, sa, a->len) != 0) {
		int e = errno;
		if (e != EADDRINUSE) {
			close(fd);
			return e == ENOENT ? AA_EINVAL : map_errno(e);
		}
		// Someone there? Probe with a connect (non-blocking: a live
		// listener with a full backlog answers EAGAIN, not a wait).
		int probe = socket(
		    AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int live = probe >= 0 && connect(probe, sa, a->len) == 0;
		int pe = errno;
		if (probe >= 0) {
			close(probe);
		}
		if (live || pe != ECONNREFUSED) {
			close(fd);
			return AA_EBUSY;
		}
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		(void)unlink(un->sun_path);
		if (bind(fd, sa, a->len) != 0) {
			e = errno;
			close(fd);
			return map_errno(e);
		}
	}
	if (listen(fd, LISTEN_BACKLOG) != 0) {
		int e = errno;
		close(fd);
		return map_errno(e);
	}
	*fdp = fd;
	return 0;
}

static int
listen_tcp(int *fdp, const char *hostport)
{
	struct addrinfo *res;
	int rv = resolve_tcp(&res, hostport, true);
	if (rv != 0) {
		return rv;
	}
	struct addrinfo *ai = res;
	int fd = socket(ai->ai_family,
	                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rv = map_errno(errno);
		freeaddrinfo(res);
		return rv;
	}
	int one = 1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
	    listen(fd, LISTEN_BACKLOG) != 0) {
		rv = map_errno(errno);
		close(fd);
		freeaddrinfo(res);
		return rv;
	}
	freeaddrinfo(res);
	set_nodelay(fd); // inherited by accepted sockets
	*fdp = fd;
	return 0;
}

int
aai_sock_listen(aai_listener **lp_out, const char *url, const aai_tp_opts *o,
                void (*accept)(void *, aai_conn *), void *arg)
{
	int fd = -1;
	int rv;
	bool tcp = strncmp(url, "tcp://", 6) == 0;
	char *path = NULL;
	if (tcp) {
		rv = listen_tcp(&fd, url + 6);
	} else {
		saddr a;
		if ((rv = parse_ipc(&a, url + 6)) == 0) {
			rv = listen_unix(&fd, &a);
		}
		if (rv == 0 && (path = aai_strdup(url + 6)) == NULL) {
			close(fd);
			(void)unlink(url + 6);
			rv = AA_ENOMEM;
		}
	}
	if (rv != 0) {
		return rv;
	}
	sloop *lp;
	if ((rv = loop_alloc(&lp)) != 0) {
		goto fail;
	}
	lp->base.ops = &slistener_ops;
	lp->refs = 1; // the listener's
	lp->is_listener = true;
	lp->tcp = tcp;
	lp->lfd = fd;
	lp->unlink_path = path;
	lp->accept = accept;
	lp->arg = arg;
	lp->opts = *o;
	lp->opts.tls_cert_file = lp->opts.tls_key_file = NULL;
	lp->opts.tls_ca_file = lp->opts.tls_server_name = NULL;
	if (o->heartbeat_len > 0) {
		if ((lp->hb_frame = aai_alloc(o->heartbeat_len)) == NULL) {
			lp->unlink_path = NULL;
			loop_destroy(lp);
			rv = AA_ENOMEM;
			goto fail;
		}
		memcpy(lp->hb_frame, o->heartbeat_frame, o->heartbeat_len);
		lp->opts.heartbeat_frame = lp->hb_frame;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = lp};
	if (epoll_ctl(lp->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		lp->unlink_path = NULL;
		loop_destroy(lp);
		rv = AA_ESYSTEM;
		goto fail;
	}
	if ((rv = loop_run(lp)) != 0) {
		lp->unlink_path = NULL;
		loop_destroy(lp);
		goto fail;
	}
	aai_live_inc(AA_LIVE_OTHER);
	*lp_out = &lp->base;
	return 0;
fail:
	close(fd);
	if (path != NULL) {
		(void)unlink(path);
		aai_free(path);
	}
	return rv;
}
