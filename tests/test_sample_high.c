// aa-test-labels: concurrent
//
// test_sample_high.c: the high-level sample and cancel-all
// (demos/samples/high.c): success through the whole stack (top-level op
// over retries over the fake-cancel low level); one call cancelled before
// its first attempt, during an attempt, during the retry wait and after
// completion; 10,000 cancel-vs-completion races; the caller's executor,
// allocator and slot going down to the lowest op, and the caller's slot
// cancelling the whole stack; cancel-all with calls in
// every state (in an attempt, queued, waiting to retry), cancel-all
// against a call started from a handler it runs, 10,000 cancel-all vs
// completion races, destroy with calls pending.
#include <poll.h>
#include <stdlib.h>

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

Test(sample_high, a_refused_call_never_runs_its_callback)
{
	fixture f;
	fx_init(&f, 1, 0);
	refused_calls((smp_layer){high_call, f.h});
	cr_assert_eq(tally_get(&f.spy.calls), 0, "no attempt");
	fx_fini(&f);
}

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

// ---- Associated characteristics down the whole stack ----

// A counting allocator: the ops of every layer come from it.
typedef struct counting {
	aa_allocator a;
	atomic_int allocs;
	atomic_int frees;
} counting;

static void *
counting_alloc(void *ctx, size_t size)
{
	counting *c = ctx;
	atomic_fetch_add(&c->allocs, 1);
	return malloc(size);
}

static void
counting_free(void *ctx, void *ptr, size_t size)
{
	counting *c = ctx;
	(void)size;
	atomic_fetch_add(&c->frees, 1);
	free(ptr);
}

typedef struct assoc_seen {
	aa_executor *ex;
	counting *alloc;
	atomic_bool same_executor;
	atomic_bool same_allocator;
	atomic_bool own_slot;
	atomic_bool on_executor;
	aa_cancel_slot *caller_slot;
} assoc_seen;

// In the lowest op's handler: what it was made with, and where it runs.
static void
lowest_ended(void *ctx, aa_op *child)
{
	assoc_seen *a = ctx;
	const aa_assoc *ca = aa_op_assoc(child);
	atomic_store(&a->same_executor, ca->executor == a->ex);
	atomic_store(&a->same_allocator, ca->allocator == &a->alloc->a);
	atomic_store(&a->own_slot,
	             ca->slot != NULL && ca->slot != a->caller_slot);
	atomic_store(&a->on_executor, aa_executor_in_thread(a->ex));
}

Test(sample_high, associated_characteristics_go_down_the_stack)
{
	fixture f;
	counting c = {.a = {counting_alloc, counting_free, &c}};
	assoc_seen as = {.alloc = &c};
	aa_cancel_signal *sig;
	aa_assoc assoc = {0};
	tally done;
	seen s;
	aa_op *op;
	unsigned ran;
	fx_init(&f, 1, 0);
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(aa_poll_executor_alloc(&as.ex), 0);
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	assoc.executor = as.ex;
	assoc.allocator = &c.a;
	assoc.slot = aa_cancel_signal_slot(sig);
	as.caller_slot = assoc.slot;
	f.spy.before_cb = lowest_ended;
	f.spy.ctx = &as;
	cr_assert_eq(high_call(f.h, "a", 1, &assoc, seen_cb, &s, &op), 0);
	// Every handler of the stack waits for this thread's drain.
	while (tally_get(&done) == 0) {
		cr_assert_eq(aa_poll_executor_drain(as.ex, 0, &ran), 0);
		if (ran == 0) {
			int fd;
			struct pollfd p = {.events = POLLIN};
			cr_assert_eq(aa_poll_executor_fd(as.ex, &fd), 0);
			p.fd = fd;
			cr_assert_eq(poll(&p, 1, -1), 1);
		}
	}
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	cr_assert(pthread_equal(s.thread, pthread_self()));
	cr_assert(atomic_load(&as.same_executor), "the caller's executor");
	cr_assert(atomic_load(&as.on_executor),
	          "the lowest handler ran there");
	cr_assert(atomic_load(&as.same_allocator), "the caller's allocator");
	cr_assert(atomic_load(&as.own_slot), "the parent's own slot");
	fx_fini(&f);
	// Top-level, retry and low-level ops: three, all given back.
	cr_assert_eq(atomic_load(&c.allocs), 3);
	cr_assert_eq(atomic_load(&c.frees), 3);
	aa_cancel_signal_free(sig);
	aa_executor_free(as.ex);
	tally_fini(&done);
}

Test(sample_high, the_callers_slot_cancels_the_whole_stack)
{
	fixture f;
	aa_cancel_signal *sig;
	aa_assoc assoc = {0};
	seen s;
	aa_op *op;
	fx_init(&f, 1, 0);
	seen_init(&s, NULL);
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	assoc.slot = aa_cancel_signal_slot(sig);
	atomic_store(&f.low.e.hold, true);
	cr_assert_eq(high_call(f.h, "s", 1, &assoc, seen_cb, &s, &op), 0);
	gate_wait(&f.low.held);
	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1, "at once");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	gate_open(&f.low.release);
	high_free(f.h);
	f.h = NULL;
	lowfx_stop(&f.low);
	cr_assert_eq(tally_get(&f.spy.calls), 1, "no attempt after cancel");
	fx_fini(&f);
	aa_cancel_signal_free(sig);
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
