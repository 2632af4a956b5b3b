// run.c: one run of a scenario against the real client and server layers.
//
// Design notes.
//
// Threads. The driver (the caller of rp_run) executes the steps in order.
// Steps that call into the library where a layer may be held (call,
// cancel, cancel-all, uncork, emit, and the server's complete, fail,
// progress and stop) run on an actor thread from a small pool; the driver
// hands a step to an idle actor and waits until the step returned or its
// actor is held at a checkpoint, so that "hold client.before_submit" then
// "call a ..." leaves the call held while the scenario goes on. The
// layers' own threads (the client's and the server's receive threads, the
// timer thread) run as they do in production; they are ordered only by
// holds and by wait steps. No step ever sleeps: each waits on the run's
// condition variable for an observed event, up to the scenario's timeout,
// which fails the run naming the step.
//
// Lock. One mutex (R.mtx) guards everything the run records: the op table,
// the holds, the actors and the events. It is never held across a call
// into the library except the pure getters (op id, status); handlers,
// checkpoints and the server's log take it for a short record.
//
// Holds. "hold CP [OP]" arms a one-shot hold. The thread that reaches CP
// (for OP, or any op) records the event, marks the hold reached and waits
// on the condition variable until "release CP [OP]" (which first waits
// until the hold was reached) or the end of the run. Checkpoints that fire
// with a library lock held are refused by the parser (docs/replay.md).
//
// Races that the tool itself has, and who wins: a checkpoint versus the
// end of the run: `recording` is cleared under the mutex before teardown,
// and every hold is released then, so a late checkpoint records nothing
// and never waits. An op's handlers are set by the thread that learns of
// the op first (its submit checkpoint, or the call's return), once.
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "replay.h"

#include "run.h"

struct run_state R;

static _Thread_local opent *calling; // the op a call on this thread makes
static _Thread_local actor *self_actor;

// ---- Recording (R.mtx held) ----

static int
ev_addv(int at, int col, const char *fmt, va_list ap)
{
	rp_result *r = R.res;
	if (R.child) {
		// The server's process: its rows go to the tool's.
		char text[RP_TEXT];
		vsnprintf(text, sizeof(text), fmt, ap);
		remote_row(col, text);
		return -1;
	}
	if (rp_grow((void **)&r->events, &r->cap_events, r->n_events,
	            sizeof(rp_event)) != 0) {
		return -1;
	}
	if (at < 0 || at > r->n_events) {
		at = r->n_events;
	}
	memmove(&r->events[at + 1], &r->events[at],
	        (size_t)(r->n_events - at) * sizeof(rp_event));
	r->n_events++;
	r->events[at].col = col;
	vsnprintf(r->events[at].text, RP_TEXT, fmt, ap);
	return at;
}

int
ev_add(int col, const char *fmt, ...)
{
	if (!R.recording) {
		return -1;
	}
	va_list ap;
	va_start(ap, fmt);
	int at = ev_addv(-1, col, fmt, ap);
	va_end(ap);
	return at;
}

static void
ev_insert(int at, int col, const char *fmt, ...)
{
	if (!R.recording || at < 0) {
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	ev_addv(at, col, fmt, ap);
	va_end(ap);
}

static void
ev_append(int at, const char *fmt, ...)
{
	if (!R.recording || at < 0 || at >= R.res->n_events) {
		return;
	}
	char *t = R.res->events[at].text;
	size_t len = strlen(t);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t + len, RP_TEXT - len, fmt, ap);
	va_end(ap);
}

void
add_check(int line, const char *what, const char *observed, bool pass)
{
	rp_result *r = R.res;
	if (rp_grow((void **)&r->checks, &r->cap_checks, r->n_checks,
	            sizeof(rp_check)) != 0) {
		return;
	}
	rp_check *c = &r->checks[r->n_checks++];
	c->line = line;
	snprintf(c->what, sizeof(c->what), "%s", what);
	snprintf(c->observed, sizeof(c->observed), "%s", observed);
	c->pass = pass;
	if (!pass) {
		if (line == 0) {
			r->invariant_failed = true;
		} else {
			r->expect_failed = true;
		}
	}
}

void
setup_error(const rp_step *st, const char *fmt, ...)
{
	rp_result *r = R.res;
	if (r->setup_error) {
		return;
	}
	r->setup_error = true;
	char msg[RP_TEXT];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (st != NULL) {
		snprintf(r->error, sizeof(r->error), "%s:%d:%d: step '%s': %s",
		         R.sc->file, st->line, st->col, st->text, msg);
	} else {
		snprintf(r->error, sizeof(r->error), "%s: %s", R.sc->file,
		         msg);
	}
}

// ---- Names ----

static const char *const err_names[] = {
    "0",         "ECANCELED", "EALREADY", "ENOTSUP",   "ESTATE",
    "EINVAL",    "ENOMEM",    "ECLOSED",  "EBUSY",     "ETIMEDOUT",
    "ECONNLOST", "EUNAVAIL",  "EPROTO",   "EMSGSIZE",  "ENOENT",
    "EDEADLK",   "ELIMIT",    "EEXIST",   "ECONNREF",  "ECRYPTO",
    "ESYSTEM",   "EINTERNAL", "EAPP",     "ESRVCANCEL"};

static const char *
err_name(int e, char *buf, size_t n)
{
	if (e >= 0 && e < (int)(sizeof(err_names) / sizeof(err_names[0]))) {
		return err_names[e];
	}
	snprintf(buf, n, "%d", e);
	return buf;
}

static const char *
ctype_name(aa_cancel_type t)
{
	return t == AA_CANCEL_TOTAL     ? "total"
	       : t == AA_CANCEL_PARTIAL ? "partial"
	                                : "terminal";
}

opent *
op_find(const char *name)
{
	for (int i = 0; i < R.n_ops; i++) {
		if (strcmp(R.ops[i].name, name) == 0) {
			return &R.ops[i];
		}
	}
	return NULL;
}

opent *
op_get(const char *name)
{
	opent *e = op_find(name);
	if (e == NULL && R.n_ops < MAX_OPS) {
		e = &R.ops[R.n_ops++];
		memset(e, 0, sizeof(*e));
		snprintf(e->name, sizeof(e->name), "%s", name);
		e->cancel_rv = -1;
		e->inside_rv = -1;
	}
	return e;
}

// op_by_ptr finds the op whose client op (or, real, whose server op) is
// op.
static opent *
op_by_ptr(const void *op, bool real)
{
	for (int i = 0; i < R.n_ops && op != NULL; i++) {
		if ((real ? R.ops[i].real : R.ops[i].op) == op) {
			return &R.ops[i];
		}
	}
	return NULL;
}

static opent *
op_by_wire(uint64_t id)
{
	struct timespec ts;
	bool timed = false;
	for (;;) {
		for (int i = 0; i < R.n_ops; i++) {
			if (R.ops[i].wire_id == id && id != 0) {
				return &R.ops[i];
			}
		}
		// In the server's process a Start may come before the tool
		// said the op's name (another channel): wait for it.
		if (!R.child) {
			return NULL;
		}
		if (!timed) {
			deadline_after(&ts, 1000);
			timed = true;
		}
		if (!timed_wait(&ts)) {
			return NULL;
		}
	}
}

static const char *
nm(const opent *e)
{
	return e != NULL ? e->name : "?";
}

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
	// Only the four layer checkpoints are recorded. Others may fire
	// with a library lock held, which the driver may be waiting for
	// while it holds R.mtx: they must not take it.
	if (strcmp(name, "client.before_submit") != 0 &&
	    strcmp(name, "client.before_deliver") != 0 &&
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

static opent *
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
	int rv = aa_op_cancel(e->op, st->ctype);
	aa_timeline tl = aa_client_timeline(e->op);
	char b[16];
	pthread_mutex_lock(&R.mtx);
	e->cancel_rv = rv;
	e->cancelled_ok |= rv == 0;
	ev_append(at, " → %s", err_name(rv, b, sizeof(b)));
	if (rv == 0) {
		ev_insert(at + 1, COL_CLAYER, "CANCELED at once (%s)%s",
		          aa_timeline_name(tl),
		          tl == AA_TIMELINE_IN_FLIGHT ? "; Cancel → wire"
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

static aa_cancel_signal *
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

static void *
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

// ---- The driver ----

void
deadline_after(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

// timed_wait waits on R.cv (R.mtx held) until ts: false once it passed.
bool
timed_wait(const struct timespec *ts)
{
	return pthread_cond_timedwait(&R.cv, &R.mtx, ts) != ETIMEDOUT;
}

static bool
all_idle(void)
{
	for (int i = 0; i < N_ACTORS; i++) {
		if (R.actors[i].busy) {
			return false;
		}
	}
	return true;
}

// dispatch hands st to an idle actor and waits until it returned or is
// held at a checkpoint (R.mtx held).
void
dispatch(const rp_step *st)
{
	struct timespec ts;
	deadline_after(&ts, R.sc->timeout_ms);
	actor *a = NULL;
	for (;;) {
		for (int i = 0; i < N_ACTORS && a == NULL; i++) {
			if (!R.actors[i].busy) {
				a = &R.actors[i];
			}
		}
		if (a != NULL) {
			break;
		}
		if (!timed_wait(&ts)) {
			setup_error(st, "every actor thread is held or busy");
			return;
		}
	}
	a->busy = true;
	a->held = false;
	a->st = st;
	pthread_cond_broadcast(&R.cv);
	while (a->busy && !a->held) {
		if (!timed_wait(&ts)) {
			setup_error(st, "did not return within %d ms",
			            R.sc->timeout_ms);
			return;
		}
	}
}

hold *
hold_arm(const char *cp, const char *op)
{
	if (R.n_holds == MAX_HOLDS) {
		return NULL;
	}
	hold *h = &R.holds[R.n_holds++];
	memset(h, 0, sizeof(*h));
	snprintf(h->cp, sizeof(h->cp), "%s", cp);
	snprintf(h->op, sizeof(h->op), "%s", op);
	h->armed = true;
	return h;
}

// hold_find: the last hold at cp for op ("" any) not released yet; with
// armed, only one that is armed.
hold *
hold_find(const char *cp, const char *op, bool armed)
{
	for (int i = R.n_holds - 1; i >= 0; i--) {
		hold *h = &R.holds[i];
		if (strcmp(h->cp, cp) == 0 && strcmp(h->op, op) == 0 &&
		    !h->released && (!armed || h->armed)) {
			return h;
		}
	}
	return NULL;
}

static hold *
find_hold(const rp_step *st)
{
	return hold_find(st->what, st->op, false);
}

// wait_done says whether what st waits for happened (R.mtx held).
static bool
wait_done(const rp_step *st, bool *bad)
{
	if (st->wait == W_IDLE) {
		return all_idle();
	}
	if (st->wait == W_REACHED) {
		hold *h = find_hold(st);
		if (h == NULL) {
			setup_error(st, "no such hold armed");
			*bad = true;
			return false;
		}
		return h->reached;
	}
	opent *e = op_find(st->op);
	if (e == NULL) {
		setup_error(st, "no op '%s'", st->op);
		*bad = true;
		return false;
	}
	switch (st->wait) {
	case W_HANDLER:
		return e->handler_runs > 0;
	case W_SETTLED:
		return e->settles > 0;
	case W_PROGRESS:
		return e->progress > 0;
	case W_SERVER: {
		for (int ev = 0; ev <= AA_SEV_PROTOCOL_ERROR; ev++) {
			if (strcmp(aa_server_event_name((aa_server_event)ev),
			           st->what) == 0) {
				return (e->slog_mask & (1u << ev)) != 0;
			}
		}
		setup_error(st, "unknown server event '%s'", st->what);
		*bad = true;
		return false;
	}
	default:
		return true;
	}
}

static void
do_wait(const rp_step *st)
{
	struct timespec ts;
	deadline_after(&ts, R.sc->timeout_ms);
	bool bad = false;
	while (!wait_done(st, &bad)) {
		if (bad) {
			return;
		}
		if (!timed_wait(&ts)) {
			if (!wait_done(st, &bad) && !bad) {
				setup_error(st, "not seen within %d ms",
				            R.sc->timeout_ms);
			}
			return;
		}
	}
}

static void
do_release(const rp_step *st)
{
	hold *h = find_hold(st);
	if (h == NULL) {
		setup_error(st, "no such hold armed");
		return;
	}
	struct timespec ts;
	deadline_after(&ts, R.sc->timeout_ms);
	while (!h->reached) {
		if (!timed_wait(&ts)) {
			setup_error(st,
			            "the hold was not reached within %d ms",
			            R.sc->timeout_ms);
			return;
		}
	}
	h->released = true;
	ev_add(strncmp(h->cp, "client.", 7) == 0 ? COL_CLAYER : COL_SLAYER,
	       "released from %s%s%s", h->cp, h->op[0] ? " " : "", h->op);
	pthread_cond_broadcast(&R.cv);
}

// ---- Expectations ----

typedef struct counter {
	const char *name;
	size_t off;
	bool server;
} counter;

#define CC(f)                                                                 \
	{                                                                     \
		"client." #f, offsetof(aa_client_stats, f), false             \
	}
#define SC(f)                                                                 \
	{                                                                     \
		"server." #f, offsetof(aa_server_stats, f), true              \
	}
static const counter counters[] = {
    CC(calls),
    CC(completed),
    CC(canceled),
    CC(failed),
    CC(pre_submit),
    CC(in_flight),
    CC(already_complete),
    CC(late_dropped),
    CC(unknown_dropped),
    CC(sent_start),
    CC(sent_cancel),
    CC(recv_complete),
    CC(recv_progress),
    CC(pending),
    SC(started),
    SC(rejected),
    SC(cancels_received),
    SC(cancels_ignored),
    SC(completed),
    SC(canceled),
    SC(failed),
    SC(wasted),
    SC(orphaned),
    SC(replies_sent),
    SC(replies_dropped),
    SC(progress_sent),
    SC(pending),
    {"wire.start", offsetof(aa_client_stats, sent_start), false},
    {"wire.cancel", offsetof(aa_client_stats, sent_cancel), false},
    {"wire.complete", offsetof(aa_client_stats, recv_complete), false},
    {"wire.progress", offsetof(aa_client_stats, recv_progress), false},
};

static bool
counter_value(const char *name, uint64_t *v)
{
	aa_client_stats cs;
	aa_server_stats ss;
	aa_client_stats_get(R.cli, &cs);
	if (R.server_pid != 0) {
		if (!remote_stats(&ss)) {
			return false;
		}
	} else {
		aa_server_stats_get(R.srv, &ss);
	}
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		if (strcmp(counters[i].name, name) == 0) {
			const char *base = counters[i].server
			                       ? (const char *)&ss
			                       : (const char *)&cs;
			memcpy(v, base + counters[i].off, sizeof(*v));
			return true;
		}
	}
	return false;
}

static void
observe(const rp_step *st, opent *e, char *obs, size_t n)
{
	char b[16];
	aa_op *op = e->op;
	switch (st->expect) {
	case E_STATUS:
		snprintf(obs, n, "%s", aa_op_state_name(aa_op_status(op)));
		break;
	case E_ERROR:
		snprintf(obs, n, "%s",
		         err_name(aa_op_error(op), b, sizeof(b)));
		break;
	case E_TIMELINE:
		snprintf(obs, n, "%s",
		         aa_timeline_name(aa_client_timeline(op)));
		break;
	case E_SETTLEMENT:
		snprintf(obs, n, "%s",
		         aa_settlement_name(aa_op_settlement(op)));
		break;
	case E_HANDLER:
		snprintf(obs, n, "%d", e->handler_runs);
		break;
	case E_PROGRESS:
		snprintf(obs, n, "%d", e->progress);
		break;
	case E_CANCEL_RV:
		snprintf(obs, n, "%s",
		         e->cancel_rv < 0
		             ? "none"
		             : err_name(e->cancel_rv, b, sizeof(b)));
		break;
	case E_APP_CODE: {
		int32_t code;
		if (aa_op_app_code(op, &code) == 0) {
			snprintf(obs, n, "%d", (int)code);
		} else {
			snprintf(obs, n, "none");
		}
		break;
	}
	case E_INSIDE_RV:
		snprintf(obs, n, "%s",
		         e->inside_rv < 0
		             ? "none"
		             : err_name(e->inside_rv, b, sizeof(b)));
		break;
	case E_SERVER_LOG:
		snprintf(obs, n, "%s", e->slog[0] ? e->slog : "none");
		break;
	case E_RESULT: {
		const void *data;
		size_t len;
		int rv = aa_op_result(op, &data, &len);
		if (rv != 0) {
			snprintf(obs, n, "%s", err_name(rv, b, sizeof(b)));
		} else {
			snprintf(obs, n, "%.*s", (int)len, (const char *)data);
		}
		break;
	}
	default:
		obs[0] = '\0';
		break;
	}
}

static void
do_expect(const rp_step *st)
{
	char obs[RP_TEXT];
	bool pass;
	if (st->expect == E_WIRE || st->expect == E_COUNTER) {
		char name[2 * RP_NAME];
		snprintf(name, sizeof(name), "%s%s",
		         st->expect == E_WIRE ? "wire." : "", st->what);
		uint64_t v;
		pthread_mutex_unlock(&R.mtx);
		bool known = counter_value(name, &v);
		pthread_mutex_lock(&R.mtx);
		if (!known) {
			setup_error(st,
			            "unknown counter '%s' (docs/replay.md "
			            "lists them)",
			            name);
			return;
		}
		snprintf(obs, sizeof(obs), "%llu", (unsigned long long)v);
		pass = v == (uint64_t)st->num;
	} else {
		opent *e = need_op(st, false);
		if (e == NULL) {
			return;
		}
		observe(st, e, obs, sizeof(obs));
		pass = strcmp(obs, st->data) == 0;
	}
	add_check(st->line, st->text, obs, pass);
}

// ---- Steps ----

static void
exec_step(const rp_step *st)
{
	// With the server in a second process, its holds are mirrored here
	// (reached when it says so) and its steps are sent to it.
	bool remote = R.server_pid != 0 &&
	              (strncmp(st->what, "server.", 7) == 0 ||
	               st->kind == K_SRV_COMPLETE || st->kind == K_SRV_FAIL ||
	               st->kind == K_SRV_PROGRESS || st->kind == K_SRV_STOP ||
	               st->kind == K_SRV_IGNORE || st->kind == K_SRV_KILL);
	if (remote && st->kind != K_WAIT) {
		if (st->kind == K_HOLD && R.n_holds < MAX_HOLDS) {
			hold_arm(st->what, st->op);
		} else if (st->kind == K_RELEASE) {
			do_release(st);
		}
		if (!R.res->setup_error) {
			remote_step(st);
		}
		return;
	}
	if (st->kind == K_SRV_KILL) {
		setup_error(st, "needs the server in its own process "
		                "(--transport ipc)");
		return;
	}
	switch (st->kind) {
	case K_HOLD:
		if (R.n_holds == MAX_HOLDS) {
			setup_error(st, "too many holds");
			return;
		}
		hold_arm(st->what, st->op);
		break;
	case K_RELEASE:
		do_release(st);
		break;
	case K_WAIT:
		do_wait(st);
		break;
	case K_EXPECT:
		do_expect(st);
		break;
	case K_SIGNAL:
		if (R.n_sigs == MAX_SIGS || find_sig(st->op) != NULL) {
			setup_error(st, "too many signals, or a name taken");
			return;
		}
		sigent *s = &R.sigs[R.n_sigs];
		if (aa_cancel_signal_alloc(&s->sig) != 0) {
			setup_error(st, "no memory");
			return;
		}
		snprintf(s->name, sizeof(s->name), "%s", st->op);
		R.n_sigs++;
		break;
	case K_SRV_IGNORE: {
		opent *e = op_get(st->op);
		if (e != NULL) {
			e->ignore_cancel = true;
		}
		break;
	}
	case K_CORK:
		ev_add(COL_CLIENT, "aa_client_cork()");
		pthread_mutex_unlock(&R.mtx);
		aa_client_cork(R.cli);
		pthread_mutex_lock(&R.mtx);
		break;
	default:
		dispatch(st);
		break;
	}
}

// ---- Setup, teardown, invariants ----

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

static int run_counter;

static int
setup(const rp_scenario *sc)
{
	run_counter++;
	if (strcmp(sc->transport, "ipc") == 0) {
		const char *tmp = getenv("TMPDIR");
		snprintf(R.url, sizeof(R.url), "ipc://%s/aa-replay-%d-%d.sock",
		         tmp && tmp[0] ? tmp : "/tmp", (int)getpid(),
		         run_counter);
	} else {
		snprintf(R.url, sizeof(R.url), "inproc://aa-replay-%d-%d",
		         (int)getpid(), run_counter);
	}
	// Over ipc the server runs in a second process (remote.c).
	int rv = strcmp(sc->transport, "ipc") == 0
	             ? remote_start(sc)
	             : server_up(R.url, needs_pool(sc));
	if (rv != 0) {
		return -1;
	}
	aa_client_opts co = {.url = R.url};
	return aa_client_open(&R.cli, &co) == 0 ? 0 : -1;
}

// actors_idle_or_exit waits until no actor runs a step. A step that
// never returns still uses the layers, which cannot be freed under it:
// the process gives up.
void
actors_idle_or_exit(void)
{
	pthread_mutex_lock(&R.mtx);
	struct timespec ts;
	deadline_after(&ts, R.sc->timeout_ms);
	bool stuck = false;
	while (!all_idle() && !stuck) {
		stuck = !timed_wait(&ts) && !all_idle();
	}
	pthread_mutex_unlock(&R.mtx);
	if (stuck) {
		fprintf(stderr, "%s: a step never returned; giving up\n",
		        R.sc->file);
		_exit(RP_BAD);
	}
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

static void
check_invariants(void)
{
	char obs[RP_TEXT], what[RP_TEXT];
	for (int i = 0; i < R.n_ops; i++) {
		opent *e = &R.ops[i];
		if (e->op == NULL) {
			continue;
		}
		aa_state s = aa_op_status(e->op);
		snprintf(what, sizeof(what), "%s: exactly one final state",
		         e->name);
		add_check(0, what, aa_op_state_name(s), s != AA_STARTED);
		snprintf(what, sizeof(what),
		         "%s: the handler ran exactly once", e->name);
		snprintf(obs, sizeof(obs), "%d", e->handler_runs);
		add_check(0, what, obs, e->handler_runs == 1);
		if (e->cancelled_ok) {
			snprintf(what, sizeof(what),
			         "%s: cancelled before its result was handed "
			         "over, so CANCELED",
			         e->name);
			snprintf(obs, sizeof(obs), "%s (handler saw %s)",
			         aa_op_state_name(s),
			         aa_op_state_name(e->handler_saw));
			add_check(0, what, obs,
			          s == AA_CANCELED &&
			              e->handler_saw == AA_CANCELED);
		}
		// The settlement is the server's outcome for an op that the
		// client cancelled or that completed; an op that failed on its
		// own side (deadline, lost server) settles as it ended.
		aa_settlement st = aa_op_settlement(e->op);
		bool ok = true;
		switch (s == AA_ERROR ? AA_SETTLE_PENDING : st) {
		case AA_SETTLE_COMPLETED:
			ok = e->slog_mask & (1u << AA_SEV_COMPLETED);
			break;
		case AA_SETTLE_CANCELED:
			ok = e->slog_mask & (1u << AA_SEV_CANCELED);
			break;
		case AA_SETTLE_FAILED:
			ok = e->slog_mask & (1u << AA_SEV_FAILED);
			break;
		case AA_SETTLE_NEVER_STARTED:
			ok = !(e->slog_mask & (1u << AA_SEV_START));
			break;
		default:
			break;
		}
		snprintf(what, sizeof(what),
		         "%s: settlement agrees with the server's log",
		         e->name);
		snprintf(obs, sizeof(obs), "%s / %s", aa_settlement_name(st),
		         e->slog[0] ? e->slog : "nothing logged");
		add_check(0, what, obs, ok);
	}
}

static void
teardown(int64_t live_before)
{
	pthread_mutex_lock(&R.mtx);
	R.recording = false;
	R.aborting = true; // every hold lets go
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
	actors_idle_or_exit();
	if (R.cli != NULL) {
		aa_client_free(R.cli); // cancels what is still pending
	}
	if (R.server_pid != 0) {
		remote_stop();
	} else {
		server_down();
	}
	pthread_mutex_lock(&R.mtx);
	check_invariants();
	pthread_mutex_unlock(&R.mtx);
	for (int i = 0; i < R.n_ops; i++) {
		if (R.ops[i].op != NULL) {
			aa_op_unref(R.ops[i].op);
		}
		if (R.ops[i].real != NULL) {
			aa_op_unref(R.ops[i].real);
		}
	}
	for (int i = 0; i < R.n_sigs; i++) {
		aa_cancel_signal_free(R.sigs[i].sig);
	}
	if (strncmp(R.url, "ipc://", 6) == 0) {
		unlink(R.url + 6);
	}
	int64_t live = aa_live_total();
	char obs[64];
	snprintf(obs, sizeof(obs), "%lld", (long long)(live - live_before));
	add_check(0, "nothing leaked: live library objects back to zero", obs,
	          live == live_before);
}

// The actor threads and the run's lock live as long as the process: an
// exploration makes thousands of runs. (The server's pool does not: it is
// freed, and so waited for, before the live-object count is read.)
pthread_once_t once = PTHREAD_ONCE_INIT;

void
start_once(void)
{
	pthread_mutex_init(&R.mtx, NULL);
	pthread_cond_init(&R.cv, NULL);
	for (int i = 0; i < N_ACTORS; i++) {
		pthread_create(&R.actors[i].t, NULL, actor_main, &R.actors[i]);
	}
}

int
rp_run(const rp_scenario *sc, const int *order, int n_order, rp_result *res)
{
	memset(res, 0, sizeof(*res));
	pthread_once(&once, start_once);
	pthread_mutex_lock(&R.mtx);
	R.sc = sc;
	R.res = res;
	R.recording = R.aborting = false;
	R.n_ops = R.n_holds = R.n_sigs = 0;
	R.srv = NULL;
	R.cli = NULL;
	R.pool = NULL;
	R.server_pid = 0;
	R.server_dead = false;
	R.url[0] = '\0';
	pthread_mutex_unlock(&R.mtx);
	int64_t live_before = aa_live_total();
	aa_checkpoint_set(on_checkpoint, NULL);
	if (setup(sc) != 0) {
		setup_error(NULL, "cannot start the server and client on %s",
		            R.url);
	} else {
		pthread_mutex_lock(&R.mtx);
		R.recording = true;
		int n = order != NULL ? n_order : sc->n_units;
		for (int i = 0; i < n && !res->setup_error; i++) {
			const rp_unit *u = &sc->units[order ? order[i] : i];
			for (int k = 0; k < u->n && !res->setup_error; k++) {
				exec_step(&sc->steps[u->first + k]);
			}
		}
		pthread_mutex_unlock(&R.mtx);
	}
	teardown(live_before);
	aa_checkpoint_set(NULL, NULL);
	if (res->setup_error) {
		return RP_BAD;
	}
	return res->invariant_failed || res->expect_failed ? RP_FAIL : RP_PASS;
}

void
rp_result_free(rp_result *res)
{
	free(res->events);
	free(res->checks);
	memset(res, 0, sizeof(*res));
}
