// aa-test-labels: concurrent
// test_client.c: the client layer against the real server layer: the three
// cancellation timelines and the server-completes-instead case, each forced
// with checkpoints (never sleeps), over inproc, ipc and tcp; what each side
// saw and what crossed the wire; cancel racing completion; cancel-all;
// close; deadlines; progress; a server that is killed, stopped or closed;
// a client that is killed.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <aa/client.h>
#include <aa/server.h>

#include "methods.h"
#include "testutil.h"

// ---- Hold points: a checkpoint that stops one thread once ----

static hold_point hp_submit = {.name = "client.before_submit"};
static hold_point hp_deliver = {.name = "client.before_deliver"};
static hold_point hp_reply = {.name = "server.before_reply"};
static hold_point hp_start = {.name = "server.before_start"};
static hold_point hp_closing = {.name = "server.closing"};
static hold_point hp_fail = {.name = "client.before_fail"};
static hold_point hp_cclosing = {.name = "client.closing"};
static hold_point hp_reconnect = {.name = "client.reconnect"};
static hold_point hp_cstopping = {.name = "client.stopping"};
static hold_point hp_stopping = {.name = "server.stopping"};
static hold_point *const points[] = {
    &hp_submit, &hp_deliver,  &hp_reply,     &hp_start,     &hp_closing,
    &hp_fail,   &hp_cclosing, &hp_reconnect, &hp_cstopping, &hp_stopping};

// Actions at "op.slot_connected" (inside aa_op_alloc, during a call).
static aa_cancel_signal *emit_at_connect;
static aa_client *close_at_connect;

// Stops that have begun (counted by the client, so a free may follow).
static atomic_int stops_entered;

static void
on_checkpoint(void *arg, const char *name, void *subject)
{
	(void)arg;
	if (strcmp(name, "client.stopping") == 0) {
		atomic_fetch_add(&stops_entered, 1);
	}
	if (strcmp(name, "op.slot_connected") == 0) {
		if (emit_at_connect != NULL) {
			aa_cancel_signal_emit(emit_at_connect,
			                      AA_CANCEL_TERMINAL);
		}
		if (close_at_connect != NULL) {
			aa_client_close(close_at_connect);
		}
		return;
	}
	hold_points_hit(points, sizeof(points) / sizeof(points[0]), name,
	                subject);
}

// ---- Server methods ----

typedef struct server_side {
	gate started;       // a "hold" op started
	aa_op *held;        // the last "hold" op (the test's reference)
	atomic_int cancels; // cancel requests the real ops saw
	atomic_int compensated;
	bool stubborn;      // "hold" ignores cancellation
	gate *hold_returns; // if set, "hold" waits on it before returning
} server_side;

static server_side S;

static int
m_echo(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = len};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		memcpy(aa_op_extra(*opp), payload, len);
		aa_op_complete(*opp, aa_op_extra(*opp), len, NULL);
	}
	return rv;
}

static int
hold_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	(void)type;
	(void)arg;
	atomic_fetch_add(&S.cancels, 1);
	if (!S.stubborn) {
		aa_op_canceled(op);
	}
	return 0;
}

// "hold": a real op that runs until the test finishes it or it is
// cancelled (or, stubborn, ignores the cancel).
static int
m_hold(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = hold_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_ref(*opp);
		if (S.held != NULL) {
			aa_op_unref(S.held);
		}
		S.held = *opp;
		gate_open(&S.started);
		if (S.hold_returns != NULL) {
			gate_wait(S.hold_returns);
		}
	}
	return rv;
}

// "park": like hold, for many ops at once, none kept by the test.
static int
m_park(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = hold_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	return aa_op_alloc(opp, &pv, assoc);
}

// "deadline": records the deadline the Start carried, then completes.
static atomic_uint deadline_seen;

static int
m_deadline(aa_op **opp, void *arg, const aa_call_info *call,
           const void *payload, size_t len, const aa_assoc *assoc)
{
	atomic_store(&deadline_seen, call->deadline_ms);
	return m_echo(opp, arg, call, payload, len, assoc);
}

static void
compensate(void *arg, const aa_call_info *call, aa_op *op)
{
	atomic_fetch_add(&S.compensated, 1);
}

// ---- Fixture ----

typedef struct env {
	char dir[64];
	char url[128];
	aa_server *srv;
	aa_client *cli;
} env;

static env E;

// Set by a TLS test before server_up(.., "tls", ..).
static char tls_cert[128], tls_key[128];

// The server's log, in order: what the server side saw of each op.
typedef struct log_rec {
	aa_server_event ev;
	uint64_t op_id;
	char detail[64];
} log_rec;

static struct {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	log_rec recs[256];
	int n;
	int reply_delay_ms; // for the next server_up
} L = {.mtx = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void
srv_log(void *arg, const aa_server_log_rec *r)
{
	pthread_mutex_lock(&L.mtx);
	if (L.n < 256) {
		log_rec *x = &L.recs[L.n++];
		x->ev = r->event;
		x->op_id = r->op_id;
		snprintf(x->detail, sizeof(x->detail), "%s", r->detail);
	}
	pthread_cond_broadcast(&L.cv);
	pthread_mutex_unlock(&L.mtx);
}

// log_index returns the position of the first ev for op_id in the server
// log at or after from, or -1.
static int
log_index(aa_server_event ev, uint64_t op_id, int from)
{
	pthread_mutex_lock(&L.mtx);
	int found = -1;
	for (int i = from; i < L.n && found < 0; i++) {
		if (L.recs[i].ev == ev && L.recs[i].op_id == op_id) {
			found = i;
		}
	}
	pthread_mutex_unlock(&L.mtx);
	return found;
}

// log_wait waits until the server logged ev for op_id; its position.
static int
log_wait(aa_server_event ev, uint64_t op_id)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	int i;
	while ((i = log_index(ev, op_id, 0)) < 0) {
		pthread_mutex_lock(&L.mtx);
		int rv = pthread_cond_timedwait(&L.cv, &L.mtx, &ts);
		pthread_mutex_unlock(&L.mtx);
		cr_assert_eq(rv == ETIMEDOUT && log_index(ev, op_id, 0) < 0,
		             false, "the server never logged %s for op %llu",
		             aa_server_event_name(ev),
		             (unsigned long long)op_id);
	}
	return i;
}

static void
server_up(env *e, const char *kind, uint32_t max_pending)
{
	aa_server_opts so = {.max_pending = max_pending,
	                     .log = srv_log,
	                     .reply_delay_ms = L.reply_delay_ms};
	if (strcmp(kind, "tls") == 0) {
		so.tls_cert_file = tls_cert;
		so.tls_key_file = tls_key;
	}
	cr_assert_eq(aa_server_alloc(&e->srv, &so), 0);
	aa_method_def defs[] = {
	    {.name = "echo", .start = m_echo, .cancel_types = AA_CANCEL_ALL},
	    {.name = "hold",
	     .start = m_hold,
	     .compensate = compensate,
	     .cancel_types = AA_CANCEL_ALL},
	    {.name = "park", .start = m_park, .cancel_types = AA_CANCEL_ALL},
	    {.name = "terminal_only",
	     .start = m_echo,
	     .cancel_types = AA_CANCEL_TERMINAL},
	    {.name = "fail_app", .start = method_fail_app},
	    {.name = "self_cancel",
	     .start = method_self_cancel,
	     .cancel_types = AA_CANCEL_ALL},
	    {.name = "deadline", .start = m_deadline},
	};
	for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
		cr_assert_eq(aa_server_register(e->srv, &defs[i]), 0);
	}
	if (strcmp(kind, "inproc") == 0) {
		snprintf(e->url, sizeof(e->url), "inproc://aa-test-%d",
		         (int)getpid());
	} else if (strcmp(kind, "ipc") == 0 && e->dir[0] != '\0') {
		// The test chose the address already.
	} else if (strcmp(kind, "ipc") == 0) {
		strcpy(e->dir, "/tmp/aa-test-XXXXXX");
		cr_assert_not_null(mkdtemp(e->dir));
		snprintf(e->url, sizeof(e->url), "ipc://%s/s.sock", e->dir);
	} else if (strcmp(kind, "tls") == 0) {
		strcpy(e->url, "tls+tcp://127.0.0.1:0");
	} else {
		strcpy(e->url, "tcp://127.0.0.1:0");
	}
	cr_assert_eq(aa_server_listen(e->srv, e->url), 0);
	if (strcmp(kind, "tcp") == 0 || strcmp(kind, "tls") == 0) {
		snprintf(e->url, sizeof(e->url), "%s://127.0.0.1:%d",
		         strcmp(kind, "tls") == 0 ? "tls+tcp" : "tcp",
		         aa_server_port(e->srv));
	}
}

static void
client_up(env *e, int heartbeat_ms)
{
	aa_client_opts co = {.url = e->url, .heartbeat_ms = heartbeat_ms};
	cr_assert_eq(aa_client_open(&e->cli, &co), 0);
}

static void
env_up(const char *kind)
{
	server_up(&E, kind, 0);
	client_up(&E, 0);
}

static void
setup(void)
{
	pthread_mutex_lock(&L.mtx);
	L.n = 0;
	L.reply_delay_ms = 0;
	pthread_mutex_unlock(&L.mtx);
	memset(&S, 0, sizeof(S));
	gate_init(&S.started);
	memset(&E, 0, sizeof(E));
	aa_checkpoint_set(on_checkpoint, NULL);
}

static void
teardown(void)
{
	aa_checkpoint_set(NULL, NULL);
	if (E.cli != NULL) {
		aa_client_free(E.cli);
	}
	if (S.held != NULL) {
		if (aa_op_status(S.held) == AA_STARTED) {
			aa_op_canceled(S.held);
		}
		aa_op_unref(S.held);
	}
	if (E.srv != NULL) {
		aa_server_free(E.srv);
	}
	if (E.dir[0] != '\0') {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", E.dir);
		cr_assert_eq(system(cmd), 0);
	}
	aa_test_check_live();
}

TestSuite(client, .init = setup, .fini = teardown, .timeout = 60);

// ---- A handler that records, and helpers ----

typedef struct seen {
	atomic_int calls;
	aa_state state;
	pthread_t thread;
	gate done;
	atomic_int settles;
	gate settled;
	int cancel_inside_rv;
	bool cancel_inside;
} seen;

static void
seen_init(seen *s)
{
	memset(s, 0, sizeof(*s));
	gate_init(&s->done);
	gate_init(&s->settled);
}

static void
on_done(aa_op *op, void *arg)
{
	seen *s = arg;
	s->state = aa_op_status(op);
	s->thread = pthread_self();
	if (s->cancel_inside) {
		s->cancel_inside_rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
	}
	atomic_fetch_add(&s->calls, 1);
	gate_open(&s->done);
}

static void
on_settle(aa_op *op, void *arg)
{
	seen *s = arg;
	atomic_fetch_add(&s->settles, 1);
	gate_open(&s->settled);
}

static aa_op *
call(const char *method, const char *payload, seen *s)
{
	aa_op *op = NULL;
	cr_assert_eq(aa_client_call(&op, E.cli, method, payload,
	                            payload ? strlen(payload) : 0, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, s), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, s), 0);
	return op;
}

static void
client_stats(aa_client_stats *st)
{
	aa_client_stats_get(E.cli, st);
}

static void
server_stats(aa_server_stats *st)
{
	aa_server_stats_get(E.srv, st);
}

// ---- Round trip ----

static void
echo_round_trip(const char *kind)
{
	static seen s;
	seen_init(&s);
	env_up(kind);
	aa_op *op = call("echo", "hello", &s);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED);
	const void *data;
	size_t len;
	cr_assert_eq(aa_op_result(op, &data, &len), 0);
	cr_assert_eq(len, 5);
	cr_assert_eq(memcmp(data, "hello", 5), 0);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_neq(aa_client_op_id(op), 0);
	cr_assert_neq(aa_client_conn_id(E.cli), 0);
	aa_op_unref(op);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_start, 1);
	cr_assert_eq(cs.recv_complete, 1);
	cr_assert_eq(cs.sent_cancel, 0);
}

Test(client, echo_inproc)
{
	echo_round_trip("inproc");
}
Test(client, echo_ipc)
{
	echo_round_trip("ipc");
}
Test(client, echo_tcp)
{
	echo_round_trip("tcp");
}

Test(client, unknown_method_fails_locally_and_sends_nothing)
{
	env_up("inproc");
	aa_op *op = NULL;
	cr_assert_eq(aa_client_call(&op, E.cli, "nope", "x", 1, NULL, NULL),
	             AA_ENOENT);
	cr_assert_null(op);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_start, 0);
	unsigned types = 0;
	cr_assert_eq(
	    aa_client_method_cancel_types(E.cli, "terminal_only", &types), 0);
	cr_assert_eq(types, AA_CANCEL_TERMINAL, "learned in the handshake");
}

Test(client, cancel_type_the_method_does_not_honour)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	hold_arm(&hp_submit); // keep it pre-submit so the test is not racing
	aa_op *op = NULL;
	aa_client_cork(E.cli);
	cr_assert_eq(
	    aa_client_call(&op, E.cli, "terminal_only", "x", 1, NULL, NULL),
	    0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_status(op), AA_STARTED);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	atomic_store(&hp_submit.armed, 0);
	aa_client_uncork(E.cli);
	aa_op_unref(op);
}

// ---- Timeline 1: pre-submit ----

static void
pre_submit_with_cork(const char *kind)
{
	static seen s;
	seen_init(&s);
	env_up(kind);
	aa_client_cork(E.cli);
	aa_op *op = call("hold", "x", &s);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.calls), 1, "handler ran inside cancel");
	cr_assert(pthread_equal(s.thread, pthread_self()));
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_PRE_SUBMIT);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_NEVER_STARTED);
	cr_assert_eq(aa_op_result(op, NULL, NULL), AA_ECANCELED);
	aa_client_uncork(E.cli);

	// An echo after it proves the pipe is flushed: the server saw the
	// echo and never the cancelled call.
	static seen e;
	seen_init(&e);
	aa_op *probe = call("echo", "p", &e);
	gate_wait(&e.done);
	aa_client_stats cs;
	aa_server_stats ss;
	client_stats(&cs);
	server_stats(&ss);
	cr_assert_eq(cs.sent_start, 1, "only the probe's Start was sent");
	cr_assert_eq(cs.sent_cancel, 0);
	cr_assert_eq(cs.pre_submit, 1);
	cr_assert_eq(ss.started, 1, "the server never heard of it");
	cr_assert_eq(ss.cancels_received, 0);
	aa_op_unref(probe);
	aa_op_unref(op);
}

Test(client, pre_submit_inproc)
{
	pre_submit_with_cork("inproc");
}
Test(client, pre_submit_ipc)
{
	pre_submit_with_cork("ipc");
}

typedef struct caller {
	thr t;
	aa_op *op;
	int rv;
} caller;

static void *
caller_main(void *arg)
{
	caller *c = arg;
	c->rv = aa_client_call(&c->op, E.cli, "hold", "x", 1, NULL, NULL);
	return NULL;
}

// ---- The payload: borrowed during the call, copied if still queued ----

// echo_result_is checks that op completed with want.
static void
echo_result_is(aa_op *op, seen *s, const char *want)
{
	gate_wait(&s->done);
	cr_assert_eq(s->state, AA_COMPLETED);
	const void *data;
	size_t len;
	cr_assert_eq(aa_op_result(op, &data, &len), 0);
	cr_assert_eq(len, strlen(want));
	cr_assert_eq(memcmp(data, want, len), 0);
}

Test(client, corked_call_keeps_its_payload)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_client_cork(E.cli);
	char *buf = strdup("hello");
	aa_op *op;
	cr_assert_eq(aa_client_call(&op, E.cli, "echo", buf, 5, NULL, NULL),
	             0);
	memcpy(buf, "XXXXX", 5); // the caller's buffer is its own again
	free(buf);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	aa_client_uncork(E.cli);
	echo_result_is(op, &s, "hello");
	aa_op_unref(op);
}

Test(client, call_queued_behind_another_flusher_keeps_its_payload)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	hold_arm(&hp_submit);
	caller c = {0};
	thr_start(&c.t, caller_main, &c); // its flush stops before sending
	gate_wait(&hp_submit.reached);
	// This call finds a flusher running: it returns with its op queued
	// (that flusher will send it), and its buffer goes away at once.
	char *buf = strdup("queued");
	aa_op *op;
	cr_assert_eq(aa_client_call(&op, E.cli, "echo", buf, 6, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	memset(buf, 'Z', 6);
	free(buf);
	gate_open(&hp_submit.release);
	thr_join(&c.t);
	echo_result_is(op, &s, "queued");
	aa_op_unref(op);
	cr_assert_eq(aa_op_cancel(c.op, AA_CANCEL_TERMINAL), 0);
	aa_op_unref(c.op);
}

Test(client, pre_submit_while_the_submitting_thread_is_held)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	hold_arm(&hp_submit);
	caller c = {0};
	thr_start(&c.t, caller_main, &c);
	gate_wait(&hp_submit.reached); // the Start is about to be sent
	aa_op *op = hp_submit.subject;
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.calls), 1);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_PRE_SUBMIT);
	gate_open(&hp_submit.release);
	thr_join(&c.t);
	cr_assert_eq(c.rv, 0);
	cr_assert_eq(c.op, op);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_start, 0, "nothing was sent");
	aa_op_unref(c.op);
}

// ---- Timeline 2: in-flight ----

static void
in_flight(const char *kind)
{
	static seen s;
	seen_init(&s);
	env_up(kind);
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started); // the server runs the real op
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.calls), 1, "CANCELED at once");
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT);
	// The server cancels the real op in due course; its Complete comes
	// back late, is dropped, and says what really happened.
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	cr_assert_eq(atomic_load(&s.calls), 1);
	aa_client_stats cs;
	aa_server_stats ss;
	client_stats(&cs);
	server_stats(&ss);
	cr_assert_eq(cs.sent_start, 1);
	cr_assert_eq(cs.sent_cancel, 1);
	cr_assert_eq(cs.recv_complete, 1);
	cr_assert_eq(cs.late_dropped, 1);
	cr_assert_eq(cs.in_flight, 1);
	cr_assert_eq(ss.started, 1);
	cr_assert_eq(ss.cancels_received, 1);
	cr_assert_eq(ss.canceled, 1);
	cr_assert_eq(atomic_load(&S.cancels), 1);
	aa_op_unref(op);
}

Test(client, in_flight_inproc)
{
	in_flight("inproc");
}

// ---- An in-flight cancel in two halves: handler first, then the Cancel ----

typedef struct halves {
	aa_client *cli;
	uint64_t sent_cancel_in_handler;
	int stop_rv;
	bool free_client; // the handler frees the client
	bool stop_client; // the handler tries to stop it
	bool close_client;
	atomic_int calls;
} halves;

static void
halves_handler(aa_op *op, void *arg)
{
	halves *h = arg;
	aa_client_stats cs;
	aa_client_stats_get(h->cli, &cs);
	h->sent_cancel_in_handler = cs.sent_cancel;
	if (h->stop_client) {
		h->stop_rv = aa_client_stop(h->cli);
	}
	if (h->close_client) {
		aa_client_close(h->cli);
	}
	if (h->free_client) {
		aa_client_free(h->cli); // deferred: this thread owes a Cancel
	}
	atomic_fetch_add(&h->calls, 1);
}

// in_flight_halves cancels a started "hold" op with h's handler; returns
// the op.
static aa_op *
in_flight_halves(const char *kind, halves *h)
{
	env_up(kind);
	h->cli = E.cli;
	aa_op *op;
	cr_assert_eq(aa_client_call(&op, E.cli, "hold", "x", 1, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, halves_handler, h), 0);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&h->calls), 1);
	return op;
}

static void
handler_before_cancel_frame(const char *kind)
{
	static halves h;
	memset(&h, 0, sizeof(h));
	aa_op *op = in_flight_halves(kind, &h);
	// The handler ran before the frame was written; the Cancel left
	// before aa_op_cancel returned, and the server acts on it.
	cr_assert_eq(h.sent_cancel_in_handler, 0);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_cancel, 1);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT);
	log_wait(AA_SEV_CANCEL_RECEIVED, aa_client_op_id(op));
	aa_op_unref(op);
}

Test(client, handler_runs_before_the_cancel_frame_inproc)
{
	handler_before_cancel_frame("inproc");
}

Test(client, handler_runs_before_the_cancel_frame_ipc)
{
	handler_before_cancel_frame("ipc");
}

Test(client, handler_frees_the_client_between_the_cancel_halves)
{
	static halves h;
	memset(&h, 0, sizeof(h));
	h.free_client = true;
	aa_op *op = in_flight_halves("ipc", &h);
	E.cli = NULL; // the handler freed it (deferred until the Cancel)
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	// The free waited for the owed Cancel, which went out: the server
	// cancels its real op because of it (or as an orphan once the
	// client is gone; either way it is cancelled).
	log_wait(AA_SEV_CANCELED, aa_client_op_id(op));
	aa_op_unref(op);
	while (aa_live(AA_LIVE_CLIENT) != 0) { // the deferred free ends
		sched_yield();
	}
}

Test(client, stop_between_the_cancel_halves_is_edeadlk)
{
	static halves h;
	memset(&h, 0, sizeof(h));
	h.stop_client = true;
	aa_op *op = in_flight_halves("inproc", &h);
	cr_assert_eq(h.stop_rv, AA_EDEADLK);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_cancel, 1);
	aa_op_unref(op);
}

Test(client, close_between_the_cancel_halves_drops_the_cancel)
{
	static halves h;
	memset(&h, 0, sizeof(h));
	h.close_client = true;
	aa_op *op = in_flight_halves("inproc", &h);
	// A closing client says one Goodbye instead of a Cancel each; the
	// server cancels the op as the client's connection ends.
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_cancel, 0);
	log_wait(AA_SEV_CANCELED, aa_client_op_id(op));
	aa_op_unref(op);
}

Test(client, in_flight_ipc)
{
	in_flight("ipc");
}
Test(client, in_flight_tcp)
{
	in_flight("tcp");
}

// ---- The server completes instead of cancelling ----

static void
server_completes_anyway(const char *kind)
{
	static seen s;
	seen_init(&s);
	S.stubborn = true;
	env_up(kind);
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.state, AA_CANCELED);
	// Wait until the server passed the Cancel to the real op, which
	// ignores it, then let the real op complete.
	while (atomic_load(&S.cancels) == 0) {
		sched_yield();
	}
	cr_assert_eq(aa_op_complete(S.held, NULL, 0, NULL), 0);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_status(op), AA_CANCELED,
	             "the client still "
	             "sees CANCELED");
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(aa_op_result(op, NULL, NULL), AA_ECANCELED);
	aa_server_stats ss;
	server_stats(&ss);
	cr_assert_eq(ss.completed, 1);
	cr_assert_eq(ss.wasted, 1, "work completed after the cancel");
	cr_assert_eq(atomic_load(&S.compensated), 1);
	aa_op_unref(op);
}

Test(client, server_completes_anyway_inproc)
{
	server_completes_anyway("inproc");
}
Test(client, server_completes_anyway_ipc)
{
	server_completes_anyway("ipc");
}

// ---- Timeline 3: already complete ----

static void
already_complete_result_in_hand(const char *kind)
{
	static seen s;
	seen_init(&s);
	env_up(kind);
	hold_arm(&hp_deliver);
	aa_op *op = call("echo", "x", &s);
	gate_wait(&hp_deliver.reached); // the Complete is in the client
	cr_assert_eq(hp_deliver.subject, op);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.calls), 1);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_ALREADY_COMPLETE);
	gate_open(&hp_deliver.release);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_cancel, 0, "nothing more was sent");
	cr_assert_eq(cs.late_dropped, 1);
	aa_server_stats ss;
	server_stats(&ss);
	cr_assert_eq(ss.completed, 1, "the server's log says success");
	aa_op_unref(op);
}

Test(client, already_complete_inproc)
{
	already_complete_result_in_hand("inproc");
}
Test(client, already_complete_ipc)
{
	already_complete_result_in_hand("ipc");
}

static void
already_complete_cancel_crosses(const char *kind)
{
	static seen s;
	seen_init(&s);
	env_up(kind);
	hold_arm(&hp_reply);
	aa_op *op = call("echo", "x", &s);
	gate_wait(&hp_reply.reached); // the server finished, not replied
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT,
	             "the client cannot know the result is on its way");
	gate_open(&hp_reply.release);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_ALREADY_COMPLETE,
	             "final with the settlement: the Complete said the "
	             "Cancel came after");
	// The server's log says success, then the Cancel "after
	// completion" (its receive thread was the one held).
	uint64_t id = aa_client_op_id(op);
	int completed = log_wait(AA_SEV_COMPLETED, id);
	int at = log_wait(AA_SEV_CANCEL_RECEIVED, id);
	cr_assert_lt(completed, at);
	cr_assert_not_null(strstr(L.recs[at].detail, "after completion"));
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_start, 1);
	cr_assert_eq(cs.sent_cancel, 1);
	cr_assert_eq(cs.recv_complete, 1);
	cr_assert_eq(cs.late_dropped, 1);
	cr_assert_eq(cs.in_flight, 0);
	cr_assert_eq(cs.already_complete, 1);
	aa_op_unref(op);
}

Test(client, already_complete_crossing_inproc)
{
	already_complete_cancel_crosses("inproc");
}
Test(client, already_complete_crossing_ipc)
{
	already_complete_cancel_crosses("ipc");
}

// ---- The timelines, end to end, per transport ----

// wait_settled_op waits for s's settle handler.
static void
expect_timeline(aa_op *op, seen *s, aa_timeline t, aa_settlement st)
{
	gate_wait(&s->settled);
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	cr_assert_eq(aa_op_error(op), AA_ECANCELED);
	cr_assert_eq(aa_client_timeline(op), t, "timeline %s",
	             aa_timeline_name(aa_client_timeline(op)));
	cr_assert_eq(aa_op_settlement(op), st);
}

// Every timeline over one transport, each classified finally, with the
// counters by timeline and what the server logged for the same op id.
static void
timelines(const char *kind)
{
	static seen s1, s2, s3, s4;
	seen_init(&s1);
	seen_init(&s2);
	seen_init(&s3);
	seen_init(&s4);
	env_up(kind);

	// Pre-submit: nothing on the wire.
	aa_client_cork(E.cli);
	aa_op *pre = call("echo", "x", &s1);
	cr_assert_eq(aa_op_cancel(pre, AA_CANCEL_TERMINAL), 0);
	aa_client_uncork(E.cli);
	expect_timeline(pre, &s1, AA_TIMELINE_PRE_SUBMIT,
	                AA_SETTLE_NEVER_STARTED);

	// In-flight: the server received the Cancel and cancelled.
	aa_op *inf = call("hold", "x", &s2);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_cancel(inf, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_client_timeline(inf), AA_TIMELINE_IN_FLIGHT);
	expect_timeline(inf, &s2, AA_TIMELINE_IN_FLIGHT, AA_SETTLE_CANCELED);
	uint64_t id = aa_client_op_id(inf);
	cr_assert_lt(log_wait(AA_SEV_CANCEL_RECEIVED, id),
	             log_wait(AA_SEV_CANCELED, id));

	// In-flight: the server received the Cancel and completed anyway.
	gate_init(&S.started);
	S.stubborn = true;
	aa_op *anyway = call("hold", "x", &s3);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_cancel(anyway, AA_CANCEL_TERMINAL), 0);
	id = aa_client_op_id(anyway);
	(void)log_wait(AA_SEV_CANCEL_RECEIVED, id);
	cr_assert_eq(aa_op_complete(S.held, NULL, 0, NULL), 0);
	expect_timeline(anyway, &s3, AA_TIMELINE_IN_FLIGHT,
	                AA_SETTLE_COMPLETED);
	cr_assert_lt(log_wait(AA_SEV_CANCEL_RECEIVED, id),
	             log_wait(AA_SEV_COMPLETED, id));
	S.stubborn = false;

	// Already-complete: the Complete and the Cancel cross.
	hold_arm(&hp_reply);
	aa_op *done = call("echo", "x", &s4);
	gate_wait(&hp_reply.reached);
	cr_assert_eq(aa_op_cancel(done, AA_CANCEL_TERMINAL), 0);
	id = aa_client_op_id(done);
	gate_open(&hp_reply.release);
	expect_timeline(done, &s4, AA_TIMELINE_ALREADY_COMPLETE,
	                AA_SETTLE_COMPLETED);
	cr_assert_lt(log_wait(AA_SEV_COMPLETED, id),
	             log_wait(AA_SEV_CANCEL_RECEIVED, id));

	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.pre_submit, 1);
	cr_assert_eq(cs.in_flight, 2);
	cr_assert_eq(cs.already_complete, 1);
	cr_assert_eq(cs.canceled, 4);
	cr_assert_eq(cs.sent_start, 3, "nothing for the pre-submit one");
	cr_assert_eq(cs.sent_cancel, 3);
	aa_server_stats ss;
	server_stats(&ss);
	cr_assert_eq(ss.cancels_received, 2);
	cr_assert_eq(ss.cancels_late, 1);
	// Completed anyway: wasted. The crossing Cancel came after the
	// Complete was sent (the server's receive thread was the one held),
	// so the server could not count that result as wasted.
	cr_assert_eq(ss.wasted, 1);
	aa_op_unref(pre);
	aa_op_unref(inf);
	aa_op_unref(anyway);
	aa_op_unref(done);
}

Test(client, timelines_inproc)
{
	timelines("inproc");
}
Test(client, timelines_ipc)
{
	timelines("ipc");
}
Test(client, timelines_tcp)
{
	timelines("tcp");
}

// The already-complete timeline with no checkpoint at all: the server
// holds its Complete (a slow link), the client cancels after the server
// logged success; the Complete then says the Cancel came after.
static void
already_complete_by_reply_delay(const char *kind)
{
	static seen s;
	seen_init(&s);
	// A slow link: the Complete waits 1.5 s, far more than the client
	// needs to cancel after the server logged success, also under TSan.
	L.reply_delay_ms = 1500;
	env_up(kind);
	aa_op *op = call("echo", "x", &s);
	uint64_t id = aa_client_op_id(op);
	(void)log_wait(AA_SEV_COMPLETED, id);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT);
	expect_timeline(op, &s, AA_TIMELINE_ALREADY_COMPLETE,
	                AA_SETTLE_COMPLETED);
	int completed = log_wait(AA_SEV_COMPLETED, id);
	int cancel = log_wait(AA_SEV_CANCEL_RECEIVED, id);
	int sent = log_wait(AA_SEV_REPLY_SENT, id);
	// The server logged success before the Cancel came (the reply may
	// go out before or after the server reads that Cancel: a slow link).
	cr_assert(completed >= 0 && completed < cancel && completed < sent,
	          "log order: completed %d, cancel_received %d, reply %d",
	          completed, cancel, sent);
	cr_assert_not_null(strstr(L.recs[cancel].detail, "after completion"));
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.already_complete, 1);
	cr_assert_eq(cs.in_flight, 0);
	aa_op_unref(op);
}

Test(client, already_complete_by_reply_delay_inproc)
{
	already_complete_by_reply_delay("inproc");
}
Test(client, already_complete_by_reply_delay_ipc)
{
	already_complete_by_reply_delay("ipc");
}
Test(client, already_complete_by_reply_delay_tcp)
{
	already_complete_by_reply_delay("tcp");
}

// A cancel that lands after a deadline took the op out but before it was
// failed still reports a real timeline (pre-submit: nothing was sent).
Test(client, cancel_between_done_and_failed_has_a_timeline)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_client_cork(E.cli);
	hold_arm(&hp_fail);
	aa_op *op;
	aa_call_opts co = {.deadline_ms = 1};
	cr_assert_eq(aa_client_call(&op, E.cli, "echo", "x", 1, &co, NULL), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &s), 0);
	gate_wait(&hp_fail.reached); // the deadline thread, about to fail
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	gate_open(&hp_fail.release);
	expect_timeline(op, &s, AA_TIMELINE_PRE_SUBMIT,
	                AA_SETTLE_NEVER_STARTED);
	aa_client_uncork(E.cli);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.pre_submit, 1);
	cr_assert_eq(cs.sent_start, 0);
	aa_op_unref(op);
}

// The same window after a loss: the server closes (its Goodbye) while an
// op runs; the link's receive thread took the op out and is about to fail
// it when the cancel lands. The Start was on the wire: in-flight, never
// "none"; the server's outcome stays unknown.
Test(client, cancel_between_done_and_failed_after_a_loss_is_in_flight)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	hold_arm(&hp_fail);
	aa_server_close(E.srv);
	gate_wait(&hp_fail.reached); // the receive thread, about to fail
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT);
	gate_open(&hp_fail.release);
	expect_timeline(op, &s, AA_TIMELINE_IN_FLIGHT, AA_SETTLE_UNKNOWN);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.in_flight, 1);
	cr_assert_eq(cs.canceled, 1);
	cr_assert_eq(cs.failed, 0);
	aa_op_unref(op);
}

// ---- Error domains ----

// Every application code, also those equal to an AA_E* code, comes back
// unchanged through aa_op_app_code; the library error is AA_EAPP.
Test(client, application_codes_never_collide_with_library_codes)
{
	env_up("ipc");
	int32_t codes[AA_ELAST + 5];
	int n = 0;
	for (int e = 1; e <= AA_ELAST; e++) {
		codes[n++] = e;
	}
	codes[n++] = 0;
	codes[n++] = -1;
	codes[n++] = INT32_MIN;
	codes[n++] = INT32_MAX;
	for (int i = 0; i < n; i++) {
		static seen s;
		seen_init(&s);
		char payload[16];
		snprintf(payload, sizeof(payload), "%d", (int)codes[i]);
		aa_op *op = call("fail_app", payload, &s);
		gate_wait(&s.done);
		gate_wait(&s.settled); // before s is reused
		cr_assert_eq(s.state, AA_ERROR);
		cr_assert_eq(aa_op_error(op), AA_EAPP);
		int32_t got = 12345;
		cr_assert_eq(aa_op_app_code(op, &got), 0);
		cr_assert_eq(got, codes[i]);
		cr_assert_str_eq(aa_op_error_msg(op), "app failure");
		cr_assert_eq(aa_op_result(op, NULL, NULL), AA_EAPP);
		aa_op_unref(op);
	}
	// A library failure has no application code.
	static seen s;
	seen_init(&s);
	aa_op *op = call("self_cancel", "x", &s);
	gate_wait(&s.done);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_error(op), AA_ESRVCANCEL,
	             "the server cancelled, not this client: %s",
	             aa_strerror(aa_op_error(op)));
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	cr_assert_eq(aa_op_app_code(op, NULL), AA_ESTATE);
	aa_op_unref(op);
}

// ---- Cancel from inside a handler, racing completion ----

Test(client, cancel_from_inside_the_completion_handler)
{
	static seen s;
	seen_init(&s);
	s.cancel_inside = true;
	env_up("inproc");
	aa_op *op = call("echo", "x", &s);
	gate_wait(&s.done);
	cr_assert_eq(s.cancel_inside_rv, AA_EALREADY);
	cr_assert_eq(s.state, AA_COMPLETED);
	aa_op_unref(op);
}

#ifdef AA_TSAN
#define RACE_ROUNDS 5000
#else
#define RACE_ROUNDS 100000
#endif

typedef struct race {
	atomic_int calls;
	atomic_int state;
} race;

static void
race_done(aa_op *op, void *arg)
{
	race *r = arg;
	atomic_store(&r->state, aa_op_status(op));
	atomic_fetch_add(&r->calls, 1);
}

Test(client, cancel_racing_completion, .timeout = 300)
{
	int cancel_won = 0;
	env_up("ipc");
	for (int i = 0; i < RACE_ROUNDS; i++) {
		race r = {0};
		aa_op *op;
		// Ops cancelled in flight stay pending until their late
		// Complete: a busy server can push the client to its pending
		// limit, which is flow control, not a failure.
		int crv;
		while ((crv = aa_client_call(&op, E.cli, "echo", "r", 1, NULL,
		                             NULL)) == AA_ELIMIT) {
			sched_yield();
		}
		cr_assert_eq(crv, 0, "call: %s", aa_strerror(crv));
		cr_assert_eq(aa_op_set_handler(op, race_done, &r), 0);
		// Spin a little so that both orders happen.
		for (int k = i % 64; k > 0; k--) {
			sched_yield();
		}
		int rv = aa_op_cancel(op, AA_CANCEL_TERMINAL);
		// After cancel returns the handler has run (it may have run
		// on the receive thread, and cancel waited for it).
		if (atomic_load(&r.calls) != 1) {
			cr_assert_fail("round %d: handler ran %d times", i,
			               atomic_load(&r.calls));
		}
		aa_state st = aa_op_status(op);
		if ((rv == 0 && st != AA_CANCELED) ||
		    (rv == AA_EALREADY && st != AA_COMPLETED) ||
		    atomic_load(&r.state) != (int)st) {
			cr_assert_fail("round %d: cancel %d, state %d, "
			               "handler saw %d",
			               i, rv, st, atomic_load(&r.state));
		}
		cancel_won += rv == 0;
		aa_op_unref(op);
	}
	test_note("cancel won %d of %d", cancel_won, RACE_ROUNDS);
	// Every op ends: nothing left pending on either side.
	aa_client_free(E.cli);
	E.cli = NULL;
	aa_server_stats ss;
	server_stats(&ss);
	cr_assert_eq(ss.pending, 0);
}

// ---- Many pending ops ----

#ifdef AA_TSAN
#define MANY 2000
#else
#define MANY 10000
#endif

Test(client, cancel_all_pending, .timeout = 120)
{
	static aa_op *ops[MANY];
	static seen s[MANY];
	server_up(&E, "ipc", MANY);
	client_up(&E, 0);
	for (int i = 0; i < MANY; i++) {
		seen_init(&s[i]);
		ops[i] = call("park", NULL, &s[i]);
	}
	uint64_t t0 = aa_clock_us();
	cr_assert_eq(aa_client_cancel_all(E.cli, AA_CANCEL_TERMINAL), MANY);
	uint64_t t1 = aa_clock_us();
	test_note("cancel-all of %d pending: %llu us", MANY,
	          (unsigned long long)(t1 - t0));
	for (int i = 0; i < MANY; i++) {
		cr_assert_eq(atomic_load(&s[i].calls), 1);
		cr_assert_eq(aa_op_status(ops[i]), AA_CANCELED);
	}
	// The server hears of every one and cancels the real ops.
	for (int i = 0; i < MANY; i++) {
		gate_wait(&s[i].settled);
		cr_assert_neq(aa_op_settlement(ops[i]), AA_SETTLE_PENDING);
		aa_op_unref(ops[i]);
	}
	aa_server_stats ss;
	server_stats(&ss);
	cr_assert_eq(ss.pending, 0);
}

Test(client, close_with_pending_ops)
{
	static seen s[3];
	env_up("ipc");
	aa_op *ops[3];
	for (int i = 0; i < 3; i++) {
		seen_init(&s[i]);
		ops[i] = call("park", NULL, &s[i]);
	}
	aa_client_close(E.cli);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&s[i].calls), 1);
		cr_assert_eq(s[i].state, AA_CANCELED);
	}
	aa_op *late = NULL;
	cr_assert_eq(aa_client_call(&late, E.cli, "echo", "x", 1, NULL, NULL),
	             AA_ECLOSED);
	aa_client_free(E.cli);
	E.cli = NULL;
	for (int i = 0; i < 3; i++) {
		aa_op_unref(ops[i]);
	}
	// The server cancels every real op of a client that left.
	aa_server_free(E.srv);
	E.srv = NULL;
}

// ---- Deadlines and progress ----

Test(client, deadline_ends_the_op_in_error)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_op *op;
	aa_call_opts co = {.deadline_ms = 30};
	cr_assert_eq(aa_client_call(&op, E.cli, "hold", "x", 1, &co, NULL), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_ETIMEDOUT, "error %d: %s",
	             aa_op_error(op), aa_op_error_msg(op));
	// The server's late answer settles it: the real op was cancelled
	// (by the client's Cancel or the server's own deadline).
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &s), 0);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	aa_op_unref(op);
}

// A late Complete after the client's own deadline settles the op with
// what the server really did: here the real op ignores cancellation and
// completes after the client gave up.
Test(client, late_complete_after_a_deadline_settles_with_the_real_outcome)
{
	static seen s;
	seen_init(&s);
	S.stubborn = true;
	env_up("ipc");
	aa_op *op;
	aa_call_opts co = {.deadline_ms = 30};
	cr_assert_eq(aa_client_call(&op, E.cli, "hold", "x", 1, &co, NULL), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, &s), 0);
	gate_wait(&S.started);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_ETIMEDOUT);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_PENDING,
	             "the real op still runs");
	cr_assert_eq(aa_op_complete(S.held, NULL, 0, NULL), 0);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	cr_assert_eq(aa_op_status(op), AA_ERROR, "it stays timed out");
	cr_assert_eq(aa_op_error(op), AA_ETIMEDOUT);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.canceled, 0, "a deadline is not a cancel");
	aa_op_unref(op);
}

// Start carries the time left of the deadline, not its first value.
Test(client, start_carries_the_time_left)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_client_cork(E.cli);
	aa_op *op;
	aa_call_opts co = {.deadline_ms = 60000};
	uint64_t t0 = aa_clock_us();
	cr_assert_eq(aa_client_call(&op, E.cli, "deadline", "x", 1, &co, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	while (aa_clock_us() - t0 < 25000) {
		sched_yield(); // the call waits, corked, for 25 ms at least
	}
	aa_client_uncork(E.cli);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED);
	unsigned got = atomic_load(&deadline_seen);
	cr_assert(got > 0 && got <= 60000 - 20, "Start said %u ms", got);
	aa_op_unref(op);
}

typedef struct prog {
	atomic_int n;
	gate got;
} prog;

static void
on_prog(aa_op *op, void *arg, const void *data, size_t len)
{
	prog *p = arg;
	if (len == 3 && memcmp(data, "50%", 3) == 0) {
		atomic_fetch_add(&p->n, 1);
		gate_open(&p->got);
	}
}

Test(client, progress_is_forwarded)
{
	static seen s;
	prog p = {0};
	seen_init(&s);
	gate_init(&p.got);
	env_up("ipc");
	aa_op *op;
	cr_assert_eq(aa_client_call(&op, E.cli, "hold", "x", 1, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_progress_handler(op, on_prog, &p), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&S.started);
	// The server sets its progress handler on the real op just after
	// the method returns: a report before that has nobody to go to.
	while (!gate_is_open(&p.got)) {
		cr_assert_eq(aa_op_progress(S.held, "50%", 3), 0);
		sched_yield();
	}
	cr_assert_eq(aa_op_complete(S.held, NULL, 0, NULL), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED);
	cr_assert_geq(atomic_load(&p.n), 1);
	aa_op_unref(op);
}

// ---- The server goes away ----

Test(client, server_close_ends_ops_unavailable)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	aa_server_close(E.srv);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_EUNAVAIL);
	cr_assert_str_eq(aa_op_error_msg(op), "server shutting down",
	                 "the Goodbye's reason and text reach the op");
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_UNKNOWN);
	aa_op *late = NULL;
	cr_assert_neq(aa_client_call(&late, E.cli, "echo", "x", 1, NULL, NULL),
	              0);
	aa_op_unref(op);
}

// The server closes while a method runs, and the Start path sees the
// closed server right after the method returns, while close itself is
// held just after it marked the server closed: the op still ends with the
// Goodbye's AA_EUNAVAIL (before the fix, the Start path cancelled the op
// and sent Complete{CANCELED} ahead of the Goodbye).
static void *
close_main(void *arg)
{
	aa_server_close(arg);
	return NULL;
}

Test(client, server_close_while_method_runs_is_unavailable)
{
	static seen s;
	static gate method_may_return;
	seen_init(&s);
	gate_init(&method_may_return);
	S.hold_returns = &method_may_return;
	env_up("inproc");
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	hold_arm(&hp_closing);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, close_main, E.srv), 0);
	gate_wait(&hp_closing.reached);
	gate_open(&method_may_return); // the Start path now sees "closed"
	gate_wait(&s.done);
	gate_open(&hp_closing.release);
	pthread_join(t, NULL);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_EUNAVAIL, "%s",
	             aa_strerror(aa_op_error(op)));
	aa_op_unref(op);
}

// Close racing the Start path, many times: the method has just started
// (the receive thread is about to check whether the server closed) when
// the server closes. Whatever the moment, the op ends with the Goodbye's
// AA_EUNAVAIL, never with a Complete saying CANCELED.
Test(client, server_close_racing_start_always_unavailable)
{
	static seen s;
	for (int round = 0; round < 300; round++) {
		seen_init(&s);
		gate_init(&S.started);
		env_up("inproc");
		aa_op *op = call("hold", "x", &s);
		gate_wait(&S.started);
		aa_server_close(E.srv);
		gate_wait(&s.done);
		cr_assert_eq(s.state, AA_ERROR, "round %d", round);
		cr_assert_eq(aa_op_error(op), AA_EUNAVAIL, "round %d: %s",
		             round, aa_strerror(aa_op_error(op)));
		aa_op_unref(op);
		aa_client_free(E.cli);
		E.cli = NULL;
		aa_server_free(E.srv);
		E.srv = NULL;
		aa_op_unref(S.held);
		S.held = NULL;
	}
}

// ---- Teardown from several threads ----

typedef struct lifecycle_call {
	thr t;
	void *obj;
	int rv;
	gate done;
} lifecycle_call;

static void *
client_close_main(void *arg)
{
	lifecycle_call *l = arg;
	aa_client_close(l->obj);
	gate_open(&l->done);
	return NULL;
}

static void *
client_stop_main(void *arg)
{
	lifecycle_call *l = arg;
	l->rv = aa_client_stop(l->obj);
	gate_open(&l->done);
	return NULL;
}

static void *
server_close_main(void *arg)
{
	lifecycle_call *l = arg;
	aa_server_close(l->obj);
	gate_open(&l->done);
	return NULL;
}

static void *
server_stop_main(void *arg)
{
	lifecycle_call *l = arg;
	l->rv = aa_server_stop(l->obj);
	gate_open(&l->done);
	return NULL;
}

static void
lifecycle_start(lifecycle_call *l, void *(*fn)(void *), void *obj)
{
	l->obj = obj;
	l->rv = -1;
	gate_init(&l->done);
	thr_start(&l->t, fn, l);
}

// A close held on one thread (its link's connection not closed yet) while
// the link goes down and stop runs on another: stop waits for the close,
// which then closes a connection that is still there (before, stop freed
// it under the close).
Test(client, stop_waits_for_a_close_running_on_another_thread)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	hold_arm(&hp_cclosing);
	lifecycle_call closer, stopper;
	lifecycle_start(&closer, client_close_main, E.cli);
	gate_wait(&hp_cclosing.reached);
	cr_assert_eq(s.state, AA_CANCELED, "close cancelled the op");
	aa_server_close(E.srv); // the link goes down meanwhile
	lifecycle_start(&stopper, client_stop_main, E.cli);
	cr_assert(!gate_wait_ms(&stopper.done, 300),
	          "stop returned while a close still ran");
	gate_open(&hp_cclosing.release);
	thr_join(&closer.t);
	thr_join(&stopper.t);
	cr_assert_eq(stopper.rv, 0);
	aa_op_unref(op);
}

// The same on the server: stop frees the listeners only after a close
// running on another thread is done with them.
Test(client, server_stop_waits_for_a_close_running_on_another_thread)
{
	env_up("ipc");
	hold_arm(&hp_closing);
	lifecycle_call closer, stopper;
	lifecycle_start(&closer, server_close_main, E.srv);
	gate_wait(&hp_closing.reached);
	lifecycle_start(&stopper, server_stop_main, E.srv);
	cr_assert(!gate_wait_ms(&stopper.done, 300),
	          "stop returned while a close still ran");
	gate_open(&hp_closing.release);
	thr_join(&closer.t);
	thr_join(&stopper.t);
	cr_assert_eq(stopper.rv, 0);
}

static void *
client_free_main(void *arg)
{
	lifecycle_call *l = arg;
	aa_client_free(l->obj);
	gate_open(&l->done);
	return NULL;
}

static void *
server_free_main(void *arg)
{
	lifecycle_call *l = arg;
	aa_server_free(l->obj);
	gate_open(&l->done);
	return NULL;
}

// A stop held on one thread (counted, not closed yet) while free runs on
// another: free closes, stops and then waits for the other stop before it
// destroys the client (before, it freed the client under that stop, which
// then locked a destroyed mutex in freed memory).
Test(client, free_waits_for_a_stop_running_on_another_thread)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	hold_arm(&hp_cstopping);
	lifecycle_call stopper, freer;
	lifecycle_start(&stopper, client_stop_main, E.cli);
	gate_wait(&hp_cstopping.reached);
	lifecycle_start(&freer, client_free_main, E.cli);
	gate_wait(&s.done); // the free's close cancelled the op
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert(!gate_wait_ms(&freer.done, 300),
	          "free returned while a stop still ran");
	gate_open(&hp_cstopping.release);
	thr_join(&stopper.t);
	thr_join(&freer.t);
	cr_assert_eq(stopper.rv, 0);
	E.cli = NULL;
	aa_op_unref(op);
}

// The same on the server: a stop held on one thread, free on another.
Test(client, server_free_waits_for_a_stop_running_on_another_thread)
{
	env_up("ipc");
	hold_arm(&hp_stopping);
	lifecycle_call stopper, freer;
	lifecycle_start(&stopper, server_stop_main, E.srv);
	gate_wait(&hp_stopping.reached);
	lifecycle_start(&freer, server_free_main, E.srv);
	cr_assert(!gate_wait_ms(&freer.done, 300),
	          "free returned while a stop still ran");
	gate_open(&hp_stopping.release);
	thr_join(&stopper.t);
	thr_join(&freer.t);
	cr_assert_eq(stopper.rv, 0);
	E.srv = NULL;
}

// Three stops (each closes too) and the server's close racing, then a
// free on a fifth thread as soon as the three stops have begun, while
// they may still run: the free waits for them. Many rounds (under ASan
// and TSan in CI).
Test(client, free_racing_stops_on_several_threads, .timeout = 120)
{
#ifdef AA_TSAN
	const int rounds = 30;
#else
	const int rounds = 150;
#endif
	for (int round = 0; round < rounds; round++) {
		env_up("inproc");
		aa_op *ops[4];
		for (int i = 0; i < 4; i++) {
			cr_assert_eq(aa_client_call(&ops[i], E.cli, "park",
			                            "x", 1, NULL, NULL),
			             0);
		}
		atomic_store(&stops_entered, 0);
		lifecycle_call st[3], sc, fr;
		for (int i = 0; i < 3; i++) {
			lifecycle_start(&st[i], client_stop_main, E.cli);
		}
		lifecycle_start(&sc, server_close_main, E.srv);
		while (atomic_load(&stops_entered) < 3) {
			sched_yield();
		}
		lifecycle_start(&fr, client_free_main, E.cli);
		for (int i = 0; i < 3; i++) {
			thr_join(&st[i].t);
			cr_assert_eq(st[i].rv, 0);
		}
		thr_join(&sc.t);
		thr_join(&fr.t);
		E.cli = NULL;
		for (int i = 0; i < 4; i++) {
			cr_assert_neq(aa_op_status(ops[i]), AA_STARTED);
			aa_op_unref(ops[i]);
		}
		aa_server_free(E.srv);
		E.srv = NULL;
	}
}

// close, stop and close again racing on three threads with ops pending,
// then free; many rounds (under ASan and TSan in CI).
Test(client, close_and_stop_race_on_several_threads, .timeout = 120)
{
#ifdef AA_TSAN
	const int rounds = 30;
#else
	const int rounds = 150;
#endif
	for (int round = 0; round < rounds; round++) {
		env_up("inproc");
		aa_op *ops[8];
		for (int i = 0; i < 8; i++) {
			cr_assert_eq(aa_client_call(&ops[i], E.cli, "park",
			                            "x", 1, NULL, NULL),
			             0);
		}
		lifecycle_call a, b, c2, d;
		lifecycle_start(&a, client_close_main, E.cli);
		lifecycle_start(&b, client_stop_main, E.cli);
		lifecycle_start(&c2, client_close_main, E.cli);
		lifecycle_start(&d, server_close_main, E.srv);
		thr_join(&a.t);
		thr_join(&b.t);
		thr_join(&c2.t);
		thr_join(&d.t);
		cr_assert_eq(b.rv, 0);
		for (int i = 0; i < 8; i++) {
			cr_assert_neq(aa_op_status(ops[i]), AA_STARTED);
			aa_op_unref(ops[i]);
		}
		aa_client_free(E.cli);
		E.cli = NULL;
		aa_server_free(E.srv);
		E.srv = NULL;
	}
}

// The other process: aa_test_peer (tests/peer), started with fork and
// exec; its stdout says "ready" once it listens or has called.
static pid_t
spawn_peer(const char *role, const char *url, const char *hb_ms)
{
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		close(fds[0]);
		close(fds[1]);
		execl(AA_TEST_PEER, AA_TEST_PEER, role, url, hb_ms,
		      (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	char buf[8] = {0};
	cr_assert_eq(read(fds[0], buf, 6), 6, "the %s peer did not start",
	             role);
	cr_assert_eq(memcmp(buf, "ready\n", 6), 0);
	close(fds[0]);
	return pid;
}

static void
ipc_url(env *e)
{
	strcpy(e->dir, "/tmp/aa-test-XXXXXX");
	cr_assert_not_null(mkdtemp(e->dir));
	snprintf(e->url, sizeof(e->url), "ipc://%s/s.sock", e->dir);
}

static void
server_process_vanishes(int sig)
{
	static seen s;
	seen_init(&s);
	ipc_url(&E);
	pid_t pid = spawn_peer("server", E.url, "50");
	aa_client_opts co = {
	    .url = E.url, .heartbeat_ms = 50, .dead_after_ms = 300};
	cr_assert_eq(aa_client_open(&E.cli, &co), 0);
	aa_op *op = call("park", NULL, &s);
	uint64_t t0 = aa_clock_us();
	kill(pid, sig);
	gate_wait(&s.done);
	uint64_t waited = aa_clock_us() - t0;
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_ECONNLOST);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_UNKNOWN);
	test_note("signal %d: op ended after %llu us", sig,
	          (unsigned long long)waited);
	aa_op_unref(op);
	aa_client_free(E.cli);
	E.cli = NULL;
	kill(pid, SIGKILL);
	kill(pid, SIGCONT);
	waitpid(pid, NULL, 0);
}

Test(client, server_killed)
{
	server_process_vanishes(SIGKILL);
}
Test(client, server_stopped_is_found_by_heartbeats)
{
	server_process_vanishes(SIGSTOP);
}

Test(client, client_process_killed_server_cancels_its_ops)
{
	ipc_url(&E);
	server_up(&E, "ipc", 0);
	pid_t pid = spawn_peer("client", E.url, NULL);
	// The peer said ready after its call: wait until the server runs
	// it (its Start may still be on the way).
	aa_server_stats ss;
	do {
		sched_yield();
		server_stats(&ss);
	} while (ss.started == 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	do {
		sched_yield();
		server_stats(&ss);
	} while (ss.pending != 0);
	cr_assert_eq(ss.orphaned, 1, "the real op was cancelled");
}

Test(client, reconnects_after_the_server_restarts)
{
	static seen s1, s2;
	seen_init(&s1);
	seen_init(&s2);
	server_up(&E, "ipc", 0);
	aa_client_opts co = {.url = E.url, .reconnect = true};
	cr_assert_eq(aa_client_open(&E.cli, &co), 0);
	aa_op *a = call("echo", "one", &s1);
	gate_wait(&s1.done);
	uint64_t first_id = aa_client_op_id(a);
	aa_op_unref(a);

	aa_server_free(E.srv); // the server goes away...
	E.srv = NULL;
	while (aa_client_conn_id(E.cli) != 0) { // ...and the client sees it
		sched_yield();
	}
	server_up(&E, "ipc", 0); // a new server on the same address

	aa_op *b = call("echo", "two", &s2);
	gate_wait(&s2.done);
	cr_assert_eq(s2.state, AA_COMPLETED);
	cr_assert_gt(aa_client_op_id(b), first_id, "ids never repeat");
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.connects, 2);
	aa_op_unref(b);
}

// With reconnect set, a call made while there is no connection returns at
// once (the dial runs on a thread of its own, held here at its
// checkpoint): cancelled, it sends nothing; a failed reconnect fails the
// calls queued meanwhile; a good one sends them.
Test(client, a_call_while_reconnecting_never_blocks)
{
	static seen s1, s2, s3, s4;
	seen_init(&s1);
	seen_init(&s2);
	seen_init(&s3);
	seen_init(&s4);
	server_up(&E, "ipc", 0);
	aa_client_opts co = {.url = E.url, .reconnect = true};
	cr_assert_eq(aa_client_open(&E.cli, &co), 0);
	aa_op *a = call("echo", "one", &s1);
	gate_wait(&s1.done);
	aa_server_free(E.srv); // the server goes away...
	E.srv = NULL;
	while (aa_client_conn_id(E.cli) != 0) { // ...and the client sees it
		sched_yield();
	}
	aa_client_stats before, after;
	client_stats(&before);

	// No server: the reconnect is held before it dials.
	hold_arm(&hp_reconnect);
	aa_op *b = call("echo", "two", &s2); // returns, though nobody dials
	gate_wait(&hp_reconnect.reached);
	cr_assert_eq(aa_op_status(b), AA_STARTED);
	cr_assert_eq(aa_op_cancel(b, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_client_timeline(b), AA_TIMELINE_PRE_SUBMIT);
	aa_op *c = call("echo", "three", &s3);
	gate_open(&hp_reconnect.release); // the dial finds no server
	gate_wait(&s3.done);
	cr_assert_eq(s3.state, AA_ERROR);
	cr_assert_neq(aa_op_error(c), 0);
	test_note("a failed reconnect: %s", aa_strerror(aa_op_error(c)));
	cr_assert_eq(aa_op_settlement(c), AA_SETTLE_NEVER_STARTED);
	client_stats(&after);
	cr_assert_eq(after.sent_start, before.sent_start, "nothing was sent");
	cr_assert_eq(after.sent_cancel, before.sent_cancel,
	             "no Cancel either");

	// A server again: the reconnect succeeds and sends what queued.
	server_up(&E, "ipc", 0);
	hold_arm(&hp_reconnect);
	aa_op *d = call("echo", "four", &s4);
	gate_wait(&hp_reconnect.reached);
	cr_assert_eq(aa_op_status(d), AA_STARTED);
	gate_open(&hp_reconnect.release);
	gate_wait(&s4.done);
	cr_assert_eq(s4.state, AA_COMPLETED);
	client_stats(&after);
	cr_assert_eq(after.connects, 2);
	aa_op_unref(a);
	aa_op_unref(b);
	aa_op_unref(c);
	aa_op_unref(d);
}

// The same from a library thread: the server's Goodbye ends a call on the
// link's receive thread, and its handler calls again there. That call
// starts the reconnect and returns at once (the reconnect is held, and
// released only after the call returned: a call that dialled would wait
// here for ever), queues, and goes out once the reconnect is done.
static struct {
	aa_client *c;
	int rv;
	aa_op *op;
	pthread_t thread;
	gate returned;
} from_handler;

static void
call_again_from_handler(aa_op *op, void *arg)
{
	(void)arg;
	from_handler.thread = pthread_self();
	cr_assert_eq(aa_op_error(op), AA_EUNAVAIL);
	from_handler.rv = aa_client_call(&from_handler.op, from_handler.c,
	                                 "echo", "again", 5, NULL, NULL);
	gate_open(&from_handler.returned);
}

Test(client, a_call_from_a_receive_thread_handler_never_blocks)
{
	static seen s;
	seen_init(&s);
	gate_init(&from_handler.returned);
	server_up(&E, "ipc", 0);
	aa_client_opts co = {.url = E.url, .reconnect = true};
	cr_assert_eq(aa_client_open(&E.cli, &co), 0);
	from_handler.c = E.cli;
	aa_op *first;
	cr_assert_eq(aa_client_call(&first, E.cli, "hold", "x", 1, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(first, call_again_from_handler, NULL),
	             0);
	gate_wait(&S.started);
	hold_arm(&hp_reconnect);
	aa_server_close(E.srv);            // its Goodbye ends the call
	gate_wait(&from_handler.returned); // while the reconnect is held
	cr_assert(!pthread_equal(from_handler.thread, pthread_self()),
	          "the handler ran on the link's thread");
	cr_assert_eq(from_handler.rv, 0);
	cr_assert_eq(aa_op_status(from_handler.op), AA_STARTED);
	cr_assert_eq(aa_op_set_handler(from_handler.op, on_done, &s), 0);
	aa_server_free(E.srv);
	E.srv = NULL;
	aa_op_unref(S.held);
	S.held = NULL;
	server_up(&E, "ipc", 0); // a server again, same address
	gate_wait(&hp_reconnect.reached);
	gate_open(&hp_reconnect.release);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED, "%s",
	             aa_strerror(aa_op_error(from_handler.op)));
	aa_op_unref(from_handler.op);
	aa_op_unref(first);
}

Test(client, tls_in_flight_and_a_client_that_trusts_another_ca)
{
	static seen s;
	seen_init(&s);
	strcpy(E.dir, "/tmp/aa-test-XXXXXX");
	cr_assert_not_null(mkdtemp(E.dir));
	make_test_certs(E.dir);
	char ca[128], other[128];
	snprintf(tls_cert, sizeof(tls_cert), "%s/server.pem", E.dir);
	snprintf(tls_key, sizeof(tls_key), "%s/server.key", E.dir);
	snprintf(ca, sizeof(ca), "%s/ca.pem", E.dir);
	snprintf(other, sizeof(other), "%s/other-ca.pem", E.dir);
	server_up(&E, "tls", 0);

	// A client that trusts another CA cannot connect.
	aa_client *bad;
	aa_client_opts bo = {.url = E.url,
	                     .tls_ca_file = other,
	                     .tls_server_name = "localhost",
	                     .tls_verify = true,
	                     .connect_timeout_ms = 3000};
	int rv = aa_client_open(&bad, &bo);
	cr_assert_neq(rv, 0, "verification must fail");
	test_note("wrong CA: %s", aa_strerror(rv));

	aa_client_opts co = {.url = E.url,
	                     .tls_ca_file = ca,
	                     .tls_server_name = "localhost",
	                     .tls_verify = true};
	cr_assert_eq(aa_client_open(&E.cli, &co), 0);
	aa_op *op = call("hold", "x", &s);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	aa_op_unref(op);
}

Test(client, queued_ops_end_when_the_connection_is_lost)
{
	static seen s;
	seen_init(&s);
	env_up("ipc");
	aa_client_cork(E.cli); // the Start stays queued
	aa_op *op = call("echo", "x", &s);
	aa_server_free(E.srv); // the server goes away meanwhile
	E.srv = NULL;
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	// The server shut down (its Goodbye): every op of a closing server
	// ends with AA_EUNAVAIL, also one that was never sent.
	cr_assert_eq(aa_op_error(op), AA_EUNAVAIL, "%s",
	             aa_strerror(aa_op_error(op)));
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_NEVER_STARTED);
	aa_client_uncork(E.cli);
	aa_op_unref(op);
}

Test(client, parent_cancels_while_the_call_is_set_up)
{
	static seen s, e;
	seen_init(&s);
	seen_init(&e);
	env_up("ipc");
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	aa_assoc a = {.slot = aa_cancel_signal_slot(sig)};
	aa_op *op = NULL;
	emit_at_connect = sig; // the parent cancels inside aa_op_alloc
	cr_assert_eq(aa_client_call(&op, E.cli, "echo", "x", 1, NULL, &a), 0);
	emit_at_connect = NULL;
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_PRE_SUBMIT);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_NEVER_STARTED);
	cr_assert(!aa_cancel_slot_is_connected(a.slot));
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	cr_assert_eq(atomic_load(&s.calls), 1);
	// Nothing was sent for it, and the client still works.
	aa_op *probe = call("echo", "p", &e);
	gate_wait(&e.done);
	cr_assert_eq(e.state, AA_COMPLETED);
	aa_client_stats cs;
	client_stats(&cs);
	cr_assert_eq(cs.sent_start, 1);
	aa_op_unref(probe);
	aa_op_unref(op);
	aa_cancel_signal_free(sig);
}

Test(client, a_call_that_fails_after_its_op_was_made_releases_its_slot)
{
	env_up("ipc");
	aa_cancel_signal *sig;
	cr_assert_eq(aa_cancel_signal_alloc(&sig), 0);
	aa_assoc a = {.slot = aa_cancel_signal_slot(sig)};
	aa_op *op = NULL;
	close_at_connect = E.cli; // the client closes during the call
	cr_assert_eq(aa_client_call(&op, E.cli, "echo", "x", 1, NULL, &a),
	             AA_ECLOSED);
	close_at_connect = NULL;
	cr_assert_null(op);
	cr_assert(!aa_cancel_slot_is_connected(a.slot),
	          "the failed call's op must not keep the parent's slot");
	aa_cancel_signal_free(sig); // and nothing leaks (suite fini)
}

static void
free_client_in_handler(aa_op *op, void *arg)
{
	(void)op;
	aa_client_free(arg); // inside close: deferred, not a deadlock
}

Test(client, handler_frees_the_client_during_close)
{
	env_up("ipc");
	aa_op *op;
	cr_assert_eq(aa_client_call(&op, E.cli, "park", NULL, 0, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, free_client_in_handler, E.cli), 0);
	aa_client_close(E.cli); // returns: the free is deferred
	E.cli = NULL;
	cr_assert_eq(aa_op_status(op), AA_CANCELED);
	aa_op_unref(op);
	while (aa_live(AA_LIVE_CLIENT) != 0) { // the deferred free ends
		sched_yield();
	}
}
