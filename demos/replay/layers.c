// layers.c: what the layers meet in a run: the client's handlers (user
// code), the checkpoint recorder and its holds, the tool's server (its
// methods, their real ops, its log), and the actor threads that run the
// scenario's calls into the library. The driver (run.c) orders them.
//
// Design notes.
//
// Rows. Each callback records its row under R.mtx at the moment it runs,
// so the table is the order things happened. A checkpoint resolves its
// subject to an op name: a client op by pointer (bound at its submit
// checkpoint, or when the call returns), a Start by its wire id, a real
// op by pointer (recorded by the method that made it).
//
// Holds. The thread that reaches an armed hold marks it reached, wakes the
// driver and waits on R.cv until it is released or the run ends; an actor
// thread held so marks itself held, which lets the driver go on.
//
// Races and who wins. A handler set late (the op went final first) runs
// inline in set_handlers, on the thread that sets it. The server's real
// ops may finish on the receive thread (echo, or a finish before the
// server set its handler) or on the scenario's actor; with a held
// server.before_reply they finish on the server's pool (run.c,
// needs_pool).
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"

static _Thread_local opent *calling; // the op a call on this thread makes
static _Thread_local actor *self_actor;

// ---- Client-side handlers (user code) ----

static void
on_handler(aa_op *op, void *arg)
{
	opent *e = arg;
	aa_state s = aa_op_status(op);
	pthread_mutex_lock(&R.mtx);
	e->handler_saw = s;
	int at = ev_add(COL_CLIENT, "handler(%s) runs: %s", e->name,
	                aa_op_state_name(s));
	bool inside = e->cancel_in_handler;
	pthread_mutex_unlock(&R.mtx);
	if (inside) {
		int rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
		char b[16];
		pthread_mutex_lock(&R.mtx);
		e->inside_rv = rv;
		ev_append(at, "; aa_op_cancel inside it → %s",
		          err_name(rv, b, sizeof(b)));
		pthread_mutex_unlock(&R.mtx);
	}
	// Counted when it is done, so that "wait handler" sees all of it.
	pthread_mutex_lock(&R.mtx);
	e->handler_runs++;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
}

static void
on_settle(aa_op *op, void *arg)
{
	opent *e = arg;
	aa_settlement s = aa_op_settlement(op);
	aa_timeline t = aa_client_timeline(op);
	pthread_mutex_lock(&R.mtx);
	e->settles++;
	// A cancelled op's timeline is final once it settled (in-flight may
	// have been refined to already-complete).
	if (t != AA_TIMELINE_NONE) {
		ev_add(COL_CLIENT, "settled(%s): %s; timeline %s", e->name,
		       aa_settlement_name(s), aa_timeline_name(t));
	} else {
		ev_add(COL_CLIENT, "settled(%s): %s", e->name,
		       aa_settlement_name(s));
	}
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
}

static void
on_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	opent *e = arg;
	pthread_mutex_lock(&R.mtx);
	e->progress++;
	ev_add(COL_CLIENT, "progress(%s): \"%.*s\"", e->name, (int)len,
	       (const char *)data);
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
}

// set_handlers gives e's op its handlers, once (R.mtx not held).
static void
set_handlers(opent *e)
{
	pthread_mutex_lock(&R.mtx);
	bool first = !e->handlers_set;
	e->handlers_set = true;
	pthread_mutex_unlock(&R.mtx);
	if (first) {
		aa_op_set_progress_handler(e->op, on_progress, e);
		aa_op_set_settle_handler(e->op, on_settle, e);
		aa_op_set_handler(e->op, on_handler, e);
	}
}

// ---- Checkpoints ----

void
on_checkpoint(void *arg, const char *name, void *subject)
{
	(void)arg;
	opent *bind = NULL;
	// Only the five layer checkpoints are recorded. Others may fire
	// with a library lock held, which the driver may be waiting for
	// while it holds R.mtx: they must not take it.
	if (strcmp(name, "client.before_submit") != 0 &&
	    strcmp(name, "client.before_deliver") != 0 &&
	    strcmp(name, "client.before_fail") != 0 &&
	    strcmp(name, "server.before_start") != 0 &&
	    strcmp(name, "server.before_reply") != 0) {
		return;
	}
	pthread_mutex_lock(&R.mtx);
	if (!R.recording) {
		pthread_mutex_unlock(&R.mtx);
		return;
	}
	opent *e = NULL;
	int col;
	const char *what;
	if (strcmp(name, "client.before_submit") == 0) {
		e = op_by_ptr(subject, false);
		if (e == NULL && calling != NULL && calling->op == NULL) {
			// Inside aa_client_call: the op is the one this thread
			// is making (the call has not returned it yet).
			e = calling;
			e->op = subject;
			e->wire_id = aa_client_op_id(subject);
			bind = e;
			if (R.server_pid != 0) {
				remote_name(e);
			}
		}
		col = COL_CLAYER;
		what = "about to send Start(%s)";
	} else if (strcmp(name, "client.before_deliver") == 0) {
		e = op_by_ptr(subject, false);
		col = COL_CLAYER;
		what = "Complete(%s) arrived, not handed over yet";
	} else if (strcmp(name, "client.before_fail") == 0) {
		e = op_by_ptr(subject, false);
		col = COL_CLAYER;
		what = "no answer will come for %s: about to fail it";
	} else if (strcmp(name, "server.before_start") == 0) {
		e = op_by_wire(((const aa_call_info *)subject)->op_id);
		col = COL_SLAYER;
		what = "Start(%s) arrived";
	} else if (strcmp(name, "server.before_reply") == 0) {
		e = op_by_ptr(subject, true);
		col = COL_SLAYER;
		what = "real op(%s) final: Complete about to be sent";
	} else {
		pthread_mutex_unlock(&R.mtx); // a checkpoint added later
		return;
	}
	hold *h = NULL;
	for (int i = 0; i < R.n_holds; i++) {
		hold *c = &R.holds[i];
		if (c->armed && strcmp(c->cp, name) == 0 &&
		    (c->op[0] == '\0' || (e && strcmp(c->op, e->name) == 0))) {
			h = c;
			break;
		}
	}
	char text[RP_TEXT];
	snprintf(text, sizeof(text), what, nm(e));
	if (h == NULL) {
		ev_add(col, "%s", text);
	} else {
		ev_add(col, "%s — held at %s", text, name);
		h->armed = false;
		h->reached = true;
		if (R.child) {
			remote_event("REACHED %s %s\n", name,
			             h->op[0] ? h->op : "-");
		}
		if (self_actor != NULL) {
			self_actor->held = true;
		}
		pthread_cond_broadcast(&R.cv);
		// The handlers are set before waiting, so that a cancel the
		// scenario makes meanwhile runs them.
		if (bind != NULL) {
			pthread_mutex_unlock(&R.mtx);
			set_handlers(bind);
			pthread_mutex_lock(&R.mtx);
		}
		while (!h->released && !R.aborting) {
			pthread_cond_wait(&R.cv, &R.mtx);
		}
		if (self_actor != NULL) {
			self_actor->held = false;
		}
		pthread_mutex_unlock(&R.mtx);
		return;
	}
	pthread_mutex_unlock(&R.mtx);
	if (bind != NULL) {
		set_handlers(bind);
	}
}

// ---- The server's methods and log ----

// server_log_event records ev in e's server log. The log is kept to the
// end (the invariants read it after the server stopped). In the server's
// process it goes to the tool's.
void
server_log_event(aa_server_event ev, opent *e)
{
	const char *name = aa_server_event_name(ev);
	size_t len = strlen(e->slog);
	snprintf(e->slog + len, sizeof(e->slog) - len, "%s%s", len ? "," : "",
	         name);
	e->slog_mask |= 1u << ev;
	if (R.child) {
		remote_event("LOG %s %s\n", name, e->name);
	}
	pthread_cond_broadcast(&R.cv);
}

static void
srv_log(void *arg, const aa_server_log_rec *rec)
{
	(void)arg;
	if (rec->event == AA_SEV_CONNECTED ||
	    rec->event == AA_SEV_CLIENT_GONE) {
		return; // the run's frame, not its story
	}
	pthread_mutex_lock(&R.mtx);
	opent *e = rec->op_id != 0 ? op_by_wire(rec->op_id) : NULL;
	const char *ev = aa_server_event_name(rec->event);
	char b[16];
	if (rec->error != 0) {
		ev_add(COL_SLAYER, "log %s(%s) %s", ev, nm(e),
		       err_name(rec->error, b, sizeof(b)));
	} else {
		ev_add(COL_SLAYER, "log %s(%s)", ev, nm(e));
	}
	// After the row: in the server's process both go to the tool, and
	// a step waiting for the event must find its row recorded.
	if (e != NULL) {
		server_log_event(rec->event, e);
	}
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
}

static int
m_echo(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = len};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	memcpy(aa_op_extra(*opp), payload, len);
	pthread_mutex_lock(&R.mtx);
	opent *e = op_by_wire(call->op_id);
	if (e != NULL) {
		e->real = *opp;
		aa_op_ref(*opp);
	}
	ev_add(COL_SERVER, "echo(%s) runs and completes", nm(e));
	pthread_mutex_unlock(&R.mtx);
	aa_op_complete(*opp, aa_op_extra(*opp), len, NULL);
	return 0;
}

static int
work_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	pthread_mutex_lock(&R.mtx);
	opent *e = op_by_ptr(op, true);
	bool ignore = e != NULL && e->ignore_cancel;
	ev_add(COL_SERVER, "work(%s) asked to cancel (%s): %s", nm(e),
	       ctype_name(type), ignore ? "ignores it" : "stops");
	pthread_mutex_unlock(&R.mtx);
	if (!ignore) {
		aa_op_canceled(op);
	}
	return 0;
}

// "work": a real op that runs until the scenario completes, fails or
// cancels it (or until the server stops).
static int
m_work(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = work_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	pthread_mutex_lock(&R.mtx);
	opent *e = op_by_wire(call->op_id);
	if (e != NULL) {
		e->real = *opp;
		aa_op_ref(*opp);
	}
	ev_add(COL_SERVER, "work(%s) starts", nm(e));
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
	return 0;
}

// A compensation hook: the server produced a result the client will not
// use (it had cancelled).
static void
work_compensate(void *arg, const aa_call_info *call, aa_op *op)
{
	pthread_mutex_lock(&R.mtx);
	ev_add(COL_SERVER, "compensation hook(%s): undo the result",
	       nm(op_by_ptr(op, true)));
	pthread_mutex_unlock(&R.mtx);
}

// srv_fail finishes a real op with an application's failure code (its
// own error space: the client reads AA_EAPP and the code apart).
static int
srv_fail(aa_op *real, int code, const char *msg)
{
	return aa_op_fail_app(real, code, msg[0] ? msg : NULL);
}

// ---- Actors ----

static void
free_payload(void *p)
{
	free(p);
}

static void
do_call(const rp_step *st)
{
	pthread_mutex_lock(&R.mtx);
	opent *e = op_get(st->op);
	if (e == NULL || e->op != NULL) {
		setup_error(st, "op '%s' exists already", st->op);
		pthread_mutex_unlock(&R.mtx);
		return;
	}
	e->cancel_in_handler = st->cancel_in_handler;
	aa_assoc as = {0};
	if (st->parent[0] != '\0') {
		for (int i = 0; i < R.n_sigs; i++) {
			if (strcmp(R.sigs[i].name, st->parent) == 0) {
				as.slot = aa_cancel_signal_slot(R.sigs[i].sig);
			}
		}
		if (as.slot == NULL) {
			setup_error(st, "no signal '%s'", st->parent);
			pthread_mutex_unlock(&R.mtx);
			return;
		}
	}
	int at = ev_add(COL_CLIENT, "aa_client_call(%s: %s \"%s\"%s)", e->name,
	                st->what, st->data, st->num ? ", deadline" : "");
	pthread_mutex_unlock(&R.mtx);

	aa_call_opts co = {.deadline_ms = (uint32_t)st->num};
	aa_op *op = NULL;
	calling = e;
	int rv =
	    aa_client_call(&op, R.cli, st->what, st->data, strlen(st->data),
	                   &co, as.slot != NULL ? &as : NULL);
	calling = NULL;
	char b[16];
	pthread_mutex_lock(&R.mtx);
	e->call_rv = rv;
	if (rv != 0) {
		e->op = NULL;
		ev_append(at, " → %s", err_name(rv, b, sizeof(b)));
	} else {
		e->op = op;
		if (e->wire_id == 0) {
			// Not submitted yet (corked): its id is known already.
			e->wire_id = aa_client_op_id(op);
			if (R.server_pid != 0) {
				remote_name(e);
			}
		}
	}
	pthread_mutex_unlock(&R.mtx);
	if (rv == 0) {
		set_handlers(e);
	}
}

opent *
need_op(const rp_step *st, bool real)
{
	opent *e = op_find(st->op);
	if (e == NULL || (e->op == NULL && !R.child)) {
		setup_error(st, "no op '%s' (no call made it)", st->op);
		return NULL;
	}
	if (real && e->real == NULL) {
		setup_error(st, "op '%s' has no real op on the server (yet)",
		            st->op);
		return NULL;
	}
	return e;
}

static void
do_cancel(const rp_step *st)
{
	pthread_mutex_lock(&R.mtx);
	opent *e = need_op(st, false);
	if (e == NULL) {
		pthread_mutex_unlock(&R.mtx);
		return;
	}
	int at = ev_add(COL_CLIENT, "aa_op_cancel(%s, %s)", e->name,
	                ctype_name(st->ctype));
	pthread_mutex_unlock(&R.mtx);
	// Whether a Cancel left is read from the client's own counter (it
	// is written before aa_op_cancel returns): an in-flight op whose
	// connection is gone sends none.
	aa_client_stats s0, s1;
	aa_client_stats_get(R.cli, &s0);
	int rv = aa_op_cancel(e->op, st->ctype);
	aa_client_stats_get(R.cli, &s1);
	aa_timeline tl = aa_client_timeline(e->op);
	aa_state now = aa_op_status(e->op);
	bool sent = s1.sent_cancel > s0.sent_cancel;
	char b[16];
	pthread_mutex_lock(&R.mtx);
	e->cancel_rv = rv;
	e->cancelled_ok |= rv == 0;
	ev_append(at, " → %s", err_name(rv, b, sizeof(b)));
	if (rv == 0 && now != AA_CANCELED) {
		// Observed, not assumed: a cancel that returned 0 must have
		// made the op CANCELED (the invariants say so too).
		ev_insert(at + 1, COL_CLAYER,
		          "cancel accepted (%s), yet the op "
		          "is %s",
		          aa_timeline_name(tl), aa_op_state_name(now));
	} else if (rv == 0) {
		ev_insert(at + 1, COL_CLAYER, "CANCELED at once (%s)%s",
		          aa_timeline_name(tl),
		          sent                          ? "; Cancel → wire"
		          : tl == AA_TIMELINE_IN_FLIGHT ? "; no Cancel sent"
		                                        : "");
	}
	pthread_mutex_unlock(&R.mtx);
}

static void
do_server(const rp_step *st)
{
	pthread_mutex_lock(&R.mtx);
	opent *e = need_op(st, true);
	if (e == NULL) {
		pthread_mutex_unlock(&R.mtx);
		return;
	}
	aa_op *real = e->real;
	int at;
	if (st->kind == K_SRV_COMPLETE) {
		at = ev_add(COL_SERVER, "work(%s) completes \"%s\"", e->name,
		            st->data);
	} else if (st->kind == K_SRV_FAIL) {
		at = ev_add(COL_SERVER, "work(%s) fails with code %d", e->name,
		            st->num);
	} else {
		at = ev_add(COL_SERVER, "work(%s) reports progress \"%s\"",
		            e->name, st->data);
	}
	pthread_mutex_unlock(&R.mtx);
	int rv;
	size_t len = strlen(st->data);
	if (st->kind == K_SRV_COMPLETE) {
		char *copy = malloc(len + 1);
		memcpy(copy, st->data, len + 1);
		rv = aa_op_complete(real, copy, len, free_payload);
	} else if (st->kind == K_SRV_FAIL) {
		rv = srv_fail(real, st->num, st->data);
	} else {
		rv = aa_op_progress(real, st->data, len);
	}
	if (rv != 0) {
		char b[16];
		pthread_mutex_lock(&R.mtx);
		ev_append(at, " → %s", err_name(rv, b, sizeof(b)));
		pthread_mutex_unlock(&R.mtx);
	}
}

aa_cancel_signal *
find_sig(const char *name)
{
	for (int i = 0; i < R.n_sigs; i++) {
		if (strcmp(R.sigs[i].name, name) == 0) {
			return R.sigs[i].sig;
		}
	}
	return NULL;
}

static void
run_action(const rp_step *st)
{
	switch (st->kind) {
	case K_CALL:
		do_call(st);
		break;
	case K_CANCEL:
		do_cancel(st);
		break;
	case K_CANCEL_ALL: {
		pthread_mutex_lock(&R.mtx);
		int at = ev_add(COL_CLIENT, "aa_client_cancel_all(%s)",
		                ctype_name(st->ctype));
		pthread_mutex_unlock(&R.mtx);
		int n = aa_client_cancel_all(R.cli, st->ctype);
		pthread_mutex_lock(&R.mtx);
		ev_append(at, " → %d", n);
		pthread_mutex_unlock(&R.mtx);
		break;
	}
	case K_UNCORK:
		pthread_mutex_lock(&R.mtx);
		ev_add(COL_CLIENT, "aa_client_uncork()");
		pthread_mutex_unlock(&R.mtx);
		aa_client_uncork(R.cli);
		break;
	case K_EMIT: {
		pthread_mutex_lock(&R.mtx);
		aa_cancel_signal *sig = find_sig(st->op);
		if (sig == NULL) {
			setup_error(st, "no signal '%s'", st->op);
		} else {
			ev_add(COL_CLIENT, "parent signal %s emits (%s)",
			       st->op, ctype_name(st->ctype));
		}
		pthread_mutex_unlock(&R.mtx);
		if (sig != NULL) {
			aa_cancel_signal_emit(sig, st->ctype);
		}
		break;
	}
	case K_SRV_COMPLETE:
	case K_SRV_FAIL:
	case K_SRV_PROGRESS:
		do_server(st);
		break;
	case K_SRV_STOP:
		pthread_mutex_lock(&R.mtx);
		ev_add(COL_SERVER, "the server stops (aa_server_close)");
		pthread_mutex_unlock(&R.mtx);
		aa_server_close(R.srv);
		break;
	default:
		break;
	}
}

void *
actor_main(void *arg)
{
	actor *a = arg;
	self_actor = a;
	pthread_mutex_lock(&R.mtx);
	for (;;) {
		while (!a->busy || a->st == NULL) {
			pthread_cond_wait(&R.cv, &R.mtx);
		}
		const rp_step *st = a->st;
		a->st = NULL;
		pthread_mutex_unlock(&R.mtx);
		run_action(st);
		pthread_mutex_lock(&R.mtx);
		a->busy = false;
		pthread_cond_broadcast(&R.cv);
	}
	return NULL; // never: actors live as long as the process
}

// needs_pool: when the scenario holds server.before_reply, the real ops'
// handlers (where it fires) run on a pool, never on the connection's
// receive thread: a hold there must not stop the server from reading the
// client's Cancel, whichever thread finished the op (the method's, or the
// scenario's). Otherwise they run inline, as in production.
bool
needs_pool(const rp_scenario *sc)
{
	for (int i = 0; i < sc->n_steps; i++) {
		if (sc->steps[i].kind == K_HOLD &&
		    strcmp(sc->steps[i].what, "server.before_reply") == 0) {
			return true;
		}
	}
	return false;
}

// server_up starts the tool's server, listening on url.
int
server_up(const char *url, bool pool)
{
	if (pool && aa_pool_alloc(&R.pool, 4) != 0) {
		return -1;
	}
	aa_server_opts so = {.log = srv_log, .executor = R.pool};
	if (aa_server_alloc(&R.srv, &so) != 0) {
		return -1;
	}
	aa_method_def defs[] = {
	    {.name = "echo", .start = m_echo, .cancel_types = AA_CANCEL_ALL},
	    {.name = "work",
	     .start = m_work,
	     .compensate = work_compensate,
	     .cancel_types = AA_CANCEL_ALL},
	};
	for (size_t i = 0; i < 2; i++) {
		if (aa_server_register(R.srv, &defs[i]) != 0) {
			return -1;
		}
	}
	return aa_server_listen(R.srv, url) == 0 ? 0 : -1;
}

// server_down closes the server, ends the real ops the scenario left
// running (or whose cancel they ignored), so that it can stop, and frees
// it.
void
server_down(void)
{
	if (R.srv != NULL) {
		aa_server_close(R.srv);
		// A method may still run on the server's receive thread (a
		// Start in flight): read the table under the lock.
		aa_op *left[MAX_OPS];
		int n_left = 0;
		pthread_mutex_lock(&R.mtx);
		for (int i = 0; i < R.n_ops; i++) {
			if (R.ops[i].real != NULL) {
				aa_op_ref(R.ops[i].real);
				left[n_left++] = R.ops[i].real;
			}
		}
		pthread_mutex_unlock(&R.mtx);
		for (int i = 0; i < n_left; i++) {
			if (aa_op_status(left[i]) == AA_STARTED) {
				aa_op_canceled(left[i]);
			}
			aa_op_unref(left[i]);
		}
		aa_server_free(R.srv);
	}
	if (R.pool != NULL) {
		aa_executor_free(R.pool); // waits for its threads
	}
}
