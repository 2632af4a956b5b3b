// aa-test-labels: concurrent
//
// test_executor_loop.c: the executors that run on the application's own
// loop. The pollable executor: its eventfd is readable exactly while work
// is queued (checked after every step and under concurrent submits), its
// work and the handlers of ops bound to it run on the loop's thread only,
// close with work queued. The user-defined executor: one post per item,
// submission order whatever order the application runs its calls in,
// abort, close and free with calls outstanding.
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "testutil.h"

TestSuite(executor_poll, .timeout = 60, .fini = aa_test_check_live);
TestSuite(executor_user, .timeout = 60, .fini = aa_test_check_live);

static bool
readable(aa_executor *ex)
{
	int fd;
	struct pollfd p;
	cr_assert_eq(aa_poll_executor_fd(ex, &fd), 0);
	p.fd = fd;
	p.events = POLLIN;
	p.revents = 0;
	cr_assert_geq(poll(&p, 1, 0), 0);
	return (p.revents & POLLIN) != 0;
}

typedef struct rec {
	aa_work w;
	int id;
	int *log; // ids in run order
	int *nlog;
	atomic_int done_rv;
	atomic_int done_runs;
	pthread_t thread;
	aa_executor *resubmit_to; // fn queues `next` there
	struct rec *next;
} rec;

static void
rec_fn(void *arg)
{
	rec *r = arg;
	r->thread = pthread_self();
	if (r->log != NULL) {
		r->log[(*r->nlog)++] = r->id;
	}
	if (r->resubmit_to != NULL) {
		cr_assert_eq(aa_work_submit(&r->next->w, r->resubmit_to), 0);
	}
}

static void
rec_done(void *arg, int rv)
{
	rec *r = arg;
	atomic_store(&r->done_rv, rv);
	atomic_fetch_add(&r->done_runs, 1);
}

static void
rec_init(rec *r, int id, int *log, int *nlog)
{
	*r = (rec){.id = id, .log = log, .nlog = nlog};
	aa_work_init(&r->w, rec_fn, rec_done, r);
	atomic_store(&r->done_rv, -1);
}

Test(executor_poll, readable_exactly_while_work_is_queued)
{
	aa_executor *ex;
	rec r[3];
	int log[8];
	int n = 0;
	unsigned ran;
	cr_assert_eq(aa_poll_executor_alloc(&ex), 0);
	for (int i = 0; i < 3; i++) {
		rec_init(&r[i], i, log, &n);
	}
	cr_assert_not(readable(ex));
	cr_assert_eq(aa_work_submit(&r[0].w, ex), 0);
	cr_assert(readable(ex));
	cr_assert_eq(n, 0, "work runs only in drain");
	cr_assert_eq(aa_work_submit(&r[1].w, ex), 0);
	cr_assert_eq(aa_work_submit(&r[2].w, ex), 0);
	cr_assert(readable(ex));
	cr_assert_eq(aa_poll_executor_drain(ex, 1, &ran), 0);
	cr_assert_eq(ran, 1);
	cr_assert(readable(ex), "two items still queued");
	// Aborting queued items empties the queue: the descriptor follows.
	cr_assert_eq(aa_work_abort(&r[2].w), 0);
	cr_assert(readable(ex));
	cr_assert_eq(aa_work_abort(&r[1].w), 0);
	cr_assert_not(readable(ex));
	cr_assert_eq(aa_poll_executor_drain(ex, 0, &ran), 0);
	cr_assert_eq(ran, 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(log[0], 0);
	cr_assert(pthread_equal(r[0].thread, pthread_self()));
	cr_assert_eq(atomic_load(&r[0].done_rv), 0);
	cr_assert_eq(atomic_load(&r[1].done_runs), 0);
	aa_executor_free(ex);
}

Test(executor_poll, drain_runs_what_was_queued_then_chained_work_waits)
{
	aa_executor *ex;
	rec a;
	rec b;
	int log[4];
	int n = 0;
	unsigned ran;
	cr_assert_eq(aa_poll_executor_alloc(&ex), 0);
	rec_init(&a, 1, log, &n);
	rec_init(&b, 2, log, &n);
	a.resubmit_to = ex;
	a.next = &b;
	cr_assert_eq(aa_work_submit(&a.w, ex), 0);
	cr_assert_eq(aa_poll_executor_drain(ex, 0, &ran), 0);
	cr_assert_eq(ran, 1, "work queued by work waits for the next turn");
	cr_assert(readable(ex));
	cr_assert_eq(aa_poll_executor_drain(ex, 0, &ran), 0);
	cr_assert_eq(ran, 1);
	cr_assert_not(readable(ex));
	cr_assert_eq(n, 2);
	cr_assert_eq(log[1], 2);
	aa_executor_free(ex);
}

static void
drain_from_inside(void *arg)
{
	unsigned ran = 7;
	cr_assert_eq(aa_poll_executor_drain(arg, 0, &ran), AA_ESTATE);
	cr_assert_eq(ran, 0);
}

Test(executor_poll, bad_calls_get_clear_errors)
{
	aa_executor *ex;
	aa_executor *pool;
	int fd;
	unsigned ran;
	cr_assert_eq(aa_poll_executor_alloc(&ex), 0);
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	cr_assert_eq(aa_poll_executor_fd(pool, &fd), AA_EINVAL);
	cr_assert_eq(aa_poll_executor_drain(pool, 0, &ran), AA_EINVAL);
	cr_assert_eq(aa_poll_executor_drain(NULL, 0, NULL), AA_EINVAL);
	cr_assert_eq(aa_poll_executor_alloc(NULL), AA_EINVAL);
	cr_assert_eq(aa_executor_post(ex, drain_from_inside, ex), 0);
	cr_assert_eq(aa_poll_executor_drain(ex, 0, &ran), 0);
	cr_assert_eq(ran, 1);
	aa_executor_free(pool);
	aa_executor_free(ex);
}

Test(executor_poll, close_with_work_queued_drops_it)
{
	aa_executor *ex;
	rec r[2];
	int log[4];
	int n = 0;
	unsigned ran = 9;
	cr_assert_eq(aa_poll_executor_alloc(&ex), 0);
	for (int i = 0; i < 2; i++) {
		rec_init(&r[i], i, log, &n);
		cr_assert_eq(aa_work_submit(&r[i].w, ex), 0);
	}
	cr_assert(readable(ex));
	aa_executor_close(ex);
	cr_assert_not(readable(ex), "nothing is queued after close");
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(atomic_load(&r[i].done_rv), AA_ECLOSED);
		cr_assert_eq(atomic_load(&r[i].done_runs), 1);
	}
	cr_assert_eq(n, 0, "no work function ran");
	cr_assert_eq(aa_poll_executor_drain(ex, 0, &ran), AA_ECLOSED);
	cr_assert_eq(ran, 0);
	cr_assert_eq(aa_work_submit(&r[0].w, ex), AA_ECLOSED);
	aa_executor_free(ex);
}

// ---- An epoll loop on its own thread; ops completed from a pool ----

enum { LOOP_OPS = 2000 };

typedef struct loop {
	aa_executor *ex;
	int epfd;
	pthread_t thread;
	atomic_int handled;
	atomic_int off_thread; // handlers seen on another thread
	atomic_int empty_wakeups;
	gate ready;
	atomic_bool stop;
} loop;

static void *
loop_main(void *arg)
{
	loop *l = arg;
	l->thread = pthread_self();
	gate_open(&l->ready);
	while (!atomic_load(&l->stop) || atomic_load(&l->handled) < LOOP_OPS) {
		struct epoll_event ev;
		unsigned ran;
		int n = epoll_wait(l->epfd, &ev, 1, 100);
		cr_assert_geq(n, 0);
		if (n == 0) {
			continue;
		}
		cr_assert_eq(aa_poll_executor_drain(l->ex, 0, &ran), 0);
		// Only this thread drains: readable means work was queued.
		if (ran == 0) {
			atomic_fetch_add(&l->empty_wakeups, 1);
		}
	}
	return NULL;
}

static void
loop_handler(aa_op *op, void *arg)
{
	loop *l = arg;
	if (!pthread_equal(pthread_self(), l->thread)) {
		atomic_fetch_add(&l->off_thread, 1);
	}
	atomic_fetch_add(&l->handled, 1);
	aa_op_unref(op);
}

typedef struct finisher {
	aa_op **ops;
	int from;
	int to;
} finisher;

static void *
finish_ops(void *arg)
{
	finisher *f = arg;
	for (int i = f->from; i < f->to; i++) {
		if (i % 2 == 0) {
			(void)aa_op_complete(f->ops[i], NULL, 0, NULL);
		} else {
			(void)aa_op_cancel(f->ops[i], AA_CANCEL_TERMINAL);
		}
		aa_op_unref(f->ops[i]);
	}
	return NULL;
}

Test(executor_poll, handlers_run_on_the_loop_thread_only)
{
	loop l = {0};
	thr t;
	thr fin[2];
	finisher f[2];
	aa_op **ops = calloc(LOOP_OPS, sizeof(*ops));
	aa_op_provider prov = {.cancel_types = AA_CANCEL_ALL};
	aa_assoc assoc = {0};
	struct epoll_event ev = {.events = EPOLLIN};
	int fd;
	cr_assert_eq(aa_poll_executor_alloc(&l.ex), 0);
	cr_assert_eq(aa_poll_executor_fd(l.ex, &fd), 0);
	l.epfd = epoll_create1(EPOLL_CLOEXEC);
	cr_assert_geq(l.epfd, 0);
	cr_assert_eq(epoll_ctl(l.epfd, EPOLL_CTL_ADD, fd, &ev), 0);
	gate_init(&l.ready);
	thr_start(&t, loop_main, &l);
	gate_wait(&l.ready);
	assoc.executor = l.ex;
	for (int i = 0; i < LOOP_OPS; i++) {
		cr_assert_eq(aa_op_alloc(&ops[i], &prov, &assoc), 0);
		aa_op_ref(ops[i]); // the handler's
		cr_assert_eq(aa_op_set_handler(ops[i], loop_handler, &l), 0);
	}
	// Completions and cancels from two other threads at once.
	for (int k = 0; k < 2; k++) {
		f[k] =
		    (finisher){ops, k * LOOP_OPS / 2, (k + 1) * LOOP_OPS / 2};
		thr_start(&fin[k], finish_ops, &f[k]);
	}
	for (int k = 0; k < 2; k++) {
		thr_join(&fin[k]);
	}
	atomic_store(&l.stop, true);
	thr_join(&t);
	cr_assert_eq(atomic_load(&l.handled), LOOP_OPS);
	cr_assert_eq(atomic_load(&l.off_thread), 0);
	cr_assert_eq(atomic_load(&l.empty_wakeups), 0);
	cr_assert_not(readable(l.ex));
	close(l.epfd);
	gate_fini(&l.ready);
	aa_executor_free(l.ex);
	free(ops);
}

// ---- User-defined executor: the application keeps the run calls ----

typedef struct app_queue {
	aa_work_fn run[16];
	void *arg[16];
	int n;
	bool run_inline;
	pthread_t post_thread;
} app_queue;

static void
app_post(void *ctx, aa_work_fn run, void *arg)
{
	app_queue *q = ctx;
	q->post_thread = pthread_self();
	if (q->run_inline) {
		run(arg);
		return;
	}
	cr_assert_lt(q->n, 16);
	q->run[q->n] = run;
	q->arg[q->n] = arg;
	q->n++;
}

Test(executor_user, one_post_per_item_and_submission_order)
{
	app_queue q = {0};
	aa_executor *ex;
	rec r[3];
	int log[4];
	int n = 0;
	cr_assert_eq(aa_user_executor_alloc(&ex, app_post, &q), 0);
	for (int i = 0; i < 3; i++) {
		rec_init(&r[i], i, log, &n);
		cr_assert_eq(aa_work_submit(&r[i].w, ex), 0);
	}
	cr_assert_eq(q.n, 3);
	cr_assert_eq(n, 0, "nothing runs until the application says");
	// The application runs its calls in reverse: items stay in order.
	for (int i = 2; i >= 0; i--) {
		q.run[i](q.arg[i]);
	}
	cr_assert_eq(n, 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(log[i], i);
		cr_assert_eq(atomic_load(&r[i].done_rv), 0);
	}
	aa_executor_free(ex);
}

Test(executor_user, aborted_item_leaves_an_empty_call)
{
	app_queue q = {0};
	aa_executor *ex;
	rec r[2];
	int log[4];
	int n = 0;
	cr_assert_eq(aa_user_executor_alloc(&ex, app_post, &q), 0);
	for (int i = 0; i < 2; i++) {
		rec_init(&r[i], i, log, &n);
		cr_assert_eq(aa_work_submit(&r[i].w, ex), 0);
	}
	cr_assert_eq(aa_work_abort(&r[0].w), 0);
	q.run[0](q.arg[0]); // runs item 1, the head now
	q.run[1](q.arg[1]); // nothing left
	cr_assert_eq(n, 1);
	cr_assert_eq(log[0], 1);
	cr_assert_eq(atomic_load(&r[0].done_runs), 0);
	aa_executor_free(ex);
}

Test(executor_user, free_with_calls_outstanding_waits_for_the_last_call)
{
	app_queue q = {0};
	aa_executor *ex;
	rec r[2];
	int log[4];
	int n = 0;
	cr_assert_eq(aa_user_executor_alloc(&ex, app_post, &q), 0);
	for (int i = 0; i < 2; i++) {
		rec_init(&r[i], i, log, &n);
		cr_assert_eq(aa_work_submit(&r[i].w, ex), 0);
	}
	aa_executor_free(ex); // closes: queued items dropped
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(atomic_load(&r[i].done_rv), AA_ECLOSED);
	}
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 1, "two calls outstanding");
	q.run[0](q.arg[0]);
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 1);
	q.run[1](q.arg[1]); // the last call frees
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 0);
	cr_assert_eq(n, 0);
}

Test(executor_user, post_may_run_inline)
{
	app_queue q = {.run_inline = true};
	aa_executor *ex;
	rec r;
	int log[2];
	int n = 0;
	cr_assert_eq(aa_user_executor_alloc(&ex, app_post, &q), 0);
	rec_init(&r, 5, log, &n);
	cr_assert_eq(aa_work_submit(&r.w, ex), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(atomic_load(&r.done_rv), 0);
	cr_assert_eq(aa_user_executor_alloc(NULL, app_post, &q), AA_EINVAL);
	cr_assert_eq(aa_user_executor_alloc(&ex, NULL, &q), AA_EINVAL);
	aa_executor_free(ex);
}
