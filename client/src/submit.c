// submit.c: calls: aa_client_call, the submit queue, flushing and corking.
//
// Design notes.
//
// A call makes its op (a cop in state NEW, cop.c), puts it in the map and
// the submit queue (QUEUED) and flushes, unless another thread is flushing
// already (that thread sends it: frames queued meanwhile go out together
// in one write) or the client is corked. Corks nest; uncork flushes. A
// lost link ends every queued op, corked or not.
//
// The payload is borrowed, not copied, while the call runs: its flush
// usually sends the Start from the caller's buffer. Before the call
// returns, an op still QUEUED (corked, another thread flushing, a
// reconnect running) gets a copy of its own, swapped in under the lock;
// every reader of p->payload (the flusher's send) holds that lock, so a
// flusher on another thread sees either the caller's buffer while the
// call still runs, or the copy. A 64-byte call saves an allocation, a copy
// and a free; a 1 MiB one a megabyte's allocation and copy.
//
// The flusher takes one op at a time off the queue, marks it in_flusher,
// and hits the checkpoint "client.before_submit" outside the lock, which
// is how tests hold an op in its pre-submit window; then, under the lock,
// it sends the Start (SENT) unless the op was cancelled or timed out
// meanwhile, the link went down, or no time is left of its deadline (the
// Start carries the time left). A cancel of an op held by a flusher only
// marks it DONE: the flusher lets it go.
//
// Memory: the op and its cop are one block from the client's pool, made
// without the cop's deadline timer when the call has no deadline
// (aai_cop_size); the payload copy lives only until the Start is written.
//
// Locks: the client's mutex for the queue and the states; no user
// callback and no blocking call under it. `flushing` (and the cv) tell
// stop when no flusher runs.
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"

// ---- The submit queue (expects the client's lock) ----

static void
queue_push(aa_client *c, cop *p)
{
	p->qnext = NULL;
	p->qprev = c->qtail;
	if (c->qtail != NULL) {
		c->qtail->qnext = p;
	} else {
		c->qhead = p;
	}
	c->qtail = p;
}

// queue_push_front puts p back at the head (a flusher that took it).
static void
queue_push_front(aa_client *c, cop *p)
{
	p->qprev = NULL;
	p->qnext = c->qhead;
	if (c->qhead != NULL) {
		c->qhead->qprev = p;
	} else {
		c->qtail = p;
	}
	c->qhead = p;
}

void
aai_submit_unlink(aa_client *c, cop *p)
{
	if (p->qprev != NULL) {
		p->qprev->qnext = p->qnext;
	} else {
		c->qhead = p->qnext;
	}
	if (p->qnext != NULL) {
		p->qnext->qprev = p->qprev;
	} else {
		c->qtail = p->qprev;
	}
	p->qnext = p->qprev = NULL;
}

// ---- Calls ----

// call_failed undoes a call that cannot go ahead: the op is finished (so
// that a parent's slot lets go of it; no handler is set, none runs) and
// released. Returns rv.
static int
call_failed(aa_op *op, int rv)
{
	aai_cop_free_payload(aa_op_extra(op));
	aa_op_fail(op, rv, NULL);
	aa_op_unref(op);
	return rv;
}

// keep_payload gives an op that is still queued when its call returns a
// copy of the payload it borrowed from the caller (see the notes). An op
// that cannot have one ends as if its link was lost, with AA_ENOMEM.
static void
keep_payload(aa_client *c, cop *p)
{
	aai_mtx_lock(&c->mtx);
	if (p->state != COP_QUEUED || p->payload_owned) {
		aai_mtx_unlock(&c->mtx); // sent, or ended: nothing borrowed
		return;
	}
	const aa_allocator *a = aai_cop_allocator(p);
	void *copy = a->alloc(a->ctx, p->payload_len);
	if (copy != NULL) {
		memcpy(copy, p->payload, p->payload_len);
		p->payload = copy;
		p->payload_owned = true;
		aai_mtx_unlock(&c->mtx);
		return;
	}
	p->payload = NULL;
	p->state = COP_DONE;
	aai_idmap_remove(&c->ops, &p->node);
	bool retire = !p->in_flusher; // else the flusher lets it go
	if (retire) {
		aai_submit_unlink(c, p);
	}
	aai_mtx_unlock(&c->mtx);
	aai_cop_fail(p, AA_ENOMEM, AA_SETTLE_NEVER_STARTED,
	             "no memory for the call's payload");
	if (retire) {
		aai_cop_retire(p);
	}
}

int
aa_client_call(aa_op **opp, aa_client *c, const char *method_name,
               const void *payload, size_t len, const aa_call_opts *co,
               const aa_assoc *assoc)
{
	aa_op *op;
	cop *p;
	const method *m;
	aa_assoc a = {0};
	int rv;
	uint32_t limit;

	if (opp == NULL || c == NULL || method_name == NULL ||
	    (payload == NULL && len > 0)) {
		return AA_EINVAL;
	}
	if (aai_client_forked(c)) {
		return AA_ESTATE;
	}
	aai_mtx_lock(&c->mtx);
	if (c->closed) {
		aai_mtx_unlock(&c->mtx);
		return AA_ECLOSED;
	}
	if (c->link == NULL) {
		// Never block the caller (it may be a handler on a library
		// thread): a reconnect runs on its own thread, and this call
		// queues meanwhile.
		rv = !c->opts.reconnect
		         ? (c->down_err != 0 ? c->down_err : AA_ECONNLOST)
		         : aai_link_reconnect(c);
		if (rv != 0) {
			aai_mtx_unlock(&c->mtx);
			return rv;
		}
	}
	if ((m = aai_client_find_method(c, method_name)) == NULL) {
		aai_mtx_unlock(&c->mtx);
		return AA_ENOENT; // the server's table has no such method
	}
	limit = c->opts.max_pending != 0 ? c->opts.max_pending
	                                 : c->server_max_pending;
	if (limit != 0 && c->ops.count >= limit) {
		aai_mtx_unlock(&c->mtx);
		return AA_ELIMIT;
	}
	if (len + strlen(method_name) + 64 > c->server_max_msg) {
		aai_mtx_unlock(&c->mtx);
		return AA_EMSGSIZE;
	}
	// A reconnect's Hello may update the entry's types meanwhile (under
	// the lock); the name stays valid as long as the client.
	const char *name = m->name;
	unsigned types = m->types;
	aai_mtx_unlock(&c->mtx);

	if (assoc != NULL) {
		a = *assoc;
	}
	if (a.allocator == NULL) {
		a.allocator = aai_pool_allocator(c->pool);
	}
	aa_op_provider pv = {
	    .cancel = aai_cop_cancel,
	    .after_cancel = aai_cop_after_cancel,
	    .arg = c,
#ifdef AA_REPLAY_INJECT_BUG
	    // Test-only bug, compiled into aa-replay-bug alone (see
	    // aai_cop_cancel): the client decides its cancels itself.
	    .policy = AA_POLICY_COOPERATIVE,
#else
	    .policy = AA_POLICY_IMMEDIATE,
#endif
	    .cancel_types = types,
	    .extra = aai_cop_size(co != NULL ? co->deadline_ms : 0),
	};
	if ((rv = aa_op_alloc(&op, &pv, &a)) != 0) {
		return rv;
	}
	p = aa_op_extra(op);
	p->c = c;
	p->op = op;
	// Only a deadline needs the call's time (a clock read costs ~90 ns).
	p->t0_us = co != NULL && co->deadline_ms != 0 ? aa_clock_us() : 0;
	p->method = name;
	p->cancel_types = types;
	p->deadline_ms = co != NULL ? co->deadline_ms : 0;
	p->payload = len > 0 ? (void *)payload : NULL; // borrowed (notes)
	p->payload_len = len;

	aai_mtx_lock(&c->mtx);
	if (p->state == COP_DONE) {
		// A parent cancelled it during setup: pre-submit, never sent.
		aai_mtx_unlock(&c->mtx);
		aa_op_ref(op); // the caller's
		aai_cop_free_payload(p);
		aa_op_unref(op); // the client's
		*opp = op;
		return 0;
	}
	if (c->closed || (c->link == NULL && !c->reconnecting)) {
		rv = c->closed          ? AA_ECLOSED
		     : c->down_err != 0 ? c->down_err
		                        : AA_ECONNLOST;
		aai_mtx_unlock(&c->mtx);
		return call_failed(op, rv);
	}
	p->node.id = c->next_id++;
	if ((rv = aai_idmap_add(&c->ops, &p->node)) != 0) {
		aai_mtx_unlock(&c->mtx);
		return call_failed(op, rv);
	}
	p->state = COP_QUEUED;
	queue_push(c, p);
	c->st.calls++;
	aa_op_ref(op); // the caller's reference; the client keeps the first
	if (p->deadline_ms != 0) {
		aa_timer_init(&p->deadline, aai_cop_deadline, p);
		p->has_deadline = aa_timer_start(&p->deadline, c->timers,
		                                 p->deadline_ms) == 0;
	}
	aai_mtx_unlock(&c->mtx);

	*opp = op;
	aai_submit_flush(c);
	if (len > 0) {
		keep_payload(c, p);
	}
	return 0;
}

// deadline_left returns the milliseconds left of p's deadline (at least 1
// while any is left), 0 when it has passed or there is none.
static uint32_t
deadline_left(const cop *p)
{
	if (p->deadline_ms == 0) {
		return 0;
	}
	uint64_t spent_ms = (aa_clock_us() - p->t0_us) / 1000u;
	if (spent_ms >= p->deadline_ms) {
		return 0;
	}
	return p->deadline_ms - (uint32_t)spent_ms;
}

// flush sends the Start of every queued op, unless another thread does it
// already or the client is corked. See "Submission combines" above.
void
aai_submit_flush(aa_client *c)
{
	aai_mtx_lock(&c->mtx);
	if (c->flushing || (c->cork > 0 && c->link != NULL)) {
		aai_mtx_unlock(&c->mtx);
		return;
	}
	c->flushing = true;
	// A lost link ends every queued op, corked or not: nothing may
	// wait for a connection that is gone; while a reconnect runs they
	// wait for it (it flushes when it is done).
	while (c->qhead != NULL && !(c->link == NULL && c->reconnecting) &&
	       (c->cork == 0 || c->link == NULL)) {
		cop *p = c->qhead;
		aai_submit_unlink(c, p);
		p->in_flusher = true;
		aai_mtx_unlock(&c->mtx);

		AAI_CHECKPOINT("client.before_submit", p->op);

		// Start carries the time left of the deadline (protocol § 8).
		uint32_t left = deadline_left(p);
		aai_mtx_lock(&c->mtx);
		p->in_flusher = false;
		if (p->state == COP_QUEUED && c->link == NULL &&
		    c->reconnecting) {
			// Lost while we held it, and a reconnect runs: back
			// to the head of the queue, for the reconnect.
			queue_push_front(c, p);
			break;
		}
		if (p->state != COP_QUEUED || c->link == NULL ||
		    (p->deadline_ms != 0 && left == 0)) {
			// Cancelled (or timed out) in its pre-submit window,
			// the link went down, or no time is left: it is out
			// of the table, and nothing is sent.
			bool lost = p->state == COP_QUEUED;
			if (lost) {
				p->state = COP_DONE;
				aai_idmap_remove(&c->ops, &p->node);
			}
			bool expired = c->link != NULL;
			int why = expired            ? AA_ETIMEDOUT
			          : c->down_err != 0 ? c->down_err
			                             : AA_ECONNLOST;
			aai_mtx_unlock(&c->mtx);
			if (lost) {
				aai_cop_fail(
				    p, why, AA_SETTLE_NEVER_STARTED,
				    expired ? "deadline passed before the "
				              "call was sent"
				            : "no connection");
			}
			aai_cop_retire(p);
			aai_mtx_lock(&c->mtx);
			continue;
		}
		aai_wire_msg m;
		aai_wire_start(&m, p->node.id, p->method, p->payload,
		               p->payload_len, left, p->cancel_types);
		int rv = aai_wire_send(c->link->conn, &m, 0);
		if (rv == 0) {
			// Once SENT, the receive thread may retire the op at
			// any moment: take the payload copy back first.
			void *payload = p->payload_owned ? p->payload : NULL;
			size_t payload_len = p->payload_len;
			const aa_allocator *a = aai_cop_allocator(p);
			p->payload = NULL;
			p->payload_owned = false;
			p->state = COP_SENT;
			p->was_sent = true;
			c->st.sent_start++;
			aai_mtx_unlock(&c->mtx);
			if (payload != NULL) {
				a->free(a->ctx, payload, payload_len);
			}
			aai_mtx_lock(&c->mtx);
			continue;
		}
		// The link is closing: the op ends as if it was lost.
		p->state = COP_DONE;
		aai_idmap_remove(&c->ops, &p->node);
		aai_mtx_unlock(&c->mtx);
		aai_cop_fail(p, rv == AA_ECLOSED ? AA_ECONNLOST : rv,
		             AA_SETTLE_NEVER_STARTED,
		             "could not send the call");
		aai_cop_retire(p);
		aai_mtx_lock(&c->mtx);
	}
	c->flushing = false;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
}

void
aa_client_cork(aa_client *c)
{
	if (aai_client_forked(c)) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	c->cork++;
	aai_mtx_unlock(&c->mtx);
}

void
aa_client_uncork(aa_client *c)
{
	if (aai_client_forked(c)) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	if (c->cork > 0) {
		c->cork--;
	}
	aai_mtx_unlock(&c->mtx);
	aai_submit_flush(c);
}
