// timer.c: the timer queue (aa/timer.h).
//
// Design notes. A queue is one thread, one mutex, one condition variable on
// the monotonic clock, and a binary min-heap of armed timers ordered by due
// time (each timer knows its heap index, so cancel removes it in
// O(log n)). A timer is IDLE or ARMED; the queue also records the one timer
// whose function is running and on which thread.
//
// The thread sleeps until the earliest due time (or a change), pops every
// due timer one at a time, marks it IDLE and running, drops the lock, runs
// its function, retakes the lock and clears "running". It never touches
// the timer after its function began, so a function may free or re-arm its
// own timer.
//
// Races. start vs the thread: under the lock; a new earliest timer wakes
// the thread. cancel vs firing: under the lock; an ARMED timer is removed
// and never runs (cancel wins); one already popped is running or done, and
// cancel waits until its function returned unless it is called from that
// very function (then it returns at once). free vs everything: the thread
// is told to exit, joined, and armed timers are dropped.
#include <errno.h>
#include <time.h>

#include "aai.h"

enum {
	T_IDLE = 0,
	T_ARMED = 1,
	T_CANCELLING = 2, // a cancel waits for its running function
};

struct aa_timer_queue {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	pthread_t thread;
	aa_timer **heap;
	size_t len;
	size_t cap;
	aa_timer *running;
	bool closing;
};

uint64_t
aa_clock_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

// ---- The heap; all of it expects the queue's lock ----

static void
heap_set(aa_timer_queue *q, size_t i, aa_timer *t)
{
	q->heap[i] = t;
	t->index_ = i;
}

static void
sift_up(aa_timer_queue *q, size_t i)
{
	aa_timer *t = q->heap[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (q->heap[parent]->when_us_ <= t->when_us_) {
			break;
		}
		heap_set(q, i, q->heap[parent]);
		i = parent;
	}
	heap_set(q, i, t);
}

static void
sift_down(aa_timer_queue *q, size_t i)
{
	aa_timer *t = q->heap[i];
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= q->len) {
			break;
		}
		if (child + 1 < q->len &&
		    q->heap[child + 1]->when_us_ < q->heap[child]->when_us_) {
			child++;
		}
		if (t->when_us_ <= q->heap[child]->when_us_) {
			break;
		}
		heap_set(q, i, q->heap[child]);
		i = child;
	}
	heap_set(q, i, t);
}

static void
heap_remove(aa_timer_queue *q, aa_timer *t)
{
	size_t i = t->index_;
	aa_timer *last = q->heap[--q->len];
	if (i < q->len) {
		heap_set(q, i, last);
		sift_down(q, i);
		sift_up(q, last->index_);
	}
	t->state_ = T_IDLE;
}

// ---- The thread ----

static void
wait_until(aa_timer_queue *q, uint64_t when_us)
{
	struct timespec ts = {
	    .tv_sec = (time_t)(when_us / 1000000u),
	    .tv_nsec = (long)(when_us % 1000000u) * 1000,
	};
	int rv = pthread_cond_timedwait(&q->cv, &q->mtx, &ts);
	if (rv != 0 && rv != ETIMEDOUT) {
		aai_panic("pthread_cond_timedwait: %d", rv);
	}
}

static void *
queue_main(void *arg)
{
	aa_timer_queue *q = arg;
	aai_mtx_lock(&q->mtx);
	while (!q->closing) {
		if (q->len == 0) {
			aai_cv_wait(&q->cv, &q->mtx);
			continue;
		}
		aa_timer *t = q->heap[0];
		if (t->when_us_ > aa_clock_us()) {
			wait_until(q, t->when_us_);
			continue;
		}
		heap_remove(q, t);
		aa_timer_fn fn = t->fn_;
		void *fn_arg = t->arg_;
		q->running = t;
		aai_mtx_unlock(&q->mtx);

		fn(fn_arg); // may free or re-arm t: t is not touched again

		aai_mtx_lock(&q->mtx);
		q->running = NULL;
		aai_cv_broadcast(&q->cv);
	}
	aai_mtx_unlock(&q->mtx);
	return NULL;
}

int
aa_timer_queue_alloc(aa_timer_queue **qp)
{
	aa_timer_queue *q;
	pthread_condattr_t attr;
	if (qp == NULL) {
		return AA_EINVAL;
	}
	if ((q = aai_zalloc(sizeof(*q))) == NULL) {
		return AA_ENOMEM;
	}
	aai_mtx_init(&q->mtx);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (pthread_cond_init(&q->cv, &attr) != 0) {
		aai_panic("pthread_cond_init");
	}
	pthread_condattr_destroy(&attr);
	if (pthread_create(&q->thread, NULL, queue_main, q) != 0) {
		aai_cv_fini(&q->cv);
		aai_mtx_fini(&q->mtx);
		aai_free(q);
		return AA_ESYSTEM;
	}
	aai_live_inc(AA_LIVE_OTHER);
	*qp = q;
	return 0;
}

void
aa_timer_queue_free(aa_timer_queue *q)
{
	if (q == NULL) {
		return;
	}
	if (pthread_equal(q->thread, pthread_self())) {
		aai_panic("aa_timer_queue_free from its own timer: deadlock");
	}
	aai_mtx_lock(&q->mtx);
	q->closing = true;
	while (q->len > 0) {
		heap_remove(q, q->heap[0]);
	}
	aai_cv_broadcast(&q->cv);
	aai_mtx_unlock(&q->mtx);
	pthread_join(q->thread, NULL);
	aai_free(q->heap);
	aai_cv_fini(&q->cv);
	aai_mtx_fini(&q->mtx);
	aai_free(q);
	aai_live_dec(AA_LIVE_OTHER);
}

void
aa_timer_init(aa_timer *t, aa_timer_fn fn, void *arg)
{
	t->when_us_ = 0;
	t->index_ = 0;
	t->fn_ = fn;
	t->arg_ = arg;
	t->q_ = NULL;
	t->state_ = T_IDLE;
}

int
aa_timer_start(aa_timer *t, aa_timer_queue *q, uint64_t delay_ms)
{
	aai_mtx_lock(&q->mtx);
	if (q->closing) {
		aai_mtx_unlock(&q->mtx);
		return AA_ECLOSED;
	}
	if (t->state_ == T_ARMED) {
		aai_mtx_unlock(&q->mtx);
		return AA_EBUSY;
	}
	if (t->state_ == T_CANCELLING) {
		// Re-armed from its own function while a cancel waits for
		// that function: the cancel wins.
		aai_mtx_unlock(&q->mtx);
		return AA_ECANCELED;
	}
	if (q->len == q->cap) {
		size_t ncap = q->cap ? q->cap * 2 : 64;
		aa_timer **nh = aai_alloc(ncap * sizeof(*nh));
		if (nh == NULL) {
			aai_mtx_unlock(&q->mtx);
			return AA_ENOMEM;
		}
		for (size_t i = 0; i < q->len; i++) {
			nh[i] = q->heap[i];
		}
		aai_free(q->heap);
		q->heap = nh;
		q->cap = ncap;
	}
	if (t->q_ != q) {
		// A timer belongs to the queue of its first start:
		// aa_timer_cancel reads this without the queue's lock, so a
		// re-arm (maybe from the timer's own function) must not write
		// it again.
		AAI_ASSERT(t->q_ == NULL);
		t->q_ = q;
	}
	t->when_us_ = aa_clock_us() + delay_ms * 1000u;
	t->state_ = T_ARMED;
	heap_set(q, q->len++, t);
	sift_up(q, t->index_);
	if (q->heap[0] == t) {
		aai_cv_broadcast(&q->cv); // a new earliest due time
	}
	aai_mtx_unlock(&q->mtx);
	return 0;
}

int
aa_timer_cancel(aa_timer *t)
{
	aa_timer_queue *q = t->q_;
	if (q == NULL) {
		return AA_EALREADY;
	}
	aai_mtx_lock(&q->mtx);
	int rv = AA_EALREADY;
	if (t->state_ == T_ARMED) {
		heap_remove(q, t); // it will not run (again)
		rv = 0;
	}
	// Its function may be running now (and may have re-armed it): wait,
	// unless this is that function. Meanwhile a re-arm is refused.
	if (q->running == t && !pthread_equal(q->thread, pthread_self())) {
		t->state_ = T_CANCELLING;
		while (q->running == t) {
			// Checkpoint under the queue's lock.
			AAI_CHECKPOINT("timer.cancel_wait", t);
			aai_cv_wait(&q->cv, &q->mtx);
		}
		t->state_ = T_IDLE;
	}
	aai_mtx_unlock(&q->mtx);
	return rv;
}
