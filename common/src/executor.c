// executor.c: work items, the inline executor and the thread pool, and
// what every executor shares: running items, close, stop and free.
//
// Design notes.
//
// States of a work item (w->state_, written under the lock of the executor
// it was last submitted to, read atomically where no lock is held):
//
//   IDLE ---submit---> QUEUED ---a thread takes it---> RUNNING (fn runs)
//    ^                   |                                 |
//    |   abort or close  |                 fn returned     |
//    +-------------------+---------------------------------+
//
// An item goes back to IDLE *before* its done callback runs, because the
// done callback may free or resubmit the memory the item lives in: from
// that moment the executor never touches the item again. What is running,
// fn or done, on which thread, is recorded in a `runrec` that lives on the
// running thread's stack. It is linked into the executor's `running` list
// (for abort, wait and stop, which look there, under the executor's lock)
// and into a thread-local chain (for in_thread and the "from inside"
// checks, which need no lock). A runrec of a done callback keeps the item's
// address only to compare it, never to dereference it.
//
// Locks. One mutex per executor guards its queue, its running list, its
// flags and the state of the items submitted to it. No callback runs under
// a lock: a thread unlocks, runs fn or done, and locks again. The only
// nesting is a strand's lock, then its target's lock, in close (to take
// the strand's drain item back out of the target's queue); a target never
// takes a strand's lock while holding its own, so there is no cycle.
//
// The races, and who wins.
// * abort vs start: one locked step on each side. If abort takes the lock
//   first the item leaves the queue and nothing of it runs (0); if the
//   thread took it first, abort marks it aborted_ and its done callback
//   will not run (0).
// * abort vs done: after fn returns the running thread, under the lock,
//   reads aborted_ and moves the item to IDLE. An abort before that wins
//   (0, no done); an abort after it finds the done runrec and waits for it
//   (AA_EALREADY), unless that runrec is on its own thread.
// * close vs submit: one locked step each; a submit after close fails with
//   AA_ECLOSED and nothing of the item runs. A submit before close queued
//   the item, and close then drops it: its done runs with AA_ECLOSED. The
//   closing thread takes the dropped items out of the queue one at a time,
//   so that an abort of one of them still wins until its done begins.
// * free from inside: free closes, and when the calling thread is running
//   the executor's work (in_thread) it only sets free_deferred. The thread
//   that makes the executor quiescent (no runrec, no closer dispatching,
//   no worker alive, no drain item scheduled) frees it after unlocking.
// * stop and free on several threads: each stop counts itself in
//   `stoppers` (checkpoint executor.stopping); free, and a deferred free,
//   wait until no stop of another thread is inside (the last stop to
//   leave does a deferred free), so no stop touches a freed executor.
//
// The strand's notes are in executor_strand.c, the external executors'
// in executor_ext.c; executor_impl.h holds what the three share.
#include <stdlib.h>

#include "aai.h"
#include "executor_impl.h"

static _Thread_local runrec *tl_top;

static aa_executor inline_ex = {
    .kind = EX_INLINE,
    .mtx = PTHREAD_MUTEX_INITIALIZER,
    .idle_cv = PTHREAD_COND_INITIALIZER,
    .work_cv = PTHREAD_COND_INITIALIZER,
};

// ---- Records (expect ex->mtx) ----

static void
rec_push(aa_executor *ex, runrec *r, const aa_work *w, bool in_done)
{
	r->ex = ex;
	r->w = w;
	r->in_done = in_done;
	r->next = ex->running;
	r->pprev = &ex->running;
	if (ex->running != NULL) {
		ex->running->pprev = &r->next;
	}
	ex->running = r;
	r->outer = tl_top;
	tl_top = r;
}

static void
rec_pop(aa_executor *ex, runrec *r)
{
	*r->pprev = r->next;
	if (r->next != NULL) {
		r->next->pprev = r->pprev;
	}
	AAI_ASSERT(tl_top == r);
	tl_top = r->outer;
	if (ex->waiters > 0) {
		aai_cv_broadcast(&ex->idle_cv);
	}
}

// done_running_elsewhere: is a done callback of w running on a thread
// other than the caller? Expects ex->mtx.
static bool
done_running_elsewhere(aa_executor *ex, const aa_work *w)
{
	for (runrec *r = ex->running; r != NULL; r = r->next) {
		if (r->w == w && r->in_done) {
			bool mine = false;
			for (runrec *t = tl_top; t != NULL; t = t->outer) {
				if (t == r) {
					mine = true;
				}
			}
			if (!mine) {
				return true;
			}
		}
	}
	return false;
}

// in_own_callback: is the calling thread inside a callback of w (any
// phase when any_phase, else only its done)? No lock needed.
static bool
in_own_callback(const aa_work *w, bool any_phase)
{
	for (runrec *r = tl_top; r != NULL; r = r->outer) {
		if (r->w == w && (any_phase || r->in_done)) {
			return true;
		}
	}
	return false;
}

static void
wait_idle(aa_executor *ex)
{
	ex->waiters++;
	aai_cv_wait(&ex->idle_cv, &ex->mtx);
	ex->waiters--;
}

// ---- Running items (expect ex->mtx; drop it around callbacks) ----

// aai_ex_run_item runs a dequeued item: fn, then done unless it was aborted.
void
aai_ex_run_item(aa_executor *ex, aa_work *w)
{
	runrec r;
	aa_work_fn fn = w->fn_;
	void *arg = w->arg_;
	aa_done_fn done;

	w->aborted_ = false;
	aai_work_set_state(w, W_RUNNING);
	rec_push(ex, &r, w, false);
	aai_mtx_unlock(&ex->mtx);
	if (fn != NULL) {
		fn(arg);
	}
	aai_mtx_lock(&ex->mtx);
	// This locked step decides abort vs done.
	done = w->aborted_ ? NULL : w->done_;
	arg = w->arg_;
	aai_work_set_state(w, W_IDLE);
	if (done != NULL) {
		r.in_done = true; // from here on w is not touched
		aai_mtx_unlock(&ex->mtx);
		done(arg, 0);
		aai_mtx_lock(&ex->mtx);
	}
	rec_pop(ex, &r);
}

// aai_ex_drop_queued runs the done callbacks of everything queued on a closed
// executor with AA_ECLOSED, one item at a time, so that an abort of an
// item still in the queue wins.
void
aai_ex_drop_queued(aa_executor *ex)
{
	aa_work *w;
	ex->closers++;
	while ((w = aai_ex_q_pop(ex)) != NULL) {
		aa_done_fn done = w->done_;
		void *arg = w->arg_;
		runrec r;
		aai_work_set_state(w, W_IDLE);
		if (done == NULL) {
			continue;
		}
		rec_push(ex, &r, w, true);
		aai_mtx_unlock(&ex->mtx);
		done(arg, AA_ECLOSED);
		aai_mtx_lock(&ex->mtx);
		rec_pop(ex, &r);
	}
	ex->closers--;
	if (ex->waiters > 0) {
		aai_cv_broadcast(&ex->idle_cv);
	}
}

// quiescent: nothing of ex runs or can run any more. Expects ex->mtx.
static bool
quiescent(aa_executor *ex)
{
	if (ex->running != NULL || ex->closers > 0 || ex->head != NULL) {
		return false;
	}
	if (ex->kind == EX_POOL) {
		return ex->alive == 0;
	}
	return !ex->scheduled;
}

// aai_ex_take_deferred_free: true when the caller must now free ex (after
// dropping the lock, and touching nothing of ex before that). Expects
// ex->mtx.
bool
aai_ex_take_deferred_free(aa_executor *ex)
{
	if (ex->free_deferred && quiescent(ex) && ex->pins == 0 &&
	    ex->stoppers == 0) {
		ex->free_deferred = false;
		return true;
	}
	return false;
}

void
aai_ex_destroy(aa_executor *ex)
{
	if (ex->kind == EX_POOL) {
		pthread_t self = pthread_self();
		for (int i = 0; i < ex->nthreads; i++) {
			if (pthread_equal(ex->threads[i], self)) {
				pthread_detach(self); // the last worker frees
			} else if (!ex->joined) {
				pthread_join(ex->threads[i], NULL);
			}
		}
		aai_free(ex->threads);
		aai_cv_fini(&ex->work_cv);
	}
	if (ex->hooks != NULL) {
		ex->hooks->fini(ex->hooks_ctx);
	}
	aai_cv_fini(&ex->idle_cv);
	aai_mtx_fini(&ex->mtx);
	aai_free(ex);
	aai_live_dec(AA_LIVE_EXECUTOR);
}

// ---- Work items ----

void
aa_work_init(aa_work *w, aa_work_fn fn, aa_done_fn done, void *arg)
{
	w->next_ = NULL;
	w->prev_ = NULL;
	w->fn_ = fn;
	w->done_ = done;
	w->arg_ = arg;
	w->ex_ = NULL;
	w->state_ = W_IDLE;
	w->aborted_ = false;
}

int
aa_work_submit(aa_work *w, aa_executor *ex)
{
	if (w == NULL || ex == NULL) {
		return AA_EINVAL;
	}
	// Only the executor that ran w changes its state from here on, and
	// only towards IDLE: an IDLE item stays IDLE until we queue it.
	if (aai_work_state(w) != W_IDLE) {
		return AA_EBUSY;
	}
	if (ex->kind == EX_STRAND) {
		return aai_strand_submit(w, ex);
	}
	if (ex->kind == EX_EXTERN) {
		return aai_ext_submit(w, ex);
	}
	aai_mtx_lock(&ex->mtx);
	if (ex->closed) {
		aai_mtx_unlock(&ex->mtx);
		return AA_ECLOSED;
	}
	__atomic_store_n(&w->ex_, ex, __ATOMIC_RELEASE);
	w->aborted_ = false;
	if (ex->kind == EX_INLINE) {
		aai_ex_run_item(ex, w);
	} else {
		aai_work_set_state(w, W_QUEUED);
		aai_ex_q_push(ex, w);
		aai_cv_signal(&ex->work_cv);
	}
	aai_mtx_unlock(&ex->mtx);
	return 0;
}

int
aa_work_abort(aa_work *w)
{
	aa_executor *ex = aai_work_ex(w);
	int rv = AA_EALREADY;
	if (ex == NULL) {
		return AA_EALREADY; // never submitted
	}
	aai_mtx_lock(&ex->mtx);
	switch (aai_work_state(w)) {
	case W_QUEUED:
		aai_ex_q_remove(ex, w);
		aai_work_set_state(w, W_IDLE);
		rv = 0;
		break;
	case W_RUNNING:
		w->aborted_ = true; // its fn finishes, its done will not run
		aai_mtx_unlock(&ex->mtx);
		return 0;
	default:
		break;
	}
	// A done callback of w running elsewhere is waited for, so that
	// after abort returns none runs; never our own (that would hang).
	while (done_running_elsewhere(ex, w)) {
		wait_idle(ex);
	}
	aai_mtx_unlock(&ex->mtx);
	return rv;
}

int
aa_work_wait(aa_work *w)
{
	aa_executor *ex = aai_work_ex(w);
	if (ex == NULL) {
		return 0;
	}
	if (in_own_callback(w, true)) {
		return AA_EDEADLK;
	}
	aai_mtx_lock(&ex->mtx);
	while (done_running_elsewhere(ex, w) || aai_work_state(w) != W_IDLE) {
		wait_idle(ex);
	}
	aai_mtx_unlock(&ex->mtx);
	return 0;
}

// ---- Executors ----

aa_executor *
aa_executor_inline(void)
{
	return &inline_ex;
}

static void *
pool_worker(void *arg)
{
	aa_executor *ex = arg;
	bool do_free;
	aai_mtx_lock(&ex->mtx);
	for (;;) {
		aa_work *w;
		while (!ex->closed && ex->head == NULL) {
			aai_cv_wait(&ex->work_cv, &ex->mtx);
		}
		if (ex->closed) {
			break; // the closer drops what is queued
		}
		w = aai_ex_q_pop(ex);
		aai_ex_run_item(ex, w);
	}
	ex->alive--;
	if (ex->waiters > 0) {
		aai_cv_broadcast(&ex->idle_cv);
	}
	do_free = aai_ex_take_deferred_free(ex);
	aai_mtx_unlock(&ex->mtx);
	if (do_free) {
		aai_ex_destroy(ex);
	}
	return NULL;
}

aa_executor *
aai_ex_new(int kind)
{
	aa_executor *ex = aai_zalloc(sizeof(*ex));
	if (ex == NULL) {
		return NULL;
	}
	ex->kind = kind;
	aai_mtx_init(&ex->mtx);
	aai_cv_init(&ex->idle_cv);
	aai_cv_init(&ex->work_cv);
	aai_live_inc(AA_LIVE_EXECUTOR);
	return ex;
}

int
aa_pool_alloc(aa_executor **exp, int nthreads)
{
	aa_executor *ex;
	if (exp == NULL || nthreads <= 0) {
		return AA_EINVAL;
	}
	if ((ex = aai_ex_new(EX_POOL)) == NULL) {
		return AA_ENOMEM;
	}
	ex->threads = aai_zalloc(sizeof(pthread_t) * (size_t)nthreads);
	if (ex->threads == NULL) {
		aai_ex_destroy(ex);
		return AA_ENOMEM;
	}
	aai_mtx_lock(&ex->mtx);
	for (int i = 0; i < nthreads; i++) {
		if (pthread_create(&ex->threads[i], NULL, pool_worker, ex) !=
		    0) {
			ex->closed = true;
			aai_cv_broadcast(&ex->work_cv);
			aai_mtx_unlock(&ex->mtx);
			for (int j = 0; j < i; j++) {
				pthread_join(ex->threads[j], NULL);
			}
			ex->joined = true;
			aai_ex_destroy(ex);
			return AA_ESYSTEM;
		}
		ex->nthreads++;
		ex->alive++;
	}
	aai_mtx_unlock(&ex->mtx);
	*exp = ex;
	return 0;
}

typedef struct posted {
	aa_work w;
	aa_work_fn fn;
	void *arg;
} posted;

static void
posted_fn(void *arg)
{
	posted *p = arg;
	p->fn(p->arg);
}

static void
posted_done(void *arg, int rv)
{
	(void)rv; // AA_ECLOSED: dropped, fn did not run
	aai_free(arg);
	aai_live_dec(AA_LIVE_WORK);
}

int
aa_executor_post(aa_executor *ex, aa_work_fn fn, void *arg)
{
	posted *p;
	int rv;
	if (ex == NULL || fn == NULL) {
		return AA_EINVAL;
	}
	if ((p = aai_zalloc(sizeof(*p))) == NULL) {
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_WORK);
	p->fn = fn;
	p->arg = arg;
	aa_work_init(&p->w, posted_fn, posted_done, p);
	if ((rv = aa_work_submit(&p->w, ex)) != 0) {
		aai_free(p);
		aai_live_dec(AA_LIVE_WORK);
	}
	return rv;
}

void
aa_executor_close(aa_executor *ex)
{
	bool do_free;
	if (ex == NULL || ex->kind == EX_INLINE) {
		return;
	}
	aai_mtx_lock(&ex->mtx);
	if (ex->closed) {
		aai_mtx_unlock(&ex->mtx);
		return;
	}
	ex->closed = true;
	if (ex->kind == EX_POOL) {
		aai_cv_broadcast(&ex->work_cv);
	} else if (ex->scheduled && ex->target->kind != EX_INLINE) {
		// Take the drain item back if the target has not started it,
		// so that stop never waits for a busy (or our own) thread.
		aa_executor *t = ex->target;
		aai_mtx_lock(&t->mtx);
		if (aai_work_state(&ex->drain) == W_QUEUED) {
			aai_ex_q_remove(t, &ex->drain);
			aai_work_set_state(&ex->drain, W_IDLE);
			ex->scheduled = false;
		}
		aai_mtx_unlock(&t->mtx);
	}
	aai_ex_drop_queued(ex);
	do_free = aai_ex_take_deferred_free(ex);
	aai_mtx_unlock(&ex->mtx);
	if (do_free) {
		aai_ex_destroy(ex);
	}
}

bool
aa_executor_in_thread(aa_executor *ex)
{
	for (runrec *r = tl_top; r != NULL; r = r->outer) {
		if (r->ex == ex) {
			return true;
		}
	}
	return false;
}

static int stop_counted(aa_executor *ex);

int
aa_executor_stop(aa_executor *ex)
{
	if (ex == NULL || ex->kind == EX_INLINE) {
		return 0;
	}
	aai_mtx_lock(&ex->mtx);
	ex->stoppers++; // a free on another thread waits for this stop
	aai_mtx_unlock(&ex->mtx);
	AAI_CHECKPOINT("executor.stopping", ex);
	int rv = stop_counted(ex);
	aai_mtx_lock(&ex->mtx);
	ex->stoppers--;
	if (ex->waiters > 0) {
		aai_cv_broadcast(&ex->idle_cv);
	}
	bool do_free = aai_ex_take_deferred_free(ex);
	aai_mtx_unlock(&ex->mtx);
	if (do_free) {
		aai_ex_destroy(ex);
	}
	return rv;
}

static int
stop_counted(aa_executor *ex)
{
	aa_executor_close(ex);
	if (aa_executor_in_thread(ex)) {
		return AA_EDEADLK;
	}
	aai_mtx_lock(&ex->mtx);
	if (ex->kind == EX_POOL && !ex->joining) {
		ex->joining = true;
		aai_mtx_unlock(&ex->mtx);
		for (int i = 0; i < ex->nthreads; i++) {
			pthread_join(ex->threads[i], NULL);
		}
		aai_mtx_lock(&ex->mtx);
		ex->joined = true;
	}
	while (!quiescent(ex) || (ex->kind == EX_POOL && !ex->joined)) {
		wait_idle(ex);
	}
	if (ex->waiters > 0) {
		aai_cv_broadcast(&ex->idle_cv);
	}
	aai_mtx_unlock(&ex->mtx);
	return 0;
}

void
aa_executor_free(aa_executor *ex)
{
	bool do_free;
	if (ex == NULL || ex->kind == EX_INLINE) {
		return;
	}
	if (aa_executor_stop(ex) == 0) {
		// An external executor's pins keep its memory until the
		// application has made its last run call. A stop still
		// running on another thread finishes with ex first.
		aai_mtx_lock(&ex->mtx);
		while (ex->stoppers > 0) {
			wait_idle(ex);
		}
		do_free = ex->pins == 0;
		ex->free_deferred = !do_free;
		aai_mtx_unlock(&ex->mtx);
		if (do_free) {
			aai_ex_destroy(ex);
		}
		return;
	}
	// Called from inside ex's own work: whoever makes ex quiescent
	// frees it, after this work has returned.
	aai_mtx_lock(&ex->mtx);
	ex->free_deferred = true;
	do_free = aai_ex_take_deferred_free(ex);
	aai_mtx_unlock(&ex->mtx);
	if (do_free) {
		aai_ex_destroy(ex);
	}
}
