// executor_strand.c: the strand, an executor that runs its work one item
// at a time, in order, on another executor (its target).
//
// Design notes (the work item's states, the locks and the other races are
// executor.c's).
//
// The strand. A strand has its own queue and one embedded drain item that
// it submits to its target when work arrives while it is idle
// (`scheduled` says the drain item is queued or running on the target).
// The drain function keeps taking items from the strand's queue until it
// is empty, including items submitted while it runs: that is the chaining
// rule, work a strand callback submits to its own strand runs next on the
// same thread. `scheduled` is cleared in the drain item's done callback,
// not in its function, because the target still touches the drain item
// after the function returns; once the done callback has begun it does
// not, so a strand waiting in stop may then free the strand. A strand on
// the inline executor is drained by the submitting thread itself.
//
// The races, and who wins.
// * target closed under a strand: the drain item's done callback gets
//   AA_ECLOSED, or resubmitting it fails; either way the strand closes
//   itself and drops its queue, so no done callback is lost and stop does
//   not wait for a pool that will never run it.
#include <stdlib.h>

#include "aai.h"
#include "executor_impl.h"

// strand_run takes items from the strand's queue until it is empty or the
// strand closed. The caller owns the strand's `scheduled` flag.
static void
strand_run(aa_executor *s)
{
	aa_work *w;
	aai_mtx_lock(&s->mtx);
	while (!s->closed && (w = aai_ex_q_pop(s)) != NULL) {
		aai_ex_run_item(s, w);
	}
	aai_mtx_unlock(&s->mtx);
}

static void
strand_drain_fn(void *arg)
{
	strand_run(arg);
}

// strand_closed_under closes s because its target refused or dropped the
// drain item; keep is an item to take back out of the queue (its submit
// fails instead). Returns AA_ECLOSED when keep was taken back.
static int
strand_closed_under(aa_executor *s, aa_work *keep)
{
	int rv = 0;
	bool do_free;
	aai_mtx_lock(&s->mtx);
	s->closed = true;
	s->scheduled = false;
	if (keep != NULL && aai_work_ex(keep) == s &&
	    aai_work_state(keep) == W_QUEUED) {
		aai_ex_q_remove(s, keep);
		aai_work_set_state(keep, W_IDLE);
		rv = AA_ECLOSED;
	}
	aai_ex_drop_queued(s);
	if (s->waiters > 0) {
		aai_cv_broadcast(&s->idle_cv);
	}
	do_free = aai_ex_take_deferred_free(s);
	aai_mtx_unlock(&s->mtx);
	if (do_free) {
		aai_ex_destroy(s);
	}
	return rv;
}

// strand_drain_done runs when the target has finished with the drain item
// (or dropped it, rv AA_ECLOSED): reschedule or go idle.
static void
strand_drain_done(void *arg, int rv)
{
	aa_executor *s = arg;
	bool again;
	bool do_free;
	if (rv != 0) {
		strand_closed_under(s, NULL);
		return;
	}
	aai_mtx_lock(&s->mtx);
	again = !s->closed && s->head != NULL;
	if (!again) {
		s->scheduled = false;
		if (s->waiters > 0) {
			aai_cv_broadcast(&s->idle_cv);
		}
	}
	do_free = aai_ex_take_deferred_free(s);
	aai_mtx_unlock(&s->mtx);
	if (do_free) {
		aai_ex_destroy(s);
	} else if (again && aa_work_submit(&s->drain, s->target) != 0) {
		strand_closed_under(s, NULL);
	}
}

int
aai_strand_submit(aa_work *w, aa_executor *s)
{
	bool schedule;
	bool do_free = false;
	aai_mtx_lock(&s->mtx);
	if (!aai_ex_queue_item(s, w)) {
		aai_mtx_unlock(&s->mtx);
		return AA_ECLOSED;
	}
	schedule = !s->scheduled;
	s->scheduled = true;
	aai_mtx_unlock(&s->mtx);
	if (!schedule) {
		return 0; // the running drain takes it (chaining)
	}
	if (s->target->kind != EX_INLINE) {
		if (aa_work_submit(&s->drain, s->target) != 0) {
			return strand_closed_under(s, w);
		}
		return 0;
	}
	// On the inline executor the submitting thread drains the strand.
	for (;;) {
		strand_run(s);
		aai_mtx_lock(&s->mtx);
		if (!s->closed && s->head != NULL) {
			aai_mtx_unlock(&s->mtx);
			continue;
		}
		s->scheduled = false;
		if (s->waiters > 0) {
			aai_cv_broadcast(&s->idle_cv);
		}
		do_free = aai_ex_take_deferred_free(s);
		aai_mtx_unlock(&s->mtx);
		break;
	}
	if (do_free) {
		aai_ex_destroy(s);
	}
	return 0;
}

int
aa_strand_alloc(aa_executor **exp, aa_executor *target)
{
	aa_executor *s;
	bool closed;
	if (exp == NULL || target == NULL) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&target->mtx);
	closed = target->closed;
	aai_mtx_unlock(&target->mtx);
	if (closed) {
		return AA_ECLOSED;
	}
	if ((s = aai_ex_new(EX_STRAND)) == NULL) {
		return AA_ENOMEM;
	}
	s->target = target;
	aa_work_init(&s->drain, strand_drain_fn, strand_drain_done, s);
	*exp = s;
	return 0;
}
