// server.c: the server layer, the "fake client" (aa/server.h). It accepts
// clients, starts a real op (made by a registered method) per Start,
// forwards Cancel and Progress, and always sends the real op's Complete.
//
// Design notes.
//
// * Objects. The server (one mutex, s->mtx) owns the method table (frozen
//   at the first listen, read without a lock), the listeners, the list of
//   sessions, the instance map (client instance id -> highest op id
//   accepted, for deduplication across reconnects: a connection
//   snapshots it at its Hello, rejects ids not above the snapshot or
//   pending on it, and raises it with a CAS per accepted Start; an
//   instance without connections is forgotten after 10 minutes) and a
//   timer queue (one thread: deadlines, the handshake timeout, the
//   goodbye linger, and the reaping of sessions). A session is one client
//   connection (its own mutex, ss->mtx); it owns the table op id -> entry (a
//   hash map, O(1)). An entry is one real op: the op, its aa_call_info, its
//   flags and its deadline timer. Entries come from a server-owned
//   aa_recycler, like the real ops, so steady state allocates nothing.
//
// * Session states (ss->mtx): HANDSHAKE (waiting for the client's Hello,
//   10 s at most) -> READY (Hello answered) -> CLOSING (a Goodbye was sent
//   or received: nothing more is sent, frames are ignored, the connection
//   is closed after a short linger so that the Goodbye gets written) ->
//   DOWN (the transport's down callback ran). Any state may go straight to
//   DOWN. Frames, Hello, Start, Cancel and down run on the connection's
//   receive thread, serialised.
//
// * References. A session is held by: its connection while up (dropped in
//   down), each entry, each armed session timer, and a walker (server
//   close). The last unref never frees on the spot: it posts the session's
//   reap timer (delay 0) and the timer thread frees the connection (which
//   waits until its down callback has returned) and the session, then
//   tells the server. So nothing frees a connection from inside its own
//   callback, and aa_server_stop can wait for "no session left" alone. An
//   entry is held by the table until the op's handler ran, by a running
//   deadline function and by a walker that cancels it; the last unref
//   drops the op and the session.
//
// * Locks. Order: s->mtx, then ss->mtx, then the op's or transport's
//   (aai_conn_send_encode and aa_op_result are called under ss->mtx; they
//   call nothing back). Nothing calls a method, a hook, the log function,
//   aa_op_cancel, aa_timer_cancel, or a transport close or free under one
//   of our locks: work is collected under the lock and done after. Every
//   frame this layer sends (Hello, Complete, Progress, Goodbye) is encoded
//   and queued under ss->mtx together with the state check, so no frame
//   ever follows our Goodbye.
//
// * Races and who wins.
//   - Cancel vs real completion: decided by the op (its mutex). A Cancel
//     that finds the entry still in the table marks cancel_received and
//     calls aa_op_cancel; if the op already finished that is AA_EALREADY.
//     The handler removes the entry in one locked step; a Cancel after it
//     finds nothing and is ignored (counted). Either way exactly one
//     Complete goes out, with the op's real outcome; COMPLETED after
//     cancel_received counts as wasted and runs the compensation hook.
//   - Client gone vs completion: down marks the session DOWN under ss->mtx
//     and cancels every op it finds in the table; the handler sends only
//     when the session is READY in the same locked step that removes the
//     entry. A Complete queued before down is lost with the connection
//     (REPLY_SENT); one after is REPLY_DROPPED.
//   - Deadline vs completion: the deadline function marks deadline_fired
//     under ss->mtx before it cancels. The handler marks finished in its
//     locked step; if the deadline had not fired it disarms the timer with
//     aa_timer_cancel after dropping the lock (waiting for a deadline
//     function that is just finding "finished"); if it had fired, it does
//     not wait (the deadline function may be waiting for this very
//     handler inside aa_op_cancel) and the entry's reference count keeps
//     the entry alive for the deadline function. A Complete reports
//     CANCELED with AA_ETIMEDOUT when the deadline's cancel took.
//   - Close vs Start: close sets s->closed and, in the same locked step
//     (s->mtx, then each ss->mtx), sends every session's Goodbye, then
//     walks the sessions cancelling their ops. A Start that checks
//     (under ss->mtx) before that is accepted and its op is cancelled, by
//     close's walk or, if the method was still running, by the Start path
//     itself right after the method returned; its Complete is not sent
//     (the session is CLOSING), so the client ends it with the Goodbye's
//     AA_EUNAVAIL whatever the moment. A Start that checks after finds
//     the session CLOSING and is ignored.
#include <stdio.h>
#include <string.h>

#include <aa/server.h>
#include <aa/timer.h>

#include "aai.h"
#include "transport.h"
#include "wire.h"
#include "wire_send.h"

#define DEFAULT_MAX_MSG      (1u << 20)
#define DEFAULT_MAX_PENDING  1024u
#define DEFAULT_HEARTBEAT_MS 1000
#define HANDSHAKE_TIMEOUT_MS 10000 // docs/protocol.md § 4
#define GOODBYE_LINGER_MS    250   // time for a Goodbye to be written
#define ARENA_BYTES          (16u * 1024)
#define OP_BUCKETS_MIN       64
// How long an instance's high-water mark outlives its last connection
// (docs/protocol.md § 6: "minutes, not seconds").
#define INSTANCE_GRACE_US (10ull * 60 * 1000000)

typedef struct method {
	char *name;
	aa_method_def def;
} method;

typedef struct instance {
	struct instance *next;
	uint64_t id;
	_Atomic uint64_t high;    // highest op id accepted from this instance
	_Atomic uint32_t pending; // ops pending over all its connections
	int conns;        // s->mtx: connections that said Hello with it
	uint64_t left_us; // s->mtx: when the last of them went down
} instance;

typedef struct session session;

typedef struct entry {
	struct entry *hnext; // hash chain (ss->mtx)
	struct entry *wnext; // a walker's list (ss->mtx to link)
	session *ss;
	const method *m;
	aa_op *op; // NULL while the method runs
	aa_call_info call;
	aa_timer deadline;
	int refs; // ss->mtx
	bool in_table;
	bool finished;         // the handler ran (took it out of the table)
	bool cancel_received;  // the client's Cancel came while it ran
	bool cancel_late;      // ... or after the op had finished
	bool server_cancelled; // cancelled by close, orphaning or deadline
	bool timed_out;        // ... by the deadline
	bool deadline_armed;
	bool deadline_fired; // the deadline function passed its check
} entry;

typedef enum ss_state {
	SS_HANDSHAKE,
	SS_READY,
	SS_CLOSING,
	SS_DOWN,
} ss_state;

struct session {
	session *next, *prev; // s->sessions (s->mtx)
	session *wnext;       // server close's walk (s->mtx to link)
	aa_server *s;
	aai_conn *conn;
	uint64_t conn_id;
	pthread_mutex_t mtx;
	int refs; // ss->mtx
	ss_state state;
	bool connected; // counted in stats.clients
	bool hs_armed, linger_armed;
	entry **buckets; // op id -> entry
	size_t nbuckets;
	size_t count; // entries in the table = ops pending for this client
	// Receive thread only:
	instance *inst;
	uint64_t base;   // instance's high-water mark at Hello
	size_t send_max; // the client's max message size (capped by ours)
	aai_wire_arena arena;
	uint8_t *arena_buf;
	aa_timer hs_timer, linger_timer, reap_timer;
};

typedef struct pool {
	aa_recycler *r;
	const aa_allocator *rv;
	aa_allocator view;
	_Atomic int64_t refs; // the server's + one per block handed out
} pool;

typedef struct counters {
	_Atomic uint64_t clients, started, rejected, cancels_received,
	    cancels_ignored, completed, canceled, failed, wasted, orphaned,
	    replies_sent, replies_dropped, progress_sent, protocol_errors,
	    pending, cancels_late;
} counters;

struct aa_server {
	pthread_mutex_t mtx;
	pthread_cond_t cv; // nsessions reached 0
	// Configuration, fixed at alloc.
	size_t max_msg;
	uint32_t max_pending;
	int heartbeat_ms; // 0 = off
	int dead_after_ms;
	bool dead_after_set; // dead_after_ms was configured, not derived
	int reply_delay_ms;  // aa_server_opts.reply_delay_ms
	aa_server_log_fn log;
	void *log_arg;
	char *tls_cert, *tls_key, *tls_ca;
	uint8_t hb_frame[16];
	size_t hb_len;
	aa_assoc assoc;
	pool *pool;
	aa_timer_queue *tq;
	// Methods: appended under mtx until frozen, then read-only.
	method *methods;
	size_t nmethods, cap_methods;
	uint32_t *mhash; // index + 1, 0 = empty
	size_t mhash_size;
	aai_wire_method *wire_methods;
	bool frozen;
	// mtx:
	aai_listener **listeners;
	size_t nlisteners, cap_listeners;
	int port;
	session *sessions;
	size_t nsessions;
	instance **ibuckets;
	size_t inbuckets, icount;
	bool closed;
	_Atomic bool closed_flag; // closed, readable without the lock
	counters st;
};

// The server whose callback this thread is running, for AA_EDEADLK.
static _Thread_local aa_server *cb_owner;

#define ENTER(srv)                                                            \
	aa_server *saved_owner_ = cb_owner;                                   \
	cb_owner = (srv)
#define LEAVE() cb_owner = saved_owner_

static void session_unref(session *ss);

// ---- small helpers ----

static void
count(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

// slog_op reports an event about op op_id (0: about no op) to the log.
static void
slog_op(aa_server *s, aa_server_event ev, uint64_t conn_id, uint64_t op_id,
        const char *name, int err, int32_t app_code, const char *detail)
{
	if (s->log == NULL) {
		return;
	}
	aa_server_log_rec r = {
	    .event = ev,
	    .op_id = op_id,
	    .conn_id = conn_id,
	    .method = name != NULL ? name : "",
	    .t_us = aa_clock_us(),
	    .error = err,
	    .detail = detail != NULL ? detail : "",
	    .app_code = app_code,
	};
	s->log(s->log_arg, &r);
}

static void
slog(aa_server *s, aa_server_event ev, uint64_t conn_id, const entry *e,
     int err, const char *detail)
{
	slog_op(s, ev, conn_id, e != NULL ? e->call.op_id : 0,
	        e != NULL ? e->call.method : NULL, err, 0, detail);
}

static uint64_t
hash64(uint64_t x)
{
	return x * 0x9e3779b97f4a7c15ull;
}

static size_t
bucket_of(uint64_t id, size_t n)
{
	return (size_t)(hash64(id) >> 32) & (n - 1);
}

static uint32_t
fnv1a(const char *p)
{
	uint32_t h = 2166136261u;
	for (; *p != '\0'; p++) {
		h = (h ^ (uint8_t)*p) * 16777619u;
	}
	return h;
}

// weakest returns the weakest cancellation type in mask, or NONE.
static aa_cancel_type
weakest(unsigned mask)
{
	mask &= AA_CANCEL_ALL;
	return (aa_cancel_type)(mask & (0u - mask));
}

// types_ok says whether a method offering mask honours every type in req.
static bool
types_ok(unsigned mask, unsigned req)
{
	for (unsigned t = 1; t <= AA_CANCEL_TOTAL; t <<= 1) {
		if ((req & t) != 0 && !aa_cancel_supports(mask, t)) {
			return false;
		}
	}
	return true;
}

// ---- the recycling pool: outlives the server while ops hold blocks ----

static void
pool_unref(pool *p)
{
	if (atomic_fetch_sub(&p->refs, 1) == 1) {
		aa_recycler_free(p->r);
		aai_free(p);
	}
}

static void *
pool_alloc(void *ctx, size_t size)
{
	pool *p = ctx;
	void *b = p->rv->alloc(p->rv->ctx, size);
	if (b != NULL) {
		atomic_fetch_add(&p->refs, 1);
	}
	return b;
}

static void
pool_free(void *ctx, void *ptr, size_t size)
{
	pool *p = ctx;
	p->rv->free(p->rv->ctx, ptr, size);
	pool_unref(p);
}

static int
pool_new(pool **pp)
{
	pool *p = aai_zalloc(sizeof(*p));
	if (p == NULL) {
		return AA_ENOMEM;
	}
	int rv = aa_recycler_alloc(&p->r, 0);
	if (rv != 0) {
		aai_free(p);
		return rv;
	}
	p->rv = aa_recycler_allocator(p->r);
	p->view =
	    (aa_allocator){.alloc = pool_alloc, .free = pool_free, .ctx = p};
	atomic_init(&p->refs, 1);
	*pp = p;
	return 0;
}

// ---- the session's op table (expects ss->mtx) ----

static entry *
table_find(session *ss, uint64_t id)
{
	entry *e = ss->buckets[bucket_of(id, ss->nbuckets)];
	while (e != NULL && e->call.op_id != id) {
		e = e->hnext;
	}
	return e;
}

static void
table_grow(session *ss)
{
	size_t n = ss->nbuckets * 2;
	entry **b = aai_zalloc(n * sizeof(*b));
	if (b == NULL) {
		return; // longer chains, still correct
	}
	for (size_t i = 0; i < ss->nbuckets; i++) {
		entry *e = ss->buckets[i];
		while (e != NULL) {
			entry *next = e->hnext;
			size_t k = bucket_of(e->call.op_id, n);
			e->hnext = b[k];
			b[k] = e;
			e = next;
		}
	}
	aai_free(ss->buckets);
	ss->buckets = b;
	ss->nbuckets = n;
}

static void
table_insert(session *ss, entry *e)
{
	if (ss->count >= ss->nbuckets) {
		table_grow(ss);
	}
	size_t k = bucket_of(e->call.op_id, ss->nbuckets);
	e->hnext = ss->buckets[k];
	ss->buckets[k] = e;
	e->in_table = true;
	ss->count++;
}

static void
table_remove(session *ss, entry *e)
{
	if (!e->in_table) {
		return;
	}
	entry **pp = &ss->buckets[bucket_of(e->call.op_id, ss->nbuckets)];
	while (*pp != e) {
		pp = &(*pp)->hnext;
	}
	*pp = e->hnext;
	e->in_table = false;
	ss->count--;
}

// ---- entries ----

static void
entry_unref(entry *e)
{
	session *ss = e->ss;
	aai_mtx_lock(&ss->mtx);
	bool last = --e->refs == 0;
	aai_mtx_unlock(&ss->mtx);
	if (!last) {
		return;
	}
	if (e->op != NULL) {
		aa_op_unref(e->op);
	}
	pool *p = ss->s->pool;
	p->view.free(p, e, sizeof(*e));
	session_unref(ss);
}

// cancel_all cancels every real op of ss not cancelled by the server yet
// (the weakest type each method honours; one that honours none runs to its
// end), adding how many it found to *counter (may be NULL) first. Not
// under any lock.
static void
cancel_all(session *ss, _Atomic uint64_t *counter)
{
	entry *list = NULL;
	uint64_t n = 0;
	aai_mtx_lock(&ss->mtx);
	for (size_t i = 0; i < ss->nbuckets; i++) {
		for (entry *e = ss->buckets[i]; e != NULL; e = e->hnext) {
			if (e->op == NULL || e->server_cancelled) {
				continue; // a method still running: see Start
			}
			e->server_cancelled = true;
			e->refs++;
			e->wnext = list;
			list = e;
			n++;
		}
	}
	aai_mtx_unlock(&ss->mtx);
	if (counter != NULL) {
		atomic_fetch_add(counter, n);
	}
	while (list != NULL) {
		entry *e = list;
		list = e->wnext;
		aa_cancel_type t = weakest(e->m->def.cancel_types);
		if (t != AA_CANCEL_NONE) {
			(void)aa_op_cancel(e->op, t);
		}
		entry_unref(e);
	}
}

// ---- session timers and lifetime ----

static void
session_destroy(session *ss)
{
	aa_server *s = ss->s;
	aai_conn_free(ss->conn); // waits until its down callback returned
	aai_wire_arena_fini(&ss->arena);
	aai_free(ss->arena_buf);
	aai_free(ss->buckets);
	aai_mtx_fini(&ss->mtx);
	aai_free(ss);
	aai_live_dec(AA_LIVE_SERVER);

	aai_mtx_lock(&s->mtx);
	if (--s->nsessions == 0) {
		aai_cv_broadcast(&s->cv);
	}
	aai_mtx_unlock(&s->mtx);
	// s may be gone from here on (aa_server_stop returned).
}

static void
on_reap(void *arg)
{
	session *ss = arg;
	ENTER(ss->s);
	session *unlinked = ss;
	aa_server *s = ss->s;
	aai_mtx_lock(&s->mtx);
	if (ss->prev != NULL) {
		ss->prev->next = ss->next;
	} else {
		s->sessions = ss->next;
	}
	if (ss->next != NULL) {
		ss->next->prev = ss->prev;
	}
	aai_mtx_unlock(&s->mtx);
	LEAVE();
	session_destroy(unlinked);
}

static void
session_unref(session *ss)
{
	aai_mtx_lock(&ss->mtx);
	bool last = --ss->refs == 0;
	aai_mtx_unlock(&ss->mtx);
	if (!last) {
		return;
	}
	// Free on the timer thread: never inside the connection's own
	// callback, and never on a thread that a caller may be waiting for.
	aa_timer_init(&ss->reap_timer, on_reap, ss);
	if (aa_timer_start(&ss->reap_timer, ss->s->tq, 0) != 0) {
		on_reap(ss); // only while the queue is freed: cannot happen
	}
}

static void
on_linger(void *arg)
{
	session *ss = arg;
	ENTER(ss->s);
	aai_mtx_lock(&ss->mtx);
	ss->linger_armed = false;
	aai_mtx_unlock(&ss->mtx);
	aai_conn_close(ss->conn);
	session_unref(ss);
	LEAVE();
}

static void
on_handshake_timeout(void *arg)
{
	session *ss = arg;
	ENTER(ss->s);
	aai_mtx_lock(&ss->mtx);
	ss->hs_armed = false;
	bool close = ss->state == SS_HANDSHAKE;
	aai_mtx_unlock(&ss->mtx);
	if (close) {
		slog(ss->s, AA_SEV_PROTOCOL_ERROR, ss->conn_id, NULL,
		     AA_ETIMEDOUT, "no hello within the handshake timeout");
		aai_conn_close(ss->conn);
	}
	session_unref(ss);
	LEAVE();
}

// disarm cancels one of the session's timers if armed (flag under
// ss->mtx), dropping the reference it held if it will not run.
static void
disarm(session *ss, aa_timer *t, bool *armed)
{
	aai_mtx_lock(&ss->mtx);
	bool was = *armed;
	aai_mtx_unlock(&ss->mtx);
	if (was && aa_timer_cancel(t) == 0) {
		aai_mtx_lock(&ss->mtx);
		*armed = false;
		aai_mtx_unlock(&ss->mtx);
		session_unref(ss);
	}
}

// goodbye_locked sends Goodbye(reason) unless the session is past it, and
// arms the linger that closes the connection. Expects ss->mtx. Returns
// false when the session was already closing or down.
static bool
goodbye_locked(session *ss, int reason, const char *why)
{
	if (ss->state != SS_HANDSHAKE && ss->state != SS_READY) {
		return false;
	}
	aai_wire_msg m;
	aai_wire_goodbye(&m, (uint32_t)reason, why);
	(void)aai_wire_send(ss->conn, &m, ss->s->max_msg);
	ss->state = SS_CLOSING;
	aa_timer_init(&ss->linger_timer, on_linger, ss);
	if (aa_timer_start(&ss->linger_timer, ss->s->tq, GOODBYE_LINGER_MS) ==
	    0) {
		ss->linger_armed = true;
		ss->refs++;
	}
	return true;
}

static void
protocol_error(session *ss, int err, const char *why)
{
	aa_server *s = ss->s;
	count(&s->st.protocol_errors);
	slog(s, AA_SEV_PROTOCOL_ERROR, ss->conn_id, NULL, err, why);
	aai_mtx_lock(&ss->mtx);
	bool sent = goodbye_locked(ss, err, why);
	aai_mtx_unlock(&ss->mtx);
	if (!sent) {
		aai_conn_close(ss->conn);
	}
}

// ---- instances (expects s->mtx) ----

// instance_trim forgets the instances that have had no connection for
// the grace period. Called before the map grows, so its cost is amortised
// and its size stays within twice the instances seen in a grace period.
static void
instance_trim(aa_server *s)
{
	uint64_t now = aa_clock_us();
	for (size_t i = 0; i < s->inbuckets; i++) {
		instance **pp = &s->ibuckets[i];
		while (*pp != NULL) {
			instance *x = *pp;
			if (x->conns == 0 && atomic_load(&x->pending) == 0 &&
			    now - x->left_us > INSTANCE_GRACE_US) {
				*pp = x->next;
				aai_free(x);
				s->icount--;
			} else {
				pp = &x->next;
			}
		}
	}
}

// instance_get finds or adds instance id and counts one more connection
// of it. Expects s->mtx.
static instance *
instance_get(aa_server *s, uint64_t id)
{
	if (s->inbuckets > 0 && s->icount >= s->inbuckets) {
		instance_trim(s);
	}
	if (s->inbuckets == 0 || s->icount >= s->inbuckets) {
		size_t n = s->inbuckets == 0 ? 64 : s->inbuckets * 2;
		instance **b = aai_zalloc(n * sizeof(*b));
		if (b == NULL && s->inbuckets == 0) {
			return NULL;
		}
		if (b != NULL) {
			for (size_t i = 0; i < s->inbuckets; i++) {
				instance *x = s->ibuckets[i];
				while (x != NULL) {
					instance *next = x->next;
					size_t k = bucket_of(x->id, n);
					x->next = b[k];
					b[k] = x;
					x = next;
				}
			}
			aai_free(s->ibuckets);
			s->ibuckets = b;
			s->inbuckets = n;
		}
	}
	size_t k = bucket_of(id, s->inbuckets);
	for (instance *x = s->ibuckets[k]; x != NULL; x = x->next) {
		if (x->id == id) {
			x->conns++;
			return x;
		}
	}
	instance *x = aai_zalloc(sizeof(*x));
	if (x == NULL) {
		return NULL;
	}
	x->id = id;
	x->conns = 1;
	atomic_init(&x->high, 0);
	atomic_init(&x->pending, 0);
	x->next = s->ibuckets[k];
	s->ibuckets[k] = x;
	s->icount++;
	return x;
}

// ---- the real op's callbacks ----

static void
on_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	entry *e = arg;
	session *ss = e->ss;
	ENTER(ss->s);
	aai_wire_msg m;
	aai_wire_progress(&m, e->call.op_id, data, len);
	bool sent = false;
	aai_mtx_lock(&ss->mtx);
	// After a Cancel the client drops progress: save the bytes.
	if (ss->state == SS_READY && !e->finished && !e->cancel_received) {
		sent = aai_wire_send(ss->conn, &m, ss->send_max) == 0;
	}
	aai_mtx_unlock(&ss->mtx);
	if (sent) {
		count(&ss->s->st.progress_sent);
	}
	LEAVE();
}

// A Complete held back by aa_server_opts.reply_delay_ms: encoded when the
// op finished, sent by the timer thread when the delay has passed (if the
// session is still READY then). It holds a session reference.
typedef struct delayed_reply {
	aa_timer timer;
	session *ss;
	uint64_t op_id;
	const char *method; // in the server's method table
	size_t len;
	uint8_t frame[];
} delayed_reply;

static void
on_delayed_reply(void *arg)
{
	delayed_reply *d = arg;
	session *ss = d->ss;
	aa_server *s = ss->s;
	ENTER(s);
	aai_mtx_lock(&ss->mtx);
	int rv = ss->state == SS_READY
	             ? aai_conn_send(ss->conn, d->frame, d->len)
	             : AA_ECLOSED;
	aai_mtx_unlock(&ss->mtx);
	count(rv == 0 ? &s->st.replies_sent : &s->st.replies_dropped);
	slog_op(s, rv == 0 ? AA_SEV_REPLY_SENT : AA_SEV_REPLY_DROPPED,
	        ss->conn_id, d->op_id, d->method, rv, 0, NULL);
	aai_free(d);
	session_unref(ss);
	LEAVE();
}

// delay_reply encodes m and arms its delayed send. Expects ss->mtx (the
// state check and the session reference). 0, AA_EMSGSIZE (over the
// client's limit) or AA_ENOMEM.
static int
delay_reply(entry *e, const aai_wire_msg *m)
{
	session *ss = e->ss;
	size_t len;
	int rv = aai_wire_size(&len, m);
	if (rv != 0) {
		return rv;
	}
	if (len > ss->send_max) {
		return AA_EMSGSIZE;
	}
	delayed_reply *d = aai_alloc(sizeof(*d) + len);
	if (d == NULL) {
		return AA_ENOMEM;
	}
	(void)aai_wire_encode(&d->len, d->frame, len, m, 0);
	d->ss = ss;
	d->op_id = e->call.op_id;
	d->method = e->call.method;
	aa_timer_init(&d->timer, on_delayed_reply, d);
	if (aa_timer_start(&d->timer, ss->s->tq, ss->s->reply_delay_ms) != 0) {
		aai_free(d);
		return AA_ECLOSED;
	}
	ss->refs++;
	return 0;
}

// send_complete sends (or, with a reply delay, schedules) m for e. Expects
// ss->mtx; sends only while the session is READY.
static int
send_complete(entry *e, const aai_wire_msg *m)
{
	session *ss = e->ss;
	if (ss->state != SS_READY) {
		return AA_ECLOSED;
	}
	if (ss->s->reply_delay_ms > 0) {
		return delay_reply(e, m);
	}
	return aai_wire_send(ss->conn, m, ss->send_max);
}

// finish sends the Complete of e's op (forced: a server-made failure
// instead of the op's outcome), logs, compensates and drops the table's
// reference.
static void
finish(entry *e, int forced, const char *forced_msg)
{
	session *ss = e->ss;
	aa_server *s = ss->s;
	aa_op *op = e->op;
	aa_state st = forced != 0 ? AA_ERROR : aa_op_status(op);
	aai_wire_msg m;
	aa_server_event ev;
	int err = 0;
	int32_t app_code = 0;
	const char *msg = "";
	const void *payload = NULL;
	size_t plen = 0;

	AAI_CHECKPOINT("server.before_reply", op);

	aai_mtx_lock(&ss->mtx);
	e->finished = true;
	table_remove(ss, e);
	bool disarm_deadline = e->deadline_armed && !e->deadline_fired;
	bool cancel_received = e->cancel_received;
	bool client_cancelled = cancel_received || e->cancel_late;
	switch (st) {
	case AA_COMPLETED:
		(void)aa_op_result(op, &payload, &plen);
		aai_wire_complete(&m, e->call.op_id, AAI_WIRE_COMPLETED, 0,
		                  NULL, payload, plen);
		ev = AA_SEV_COMPLETED;
		break;
	case AA_CANCELED:
		// Whose cancel it was: the client's, the deadline's, or the
		// server's own (the method cancelled itself).
		err = cancel_received ? AA_ECANCELED
		      : e->timed_out  ? AA_ETIMEDOUT
		                      : AA_ESRVCANCEL;
		aai_wire_complete(
		    &m, e->call.op_id, AAI_WIRE_CANCELED, (uint32_t)err,
		    e->timed_out ? "deadline passed" : NULL, NULL, 0);
		ev = AA_SEV_CANCELED;
		break;
	default:
		if (forced != 0) {
			err = forced;
			msg = forced_msg;
		} else {
			err = aa_op_error(op);
			msg = aa_op_error_msg(op);
			(void)aa_op_app_code(op, &app_code);
		}
		if (err <= 0 || err > AAI_WIRE_ERROR_MAX) {
			err = AA_EINTERNAL;
		}
		aai_wire_complete(&m, e->call.op_id, AAI_WIRE_FAILED,
		                  (uint32_t)err, msg, NULL, 0);
		m.complete.app_code = err == AA_EAPP ? app_code : 0;
		ev = AA_SEV_FAILED;
		break;
	}
	m.complete.cancel_received = cancel_received;
	// Counted before the send, so that a client holding the Complete
	// finds the counters up to date.
	atomic_fetch_sub(&s->st.pending, 1);
	if (ss->inst != NULL) {
		atomic_fetch_sub(&ss->inst->pending, 1);
	}
	count(ev == AA_SEV_COMPLETED  ? &s->st.completed
	      : ev == AA_SEV_CANCELED ? &s->st.canceled
	                              : &s->st.failed);
	int rv = send_complete(e, &m);
	bool too_big = rv == AA_EMSGSIZE;
	if (too_big) {
		aai_wire_complete(&m, e->call.op_id, AAI_WIRE_FAILED,
		                  AA_EMSGSIZE,
		                  "result larger than the client's "
		                  "maximum message size",
		                  NULL, 0);
		m.complete.cancel_received = cancel_received;
		rv = send_complete(e, &m);
	}
	bool delayed = rv == 0 && s->reply_delay_ms > 0;
	if (!delayed) {
		count(rv == 0 ? &s->st.replies_sent : &s->st.replies_dropped);
	}
	// The result is not used: the client cancelled, or never gets it.
	bool wasted =
	    st == AA_COMPLETED && (client_cancelled || rv != 0 || too_big);
	if (wasted) {
		count(&s->st.wasted);
	}
	aai_mtx_unlock(&ss->mtx);

	if (disarm_deadline) {
		// Waits only for a deadline function that is about to see
		// "finished"; one past that check never makes us wait.
		(void)aa_timer_cancel(&e->deadline);
	}
	slog_op(s, ev, ss->conn_id, e->call.op_id, e->call.method, err,
	        app_code, msg);
	if (!delayed) {
		slog(s, rv == 0 ? AA_SEV_REPLY_SENT : AA_SEV_REPLY_DROPPED,
		     ss->conn_id, e, rv, NULL);
	}
	if (wasted && e->m->def.compensate != NULL) {
		e->m->def.compensate(e->m->def.arg, &e->call, op);
		slog(s, AA_SEV_COMPENSATED, ss->conn_id, e, 0, NULL);
	}
	entry_unref(e);
}

static void
on_done(aa_op *op, void *arg)
{
	entry *e = arg;
	ENTER(e->ss->s);
	finish(e, 0, NULL);
	LEAVE();
}

static void
on_deadline(void *arg)
{
	entry *e = arg;
	session *ss = e->ss;
	ENTER(ss->s);
	aai_mtx_lock(&ss->mtx);
	if (e->finished) {
		// The handler is disarming us and waits for this return.
		aai_mtx_unlock(&ss->mtx);
		LEAVE();
		return;
	}
	e->deadline_fired = true;
	bool cancel = !e->server_cancelled;
	if (cancel) {
		e->server_cancelled = true;
		e->timed_out = !e->cancel_received;
	}
	e->refs++;
	aai_mtx_unlock(&ss->mtx);
	aa_cancel_type t = weakest(e->m->def.cancel_types);
	if (cancel && t != AA_CANCEL_NONE) {
		(void)aa_op_cancel(e->op, t);
	}
	entry_unref(e);
	LEAVE();
}

// ---- frames ----

static void
reject(session *ss, uint64_t op_id, const char *name, int err, const char *why)
{
	aa_server *s = ss->s;
	aai_wire_msg m;
	aai_wire_complete(&m, op_id, AAI_WIRE_REJECTED, (uint32_t)err, why,
	                  NULL, 0);
	count(&s->st.rejected);
	aai_mtx_lock(&ss->mtx);
	int rv = ss->state == SS_READY
	             ? aai_wire_send(ss->conn, &m, ss->send_max)
	             : AA_ECLOSED;
	aai_mtx_unlock(&ss->mtx);
	if (s->log != NULL) {
		entry fake = {.call = {.op_id = op_id, .method = name}};
		slog(s, AA_SEV_REJECTED, ss->conn_id, &fake, err, why);
		if (rv != 0) {
			slog(s, AA_SEV_REPLY_DROPPED, ss->conn_id, &fake, rv,
			     NULL);
		}
	}
}

static const method *
method_find(aa_server *s, const char *name)
{
	if (s->mhash_size == 0) {
		return NULL;
	}
	size_t mask = s->mhash_size - 1;
	for (size_t i = fnv1a(name) & mask;; i = (i + 1) & mask) {
		uint32_t x = s->mhash[i];
		if (x == 0) {
			return NULL;
		}
		if (strcmp(s->methods[x - 1].name, name) == 0) {
			return &s->methods[x - 1];
		}
	}
}

static void
on_start(session *ss, const aai_wire_msg *m, uint64_t t0_us)
{
	aa_server *s = ss->s;
	uint64_t id = m->op_id;
	const char *name = m->start.method;

	// The checks of docs/protocol.md § 5.2, in its order.
	aai_mtx_lock(&ss->mtx);
	bool dup = id <= ss->base || table_find(ss, id) != NULL;
	aai_mtx_unlock(&ss->mtx);
	if (dup) {
		reject(ss, id, name, AA_EEXIST, "duplicate op id");
		return;
	}
	const method *mt = method_find(s, name);
	if (mt == NULL) {
		reject(ss, id, name, AA_ENOENT, "no such method");
		return;
	}
	if (!types_ok(mt->def.cancel_types, m->start.cancel_types)) {
		reject(ss, id, mt->name, AA_ENOTSUP,
		       "method does not honour the cancellation types");
		return;
	}
	entry *e = s->pool->view.alloc(s->pool, sizeof(*e));
	if (e == NULL) {
		reject(ss, id, mt->name, AA_ENOMEM, "out of memory");
		return;
	}
	memset(e, 0, sizeof(*e));
	e->ss = ss;
	e->m = mt;
	e->refs = 1;
	e->call = (aa_call_info){
	    .op_id = id,
	    .conn_id = ss->conn_id,
	    .method = mt->name,
	    .deadline_ms = m->start.deadline_ms,
	    .cancel_types = mt->def.cancel_types,
	};
	int err = 0;
	aai_mtx_lock(&ss->mtx);
	if (atomic_fetch_add(&ss->inst->pending, 1) >= s->max_pending) {
		// The limit is per client instance, over all its connections
		// (their receive threads race here: the add decides).
		atomic_fetch_sub(&ss->inst->pending, 1);
		err = AA_ELIMIT;
	} else if (atomic_load(&s->closed_flag) || ss->state != SS_READY) {
		atomic_fetch_sub(&ss->inst->pending, 1);
		err = AA_EUNAVAIL;
	} else {
		table_insert(ss, e);
		ss->refs++; // the entry's
	}
	aai_mtx_unlock(&ss->mtx);
	if (err != 0) {
		s->pool->view.free(s->pool, e, sizeof(*e));
		reject(ss, id, mt->name, err,
		       err == AA_ELIMIT ? "too many pending ops"
		                        : "server shutting down");
		return;
	}
	// Accepted: the id now counts for the instance's later connections.
	uint64_t high = atomic_load(&ss->inst->high);
	while (high < id &&
	       !atomic_compare_exchange_weak(&ss->inst->high, &high, id)) {
	}

	AAI_CHECKPOINT("server.before_start", &e->call);
	aa_op *op = NULL;
	int rv = mt->def.start(&op, mt->def.arg, &e->call, m->start.payload,
	                       m->start.payload_len, &s->assoc);
	if (rv != 0 || op == NULL) {
		if (rv <= 0 || rv > AAI_WIRE_ERROR_MAX) {
			rv = AA_EINTERNAL;
		}
		aai_mtx_lock(&ss->mtx);
		table_remove(ss, e);
		aai_mtx_unlock(&ss->mtx);
		atomic_fetch_sub(&ss->inst->pending, 1);
		reject(ss, id, mt->name, rv, aa_strerror(rv));
		entry_unref(e);
		return;
	}

	aai_mtx_lock(&ss->mtx);
	e->op = op;
	if (e->call.deadline_ms > 0) {
		uint64_t spent = (aa_clock_us() - t0_us) / 1000;
		uint64_t d = e->call.deadline_ms;
		aa_timer_init(&e->deadline, on_deadline, e);
		e->deadline_armed =
		    aa_timer_start(&e->deadline, s->tq,
		                   d > spent ? d - spent : 0) == 0;
	}
	// Close (or the client leaving) while the method ran: cancel now.
	bool cancel_now =
	    atomic_load(&s->closed_flag) || ss->state != SS_READY;
	if (cancel_now) {
		e->server_cancelled = true;
		e->refs++;
	}
	aai_mtx_unlock(&ss->mtx);
	count(&s->st.started);
	atomic_fetch_add(&s->st.pending, 1);
	// Progress the provider reports before this point has no handler to
	// go to and is lost: a method starts work, it does not report yet.
	(void)aa_op_set_progress_handler(op, on_progress, e);
	slog(s, AA_SEV_START, ss->conn_id, e, 0, NULL);
	if (aa_op_set_handler(op, on_done, e) != 0) {
		// The method broke its contract by setting a handler: we
		// cannot see the end of this op. Answer now, then forget it.
		finish(e, AA_EINTERNAL, "method set the op's handler");
	}
	if (cancel_now) {
		aa_cancel_type t = weakest(mt->def.cancel_types);
		if (t != AA_CANCEL_NONE) {
			(void)aa_op_cancel(op, t);
		}
		entry_unref(e);
	}
}

static void
on_cancel(session *ss, const aai_wire_msg *m)
{
	aa_server *s = ss->s;
	aai_mtx_lock(&ss->mtx);
	entry *e = table_find(ss, m->op_id);
	if (e == NULL || e->op == NULL || e->finished || e->cancel_received ||
	    e->cancel_late) {
		aai_mtx_unlock(&ss->mtx);
		count(&s->st.cancels_ignored);
		if (e == NULL && m->op_id <= atomic_load(&ss->inst->high)) {
			// Accepted once, pending no more: the op finished and
			// its Complete is on its way (the already-complete
			// timeline). Nothing answers this Cancel.
			count(&s->st.cancels_late);
			slog_op(s, AA_SEV_CANCEL_RECEIVED, ss->conn_id,
			        m->op_id, NULL, 0, 0,
			        "after completion: the op had finished");
		}
		return;
	}
	if (aa_op_status(e->op) != AA_STARTED) {
		// The op finished before this Cancel came, though its Complete
		// is not sent yet: the already-complete timeline. The client
		// drops the result (wasted), and the Complete says the Cancel
		// came after (cancel_received false).
		e->cancel_late = true;
		aai_mtx_unlock(&ss->mtx);
		count(&s->st.cancels_ignored);
		count(&s->st.cancels_late);
		slog(s, AA_SEV_CANCEL_RECEIVED, ss->conn_id, e, 0,
		     "after completion: the op had finished");
		return;
	}
	// The client has cancelled: whatever happens, it drops the result.
	e->cancel_received = true;
	aa_cancel_type t = (aa_cancel_type)m->cancel.type;
	if (!aa_cancel_supports(e->m->def.cancel_types, t)) {
		aai_mtx_unlock(&ss->mtx);
		count(&s->st.cancels_ignored);
		return;
	}
	e->refs++;
	aai_mtx_unlock(&ss->mtx);
	count(&s->st.cancels_received);
	slog(s, AA_SEV_CANCEL_RECEIVED, ss->conn_id, e, 0,
	     aa_cancel_type_name(t));
	(void)aa_op_cancel(e->op, t);
	entry_unref(e);
}

static void
on_hello(session *ss, const aai_wire_hello *h)
{
	aa_server *s = ss->s;
	if (h->role != AAI_WIRE_ROLE_CLIENT) {
		protocol_error(ss, AA_EPROTO, "hello from a server");
		return;
	}
	if (h->version != AAI_WIRE_VERSION) {
		// docs/protocol.md § 4 gives this text exactly.
		char why[80];
		snprintf(why, sizeof(why),
		         "protocol version %u not supported; server speaks %d",
		         (unsigned)h->version, AAI_WIRE_VERSION);
		count(&s->st.protocol_errors);
		slog(s, AA_SEV_PROTOCOL_ERROR, ss->conn_id, NULL, AA_ENOTSUP,
		     why);
		aai_mtx_lock(&ss->mtx);
		(void)goodbye_locked(ss, AA_ENOTSUP, why);
		aai_mtx_unlock(&ss->mtx);
		return;
	}
	disarm(ss, &ss->hs_timer, &ss->hs_armed);

	aai_mtx_lock(&s->mtx);
	instance *inst = instance_get(s, h->instance_id);
	aai_mtx_unlock(&s->mtx);
	if (inst == NULL) {
		aai_mtx_lock(&ss->mtx);
		(void)goodbye_locked(ss, AA_ENOMEM, "out of memory");
		aai_mtx_unlock(&ss->mtx);
		return;
	}
	ss->inst = inst;
	ss->base = atomic_load(&inst->high);
	ss->send_max =
	    h->max_msg_size < s->max_msg ? h->max_msg_size : s->max_msg;

	// The interval both sides use: ours, or the client's nonzero
	// preference if smaller (ours off keeps it off); silence is 3 of
	// them unless dead_after_ms was configured.
	int hb = s->heartbeat_ms;
	if (hb > 0 && h->heartbeat_ms > 0 && h->heartbeat_ms < (uint32_t)hb) {
		hb = (int)h->heartbeat_ms;
	}
	aai_conn_set_heartbeat(ss->conn, hb,
	                       s->dead_after_set ? s->dead_after_ms : 3 * hb);

	aai_wire_msg m;
	aai_wire_hello_server(&m, ss->conn_id, (uint32_t)s->max_msg,
	                      s->max_pending, (uint32_t)hb, s->wire_methods,
	                      s->nmethods);
	aai_mtx_lock(&ss->mtx);
	bool ok = ss->state == SS_HANDSHAKE;
	if (ok) {
		// The Hello goes out with our limit: a client that cannot take
		// the method table closes with AA_EMSGSIZE (protocol § 4).
		(void)aai_wire_send(ss->conn, &m, s->max_msg);
		ss->state = SS_READY;
		ss->connected = true;
	}
	aai_mtx_unlock(&ss->mtx);
	if (ok) {
		count(&s->st.clients);
		slog(s, AA_SEV_CONNECTED, ss->conn_id, NULL, 0, NULL);
	}
}

static void
on_goodbye(session *ss, const aai_wire_msg *m)
{
	aa_server *s = ss->s;
	aai_mtx_lock(&ss->mtx);
	if (ss->state == SS_HANDSHAKE || ss->state == SS_READY) {
		ss->state = SS_CLOSING; // the client leaves: send nothing
	}
	aai_mtx_unlock(&ss->mtx);
	cancel_all(ss, &s->st.orphaned);
	aai_conn_close(ss->conn);
}

static void
on_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	session *ss = arg;
	aa_server *s = ss->s;
	ENTER(s);
	uint64_t t0 = aa_clock_us();
	aai_mtx_lock(&ss->mtx);
	ss_state state = ss->state;
	aai_mtx_unlock(&ss->mtx);
	if (state == SS_CLOSING || state == SS_DOWN) {
		LEAVE(); // after a Goodbye either way: ignore
		return;
	}
	aai_wire_msg m;
	const char *why = "malformed frame";
	int rv = aai_wire_decode(&m, &why, &ss->arena, data, len, s->max_msg);
	if (rv != 0) {
		protocol_error(ss, rv == AA_EMSGSIZE ? AA_EMSGSIZE : AA_EPROTO,
		               why);
		LEAVE();
		return;
	}
	if (state == SS_HANDSHAKE) {
		if (m.kind == AAI_WIRE_HELLO) {
			on_hello(ss, &m.hello);
		} else if (m.kind == AAI_WIRE_GOODBYE) {
			on_goodbye(ss, &m);
		} else {
			protocol_error(ss, AA_EPROTO,
			               "first message is not a hello");
		}
		LEAVE();
		return;
	}
	switch (m.kind) {
	case AAI_WIRE_START:
		on_start(ss, &m, t0);
		break;
	case AAI_WIRE_CANCEL:
		on_cancel(ss, &m);
		break;
	case AAI_WIRE_HEARTBEAT:
		break; // the transport noted that the client is alive
	case AAI_WIRE_GOODBYE:
		on_goodbye(ss, &m);
		break;
	case AAI_WIRE_HELLO:
		protocol_error(ss, AA_EPROTO, "a second hello");
		break;
	case AAI_WIRE_COMPLETE:
		protocol_error(ss, AA_EPROTO, "a complete from a client");
		break;
	case AAI_WIRE_PROGRESS:
		protocol_error(ss, AA_EPROTO, "a progress from a client");
		break;
	default:
		protocol_error(ss, AA_EPROTO, "unexpected message kind");
		break;
	}
	LEAVE();
}

// on_oversize: a frame header claimed more than our maximum message size;
// the transport closes the connection right after, and the Goodbye sent
// here leaves before that, best effort (docs/protocol.md § 2).
static void
on_oversize(void *arg, aai_conn *c, size_t len)
{
	session *ss = arg;
	ENTER(ss->s);
	protocol_error(ss, AA_EMSGSIZE,
	               "frame larger than the maximum message size");
	LEAVE();
}

static void
on_down(void *arg, aai_conn *c, int err)
{
	session *ss = arg;
	aa_server *s = ss->s;
	ENTER(s);
	aai_mtx_lock(&ss->mtx);
	ss->state = SS_DOWN;
	bool was_connected = ss->connected;
	ss->connected = false;
	aai_mtx_unlock(&ss->mtx);
	disarm(ss, &ss->hs_timer, &ss->hs_armed);
	disarm(ss, &ss->linger_timer, &ss->linger_armed);
	if (was_connected) {
		atomic_fetch_sub(&s->st.clients, 1);
	}
	if (ss->inst != NULL) {
		// No Start of this connection can come any more.
		aai_mtx_lock(&s->mtx);
		ss->inst->conns--;
		ss->inst->left_us = aa_clock_us();
		aai_mtx_unlock(&s->mtx);
	}
	slog(s, AA_SEV_CLIENT_GONE, ss->conn_id, NULL, err, aa_strerror(err));
	cancel_all(ss, &s->st.orphaned);
	session_unref(ss); // the connection's reference
	LEAVE();
}

static void
on_accept(void *arg, aai_conn *c)
{
	aa_server *s = arg;
	ENTER(s);
	session *ss = aai_zalloc(sizeof(*ss));
	if (ss != NULL) {
		ss->arena_buf = aai_alloc(ARENA_BYTES);
		ss->buckets = aai_zalloc(OP_BUCKETS_MIN * sizeof(entry *));
		if (ss->arena_buf == NULL || ss->buckets == NULL) {
			aai_free(ss->arena_buf);
			aai_free(ss->buckets);
			aai_free(ss);
			ss = NULL;
		}
	}
	if (ss != NULL) {
		ss->s = s;
		ss->conn = c;
		ss->conn_id = aai_conn_id(c);
		ss->nbuckets = OP_BUCKETS_MIN;
		ss->refs = 2; // the connection's and the handshake timer's
		ss->state = SS_HANDSHAKE;
		ss->send_max = s->max_msg;
		aai_mtx_init(&ss->mtx);
		aai_wire_arena_init(&ss->arena, ss->arena_buf, ARENA_BYTES);
		aa_timer_init(&ss->hs_timer, on_handshake_timeout, ss);
	}
	aai_mtx_lock(&s->mtx);
	bool ok = ss != NULL && !s->closed;
	if (ok) {
		ss->next = s->sessions;
		if (s->sessions != NULL) {
			s->sessions->prev = ss;
		}
		s->sessions = ss;
		s->nsessions++;
		aai_live_inc(AA_LIVE_SERVER);
		// Armed under s->mtx: close cannot walk it in between.
		ss->hs_armed = aa_timer_start(&ss->hs_timer, s->tq,
		                              HANDSHAKE_TIMEOUT_MS) == 0;
		if (!ss->hs_armed) {
			ss->refs--;
		}
	}
	aai_mtx_unlock(&s->mtx);
	if (!ok) {
		if (ss != NULL) {
			aai_wire_arena_fini(&ss->arena);
			aai_mtx_fini(&ss->mtx);
			aai_free(ss->arena_buf);
			aai_free(ss->buckets);
			aai_free(ss);
		}
		aai_conn_free(c); // not started: freed at once
		LEAVE();
		return;
	}
	static const aai_conn_cbs cbs = {
	    .frame = on_frame,
	    .oversize = on_oversize,
	    .down = on_down,
	};
	aai_conn_start(c, &cbs, ss);
	LEAVE();
}

// ---- public API ----

int
aa_server_alloc(aa_server **sp, const aa_server_opts *o)
{
	aa_server_opts d = {0};
	if (sp == NULL) {
		return AA_EINVAL;
	}
	if (o == NULL) {
		o = &d;
	}
	size_t max_msg = o->max_msg_size ? o->max_msg_size : DEFAULT_MAX_MSG;
	if (max_msg < AAI_WIRE_MIN_MSG_SIZE || max_msg > 0x7fffffffu) {
		return AA_EINVAL;
	}
	aa_server *s = aai_zalloc(sizeof(*s));
	if (s == NULL) {
		return AA_ENOMEM;
	}
	s->max_msg = max_msg;
	s->max_pending = o->max_pending ? o->max_pending : DEFAULT_MAX_PENDING;
	s->heartbeat_ms = o->heartbeat_ms == 0  ? DEFAULT_HEARTBEAT_MS
	                  : o->heartbeat_ms < 0 ? 0
	                                        : o->heartbeat_ms;
	s->dead_after_ms = o->dead_after_ms == 0  ? 3 * s->heartbeat_ms
	                   : o->dead_after_ms < 0 ? 0
	                                          : o->dead_after_ms;
	s->dead_after_set = o->dead_after_ms != 0;
	s->reply_delay_ms = o->reply_delay_ms > 0 ? o->reply_delay_ms : 0;
	s->log = o->log;
	s->log_arg = o->log_arg;
	int rv = AA_ENOMEM;
	if ((o->tls_cert_file != NULL &&
	     (s->tls_cert = aai_strdup(o->tls_cert_file)) == NULL) ||
	    (o->tls_key_file != NULL &&
	     (s->tls_key = aai_strdup(o->tls_key_file)) == NULL) ||
	    (o->tls_ca_file != NULL &&
	     (s->tls_ca = aai_strdup(o->tls_ca_file)) == NULL)) {
		goto fail;
	}
	aai_wire_msg hb;
	aai_wire_heartbeat(&hb, 0);
	if ((rv = aai_wire_encode(&s->hb_len, s->hb_frame, sizeof(s->hb_frame),
	                          &hb, 0)) != 0) {
		goto fail;
	}
	if ((rv = pool_new(&s->pool)) != 0) {
		goto fail;
	}
	if ((rv = aa_timer_queue_alloc(&s->tq)) != 0) {
		goto fail;
	}
	s->assoc.executor = o->executor;
	s->assoc.allocator = &s->pool->view;
	aai_mtx_init(&s->mtx);
	aai_cv_init(&s->cv);
	atomic_init(&s->closed_flag, false);
	aai_live_inc(AA_LIVE_SERVER);
	*sp = s;
	return 0;
fail:
	if (s->pool != NULL) {
		pool_unref(s->pool);
	}
	aai_free(s->tls_cert);
	aai_free(s->tls_key);
	aai_free(s->tls_ca);
	aai_free(s);
	return rv;
}

static bool
name_ok(const char *n)
{
	size_t len = n != NULL ? strlen(n) : 0;
	if (len == 0 || len > AAI_WIRE_METHOD_MAX) {
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		uint8_t ch = (uint8_t)n[i];
		if (ch < 0x20 || ch == 0x7f) {
			return false;
		}
	}
	return true;
}

int
aa_server_register(aa_server *s, const aa_method_def *def)
{
	if (s == NULL || def == NULL || def->start == NULL ||
	    !name_ok(def->name) || (def->cancel_types & ~7u) != 0) {
		return AA_EINVAL;
	}
	int rv = 0;
	aai_mtx_lock(&s->mtx);
	if (s->closed) {
		rv = AA_ECLOSED;
	} else if (s->frozen) {
		rv = AA_ESTATE;
	} else if (s->nmethods >= AAI_WIRE_METHODS_MAX) {
		rv = AA_ELIMIT;
	}
	for (size_t i = 0; rv == 0 && i < s->nmethods; i++) {
		if (strcmp(s->methods[i].name, def->name) == 0) {
			rv = AA_EEXIST;
		}
	}
	if (rv == 0 && s->nmethods == s->cap_methods) {
		size_t cap = s->cap_methods ? s->cap_methods * 2 : 8;
		method *m = aai_alloc(cap * sizeof(*m));
		if (m == NULL) {
			rv = AA_ENOMEM;
		} else {
			if (s->nmethods > 0) {
				memcpy(m, s->methods,
				       s->nmethods * sizeof(*m));
			}
			aai_free(s->methods);
			s->methods = m;
			s->cap_methods = cap;
		}
	}
	if (rv == 0) {
		method *m = &s->methods[s->nmethods];
		if ((m->name = aai_strdup(def->name)) == NULL) {
			rv = AA_ENOMEM;
		} else {
			m->def = *def;
			m->def.name = m->name;
			s->nmethods++;
		}
	}
	aai_mtx_unlock(&s->mtx);
	return rv;
}

// freeze builds the method hash and the Hello's table. Expects s->mtx.
static int
freeze(aa_server *s)
{
	if (s->frozen) {
		return 0;
	}
	size_t n = 8;
	while (n < 2 * s->nmethods) {
		n *= 2;
	}
	s->mhash = aai_zalloc(n * sizeof(*s->mhash));
	s->wire_methods = aai_zalloc((s->nmethods ? s->nmethods : 1) *
	                             sizeof(*s->wire_methods));
	if (s->mhash == NULL || s->wire_methods == NULL) {
		aai_free(s->mhash);
		aai_free(s->wire_methods);
		s->mhash = NULL;
		s->wire_methods = NULL;
		return AA_ENOMEM;
	}
	s->mhash_size = n;
	for (size_t i = 0; i < s->nmethods; i++) {
		size_t k = fnv1a(s->methods[i].name) & (n - 1);
		while (s->mhash[k] != 0) {
			k = (k + 1) & (n - 1);
		}
		s->mhash[k] = (uint32_t)i + 1;
		s->wire_methods[i].name = s->methods[i].name;
		s->wire_methods[i].cancel_types =
		    s->methods[i].def.cancel_types;
	}
	s->frozen = true;
	return 0;
}

int
aa_server_listen(aa_server *s, const char *url)
{
	if (s == NULL || url == NULL) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&s->mtx);
	int rv = s->closed ? AA_ECLOSED : freeze(s);
	if (rv == 0 && s->nlisteners == s->cap_listeners) {
		size_t cap = s->cap_listeners ? s->cap_listeners * 2 : 4;
		aai_listener **l = aai_alloc(cap * sizeof(*l));
		if (l == NULL) {
			rv = AA_ENOMEM;
		} else {
			if (s->nlisteners > 0) {
				memcpy(l, s->listeners,
				       s->nlisteners * sizeof(*l));
			}
			aai_free(s->listeners);
			s->listeners = l;
			s->cap_listeners = cap;
		}
	}
	aai_mtx_unlock(&s->mtx);
	if (rv != 0) {
		return rv;
	}
	aai_tp_opts o = {
	    .max_frame = s->max_msg,
	    .heartbeat_ms = s->heartbeat_ms,
	    .heartbeat_frame = s->hb_frame,
	    .heartbeat_len = s->hb_len,
	    .silence_ms = s->dead_after_ms,
	    .tls_cert_file = s->tls_cert,
	    .tls_key_file = s->tls_key,
	    .tls_ca_file = s->tls_ca,
	    .tls_verify_peer = s->tls_ca != NULL,
	};
	aai_listener *l;
	if ((rv = aai_listen(&l, url, &o, on_accept, s)) != 0) {
		return rv;
	}
	aai_mtx_lock(&s->mtx);
	if (s->closed) {
		rv = AA_ECLOSED;
	} else {
		s->listeners[s->nlisteners++] = l;
		int port = aai_listener_port(l);
		if (port != 0) {
			s->port = port;
		}
	}
	aai_mtx_unlock(&s->mtx);
	if (rv != 0) {
		aai_listener_free(l);
	}
	return rv;
}

int
aa_server_port(aa_server *s)
{
	aai_mtx_lock(&s->mtx);
	int port = s->port;
	aai_mtx_unlock(&s->mtx);
	return port;
}

void
aa_server_stats_get(aa_server *s, aa_server_stats *st)
{
	counters *c = &s->st;
	*st = (aa_server_stats){
	    .clients = atomic_load(&c->clients),
	    .started = atomic_load(&c->started),
	    .rejected = atomic_load(&c->rejected),
	    .cancels_received = atomic_load(&c->cancels_received),
	    .cancels_ignored = atomic_load(&c->cancels_ignored),
	    .completed = atomic_load(&c->completed),
	    .canceled = atomic_load(&c->canceled),
	    .failed = atomic_load(&c->failed),
	    .wasted = atomic_load(&c->wasted),
	    .orphaned = atomic_load(&c->orphaned),
	    .replies_sent = atomic_load(&c->replies_sent),
	    .replies_dropped = atomic_load(&c->replies_dropped),
	    .progress_sent = atomic_load(&c->progress_sent),
	    .protocol_errors = atomic_load(&c->protocol_errors),
	    .pending = atomic_load(&c->pending),
	    .cancels_late = atomic_load(&c->cancels_late),
	};
}

const char *
aa_server_event_name(aa_server_event e)
{
	switch (e) {
	case AA_SEV_CONNECTED:
		return "connected";
	case AA_SEV_START:
		return "start";
	case AA_SEV_REJECTED:
		return "rejected";
	case AA_SEV_CANCEL_RECEIVED:
		return "cancel_received";
	case AA_SEV_COMPLETED:
		return "completed";
	case AA_SEV_CANCELED:
		return "canceled";
	case AA_SEV_FAILED:
		return "failed";
	case AA_SEV_COMPENSATED:
		return "compensated";
	case AA_SEV_REPLY_SENT:
		return "reply_sent";
	case AA_SEV_REPLY_DROPPED:
		return "reply_dropped";
	case AA_SEV_CLIENT_GONE:
		return "client_gone";
	case AA_SEV_PROTOCOL_ERROR:
		return "protocol_error";
	}
	return "unknown";
}

void
aa_server_close(aa_server *s)
{
	if (s == NULL) {
		return;
	}
	aai_mtx_lock(&s->mtx);
	if (s->closed) {
		aai_mtx_unlock(&s->mtx);
		return;
	}
	s->closed = true;
	atomic_store(&s->closed_flag, true);
	// Listeners are only added while open and freed by stop: stable.
	aai_listener **ls = s->listeners;
	size_t nl = s->nlisteners;
	// Each session says Goodbye in the same locked step that makes the
	// server closed: a Start path that sees closed_flag also sees the
	// session CLOSING, so no op of a closing server is ever answered
	// with its own Complete (it would say CANCELED); every one ends with
	// the Goodbye's AA_EUNAVAIL on the client, whatever the moment.
	session *walk = NULL;
	for (session *ss = s->sessions; ss != NULL; ss = ss->next) {
		aai_mtx_lock(&ss->mtx);
		if (ss->refs > 0) {
			(void)goodbye_locked(ss, AA_EUNAVAIL,
			                     "server shutting down");
			ss->refs++;
			ss->wnext = walk;
			walk = ss;
		}
		aai_mtx_unlock(&ss->mtx);
	}
	aai_mtx_unlock(&s->mtx);
	AAI_CHECKPOINT("server.closing", s);

	for (size_t i = 0; i < nl; i++) {
		aai_listener_close(ls[i]);
	}
	while (walk != NULL) {
		session *ss = walk;
		walk = ss->wnext;
		cancel_all(ss, NULL);
		session_unref(ss);
	}
}

int
aa_server_stop(aa_server *s)
{
	if (s == NULL) {
		return AA_EINVAL;
	}
	if (cb_owner == s) {
		return AA_EDEADLK;
	}
	aa_server_close(s);
	aai_mtx_lock(&s->mtx);
	aai_listener **ls = s->listeners;
	size_t nl = s->nlisteners;
	s->listeners = NULL;
	s->nlisteners = s->cap_listeners = 0;
	aai_mtx_unlock(&s->mtx);
	for (size_t i = 0; i < nl; i++) {
		aai_listener_free(ls[i]); // waits for a running accept
	}
	aai_free(ls);
	aai_mtx_lock(&s->mtx);
	while (s->nsessions > 0) {
		aai_cv_wait(&s->cv, &s->mtx);
	}
	aai_mtx_unlock(&s->mtx);
	return 0;
}

void
aa_server_free(aa_server *s)
{
	if (s == NULL) {
		return;
	}
	if (cb_owner == s) {
		aai_panic("aa_server_free called from a callback of the "
		          "server it frees");
	}
	(void)aa_server_stop(s);
	aa_timer_queue_free(s->tq); // waits for a reap still returning
	for (size_t i = 0; i < s->nmethods; i++) {
		aai_free(s->methods[i].name);
	}
	aai_free(s->methods);
	aai_free(s->mhash);
	aai_free(s->wire_methods);
	for (size_t i = 0; i < s->inbuckets; i++) {
		instance *x = s->ibuckets[i];
		while (x != NULL) {
			instance *next = x->next;
			aai_free(x);
			x = next;
		}
	}
	aai_free(s->ibuckets);
	aai_free(s->tls_cert);
	aai_free(s->tls_key);
	aai_free(s->tls_ca);
	pool_unref(s->pool); // the recycler lives on while ops hold blocks
	aai_cv_fini(&s->cv);
	aai_mtx_fini(&s->mtx);
	aai_free(s);
	aai_live_dec(AA_LIVE_SERVER);
}
