// executor_impl.h: what the executor's files share (executor.c,
// executor_strand.c, executor_ext.c): the executor object, the work item
// fields read without a lock, and the queue.
#ifndef AA_EXECUTOR_IMPL_H
#define AA_EXECUTOR_IMPL_H

#include "aai.h"

enum { EX_INLINE, EX_POOL, EX_STRAND, EX_EXTERN };
enum { W_IDLE = 0, W_QUEUED, W_RUNNING };

// A record of one fn or done callback running on a thread (on its stack).
typedef struct runrec {
	struct runrec *next; // in ex->running
	struct runrec **pprev;
	struct runrec *outer; // enclosing record of this thread
	aa_executor *ex;
	const aa_work *w; // compared only, once in_done
	bool in_done;
} runrec;

struct aa_executor {
	int kind;
	pthread_mutex_t mtx;
	pthread_cond_t idle_cv; // a runrec left, a closer ended, and so on
	pthread_cond_t work_cv; // pool: work queued or closed
	aa_work *head;          // the FIFO queue, through next_/prev_
	aa_work *tail;
	runrec *running;
	int closers;  // threads dispatching dropped items
	int waiters;  // threads waiting on idle_cv
	int stoppers; // threads inside aa_executor_stop: free waits for them
	bool closed;
	bool free_deferred;

	// Pool.
	pthread_t *threads;
	int nthreads;
	int alive; // workers not yet out of their loop
	bool joining;
	bool joined;

	// Strand.
	aa_executor *target;
	aa_work drain; // submitted to target while scheduled
	bool scheduled;

	// External: run by the application (executor_loop.c).
	const aai_ext_hooks *hooks;
	void *hooks_ctx;
	int pins; // submits whose aai_ext_run(unpin) has not come yet
};

// ---- Item fields read without the executor's lock ----

static inline int
aai_work_state(const aa_work *w)
{
	return __atomic_load_n(&w->state_, __ATOMIC_ACQUIRE);
}

static inline void
aai_work_set_state(aa_work *w, int s)
{
	__atomic_store_n(&w->state_, s, __ATOMIC_RELEASE);
}

static inline aa_executor *
aai_work_ex(const aa_work *w)
{
	return __atomic_load_n(&w->ex_, __ATOMIC_ACQUIRE);
}

// ---- The queue (expect ex->mtx) ----

static inline void
aai_ex_q_push(aa_executor *ex, aa_work *w)
{
	w->next_ = NULL;
	w->prev_ = ex->tail;
	if (ex->tail != NULL) {
		ex->tail->next_ = w;
	} else {
		ex->head = w;
		if (ex->hooks != NULL) {
			ex->hooks->ready(ex->hooks_ctx, true);
		}
	}
	ex->tail = w;
}

static inline void
aai_ex_q_remove(aa_executor *ex, aa_work *w)
{
	if (w->prev_ != NULL) {
		w->prev_->next_ = w->next_;
	} else {
		ex->head = w->next_;
	}
	if (w->next_ != NULL) {
		w->next_->prev_ = w->prev_;
	} else {
		ex->tail = w->prev_;
	}
	w->next_ = NULL;
	w->prev_ = NULL;
	if (ex->head == NULL && ex->hooks != NULL) {
		ex->hooks->ready(ex->hooks_ctx, false);
	}
}

static inline aa_work *
aai_ex_q_pop(aa_executor *ex)
{
	aa_work *w = ex->head;
	if (w != NULL) {
		aai_ex_q_remove(ex, w);
	}
	return w;
}

// aai_ex_queue_item queues w on ex (a strand or an external executor) unless
// ex is closed: false then. Expects ex->mtx.
static inline bool
aai_ex_queue_item(aa_executor *ex, aa_work *w)
{
	if (ex->closed) {
		return false;
	}
	__atomic_store_n(&w->ex_, ex, __ATOMIC_RELEASE);
	w->aborted_ = false;
	aai_work_set_state(w, W_QUEUED);
	aai_ex_q_push(ex, w);
	return true;
}

// ---- executor.c ----

// aai_ex_new makes an executor of kind with no thread (NULL: no memory).
AAI_HIDDEN aa_executor *aai_ex_new(int kind);
// aai_ex_run_item runs a dequeued item: fn, then done unless it was
// aborted. Expects ex->mtx, which it drops around the callbacks.
AAI_HIDDEN void aai_ex_run_item(aa_executor *ex, aa_work *w);
// aai_ex_drop_queued runs the done callbacks of everything queued on a
// closed executor with AA_ECLOSED. Expects ex->mtx (dropped around them).
AAI_HIDDEN void aai_ex_drop_queued(aa_executor *ex);
// aai_ex_take_deferred_free: true when the caller must now free ex (after
// dropping the lock, and touching nothing of ex before that). Expects
// ex->mtx.
AAI_HIDDEN bool aai_ex_take_deferred_free(aa_executor *ex);
// aai_ex_destroy frees ex (joining a pool's threads).
AAI_HIDDEN void aai_ex_destroy(aa_executor *ex);

// aai_strand_submit queues w on the strand s (executor_strand.c).
AAI_HIDDEN int aai_strand_submit(aa_work *w, aa_executor *s);
// aai_ext_submit queues w on the external executor ex (executor_ext.c).
AAI_HIDDEN int aai_ext_submit(aa_work *w, aa_executor *ex);

#endif // AA_EXECUTOR_IMPL_H
