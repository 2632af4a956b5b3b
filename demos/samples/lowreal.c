// lowreal.c: the low-level sample with real cancel (c-util's "real
// cancel"): the op uses the cooperative policy, and its cancel function
// disarms the timer that would complete it.
//
// Design notes.
//
// States of a call (`phase`, atomic): NEW (the op exists, its timer is
// not armed yet) -> ARMED; or NEW -> CANCEL_EARLY when a cancel came
// first (a parent's slot can cancel the op inside aa_op_alloc). The call
// ends exactly once, by whoever disarms or fires the timer:
// * the timer function (it fired): completes the op with the input;
// * a cancel whose aa_timer_cancel returned 0 (it disarmed the timer):
//   finishes the op CANCELED.
// aa_timer_cancel returns 0 to at most one caller, and never once the
// function has started (it then waits for the function), so the two are
// exclusive; this is the race of cancel vs completion and the timer
// queue's lock decides it.
//
// Cancel vs arming: the starter arms the timer, then moves NEW -> ARMED
// with a compare-and-swap. If a cancel moved NEW -> CANCEL_EARLY first,
// the starter disarms the timer itself (and ends the call, unless the
// timer already fired). A cancel that finds ARMED disarms the timer.
// Either way no cancel is lost and the call ends once.
//
// Memory: the call lives in the op's extra memory; the tracker's
// reference keeps the op until the call ended.
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lowreal.h"

enum { PHASE_NEW = 0, PHASE_ARMED, PHASE_CANCEL_EARLY };

struct lowreal {
	smp_module base; // first
	uint64_t delay_ms;
};

typedef struct call {
	smp_node node; // first: the tracker's
	lowreal *m;
	aa_op *op;
	aa_timer timer;
	atomic_int phase;
	size_t len;
	unsigned char in[];
} call;

int
lowreal_alloc(lowreal **mp, uint64_t delay_ms)
{
	lowreal *m;
	int rv;
	if (mp == NULL) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), true)) != 0) {
		return rv;
	}
	m->delay_ms = delay_ms;
	*mp = m;
	return 0;
}

void
lowreal_free(lowreal *m)
{
	smp_module_free(m, AA_CANCEL_TOTAL);
}

static void
call_end(call *c)
{
	smp_tracker_remove(&c->m->base.tracker, &c->node);
}

static void
call_fired(void *arg)
{
	call *c = arg;
	// The input lives in the op's extra memory as long as the op.
	(void)aa_op_complete(c->op, c->in, c->len, NULL);
	call_end(c);
}

// call_disarm ends the call CANCELED if it disarms the timer first.
static void
call_disarm(call *c)
{
	if (aa_timer_cancel(&c->timer) == 0) {
		(void)aa_op_canceled(c->op);
		call_end(c);
	}
}

static int
call_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	call *c = aa_op_extra(op);
	int expect = PHASE_NEW;
	(void)type; // a disarmed timer has no side effect: any type
	(void)arg;
	if (atomic_compare_exchange_strong(&c->phase, &expect,
	                                   PHASE_CANCEL_EARLY)) {
		return 0; // the starter sees it and disarms
	}
	call_disarm(c);
	return 0;
}

int
lowreal_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
             aa_op_cb cb, void *arg, aa_op **opp)
{
	lowreal *m = handle;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = call_cancel,
	    .cancel_types = AA_CANCEL_ALL,
	};
	int expect = PHASE_NEW;
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
	if ((rv = smp_track(op, &m->base.tracker, &c->node)) != 0) {
		return rv;
	}
	aa_timer_init(&c->timer, call_fired, c);
	if ((rv = aa_timer_start(&c->timer, m->base.timers, m->delay_ms)) !=
	    0) {
		return smp_untrack_abandon(op, &m->base.tracker, &c->node,
		                           NULL, rv);
	}
	if (!atomic_compare_exchange_strong(&c->phase, &expect, PHASE_ARMED)) {
		call_disarm(c); // a cancel came before the timer was armed
	}
	smp_hand_over(op, cb, arg, opp);
	return 0;
}
