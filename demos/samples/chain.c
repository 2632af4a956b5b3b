// chain.c: the middle-level sample with an async chain (c-util's chain
// module: step two starts from step one's callback).
//
// Design notes.
//
// States of a call (`step`): 1 (step one pending) -> 2 (step two
// pending) -> ENDED. Our op is cooperative; its cancel function records
// the request in the link, which passes it to the pending step through
// the step's slot (both steps connect to the same link, one at a time).
// The call lives in its op's extra memory.
//
// Races, and who wins.
// * cancel vs step one finishing: step one's lock. If step one completed
//   first, its handler reads the recorded request before starting step
//   two: a request recorded before that read stops the chain (CANCELED,
//   step two never starts); one recorded after it reaches step two
//   through its slot, or through smp_link_started if step two was still
//   connecting.
// * cancel vs step two finishing: step two's lock; our op ends as step
//   two did.
// * either step failing or refusing the call ends the chain in ERROR
//   with that step's error.
#include <stdlib.h>

#include "chain.h"

struct chain {
	smp_module base; // first
	smp_layer steps[2];
};

typedef struct call {
	smp_node node; // first: the tracker's
	chain *m;
	aa_op *op;
	smp_link link;
	atomic_int step;
} call;

int
chain_alloc(chain **mp, smp_layer step1, smp_layer step2)
{
	chain *m;
	int rv;
	if (mp == NULL || step1.call == NULL || step2.call == NULL) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), false)) != 0) {
		return rv;
	}
	m->steps[0] = step1;
	m->steps[1] = step2;
	*mp = m;
	return 0;
}

void
chain_free(chain *m)
{
	smp_module_free(m, AA_CANCEL_TERMINAL);
}

static void
call_end(call *c)
{
	smp_link_close(&c->link);
	smp_tracker_remove(&c->m->base.tracker, &c->node);
}

static void step_done(aa_op *child, void *arg);

// start_step starts step n (1 or 2) on in; false when the call ended.
static bool
start_step(call *c, int n, const void *in, size_t len)
{
	aa_assoc a;
	aa_op *child;
	int rv;
	if (smp_link_cancelled(&c->link, NULL)) {
		(void)aa_op_canceled(c->op);
		call_end(c);
		return false;
	}
	atomic_store(&c->step, n);
	smp_link_child_assoc(&c->link, aa_op_assoc(c->op), &a);
	// The step may end at once, and the call with it: hold the op.
	aa_op_ref(c->op);
	rv = c->m->steps[n - 1].call(c->m->steps[n - 1].handle, in, len, &a,
	                             step_done, c, &child);
	if (rv != 0) {
		(void)aa_op_fail(c->op, rv, "a step refused the call");
		call_end(c);
	} else {
		smp_link_started(&c->link);
	}
	aa_op_unref(c->op);
	return rv == 0;
}

static void
step_done(aa_op *child, void *arg)
{
	call *c = arg;
	const void *data;
	size_t len;
	if (atomic_load(&c->step) == 1 &&
	    aa_op_result(child, &data, &len) == 0) {
		// Step two starts from step one's handler, on its result
		// (which lives as long as step one's op: unref after).
		(void)start_step(c, 2, data, len);
		aa_op_unref(child);
		return;
	}
	smp_finish_like(c->op, child);
	aa_op_unref(child);
	call_end(c);
}

static int
call_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	call *c = aa_op_extra(op);
	(void)arg;
	smp_link_cancel(op, &c->link, type);
	return atomic_load(&c->step);
}

int
chain_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
           aa_op_cb cb, void *arg, aa_op **opp)
{
	chain *m = handle;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = call_cancel,
	    .cancel_types = AA_CANCEL_ALL, // each step refuses what it must
	    .extra = sizeof(call),
	};
	aa_op *op;
	call *c;
	int rv;
	if (smp_bad_call(m, in, len, cb, opp)) {
		return AA_EINVAL;
	}
	if ((rv = smp_start_op(&op, &prov, assoc)) != 0) {
		return rv;
	}
	c = aa_op_extra(op);
	c->op = op;
	if ((rv = smp_track_composed(op, &m->base.tracker, &c->node,
	                             &c->link)) != 0) {
		return rv;
	}
	c->m = m;
	(void)start_step(c, 1, in, len);
	smp_hand_over(op, cb, arg, opp);
	return 0;
}
