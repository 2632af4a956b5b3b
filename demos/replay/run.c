// run.c: one run of a scenario against the real client and server layers:
// the driver, the recording, setup and teardown. The expectations and the
// invariants are in check.c; what the layers meet (handlers, checkpoints,
// the tool's server, the actors) in layers.c; the server in a second
// process in remote.c.
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
// Over inproc. The process turns the inproc transport's hand-over off
// once (a test hook, inproc_hooks.h): each end's callbacks then run on its
// own thread, so a thread held at a server checkpoint is the server's,
// never the client's, as over ipc. "server kill" cuts the server's
// connections with no Goodbye (the other hook, kill_inproc); the server
// lives on and later server steps are refused, as over ipc.
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

#include "inproc_hooks.h"
#include "replay.h"

#include "run.h"

struct run_state R;

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

void
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

void
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

const char *
err_name(int e, char *buf, size_t n)
{
	if (e >= 0 && e < (int)(sizeof(err_names) / sizeof(err_names[0]))) {
		return err_names[e];
	}
	snprintf(buf, n, "%d", e);
	return buf;
}

const char *
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
opent *
op_by_ptr(const void *op, bool real)
{
	for (int i = 0; i < R.n_ops && op != NULL; i++) {
		if ((real ? R.ops[i].real : R.ops[i].op) == op) {
			return &R.ops[i];
		}
	}
	return NULL;
}

opent *
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

const char *
nm(const opent *e)
{
	return e != NULL ? e->name : "?";
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

// ---- Steps ----

// kill_inproc: "server kill" with the server in this process. Its
// listener vanishes and its connections are cut at once, with no Goodbye
// (aai_inproc_kill, a test hook of the inproc transport): the client sees
// what a killed server's process leaves it, a lost connection and a
// refused reconnect. The server itself lives on here: it sees its client
// go away and cancels the real ops (rows that over ipc a dead process
// never writes). Later server steps are refused, as over ipc.
static void
kill_inproc(const rp_step *st)
{
	ev_add(COL_SERVER, "the server is killed: its connections are cut, "
	                   "no Goodbye");
	R.server_dead = true;
	pthread_mutex_unlock(&R.mtx);
	int rv = aai_inproc_kill(R.url + strlen("inproc://"));
	pthread_mutex_lock(&R.mtx);
	if (rv != 0) {
		setup_error(st, "cannot cut the server's connections");
	}
}

static void
exec_step(const rp_step *st)
{
	// With the server in a second process, its holds are mirrored here
	// (reached when it says so) and its steps are sent to it.
	bool srv_step = strncmp(st->what, "server.", 7) == 0 ||
	                st->kind == K_SRV_COMPLETE || st->kind == K_SRV_FAIL ||
	                st->kind == K_SRV_PROGRESS || st->kind == K_SRV_STOP ||
	                st->kind == K_SRV_IGNORE || st->kind == K_SRV_KILL;
	bool remote = R.server_pid != 0 && srv_step;
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
	if (srv_step && st->kind != K_WAIT && R.server_dead) {
		setup_error(st, "the server was killed");
		return;
	}
	if (st->kind == K_SRV_KILL) {
		kill_inproc(st);
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
	aa_client_opts co = {.url = R.url, .heartbeat_ms = sc->heartbeat_ms};
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
	// Over inproc, each end's callbacks run on its own thread only (a
	// test hook of the inproc transport): a thread held at a server
	// checkpoint is then the server's, as over ipc, never the client's.
	aai_inproc_set_handover(false);
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
