// aa-server: the demo server of aaproxy. It serves five methods, each a real
// aa_op on the server, and writes one JSON line per server-side event, so
// that what the server saw can be set beside what aa-client saw (both name
// the op by the client's op id and the connection id). docs/demo.md is the
// guide. It also serves the typed service aa.demo.Demo (demos/demo.proto)
// with the same behaviour: see the block "aa.demo.Demo" below.
//
// Design notes.
//
// Methods run on a connection's receive thread: they start work and
// return. The work runs elsewhere: "sleep" and "count" on a timer queue,
// "spin" on a thread pool; "echo" and "fail" finish inside the method.
//
// References. The server owns the reference that a method returns. Work
// that outlives the method (an armed timer, a queued spin) holds a second
// one, dropped by whoever ends that work: the timer function when it does
// not re-arm, the cancel function when it disarmed the timer (then the
// function will never run), the spin work when it is done.
//
// Races, "sleep" and "count" (cooperative cancel): the cancel function sets
// cancel_requested, then disarms the timer. If aa_timer_cancel returns 0
// the timer was armed and will not run: the cancel function finishes the
// op CANCELED. Otherwise the timer function ran (cancel waited for it); it
// finished the op, or ("count") tried to re-arm itself, which the waiting
// cancel refuses (AA_ECANCELED): the function then finishes it CANCELED. A
// timer function that sees the flag finishes the op CANCELED itself. Exactly
// one side drops the timer's reference: aa_timer_cancel decides it.
//
// "spin" ignores cancellation (its method honours only AA_CANCEL_TERMINAL,
// the weakest guarantee): it completes anyway, the client drops the late
// result, and the server runs the compensation hook. It stops early only
// when the server shuts down (AA_EUNAVAIL), so that shutdown never waits
// for long.
//
// Signals: SIGINT and SIGTERM are blocked before any thread starts, so
// every library thread inherits the mask, and main waits for them with
// sigwait. Shutdown: aa_server_free (says Goodbye, cancels every real op
// and waits for all of them to end), then the pool and the timer queue.
#define _POSIX_C_SOURCE 200809L

#include <aa/aa.h>
#include <aa/service.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "demo.pb-c.h" // aa.demo.Demo, generated from demos/demo.proto

#define MAX_LISTEN   16
#define MAX_SLEEP_MS (24u * 3600u * 1000u)
#define MAX_COUNT    1000000u
#define COUNT_STEP   10 // ms between two progress reports of "count"
#define TEXT_MAX     32

typedef struct server_ctx {
	aa_timer_queue *timers;
	aa_executor *pool;
	FILE *log;
	atomic_bool stopping;
} server_ctx;

static server_ctx G;

// ---- JSON log ----

// A line holds a 255-byte method name and a detail of at most
// DETAIL_MAX bytes even when every byte needs a 6-byte escape, so a line
// is never cut (a cut line would not be JSON).
#define DETAIL_MAX 1024

typedef struct jbuf {
	char s[8192];
	size_t n;
} jbuf;

static void
jb_raw(jbuf *b, const char *s, size_t len)
{
	size_t room = sizeof(b->s) - 1 - b->n;
	if (len > room) {
		len = room;
	}
	memcpy(b->s + b->n, s, len);
	b->n += len;
	b->s[b->n] = '\0';
}

static void
jb_str(jbuf *b, const char *s)
{
	jb_raw(b, s, strlen(s));
}

static void
jb_u64(jbuf *b, uint64_t v)
{
	char t[24];
	int n = snprintf(t, sizeof(t), "%llu", (unsigned long long)v);
	jb_raw(b, t, (size_t)n);
}

// utf8_len returns the length of the well-formed UTF-8 sequence at s,
// or 0 (ill-formed, truncated, overlong, a surrogate, above U+10FFFF).
static size_t
utf8_len(const unsigned char *s)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;
	if (s[0] < 0x80) {
		return 1;
	} else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		lo = s[0] == 0xe0 ? 0xa0 : 0x80;
		hi = s[0] == 0xed ? 0x9f : 0xbf;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		lo = s[0] == 0xf0 ? 0x90 : 0x80;
		hi = s[0] == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 0;
	}
	if (s[1] < lo || s[1] > hi) {
		return 0;
	}
	for (size_t i = 2; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			return 0;
		}
	}
	return n;
}

// jb_quoted appends at most max bytes of s as a JSON string: quotes,
// backslashes and control characters escaped, bytes that are not UTF-8
// written as U+FFFD, so that no byte a peer sent can make the line
// invalid JSON.
static void
jb_quoted_max(jbuf *b, const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t used = 0;
	jb_raw(b, "\"", 1);
	while (*p != '\0') {
		size_t k = utf8_len(p);
		char t[8];
		if (used + (k ? k : 1) > max) {
			break;
		}
		if (k == 0) {
			jb_str(b, "\\ufffd");
			k = 1;
		} else if (*p == '"' || *p == '\\') {
			t[0] = '\\';
			t[1] = (char)*p;
			jb_raw(b, t, 2);
		} else if (*p < 0x20 || *p == 0x7f) {
			int n = snprintf(t, sizeof(t), "\\u%04x", *p);
			jb_raw(b, t, (size_t)n);
		} else {
			jb_raw(b, (const char *)p, k);
		}
		p += k;
		used += k;
	}
	jb_raw(b, "\"", 1);
}

static void
jb_quoted(jbuf *b, const char *s)
{
	jb_quoted_max(b, s, DETAIL_MAX);
}

// log_line writes one JSON object per line, whole, and flushes it so that
// a reader of the file sees each event as it happens.
static void
log_line_app(uint64_t op_id, uint64_t conn_id, const char *method,
             const char *event, uint64_t t_us, int error, int32_t app_code,
             const char *detail)
{
	jbuf b = {.n = 0};
	jb_str(&b, "{\"op\":");
	jb_u64(&b, op_id);
	jb_str(&b, ",\"client\":");
	jb_u64(&b, conn_id);
	jb_str(&b, ",\"method\":");
	jb_quoted(&b, method != NULL ? method : "");
	jb_str(&b, ",\"event\":");
	jb_quoted(&b, event);
	jb_str(&b, ",\"t_us\":");
	jb_u64(&b, t_us);
	if (error != 0) {
		jb_str(&b, ",\"error\":");
		jb_u64(&b, (uint64_t)error);
		jb_str(&b, ",\"error_text\":");
		jb_quoted(&b, aa_strerror(error));
	}
	if (error == AA_EAPP) {
		// The application's own code: its own field, never "error".
		char t[16];
		int n = snprintf(t, sizeof(t), "%d", (int)app_code);
		jb_str(&b, ",\"app_code\":");
		jb_raw(&b, t, (size_t)n);
	}
	if (detail != NULL && detail[0] != '\0') {
		jb_str(&b, ",\"detail\":");
		jb_quoted(&b, detail);
	}
	jb_str(&b, "}\n");
	flockfile(G.log);
	fputs(b.s, G.log);
	fflush(G.log);
	funlockfile(G.log);
}

static void
log_line(uint64_t op_id, uint64_t conn_id, const char *method,
         const char *event, uint64_t t_us, int error, const char *detail)
{
	log_line_app(op_id, conn_id, method, event, t_us, error, 0, detail);
}

static void
on_server_event(void *arg, const aa_server_log_rec *rec)
{
	(void)arg;
	log_line_app(rec->op_id, rec->conn_id, rec->method,
	             aa_server_event_name(rec->event), rec->t_us, rec->error,
	             rec->app_code, rec->detail);
}

// ---- Arguments of the methods ----

// parse_arg reads the call's payload as a decimal number in [lo, hi].
static int
parse_arg(const void *payload, size_t len, uint64_t lo, uint64_t hi,
          uint64_t *v)
{
	const char *p = payload;
	uint64_t x = 0;
	if (len == 0 || len > 19) {
		return AA_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9') {
			return AA_EINVAL;
		}
		x = x * 10 + (uint64_t)(p[i] - '0');
	}
	if (x < lo || x > hi) {
		return AA_EINVAL;
	}
	*v = x;
	return 0;
}

// ---- echo: completes at once with the payload ----

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
	if (len > 0) {
		memcpy(aa_op_extra(*opp), payload, len);
	}
	// The result lives in the op's own memory: no release function.
	aa_op_complete(*opp, aa_op_extra(*opp), len, NULL);
	return 0;
}

// ---- sleep MS and count N: timed work on the timer queue ----

typedef struct timed_op {
	aa_timer timer;
	aa_op *op;
	uint64_t arg;  // sleep: the delay in ms; count: N
	uint64_t step; // count: progress reports made so far
	atomic_bool cancel_requested;
	char text[TEXT_MAX]; // the result, kept as long as the op
} timed_op;

static void
timed_complete(timed_op *t, uint64_t v)
{
	int n =
	    snprintf(t->text, sizeof(t->text), "%llu", (unsigned long long)v);
	aa_op_complete(t->op, t->text, (size_t)n, NULL);
}

// timed_cancel is the cancel function of "sleep" and "count": see the
// design notes for the race with the timer function.
static int
timed_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	timed_op *t = aa_op_extra(op);
	(void)type;
	(void)arg;
	atomic_store(&t->cancel_requested, true);
	while (aa_op_status(op) == AA_STARTED) {
		if (aa_timer_cancel(&t->timer) == 0) {
			// Disarmed: the function will not run, so its
			// reference is ours to drop (the server holds one).
			aa_op_canceled(op);
			aa_op_unref(op);
			break;
		}
	}
	return 0;
}

static void
sleep_fire(void *arg)
{
	timed_op *t = arg;
	if (atomic_load(&t->cancel_requested)) {
		aa_op_canceled(t->op);
	} else {
		timed_complete(t, t->arg);
	}
	aa_op_unref(t->op); // may free t: the queue no longer touches it
}

static void
count_fire(void *arg)
{
	timed_op *t = arg;
	char text[2 * TEXT_MAX];

	if (atomic_load(&t->cancel_requested)) {
		aa_op_canceled(t->op);
		aa_op_unref(t->op);
		return;
	}
	t->step++;
	int n =
	    snprintf(text, sizeof(text), "%llu/%llu",
	             (unsigned long long)t->step, (unsigned long long)t->arg);
	aa_op_progress(t->op, text, (size_t)n);
	if (t->step >= t->arg) {
		timed_complete(t, t->arg);
		aa_op_unref(t->op);
		return;
	}
	int rv = aa_timer_start(&t->timer, G.timers, COUNT_STEP);
	if (rv == AA_ECANCELED) {
		// A cancel is waiting for this function: it wins.
		aa_op_canceled(t->op);
		aa_op_unref(t->op);
	} else if (rv != 0) {
		aa_op_fail(t->op, AA_EUNAVAIL, "server shutting down");
		aa_op_unref(t->op);
	}
}

// timed_start makes a cooperative op whose work is fn on the timer queue,
// first run after delay_ms.
static int
timed_start(aa_op **opp, const aa_assoc *assoc, uint64_t v, aa_timer_fn fn,
            uint64_t delay_ms)
{
	aa_op_provider pv = {.cancel = timed_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = sizeof(timed_op)};
	aa_op *op;
	int rv = aa_op_alloc(&op, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	timed_op *t = aa_op_extra(op);
	t->op = op;
	t->arg = v;
	atomic_init(&t->cancel_requested, false);
	aa_timer_init(&t->timer, fn, t);
	aa_op_ref(op); // the timer's reference
	if ((rv = aa_timer_start(&t->timer, G.timers, delay_ms)) != 0) {
		aa_op_unref(op);
		aa_op_unref(op);
		return rv;
	}
	*opp = op;
	return 0;
}

static int
m_sleep(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
        size_t len, const aa_assoc *assoc)
{
	uint64_t ms;
	int rv = parse_arg(payload, len, 0, MAX_SLEEP_MS, &ms);
	if (rv != 0) {
		return rv;
	}
	return timed_start(opp, assoc, ms, sleep_fire, ms);
}

static int
m_count(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
        size_t len, const aa_assoc *assoc)
{
	uint64_t n;
	int rv = parse_arg(payload, len, 0, MAX_COUNT, &n);
	if (rv != 0) {
		return rv;
	}
	if (n == 0) {
		// Nothing to count: complete at once.
		aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
		                     .cancel_types = AA_CANCEL_ALL};
		if ((rv = aa_op_alloc(opp, &pv, assoc)) == 0) {
			aa_op_complete(*opp, "0", 1, NULL);
		}
		return rv;
	}
	return timed_start(opp, assoc, n, count_fire, COUNT_STEP);
}

// ---- spin MS: busy work on the pool that ignores cancellation ----

typedef struct spin_op {
	aa_op *op;
	uint64_t ms;
	atomic_bool cancel_seen;
	char text[TEXT_MAX];
} spin_op;

static int
spin_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	spin_op *s = aa_op_extra(op);
	(void)type;
	(void)arg;
	// Noted and ignored: this work cannot stop halfway.
	atomic_store(&s->cancel_seen, true);
	return 0;
}

static void
spin_work(void *arg)
{
	spin_op *s = arg;
	uint64_t until = aa_clock_us() + s->ms * 1000u;
	volatile uint64_t sink = 0;

	while (aa_clock_us() < until && !atomic_load(&G.stopping)) {
		for (int i = 0; i < 1000; i++) {
			sink += (uint64_t)i;
		}
	}
	if (aa_clock_us() < until) {
		aa_op_fail(s->op, AA_EUNAVAIL, "server shutting down");
	} else {
		int n = snprintf(s->text, sizeof(s->text), "spun %llu ms",
		                 (unsigned long long)s->ms);
		aa_op_complete(s->op, s->text, (size_t)n, NULL);
	}
	aa_op_unref(s->op); // the work's reference
}

static int
m_spin(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	uint64_t ms;
	int rv = parse_arg(payload, len, 0, MAX_SLEEP_MS, &ms);
	if (rv != 0) {
		return rv;
	}
	aa_op_provider pv = {.cancel = spin_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_TERMINAL,
	                     .extra = sizeof(spin_op)};
	aa_op *op;
	if ((rv = aa_op_alloc(&op, &pv, assoc)) != 0) {
		return rv;
	}
	spin_op *s = aa_op_extra(op);
	s->op = op;
	s->ms = ms;
	atomic_init(&s->cancel_seen, false);
	aa_op_ref(op); // the work's reference
	if ((rv = aa_executor_post(G.pool, spin_work, s)) != 0) {
		aa_op_unref(op);
		aa_op_unref(op);
		return rv;
	}
	*opp = op;
	return 0;
}

// spin_compensate runs when spin's result will not be used (the client
// had cancelled, or could not be told): a real method would undo its
// side effects here; this one says what was wasted.
static void
spin_compensate(void *arg, const aa_call_info *call, aa_op *op)
{
	spin_op *s = aa_op_extra(op);
	char detail[96];
	(void)arg;
	snprintf(detail, sizeof(detail),
	         "undo: %llu ms of work done for nothing%s",
	         (unsigned long long)s->ms,
	         atomic_load(&s->cancel_seen) ? " (cancel was ignored)" : "");
	log_line(call->op_id, call->conn_id, call->method, "compensate_hook",
	         aa_clock_us(), 0, detail);
}

// ---- fail CODE: fails at once with that application code ----

static int
m_fail(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
       size_t len, const aa_assoc *assoc)
{
	uint64_t mag;
	char msg[48];
	const char *p = payload;
	bool neg = len > 0 && p[0] == '-';
	// Any int32: the application's own code space, apart from AA_E*.
	int rv = parse_arg(p + neg, len - neg, 0,
	                   neg ? (uint64_t)INT32_MAX + 1 : INT32_MAX, &mag);
	if (rv != 0) {
		return rv;
	}
	int32_t code = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	if ((rv = aa_op_alloc(opp, &pv, assoc)) != 0) {
		return rv;
	}
	snprintf(msg, sizeof(msg), "fail %d requested", (int)code);
	aa_op_fail_app(*opp, code, msg);
	return 0;
}

// ---- aa.demo.Demo: the same methods as a typed service ----
//
// demos/demo.proto describes echo, sleep, count and fail as the typed
// service aa.demo.Demo (docs/services.md). Echo and Fail finish inside
// the method. Sleep and Count are pass-throughs over the byte methods: the
// typed op (the parent, the one the server sees) starts the byte method's
// real op (the child) with its input as text, forwards its own cancel
// and the child's progress, and finishes from the child's outcome: the
// child's text result becomes the typed reply, a cancelled or failed child
// ends the parent the same way.
//
// Race: the parent's cancel function (any thread) against the child's
// handler (the timer thread), which finishes the parent and drops the
// child. A spin flag guards the child pointer; the cancel takes its own
// reference under it, so a late cancel never touches a freed child.

typedef struct typed_op {
	atomic_flag lock;
	aa_op *child; // NULL once the child's handler took it
	aa_op *self;
	bool count; // Count (else Sleep): which reply to build
} typed_op;

static aa_op *
typed_child(typed_op *t, bool take)
{
	while (atomic_flag_test_and_set(&t->lock)) {
	}
	aa_op *c = t->child;
	if (take) {
		t->child = NULL;
	} else if (c != NULL) {
		aa_op_ref(c);
	}
	atomic_flag_clear(&t->lock);
	return c;
}

static int
typed_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	aa_op *c = typed_child(aa_op_extra(op), false);
	(void)arg;
	if (c != NULL) {
		aa_op_cancel(c, type);
		aa_op_unref(c);
	}
	return 0;
}

static void
typed_progress(aa_op *child, void *arg, const void *data, size_t len)
{
	typed_op *t = arg;
	(void)child;
	aa_op_progress(t->self, data, len);
}

static void
typed_child_done(aa_op *child, void *arg)
{
	typed_op *t = arg;
	aa_op *self = t->self;
	const void *data;
	size_t len;
	char text[TEXT_MAX] = "";

	switch (aa_op_status(child)) {
	case AA_COMPLETED:
		aa_op_result(child, &data, &len);
		memcpy(text, data,
		       len < sizeof(text) ? len : sizeof(text) - 1);
		uint32_t v = (uint32_t)strtoul(text, NULL, 10);
		if (t->count) {
			Aa__Demo__CountReply r = AA__DEMO__COUNT_REPLY__INIT;
			r.counted = v;
			aa_service_complete(self, &r.base);
		} else {
			Aa__Demo__SleepReply r = AA__DEMO__SLEEP_REPLY__INIT;
			r.slept_ms = v;
			aa_service_complete(self, &r.base);
		}
		break;
	case AA_CANCELED:
		aa_op_canceled(self);
		break;
	default:
		if (aa_op_error(child) == AA_EAPP) {
			int32_t app = 0;
			aa_op_app_code(child, &app);
			aa_op_fail_app(self, app, aa_op_error_msg(child));
		} else {
			aa_op_fail(self, aa_op_error(child),
			           aa_op_error_msg(child));
		}
		break;
	}
	typed_child(t, true);
	aa_op_unref(child); // the child's only reference: ours
	aa_op_unref(self);  // this handler's reference (may free t)
}

// typed_pass_through starts byte method fn with the decimal text of v as
// its payload, under a typed parent op.
static int
typed_pass_through(aa_op **opp, aa_method_fn fn, bool count, uint32_t v,
                   const aa_call_info *call, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = typed_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = sizeof(typed_op)};
	char text[TEXT_MAX];
	aa_op *self;
	aa_op *child;
	int n = snprintf(text, sizeof(text), "%u", (unsigned)v);
	int rv = aa_op_alloc(&self, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	if ((rv = fn(&child, NULL, call, text, (size_t)n, assoc)) != 0) {
		aa_op_unref(self);
		return rv;
	}
	typed_op *t = aa_op_extra(self);
	atomic_flag_clear(&t->lock);
	t->child = child;
	t->self = self;
	t->count = count;
	aa_op_ref(self); // the child's handler's
	aa_op_set_progress_handler(child, typed_progress, t);
	// A child already final runs the handler now: self is then final
	// when the server gets it, as echo's op is.
	aa_op_set_handler(child, typed_child_done, t);
	*opp = self;
	return 0;
}

static int
t_echo(aa_op **opp, void *arg, const aa_call_info *call,
       const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Aa__Demo__EchoRequest *in = (const Aa__Demo__EchoRequest *)input;
	Aa__Demo__EchoReply r = AA__DEMO__ECHO_REPLY__INIT;
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		r.text = in->text;
		aa_service_complete(*opp, &r.base);
	}
	return rv;
}

static int
t_sleep(aa_op **opp, void *arg, const aa_call_info *call,
        const ProtobufCMessage *input, const aa_assoc *assoc)
{
	uint32_t ms = ((const Aa__Demo__SleepRequest *)input)->ms;
	return typed_pass_through(opp, m_sleep, false, ms, call, assoc);
}

static int
t_count(aa_op **opp, void *arg, const aa_call_info *call,
        const ProtobufCMessage *input, const aa_assoc *assoc)
{
	uint32_t n = ((const Aa__Demo__CountRequest *)input)->n;
	return typed_pass_through(opp, m_count, true, n, call, assoc);
}

static int
t_fail(aa_op **opp, void *arg, const aa_call_info *call,
       const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Aa__Demo__FailRequest *in = (const Aa__Demo__FailRequest *)input;
	char text[TEXT_MAX];
	if (in->message == NULL || in->message[0] == '\0') {
		// The byte method, with its default text.
		int n = snprintf(text, sizeof(text), "%d", (int)in->code);
		return m_fail(opp, arg, call, text, (size_t)n, assoc);
	}
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_fail_app(*opp, in->code, in->message);
	}
	return rv;
}

static const aa_service_method demo_methods[] = {
    {.name = "Echo", .start = t_echo, .cancel_types = AA_CANCEL_ALL},
    {.name = "Sleep", .start = t_sleep, .cancel_types = AA_CANCEL_ALL},
    {.name = "Count", .start = t_count, .cancel_types = AA_CANCEL_ALL},
    {.name = "Fail", .start = t_fail, .cancel_types = AA_CANCEL_ALL},
};

// register_demo_service registers aa.demo.Demo on srv.
static int
register_demo_service(aa_service **svp, aa_server *srv)
{
	return aa_service_register(
	    svp, srv, &aa__demo__demo__descriptor, demo_methods,
	    sizeof(demo_methods) / sizeof(demo_methods[0]));
}

// ---- ipc:// addresses ----

// ipc_path returns the file of an ipc:// URL, or NULL.
static const char *
ipc_path(const char *url)
{
	return strncmp(url, "ipc://", 6) == 0 ? url + 6 : NULL;
}

// ipc_prepare removes a stale socket file at path, only if nothing
// answers on it; 0, or -1 with a message on stderr.
static int
ipc_prepare(const char *url, const char *path)
{
	struct stat st;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	if (lstat(path, &st) != 0) {
		return 0; // nothing there
	}
	if (!S_ISSOCK(st.st_mode)) {
		fprintf(stderr, "aa-server: %s exists and is not a socket\n",
		        path);
		return -1;
	}
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "aa-server: socket path too long: %s\n", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("aa-server: socket");
		return -1;
	}
	int rv = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	int err = errno;
	close(fd);
	if (rv == 0) {
		fprintf(stderr,
		        "aa-server: another server is listening on %s\n", url);
		return -1;
	}
	if (err != ECONNREFUSED) {
		fprintf(stderr, "aa-server: cannot probe %s: %s\n", path,
		        strerror(err));
		return -1;
	}
	if (unlink(path) != 0) {
		fprintf(stderr, "aa-server: cannot remove stale %s: %s\n",
		        path, strerror(errno));
		return -1;
	}
	return 0;
}

// ---- Options ----

typedef struct options {
	const char *listen[MAX_LISTEN];
	int n_listen;
	const char *log;
	aa_server_opts so;
	int threads;
} options;

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: aa-server [options]\n"
	        "Serves echo, sleep MS, spin MS, count N and fail CODE.\n"
	        "  --listen URL        listen on URL (repeatable; default "
	        "aa_default_url():\n"
	        "                      %s)\n"
	        "  --log FILE          JSON event log, one object a line "
	        "(appended;\n"
	        "                      '-' = stdout; default stderr)\n"
	        "  --max-pending N     pending ops per client (default "
	        "1024)\n"
	        "  --max-msg BYTES     largest message (default 1 MiB)\n"
	        "  --heartbeat-ms N    heartbeat interval (default 1000; "
	        "-1 = off)\n"
	        "  --dead-after-ms N   silence that ends a client (default "
	        "3 heartbeats)\n"
	        "  --threads N         worker threads for spin (default 4)\n"
	        "  --reply-delay-ms N  hold every Complete N ms before "
	        "sending it, as a\n"
	        "                      slow link would (a demo knob: it "
	        "makes a Cancel\n"
	        "                      and a Complete cross; default 0)\n"
	        "  --tls-cert FILE     certificate for tls+tcp:// (PEM)\n"
	        "  --tls-key FILE      its key (PEM)\n"
	        "  --tls-ca FILE       ask clients for certificates signed "
	        "by this CA\n"
	        "  --help              this text\n"
	        "SIGINT or SIGTERM shuts it down cleanly (exit 0).\n",
	        aa_default_url() != NULL ? aa_default_url() : "(none)");
}

// parse_int reads a decimal int in [lo, hi]; false when it is not one.
static bool
parse_int(const char *s, long lo, long hi, long *v)
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

// parse_options fills o; returns -1 to exit 0 (--help), 2 for a usage
// error, 0 to go on.
static int
parse_options(int argc, char **argv, options *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = NULL;
		long v;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return -1;
		}
		if (strncmp(a, "--", 2) != 0) {
			fprintf(stderr, "aa-server: unexpected argument %s\n",
			        a);
			return 2;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "aa-server: %s needs a value\n", a);
			return 2;
		}
		val = argv[++i];
		if (strcmp(a, "--listen") == 0) {
			if (o->n_listen == MAX_LISTEN) {
				fprintf(stderr, "aa-server: too many "
				                "--listen\n");
				return 2;
			}
			o->listen[o->n_listen++] = val;
		} else if (strcmp(a, "--log") == 0) {
			o->log = val;
		} else if (strcmp(a, "--max-pending") == 0 &&
		           parse_int(val, 1, INT32_MAX, &v)) {
			o->so.max_pending = (uint32_t)v;
		} else if (strcmp(a, "--max-msg") == 0 &&
		           parse_int(val, 512, INT32_MAX, &v)) {
			o->so.max_msg_size = (size_t)v;
		} else if (strcmp(a, "--heartbeat-ms") == 0 &&
		           parse_int(val, -1, INT32_MAX, &v)) {
			o->so.heartbeat_ms = (int)v;
		} else if (strcmp(a, "--dead-after-ms") == 0 &&
		           parse_int(val, -1, INT32_MAX, &v)) {
			o->so.dead_after_ms = (int)v;
		} else if (strcmp(a, "--threads") == 0 &&
		           parse_int(val, 1, 256, &v)) {
			o->threads = (int)v;
		} else if (strcmp(a, "--reply-delay-ms") == 0 &&
		           parse_int(val, 0, 600000, &v)) {
			o->so.reply_delay_ms = (int)v;
		} else if (strcmp(a, "--tls-cert") == 0) {
			o->so.tls_cert_file = val;
		} else if (strcmp(a, "--tls-key") == 0) {
			o->so.tls_key_file = val;
		} else if (strcmp(a, "--tls-ca") == 0) {
			o->so.tls_ca_file = val;
		} else {
			fprintf(stderr, "aa-server: bad option %s %s\n", a,
			        val);
			return 2;
		}
	}
	if ((o->so.tls_cert_file == NULL) != (o->so.tls_key_file == NULL)) {
		fprintf(stderr, "aa-server: --tls-cert and --tls-key go "
		                "together\n");
		return 2;
	}
	return 0;
}

// ---- main ----

static const aa_method_def methods[] = {
    {.name = "echo", .start = m_echo, .cancel_types = AA_CANCEL_ALL},
    {.name = "sleep", .start = m_sleep, .cancel_types = AA_CANCEL_ALL},
    {.name = "spin",
     .start = m_spin,
     .compensate = spin_compensate,
     .cancel_types = AA_CANCEL_TERMINAL},
    {.name = "count", .start = m_count, .cancel_types = AA_CANCEL_ALL},
    {.name = "fail", .start = m_fail, .cancel_types = AA_CANCEL_ALL},
};

// serve listens on every URL and waits for SIGINT or SIGTERM; the
// signals are blocked already. 0, or 1 when it could not listen.
static int
serve(aa_server *srv, const options *o, const sigset_t *sigs)
{
	char line[1024] = "";
	size_t n = 0;

	for (int i = 0; i < o->n_listen; i++) {
		const char *url = o->listen[i];
		const char *path = ipc_path(url);
		int rv;
		if (path != NULL && ipc_prepare(url, path) != 0) {
			return 1;
		}
		if ((rv = aa_server_listen(srv, url)) != 0) {
			fprintf(stderr, "aa-server: cannot listen on %s: %s\n",
			        url, aa_strerror(rv));
			return 1;
		}
		if (path != NULL && chmod(path, 0600) != 0) {
			fprintf(stderr, "aa-server: chmod %s: %s\n", path,
			        strerror(errno));
			return 1;
		}
		int w = snprintf(line + n, sizeof(line) - n, "%s%s",
		                 i > 0 ? " " : "", url);
		n += w > 0 && (size_t)w < sizeof(line) - n ? (size_t)w : 0;
		if (strncmp(url, "tcp://", 6) == 0 ||
		    strncmp(url, "tls+tcp://", 10) == 0) {
			w = snprintf(line + n, sizeof(line) - n, " (port %d)",
			             aa_server_port(srv));
			n += w > 0 && (size_t)w < sizeof(line) - n ? (size_t)w
			                                           : 0;
		}
	}
	fprintf(stderr, "aa-server: listening on %s (pid %d)\n", line,
	        (int)getpid());
	fflush(stderr);

	int sig = 0;
	while (sigwait(sigs, &sig) != 0) {
	}
	return 0;
}

int
main(int argc, char **argv)
{
	options o = {.threads = 4};
	sigset_t sigs;
	aa_server *srv = NULL;
	int rv;

	// Block the shutdown signals before any thread exists: every
	// library thread inherits the mask and only sigwait sees them.
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((rv = parse_options(argc, argv, &o)) != 0) {
		return rv < 0 ? 0 : rv;
	}
	if (o.n_listen == 0) {
		if ((o.listen[0] = aa_default_url()) == NULL) {
			fprintf(stderr, "aa-server: no safe default address; "
			                "use --listen URL\n");
			return 1;
		}
		o.n_listen = 1;
	}
	if (o.log == NULL) {
		G.log = stderr;
	} else if (strcmp(o.log, "-") == 0) {
		G.log = stdout;
	} else if ((G.log = fopen(o.log, "a")) == NULL) {
		fprintf(stderr, "aa-server: cannot open %s: %s\n", o.log,
		        strerror(errno));
		return 1;
	}
	atomic_init(&G.stopping, false);
	o.so.log = on_server_event;

	rv = aa_timer_queue_alloc(&G.timers);
	if (rv == 0) {
		rv = aa_pool_alloc(&G.pool, o.threads);
	}
	if (rv == 0) {
		rv = aa_server_alloc(&srv, &o.so);
	}
	for (size_t i = 0; rv == 0 && i < sizeof(methods) / sizeof(methods[0]);
	     i++) {
		rv = aa_server_register(srv, &methods[i]);
	}
	// The typed service aa.demo.Demo beside the byte methods.
	aa_service *demo_svc = NULL;
	if (rv == 0) {
		rv = register_demo_service(&demo_svc, srv);
	}
	int status = 1;
	if (rv != 0) {
		fprintf(stderr, "aa-server: cannot start: %s\n",
		        aa_strerror(rv));
	} else {
		status = serve(srv, &o, &sigs);
	}

	// Shut down: spin work stops early, every real op is cancelled and
	// waited for, then the pool and the timers go.
	atomic_store(&G.stopping, true);
	if (srv != NULL) {
		aa_server_stats st;
		aa_server_stop(srv);
		aa_server_stats_get(srv, &st);
		aa_server_free(srv);
		aa_service_free(demo_svc); // after the server, which used it
		if (status == 0) {
			fprintf(
			    stderr,
			    "aa-server: stopped; ops started %llu, completed "
			    "%llu, canceled %llu, failed %llu, rejected "
			    "%llu, wasted %llu\n",
			    (unsigned long long)st.started,
			    (unsigned long long)st.completed,
			    (unsigned long long)st.canceled,
			    (unsigned long long)st.failed,
			    (unsigned long long)st.rejected,
			    (unsigned long long)st.wasted);
		}
	}
	if (G.pool != NULL) {
		aa_executor_free(G.pool);
	}
	if (G.timers != NULL) {
		aa_timer_queue_free(G.timers);
	}
	for (int i = 0; status == 0 && i < o.n_listen; i++) {
		const char *path = ipc_path(o.listen[i]);
		if (path != NULL) {
			unlink(path);
		}
	}
	if (G.log != stderr && G.log != stdout) {
		fclose(G.log);
	}
	return status;
}
