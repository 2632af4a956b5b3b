// client.c: the client layer (aa/client.h): the fake operation.
//
// Design notes.
//
// Objects. An aa_client owns at most one connection (a link: the
// transport connection plus its decode arena) at a time, a table of its
// pending ops by wire id (a chained hash map, O(1)), a queue of ops whose
// Start is not sent yet, a timer queue for deadlines, and a recycler for op
// memory. Each call is an aa_op made with the immediate cancel policy; its
// provider memory is a `cop` (client op) that records the wire id, the
// submit state and the timeline of a cancel.
//
// Submit states of a cop (all under the client's mutex):
//   QUEUED    in the submit queue, Start not sent: a cancel now is
//             pre-submit and nothing is ever sent;
//   SENT      Start handed to the transport: a cancel now is in-flight and
//             a Cancel follows (always after the Start: both are handed to
//             the transport under the client's mutex);
//   RECEIVED  the server's Complete arrived and is being handed over: a
//             cancel now is already-complete, nothing more is sent;
//   DONE      off the table; the client's reference is gone.
// The transitions out of QUEUED (submit vs cancel vs deadline vs loss) and
// out of SENT (Complete vs loss) are single locked steps; the op's own
// state (its one locked transition) decides cancel vs completion for the
// user. So the user sees CANCELED in all three timelines, and the late
// Complete's status becomes the op's settlement.
//
// Submission combines: a call queues its op and then flushes unless another
// thread is flushing already (that thread sends it: frames queued meanwhile
// go out together) or the client is corked. The flusher hits the
// checkpoint "client.before_submit" for each op outside the lock, which is
// how tests hold an op in its pre-submit window.
//
// References to an op: the caller's (from aa_client_call) and the
// client's, held while the op is in the queue or the table (or being
// flushed), dropped by whoever takes it out of the last of them.
//
// Threads. Frames arrive on the link's receive thread, serialised; the
// user's handlers run there (inline) unless the op's assoc has an executor.
// Deadlines fire on the timer thread. Cancels come from any thread. No user
// callback and no transport close or free runs under the client's mutex.
//
// Races and who wins: cancel vs submit: the mutex (QUEUED or not). Cancel
// vs Complete: the op's state; a Complete that finds the op cancelled is
// absorbed (counted as a late drop, recorded as the settlement). Deadline
// vs Complete: the op's state again. Loss vs everything: ops still in the
// table when the link goes down end in ERROR (absorbed if already final)
// and settle "unknown"; queued ones settle "never_started". Close vs call:
// the `closed` flag under the mutex.
//
// fork. A client belongs to the process that opened it. A forked child has
// a copy of its memory (its mutex possibly locked by a thread that does not
// exist there) but none of its threads, and nng panics when used in a
// forked child. So every call a child makes on its parent's client returns
// AA_ESTATE, or does nothing, before touching the lock or the connection:
// no frame is sent and no handler of the parent's ops runs in the child.
// A pthread_atfork handler counts forks; a client keeps the count it was
// opened with (docs/client-server.md).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <aa/client.h>

#include "aai.h"
#include "transport.h"
#include "wire.h"
#include "wire_send.h"

enum cop_state {
	COP_NEW, // being set up by aa_client_call (the zeroed state)
	COP_QUEUED,
	COP_SENT,
	COP_RECEIVED,
	COP_DONE,
};

typedef struct cop cop;
typedef struct clink clink;

struct cop {
	aa_client *c;
	aa_op *op;
	uint64_t id;
	enum cop_state state;
	aa_timeline timeline;
	bool in_flusher; // taken off the queue by a flusher
	bool has_deadline;
	cop *qnext; // submit queue
	cop *qprev;
	cop *hnext;         // hash chain
	const char *method; // in the client's method table
	uint32_t deadline_ms;
	uint32_t cancel_types;
	void *payload; // copy until Start is sent
	size_t payload_len;
	aa_timer deadline;
};

struct clink {
	aa_client *c;
	aai_conn *conn;
	aai_wire_arena arena;
	bool hello;       // the server's Hello arrived
	int goodbye;      // the server's Goodbye reason, or 0
	clink *next_dead; // down, waiting to be freed
	bool down;        // its down callback ran
	bool connecting;  // connect_clink still uses it: not to be freed
	uint64_t conn_id; // the server's id for it, from its Hello
	uint8_t buf[8192];
};

typedef struct method {
	char *name;
	unsigned types;
} method;

struct aa_client {
	pthread_mutex_t mtx;
	pthread_cond_t cv; // handshake and flusher changes
	char *url;
	aa_client_opts opts;
	aai_tp_opts tp;
	uint8_t heartbeat[32];
	uint64_t instance_id;
	uint64_t next_id;
	clink *link;      // NULL when not connected
	clink *dead;      // links that went down, freed outside them
	int live_links;   // links whose down callback has not ended
	uint64_t conn_id; // the server's id for the link
	int down_err;     // why the last link went down
	bool closed;
	method *methods;
	size_t n_methods;
	size_t methods_cap;
	uint32_t server_max_pending;
	uint32_t server_max_msg;
	cop **buckets;
	size_t n_buckets;
	size_t n_ops;
	cop *qhead;
	cop *qtail;
	int cork;
	bool flushing;
	aa_timer_queue *timers;
	aa_recycler *recycler;
	aa_allocator alloc;       // the recycler, counted (see "Memory")
	atomic_size_t shell_refs; // blocks handed out, plus 1 until free
	aa_client_stats st;
	unsigned forks; // fork_count at open (see "fork")
};

// The client whose callback this thread runs, if any: stop and free from
// inside a callback are detected with it.
static _Thread_local aa_client *in_callback;

// Forks of this process since the first client was opened (see "fork").
static atomic_uint fork_count;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void
count_fork(void)
{
	atomic_fetch_add_explicit(&fork_count, 1, memory_order_relaxed);
}

static void
watch_forks(void)
{
	if (pthread_atfork(NULL, NULL, count_fork) != 0) {
		aai_panic("aa_client_open: pthread_atfork failed");
	}
}

// forked says whether this process is a fork of the one that opened c.
static bool
forked(const aa_client *c)
{
	return atomic_load_explicit(&fork_count, memory_order_relaxed) !=
	       c->forks;
}

static int connect_clink(aa_client *c);
static void flush(aa_client *c);

// ---- The op table (expects the client's lock) ----

static size_t
bucket_of(aa_client *c, uint64_t id)
{
	return (size_t)(id * 0x9E3779B97F4A7C15ull >> 17) & (c->n_buckets - 1);
}

static int
table_grow(aa_client *c)
{
	size_t n = c->n_buckets ? c->n_buckets * 2 : 256;
	cop **b = aai_zalloc(n * sizeof(*b));
	if (b == NULL) {
		return AA_ENOMEM;
	}
	cop **old = c->buckets;
	size_t old_n = c->n_buckets;
	c->buckets = b;
	c->n_buckets = n;
	for (size_t i = 0; i < old_n; i++) {
		for (cop *p = old[i], *next; p != NULL; p = next) {
			next = p->hnext;
			size_t k = bucket_of(c, p->id);
			p->hnext = c->buckets[k];
			c->buckets[k] = p;
		}
	}
	aai_free(old);
	return 0;
}

static int
table_add(aa_client *c, cop *p)
{
	int rv;
	if (c->n_ops >= c->n_buckets && (rv = table_grow(c)) != 0) {
		return rv;
	}
	size_t k = bucket_of(c, p->id);
	p->hnext = c->buckets[k];
	c->buckets[k] = p;
	c->n_ops++;
	return 0;
}

static cop *
table_find(aa_client *c, uint64_t id)
{
	if (c->n_buckets == 0) {
		return NULL;
	}
	for (cop *p = c->buckets[bucket_of(c, id)]; p != NULL; p = p->hnext) {
		if (p->id == id) {
			return p;
		}
	}
	return NULL;
}

static void
table_remove(aa_client *c, cop *p)
{
	for (cop **pp = &c->buckets[bucket_of(c, p->id)]; *pp != NULL;
	     pp = &(*pp)->hnext) {
		if (*pp == p) {
			*pp = p->hnext;
			c->n_ops--;
			return;
		}
	}
}

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

static void
queue_unlink(aa_client *c, cop *p)
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

// ---- Memory ----

// Ops may outlive their client (a caller keeps its reference), and their
// memory comes from the client's recycler. So the client's allocator
// counts the blocks it hands out; aa_client_free frees everything but the
// recycler and the client struct (the shell), and whoever drops the last
// count, the free or the last block, frees those.
static void
shell_unref(aa_client *c)
{
	if (atomic_fetch_sub(&c->shell_refs, 1) == 1) {
		aa_recycler_free(c->recycler);
		aai_free(c);
		aai_live_dec(AA_LIVE_CLIENT);
	}
}

static void *
client_alloc(void *ctx, size_t size)
{
	aa_client *c = ctx;
	const aa_allocator *r = aa_recycler_allocator(c->recycler);
	void *p = r->alloc(r->ctx, size);
	if (p != NULL) {
		atomic_fetch_add(&c->shell_refs, 1);
	}
	return p;
}

static void
client_free_block(void *ctx, void *ptr, size_t size)
{
	aa_client *c = ctx;
	const aa_allocator *r = aa_recycler_allocator(c->recycler);
	r->free(r->ctx, ptr, size);
	shell_unref(c);
}

static const aa_allocator *
cop_allocator(cop *p)
{
	return aa_op_assoc(p->op)->allocator;
}

static void
free_payload(cop *p)
{
	if (p->payload != NULL) {
		const aa_allocator *a = cop_allocator(p);
		a->free(a->ctx, p->payload, p->payload_len);
		p->payload = NULL;
	}
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
	const aa_allocator *a = cop_allocator(p);
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
static void
cop_retire(cop *p)
{
	if (p->has_deadline) {
		aa_timer_cancel(&p->deadline);
	}
	free_payload(p);
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

// fail_cop ends an op that will never hear from the server: ERROR with err
// (absorbed if it is final already), settled as s.
static void
fail_cop(cop *p, int err, aa_settlement s, const char *why)
{
	aa_op_settle(p->op, s);
	if (aa_op_fail(p->op, err, why) == 0) {
		count_final(p->c, p->op);
	}
}

// ---- The provider's cancel function ----

static int
cop_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	cop *p = aa_op_extra(op);
	aa_client *c = arg; // not p->c: a parent's emit may come during setup
	bool retire = false;

	if (forked(c)) {
		return AA_TIMELINE_NONE; // the op ends here, nothing is sent
	}
	aai_mtx_lock(&c->mtx);
	switch (p->state) {
	case COP_NEW:
		// Cancelled through its parent's slot while aa_client_call
		// still sets it up: pre-submit; the call sees DONE and sends
		// nothing.
		p->timeline = AA_TIMELINE_PRE_SUBMIT;
		p->state = COP_DONE;
		c->st.pre_submit++;
		break;
	case COP_QUEUED:
		// Pre-submit: the Start never leaves. Whoever holds the op
		// (the queue, or a flusher) lets it go.
		p->timeline = AA_TIMELINE_PRE_SUBMIT;
		p->state = COP_DONE;
		table_remove(c, p);
		if (!p->in_flusher) {
			queue_unlink(c, p);
			retire = true;
		}
		c->st.pre_submit++;
		break;
	case COP_SENT:
		// In flight: tell the server; its late Complete is dropped.
		p->timeline = AA_TIMELINE_IN_FLIGHT;
		c->st.in_flight++;
		// A closing client says one Goodbye instead of a Cancel each.
		if (c->link != NULL && !c->closed) {
			aai_wire_msg m;
			aai_wire_cancel(&m, p->id, (uint32_t)type);
			if (aai_wire_send(c->link->conn, &m, 0) == 0) {
				c->st.sent_cancel++;
			}
		}
		break;
	case COP_RECEIVED:
		// The result is here but not handed over: it is dropped.
		p->timeline = AA_TIMELINE_ALREADY_COMPLETE;
		c->st.already_complete++;
		break;
	case COP_DONE:
		break;
	}
	c->st.canceled++;
	aai_mtx_unlock(&c->mtx);

	if (p->timeline == AA_TIMELINE_PRE_SUBMIT) {
		aa_op_settle(op, AA_SETTLE_NEVER_STARTED);
	}
	if (retire) {
		cop_retire(p);
	}
	return (int)p->timeline;
}

// ---- Deadlines ----

static void
deadline_fired(void *arg)
{
	cop *p = arg;
	aa_client *c = p->c;
	bool retire = false;

	in_callback = c;
	aai_mtx_lock(&c->mtx);
	if (p->state == COP_QUEUED) {
		// Never sent: it ends here and never will be.
		p->state = COP_DONE;
		table_remove(c, p);
		if (!p->in_flusher) {
			queue_unlink(c, p);
			retire = true;
		}
		aai_mtx_unlock(&c->mtx);
		fail_cop(p, AA_ETIMEDOUT, AA_SETTLE_NEVER_STARTED,
		         "deadline passed before the call was sent");
	} else if (p->state == COP_SENT && aa_op_status(p->op) == AA_STARTED) {
		// Fail first, so that the server's answer to the Cancel below
		// cannot win with its own code. (on_complete waits for this
		// timer before it releases the op.)
		aai_mtx_unlock(&c->mtx);
		if (aa_op_fail(p->op, AA_ETIMEDOUT, "deadline passed") == 0) {
			count_final(c, p->op);
		}
		// The server enforces the deadline too; a Cancel makes it
		// prompt.
		aai_mtx_lock(&c->mtx);
		if (p->state == COP_SENT && c->link != NULL) {
			aai_wire_msg m;
			aai_wire_cancel(&m, p->id, AA_CANCEL_TERMINAL);
			if (aai_wire_send(c->link->conn, &m, 0) == 0) {
				c->st.sent_cancel++;
			}
		}
		aai_mtx_unlock(&c->mtx);
	} else {
		aai_mtx_unlock(&c->mtx);
	}
	if (retire) {
		cop_retire(p); // cancelling the running timer returns at once
	}
	in_callback = NULL;
}

// ---- Calls ----

// call_failed undoes a call that cannot go ahead: the op is finished (so
// that a parent's slot lets go of it; no handler is set, none runs) and
// released. Returns rv.
static int
call_failed(aa_op *op, int rv)
{
	free_payload(aa_op_extra(op));
	aa_op_fail(op, rv, NULL);
	aa_op_unref(op);
	return rv;
}

static method *
find_method(aa_client *c, const char *name)
{
	for (size_t i = 0; i < c->n_methods; i++) {
		if (strcmp(c->methods[i].name, name) == 0) {
			return &c->methods[i];
		}
	}
	return NULL;
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
	if (forked(c)) {
		return AA_ESTATE;
	}
	aai_mtx_lock(&c->mtx);
	if (c->closed) {
		aai_mtx_unlock(&c->mtx);
		return AA_ECLOSED;
	}
	if (c->link == NULL) {
		if (!c->opts.reconnect) {
			rv = c->down_err != 0 ? c->down_err : AA_ECONNLOST;
			aai_mtx_unlock(&c->mtx);
			return rv;
		}
		aai_mtx_unlock(&c->mtx);
		if ((rv = connect_clink(c)) != 0) {
			return rv;
		}
		aai_mtx_lock(&c->mtx);
	}
	if ((m = find_method(c, method_name)) == NULL) {
		aai_mtx_unlock(&c->mtx);
		return AA_ENOENT; // the server's table has no such method
	}
	limit = c->opts.max_pending != 0 ? c->opts.max_pending
	                                 : c->server_max_pending;
	if (limit != 0 && c->n_ops >= limit) {
		aai_mtx_unlock(&c->mtx);
		return AA_ELIMIT;
	}
	if (len + strlen(method_name) + 64 > c->server_max_msg) {
		aai_mtx_unlock(&c->mtx);
		return AA_EMSGSIZE;
	}
	aai_mtx_unlock(&c->mtx);

	if (assoc != NULL) {
		a = *assoc;
	}
	if (a.allocator == NULL) {
		a.allocator = &c->alloc;
	}
	aa_op_provider pv = {
	    .cancel = cop_cancel,
	    .arg = c,
	    .policy = AA_POLICY_IMMEDIATE,
	    .cancel_types = m->types,
	    .extra = sizeof(cop),
	};
	if ((rv = aa_op_alloc(&op, &pv, &a)) != 0) {
		return rv;
	}
	p = aa_op_extra(op);
	p->c = c;
	p->op = op;
	p->method = m->name;
	p->cancel_types = m->types;
	p->deadline_ms = co != NULL ? co->deadline_ms : 0;
	if (len > 0) {
		if ((p->payload = a.allocator->alloc(a.allocator->ctx, len)) ==
		    NULL) {
			return call_failed(op, AA_ENOMEM);
		}
		memcpy(p->payload, payload, len);
		p->payload_len = len;
	}

	aai_mtx_lock(&c->mtx);
	if (p->state == COP_DONE) {
		// A parent cancelled it during setup: pre-submit, never sent.
		aai_mtx_unlock(&c->mtx);
		aa_op_ref(op); // the caller's
		free_payload(p);
		aa_op_unref(op); // the client's
		*opp = op;
		return 0;
	}
	if (c->closed || c->link == NULL) {
		rv = c->closed ? AA_ECLOSED : AA_ECONNLOST;
		aai_mtx_unlock(&c->mtx);
		return call_failed(op, rv);
	}
	p->id = c->next_id++;
	if ((rv = table_add(c, p)) != 0) {
		aai_mtx_unlock(&c->mtx);
		return call_failed(op, rv);
	}
	p->state = COP_QUEUED;
	queue_push(c, p);
	c->st.calls++;
	aa_op_ref(op); // the caller's reference; the client keeps the first
	if (p->deadline_ms != 0) {
		aa_timer_init(&p->deadline, deadline_fired, p);
		p->has_deadline = aa_timer_start(&p->deadline, c->timers,
		                                 p->deadline_ms) == 0;
	}
	aai_mtx_unlock(&c->mtx);

	*opp = op;
	flush(c);
	return 0;
}

// flush sends the Start of every queued op, unless another thread does it
// already or the client is corked. See "Submission combines" above.
static void
flush(aa_client *c)
{
	aai_mtx_lock(&c->mtx);
	if (c->flushing || (c->cork > 0 && c->link != NULL)) {
		aai_mtx_unlock(&c->mtx);
		return;
	}
	c->flushing = true;
	// A lost link ends every queued op, corked or not: nothing may
	// wait for a connection that is gone.
	while (c->qhead != NULL && (c->cork == 0 || c->link == NULL)) {
		cop *p = c->qhead;
		queue_unlink(c, p);
		p->in_flusher = true;
		aai_mtx_unlock(&c->mtx);

		AAI_CHECKPOINT("client.before_submit", p->op);

		aai_mtx_lock(&c->mtx);
		p->in_flusher = false;
		if (p->state != COP_QUEUED || c->link == NULL) {
			// Cancelled (or timed out) in its pre-submit window,
			// or the link went down: it is out of the table.
			bool lost = p->state == COP_QUEUED;
			if (lost) {
				p->state = COP_DONE;
				table_remove(c, p);
			}
			aai_mtx_unlock(&c->mtx);
			if (lost) {
				fail_cop(p, AA_ECONNLOST,
				         AA_SETTLE_NEVER_STARTED,
				         "connection lost");
			}
			cop_retire(p);
			aai_mtx_lock(&c->mtx);
			continue;
		}
		aai_wire_msg m;
		aai_wire_start(&m, p->id, p->method, p->payload,
		               p->payload_len, p->deadline_ms,
		               p->cancel_types);
		int rv = aai_wire_send(c->link->conn, &m, 0);
		if (rv == 0) {
			// Once SENT, the receive thread may retire the op at
			// any moment: take the payload copy back first.
			void *payload = p->payload;
			size_t payload_len = p->payload_len;
			const aa_allocator *a = cop_allocator(p);
			p->payload = NULL;
			p->state = COP_SENT;
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
		table_remove(c, p);
		aai_mtx_unlock(&c->mtx);
		fail_cop(p, rv == AA_ECLOSED ? AA_ECONNLOST : rv,
		         AA_SETTLE_NEVER_STARTED, "could not send the call");
		cop_retire(p);
		aai_mtx_lock(&c->mtx);
	}
	c->flushing = false;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
}

void
aa_client_cork(aa_client *c)
{
	if (forked(c)) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	c->cork++;
	aai_mtx_unlock(&c->mtx);
}

void
aa_client_uncork(aa_client *c)
{
	if (forked(c)) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	if (c->cork > 0) {
		c->cork--;
	}
	aai_mtx_unlock(&c->mtx);
	flush(c);
}

// ---- Receiving ----

static void
on_complete(aa_client *c, const aai_wire_msg *m)
{
	cop *p;
	aai_mtx_lock(&c->mtx);
	c->st.recv_complete++;
	p = table_find(c, m->op_id);
	if (p == NULL || p->state != COP_SENT) {
		c->st.unknown_dropped++;
		aai_mtx_unlock(&c->mtx);
		return;
	}
	table_remove(c, p);
	p->state = COP_RECEIVED;
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
		// server-side cancel (its deadline, its shutdown) is an error.
		aa_op_settle(p->op, AA_SETTLE_CANCELED);
		rv = aa_op_fail(p->op,
		                m->complete.error != 0 ? (int)m->complete.error
		                                       : AA_ECANCELED,
		                m->complete.message);
		break;
	case AAI_WIRE_REJECTED:
		aa_op_settle(p->op, AA_SETTLE_NEVER_STARTED);
		rv = aa_op_fail(p->op, (int)m->complete.error,
		                m->complete.message);
		break;
	default:
		rv = aa_op_fail(p->op,
		                m->complete.error != 0 ? (int)m->complete.error
		                                       : AA_EAPP,
		                m->complete.message);
		break;
	}
	aai_mtx_lock(&c->mtx);
	p->state = COP_DONE;
	if (rv == AA_EALREADY && !late) {
		c->st.late_dropped++; // cancelled during the finish
	}
	aai_mtx_unlock(&c->mtx);
	if (rv == 0) {
		count_final(c, p->op);
	}
	cop_retire(p);
}

static void
on_progress(aa_client *c, const aai_wire_msg *m)
{
	cop *p;
	aai_mtx_lock(&c->mtx);
	c->st.recv_progress++;
	p = table_find(c, m->op_id);
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

// add_method appends a method to the client's table, growing it; on
// ENOMEM the method is left out (a call to it then fails AA_ENOENT).
// Expects the client's lock.
static void
add_method(aa_client *c, const char *name, unsigned types)
{
	if (c->n_methods == c->methods_cap) {
		size_t cap = c->methods_cap ? 2 * c->methods_cap : 16;
		method *grown = aai_alloc(cap * sizeof(*grown));
		if (grown == NULL) {
			return;
		}
		if (c->n_methods > 0) {
			memcpy(grown, c->methods,
			       c->n_methods * sizeof(*grown));
		}
		aai_free(c->methods);
		c->methods = grown;
		c->methods_cap = cap;
	}
	char *copy = aai_strdup(name);
	if (copy != NULL) {
		c->methods[c->n_methods++] = (method){copy, types};
	}
}

static void
on_hello(aa_client *c, clink *l, const aai_wire_msg *m)
{
	const aai_wire_hello *h = &m->hello;
	aai_mtx_lock(&c->mtx);
	c->st.recv_other++;
	// The method table only grows across reconnects: names handed to
	// ops (cop->method) stay valid as long as the client.
	for (size_t i = 0; i < h->n_methods; i++) {
		method *old = find_method(c, h->methods[i].name);
		if (old != NULL) {
			old->types = h->methods[i].cancel_types;
		} else {
			add_method(c, h->methods[i].name,
			           h->methods[i].cancel_types);
		}
	}
	c->server_max_pending = h->max_pending;
	c->server_max_msg = h->max_msg_size;
	l->conn_id = h->conn_id;
	l->hello = true;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
}

static void
clink_frame(void *arg, aai_conn *conn, const uint8_t *data, size_t len)
{
	clink *l = arg;
	aa_client *c = l->c;
	aai_wire_msg m;
	const char *why;

	in_callback = c;
	if (aai_wire_decode(&m, &why, &l->arena, data, len,
	                    c->opts.max_msg_size) != 0) {
		// A server that speaks nonsense is a lost server.
		aai_mtx_lock(&c->mtx);
		c->down_err = AA_EPROTO;
		aai_mtx_unlock(&c->mtx);
		aai_conn_close(conn);
		in_callback = NULL;
		return;
	}
	switch (m.kind) {
	case AAI_WIRE_COMPLETE:
		on_complete(c, &m);
		break;
	case AAI_WIRE_PROGRESS:
		on_progress(c, &m);
		break;
	case AAI_WIRE_HELLO:
		on_hello(c, l, &m);
		break;
	case AAI_WIRE_GOODBYE:
		aai_mtx_lock(&c->mtx);
		c->st.recv_other++;
		l->goodbye = m.goodbye.reason != 0 ? (int)m.goodbye.reason
		                                   : AA_EUNAVAIL;
		aai_mtx_unlock(&c->mtx);
		aai_conn_close(conn); // the server is leaving: so do we
		break;
	default: // heartbeats; a server has no business sending the rest
		aai_mtx_lock(&c->mtx);
		c->st.recv_other++;
		aai_mtx_unlock(&c->mtx);
		break;
	}
	in_callback = NULL;
}

// clink_down ends every op the link carried. Runs once, on the link's
// receive thread, after its last frame.
static void
clink_down(void *arg, aai_conn *conn, int err)
{
	clink *l = arg;
	aa_client *c = l->c;
	cop *lost = NULL;
	int why;

	in_callback = c;
	aai_mtx_lock(&c->mtx);
	why = l->goodbye != 0            ? AA_EUNAVAIL
	      : c->down_err == AA_EPROTO ? AA_EPROTO
	                                 : AA_ECONNLOST;
	(void)err;
	if (c->link == l) {
		c->link = NULL;
		c->conn_id = 0;
		c->down_err = why;
		// Every op in the table was sent on this link (queued ones
		// wait for a flusher, which finds the link gone).
		for (size_t i = 0; i < c->n_buckets; i++) {
			cop **pp = &c->buckets[i];
			while (*pp != NULL) {
				cop *p = *pp;
				if (p->state == COP_QUEUED) {
					pp = &p->hnext;
					continue;
				}
				*pp = p->hnext;
				p->state = COP_DONE;
				p->hnext = lost;
				lost = p;
				c->n_ops--;
			}
		}
	}
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);

	for (cop *p = lost, *next; p != NULL; p = next) {
		next = p->hnext;
		fail_cop(p, why, AA_SETTLE_UNKNOWN,
		         why == AA_EUNAVAIL ? "server shut down"
		                            : "connection lost");
		cop_retire(p);
	}
	// Queued ops: a flusher finds the link gone and ends them.
	flush(c);
	// The last touch of the client: after this, stop may return. The
	// link itself is freed from outside its callbacks (free_dead_links).
	in_callback = NULL;
	aai_mtx_lock(&c->mtx);
	l->next_dead = c->dead;
	l->down = true;
	c->dead = l;
	c->live_links--;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
}

// ---- Connecting ----

// free_dead_links frees links that went down: transport free waits until
// their callbacks have returned. Never called from a link's callback.
static void
free_dead_links(aa_client *c)
{
	// Links a connect_clink still waits on stay on the list.
	clink *l = NULL;
	aai_mtx_lock(&c->mtx);
	for (clink **pp = &c->dead; *pp != NULL;) {
		clink *d = *pp;
		if (d->connecting) {
			pp = &d->next_dead;
		} else {
			*pp = d->next_dead;
			d->next_dead = l;
			l = d;
		}
	}
	aai_mtx_unlock(&c->mtx);
	while (l != NULL) {
		clink *next = l->next_dead;
		aai_conn_free(l->conn);
		aai_wire_arena_fini(&l->arena);
		aai_free(l);
		aai_live_dec(AA_LIVE_CLIENT);
		l = next;
	}
}

static int
connect_clink(aa_client *c)
{
	aai_conn *conn;
	clink *l;
	int rv;
	aai_wire_msg hello;

	if (in_callback != c) {
		free_dead_links(c);
	}
	if ((rv = aai_dial(&conn, c->url, &c->tp)) != 0) {
		return rv;
	}
	if ((l = aai_zalloc(sizeof(*l))) == NULL) {
		aai_conn_free(conn);
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_CLIENT);
	l->c = c;
	l->conn = conn;
	l->connecting = true;
	aai_wire_arena_init(&l->arena, l->buf, sizeof(l->buf));

	aai_mtx_lock(&c->mtx);
	if (c->closed) {
		aai_mtx_unlock(&c->mtx);
		aai_conn_free(conn);
		aai_wire_arena_fini(&l->arena);
		aai_free(l);
		aai_live_dec(AA_LIVE_CLIENT);
		return AA_ECLOSED;
	}
	c->live_links++; // its down callback runs once, whatever happens
	aai_mtx_unlock(&c->mtx);

	// The link is published (c->link) only after the server's Hello:
	// nothing but our Hello may go out on it before that.
	static const aai_conn_cbs cbs = {
	    .frame = clink_frame,
	    .down = clink_down,
	};
	aai_conn_start(conn, &cbs, l);
	aai_wire_hello_client(&hello, c->instance_id,
	                      (uint32_t)c->opts.max_msg_size,
	                      (uint32_t)c->opts.heartbeat_ms);
	aai_wire_send(conn, &hello, 0);

	// Wait for the server's Hello, its goodbye, or the link going down.
	uint64_t until =
	    aa_clock_us() + (uint64_t)c->opts.connect_timeout_ms * 1000u;
	aai_mtx_lock(&c->mtx);
	c->st.sent_other++;
	while (!l->hello && l->goodbye == 0 && !l->down) {
		uint64_t now = aa_clock_us();
		if (now >= until) {
			break;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t left = until - now;
		ts.tv_sec += (time_t)(left / 1000000u);
		ts.tv_nsec += (long)(left % 1000000u) * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&c->cv, &c->mtx, &ts);
	}
	if (l->hello && !l->down && l->goodbye == 0 && !c->closed &&
	    c->link == NULL) {
		l->connecting = false;
		c->link = l;
		c->conn_id = l->conn_id;
		c->down_err = 0;
		c->st.connects++;
		aai_mtx_unlock(&c->mtx);
		return 0;
	}
	// Not ours to use: another thread connected meanwhile (use its
	// link), or it failed. While `connecting` is set nobody frees it,
	// so closing it here is safe even if it went down already.
	rv = (l->hello && !l->down && l->goodbye == 0 && !c->closed) ? 0
	     : c->closed       ? AA_ECLOSED
	     : l->goodbye != 0 ? l->goodbye
	     : l->down         ? AA_ECONNLOST
	                       : AA_ETIMEDOUT;
	aai_mtx_unlock(&c->mtx);
	aai_conn_close(conn); // clink_down cleans up
	aai_mtx_lock(&c->mtx);
	l->connecting = false;
	aai_mtx_unlock(&c->mtx);
	return rv;
}

static uint64_t
random_id(void)
{
	uint64_t id = 0;
	FILE *f = fopen("/dev/urandom", "rb");
	if (f != NULL) {
		if (fread(&id, sizeof(id), 1, f) != 1) {
			id = 0;
		}
		fclose(f);
	}
	if (id == 0) {
		id = aa_clock_us() ^ ((uint64_t)getpid() << 32);
	}
	return id != 0 ? id : 1;
}

int
aa_client_open(aa_client **cp, const aa_client_opts *o)
{
	aa_client *c;
	aa_client_opts opts = {0};
	int rv;

	if (cp == NULL) {
		return AA_EINVAL;
	}
	if (o != NULL) {
		opts = *o;
	}
	if (opts.url == NULL && (opts.url = aa_default_url()) == NULL) {
		return AA_EINVAL;
	}
	if (opts.max_msg_size == 0) {
		opts.max_msg_size = 1u << 20;
	}
	if (opts.heartbeat_ms <= 0) {
		opts.heartbeat_ms = 1000;
	}
	if (opts.dead_after_ms <= 0) {
		opts.dead_after_ms = 3 * opts.heartbeat_ms;
	}
	if (opts.connect_timeout_ms <= 0) {
		opts.connect_timeout_ms = 5000;
	}
	if ((c = aai_zalloc(sizeof(*c))) == NULL) {
		return AA_ENOMEM;
	}
	aai_mtx_init(&c->mtx);
	aai_cv_init(&c->cv);
	c->opts = opts;
	pthread_once(&fork_once, watch_forks);
	c->forks = atomic_load(&fork_count);
	c->instance_id = random_id();
	c->next_id = 1;
	c->url = aai_strdup(opts.url);
	c->opts.url = c->url;
	if (c->url == NULL || (rv = aa_timer_queue_alloc(&c->timers)) != 0 ||
	    (rv = aa_recycler_alloc(&c->recycler, 0)) != 0) {
		rv = c->url == NULL ? AA_ENOMEM : rv;
		aa_timer_queue_free(c->timers);
		aai_free(c->url);
		aai_cv_fini(&c->cv);
		aai_mtx_fini(&c->mtx);
		aai_free(c);
		return rv;
	}
	c->alloc = (aa_allocator){client_alloc, client_free_block, c};
	atomic_init(&c->shell_refs, 1);
	aai_wire_msg hb;
	size_t hb_len = 0;
	aai_wire_heartbeat(&hb, 0);
	aai_wire_encode(&hb_len, c->heartbeat, sizeof(c->heartbeat), &hb, 0);
	c->tp = (aai_tp_opts){
	    .max_frame = opts.max_msg_size,
	    .heartbeat_ms = opts.heartbeat_ms,
	    .heartbeat_frame = c->heartbeat,
	    .heartbeat_len = hb_len,
	    .silence_ms = opts.dead_after_ms,
	    .connect_timeout_ms = opts.connect_timeout_ms,
	    .tls_cert_file = opts.tls_cert_file,
	    .tls_key_file = opts.tls_key_file,
	    .tls_ca_file = opts.tls_ca_file,
	    .tls_server_name = opts.tls_server_name,
	    .tls_verify_peer = opts.tls_verify,
	};
	aai_live_inc(AA_LIVE_CLIENT);
	if ((rv = connect_clink(c)) != 0) {
		aa_client_free(c);
		return rv;
	}
	*cp = c;
	return 0;
}

// ---- Queries ----

aa_timeline
aa_client_timeline(const aa_op *op)
{
	int d = aa_op_cancel_detail(op);
	return d > 0 ? (aa_timeline)d : AA_TIMELINE_NONE;
}

const char *
aa_timeline_name(aa_timeline t)
{
	switch (t) {
	case AA_TIMELINE_PRE_SUBMIT:
		return "pre_submit";
	case AA_TIMELINE_IN_FLIGHT:
		return "in_flight";
	case AA_TIMELINE_ALREADY_COMPLETE:
		return "already_complete";
	default:
		return "none";
	}
}

uint64_t
aa_client_op_id(const aa_op *op)
{
	if (op == NULL || aai_op_cancel_fn(op) != cop_cancel) {
		return 0;
	}
	return ((const cop *)aa_op_extra((aa_op *)op))->id;
}

uint64_t
aa_client_conn_id(aa_client *c)
{
	if (forked(c)) {
		return 0;
	}
	aai_mtx_lock(&c->mtx);
	uint64_t id = c->conn_id;
	aai_mtx_unlock(&c->mtx);
	return id;
}

int
aa_client_method_cancel_types(aa_client *c, const char *name, unsigned *types)
{
	if (forked(c)) {
		return AA_ESTATE;
	}
	aai_mtx_lock(&c->mtx);
	const method *m = find_method(c, name);
	if (m != NULL && types != NULL) {
		*types = m->types;
	}
	aai_mtx_unlock(&c->mtx);
	return m != NULL ? 0 : AA_ENOENT;
}

void
aa_client_stats_get(aa_client *c, aa_client_stats *st)
{
	if (forked(c)) {
		memset(st, 0, sizeof(*st));
		return;
	}
	aai_mtx_lock(&c->mtx);
	*st = c->st;
	st->pending = c->n_ops;
	aai_mtx_unlock(&c->mtx);
}

// ---- Cancel-all, close, stop, free ----

int
aa_client_cancel_all(aa_client *c, aa_cancel_type type)
{
	aa_op **ops;
	size_t n = 0, cap;
	int cancelled = 0;

	if (forked(c)) {
		return 0;
	}
	aai_mtx_lock(&c->mtx);
	cap = c->n_ops;
	ops = cap > 0 ? aai_alloc(cap * sizeof(*ops)) : NULL;
	if (cap > 0 && ops == NULL) {
		aai_mtx_unlock(&c->mtx);
		return 0;
	}
	for (size_t i = 0; i < c->n_buckets; i++) {
		for (cop *p = c->buckets[i]; p != NULL; p = p->hnext) {
			aa_op_ref(p->op);
			ops[n++] = p->op;
		}
	}
	aai_mtx_unlock(&c->mtx);
	for (size_t i = 0; i < n; i++) {
		if (aa_op_cancel(ops[i], type) == 0) {
			cancelled++;
		}
		aa_op_unref(ops[i]);
	}
	aai_free(ops);
	return cancelled;
}

void
aa_client_close(aa_client *c)
{
	if (forked(c)) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	if (c->closed) {
		aai_mtx_unlock(&c->mtx);
		return;
	}
	c->closed = true;
	aai_mtx_unlock(&c->mtx);

	// Every pending op ends CANCELED. The server hears one Goodbye for
	// all of them, and cancels every real op of a client that leaves.
	// Their handlers run inline, here: mark this thread as inside a
	// callback of c, so that a handler calling stop or free is detected
	// (AA_EDEADLK, deferred free) instead of waiting for this close.
	aa_client *outer = in_callback;
	in_callback = c;
	aa_client_cancel_all(c, AA_CANCEL_TERMINAL);
	in_callback = outer;

	aai_mtx_lock(&c->mtx);
	clink *l = c->link;
	if (l != NULL) {
		aai_wire_msg bye;
		aai_wire_goodbye(&bye, AA_ECLOSED, "client closed");
		if (aai_wire_send(l->conn, &bye, 0) == 0) {
			c->st.sent_other++;
		}
	}
	aai_mtx_unlock(&c->mtx);
	if (l != NULL) {
		aai_conn_close(l->conn);
	}
}

int
aa_client_stop(aa_client *c)
{
	if (forked(c)) {
		return AA_ESTATE;
	}
	if (in_callback == c) {
		return AA_EDEADLK;
	}
	aa_client_close(c);
	aai_mtx_lock(&c->mtx);
	// The link's down callback runs on its own thread;
	// flushers finish their loop.
	while (c->link != NULL || c->live_links > 0 || c->flushing) {
		aai_cv_wait(&c->cv, &c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
	free_dead_links(c);
	return 0;
}

static void
client_free_now(aa_client *c)
{
	aa_client_stop(c);
	aa_timer_queue_free(c->timers);
	for (size_t i = 0; i < c->n_methods; i++) {
		aai_free(c->methods[i].name);
	}
	aai_free(c->methods);
	aai_free(c->buckets);
	aai_free(c->url);
	aai_cv_fini(&c->cv);
	aai_mtx_fini(&c->mtx);
	shell_unref(c); // ops still alive keep the shell and the recycler
}

static void *
deferred_free(void *arg)
{
	client_free_now(arg);
	return NULL;
}

void
aa_client_free(aa_client *c)
{
	pthread_t t;
	if (c == NULL || forked(c)) {
		return; // a forked child leaves its copy alone
	}
	if (in_callback != c) {
		client_free_now(c);
		return;
	}
	// From inside one of c's callbacks: close now, free on a thread of
	// its own once the callback has returned.
	aa_client_close(c);
	if (pthread_create(&t, NULL, deferred_free, c) == 0) {
		pthread_detach(t);
	} else {
		aai_panic("aa_client_free: cannot defer the free");
	}
}
