// op_progress.c: progress reports and their handler (docs/op.md is the
// contract).
//
// Design notes.
//
// Hand-over instead of waiting. Delivery and progress never wait for
// another thread, because two ops whose callbacks call into each other
// from two threads (a parent and its child forwarding progress) would
// wait on each other for ever. The thread running a progress callback
// (`pthread`) owns the op's callbacks until it returns:
//   * a delivery that finds it running sets HANDED and returns; when the
//     callback returns, that thread delivers (in the same locked step
//     that clears progress_running, so a waiting cancel never sees a gap).
//     The completion handler stays the last callback, never overlapping a
//     progress callback on another thread;
//   * a progress report that finds it running is copied into `pending`
//     (replacing an older pending one: the latest report wins) and
//     returns; that thread runs the callback again with it when the first
//     returns, unless the op became final meanwhile (then it is dropped,
//     as a report on a final op is).
#include <stdlib.h>
#include <string.h>

#include "op_impl.h"

// A progress report copied for the thread running a progress callback.
struct pending_report {
	size_t len;
	max_align_t data[];
};

int
aa_op_set_progress_handler(aa_op *op, aa_op_progress_cb cb, void *arg)
{
	if (cb == NULL) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&op->mtx);
	if (op->pcb != NULL) {
		aai_mtx_unlock(&op->mtx);
		return AA_EBUSY;
	}
	op->pcb = cb;
	op->pcb_arg = arg;
	aai_mtx_unlock(&op->mtx);
	return 0;
}

// hand_progress copies a report for the thread running a progress callback
// on another thread, replacing an older pending one. Expects the op's lock.
static int
hand_progress(aa_op *op, const void *data, size_t len)
{
	struct pending_report *p;
	if (len > SIZE_MAX - sizeof(*p) ||
	    (p = aai_alloc(sizeof(*p) + len)) == NULL) {
		return AA_ENOMEM;
	}
	p->len = len;
	if (len > 0) {
		memcpy(p->data, data, len);
	}
	aai_free(op->pending);
	op->pending = p;
	return 0;
}

// progress_done runs on the thread whose progress callback just returned:
// it runs the reports handed to it meanwhile, then the delivery handed to
// it, if any, and gives up the op's callbacks.
static void
progress_done(aa_op *op)
{
	struct pending_report *p;

	aai_mtx_lock(&op->mtx);
	while (op->pending != NULL && aai_op_load_state(op) == AA_STARTED) {
		p = op->pending;
		op->pending = NULL;
		aai_mtx_unlock(&op->mtx);
		op->pcb(op, op->pcb_arg, p->data, p->len);
		aai_free(p);
		aai_mtx_lock(&op->mtx);
	}
	p = op->pending; // dropped: the op is final
	op->pending = NULL;
	op->progress_running = false;
	bool handed = op->dstate == D_HANDED;
	if (handed) {
		// One locked step: a waiting cancel sees this thread deliver.
		op->dstate = D_RUNNING;
		op->dthread = pthread_self();
	}
	aai_op_wake_waiters(op);
	aai_mtx_unlock(&op->mtx);
	aai_free(p);
	if (handed) {
		aai_op_deliver_now(op);
	}
}

int
aa_op_progress(aa_op *op, const void *data, size_t len)
{
	int rv;

	aai_mtx_lock(&op->mtx);
	if (aai_op_load_state(op) != AA_STARTED) {
		aai_mtx_unlock(&op->mtx);
		return AA_EALREADY;
	}
	if (op->pcb == NULL ||
	    (op->progress_running && aai_op_is_self(op->pthread))) {
		// No handler, or a report from inside the callback: ignored.
		aai_mtx_unlock(&op->mtx);
		return 0;
	}
	if (op->progress_running) {
		// Progress callbacks of one op are serialised, without
		// waiting: the running thread takes the report over.
		rv = hand_progress(op, data, len);
		aai_mtx_unlock(&op->mtx);
		return rv;
	}
	op->progress_running = true;
	op->pthread = pthread_self();
	aai_mtx_unlock(&op->mtx);

	aa_op_ref(op);
	op->pcb(op, op->pcb_arg, data, len);
	progress_done(op);
	aa_op_unref(op);
	return 0;
}
