// aa-test-labels: concurrent
// test_timer.c: the timer queue: order, cancel before and while firing,
// cancel and re-arm from inside a timer function, free with armed timers.
#include <sched.h>
#include <string.h>

#include "testutil.h"

typedef struct fired {
	pthread_mutex_t mtx;
	int order[1000];
	int count;
	gate all; // opened when count reaches want
	int want;
} fired;

typedef struct tick {
	aa_timer t;
	fired *f;
	int n;
} tick;

static void
tick_fn(void *arg)
{
	tick *k = arg;
	pthread_mutex_lock(&k->f->mtx);
	k->f->order[k->f->count++] = k->n;
	bool done = k->f->count == k->f->want;
	pthread_mutex_unlock(&k->f->mtx);
	if (done) {
		gate_open(&k->f->all);
	}
}

static void
fired_init(fired *f, int want)
{
	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->mtx, NULL);
	gate_init(&f->all);
	f->want = want;
}

TestSuite(timer, .fini = aa_test_check_live, .timeout = 30);

Test(timer, fires_in_due_order)
{
	aa_timer_queue *q;
	static tick ticks[200];
	fired f;
	fired_init(&f, 200);
	cr_assert_eq(aa_timer_queue_alloc(&q), 0);
	uint64_t t0 = aa_clock_us();
	for (int i = 0; i < 200; i++) {
		ticks[i].f = &f;
		ticks[i].n = i;
		aa_timer_init(&ticks[i].t, tick_fn, &ticks[i]);
		// Due times 0..39 ms, shuffled: (i*7)%40.
		cr_assert_eq(aa_timer_start(&ticks[i].t, q, (i * 7) % 40), 0);
	}
	gate_wait(&f.all);
	cr_assert_geq(aa_clock_us() - t0, 39000, "not before it was due");
	// Fired in order of due time (each start reads the clock itself, so
	// the due times follow the offsets only roughly: compare the real
	// ones, which the timer keeps).
	for (int i = 1; i < 200; i++) {
		uint64_t a = ticks[f.order[i - 1]].t.when_us_;
		uint64_t b = ticks[f.order[i]].t.when_us_;
		cr_assert_leq(a, b, "timer %d fired before timer %d",
		              f.order[i], f.order[i - 1]);
	}
	aa_timer_queue_free(q);
}

Test(timer, cancel_before_it_fires)
{
	aa_timer_queue *q;
	tick k, last;
	fired f;
	fired_init(&f, 1);
	cr_assert_eq(aa_timer_queue_alloc(&q), 0);
	k = (tick){.f = &f, .n = 1};
	last = (tick){.f = &f, .n = 2};
	aa_timer_init(&k.t, tick_fn, &k);
	aa_timer_init(&last.t, tick_fn, &last);
	cr_assert_eq(aa_timer_cancel(&k.t), AA_EALREADY, "never armed");
	cr_assert_eq(aa_timer_start(&k.t, q, 5), 0);
	cr_assert_eq(aa_timer_start(&k.t, q, 5), AA_EBUSY);
	cr_assert_eq(aa_timer_cancel(&k.t), 0);
	cr_assert_eq(aa_timer_start(&last.t, q, 10), 0);
	gate_wait(&f.all);
	cr_assert_eq(f.count, 1);
	cr_assert_eq(f.order[0], 2, "the cancelled timer never ran");
	cr_assert_eq(aa_timer_cancel(&last.t), AA_EALREADY);
	aa_timer_queue_free(q);
}

typedef struct slow {
	aa_timer t;
	gate running;
	gate release;
	gate cancel_waiting;
	int returned;
	int self_cancel_rv;
	int rearms;
	aa_timer_queue *q;
} slow;

static void
slow_fn(void *arg)
{
	slow *s = arg;
	gate_open(&s->running);
	gate_wait(&s->release);
	s->returned = 1;
}

static void
on_checkpoint(void *arg, const char *name, void *subject)
{
	slow *s = arg;
	if (strcmp(name, "timer.cancel_wait") == 0 && subject == &s->t) {
		gate_open(&s->cancel_waiting);
	}
}

typedef struct canceller {
	thr th;
	slow *s;
	int rv;
	int returned_seen;
} canceller;

static void *
cancel_main(void *arg)
{
	canceller *c = arg;
	c->rv = aa_timer_cancel(&c->s->t);
	c->returned_seen = c->s->returned;
	return NULL;
}

Test(timer, cancel_waits_for_a_running_function)
{
	aa_timer_queue *q;
	slow s = {0};
	gate_init(&s.running);
	gate_init(&s.release);
	gate_init(&s.cancel_waiting);
	aa_checkpoint_set(on_checkpoint, &s);
	cr_assert_eq(aa_timer_queue_alloc(&q), 0);
	aa_timer_init(&s.t, slow_fn, &s);
	cr_assert_eq(aa_timer_start(&s.t, q, 0), 0);
	gate_wait(&s.running);
	canceller c = {.s = &s};
	thr_start(&c.th, cancel_main, &c);
	gate_wait(&s.cancel_waiting);
	gate_open(&s.release);
	thr_join(&c.th);
	cr_assert_eq(c.rv, AA_EALREADY);
	cr_assert_eq(c.returned_seen, 1, "cancel returned while it ran");
	aa_checkpoint_set(NULL, NULL);
	aa_timer_queue_free(q);
}

static void
rearm_fn(void *arg)
{
	slow *s = arg;
	if (++s->rearms < 3) {
		cr_assert_eq(aa_timer_start(&s->t, s->q, 1), 0);
		return;
	}
	s->self_cancel_rv = aa_timer_cancel(&s->t); // no deadlock
	gate_open(&s->running);
}

Test(timer, rearm_and_cancel_from_inside)
{
	slow s = {0};
	gate_init(&s.running);
	cr_assert_eq(aa_timer_queue_alloc(&s.q), 0);
	aa_timer_init(&s.t, rearm_fn, &s);
	cr_assert_eq(aa_timer_start(&s.t, s.q, 1), 0);
	gate_wait(&s.running);
	cr_assert_eq(s.rearms, 3);
	cr_assert_eq(s.self_cancel_rv, AA_EALREADY);
	aa_timer_queue_free(s.q);
}

Test(timer, free_drops_armed_timers)
{
	aa_timer_queue *q;
	tick k[10];
	fired f;
	fired_init(&f, 100);
	cr_assert_eq(aa_timer_queue_alloc(&q), 0);
	for (int i = 0; i < 10; i++) {
		k[i] = (tick){.f = &f, .n = i};
		aa_timer_init(&k[i].t, tick_fn, &k[i]);
		cr_assert_eq(aa_timer_start(&k[i].t, q, 60000), 0);
	}
	aa_timer_queue_free(q);
	cr_assert_eq(f.count, 0);
}

typedef struct rearm {
	aa_timer t;
	aa_timer_queue *q;
	atomic_int fired;
} rearm;

static void
rearm_forever(void *arg)
{
	rearm *r = arg;
	atomic_fetch_add(&r->fired, 1);
	aa_timer_start(&r->t, r->q, 0);
}

// A timer that keeps re-arming itself from its own function, cancelled
// from another thread: cancel must win eventually and the re-arm must not
// race with it (ThreadSanitizer checks the second part).
Test(timer, cancel_a_timer_that_rearms_itself)
{
	rearm r = {0};
	cr_assert_eq(aa_timer_queue_alloc(&r.q), 0);
	aa_timer_init(&r.t, rearm_forever, &r);
	cr_assert_eq(aa_timer_start(&r.t, r.q, 0), 0);
	while (atomic_load(&r.fired) < 100) {
		sched_yield();
	}
	// One cancel suffices: disarmed, or running and then its re-arm is
	// refused.
	int rv = aa_timer_cancel(&r.t);
	cr_assert(rv == 0 || rv == AA_EALREADY);
	// Cancel returned: the function is not running and will not run.
	int count = atomic_load(&r.fired);
	aa_timer_queue_free(r.q);
	cr_assert_eq(atomic_load(&r.fired), count, "it ran after cancel");
}
