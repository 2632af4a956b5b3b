// transport_inproc.c: inproc:// connections inside one process.
//
// nng's stream API has no inproc://, and its SP sockets do not fit (pair0 is
// one-to-one, req/rep cannot carry unsolicited Complete or Progress frames,
// and each message takes extra hops through nng's task threads). So inproc
// is a byte pipe shaped exactly like the stream transports: the same
// framing, the same callbacks, the same lifecycle.
//
// Design notes.
// * Registry, dial and listen, and the kill hook: transport_inproc_listen.c
//   (its own notes); transport_inproc.h holds what the two files share.
// * Pipe: shared by the two ends, one mutex (pipe->mtx) for everything in
//   it. Sending on side s appends header + frame to side[1 - s].in: one
//   copy.
// * Threads and the delivery token. Each started end has its own thread
//   (its owner), in one of the states of owner_state: NONE (not started)
//   -> AWAKE, then AWAKE <-> AWAY (delivering the peer's batch) and AWAKE
//   <-> ASLEEP (on its cv), and AWAKE -> NONE when it ends. A side's inbound
//   queue is delivered in batches: whoever holds the side's token (busy, under
//   the lock) swaps the queue with the end's work buffer, drops the lock, runs
//   aai_conn_rx (frame callbacks, then flush) and takes the lock again to give
//   the token back. So the callbacks of one end stay serialised, and none runs
//   under a lock. An owner takes its own side's batch first; when it has
//   nothing, it may take the peer side's batch too (a "hand-over": the peer's
//   token is free, its side is not closed or paused, and the peer's owner
//   sleeps, or delivers our batch; an owner that is awake takes its own batch,
//   so that under load both ends run in parallel). A call with one request
//   outstanding then runs on one thread: the client end's thread delivers the
//   Complete, whose handler sends the next Start; at the end of that batch the
//   same thread delivers the Start to the server end (method, Complete), then
//   the Complete, and so on, with no wake-up and no thread switch. A thread
//   that delivers the peer's batch is AWAY; a frame sent to its own side
//   meanwhile by a third thread wakes the peer's owner instead, which may take
//   it: neither side waits for a callback of the other to return.
// * Sends from a batch are corked: a frame that a callback of side s's
//   batch sends on side s (the thread-local tl_batch says which batch this
//   thread delivers) wakes nobody; at the end of the batch its thread
//   either takes the peer's batch itself or wakes the peer's owner. This is
//   the "sends from callbacks during a batch leave together" rule of
//   transport.h, as the stream transports' cork. Every other send wakes the
//   owner of the side it fills (or, if that owner is away, the other one).
// * Idle owners spin only where it pays, adaptively: each side keeps an
//   average (1/8 weight) of its idle gaps, from going idle to taking work
//   (its own batch or the peer's); an owner spins (pause, watching an
//   atomic counter that every append and close bumps) for twice that
//   average, at most SPIN_MAX_NS, and only when the average is under
//   SPIN_MAX_NS / 2, and the peer's batch is not being delivered (if it is,
//   its thread will hand our batch over when it ends: sleeping then keeps a
//   call on one thread); otherwise it sleeps on its cv at once. Work that its
//   peer's thread took meanwhile does not end the idle gap, so an end
//   whose batches are always handed over stops spinning. A process-wide
//   count bounds the spinners to (online CPUs - 1): never two spinners on
//   one core, and none at all on one CPU; an owner that finds no free slot
//   sleeps. The lost wake-up race (a frame sent just as an owner decides
//   to sleep) is settled by the lock: the sender appends and reads the
//   owner's state under it; the owner re-checks its queue under it after
//   spinning (checkpoint inproc.before_sleep) and becomes ASLEEP in the
//   same locked step as its cv wait.
// * Flow control: what an end sent and its peer has not taken yet is the
//   peer's inbound queue. While that is over send_pause, nobody takes the
//   end's own batch (paused) until the peer's queue is taken, which wakes
//   its owner; a send past send_max fails the sender's connection with
//   AA_ELIMIT. (The shared budget of the stream transports does not apply
//   in process, nor the last frame, limit_frame: the drop stays a plain
//   close, docs/protocol.md § 17.)
// * Shutdown of one end: aai_conn_fail records the reason (transport.c) and
//   abort marks side[s].closed and wakes both threads; the peer then ends
//   with AA_ECONNLOST. An owner leaves its loop only when its side's token
//   is free (it waits for a hand-over in progress to end) and becomes NONE
//   in the same locked step, so no thread takes its batch
//   afterwards; down and a deferred teardown then run on the owner's own
//   thread, which detaches itself. While an owner delivers the peer's
//   batch its own connection is marked in_rx on its thread, so a free of
//   it from there is deferred, as from its own callbacks (not if the
//   peer's owner is delivering its batch at that moment: in_rx has room
//   for one thread; such a free waits, see the limitation below). The pipe is
//   freed by the second end's teardown (refs under pipe->mtx).
// * Limitation of the hand-over: a callback may run on the thread of the
//   other end of its pipe. A callback must not block (transport.h); one
//   that waits for the other end's down would wait for its own thread. The
//   layers' stop detects it (aai_conn_on_rx_thread: AA_EDEADLK, as from
//   their own callbacks), e.g. a server method stopping the very client
//   that called it over inproc.
// * Test hooks (inproc_hooks.h), for the replay tool and the tests only.
//   aai_inproc_set_handover(false) turns the hand-over off, process-wide
//   (an atomic read by can_hand_over): each end's callbacks then run on
//   its own owner thread only, so a thread held at a server checkpoint
//   is always the server end's, never the client's. Batches then cost a
//   wake-up each (the idle owner wakes the peer's, see rx_thread).
//   aai_inproc_kill(name): transport_inproc_listen.c.
// * Measured (Release, `bench_proxy --transport inproc --reps 5 echo`, two
//   vCPUs shared with other builds; docs/PERFORMANCE.md "In-process path"):
//   before, with two threads per call and 20 us spins, p50 per round
//   57.4 / 58.8 / 55.1 / 1.9 / 54.8 us against nng's 1.3 us and 53.85 us
//   of CPU per call (load 5.55); after, 1.6 / 1.6 / 1.6 / 1.6 / 1.6 us
//   against nng's 1.4 us and 1.71 us of CPU per call (load 4.53), nng
//   itself using about 1.7 us of CPU per call.
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "inproc_hooks.h"
#include "transport_inproc.h"

// ---- spinning ----

#define SPIN_MAX_NS 10000u // the longest spin
#define GAP_CLAMP   1000000u

static atomic_int spinners;           // owners spinning now
static atomic_int spin_limit = -1;    // -1: not computed yet
static atomic_int spin_fixed_ns = -1; // test hook: -1 adaptive
static atomic_uint_fast64_t n_spins, n_spin_hits, n_spin_refused;
static atomic_uint_fast64_t n_handovers, n_sleeps;
static atomic_bool handover_off; // test hook: aai_inproc_set_handover

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int
limit_of_spinners(void)
{
	int n = atomic_load_explicit(&spin_limit, memory_order_relaxed);
	if (n < 0) {
		// AA_SPIN=0 in the environment: no transport thread spins
		// (docs/PERFORMANCE.md): for hosts that run more spinning
		// processes than they have CPUs.
		const char *env = getenv("AA_SPIN");
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		n = cpus > 1 ? (int)(cpus - 1) : 0;
		if (env != NULL && strcmp(env, "0") == 0) {
			n = 0;
		}
		atomic_store(&spin_limit, n);
	}
	return n;
}

// spin_slot_take takes one of the process's spinner slots, if one is free.
// The socket backend's loops take the same slots (aai_tp_spin_take).
static bool
spin_slot_take(void)
{
	int limit = limit_of_spinners();
	int n = atomic_load(&spinners);
	while (n < limit) {
		if (atomic_compare_exchange_weak(&spinners, &n, n + 1)) {
			return true;
		}
	}
	return false;
}

bool
aai_tp_spin_take(void)
{
	return spin_slot_take();
}

void
aai_tp_spin_release(void)
{
	atomic_fetch_sub(&spinners, 1);
}

// spin_budget says how long an idle owner of side x should spin (0: sleep).
static uint64_t
spin_budget(const struct iside *x)
{
	int fixed = atomic_load_explicit(&spin_fixed_ns, memory_order_relaxed);
	if (fixed >= 0) {
		return (uint64_t)fixed;
	}
	if (x->avg_gap >= SPIN_MAX_NS / 2) {
		return 0;
	}
	return 2 * x->avg_gap + 500 < SPIN_MAX_NS ? 2 * x->avg_gap + 500
	                                          : SPIN_MAX_NS;
}

// spin_for_kick returns true once *kicks moved from k, false after ns.
static bool
spin_for_kick(atomic_uint *kicks, unsigned k, uint64_t ns)
{
	uint64_t end = 0;
	for (unsigned i = 1;; i++) {
		if (atomic_load_explicit(kicks, memory_order_acquire) != k) {
			return true;
		}
		if ((i & 63) == 0) {
			uint64_t now = mono_ns();
			if (end == 0) {
				end = now + ns;
			} else if (now >= end) {
				return false;
			}
		}
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
}

// work_taken ends x's idle gap (x's owner took a batch) and updates the
// average.
static void
work_taken(struct iside *x)
{
	if (x->idle_since == 0) {
		return;
	}
	uint64_t gap = mono_ns() - x->idle_since;
	if (gap > GAP_CLAMP) {
		gap = GAP_CLAMP;
	}
	x->avg_gap = x->avg_gap - x->avg_gap / 8 + gap / 8;
	x->idle_since = 0;
}

void
aai_inproc_spin_config(int max_spinners, int spin_ns)
{
	if (max_spinners < 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		max_spinners = cpus > 1 ? (int)(cpus - 1) : 0;
	}
	atomic_store(&spin_limit, max_spinners);
	atomic_store(&spin_fixed_ns, spin_ns < 0 ? -1 : spin_ns);
}

void
aai_inproc_stats(aai_inproc_stat *st)
{
	st->spinners = atomic_load(&spinners);
	st->spins = atomic_load(&n_spins);
	st->spin_hits = atomic_load(&n_spin_hits);
	st->spin_refused = atomic_load(&n_spin_refused);
	st->handovers = atomic_load(&n_handovers);
	st->sleeps = atomic_load(&n_sleeps);
}

// ---- connection ----

// The batch this thread delivers (see "Sends from a batch are corked").
static _Thread_local const struct iside *tl_batch;

// paused_by_peer: x's batch waits because x's end has sent more than its
// send_pause that the other side (still open) has not taken (pipe->mtx).
static bool
paused_by_peer(const struct iside *x, const struct iside *other)
{
	size_t pause = x->conn->base.send_pause;
	return pause != 0 && other->in.len > pause && !other->closed;
}

// can_take says whether x's batch may be taken now (pipe->mtx).
static bool
can_take(const struct iside *x, const struct iside *other)
{
	return x->in.len > 0 && x->owner != OWNER_NONE && !x->busy &&
	       !x->closed && !paused_by_peer(x, other);
}

// can_hand_over says whether the owner of me may take the peer's batch:
// it may be taken and the peer's owner sleeps, or delivers our batch. An
// owner that is awake takes its own (both ends then run in parallel).
static bool
can_hand_over(const struct iside *peer, const struct iside *me)
{
	if (atomic_load_explicit(&handover_off, memory_order_relaxed)) {
		return false;
	}
	return can_take(peer, me) &&
	       (peer->owner == OWNER_ASLEEP || peer->owner == OWNER_AWAY);
}

// must_end says whether me's owner leaves its loop (once the token is
// free): its end is closed, or the peer's is and everything it sent was
// taken (pipe->mtx).
static bool
must_end(const struct iside *me, const struct iside *peer)
{
	return me->closed || (peer->closed && me->in.len == 0);
}

// mark_away marks c as in its receive path on this thread, so that a free
// of c from the peer's callbacks that this thread delivers is deferred as
// from c's own. Returns false (no mark) if another thread is in c's
// receive path: the peer's owner, delivering c's batch meanwhile.
static bool
mark_away(aai_conn *c)
{
	aai_mtx_lock(&c->mtx);
	bool mark = !c->in_rx;
	if (mark) {
		c->in_rx = true;
		c->rx_thread = pthread_self();
	}
	aai_mtx_unlock(&c->mtx);
	return mark;
}

// unmark_away undoes mark_away, unless another thread entered c's receive
// path since (it clears the mark itself when it leaves).
static void
unmark_away(aai_conn *c)
{
	aai_mtx_lock(&c->mtx);
	if (c->in_rx && pthread_equal(c->rx_thread, pthread_self())) {
		c->in_rx = false;
	}
	aai_mtx_unlock(&c->mtx);
}

// deliver takes x's batch and delivers it on this thread, the owner of
// me (x is me or the peer). Called with p->mtx held, returns with it held.
static void
deliver(ipipe *p, struct iside *me, struct iside *x)
{
	struct iside *other = x == &p->side[0] ? &p->side[1] : &p->side[0];
	iconn *xc = x->conn;
	bool away = x != me;
	bool marked = false;

	x->busy = true; // the token: x's callbacks run only here
	aai_tbuf t = xc->work;
	xc->work = x->in;
	x->in = t;
	if (other->paused && other->owner == OWNER_ASLEEP) {
		aai_cv_signal(&other->cv); // we took what it sent
	}
	if (away) {
		me->owner = OWNER_AWAY;
	}
	aai_mtx_unlock(&p->mtx);

	if (away) {
		atomic_fetch_add_explicit(&n_handovers, 1,
		                          memory_order_relaxed);
		marked = mark_away(&me->conn->base);
	}
	size_t used, need;
	tl_batch = x;
	int rv =
	    aai_conn_rx(&xc->base, xc->work.p, xc->work.len, &used, &need);
	tl_batch = NULL;
	xc->work.len = 0; // inproc queues hold whole frames only
	if (rv != 0) {
		aai_conn_fail(&xc->base, rv); // x's owner ends with it
	}
	if (marked) {
		unmark_away(&me->conn->base);
	}

	aai_mtx_lock(&p->mtx);
	me->owner = OWNER_AWAKE;
	x->busy = false; // from here on, x's end may be freed
	if (away && x->owner == OWNER_ASLEEP &&
	    (must_end(x, other) || x->in.len > 0)) {
		// Its owner waits for the token to end, or slept through
		// frames that came meanwhile (we may be about to end).
		aai_cv_signal(&x->cv);
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

	aai_mtx_lock(&p->mtx);
	for (;;) {
		if (must_end(me, peer)) {
			if (!me->busy) {
				me->owner = OWNER_NONE; // no hand-over now
				break;
			}
			// The peer's thread delivers our batch: wait for it.
			me->owner = OWNER_ASLEEP;
			aai_cv_wait(&me->cv, &p->mtx);
			me->owner = OWNER_AWAKE;
			continue;
		}
		if (can_take(me, peer)) {
			work_taken(me);
			deliver(p, me, me);
			continue;
		}
		if (can_hand_over(peer, me)) {
			work_taken(me);
			deliver(p, me, peer);
			continue;
		}
		// Idle. Frames our batch sent that we cannot take: wake the
		// peer's owner (e.g. its side is paused).
		if (peer->in.len > 0 && !peer->busy &&
		    peer->owner == OWNER_ASLEEP) {
			aai_cv_signal(&peer->cv);
		}
		if (me->idle_since == 0) {
			me->idle_since = mono_ns();
		}
		// While the peer's batch is being delivered, sleep: its
		// thread hands our batch (its replies) over at the end, on
		// the same thread; spinning would make a second thread take
		// it (a hop between CPUs, and two threads busy for one call).
		uint64_t budget = peer->busy ? 0 : spin_budget(me);
		bool spun = false;
		if (budget > 0) {
			if (spin_slot_take()) {
				unsigned k = atomic_load(&me->kicks);
				aai_mtx_unlock(&p->mtx);
				atomic_fetch_add_explicit(
				    &n_spins, 1, memory_order_relaxed);
				AAI_CHECKPOINT("inproc.spin", c);
				if (spin_for_kick(&me->kicks, k, budget)) {
					atomic_fetch_add_explicit(
					    &n_spin_hits, 1,
					    memory_order_relaxed);
				}
				atomic_fetch_sub(&spinners, 1);
				spun = true;
			} else {
				atomic_fetch_add_explicit(
				    &n_spin_refused, 1, memory_order_relaxed);
			}
		}
		if (!spun) {
			aai_mtx_unlock(&p->mtx);
		}
		AAI_CHECKPOINT("inproc.before_sleep", c);
		aai_mtx_lock(&p->mtx);
		if (must_end(me, peer) || can_take(me, peer) ||
		    can_hand_over(peer, me)) {
			continue;
		}
		// Nothing to take, or the peer does not take what we sent:
		// sleep (a send, a close or the peer taking its queue wakes
		// us). Deciding and sleeping is one locked step.
		me->paused = paused_by_peer(me, peer);
		atomic_store(&c->rx_paused, me->paused);
		me->owner = OWNER_ASLEEP;
		atomic_fetch_add_explicit(&n_sleeps, 1, memory_order_relaxed);
		aai_cv_wait(&me->cv, &p->mtx);
		me->owner = OWNER_AWAKE;
		me->paused = false;
		atomic_store(&c->rx_paused, false);
	}
	aai_mtx_unlock(&p->mtx);
	aai_conn_fail(c, AA_ECONNLOST); // also wakes the peer
	if (aai_conn_rx_end(c, AA_ECONNLOST)) {
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
	ic->p->side[ic->s].owner = ok ? OWNER_AWAKE : OWNER_NONE;
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

// pipe_append adds a to the peer's inbound queue and wakes the thread that
// should take it, unless the frame comes from a batch of ours being
// delivered on this thread (corked: that thread settles it at the batch's
// end).
static int
pipe_append(iconn *ic, const append *a)
{
	ipipe *p = ic->p;
	struct iside *me = &p->side[ic->s];
	struct iside *peer = &p->side[1 - ic->s];
	int rv;

	aai_mtx_lock(&p->mtx);
	if (me->closed || peer->closed) {
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
	if (rv == 0 && tl_batch != me && !peer->busy) {
		if (peer->owner == OWNER_ASLEEP) {
			aai_cv_signal(&peer->cv);
		} else if (peer->owner == OWNER_AWAY) {
			// Its owner delivers our batch: ours may take it.
			atomic_fetch_add_explicit(&me->kicks, 1,
			                          memory_order_release);
			if (me->owner == OWNER_ASLEEP) {
				aai_cv_signal(&me->cv);
			}
		}
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

void
aai_inproc_pipe_release(ipipe *p)
{
	aai_mtx_lock(&p->mtx);
	bool last = --p->refs == 0;
	aai_mtx_unlock(&p->mtx);
	if (last) {
		// A kill walking the list holds aai_inproc_registry_mtx: after
		// this, nobody reaches p.
		aai_mtx_lock(&aai_inproc_registry_mtx);
		aai_inproc_pipe_unlink(p);
		aai_mtx_unlock(&aai_inproc_registry_mtx);
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
	aai_conn_stop_timers(c);
	aai_conn_quiesce(c); // a close on another thread may still use p
	aai_mtx_lock(&ic->p->mtx);
	ic->p->side[ic->s].conn = NULL; // OWNER_NONE: nobody reads it
	aai_mtx_unlock(&ic->p->mtx);
	aai_inproc_pipe_release(ic->p);
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

iconn *
aai_inproc_conn_alloc(ipipe *p, int s, const aai_tp_opts *o)
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
	p->side[s].conn = ic;
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

// ---- test hooks (inproc_hooks.h) ----

void
aai_inproc_set_handover(bool on)
{
	atomic_store(&handover_off, !on);
}
