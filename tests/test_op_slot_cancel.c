// aa-test-labels: concurrent
//
// test_op_slot_cancel.c: a cooperative op cancelled through its parent's
// slot, whose provider finishes it inside the cancel function, while the
// slot's reference is the only one left. The cancel must not touch the
// op after the provider's finish dropped that reference (found by the
// samples' cancel-all under AddressSanitizer).
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
