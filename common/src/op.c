// op.c: the operation object (docs/op.md is the contract).
//
// Design notes.
//
// State. `state` is STARTED, then exactly one of COMPLETED, CANCELED,
// ERROR. Every transition out of STARTED happens in one locked step (the
// single place that decides complete vs cancel vs fail): whoever takes the
// op's mutex first while the state is STARTED wins; everyone after that
// sees a final state and is absorbed (AA_EALREADY). The state is also kept
// in an atomic so that aa_op_status reads it without the lock; results are
// written before the state is published (release) and never change after.
//
// Delivery of the completion handler. `dstate` says where the handler is:
//   NONE      the op is STARTED;
//   WAITING   final, but no handler set yet: aa_op_set_handler delivers;
//   RUNNING   one thread (`dthread`) is delivering it;
//   HANDED    final while a progress callback runs on another thread:
//             that thread delivers when its callback returns;
//   POSTED    queued on the associated executor;
//   DONE      it has returned.
// The thread that moves dstate to RUNNING (the finisher, or the setter when
// the op was already final) runs the handler after dropping the lock, so the
// handler runs exactly once and never under a lock. Delivery holds a
// reference, so a handler may drop the last user reference.
//
// Cancel policies. Immediate: the cancel itself makes the op CANCELED (the
// locked step above), calls the provider's cancel function once (outside
// the lock) and delivers the handler inline. The provider's later finish is
// absorbed and becomes the settlement. Cooperative: the cancel function is
// called once, outside the lock, and the op stays STARTED until the
// provider finishes it.
//
// Cancellation slot. An op made with a slot connects to it (holding a
// reference) until it is final. The slot handler cancels without waiting,
// because the emitting parent may itself be running inside a callback. The
// thread that makes the op final disconnects the slot before delivering the
// handler; disconnect waits for an emit running on another thread, and that
// emit cannot wait for this thread (it does not wait), so no deadlock.
//
// Locks: one mutex per op; no user or provider function runs under it. A
// wait stripe's mutex is taken only under an op's lock, never the other
// way round, and nothing else is done under it.
//
// Memory. An op is mostly pointers; the small state (policy, types,
// delivery state, settlement, flags) is packed into bytes and bits under
// the op's lock, the handlers' "set" flags are the function pointers
// themselves, the condition variable is shared (op_wait.c), and the work item
// that posts the handler to an executor (56 bytes) is allocated only for
// an op associated with one, after the provider's bytes (op_work): 240
// bytes on x86-64 instead of 384, so that an op and its provider's memory (the
// client's cop, the server's entry) fit the recycler's size classes
// (alloc.c) with room to spare. docs/PERFORMANCE.md has the breakdown.
//
// The waits of a cancel are in op_wait.c, progress and its hand-over in
// op_progress.c, the reads in op_read.c; op_impl.h holds the op itself.
#include <stdlib.h>
#include <string.h>

#include "op_impl.h"

static atomic_uint_fast64_t next_op_id = 1;

// posts_to says whether ops made with assoc deliver through an executor
// (not inline), and so need a work item.
static bool
posts_to(const aa_assoc *assoc)
{
	return assoc != NULL && assoc->executor != NULL &&
	       assoc->executor != aa_executor_inline();
}

// op_work returns the work item at the end of an op made with an
// executor (aa_op_alloc put it there).
static aa_work *
op_work(aa_op *op)
{
	return (aa_work *)(void *)((char *)op + op->size - sizeof(aa_work));
}

static bool deliver(aa_op *op, pthread_t *to);
static void maybe_settle(aa_op *op);
static void slot_handler(void *arg, aa_cancel_type type);

int
aa_op_alloc(aa_op **opp, const aa_op_provider *prov, const aa_assoc *assoc)
{
	const aa_allocator *a;
	aa_op *op;
	size_t size;

	if (opp == NULL || prov == NULL ||
	    (prov->cancel_types & ~(unsigned)AA_CANCEL_ALL) != 0) {
		return AA_EINVAL;
	}
	a = (assoc != NULL && assoc->allocator != NULL)
	        ? assoc->allocator
	        : aa_allocator_default();
	if (prov->extra > UINT32_MAX / 2) {
		return AA_EINVAL;
	}
	size = offsetof(aa_op, extra) + prov->extra;
	if (posts_to(assoc)) {
		// The work item that posts the handler, after the provider's
		// bytes: only an op with an executor pays for it (op_work).
		size = (size + _Alignof(aa_work) - 1) &
		       ~(size_t)(_Alignof(aa_work) - 1);
		size += sizeof(aa_work);
	}
	if ((op = a->alloc(a->ctx, size)) == NULL) {
		return AA_ENOMEM;
	}
	memset(op, 0, size);
	aai_mtx_init(&op->mtx);
	atomic_init(&op->refs, 1);
	atomic_init(&op->state, AA_STARTED);
	atomic_init(&op->detail, -1);
	op->id = atomic_fetch_add(&next_op_id, 1);
	op->cancel_fn = prov->cancel;
	op->after_cancel_fn = prov->after_cancel;
	op->prov_arg = prov->arg;
	op->policy = (uint8_t)prov->policy;
	op->cancel_types = (uint8_t)prov->cancel_types;
	op->size = (uint32_t)size;
	op->dstate = D_NONE;
	op->settle = (uint8_t)AA_SETTLE_PENDING;
	if (assoc != NULL) {
		op->assoc = *assoc;
	}
	op->assoc.allocator = a;
	aai_live_inc(AA_LIVE_OP);

	if (op->assoc.slot != NULL) {
		// The slot holds a reference until the op is final. Both are
		// in place before connecting: an emit may cancel the op as
		// soon as it is connected, even before this function returns,
		// and that cancel must find the slot to disconnect.
		atomic_fetch_add(&op->refs, 1);
		op->slot_connected = true;
		int rv =
		    aa_cancel_slot_connect(op->assoc.slot, slot_handler, op);
		if (rv != 0) {
			op->slot_connected = false;
			atomic_fetch_sub(&op->refs, 1);
			op->assoc.slot = NULL;
			aa_op_unref(op);
			return rv;
		}
		AAI_CHECKPOINT("op.slot_connected", op); // no lock held
	}
	*opp = op;
	return 0;
}

void
aa_op_ref(aa_op *op)
{
	atomic_fetch_add_explicit(&op->refs, 1, memory_order_relaxed);
}

static void
op_free(aa_op *op)
{
	const aa_allocator *a = op->assoc.allocator;
	AAI_ASSERT(!op->slot_connected);
	if (op->release != NULL && op->result != NULL) {
		op->release(op->result);
	}
	aai_free(op->errmsg);
	aai_free(op->pending);
	aai_mtx_fini(&op->mtx);
	a->free(a->ctx, op, op->size);
	aai_live_dec(AA_LIVE_OP);
}

void
aa_op_unref(aa_op *op)
{
	if (op == NULL) {
		return;
	}
	if (atomic_fetch_sub_explicit(&op->refs, 1, memory_order_acq_rel) ==
	    1) {
		op_free(op);
	}
}

// ---- Delivery ----

// mark_delivery decides, as part of the final transition or of setting the
// handler, who delivers the handler. Expects the op's lock; returns true
// when the caller must call deliver() after dropping the lock.
static bool
mark_delivery(aa_op *op)
{
	if (op->cb == NULL) {
		op->dstate = D_WAITING;
		return false;
	}
	op->dstate = D_RUNNING;
	op->dthread = pthread_self();
	return true;
}

// mark_final_delivery is mark_delivery for the final transition. While
// the op is still connected to its parent's slot nobody delivers: the
// finishing thread does, in after_final, once the op has left the slot,
// so that no handler runs (and starts a successor on the same slot)
// before then, even one set meanwhile. Expects the op's lock.
static bool
mark_final_delivery(aa_op *op)
{
	if (op->slot_connected) {
		op->leaving_slot = true;
		op->dstate = D_WAITING;
		return false;
	}
	return mark_delivery(op);
}

// run_handler runs the completion handler on the calling thread and marks
// it done. The caller holds a reference for the duration.
static void
run_handler(aa_op *op)
{
	aai_mtx_lock(&op->mtx);
	op->dstate = D_RUNNING;
	op->dthread = pthread_self();
	aai_mtx_unlock(&op->mtx);

	op->cb(op, op->cb_arg);

	aai_mtx_lock(&op->mtx);
	op->dstate = D_DONE;
	aai_op_wake_waiters(op);
	aai_mtx_unlock(&op->mtx);
	maybe_settle(op);
}

static void
posted_work(void *arg)
{
	run_handler(arg);
}

static void
posted_done(void *arg, int rv)
{
	aa_op *op = arg;
	if (rv != 0) {
		// The executor closed before running it: the handler must
		// still run exactly once, so it runs here.
		run_handler(op);
	}
	aa_op_unref(op);
}

// aai_op_deliver_now runs (or posts) the handler on the calling thread, which
// owns the delivery (dstate RUNNING), without the lock.
void
aai_op_deliver_now(aa_op *op)
{
	aa_executor *ex = op->assoc.executor;

	aa_op_ref(op);
	if (posts_to(&op->assoc)) {
		aa_work *w = op_work(op);
		aa_work_init(w, posted_work, posted_done, op);
		aai_mtx_lock(&op->mtx);
		op->dstate = D_POSTED;
		aai_op_wake_waiters(op); // cancels waiting for RUNNING
		aai_mtx_unlock(&op->mtx);
		if (aa_work_submit(w, ex) == 0) {
			return; // posted_done drops the reference
		}
		// A closed executor: run the handler here instead.
	}
	run_handler(op);
	aa_op_unref(op);
}

// deliver runs (or posts) the handler, or hands it to the thread running a
// progress callback (see the design notes): then it returns true and that
// thread in *to (to may be NULL). Called by the thread that set dstate to
// RUNNING, without the lock.
static bool
deliver(aa_op *op, pthread_t *to)
{
	aai_mtx_lock(&op->mtx);
	if (op->progress_running && !aai_op_is_self(op->pthread)) {
		op->dstate = D_HANDED;
		if (to != NULL) {
			*to = op->pthread;
		}
		// Under the op's lock: record or open a gate only.
		AAI_CHECKPOINT("op.deliver_handoff", op);
		aai_mtx_unlock(&op->mtx);
		return true;
	}
	aai_mtx_unlock(&op->mtx);
	aai_op_deliver_now(op);
	return false;
}

// maybe_settle runs the settle handler once the op is final, its
// settlement known and its completion handler returned (D_DONE: also not
// before a completion handler that is set late, after the op became
// final). Every path that can make those three true calls it.
static void
maybe_settle(aa_op *op)
{
	aai_mtx_lock(&op->mtx);
	if (op->scb == NULL || op->scb_done ||
	    op->settle == AA_SETTLE_PENDING || op->dstate != D_DONE) {
		aai_mtx_unlock(&op->mtx);
		return;
	}
	op->scb_done = true;
	aai_mtx_unlock(&op->mtx);
	aa_op_ref(op);
	op->scb(op, op->scb_arg);
	aa_op_unref(op);
}

// after_final runs on the thread that made the op final, without the lock:
// disconnect the parent's slot, then deliver the handler. True when the
// delivery was handed to the thread in *to (see deliver).
static bool
after_final(aa_op *op, bool must_deliver, pthread_t *to)
{
	bool disconnect, handed = false;
	aai_mtx_lock(&op->mtx);
	disconnect = op->slot_connected;
	op->slot_connected = false;
	aai_mtx_unlock(&op->mtx);
	if (disconnect) {
		aa_cancel_slot_disconnect(op->assoc.slot, slot_handler, op);
		aai_mtx_lock(&op->mtx);
		op->leaving_slot = false;
		must_deliver = op->dstate == D_WAITING && mark_delivery(op);
		aai_mtx_unlock(&op->mtx);
		aa_op_unref(op); // the slot's reference; the caller holds one
	}
	if (must_deliver) {
		handed = deliver(op, to);
	}
	maybe_settle(op);
	return handed;
}

int
aa_op_set_handler(aa_op *op, aa_op_cb cb, void *arg)
{
	bool run;
	if (cb == NULL) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&op->mtx);
	if (op->cb != NULL) {
		aai_mtx_unlock(&op->mtx);
		return AA_EBUSY;
	}
	op->cb = cb;
	op->cb_arg = arg;
	run =
	    op->dstate == D_WAITING && !op->leaving_slot && mark_delivery(op);
	aai_mtx_unlock(&op->mtx);
	if (run) {
		(void)deliver(op, NULL);
	}
	return 0;
}

int
aa_op_set_settle_handler(aa_op *op, aa_op_cb cb, void *arg)
{
	if (cb == NULL) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&op->mtx);
	if (op->scb != NULL) {
		aai_mtx_unlock(&op->mtx);
		return AA_EBUSY;
	}
	op->scb = cb;
	op->scb_arg = arg;
	aai_mtx_unlock(&op->mtx);
	maybe_settle(op);
	return 0;
}

// ---- Cancel ----

static int
cancel(aa_op *op, aa_cancel_type type, bool may_wait)
{
	bool call_fn;
	bool run;

	if (type == AA_CANCEL_NONE ||
	    ((unsigned)type & ~(unsigned)AA_CANCEL_ALL) != 0) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&op->mtx);
	if (aai_op_load_state(op) != AA_STARTED) {
		if (may_wait) {
			aai_op_wait_callbacks(op);
		}
		aai_mtx_unlock(&op->mtx);
		return AA_EALREADY;
	}
	if (!aa_cancel_supports(op->cancel_types, type) ||
	    (op->policy == AA_POLICY_COOPERATIVE && op->cancel_fn == NULL)) {
		aai_mtx_unlock(&op->mtx);
		return AA_ENOTSUP;
	}
	call_fn = !op->cancel_called && op->cancel_fn != NULL;
	op->cancel_called = true;
	if (op->policy == AA_POLICY_COOPERATIVE) {
		// The provider decides; a repeated request is not passed on.
		aai_mtx_unlock(&op->mtx);
		if (call_fn) {
			// A cancel through a parent's slot holds no reference
			// of its own, and the provider may finish the op
			// inside its cancel function (which drops the slot's).
			aa_op_ref(op);
			atomic_store(&op->detail,
			             op->cancel_fn(op, type, op->prov_arg));
			if (op->after_cancel_fn != NULL) {
				op->after_cancel_fn(op, op->prov_arg);
			}
			aa_op_unref(op);
		}
		return 0;
	}
	// Immediate: this locked step is the one that decides the race with
	// complete / fail / canceled.
	atomic_store_explicit(&op->state, AA_CANCELED, memory_order_release);
	run = mark_final_delivery(op);
	aai_mtx_unlock(&op->mtx);

	// The caller's reference keeps op alive; hold one more in case the
	// handler drops it.
	aa_op_ref(op);
	if (call_fn) {
		atomic_store(&op->detail,
		             op->cancel_fn(op, type, op->prov_arg));
	}
	pthread_t to;
	bool handed = after_final(op, run, &to);
	// The handler has run inline, been posted, or been handed to another
	// thread: now the slow part of the cancel (the client layer writes
	// its Cancel frame here), which the handler never waits for.
	if (call_fn && op->after_cancel_fn != NULL) {
		op->after_cancel_fn(op, op->prov_arg);
	}
	if (handed && may_wait) {
		// The handler was handed to a progress callback running on
		// another thread: cancel still returns only after that thread
		// has delivered it (run it, or posted it to the executor), as
		// it would have inline. Only the user's cancel waits.
		aai_mtx_lock(&op->mtx);
		while (op->dstate == D_HANDED ||
		       (op->dstate == D_RUNNING &&
		        pthread_equal(op->dthread, to))) {
			aai_op_wait(op);
		}
		aai_mtx_unlock(&op->mtx);
	}
	aa_op_unref(op);
	return 0;
}

int
aa_op_cancel(aa_op *op, aa_cancel_type type)
{
	return cancel(op, type, true);
}

static void
slot_handler(void *arg, aa_cancel_type type)
{
	(void)cancel(arg, type, false);
}

// ---- Provider side ----

static aa_settlement
settlement_of(aa_state s)
{
	switch (s) {
	case AA_COMPLETED:
		return AA_SETTLE_COMPLETED;
	case AA_CANCELED:
		return AA_SETTLE_CANCELED;
	default:
		return AA_SETTLE_FAILED;
	}
}

// finish is the provider's side of the one transition out of STARTED.
// Takes ownership of data (released when absorbed) and of msg.
static int
finish(aa_op *op, aa_state to, void *data, size_t len, aa_free_fn release,
       int err, int32_t app_code, char *msg, bool settles)
{
	bool run;

	aai_mtx_lock(&op->mtx);
	if (aai_op_load_state(op) != AA_STARTED) {
		// Absorbed. The first finish after an immediate cancel is what
		// the provider really did: the settlement.
		bool settled = false;
		if (settles && op->settle == AA_SETTLE_PENDING) {
			op->settle = (uint8_t)settlement_of(to);
			settled = true;
		}
		aai_mtx_unlock(&op->mtx);
		if (release != NULL && data != NULL) {
			release(data);
		}
		aai_free(msg);
		if (settled) {
			maybe_settle(op);
		}
		return AA_EALREADY;
	}
	op->result = data;
	op->result_len = len;
	op->release = release;
	op->err = err;
	op->app_code = app_code;
	op->errmsg = msg;
	if (settles && op->settle == AA_SETTLE_PENDING) {
		op->settle = (uint8_t)settlement_of(to);
	}
	// This locked step decides the race with cancel.
	atomic_store_explicit(&op->state, to, memory_order_release);
	run = mark_final_delivery(op);
	aai_mtx_unlock(&op->mtx);

	aa_op_ref(op);
	(void)after_final(op, run, NULL);
	aa_op_unref(op);
	return 0;
}

int
aa_op_complete(aa_op *op, void *data, size_t len, aa_free_fn release)
{
	return finish(op, AA_COMPLETED, data, len, release, 0, 0, NULL, true);
}

static char *
copy_msg(const char *msg)
{
	// NULL on ENOMEM: the code still counts.
	return msg != NULL && msg[0] != '\0' ? aai_strdup(msg) : NULL;
}

int
aa_op_fail(aa_op *op, int err, const char *msg)
{
	if (err <= 0) {
		return AA_EINVAL;
	}
	return finish(op, AA_ERROR, NULL, 0, NULL, err, 0, copy_msg(msg),
	              true);
}

int
aai_op_fail_unsettled(aa_op *op, int err, const char *msg)
{
	return finish(op, AA_ERROR, NULL, 0, NULL, err, 0, copy_msg(msg),
	              false);
}

int
aai_op_canceled_unsettled(aa_op *op)
{
	return finish(op, AA_CANCELED, NULL, 0, NULL, 0, 0, NULL, false);
}

int
aa_op_fail_app(aa_op *op, int32_t code, const char *msg)
{
	return finish(op, AA_ERROR, NULL, 0, NULL, AA_EAPP, code,
	              copy_msg(msg), true);
}

int
aa_op_canceled(aa_op *op)
{
	return finish(op, AA_CANCELED, NULL, 0, NULL, 0, 0, NULL, true);
}

int
aa_op_settle(aa_op *op, aa_settlement s)
{
	if (s == AA_SETTLE_PENDING || (unsigned)s > AA_SETTLE_UNKNOWN) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&op->mtx);
	if (op->settle != AA_SETTLE_PENDING) {
		aai_mtx_unlock(&op->mtx);
		return AA_EALREADY;
	}
	op->settle = (uint8_t)s;
	aai_mtx_unlock(&op->mtx);
	maybe_settle(op);
	return 0;
}
