// lowaio.c: the low-level sample with real cancel on an nng aio (c-util's
// "real cancel", with nng's own asynchronous I/O as the work): the op
// uses the cooperative policy, and its cancel function aborts the aio
// with nng_aio_cancel.
//
// Design notes.
//
// The work is nng_sleep_aio on the call's own nng_aio. nng runs the aio's
// callback exactly once, with the aio's result: 0 when the sleep expired,
// NNG_ECANCELED when nng_aio_cancel aborted it first. nng decides that
// race under its own lock, so the callback is the one place that ends the
// call: COMPLETED with the input (the work won), or CANCELED (the cancel
// won). A cancel that comes after the sleep expired changes nothing.
// Cancel is asynchronous, as nng's is: cancel returns, then the callback
// ends the op on nng's callback thread (the handler runs there, or on
// the caller's executor).
//
// States of a call (`phase`, under the call's spin lock `busy`):
// NEW (the op exists, the sleep is not started) -> RUNNING (the starter
// started it) -> ENDED (the callback ran). A cancel that finds NEW only
// records the request (a parent's slot can cancel the op inside
// aa_op_alloc, before there is anything to abort); the starter reads it
// after starting the sleep and aborts the aio itself. A cancel that finds
// RUNNING aborts the aio; one that finds ENDED does nothing.
//
// Who frees the aio: the cancel function can run at any time until the op
// is freed, even after the callback ended the call, and the starter
// touches the aio after starting it, while the callback may already have
// run (a zero delay). So the aio is freed by whichever of the callback,
// the starter and the cancellers that use it is last out (`users` counts
// the starter and the cancellers inside nng_aio_cancel). The free is
// nng_aio_reap: it never waits, also from inside the aio's own callback.
//
// Memory: the call lives in the op's extra memory; the tracker's
// reference keeps the op until the callback removed it, the caller's
// reference during the start, and aa_op_cancel's own reference during a
// cancel.
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <nng/nng.h>

#include "lowaio.h"

enum { PHASE_NEW = 0, PHASE_RUNNING, PHASE_ENDED };

struct lowaio {
	smp_module base; // first
	nng_duration delay_ms;
};

typedef struct call {
	smp_node node; // first: the tracker's
	lowaio *m;
	aa_op *op;
	nng_aio *aio;
	atomic_flag busy; // guards the four below
	int phase;
	int users; // the starter, and cancellers inside nng_aio_cancel
	bool cancel_req;
	size_t len;
	unsigned char in[];
} call;

int
lowaio_alloc(lowaio **mp, uint64_t delay_ms)
{
	lowaio *m;
	int rv;
	if (mp == NULL || delay_ms > INT32_MAX) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), false)) != 0) {
		return rv;
	}
	m->delay_ms = (nng_duration)delay_ms;
	*mp = m;
	return 0;
}

void
lowaio_free(lowaio *m)
{
	smp_module_free(m, AA_CANCEL_TOTAL);
}

// call_leave drops one user of the aio; the last one out after the
// callback ended the call frees it.
static void
call_leave(call *c)
{
	bool last;
	smp_spin_lock(&c->busy);
	last = --c->users == 0 && c->phase == PHASE_ENDED;
	smp_spin_unlock(&c->busy);
	if (last) {
		nng_aio_reap(c->aio);
	}
}

// call_done is the aio's callback: it ends the call, exactly once.
static void
call_done(void *arg)
{
	call *c = arg;
	int rv = nng_aio_result(c->aio);
	bool last;
	if (rv == 0) {
		// The input lives in the op's extra memory as long as the op.
		(void)aa_op_complete(c->op, c->in, c->len, NULL);
	} else if (rv == NNG_ECANCELED) {
		(void)aa_op_canceled(c->op);
	} else {
		(void)aa_op_fail(c->op, AA_ESYSTEM, nng_strerror(rv));
	}
	smp_spin_lock(&c->busy);
	c->phase = PHASE_ENDED;
	last = c->users == 0;
	smp_spin_unlock(&c->busy);
	if (last) {
		nng_aio_reap(c->aio); // safe inside the aio's own callback
	}
	// Last: it drops the tracker's reference, which may free c.
	smp_tracker_remove(&c->m->base.tracker, &c->node);
}

static int
call_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	call *c = aa_op_extra(op);
	bool abort_now;
	(void)type; // a cancelled sleep has no side effect: any type
	(void)arg;
	smp_spin_lock(&c->busy);
	c->cancel_req = true;
	abort_now = c->phase == PHASE_RUNNING;
	if (abort_now) {
		c->users++;
	}
	smp_spin_unlock(&c->busy);
	if (abort_now) {
		nng_aio_cancel(c->aio); // nothing if the sleep expired
		call_leave(c);
	}
	return 0;
}

int
lowaio_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
            aa_op_cb cb, void *arg, aa_op **opp)
{
	lowaio *m = handle;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = call_cancel,
	    .cancel_types = AA_CANCEL_ALL,
	};
	bool cancelled;
	nng_aio *aio;
	aa_op *op;
	call *c;
	int rv;
	if (smp_bad_call(m, in, len, cb, opp)) {
		return AA_EINVAL;
	}
	if ((rv = smp_start_with_input(&op, &prov, assoc, offsetof(call, in),
	                               in, len)) != 0) {
		return rv;
	}
	c = aa_op_extra(op);
	c->m = m;
	c->op = op;
	c->len = len;
	c->users = 1; // the starter, until the sleep is started
	if (nng_aio_alloc(&c->aio, call_done, c) != 0) {
		return smp_abandon(op, AA_ENOMEM);
	}
	aio = c->aio;
	if ((rv = smp_track(op, &m->base.tracker, &c->node)) != 0) {
		nng_aio_free(aio); // never started: no callback to wait for
		return rv;         // (the op, and c with it, is gone)
	}
	nng_sleep_aio(m->delay_ms, c->aio);
	smp_spin_lock(&c->busy);
	if (c->phase == PHASE_NEW) {
		c->phase = PHASE_RUNNING;
	}
	cancelled = c->cancel_req;
	smp_spin_unlock(&c->busy);
	if (cancelled) {
		// A cancel came before the sleep started and found nothing
		// to abort: abort it now (nothing if it already expired).
		nng_aio_cancel(c->aio);
	}
	call_leave(c);
	smp_hand_over(op, cb, arg, opp);
	return 0;
}
