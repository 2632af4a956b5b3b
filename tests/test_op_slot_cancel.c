// aa-test-labels: concurrent
//
// test_op_slot_cancel.c: a cooperative op cancelled through its parent's
// slot, whose provider finishes it inside the cancel function, while the
// slot's reference is the only one left. The cancel must not touch the
// op after the provider's finish dropped that reference (found by the
// samples' cancel-all under AddressSanitizer).
#include <string.h>

#include "testutil.h"

TestSuite(op_slot_cancel, .timeout = 30, .fini = aa_test_check_live);

static int
finish_inside(aa_op *op, aa_cancel_type type, void *arg)
{
	(void)type;
	(void)arg;
	cr_assert_eq(aa_op_canceled(op), 0);
	return 7;
}

static void
count_cb(aa_op *op, void *arg)
{
	(void)op;
	atomic_fetch_add((atomic_int *)arg, 1);
}

Test(op_slot_cancel, provider_finishes_inside_with_only_the_slots_ref)
{
	aa_cancel_signal *sig;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = finish_inside,
	    .cancel_types = AA_CANCEL_ALL,
	};
	aa_assoc assoc = {0};
	atomic_int runs = 0;
	aa_op *op;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	assoc.slot = aa_cancel_signal_slot(sig);
	cr_assert_eq(aa_op_alloc(&op, &prov, &assoc), 0);
	cr_assert_eq(aa_op_set_handler(op, count_cb, &runs), 0);
	aa_op_unref(op); // released, not cancelled: the slot keeps it
	cr_assert_eq(aa_live(AA_LIVE_OP), 1);
	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&runs), 1);
	cr_assert_eq(aa_live(AA_LIVE_OP), 0);
	aa_cancel_signal_free(sig);
}

// A handler set while the finishing thread is still leaving the parent's
// slot must not run before the op has left it: a composed operation's
// handler starts the next child on the same slot (found by the chain
// sample, whose step two got AA_EBUSY). The finisher is held inside the
// slot's disconnect by an emit running on another thread.
typedef struct leaving {
	aa_cancel_slot *slot;
	gate in_cancel;
	gate release_cancel;
	gate finisher_waiting;
	aa_cancel_signal *sig;
	aa_op *op;
	atomic_int runs;
	atomic_bool connected_at_run;
} leaving;

static leaving *the_leaving;

static int
held_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	leaving *l = arg;
	(void)op;
	(void)type;
	gate_open(&l->in_cancel);
	gate_wait(&l->release_cancel);
	return 0; // cooperative: the provider completes it elsewhere
}

static void
at_disconnect_wait(void *arg, const char *name, void *subject)
{
	(void)arg;
	(void)subject;
	if (strcmp(name, "cancel.disconnect_wait") == 0) {
		gate_open(&the_leaving->finisher_waiting); // a gate only
	}
}

static void *
emit_thread(void *arg)
{
	leaving *l = arg;
	cr_assert_eq(aa_cancel_signal_emit(l->sig, AA_CANCEL_TERMINAL), 0);
	return NULL;
}

static void *
complete_thread(void *arg)
{
	leaving *l = arg;
	cr_assert_eq(aa_op_complete(l->op, NULL, 0, NULL), 0);
	return NULL;
}

static void
leaving_cb(aa_op *op, void *arg)
{
	leaving *l = arg;
	(void)op;
	atomic_store(&l->connected_at_run,
	             aa_cancel_slot_is_connected(l->slot));
	atomic_fetch_add(&l->runs, 1);
}

Test(op_slot_cancel, handler_set_while_leaving_the_slot_waits_for_it)
{
	leaving l = {0};
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = held_cancel,
	    .arg = &l,
	    .cancel_types = AA_CANCEL_ALL,
	};
	aa_assoc assoc = {0};
	thr emitter;
	thr finisher;
	gate_init(&l.in_cancel);
	gate_init(&l.release_cancel);
	gate_init(&l.finisher_waiting);
	the_leaving = &l;
	cr_assert_eq(aa_cancel_signal_alloc(&l.sig), 0);
	l.slot = aa_cancel_signal_slot(l.sig);
	assoc.slot = l.slot;
	cr_assert_eq(aa_op_alloc(&l.op, &prov, &assoc), 0);
	// 1. An emit runs the op's cancel, held, on another thread.
	thr_start(&emitter, emit_thread, &l);
	gate_wait(&l.in_cancel);
	// 2. The op completes on a third thread, which then waits in the
	// slot's disconnect for that emit.
	aa_checkpoint_set(at_disconnect_wait, NULL);
	thr_start(&finisher, complete_thread, &l);
	gate_wait(&l.finisher_waiting);
	// 3. The handler set now must wait until the op left the slot.
	cr_assert_eq(aa_op_set_handler(l.op, leaving_cb, &l), 0);
	cr_assert_eq(atomic_load(&l.runs), 0, "ran while still in the slot");
	// 4. Release the emit: the finisher leaves the slot and delivers.
	gate_open(&l.release_cancel);
	thr_join(&emitter);
	thr_join(&finisher);
	aa_checkpoint_set(NULL, NULL);
	cr_assert_eq(atomic_load(&l.runs), 1);
	cr_assert_not(atomic_load(&l.connected_at_run));
	aa_op_unref(l.op);
	aa_cancel_signal_free(l.sig);
	gate_fini(&l.in_cancel);
	gate_fini(&l.release_cancel);
	gate_fini(&l.finisher_waiting);
}
