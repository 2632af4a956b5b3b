// aa-test-labels: concurrent
//
// test_sample_high.c: the high-level sample and cancel-all
// (demos/samples/high.c): success through the whole stack (top-level op
// over retries over the fake-cancel low level); one call cancelled before
// its first attempt, during an attempt, during the retry wait and after
// completion; 10,000 cancel-vs-completion races; cancel-all with calls in
// every state (in an attempt, queued, waiting to retry), cancel-all
// against a call started from a handler it runs, 10,000 cancel-all vs
// completion races, destroy with calls pending.
#include "high.h"
#include "sample_util.h"

TestSuite(sample_high, .timeout = 120, .fini = aa_test_check_live);

typedef struct fixture {
	lowfx low;
	spy spy; // between the retries and the low level
	high *h;
} fixture;

static void
fx_init(fixture *f, int threads, uint64_t backoff_ms)
{
	lowfx_init(&f->low, threads, "!");
	spy_init(&f->spy, f->low.layer);
	cr_assert_eq(
	    high_alloc(&f->h, f->spy.as_layer, (retry_policy){3, backoff_ms}),
	    0);
}

static void
fx_fini(fixture *f)
{
	high_free(f->h);
	lowfx_fini(&f->low);
	spy_fini(&f->spy);
}

Test(sample_high, success_through_the_stack)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 0);
	tally_init(&done);
	seen_init(&s, &done);
	atomic_store(&f.low.e.fail_first, 1); // one retry on the way
	cr_assert_eq(high_call(f.h, "hi", 2, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	cr_assert_str_eq(s.result, "hi!");
	cr_assert_eq(tally_get(&f.low.e.calls), 2);
	fx_fini(&f);
	tally_fini(&done);
}

// One top-level call cancelled by the user, with aa_op_cancel, in each
// state: before its first attempt started (queued behind a held call),
// during an attempt, during the retry wait, after completion.

Test(sample_high, cancel_before_the_first_attempt_starts)
{
	fixture f;
	tally done;
	seen first;
	seen second;
	aa_op *op1;
	aa_op *op2;
	fx_init(&f, 1, 0);
	tally_init(&done);
	seen_init(&first, &done);
	seen_init(&second, NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(high_call(f.h, "1", 1, NULL, seen_cb, &first, &op1), 0);
	gate_wait(&f.low.held);
	cr_assert_eq(high_call(f.h, "2", 1, NULL, seen_cb, &second, &op2), 0);
	aa_op_ref(op2);
	cr_assert_eq(aa_op_cancel(op2, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&second.runs), 1, "at once");
	cr_assert_eq(atomic_load(&second.state), AA_CANCELED);
	atomic_store(&f.low.e.hold, false);
	gate_open(&f.low.release);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&first.state), AA_COMPLETED);
	cr_assert_str_eq(first.result, "1!");
	aa_op_unref(op2);
	high_free(f.h);
	f.h = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.low.e.calls), 1, "op2's call never ran");
	cr_assert_eq(tally_get(&f.spy.calls), 2, "and was not retried");
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_high, cancel_during_an_attempt)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 0);
	seen_init(&s, NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(high_call(f.h, "a", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	gate_wait(&f.low.held);
	tally_wait(&f.spy.returned, 1); // the attempt's handler is set
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1, "at once");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	gate_open(&f.low.release);
	aa_op_unref(op);
	high_free(f.h);
	f.h = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1, "no attempt after cancel");
	cr_assert_eq(atomic_load(&s.runs), 1, "no callback after destroy");
	fx_fini(&f);
}

Test(sample_high, cancel_during_the_retry_wait)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 3600 * 1000);
	seen_init(&s, NULL);
	atomic_store(&f.low.e.fail_first, 1);
	cr_assert_eq(high_call(f.h, "w", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	// The failed attempt's handler returned: the hour's wait is armed.
	tally_wait(&f.spy.ended, 1);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1, "at once, not in an hour");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	aa_op_unref(op);
	high_free(f.h);
	f.h = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1, "no attempt after cancel");
	fx_fini(&f);
}

Test(sample_high, cancel_after_completion_does_nothing)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1, 0);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(high_call(f.h, "z", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	cr_assert_eq(high_cancel_all(f.h, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1);
	aa_op_unref(op);
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_high, cancel_races_completion_10000_times)
{
	fixture f;
	fx_init(&f, 2, 0);
	race_cancel_completion(10000, &f.low.e, (smp_layer){high_call, f.h},
	                       AA_CANCEL_TERMINAL, "r!", NULL, NULL);
	fx_fini(&f);
}

Test(sample_high, cancel_all_in_every_state)
{
	fixture f;
	tally done;
	seen s[3];
	aa_op *op;
	fx_init(&f, 1, 3600 * 1000);
	tally_init(&done);
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i], &done);
	}
	// s[0] waits an hour to retry; s[1] is in its attempt (held);
	// s[2] is queued behind it.
	atomic_store(&f.low.e.fail_first, 1);
	cr_assert_eq(high_call(f.h, "0", 1, NULL, seen_cb, &s[0], &op), 0);
	tally_wait(&f.low.e.returned, 1); // it failed
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(high_call(f.h, "1", 1, NULL, seen_cb, &s[1], &op), 0);
	gate_wait(&f.low.held);
	cr_assert_eq(high_call(f.h, "2", 1, NULL, seen_cb, &s[2], &op), 0);
	cr_assert_eq(tally_get(&done), 0);
	cr_assert_eq(high_cancel_all(f.h, AA_CANCEL_TERMINAL), 3);
	// All three ended inside cancel-all.
	cr_assert_eq(tally_get(&done), 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
	cr_assert_eq(high_cancel_all(f.h, AA_CANCEL_TERMINAL), 0);
	gate_open(&f.low.release);
	high_free(f.h);
	f.h = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.low.e.calls), 2, "the queued never ran");
	fx_fini(&f);
	tally_fini(&done);
}

// A handler that starts a new call while cancel-all runs it: the new
// call is left alone and completes.
typedef struct restarter {
	fixture *f;
	seen again;
	tally done;
	aa_op *op;
} restarter;

static void
restart_cb(aa_op *op, void *arg)
{
	restarter *r = arg;
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	aa_op_unref(op);
	atomic_store(&r->f->low.e.hold, false);
	cr_assert_eq(
	    high_call(r->f->h, "n", 1, NULL, seen_cb, &r->again, &r->op), 0);
}

Test(sample_high, cancel_all_leaves_calls_started_from_its_handlers)
{
	fixture f;
	restarter r = {.f = &f};
	aa_op *op;
	fx_init(&f, 1, 0);
	tally_init(&r.done);
	seen_init(&r.again, &r.done);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(high_call(f.h, "o", 1, NULL, restart_cb, &r, &op), 0);
	gate_wait(&f.low.held);
	cr_assert_eq(high_cancel_all(f.h, AA_CANCEL_TERMINAL), 1);
	gate_open(&f.low.release);
	tally_wait(&r.done, 1);
	cr_assert_eq(atomic_load(&r.again.state), AA_COMPLETED);
	cr_assert_str_eq(r.again.result, "n!");
	fx_fini(&f);
	tally_fini(&r.done);
}

static int
cancel_everything(void *ctx, aa_op *op, aa_cancel_type type)
{
	(void)op;
	return high_cancel_all(ctx, type);
}

Test(sample_high, cancel_all_races_completion_10000_times)
{
	fixture f;
	fx_init(&f, 2, 0);
	race_cancel_completion(10000, &f.low.e, (smp_layer){high_call, f.h},
	                       AA_CANCEL_TERMINAL, "r!", cancel_everything,
	                       f.h);
	fx_fini(&f);
}

Test(sample_high, destroy_with_calls_pending)
{
	fixture f;
	tally done;
	seen s[3];
	aa_op *op;
	fx_init(&f, 1, 3600 * 1000);
	tally_init(&done);
	atomic_store(&f.low.e.hold, true);
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i], &done);
		cr_assert_eq(high_call(f.h, "d", 1, NULL, seen_cb, &s[i], &op),
		             0);
	}
	gate_wait(&f.low.held);
	high_free(f.h);
	cr_assert_eq(tally_get(&done), 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
	gate_open(&f.low.release);
	lowfx_fini(&f.low);
	spy_fini(&f.spy);
	cr_assert_eq(tally_get(&done), 3, "no callback after destroy");
	tally_fini(&done);
}
