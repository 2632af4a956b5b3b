// transport_inproc.c: inproc:// connections inside one process.
//
// nng's stream API has no inproc://, and its SP sockets do not fit (pair0 is
// one-to-one, req/rep cannot carry unsolicited Complete or Progress frames,
// and each message takes extra hops through nng's task threads). So inproc
// is a byte pipe shaped exactly like the stream transports: the same
// framing, the same callbacks, the same lifecycle.
//
// Design notes.
// * Registry: a global list of listeners by name under registry_mtx. Dial
//   looks the name up, marks the listener busy, builds a pipe and two
//   connections, calls the accept callback on the dialing thread with no
//   lock held, then unmarks it; listener free waits for busy == 0.
// * Pipe: shared by the two ends, one mutex (pipe->mtx) for both inbound
//   queues. Sending on side s appends header + frame to side[1 - s].in and
//   signals that side's receive thread if it waits: one copy, one wake-up.
// * An idle receive thread spins for up to 20 us (watching an atomic
//   counter that every append and close bumps) before it sleeps on its
//   cv: a reply usually comes sooner than a futex wake-up would.
// * Each started end has its own receive thread: it swaps its inbound queue
//   with its work buffer under the lock (the queues keep their memory),
//   delivers the frames without the lock, and repeats. It ends when its own
//   side is closed (at once) or the peer's is and the queue is drained
//   (data sent before a peer's close is delivered, as on a socket).
// * Flow control: what an end sent and its peer has not taken yet is the
//   peer's inbound queue. While that is over send_pause, the end's
//   receive thread takes nothing more (paused, waiting on its cv) until
//   the peer's thread takes its queue, which wakes it; a send past
//   send_max fails the sender's connection with AA_ELIMIT. (The shared
//   budget of the stream transports does not apply in process.)
// * Shutdown of one end: aai_conn_fail records the reason (transport.c) and
//   abort marks side[s].closed and wakes both threads; the peer then ends
//   with AA_ECONNLOST. The pipe is freed by the second end's teardown
//   (refs under pipe->mtx). A deferred free runs on the end's own thread,
//   which detaches itself.
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport_impl.h"

typedef struct ipipe ipipe;

struct iside {
	aai_tbuf in;       // bytes the other end sent to this one
	pthread_cond_t cv; // wakes this end's receive thread
	bool waiting;      // this end's thread waits on cv
	bool paused;       // ... because the peer does not take what we sent
	bool closed;       // this end was closed or failed
	atomic_uint kicks; // bumped on every append and close: spinners
};

struct ipipe {
	pthread_mutex_t mtx;
	int refs; // ends not yet torn down
	struct iside side[2];
};

typedef struct iconn {
	aai_conn base;
	ipipe *p;
	int s; // my side: I read side[s].in and write side[1 - s].in
	pthread_t thr;
	bool thr_started;
	aai_tbuf work; // receive thread only
} iconn;

typedef struct ilistener {
	aai_listener base;
	struct ilistener *next;
	char *name;
	aai_tp_opts opts;
	uint8_t *hb_frame;
	void (*accept)(void *, aai_conn *);
	void *arg;
	bool registered; // registry_mtx
	int busy;        // registry_mtx: accept callbacks running
	pthread_cond_t cv;
} ilistener;

static pthread_mutex_t registry_mtx = PTHREAD_MUTEX_INITIALIZER;
static ilistener *registry;

// ---- connection ----

#define SPIN_NS 20000 // how long an idle receive thread spins

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// spin_for_kick returns once *kicks moved from k or SPIN_NS passed.
static void
spin_for_kick(atomic_uint *kicks, unsigned k)
{
	uint64_t end = 0;
	for (unsigned i = 1;; i++) {
		if (atomic_load_explicit(kicks, memory_order_acquire) != k) {
			return;
		}
		if ((i & 63) == 0) {
			uint64_t now = mono_ns();
			if (end == 0) {
				end = now + SPIN_NS;
			} else if (now >= end) {
				return;
			}
		}
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
}

static void *
rx_thread(void *arg)
{
	iconn *ic = arg;
	aai_conn *c = &ic->base;
	ipipe *p = ic->p;
	struct iside *me = &p->side[ic->s];
	struct iside *peer = &p->side[1 - ic->s];
	int err = AA_ECONNLOST;

	aai_mtx_lock(&p->mtx);
	for (;;) {
		if (me->in.len == 0 && !me->closed && !peer->closed) {
			// Spin a little before sleeping: a reply often comes
			// within microseconds, and a futex wake-up costs more.
			unsigned k = atomic_load(&me->kicks);
			aai_mtx_unlock(&p->mtx);
			spin_for_kick(&me->kicks, k);
			aai_mtx_lock(&p->mtx);
		}
		while ((me->in.len == 0 || (c->send_pause != 0 &&
		                            peer->in.len > c->send_pause)) &&
		       !me->closed && !peer->closed) {
			// Nothing to take, or the peer does not take what we
			// sent: wait (its thread wakes us when it takes it).
			me->paused =
			    c->send_pause != 0 && peer->in.len > c->send_pause;
			atomic_store(&c->rx_paused, me->paused);
			me->waiting = true;
			aai_cv_wait(&me->cv, &p->mtx);
			me->waiting = false;
		}
		me->paused = false;
		atomic_store(&c->rx_paused, false);
		if (me->closed || me->in.len == 0) {
			break;
		}
		aai_tbuf t = ic->work;
		ic->work = me->in;
		me->in = t;
		if (peer->paused && peer->waiting) {
			aai_cv_signal(&peer->cv); // we took what it sent
		}
		aai_mtx_unlock(&p->mtx);

		size_t used, need;
		int rv =
		    aai_conn_rx(c, ic->work.p, ic->work.len, &used, &need);
		ic->work.len = 0; // inproc queues hold whole frames only
		aai_mtx_lock(&p->mtx);
		if (rv != 0) {
			err = rv;
			break;
		}
	}
	aai_mtx_unlock(&p->mtx);
	aai_conn_fail(c, err); // also wakes the peer
	if (aai_conn_rx_end(c, err)) {
		pthread_detach(pthread_self());
		c->ops->teardown(c, true);
	}
	return NULL;
}

static void
iconn_start(aai_conn *c)
{
	iconn *ic = (iconn *)c;
	// The new thread takes p->mtx first: holding it here keeps the thread
	// (which may free ic on a deferred free) from running before thr and
	// thr_started are stored.
	aai_mtx_lock(&ic->p->mtx);
	ic->thr_started = pthread_create(&ic->thr, NULL, rx_thread, ic) == 0;
	bool ok = ic->thr_started;
	aai_mtx_unlock(&ic->p->mtx);
	if (!ok) {
		// No thread: end the receive path here, on the caller's
		// thread.
		aai_conn_fail(c, AA_ENOMEM);
		(void)aai_conn_rx_end(c, AA_ENOMEM);
	}
}

// An append to the peer's inbound queue: a frame, or raw bytes.
typedef struct append {
	size_t len;
	const void *data;
	void (*encode)(void *ctx, uint8_t *dst);
	void *ctx;
	bool raw; // no header (aai_conn_send_raw)
} append;

static int
put_raw(aai_tbuf *b, const void *data, size_t len)
{
	int rv;
	if (len > SIZE_MAX - b->len) {
		return AA_ENOMEM;
	}
	if ((rv = aai_tbuf_reserve(b, b->len + len)) == 0 && len > 0) {
		memcpy(b->p + b->len, data, len);
		b->len += len;
	}
	return rv;
}

// pipe_append adds a to the peer's inbound queue and wakes its receive
// thread.
static int
pipe_append(iconn *ic, const append *a)
{
	ipipe *p = ic->p;
	struct iside *peer = &p->side[1 - ic->s];
	int rv;

	aai_mtx_lock(&p->mtx);
	if (p->side[ic->s].closed || peer->closed) {
		aai_mtx_unlock(&p->mtx);
		return AA_ECLOSED;
	}
	if (peer->in.len + a->len + (a->raw ? 0 : AAI_TP_HDR) >
	    ic->base.send_max) {
		// The peer takes nothing: drop it rather than grow.
		aai_mtx_unlock(&p->mtx);
		aai_conn_fail(&ic->base, AA_ELIMIT);
		return AA_ELIMIT;
	}
	rv = a->raw ? put_raw(&peer->in, a->data, a->len)
	            : aai_tbuf_put_frame(&peer->in, a->len, a->data, a->encode,
	                                 a->ctx);
	atomic_fetch_add_explicit(&peer->kicks, 1, memory_order_release);
	if (rv == 0 && peer->waiting) {
		aai_cv_signal(&peer->cv);
	}
	aai_mtx_unlock(&p->mtx);
	return rv;
}

static int
iconn_send(aai_conn *c, size_t len, const void *data,
           void (*encode)(void *ctx, uint8_t *dst), void *ctx)
{
	append a = {len, data, encode, ctx, false};
	return pipe_append((iconn *)c, &a);
}

static void
iconn_abort(aai_conn *c)
{
	iconn *ic = (iconn *)c;
	ipipe *p = ic->p;
	aai_mtx_lock(&p->mtx);
	p->side[ic->s].closed = true;
	atomic_fetch_add(&p->side[0].kicks, 1);
	atomic_fetch_add(&p->side[1].kicks, 1);
	aai_cv_broadcast(&p->side[0].cv);
	aai_cv_broadcast(&p->side[1].cv);
	aai_mtx_unlock(&p->mtx);
}

static void
pipe_release(ipipe *p)
{
	aai_mtx_lock(&p->mtx);
	bool last = --p->refs == 0;
	aai_mtx_unlock(&p->mtx);
	if (last) {
		for (int i = 0; i < 2; i++) {
			aai_tbuf_fini(&p->side[i].in);
			aai_cv_fini(&p->side[i].cv);
		}
		aai_mtx_fini(&p->mtx);
		aai_free(p);
	}
}

static void
iconn_teardown(aai_conn *c, bool from_rx)
{
	iconn *ic = (iconn *)c;
	iconn_abort(c);
	if (ic->thr_started && !from_rx) {
		pthread_join(ic->thr, NULL);
	}
	if (c->timer != NULL) {
		nng_aio_stop(c->timer);
	}
	aai_conn_quiesce(c); // a close on another thread may still use p
	pipe_release(ic->p);
	aai_tbuf_fini(&ic->work);
	aai_conn_base_fini(c);
	aai_free(ic);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_conn_ops iconn_ops = {
    .start = iconn_start,
    .send = iconn_send,
    .abort = iconn_abort,
    .teardown = iconn_teardown,
};

static iconn *
iconn_alloc(ipipe *p, int s, const aai_tp_opts *o)
{
	iconn *ic = aai_zalloc(sizeof(*ic));
	if (ic == NULL) {
		return NULL;
	}
	if (aai_conn_base_init(&ic->base, &iconn_ops, o) != 0) {
		aai_free(ic);
		return NULL;
	}
	ic->p = p;
	ic->s = s;
	aai_live_inc(AA_LIVE_OTHER);
	return ic;
}

// aai_conn_send_raw (transport.h): bytes into the peer's inbound queue as
// they are, header or not, so that a fuzz target can feed the framing.
int
aai_conn_send_raw(aai_conn *c, const void *data, size_t len)
{
	append a = {.len = len, .data = data, .raw = true};
	if (c->ops != &iconn_ops) {
		return AA_ENOTSUP;
	}
	return pipe_append((iconn *)c, &a);
}

// ---- dial and listen ----

int
aai_inproc_dial(aai_conn **cp, const char *name, const aai_tp_opts *o)
{
	ilistener *l;
	aai_mtx_lock(&registry_mtx);
	for (l = registry; l != NULL; l = l->next) {
		if (strcmp(l->name, name) == 0) {
			break;
		}
	}
	if (l == NULL) {
		aai_mtx_unlock(&registry_mtx);
		return AA_ECONNREF;
	}
	l->busy++;
	aai_mtx_unlock(&registry_mtx);

	int rv = AA_ENOMEM;
	iconn *cli = NULL, *srv = NULL;
	ipipe *p = aai_zalloc(sizeof(*p));
	if (p != NULL) {
		aai_mtx_init(&p->mtx);
		aai_cv_init(&p->side[0].cv);
		aai_cv_init(&p->side[1].cv);
		p->refs = 2;
		if ((cli = iconn_alloc(p, 0, o)) != NULL &&
		    (srv = iconn_alloc(p, 1, &l->opts)) != NULL) {
			rv = 0;
		}
	}
	if (rv != 0 && p != NULL) {
		if (cli != NULL) {
			iconn_teardown(&cli->base, false); // drops one ref
		} else {
			pipe_release(p);
		}
		pipe_release(p);
	}
	if (rv == 0) {
		l->accept(l->arg, &srv->base);
		*cp = &cli->base;
	}

	aai_mtx_lock(&registry_mtx);
	if (--l->busy == 0) {
		aai_cv_broadcast(&l->cv);
	}
	aai_mtx_unlock(&registry_mtx);
	return rv;
}

static int
ilistener_port(aai_listener *l)
{
	return 0;
}

static void
ilistener_close(aai_listener *al)
{
	ilistener *l = (ilistener *)al;
	aai_mtx_lock(&registry_mtx);
	if (l->registered) {
		ilistener **pp = &registry;
		while (*pp != l) {
			pp = &(*pp)->next;
		}
		*pp = l->next;
		l->registered = false;
	}
	aai_mtx_unlock(&registry_mtx);
}

static void
ilistener_free(aai_listener *al)
{
	ilistener *l = (ilistener *)al;
	ilistener_close(al);
	aai_mtx_lock(&registry_mtx);
	while (l->busy > 0) {
		aai_cv_wait(&l->cv, &registry_mtx);
	}
	aai_mtx_unlock(&registry_mtx);
	aai_cv_fini(&l->cv);
	aai_free(l->hb_frame);
	aai_free(l->name);
	aai_free(l);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_listener_ops ilistener_ops = {
    .port = ilistener_port,
    .close = ilistener_close,
    .free = ilistener_free,
};

int
aai_inproc_listen(aai_listener **lp, const char *name, const aai_tp_opts *o,
                  void (*accept)(void *, aai_conn *), void *arg)
{
	ilistener *l = aai_zalloc(sizeof(*l));
	if (l == NULL) {
		return AA_ENOMEM;
	}
	l->base.ops = &ilistener_ops;
	l->accept = accept;
	l->arg = arg;
	l->opts = *o;
	l->opts.tls_cert_file = l->opts.tls_key_file = NULL;
	l->opts.tls_ca_file = l->opts.tls_server_name = NULL;
	if ((l->name = aai_strdup(name)) == NULL) {
		aai_free(l);
		return AA_ENOMEM;
	}
	if (o->heartbeat_len > 0) {
		if ((l->hb_frame = aai_alloc(o->heartbeat_len)) == NULL) {
			aai_free(l->name);
			aai_free(l);
			return AA_ENOMEM;
		}
		memcpy(l->hb_frame, o->heartbeat_frame, o->heartbeat_len);
		l->opts.heartbeat_frame = l->hb_frame;
	}
	aai_cv_init(&l->cv);
	aai_mtx_lock(&registry_mtx);
	for (ilistener *x = registry; x != NULL; x = x->next) {
		if (strcmp(x->name, name) == 0) {
			aai_mtx_unlock(&registry_mtx);
			aai_cv_fini(&l->cv);
			aai_free(l->hb_frame);
			aai_free(l->name);
			aai_free(l);
			return AA_EBUSY;
		}
	}
	l->next = registry;
	registry = l;
	l->registered = true;
	aai_mtx_unlock(&registry_mtx);
	aai_live_inc(AA_LIVE_OTHER);
	*lp = &l->base;
	return 0;
}
