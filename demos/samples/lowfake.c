// lowfake.c: the low-level sample with fake cancel (c-util's "fake
// cancel", the shape of the Async-Async client op).
//
// Design notes.
//
// States of a call: QUEUED (its work item waits for a pool thread) ->
// RUNNING (the blocking call runs) -> ENDED (the item's done callback has
// cleaned up). The op itself uses the immediate policy: a cancel makes it
// CANCELED at once, whatever the call's state, and the handler runs
// inside the cancel (or is posted to the caller's executor).
//
// Memory: everything a call needs (tracker node, work item, input copy)
// lives in the op's extra memory, so it lives as long as the op; the
// module's provider reference is the tracker's, dropped in the done
// callback, the last thing that touches the call.
//
// Races, and who wins.
// * cancel vs the blocking call's completion: the op's lock. The first
//   to reach it wins; if cancel won, aa_op_complete is absorbed
//   (AA_EALREADY) and its result becomes the settlement (completed
//   anyway).
// * cancel vs the call starting: the work function reads the op's state
//   first; a cancel before that skips the blocking call (settlement
//   never_started). A cancel just after it is the race above.
// * destroy vs everything: the tracker closes (new calls fail with
//   AA_ECLOSED), cancels every pending op, and waits until every done
//   callback has run.
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lowfake.h"

struct lowfake {
	smp_module base; // first
	aa_executor *pool;
	lowfake_blocking_fn fn;
	void *ctx;
};

typedef struct call {
	smp_node node; // first: the tracker's
	lowfake *m;
	aa_op *op;
	aa_work work;
	size_t len;
	unsigned char in[];
} call;

int
lowfake_alloc(lowfake **mp, aa_executor *pool, lowfake_blocking_fn fn,
              void *ctx)
{
	lowfake *m;
	int rv;
	if (mp == NULL || pool == NULL || fn == NULL) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), false)) != 0) {
		return rv;
	}
	m->pool = pool;
	m->fn = fn;
	m->ctx = ctx;
	*mp = m;
	return 0;
}

void
lowfake_free(lowfake *m)
{
	smp_module_free(m, AA_CANCEL_TERMINAL);
}

static void
call_run(void *arg)
{
	call *c = arg;
	void *out = NULL;
	size_t outlen = 0;
	int rv;
	if (aa_op_status(c->op) != AA_STARTED) {
		(void)aa_op_settle(c->op, AA_SETTLE_NEVER_STARTED);
		return;
	}
	rv = c->m->fn(c->m->ctx, c->in, c->len, &out, &outlen);
	if (rv == 0) {
		(void)aa_op_complete(c->op, out, outlen, free);
	} else {
		free(out);
		(void)aa_op_fail(c->op, rv, "the blocking call failed");
	}
}

static void
call_done(void *arg, int rv)
{
	call *c = arg;
	if (rv != 0) {
		(void)aa_op_fail(c->op, rv, "the pool closed");
	}
	smp_tracker_remove(&c->m->base.tracker, &c->node);
}

int
lowfake_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
             aa_op_cb cb, void *arg, aa_op **opp)
{
	lowfake *m = handle;
	aa_op_provider prov = {
	    .policy = AA_POLICY_IMMEDIATE,
	    .cancel_types = AA_CANCEL_TERMINAL,
	};
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
	aa_work_init(&c->work, call_run, call_done, c);
	if ((rv = smp_track(op, &m->base.tracker, &c->node)) != 0) {
		return rv;
	}
	if ((rv = aa_work_submit(&c->work, m->pool)) != 0) {
		return smp_untrack_abandon(op, &m->base.tracker, &c->node,
		                           NULL, rv);
	}
	smp_hand_over(op, cb, arg, opp);
	return 0;
}
