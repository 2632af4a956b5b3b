// aa-test-labels: concurrent
//
// test_sample_chain.c: the middle-level sample with an async chain
// (demos/samples/chain.c): success (step two runs on step one's result),
// a failing step, cancel before step one starts (queued), during step one,
// between the steps (from step one's handler) and during step two, after
// completion, 10,000 cancel-vs-completion races on step two, destroy with
// calls pending.
#include "chain.h"
#include "sample_util.h"

TestSuite(sample_chain, .timeout = 120, .fini = aa_test_check_live);

typedef struct fixture {
	lowfx one;
	lowfx two;
	spy spy_one;
	spy spy_two;
	chain *m;
} fixture;

static void
fx_init(fixture *f)
{
	lowfx_init(&f->one, 1, "1");
	lowfx_init(&f->two, 2, "2");
	spy_init(&f->spy_one, f->one.layer);
	spy_init(&f->spy_two, f->two.layer);
	cr_assert_eq(
	    chain_alloc(&f->m, f->spy_one.as_layer, f->spy_two.as_layer), 0);
}

static void
fx_fini(fixture *f)
{
	chain_free(f->m);
	lowfx_fini(&f->one);
	lowfx_fini(&f->two);
	spy_fini(&f->spy_one);
	spy_fini(&f->spy_two);
}

Test(sample_chain, success_and_a_failing_step)
{
	fixture f;
	tally done;
	seen s[2];
	aa_op *op;
	fx_init(&f);
	tally_init(&done);
	seen_init(&s[0], &done);
	seen_init(&s[1], &done);
	cr_assert_eq(chain_call(f.m, "x", 1, NULL, seen_cb, &s[0], &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s[0].state), AA_COMPLETED);
	cr_assert_str_eq(s[0].result, "x12");
	atomic_store(&f.two.e.fail_first, 1);
	cr_assert_eq(chain_call(f.m, "y", 1, NULL, seen_cb, &s[1], &op), 0);
	tally_wait(&done, 2);
	cr_assert_eq(atomic_load(&s[1].state), AA_ERROR);
	cr_assert_eq(s[1].err, AA_EAPP);
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_chain, a_refused_call_never_runs_its_callback)
{
	fixture f;
	fx_init(&f);
	refused_calls((smp_layer){chain_call, f.m});
	cr_assert_eq(tally_get(&f.spy_one.calls), 0, "no step");
	fx_fini(&f);
}

// cancel_in_step holds step n's blocking call, cancels, checks.
static void
cancel_in_step(int n)
{
	fixture f;
	lowfx *low;
	seen s;
	aa_op *op;
	fx_init(&f);
	low = n == 1 ? &f.one : &f.two;
	seen_init(&s, NULL);
	atomic_store(&low->e.hold, true);
	cr_assert_eq(chain_call(f.m, "c", 1, NULL, seen_cb, &s, &op), 0);
	aa_op_ref(op);
	gate_wait(&low->held);
	// Step two is started from step one's handler on another thread:
	// wait until its call returned, so that its handler is set and the
	// cancel ends everything inside the cancel call.
	tally_wait(n == 1 ? &f.spy_one.returned : &f.spy_two.returned, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1, "at once");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_cancel_detail(op), n);
	gate_open(&low->release);
	aa_op_unref(op);
	chain_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.one);
	lowfx_stop(&f.two);
	cr_assert_eq(tally_get(&f.two.e.calls), n == 1 ? 0 : 1);
	fx_fini(&f);
}

Test(sample_chain, cancel_during_step_one)
{
	cancel_in_step(1);
}

Test(sample_chain, cancel_during_step_two)
{
	cancel_in_step(2);
}

// Step one of a second call waits behind the first call's (step one's
// pool has one thread): cancelled before any of its work started.
Test(sample_chain, cancel_before_step_one_starts)
{
	fixture f;
	tally done;
	seen first;
	seen second;
	aa_op *op1;
	aa_op *op2;
	fx_init(&f);
	tally_init(&done);
	seen_init(&first, &done);
	seen_init(&second, NULL);
	atomic_store(&f.one.e.hold, true);
	cr_assert_eq(chain_call(f.m, "1", 1, NULL, seen_cb, &first, &op1), 0);
	gate_wait(&f.one.held);
	cr_assert_eq(chain_call(f.m, "2", 1, NULL, seen_cb, &second, &op2), 0);
	aa_op_ref(op2);
	cr_assert_eq(aa_op_cancel(op2, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&second.runs), 1, "at once");
	cr_assert_eq(atomic_load(&second.state), AA_CANCELED);
	cr_assert_eq(aa_op_cancel_detail(op2), 1, "step one was current");
	atomic_store(&f.one.e.hold, false);
	gate_open(&f.one.release);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&first.state), AA_COMPLETED);
	aa_op_unref(op2);
	chain_free(f.m);
	f.m = NULL;
	lowfx_stop(&f.one);
	lowfx_stop(&f.two);
	cr_assert_eq(tally_get(&f.one.e.calls), 1, "op2's step one never ran");
	cr_assert_eq(tally_get(&f.two.e.calls), 1, "only op1's step two ran");
	fx_fini(&f);
	tally_fini(&done);
}

typedef struct between {
	aa_op *op;
} between;

static void
cancel_between(void *ctx, aa_op *child)
{
	between *b = ctx;
	(void)child;
	cr_assert_eq(aa_op_cancel(b->op, AA_CANCEL_TERMINAL), 0);
}

Test(sample_chain, cancel_between_the_steps)
{
	fixture f;
	between b;
	seen s;
	fx_init(&f);
	seen_init(&s, NULL);
	s.keep = true;
	atomic_store(&f.one.e.hold, true);
	f.spy_one.before_cb = cancel_between; // step one completed
	f.spy_one.ctx = &b;
	cr_assert_eq(chain_call(f.m, "b", 1, NULL, seen_cb, &s, &b.op), 0);
	gate_open(&f.one.release);
	tally_wait(&f.spy_one.ended, 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(tally_get(&f.spy_two.calls), 0, "step two never ran");
	aa_op_unref(b.op);
	fx_fini(&f);
}

Test(sample_chain, cancel_after_completion_does_nothing)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	fx_init(&f);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(chain_call(f.m, "z", 1, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	aa_op_unref(op);
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_chain, cancel_races_completion_10000_times)
{
	fixture f;
	fx_init(&f);
	race_cancel_completion(10000, &f.two.e, (smp_layer){chain_call, f.m},
	                       AA_CANCEL_TERMINAL, "r12", NULL, NULL);
	fx_fini(&f);
}

Test(sample_chain, destroy_with_calls_pending)
{
	fixture f;
	tally done;
	seen s[2];
	aa_op *op;
	fx_init(&f);
	tally_init(&done);
	atomic_store(&f.two.e.hold, true);
	for (int i = 0; i < 2; i++) {
		seen_init(&s[i], &done);
		cr_assert_eq(
		    chain_call(f.m, "d", 1, NULL, seen_cb, &s[i], &op), 0);
	}
	gate_wait(&f.two.held);
	chain_free(f.m);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
	}
	gate_open(&f.two.release);
	lowfx_fini(&f.one);
	lowfx_fini(&f.two);
	spy_fini(&f.spy_one);
	spy_fini(&f.spy_two);
	cr_assert_eq(tally_get(&done), 2, "no callback after destroy");
	tally_fini(&done);
}
