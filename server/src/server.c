// server.c: the server layer, the "fake client" (aa/server.h). It accepts
// clients, starts a real op (made by a registered method) per Start,
// forwards Cancel and Progress, and always sends the real op's Complete.
// This file holds the layer's overview and the server object (methods,
// listeners, the log, stats, close, stop, free); server_impl.h lists the
// other files, each with its own notes.
//
// Design notes.
//
// * Objects. The server (one mutex, s->mtx) owns the method table (frozen
//   at the first listen, read without a lock), the listeners, the list of
//   sessions, the instance map (dedup.c) and a timer queue (one thread:
//   deadlines, the handshake timeout, the goodbye linger, delayed replies
//   and the reaping of sessions). A session (session.c) is one client
//   connection (its own mutex, ss->mtx); it owns the map op id -> entry
//   (aai_idmap, O(1)). An entry (call.c) is one real op: the op, its
//   aa_call_info, its flags and its deadline timer. Entries come from the
//   server's pool (aai_pool, which outlives the server while real ops hold
//   blocks), like the real ops, so steady state allocates nothing.
//
// * Locks. Order: s->mtx, then ss->mtx, then the op's, the timer queue's
//   or the transport's (aai_conn_send_encode, aa_op_result and
//   aa_timer_start are called under ss->mtx; they call nothing back).
//   Nothing calls a method, a hook, the log function, aa_op_cancel,
//   aa_timer_cancel, or a transport close or free under one of our locks:
//   work is collected under the lock and done after. Every frame this
//   layer sends (Hello, Complete, Progress, Goodbye) is encoded and queued
//   under ss->mtx together with the state check, so no frame ever follows
//   our Goodbye. A thread inside one of the server's callbacks is marked
//   (AAI_CB_ENTER): stop from there is AA_EDEADLK, free aborts.
//
// * Drop past send_queue_max: the send that would pass it may come from
//   any thread under ss->mtx, so the session's last word is given to the
//   transport beforehand: Goodbye{ELIMIT} is encoded once here
//   (s->limit_frame) and the transport queues it itself at the drop,
//   behind the reply being written, and refuses every later send
//   (AA_ELIMIT: the Complete counts as dropped), so no frame follows that
//   Goodbye either. The session goes down (client_gone with AA_ELIMIT,
//   its real ops cancelled) when the transport's linger ends (transport.h).
//
// * Close vs Start: close sets s->closed and, in the same locked step
//   (s->mtx, then each ss->mtx), sends every session's Goodbye, then
//   walks the sessions cancelling their ops. A Start that checks (under
//   ss->mtx) before that is accepted and its op is cancelled, by close's
//   walk or, if the method was still running, by the Start path itself
//   right after the method returned; its Complete is not sent (the session
//   is CLOSING), so the client ends it with the Goodbye's AA_EUNAVAIL
//   whatever the moment. A Start that checks after finds the session
//   CLOSING and is ignored. The checkpoint "server.closing" sits right
//   after that locked step.
//
// * Stop waits for "no session left": a session is freed (on the timer
//   thread) only after its last entry, so that also means every real op
//   has ended and no callback of the server runs. Teardown on several
//   threads: a close counts itself in `closers` (stop waits for it before
//   freeing the listeners), a stop in `stoppers`; free waits for both to
//   reach zero before it destroys the mutex (checkpoints server.closing
//   and server.stopping).
#include <stdio.h>
#include <string.h>

#include "server_impl.h"

// slog_op reports an event about op op_id (0: about no op) to the log.
void
aai_srv_log_op(aa_server *s, aa_server_event ev, uint64_t conn_id,
               uint64_t op_id, const char *name, int err, int32_t app_code,
               const char *detail)
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

void
aai_srv_log(aa_server *s, aa_server_event ev, uint64_t conn_id, const entry *e,
            int err, const char *detail)
{
	aai_srv_log_op(s, ev, conn_id, e != NULL ? e->call.op_id : 0,
	               e != NULL ? e->call.method : NULL, err, 0, detail);
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
	s->send_pause =
	    o->send_queue_pause ? o->send_queue_pause : DEFAULT_SEND_PAUSE;
	s->send_max = o->send_queue_max ? o->send_queue_max : DEFAULT_SEND_MAX;
	atomic_init(&s->budget.used, 0);
	atomic_init(&s->budget.pauses, 0);
	s->budget.max = o->send_budget ? o->send_budget : DEFAULT_SEND_BUDGET;
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
	aai_wire_msg bye;
	aai_wire_goodbye(&bye, AA_ELIMIT,
	                 "send queue limit: the client did not read its "
	                 "replies");
	if ((rv = aai_wire_encode(&s->limit_len, s->limit_frame,
	                          sizeof(s->limit_frame), &bye, 0)) != 0) {
		goto fail;
	}
	if ((rv = aai_pool_new(&s->pool, NULL, NULL)) != 0) {
		goto fail;
	}
	if ((rv = aa_timer_queue_alloc(&s->tq)) != 0) {
		goto fail;
	}
	s->assoc.executor = o->executor;
	s->assoc.allocator = aai_pool_allocator(s->pool);
	aai_mtx_init(&s->mtx);
	aai_cv_init(&s->cv);
	atomic_init(&s->closed_flag, false);
	aai_live_inc(AA_LIVE_SERVER);
	*sp = s;
	return 0;
fail:
	if (s->pool != NULL) {
		aai_pool_release(s->pool);
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
static uint32_t
fnv1a(const char *p)
{
	uint32_t h = 2166136261u;
	for (; *p != '\0'; p++) {
		h = (h ^ (uint8_t)*p) * 16777619u;
	}
	return h;
}

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
		s->wire_methods[i].fingerprint =
		    s->methods[i].def.type_fingerprint;
	}
	s->frozen = true;
	return 0;
}

const method *
aai_srv_method_find(aa_server *s, const char *name)
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
	    .send_pause = s->send_pause,
	    .send_max = s->send_max,
	    .budget = &s->budget,
	    .limit_frame = s->limit_frame,
	    .limit_len = s->limit_len,
	};
	aai_listener *l;
	if ((rv = aai_listen(&l, url, &o, aai_session_accept, s)) != 0) {
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
	    .send_queued = atomic_load(&s->budget.used),
	    .reads_paused = atomic_load(&s->budget.pauses),
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
	s->closers++; // stop waits until this close is done with s
	// Listeners are only added while open, and freed by stop only after
	// every close finished: stable here.
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
			(void)aai_session_goodbye_locked(
			    ss, AA_EUNAVAIL, "server shutting down");
			ss->refs++;
			ss->wnext = walk;
			walk = ss;
		}
		aai_mtx_unlock(&ss->mtx);
	}
	// Published only now that every session is CLOSING: a Start path
	// that reads the flag (under its session's lock) and sees it set
	// finds its session CLOSING too, and sends nothing. Set before the
	// walk, it let a method that returned meanwhile see "closed" while
	// its session was still READY and answer Complete{CANCELED} (the
	// client then said ESRVCANCEL, not EUNAVAIL: seen under TSan).
	atomic_store(&s->closed_flag, true);
	aai_mtx_unlock(&s->mtx);
	AAI_CHECKPOINT("server.closing", s);

	for (size_t i = 0; i < nl; i++) {
		aai_listener_close(ls[i]);
	}
	while (walk != NULL) {
		session *ss = walk;
		walk = ss->wnext;
		aai_call_cancel_all(ss, NULL);
		aai_session_unref(ss);
	}
	aai_mtx_lock(&s->mtx);
	s->closers--;
	aai_cv_broadcast(&s->cv);
	aai_mtx_unlock(&s->mtx); // the last touch of s
}

// on_session_thread(_locked) says whether this thread is in the receive path
// of one of s's connections without being in one of s's callbacks: an inproc
// client callback that the server end's thread runs (transport_inproc.c,
// hand-over). That session's end needs this very thread to go down, so
// stop would never return.
// Expects s->mtx.
static bool
on_session_thread_locked(aa_server *s)
{
	bool on = false;
	for (session *ss = s->sessions; ss != NULL && !on; ss = ss->next) {
		on = aai_conn_on_rx_thread(ss->conn);
	}
	return on;
}

static bool
on_session_thread(aa_server *s)
{
	aai_mtx_lock(&s->mtx);
	bool on = on_session_thread_locked(s);
	aai_mtx_unlock(&s->mtx);
	return on;
}

int
aa_server_stop(aa_server *s)
{
	if (s == NULL) {
		return AA_EINVAL;
	}
	if (aai_cb_inside(AAI_CB_SERVER, s)) {
		return AA_EDEADLK;
	}
	// The check and the registration are one locked step, so that a
	// free that starts after it waits for this stop.
	aai_mtx_lock(&s->mtx);
	if (on_session_thread_locked(s)) {
		aai_mtx_unlock(&s->mtx);
		return AA_EDEADLK;
	}
	s->stoppers++; // free waits until this stop is done with s
	aai_mtx_unlock(&s->mtx);
	AAI_CHECKPOINT("server.stopping", s);
	aa_server_close(s);
	aai_mtx_lock(&s->mtx);
	// A close running on another thread may still use the listeners.
	while (s->closers > 0) {
		aai_cv_wait(&s->cv, &s->mtx);
	}
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
	s->stoppers--;
	aai_cv_broadcast(&s->cv);
	aai_mtx_unlock(&s->mtx); // the last touch of s
	return 0;
}

void
aa_server_free(aa_server *s)
{
	if (s == NULL) {
		return;
	}
	if (aai_cb_inside(AAI_CB_SERVER, s) || on_session_thread(s)) {
		aai_panic("aa_server_free called from a callback of the "
		          "server it frees");
	}
	(void)aa_server_stop(s);
	// A stop or close still running on another thread (begun before
	// this free, e.g. still freeing the listeners it took) finishes with
	// s first: its mutex is not destroyed under it.
	aai_mtx_lock(&s->mtx);
	while (s->stoppers > 0 || s->closers > 0) {
		aai_cv_wait(&s->cv, &s->mtx);
	}
	aai_mtx_unlock(&s->mtx);
	aa_timer_queue_free(s->tq); // waits for a reap still returning
	for (size_t i = 0; i < s->nmethods; i++) {
		aai_free(s->methods[i].name);
	}
	aai_free(s->methods);
	aai_free(s->mhash);
	aai_free(s->wire_methods);
	aai_instances_free(s);
	aai_free(s->tls_cert);
	aai_free(s->tls_key);
	aai_free(s->tls_ca);
	aai_pool_release(
	    s->pool); // the recycler lives on while ops hold blocks
	aai_cv_fini(&s->cv);
	aai_mtx_fini(&s->mtx);
	aai_free(s);
	aai_live_dec(AA_LIVE_SERVER);
}
