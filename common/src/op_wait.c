// op_wait.c: where a cancel waits for an op's callbacks running on
// another thread (docs/op.md is the contract).
//
// Design notes.
//
// Waiting. Only aa_op_cancel ever waits for another thread: a cancel
// waits while the handler or a progress callback runs on another thread,
// so that after it returns no callback of the op is running (Envoy's abort
// rule). It does not wait when the calling thread is itself inside one of
// the op's callbacks (cancel from inside the handler or a progress
// callback), nor when it comes from a parent's slot (an emit), which is
// what makes those calls safe instead of deadlocks. The settle handler is
// the exception: it reports what the provider really did, which may
// become known long after cancel returned.
//
// Where a cancel waits. Such waits are rare and short, so ops keep no
// condition variable of their own: they share a table of 64 stripes (a
// mutex and a cv each; an op hashes to one by its address). The waiter
// counts itself in `waiters` under the op's lock, takes the stripe's
// mutex before dropping the op's, and waits on the stripe's cv. Whoever
// ends a wait condition does it under the op's lock and then, only when
// `waiters` is not zero, broadcasts on the stripe under the stripe's
// mutex: lock order op, then stripe, so a wake-up cannot fall between a
// waiter's check and its wait (no lost wake-up), and the hot path, where
// nobody waits, touches no stripe at all. Several ops share a stripe, so
// a waiter can be woken for another op: every wait is a loop that checks
// its own op's condition again under the op's lock.
#include "op_impl.h"

// The rare waits (design notes, "Waiting") share a table of condition
// variables instead of one per op (op.c's notes, "Memory"). Each
// stripe's cv is only ever used with the stripe's own mutex, as POSIX
// requires.
#define WAIT_STRIPES 64

static struct wait_stripe {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
} wait_stripes[WAIT_STRIPES];

static pthread_once_t wait_stripes_once = PTHREAD_ONCE_INIT;

static void
wait_stripes_init(void)
{
	for (int i = 0; i < WAIT_STRIPES; i++) {
		aai_mtx_init(&wait_stripes[i].mtx);
		aai_cv_init(&wait_stripes[i].cv);
	}
}

static struct wait_stripe *
stripe_of(const aa_op *op)
{
	(void)pthread_once(&wait_stripes_once, wait_stripes_init);
	uint64_t h = (uint64_t)(uintptr_t)op * 0x9e3779b97f4a7c15ull;
	return &wait_stripes[(h >> 32) % WAIT_STRIPES];
}

// aai_op_wait blocks until an aai_op_wake_waiters of op (or of another op of
// the same stripe: the caller waits in a loop that checks its condition).
// Expects the op's lock, which it drops while waiting and holds again on
// return. The stripe's mutex is taken before the op's is dropped, so a wake-up
// (made under the op's lock, then the stripe's) cannot fall between the
// caller's check and its wait. Lock order: op, then stripe.
void
aai_op_wait(aa_op *op)
{
	struct wait_stripe *w = stripe_of(op);
	op->waiters++;
	aai_mtx_lock(&w->mtx);
	aai_mtx_unlock(&op->mtx);
	aai_cv_wait(&w->cv, &w->mtx);
	aai_mtx_unlock(&w->mtx);
	aai_mtx_lock(&op->mtx);
	op->waiters--;
}

// aai_op_wake_stripe wakes the threads waiting on op's stripe (then also
// those of the other ops of the stripe). Expects the op's lock.
void
aai_op_wake_stripe(aa_op *op)
{
	struct wait_stripe *w = stripe_of(op);
	aai_mtx_lock(&w->mtx);
	aai_cv_broadcast(&w->cv);
	aai_mtx_unlock(&w->mtx);
}

// aai_op_wait_callbacks waits until neither the handler nor a progress
// callback runs on another thread, unless this thread is inside one of them.
// Expects the op's lock.
void
aai_op_wait_callbacks(aa_op *op)
{
	if ((op->progress_running && aai_op_is_self(op->pthread)) ||
	    (op->dstate == D_RUNNING && aai_op_is_self(op->dthread))) {
		return;
	}
	while ((op->dstate == D_RUNNING && !aai_op_is_self(op->dthread)) ||
	       (op->progress_running && !aai_op_is_self(op->pthread))) {
		// Checkpoint under the op's lock: it may record or open a
		// gate, never call into the op.
		AAI_CHECKPOINT("op.cancel_wait", op);
		aai_op_wait(op);
	}
}
