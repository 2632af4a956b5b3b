// op_impl.h: what the operation object's files share (op.c, op_wait.c,
// op_progress.c, op_read.c): the op itself and the helpers of its hot
// paths. Not for the layers: they use aa/op.h and aai.h.
#ifndef AA_OP_IMPL_H
#define AA_OP_IMPL_H

#include <stddef.h>

#include "aai.h"

struct pending_report; // op_progress.c

enum delivery {
	D_NONE,
	D_WAITING,
	D_RUNNING,
	D_HANDED,
	D_POSTED,
	D_DONE,
};

struct aa_op {
	pthread_mutex_t mtx;
	atomic_uint refs;
	atomic_int state;  // aa_state, written under mtx
	atomic_int detail; // what the provider's cancel fn returned
	uint32_t size;     // bytes taken from the allocator
	uint64_t id;

	// Provider.
	aa_op_cancel_fn cancel_fn;
	aa_op_after_cancel_fn after_cancel_fn;
	void *prov_arg;
	aa_assoc assoc;

	// Completion handler (set: cb != NULL).
	aa_op_cb cb;
	void *cb_arg;
	pthread_t dthread; // (the aa_work that posts it: op_work)

	// Progress handler.
	aa_op_progress_cb pcb;
	void *pcb_arg;
	pthread_t pthread;
	struct pending_report *pending; // handed to pthread, or NULL

	// Settlement handler (set: scb != NULL).
	aa_op_cb scb;
	void *scb_arg;

	// Result.
	void *result;
	size_t result_len;
	aa_free_fn release;
	char *errmsg;
	int err;
	int32_t app_code; // with err == AA_EAPP

	// Small state, packed (an op is mostly pointers; see op.c, "Memory").
	uint8_t policy;       // aa_cancel_policy
	uint8_t cancel_types; // AA_CANCEL_* mask
	uint8_t dstate;       // enum delivery
	uint8_t settle;       // aa_settlement
	uint16_t waiters;     // threads waiting on the op's wait stripe
	bool cancel_called : 1;
	bool slot_connected : 1;
	bool leaving_slot : 1; // final; delivery waits until it left the slot
	bool progress_running : 1;
	bool scb_done : 1;

	max_align_t extra[];
};

static inline bool
aai_op_is_self(pthread_t t)
{
	return pthread_equal(t, pthread_self()) != 0;
}

static inline aa_state
aai_op_load_state(const aa_op *op)
{
	return (aa_state)atomic_load_explicit(&((aa_op *)op)->state,
	                                      memory_order_acquire);
}

// ---- op_wait.c ----

// aai_op_wait blocks until a wake-up of op's stripe. Expects the op's
// lock, which it drops while waiting and holds again on return.
AAI_HIDDEN void aai_op_wait(aa_op *op);
// aai_op_wake_stripe wakes every thread waiting on op's stripe (expects
// the op's lock); aai_op_wake_waiters calls it only when someone waits.
AAI_HIDDEN void aai_op_wake_stripe(aa_op *op);
// aai_op_wait_callbacks waits until neither the handler nor a progress
// callback runs on another thread. Expects the op's lock.
AAI_HIDDEN void aai_op_wait_callbacks(aa_op *op);

// aai_op_wake_waiters wakes the threads waiting on op, if any (then also those
// of the other ops of its stripe). Expects the op's lock.
static inline void
aai_op_wake_waiters(aa_op *op)
{
	if (op->waiters == 0) {
		return; // the common case: nobody waits, no stripe touched
	}
	aai_op_wake_stripe(op);
}

// ---- op.c ----

// aai_op_deliver_now runs (or posts) the handler on the calling thread,
// which owns the delivery (dstate RUNNING), without the lock.
AAI_HIDDEN void aai_op_deliver_now(aa_op *op);

#endif // AA_OP_IMPL_H
