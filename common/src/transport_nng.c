// transport_nng.c: ipc://, tcp:// and tls+tcp:// connections over nng's
// stream API, each frame preceded by its 4-byte big-endian length.
//
// Design notes.
// * Receive: one receive aio per connection, always in flight while
//   started. Its callback (an nng task thread) appends what arrived to rbuf,
//   delivers every complete frame, keeps the partial tail at the front of
//   rbuf (grown to fit the next frame once its header is known, never
//   beyond max_frame + 4) and issues the next receive at its end. One
//   receive in flight means frame callbacks are serialised. A failed
//   receive ends the receive path (aai_conn_rx_end: down, once).
// * Receive vs close: nng 1.5.2 never fails a receive issued on a stream
//   that is already closed (by us, or by nng itself when the peer hung up
//   during a send). rx_issuing counts threads between "not closing" and
//   "receive queued"; an abort in that window leaves the close to the last
//   of them (close_after). Every close also cancels the receive aio.
// * Send: double buffer under c->mtx. Senders append to pend; the sender
//   that finds no write in flight takes the token (sending), swaps pend
//   and fly and writes after dropping the lock. The send aio has no
//   callback: nng writes inline when the socket has room, so the common
//   send costs no thread hop (a completion callback would be one more
//   wake-up per write, which costs 10-40 us on two cores). Whether nng
//   finished inline shows in the aio's count; if not (socket buffer full,
//   TLS), the token and the pending write pass to the conn's waiter thread
//   (started on first need), which waits and keeps writing. The token
//   holder then loops: short write → the rest; frames queued meanwhile →
//   swap and write them all at once. Nobody but the waiter ever blocks.
// * Cork: while the receive callback delivers a batch, sends only queue;
//   at the batch's end one write carries every reply of the batch (this
//   is what makes 256 outstanding frames cost a few writes, not 256).
// * Flow control: `queued` counts the bytes of pend and fly (and the
//   shared budget, if any, the same). A send past send_max fails the
//   conn (AA_ELIMIT) at once: limit_frame is not used here, since the
//   write in flight belongs to nng's aio until it completes (none of its
//   frames can be withdrawn) and a stream has no half close to put EOF
//   after a last frame (docs/protocol.md § 17). At the end of a batch the
//   receive path pauses
//   (issues no next receive) while queued is over send_pause, or the
//   budget is over and queued is not zero; the sender that finishes a
//   write resumes it (rx_continue) once queued is down to half, or zero.
//   Pause and resume are decided under base.mtx with queued, so a drain
//   cannot slip between the check and the pause. A close while paused
//   kicks the receive aio (a zero sleep) so that the receive path still
//   ends, on nng's thread, with down.
// * No blocking synchronous nng call anywhere: dial uses an aio with a
//   timeout; accept, send and receive are aios. Teardown closes the
//   stream, stops the send aio (ending the waiter's wait), joins the
//   waiter, stops the timer, waits for closes still running on other
//   threads (aai_conn_quiesce), stops the receive aio (or, on the receive
//   thread itself after a deferred free, reaps it), then frees.
// * Listener: one accept aio; its callback wraps the stream and calls the
//   user's accept callback, with no lock held, then accepts again.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#include "transport_impl.h"

#define RBUF_INITIAL (64u * 1024)

typedef struct nconn {
	aai_conn base;
	nng_stream *s;
	nng_aio *rx_aio;
	nng_aio *tx_aio;
	aai_tbuf rbuf; // receive thread only
	aai_tbuf pend; // base.mtx
	aai_tbuf fly;  // the write in flight; owned by the sending token
	size_t fly_off;
	bool sending;     // base.mtx
	int rx_issuing;   // base.mtx: threads issuing a receive
	bool close_after; // base.mtx: abort came during rx_issuing
	// The thread that finishes writes which did not complete inline
	// (socket buffer full); started on first need. Fields: base.mtx.
	pthread_t waiter;
	pthread_cond_t waiter_cv;
	bool waiter_started;
	bool waiter_work;
	bool waiter_quit;
	// While the receive path delivers a batch, sends only queue (cork);
	// the batch's replies then leave in one write. base.mtx.
	bool corked;
	// Flow control (base.mtx): bytes queued and not yet fully written
	// (pend and fly), and whether the receive path is paused for them.
	size_t queued;
	bool rx_paused;
	bool budget_gone; // the shared budget no longer counts queued
} nconn;

typedef struct nlistener {
	aai_listener base;
	nng_stream_listener *sl;
	nng_aio *acc_aio;
	aai_tp_opts opts; // heartbeat frame copied below
	uint8_t *hb_frame;
	void (*accept)(void *, aai_conn *);
	void *arg;
} nlistener;

static int
map_err(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case NNG_ENOMEM:
		return AA_ENOMEM;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
		return AA_EINVAL;
	case NNG_ENOTSUP:
		return AA_ENOTSUP;
	case NNG_EADDRINUSE:
		return AA_EBUSY;
	case NNG_ECONNREFUSED:
	case NNG_ENOENT:
		return AA_ECONNREF;
	case NNG_ETIMEDOUT:
		return AA_ETIMEDOUT;
	case NNG_ECRYPTO:
	case NNG_EPEERAUTH:
		return AA_ECRYPTO;
	case NNG_ECLOSED:
		return AA_ECLOSED;
	default:
		return AA_ESYSTEM;
	}
}

// The reason a connection's I/O failed, when nothing else was recorded.
static int
map_io_err(int rv)
{
	if (rv == NNG_ECRYPTO || rv == NNG_EPEERAUTH) {
		return AA_ECRYPTO;
	}
	return AA_ECONNLOST;
}

// ---- connection ----

static void
issue_recv(nconn *nc)
{
	nng_iov iov = {.iov_buf = nc->rbuf.p + nc->rbuf.len,
	               .iov_len = nc->rbuf.cap - nc->rbuf.len};
	nng_aio_set_iov(nc->rx_aio, 1, &iov);
	nng_stream_recv(nc->s, nc->rx_aio);
}

static void rx_finish(nconn *nc, int err);

// close_stream closes the stream and cancels the receive: nng may have
// closed the stream itself (peer hung up while a send was pending) before
// our receive was queued, and then only the cancel ends that receive.
static void
close_stream(nconn *nc)
{
	nng_stream_close(nc->s);
	nng_aio_cancel(nc->rx_aio);
}

// rx_continue issues the next receive unless the conn is closing. nng 1.5.2
// does not fail a receive issued on a stream already closed (it waits
// forever), so an abort that comes while a receive is being issued leaves
// the close to the issuing thread (rx_issuing / close_after). A receive
// may complete inline and its callback issue the next one on another
// thread before this one is done: rx_issuing counts, and only the last
// issuer out closes, once every receive issued is queued in nng.
static void
rx_continue(nconn *nc)
{
	aai_conn *c = &nc->base;
	aai_mtx_lock(&c->mtx);
	if (c->closing) {
		aai_mtx_unlock(&c->mtx);
		rx_finish(nc, AA_ECONNLOST);
		return;
	}
	nc->rx_issuing++;
	aai_mtx_unlock(&c->mtx);
	issue_recv(nc);
	aai_mtx_lock(&c->mtx);
	bool close_now = nc->rx_issuing == 1 && nc->close_after;
	if (close_now) {
		// The last issuer out closes, and stays counted until it
		// has: the receive it aborts fails on another thread, whose
		// rx_finish frees nc once rx_issuing is 0.
		nc->close_after = false;
		aai_mtx_unlock(&c->mtx);
		close_stream(nc); // aborts the receive just issued
		aai_mtx_lock(&c->mtx);
	}
	if (--nc->rx_issuing == 0) {
		aai_cv_broadcast(&c->cv); // rx_finish may wait for this
	}
	aai_mtx_unlock(&c->mtx);
}

static void
rx_finish(nconn *nc, int err)
{
	aai_conn *c = &nc->base;
	aai_conn_fail(c, err); // make sure sends stop too
	// The thread that issued the receive which just failed may not have
	// left rx_continue yet: c must outlive it.
	aai_mtx_lock(&c->mtx);
	// Nothing more is written: the shared budget (and the layers'
	// send_queued) forgets what nc still holds now, not at teardown.
	if (c->budget != NULL && !nc->budget_gone) {
		atomic_fetch_sub(&c->budget->used, nc->queued);
	}
	nc->budget_gone = true;
	while (nc->rx_issuing > 0) {
		aai_cv_wait(&c->cv, &c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
	if (aai_conn_rx_end(&nc->base, err)) {
		nc->base.ops->teardown(&nc->base, true);
	}
}

static void tx_run(nconn *nc, bool waiter);

static bool
budget_over(const aai_conn *c)
{
	return c->budget != NULL && c->budget->max != 0 &&
	       atomic_load(&c->budget->used) > c->budget->max;
}

// queue_sub takes n written bytes off the count; true when the paused
// receive path must resume now (the caller kicks it, without the lock).
// Expects base.mtx.
static bool
queue_sub(nconn *nc, size_t n)
{
	aai_conn *c = &nc->base;
	nc->queued -= n;
	if (c->budget != NULL && !nc->budget_gone) {
		atomic_fetch_sub(&c->budget->used, n);
	}
	if (!nc->rx_paused || c->closing ||
	    (nc->queued > c->send_pause / 2 ||
	     (budget_over(c) && nc->queued > 0))) {
		return false;
	}
	nc->rx_paused = false;
	atomic_store(&c->rx_paused, false);
	return true;
}

// rx_kick restarts a paused receive path on nng's thread: the receive aio
// completes at once with nothing read, and rx_cb goes on from there
// (continues, pauses again, or ends a closing conn with down). Only for a
// paused conn: no receive is in flight then.
static void
rx_kick(nconn *nc)
{
	nng_sleep_aio(0, nc->rx_aio);
}

// rx_pause_now decides, at the end of a batch, whether the receive path
// pauses (issues no next receive) for the bytes the peer has not read.
static bool
rx_pause_now(nconn *nc)
{
	aai_conn *c = &nc->base;
	aai_mtx_lock(&c->mtx);
	bool pause =
	    !c->closing && c->send_pause != 0 &&
	    (nc->queued > c->send_pause || (budget_over(c) && nc->queued > 0));
	if (pause) {
		nc->rx_paused = true;
		atomic_store(&c->rx_paused, true);
		if (c->budget != NULL) {
			atomic_fetch_add(&c->budget->pauses, 1);
		}
	}
	aai_mtx_unlock(&c->mtx);
	return pause;
}

// uncork ends a batch: what its callbacks queued goes out in one write.
static void
uncork(nconn *nc)
{
	aai_conn *c = &nc->base;
	aai_mtx_lock(&c->mtx);
	nc->corked = false;
	if (nc->sending || nc->pend.len == 0 || c->closing) {
		aai_mtx_unlock(&c->mtx);
		return;
	}
	nc->sending = true; // take the sending token
	aai_tbuf t = nc->fly;
	nc->fly = nc->pend;
	nc->pend = t;
	nc->fly_off = 0;
	aai_mtx_unlock(&c->mtx);
	tx_run(nc, false);
}

static void
rx_cb(void *arg)
{
	nconn *nc = arg;
	int rv = nng_aio_result(nc->rx_aio);
	if (rv != 0) {
		rx_finish(nc, map_io_err(rv));
		return;
	}
	nc->rbuf.len += nng_aio_count(nc->rx_aio);
	size_t used, need;
	aai_mtx_lock(&nc->base.mtx);
	nc->corked = true;
	aai_mtx_unlock(&nc->base.mtx);
	int err =
	    aai_conn_rx(&nc->base, nc->rbuf.p, nc->rbuf.len, &used, &need);
	uncork(nc);
	if (err != 0) {
		rx_finish(nc, err);
		return;
	}
	if (used > 0) {
		nc->rbuf.len -= used;
		if (nc->rbuf.len > 0) {
			memmove(nc->rbuf.p, nc->rbuf.p + used, nc->rbuf.len);
		}
	}
	if (need > nc->rbuf.cap && aai_tbuf_reserve(&nc->rbuf, need) != 0) {
		rx_finish(nc, AA_ENOMEM);
		return;
	}
	if (rx_pause_now(nc)) {
		return; // the drain (or a close) kicks the receive path again
	}
	rx_continue(nc);
}

static void
issue_send(nconn *nc)
{
	nng_iov iov = {.iov_buf = nc->fly.p + nc->fly_off,
	               .iov_len = nc->fly.len - nc->fly_off};
	nng_aio_set_iov(nc->tx_aio, 1, &iov);
	nng_stream_send(nc->s, nc->tx_aio);
}

static void *waiter_main(void *arg);
static void tx_run(nconn *nc, bool waiter);

// hand_to_waiter passes the sending token and the pending write to the
// waiter thread (started on first need); false if there is no thread.
static bool
hand_to_waiter(nconn *nc)
{
	aai_conn *c = &nc->base;
	aai_mtx_lock(&c->mtx);
	if (!nc->waiter_started) {
		nc->waiter_started =
		    pthread_create(&nc->waiter, NULL, waiter_main, nc) == 0;
	}
	bool ok = nc->waiter_started;
	if (ok) {
		nc->waiter_work = true;
		aai_cv_signal(&nc->waiter_cv);
	}
	aai_mtx_unlock(&c->mtx);
	return ok;
}

// tx_run writes fly, then whatever was queued meanwhile, until nothing is
// left; the caller holds the sending token. tx_aio has no callback, so a
// write that nng completes inline costs no thread hop: its count is
// already full when nng_stream_send returns. Otherwise (socket buffer
// full, or a TLS stream) the caller hands the rest to the waiter thread,
// unless it is that thread (waiter), and never blocks on the network.
static void
tx_run(nconn *nc, bool waiter)
{
	aai_conn *c = &nc->base;
	bool issue = !waiter; // the waiter resumes a write already issued
	for (;;) {
		if (issue) {
			size_t want = nc->fly.len - nc->fly_off;
			issue_send(nc);
			if (!waiter && nng_aio_count(nc->tx_aio) != want &&
			    hand_to_waiter(nc)) {
				return;
			}
		}
		issue = true;
		nng_aio_wait(nc->tx_aio); // done, or about to be
		int rv = nng_aio_result(nc->tx_aio);
		if (rv != 0) {
			aai_mtx_lock(&c->mtx);
			nc->sending = false;
			aai_mtx_unlock(&c->mtx);
			aai_conn_fail(c, map_io_err(rv));
			return;
		}
		nc->fly_off += nng_aio_count(nc->tx_aio);
		if (nc->fly_off < nc->fly.len) {
			continue; // short write: send the rest first
		}
		aai_mtx_lock(&c->mtx);
		bool resume = queue_sub(nc, nc->fly.len);
		nc->fly.len = 0;
		nc->fly_off = 0;
		if (nc->pend.len == 0 || c->closing) {
			nc->sending = false;
			aai_mtx_unlock(&c->mtx);
			if (resume) {
				rx_kick(nc);
			}
			return;
		}
		aai_tbuf t = nc->fly;
		nc->fly = nc->pend;
		nc->pend = t;
		aai_mtx_unlock(&c->mtx);
		if (resume) {
			rx_kick(nc);
		}
	}
}

static void *
waiter_main(void *arg)
{
	nconn *nc = arg;
	aai_conn *c = &nc->base;
	aai_mtx_lock(&c->mtx);
	for (;;) {
		while (!nc->waiter_work && !nc->waiter_quit) {
			aai_cv_wait(&nc->waiter_cv, &c->mtx);
		}
		if (nc->waiter_quit) {
			break;
		}
		nc->waiter_work = false;
		aai_mtx_unlock(&c->mtx);
		tx_run(nc, true); // we hold the token; a write is issued
		aai_mtx_lock(&c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
	return NULL;
}

static void
nconn_start(aai_conn *c)
{
	nconn *nc = (nconn *)c;
	issue_recv(nc);
}

static int
nconn_send(aai_conn *c, size_t len, const void *data,
           void (*encode)(void *ctx, uint8_t *dst), void *ctx)
{
	nconn *nc = (nconn *)c;
	aai_mtx_lock(&c->mtx);
	if (c->closing) {
		aai_mtx_unlock(&c->mtx);
		return AA_ECLOSED;
	}
	if (nc->queued + len + AAI_TP_HDR > c->send_max) {
		// The peer reads nothing: drop it rather than grow.
		aai_mtx_unlock(&c->mtx);
		aai_conn_fail(c, AA_ELIMIT);
		return AA_ELIMIT;
	}
	int rv = aai_tbuf_put_frame(&nc->pend, len, data, encode, ctx);
	if (rv == 0) {
		nc->queued += len + AAI_TP_HDR;
		if (c->budget != NULL) {
			atomic_fetch_add(&c->budget->used, len + AAI_TP_HDR);
		}
	}
	if (rv != 0 || nc->sending || nc->corked) {
		aai_mtx_unlock(&c->mtx);
		return rv;
	}
	// Take the sending token: this thread issues the write.
	nc->sending = true;
	aai_tbuf t = nc->fly;
	nc->fly = nc->pend;
	nc->pend = t;
	nc->fly_off = 0;
	aai_mtx_unlock(&c->mtx);
	tx_run(nc, false);
	return 0;
}

// nconn_abort runs after c->closing was set (aai_conn_fail).
static void
nconn_abort(aai_conn *c)
{
	nconn *nc = (nconn *)c;
	aai_mtx_lock(&c->mtx);
	if (nc->rx_issuing > 0) {
		nc->close_after = true; // the last issuing thread closes
		aai_mtx_unlock(&c->mtx);
		return;
	}
	// A paused receive path has no receive to fail: kick it, so that
	// it ends (with down) on nng's thread.
	bool kick = nc->rx_paused;
	nc->rx_paused = false;
	atomic_store(&c->rx_paused, false);
	aai_mtx_unlock(&c->mtx);
	close_stream(nc);
	if (kick) {
		rx_kick(nc);
	}
}

static void
nconn_teardown(aai_conn *c, bool from_rx)
{
	nconn *nc = (nconn *)c;
	nng_stream_close(nc->s);
	aai_mtx_lock(&c->mtx);
	nc->waiter_quit = true;
	aai_cv_signal(&nc->waiter_cv);
	bool join = nc->waiter_started;
	aai_mtx_unlock(&c->mtx);
	nng_aio_stop(nc->tx_aio); // ends a write the waiter waits for
	if (join) {
		pthread_join(nc->waiter, NULL);
	}
	aai_conn_stop_timers(c);
	aai_conn_quiesce(c); // a close on another thread may still use s
	if (c->budget != NULL && !nc->budget_gone) {
		atomic_fetch_sub(&c->budget->used,
		                 nc->queued); // never written
	}
	if (from_rx) {
		nng_aio_reap(nc->rx_aio); // we run in its callback
	} else {
		nng_aio_stop(nc->rx_aio);
		nng_aio_free(nc->rx_aio);
	}
	nng_aio_free(nc->tx_aio);
	nng_stream_free(nc->s);
	aai_tbuf_fini(&nc->rbuf);
	aai_tbuf_fini(&nc->pend);
	aai_tbuf_fini(&nc->fly);
	aai_cv_fini(&nc->waiter_cv);
	aai_conn_base_fini(c);
	aai_free(nc);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_conn_ops nconn_ops = {
    .start = nconn_start,
    .send = nconn_send,
    .abort = nconn_abort,
    .teardown = nconn_teardown,
};

// nconn_alloc wraps s; on error s is freed.
static int
nconn_alloc(aai_conn **cp, nng_stream *s, const aai_tp_opts *o)
{
	nconn *nc = aai_zalloc(sizeof(*nc));
	int rv;
	if (nc == NULL) {
		nng_stream_free(s);
		return AA_ENOMEM;
	}
	if ((rv = aai_conn_base_init(&nc->base, &nconn_ops, o)) != 0) {
		nng_stream_free(s);
		aai_free(nc);
		return rv;
	}
	nc->s = s;
	aai_cv_init(&nc->waiter_cv);
	if (nng_aio_alloc(&nc->rx_aio, rx_cb, nc) != 0 ||
	    nng_aio_alloc(&nc->tx_aio, NULL, NULL) != 0 ||
	    aai_tbuf_reserve(&nc->rbuf, RBUF_INITIAL) != 0 ||
	    aai_tbuf_reserve(&nc->pend, 4096) != 0 ||
	    aai_tbuf_reserve(&nc->fly, 4096) != 0) {
		nng_aio_free(nc->rx_aio);
		nng_aio_free(nc->tx_aio);
		aai_tbuf_fini(&nc->rbuf);
		aai_tbuf_fini(&nc->pend);
		aai_tbuf_fini(&nc->fly);
		aai_cv_fini(&nc->waiter_cv);
		aai_conn_base_fini(&nc->base);
		nng_stream_free(s);
		aai_free(nc);
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_OTHER);
	*cp = &nc->base;
	return 0;
}

// ---- TLS and options ----

static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		return NULL;
	}
	char *buf = NULL;
	long n;
	size_t got = 0;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
	    fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = aai_alloc((size_t)n + 1)) != NULL) {
		got = fread(buf, 1, (size_t)n, f);
		buf[got] = '\0';
	}
	fclose(f);
	return buf;
}

static int
make_tls(nng_tls_config **cfgp, const aai_tp_opts *o, bool server)
{
	nng_tls_config *cfg;
	int rv;
	if ((rv = nng_tls_config_alloc(&cfg, server ? NNG_TLS_MODE_SERVER
	                                            : NNG_TLS_MODE_CLIENT)) !=
	    0) {
		return map_err(rv);
	}
	if (o->tls_cert_file != NULL && o->tls_key_file != NULL) {
		char *cert = read_file(o->tls_cert_file);
		char *key = read_file(o->tls_key_file);
		rv = (cert == NULL || key == NULL)
		         ? NNG_ENOENT
		         : nng_tls_config_own_cert(cfg, cert, key, NULL);
		aai_free(cert);
		aai_free(key);
		if (rv != 0) {
			nng_tls_config_free(cfg);
			return AA_ECRYPTO;
		}
	} else if (server) {
		nng_tls_config_free(cfg);
		return AA_EINVAL;
	}
	if (o->tls_ca_file != NULL &&
	    (rv = nng_tls_config_ca_file(cfg, o->tls_ca_file)) != 0) {
		nng_tls_config_free(cfg);
		return AA_ECRYPTO;
	}
	if (o->tls_server_name != NULL &&
	    (rv = nng_tls_config_server_name(cfg, o->tls_server_name)) != 0) {
		nng_tls_config_free(cfg);
		return map_err(rv);
	}
	rv = nng_tls_config_auth_mode(cfg, o->tls_verify_peer
	                                       ? NNG_TLS_AUTH_MODE_REQUIRED
	                                       : NNG_TLS_AUTH_MODE_NONE);
	if (rv != 0) {
		nng_tls_config_free(cfg);
		return map_err(rv);
	}
	*cfgp = cfg;
	return 0;
}

static bool
is_tcp(const char *url)
{
	return strncmp(url, "tcp", 3) == 0 || strncmp(url, "tls+tcp", 7) == 0;
}

static bool
is_tls(const char *url)
{
	return strncmp(url, "tls+", 4) == 0;
}

// ---- dial ----

int
aai_nng_dial(aai_conn **cp, const char *url, const aai_tp_opts *o)
{
	nng_stream_dialer *d;
	nng_aio *aio;
	nng_tls_config *cfg = NULL;
	int rv;

	if ((rv = nng_stream_dialer_alloc(&d, url)) != 0) {
		return map_err(rv);
	}
	if (is_tcp(url)) {
		// nng 1.5.2 leaves Nagle on: small frames would wait.
		(void)nng_stream_dialer_set_bool(d, NNG_OPT_TCP_NODELAY, true);
	}
	if (is_tls(url)) {
		if ((rv = make_tls(&cfg, o, false)) != 0) {
			nng_stream_dialer_free(d);
			return rv;
		}
		rv = nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg);
		nng_tls_config_free(cfg); // the dialer holds its own reference
		if (rv != 0) {
			nng_stream_dialer_free(d);
			return map_err(rv);
		}
	}
	if ((rv = nng_aio_alloc(&aio, NULL, NULL)) != 0) {
		nng_stream_dialer_free(d);
		return AA_ENOMEM;
	}
	nng_aio_set_timeout(aio, o->connect_timeout_ms);
	nng_stream_dialer_dial(d, aio);
	nng_aio_wait(aio);
	rv = nng_aio_result(aio);
	nng_stream *s = rv == 0 ? nng_aio_get_output(aio, 0) : NULL;
	nng_aio_free(aio);
	nng_stream_dialer_free(d);
	if (rv != 0) {
		return map_err(rv);
	}
	return nconn_alloc(cp, s, o);
}

// ---- listener ----

static void
accept_cb(void *arg)
{
	nlistener *nl = arg;
	int rv = nng_aio_result(nl->acc_aio);
	aai_conn *c;
	if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
		return;
	}
	if (rv == 0) {
		nng_stream *s = nng_aio_get_output(nl->acc_aio, 0);
		if (nconn_alloc(&c, s, &nl->opts) == 0) {
			nl->accept(nl->arg, c);
		}
	}
	nng_stream_listener_accept(nl->sl, nl->acc_aio);
}

static int
nlistener_port(aai_listener *l)
{
	nlistener *nl = (nlistener *)l;
	int port;
	if (nng_stream_listener_get_int(nl->sl, NNG_OPT_TCP_BOUND_PORT,
	                                &port) != 0) {
		return 0;
	}
	return port;
}

static void
nlistener_close(aai_listener *l)
{
	nng_stream_listener_close(((nlistener *)l)->sl);
}

static void
nlistener_free(aai_listener *l)
{
	nlistener *nl = (nlistener *)l;
	nng_stream_listener_close(nl->sl);
	nng_aio_stop(nl->acc_aio);
	nng_aio_free(nl->acc_aio);
	nng_stream_listener_free(nl->sl);
	aai_free(nl->hb_frame);
	aai_free(nl);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_listener_ops nlistener_ops = {
    .port = nlistener_port,
    .close = nlistener_close,
    .free = nlistener_free,
};

int
aai_nng_listen(aai_listener **lp, const char *url, const aai_tp_opts *o,
               void (*accept)(void *, aai_conn *), void *arg)
{
	nlistener *nl = aai_zalloc(sizeof(*nl));
	int rv;
	if (nl == NULL) {
		return AA_ENOMEM;
	}
	nl->base.ops = &nlistener_ops;
	nl->accept = accept;
	nl->arg = arg;
	nl->opts = *o;
	// Only the heartbeat frame outlives this call (TLS files are read
	// now).
	nl->opts.tls_cert_file = nl->opts.tls_key_file = NULL;
	nl->opts.tls_ca_file = nl->opts.tls_server_name = NULL;
	if (o->heartbeat_len > 0) {
		if ((nl->hb_frame = aai_alloc(o->heartbeat_len)) == NULL) {
			aai_free(nl);
			return AA_ENOMEM;
		}
		memcpy(nl->hb_frame, o->heartbeat_frame, o->heartbeat_len);
		nl->opts.heartbeat_frame = nl->hb_frame;
	}
	if ((rv = nng_stream_listener_alloc(&nl->sl, url)) != 0) {
		aai_free(nl->hb_frame);
		aai_free(nl);
		return map_err(rv);
	}
	if (is_tcp(url)) {
		(void)nng_stream_listener_set_bool(nl->sl, NNG_OPT_TCP_NODELAY,
		                                   true);
	}
	if (is_tls(url)) {
		nng_tls_config *cfg;
		if ((rv = make_tls(&cfg, o, true)) == 0) {
			rv = map_err(nng_stream_listener_set_ptr(
			    nl->sl, NNG_OPT_TLS_CONFIG, cfg));
			nng_tls_config_free(cfg);
		}
	} else {
		rv = 0;
	}
	if (rv == 0 &&
	    (rv = map_err(nng_aio_alloc(&nl->acc_aio, accept_cb, nl))) == 0) {
		rv = map_err(nng_stream_listener_listen(nl->sl));
	}
	if (rv != 0) {
		if (nl->acc_aio != NULL) {
			nng_aio_free(nl->acc_aio);
		}
		nng_stream_listener_free(nl->sl);
		aai_free(nl->hb_frame);
		aai_free(nl);
		return rv;
	}
	aai_live_inc(AA_LIVE_OTHER);
	nng_stream_listener_accept(nl->sl, nl->acc_aio);
	*lp = &nl->base;
	return 0;
}
