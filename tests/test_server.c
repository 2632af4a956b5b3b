// aa-test-labels: concurrent
// test_server.c: the server layer (aa/server.h), driven over inproc and ipc
// by a raw test client made of the internal transport and wire codec (the
// client layer is not used): handshake, echo, rejections, limits, bad
// input, Cancel, compensation, client loss, deadlines, progress, close and
// stop, checkpoints. Races are forced with gates and the server's log,
// never with sleeps.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <aa/client.h>
#include <aa/server.h>

#include "../common/src/transport.h"
#include "../common/src/wire.h"
#include "../common/src/wire_send.h"
#include "methods.h"
#include "testutil.h"

#define WAIT_S 20 // a generous bound that only a bug reaches

static void
deadline_in(struct timespec *ts, int s)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += s;
}

// ---- the raw test client ----

typedef struct rmsg {
	aai_wire_kind kind;
	uint64_t op_id;
	int status;
	uint32_t error; // Complete.error or Goodbye.reason
	uint8_t payload[256];
	size_t plen;
	uint64_t conn_id;
	uint32_t max_pending;
	size_t n_methods;
	char method[8][32];
	uint32_t mtypes[8];
	uint32_t heartbeat_ms; // Hello
	bool cancel_received;  // Complete
	int32_t app_code;      // Complete
	char text[128];        // Complete.message or Goodbye.message
	bool taken;
} rmsg;

typedef struct rawc {
	aai_conn *c;
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	rmsg msgs[64];
	int n; // messages kept (heartbeats are not)
	bool down;
	int down_err;
	aai_wire_arena arena;
	uint8_t abuf[16384];
} rawc;

static void
rawc_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	rawc *r = arg;
	aai_wire_msg m;
	const char *why;
	int rv = aai_wire_decode(&m, &why, &r->arena, data, len, 0);
	pthread_mutex_lock(&r->mtx);
	if (rv == 0 && m.kind != AAI_WIRE_HEARTBEAT && r->n < 64) {
		rmsg *x = &r->msgs[r->n++];
		memset(x, 0, sizeof(*x));
		x->kind = m.kind;
		x->op_id = m.op_id;
		if (m.kind == AAI_WIRE_COMPLETE) {
			x->status = m.complete.status;
			x->error = m.complete.error;
			x->cancel_received = m.complete.cancel_received;
			x->app_code = m.complete.app_code;
			snprintf(x->text, sizeof(x->text), "%s",
			         m.complete.message ? m.complete.message : "");
			x->plen = m.complete.payload_len < 256
			              ? m.complete.payload_len
			              : 256;
			if (x->plen > 0) {
				memcpy(x->payload, m.complete.payload,
				       x->plen);
			}
		} else if (m.kind == AAI_WIRE_PROGRESS) {
			x->plen = m.progress.payload_len < 256
			              ? m.progress.payload_len
			              : 256;
			if (x->plen > 0) {
				memcpy(x->payload, m.progress.payload,
				       x->plen);
			}
		} else if (m.kind == AAI_WIRE_GOODBYE) {
			x->error = m.goodbye.reason;
			snprintf(x->text, sizeof(x->text), "%s",
			         m.goodbye.message ? m.goodbye.message : "");
		} else if (m.kind == AAI_WIRE_HELLO) {
			x->conn_id = m.hello.conn_id;
			x->heartbeat_ms = m.hello.heartbeat_ms;
			x->max_pending = m.hello.max_pending;
			x->n_methods = m.hello.n_methods;
			for (size_t i = 0; i < m.hello.n_methods && i < 8;
			     i++) {
				snprintf(x->method[i], 32, "%s",
				         m.hello.methods[i].name);
				x->mtypes[i] = m.hello.methods[i].cancel_types;
			}
		}
	}
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mtx);
}

static void
rawc_down(void *arg, aai_conn *c, int err)
{
	rawc *r = arg;
	pthread_mutex_lock(&r->mtx);
	r->down = true;
	r->down_err = err;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mtx);
}

static const aai_tp_opts *dial_opts;  // NULL: plain defaults
static uint32_t hello_max = 1u << 20; // the raw client's max message size

// rawc_dial connects without a handshake.
static rawc *
rawc_dial(const char *url)
{
	rawc *r = calloc(1, sizeof(*r));
	cr_assert_not_null(r);
	pthread_mutex_init(&r->mtx, NULL);
	pthread_cond_init(&r->cv, NULL);
	aai_wire_arena_init(&r->arena, r->abuf, sizeof(r->abuf));
	aai_tp_opts o = {.connect_timeout_ms = 5000};
	if (dial_opts != NULL) {
		o = *dial_opts;
	}
	cr_assert_eq(aai_dial(&r->c, url, &o), 0);
	static const aai_conn_cbs cbs = {.frame = rawc_frame,
	                                 .down = rawc_down};
	aai_conn_start(r->c, &cbs, r);
	return r;
}

static void
rawc_free(rawc *r)
{
	aai_conn_free(r->c);
	aai_wire_arena_fini(&r->arena);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mtx);
	free(r);
}

static void
rawc_send(rawc *r, const aai_wire_msg *m)
{
	cr_assert_eq(aai_wire_send(r->c, m, 0), 0);
}

// rawc_wait takes the first unread message of kind (and op id, if
// nonzero), waiting for it.
#define rawc_wait(r, kind, id) rawc_wait_at(r, kind, id, __LINE__)

static rmsg
rawc_wait_at(rawc *r, aai_wire_kind kind, uint64_t op_id, int line)
{
	struct timespec ts;
	deadline_in(&ts, WAIT_S);
	pthread_mutex_lock(&r->mtx);
	for (;;) {
		for (int i = 0; i < r->n; i++) {
			rmsg *x = &r->msgs[i];
			if (!x->taken && x->kind == kind &&
			    (op_id == 0 || x->op_id == op_id)) {
				x->taken = true;
				rmsg copy = *x;
				pthread_mutex_unlock(&r->mtx);
				return copy;
			}
		}
		int rv = pthread_cond_timedwait(&r->cv, &r->mtx, &ts);
		if (rv != 0) {
			pthread_mutex_unlock(&r->mtx);
			cr_assert_fail("line %d: timed out waiting for a %s",
			               line, aai_wire_kind_name(kind));
		}
	}
}

static int
rawc_wait_down(rawc *r)
{
	struct timespec ts;
	deadline_in(&ts, WAIT_S);
	pthread_mutex_lock(&r->mtx);
	while (!r->down) {
		if (pthread_cond_timedwait(&r->cv, &r->mtx, &ts) != 0) {
			pthread_mutex_unlock(&r->mtx);
			cr_assert_fail("timed out waiting for down");
		}
	}
	int err = r->down_err;
	pthread_mutex_unlock(&r->mtx);
	return err;
}

static int
rawc_count(rawc *r)
{
	pthread_mutex_lock(&r->mtx);
	int n = r->n;
	pthread_mutex_unlock(&r->mtx);
	return n;
}

// rawc_open_hb connects and does the handshake as client instance inst,
// asking for heartbeats every hb_ms (0: no preference).
static rawc *
rawc_open_hb(const char *url, uint64_t inst, rmsg *hello, uint32_t hb_ms)
{
	rawc *r = rawc_dial(url);
	aai_wire_msg m;
	aai_wire_hello_client(&m, inst, hello_max, hb_ms);
	rawc_send(r, &m);
	rmsg h = rawc_wait(r, AAI_WIRE_HELLO, 0);
	if (hello != NULL) {
		*hello = h;
	}
	return r;
}

static rawc *
rawc_open(const char *url, uint64_t inst, rmsg *hello)
{
	return rawc_open_hb(url, inst, hello, 0);
}

static void
rawc_start(rawc *r, uint64_t id, const char *method, const char *payload,
           uint32_t deadline_ms)
{
	aai_wire_msg m;
	aai_wire_start(&m, id, method, payload, payload ? strlen(payload) : 0,
	               deadline_ms, 0);
	rawc_send(r, &m);
}

static void
rawc_cancel(rawc *r, uint64_t id)
{
	aai_wire_msg m;
	aai_wire_cancel(&m, id, AA_CANCEL_TERMINAL);
	rawc_send(r, &m);
}

#define rawc_complete(r, id) rawc_wait(r, AAI_WIRE_COMPLETE, id)

// ---- the server fixture ----

static struct fx {
	aa_server *s;
	char dir[64];
	char url[160];
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	int events[16];
	int last_gone_err;
	int last_proto_err;
	int seq;                     // log records so far
	int last_seq[16];            // by event: the number of its last record
	char last_cancel_detail[96]; // of the last cancel_received
	int32_t last_app_code;       // of the last failed
	aa_op *ops[64]; // started by "hold" and "stubborn", a test ref each
	int nops;
	int cancel_calls;
	aa_cancel_type last_cancel_type; // what hold_cancel was asked
	int compensated;
	int stop_rv;
	gate hold_start; // "server.before_start" reached
	gate let_start;  // ... and released
	_Atomic bool hold_armed;
} fx;

static void
fx_log(void *arg, const aa_server_log_rec *rec)
{
	pthread_mutex_lock(&fx.mtx);
	fx.events[rec->event]++;
	fx.last_seq[rec->event] = ++fx.seq;
	if (rec->event == AA_SEV_CLIENT_GONE) {
		fx.last_gone_err = rec->error;
	}
	if (rec->event == AA_SEV_PROTOCOL_ERROR) {
		fx.last_proto_err = rec->error;
	}
	if (rec->event == AA_SEV_CANCEL_RECEIVED) {
		snprintf(fx.last_cancel_detail, sizeof(fx.last_cancel_detail),
		         "%s", rec->detail);
	}
	if (rec->event == AA_SEV_FAILED) {
		fx.last_app_code = rec->app_code;
	}
	pthread_cond_broadcast(&fx.cv);
	pthread_mutex_unlock(&fx.mtx);
}

static int
fx_event(aa_server_event ev)
{
	pthread_mutex_lock(&fx.mtx);
	int n = fx.events[ev];
	pthread_mutex_unlock(&fx.mtx);
	return n;
}

// fx_wait waits until *counter (under fx.mtx) reaches n.
static void
fx_wait_int(int *counter, int n)
{
	struct timespec ts;
	deadline_in(&ts, WAIT_S);
	pthread_mutex_lock(&fx.mtx);
	while (*counter < n) {
		if (pthread_cond_timedwait(&fx.cv, &fx.mtx, &ts) != 0) {
			pthread_mutex_unlock(&fx.mtx);
			cr_assert_fail("timed out waiting for the server");
		}
	}
	pthread_mutex_unlock(&fx.mtx);
}

static void
fx_wait(aa_server_event ev, int n)
{
	fx_wait_int(&fx.events[ev], n);
}

static aa_op *
fx_op(int i)
{
	pthread_mutex_lock(&fx.mtx);
	aa_op *op = i < fx.nops ? fx.ops[i] : NULL;
	pthread_mutex_unlock(&fx.mtx);
	cr_assert_not_null(op);
	return op;
}

static void
fx_keep(aa_op *op)
{
	aa_op_ref(op);
	pthread_mutex_lock(&fx.mtx);
	fx.ops[fx.nops++] = op;
	pthread_cond_broadcast(&fx.cv);
	pthread_mutex_unlock(&fx.mtx);
}

static int
m_echo(aa_op **opp, void *arg, const aa_call_info *call, const void *p,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider prov = {.cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &prov, assoc);
	if (rv != 0) {
		return rv;
	}
	void *copy = NULL;
	if (len > 0) {
		copy = malloc(len);
		memcpy(copy, p, len);
	}
	(void)aa_op_complete(*opp, copy, len, copy != NULL ? free : NULL);
	return 0;
}

static int
hold_cancel(aa_op *op, aa_cancel_type t, void *arg)
{
	pthread_mutex_lock(&fx.mtx);
	fx.cancel_calls++;
	fx.last_cancel_type = t;
	pthread_cond_broadcast(&fx.cv);
	pthread_mutex_unlock(&fx.mtx);
	if (arg == NULL) {
		(void)aa_op_canceled(op); // cooperative: stops at once
	}
	return 0;
}

// "hold" runs until the test finishes it or it is cancelled; "stubborn"
// (arg non-NULL) ignores cancellation.
static int
m_hold(aa_op **opp, void *arg, const aa_call_info *call, const void *p,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider prov = {.cancel = hold_cancel,
	                       .arg = arg,
	                       .policy = AA_POLICY_COOPERATIVE,
	                       .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &prov, assoc);
	if (rv == 0) {
		fx_keep(*opp);
	}
	return rv;
}

static int
m_fail(aa_op **opp, void *arg, const aa_call_info *call, const void *p,
       size_t len, const aa_assoc *assoc)
{
	return AA_EAPP;
}

static int
m_stopper(aa_op **opp, void *arg, const aa_call_info *call, const void *p,
          size_t len, const aa_assoc *assoc)
{
	fx.stop_rv = aa_server_stop(fx.s);
	return AA_EAPP;
}

static void
compensate(void *arg, const aa_call_info *call, aa_op *op)
{
	pthread_mutex_lock(&fx.mtx);
	fx.compensated++;
	pthread_cond_broadcast(&fx.cv);
	pthread_mutex_unlock(&fx.mtx);
}

static void
fx_serve(const aa_server_opts *o)
{
	aa_server_opts d = {0};
	if (o == NULL) {
		o = &d;
	}
	aa_server_opts opts = *o;
	opts.log = fx_log;
	cr_assert_eq(aa_server_alloc(&fx.s, &opts), 0);
	static int stubborn = 1;
	const aa_method_def defs[] = {
	    {.name = "echo", .start = m_echo, .cancel_types = AA_CANCEL_ALL},
	    {.name = "hold", .start = m_hold, .cancel_types = AA_CANCEL_ALL},
	    {.name = "stubborn",
	     .start = m_hold,
	     .arg = &stubborn,
	     .compensate = compensate,
	     .cancel_types = AA_CANCEL_ALL},
	    {.name = "fail", .start = m_fail},
	    {.name = "stopper", .start = m_stopper},
	    {.name = "partial",
	     .start = m_echo,
	     .cancel_types = AA_CANCEL_PARTIAL},
	    {.name = "fail_app", .start = method_fail_app},
	    {.name = "self_cancel",
	     .start = method_self_cancel,
	     .cancel_types = AA_CANCEL_ALL},
	};
	for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
		cr_assert_eq(aa_server_register(fx.s, &defs[i]), 0);
	}
	cr_assert_eq(aa_server_register(fx.s, &defs[0]), AA_EEXIST);
	cr_assert_eq(aa_server_listen(fx.s, fx.url), 0);
	aa_method_def late = {.name = "late", .start = m_echo};
	cr_assert_eq(aa_server_register(fx.s, &late), AA_ESTATE);
}

static void
fx_stats(aa_server_stats *st)
{
	aa_server_stats_get(fx.s, st);
}

static void
fx_init(void)
{
	memset(&fx, 0, sizeof(fx));
	pthread_mutex_init(&fx.mtx, NULL);
	pthread_cond_init(&fx.cv, NULL);
	gate_init(&fx.hold_start);
	gate_init(&fx.let_start);
}

static void
fx_fini(void)
{
	// Finish whatever a failed test left running, so stop returns.
	gate_open(&fx.let_start);
	for (int i = 0; i < fx.nops; i++) {
		(void)aa_op_complete(fx.ops[i], NULL, 0, NULL);
	}
	aa_server_free(fx.s);
	for (int i = 0; i < fx.nops; i++) {
		aa_op_unref(fx.ops[i]);
	}
	if (fx.dir[0] != '\0') {
		static const char *files[] = {
		    "s.sock",     "ca.key",     "ca.pem",     "ca.srl",
		    "server.key", "server.csr", "server.pem", "ext.cnf"};
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			char path[128];
			snprintf(path, sizeof(path), "%s/%s", fx.dir,
			         files[i]);
			unlink(path);
		}
		rmdir(fx.dir);
	}
	gate_fini(&fx.hold_start);
	gate_fini(&fx.let_start);
	aa_test_check_live();
}

static void
fx_url(bool ipc)
{
	if (ipc) {
		snprintf(fx.dir, sizeof(fx.dir), "/tmp/aa-srv-XXXXXX");
		cr_assert_not_null(mkdtemp(fx.dir));
		snprintf(fx.url, sizeof(fx.url), "ipc://%s/s.sock", fx.dir);
	} else {
		snprintf(fx.url, sizeof(fx.url), "inproc://server-test-%d",
		         (int)getpid());
	}
}

TestSuite(server_inproc, .init = fx_init, .fini = fx_fini, .timeout = 60);
TestSuite(server_ipc, .init = fx_init, .fini = fx_fini, .timeout = 60);
TestSuite(server, .init = fx_init, .fini = fx_fini, .timeout = 60);

// BOTH defines a scenario and runs it over inproc and over ipc.
#define BOTH(name)                                                            \
	static void name(void);                                               \
	Test(server_inproc, name)                                             \
	{                                                                     \
		fx_url(false);                                                \
		name();                                                       \
	}                                                                     \
	Test(server_ipc, name)                                                \
	{                                                                     \
		fx_url(true);                                                 \
		name();                                                       \
	}                                                                     \
	static void name(void)

// ---- scenarios ----

BOTH(handshake_and_method_table)
{
	fx_serve(&(aa_server_opts){.max_pending = 7});
	rmsg h;
	rawc *r = rawc_open(fx.url, 42, &h);
	cr_assert_neq(h.conn_id, 0);
	cr_assert_eq(h.max_pending, 7);
	cr_assert_eq(h.n_methods, 8);
	cr_assert_str_eq(h.method[0], "echo");
	cr_assert_eq(h.mtypes[0], AA_CANCEL_ALL);
	cr_assert_str_eq(h.method[5], "partial");
	cr_assert_eq(h.mtypes[5], AA_CANCEL_PARTIAL);
	fx_wait(AA_SEV_CONNECTED, 1);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.clients, 1);
	rawc_free(r);
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	fx_stats(&st);
	cr_assert_eq(st.clients, 0);
}

BOTH(echo_completes)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "echo", "hello", 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED);
	cr_assert_eq(c.error, 0);
	cr_assert_eq(c.plen, 5);
	cr_assert_eq(memcmp(c.payload, "hello", 5), 0);
	rawc_start(r, 2, "echo", NULL, 0);
	c = rawc_complete(r, 2);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED);
	cr_assert_eq(c.plen, 0);
	fx_wait(AA_SEV_REPLY_SENT, 2);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.started, 2);
	cr_assert_eq(st.completed, 2);
	cr_assert_eq(st.replies_sent, 2);
	cr_assert_eq(st.pending, 0);
	rawc_free(r);
}

BOTH(rejections_start_nothing)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "nope", "x", 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_REJECTED);
	cr_assert_eq(c.error, AA_ENOENT);
	// The method's own error.
	rawc_start(r, 2, "fail", NULL, 0);
	c = rawc_complete(r, 2);
	cr_assert_eq(c.status, AAI_WIRE_REJECTED);
	cr_assert_eq(c.error, AA_EAPP);
	// Cancellation types the method does not honour.
	aai_wire_msg m;
	aai_wire_start(&m, 3, "partial", "", 0, 0, AA_CANCEL_TOTAL);
	rawc_send(r, &m);
	c = rawc_complete(r, 3);
	cr_assert_eq(c.status, AAI_WIRE_REJECTED);
	cr_assert_eq(c.error, AA_ENOTSUP);
	aai_wire_start(&m, 4, "partial", "", 0, 0, AA_CANCEL_TERMINAL);
	rawc_send(r, &m);
	c = rawc_complete(r, 4);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.rejected, 3);
	cr_assert_eq(st.started, 1);
	cr_assert_eq(fx_event(AA_SEV_REJECTED), 3);
	rawc_free(r);
}

BOTH(duplicate_op_ids_are_rejected_also_after_reconnect)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 77, NULL);
	rawc_start(r, 5, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	rawc_start(r, 5, "echo", "dup", 0);
	rmsg c = rawc_complete(r, 5);
	cr_assert_eq(c.status, AAI_WIRE_REJECTED);
	cr_assert_eq(c.error, AA_EEXIST);
	// Within one connection ids need not increase.
	rawc_start(r, 3, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 3).status, AAI_WIRE_COMPLETED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.started, 2); // hold and the echo 3: nothing ran twice
	cr_assert_eq(fx.nops, 1);
	(void)aa_op_complete(fx_op(0), NULL, 0, NULL);
	cr_assert_eq(rawc_complete(r, 5).status, AAI_WIRE_COMPLETED);
	rawc_free(r);
	fx_wait(AA_SEV_CLIENT_GONE, 1);

	// The same instance reconnects: ids up to 5 were seen.
	r = rawc_open(fx.url, 77, NULL);
	rawc_start(r, 5, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 5).error, AA_EEXIST);
	rawc_start(r, 4, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 4).error, AA_EEXIST);
	rawc_start(r, 6, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 6).status, AAI_WIRE_COMPLETED);
	// Another instance has its own ids.
	rawc *r2 = rawc_open(fx.url, 78, NULL);
	rawc_start(r2, 1, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r2, 1).status, AAI_WIRE_COMPLETED);
	fx_stats(&st);
	cr_assert_eq(st.started, 4);
	rawc_free(r);
	rawc_free(r2);
}

BOTH(flood_beyond_max_pending_is_rejected_others_served)
{
	fx_serve(&(aa_server_opts){.max_pending = 3});
	rawc *a = rawc_open(fx.url, 1, NULL);
	rawc *b = rawc_open(fx.url, 2, NULL);
	for (uint64_t id = 1; id <= 3; id++) {
		rawc_start(a, id, "hold", NULL, 0);
	}
	for (uint64_t id = 4; id <= 10; id++) {
		rawc_start(a, id, "hold", NULL, 0);
	}
	for (uint64_t id = 4; id <= 10; id++) {
		rmsg c = rawc_complete(a, id);
		cr_assert_eq(c.status, AAI_WIRE_REJECTED);
		cr_assert_eq(c.error, AA_ELIMIT);
	}
	rawc_start(b, 1, "echo", "b", 0);
	cr_assert_eq(rawc_complete(b, 1).status, AAI_WIRE_COMPLETED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.pending, 3);
	cr_assert_eq(st.rejected, 7);
	for (int i = 0; i < 3; i++) {
		(void)aa_op_complete(fx_op(i), NULL, 0, NULL);
	}
	for (uint64_t id = 1; id <= 3; id++) {
		cr_assert_eq(rawc_complete(a, id).status, AAI_WIRE_COMPLETED);
	}
	rawc_start(a, 11, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(a, 11).status, AAI_WIRE_COMPLETED);
	rawc_free(a);
	rawc_free(b);
}

BOTH(malformed_bytes_close_that_connection_only)
{
	fx_serve(NULL);
	rawc *bad = rawc_open(fx.url, 1, NULL);
	rawc *good = rawc_open(fx.url, 2, NULL);
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
	cr_assert_eq(aai_conn_send(bad->c, junk, sizeof(junk)), 0);
	rmsg g = rawc_wait(bad, AAI_WIRE_GOODBYE, 0);
	cr_assert_eq(g.error, AA_EPROTO);
	rawc_wait_down(bad); // the server closes it after its Goodbye
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	rawc_start(good, 1, "echo", "ok", 0);
	cr_assert_eq(rawc_complete(good, 1).status, AAI_WIRE_COMPLETED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.protocol_errors, 1);
	cr_assert_eq(fx_event(AA_SEV_PROTOCOL_ERROR), 1);
	rawc_free(bad);
	rawc_free(good);
}

BOTH(unexpected_messages_are_protocol_errors)
{
	fx_serve(NULL);
	// A Start before the Hello.
	rawc *r1 = rawc_dial(fx.url);
	rawc_start(r1, 1, "echo", NULL, 0);
	cr_assert_eq(rawc_wait(r1, AAI_WIRE_GOODBYE, 0).error, AA_EPROTO);
	// A Complete from a client.
	rawc *r2 = rawc_open(fx.url, 2, NULL);
	aai_wire_msg m;
	aai_wire_complete(&m, 1, AAI_WIRE_COMPLETED, 0, NULL, "", 0);
	rawc_send(r2, &m);
	cr_assert_eq(rawc_wait(r2, AAI_WIRE_GOODBYE, 0).error, AA_EPROTO);
	// A version the server does not speak.
	rawc *r3 = rawc_dial(fx.url);
	aai_wire_hello_client(&m, 3, 1u << 20, 0);
	m.hello.version = 9;
	rawc_send(r3, &m);
	cr_assert_eq(rawc_wait(r3, AAI_WIRE_GOODBYE, 0).error, AA_ENOTSUP);
	rawc_wait_down(r1);
	rawc_wait_down(r2);
	rawc_wait_down(r3);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.protocol_errors, 3);
	rawc_free(r1);
	rawc_free(r2);
	rawc_free(r3);
}

BOTH(oversized_message_closes_the_connection)
{
	fx_serve(&(aa_server_opts){.max_msg_size = 1024});
	rawc *big = rawc_open(fx.url, 1, NULL);
	rawc *good = rawc_open(fx.url, 2, NULL);
	rawc_start(big, 1, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	char payload[4000];
	memset(payload, 'x', sizeof(payload) - 1);
	payload[sizeof(payload) - 1] = '\0';
	rawc_start(big, 2, "echo", payload, 0);
	// Refused from its length prefix, with the documented Goodbye.
	rmsg g = rawc_wait(big, AAI_WIRE_GOODBYE, 0);
	cr_assert_eq(g.error, AA_EMSGSIZE);
	rawc_wait_down(big);
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_gone_err, AA_EMSGSIZE);
	pthread_mutex_unlock(&fx.mtx);
	// Its running op was cancelled, the reply dropped.
	fx_wait(AA_SEV_REPLY_DROPPED, 1);
	cr_assert_eq(aa_op_status(fx_op(0)), AA_CANCELED);
	rawc_start(good, 1, "echo", "fine", 0);
	cr_assert_eq(rawc_complete(good, 1).status, AAI_WIRE_COMPLETED);
	rawc_free(big);
	rawc_free(good);
}

BOTH(cancel_for_unknown_id_is_ignored)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_cancel(r, 999);
	rawc_start(r, 1, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 1).status, AAI_WIRE_COMPLETED);
	rawc_cancel(r, 1); // finished already
	rawc_start(r, 2, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 2).status, AAI_WIRE_COMPLETED);
	cr_assert_eq(rawc_count(r), 3); // Hello and two Completes, no more
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.cancels_ignored, 2);
	cr_assert_eq(st.cancels_received, 0);
	cr_assert_eq(st.cancels_late, 1, "only op 1 had been accepted");
	cr_assert_eq(st.protocol_errors, 0);
	// The late one is logged, saying it came after completion.
	cr_assert_eq(fx_event(AA_SEV_CANCEL_RECEIVED), 1);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_not_null(strstr(fx.last_cancel_detail, "after completion"));
	pthread_mutex_unlock(&fx.mtx);
	rawc_free(r);
}

BOTH(cancel_stops_a_cooperative_op)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	rawc_cancel(r, 1);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_CANCELED);
	cr_assert_eq(c.error, AA_ECANCELED);
	cr_assert(c.cancel_received);
	cr_assert_eq(aa_op_status(fx_op(0)), AA_CANCELED);
	fx_wait(AA_SEV_REPLY_SENT, 1);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.cancels_received, 1);
	cr_assert_eq(st.canceled, 1);
	cr_assert_eq(st.wasted, 0);
	cr_assert_eq(fx_event(AA_SEV_CANCEL_RECEIVED), 1);
	rawc_free(r);
}

BOTH(op_ignoring_cancel_completes_wasted_and_compensated)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "stubborn", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	rawc_cancel(r, 1);
	fx_wait_int(&fx.cancel_calls, 1); // the op was told
	cr_assert_eq(aa_op_status(fx_op(0)), AA_STARTED);
	char *res = strdup("done");
	cr_assert_eq(aa_op_complete(fx_op(0), res, 4, free), 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED); // sent always
	cr_assert(c.cancel_received, "in flight: it completed anyway");
	cr_assert_eq(memcmp(c.payload, "done", 4), 0);
	fx_wait(AA_SEV_COMPENSATED, 1);
	cr_assert_eq(fx.compensated, 1);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.wasted, 1);
	cr_assert_eq(st.completed, 1);
	rawc_free(r);
}

BOTH(client_leaving_cancels_every_real_op)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	for (uint64_t id = 1; id <= 3; id++) {
		rawc_start(r, id, "hold", NULL, 0);
	}
	fx_wait(AA_SEV_START, 3);
	rawc_free(r);
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	fx_wait(AA_SEV_REPLY_DROPPED, 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(aa_op_status(fx_op(i)), AA_CANCELED);
	}
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.orphaned, 3);
	cr_assert_eq(st.replies_dropped, 3);
	cr_assert_eq(st.replies_sent, 0);
	cr_assert_eq(st.pending, 0);
}

BOTH(client_goodbye_cancels_every_real_op)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "hold", NULL, 0);
	rawc_start(r, 2, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 2);
	aai_wire_msg m;
	aai_wire_goodbye(&m, AA_ECLOSED, "bye");
	rawc_send(r, &m);
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	fx_wait(AA_SEV_REPLY_DROPPED, 2);
	cr_assert_eq(aa_op_status(fx_op(0)), AA_CANCELED);
	cr_assert_eq(aa_op_status(fx_op(1)), AA_CANCELED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.orphaned, 2);
	cr_assert_eq(st.protocol_errors, 0);
	rawc_wait_down(r);
	cr_assert_eq(rawc_count(r), 1); // the Hello only
	rawc_free(r);
}

BOTH(silent_client_is_dropped)
{
	fx_serve(&(aa_server_opts){.heartbeat_ms = 20, .dead_after_ms = 100});
	rawc *r = rawc_open(fx.url, 1, NULL); // it never sends heartbeats
	rawc_start(r, 1, "hold", NULL, 0);
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_gone_err, AA_ETIMEDOUT);
	pthread_mutex_unlock(&fx.mtx);
	fx_wait(AA_SEV_REPLY_DROPPED, 1);
	cr_assert_eq(aa_op_status(fx_op(0)), AA_CANCELED);
	rawc_wait_down(r);
	rawc_free(r);
}

BOTH(deadline_cancels_the_real_op)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "hold", NULL, 20);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_CANCELED);
	cr_assert_eq(c.error, AA_ETIMEDOUT);
	cr_assert(!c.cancel_received);
	cr_assert_eq(aa_op_status(fx_op(0)), AA_CANCELED);
	// A deadline that is not reached changes nothing.
	rawc_start(r, 2, "echo", "quick", 60000);
	cr_assert_eq(rawc_complete(r, 2).status, AAI_WIRE_COMPLETED);
	rawc_free(r);
}

BOTH(progress_is_forwarded)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	cr_assert_eq(aa_op_progress(fx_op(0), "p1", 2), 0);
	cr_assert_eq(aa_op_progress(fx_op(0), "p2", 2), 0);
	rmsg p = rawc_wait(r, AAI_WIRE_PROGRESS, 1);
	cr_assert_eq(memcmp(p.payload, "p1", 2), 0);
	p = rawc_wait(r, AAI_WIRE_PROGRESS, 1);
	cr_assert_eq(memcmp(p.payload, "p2", 2), 0);
	(void)aa_op_complete(fx_op(0), NULL, 0, NULL);
	cr_assert_eq(rawc_complete(r, 1).status, AAI_WIRE_COMPLETED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.progress_sent, 2);
	rawc_free(r);
}

BOTH(close_says_goodbye_and_cancels_real_ops)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	aa_server_close(fx.s);
	aa_server_close(fx.s); // idempotent
	rmsg g = rawc_wait(r, AAI_WIRE_GOODBYE, 0);
	cr_assert_eq(g.error, AA_EUNAVAIL);
	cr_assert_eq(aa_op_status(fx_op(0)), AA_CANCELED);
	// Nothing follows the Goodbye: the op's Complete is dropped.
	fx_wait(AA_SEV_REPLY_DROPPED, 1);
	rawc_wait_down(r);
	cr_assert_eq(aa_server_listen(fx.s, fx.url), AA_ECLOSED);
	cr_assert_eq(aa_server_stop(fx.s), 0);
	rawc_free(r);
}

typedef struct stopper {
	atomic_bool returned;
	int rv;
} stopper;

static void *
stop_thread(void *arg)
{
	stopper *st = arg;
	st->rv = aa_server_stop(fx.s);
	atomic_store(&st->returned, true);
	return NULL;
}

BOTH(stop_waits_for_real_ops)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "stubborn", NULL, 0);
	fx_wait(AA_SEV_START, 1);
	stopper sp = {.returned = false};
	thr t;
	thr_start(&t, stop_thread, &sp);
	fx_wait_int(&fx.cancel_calls, 1); // close reached the real op
	// The op ignores cancellation: stop cannot have returned.
	cr_assert_not(atomic_load(&sp.returned));
	cr_assert_eq(rawc_wait(r, AAI_WIRE_GOODBYE, 0).error, AA_EUNAVAIL);
	cr_assert_not(atomic_load(&sp.returned));
	(void)aa_op_complete(fx_op(0), NULL, 0, NULL);
	thr_join(&t);
	cr_assert_eq(sp.rv, 0);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.pending, 0);
	cr_assert_eq(st.clients, 0);
	// Completed after the Goodbye: dropped, so compensated.
	cr_assert_eq(fx.compensated, 1);
	rawc_free(r);
}

static void
rawc_forget(rawc *r)
{
	pthread_mutex_lock(&r->mtx);
	r->n = 0;
	pthread_mutex_unlock(&r->mtx);
}

BOTH(steady_state_allocates_nothing)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	uint64_t id = 1;
	uint64_t before = 0;
	for (int round = 0; round < 2; round++) {
		if (round == 1) {
			before = aa_heap_allocs();
		}
		for (int i = 0; i < 200; i++, id++) {
			rawc_start(r, id, "echo", "payload", 0);
			cr_assert_eq(rawc_complete(r, id).status,
			             AAI_WIRE_COMPLETED);
			rawc_forget(r);
		}
	}
	// Both sides: the server's entries and ops are recycled, frames
	// are encoded into and decoded from buffers that are kept.
	cr_assert_eq(aa_heap_allocs() - before, 0);
	rawc_free(r);
}

// ---- single-transport tests ----

// Application codes are their own space: every value, also those equal to
// an AA_E* code, travels in app_code with the one library error EAPP.
BOTH(application_codes_travel_apart_from_library_codes)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	int32_t codes[AA_ELAST + 6];
	int n = 0;
	for (int e = 1; e <= AA_ELAST; e++) {
		codes[n++] = e;
	}
	codes[n++] = 0;
	codes[n++] = -1;
	codes[n++] = -AA_ECANCELED;
	codes[n++] = INT32_MIN;
	codes[n++] = INT32_MAX;
	for (int i = 0; i < n; i++) {
		char payload[16];
		snprintf(payload, sizeof(payload), "%d", (int)codes[i]);
		rawc_start(r, (uint64_t)i + 1, "fail_app", payload, 0);
		rmsg c = rawc_complete(r, (uint64_t)i + 1);
		cr_assert_eq(c.status, AAI_WIRE_FAILED);
		cr_assert_eq(c.error, AA_EAPP, "code %d", (int)codes[i]);
		cr_assert_eq(c.app_code, codes[i]);
		fx_wait(AA_SEV_FAILED, i + 1);
		pthread_mutex_lock(&fx.mtx);
		cr_assert_eq(fx.last_app_code, codes[i]);
		pthread_mutex_unlock(&fx.mtx);
	}
	rawc_free(r);
}

// A real op that the server cancels on its own (not after the client's
// Cancel, nor its deadline) says ESRVCANCEL, never ECANCELED.
BOTH(a_server_side_cancel_has_its_own_code)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "self_cancel", NULL, 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_CANCELED);
	cr_assert_eq(c.error, AA_ESRVCANCEL);
	cr_assert(!c.cancel_received);
	rawc_free(r);
}

// A client speaking another version gets Goodbye{ENOTSUP} with the text
// of docs/protocol.md § 4, and nothing else.
BOTH(other_protocol_versions_are_refused)
{
	fx_serve(NULL);
	rawc *r = rawc_dial(fx.url);
	aai_wire_msg m;
	aai_wire_hello_client(&m, 9, hello_max, 0);
	m.hello.version = 2;
	rawc_send(r, &m);
	rmsg g = rawc_wait(r, AAI_WIRE_GOODBYE, 0);
	cr_assert_eq(g.error, AA_ENOTSUP);
	cr_assert_str_eq(g.text,
	                 "protocol version 2 not supported; server speaks 1");
	rawc_wait_down(r);
	cr_assert_eq(rawc_count(r), 1, "no Hello: only the Goodbye");
	rawc_free(r);
}

// Heartbeats: the server answers the smaller of its interval and the
// client's nonzero preference.
BOTH(heartbeat_is_the_smaller_of_both_preferences)
{
	fx_serve(&(aa_server_opts){.heartbeat_ms = 1000});
	rmsg h;
	rawc *a = rawc_open_hb(fx.url, 1, &h, 300);
	cr_assert_eq(h.heartbeat_ms, 300);
	rawc *b = rawc_open_hb(fx.url, 2, &h, 5000);
	cr_assert_eq(h.heartbeat_ms, 1000);
	rawc *c = rawc_open_hb(fx.url, 3, &h, 0);
	cr_assert_eq(h.heartbeat_ms, 1000);
	rawc_free(a);
	rawc_free(b);
	rawc_free(c);
}

// A server with heartbeats off answers 0 whatever the client asked.
BOTH(heartbeats_off_answer_zero_whatever_the_client_asks)
{
	fx_serve(&(aa_server_opts){.heartbeat_ms = -1});
	rmsg h;
	rawc *a = rawc_open_hb(fx.url, 1, &h, 300);
	cr_assert_eq(h.heartbeat_ms, 0);
	rawc *b = rawc_open_hb(fx.url, 2, &h, 0);
	cr_assert_eq(h.heartbeat_ms, 0);
	rawc_free(a);
	rawc_free(b);
}

// A Cancel whose type the Start did not list is honoured when the method
// honours it: the server checks the method's types (protocol.md § 5.4).
// One the method does not honour is ignored and counted.
BOTH(a_cancel_type_the_start_did_not_list_is_honoured)
{
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	aai_wire_msg m;
	aai_wire_start(&m, 1, "hold", NULL, 0, 0, AA_CANCEL_TERMINAL);
	rawc_send(r, &m);
	fx_wait(AA_SEV_START, 1);
	aai_wire_cancel(&m, 1, AA_CANCEL_TOTAL);
	rawc_send(r, &m);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_CANCELED);
	cr_assert_eq(c.error, AA_ECANCELED);
	cr_assert(c.cancel_received);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_cancel_type, AA_CANCEL_TOTAL,
	             "the real op is asked with the Cancel's type");
	pthread_mutex_unlock(&fx.mtx);
	rawc_free(r);
}

// Before its Hello, a connection that sends nothing is closed by the
// silence bound when heartbeats are on (protocol.md § 4.4).
BOTH(a_connection_without_hello_meets_the_silence_bound)
{
	fx_serve(&(aa_server_opts){.heartbeat_ms = 20, .dead_after_ms = 100});
	rawc *r = rawc_dial(fx.url);
	rawc_wait_down(r);
	cr_assert_eq(rawc_count(r), 0, "no Hello, no Goodbye");
	rawc *ok = rawc_open(fx.url, 1, NULL); // the server serves on
	rawc_free(ok);
	rawc_free(r);
}

// With heartbeats off only the fixed 10 s handshake timeout applies: a
// silent connection is closed then, logged as a protocol error with
// ETIMEDOUT (protocol.md § 4.4). This test takes those 10 s.
Test(server, without_heartbeats_a_connection_without_hello_waits_10_s)
{
	fx_url(false);
	fx_serve(&(aa_server_opts){.heartbeat_ms = -1});
	rawc *r = rawc_dial(fx.url);
	rawc *ok = rawc_open(fx.url, 1, NULL);
	cr_assert_eq(rawc_count(r), 0);
	fx_wait(AA_SEV_PROTOCOL_ERROR, 1);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_proto_err, AA_ETIMEDOUT);
	pthread_mutex_unlock(&fx.mtx);
	rawc_wait_down(r);
	cr_assert_eq(rawc_count(r), 0, "no Hello, no Goodbye");
	rawc_free(ok);
	rawc_free(r);
}

// The pending limit holds per client instance, over its connections.
BOTH(pending_limit_is_per_client_instance)
{
	fx_serve(&(aa_server_opts){.max_pending = 2});
	rawc *a = rawc_open(fx.url, 5, NULL);
	rawc *b = rawc_open(fx.url, 5, NULL); // the same instance
	rawc *other = rawc_open(fx.url, 6, NULL);
	rawc_start(a, 1, "hold", NULL, 0);
	rawc_start(b, 2, "hold", NULL, 0);
	fx_wait(AA_SEV_START, 2);
	rawc_start(b, 3, "hold", NULL, 0);
	rmsg c = rawc_complete(b, 3);
	cr_assert_eq(c.status, AAI_WIRE_REJECTED);
	cr_assert_eq(c.error, AA_ELIMIT);
	rawc_start(other, 1, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(other, 1).status, AAI_WIRE_COMPLETED);
	// One finishes (whichever started first: the two connections'
	// threads race): the instance may start one more, on either.
	(void)aa_op_complete(fx_op(0), NULL, 0, NULL);
	fx_wait(AA_SEV_REPLY_SENT, 2); // other's echo, and this one
	rawc_start(b, 4, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(b, 4).status, AAI_WIRE_COMPLETED);
	rawc_free(a);
	rawc_free(b);
	rawc_free(other);
}

// The case at a smaller scale: one instance over twenty
// connections, each sending two Starts of a method that holds, against a
// limit of 8 pending ops: 8 start in all, the other 32 are refused with
// ELIMIT, whichever connections they came on.
BOTH(pending_limit_holds_over_twenty_connections_of_one_instance)
{
	fx_serve(&(aa_server_opts){.max_pending = 8});
	rawc *conns[20];
	for (int i = 0; i < 20; i++) {
		conns[i] = rawc_open(fx.url, 7, NULL);
	}
	for (int i = 0; i < 20; i++) {
		rawc_start(conns[i], 1, "hold", NULL, 0);
		rawc_start(conns[i], 2, "hold", NULL, 0);
	}
	fx_wait(AA_SEV_START, 8);
	fx_wait(AA_SEV_REJECTED, 32);
	for (;;) { // each connection's Hello, and the 32 refusals arrived
		int got = 0;
		for (int i = 0; i < 20; i++) {
			got += rawc_count(conns[i]);
		}
		if (got == 20 + 32) {
			break;
		}
		sched_yield();
	}
	int refused = 0;
	for (int i = 0; i < 20; i++) { // every Complete so far: a refusal
		for (int k = rawc_count(conns[i]) - 1; k > 0; k--) {
			rmsg c = rawc_wait(conns[i], AAI_WIRE_COMPLETE, 0);
			cr_assert_eq(c.status, AAI_WIRE_REJECTED);
			cr_assert_eq(c.error, AA_ELIMIT);
			refused++;
		}
	}
	cr_assert_eq(refused, 32);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.started, 8);
	cr_assert_eq(st.pending, 8);
	cr_assert_eq(fx_event(AA_SEV_START), 8, "no ninth op started");
	for (int i = 0; i < 20; i++) {
		rawc_free(conns[i]);
	}
}

// Method names are exactly their bytes: an embedded NUL or invalid UTF-8
// is a protocol error, never a silent truncation.
BOTH(method_names_with_nul_or_invalid_utf8_are_protocol_errors)
{
	fx_serve(NULL);
	// Envelope{start: Start{op_id 1, method "ec\0ho"}}
	static const uint8_t nul[] = {0x0a, 0x09, 0x08, 0x01, 0x12, 0x05,
	                              'e',  'c',  0x00, 'h',  'o'};
	// Envelope{start: Start{op_id 1, method "\xff\xfe"}}
	static const uint8_t bad[] = {0x0a, 0x06, 0x08, 0x01,
	                              0x12, 0x02, 0xff, 0xfe};
	const struct {
		const uint8_t *p;
		size_t n;
	} frames[] = {{nul, sizeof(nul)}, {bad, sizeof(bad)}};
	for (size_t i = 0; i < 2; i++) {
		rawc *r = rawc_open(fx.url, i + 1, NULL);
		cr_assert_eq(aai_conn_send(r->c, frames[i].p, frames[i].n), 0);
		rmsg g = rawc_wait(r, AAI_WIRE_GOODBYE, 0);
		cr_assert_eq(g.error, AA_EPROTO);
		rawc_wait_down(r);
		rawc_free(r);
	}
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.started, 0);
	cr_assert_eq(st.protocol_errors, 2);
}

// The reply delay (a slow link, a demo knob) makes the Complete and a
// Cancel cross on the wire with no checkpoint: the op completed, its
// Complete waits, the Cancel comes "after completion".
BOTH(reply_delay_makes_complete_and_cancel_cross)
{
	fx_serve(&(aa_server_opts){.reply_delay_ms = 200});
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "echo", "x", 0);
	fx_wait(AA_SEV_COMPLETED, 1);
	cr_assert_eq(fx_event(AA_SEV_REPLY_SENT), 0, "held back");
	rawc_cancel(r, 1);
	fx_wait(AA_SEV_CANCEL_RECEIVED, 1);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED);
	cr_assert(!c.cancel_received);
	fx_wait(AA_SEV_REPLY_SENT, 1);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.cancels_late, 1);
	cr_assert_eq(st.replies_sent, 1);
	rawc_free(r);
}

// ipc:// is a plain Unix stream socket: a client with nothing but
// socket(), connect(), write() and read() does the handshake with the
// bytes of docs/protocol.md § 3, and an oversized length prefix gets the
// documented Goodbye{EMSGSIZE} before the close.
static size_t
read_frame(int fd, uint8_t *buf, size_t cap)
{
	uint8_t hdr[4];
	size_t got = 0;
	while (got < 4) {
		ssize_t n = read(fd, hdr + got, 4 - got);
		cr_assert_gt(n, 0, "the server closed before a frame");
		got += (size_t)n;
	}
	size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 |
	             (size_t)hdr[2] << 8 | hdr[3];
	cr_assert_leq(len, cap);
	for (got = 0; got < len;) {
		ssize_t n = read(fd, buf + got, len - got);
		cr_assert_gt(n, 0);
		got += (size_t)n;
	}
	return len;
}

Test(server, ipc_is_a_plain_unix_stream_socket)
{
	fx_url(true);
	fx_serve(NULL);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s.sock", fx.dir);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	// The client Hello of protocol.md § 3, byte for byte.
	static const uint8_t hello[] = {
	    0x00, 0x00, 0x00, 0x16, 0x32, 0x14, 0x08, 0x01, 0x10,
	    0x01, 0x18, 0x80, 0x80, 0x40, 0x28, 0xe8, 0x07, 0x31,
	    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
	cr_assert_eq(write(fd, hello, sizeof(hello)), (ssize_t)sizeof(hello));
	static uint8_t frame[1 << 16];
	size_t n = read_frame(fd, frame, sizeof(frame));
	aai_wire_msg m;
	aai_wire_arena a;
	static uint8_t abuf[16384];
	aai_wire_arena_init(&a, abuf, sizeof(abuf));
	cr_assert_eq(aai_wire_decode(&m, NULL, &a, frame, n, 0), 0);
	cr_assert_eq(m.kind, AAI_WIRE_HELLO);
	cr_assert_eq(m.hello.role, AAI_WIRE_ROLE_SERVER);
	cr_assert_eq(m.hello.version, 1);
	// A length prefix over the server's maximum (1 MiB).
	static const uint8_t huge[] = {0x7f, 0xff, 0xff, 0xff};
	cr_assert_eq(write(fd, huge, sizeof(huge)), 4);
	do { // heartbeats may come first
		n = read_frame(fd, frame, sizeof(frame));
		cr_assert_eq(aai_wire_decode(&m, NULL, &a, frame, n, 0), 0);
	} while (m.kind == AAI_WIRE_HEARTBEAT);
	cr_assert_eq(m.kind, AAI_WIRE_GOODBYE);
	cr_assert_eq(m.goodbye.reason, AA_EMSGSIZE);
	uint8_t b;
	cr_assert_eq(read(fd, &b, 1), 0, "then the server closes");
	close(fd);
	aai_wire_arena_fini(&a);
}

// client_open_main opens a client with the options in opener_opts.
static aa_client *opened_client;
static aa_client_opts opener_opts;

static void *
client_open_main(void *arg)
{
	int *rv = arg;
	*rv = aa_client_open(&opened_client, &opener_opts);
	return NULL;
}

// raw_send writes m as one frame (prefix and Envelope) on fd, blocking.
static void
raw_send(int fd, const aai_wire_msg *m)
{
	size_t len;
	cr_assert_eq(aai_wire_size(&len, m), 0);
	uint8_t *buf = malloc(len + 4);
	cr_assert_not_null(buf);
	buf[0] = (uint8_t)(len >> 24);
	buf[1] = (uint8_t)(len >> 16);
	buf[2] = (uint8_t)(len >> 8);
	buf[3] = (uint8_t)len;
	cr_assert_eq(aai_wire_encode(&len, buf + 4, len, m, 0), 0);
	for (size_t off = 0; off < len + 4;) {
		ssize_t n = write(fd, buf + off, len + 4 - off);
		if (n <= 0) {
			break; // the server dropped us: the test checks that
		}
		off += (size_t)n;
	}
	free(buf);
}

// raw_open connects to fx's ipc socket and does the handshake.
static int
raw_open(uint64_t inst)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s.sock", fx.dir);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	aai_wire_msg m;
	aai_wire_hello_client(&m, inst, 1u << 20, 0);
	raw_send(fd, &m);
	return fd;
}

// rss_kib returns the peak resident set of this process (each test runs
// in a process of its own): a growth of it is the peak cost of what ran
// since, also of memory already given back.
static long
rss_kib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

typedef struct flood {
	int fd;
	int n;
	size_t len;
} flood;

static void *
flood_main(void *arg)
{
	flood *f = arg;
	char *payload = malloc(f->len + 1);
	memset(payload, 'p', f->len);
	payload[f->len] = '\0';
	for (int i = 0; i < f->n; i++) {
		aai_wire_msg m;
		aai_wire_start(&m, (uint64_t)i + 1, "echo", payload, f->len, 0,
		               0);
		raw_send(f->fd, &m); // blocks once the server stops reading
	}
	free(payload);
	return NULL;
}

// A client that sends Hello, then 400 Start{echo, 256 KiB} and does not
// read: the server stops reading it once 1 MiB of replies wait, so its
// memory stays bounded; other clients are served meanwhile; once the
// client reads, the server resumes and every call is answered.
Test(server, a_peer_that_never_reads_costs_bounded_memory, .timeout = 120)
{
	fx_url(true);
	fx_serve(NULL);
	// Another client's echo before the flood, for comparison (noted, not
	// asserted: no wall-clock bounds in unit tests).
	rawc *other = rawc_open(fx.url, 2, NULL);
	uint64_t t0 = aa_clock_us();
	for (uint64_t id = 1; id <= 10; id++) {
		rawc_start(other, id, "echo", "hi", 0);
		cr_assert_eq(rawc_complete(other, id).status,
		             AAI_WIRE_COMPLETED);
	}
	uint64_t before_us = (aa_clock_us() - t0) / 10;
	long rss0 = rss_kib();
	int fd = raw_open(1);
	static uint8_t frame[1 << 20];
	size_t n = read_frame(fd, frame, sizeof(frame)); // the Hello
	(void)n;
	flood f = {.fd = fd, .n = 400, .len = 256 * 1024};
	thr t;
	thr_start(&t, flood_main, &f);
	aa_server_stats st;
	do { // an observed event: the server paused this client
		sched_yield();
		fx_stats(&st);
	} while (st.reads_paused == 0);
	fx_stats(&st);
	test_note("paused with %llu bytes queued, %llu started",
	          (unsigned long long)st.send_queued,
	          (unsigned long long)st.started);
	cr_assert_lt(st.send_queued, (1u << 20) + 2 * (256u << 10) + 4096,
	             "queued beyond the pause bound");
	cr_assert_lt(st.started - 10, 40, "it kept reading Starts");
	// Another client is served as usual meanwhile.
	t0 = aa_clock_us();
	for (uint64_t id = 11; id <= 20; id++) {
		rawc_start(other, id, "echo", "hi", 0);
		cr_assert_eq(rawc_complete(other, id).status,
		             AAI_WIRE_COMPLETED);
	}
	test_note("another client's echo: %llu us before, %llu us while "
	          "the peer was paused",
	          (unsigned long long)before_us,
	          (unsigned long long)(aa_clock_us() - t0) / 10);
	rawc_free(other);
	long grew = rss_kib() - rss0;
	test_note("peak RSS grew %ld KiB while the peer did not read", grew);
	// The bound docs/protocol.md § 17 states for this case: the hard
	// limit (32 MiB) + the pause bound (1 MiB) + one frame being received
	// and decoded per connection, within 48 MiB of peak RSS.
	cr_assert_lt(grew, 48 * 1024, "the server's memory grew %ld KiB",
	             grew);
	// The client reads now: every call gets its Complete.
	aai_wire_arena a;
	static uint8_t abuf[16384];
	aai_wire_arena_init(&a, abuf, sizeof(abuf));
	int completes = 0;
	while (completes < 400) {
		n = read_frame(fd, frame, sizeof(frame));
		aai_wire_msg m;
		cr_assert_eq(aai_wire_decode(&m, NULL, &a, frame, n, 0), 0);
		if (m.kind == AAI_WIRE_COMPLETE) {
			cr_assert_eq(m.complete.status, AAI_WIRE_COMPLETED);
			cr_assert_eq(m.complete.payload_len, 256u * 1024);
			completes++;
		}
	}
	thr_join(&t);
	fx_wait(AA_SEV_REPLY_SENT, 420); // and the other client's 20
	do { // the writer counts its last write off after the peer has it
		sched_yield();
		fx_stats(&st);
	} while (st.send_queued != 0);
	cr_assert_eq(st.started, 420, "%llu", (unsigned long long)st.started);
	aai_wire_arena_fini(&a);
	close(fd);
}

// Four clients send, at once, the worst amplification frame: a Start of
// about 1 MiB of 2-byte unknown fields (protobuf-c would take 24-31 times
// its size while decoding). Each is refused before anything is allocated
// for it: the server's memory grows by about the four receive buffers,
// not four times 30 MiB.
typedef struct amp_sender {
	int fd;
	const uint8_t *frame;
	size_t len;
} amp_sender;

static void *
amp_send_main(void *arg)
{
	amp_sender *a = arg;
	for (size_t off = 0; off < a->len;) {
		ssize_t n = write(a->fd, a->frame + off, a->len - off);
		if (n <= 0) {
			break; // refused and closed before the end: fine
		}
		off += (size_t)n;
	}
	return NULL;
}

Test(server, four_amplification_frames_at_once_cost_bounded_memory,
     .timeout = 120)
{
	fx_url(true);
	fx_serve(NULL);
	// Envelope{start: Start{op_id 1, method "echo", 500,000 x field 15}}
	size_t nfields = 500000;
	size_t body = 2 + 6 + 2 * nfields;
	uint8_t *frame = malloc(body + 16);
	size_t n = 4;
	frame[n++] = 0x0a; // Envelope field 1, length-delimited
	size_t v = body;
	for (; v >= 0x80; v >>= 7) {
		frame[n++] = (uint8_t)(v | 0x80);
	}
	frame[n++] = (uint8_t)v;
	static const uint8_t head[] = {0x08, 0x01, 0x12, 0x04,
	                               'e',  'c',  'h',  'o'};
	memcpy(frame + n, head, sizeof(head));
	n += sizeof(head);
	for (size_t i = 0; i < nfields; i++) {
		frame[n++] = 0x78; // field 15, varint
		frame[n++] = 0x00;
	}
	size_t flen = n - 4;
	frame[0] = (uint8_t)(flen >> 24);
	frame[1] = (uint8_t)(flen >> 16);
	frame[2] = (uint8_t)(flen >> 8);
	frame[3] = (uint8_t)flen;
	cr_assert_lt(flen, 1u << 20, "within the message size limit");

	int fds[4];
	for (int i = 0; i < 4; i++) {
		fds[i] = raw_open((uint64_t)i + 1);
		static uint8_t hello[4096];
		(void)read_frame(fds[i], hello, sizeof(hello));
	}
	long rss0 = rss_kib();
	amp_sender s[4];
	thr t[4];
	for (int i = 0; i < 4; i++) {
		s[i] = (amp_sender){fds[i], frame, n};
		thr_start(&t[i], amp_send_main, &s[i]);
	}
	for (int i = 0; i < 4; i++) {
		thr_join(&t[i]);
	}
	// Each gets the documented Goodbye{EPROTO}, then the close.
	static uint8_t buf[4096];
	aai_wire_arena a;
	static uint8_t abuf[4096];
	aai_wire_arena_init(&a, abuf, sizeof(abuf));
	for (int i = 0; i < 4; i++) {
		size_t len = read_frame(fds[i], buf, sizeof(buf));
		aai_wire_msg m;
		cr_assert_eq(aai_wire_decode(&m, NULL, &a, buf, len, 0), 0);
		cr_assert_eq(m.kind, AAI_WIRE_GOODBYE);
		cr_assert_eq(m.goodbye.reason, AA_EPROTO);
		close(fds[i]);
	}
	long grew = rss_kib() - rss0;
	test_note("4 amplification frames at once: peak RSS grew %ld KiB",
	          grew);
#ifdef AA_TSAN
	const long bound = 64 * 1024; // TSan's shadow memory counts too
#else
	const long bound = 16 * 1024;
#endif
	cr_assert_lt(grew, bound, "peak grew %ld KiB", grew);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.protocol_errors, 4);
	cr_assert_eq(st.started, 0);
	aai_wire_arena_fini(&a);
	free(frame);
}

// A client that reads nothing while its pending ops complete with big
// results: past send_queue_max the server drops it (AA_ELIMIT) instead
// of growing.
Test(server, a_peer_past_the_hard_limit_is_dropped, .timeout = 120)
{
	fx_url(true);
	fx_serve(&(aa_server_opts){.send_queue_pause = 256 << 10,
	                           .send_queue_max = 4 << 20});
	int fd = raw_open(1);
	for (int i = 0; i < 24; i++) {
		aai_wire_msg m;
		aai_wire_start(&m, (uint64_t)i + 1, "hold", NULL, 0, 0, 0);
		raw_send(fd, &m);
	}
	fx_wait_int(&fx.nops, 24);
	for (int i = 0; i < 24; i++) {
		size_t len = 512 * 1024;
		char *big = calloc(1, len);
		(void)aa_op_complete(fx_op(i), big, len, free);
	}
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_gone_err, AA_ELIMIT, "%s",
	             aa_strerror(fx.last_gone_err));
	pthread_mutex_unlock(&fx.mtx);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_gt(st.replies_dropped, 0);
	close(fd);
}

// goodbye_backend says whether the drop's Goodbye can be tested: not when
// ipc runs on nng's streams (AA_TRANSPORT=nng), where the drop is still a
// plain close (docs/protocol.md § 17); the test then passes, noting why.
static bool
goodbye_backend(void)
{
	const char *tp = getenv("AA_TRANSPORT");
	if (tp != NULL && strcmp(tp, "nng") == 0) {
		test_note("not run: AA_TRANSPORT=nng drops without a Goodbye");
		return false;
	}
	return true;
}

// read_frame_or_eof is read_frame that returns 0 at EOF before a header
// (and fails on an EOF inside a frame: the stream must stay whole).
static size_t
read_frame_or_eof(int fd, uint8_t *buf, size_t cap, bool *eof)
{
	uint8_t hdr[4];
	size_t got = 0;
	*eof = false;
	while (got < 4) {
		ssize_t n = read(fd, hdr + got, 4 - got);
		if (n == 0 && got == 0) {
			*eof = true;
			return 0;
		}
		cr_assert_gt(n, 0, "EOF inside a frame header");
		got += (size_t)n;
	}
	size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 |
	             (size_t)hdr[2] << 8 | hdr[3];
	cr_assert_leq(len, cap);
	for (got = 0; got < len;) {
		ssize_t n = read(fd, buf + got, len - got);
		cr_assert_gt(n, 0, "EOF inside a frame");
		got += (size_t)n;
	}
	return len;
}

// read_to_goodbye reads fd until EOF: frames of kind (a Complete must be
// COMPLETED with 512 KiB), then one Goodbye{ELIMIT} whose text has why,
// and nothing after it. Returns how many frames of kind were read.
static int
read_to_goodbye(int fd, int kind, const char *why)
{
	static uint8_t frame[1 << 20];
	static uint8_t abuf[16384];
	aai_wire_arena a;
	int seen = 0;
	bool bye = false, eof = false;
	for (;;) {
		size_t n = read_frame_or_eof(fd, frame, sizeof(frame), &eof);
		if (eof) {
			break;
		}
		cr_assert_not(bye, "a frame after the Goodbye");
		aai_wire_arena_init(&a, abuf, sizeof(abuf));
		aai_wire_msg m;
		cr_assert_eq(aai_wire_decode(&m, NULL, &a, frame, n, 0), 0);
		if ((int)m.kind == kind) {
			if (kind == AAI_WIRE_COMPLETE) {
				cr_assert_eq(m.complete.status,
				             AAI_WIRE_COMPLETED);
				cr_assert_eq(m.complete.payload_len,
				             512u * 1024);
			}
			seen++;
		} else if (m.kind == AAI_WIRE_GOODBYE) {
			cr_assert_eq(m.goodbye.reason, AA_ELIMIT);
			cr_assert_not_null(m.goodbye.message);
			cr_assert_not_null(strstr(m.goodbye.message, why),
			                   "%s", m.goodbye.message);
			bye = true;
		}
	}
	cr_assert(bye, "no Goodbye before EOF");
	return seen;
}

// hard_limit_flood starts 24 "hold" ops on fd and completes them with
// 512 KiB each (12 MiB for a 4 MiB send_queue_max), and waits for the
// drop: the queued bytes counter is back to 0.
static void
hard_limit_flood(int fd)
{
	for (int i = 0; i < 24; i++) {
		aai_wire_msg m;
		aai_wire_start(&m, (uint64_t)i + 1, "hold", NULL, 0, 0, 0);
		raw_send(fd, &m);
	}
	fx_wait_int(&fx.nops, 24);
	for (int i = 0; i < 24; i++) {
		size_t len = 512 * 1024;
		char *big = calloc(1, len);
		(void)aa_op_complete(fx_op(i), big, len, free);
	}
	aa_server_stats st;
	do { // an observed event: the drop gave the queued bytes back
		sched_yield();
		fx_stats(&st);
	} while (st.send_queued != 0 || st.replies_dropped == 0);
}

// Past the hard limit the server says why it drops the peer: a peer that
// reads again before the linger ends gets the replies that were already
// being written, then Goodbye{ELIMIT}, then EOF. The bytes queued for it
// go back at the drop, not when the connection closes: the linger is
// made long here, so the drop is seen while the connection is still up.
Test(server, a_peer_past_the_hard_limit_reads_a_goodbye, .timeout = 120)
{
	if (!goodbye_backend()) {
		return;
	}
	aai_tp_set_linger_ms(600 * 1000); // never within this test
	fx_url(true);
	fx_serve(&(aa_server_opts){.send_queue_pause = 256 << 10,
	                           .send_queue_max = 4 << 20});
	int fd = raw_open(1);
	static uint8_t frame[4096];
	(void)read_frame(fd, frame, sizeof(frame)); // the Hello
	hard_limit_flood(fd);
	cr_assert_eq(fx_event(AA_SEV_CLIENT_GONE), 0,
	             "the connection stays up while it lingers");
	int completes =
	    read_to_goodbye(fd, AAI_WIRE_COMPLETE, "did not read its replies");
	test_note("%d replies were being written, then the Goodbye",
	          completes);
	cr_assert_lt(completes, 24, "the queued replies were discarded");
	close(fd); // the peer's close ends the linger
	fx_wait(AA_SEV_CLIENT_GONE, 1);
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_gone_err, AA_ELIMIT, "%s",
	             aa_strerror(fx.last_gone_err));
	pthread_mutex_unlock(&fx.mtx);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.send_queued, 0);
	aai_tp_set_linger_ms(0);
}

// A peer past the hard limit that never reads again is closed when the
// linger ends (1 s): client_gone with AA_ELIMIT, and what it reads then
// ends in EOF (no hang); the last frame may be cut, the linger's close
// being the hard one.
Test(server, a_peer_past_the_hard_limit_that_never_reads_is_closed,
     .timeout = 120)
{
	fx_url(true);
	fx_serve(&(aa_server_opts){.send_queue_pause = 256 << 10,
	                           .send_queue_max = 4 << 20});
	int fd = raw_open(1);
	static uint8_t frame[4096];
	(void)read_frame(fd, frame, sizeof(frame)); // the Hello
	hard_limit_flood(fd);
	fx_wait(AA_SEV_CLIENT_GONE, 1); // the linger ends it
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.last_gone_err, AA_ELIMIT, "%s",
	             aa_strerror(fx.last_gone_err));
	pthread_mutex_unlock(&fx.mtx);
	static uint8_t buf[1 << 16];
	size_t total = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		cr_assert_geq(n, 0);
		if (n == 0) {
			break; // EOF
		}
		total += (size_t)n;
	}
	test_note("%zu bytes read after the close, then EOF", total);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.send_queued, 0);
	close(fd);
}

// raw_echo_server opens a client with opts (its url set here) against a
// raw ipc:// server of ours that answers the Hello with one method, echo,
// and then reads nothing unless the test does. *lfd and *fd: the listening
// and the accepted socket, for the test to close.
static aa_client *
raw_echo_server(aa_client_opts opts, int *lfd, int *fd)
{
	fx_url(true);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s.sock", fx.dir);
	*lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(*lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(*lfd, 1), 0);
	// aa_client_open waits for our Hello: it runs on a thread, the
	// accept side here.
	opts.url = fx.url;
	opener_opts = opts;
	int open_rv = -1;
	thr t;
	thr_start(&t, client_open_main, &open_rv);
	*fd = accept(*lfd, NULL, NULL);
	cr_assert_geq(*fd, 0);
	static uint8_t frame[4096];
	(void)read_frame(*fd, frame, sizeof(frame)); // the client's Hello
	aai_wire_method echo = {.name = "echo", .cancel_types = 7};
	aai_wire_msg h;
	aai_wire_hello_server(&h, 1, 1u << 20, 1024, 0, &echo, 1);
	raw_send(*fd, &h);
	thr_join(&t);
	cr_assert_eq(open_rv, 0);
	return opened_client;
}

// The client side of the same bound: a server that answers the handshake
// and then reads nothing. Past send_queue_max the client drops the
// connection, and its calls end with AA_ELIMIT, instead of growing.
Test(server, a_client_drops_a_server_that_never_reads, .timeout = 120)
{
	int lfd, fd;
	aa_client *c = raw_echo_server(
	    (aa_client_opts){.send_queue_max = 2 << 20}, &lfd, &fd);
	static char payload[256 * 1024];
	aa_op *ops[32];
	int n = 0, refused = 0;
	uint64_t most_queued = 0;
	aa_client_stats cst;
	for (; n < 32; n++) {
		refused = aa_client_call(&ops[n], c, "echo", payload,
		                         sizeof(payload), NULL, NULL);
		if (refused != 0) {
			break; // dropped already: later calls are refused
		}
		aa_client_stats_get(c, &cst);
		if (cst.send_queued > most_queued) {
			most_queued = cst.send_queued;
		}
	}
	cr_assert_gt(n, 0);
	test_note("the client queued at most %llu bytes for the server",
	          (unsigned long long)most_queued);
	cr_assert_leq(most_queued, 2u << 20, "queued past send_queue_max");
	int limited = refused == AA_ELIMIT;
	for (int i = 0; i < n; i++) {
		while (aa_op_status(ops[i]) == AA_STARTED) {
			sched_yield(); // the drop ends them all
		}
		limited += aa_op_error(ops[i]) == AA_ELIMIT;
		aa_op_unref(ops[i]);
	}
	cr_assert_gt(limited, 0, "no call ended with AA_ELIMIT");
	aa_client_stats_get(c, &cst);
	cr_assert_eq(cst.send_limit_drops, 1, "the drop is counted");
	aa_client_free(c);
	close(fd);
	close(lfd);
}

// A server that vanishes while the client still has bytes queued for it:
// once the client's ops have ended, send_queued counts nothing of the dead
// connection (it used to, until the next connect or stop freed it).
Test(server, send_queued_forgets_a_lost_connection, .timeout = 120)
{
	int lfd, fd;
	aa_client *c = raw_echo_server((aa_client_opts){0}, &lfd, &fd);
	// We never read: past the socket's buffer the Starts wait in the
	// client's queue.
	static char payload[256 * 1024];
	aa_op *ops[16];
	aa_client_stats cst;
	for (int i = 0; i < 16; i++) {
		cr_assert_eq(aa_client_call(&ops[i], c, "echo", payload,
		                            sizeof(payload), NULL, NULL),
		             0);
	}
	aa_client_stats_get(c, &cst);
	cr_assert_gt(cst.send_queued, 0, "nothing waits to be written");
	close(fd); // the server is gone
	for (int i = 0; i < 16; i++) {
		while (aa_op_status(ops[i]) == AA_STARTED) {
			sched_yield(); // the loss ends them all
		}
		cr_assert_eq(aa_op_error(ops[i]), AA_ECONNLOST);
		aa_op_unref(ops[i]);
	}
	aa_client_stats_get(c, &cst);
	cr_assert_eq(cst.send_queued, 0,
	             "a lost connection's bytes still counted: %llu",
	             (unsigned long long)cst.send_queued);
	aa_client_free(c);
	close(lfd);
}

// The client's side of the Goodbye: past send_queue_max it drops a server
// that stopped reading with Goodbye{ELIMIT} behind the Start it was
// writing; the server, reading again before the linger ends, gets the
// Starts that were being written, the Goodbye, then EOF. The client's
// queued bytes go back at the drop; its calls end AA_ELIMIT at the close.
Test(server, a_client_says_goodbye_to_a_server_that_never_reads,
     .timeout = 120)
{
	if (!goodbye_backend()) {
		return;
	}
	aai_tp_set_linger_ms(600 * 1000); // never within this test
	int lfd, fd;
	aa_client *c = raw_echo_server(
	    (aa_client_opts){.send_queue_max = 2 << 20}, &lfd, &fd);
	static char payload[256 * 1024];
	aa_op *ops[32];
	int n = 0;
	for (; n < 32; n++) { // 8 MiB for a 2 MiB send_queue_max
		if (aa_client_call(&ops[n], c, "echo", payload,
		                   sizeof(payload), NULL, NULL) != 0) {
			break;
		}
	}
	cr_assert_gt(n, 0);
	aa_client_stats cst;
	do { // an observed event: the drop gave the queued bytes back
		sched_yield();
		aa_client_stats_get(c, &cst);
	} while (cst.send_queued != 0);
	// The server reads again.
	int starts =
	    read_to_goodbye(fd, AAI_WIRE_START, "did not read its requests");
	test_note("%d of %d Starts were written, then the Goodbye", starts, n);
	cr_assert_lt(starts, n, "the queued Starts were discarded");
	close(fd); // ends the linger
	int limited = 0;
	for (int i = 0; i < n; i++) {
		while (aa_op_status(ops[i]) == AA_STARTED) {
			sched_yield(); // the close ends them all
		}
		limited += aa_op_error(ops[i]) == AA_ELIMIT;
		aa_op_unref(ops[i]);
	}
	cr_assert_eq(limited, n, "every call ends with AA_ELIMIT");
	aa_client_stats_get(c, &cst);
	cr_assert_eq(cst.send_limit_drops, 1, "the drop is counted");
	aa_client_free(c);
	close(lfd);
	aai_tp_set_linger_ms(0);
}

// The other side of the version check: a server that answers with a
// version-2 Hello makes aa_client_open fail with AA_ENOTSUP.
static struct {
	aai_conn *conn;
	aai_wire_arena arena;
	uint8_t abuf[4096];
	uint32_t version;
	bool bye_on_start; // answer a Start with Goodbye{bye_reason}
	uint32_t bye_reason;
	gate goodbye; // the client's Goodbye arrived
	gate down;    // the connection to the client ended
	uint32_t goodbye_reason;
	char goodbye_text[128];
} fake;

static void
fake_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	aai_wire_msg m;
	if (aai_wire_decode(&m, NULL, &fake.arena, data, len, 0) != 0) {
		return;
	}
	if (m.kind == AAI_WIRE_GOODBYE) {
		fake.goodbye_reason = m.goodbye.reason;
		snprintf(fake.goodbye_text, sizeof(fake.goodbye_text), "%s",
		         m.goodbye.message ? m.goodbye.message : "");
		gate_open(&fake.goodbye);
		return;
	}
	if (m.kind == AAI_WIRE_START && fake.bye_on_start) {
		aai_wire_msg g;
		aai_wire_goodbye(&g, fake.bye_reason, "the fake says goodbye");
		(void)aai_wire_send(c, &g, 0);
		return;
	}
	if (m.kind != AAI_WIRE_HELLO) {
		return;
	}
	static const aai_wire_method hold = {.name = "hold",
	                                     .cancel_types = 7};
	aai_wire_msg h;
	aai_wire_hello_server(&h, 1, 1u << 20, 10, 0, &hold, 1);
	h.hello.version = fake.version;
	(void)aai_wire_send(c, &h, 0);
}

static void
fake_down(void *arg, aai_conn *c, int err)
{
	gate_open(&fake.down);
}

static void
fake_accept(void *arg, aai_conn *c)
{
	static const aai_conn_cbs cbs = {.frame = fake_frame,
	                                 .down = fake_down};
	fake.conn = c;
	aai_conn_start(c, &cbs, NULL);
}

// The client's Goodbye leaves before its link ends, on every transport:
// over a stream transport the Hello's batch is corked, and a close from
// the callback discarded it every time. It stays best effort there: a
// thread that still holds the connection's send token when the batch
// ends (the opener, just done writing its Hello) writes it only if it is
// not closed first. So over ipc each attempt waits for the end of the
// connection and looks for the Goodbye before it; attempts go on until one
// has it (without the batch's end, none ever does).
static void
client_refuses_version(bool ipc)
{
	fx_url(ipc);
	aai_wire_arena_init(&fake.arena, fake.abuf, sizeof(fake.abuf));
	aai_listener *l;
	cr_assert_eq(aai_listen(&l, fx.url, NULL, fake_accept, NULL), 0);
	fake.version = 2;
	int attempts = 0;
	bool said = false;
	while (!said && attempts < (ipc ? 20 : 1)) {
		attempts++;
		gate_init(&fake.goodbye);
		gate_init(&fake.down);
		aa_client *c = NULL;
		aa_client_opts co = {.url = fx.url};
		cr_assert_eq(aa_client_open(&c, &co), AA_ENOTSUP);
		cr_assert_null(c);
		if (ipc) {
			gate_wait(&fake.down); // after any Goodbye frame
			said = gate_is_open(&fake.goodbye);
		} else {
			gate_wait(&fake.goodbye);
			said = true;
		}
		aai_conn_free(fake.conn);
		gate_fini(&fake.goodbye);
		gate_fini(&fake.down);
	}
	cr_assert(said, "no Goodbye in %d attempts", attempts);
	test_note("the client's Goodbye came at attempt %d", attempts);
	// The client said why, with the text of docs/protocol.md § 4.
	cr_assert_eq(fake.goodbye_reason, AA_ENOTSUP);
	cr_assert_str_eq(fake.goodbye_text,
	                 "protocol version 2 not supported; client speaks 1");
	aai_listener_free(l);
	aai_wire_arena_fini(&fake.arena);
}

Test(server, a_client_refuses_another_protocol_version)
{
	client_refuses_version(false);
}

Test(server_ipc, a_client_refuses_another_protocol_version)
{
	client_refuses_version(true);
}

// The server's Goodbye reason and text reach the ops it ends: a fake
// server answers a Start with Goodbye{reason}. EUNAVAIL is tested with
// the real server (test_client.c); here every other kind, and 0 and
// ECLOSED, which read as EUNAVAIL (protocol.md § 10).
Test(server, the_goodbye_reason_reaches_the_ops_it_ends)
{
	static const struct {
		uint32_t sent;
		int seen;
	} cases[] = {{AA_EPROTO, AA_EPROTO},
	             {AA_EMSGSIZE, AA_EMSGSIZE},
	             {AA_ENOTSUP, AA_ENOTSUP},
	             {0, AA_EUNAVAIL},
	             {AA_ECLOSED, AA_EUNAVAIL}};
	fx_url(false);
	aai_wire_arena_init(&fake.arena, fake.abuf, sizeof(fake.abuf));
	aai_listener *l;
	cr_assert_eq(aai_listen(&l, fx.url, NULL, fake_accept, NULL), 0);
	fake.version = 1;
	fake.bye_on_start = true;
	gate_init(&fake.goodbye); // the fake's callbacks open them
	gate_init(&fake.down);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fake.bye_reason = cases[i].sent;
		aa_client *c = NULL;
		aa_client_opts co = {.url = fx.url};
		cr_assert_eq(aa_client_open(&c, &co), 0);
		aa_op *op;
		cr_assert_eq(
		    aa_client_call(&op, c, "hold", "x", 1, NULL, NULL), 0);
		while (aa_op_status(op) == AA_STARTED) {
			sched_yield(); // ends when the Goodbye comes
		}
		cr_assert_eq(aa_op_status(op), AA_ERROR);
		cr_assert_eq(aa_op_error(op), cases[i].seen,
		             "Goodbye %u: error %d", cases[i].sent,
		             aa_op_error(op));
		cr_assert_str_eq(aa_op_error_msg(op), "the fake says goodbye");
		cr_assert_eq(aa_op_settlement(op), AA_SETTLE_UNKNOWN);
		aa_op_unref(op);
		aa_client_free(c);
		aai_conn_free(fake.conn);
		fake.conn = NULL;
	}
	aai_listener_free(l);
	aai_wire_arena_fini(&fake.arena);
	gate_fini(&fake.goodbye);
	gate_fini(&fake.down);
}

Test(server, stop_from_a_callback_is_edeadlk)
{
	fx_url(false);
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "stopper", NULL, 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_REJECTED);
	cr_assert_eq(fx.stop_rv, AA_EDEADLK);
	rawc_free(r);
}

Test(server, bad_arguments)
{
	fx_url(false);
	aa_server *s;
	cr_assert_eq(
	    aa_server_alloc(&s, &(aa_server_opts){.max_msg_size = 100}),
	    AA_EINVAL);
	cr_assert_eq(aa_server_alloc(&s, NULL), 0);
	aa_method_def bad = {.name = "", .start = m_echo};
	cr_assert_eq(aa_server_register(s, &bad), AA_EINVAL);
	bad.name = "x";
	bad.start = NULL;
	cr_assert_eq(aa_server_register(s, &bad), AA_EINVAL);
	bad.start = m_echo;
	bad.cancel_types = 8;
	cr_assert_eq(aa_server_register(s, &bad), AA_EINVAL);
	cr_assert_neq(aa_server_listen(s, "bogus://x"), 0);
	cr_assert_eq(aa_server_port(s), 0);
	cr_assert_str_eq(aa_server_event_name(AA_SEV_REPLY_SENT),
	                 "reply_sent");
	aa_server_free(s);
}

Test(server, tcp_port_zero)
{
	fx_url(false);
	fx_serve(NULL);
	cr_assert_eq(aa_server_listen(fx.s, "tcp://127.0.0.1:0"), 0);
	int port = aa_server_port(fx.s);
	cr_assert_gt(port, 0);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	rawc *r = rawc_open(url, 1, NULL);
	rawc_start(r, 1, "echo", "tcp", 0);
	cr_assert_eq(rawc_complete(r, 1).status, AAI_WIRE_COMPLETED);
	rawc_free(r);
}

Test(server, result_too_big_for_the_client_fails_emsgsize)
{
	fx_url(false);
	fx_serve(NULL);
	hello_max = 512;
	rawc *r = rawc_open(fx.url, 1, NULL);
	hello_max = 1u << 20;
	char big[600];
	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	rawc_start(r, 1, "echo", big, 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_FAILED);
	cr_assert_eq(c.error, AA_EMSGSIZE);
	rawc_start(r, 2, "echo", "small", 0);
	cr_assert_eq(rawc_complete(r, 2).status, AAI_WIRE_COMPLETED);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.wasted, 1);
	rawc_free(r);
}

Test(server, tls_tcp)
{
	fx_url(true); // a fresh directory for the certificates
	const char *d = fx.dir;
	make_test_certs(d);
	char cert[128], key[128], ca[128];
	snprintf(cert, sizeof(cert), "%s/server.pem", d);
	snprintf(key, sizeof(key), "%s/server.key", d);
	snprintf(ca, sizeof(ca), "%s/ca.pem", d);
	snprintf(fx.url, sizeof(fx.url), "tls+tcp://127.0.0.1:0");
	fx_serve(
	    &(aa_server_opts){.tls_cert_file = cert, .tls_key_file = key});
	char url[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d",
	         aa_server_port(fx.s));
	aai_tp_opts co = {.connect_timeout_ms = 5000,
	                  .tls_ca_file = ca,
	                  .tls_server_name = "localhost",
	                  .tls_verify_peer = true};
	dial_opts = &co;
	rawc *r = rawc_open(url, 1, NULL);
	dial_opts = NULL;
	rawc_start(r, 1, "echo", "secret", 0);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED);
	cr_assert_eq(memcmp(c.payload, "secret", 6), 0);
	rawc_free(r);
	aa_server_free(fx.s);
	fx.s = NULL;
}

// The in-flight timeline, forced: the server is held at
// "server.before_start" while the client's Cancel arrives behind the Start.
static void
hold_checkpoint(void *arg, const char *name, void *subject)
{
	if (strcmp(name, "server.before_start") == 0) {
		const aa_call_info *call = subject;
		cr_assert_eq(call->op_id, 1);
		cr_assert_str_eq(call->method, "hold");
		gate_open(&fx.hold_start);
		gate_wait(&fx.let_start);
	}
}

Test(server, held_before_start_then_cancelled)
{
	fx_url(false);
	aa_checkpoint_set(hold_checkpoint, NULL);
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "hold", NULL, 0);
	gate_wait(&fx.hold_start);
	rawc_cancel(r, 1); // queued behind the Start on the receive thread
	cr_assert_eq(fx_event(AA_SEV_START), 0);
	gate_open(&fx.let_start);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_CANCELED);
	rawc_free(r);
	aa_server_free(fx.s);
	fx.s = NULL;
	aa_checkpoint_set(NULL, NULL);
}

// The already-complete timeline, forced: the real op completed and its
// handler is held at "server.before_reply" while the client's Cancel
// arrives; the Cancel is logged "after completion", the Complete still
// goes out COMPLETED with cancel_received false, counted as wasted.
static void
reply_checkpoint(void *arg, const char *name, void *subject)
{
	if (strcmp(name, "server.before_reply") == 0) {
		cr_assert_eq(aa_op_status(subject), AA_COMPLETED);
		if (fx.hold_armed) {
			gate_open(&fx.hold_start);
			gate_wait(&fx.let_start);
		}
	}
}

static void *
complete_thread(void *arg)
{
	(void)aa_op_complete(arg, NULL, 0, NULL);
	return NULL;
}

Test(server, cancel_while_held_before_reply)
{
	fx_url(false);
	aa_checkpoint_set(reply_checkpoint, NULL);
	fx_serve(NULL);
	rawc *r = rawc_open(fx.url, 1, NULL);
	rawc_start(r, 1, "stubborn", NULL, 0);
	// Once echo 2 is answered, Start 1 was handled to its end (frames
	// of a connection are serialised): its handler is set.
	rawc_start(r, 2, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 2).status, AAI_WIRE_COMPLETED);
	fx.hold_armed = true; // echo's checkpoint returned before its send
	thr t;
	thr_start(&t, complete_thread, fx_op(0));
	gate_wait(&fx.hold_start); // the op is final, its reply not sent
	fx.hold_armed = false;     // (the held thread has passed the check)
	rawc_cancel(r, 1);
	// Once echo 3 is answered, the Cancel was handled (frames of a
	// connection are serialised). It is not logged yet: the server logs
	// a late Cancel after the op's outcome.
	rawc_start(r, 3, "echo", NULL, 0);
	cr_assert_eq(rawc_complete(r, 3).status, AAI_WIRE_COMPLETED);
	cr_assert_eq(fx_event(AA_SEV_CANCEL_RECEIVED), 0);
	gate_open(&fx.let_start);
	thr_join(&t);
	rmsg c = rawc_complete(r, 1);
	cr_assert_eq(c.status, AAI_WIRE_COMPLETED);
	cr_assert(!c.cancel_received,
	          "the op had finished before the Cancel came");
	fx_wait(AA_SEV_COMPENSATED, 1);
	// The server's log: success, then the late Cancel.
	pthread_mutex_lock(&fx.mtx);
	cr_assert_eq(fx.events[AA_SEV_CANCEL_RECEIVED], 1);
	cr_assert_lt(fx.last_seq[AA_SEV_COMPLETED],
	             fx.last_seq[AA_SEV_CANCEL_RECEIVED]);
	cr_assert_str_eq(fx.last_cancel_detail,
	                 "after completion: the op had finished");
	pthread_mutex_unlock(&fx.mtx);
	aa_server_stats st;
	fx_stats(&st);
	cr_assert_eq(st.wasted, 1);
	cr_assert_eq(st.cancels_received, 0);
	cr_assert_eq(st.cancels_late, 1);
	rawc_free(r);
	aa_server_free(fx.s);
	fx.s = NULL;
	aa_checkpoint_set(NULL, NULL);
}
