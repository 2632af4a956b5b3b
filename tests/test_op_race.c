// aa-test-labels: concurrent
// test_op_race.c: every pair of racing events on an aa_op, forced into
// each order with gates and the library's checkpoints (never sleeps), and a
// stress run of cancel racing complete on two threads.
#include <sched.h>
#include <string.h>

#include "testutil.h"

// ---- A scripted provider and handler ----

typedef struct script {
	gate in_cancel_fn;   // opened when the provider's cancel fn runs
	gate release_cancel; // the cancel fn returns once this opens
	bool hold_cancel;
	gate in_handler; // opened when the handler starts
	gate release_handler;
	bool hold_handler;
	gate cancel_waiting;  // opened at checkpoint "op.cancel_wait"
	gate deliver_waiting; // opened at checkpoint "op.deliver_handoff"
	gate in_progress;
	gate release_progress;
	atomic_int handler_calls;
	atomic_int handler_returned;
	atomic_int progress_returned;
	atomic_int handler_saw_progress_returned;
	aa_state handler_state;
	pthread_t handler_thread;
	atomic_int cancel_fn_calls;
	aa_cancel_signal *emit_on_connect; // emitted at "op.slot_connected"
} script;

static script *cur; // the checkpoint function's view of the test

static void
script_init(script *s)
{
	memset(s, 0, sizeof(*s));
	gate_init(&s->in_cancel_fn);
	gate_init(&s->release_cancel);
	gate_init(&s->in_handler);
	gate_init(&s->release_handler);
	gate_init(&s->cancel_waiting);
	gate_init(&s->deliver_waiting);
	gate_init(&s->in_progress);
	gate_init(&s->release_progress);
	cur = s;
}

static void
on_checkpoint(void *arg, const char *name, void *subject)
{
	script *s = arg;
	(void)subject;
	if (strcmp(name, "op.cancel_wait") == 0) {
		gate_open(&s->cancel_waiting);
	} else if (strcmp(name, "op.deliver_handoff") == 0) {
		gate_open(&s->deliver_waiting);
	} else if (strcmp(name, "cancel.disconnect_wait") == 0) {
		gate_open(&s->cancel_waiting);
	} else if (strcmp(name, "op.slot_connected") == 0 &&
	           s->emit_on_connect != NULL) {
		aa_cancel_signal_emit(s->emit_on_connect, AA_CANCEL_TERMINAL);
	}
}

static void
suite_init(void)
{
	static script s;
	script_init(&s);
	aa_checkpoint_set(on_checkpoint, &s);
}

static void
suite_fini(void)
{
	aa_checkpoint_set(NULL, NULL);
	aa_test_check_live();
}

TestSuite(op_race, .init = suite_init, .fini = suite_fini, .timeout = 60);

static int
scripted_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	script *s = arg;
	(void)op;
	(void)type;
	atomic_fetch_add(&s->cancel_fn_calls, 1);
	gate_open(&s->in_cancel_fn);
	if (s->hold_cancel) {
		gate_wait(&s->release_cancel);
	}
	return 7;
}

static void
scripted_handler(aa_op *op, void *arg)
{
	script *s = arg;
	atomic_fetch_add(&s->handler_calls, 1);
	s->handler_state = aa_op_status(op);
	s->handler_thread = pthread_self();
	atomic_store(&s->handler_saw_progress_returned,
	             atomic_load(&s->progress_returned));
	gate_open(&s->in_handler);
	if (s->hold_handler) {
		gate_wait(&s->release_handler);
	}
	atomic_store(&s->handler_returned, 1);
}

static void
scripted_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	script *s = arg;
	(void)op;
	(void)data;
	(void)len;
	gate_open(&s->in_progress);
	gate_wait(&s->release_progress);
	atomic_store(&s->progress_returned, 1);
}

static aa_op *
scripted_op(script *s, aa_cancel_policy policy, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = scripted_cancel,
	                     .arg = s,
	                     .policy = policy,
	                     .cancel_types = AA_CANCEL_ALL};
	aa_op *op;
	cr_assert_eq(aa_op_alloc(&op, &pv, assoc), 0);
	return op;
}

// ---- Threads that run one call and record what it returned ----

typedef enum action {
	ACT_CANCEL,
	ACT_COMPLETE,
	ACT_FAIL,
	ACT_SET_HANDLER,
	ACT_PROGRESS,
	ACT_UNREF,
} action;

typedef struct call {
	thr t;
	aa_op *op;
	action act;
	script *s;
	int rv;
	int handler_returned_at_return; // seen when the call returned
	int handler_calls_at_return;
	pthread_t self;
} call;

static void *
call_main(void *arg)
{
	call *c = arg;
	c->self = pthread_self();
	switch (c->act) {
	case ACT_CANCEL:
		c->rv = aa_op_cancel(c->op, AA_CANCEL_TERMINAL);
		break;
	case ACT_COMPLETE:
		c->rv = aa_op_complete(c->op, NULL, 0, NULL);
		break;
	case ACT_FAIL:
		c->rv = aa_op_fail(c->op, AA_EAPP, "failed");
		break;
	case ACT_SET_HANDLER:
		c->rv = aa_op_set_handler(c->op, scripted_handler, c->s);
		break;
	case ACT_PROGRESS:
		c->rv = aa_op_progress(c->op, "p", 1);
		break;
	case ACT_UNREF:
		aa_op_unref(c->op);
		c->rv = 0;
		break;
	}
	c->handler_returned_at_return = atomic_load(&c->s->handler_returned);
	c->handler_calls_at_return = atomic_load(&c->s->handler_calls);
	return NULL;
}

static void
call_start(call *c, aa_op *op, action act, script *s)
{
	c->op = op;
	c->act = act;
	c->s = s;
	thr_start(&c->t, call_main, c);
}

// ---- cancel vs complete ----

Test(op_race, complete_wins_and_cancel_waits_for_its_running_handler)
{
	script *s = cur;
	s->hold_handler = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	call fin, can;
	call_start(&fin, op, ACT_COMPLETE, s);
	gate_wait(&s->in_handler); // the handler runs on the finisher
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->cancel_waiting); // cancel is blocked on the handler
	cr_assert_eq(atomic_load(&s->handler_returned), 0);
	gate_open(&s->release_handler);
	thr_join(&can.t);
	thr_join(&fin.t);
	cr_assert_eq(fin.rv, 0);
	cr_assert_eq(can.rv, AA_EALREADY);
	cr_assert_eq(can.handler_returned_at_return, 1,
	             "cancel returned while the handler still ran");
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	cr_assert_eq(s->handler_state, AA_COMPLETED);
	cr_assert_eq(atomic_load(&s->cancel_fn_calls), 0);
	aa_op_unref(op);
}

Test(op_race, cancel_wins_and_complete_is_absorbed)
{
	script *s = cur;
	s->hold_cancel = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	call can, fin;
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->in_cancel_fn); // state is CANCELED, handler pending
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	call_start(&fin, op, ACT_COMPLETE, s);
	thr_join(&fin.t);
	cr_assert_eq(fin.rv, AA_EALREADY);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	gate_open(&s->release_cancel);
	thr_join(&can.t);
	cr_assert_eq(can.rv, 0);
	cr_assert_eq(can.handler_calls_at_return, 1, "handler inline");
	cr_assert(pthread_equal(s->handler_thread, can.self));
	cr_assert_eq(s->handler_state, AA_CANCELED);
	cr_assert_eq(aa_op_cancel_detail(op), 7);
	aa_op_unref(op);
}

// ---- cancel vs fail ----

Test(op_race, cancel_wins_over_fail)
{
	script *s = cur;
	s->hold_cancel = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	call can, fin;
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->in_cancel_fn);
	call_start(&fin, op, ACT_FAIL, s);
	thr_join(&fin.t);
	cr_assert_eq(fin.rv, AA_EALREADY);
	gate_open(&s->release_cancel);
	thr_join(&can.t);
	cr_assert_eq(can.rv, 0);
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	cr_assert_eq(s->handler_state, AA_CANCELED);
	cr_assert_eq(aa_op_error(op), AA_ECANCELED);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_FAILED);
	aa_op_unref(op);
}

Test(op_race, fail_wins_and_cancel_waits)
{
	script *s = cur;
	s->hold_handler = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	call fin, can;
	call_start(&fin, op, ACT_FAIL, s);
	gate_wait(&s->in_handler);
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->cancel_waiting);
	gate_open(&s->release_handler);
	thr_join(&can.t);
	thr_join(&fin.t);
	cr_assert_eq(can.rv, AA_EALREADY);
	cr_assert_eq(can.handler_returned_at_return, 1);
	cr_assert_eq(s->handler_state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_EAPP);
	aa_op_unref(op);
}

// ---- cancel vs set-handler ----

Test(op_race, handler_set_while_cancel_is_in_progress)
{
	script *s = cur;
	s->hold_cancel = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	call can, set;
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->in_cancel_fn); // CANCELED, no handler yet
	call_start(&set, op, ACT_SET_HANDLER, s);
	thr_join(&set.t);
	cr_assert_eq(set.rv, 0);
	cr_assert_eq(set.handler_calls_at_return, 1,
	             "set on a final op runs the handler before returning");
	cr_assert(pthread_equal(s->handler_thread, set.self));
	gate_open(&s->release_cancel);
	thr_join(&can.t);
	cr_assert_eq(can.rv, 0);
	cr_assert_eq(atomic_load(&s->handler_calls), 1, "exactly once");
	aa_op_unref(op);
}

Test(op_race, handler_set_first_runs_inside_cancel_on_other_thread)
{
	script *s = cur;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	call set, can;
	call_start(&set, op, ACT_SET_HANDLER, s);
	thr_join(&set.t);
	cr_assert_eq(set.handler_calls_at_return, 0);
	call_start(&can, op, ACT_CANCEL, s);
	thr_join(&can.t);
	cr_assert_eq(can.handler_calls_at_return, 1);
	cr_assert(pthread_equal(s->handler_thread, can.self));
	aa_op_unref(op);
}

// ---- cancel vs cancel ----

Test(op_race, second_cancel_waits_for_the_first_ones_handler)
{
	script *s = cur;
	s->hold_cancel = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	call c1, c2;
	call_start(&c1, op, ACT_CANCEL, s);
	gate_wait(&s->in_cancel_fn);
	call_start(&c2, op, ACT_CANCEL, s);
	gate_wait(&s->cancel_waiting); // c2 waits for c1's delivery
	cr_assert_eq(atomic_load(&s->handler_calls), 0);
	gate_open(&s->release_cancel);
	thr_join(&c1.t);
	thr_join(&c2.t);
	cr_assert_eq(c1.rv, 0);
	cr_assert_eq(c2.rv, AA_EALREADY);
	cr_assert_eq(c2.handler_returned_at_return, 1);
	cr_assert_eq(atomic_load(&s->cancel_fn_calls), 1);
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	aa_op_unref(op);
}

Test(op_race, cooperative_concurrent_cancels_call_provider_once)
{
	script *s = cur;
	s->hold_cancel = true;
	aa_op *op = scripted_op(s, AA_POLICY_COOPERATIVE, NULL);
	call c1, c2;
	call_start(&c1, op, ACT_CANCEL, s);
	gate_wait(&s->in_cancel_fn);
	call_start(&c2, op, ACT_CANCEL, s);
	thr_join(&c2.t); // does not wait for the provider
	cr_assert_eq(c2.rv, 0);
	gate_open(&s->release_cancel);
	thr_join(&c1.t);
	cr_assert_eq(atomic_load(&s->cancel_fn_calls), 1);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_op_canceled(op), 0);
	aa_op_unref(op);
}

// ---- unref vs complete ----

Test(op_race, caller_releases_while_handler_runs)
{
	script *s = cur;
	s->hold_handler = true;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	aa_op_ref(op); // the caller's reference
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	call fin, rel;
	call_start(&fin, op, ACT_COMPLETE, s);
	gate_wait(&s->in_handler);
	aa_op_unref(op); // the provider lets go while the handler runs
	call_start(&rel, op, ACT_UNREF, s); // and so does the caller
	thr_join(&rel.t);
	cr_assert_eq(aa_live(AA_LIVE_OP), 1, "delivery holds a reference");
	gate_open(&s->release_handler);
	thr_join(&fin.t);
	cr_assert_eq(aa_live(AA_LIVE_OP), 0);
}

Test(op_race, provider_releases_before_caller_cancels)
{
	script *s = cur;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	aa_op_ref(op);
	call rel;
	call_start(&rel, op, ACT_UNREF, s); // provider's reference
	thr_join(&rel.t);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	aa_op_unref(op);
}

// ---- progress vs cancel ----

Test(op_race, cancel_waits_for_progress_callback_before_handler)
{
	script *s = cur;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(aa_op_set_progress_handler(op, scripted_progress, s), 0);
	call pr, can;
	call_start(&pr, op, ACT_PROGRESS, s);
	gate_wait(&s->in_progress);
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->deliver_waiting);
	cr_assert_eq(aa_op_status(op), AA_CANCELED, "CANCELED at once");
	cr_assert_eq(atomic_load(&s->handler_calls), 0);
	gate_open(&s->release_progress);
	thr_join(&can.t);
	thr_join(&pr.t);
	cr_assert_eq(can.rv, 0);
	cr_assert_eq(atomic_load(&s->handler_saw_progress_returned), 1,
	             "the handler is the last callback");
	cr_assert_eq(can.handler_returned_at_return, 1);
	aa_op_unref(op);
}

// ---- No cross-thread waits in delivery or progress ----
//
// Two ops whose callbacks call into each other from two threads used to
// wait on each other for ever. Delivery and progress now hand their work to
// the thread whose progress callback is running, so each of these completes
// (a hang here is a failure: the tests have a short timeout).

typedef struct fwd_op {
	aa_op *op;
	struct fwd_op *peer; // where this op's progress is forwarded
	gate entered;        // this op's progress callback started
	atomic_int calls;
	atomic_int last_hop;
	atomic_int forward_rv;
	atomic_int handler_calls;
	pthread_t handler_thread;
	atomic_int progress_returned;
	int handler_saw_progress_returned;
	gate *before_forward; // opened before this op forwards, or NULL
	bool cancel_self;     // instead of forwarding, cancel this op
} fwd_op;

// fwd_progress forwards a report (one byte: its hop count) to the peer op
// once both callbacks are running, so that each thread calls into an op
// whose progress callback runs on the other thread.
static void
fwd_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	fwd_op *f = arg;
	unsigned char hop = len > 0 ? *(const unsigned char *)data : 0;
	atomic_fetch_add(&f->calls, 1);
	atomic_store(&f->last_hop, hop);
	gate_open(&f->entered);
	gate_wait(&f->peer->entered);
	if (f->cancel_self) {
		atomic_store(&f->forward_rv,
		             aa_op_cancel(op, AA_CANCEL_TERMINAL));
		atomic_store(&f->progress_returned, 1);
		return;
	}
	if (f->before_forward != NULL) {
		gate_wait(f->before_forward);
	}
	if (hop == 0) {
		unsigned char next = 1;
		atomic_store(&f->forward_rv,
		             aa_op_progress(f->peer->op, &next, 1));
	}
	atomic_store(&f->progress_returned, 1);
}

static void
fwd_handler(aa_op *op, void *arg)
{
	fwd_op *f = arg;
	(void)op;
	atomic_fetch_add(&f->handler_calls, 1);
	f->handler_thread = pthread_self();
	f->handler_saw_progress_returned = atomic_load(&f->progress_returned);
}

static int
fwd_cancel_emits(aa_op *op, aa_cancel_type type, void *arg)
{
	(void)op;
	aa_cancel_signal_emit(arg, type);
	return 0;
}

static void
fwd_init(fwd_op *f, fwd_op *peer, aa_op_provider *pv, const aa_assoc *assoc)
{
	memset(f, 0, sizeof(*f));
	f->peer = peer;
	gate_init(&f->entered);
	atomic_store(&f->forward_rv, -1);
	cr_assert_eq(aa_op_alloc(&f->op, pv, assoc), 0);
	cr_assert_eq(aa_op_set_handler(f->op, fwd_handler, f), 0);
	cr_assert_eq(aa_op_set_progress_handler(f->op, fwd_progress, f), 0);
}

typedef struct reporter {
	thr t;
	aa_op *op;
	int rv;
} reporter;

static void *
reporter_main(void *arg)
{
	reporter *r = arg;
	unsigned char hop = 0;
	r->rv = aa_op_progress(r->op, &hop, 1);
	return NULL;
}

static void
reporter_start(reporter *r, aa_op *op)
{
	r->op = op;
	thr_start(&r->t, reporter_main, r);
}

Test(op_race, progress_forwarding_loop_between_parent_and_child_completes,
     .timeout = 20)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	fwd_op parent, child;
	fwd_init(&parent, &child, &pv, NULL);
	fwd_init(&child, &parent, &pv, NULL);
	reporter rp, rc;
	reporter_start(&rp, parent.op);
	reporter_start(&rc, child.op);
	thr_join(&rp.t);
	thr_join(&rc.t);
	cr_assert_eq(rp.rv, 0);
	cr_assert_eq(rc.rv, 0);
	// A forward that found the peer's callback running on the other
	// thread was handed over and run by that thread after its own report
	// (or, if that callback had returned already, ran at once).
	cr_assert_eq(atomic_load(&parent.forward_rv), 0);
	cr_assert_eq(atomic_load(&child.forward_rv), 0);
	cr_assert_eq(atomic_load(&parent.calls), 2);
	cr_assert_eq(atomic_load(&child.calls), 2);
	cr_assert_eq(atomic_load(&parent.last_hop), 1);
	cr_assert_eq(atomic_load(&child.last_hop), 1);
	cr_assert_eq(aa_op_complete(parent.op, NULL, 0, NULL), 0);
	cr_assert_eq(aa_op_complete(child.op, NULL, 0, NULL), 0);
	cr_assert_eq(atomic_load(&parent.handler_calls), 1);
	cr_assert_eq(atomic_load(&child.handler_calls), 1);
	aa_op_unref(parent.op);
	aa_op_unref(child.op);
}

// The cycle docs/op.md used to forbid: the parent's progress callback
// cancels the parent (its cancel function reaches the child through the
// child's slot) while the child's progress callback, on another thread,
// reports to the parent.
Test(op_race, parent_cancel_in_progress_while_child_reports_to_parent,
     .timeout = 20)
{
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	aa_op_provider ppv = {.cancel = fwd_cancel_emits,
	                      .arg = sig,
	                      .policy = AA_POLICY_IMMEDIATE,
	                      .cancel_types = AA_CANCEL_ALL};
	aa_op_provider cpv = {.policy = AA_POLICY_IMMEDIATE,
	                      .cancel_types = AA_CANCEL_ALL};
	aa_assoc cassoc = {.slot = aa_cancel_signal_slot(sig)};
	fwd_op parent, child;
	fwd_init(&parent, &child, &ppv, NULL);
	fwd_init(&child, &parent, &cpv, &cassoc);
	// The child reports to the parent once its own delivery has been
	// handed to it (checkpoint "op.deliver_handoff"): the parent is
	// cancelled by then, and its cancel reached the child.
	child.before_forward = &cur->deliver_waiting;
	parent.cancel_self = true;
	reporter rc;
	reporter_start(&rc, child.op);
	unsigned char hop = 0;
	cr_assert_eq(aa_op_progress(parent.op, &hop, 1), 0);
	cr_assert_eq(atomic_load(&parent.forward_rv), 0, "parent cancelled");
	thr_join(&rc.t);
	cr_assert_eq(rc.rv, 0);
	cr_assert_eq(aa_op_status(child.op), AA_CANCELED);
	cr_assert_eq(atomic_load(&child.forward_rv), AA_EALREADY,
	             "the parent was already cancelled");
	cr_assert_eq(atomic_load(&child.handler_calls), 1);
	cr_assert(pthread_equal(child.handler_thread, rc.t.t),
	          "the child's handler ran on its progress thread");
	cr_assert_eq(child.handler_saw_progress_returned, 1,
	             "after its progress callback returned");
	cr_assert_eq(atomic_load(&parent.handler_calls), 1);
	aa_op_unref(parent.op);
	aa_op_unref(child.op);
	aa_cancel_signal_free(sig);
}

Test(op_race, complete_during_progress_on_another_thread_returns_at_once,
     .timeout = 20)
{
	script *s = cur;
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, NULL);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(aa_op_set_progress_handler(op, scripted_progress, s), 0);
	call pr;
	call_start(&pr, op, ACT_PROGRESS, s);
	gate_wait(&s->in_progress);
	// The provider finishes while the callback is held: no wait.
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	cr_assert_eq(atomic_load(&s->handler_calls), 0, "handed over");
	cr_assert_eq(aa_op_progress(op, "q", 1), AA_EALREADY);
	gate_open(&s->release_progress);
	thr_join(&pr.t);
	cr_assert_eq(pr.rv, 0);
	cr_assert_eq(pr.handler_returned_at_return, 1,
	             "the progress thread delivered before returning");
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	cr_assert(pthread_equal(s->handler_thread, pr.self));
	cr_assert_eq(atomic_load(&s->handler_saw_progress_returned), 1);
	aa_op_unref(op);
}

typedef struct latest {
	gate in_first;
	gate release_first;
	atomic_int calls;
	char last[8];
} latest;

static void
latest_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	latest *l = arg;
	(void)op;
	if (atomic_fetch_add(&l->calls, 1) == 0) {
		gate_open(&l->in_first);
		gate_wait(&l->release_first);
	}
	memset(l->last, 0, sizeof(l->last));
	memcpy(l->last, data, len < sizeof(l->last) ? len : 0);
}

Test(op_race, progress_from_two_threads_is_handed_over_latest_wins,
     .timeout = 20)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	latest l = {0};
	gate_init(&l.in_first);
	gate_init(&l.release_first);
	aa_op *op;
	cr_assert_eq(aa_op_alloc(&op, &pv, NULL), 0);
	cr_assert_eq(aa_op_set_progress_handler(op, latest_progress, &l), 0);
	reporter r;
	reporter_start(&r, op);
	gate_wait(&l.in_first);
	cr_assert_eq(aa_op_progress(op, "b", 1), 0, "no wait");
	cr_assert_eq(aa_op_progress(op, "cd", 2), 0, "replaces b");
	cr_assert_eq(atomic_load(&l.calls), 1);
	gate_open(&l.release_first);
	thr_join(&r.t);
	cr_assert_eq(atomic_load(&l.calls), 2, "b was coalesced into cd");
	cr_assert_str_eq(l.last, "cd");
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	aa_op_unref(op);
}

// ---- handler with an executor ----

Test(op_race, handler_runs_on_its_executor_and_cancel_waits_for_it)
{
	script *s = cur;
	aa_executor *pool;
	s->hold_handler = true;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	aa_assoc assoc = {.executor = pool};
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, &assoc);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), 0);
	gate_wait(&s->in_handler);
	cr_assert(!pthread_equal(s->handler_thread, pthread_self()),
	          "posted to the pool");
	call can;
	call_start(&can, op, ACT_CANCEL, s);
	gate_wait(&s->cancel_waiting);
	gate_open(&s->release_handler);
	thr_join(&can.t);
	cr_assert_eq(can.rv, AA_EALREADY);
	cr_assert_eq(can.handler_returned_at_return, 1);
	aa_op_unref(op);
	aa_executor_free(pool);
}

// The settlement becomes known (an absorbed finish) on this thread while
// the completion handler is held on the pool's thread: the settle handler
// must not run before the completion handler has returned.
static atomic_int settle_saw_handler_returned = -1;

static void
settle_after(aa_op *op, void *arg)
{
	script *s = arg;
	atomic_store(&settle_saw_handler_returned,
	             atomic_load(&s->handler_returned));
}

Test(op_race, settle_handler_waits_for_a_running_completion_handler)
{
	script *s = cur;
	aa_executor *pool;
	s->hold_handler = true;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	aa_assoc assoc = {.executor = pool};
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, &assoc);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, settle_after, s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	gate_wait(&s->in_handler);
	// The late finish: the settlement is known from here on.
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(atomic_load(&settle_saw_handler_returned), -1,
	             "settle ran while the completion handler ran");
	gate_open(&s->release_handler);
	aa_executor_free(pool); // joins the handler (and the settle after it)
	cr_assert_eq(atomic_load(&settle_saw_handler_returned), 1);
	aa_op_unref(op);
}

Test(op_race, handler_on_closed_executor_still_runs_once)
{
	script *s = cur;
	aa_executor *pool;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	aa_executor_close(pool);
	aa_assoc assoc = {.executor = pool};
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, &assoc);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	cr_assert(pthread_equal(s->handler_thread, pthread_self()));
	aa_op_unref(op);
	aa_executor_free(pool);
}

// ---- slot emit vs complete ----

typedef struct emitter {
	thr t;
	aa_cancel_signal *sig;
	int rv;
} emitter;

static void *
emit_main(void *arg)
{
	emitter *e = arg;
	e->rv = aa_cancel_signal_emit(e->sig, AA_CANCEL_TERMINAL);
	return NULL;
}

Test(op_race, parent_emit_racing_completion_delivers_once)
{
	script *s = cur;
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	s->hold_cancel = true;
	aa_assoc assoc = {.slot = aa_cancel_signal_slot(sig)};
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, &assoc);
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	// The emit holds inside the provider's cancel fn: op is CANCELED and
	// the slot is still connected. A completion now is absorbed.
	emitter e = {.sig = sig};
	thr_start(&e.t, emit_main, &e);
	gate_wait(&s->in_cancel_fn);
	cr_assert(aa_cancel_slot_is_connected(assoc.slot));
	cr_assert_eq(aa_op_complete(op, NULL, 0, NULL), AA_EALREADY);
	gate_open(&s->release_cancel);
	thr_join(&e.t);
	cr_assert_eq(e.rv, 0);
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	cr_assert(!aa_cancel_slot_is_connected(assoc.slot));
	aa_op_unref(op);
	aa_cancel_signal_free(sig);
}

// ---- A parent's emit while the child is still being made ----

Test(op_race, emit_inside_alloc_cancels_and_disconnects)
{
	script *s = cur;
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	s->emit_on_connect = sig; // the parent cancels the moment it can
	aa_assoc assoc = {.slot = aa_cancel_signal_slot(sig)};
	aa_op *op = scripted_op(s, AA_POLICY_IMMEDIATE, &assoc);
	s->emit_on_connect = NULL;
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	cr_assert_eq(atomic_load(&s->cancel_fn_calls), 1);
	cr_assert(!aa_cancel_slot_is_connected(assoc.slot),
	          "a final op must leave the slot");
	cr_assert_eq(aa_op_set_handler(op, scripted_handler, s), 0);
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	aa_op_unref(op); // the fini's live check proves nothing leaked
	aa_cancel_signal_free(sig);
}

// ---- Signal: disconnect waits for an emit running elsewhere ----

static void
held_slot_handler(void *arg, aa_cancel_type type)
{
	script *s = arg;
	(void)type;
	atomic_fetch_add(&s->handler_calls, 1);
	gate_open(&s->in_handler);
	gate_wait(&s->release_handler);
	atomic_store(&s->handler_returned, 1);
}

typedef struct disconnecter {
	thr t;
	aa_cancel_slot *slot;
	script *s;
	int rv;
	int returned_seen;
} disconnecter;

static void *
disconnect_main(void *arg)
{
	disconnecter *d = arg;
	d->rv = aa_cancel_slot_disconnect(d->slot, held_slot_handler, d->s);
	d->returned_seen = atomic_load(&d->s->handler_returned);
	return NULL;
}

Test(op_race, slot_disconnect_waits_for_a_running_emit)
{
	script *s = cur;
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	aa_cancel_slot *slot = aa_cancel_signal_slot(sig);
	cr_assert_eq(aa_cancel_slot_connect(slot, held_slot_handler, s), 0);
	cr_assert_eq(aa_cancel_slot_connect(slot, held_slot_handler, s),
	             AA_EBUSY);
	emitter e = {.sig = sig};
	thr_start(&e.t, emit_main, &e);
	gate_wait(&s->in_handler); // the emit runs the handler
	disconnecter d = {.slot = slot, .s = s};
	thr_start(&d.t, disconnect_main, &d);
	gate_wait(&s->cancel_waiting); // disconnect waits for it
	cr_assert(!aa_cancel_slot_is_connected(slot), "no new emit starts");
	cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL),
	             AA_ENOENT);
	gate_open(&s->release_handler);
	thr_join(&d.t);
	thr_join(&e.t);
	cr_assert_eq(d.rv, 0);
	cr_assert_eq(d.returned_seen, 1,
	             "disconnect returned while the "
	             "handler still ran");
	cr_assert_eq(atomic_load(&s->handler_calls), 1);
	cr_assert_eq(aa_cancel_slot_disconnect(slot, held_slot_handler, s),
	             AA_ENOENT);
	aa_cancel_signal_free(sig);
}

// ---- Stress: cancel racing complete on two threads ----

#ifdef AA_TSAN
#define STRESS_ROUNDS 200000 // ThreadSanitizer runs far slower
#else
#define STRESS_ROUNDS 1000000
#endif

typedef struct spin_barrier {
	atomic_int arrived;
	atomic_int generation;
} spin_barrier;

static void
spin_barrier_wait(spin_barrier *b)
{
	int gen = atomic_load(&b->generation);
	if (atomic_fetch_add(&b->arrived, 1) == 1) {
		atomic_store(&b->arrived, 0);
		atomic_fetch_add(&b->generation, 1);
		return;
	}
	for (int spins = 0; atomic_load(&b->generation) == gen; spins++) {
		if (spins > 100) {
			sched_yield();
		}
	}
}

typedef struct stress {
	spin_barrier bar;
	aa_op *_Atomic op;
	atomic_int complete_rv;
	atomic_int handler_calls;
	atomic_int handler_state;
	int rounds;
} stress;

static void
stress_handler(aa_op *op, void *arg)
{
	stress *st = arg;
	atomic_fetch_add(&st->handler_calls, 1);
	atomic_store(&st->handler_state, aa_op_status(op));
}

static void *
stress_completer(void *arg)
{
	stress *st = arg;
	for (int i = 0; i < st->rounds; i++) {
		spin_barrier_wait(&st->bar); // op published
		atomic_store(
		    &st->complete_rv,
		    aa_op_complete(atomic_load(&st->op), NULL, 0, NULL));
		spin_barrier_wait(&st->bar); // both done
	}
	return NULL;
}

Test(op_race, stress_cancel_versus_complete, .timeout = 300)
{
	aa_recycler *r;
	stress st = {.rounds = STRESS_ROUNDS};
	cr_assert_eq(aa_recycler_alloc(&r, 0), 0);
	aa_assoc assoc = {.allocator = aa_recycler_allocator(r)};
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int cancel_won = 0, complete_won = 0;
	thr t;
	thr_start(&t, stress_completer, &st);
	for (int i = 0; i < st.rounds; i++) {
		aa_op *op;
		cr_assert_eq(aa_op_alloc(&op, &pv, &assoc), 0);
		cr_assert_eq(aa_op_set_handler(op, stress_handler, &st), 0);
		atomic_store(&st.handler_calls, 0);
		atomic_store(&st.op, op);
		spin_barrier_wait(&st.bar);
		int crv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
		spin_barrier_wait(&st.bar);
		int frv = atomic_load(&st.complete_rv);
		if (atomic_load(&st.handler_calls) != 1) {
			cr_assert_fail("round %d: handler ran %d times", i,
			               atomic_load(&st.handler_calls));
		}
		aa_state state = aa_op_status(op);
		if (crv == 0) {
			cancel_won++;
			if (frv != AA_EALREADY || state != AA_CANCELED ||
			    aa_op_settlement(op) != AA_SETTLE_COMPLETED) {
				cr_assert_fail(
				    "round %d: cancel won but complete "
				    "said %d, state %d",
				    i, frv, state);
			}
		} else {
			complete_won++;
			if (crv != AA_EALREADY || frv != 0 ||
			    state != AA_COMPLETED) {
				cr_assert_fail(
				    "round %d: cancel %d complete %d "
				    "state %d",
				    i, crv, frv, state);
			}
		}
		if (atomic_load(&st.handler_state) != (int)state) {
			cr_assert_fail("round %d: handler saw %d, op is %d", i,
			               atomic_load(&st.handler_state), state);
		}
		aa_op_unref(op);
	}
	thr_join(&t);
	test_note("cancel won %d, complete won %d of %d", cancel_won,
	          complete_won, st.rounds);
	cr_assert_eq(cancel_won + complete_won, st.rounds);
	aa_recycler_free(r);
}

// ---- Many cancels waiting at once on the shared wait stripes ----

// Ops keep no condition variable of their own: a cancel that waits for a
// running handler waits on one of 64 stripes shared by every op
// (op_wait.c, "Where a cancel waits"). With more ops than stripes, several ops
// share each stripe; every wait must still end when, and only when, its own
// op's handler returned, with no wake-up lost among the others.
#define MANY_OPS   96 // more than the 64 stripes: some ops share one
#define MANY_EXTRA 3  // cancels waiting on op 0 besides its first

typedef struct many_op {
	aa_op *op;
	thr fin;
	int fin_rv;
	gate in_handler;
	gate release;
	bool released;
	atomic_int returned; // its handler returned
} many_op;

typedef struct many_cancel {
	thr t;
	many_op *m;
	gate waiting; // it reached "op.cancel_wait"
	int rv;
	int handler_returned_at_return;
	atomic_int done;
	bool joined;
} many_cancel;

static _Thread_local many_cancel *many_self;

static void
many_checkpoint(void *arg, const char *name, void *subject)
{
	(void)arg;
	(void)subject;
	if (strcmp(name, "op.cancel_wait") == 0 && many_self != NULL) {
		gate_open(&many_self->waiting);
	}
}

static void
many_handler(aa_op *op, void *arg)
{
	many_op *m = arg;
	(void)op;
	gate_open(&m->in_handler);
	gate_wait(&m->release);
	atomic_store(&m->returned, 1);
}

static void *
many_complete(void *arg)
{
	many_op *m = arg;
	m->fin_rv = aa_op_complete(m->op, NULL, 0, NULL);
	return NULL;
}

static void *
many_cancel_main(void *arg)
{
	many_cancel *c = arg;
	many_self = c;
	c->rv = aa_op_cancel(c->m->op, AA_CANCEL_TERMINAL);
	c->handler_returned_at_return = atomic_load(&c->m->returned);
	atomic_store(&c->done, 1);
	return NULL;
}

static void
many_join_released(many_cancel *cs, int n)
{
	for (int j = 0; j < n; j++) {
		if (cs[j].joined || !cs[j].m->released) {
			continue;
		}
		thr_join(&cs[j].t);
		cs[j].joined = true;
		cr_assert_eq(cs[j].rv, AA_EALREADY);
		cr_assert_eq(cs[j].handler_returned_at_return, 1,
		             "cancel %d returned while its handler ran", j);
	}
}

Test(op_race, many_cancels_wait_on_shared_stripes_at_once, .timeout = 120)
{
	static many_op ops[MANY_OPS];
	static many_cancel cs[MANY_OPS + MANY_EXTRA];
	const int ncs = MANY_OPS + MANY_EXTRA;
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	aa_checkpoint_set(many_checkpoint, NULL);

	// 1. Each op completes on a thread of its own, whose handler holds.
	for (int i = 0; i < MANY_OPS; i++) {
		many_op *m = &ops[i];
		memset(m, 0, sizeof(*m));
		gate_init(&m->in_handler);
		gate_init(&m->release);
		cr_assert_eq(aa_op_alloc(&m->op, &pv, NULL), 0);
		cr_assert_eq(aa_op_set_handler(m->op, many_handler, m), 0);
		thr_start(&m->fin, many_complete, m);
		gate_wait(&m->in_handler);
	}
	// 2. One cancel per op, and more on op 0: each waits for its op's
	// handler, all of them at once.
	for (int j = 0; j < ncs; j++) {
		many_cancel *c = &cs[j];
		memset(c, 0, sizeof(*c));
		c->m = &ops[j < MANY_OPS ? j : 0];
		gate_init(&c->waiting);
		thr_start(&c->t, many_cancel_main, c);
		gate_wait(&c->waiting);
	}
	// 3. Release half the handlers one at a time, in a scrambled order:
	// each release ends the cancels of its op and no other.
	for (int k = 0; k < MANY_OPS / 2; k++) {
		many_op *m = &ops[(k * 37) % MANY_OPS];
		m->released = true;
		gate_open(&m->release);
		many_join_released(cs, ncs);
		for (int j = 0; j < ncs; j++) {
			if (!cs[j].m->released) {
				cr_assert_eq(atomic_load(&cs[j].done), 0,
				             "cancel %d returned early", j);
			}
		}
	}
	// 4. Release the rest together: wake-ups of ops sharing a stripe
	// cross each other.
	for (int i = 0; i < MANY_OPS; i++) {
		if (!ops[i].released) {
			ops[i].released = true;
			gate_open(&ops[i].release);
		}
	}
	many_join_released(cs, ncs);
	for (int i = 0; i < MANY_OPS; i++) {
		thr_join(&ops[i].fin);
		cr_assert_eq(ops[i].fin_rv, 0);
		cr_assert_eq(aa_op_status(ops[i].op), AA_COMPLETED);
		aa_op_unref(ops[i].op);
		gate_fini(&ops[i].in_handler);
		gate_fini(&ops[i].release);
	}
	for (int j = 0; j < ncs; j++) {
		gate_fini(&cs[j].waiting);
	}
	aa_checkpoint_set(on_checkpoint, cur);
}
