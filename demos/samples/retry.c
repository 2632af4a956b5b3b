// retry.c: the middle-level sample with retries (c-util's retry module).
//
// Design notes.
//
// States of a call: ATTEMPT (a child op of the lower layer is pending)
// -> on failure, WAIT (the backoff timer is armed) -> ATTEMPT again, or
// ENDED. Our op uses the cooperative policy; its cancel function records
// the request in the call's link (which passes it to the pending child
// through the child's slot) and then tries to disarm the backoff timer.
// The call lives in its op's extra memory.
//
// Who ends the call (finishes our op and releases the call), exactly
// once:
// * the child's handler, when the child completed or was cancelled, or
//   failed with no attempt left, or failed after a cancel was requested
//   (a call the lower layer refused counts as a failed attempt);
// * the disarmer of the backoff timer (aa_timer_cancel returned 0: only
//   one caller ever gets that, and never once the timer fired): a cancel,
//   or the child's handler itself when it sees a cancel that came while
//   it armed the timer;
// * the timer function, when it fired after a cancel was requested.
//
// Cancellation types: a TERMINAL (or TOTAL) request goes down to the
// attempt in flight; a PARTIAL one stops the retries and a pending wait
// but lets the attempt in flight finish: its success ends the call
// COMPLETED, its failure CANCELED (no retry).
//
// Races, and who wins.
// * cancel vs an attempt finishing: the child's lock (its own race); a
//   failure that loses to nothing while a cancel is recorded ends the
//   call CANCELED: no retry after cancel.
// * cancel vs arming the wait: the handler arms, then re-reads the
//   request; the cancel records, then disarms. Whichever disarms first
//   ends the call; if neither did before the timer fired, the timer
//   function sees the request and ends it. No attempt starts.
// * cancel vs the timer starting the next attempt: the timer function
//   reads the request before the attempt; a request after that reaches
//   the new child through the slot, or through smp_link_started when the
//   child was still connecting.
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "retry.h"

struct retry {
	smp_module base; // first
	smp_layer lower;
	retry_policy policy;
};

typedef struct call {
	smp_node node; // first: the tracker's
	retry *m;
	aa_op *op;
	smp_link link;
	aa_timer backoff;
	atomic_bool bound;       // backoff was started once (has its queue)
	atomic_bool cancel_seen; // with bound: the store-load pair below
	atomic_int attempts;
	atomic_bool ended; // a broken "exactly once" aborts
	size_t len;
	unsigned char in[];
} call;

int
retry_alloc(retry **mp, smp_layer lower, retry_policy policy)
{
	retry *m;
	int rv;
	if (mp == NULL || lower.call == NULL || policy.max_attempts < 1) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), true)) != 0) {
		return rv;
	}
	m->lower = lower;
	m->policy = policy;
	*mp = m;
	return 0;
}

void
retry_free(retry *m)
{
	smp_module_free(m, AA_CANCEL_TERMINAL);
}

int
retry_attempts(aa_op *op)
{
	return atomic_load(&((call *)aa_op_extra(op))->attempts);
}

// call_end releases the call after its op was finished.
static void
call_end(call *c)
{
	if (atomic_exchange(&c->ended, true)) {
		abort(); // two paths ended the call: a bug in this file
	}
	smp_link_close(&c->link);
	smp_tracker_remove(&c->m->base.tracker, &c->node);
}

static void
end_canceled(call *c)
{
	(void)aa_op_canceled(c->op);
	call_end(c);
}

static void attempt(call *c);

static void
backoff_fired(void *arg)
{
	attempt(arg);
}

// wait_or_end decides after a failed attempt (its error err, msg): end
// the call CANCELED after a cancel, in ERROR when no attempt is left,
// else wait for the backoff.
static void
wait_or_end(call *c, int err, const char *msg)
{
	int n = atomic_load(&c->attempts);
	uint64_t wait;
	if (smp_link_cancelled(&c->link, NULL)) {
		end_canceled(c); // no retry after cancel
		return;
	}
	if (n >= c->m->policy.max_attempts) {
		(void)aa_op_fail(c->op, err, msg);
		call_end(c);
		return;
	}
	wait = c->m->policy.backoff_ms << (n - 1 < 16 ? n - 1 : 16);
	if (aa_timer_start(&c->backoff, c->m->base.timers, wait) != 0) {
		(void)aa_op_fail(c->op, AA_ECLOSED, "the module is closing");
		call_end(c);
		return;
	}
	// Store `bound`, then load `cancel_seen`; the cancel function
	// stores cancel_seen, then loads bound (both sequentially
	// consistent): at least one of us sees the other and disarms.
	atomic_store(&c->bound, true);
	if (atomic_load(&c->cancel_seen) &&
	    aa_timer_cancel(&c->backoff) == 0) {
		end_canceled(c);
	}
}

static void
child_done(aa_op *child, void *arg)
{
	call *c = arg;
	aa_op *op = c->op;
	// Once the wait is armed, a cancel on another thread may end the
	// call and drop the module's reference: hold the op meanwhile.
	aa_op_ref(op);
	if (aa_op_status(child) == AA_ERROR) {
		wait_or_end(c, aa_op_error(child), aa_op_error_msg(child));
	} else {
		smp_finish_like(op, child);
		call_end(c);
	}
	aa_op_unref(child);
	aa_op_unref(op);
}

static void
attempt(call *c)
{
	aa_assoc child_assoc;
	aa_op *child;
	int rv;
	if (smp_link_cancelled(&c->link, NULL)) {
		end_canceled(c); // no attempt starts after a cancel
		return;
	}
	atomic_fetch_add(&c->attempts, 1);
	smp_link_child_assoc(&c->link, aa_op_assoc(c->op), &child_assoc);
	// The attempt may end at once, and the call with it: hold the op.
	aa_op_ref(c->op);
	rv = c->m->lower.call(c->m->lower.handle, c->in, c->len, &child_assoc,
	                      child_done, c, &child);
	if (rv != 0) {
		// A refused attempt (e.g. a remote peer that cannot be
		// reached yet) counts as a failed one.
		wait_or_end(c, rv, "the lower layer refused the call");
	} else {
		smp_link_started(&c->link);
	}
	aa_op_unref(c->op);
}

static int
call_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	call *c = aa_op_extra(op);
	int attempts;
	(void)arg;
	aa_op_ref(op); // see smp_link_cancel
	if (type == AA_CANCEL_PARTIAL) {
		// Partial: no retry and no further wait, but the attempt in
		// flight finishes and its outcome is reported (a success is a
		// side effect the caller must know of).
		smp_link_stop(&c->link, type);
	} else {
		smp_link_cancel(op, &c->link, type);
	}
	atomic_store(&c->cancel_seen, true);
	// Only when the call waits for its backoff (the timer is armed)
	// does this disarm it; otherwise the pending child's handler, or
	// the timer function, sees the request. A timer never started has
	// no queue yet (and may still be zeroed memory): leave it alone.
	if (atomic_load(&c->bound) && aa_timer_cancel(&c->backoff) == 0) {
		end_canceled(c);
	}
	attempts = atomic_load(&c->attempts);
	aa_op_unref(op);
	return attempts;
}

int
retry_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
           aa_op_cb cb, void *arg, aa_op **opp)
{
	retry *m = handle;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = call_cancel,
	    .cancel_types = AA_CANCEL_ALL, // the child refuses what it must
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
	c->op = op;
	c->len = len;
	aa_timer_init(&c->backoff, backoff_fired, c);
	if ((rv = smp_track_composed(op, &m->base.tracker, &c->node,
	                             &c->link)) != 0) {
		return rv;
	}
	c->m = m;
	attempt(c);
	smp_hand_over(op, cb, arg, opp);
	return 0;
}
