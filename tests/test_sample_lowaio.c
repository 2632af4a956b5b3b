// aa-test-labels: concurrent
//
// test_sample_lowaio.c: the low-level sample with real cancel on an nng
// aio (demos/samples/lowaio.c): success, cancel before the sleep starts
// (a parent's slot cancels inside aa_op_alloc, forced with the
// op.slot_connected checkpoint), while it sleeps and after it expired,
// 10,000 cancel-vs-expiry races on real threads with each round's
// outcome checked, destroy with calls pending and no callback after it.
#include <stdlib.h>

#include "lowaio.h"
#include "sample_util.h"

#define HOUR_MS (3600 * 1000)

TestSuite(sample_lowaio, .timeout = 120, .fini = aa_test_check_live);

Test(sample_lowaio, success)
{
	lowaio *m;
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(lowaio_alloc(&m, 1), 0);
	cr_assert_eq(lowaio_call(m, "tick", 4, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	cr_assert_str_eq(s.result, "tick");
	lowaio_free(m);
	tally_fini(&done);
}

Test(sample_lowaio, bad_arguments_are_refused_without_a_callback)
{
	lowaio *m;
	seen s;
	aa_op *op = NULL;
	seen_init(&s, NULL);
	cr_assert_eq(lowaio_alloc(&m, (uint64_t)INT32_MAX + 1), AA_EINVAL);
	cr_assert_eq(lowaio_alloc(NULL, 1), AA_EINVAL);
	cr_assert_eq(lowaio_alloc(&m, 1), 0);
	cr_assert_eq(lowaio_call(m, NULL, 3, NULL, seen_cb, &s, &op),
	             AA_EINVAL);
	cr_assert_eq(lowaio_call(m, "x", 1, NULL, NULL, &s, &op), AA_EINVAL);
	cr_assert_eq(lowaio_call(NULL, "x", 1, NULL, seen_cb, &s, &op),
	             AA_EINVAL);
	cr_assert_null(op);
	lowaio_free(m);
	cr_assert_eq(atomic_load(&s.runs), 0);
}

Test(sample_lowaio, cancel_while_sleeping_really_aborts_the_aio)
{
	lowaio *m;
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(lowaio_alloc(&m, HOUR_MS), 0);
	cr_assert_eq(lowaio_call(m, "t", 1, NULL, seen_cb, &s, &op), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), 0);
	// Cooperative and asynchronous, as nng's cancel is: the aio's
	// callback ends the op, long before the hour is up.
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	aa_op_unref(op);
	lowaio_free(m);
	tally_fini(&done);
}

Test(sample_lowaio, cancel_after_it_expired_does_nothing)
{
	lowaio *m;
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(lowaio_alloc(&m, 0), 0);
	cr_assert_eq(lowaio_call(m, "f", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	cr_assert_str_eq(s.result, "f");
	aa_op_unref(op);
	lowaio_free(m);
	tally_fini(&done);
}

Test(sample_lowaio, cancel_before_the_sleep_starts)
{
	lowaio *m;
	aa_cancel_signal *sig;
	aa_assoc assoc = {0};
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(lowaio_alloc(&m, HOUR_MS), 0);
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	assoc.slot = aa_cancel_signal_slot(sig);
	cancel_at_slot_connect(sig);
	cr_assert_eq(lowaio_call(m, "e", 1, &assoc, seen_cb, &s, &op), 0);
	cancel_at_slot_connect(NULL);
	// The cancel found nothing to abort; the starter aborted the aio
	// right after starting it: ended without waiting an hour.
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	lowaio_free(m);
	aa_cancel_signal_free(sig);
	tally_fini(&done);
}

Test(sample_lowaio, cancel_races_the_expiry_10000_times)
{
	lowaio *m;
	unsigned seed = 42;
	int won[2] = {0, 0};
	cr_assert_eq(lowaio_alloc(&m, 0), 0);
	for (int i = 0; i < 10000; i++) {
		tally done;
		seen s;
		aa_op *op;
		int rv;
		tally_init(&done);
		seen_init(&s, &done);
		s.keep = true;
		cr_assert_eq(lowaio_call(m, "r", 1, NULL, seen_cb, &s, &op),
		             0);
		// nng's timer thread expires the sleep now, as this thread
		// cancels after a varying spin, so that both sides win now
		// and then; each round's outcome is checked whoever wins.
		for (volatile unsigned k = rand_r(&seed) % 20000; k > 0; k--) {
		}
		rv = aa_op_cancel(op, AA_CANCEL_TOTAL);
		cr_assert(rv == 0 || rv == AA_EALREADY, "round %d: %s", i,
		          aa_strerror(rv));
		tally_wait(&done, 1);
		if (round_outcome(&s, "r", i, won) == 0) {
			cr_assert_eq(rv, 0, "round %d", i); // cancel won
		}
		cr_assert_eq((int)aa_op_status(op), atomic_load(&s.state));
		aa_op_unref(op);
		tally_fini(&done);
	}
	test_note("10000 rounds: cancel won %d, the aio won %d", won[0],
	          won[1]);
	lowaio_free(m);
}

Test(sample_lowaio, destroy_with_calls_pending)
{
	lowaio *m;
	seen s[3];
	aa_op *op;
	cr_assert_eq(lowaio_alloc(&m, HOUR_MS), 0);
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i], NULL);
		cr_assert_eq(lowaio_call(m, "d", 1, NULL, seen_cb, &s[i], &op),
		             0);
	}
	lowaio_free(m);
	// Every handler ran once before destroy returned, and none after.
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].runs), 1);
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
}
