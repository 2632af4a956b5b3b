// aa-test-labels: concurrent
//
// test_sample_lowreal.c: the low-level sample with real cancel
// (demos/samples/lowreal.c): success, cancel before the timer is armed
// (a parent's slot cancels inside aa_op_alloc, forced with the
// op.slot_connected checkpoint), while it is armed and after it fired,
// 10,000 cancel-vs-fire races on real threads, destroy with calls
// pending.
#include <stdlib.h>

#include "lowreal.h"
#include "sample_util.h"

TestSuite(sample_lowreal, .timeout = 120, .fini = aa_test_check_live);

Test(sample_lowreal, success)
{
	lowreal *m;
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(lowreal_alloc(&m, 0), 0);
	cr_assert_eq(lowreal_call(m, "tick", 4, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	cr_assert_str_eq(s.result, "tick");
	lowreal_free(m);
	tally_fini(&done);
}

Test(sample_lowreal, a_refused_call_never_runs_its_callback)
{
	lowreal *m;
	cr_assert_eq(lowreal_alloc(&m, 0), 0);
	refused_calls((smp_layer){lowreal_call, m});
	lowreal_free(m);
}

Test(sample_lowreal, cancel_while_armed_really_stops_the_timer)
{
	lowreal *m;
	seen s;
	aa_op *op;
	seen_init(&s, NULL);
	cr_assert_eq(lowreal_alloc(&m, 3600 * 1000), 0);
	cr_assert_eq(lowreal_call(m, "t", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), 0);
	// Cooperative, but the provider finished inside its cancel
	// function: the handler ran before cancel returned.
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_EALREADY);
	aa_op_unref(op);
	lowreal_free(m);
}

Test(sample_lowreal, cancel_after_it_fired_does_nothing)
{
	lowreal *m;
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(lowreal_alloc(&m, 0), 0);
	cr_assert_eq(lowreal_call(m, "f", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	aa_op_unref(op);
	lowreal_free(m);
	tally_fini(&done);
}

Test(sample_lowreal, cancel_before_the_timer_is_armed)
{
	lowreal *m;
	aa_cancel_signal *sig;
	aa_assoc assoc = {0};
	seen s;
	aa_op *op;
	seen_init(&s, NULL);
	cr_assert_eq(lowreal_alloc(&m, 3600 * 1000), 0);
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	assoc.slot = aa_cancel_signal_slot(sig);
	cancel_at_slot_connect(sig);
	cr_assert_eq(lowreal_call(m, "e", 1, &assoc, seen_cb, &s, &op), 0);
	cancel_at_slot_connect(NULL);
	// Ended before the call returned, without waiting an hour.
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	lowreal_free(m);
	aa_cancel_signal_free(sig);
}

Test(sample_lowreal, cancel_races_the_timer_10000_times)
{
	lowreal *m;
	unsigned seed = 42;
	int won[2] = {0, 0};
	cr_assert_eq(lowreal_alloc(&m, 0), 0);
	for (int i = 0; i < 10000; i++) {
		seen s;
		aa_op *op;
		seen_init(&s, NULL);
		s.keep = true;
		cr_assert_eq(lowreal_call(m, "r", 1, NULL, seen_cb, &s, &op),
		             0);
		// The timer thread fires it now, as this thread cancels after
		// a varying spin, so that both sides win now and then; each
		// round's outcome is checked whoever wins.
		for (volatile unsigned k = rand_r(&seed) % 20000; k > 0; k--) {
		}
		cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL) == 0 ||
		                 aa_op_status(op) != AA_STARTED,
		             1);
		// Either way the op is final once cancel returned: the
		// cancel disarmed the timer or waited for its function.
		cr_assert_neq(aa_op_status(op), AA_STARTED, "round %d", i);
		(void)round_outcome(&s, "r", i, won);
		aa_op_unref(op);
	}
	test_note("10000 rounds: cancel won %d, the timer won %d", won[0],
	          won[1]);
	lowreal_free(m);
}

Test(sample_lowreal, destroy_with_calls_pending)
{
	lowreal *m;
	seen s[3];
	aa_op *op;
	cr_assert_eq(lowreal_alloc(&m, 3600 * 1000), 0);
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i], NULL);
		cr_assert_eq(
		    lowreal_call(m, "d", 1, NULL, seen_cb, &s[i], &op), 0);
	}
	lowreal_free(m);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].runs), 1);
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
}
