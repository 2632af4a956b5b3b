// aa-client: the demo client of aaproxy. It calls one method of aa-server
// (once, or --repeat times with --concurrency calls outstanding), can cancel
// each call before it is submitted or some time after, and prints what the
// client saw: the final state, which cancellation timeline applied, how
// long the cancel took, and the server's real outcome (the settlement)
// once it is known. docs/demo.md is the guide.
//
// Design notes.
//
// Threads. With --concurrency 1 the calls run on the main thread; with K
// they run on K threads that take call numbers from one counter. A call's
// completion handler runs on the client layer's receive thread, or inline
// inside aa_op_cancel (then on the thread that cancelled), or on the
// deadline timer's thread.
//
// Waiting. One mutex and one condition variable (on the monotonic clock)
// serve every call. The completion handler sets its call's `done` under
// the mutex and broadcasts; the caller waits for `done`, with a timeout
// for --cancel-after-ms. Once the caller saw `done` under the mutex, the
// handler has let go of the call's state, so that state lives on the
// caller's stack. The settle handler may run after the caller stopped
// waiting for it (the settlement may come later than --settle-ms), so it
// touches no per-call state: its argument is NULL, it only broadcasts, and
// the caller reads aa_op_settlement(op), which the library sets before it
// runs the handler. The progress handler never runs after the completion
// handler has begun (aa_op's rule), so it may use the call's state.
#define _POSIX_C_SOURCE 200809L

#include <aa/aa.h>
#include <aa/service.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "demo.pb-c.h" // aa.demo.Demo, generated from demos/demo.proto

#define SETTLE_MS_DEFAULT 200 // after a cancel or a deadline
#define MAX_CONCURRENCY   1024

typedef struct options {
	const char *url;
	const char *method;
	const char *arg; // NULL: empty payload
	bool json;
	bool cancel_before_submit;
	long cancel_after_ms; // < 0: none
	aa_cancel_type cancel_type;
	long deadline_ms;
	long settle_ms; // < 0: the default
	long repeat;
	long concurrency;
	aa_client_opts co;
} options;

static options O;
static aa_client *client;
static uint64_t conn_id; // the server's id of our connection (its log)
static pthread_mutex_t wait_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_cv;
static pthread_mutex_t out_mtx = PTHREAD_MUTEX_INITIALIZER;
static atomic_long next_call;
static atomic_bool any_error;
static atomic_bool stop_calls; // the connection is gone: call no more
static bool progress_bar;

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// ---- JSON text ----

typedef struct text {
	char *s;
	size_t n;
	size_t cap;
} text;

static void
t_raw(text *t, const char *s, size_t len)
{
	if (t->n + len + 1 > t->cap) {
		size_t cap = t->cap == 0 ? 256 : t->cap;
		while (cap < t->n + len + 1) {
			cap *= 2;
		}
		char *p = realloc(t->s, cap);
		if (p == NULL) {
			return; // out of memory: the line is cut short
		}
		t->s = p;
		t->cap = cap;
	}
	memcpy(t->s + t->n, s, len);
	t->n += len;
	t->s[t->n] = '\0';
}

static void
t_str(text *t, const char *s)
{
	t_raw(t, s, strlen(s));
}

static void
t_fmt(text *t, const char *fmt, unsigned long long v)
{
	char b[32];
	int n = snprintf(b, sizeof(b), fmt, v);
	t_raw(t, b, (size_t)n);
}

// utf8_len returns the length of the valid UTF-8 sequence at p (at most
// len bytes), or 0 when the bytes there are not one.
static size_t
utf8_len(const unsigned char *p, size_t len)
{
	size_t n;
	unsigned min;
	unsigned cp;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
		min = 0x80;
		cp = p[0] & 0x1fu;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		min = 0x800;
		cp = p[0] & 0x0fu;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		min = 0x10000;
		cp = p[0] & 0x07u;
	} else {
		return 0;
	}
	if (n > len) {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0u) != 0x80u) {
			return 0;
		}
		cp = (cp << 6) | (p[i] & 0x3fu);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
		return 0;
	}
	return n;
}

// t_quoted appends data as a JSON string: quotes, backslashes and control
// characters escaped, valid UTF-8 kept, any other byte as \u00XX.
static void
t_quoted(text *t, const void *data, size_t len)
{
	const unsigned char *p = data;
	t_raw(t, "\"", 1);
	for (size_t i = 0; i < len;) {
		unsigned char ch = p[i];
		size_t u;
		if (ch == '"' || ch == '\\') {
			char e[2] = {'\\', (char)ch};
			t_raw(t, e, 2);
			i++;
		} else if (ch >= 0x20 && ch < 0x7f) {
			t_raw(t, (const char *)&p[i], 1);
			i++;
		} else if (ch >= 0x80 && (u = utf8_len(p + i, len - i)) > 0) {
			t_raw(t, (const char *)&p[i], u);
			i += u;
		} else {
			t_fmt(t, "\\u%04llx", ch);
			i++;
		}
	}
	t_raw(t, "\"", 1);
}

// ---- One call ----

typedef struct call_state {
	bool done;          // the completion handler ran (under wait_mtx)
	uint64_t done_ns;   // when
	bool bar_drawn;     // a progress bar is on stderr
	unsigned bar_width; // columns of the bar drawn so far
} call_state;

static void
on_done(aa_op *op, void *arg)
{
	call_state *cs = arg;
	(void)op;
	pthread_mutex_lock(&wait_mtx);
	cs->done = true;
	cs->done_ns = now_ns();
	pthread_cond_broadcast(&wait_cv);
	pthread_mutex_unlock(&wait_mtx);
}

static void
on_settled(aa_op *op, void *arg)
{
	(void)op;
	(void)arg;
	pthread_mutex_lock(&wait_mtx);
	pthread_cond_broadcast(&wait_cv);
	pthread_mutex_unlock(&wait_mtx);
}

// on_progress draws "[#####     ] 5/10" on stderr (a terminal), from a
// payload "K/N" as aa-server's count sends it.
static void
on_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	call_state *cs = arg;
	char buf[48];
	unsigned long long k = 0;
	unsigned long long n = 0;
	(void)op;
	if (len >= sizeof(buf)) {
		return;
	}
	memcpy(buf, data, len);
	buf[len] = '\0';
	if (sscanf(buf, "%llu/%llu", &k, &n) != 2 || n == 0 || k > n) {
		fprintf(stderr, "\rprogress: %s", buf);
		cs->bar_drawn = true;
		return;
	}
	unsigned width = 30;
	unsigned full = (unsigned)(k * width / n);
	char bar[32];
	for (unsigned i = 0; i < width; i++) {
		bar[i] = i < full ? '#' : '.';
	}
	bar[width] = '\0';
	fprintf(stderr, "\r[%s] %llu/%llu", bar, k, n);
	fflush(stderr);
	cs->bar_drawn = true;
	cs->bar_width = width;
}

// wait_done waits for the completion handler, at most timeout_ms when it
// is >= 0; says whether it ran.
static bool
wait_done(call_state *cs, long timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	if (timeout_ms >= 0) {
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (timeout_ms % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
	}
	pthread_mutex_lock(&wait_mtx);
	while (!cs->done) {
		if (timeout_ms < 0) {
			pthread_cond_wait(&wait_cv, &wait_mtx);
		} else if (pthread_cond_timedwait(&wait_cv, &wait_mtx,
		                                  &until) == ETIMEDOUT) {
			break;
		}
	}
	bool done = cs->done;
	pthread_mutex_unlock(&wait_mtx);
	return done;
}

// wait_settled waits up to timeout_ms for the op's settlement.
static aa_settlement
wait_settled(aa_op *op, long timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&wait_mtx);
	aa_settlement s;
	while ((s = aa_op_settlement(op)) == AA_SETTLE_PENDING &&
	       timeout_ms > 0) {
		if (pthread_cond_timedwait(&wait_cv, &wait_mtx, &until) ==
		    ETIMEDOUT) {
			s = aa_op_settlement(op);
			break;
		}
	}
	pthread_mutex_unlock(&wait_mtx);
	return s;
}

// What one call ended as, for the report.
typedef struct outcome {
	uint64_t op_id;
	const char *status; // completed, canceled, error
	aa_timeline timeline;
	aa_settlement settlement;
	const void *result;
	size_t result_len;
	int error;
	int32_t app_code; // with error AA_EAPP: the application's code
	const char *error_msg;
	bool cancel_called;
	uint64_t cancel_ns;
	uint64_t elapsed_ns;
} outcome;

static void
error_text(text *t, const outcome *oc)
{
	if (oc->error == AA_EAPP) {
		// The application's code, never read as a library code.
		char b[48];
		snprintf(b, sizeof(b), "application error %d",
		         (int)oc->app_code);
		t_str(t, b);
		if (oc->error_msg != NULL && oc->error_msg[0] != '\0') {
			t_str(t, ": ");
			t_str(t, oc->error_msg);
		}
		return;
	}
	t_str(t, aa_strerror(oc->error));
	if (oc->error_msg != NULL && oc->error_msg[0] != '\0' &&
	    strcmp(oc->error_msg, aa_strerror(oc->error)) != 0) {
		t_str(t, ": ");
		t_str(t, oc->error_msg);
	}
}

static void
t_duration(text *t, uint64_t ns)
{
	char b[32];
	if (ns < 10000u) {
		snprintf(b, sizeof(b), "%.1f us", (double)ns / 1000.0);
	} else if (ns < 10000000u) {
		snprintf(b, sizeof(b), "%llu us",
		         (unsigned long long)(ns / 1000u));
	} else {
		snprintf(b, sizeof(b), "%llu ms",
		         (unsigned long long)(ns / 1000000u));
	}
	t_str(t, b);
}

static const char *
timeline_words(aa_timeline tl)
{
	switch (tl) {
	case AA_TIMELINE_PRE_SUBMIT:
		return "pre-submit: nothing was sent";
	case AA_TIMELINE_IN_FLIGHT:
		return "in flight";
	case AA_TIMELINE_ALREADY_COMPLETE:
		return "already complete: the result was dropped";
	case AA_TIMELINE_NONE:
		break;
	}
	return "not cancelled";
}

static void
report(const outcome *oc)
{
	text t = {0};
	if (O.json) {
		t_fmt(&t, "{\"op\":%llu", oc->op_id);
		t_fmt(&t, ",\"client\":%llu", conn_id);
		t_str(&t, ",\"method\":");
		t_quoted(&t, O.method, strlen(O.method));
		t_str(&t, ",\"status\":\"");
		t_str(&t, oc->status);
		t_str(&t, "\",\"cancel\":\"");
		t_str(&t, aa_timeline_name(oc->timeline));
		t_str(&t, "\",\"server_outcome\":\"");
		t_str(&t, aa_settlement_name(oc->settlement));
		t_str(&t, "\",\"result\":");
		t_quoted(&t, oc->result, oc->result_len);
		t_str(&t, ",\"error\":");
		if (oc->error != 0) {
			text e = {0};
			error_text(&e, oc);
			t_quoted(&t, e.s, e.n);
			free(e.s);
		} else {
			t_str(&t, "\"\"");
		}
		t_fmt(&t, ",\"error_code\":%llu", (unsigned)oc->error);
		if (oc->error == AA_EAPP) {
			char b[32];
			snprintf(b, sizeof(b), ",\"app_code\":%d",
			         (int)oc->app_code);
			t_str(&t, b);
		}
		if (oc->cancel_called) {
			char b[40];
			snprintf(b, sizeof(b), ",\"cancel_us\":%.3f",
			         (double)oc->cancel_ns / 1000.0);
			t_str(&t, b);
		} else {
			t_str(&t, ",\"cancel_us\":0");
		}
		t_fmt(&t, ",\"elapsed_us\":%llu}\n", oc->elapsed_ns / 1000u);
	} else {
		t_fmt(&t, "op %llu: ", oc->op_id);
		t_str(&t, oc->status);
		if (strcmp(oc->status, "completed") == 0) {
			t_str(&t, " after ");
			t_duration(&t, oc->elapsed_ns);
			t_str(&t, ": ");
			t_quoted(&t, oc->result, oc->result_len);
		} else if (strcmp(oc->status, "canceled") == 0) {
			t_str(&t, " (");
			t_str(&t, timeline_words(oc->timeline));
			t_str(&t, ")");
			if (oc->cancel_called) {
				t_str(&t, " in ");
				t_duration(&t, oc->cancel_ns);
			}
		} else if (oc->error == AA_EAPP) {
			t_str(&t, ": ");
			error_text(&t, oc);
			t_str(&t, " after ");
			t_duration(&t, oc->elapsed_ns);
		} else {
			t_fmt(&t, " %llu (", (unsigned)oc->error);
			error_text(&t, oc);
			t_str(&t, ") after ");
			t_duration(&t, oc->elapsed_ns);
		}
		t_str(&t, "; server: ");
		t_str(&t, aa_settlement_name(oc->settlement));
		if (oc->settlement == AA_SETTLE_PENDING) {
			t_str(&t, " (not known yet)");
		}
		t_str(&t, "\n");
	}
	pthread_mutex_lock(&out_mtx);
	if (t.s != NULL) {
		fputs(t.s, stdout);
	}
	fflush(stdout);
	pthread_mutex_unlock(&out_mtx);
	free(t.s);
}

// report_call_error reports a call that made no op (aa_client_call or
// aa_service_call failed); why (may be NULL) comes before "the call was
// refused locally".
static void
report_call_error(int err, const char *why)
{
	char msg[256];
	snprintf(msg, sizeof(msg), "%s%sthe call was refused locally",
	         why != NULL ? why : "", why != NULL ? ": " : "");
	outcome oc = {.status = "error",
	              .settlement = AA_SETTLE_NEVER_STARTED,
	              .error = err,
	              .error_msg = msg};
	report(&oc);
}

// cancel_now cancels op and measures how long aa_op_cancel took.
static void
cancel_now(aa_op *op, outcome *oc)
{
	uint64_t t0 = now_ns();
	int rv = aa_op_cancel(op, O.cancel_type);
	oc->cancel_ns = now_ns() - t0;
	oc->cancel_called = true;
	if (rv == AA_ENOTSUP) {
		fprintf(stderr,
		        "aa-client: %s does not honour a %s cancel; use "
		        "--cancel-type terminal\n",
		        O.method, aa_cancel_type_name(O.cancel_type));
	}
}

// ---- aa.demo.Demo: typed calls by full name ----
//
// "call aa.demo.Demo/Echo '{"text":"hi"}'" calls the typed service of
// demos/demo.proto (docs/services.md): ARG is the input message as JSON
// (default {}), parsed once before connecting; a completed call's result
// is the output message as JSON text. Any other METHOD is a byte call.

#define DEMO_SERVICE (&aa__demo__demo__descriptor)

static const ProtobufCMethodDescriptor *typed_md; // NULL: a byte call
static ProtobufCMessage *typed_input;             // the parsed ARG
static bool typed_unknown; // aa.demo.Demo/X with no method X

// typed_prepare recognises a typed METHOD and parses its ARG: 0, or 2 (a
// usage error) after saying why.
static int
typed_prepare(void)
{
	size_t n = strlen(DEMO_SERVICE->name);
	char err[256];
	if (strncmp(O.method, DEMO_SERVICE->name, n) != 0 ||
	    O.method[n] != '/') {
		return 0;
	}
	typed_md = protobuf_c_service_descriptor_get_method_by_name(
	    DEMO_SERVICE, O.method + n + 1);
	if (typed_md == NULL) {
		typed_unknown = true; // fails AA_ENOENT, as a byte call would
		return 0;
	}
	const char *arg = O.arg != NULL ? O.arg : "{}";
	if (aa_service_from_json(&typed_input, typed_md->input, arg,
	                         strlen(arg), err, sizeof(err)) != 0) {
		fprintf(stderr, "aa-client: bad %s for %s: %s\n",
		        typed_md->input->name, O.method, err);
		return 2;
	}
	return 0;
}

static int
typed_call(aa_op **opp, const aa_call_opts *co)
{
	if (typed_unknown) {
		return AA_ENOENT;
	}
	return aa_service_call(opp, client, DEMO_SERVICE, typed_md->name,
	                       typed_input, co, NULL);
}

// typed_result returns a completed typed op's result as JSON (to free),
// or NULL when it does not decode.
static char *
typed_result(aa_op *op)
{
	ProtobufCMessage *out;
	char *json = NULL;
	if (aa_service_result(&out, op, typed_md->output) == 0) {
		aa_service_to_json(&json, NULL, out);
		aa_service_result_free(op, out);
	}
	return json;
}

static void
run_call(void)
{
	call_state cs = {0};
	outcome oc = {0};
	aa_op *op = NULL;
	aa_call_opts co = {.deadline_ms = (uint32_t)O.deadline_ms};
	const char *arg = O.arg != NULL ? O.arg : "";
	uint64_t t0 = now_ns();
	char *typed_json = NULL;
	int rv;

	if (O.cancel_before_submit) {
		// Held back: the Start stays queued until the uncork, so the
		// cancel below finds it pre-submit and nothing is ever sent.
		aa_client_cork(client);
	}
	if (typed_md != NULL || typed_unknown) {
		rv = typed_call(&op, &co);
	} else {
		rv = aa_client_call(&op, client, O.method, arg, strlen(arg),
		                    &co, NULL);
	}
	if (rv != 0) {
		if (O.cancel_before_submit) {
			aa_client_uncork(client);
		}
		atomic_store(&any_error, true);
		if (rv == AA_ECONNLOST || rv == AA_EUNAVAIL ||
		    rv == AA_ECLOSED) {
			atomic_store(&stop_calls, true);
		}
		// A typed call the server's fingerprint refused: say so
		// (docs/services.md, "Errors, and where each is found").
		report_call_error(rv, typed_md != NULL && rv == AA_ENOTSUP
		                          ? "the server's method has other "
		                            "message types (another "
		                            "demo.proto)"
		                          : NULL);
		return;
	}
	oc.op_id = aa_client_op_id(op);
	if (progress_bar) {
		aa_op_set_progress_handler(op, on_progress, &cs);
	}
	aa_op_set_handler(op, on_done, &cs);
	aa_op_set_settle_handler(op, on_settled, NULL);
	if (O.cancel_before_submit) {
		cancel_now(op, &oc);
		aa_client_uncork(client);
	} else if (O.cancel_after_ms >= 0) {
		if (!wait_done(&cs, O.cancel_after_ms)) {
			cancel_now(op, &oc);
		}
	}
	wait_done(&cs, -1);
	if (cs.bar_drawn) {
		fprintf(stderr, "\r%*s\r", (int)cs.bar_width + 24, "");
		fflush(stderr);
	}
	oc.elapsed_ns = cs.done_ns - t0;

	long settle_ms = O.settle_ms;
	if (settle_ms < 0) {
		// A cancel, or the client's own deadline: the server's late
		// Complete tells what it really did.
		settle_ms = oc.cancel_called || aa_op_error(op) == AA_ETIMEDOUT
		                ? SETTLE_MS_DEFAULT
		                : 0;
	}
	oc.settlement = wait_settled(op, settle_ms);
	oc.timeline = aa_client_timeline(op);
	switch (aa_op_status(op)) {
	case AA_COMPLETED:
		oc.status = "completed";
		aa_op_result(op, &oc.result, &oc.result_len);
		if (typed_md != NULL &&
		    (typed_json = typed_result(op)) != NULL) {
			oc.result = typed_json;
			oc.result_len = strlen(typed_json);
		}
		break;
	case AA_CANCELED:
		oc.status = "canceled";
		break;
	default:
		oc.status = "error";
		oc.error = aa_op_error(op);
		(void)aa_op_app_code(op, &oc.app_code);
		oc.error_msg = aa_op_error_msg(op);
		atomic_store(&any_error, true);
		if (oc.error == AA_ECONNLOST || oc.error == AA_EUNAVAIL) {
			atomic_store(&stop_calls, true);
		}
		break;
	}
	report(&oc);
	free(typed_json);
	aa_op_unref(op);
}

static void *
caller(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop_calls) &&
	       atomic_fetch_add(&next_call, 1) < O.repeat) {
		run_call();
	}
	return NULL;
}

// ---- Options ----

static void
usage(FILE *f)
{
	const char *url = aa_default_url();
	fprintf(
	    f,
	    "usage: aa-client [options] call METHOD [ARG] [options]\n"
	    "Calls METHOD of aa-server with ARG as its payload (echo TEXT, "
	    "sleep MS,\n"
	    "spin MS, count N, fail CODE) and prints what happened.\n"
	    "METHOD aa.demo.Demo/Echo (/Sleep, /Count, /Fail) calls the typed "
	    "service\n"
	    "with ARG as JSON, e.g. '{\"ms\": 500}' (docs/services.md).\n"
	    "  --dial URL               server address (default "
	    "aa_default_url():\n"
	    "                           %s)\n"
	    "  --json                   one JSON object per operation\n"
	    "  --cancel-after-ms N      cancel N ms after the call, if not "
	    "done by then\n"
	    "  --cancel-before-submit   cancel before the Start is sent "
	    "(cork, call,\n"
	    "                           cancel, uncork): nothing is sent\n"
	    "  --cancel-type T          terminal (default), partial or "
	    "total\n"
	    "  --deadline-ms N          the call's deadline (default none)\n"
	    "  --settle-ms N            wait up to N ms for the server's "
	    "real outcome\n"
	    "                           (default 200 after a cancel, else "
	    "0)\n"
	    "  --repeat N               make N calls (default 1)\n"
	    "  --concurrency N          keep N calls outstanding (default "
	    "1)\n"
	    "  --heartbeat-ms N         heartbeat interval (default 1000)\n"
	    "  --dead-after-ms N        silence that means the server is "
	    "gone\n"
	    "                           (default 3 heartbeats)\n"
	    "  --connect-timeout-ms N   (default 5000)\n"
	    "  --max-msg BYTES          largest message (default 1 MiB)\n"
	    "  --tls-ca FILE            CA of the server (tls+tcp://); "
	    "verifies it\n"
	    "  --tls-server-name NAME   name the server certificate must "
	    "carry\n"
	    "  --tls-cert FILE, --tls-key FILE   a client certificate\n"
	    "  --help                   this text\n"
	    "Exit status: 0 when every call completed or was cancelled, 1 "
	    "when one\n"
	    "ended in error (or could not connect), 2 for a usage error.\n",
	    url != NULL ? url : "(none)");
}

static bool
parse_long(const char *s, long lo, long hi, long *v)
{
	char *end;
	errno = 0;
	long x = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || x < lo || x > hi) {
		return false;
	}
	*v = x;
	return true;
}

static const char *const value_options[] = {
    "--dial",
    "--cancel-after-ms",
    "--cancel-type",
    "--deadline-ms",
    "--settle-ms",
    "--repeat",
    "--concurrency",
    "--heartbeat-ms",
    "--dead-after-ms",
    "--connect-timeout-ms",
    "--max-msg",
    "--tls-ca",
    "--tls-server-name",
    "--tls-cert",
    "--tls-key",
};

// takes_value says whether name is an option that takes a value.
static bool
takes_value(const char *name)
{
	for (size_t i = 0;
	     i < sizeof(value_options) / sizeof(value_options[0]); i++) {
		if (strcmp(name, value_options[i]) == 0) {
			return true;
		}
	}
	return false;
}

// option_value handles one option that takes a value; false when it is
// not one of them or the value is bad.
static bool
option_value(const char *name, const char *val)
{
	long v;
	if (strcmp(name, "--dial") == 0) {
		O.url = val;
	} else if (strcmp(name, "--cancel-after-ms") == 0 &&
	           parse_long(val, 0, INT32_MAX, &v)) {
		O.cancel_after_ms = v;
	} else if (strcmp(name, "--cancel-type") == 0) {
		if (strcmp(val, "terminal") == 0) {
			O.cancel_type = AA_CANCEL_TERMINAL;
		} else if (strcmp(val, "partial") == 0) {
			O.cancel_type = AA_CANCEL_PARTIAL;
		} else if (strcmp(val, "total") == 0) {
			O.cancel_type = AA_CANCEL_TOTAL;
		} else {
			return false;
		}
	} else if (strcmp(name, "--deadline-ms") == 0 &&
	           parse_long(val, 0, UINT32_MAX, &v)) {
		O.deadline_ms = v;
	} else if (strcmp(name, "--settle-ms") == 0 &&
	           parse_long(val, 0, INT32_MAX, &v)) {
		O.settle_ms = v;
	} else if (strcmp(name, "--repeat") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.repeat = v;
	} else if (strcmp(name, "--concurrency") == 0 &&
	           parse_long(val, 1, MAX_CONCURRENCY, &v)) {
		O.concurrency = v;
	} else if (strcmp(name, "--heartbeat-ms") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.co.heartbeat_ms = (int)v;
	} else if (strcmp(name, "--dead-after-ms") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.co.dead_after_ms = (int)v;
	} else if (strcmp(name, "--connect-timeout-ms") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.co.connect_timeout_ms = (int)v;
	} else if (strcmp(name, "--max-msg") == 0 &&
	           parse_long(val, 512, INT32_MAX, &v)) {
		O.co.max_msg_size = (size_t)v;
	} else if (strcmp(name, "--tls-ca") == 0) {
		O.co.tls_ca_file = val;
		O.co.tls_verify = true;
	} else if (strcmp(name, "--tls-server-name") == 0) {
		O.co.tls_server_name = val;
	} else if (strcmp(name, "--tls-cert") == 0) {
		O.co.tls_cert_file = val;
	} else if (strcmp(name, "--tls-key") == 0) {
		O.co.tls_key_file = val;
	} else {
		return false;
	}
	return true;
}

// parse_options fills O: -1 to exit 0 (--help), 2 for a usage error, 0
// to go on. Options may come before and after "call METHOD [ARG]"; "--"
// ends them (for an ARG that starts with '-').
static int
parse_options(int argc, char **argv)
{
	const char *pos[3];
	int n_pos = 0;
	bool opts_done = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!opts_done && a[0] == '-' && a[1] != '\0') {
			if (strcmp(a, "--") == 0) {
				opts_done = true;
			} else if (strcmp(a, "--help") == 0 ||
			           strcmp(a, "-h") == 0) {
				usage(stdout);
				return -1;
			} else if (strcmp(a, "--json") == 0) {
				O.json = true;
			} else if (strcmp(a, "--cancel-before-submit") == 0) {
				O.cancel_before_submit = true;
			} else if (!takes_value(a)) {
				fprintf(stderr,
				        "aa-client: unknown option %s\n", a);
				return 2;
			} else if (i + 1 < argc &&
			           option_value(a, argv[i + 1])) {
				i++;
			} else {
				fprintf(stderr,
				        "aa-client: bad value for %s%s%s\n", a,
				        i + 1 < argc ? ": " : "",
				        i + 1 < argc ? argv[i + 1] : "");
				return 2;
			}
		} else if (n_pos < 3) {
			pos[n_pos++] = a;
		} else {
			fprintf(stderr, "aa-client: unexpected argument %s\n",
			        a);
			return 2;
		}
	}
	if (n_pos < 2 || strcmp(pos[0], "call") != 0) {
		fprintf(stderr, "aa-client: expected: call METHOD [ARG]; "
		                "try --help\n");
		return 2;
	}
	O.method = pos[1];
	O.arg = n_pos == 3 ? pos[2] : NULL;
	if (O.cancel_before_submit && O.cancel_after_ms >= 0) {
		fprintf(stderr, "aa-client: --cancel-after-ms and "
		                "--cancel-before-submit exclude each other\n");
		return 2;
	}
	if ((O.co.tls_cert_file == NULL) != (O.co.tls_key_file == NULL)) {
		fprintf(stderr, "aa-client: --tls-cert and --tls-key go "
		                "together\n");
		return 2;
	}
	if (O.concurrency > O.repeat) {
		O.concurrency = O.repeat;
	}
	return 0;
}

// ---- main ----

int
main(int argc, char **argv)
{
	pthread_condattr_t ca;
	int rv;

	O.cancel_after_ms = -1;
	O.settle_ms = -1;
	O.cancel_type = AA_CANCEL_TERMINAL;
	O.repeat = 1;
	O.concurrency = 1;
	if ((rv = parse_options(argc, argv)) != 0) {
		return rv < 0 ? 0 : rv;
	}
	if ((rv = typed_prepare()) != 0) {
		return rv;
	}
	if (O.url == NULL && (O.url = aa_default_url()) == NULL) {
		fprintf(stderr, "aa-client: no safe default address; use "
		                "--dial URL\n");
		return 1;
	}
	O.co.url = O.url;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&wait_cv, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&next_call, 0);
	atomic_init(&any_error, false);
	atomic_init(&stop_calls, false);
	progress_bar = !O.json && O.concurrency == 1 && isatty(STDERR_FILENO);

	if ((rv = aa_client_open(&client, &O.co)) != 0) {
		fprintf(stderr, "aa-client: cannot connect to %s: %s\n", O.url,
		        aa_strerror(rv));
		pthread_cond_destroy(&wait_cv);
		return 1;
	}
	// Taken now: after a connection loss the client reports 0.
	conn_id = aa_client_conn_id(client);
	if (O.concurrency == 1) {
		caller(NULL);
	} else {
		pthread_t threads[MAX_CONCURRENCY];
		long started = 0;
		for (; started < O.concurrency; started++) {
			if (pthread_create(&threads[started], NULL, caller,
			                   NULL) != 0) {
				break;
			}
		}
		if (started == 0) {
			caller(NULL);
		}
		for (long i = 0; i < started; i++) {
			pthread_join(threads[i], NULL);
		}
	}
	// Closing waits for the client's callbacks: the settle handlers of
	// ops whose settlement came late have run, or never will.
	aa_client_free(client);
	aa_service_message_free(typed_input);
	pthread_cond_destroy(&wait_cv);
	return atomic_load(&any_error) ? 1 : 0;
}
