// cop.c: the client op (a `cop`, the provider memory of each aa_op that
// aa_client_call returns): its submit states, the cancel that decides its
// timeline, the server's answer, its deadline, and how it is finished.
//
// Design notes.
//
// Submit states (all under the client's mutex):
//   NEW       being set up by aa_client_call: a parent's cancel now is
//             pre-submit, and the call sends nothing;
//   QUEUED    in the submit queue, Start not sent: a cancel now is
//             pre-submit and nothing is ever sent;
//   SENT      Start handed to the transport: a cancel now is in-flight and
//             a Cancel follows (always after the Start: both are handed to
//             the transport under the client's mutex);
//   RECEIVED  the server's Complete arrived and is being handed over (the
//             op is still in the map, so that cancel-all finds it): a
//             cancel now is already-complete, nothing more is sent;
//   DONE      off the map (taken out by a flush, a deadline, a loss or
//             the answer); the client's reference is gone or going.
// The transitions out of QUEUED (submit vs cancel vs deadline vs loss) and
// out of SENT (Complete vs loss) are single locked steps; the op's own
// state (its one locked transition) decides cancel vs completion for the
// user. So the user sees CANCELED in all three timelines, and the late
// Complete's status becomes the op's settlement.
//
// Timelines. The cancel records the timeline of the state it found (an op
// found DONE but not failed yet gets the timeline of what was on the wire:
// in-flight if its Start had left, else pre-submit). An in-flight cancel
// is refined to already-complete when the late Complete says the server
// had not received the Cancel before its op finished; the refinement is
// made under the mutex before the finish that records the settlement, so
// the timeline is final once the settlement is known, and the counters by
// timeline move with it.
//
// Deadlines. A cop with a deadline arms a timer at the call. If it fires
// while QUEUED the op ends ETIMEDOUT, never sent. If it fires while SENT
// the op fails ETIMEDOUT first (so that the server's answer to the Cancel
// that follows cannot win with its own code) with its settlement left
// pending: the late Complete tells what the server really did.
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"

const aa_allocator *
aai_cop_allocator(cop *p)
{
	return aa_op_assoc(p->op)->allocator;
}

void
aai_cop_free_payload(cop *p)
{
	if (p->payload_owned) {
		const aa_allocator *a = aai_cop_allocator(p);
		a->free(a->ctx, p->payload, p->payload_len);
		p->payload_owned = false;
	}
	p->payload = NULL;
}

// A result buffer remembers its allocator, so that the op can release it.
typedef struct result_hdr {
	const aa_allocator *a;
	size_t size;
	max_align_t data[];
} result_hdr;

static void
release_result(void *data)
{
	result_hdr *h =
	    (result_hdr *)((char *)data - offsetof(result_hdr, data));
	h->a->free(h->a->ctx, h, h->size);
}

static void *
copy_result(cop *p, const void *payload, size_t len)
{
	const aa_allocator *a = aai_cop_allocator(p);
	size_t size = sizeof(result_hdr) + len;
	result_hdr *h = a->alloc(a->ctx, size);
	if (h == NULL) {
		return NULL;
	}
	h->a = a;
	h->size = size;
	if (len > 0) {
		memcpy(h->data, payload, len);
	}
	return h->data;
}

// ---- Finishing ----

// cop_retire drops what the client holds for a cop that left the table
// and the queue: the deadline timer, the payload copy, the reference.
// Called without the client's lock.
void
aai_cop_retire(cop *p)
{
	if (p->has_deadline) {
		aa_timer_cancel(&p->deadline);
	}
	aai_cop_free_payload(p);
	aa_op_unref(p->op);
}

static void
count_final(aa_client *c, aa_op *op)
{
	aai_mtx_lock(&c->mtx);
	switch (aa_op_status(op)) {
	case AA_COMPLETED:
		c->st.completed++;
		break;
	case AA_CANCELED:
		c->st.canceled++;
		break;
	case AA_ERROR:
		c->st.failed++;
		break;
	case AA_STARTED:
		break;
	}
	aai_mtx_unlock(&c->mtx);
}

// count_timeline adds n (1, or -1 when a cancel is reclassified) to the
// counter of timeline t. Expects the client's lock.
static void
count_timeline(aa_client *c, aa_timeline t, int n)
{
	uint64_t *ctr = t == AA_TIMELINE_PRE_SUBMIT  ? &c->st.pre_submit
	                : t == AA_TIMELINE_IN_FLIGHT ? &c->st.in_flight
	                : t == AA_TIMELINE_ALREADY_COMPLETE
	                    ? &c->st.already_complete
	                    : NULL;
	if (ctr != NULL) {
		*ctr += (uint64_t)(int64_t)n;
	}
}

// fail_cop ends an op that will never hear from the server: ERROR with err
// (absorbed if it is final already), settled as s.
void
aai_cop_fail(cop *p, int err, aa_settlement s, const char *why)
{
	// The op is out of the table (DONE) and not failed yet: a cancel
	// now still wins, with the timeline of what was on the wire.
	AAI_CHECKPOINT("client.before_fail", p->op);
	aa_op_settle(p->op, s);
	if (aa_op_fail(p->op, err, why) == 0) {
		count_final(p->c, p->op);
	}
}

// ---- The provider's cancel function ----
//
// An in-flight cancel is two halves. aai_cop_cancel decides the timeline
// under the client's lock and owes the Cancel frame; aa_op then runs the
// user's handler; aai_cop_after_cancel writes the frame. The handler so
// never waits for a write (a syscall on ipc and tcp, 2 to 3 us here), and
// the Cancel leaves right after the handler returns, on the same thread:
// handing the write to another thread instead would cost a wake-up, which
// is slower than the write itself on two cores (docs/PERFORMANCE.md).
//
// Between the halves the handler may close, stop or free the client. The
// thread is marked (cancelling, below): stop from it is AA_EDEADLK and a
// free from it is deferred, as inside the client's own callbacks, and stop
// waits until every owed Cancel was written or dropped (cancels_owed). A
// handler that cancels another op of the same client nests (depth); one
// that cancels an op of another client while a first is owed writes that
// Cancel at once, as before the split. The frame is dropped when the
// client closed meanwhile (its Goodbye says it all) or the link it was
// owed on went down (the server then cancels the orphan itself).

static _Thread_local const aa_client *cancelling;
static _Thread_local int cancelling_depth;

bool
aai_cop_cancelling(const aa_client *c)
{
	return cancelling == c;
}

// owe_cancel marks this thread as between the halves for c, if it may.
static bool
owe_cancel(aa_client *c)
{
	if (cancelling != NULL && cancelling != c) {
		return false;
	}
	cancelling = c;
	cancelling_depth++;
	return true;
}

// send_cancel writes p's Cancel on the current link. Expects c->mtx.
static void
send_cancel(aa_client *c, cop *p, aa_cancel_type type)
{
	aai_wire_msg m;
	aai_wire_cancel(&m, p->node.id, (uint32_t)type);
	if (aai_wire_send(c->link->conn, &m, 0) == 0) {
		c->st.sent_cancel++;
	}
}

void
aai_cop_after_cancel(aa_op *op, void *arg)
{
	cop *p = aa_op_extra(op);
	aa_client *c = arg;

	if (p->cancel_owed == 0) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	if (c->link != NULL && !c->closed && c->link_gen == p->cancel_gen) {
		send_cancel(c, p, (aa_cancel_type)p->cancel_owed);
	}
	p->cancel_owed = 0;
	if (--c->cancels_owed == 0) {
		aai_cv_broadcast(&c->cv);
	}
	aai_mtx_unlock(&c->mtx); // c may be freed from here on
	if (--cancelling_depth == 0) {
		cancelling = NULL;
	}
}

int
aai_cop_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	cop *p = aa_op_extra(op);
	aa_client *c = arg; // not p->c: a parent's emit may come during setup
	bool retire = false;
	aa_timeline t = AA_TIMELINE_NONE;

	if (aai_client_forked(c)) {
		return AA_TIMELINE_NONE; // the op ends here, nothing is sent
	}
	aai_mtx_lock(&c->mtx);
	switch (p->state) {
	case COP_NEW:
		// Cancelled through its parent's slot while aa_client_call
		// still sets it up: pre-submit; the call sees DONE and sends
		// nothing.
		t = AA_TIMELINE_PRE_SUBMIT;
		p->state = COP_DONE;
		break;
	case COP_QUEUED:
		// Pre-submit: the Start never leaves. Whoever holds the op
		// (the queue, or a flusher) lets it go.
		t = AA_TIMELINE_PRE_SUBMIT;
		p->state = COP_DONE;
		aai_idmap_remove(&c->ops, &p->node);
		if (!p->in_flusher) {
			aai_submit_unlink(c, p);
			retire = true;
		}
		break;
	case COP_SENT:
		// In flight: tell the server; its late Complete is dropped,
		// and says whether this was really already-complete.
		t = AA_TIMELINE_IN_FLIGHT;
		// A closing client says one Goodbye instead of a Cancel each.
		if (c->link != NULL && !c->closed) {
			if (owe_cancel(c)) {
				// Written after the handler (after_cancel).
				p->cancel_owed = (uint8_t)type;
				p->cancel_gen = c->link_gen;
				c->cancels_owed++;
			} else {
				send_cancel(c, p, type);
			}
		}
		break;
	case COP_RECEIVED:
		// The result is here but not handed over: it is dropped.
		t = AA_TIMELINE_ALREADY_COMPLETE;
		break;
	case COP_DONE:
		// Taken out by a flush, a deadline or a loss that has not
		// failed the op yet: the cancel wins, and its timeline is
		// what was on the wire (the failure is absorbed).
		t = p->was_sent ? AA_TIMELINE_IN_FLIGHT
		                : AA_TIMELINE_PRE_SUBMIT;
		break;
	}
	atomic_store(&p->timeline, (int)t);
	count_timeline(c, t, 1);
	c->st.canceled++;
	aai_mtx_unlock(&c->mtx);

	if (t == AA_TIMELINE_PRE_SUBMIT) {
		aa_op_settle(op, AA_SETTLE_NEVER_STARTED);
	}
	if (retire) {
		aai_cop_retire(p);
	}
#ifdef AA_REPLAY_INJECT_BUG
	// The injected bug: a result already in hand wins over the cancel,
	// so the op ends COMPLETED although cancel said it cancelled it.
	if (t != AA_TIMELINE_ALREADY_COMPLETE) {
		// As the immediate policy would: the real outcome (the late
		// Complete, or "never started") is still the settlement.
		aai_op_canceled_unsettled(op);
	}
#endif
	return (int)t;
}

// ---- Deadlines ----

void
aai_cop_deadline(void *arg)
{
	cop *p = arg;
	aa_client *c = p->c;
	bool retire = false;

	AAI_CB_ENTER(AAI_CB_CLIENT, c);
	aai_mtx_lock(&c->mtx);
	if (p->state == COP_QUEUED) {
		// Never sent: it ends here and never will be.
		p->state = COP_DONE;
		aai_idmap_remove(&c->ops, &p->node);
		if (!p->in_flusher) {
			aai_submit_unlink(c, p);
			retire = true;
		}
		aai_mtx_unlock(&c->mtx);
		aai_cop_fail(p, AA_ETIMEDOUT, AA_SETTLE_NEVER_STARTED,
		             "deadline passed before the call was sent");
	} else if (p->state == COP_SENT && aa_op_status(p->op) == AA_STARTED) {
		// Fail first, so that the server's answer to the Cancel below
		// cannot win with its own code. (on_complete waits for this
		// timer before it releases the op.)
		aai_mtx_unlock(&c->mtx);
		// The settlement stays pending: the server's late Complete
		// (or a loss) tells what really happened.
		if (aai_op_fail_unsettled(p->op, AA_ETIMEDOUT,
		                          "deadline passed") == 0) {
			count_final(c, p->op);
		}
		// The server enforces the deadline too; a Cancel makes it
		// prompt.
		aai_mtx_lock(&c->mtx);
		if (p->state == COP_SENT && c->link != NULL) {
			aai_wire_msg m;
			aai_wire_cancel(&m, p->node.id, AA_CANCEL_TERMINAL);
			if (aai_wire_send(c->link->conn, &m, 0) == 0) {
				c->st.sent_cancel++;
			}
		}
		aai_mtx_unlock(&c->mtx);
	} else {
		aai_mtx_unlock(&c->mtx);
	}
	if (retire) {
		aai_cop_retire(
		    p); // cancelling the running timer returns at once
	}
	AAI_CB_LEAVE(AAI_CB_CLIENT);
}

// ---- Receiving ----

void
aai_cop_on_complete(aa_client *c, const aai_wire_msg *m)
{
	cop *p;
	aai_mtx_lock(&c->mtx);
	c->st.recv_complete++;
	p = aai_cop_find(c, m->op_id);
	if (p == NULL || p->state != COP_SENT) {
		c->st.unknown_dropped++;
		aai_mtx_unlock(&c->mtx);
		return;
	}
	// It stays in the map until DONE: a cancel-all meanwhile finds it
	// (already-complete), as a single cancel would.
	p->state = COP_RECEIVED;
	// An in-flight cancel whose Cancel the server had not received when
	// its op finished: the Complete and the Cancel crossed, so it was
	// already-complete. Refined before the finish below runs the settle
	// handler: the timeline is final with the settlement.
	if (atomic_load(&p->timeline) == AA_TIMELINE_IN_FLIGHT &&
	    !m->complete.cancel_received) {
		atomic_store(&p->timeline, AA_TIMELINE_ALREADY_COMPLETE);
		count_timeline(c, AA_TIMELINE_IN_FLIGHT, -1);
		count_timeline(c, AA_TIMELINE_ALREADY_COMPLETE, 1);
	}
	aai_mtx_unlock(&c->mtx);

	AAI_CHECKPOINT("client.before_deliver", p->op);

	// A final op absorbs this Complete. Count it first: the settle
	// handler runs inside the finish below.
	bool late = aa_op_status(p->op) != AA_STARTED;
	if (late) {
		aai_mtx_lock(&c->mtx);
		c->st.late_dropped++;
		aai_mtx_unlock(&c->mtx);
	}
	int rv;
	switch (m->complete.status) {
	case AAI_WIRE_COMPLETED: {
		size_t n = m->complete.payload_len;
		void *buf = copy_result(p, m->complete.payload, n);
		if (buf == NULL) {
			rv = aa_op_fail(p->op, AA_ENOMEM,
			                "no memory for result");
		} else {
			rv = aa_op_complete(p->op, buf, n, release_result);
		}
		break;
	}
	case AAI_WIRE_CANCELED:
		// Only the client's own cancel makes a client op CANCELED; a
		// server-side cancel is an error: ETIMEDOUT for its deadline,
		// AA_ESRVCANCEL otherwise (never AA_ECANCELED, which means
		// this client cancelled).
		aa_op_settle(p->op, AA_SETTLE_CANCELED);
		rv = aa_op_fail(p->op,
		                m->complete.error == AA_ETIMEDOUT
		                    ? AA_ETIMEDOUT
		                    : AA_ESRVCANCEL,
		                m->complete.message);
		break;
	case AAI_WIRE_REJECTED:
		aa_op_settle(p->op, AA_SETTLE_NEVER_STARTED);
		rv = aa_op_fail(p->op, (int)m->complete.error,
		                m->complete.message);
		break;
	default:
		// FAILED: an application's code travels apart (app_code).
		if (m->complete.error == AA_EAPP) {
			rv = aa_op_fail_app(p->op, m->complete.app_code,
			                    m->complete.message);
		} else {
			rv = aa_op_fail(p->op, (int)m->complete.error,
			                m->complete.message);
		}
		break;
	}
	aai_mtx_lock(&c->mtx);
	p->state = COP_DONE;
	aai_idmap_remove(&c->ops, &p->node);
	if (rv == AA_EALREADY && !late) {
		c->st.late_dropped++; // cancelled during the finish
	}
	aai_mtx_unlock(&c->mtx);
	if (rv == 0) {
		count_final(c, p->op);
	}
	aai_cop_retire(p);
}

void
aai_cop_on_progress(aa_client *c, const aai_wire_msg *m)
{
	cop *p;
	aai_mtx_lock(&c->mtx);
	c->st.recv_progress++;
	p = aai_cop_find(c, m->op_id);
	if (p == NULL || p->state != COP_SENT) {
		c->st.unknown_dropped++;
		aai_mtx_unlock(&c->mtx);
		return;
	}
	aa_op_ref(p->op);
	aai_mtx_unlock(&c->mtx);
	aa_op_progress(p->op, m->progress.payload, m->progress.payload_len);
	aa_op_unref(p->op);
}
