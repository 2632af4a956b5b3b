// aa-test-labels: concurrent
//
// test_executor.c: the inline executor, the thread pool and the strand:
// order, chaining, the three cases of abort, wait, and the lifecycle
// (close, stop, free, also from inside the executor's own work). Races are
// forced with gates; where a test must know that a thread is blocked inside
// the library it reads the thread's state from /proc, never sleeps.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "testutil.h"

TestSuite(executor_inline, .timeout = 30, .fini = aa_test_check_live);
TestSuite(executor_pool, .timeout = 30, .fini = aa_test_check_live);
TestSuite(executor_strand, .timeout = 30, .fini = aa_test_check_live);
TestSuite(executor_abort, .timeout = 30, .fini = aa_test_check_live);
TestSuite(executor_lifecycle, .timeout = 30, .fini = aa_test_check_live);

// ---- A work item that counts, records and can be held at gates ----

typedef struct item {
	aa_work w;
	atomic_int fn_runs;
	atomic_int done_runs;
	atomic_int done_rv;
	atomic_bool fn_finished;
	atomic_bool done_finished;
	gate *fn_reached; // opened when fn starts
	gate *fn_release; // fn waits for it
	gate *done_reached;
	gate *done_release;
	pthread_t fn_thread;
	bool fn_in_thread; // in_thread(in_ex) inside fn
	aa_executor *in_ex;
	void (*fn_hook)(struct item *);   // extra step inside fn
	void (*done_hook)(struct item *); // extra step inside done
	atomic_int hook_rv;
	atomic_int hook_rv2;
} item;

static void
item_fn(void *arg)
{
	item *it = arg;
	atomic_fetch_add(&it->fn_runs, 1);
	it->fn_thread = pthread_self();
	if (it->in_ex != NULL) {
		it->fn_in_thread = aa_executor_in_thread(it->in_ex);
	}
	if (it->fn_reached != NULL) {
		gate_open(it->fn_reached);
	}
	if (it->fn_release != NULL) {
		gate_wait(it->fn_release);
	}
	if (it->fn_hook != NULL) {
		it->fn_hook(it);
	}
	atomic_store(&it->fn_finished, true);
}

static void
item_done(void *arg, int rv)
{
	item *it = arg;
	atomic_fetch_add(&it->done_runs, 1);
	atomic_store(&it->done_rv, rv);
	if (it->done_reached != NULL) {
		gate_open(it->done_reached);
	}
	if (it->done_release != NULL) {
		gate_wait(it->done_release);
	}
	if (it->done_hook != NULL) {
		it->done_hook(it);
	}
	atomic_store(&it->done_finished, true);
}

static void
item_init(item *it)
{
	memset(it, 0, sizeof(*it));
	atomic_init(&it->done_rv, -1);
	aa_work_init(&it->w, item_fn, item_done, it);
}

// A pool item that holds the pool's thread until released.
typedef struct blocker {
	item it;
	gate reached;
	gate release;
} blocker;

static void
blocker_start(blocker *b, aa_executor *pool)
{
	item_init(&b->it);
	gate_init(&b->reached);
	gate_init(&b->release);
	b->it.fn_reached = &b->reached;
	b->it.fn_release = &b->release;
	cr_assert_eq(aa_work_submit(&b->it.w, pool), 0);
	gate_wait(&b->reached);
}

static void
blocker_finish(blocker *b)
{
	gate_open(&b->release);
	cr_assert_eq(aa_work_wait(&b->it.w), 0);
	cr_assert_eq(atomic_load(&b->it.done_runs), 1);
	gate_fini(&b->reached);
	gate_fini(&b->release);
}

// ---- Watching another thread block inside the library ----

typedef struct watched {
	atomic_int tid;
	atomic_bool returned;
	gate ready; // opened right before the library call
} watched;

static int
my_tid(void)
{
	return (int)syscall(SYS_gettid);
}

static bool
thread_asleep(int tid)
{
	char path[64];
	char buf[512];
	char *p;
	FILE *f;
	size_t n;
	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	if ((f = fopen(path, "r")) == NULL) {
		return false;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' && (p[2] == 'S' || p[2] == 'D');
}

// wait_blocked returns once the watched thread is asleep in its call or
// has returned from it (then the test's own checks fail).
static void
wait_blocked(watched *wt)
{
	gate_wait(&wt->ready);
	while (!atomic_load(&wt->returned) &&
	       !thread_asleep(atomic_load(&wt->tid))) {
		sched_yield();
	}
}

// wait_finished polls until an item's done callback has returned (the
// atomic load also orders the test after everything the callback did).
static void
wait_finished(item *it)
{
	while (!atomic_load(&it->done_finished)) {
		sched_yield();
	}
}

// wait_live_executors polls until a deferred free has happened.
static void
wait_live_executors(int64_t n)
{
	while (aa_live(AA_LIVE_EXECUTOR) != n) {
		sched_yield();
	}
}

// ---- Inline ----

Test(executor_inline, runs_in_the_caller_before_submit_returns)
{
	item it;
	aa_executor *inl = aa_executor_inline();
	item_init(&it);
	it.in_ex = inl;
	cr_assert_eq(aa_work_submit(&it.w, inl), 0);
	cr_assert_eq(atomic_load(&it.fn_runs), 1);
	cr_assert_eq(atomic_load(&it.done_runs), 1);
	cr_assert_eq(atomic_load(&it.done_rv), 0);
	cr_assert(pthread_equal(it.fn_thread, pthread_self()));
	cr_assert(it.fn_in_thread);
	cr_assert_not(aa_executor_in_thread(inl));

	// It can be submitted again once done, and close/free are no-ops.
	aa_executor_close(inl);
	cr_assert_eq(aa_executor_stop(inl), 0);
	aa_executor_free(inl);
	cr_assert_eq(aa_work_submit(&it.w, inl), 0);
	cr_assert_eq(atomic_load(&it.fn_runs), 2);
}

static void
count_fn(void *arg)
{
	atomic_fetch_add((atomic_int *)arg, 1);
}

Test(executor_inline, post_runs_and_frees_its_item)
{
	atomic_int n = 0;
	cr_assert_eq(aa_executor_post(aa_executor_inline(), count_fn, &n), 0);
	cr_assert_eq(atomic_load(&n), 1);
	cr_assert_eq(aa_live(AA_LIVE_WORK), 0);
	cr_assert_eq(aa_executor_post(NULL, count_fn, &n), AA_EINVAL);
}

static void
done_only(void *arg, int rv)
{
	atomic_fetch_add((atomic_int *)arg, rv == 0 ? 1 : 100);
}

Test(executor_inline, null_fn_runs_only_done_and_busy_is_refused)
{
	aa_work w;
	atomic_int n = 0;
	aa_work_init(&w, NULL, done_only, &n);
	cr_assert_eq(aa_work_submit(&w, aa_executor_inline()), 0);
	cr_assert_eq(atomic_load(&n), 1);
	// Never-submitted items: abort says already, wait returns at once.
	aa_work_init(&w, NULL, done_only, &n);
	cr_assert_eq(aa_work_abort(&w), AA_EALREADY);
	cr_assert_eq(aa_work_wait(&w), 0);
}

// ---- Pool ----

#define SUBMITTERS    8
#define PER_SUBMITTER 500

typedef struct submitter {
	aa_executor *ex;
	item *items;
	int n;
	atomic_int failures;
} submitter;

static void *
submit_all(void *arg)
{
	submitter *s = arg;
	for (int i = 0; i < s->n; i++) {
		if (aa_work_submit(&s->items[i].w, s->ex) != 0) {
			atomic_fetch_add(&s->failures, 1);
		}
	}
	return NULL;
}

Test(executor_pool, runs_everything_exactly_once_under_many_submitters)
{
	aa_executor *pool;
	submitter subs[SUBMITTERS];
	thr t[SUBMITTERS];
	pthread_t self = pthread_self();
	cr_assert_eq(aa_pool_alloc(&pool, 4), 0);
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 1);
	for (int s = 0; s < SUBMITTERS; s++) {
		subs[s].ex = pool;
		subs[s].n = PER_SUBMITTER;
		subs[s].items = calloc(PER_SUBMITTER, sizeof(item));
		atomic_init(&subs[s].failures, 0);
		for (int i = 0; i < PER_SUBMITTER; i++) {
			item_init(&subs[s].items[i]);
		}
	}
	for (int s = 0; s < SUBMITTERS; s++) {
		thr_start(&t[s], submit_all, &subs[s]);
	}
	for (int s = 0; s < SUBMITTERS; s++) {
		thr_join(&t[s]);
	}
	for (int s = 0; s < SUBMITTERS; s++) {
		cr_assert_eq(atomic_load(&subs[s].failures), 0);
		for (int i = 0; i < PER_SUBMITTER; i++) {
			item *it = &subs[s].items[i];
			cr_assert_eq(aa_work_wait(&it->w), 0);
			cr_assert_eq(atomic_load(&it->fn_runs), 1);
			cr_assert_eq(atomic_load(&it->done_runs), 1);
			cr_assert_eq(atomic_load(&it->done_rv), 0);
			cr_assert_not(pthread_equal(it->fn_thread, self));
		}
	}
	aa_executor_free(pool);
	for (int s = 0; s < SUBMITTERS; s++) {
		free(subs[s].items);
	}
}

Test(executor_pool, post_is_fifo_and_frees_its_items)
{
	aa_executor *pool;
	atomic_int n = 0;
	item last;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(aa_executor_post(pool, count_fn, &n), 0);
	}
	item_init(&last);
	cr_assert_eq(aa_work_submit(&last.w, pool), 0);
	cr_assert_eq(aa_work_wait(&last.w), 0);
	// One thread, FIFO: every post ran before the last item.
	cr_assert_eq(atomic_load(&n), 100);
	aa_executor_free(pool);
	cr_assert_eq(aa_live(AA_LIVE_WORK), 0);
}

Test(executor_pool, submit_allocates_nothing_in_steady_state)
{
	aa_executor *pool;
	aa_executor *strand;
	item *items = calloc(1000, sizeof(item));
	uint64_t before;
	cr_assert_eq(aa_pool_alloc(&pool, 2), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	before = aa_heap_allocs();
	for (int i = 0; i < 1000; i++) {
		item_init(&items[i]);
		cr_assert_eq(
		    aa_work_submit(&items[i].w, i % 2 ? pool : strand), 0);
	}
	for (int i = 0; i < 1000; i++) {
		cr_assert_eq(aa_work_wait(&items[i].w), 0);
	}
	cr_assert_eq(aa_heap_allocs(), before);
	aa_executor_free(strand);
	aa_executor_free(pool);
	free(items);
}

Test(executor_pool, bad_arguments)
{
	aa_executor *ex;
	aa_work w;
	cr_assert_eq(aa_pool_alloc(&ex, 0), AA_EINVAL);
	cr_assert_eq(aa_pool_alloc(NULL, 1), AA_EINVAL);
	cr_assert_eq(aa_strand_alloc(&ex, NULL), AA_EINVAL);
	aa_work_init(&w, NULL, NULL, NULL);
	cr_assert_eq(aa_work_submit(&w, NULL), AA_EINVAL);
}

// ---- Strand ----

#define STRAND_SUBMITTERS 4
#define STRAND_PER        2000

typedef struct order_ctx {
	atomic_int inside;
	atomic_int overlaps;
	atomic_int misorders;
	int last[STRAND_SUBMITTERS]; // unlocked: the strand guards it
	int total;                   // likewise
} order_ctx;

typedef struct seq_item {
	aa_work w;
	order_ctx *ctx;
	int who;
	int seq;
} seq_item;

static void
seq_fn(void *arg)
{
	seq_item *s = arg;
	order_ctx *ctx = s->ctx;
	if (atomic_fetch_add(&ctx->inside, 1) != 0) {
		atomic_fetch_add(&ctx->overlaps, 1);
	}
	if (s->seq != ctx->last[s->who] + 1) {
		atomic_fetch_add(&ctx->misorders, 1);
	}
	ctx->last[s->who] = s->seq;
	ctx->total++;
	for (volatile int spin = 0; spin < 50; spin++) {
	}
	atomic_fetch_sub(&ctx->inside, 1);
}

typedef struct seq_submitter {
	aa_executor *strand;
	seq_item *items;
	atomic_int failures;
} seq_submitter;

static void *
seq_submit_all(void *arg)
{
	seq_submitter *s = arg;
	for (int i = 0; i < STRAND_PER; i++) {
		if (aa_work_submit(&s->items[i].w, s->strand) != 0) {
			atomic_fetch_add(&s->failures, 1);
		}
	}
	return NULL;
}

Test(executor_strand, never_runs_two_items_at_once_and_keeps_order)
{
	aa_executor *pool;
	aa_executor *strand;
	order_ctx ctx;
	seq_submitter subs[STRAND_SUBMITTERS];
	thr t[STRAND_SUBMITTERS];
	atomic_int noise = 0;
	memset(&ctx, 0, sizeof(ctx));
	for (int k = 0; k < STRAND_SUBMITTERS; k++) {
		ctx.last[k] = -1;
	}
	cr_assert_eq(aa_pool_alloc(&pool, 4), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	for (int k = 0; k < STRAND_SUBMITTERS; k++) {
		subs[k].strand = strand;
		subs[k].items = calloc(STRAND_PER, sizeof(seq_item));
		atomic_init(&subs[k].failures, 0);
		for (int i = 0; i < STRAND_PER; i++) {
			seq_item *s = &subs[k].items[i];
			s->ctx = &ctx;
			s->who = k;
			s->seq = i;
			aa_work_init(&s->w, seq_fn, NULL, s);
		}
	}
	for (int k = 0; k < STRAND_SUBMITTERS; k++) {
		thr_start(&t[k], seq_submit_all, &subs[k]);
	}
	// Unrelated pool work keeps the other threads busy meanwhile.
	for (int i = 0; i < 1000; i++) {
		cr_assert_eq(aa_executor_post(pool, count_fn, &noise), 0);
	}
	for (int k = 0; k < STRAND_SUBMITTERS; k++) {
		thr_join(&t[k]);
	}
	for (int k = 0; k < STRAND_SUBMITTERS; k++) {
		cr_assert_eq(atomic_load(&subs[k].failures), 0);
		for (int i = 0; i < STRAND_PER; i++) {
			cr_assert_eq(aa_work_wait(&subs[k].items[i].w), 0);
		}
	}
	cr_assert_eq(atomic_load(&ctx.overlaps), 0);
	cr_assert_eq(atomic_load(&ctx.misorders), 0);
	aa_executor_free(strand);
	aa_executor_free(pool);
	cr_assert_eq(ctx.total, STRAND_SUBMITTERS * STRAND_PER);
	for (int k = 0; k < STRAND_SUBMITTERS; k++) {
		cr_assert_eq(ctx.last[k], STRAND_PER - 1);
		free(subs[k].items);
	}
}

// The chaining acceptance test: one pool thread, five strands, each a
// chain OPEN -> WRITE -> CLOSE where each step submits the next one to its
// own strand.
enum { OPEN, WRITE, CLOSE };
#define CHAINS 5

typedef struct chain_log {
	pthread_mutex_t mtx;
	int step[CHAINS * 3];
	int chain[CHAINS * 3];
	int n;
	int closes;
	int submit_failures;
	gate all_closed;
} chain_log;

typedef struct chain {
	aa_executor *strand;
	aa_work steps[3];
	chain_log *log;
	int id;
} chain;

typedef struct chain_step {
	chain *c;
	int step;
} chain_step;

static chain_step chain_steps[CHAINS][3];

static void
chain_fn(void *arg)
{
	chain_step *cs = arg;
	chain_log *log = cs->c->log;
	bool all;
	pthread_mutex_lock(&log->mtx);
	log->step[log->n] = cs->step;
	log->chain[log->n] = cs->c->id;
	log->n++;
	all = cs->step == CLOSE && ++log->closes == CHAINS;
	pthread_mutex_unlock(&log->mtx);
	if (cs->step != CLOSE &&
	    aa_work_submit(&cs->c->steps[cs->step + 1], cs->c->strand) != 0) {
		pthread_mutex_lock(&log->mtx);
		log->submit_failures++;
		pthread_mutex_unlock(&log->mtx);
	}
	if (all) {
		gate_open(&log->all_closed);
	}
}

Test(executor_strand, chained_work_runs_next_on_the_same_thread)
{
	aa_executor *pool;
	chain chains[CHAINS];
	chain_log log;
	blocker b;
	memset(&log, 0, sizeof(log));
	pthread_mutex_init(&log.mtx, NULL);
	gate_init(&log.all_closed);
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	for (int c = 0; c < CHAINS; c++) {
		chains[c].log = &log;
		chains[c].id = c;
		cr_assert_eq(aa_strand_alloc(&chains[c].strand, pool), 0);
		for (int s = 0; s < 3; s++) {
			chain_steps[c][s].c = &chains[c];
			chain_steps[c][s].step = s;
			aa_work_init(&chains[c].steps[s], chain_fn, NULL,
			             &chain_steps[c][s]);
		}
	}
	// Hold the only thread so that all five OPENs are queued first.
	blocker_start(&b, pool);
	for (int c = 0; c < CHAINS; c++) {
		cr_assert_eq(
		    aa_work_submit(&chains[c].steps[OPEN], chains[c].strand),
		    0);
	}
	blocker_finish(&b);
	gate_wait(&log.all_closed);
	cr_assert_eq(log.submit_failures, 0);
	cr_assert_eq(log.n, CHAINS * 3);
	for (int i = 0; i < CHAINS * 3; i++) {
		cr_assert_eq(log.step[i], i % 3, "position %d: step %d", i,
		             log.step[i]);
		cr_assert_eq(log.chain[i], i / 3);
	}
	for (int c = 0; c < CHAINS; c++) {
		aa_executor_free(chains[c].strand);
	}
	aa_executor_free(pool);
	gate_fini(&log.all_closed);
	pthread_mutex_destroy(&log.mtx);
}

// A strand on the inline executor: chained work runs after the current
// item returns, not nested in it, and before the outer submit returns.
static void
inline_chain_hook(item *it)
{
	item *next = (item *)it->in_ex; // smuggled: the next item
	it->hook_rv = aa_work_submit(&next->w, (aa_executor *)next->in_ex);
	it->hook_rv2 = atomic_load(&next->fn_runs); // 0: not nested
}

Test(executor_strand, on_the_inline_executor_runs_in_the_caller)
{
	aa_executor *strand;
	item first;
	item second;
	cr_assert_eq(aa_strand_alloc(&strand, aa_executor_inline()), 0);
	item_init(&first);
	item_init(&second);
	second.in_ex = strand;
	first.in_ex = (aa_executor *)&second;
	first.fn_hook = inline_chain_hook;
	cr_assert_eq(aa_work_submit(&first.w, strand), 0);
	cr_assert_eq(first.hook_rv, 0);
	cr_assert_eq(first.hook_rv2, 0);
	cr_assert_eq(atomic_load(&first.done_runs), 1);
	cr_assert_eq(atomic_load(&second.fn_runs), 1);
	cr_assert_eq(atomic_load(&second.done_runs), 1);
	cr_assert(second.fn_in_thread);
	cr_assert(pthread_equal(second.fn_thread, pthread_self()));
	aa_executor_free(strand);
}

typedef struct in_thread_ctx {
	item it;
	aa_executor *pool;
	aa_executor *strand;
	bool in_pool;
	bool in_strand;
	int stop_pool;
	int stop_strand;
} in_thread_ctx;

static void
in_thread_ctx_hook(item *it)
{
	in_thread_ctx *c = (in_thread_ctx *)it;
	c->in_pool = aa_executor_in_thread(c->pool);
	c->in_strand = aa_executor_in_thread(c->strand);
	c->stop_strand = aa_executor_stop(c->strand);
	c->stop_pool = aa_executor_stop(c->pool);
}

Test(executor_lifecycle, stop_from_inside_strand_work_is_edeadlk)
{
	in_thread_ctx c;
	memset(&c, 0, sizeof(c));
	item_init(&c.it);
	c.it.fn_hook = in_thread_ctx_hook;
	cr_assert_eq(aa_pool_alloc(&c.pool, 2), 0);
	cr_assert_eq(aa_strand_alloc(&c.strand, c.pool), 0);
	cr_assert_eq(aa_work_submit(&c.it.w, c.strand), 0);
	cr_assert_eq(aa_work_wait(&c.it.w), 0);
	cr_assert(c.in_pool);
	cr_assert(c.in_strand);
	cr_assert_eq(c.stop_strand, AA_EDEADLK);
	cr_assert_eq(c.stop_pool, AA_EDEADLK);
	// Its done still ran: the work itself was running, not dropped.
	cr_assert_eq(atomic_load(&c.it.done_runs), 1);
	cr_assert_eq(atomic_load(&c.it.done_rv), 0);
	cr_assert_not(aa_executor_in_thread(c.pool));
	cr_assert_not(aa_executor_in_thread(c.strand));
	aa_executor_free(c.strand);
	aa_executor_free(c.pool);
}

static void
stop_self_hook(item *it)
{
	it->hook_rv = aa_executor_stop(it->in_ex);
}

Test(executor_lifecycle, stop_from_inside_a_worker_is_edeadlk)
{
	aa_executor *pool;
	item it;
	cr_assert_eq(aa_pool_alloc(&pool, 2), 0);
	item_init(&it);
	it.in_ex = pool;
	it.fn_hook = stop_self_hook;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert_eq(it.hook_rv, AA_EDEADLK);
	cr_assert(it.fn_in_thread);
	// The stop closed the pool all the same.
	item_init(&it);
	cr_assert_eq(aa_work_submit(&it.w, pool), AA_ECLOSED);
	cr_assert_eq(aa_executor_stop(pool), 0);
	aa_executor_free(pool);
	cr_assert_eq(atomic_load(&it.fn_runs), 0);
	cr_assert_eq(atomic_load(&it.done_runs), 0);
}

// ---- Abort ----

Test(executor_abort, queued_work_is_dropped_and_nothing_runs)
{
	aa_executor *pool;
	aa_executor *strand;
	blocker b;
	item it;
	item sit;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	blocker_start(&b, pool);
	item_init(&it);
	item_init(&sit);
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_submit(&sit.w, strand), 0);
	cr_assert_eq(aa_work_submit(&it.w, pool), AA_EBUSY);
	cr_assert_eq(aa_work_abort(&it.w), 0);
	cr_assert_eq(aa_work_abort(&sit.w), 0);
	cr_assert_eq(aa_work_abort(&it.w), AA_EALREADY);
	blocker_finish(&b);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	aa_executor_free(strand);
	aa_executor_free(pool);
	cr_assert_eq(atomic_load(&it.fn_runs), 0);
	cr_assert_eq(atomic_load(&it.done_runs), 0);
	cr_assert_eq(atomic_load(&sit.fn_runs), 0);
	cr_assert_eq(atomic_load(&sit.done_runs), 0);
}

Test(executor_abort, running_work_finishes_but_its_done_does_not_run)
{
	aa_executor *pool;
	item it;
	gate reached;
	gate release;
	gate_init(&reached);
	gate_init(&release);
	cr_assert_eq(aa_pool_alloc(&pool, 2), 0);
	item_init(&it);
	it.fn_reached = &reached;
	it.fn_release = &release;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	gate_wait(&reached);
	cr_assert_eq(aa_work_submit(&it.w, pool), AA_EBUSY);
	cr_assert_eq(aa_work_abort(&it.w), 0);
	cr_assert_not(atomic_load(&it.fn_finished));
	gate_open(&release);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert(atomic_load(&it.fn_finished));
	cr_assert_eq(atomic_load(&it.fn_runs), 1);
	cr_assert_eq(atomic_load(&it.done_runs), 0);
	// The item is reusable, and its next run is not aborted.
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert_eq(atomic_load(&it.fn_runs), 2);
	cr_assert_eq(atomic_load(&it.done_runs), 1);
	aa_executor_free(pool);
	gate_fini(&reached);
	gate_fini(&release);
}

// A thread that calls abort, wait or stop and records what had finished
// when the call returned.
enum { CALL_ABORT, CALL_WAIT, CALL_STOP };

typedef struct aborter {
	watched wt;
	aa_work *w;
	item *it;
	aa_executor *ex;
	int call;
	int rv;
	bool finished_at_return;
} aborter;

static void *
abort_thread(void *arg)
{
	aborter *a = arg;
	atomic_store(&a->wt.tid, my_tid());
	gate_open(&a->wt.ready);
	switch (a->call) {
	case CALL_ABORT:
		a->rv = aa_work_abort(a->w);
		a->finished_at_return = atomic_load(&a->it->done_finished);
		break;
	case CALL_WAIT:
		a->rv = aa_work_wait(a->w);
		a->finished_at_return = atomic_load(&a->it->fn_finished);
		break;
	default:
		a->rv = aa_executor_stop(a->ex);
		a->finished_at_return = atomic_load(&a->it->done_finished);
		break;
	}
	atomic_store(&a->wt.returned, true);
	return NULL;
}

Test(executor_abort, a_running_done_is_waited_for)
{
	aa_executor *pool;
	item it;
	gate reached;
	gate release;
	aborter a;
	thr t;
	gate_init(&reached);
	gate_init(&release);
	memset(&a, 0, sizeof(a));
	gate_init(&a.wt.ready);
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	item_init(&it);
	it.done_reached = &reached;
	it.done_release = &release;
	a.w = &it.w;
	a.it = &it;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	gate_wait(&reached); // the done callback is running
	thr_start(&t, abort_thread, &a);
	wait_blocked(&a.wt);
	gate_open(&release);
	thr_join(&t);
	cr_assert_eq(a.rv, AA_EALREADY);
	cr_assert(a.finished_at_return, "abort returned before done did");
	cr_assert_eq(atomic_load(&it.done_runs), 1);
	aa_executor_free(pool);
	gate_fini(&a.wt.ready);
	gate_fini(&reached);
	gate_fini(&release);
}

static void
abort_self_hook(item *it)
{
	it->hook_rv = aa_work_abort(&it->w);
}

Test(executor_abort, from_inside_done_returns_ealready_at_once)
{
	aa_executor *pool;
	item it;
	item inl;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	item_init(&it);
	it.done_hook = abort_self_hook;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert_eq(it.hook_rv, AA_EALREADY);
	cr_assert(atomic_load(&it.done_finished));
	item_init(&inl);
	inl.done_hook = abort_self_hook;
	cr_assert_eq(aa_work_submit(&inl.w, aa_executor_inline()), 0);
	cr_assert_eq(inl.hook_rv, AA_EALREADY);
	aa_executor_free(pool);
}

Test(executor_abort, from_inside_fn_suppresses_done)
{
	aa_executor *pool;
	item it;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	item_init(&it);
	it.fn_hook = abort_self_hook;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert_eq(it.hook_rv, 0);
	cr_assert_eq(atomic_load(&it.fn_runs), 1);
	cr_assert_eq(atomic_load(&it.done_runs), 0);
	aa_executor_free(pool);
}

// ---- Wait ----

static void
wait_self_hook(item *it)
{
	it->hook_rv = aa_work_wait(&it->w);
}

Test(executor_abort, wait_returns_after_the_work_ran)
{
	aa_executor *pool;
	item it;
	gate reached;
	gate release;
	aborter a;
	thr t;
	gate_init(&reached);
	gate_init(&release);
	memset(&a, 0, sizeof(a));
	gate_init(&a.wt.ready);
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	item_init(&it);
	it.fn_reached = &reached;
	it.fn_release = &release;
	a.w = &it.w;
	a.it = &it;
	a.call = CALL_WAIT;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	gate_wait(&reached);
	thr_start(&t, abort_thread, &a);
	wait_blocked(&a.wt);
	gate_open(&release);
	thr_join(&t);
	cr_assert_eq(a.rv, 0);
	cr_assert(a.finished_at_return, "wait returned before fn did");

	// From inside its own fn or done: AA_EDEADLK, never a hang.
	item_init(&it);
	it.fn_hook = wait_self_hook;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert_eq(it.hook_rv, AA_EDEADLK);
	item_init(&it);
	it.done_hook = wait_self_hook;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	cr_assert_eq(aa_work_wait(&it.w), 0);
	cr_assert(atomic_load(&it.done_finished));
	cr_assert_eq(it.hook_rv, AA_EDEADLK);
	aa_executor_free(pool);
	gate_fini(&a.wt.ready);
	gate_fini(&reached);
	gate_fini(&release);
}

// ---- Lifecycle ----

Test(executor_lifecycle, close_drops_queued_work_with_eclosed)
{
	aa_executor *pool;
	aa_executor *strand;
	blocker b;
	item its[3];
	item sit;
	item late;
	atomic_int posted = 0;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	blocker_start(&b, pool);
	for (int i = 0; i < 3; i++) {
		item_init(&its[i]);
		cr_assert_eq(aa_work_submit(&its[i].w, pool), 0);
	}
	item_init(&sit);
	cr_assert_eq(aa_work_submit(&sit.w, strand), 0);
	cr_assert_eq(aa_executor_post(pool, count_fn, &posted), 0);
	cr_assert_eq(aa_live(AA_LIVE_WORK), 1);

	// Close returns while the pool's thread is still held: it does not
	// block, and the dropped done callbacks ran inside it.
	aa_executor_close(pool);
	cr_assert_not(gate_is_open(&b.release));
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&its[i].fn_runs), 0);
		cr_assert_eq(atomic_load(&its[i].done_runs), 1);
		cr_assert_eq(atomic_load(&its[i].done_rv), AA_ECLOSED);
	}
	// The strand's queued item too: its drain item was dropped.
	cr_assert_eq(atomic_load(&sit.fn_runs), 0);
	cr_assert_eq(atomic_load(&sit.done_runs), 1);
	cr_assert_eq(atomic_load(&sit.done_rv), AA_ECLOSED);
	cr_assert_eq(atomic_load(&posted), 0);
	cr_assert_eq(aa_live(AA_LIVE_WORK), 0);

	// Submits after close fail, and nothing of them ever runs.
	item_init(&late);
	cr_assert_eq(aa_work_submit(&late.w, pool), AA_ECLOSED);
	cr_assert_eq(aa_work_submit(&late.w, strand), AA_ECLOSED);
	cr_assert_eq(aa_executor_post(pool, count_fn, &posted), AA_ECLOSED);
	cr_assert_eq(aa_strand_alloc(&(aa_executor *){NULL}, pool),
	             AA_ECLOSED);
	aa_executor_close(pool); // idempotent
	blocker_finish(&b);      // running work finishes, done rv 0
	cr_assert_eq(atomic_load(&b.it.done_rv), 0);
	aa_executor_free(strand);
	aa_executor_free(pool);
	cr_assert_eq(atomic_load(&late.fn_runs), 0);
	cr_assert_eq(atomic_load(&late.done_runs), 0);
	cr_assert_eq(aa_live(AA_LIVE_WORK), 0);
}

static void
abort_next_hook(item *it)
{
	it->hook_rv = aa_work_abort((aa_work *)it->in_ex);
}

Test(executor_lifecycle, abort_of_an_item_close_has_not_reached_yet_wins)
{
	aa_executor *pool;
	blocker b;
	item first;
	item second;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	blocker_start(&b, pool);
	item_init(&first);
	item_init(&second);
	first.done_hook = abort_next_hook;
	first.in_ex = (aa_executor *)&second.w; // smuggled
	cr_assert_eq(aa_work_submit(&first.w, pool), 0);
	cr_assert_eq(aa_work_submit(&second.w, pool), 0);
	aa_executor_close(pool);
	cr_assert_eq(atomic_load(&first.done_rv), AA_ECLOSED);
	cr_assert_eq(first.hook_rv, 0);
	cr_assert_eq(atomic_load(&second.done_runs), 0);
	blocker_finish(&b);
	aa_executor_free(pool);
}

Test(executor_lifecycle, a_strand_on_a_closed_pool_fails_its_submits)
{
	aa_executor *pool;
	aa_executor *strand;
	item it;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	aa_executor_close(pool);
	item_init(&it);
	cr_assert_eq(aa_work_submit(&it.w, strand), AA_ECLOSED);
	cr_assert_eq(aa_work_submit(&it.w, strand), AA_ECLOSED);
	cr_assert_eq(aa_executor_stop(strand), 0);
	aa_executor_free(strand);
	aa_executor_free(pool);
	cr_assert_eq(atomic_load(&it.fn_runs), 0);
	cr_assert_eq(atomic_load(&it.done_runs), 0);
}

static void
free_self_hook(item *it)
{
	aa_executor_free(it->in_ex);
	it->hook_rv = 1; // reached: the free did not block
}

Test(executor_lifecycle, free_from_inside_a_worker_is_deferred)
{
	aa_executor *pool;
	item it;
	item queued;
	gate reached;
	gate release;
	gate_init(&reached);
	gate_init(&release);
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	item_init(&it);
	item_init(&queued);
	it.in_ex = pool;
	it.fn_hook = free_self_hook;
	it.fn_reached = &reached;
	it.fn_release = &release;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	gate_wait(&reached);
	cr_assert_eq(aa_work_submit(&queued.w, pool), 0);
	gate_open(&release);
	// The item's own done still runs (rv 0) after the free was called;
	// the queued one is dropped; then the pool goes away by itself.
	wait_finished(&it);
	wait_finished(&queued);
	wait_live_executors(0);
	cr_assert_eq(it.hook_rv, 1);
	cr_assert_eq(atomic_load(&it.done_runs), 1);
	cr_assert_eq(atomic_load(&it.done_rv), 0);
	cr_assert_eq(atomic_load(&queued.fn_runs), 0);
	cr_assert_eq(atomic_load(&queued.done_rv), AA_ECLOSED);
	gate_fini(&reached);
	gate_fini(&release);
}

Test(executor_lifecycle, free_of_a_strand_from_inside_its_work_is_deferred)
{
	aa_executor *pool;
	aa_executor *strand;
	item it;
	item queued;
	gate reached;
	gate release;
	gate_init(&reached);
	gate_init(&release);
	cr_assert_eq(aa_pool_alloc(&pool, 2), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	item_init(&it);
	item_init(&queued);
	it.in_ex = strand;
	it.fn_hook = free_self_hook;
	it.fn_reached = &reached;
	it.fn_release = &release;
	cr_assert_eq(aa_work_submit(&it.w, strand), 0);
	gate_wait(&reached);
	cr_assert_eq(aa_work_submit(&queued.w, strand), 0);
	gate_open(&release);
	wait_finished(&it);
	wait_finished(&queued);
	wait_live_executors(1); // the strand is gone, the pool remains
	cr_assert_eq(it.hook_rv, 1);
	cr_assert_eq(atomic_load(&it.done_runs), 1);
	cr_assert_eq(atomic_load(&it.done_rv), 0);
	cr_assert_eq(atomic_load(&queued.fn_runs), 0);
	cr_assert_eq(atomic_load(&queued.done_rv), AA_ECLOSED);
	aa_executor_free(pool);
	gate_fini(&reached);
	gate_fini(&release);
}

Test(executor_lifecycle, free_of_an_inline_strand_from_its_work_is_deferred)
{
	aa_executor *strand;
	item it;
	cr_assert_eq(aa_strand_alloc(&strand, aa_executor_inline()), 0);
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 1);
	item_init(&it);
	it.in_ex = strand;
	it.fn_hook = free_self_hook;
	cr_assert_eq(aa_work_submit(&it.w, strand), 0);
	// The submitting thread drained the strand, ran the item's done, and
	// then carried out the deferred free, all before submit returned.
	cr_assert_eq(it.hook_rv, 1);
	cr_assert_eq(atomic_load(&it.done_rv), 0);
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 0);
}

// Freeing a strand from unrelated work on its pool's only thread, while the
// strand's drain item waits behind that work, must not wait for the thread
// it runs on.
Test(executor_lifecycle, free_strand_from_pool_work_does_not_hang)
{
	aa_executor *pool;
	aa_executor *strand;
	blocker b;
	item freer;
	item sit;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	cr_assert_eq(aa_strand_alloc(&strand, pool), 0);
	blocker_start(&b, pool);
	item_init(&freer);
	freer.in_ex = strand;
	freer.fn_hook = free_self_hook;
	cr_assert_eq(aa_work_submit(&freer.w, pool), 0);
	item_init(&sit);
	cr_assert_eq(aa_work_submit(&sit.w, strand), 0);
	blocker_finish(&b);
	cr_assert_eq(aa_work_wait(&freer.w), 0);
	cr_assert_eq(freer.hook_rv, 1);
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 1);
	cr_assert_eq(atomic_load(&sit.fn_runs), 0);
	cr_assert_eq(atomic_load(&sit.done_rv), AA_ECLOSED);
	aa_executor_free(pool);
}

// A dropped done callback that frees its executor: the close that is
// dispatching it finishes the free.
static void
free_in_done_hook(item *it)
{
	aa_executor_free(it->in_ex);
	it->hook_rv = 1;
}

Test(executor_lifecycle, free_from_a_dropped_done_is_deferred)
{
	aa_executor *pool;
	blocker b;
	item it;
	cr_assert_eq(aa_pool_alloc(&pool, 1), 0);
	blocker_start(&b, pool);
	item_init(&it);
	it.in_ex = pool;
	it.done_hook = free_in_done_hook;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	aa_executor_close(pool); // runs it.done(AA_ECLOSED) -> free
	cr_assert_eq(it.hook_rv, 1);
	cr_assert_eq(atomic_load(&it.done_rv), AA_ECLOSED);
	cr_assert_eq(aa_live(AA_LIVE_EXECUTOR), 1); // the blocker runs
	gate_open(&b.release);
	wait_finished(&b.it);
	wait_live_executors(0);
	cr_assert_eq(atomic_load(&b.it.done_runs), 1);
	gate_fini(&b.reached);
	gate_fini(&b.release);
}

Test(executor_lifecycle, stop_waits_for_running_work)
{
	aa_executor *pool;
	item it;
	gate reached;
	gate release;
	aborter a;
	thr t;
	gate_init(&reached);
	gate_init(&release);
	memset(&a, 0, sizeof(a));
	gate_init(&a.wt.ready);
	cr_assert_eq(aa_pool_alloc(&pool, 2), 0);
	item_init(&it);
	it.done_reached = &reached;
	it.done_release = &release;
	a.it = &it;
	a.ex = pool;
	a.call = CALL_STOP;
	cr_assert_eq(aa_work_submit(&it.w, pool), 0);
	gate_wait(&reached); // its done callback is running
	thr_start(&t, abort_thread, &a);
	wait_blocked(&a.wt);
	gate_open(&release);
	thr_join(&t);
	cr_assert_eq(a.rv, 0);
	cr_assert(a.finished_at_return, "stop returned before done did");
	cr_assert_eq(aa_executor_stop(pool), 0);
	aa_executor_free(pool);
	gate_fini(&a.wt.ready);
	gate_fini(&reached);
	gate_fini(&release);
}

// A stop held on one thread (counted, not closed yet) while free runs on
// another: free closes, stops and then waits for the other stop before it
// destroys the pool (before, it freed the pool under that stop, which then
// locked a destroyed mutex in freed memory).
static hold_point hp_ex_stopping = {.name = "executor.stopping"};
static hold_point *const ex_points[] = {&hp_ex_stopping};

static void
ex_checkpoint(void *arg, const char *name, void *subject)
{
	(void)arg;
	hold_points_hit(ex_points, 1, name, subject);
}

typedef struct ex_call {
	thr t;
	aa_executor *ex;
	int rv;
	gate done;
} ex_call;

static void *
ex_stop_main(void *arg)
{
	ex_call *c = arg;
	c->rv = aa_executor_stop(c->ex);
	gate_open(&c->done);
	return NULL;
}

static void *
ex_free_main(void *arg)
{
	ex_call *c = arg;
	aa_executor_free(c->ex);
	gate_open(&c->done);
	return NULL;
}

Test(executor_lifecycle, free_waits_for_a_stop_running_on_another_thread)
{
	aa_executor *pool;
	cr_assert_eq(aa_pool_alloc(&pool, 2), 0);
	aa_checkpoint_set(ex_checkpoint, NULL);
	hold_arm(&hp_ex_stopping);
	ex_call stopper = {.ex = pool, .rv = -1}, freer = {.ex = pool};
	gate_init(&stopper.done);
	gate_init(&freer.done);
	thr_start(&stopper.t, ex_stop_main, &stopper);
	gate_wait(&hp_ex_stopping.reached);
	thr_start(&freer.t, ex_free_main, &freer);
	cr_assert(!gate_wait_ms(&freer.done, 300),
	          "free returned while a stop still ran");
	gate_open(&hp_ex_stopping.release);
	thr_join(&stopper.t);
	thr_join(&freer.t);
	cr_assert_eq(stopper.rv, 0);
	aa_checkpoint_set(NULL, NULL);
}
