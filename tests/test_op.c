// test_op.c: the aa_op contract on one thread (docs/op.md): states,
// handler rules, results, cancel types, both policies, settlement, progress,
// slots, allocators. test_op_race.c forces the races between threads.
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

// A provider that records what the op asked of it.
typedef struct prov {
	int cancel_calls;
	aa_cancel_type last_type;
	int detail;           // returned by the cancel function
	aa_op *finish_inside; // finish this op inside cancel
} prov;

static int
prov_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	prov *p = arg;
	p->cancel_calls++;
	p->last_type = type;
	if (p->finish_inside != NULL) {
		cr_assert_eq(aa_op_canceled(p->finish_inside), 0);
	}
	return p->detail;
}

static aa_op *
make_op(prov *p, aa_cancel_policy policy, unsigned types)
{
	aa_op_provider pv = {
	    .cancel = prov_cancel,
	    .arg = p,
	    .policy = policy,
	    .cancel_types = types,
	};
	aa_op *op = NULL;
	cr_assert_eq(aa_op_alloc(&op, &pv, NULL), 0);
	cr_assert_not_null(op);
	return op;
}

// A handler that records its calls.
typedef struct seen {
	int calls;
	aa_state state;
	pthread_t thread;
	int cancel_rv; // what a cancel from inside returned
	bool cancel_inside;
} seen;

static void
on_done(aa_op *op, void *arg)
{
	seen *s = arg;
	s->calls++;
	s->state = aa_op_status(op);
	s->thread = pthread_self();
	if (s->cancel_inside) {
		s->cancel_rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
	}
}

static int released;

static void
release_buf(void *p)
{
	released++;
	free(p);
}

static void
setup(void)
{
	released = 0;
}

TestSuite(op, .init = setup, .fini = aa_test_check_live, .timeout = 30);

Test(op, starts_started_and_frees)
{
	prov p = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_live(AA_LIVE_OP), 1);
	cr_assert_neq(aa_op_id(op), 0);
	aa_op_unref(op);
	cr_assert_eq(aa_live(AA_LIVE_OP), 0);
}

Test(op, ids_are_unique)
{
	prov p = {0};
	aa_op *a = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	aa_op *b = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_neq(aa_op_id(a), aa_op_id(b));
	aa_op_unref(a);
	aa_op_unref(b);
}

Test(op, complete_then_handler_runs_inside_setter)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	char *buf = strdup("hello");
	cr_assert_eq(aa_op_complete(op, buf, 5, release_buf), 0);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	cr_assert_eq(s.calls, 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(s.calls, 1, "handler must run before the setter returns");
	cr_assert(pthread_equal(s.thread, pthread_self()));
	cr_assert_eq(s.state, AA_COMPLETED);
	const void *data;
	size_t len;
	cr_assert_eq(aa_op_result(op, &data, &len), 0);
	cr_assert_eq(len, 5);
	cr_assert_eq(memcmp(data, "hello", 5), 0);
	cr_assert_eq(aa_op_error(op), 0);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(released, 0);
	aa_op_unref(op);
	cr_assert_eq(released, 1, "the result is released with the op");
}

Test(op, handler_set_first_runs_at_completion_once)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(s.calls, 0);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	cr_assert_eq(aa_op_fail(op, AA_EAPP, "late"), AA_EALREADY);
	cr_assert_eq(aa_op_canceled(op), AA_EALREADY);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_EALREADY);
	cr_assert_eq(s.calls, 1, "exactly once");
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	aa_op_unref(op);
}

Test(op, second_handler_is_an_error)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), AA_EBUSY);
	cr_assert_eq(aa_op_set_handler(op, NULL, &s), AA_EINVAL);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), AA_EBUSY);
	cr_assert_eq(s.calls, 1);
	aa_op_unref(op);
}

Test(op, results_by_state)
{
	prov p = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	const void *data;
	size_t len;
	cr_assert_eq(aa_op_result(op, &data, &len), AA_ESTATE,
	             "results of a started op are a state error");
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_result(op, &data, &len), AA_ECANCELED);
	cr_assert_eq(aa_op_error(op), AA_ECANCELED);
	aa_op_unref(op);

	op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_fail(op, AA_ETIMEDOUT, "too slow"), 0);
	cr_assert_eq(aa_op_status(op), AA_ERROR);
	cr_assert_eq(aa_op_result(op, &data, &len), AA_ETIMEDOUT);
	cr_assert_eq(aa_op_error(op), AA_ETIMEDOUT);
	cr_assert_str_eq(aa_op_error_msg(op), "too slow");
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_FAILED);
	aa_op_unref(op);

	op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_fail(op, 0, "no code"), AA_EINVAL);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_str_eq(aa_op_error_msg(op), "");
	aa_op_unref(op);
}

Test(op, immediate_cancel_runs_handler_inline_and_absorbs_completion)
{
	prov p = {.detail = 42};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel_detail(op), -1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.calls, 1, "handler ran inside cancel");
	cr_assert(pthread_equal(s.thread, pthread_self()));
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(p.cancel_calls, 1);
	cr_assert_eq(p.last_type, AA_CANCEL_TERMINAL);
	cr_assert_eq(aa_op_cancel_detail(op), 42);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_PENDING);

	// The provider's real completion arrives late: absorbed, released,
	// and it becomes the settlement.
	cr_assert_eq(aa_op_complete(op, strdup("x"), 1, release_buf),
	             AA_EALREADY);
	cr_assert_eq(released, 1);
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(p.cancel_calls, 1, "cancel function at most once");
	cr_assert_eq(s.calls, 1);
	aa_op_unref(op);
}

// The after-cancel function: once per cancel function call, on the
// cancelling thread, after the handler was delivered.
typedef struct after {
	seen *s;
	prov *p;
	int calls;
	int handler_calls_then; // handler runs seen when it was called
	int cancel_calls_then;
} after;

static void
after_cancel(aa_op *op, void *arg)
{
	after *a = arg;
	a->calls++;
	a->handler_calls_then = a->s->calls;
	a->cancel_calls_then = a->p->cancel_calls;
}

static int
after_prov_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	after *a = arg;
	return prov_cancel(op, type, a->p);
}

static aa_op *
make_after_op(after *a, aa_cancel_policy policy)
{
	aa_op_provider pv = {.cancel = after_prov_cancel,
	                     .after_cancel = after_cancel,
	                     .arg = a,
	                     .policy = policy,
	                     .cancel_types = AA_CANCEL_ALL};
	aa_op *op = NULL;
	cr_assert_eq(aa_op_alloc(&op, &pv, NULL), 0);
	return op;
}

Test(op, after_cancel_runs_after_the_handler)
{
	prov p = {0};
	seen s = {0};
	after a = {.s = &s, .p = &p};
	aa_op *op = make_after_op(&a, AA_POLICY_IMMEDIATE);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(a.calls, 1);
	cr_assert_eq(a.cancel_calls_then, 1, "after the cancel function");
	cr_assert_eq(a.handler_calls_then, 1, "after the handler");
	// A repeated cancel calls neither function again.
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(a.calls, 1);
	aa_op_unref(op);

	// Cooperative: right after the cancel function (here the provider
	// finishes inside it, so the handler has run too).
	prov p2 = {0};
	seen s2 = {0};
	after a2 = {.s = &s2, .p = &p2};
	op = make_after_op(&a2, AA_POLICY_COOPERATIVE);
	p2.finish_inside = op;
	cr_assert_eq(aa_op_set_handler(op, on_done, &s2), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(a2.calls, 1);
	cr_assert_eq(a2.handler_calls_then, 1);
	aa_op_unref(op);

	// A final op: neither is called.
	prov p3 = {0};
	seen s3 = {0};
	after a3 = {.s = &s3, .p = &p3};
	op = make_after_op(&a3, AA_POLICY_IMMEDIATE);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(a3.calls, 0);
	cr_assert_eq(p3.cancel_calls, 0);
	aa_op_unref(op);
}

Test(op, cooperative_cancel_waits_for_the_provider)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_COOPERATIVE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), 0);
	cr_assert_eq(p.cancel_calls, 1);
	cr_assert_eq(aa_op_status(op), AA_STARTED, "the provider decides");
	cr_assert_eq(s.calls, 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), 0);
	cr_assert_eq(p.cancel_calls, 1, "repeated request not passed on");
	cr_assert_eq(aa_op_canceled(op), 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	aa_op_unref(op);
}

Test(op, cooperative_provider_may_win_the_race)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_COOPERATIVE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(s.state, AA_COMPLETED);
	cr_assert_eq(aa_op_result(op, NULL, NULL), 0);
	aa_op_unref(op);
}

Test(op, cooperative_provider_finishing_inside_cancel_runs_handler_inline)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_COOPERATIVE, AA_CANCEL_ALL);
	p.finish_inside = op;
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.state, AA_CANCELED);
	aa_op_unref(op);
}

Test(op, cancel_types)
{
	prov p = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_TERMINAL);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_NONE), AA_EINVAL);
	cr_assert_eq(aa_op_cancel(op, (aa_cancel_type)8), AA_EINVAL);
	cr_assert_eq(p.cancel_calls, 0, "an unsupported request does nothing");
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	aa_op_unref(op);

	// A stronger guarantee satisfies a weaker request.
	op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_TOTAL);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), 0);
	aa_op_unref(op);
	op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_PARTIAL);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	aa_op_unref(op);
	op = make_op(&p, AA_POLICY_IMMEDIATE, 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	aa_op_unref(op);

	cr_assert(aa_cancel_supports(AA_CANCEL_TOTAL, AA_CANCEL_TERMINAL));
	cr_assert(!aa_cancel_supports(AA_CANCEL_TERMINAL, AA_CANCEL_TOTAL));
	cr_assert_str_eq(aa_cancel_type_name(AA_CANCEL_PARTIAL), "partial");
}

Test(op, cooperative_without_cancel_function_is_not_cancellable)
{
	aa_op_provider pv = {.policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	aa_op *op;
	cr_assert_eq(aa_op_alloc(&op, &pv, NULL), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_canceled(op), 0);
	aa_op_unref(op);
}

Test(op, cancel_from_inside_the_handler)
{
	prov p = {0};
	seen s = {.cancel_inside = true};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.cancel_rv, AA_EALREADY,
	             "cancel inside the handler returns at once, no deadlock");
	aa_op_unref(op);

	op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	s = (seen){.cancel_inside = true};
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(s.cancel_rv, AA_EALREADY);
	aa_op_unref(op);
}

static void
unref_in_handler(aa_op *op, void *arg)
{
	(void)arg;
	aa_op_unref(op); // drops the caller's last reference
}

Test(op, last_unref_inside_the_handler)
{
	prov p = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	aa_op_ref(op); // the caller's reference
	cr_assert_eq(aa_op_set_handler(op, unref_in_handler, NULL), 0);
	aa_op_unref(op); // the provider lets go first
	cr_assert_eq(aa_live(AA_LIVE_OP), 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_live(AA_LIVE_OP), 0, "freed after the handler");
}

Test(op, releasing_a_started_op_does_not_cancel_it)
{
	prov p = {0};
	seen s = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	aa_op_ref(op); // caller
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	aa_op_unref(op); // caller releases
	cr_assert_eq(p.cancel_calls, 0);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.state, AA_COMPLETED);
	aa_op_unref(op);
}

typedef struct progress_rec {
	int calls;
	size_t bytes;
	bool cancel_inside;
	int cancel_rv;
} progress_rec;

static void
on_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	progress_rec *r = arg;
	r->calls++;
	r->bytes += len;
	(void)data;
	if (r->cancel_inside) {
		r->cancel_rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
	}
}

Test(op, progress_runs_only_while_started)
{
	prov p = {0};
	progress_rec r = {0};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_progress(op, "ab", 2), 0, "no handler: ignored");
	cr_assert_eq(aa_op_set_progress_handler(op, on_progress, &r), 0);
	cr_assert_eq(aa_op_set_progress_handler(op, on_progress, &r),
	             AA_EBUSY);
	cr_assert_eq(aa_op_progress(op, "abc", 3), 0);
	cr_assert_eq(aa_op_progress(op, "de", 2), 0);
	cr_assert_eq(r.calls, 2);
	cr_assert_eq(r.bytes, 5);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(aa_op_progress(op, "f", 1), AA_EALREADY);
	cr_assert_eq(r.calls, 2);
	aa_op_unref(op);
}

Test(op, cancel_from_inside_a_progress_callback)
{
	prov p = {0};
	seen s = {0};
	progress_rec r = {.cancel_inside = true};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_set_progress_handler(op, on_progress, &r), 0);
	cr_assert_eq(aa_op_progress(op, "x", 1), 0);
	cr_assert_eq(r.cancel_rv, 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_op_progress(op, "y", 1), AA_EALREADY);
	aa_op_unref(op);
}

typedef struct settle_rec {
	int calls;
	aa_settlement s;
	int handler_calls_before; // completion handler ran first?
	seen *done;
} settle_rec;

static void
on_settle(aa_op *op, void *arg)
{
	settle_rec *r = arg;
	r->calls++;
	r->s = aa_op_settlement(op);
	if (r->done != NULL) {
		r->handler_calls_before = r->done->calls;
	}
}

Test(op, settlement_after_immediate_cancel)
{
	prov p = {0};
	seen s = {0};
	settle_rec r = {.done = &s};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &r), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &r), AA_EBUSY);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(r.calls, 0, "settlement not known yet");
	cr_assert_eq(aa_op_fail(op, AA_EAPP, "real failure"), AA_EALREADY);
	cr_assert_eq(r.calls, 1);
	cr_assert_eq(r.s, AA_SETTLE_FAILED);
	cr_assert_eq(r.handler_calls_before, 1);
	cr_assert_eq(aa_op_error_msg(op)[0], '\0', "the op stays CANCELED");
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	cr_assert_eq(r.calls, 1);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_FAILED,
	             "the first absorbed finish is the settlement");
	aa_op_unref(op);
}

Test(op, explicit_settlement_wins_and_runs_handler_set_later)
{
	prov p = {0};
	seen d = {0};
	settle_rec r = {.done = &d};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_settle(op, AA_SETTLE_NEVER_STARTED), 0);
	cr_assert_eq(aa_op_settle(op, AA_SETTLE_UNKNOWN), AA_EALREADY);
	cr_assert_eq(aa_op_settle(op, AA_SETTLE_PENDING), AA_EINVAL);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_NEVER_STARTED);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &r), 0);
	cr_assert_eq(r.calls, 0,
	             "the completion handler is not set: settle waits");
	cr_assert_eq(aa_op_set_handler(op, on_done, &d), 0);
	cr_assert_eq(r.calls, 1, "both known: it runs inline, after it");
	cr_assert_eq(r.handler_calls_before, 1);
	cr_assert_eq(r.s, AA_SETTLE_NEVER_STARTED);
	aa_op_unref(op);
}

// The settlement is known before the completion handler is set (a late
// Complete already absorbed): the settle handler still runs after it.
Test(op, settle_handler_runs_after_a_completion_handler_set_late)
{
	prov p = {0};
	seen d = {0};
	settle_rec r = {.done = &d};
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &r), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(r.calls, 0, "no completion handler yet");
	cr_assert_eq(aa_op_set_handler(op, on_done, &d), 0);
	cr_assert_eq(d.calls, 1);
	cr_assert_eq(r.calls, 1);
	cr_assert_eq(r.handler_calls_before, 1);
	aa_op_unref(op);
}

// The same order across threads, forced with gates: the completion
// handler, set late on an op already CANCELED, runs inline on the
// setter's thread and is held there while the provider's late finish, on
// this thread, makes the settlement known. The settle handler does not
// run then: it runs once the completion handler has returned, on the
// thread that ran it.
typedef struct late_set {
	aa_op *op;
	gate in_handler;
	gate release;
	atomic_int handler_returned;
	atomic_int settle_calls;
	atomic_int settle_saw_returned;
	pthread_t settle_thread;
} late_set;

static void
late_handler(aa_op *op, void *arg)
{
	late_set *l = arg;
	gate_open(&l->in_handler);
	gate_wait(&l->release);
	atomic_store(&l->handler_returned, 1);
}

static void
late_settle(aa_op *op, void *arg)
{
	late_set *l = arg;
	atomic_store(&l->settle_saw_returned,
	             atomic_load(&l->handler_returned));
	l->settle_thread = pthread_self();
	atomic_fetch_add(&l->settle_calls, 1);
}

static void *
late_setter(void *arg)
{
	late_set *l = arg;
	cr_assert_eq(aa_op_set_handler(l->op, late_handler, l), 0);
	return NULL;
}

Test(op, settle_waits_for_a_late_completion_handler_on_another_thread)
{
	prov p = {0};
	static late_set l;
	l = (late_set){0};
	gate_init(&l.in_handler);
	gate_init(&l.release);
	aa_op *op = make_op(&p, AA_POLICY_IMMEDIATE, AA_CANCEL_ALL);
	l.op = op;
	cr_assert_eq(aa_op_set_settle_handler(op, late_settle, &l), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	pthread_t setter;
	cr_assert_eq(pthread_create(&setter, NULL, late_setter, &l), 0);
	gate_wait(&l.in_handler); // the completion handler runs, held
	// The real completion arrives meanwhile: absorbed, the settlement.
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(atomic_load(&l.settle_calls), 0,
	             "the settle handler ran before the completion handler "
	             "returned");
	gate_open(&l.release);
	cr_assert_eq(pthread_join(setter, NULL), 0);
	cr_assert_eq(atomic_load(&l.settle_calls), 1);
	cr_assert_eq(atomic_load(&l.settle_saw_returned), 1);
	cr_assert(pthread_equal(l.settle_thread, setter),
	          "it runs where the completion handler returned");
	aa_op_unref(op);
	gate_fini(&l.in_handler);
	gate_fini(&l.release);
}

Test(op, extra_memory_is_zeroed_and_ours)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = 100};
	aa_op *op;
	cr_assert_eq(aa_op_alloc(&op, &pv, NULL), 0);
	unsigned char *x = aa_op_extra(op);
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(x[i], 0);
	}
	memset(x, 0xab, 100);
	cr_assert_eq(aa_op_complete(op, x, 100, NULL), 0);
	const void *data;
	size_t len;
	cr_assert_eq(aa_op_result(op, &data, &len), 0);
	cr_assert_eq(data, x);
	aa_op_unref(op);
}

Test(op, invalid_arguments)
{
	aa_op *op;
	aa_op_provider pv = {.cancel_types = 8};
	cr_assert_eq(aa_op_alloc(&op, &pv, NULL), AA_EINVAL);
	cr_assert_eq(aa_op_alloc(NULL, &pv, NULL), AA_EINVAL);
	cr_assert_eq(aa_op_alloc(&op, NULL, NULL), AA_EINVAL);
	cr_assert_str_eq(aa_op_state_name(AA_CANCELED), "canceled");
	cr_assert_str_eq(aa_settlement_name(AA_SETTLE_NEVER_STARTED),
	                 "never_started");
	cr_assert_str_eq(aa_strerror(AA_ECANCELED), "operation cancelled");
	cr_assert_str_eq(aa_strerror(9999), "unknown error");
	for (int e = 1; e <= AA_ELAST; e++) {
		cr_assert_str_neq(aa_strerror(e), "unknown error",
		                  "code %d has no text", e);
	}
}

// ---- Allocators ----

Test(op, recycler_makes_steady_state_allocation_free)
{
	aa_recycler *r;
	cr_assert_eq(aa_recycler_alloc(&r, 0), 0);
	aa_assoc assoc = {.allocator = aa_recycler_allocator(r)};
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = 64};
	seen s = {0};
	// Warm up, then count.
	for (int round = 0; round < 2; round++) {
		uint64_t before = aa_heap_allocs();
		for (int i = 0; i < 10000; i++) {
			aa_op *op;
			cr_assert_eq(aa_op_alloc(&op, &pv, &assoc), 0);
			cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
			if (i % 2) {
				aa_op_cancel(op, AA_CANCEL_TERMINAL);
			} else {
				aa_op_complete(op, aa_op_extra(op), 8, NULL);
			}
			aa_op_unref(op);
		}
		if (round == 1) {
			cr_assert_eq(aa_heap_allocs() - before, 0,
			             "steady state must not allocate");
		}
	}
	cr_assert_eq(s.calls, 20000);
	aa_recycler_stats st;
	aa_recycler_stats_get(r, &st);
	cr_assert_eq(st.in_use, 0);
	cr_assert_eq(st.misses, 1);
	cr_assert_geq(st.hits, 19999);
	aa_recycler_free(r);
}

Test(op, recycler_size_classes_and_large_blocks)
{
	aa_recycler *r;
	cr_assert_eq(aa_recycler_alloc(&r, 2), 0);
	const aa_allocator *a = aa_recycler_allocator(r);
	void *big = a->alloc(a->ctx, 100000);
	void *b1 = a->alloc(a->ctx, 10);
	void *b2 = a->alloc(a->ctx, 64);
	void *b3 = a->alloc(a->ctx, 65);
	cr_assert(big && b1 && b2 && b3);
	memset(big, 1, 100000);
	a->free(a->ctx, big, 100000);
	a->free(a->ctx, b1, 10);
	a->free(a->ctx, b2, 64);
	a->free(a->ctx, b3, 65);
	aa_recycler_stats st;
	aa_recycler_stats_get(r, &st);
	cr_assert_eq(st.cached, 3, "large blocks bypass the lists");
	void *again = a->alloc(a->ctx, 40);
	cr_assert(again == b1 || again == b2, "same class reused");
	a->free(a->ctx, again, 40);
	aa_recycler_free(r);
}

// ---- Cancellation slot ----

Test(op, parent_signal_reaches_the_child_through_its_slot)
{
	aa_cancel_signal *sig;
	prov p = {0};
	seen s = {0};
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	aa_assoc assoc = {.slot = aa_cancel_signal_slot(sig)};
	aa_op_provider pv = {.cancel = prov_cancel,
	                     .arg = &p,
	                     .policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	aa_op *child;
	cr_assert_eq(aa_op_alloc(&child, &pv, &assoc), 0);
	cr_assert(aa_cancel_slot_is_connected(assoc.slot));
	cr_assert_eq(aa_op_set_handler(child, on_done, &s), 0);

	// A second op cannot take the same slot while the first holds it.
	aa_op *other;
	cr_assert_eq(aa_op_alloc(&other, &pv, &assoc), AA_EBUSY);

	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_PARTIAL), 0);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(p.last_type, AA_CANCEL_PARTIAL);
	cr_assert(!aa_cancel_slot_is_connected(assoc.slot),
	          "a final op leaves the slot");
	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_PARTIAL), AA_ENOENT);
	aa_op_unref(child);

	// The next child can use the slot; completing disconnects it too.
	cr_assert_eq(aa_op_alloc(&child, &pv, &assoc), 0);
	cr_assert_eq(aa_op_complete(child, NULL, 0, NULL), 0);
	cr_assert(!aa_cancel_slot_is_connected(assoc.slot));
	aa_op_unref(child);
	aa_cancel_signal_free(sig);
}

Test(op, slot_with_unsupported_type_does_nothing)
{
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	aa_assoc assoc = {.slot = aa_cancel_signal_slot(sig)};
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_TERMINAL};
	aa_op *child;
	cr_assert_eq(aa_op_alloc(&child, &pv, &assoc), 0);
	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_TOTAL), 0);
	cr_assert_eq(aa_op_status(child), AA_STARTED);
	cr_assert_eq(aa_cancel_signal_emit(sig, 0), AA_EINVAL);
	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_status(child), AA_CANCELED);
	aa_op_unref(child);
	aa_cancel_signal_free(sig);
}

// A composed operation: a parent op whose cancel function emits its
// signal, with its child connected to that signal's slot (the parent
// passes its executor and allocator on, and its own slot).
typedef struct composed {
	aa_cancel_signal *sig;
	aa_op *parent;
	aa_op *child;
} composed;

static int
parent_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	composed *c = arg;
	(void)op;
	return aa_cancel_signal_emit(c->sig, type);
}

static void
child_done(aa_op *child, void *arg)
{
	composed *c = arg;
	// The parent finishes as its child did.
	if (aa_op_status(child) == AA_CANCELED) {
		aa_op_canceled(c->parent);
	} else {
		aa_op_complete(c->parent, NULL, 0, NULL);
	}
}

Test(op, composed_operation_passes_cancellation_down)
{
	composed c = {0};
	seen s = {0};
	aa_recycler *r;
	cr_assert_eq(aa_recycler_alloc(&r, 0), 0);
	cr_assert_eq(aa_cancel_signal_alloc(&c.sig), 0);
	aa_assoc top = {.allocator = aa_recycler_allocator(r)};
	aa_op_provider ppv = {.cancel = parent_cancel,
	                      .arg = &c,
	                      .policy = AA_POLICY_COOPERATIVE,
	                      .cancel_types = AA_CANCEL_ALL};
	cr_assert_eq(aa_op_alloc(&c.parent, &ppv, &top), 0);
	aa_assoc child_assoc = *aa_op_assoc(c.parent);
	child_assoc.slot = aa_cancel_signal_slot(c.sig);
	aa_op_provider cpv = {.policy = AA_POLICY_IMMEDIATE,
	                      .cancel_types = AA_CANCEL_TERMINAL};
	cr_assert_eq(aa_op_alloc(&c.child, &cpv, &child_assoc), 0);
	cr_assert_eq(aa_op_assoc(c.child)->allocator, top.allocator,
	             "the child inherits the parent's allocator");
	cr_assert_eq(aa_op_set_handler(c.child, child_done, &c), 0);
	cr_assert_eq(aa_op_set_handler(c.parent, on_done, &s), 0);

	cr_assert_eq(aa_op_cancel(c.parent, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_status(c.child), AA_CANCELED);
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_op_cancel_detail(c.parent), 0, "emit reached it");
	aa_op_unref(c.child);
	aa_op_unref(c.parent);
	aa_cancel_signal_free(c.sig);
	aa_recycler_free(r);
}

// ---- The work item of an op with an executor ----

// An op associated with an executor gets the work item that posts its
// handler after the provider's bytes (op.c, "Memory"); an op without one
// does not have it. The provider's bytes must survive the posting, for
// every size of them.
typedef struct posted_check {
	gate ran;
	size_t extra;
	bool intact;
	pthread_t thread;
} posted_check;

static void
posted_check_handler(aa_op *op, void *arg)
{
	posted_check *pc = arg;
	const unsigned char *x = aa_op_extra(op);
	pc->intact = true;
	for (size_t i = 0; i < pc->extra; i++) {
		if (x[i] != (unsigned char)(i * 7 + 1)) {
			pc->intact = false;
		}
	}
	pc->thread = pthread_self();
	gate_open(&pc->ran);
}

Test(op, work_item_after_the_providers_bytes_with_an_executor)
{
	aa_executor *pool;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	aa_recycler *r;
	cr_assert_eq(aa_recycler_alloc(&r, 0), 0);
	enum { NSIZES = 7 };
	const size_t sizes[NSIZES] = {0, 1, 7, 8, 13, 104, 1000};
	static posted_check pcs[NSIZES][2]; // kept until the pool is joined
	for (size_t k = 0; k < NSIZES; k++) {
		for (int with_ex = 0; with_ex < 2; with_ex++) {
			posted_check *pc = &pcs[k][with_ex];
			*pc = (posted_check){.extra = sizes[k]};
			gate_init(&pc->ran);
			aa_assoc assoc = {.allocator =
			                      aa_recycler_allocator(r),
			                  .executor = with_ex ? pool : NULL};
			aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
			                     .cancel_types = AA_CANCEL_ALL,
			                     .extra = sizes[k]};
			aa_op *op;
			cr_assert_eq(aa_op_alloc(&op, &pv, &assoc), 0);
			unsigned char *x = aa_op_extra(op);
			for (size_t i = 0; i < sizes[k]; i++) {
				x[i] = (unsigned char)(i * 7 + 1);
			}
			cr_assert_eq(
			    aa_op_set_handler(op, posted_check_handler, pc),
			    0);
			cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
			gate_wait(&pc->ran);
			cr_assert(pc->intact, "extra %zu bytes overwritten",
			          sizes[k]);
			cr_assert_eq(
			    !pthread_equal(pc->thread, pthread_self()),
			    with_ex, "posted only with an executor");
			aa_op_unref(op);
		}
	}
	aa_executor_free(pool); // joins: no posted work is left running
	for (size_t k = 0; k < NSIZES; k++) {
		gate_fini(&pcs[k][0].ran);
		gate_fini(&pcs[k][1].ran);
	}
	aa_recycler_free(r);
}
