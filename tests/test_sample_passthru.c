// aa-test-labels: concurrent
//
// test_sample_passthru.c: the middle-level pass-through sample
// (demos/samples/passthru.c) over the fake-cancel low level: success,
// failure passed up, cancel before the lower call starts, during it and
// after completion, cancellation reaching the lower op through the slot
// the module passed down, the caller's executor passed down, 10,000
// cancel-vs-completion races, destroy with calls pending.
#include <poll.h>

#include "passthru.h"
#include "sample_util.h"

TestSuite(sample_passthru, .timeout = 120, .fini = aa_test_check_live);

typedef struct fixture {
	lowfx low;
	spy spy;
	passthru *m;
} fixture;

static void
fx_init(fixture *f, int threads)
{
	lowfx_init(&f->low, threads, "!");
	spy_init(&f->spy, f->low.layer);
	cr_assert_eq(passthru_alloc(&f->m, f->spy.as_layer), 0);
}

static void
fx_fini(fixture *f)
{
	passthru_free(f->m);
	lowfx_fini(&f->low);
	spy_fini(&f->spy);
}

Test(sample_passthru, success_and_failure_pass_up)
{
	fixture f;
	tally done;
	seen s[2];
	aa_op *op;
	fx_init(&f, 1);
	tally_init(&done);
	seen_init(&s[0], &done);
	seen_init(&s[1], &done);
	cr_assert_eq(passthru_call(f.m, "ok", 2, NULL, seen_cb, &s[0], &op),
	             0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s[0].state), AA_COMPLETED);
	cr_assert_str_eq(s[0].result, "ok!");
	atomic_store(&f.low.e.fail_first, 1);
	cr_assert_eq(passthru_call(f.m, "no", 2, NULL, seen_cb, &s[1], &op),
	             0);
	tally_wait(&done, 2);
	cr_assert_eq(atomic_load(&s[1].state), AA_ERROR);
	cr_assert_eq(s[1].err, AA_EAPP);
	fx_fini(&f);
	tally_fini(&done);
}

static int
refusing_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
              aa_op_cb cb, void *arg, aa_op **opp)
{
	(void)handle;
	(void)in;
	(void)len;
	(void)assoc;
	(void)cb;
	(void)arg;
	(void)opp;
	return AA_EBUSY;
}

Test(sample_passthru, a_refused_call_never_runs_its_callback)
{
	fixture f;
	passthru *over_refusing;
	seen s;
	aa_op *op = NULL;
	fx_init(&f, 1);
	refused_calls((smp_layer){passthru_call, f.m});
	// A lower layer that refuses: the refusal comes back from the call,
	// and no callback runs.
	seen_init(&s, NULL);
	cr_assert_eq(
	    passthru_alloc(&over_refusing, (smp_layer){refusing_call, NULL}),
	    0);
	cr_assert_eq(
	    passthru_call(over_refusing, "x", 1, NULL, seen_cb, &s, &op),
	    AA_EBUSY);
	cr_assert_null(op);
	passthru_free(over_refusing);
	cr_assert_eq(atomic_load(&s.runs), 0);
	fx_fini(&f);
}

Test(sample_passthru, a_type_the_lower_op_refuses_changes_nothing)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1);
	seen_init(&s, NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(passthru_call(f.m, "a", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	gate_wait(&f.low.held);
	// The lower op refuses TOTAL: the request goes down and nothing
	// happens.
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), 0);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	gate_open(&f.low.release);
	tally_wait(&f.spy.ended, 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	aa_op_unref(op);
	fx_fini(&f);
}

Test(sample_passthru, terminal_cancel_during_the_lower_call_is_immediate)
{
	fixture f;
	seen s;
	aa_op *op;
	fx_init(&f, 1);
	seen_init(&s, NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(passthru_call(f.m, "a", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	gate_wait(&f.low.held);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	// The lower op cancels at once and our op ends like it, inside
	// the cancel call.
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	gate_open(&f.low.release);
	aa_op_unref(op);
	fx_fini(&f);
}

Test(sample_passthru, cancel_before_the_lower_call_starts)
{
	fixture f;
	seen s[2];
	aa_op *op;
	fx_init(&f, 1);
	seen_init(&s[0], NULL);
	seen_init(&s[1], NULL);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(passthru_call(f.m, "1", 1, NULL, seen_cb, &s[0], &op), 0);
	gate_wait(&f.low.held);
	cr_assert_eq(passthru_call(f.m, "2", 1, NULL, seen_cb, &s[1], &op), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s[1].state), AA_CANCELED);
	gate_open(&f.low.release);
	tally_wait(&f.spy.ended, 2);
	cr_assert_eq(tally_get(&f.low.e.calls), 1, "the second never ran");
	fx_fini(&f);
}

Test(sample_passthru, cancel_after_completion_does_nothing)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f, 1);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(passthru_call(f.m, "z", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(atomic_load(&s.runs), 1);
	aa_op_unref(op);
	fx_fini(&f);
	tally_fini(&done);
}

// The caller's executor is passed down: both the lower op's handler
// (the module's) and ours run on it.
typedef struct on_ex {
	aa_executor *ex;
	atomic_bool lower_on_ex;
} on_ex;

static void
lower_ended(void *ctx, aa_op *child)
{
	on_ex *o = ctx;
	(void)child;
	atomic_store(&o->lower_on_ex, aa_executor_in_thread(o->ex));
}

Test(sample_passthru, the_callers_executor_goes_down)
{
	fixture f;
	on_ex o = {0};
	aa_assoc assoc = {0};
	tally done;
	seen s;
	aa_op *op;
	unsigned ran;
	fx_init(&f, 1);
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(aa_poll_executor_alloc(&o.ex), 0);
	f.spy.before_cb = lower_ended;
	f.spy.ctx = &o;
	assoc.executor = o.ex;
	cr_assert_eq(passthru_call(f.m, "x", 1, &assoc, seen_cb, &s, &op), 0);
	// Nothing runs until this thread drains the executor.
	while (tally_get(&done) == 0) {
		struct pollfd p = {.events = POLLIN};
		cr_assert_eq(aa_poll_executor_fd(o.ex, &p.fd), 0);
		cr_assert_eq(poll(&p, 1, -1), 1);
		cr_assert_eq(aa_poll_executor_drain(o.ex, 0, &ran), 0);
		cr_assert_gt(ran, 0, "readable means work is ready");
	}
	cr_assert(atomic_load(&o.lower_on_ex));
	cr_assert(pthread_equal(s.thread, pthread_self()));
	cr_assert_str_eq(s.result, "x!");
	fx_fini(&f);
	aa_executor_free(o.ex);
	tally_fini(&done);
}

Test(sample_passthru, cancel_races_completion_10000_times)
{
	fixture f;
	fx_init(&f, 2);
	race_cancel_completion(10000, &f.low.e,
	                       (smp_layer){passthru_call, f.m},
	                       AA_CANCEL_TERMINAL, "r!", NULL, NULL);
	fx_fini(&f);
}

Test(sample_passthru, destroy_with_calls_pending)
{
	fixture f;
	tally done;
	seen s[3];
	aa_op *op;
	fx_init(&f, 3);
	tally_init(&done);
	atomic_store(&f.low.e.hold, true);
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i], &done);
		cr_assert_eq(
		    passthru_call(f.m, "p", 1, NULL, seen_cb, &s[i], &op), 0);
	}
	passthru_free(f.m); // cancels all; their lower calls are fake
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].runs), 1);
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
	gate_open(&f.low.release);
	lowfx_fini(&f.low);
	spy_fini(&f.spy);
	cr_assert_eq(tally_get(&done), 3, "no callback after destroy");
	tally_fini(&done);
}
