// client.c: the client layer (aa/client.h): the fake operation. This file
// holds the layer's overview and the client object (open, queries,
// cancel-all, close, stop, free, memory); client_impl.h lists the other
// files, each with its own notes.
//
// Design notes.
//
// Objects. An aa_client owns at most one connection (a link: the
// transport connection plus its decode arena, link.c) at a time, a map of
// its pending ops by wire id (aai_idmap, O(1)), a queue of ops whose Start
// is not sent yet (submit.c), a timer queue for deadlines, and a pool of op
// memory. Each call is an aa_op made with the immediate cancel policy; its
// provider memory is a `cop` (client op, cop.c) that records the wire id,
// the submit state and the timeline of a cancel.
//
// Memory. Ops may outlive their client (a caller keeps its reference), and
// their memory comes from the client's pool (aai_pool, layer.h): free
// releases everything but the pool and the client struct, and whoever
// drops the pool's last count (the free, or the last op block) frees
// those (client_shell_free).
//
// References to an op: the caller's (from aa_client_call) and the
// client's, held while the op is in the queue or the map (or being
// flushed), dropped by whoever takes it out of the last of them.
//
// Drop past send_queue_max (a server that does not read): as the server
// does it (server.c), the transport is given Goodbye{ELIMIT} at creation
// and queues it at the drop, behind the Start being written; calls whose
// Start is refused meanwhile end AA_ELIMIT, the others when the link goes
// down with AA_ELIMIT (link.c).
//
// Threads. Frames arrive on the link's receive thread, serialised; the
// user's handlers run there (inline) unless the op's assoc has an executor.
// Deadlines fire on the timer thread. Cancels come from any thread. No user
// callback and no transport close or free runs under the client's mutex.
// A thread inside one of c's callbacks is marked (AAI_CB_ENTER): stop from
// there is AA_EDEADLK, free is deferred to a thread of its own.
//
// Races and who wins: cancel vs submit: the mutex (QUEUED or not). Cancel
// vs Complete: the op's state; a Complete that finds the op cancelled is
// absorbed (counted as a late drop, recorded as the settlement). Deadline
// vs Complete: the op's state again. Loss vs everything: ops still in the
// map when the link goes down end in ERROR (absorbed if already final) and
// settle "unknown"; queued ones settle "never_started". Close vs call: the
// `closed` flag under the mutex. Teardown on several threads: a close
// counts itself in `closers` and pins its link; stop waits for closers
// (and the link, flushers, reconnects, owed cancels); stop counts itself
// in `stoppers`, and free waits for closers and stoppers to reach zero
// before it destroys the mutex (checkpoints client.closing and
// client.stopping). A call that begins after free began is the caller's
// use after free, as with any free.
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
#include <unistd.h>

#include "client_impl.h"

method *
aai_client_find_method(aa_client *c, const char *name)
{
	for (size_t i = 0; i < c->n_methods; i++) {
		if (strcmp(c->methods[i].name, name) == 0) {
			return &c->methods[i];
		}
	}
	return NULL;
}

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

bool
aai_client_forked(const aa_client *c)
{
	return atomic_load_explicit(&fork_count, memory_order_relaxed) !=
	       c->forks;
}

// client_shell_free frees the client struct, once the free and the last op
// block are gone (the pool's on_last).
static void
client_shell_free(void *arg)
{
	aai_free(arg);
	aai_live_dec(AA_LIVE_CLIENT);
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
	c->dead_after_set = o != NULL && o->dead_after_ms > 0;
	pthread_once(&fork_once, watch_forks);
	c->forks = atomic_load(&fork_count);
	c->instance_id = random_id();
	c->next_id = 1;
	c->url = aai_strdup(opts.url);
	c->opts.url = c->url;
	if (c->url == NULL || (rv = aa_timer_queue_alloc(&c->timers)) != 0 ||
	    (rv = aai_pool_new(&c->pool, client_shell_free, c)) != 0) {
		rv = c->url == NULL ? AA_ENOMEM : rv;
		aa_timer_queue_free(c->timers);
		aai_free(c->url);
		aai_cv_fini(&c->cv);
		aai_mtx_fini(&c->mtx);
		aai_free(c);
		return rv;
	}
	aai_wire_msg hb;
	size_t hb_len = 0;
	aai_wire_heartbeat(&hb, 0);
	aai_wire_encode(&hb_len, c->heartbeat, sizeof(c->heartbeat), &hb, 0);
	aai_wire_msg bye;
	size_t bye_len = 0;
	aai_wire_goodbye(&bye, AA_ELIMIT,
	                 "send queue limit: the server did not read its "
	                 "requests");
	int brv = aai_wire_encode(&bye_len, c->limit_frame,
	                          sizeof(c->limit_frame), &bye, 0);
	c->tp = (aai_tp_opts){
	    .max_frame = opts.max_msg_size,
	    .heartbeat_ms = opts.heartbeat_ms,
	    .heartbeat_frame = c->heartbeat,
	    .heartbeat_len = hb_len,
	    .silence_ms = opts.dead_after_ms,
	    .connect_timeout_ms = opts.connect_timeout_ms,
	    .send_max = opts.send_queue_max,
	    .budget = &c->sendq,
	    .limit_frame = brv == 0 ? c->limit_frame : NULL,
	    .limit_len = bye_len,
	    .tls_cert_file = opts.tls_cert_file,
	    .tls_key_file = opts.tls_key_file,
	    .tls_ca_file = opts.tls_ca_file,
	    .tls_server_name = opts.tls_server_name,
	    .tls_verify_peer = opts.tls_verify,
	};
	aai_live_inc(AA_LIVE_CLIENT);
	if ((rv = aai_link_connect(c)) != 0) {
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
	if (op == NULL || aai_op_cancel_fn(op) != aai_cop_cancel) {
		return AA_TIMELINE_NONE;
	}
	const cop *p = aa_op_extra((aa_op *)op);
	return (aa_timeline)atomic_load(&((cop *)p)->timeline);
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
	if (op == NULL || aai_op_cancel_fn(op) != aai_cop_cancel) {
		return 0;
	}
	return ((const cop *)aa_op_extra((aa_op *)op))->node.id;
}

uint64_t
aa_client_conn_id(aa_client *c)
{
	if (aai_client_forked(c)) {
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
	if (aai_client_forked(c)) {
		return AA_ESTATE;
	}
	aai_mtx_lock(&c->mtx);
	const method *m = aai_client_find_method(c, name);
	if (m != NULL && types != NULL) {
		*types = m->types;
	}
	aai_mtx_unlock(&c->mtx);
	return m != NULL ? 0 : AA_ENOENT;
}

int
aa_client_method_fingerprint(aa_client *c, const char *name, uint64_t *fp)
{
	if (aai_client_forked(c)) {
		return AA_ESTATE; // the lock may be held by a lost thread
	}
	aai_mtx_lock(&c->mtx);
	const method *m = aai_client_find_method(c, name);
	if (m != NULL && fp != NULL) {
		*fp = m->fingerprint;
	}
	aai_mtx_unlock(&c->mtx);
	return m != NULL ? 0 : AA_ENOENT;
}

void
aa_client_stats_get(aa_client *c, aa_client_stats *st)
{
	if (aai_client_forked(c)) {
		memset(st, 0, sizeof(*st));
		return;
	}
	aai_mtx_lock(&c->mtx);
	*st = c->st;
	st->pending = c->ops.count;
	st->send_queued = atomic_load(&c->sendq.used);
	aai_mtx_unlock(&c->mtx);
}

// ---- Cancel-all, close, stop, free ----

typedef struct collect_arg {
	aa_op **ops;
	size_t *n;
} collect_arg;

// collect_op takes a reference to each pending op (for cancel-all).
static bool
collect_op(aai_idmap_node *node, void *arg)
{
	collect_arg *ca = arg;
	cop *p = AAI_CONTAINER(node, cop, node);
	aa_op_ref(p->op);
	ca->ops[(*ca->n)++] = p->op;
	return false;
}

int
aa_client_cancel_all(aa_client *c, aa_cancel_type type)
{
	aa_op **ops;
	size_t n = 0, cap;
	int cancelled = 0;

	if (aai_client_forked(c)) {
		return 0;
	}
	aai_mtx_lock(&c->mtx);
	cap = c->ops.count;
	ops = cap > 0 ? aai_alloc(cap * sizeof(*ops)) : NULL;
	if (cap > 0 && ops == NULL) {
		aai_mtx_unlock(&c->mtx);
		return 0;
	}
	collect_arg ca = {ops, &n};
	aai_idmap_walk(&c->ops, collect_op, &ca);
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
	if (aai_client_forked(c)) {
		return;
	}
	aai_mtx_lock(&c->mtx);
	if (c->closed) {
		aai_mtx_unlock(&c->mtx);
		return;
	}
	c->closed = true;
	c->closers++; // stop waits until this close is done with c
	aai_mtx_unlock(&c->mtx);

	// Every pending op ends CANCELED. The server hears one Goodbye for
	// all of them, and cancels every real op of a client that leaves.
	// Their handlers run inline, here: mark this thread as inside a
	// callback of c, so that a handler calling stop or free is detected
	// (AA_EDEADLK, deferred free) instead of waiting for this close.
	AAI_CB_ENTER(AAI_CB_CLIENT, c);
	aa_client_cancel_all(c, AA_CANCEL_TERMINAL);
	AAI_CB_LEAVE(AAI_CB_CLIENT);

	aai_mtx_lock(&c->mtx);
	clink *l = c->link;
	if (l != NULL) {
		aai_wire_msg bye;
		aai_wire_goodbye(&bye, AA_ECLOSED, "client closed");
		if (aai_wire_send(l->conn, &bye, 0) == 0) {
			c->st.sent_other++;
		}
		l->pins++; // it may go down meanwhile: not freed while pinned
	}
	aai_mtx_unlock(&c->mtx);
	if (l != NULL) {
		AAI_CHECKPOINT("client.closing", c);
		aai_conn_close(l->conn); // outside the lock: it never blocks
	}
	aai_mtx_lock(&c->mtx);
	if (l != NULL) {
		l->pins--;
	}
	c->closers--;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx); // the last touch of c
}

// on_link_thread(_locked) says whether this thread is in the receive path of
// c's link without being in one of c's callbacks: an inproc server callback
// that the client end's thread runs (transport_inproc.c, hand-over). The
// link's down needs that very thread, so stop would never return.
// Expects c->mtx.
static bool
on_link_thread_locked(aa_client *c)
{
	return c->link != NULL && aai_conn_on_rx_thread(c->link->conn);
}

static bool
on_link_thread(aa_client *c)
{
	aai_mtx_lock(&c->mtx);
	bool on = on_link_thread_locked(c);
	aai_mtx_unlock(&c->mtx);
	return on;
}

int
aa_client_stop(aa_client *c)
{
	if (aai_client_forked(c)) {
		return AA_ESTATE;
	}
	if (aai_cb_inside(AAI_CB_CLIENT, c) || aai_cop_cancelling(c)) {
		return AA_EDEADLK;
	}
	// The check and the registration are one locked step, so that a
	// free that starts after it waits for this stop.
	aai_mtx_lock(&c->mtx);
	if (on_link_thread_locked(c)) {
		aai_mtx_unlock(&c->mtx);
		return AA_EDEADLK;
	}
	c->stoppers++; // free waits until this stop is done with c
	aai_mtx_unlock(&c->mtx);
	AAI_CHECKPOINT("client.stopping", c);
	aa_client_close(c);
	aai_mtx_lock(&c->mtx);
	// The link's down callback runs on its own thread; flushers finish
	// their loop; a close running on another thread finishes with c.
	while (c->link != NULL || c->live_links > 0 || c->flushing ||
	       c->closers > 0 || c->reconnectors > 0 || c->cancels_owed > 0) {
		aai_cv_wait(&c->cv, &c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
	aai_link_free_dead(c);
	aai_mtx_lock(&c->mtx);
	c->stoppers--;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx); // the last touch of c
	return 0;
}

static void
client_free_now(aa_client *c)
{
	aa_client_stop(c);
	// A stop or close still running on another thread (begun before
	// this free) finishes with c first: its mutex is not destroyed under
	// it.
	aai_mtx_lock(&c->mtx);
	while (c->stoppers > 0 || c->closers > 0) {
		aai_cv_wait(&c->cv, &c->mtx);
	}
	aai_mtx_unlock(&c->mtx);
	aa_timer_queue_free(c->timers);
	for (size_t i = 0; i < c->n_methods; i++) {
		aai_free(c->methods[i].name);
	}
	aai_free(c->methods);
	aai_idmap_fini(&c->ops);
	aai_free(c->url);
	aai_cv_fini(&c->cv);
	aai_mtx_fini(&c->mtx);
	aai_pool_release(c->pool); // ops still alive keep the shell
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
	if (c == NULL || aai_client_forked(c)) {
		return; // a forked child leaves its copy alone
	}
	if (!aai_cb_inside(AAI_CB_CLIENT, c) && !aai_cop_cancelling(c) &&
	    !on_link_thread(c)) {
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
