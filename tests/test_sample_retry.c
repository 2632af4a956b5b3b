// aa-test-labels: concurrent
//
// test_sample_retry.c: the middle-level sample with retries
// (demos/samples/retry.c) over the fake-cancel low level: success after
// failures, giving up with the last error, cancel before the first
// attempt starts (queued), during an attempt,
// during the backoff wait and after completion, no attempt after cancel,
// 10,000 cancel-vs-completion races, destroy with calls pending (one
// waiting, one in an attempt).
#include "retry.h"
#include "sample_util.h"

TestSuite(sample_retry, .timeout = 120, .fini = aa_test_check_live);

typedef struct fixture {
	lowfx low;
	spy spy;
	retry *m;
} fixture;

static void
fx_init(fixture *f, int threads, int max_attempts, uint64_t backoff_ms)
{
	lowfx_init(&f->low, threads, "!");
	spy_init(&f->spy, f->low.layer);
	cr_assert_eq(retry_alloc(&f->m, f->spy.as_layer,
	                         (retry_policy){max_attempts, backoff_ms}),
	             0);
}

static void
fx_fini(fixture *f)
{
	retry_free(f->m);
	lowfx_fini(&f->low);
	spy_fini(&f->spy);
}

Test(sample_retry, succeeds_after_failures)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 5, 0);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	atomic_store(&f.low.e.fail_first, 3);
	cr_assert_eq(retry_call(f.m, "x", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	cr_assert_str_eq(s.result, "x!");
	cr_assert_eq(retry_attempts(op), 4);
	cr_assert_eq(tally_get(&f.spy.calls), 4);
	aa_op_unref(op);
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_retry, a_refused_call_never_runs_its_callback)
{
	fixture f;
	fx_init(&f, 1, 3, 0);
	refused_calls((smp_layer){retry_call, f.m});
	cr_assert_eq(tally_get(&f.spy.calls), 0, "no attempt");
	fx_fini(&f);
}

Test(sample_retry, gives_up_with_the_last_error)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 3, 0);
	tally_init(&done);
	seen_init(&s, &done);
	atomic_store(&f.low.e.fail_first, 100);
	cr_assert_eq(retry_call(f.m, "x", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_ERROR);
	cr_assert_eq(s.err, AA_EAPP);
	cr_assert_eq(tally_get(&f.spy.calls), 3);
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_retry, cancel_during_an_attempt_stops_it)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 5, 0);
	seen_init(&s, NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(retry_call(f.m, "x", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	gate_wait(&f.low.held);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1, "at once");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_cancel_detail(op), 1, "in attempt 1");
	atomic_store(&f.low.e.fail_first, 1); // the attempt fails late
	gate_open(&f.low.release);
	aa_op_unref(op);
	retry_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1, "no attempt after cancel");
	fx_fini(&f);
}

// The first attempt of a second call waits behind the first call's (one
// pool thread): cancelled before it started, and never retried.
Test(sample_retry, cancel_before_the_first_attempt_starts)
{
	fixture f;
	tally done;
	seen first;
	seen second;
	aa_op *op1;
	aa_op *op2;
	fx_init(&f, 1, 5, 0);
	tally_init(&done);
	seen_init(&first, &done);
	seen_init(&second, NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(retry_call(f.m, "1", 1, NULL, seen_cb, &first, &op1), 0);
	gate_wait(&f.low.held);
	cr_assert_eq(retry_call(f.m, "2", 1, NULL, seen_cb, &second, &op2), 0);
	aa_op_ref(op2);
	cr_assert_eq(aa_op_cancel(op2, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&second.runs), 1, "at once");
	cr_assert_eq(atomic_load(&second.state), AA_CANCELED);
	cr_assert_eq(retry_attempts(op2), 1);
	atomic_store(&f.low.e.hold, false);
	gate_open(&f.low.release);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&first.state), AA_COMPLETED);
	aa_op_unref(op2);
	retry_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.low.e.calls), 1, "op2's attempt never ran");
	cr_assert_eq(tally_get(&f.spy.calls), 2, "and was not retried");
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_retry, cancel_during_the_backoff_wait)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 5, 3600 * 1000);
	seen_init(&s, NULL);
	atomic_store(&f.low.e.fail_first, 1);
	cr_assert_eq(retry_call(f.m, "x", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	// The first attempt's handler has returned: the wait is armed.
	tally_wait(&f.spy.ended, 1);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	// The cancel disarmed the timer and ended the call inside it.
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	aa_op_unref(op);
	retry_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1, "no attempt after cancel");
	fx_fini(&f);
}

// A cancel that arrives inside the failed attempt's handler, before the
// module decides to wait: it must not wait, nor retry.
typedef struct cancel_in_handler {
	aa_op *op;
} cancel_in_handler;

static void
cancel_before_wait(void *ctx, aa_op *child)
{
	cancel_in_handler *c = ctx;
	(void)child;
	cr_assert_eq(aa_op_cancel(c->op, AA_CANCEL_TERMINAL), 0);
}

Test(sample_retry, cancel_in_the_failed_attempts_handler_starts_no_retry)
{
	fixture f;
	cancel_in_handler c;
	seen s;
	fx_init(&f, 1, 5, 3600 * 1000);
	seen_init(&s, NULL);
	s.keep = true;
	atomic_store(&f.low.e.fail_first, 1);
	atomic_store(&f.low.e.hold, true);
	f.spy.before_cb = cancel_before_wait;
	f.spy.ctx = &c;
	cr_assert_eq(retry_call(f.m, "x", 1, NULL, seen_cb, &s, &c.op), 0);
	gate_open(&f.low.release);
	tally_wait(&f.spy.ended, 1);
	cr_assert_eq(atomic_load(&s.runs), 1, "no hour-long wait");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	aa_op_unref(c.op);
	retry_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1);
	fx_fini(&f);
}

Test(sample_retry, cancel_after_completion_does_nothing)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 2, 0);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(retry_call(f.m, "z", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	aa_op_unref(op);
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_retry, cancel_races_completion_10000_times)
{
	fixture f;
	fx_init(&f, 2, 3, 0);
	race_cancel_completion(10000, &f.low.e, (smp_layer){retry_call, f.m},
	                       AA_CANCEL_TERMINAL, "r!", NULL, NULL);
	fx_fini(&f);
}

Test(sample_retry, destroy_with_calls_pending)
{
	fixture f;
	tally done;
	seen s[2];
	aa_op *op;
	fx_init(&f, 2, 5, 3600 * 1000);
	tally_init(&done);
	seen_init(&s[0], &done);
	seen_init(&s[1], &done);
	atomic_store(&f.low.e.fail_first, 1);
	cr_assert_eq(retry_call(f.m, "w", 1, NULL, seen_cb, &s[0], &op), 0);
	tally_wait(&f.spy.ended, 1); // waiting an hour
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(retry_call(f.m, "a", 1, NULL, seen_cb, &s[1], &op), 0);
	gate_wait(&f.low.held); // in its attempt
	retry_free(f.m);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
	gate_open(&f.low.release);
	lowfx_fini(&f.low);
	spy_fini(&f.spy);
	cr_assert_eq(tally_get(&done), 2, "no callback after destroy");
	tally_fini(&done);
}

// Partial vs terminal: the same call, held in its attempt, ends
// differently. TERMINAL: CANCELED at once (cancel_during_an_attempt_
// stops_it). PARTIAL: the attempt finishes and its outcome is reported;
// no retry follows a failure.
static void
partial_cancel_in_attempt(bool attempt_fails, aa_state want)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 5, 0);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(retry_call(f.m, "p", 1, NULL, seen_cb, &s, &op), 0);
	gate_wait(&f.low.held);
	if (attempt_fails) {
		atomic_store(&f.low.e.fail_first, 5);
	}
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), 0);
	cr_assert_eq(aa_op_status(op), AA_STARTED, "the attempt goes on");
	gate_open(&f.low.release);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), (int)want);
	if (want == AA_COMPLETED) {
		cr_assert_str_eq(s.result, "p!");
	}
	aa_op_unref(op);
	retry_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1, "no retry after it");
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_retry, partial_cancel_reports_the_attempts_success)
{
	partial_cancel_in_attempt(false, AA_COMPLETED);
}

Test(sample_retry, partial_cancel_of_a_failing_attempt_ends_canceled)
{
	partial_cancel_in_attempt(true, AA_CANCELED);
}

Test(sample_retry, partial_cancel_during_the_wait_ends_at_once)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 5, 3600 * 1000);
	seen_init(&s, NULL);
	s.keep = true;
	atomic_store(&f.low.e.fail_first, 1);
	cr_assert_eq(retry_call(f.m, "x", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&f.spy.ended, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), 0);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED, "nothing in flight");
	aa_op_unref(op);
	fx_fini(&f);
}
