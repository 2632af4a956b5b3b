// aa-test-labels: concurrent
//
// test_sample_lowfake.c: the low-level sample with fake cancel
// (demos/samples/lowfake.c): success, cancel before the blocking call
// starts, during it and after completion, an unsupported cancellation
// type, 10,000 cancel-vs-completion races on real threads, destroy with
// calls pending and no callback after it.
#include "lowfake.h"
#include "sample_util.h"

TestSuite(sample_lowfake, .timeout = 120, .fini = aa_test_check_live);

Test(sample_lowfake, success)
{
	lowfx f;
	tally done;
	seen s;
	aa_op *op;
	lowfx_init(&f, 1, "!");
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(lowfake_call(f.m, "hi", 2, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	cr_assert_str_eq(s.result, "hi!");
	cr_assert_eq(lowfake_call(f.m, "x", 1, NULL, NULL, &s, &op),
	             AA_EINVAL);
	lowfx_fini(&f);
	tally_fini(&done);
}

Test(sample_lowfake, a_refused_call_never_runs_its_callback)
{
	lowfx f;
	lowfx_init(&f, 1, "!");
	refused_calls(f.layer);
	lowfx_stop(&f);
	cr_assert_eq(tally_get(&f.e.calls), 0);
	lowfx_fini(&f);
}

Test(sample_lowfake, cancel_during_the_blocking_call_is_immediate)
{
	lowfx f;
	seen s;
	aa_op *op;
	lowfx_init(&f, 1, "!");
	seen_init(&s, NULL);
	atomic_store(&f.e.hold, true);
	cr_assert_eq(lowfake_call(f.m, "a", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	gate_wait(&f.held);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_ENOTSUP,
	             "a blocking call's side effects still happen");
	cr_assert_eq(aa_op_status(op), AA_STARTED, "no cancellation occurs");
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	// At once, while the blocking call still runs.
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert(pthread_equal(s.thread, pthread_self()));
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_PENDING);
	gate_open(&f.release);
	lowfx_fini(&f); // waits for the blocking call
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED,
	             "the module cleaned up after the real call");
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(atomic_load(&s.runs), 1);
	aa_op_unref(op);
}

Test(sample_lowfake, cancel_before_the_blocking_call_starts)
{
	lowfx f;
	tally done;
	seen first;
	seen second;
	aa_op *op1;
	aa_op *op2;
	lowfx_init(&f, 1, "!");
	tally_init(&done);
	seen_init(&first, &done);
	seen_init(&second, NULL);
	atomic_store(&f.e.hold, true);
	cr_assert_eq(lowfake_call(f.m, "1", 1, NULL, seen_cb, &first, &op1),
	             0);
	gate_wait(&f.held); // the only pool thread is busy: op2 queues
	cr_assert_eq(lowfake_call(f.m, "2", 1, NULL, seen_cb, &second, &op2),
	             0);
	aa_op_ref(op2);
	cr_assert_eq(aa_op_cancel(op2, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&second.state), AA_CANCELED);
	gate_open(&f.release);
	tally_wait(&done, 1);
	lowfx_stop(&f);
	cr_assert_eq(tally_get(&f.e.calls), 1, "op2's call never ran");
	cr_assert_eq(aa_op_settlement(op2), AA_SETTLE_NEVER_STARTED);
	cr_assert_eq(atomic_load(&first.state), AA_COMPLETED);
	aa_op_unref(op2);
	lowfx_fini(&f);
	tally_fini(&done);
}

Test(sample_lowfake, cancel_after_completion_does_nothing)
{
	lowfx f;
	tally done;
	seen s;
	aa_op *op;
	lowfx_init(&f, 1, "!");
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(lowfake_call(f.m, "z", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	cr_assert_eq(atomic_load(&s.runs), 1);
	aa_op_unref(op);
	lowfx_fini(&f);
	tally_fini(&done);
}

Test(sample_lowfake, cancel_races_completion_10000_times)
{
	lowfx f;
	lowfx_init(&f, 2, "!");
	race_cancel_completion(10000, &f.e, f.layer, AA_CANCEL_TERMINAL, "r!",
	                       NULL, NULL);
	lowfx_fini(&f);
}

typedef struct freer {
	lowfake *m;
	atomic_bool returned;
} freer;

static void *
free_module(void *arg)
{
	freer *fr = arg;
	lowfake_free(fr->m);
	atomic_store(&fr->returned, true);
	return NULL;
}

Test(sample_lowfake, destroy_with_calls_pending)
{
	lowfx f;
	tally done;
	seen s[3];
	freer fr;
	thr t;
	aa_op *op;
	lowfx_init(&f, 1, "!");
	tally_init(&done);
	atomic_store(&f.e.hold, true);
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i], &done);
		cr_assert_eq(
		    lowfake_call(f.m, "p", 1, NULL, seen_cb, &s[i], &op), 0);
	}
	gate_wait(&f.held); // one runs, two are queued
	fr = (freer){.m = f.m};
	thr_start(&t, free_module, &fr);
	// Destroy cancels every pending call at once...
	tally_wait(&done, 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
	// ...and waits for the blocking call in progress.
	cr_assert_not(atomic_load(&fr.returned));
	gate_open(&f.release);
	thr_join(&t);
	cr_assert_eq(tally_get(&f.e.calls), 1);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].runs), 1, "no callback after");
	}
	aa_executor_free(f.pool);
	tally_fini(&done);
	gate_fini(&f.held);
	gate_fini(&f.release);
	echo_fini(&f.e);
}
