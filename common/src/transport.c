// transport.c: the part of the internal transport common to its backends:
// URL dispatch (ipc:// and tcp:// to transport_sock.c unless nng's streams
// are asked for), frame parsing, the down-once rule, close/free, heartbeat and
// silence timers.
//
// Design notes.
// * States of a connection (under c->mtx): created → started → closing
//   (close asked, or a failure recorded in err) → rx_done (down delivered).
//   The first reason recorded in err wins: close gives AA_ECLOSED, silence
//   AA_ETIMEDOUT, an oversized header AA_EMSGSIZE; a receive path that
//   ends without any recorded reason reports the backend's (AA_ECONNLOST).
// * Down is delivered only by the receive path, once, when it ends: so it
//   always comes after the last frame callback and on the same thread.
//   Close and failures only record a reason and abort the backend's I/O,
//   which makes the receive path end. stop_rx (atomic) stops delivering
//   frames of a batch already read once the conn is closing.
// * Free from inside a callback: the receive path marks in_rx/rx_thread
//   (under the lock) while it runs callbacks; aai_conn_free on that thread
//   sets free_deferred and returns; aai_conn_rx_end then tells the backend
//   to tear down from the receive thread. Otherwise free waits on the cv for
//   rx_done and tears down itself. The race free-vs-rx_end is decided by
//   one locked step in each (free_deferred is read under the same lock
//   that sets rx_done).
// * Close racing free: a close on another thread may cause the down
//   callback that frees the conn (close → down → deferred free) while
//   that close still aborts I/O. c->failing counts aai_conn_fail calls in
//   progress; teardown waits for zero (aai_conn_quiesce) before freeing.
// * Ending from a frame callback (aai_conn_end_batch, e.g. a Goodbye to a
//   peer of another version): the callback only records end_err (it runs
//   on the rx thread, which alone reads it); aai_conn_rx stops after that
//   frame and returns end_err as it returns AA_EMSGSIZE for an oversized
//   header, so the backend first ends the cork (the Goodbye is written)
//   and then ends the receive path with that reason. A close from the
//   callback would set closing first, and uncork discards a closing
//   conn's queue.
// * The drop past send_max with a last word (limit_frame; the socket
//   backend does it, transport_sock.c): lingering is a state between
//   started and closing. aai_conn_linger_locked enters it in the same
//   locked step that decides the drop: AA_ELIMIT is recorded as the
//   reason (so a close, a silence or a lost peer during the linger
//   still reports AA_ELIMIT: the first reason wins), frames stop
//   (stop_rx), the silence bound is off, and the linger aio is armed.
//   The backend ends it by closing once the last frame is written and
//   the peer closed; the linger aio's end closes it anyway
//   (aai_conn_fail(AA_ELIMIT)), whichever comes first: the close is
//   idempotent, so the timer racing the end of the write is harmless.
//   Teardown stops the aio before quiesce (aai_conn_stop_timers), so its
//   callback never runs on a freed conn.
// * Timers: one nng aio sleep per connection ticks at a fraction of the
//   heartbeat and silence periods; it reads last_tx/last_rx (atomics
//   updated per send and per receive batch), sends the heartbeat frame
//   through the normal send path, or fails the conn with AA_ETIMEDOUT. It
//   never calls user code, so free may stop it from any callback.
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport_impl.h"

#define DEFAULT_MAX_FRAME       (4u << 20)
#define DEFAULT_CONNECT_TIMEOUT 5000
#define DEFAULT_SEND_MAX        (64u << 20)

static atomic_uint_fast64_t next_conn_id = 1;

// aai_tp_now_ms: the coarse monotonic clock (a jiffy, 1-4 ms), read per
// send and per receive batch for the heartbeat and silence timers, which
// count in whole milliseconds of at least tens. CLOCK_MONOTONIC costs ~90
// ns a read on this kind of VM (vDSO over a virtual TSC), the coarse one
// ~10 ns; a per-send read was 5% of the CPU at 256 outstanding calls.
uint64_t
aai_tp_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

// ---- buffers ----

int
aai_tbuf_reserve(aai_tbuf *b, size_t need)
{
	if (need <= b->cap) {
		return 0;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < need) {
		cap *= 2;
	}
	uint8_t *p = aai_alloc(cap);
	if (p == NULL) {
		return AA_ENOMEM;
	}
	if (b->len > 0) {
		memcpy(p, b->p, b->len);
	}
	aai_free(b->p);
	b->p = p;
	b->cap = cap;
	return 0;
}

void
aai_tbuf_fini(aai_tbuf *b)
{
	aai_free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

int
aai_tbuf_put_frame(aai_tbuf *b, size_t len, const void *data,
                   void (*encode)(void *ctx, uint8_t *dst), void *ctx)
{
	int rv = aai_tbuf_reserve(b, b->len + AAI_TP_HDR + len);
	if (rv != 0) {
		return rv;
	}
	uint8_t *d = b->p + b->len;
	d[0] = (uint8_t)(len >> 24);
	d[1] = (uint8_t)(len >> 16);
	d[2] = (uint8_t)(len >> 8);
	d[3] = (uint8_t)len;
	if (encode != NULL) {
		encode(ctx, d + AAI_TP_HDR);
	} else if (len > 0) {
		memcpy(d + AAI_TP_HDR, data, len);
	}
	b->len += AAI_TP_HDR + len;
	return 0;
}

// ---- timers ----

static int
timer_tick_ms(aai_conn *c)
{
	int tick = 1000;
	int hb = atomic_load(&c->heartbeat_ms);
	int silence = atomic_load(&c->silence_ms);
	if (hb > 0 && hb / 2 < tick) {
		tick = hb / 2;
	}
	if (silence > 0 && silence / 4 < tick) {
		tick = silence / 4;
	}
	return tick < 1 ? 1 : tick;
}

static void
timer_cb(void *arg)
{
	aai_conn *c = arg;
	if (nng_aio_result(c->timer) != 0) {
		return; // stopped
	}
	aai_mtx_lock(&c->mtx);
	bool closing = c->closing;
	aai_mtx_unlock(&c->mtx);
	if (closing) {
		return;
	}
	uint64_t now = aai_tp_now_ms();
	int hb = atomic_load(&c->heartbeat_ms);
	int silence = atomic_load(&c->silence_ms);
	if (atomic_load(&c->rx_paused)) {
		// We stopped reading: the peer's silence is ours.
		atomic_store(&c->last_rx_ms, now);
	} else if (silence > 0 &&
	           now - atomic_load(&c->last_rx_ms) >= (uint64_t)silence) {
		aai_conn_fail(c, AA_ETIMEDOUT);
		return;
	}
	if (hb > 0 && !atomic_load(&c->hb_suppressed) &&
	    now - atomic_load(&c->last_tx_ms) >= (uint64_t)hb) {
		(void)aai_conn_send(c, c->hb_frame, c->hb_len);
	}
	nng_sleep_aio(timer_tick_ms(c), c->timer);
}

// linger_cb ends the linger of a connection dropped past send_max that
// did not finish writing its last frame in time (or whose peer did not
// close after it): the close that a finished write would have done.
static void
linger_cb(void *arg)
{
	aai_conn *c = arg;
	if (nng_aio_result(c->linger) != 0) {
		return; // stopped
	}
	aai_conn_fail(c, AA_ELIMIT);
}

static atomic_int linger_ms = AAI_TP_LINGER_MS;

void
aai_tp_set_linger_ms(int ms)
{
	atomic_store(&linger_ms, ms > 0 ? ms : AAI_TP_LINGER_MS);
}

void
aai_conn_linger_locked(aai_conn *c)
{
	c->lingering = true;
	if (c->err == 0) {
		c->err = AA_ELIMIT;
	}
	atomic_store(&c->stop_rx, true);   // no frame of a read batch follows
	atomic_store(&c->rx_paused, true); // and no silence bound
	nng_sleep_aio(atomic_load(&linger_ms), c->linger);
}

void
aai_conn_stop_timers(aai_conn *c)
{
	if (c->timer != NULL) {
		nng_aio_stop(c->timer);
	}
	if (c->linger != NULL) {
		nng_aio_stop(c->linger);
	}
}

// ---- base ----

int
aai_conn_base_init(aai_conn *c, const aai_conn_ops *ops, const aai_tp_opts *o)
{
	memset(c, 0, sizeof(*c));
	c->ops = ops;
	c->id = atomic_fetch_add(&next_conn_id, 1);
	c->max_frame = o->max_frame ? o->max_frame : DEFAULT_MAX_FRAME;
	if (c->max_frame > 0x7fffffffu) {
		c->max_frame = 0x7fffffffu;
	}
	c->send_pause = o->send_pause; // 0: never pause
	c->send_max = o->send_max ? o->send_max : DEFAULT_SEND_MAX;
	if (c->send_max < c->send_pause + c->max_frame + AAI_TP_HDR) {
		c->send_max = c->send_pause + c->max_frame + AAI_TP_HDR;
	}
	c->budget = o->budget;
	atomic_init(&c->rx_paused, false);
	atomic_init(&c->heartbeat_ms,
	            o->heartbeat_ms > 0 ? o->heartbeat_ms : 0);
	atomic_init(&c->silence_ms, o->silence_ms > 0 ? o->silence_ms : 0);
	if (o->heartbeat_ms > 0) {
		if (o->heartbeat_frame == NULL && o->heartbeat_len > 0) {
			return AA_EINVAL;
		}
		c->hb_len = o->heartbeat_len;
		// One byte at least, so that an empty frame has a buffer.
		if ((c->hb_frame = aai_alloc(c->hb_len + 1)) == NULL) {
			return AA_ENOMEM;
		}
		if (c->hb_len > 0) {
			memcpy(c->hb_frame, o->heartbeat_frame, c->hb_len);
		}
	}
	if (o->heartbeat_ms > 0 || o->silence_ms > 0) {
		if (nng_aio_alloc(&c->timer, timer_cb, c) != 0) {
			aai_free(c->hb_frame);
			return AA_ENOMEM;
		}
	}
	if (o->limit_frame != NULL) {
		c->limit_len = o->limit_len;
		c->limit_frame = aai_alloc(c->limit_len + 1);
		if (c->limit_frame == NULL ||
		    nng_aio_alloc(&c->linger, linger_cb, c) != 0) {
			aai_free(c->limit_frame);
			if (c->timer != NULL) {
				nng_aio_free(c->timer);
			}
			aai_free(c->hb_frame);
			return AA_ENOMEM;
		}
		if (c->limit_len > 0) {
			memcpy(c->limit_frame, o->limit_frame, c->limit_len);
		}
	}
	uint64_t now = aai_tp_now_ms();
	atomic_init(&c->last_tx_ms, now);
	atomic_init(&c->last_rx_ms, now);
	atomic_init(&c->stop_rx, false);
	atomic_init(&c->hb_suppressed, false);
	aai_mtx_init(&c->mtx);
	aai_cv_init(&c->cv);
	return 0;
}

// aai_conn_base_fini expects the backend to have stopped all I/O.
void
aai_conn_base_fini(aai_conn *c)
{
	if (c->timer != NULL) {
		nng_aio_free(c->timer);
	}
	if (c->linger != NULL) {
		nng_aio_free(c->linger);
	}
	aai_free(c->hb_frame);
	aai_free(c->limit_frame);
	aai_cv_fini(&c->cv);
	aai_mtx_fini(&c->mtx);
}

void
aai_conn_fail(aai_conn *c, int err)
{
	aai_mtx_lock(&c->mtx);
	c->closing = true;
	if (c->err == 0) {
		c->err = err;
	}
	c->failing++; // teardown waits: the abort below still uses c
	aai_mtx_unlock(&c->mtx);
	atomic_store(&c->stop_rx, true);
	c->ops->abort(c);
	aai_mtx_lock(&c->mtx);
	if (--c->failing == 0) {
		aai_cv_broadcast(&c->cv);
	}
	aai_mtx_unlock(&c->mtx);
}

void
aai_conn_quiesce(aai_conn *c)
{
	aai_mtx_lock(&c->mtx);
	while (c->failing > 0) {
		aai_cv_wait(&c->cv, &c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
}

static uint32_t
get_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void
rx_enter(aai_conn *c)
{
	aai_mtx_lock(&c->mtx);
	c->in_rx = true;
	c->rx_thread = pthread_self();
	aai_mtx_unlock(&c->mtx);
}

static void
rx_leave(aai_conn *c)
{
	aai_mtx_lock(&c->mtx);
	c->in_rx = false;
	aai_mtx_unlock(&c->mtx);
}

int
aai_conn_rx(aai_conn *c, const uint8_t *buf, size_t len, size_t *used,
            size_t *need)
{
	size_t off = 0;
	int rv = 0;
	int n = 0;

	*need = 0;
	atomic_store_explicit(&c->last_rx_ms, aai_tp_now_ms(),
	                      memory_order_relaxed);
	rx_enter(c);
	while (len - off >= AAI_TP_HDR) {
		uint32_t flen = get_be32(buf + off);
		if (flen > c->max_frame) {
			rv = AA_EMSGSIZE; // refused before allocating
			if (c->cbs.oversize != NULL) {
				// Its best-effort Goodbye leaves with the
				// batch, before the connection fails.
				c->cbs.oversize(c->arg, c, flen);
			}
			break;
		}
		if (len - off - AAI_TP_HDR < flen) {
			*need = AAI_TP_HDR + (size_t)flen;
			break;
		}
		if (atomic_load_explicit(&c->stop_rx, memory_order_relaxed)) {
			break;
		}
		c->cbs.frame(c->arg, c, buf + off + AAI_TP_HDR, flen);
		n++;
		off += AAI_TP_HDR + flen;
		if (c->end_err != 0) {
			rv = c->end_err; // the batch is written, then c ends
			break;
		}
	}
	if (rv == 0 && n > 0 && c->cbs.flush != NULL &&
	    !atomic_load(&c->stop_rx)) {
		c->cbs.flush(c->arg, c);
	}
	rx_leave(c);
	*used = off;
	return rv;
}

void
aai_conn_end_batch(aai_conn *c, int err)
{
	aai_mtx_lock(&c->mtx);
	bool mine = c->in_rx && pthread_equal(c->rx_thread, pthread_self());
	if (mine && c->end_err == 0) {
		c->end_err = err;
	}
	aai_mtx_unlock(&c->mtx);
	if (!mine) {
		aai_conn_fail(c, err);
	}
}

bool
aai_conn_rx_end(aai_conn *c, int err)
{
	aai_mtx_lock(&c->mtx);
	c->closing = true;
	if (c->err == 0) {
		c->err = err;
	}
	err = c->err;
	c->in_rx = true;
	c->rx_thread = pthread_self();
	aai_mtx_unlock(&c->mtx);
	atomic_store(&c->stop_rx, true);

	if (c->cbs.down != NULL) {
		c->cbs.down(c->arg, c, err);
	}

	aai_mtx_lock(&c->mtx);
	// Deciding step of free vs end of receive: under this lock either free
	// saw in_rx on its own thread (deferred) or it waits for rx_done.
	c->in_rx = false;
	c->rx_done = true;
	bool deferred = c->free_deferred;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
	return deferred;
}

// ---- public API ----

enum { TP_ENV_UNREAD, TP_ENV_DEFAULT, TP_ENV_NNG, TP_ENV_SOCK };
static atomic_int tp_env = TP_ENV_UNREAD;

// use_nng_streams: whether an ipc:// or tcp:// URL goes to nng's streams
// rather than transport_sock.c. AA_TRANSPORT is read once per process.
static bool
use_nng_streams(const aai_tp_opts *o)
{
	int env = atomic_load_explicit(&tp_env, memory_order_relaxed);
	if (env == TP_ENV_UNREAD) {
		const char *v = getenv("AA_TRANSPORT");
		env = TP_ENV_DEFAULT;
		if (v != NULL && strcmp(v, "nng") == 0) {
			env = TP_ENV_NNG;
		} else if (v != NULL && strcmp(v, "sock") == 0) {
			env = TP_ENV_SOCK;
		}
		atomic_store_explicit(&tp_env, env, memory_order_relaxed);
	}
	if (env == TP_ENV_NNG) {
		return true;
	}
	return env == TP_ENV_DEFAULT && o->nng_streams;
}

static bool
sock_scheme(const char *url)
{
	return strncmp(url, "ipc://", 6) == 0 ||
	       strncmp(url, "tcp://", 6) == 0;
}

static void
fill_defaults(aai_tp_opts *dst, const aai_tp_opts *o)
{
	if (o != NULL) {
		*dst = *o;
	} else {
		memset(dst, 0, sizeof(*dst));
	}
	if (dst->connect_timeout_ms <= 0) {
		dst->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT;
	}
}

int
aai_listen(aai_listener **lp, const char *url, const aai_tp_opts *o,
           void (*accept)(void *arg, aai_conn *c), void *arg)
{
	aai_tp_opts opts;
	if (lp == NULL || url == NULL || accept == NULL) {
		return AA_EINVAL;
	}
	fill_defaults(&opts, o);
	if (strncmp(url, "inproc://", 9) == 0) {
		return aai_inproc_listen(lp, url + 9, &opts, accept, arg);
	}
	if (sock_scheme(url) && !use_nng_streams(&opts)) {
		return aai_sock_listen(lp, url, &opts, accept, arg);
	}
	return aai_nng_listen(lp, url, &opts, accept, arg);
}

int
aai_listener_port(aai_listener *l)
{
	return l->ops->port(l);
}

void
aai_listener_close(aai_listener *l)
{
	l->ops->close(l);
}

void
aai_listener_free(aai_listener *l)
{
	if (l != NULL) {
		l->ops->free(l);
	}
}

int
aai_dial(aai_conn **cp, const char *url, const aai_tp_opts *o)
{
	aai_tp_opts opts;
	if (cp == NULL || url == NULL) {
		return AA_EINVAL;
	}
	fill_defaults(&opts, o);
	if (strncmp(url, "inproc://", 9) == 0) {
		return aai_inproc_dial(cp, url + 9, &opts);
	}
	if (sock_scheme(url) && !use_nng_streams(&opts)) {
		return aai_sock_dial(cp, url, &opts);
	}
	return aai_nng_dial(cp, url, &opts);
}

void
aai_conn_start(aai_conn *c, const aai_conn_cbs *cbs, void *arg)
{
	AAI_ASSERT(cbs != NULL && cbs->frame != NULL);
	aai_mtx_lock(&c->mtx);
	AAI_ASSERT(!c->started);
	c->cbs = *cbs;
	c->arg = arg;
	c->started = true;
	aai_mtx_unlock(&c->mtx);
	uint64_t now = aai_tp_now_ms();
	atomic_store(&c->last_rx_ms, now);
	atomic_store(&c->last_tx_ms, now);
	if (c->timer != NULL) {
		nng_sleep_aio(timer_tick_ms(c), c->timer);
	}
	c->ops->start(c);
}

int
aai_conn_send(aai_conn *c, const void *frame, size_t len)
{
	if (len > c->max_frame) {
		return AA_EMSGSIZE;
	}
	int rv = c->ops->send(c, len, frame, NULL, NULL);
	if (rv == 0) {
		atomic_store_explicit(&c->last_tx_ms, aai_tp_now_ms(),
		                      memory_order_relaxed);
	}
	return rv;
}

int
aai_conn_send_encode(aai_conn *c, size_t len,
                     void (*encode)(void *ctx, uint8_t *dst), void *ctx)
{
	if (len > c->max_frame) {
		return AA_EMSGSIZE;
	}
	int rv = c->ops->send(c, len, NULL, encode, ctx);
	if (rv == 0) {
		atomic_store_explicit(&c->last_tx_ms, aai_tp_now_ms(),
		                      memory_order_relaxed);
	}
	return rv;
}

void
aai_conn_close(aai_conn *c)
{
	aai_conn_fail(c, AA_ECLOSED);
}

int
aai_conn_free(aai_conn *c)
{
	if (c == NULL) {
		return 0;
	}
	aai_conn_fail(c, AA_ECLOSED);
	aai_mtx_lock(&c->mtx);
	if (c->in_rx && pthread_equal(c->rx_thread, pthread_self())) {
		// Inside c's own callback: the receive path frees c after
		// down.
		c->free_deferred = true;
		aai_mtx_unlock(&c->mtx);
		return 0;
	}
	while (c->started && !c->rx_done) {
		aai_cv_wait(&c->cv, &c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
	c->ops->teardown(c, false);
	return 0;
}

bool
aai_conn_on_rx_thread(aai_conn *c)
{
	aai_mtx_lock(&c->mtx);
	bool on = c->in_rx && pthread_equal(c->rx_thread, pthread_self());
	aai_mtx_unlock(&c->mtx);
	return on;
}

uint64_t
aai_conn_id(aai_conn *c)
{
	return c->id;
}

void
aai_conn_set_heartbeat(aai_conn *c, int heartbeat_ms, int silence_ms)
{
	if (c->timer == NULL) {
		return; // both were off at creation: they stay off
	}
	atomic_store(&c->heartbeat_ms, c->hb_frame != NULL && heartbeat_ms > 0
	                                   ? heartbeat_ms
	                                   : 0);
	atomic_store(&c->silence_ms, silence_ms > 0 ? silence_ms : 0);
}

void
aai_conn_suppress_heartbeats(aai_conn *c, bool on)
{
	atomic_store(&c->hb_suppressed, on);
}
