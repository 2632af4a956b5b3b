// passthru.c: the middle-level pass-through sample (c-util's pass-through
// module; Asio's composed operation with one child).
//
// Design notes.
//
// A call owns two ops: its own (cooperative policy, handed to the caller)
// and the lower one (the child). States: STARTING (the child call runs)
// -> WAITING (the child is pending) -> ENDED (the child's handler
// finished our op like the child and released the call). The call lives
// in its op's extra memory; its link (sample.c) carries cancellation down
// through its own signal, whose slot the child connects to.
//
// Races, and who wins.
// * cancel vs the child finishing: the child's lock decides (the child's
//   own race); our op then ends exactly as the child did, CANCELED or
//   COMPLETED ("the provider won").
// * cancel vs the child connecting: the link records the request and
//   emits it again once the child call returned (smp_link_started).
// * cancel before the child call (our op cancelled by the caller's slot
//   inside aa_op_alloc): recorded; the call still starts the child, whose
//   slot then gets the cancel at once, so the ending has one path.
// * the child's handler may run before the child call returns (a child
//   that finishes at once): it does not touch anything the starter still
//   writes; the starter keeps its own reference on our op.
#include <stdlib.h>

#include "passthru.h"

struct passthru {
	smp_module base; // first
	smp_layer lower;
};

typedef struct call {
	smp_node node; // first: the tracker's
	passthru *m;
	smp_link link;
} call;

int
passthru_alloc(passthru **mp, smp_layer lower)
{
	passthru *m;
	int rv;
	if (mp == NULL || lower.call == NULL) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), false)) != 0) {
		return rv;
	}
	m->lower = lower;
	*mp = m;
	return 0;
}

void
passthru_free(passthru *m)
{
	smp_module_free(m, AA_CANCEL_TERMINAL);
}

int
passthru_cancel_all(passthru *m, aa_cancel_type type)
{
	return smp_tracker_cancel_all(&m->base.tracker, type);
}

static int
call_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	(void)arg;
	smp_link_cancel(op, &((call *)aa_op_extra(op))->link, type);
	return 0;
}

static void
child_done(aa_op *child, void *arg)
{
	aa_op *op = arg;
	call *c = aa_op_extra(op);
	smp_finish_like(op, child);
	aa_op_unref(child);
	smp_link_close(&c->link);
	smp_tracker_remove(&c->m->base.tracker, &c->node);
}

int
passthru_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
              aa_op_cb cb, void *arg, aa_op **opp)
{
	passthru *m = handle;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = call_cancel,
	    .cancel_types = AA_CANCEL_ALL, // the child refuses what it must
	    .extra = sizeof(call),
	};
	aa_assoc child_assoc;
	aa_op *op;
	aa_op *child;
	call *c;
	int rv;
	if (smp_bad_call(m, in, len, cb, opp)) {
		return AA_EINVAL;
	}
	if ((rv = smp_start_op(&op, &prov, assoc)) != 0) {
		return rv;
	}
	c = aa_op_extra(op);
	c->m = m;
	if ((rv = smp_track_composed(op, &m->base.tracker, &c->node,
	                             &c->link)) != 0) {
		return rv;
	}
	smp_link_child_assoc(&c->link, aa_op_assoc(op), &child_assoc);
	rv = m->lower.call(m->lower.handle, in, len, &child_assoc, child_done,
	                   op, &child);
	if (rv != 0) {
		return smp_untrack_abandon(op, &m->base.tracker, &c->node,
		                           &c->link, rv);
	}
	smp_link_started(&c->link);
	smp_hand_over(op, cb, arg, opp);
	return 0;
}
