// aa-local-demo: the local cancellation stories of aa_op, in one process.
//
//   (a) an op that completes normally on a thread pool;
//   (b) fake cancel (AA_POLICY_IMMEDIATE): CANCELED at once, the handler
//       runs inside the cancel call, the work's late completion is absorbed
//       and shows up as the settlement;
//   (c) real cancel (AA_POLICY_COOPERATIVE): the provider is told and
//       finishes the op CANCELED itself;
//   (d) cancel on an op that is already final says AA_EALREADY;
//   (e) a parent's cancellation signal reaches a child op through its slot.
//
// It uses the library only through <aa/aa.h>, as any user would. The steps
// are ordered with gates (a mutex and a condition variable), never sleeps,
// so the output is the same on every run. Exits non-zero if any check
// fails or a library object is left alive.
#define _POSIX_C_SOURCE 200809L // clock_gettime

#include <aa/aa.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int failures;

static void
check(bool ok, const char *what)
{
	if (!ok) {
		printf("    FAILED: %s\n", what);
		failures++;
	}
}

// ---- Gates: a one-shot event that a thread opens and others wait for ----

struct gate {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	bool open;
};

static void
gate_init(struct gate *g)
{
	pthread_mutex_init(&g->mtx, NULL);
	pthread_cond_init(&g->cv, NULL);
	g->open = false;
}

static void
gate_fini(struct gate *g)
{
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mtx);
}

static void
gate_open(struct gate *g)
{
	pthread_mutex_lock(&g->mtx);
	g->open = true;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mtx);
}

static void
gate_wait(struct gate *g)
{
	pthread_mutex_lock(&g->mtx);
	while (!g->open) {
		pthread_cond_wait(&g->cv, &g->mtx);
	}
	pthread_mutex_unlock(&g->mtx);
}

// ---- The provider: a job that runs on the pool and finishes an op ----

#define RESULT_MAX 64

struct job {
	aa_op *op;                // the provider's own reference
	struct gate started;      // the work is running
	struct gate release;      // the work may finish now
	struct gate finished;     // the work finished the op, dropped its ref
	atomic_bool cancel_asked; // set by the cooperative cancel function
	int finish_rv;            // what the work's finish call returned
};

static void
job_work(void *arg)
{
	struct job *j = arg;

	gate_open(&j->started);
	gate_wait(&j->release);
	if (atomic_load(&j->cancel_asked)) {
		// A real cancel: the work stops at its next checkpoint.
		j->finish_rv = aa_op_canceled(j->op);
	} else {
		// The result lives in the op's provider memory: no release.
		char *res = aa_op_extra(j->op);
		snprintf(res, RESULT_MAX, "the answer is 42");
		j->finish_rv = aa_op_complete(j->op, res, strlen(res), NULL);
	}
	aa_op_unref(j->op);
	gate_open(&j->finished);
}

// job_cancel is the cooperative provider's cancel function: it only tells
// the work, which finishes the op when it next looks.
static int
job_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	struct job *j = arg;

	atomic_store(&j->cancel_asked, true);
	return 0;
}

static void
job_fini(struct job *j)
{
	gate_fini(&j->started);
	gate_fini(&j->release);
	gate_fini(&j->finished);
}

// job_start creates the op (one reference for the work, one returned in
// *opp for the caller) and runs the work on pool.
static int
job_start(struct job *j, aa_op **opp, aa_executor *pool,
          aa_cancel_policy policy, aa_op_cancel_fn cancel,
          const aa_assoc *assoc)
{
	aa_op_provider prov = {
	    .cancel = cancel,
	    .arg = j,
	    .policy = policy,
	    .cancel_types = AA_CANCEL_ALL,
	    .extra = RESULT_MAX,
	};
	int rv;

	gate_init(&j->started);
	gate_init(&j->release);
	gate_init(&j->finished);
	atomic_init(&j->cancel_asked, false);
	j->finish_rv = -1;
	if ((rv = aa_op_alloc(&j->op, &prov, assoc)) != 0) {
		job_fini(j);
		return rv;
	}
	aa_op_ref(j->op);
	if ((rv = aa_executor_post(pool, job_work, j)) != 0) {
		aa_op_fail(j->op, rv, "could not start the work");
		aa_op_unref(j->op);
		aa_op_unref(j->op);
		job_fini(j);
		return rv;
	}
	*opp = j->op;
	return 0;
}

// ---- The caller's handlers ----

static pthread_t main_thread;
static _Thread_local bool in_cancel; // this thread is inside aa_op_cancel

struct seen {
	struct gate ran;
	atomic_int calls;
	aa_state state;
	bool on_main; // ran on the main thread
	bool inside;  // ran inside an aa_op_cancel call of main's
};

static void
seen_init(struct seen *s)
{
	gate_init(&s->ran);
	atomic_init(&s->calls, 0);
}

static void
on_done(aa_op *op, void *arg)
{
	struct seen *s = arg;

	s->state = aa_op_status(op);
	s->on_main = pthread_equal(pthread_self(), main_thread);
	s->inside = s->on_main && in_cancel;
	atomic_fetch_add(&s->calls, 1);
	gate_open(&s->ran);
}

// code_name names the codes these stories meet.
static const char *
code_name(int rv)
{
	switch (rv) {
	case 0:
		return "0";
	case AA_EALREADY:
		return "AA_EALREADY";
	case AA_ENOENT:
		return "AA_ENOENT";
	case AA_ECANCELED:
		return "AA_ECANCELED";
	default:
		return aa_strerror(rv);
	}
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

// timed_cancel cancels op from main, marking the call for on_done, and
// returns the time spent inside aa_op_cancel in *us.
static int
timed_cancel(aa_op *op, double *us)
{
	double t0 = now_us();
	int rv;

	in_cancel = true;
	rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
	in_cancel = false;
	*us = now_us() - t0;
	return rv;
}

static const char *
where(const struct seen *s)
{
	if (s->inside) {
		return "inline, inside aa_op_cancel";
	}
	return s->on_main ? "on the main thread" : "on a pool thread";
}

// ---- The stories ----

// (a) returns the completed op, for (d).
static aa_op *
story_complete(aa_executor *pool)
{
	struct job j;
	struct seen done, settled;
	aa_op *op;
	const void *data;
	size_t len;

	printf("(a) an operation completes normally on a thread pool\n");
	seen_init(&done);
	seen_init(&settled);
	// No cancel function: (d) cancels this op after j is gone.
	if (job_start(&j, &op, pool, AA_POLICY_COOPERATIVE, NULL, NULL) != 0) {
		check(false, "start the job");
		return NULL;
	}
	aa_op_set_handler(op, on_done, &done);
	aa_op_set_settle_handler(op, on_done, &settled);
	printf("    started op %llu: %s\n", (unsigned long long)aa_op_id(op),
	       aa_op_state_name(aa_op_status(op)));
	gate_open(&j.release);
	gate_wait(&done.ran);
	gate_wait(&settled.ran);
	gate_wait(&j.finished);
	printf("    handler ran %s: %s\n", where(&done),
	       aa_op_state_name(done.state));
	check(done.state == AA_COMPLETED, "the op completed");
	check(aa_op_result(op, &data, &len) == 0, "its result can be read");
	printf("    result: \"%.*s\"; settlement: %s\n", (int)len,
	       (const char *)data, aa_settlement_name(aa_op_settlement(op)));
	check(aa_op_settlement(op) == AA_SETTLE_COMPLETED,
	      "settled completed");
	check(atomic_load(&done.calls) == 1, "the handler ran once");
	job_fini(&j);
	gate_fini(&done.ran);
	gate_fini(&settled.ran);
	return op;
}

// (b) fake cancel.
static void
story_fake_cancel(aa_executor *pool)
{
	struct job j;
	struct seen done, settled;
	aa_op *op;
	double us;
	int rv;

	printf(
	    "\n(b) fake cancel (AA_POLICY_IMMEDIATE) while the work runs\n");
	seen_init(&done);
	seen_init(&settled);
	if (job_start(&j, &op, pool, AA_POLICY_IMMEDIATE, NULL, NULL) != 0) {
		check(false, "start the job");
		return;
	}
	aa_op_set_handler(op, on_done, &done);
	aa_op_set_settle_handler(op, on_done, &settled);
	gate_wait(&j.started);
	printf("    the work is running; cancel...\n");
	rv = timed_cancel(op, &us);
	printf("    aa_op_cancel returned %s after %.1f µs; the op is %s\n",
	       code_name(rv), us, aa_op_state_name(aa_op_status(op)));
	check(rv == 0, "cancel returned 0");
	check(aa_op_status(op) == AA_CANCELED, "the op is CANCELED at once");
	check(atomic_load(&done.calls) == 1 && done.inside,
	      "the handler ran inside the cancel call");
	printf("    handler ran %s: %s\n", where(&done),
	       aa_op_state_name(done.state));
	check(aa_op_result(op, NULL, NULL) == AA_ECANCELED,
	      "its results fail with AA_ECANCELED");
	printf("    aa_op_result: %s; settlement so far: %s\n",
	       code_name(aa_op_result(op, NULL, NULL)),
	       aa_settlement_name(aa_op_settlement(op)));

	printf("    the work finishes anyway...\n");
	gate_open(&j.release);
	gate_wait(&j.finished);
	gate_wait(&settled.ran);
	printf("    its aa_op_complete returned %s; the op is still %s\n",
	       code_name(j.finish_rv), aa_op_state_name(aa_op_status(op)));
	check(j.finish_rv == AA_EALREADY, "the late completion is absorbed");
	printf(
	    "    settlement: %s (the work completed, the caller cancelled)\n",
	    aa_settlement_name(aa_op_settlement(op)));
	check(aa_op_settlement(op) == AA_SETTLE_COMPLETED,
	      "settled completed");
	check(atomic_load(&done.calls) == 1, "the handler ran once");

	// As in (d): a second cancel finds the op final.
	rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
	printf("    a second cancel: %s\n", code_name(rv));
	check(rv == AA_EALREADY, "a second cancel says AA_EALREADY");
	aa_op_unref(op);
	job_fini(&j);
	gate_fini(&done.ran);
	gate_fini(&settled.ran);
}

// (c) real cancel.
static void
story_real_cancel(aa_executor *pool)
{
	struct job j;
	struct seen done;
	aa_op *op;
	double us;
	int rv;

	printf("\n(c) real cancel (AA_POLICY_COOPERATIVE) while the work "
	       "runs\n");
	seen_init(&done);
	if (job_start(&j, &op, pool, AA_POLICY_COOPERATIVE, job_cancel,
	              NULL) != 0) {
		check(false, "start the job");
		return;
	}
	aa_op_set_handler(op, on_done, &done);
	gate_wait(&j.started);
	rv = timed_cancel(op, &us);
	printf("    aa_op_cancel returned %s after %.1f µs\n", code_name(rv),
	       us);
	printf("    the provider was told: %s; the op is still %s\n",
	       atomic_load(&j.cancel_asked) ? "yes" : "no",
	       aa_op_state_name(aa_op_status(op)));
	check(rv == 0, "cancel returned 0");
	check(atomic_load(&j.cancel_asked), "the provider was told");
	check(aa_op_status(op) == AA_STARTED, "the op is still STARTED");
	check(atomic_load(&done.calls) == 0, "the handler has not run yet");

	printf("    the work reaches its next checkpoint and stops...\n");
	gate_open(&j.release);
	gate_wait(&done.ran);
	gate_wait(&j.finished);
	printf("    handler ran %s: %s; settlement: %s\n", where(&done),
	       aa_op_state_name(done.state),
	       aa_settlement_name(aa_op_settlement(op)));
	check(done.state == AA_CANCELED, "the provider finished it CANCELED");
	check(j.finish_rv == 0, "aa_op_canceled returned 0");
	check(aa_op_settlement(op) == AA_SETTLE_CANCELED, "settled canceled");
	aa_op_unref(op);
	job_fini(&j);
	gate_fini(&done.ran);
}

// (d) cancel on an op that already completed.
static void
story_cancel_final(aa_op *op)
{
	int rv;

	printf("\n(d) cancel on an op that is already final\n");
	if (op == NULL) {
		check(false, "story (a) gave an op");
		return;
	}
	printf("    op %llu from (a) is %s\n",
	       (unsigned long long)aa_op_id(op),
	       aa_op_state_name(aa_op_status(op)));
	rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
	printf("    aa_op_cancel returned %s; the op is still %s\n",
	       code_name(rv), aa_op_state_name(aa_op_status(op)));
	check(rv == AA_EALREADY, "cancel says AA_EALREADY");
	check(aa_op_status(op) == AA_COMPLETED, "the op is still COMPLETED");
	aa_op_unref(op);
}

// (e) a parent's signal reaches a child op through the slot.
static void
story_parent_signal(aa_executor *pool)
{
	aa_cancel_signal *sig;
	aa_assoc assoc = {0};
	struct job j;
	struct seen done;
	aa_op *op;
	int rv;

	printf("\n(e) a parent's cancellation signal reaches a child op\n");
	if (aa_cancel_signal_alloc(&sig) != 0) {
		check(false, "allocate the signal");
		return;
	}
	seen_init(&done);
	assoc.slot = aa_cancel_signal_slot(sig);
	if (job_start(&j, &op, pool, AA_POLICY_IMMEDIATE, NULL, &assoc) != 0) {
		check(false, "start the child");
		aa_cancel_signal_free(sig);
		return;
	}
	aa_op_set_handler(op, on_done, &done);
	gate_wait(&j.started);
	printf("    the child op %llu is connected to the parent's slot: %s\n",
	       (unsigned long long)aa_op_id(op),
	       aa_cancel_slot_is_connected(assoc.slot) ? "yes" : "no");
	check(aa_cancel_slot_is_connected(assoc.slot), "the child connected");

	rv = aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL);
	printf("    the parent emits a terminal cancel: %s\n", code_name(rv));
	printf("    the child is %s; its handler ran %d time(s), %s\n",
	       aa_op_state_name(aa_op_status(op)), atomic_load(&done.calls),
	       done.on_main ? "inside the emit" : "elsewhere");
	check(rv == 0, "emit reached a handler");
	check(aa_op_status(op) == AA_CANCELED, "the child is CANCELED");
	check(atomic_load(&done.calls) == 1, "the child's handler ran");
	check(!aa_cancel_slot_is_connected(assoc.slot),
	      "the child left the slot");
	rv = aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL);
	printf("    the slot is empty again; a second emit: %s\n",
	       code_name(rv));
	check(rv == AA_ENOENT, "a second emit finds no handler");

	gate_open(&j.release);
	gate_wait(&j.finished);
	printf("    the child's work finishes later: aa_op_complete says %s\n",
	       code_name(j.finish_rv));
	check(j.finish_rv == AA_EALREADY, "the late completion is absorbed");
	aa_op_unref(op);
	aa_cancel_signal_free(sig);
	job_fini(&j);
	gate_fini(&done.ran);
}

int
main(void)
{
	aa_executor *pool;
	aa_op *completed;
	int rv;

	main_thread = pthread_self();
	if ((rv = aa_pool_alloc(&pool, 2)) != 0) {
		fprintf(stderr, "aa_pool_alloc: %s\n", aa_strerror(rv));
		return 1;
	}
	completed = story_complete(pool);
	story_fake_cancel(pool);
	story_real_cancel(pool);
	story_cancel_final(completed);
	story_parent_signal(pool);
	aa_executor_free(pool);

	printf("\nlibrary objects still alive: %lld\n",
	       (long long)aa_live_total());
	check(aa_live_total() == 0, "nothing is left alive");
	printf("%s\n", failures == 0 ? "aa-local-demo: all stories behaved"
	                             : "aa-local-demo: FAILED");
	return failures == 0 ? 0 : 1;
}
