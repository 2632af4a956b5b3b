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
// This file holds the loops and the connections' data path; addresses and
// dial are in transport_sock_dial.c, the listener in
// transport_sock_listen.c, the idle loops' spinning in
// transport_sock_spin.c, what they share in transport_sock.h.
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
// * Cork: while the loop thread delivers the frames of one read, sends only
//   queue; at its end (uncork) one write carries them all.
// * Flow control as in transport_nng.c: queued counts pend and fly (and the
//   shared budget); past send_max the conn is dropped (below; without a
//   limit_frame it fails at once with AA_ELIMIT); at the end
//   of a read the loop pauses reading (EPOLLIN off) while queued is over
//   send_pause (or the budget is over with queued > 0); the thread that
//   drains it to half (queue_sub) puts EPOLLIN back. Both decide under
//   c->mtx, where the mask is also changed (update_mask), so a drain cannot
//   slip between the check and the pause.
// * The drop with a last word (transport.h, limit_frame). The send that
//   would pass send_max decides it under c->mtx (drop_locked): pend (the
//   frames not started) is freed at once, the conn's bytes leave the
//   budget (what is left, one frame being written and the last frame,
//   is bounded per conn and no longer counted there), limit_frame is
//   queued alone in pend, EPOLLIN goes off for good, and the linger timer
//   starts. fly may hold frames no write has started: fly_trim cuts them
//   off after the frame that fly_off is inside (finished, or the stream
//   would be corrupt) and moves that frame's rest into a buffer of its
//   size. fly is touched without the lock only by a token holder inside
//   tx_run (writing); so the drop trims at once when nobody is writing
//   (no token, or the write parked on the loop), else it sets trim_fly
//   and the writer trims when its write returns, under the lock. When
//   tx_run has written everything of a lingering conn, it shuts the
//   write side (the peer reads the last frame, then EOF); the peer's
//   close then raises EPOLLHUP, which ends the receive path with down
//   (AA_ELIMIT, recorded at the drop). A peer that never reads or never
//   closes is closed by the linger timer (aai_conn_fail, shutdown: it
//   may cut the partial frame; the conn is gone either way). Races: a
//   concurrent send after the drop gets AA_ELIMIT (sends check
//   lingering under the same lock); a close during the linger closes at
//   once (reason still AA_ELIMIT); the loop draining (queue_sub) does not
//   resume reading nor touch the budget of a lingering conn; a drop on
//   the loop thread inside a read's batch stops the batch (stop_rx) and
//   uncork writes the last frame.
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
//   reused fd number. Listener close vs accept: transport_sock_listen.c.
// * fork: the child has none of the loop threads; nothing of ours runs at
//   exit, so a child that never uses the transport exits cleanly.
#define _GNU_SOURCE // EPOLLRDHUP

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport_sock.h"

// The epoll tag of a loop's eventfd (a listener's socket is tagged with
// the loop itself, a connection with its sconn).
static char wake_tag;

// The loop whose thread this is (NULL on other threads).
static _Thread_local sloop *current_loop;

static const aai_conn_ops sconn_ops;

// ---- loops ----

static void *loop_main(void *arg);

int
aai_sock_loop_alloc(sloop **lpp)
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

// aai_sock_loop_run starts the loop's thread.
int
aai_sock_loop_run(sloop *lp)
{
	if (pthread_create(&lp->thread, NULL, loop_main, lp) != 0) {
		return AA_ESYSTEM;
	}
	return 0;
}

void
aai_sock_loop_destroy(sloop *lp)
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

// aai_sock_loop_unref drops a reference; the last one ends the loop (see
// notes).
void
aai_sock_loop_unref(sloop *lp)
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
	aai_sock_loop_destroy(lp);
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

// budget_forget_locked takes what sc still has queued off the shared
// budget, once: at the drop (the rest is bounded per conn) and when the
// receive path ends (nothing more will be written), so that the budget
// and the layers' send_queued count only live connections, not ones
// waiting to be freed. Expects base.mtx.
static void
budget_forget_locked(sconn *sc)
{
	aai_conn *c = &sc->base;
	if (c->budget != NULL && !sc->budget_gone) {
		atomic_fetch_sub(&c->budget->used, sc->queued);
	}
	sc->budget_gone = true;
}

// queue_sub takes n written bytes off the count and resumes a paused
// receive once queued is down to half (or zero). Expects base.mtx.
static void
queue_sub(sconn *sc, size_t n)
{
	aai_conn *c = &sc->base;
	sc->queued -= n;
	if (c->budget != NULL && !sc->budget_gone) {
		atomic_fetch_sub(&c->budget->used, n);
	}
	if (!sc->rx_paused || c->closing || c->lingering ||
	    (sc->queued > c->send_pause / 2 ||
	     (budget_over(c) && sc->queued > 0))) {
		return;
	}
	sc->rx_paused = false;
	atomic_store(&c->rx_paused, false);
	update_mask(sc);
}

// take_token swaps pend into fly for the caller, who now holds the token.
// Expects base.mtx, !sending, pend not empty.
static void
take_token(sconn *sc)
{
	sc->sending = true;
	sc->writing = true;
	aai_tbuf t = sc->fly;
	sc->fly = sc->pend;
	sc->pend = t;
	sc->fly_off = 0;
}

static uint32_t
frame_len_at(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

// fly_trim, for a lingering conn, drops the frames of fly that no write
// has started: the frame that fly_off is inside is finished (cutting it
// would corrupt the stream), the rest goes, and what is left moves to a
// buffer of its own size so that the memory goes back now. Expects
// base.mtx and no thread writing from fly (!writing).
static void
fly_trim(sconn *sc)
{
	size_t off = 0;
	size_t end = 0; // the end of the last frame a write started
	while (off + AAI_TP_HDR <= sc->fly.len && off < sc->fly_off) {
		end = off + AAI_TP_HDR + frame_len_at(sc->fly.p + off);
		off = end;
	}
	size_t rest = end > sc->fly_off ? end - sc->fly_off : 0;
	uint8_t *p = rest > 0 ? aai_alloc(rest) : NULL;
	if (rest > 0 && p == NULL) {
		sc->fly.len = end; // keep the big buffer, written as it is
	} else {
		if (rest > 0) {
			memcpy(p, sc->fly.p + sc->fly_off, rest);
		}
		aai_tbuf_fini(&sc->fly);
		sc->fly = (aai_tbuf){.p = p, .len = rest, .cap = rest};
		sc->fly_off = 0;
	}
	sc->queued = sc->fly.len + sc->pend.len;
	sc->trim_fly = false;
}

// drop_locked drops sc past send_max with its last frame (transport.h,
// limit_frame): the queued frames go now, the one being written is
// finished (by whoever writes it: at once when the write is parked on the
// loop, else by the writer when its write returns), limit_frame follows
// it, reading stops, and the linger timer bounds the rest. Returns true
// when the caller must now write (it took the token). Expects base.mtx.
static bool
drop_locked(sconn *sc)
{
	aai_conn *c = &sc->base;
	// The budget forgets sc now: what is left is one frame being
	// written and the last frame, bounded per conn.
	budget_forget_locked(sc);
	aai_conn_linger_locked(c);
	sc->rx_paused = true;
	aai_tbuf_fini(&sc->pend);
	if (sc->writing) {
		sc->trim_fly = true;
	} else {
		fly_trim(sc); // parked on the loop, or nothing in flight
	}
	if (aai_tbuf_put_frame(&sc->pend, c->limit_len, c->limit_frame, NULL,
	                       NULL) != 0) {
		sc->pend.len = 0; // no last word: close after the partial
	}
	sc->queued = sc->fly.len + sc->pend.len;
	update_mask(sc);
	if (sc->sending || sc->corked) {
		return false; // the token holder (or uncork) writes it
	}
	if (sc->pend.len == 0) {
		return false; // nothing to write: the linger closes it
	}
	take_token(sc);
	return true;
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
				sc->writing = false;
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
			sc->writing = false;
			if (sc->trim_fly) {
				fly_trim(sc); // the drop came during the write
			}
			update_mask(sc);
			aai_mtx_unlock(&c->mtx);
			return;
		}
		aai_mtx_lock(&c->mtx);
		queue_sub(sc, sc->fly.len);
		sc->fly.len = 0;
		sc->fly_off = 0;
		sc->trim_fly = false; // all of it was written
		if (sc->pend.len == 0 || c->closing) {
			// Lingering and all written (the last frame too):
			// the peer reads EOF after it.
			bool said = c->lingering && !c->closing;
			sc->sending = false;
			sc->writing = false;
			sc->tx_loop = false;
			update_mask(sc);
			aai_mtx_unlock(&c->mtx);
			if (said) {
				(void)shutdown(sc->fd, SHUT_WR);
			}
			return;
		}
		aai_tbuf t = sc->fly;
		sc->fly = sc->pend;
		sc->pend = t;
		aai_mtx_unlock(&c->mtx);
	}
}

static int
sconn_send(aai_conn *c, size_t len, const void *data,
           void (*encode)(void *ctx, uint8_t *dst), void *ctx)
{
	sconn *sc = (sconn *)c;
	aai_mtx_lock(&c->mtx);
	if (c->closing || c->lingering) {
		bool limit = c->lingering && !c->closing;
		aai_mtx_unlock(&c->mtx);
		return limit ? AA_ELIMIT : AA_ECLOSED; // the drop's reason
	}
	if (sc->queued + len + AAI_TP_HDR > c->send_max) {
		// The peer reads nothing: drop it rather than grow, with a
		// last word when the layer gave one.
		if (c->linger == NULL) {
			aai_mtx_unlock(&c->mtx);
			aai_conn_fail(c, AA_ELIMIT);
			return AA_ELIMIT;
		}
		bool write = drop_locked(sc);
		aai_mtx_unlock(&c->mtx);
		if (write) {
			tx_run(sc);
		}
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
	budget_forget_locked(sc); // nothing more is written
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
	if (c->lingering && !c->closing) {
		aai_mtx_unlock(&c->mtx);
		return true; // dropped: reading stays off
	}
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
		if (mine) {
			sc->writing = true; // the loop holds the token
		}
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
		int n = aai_sock_loop_wait(lp, evs, timeout);
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
				aai_sock_listener_accept(lp);
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
			aai_sock_accept_resume(lp);
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
		aai_sock_loop_destroy(lp);
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
	aai_conn_stop_timers(c);
	aai_conn_quiesce(c); // a close on another thread may still use fd
	close(sc->fd);
	if (c->budget != NULL && !sc->budget_gone) {
		atomic_fetch_sub(&c->budget->used, sc->queued); // never sent
	}
	sloop *lp = sc->loop;
	aai_tbuf_fini(&sc->rbuf);
	aai_tbuf_fini(&sc->pend);
	aai_tbuf_fini(&sc->fly);
	aai_conn_base_fini(c);
	aai_free(sc);
	aai_live_dec(AA_LIVE_OTHER);
	aai_sock_loop_unref(lp);
}

static const aai_conn_ops sconn_ops = {
    .start = sconn_start,
    .send = sconn_send,
    .abort = sconn_abort,
    .teardown = sconn_teardown,
};

// aai_sock_conn_alloc wraps the connected non-blocking fd on loop lp (taking a
// reference to lp); on error fd is closed.
int
aai_sock_conn_alloc(aai_conn **cp, int fd, sloop *lp, const aai_tp_opts *o)
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
