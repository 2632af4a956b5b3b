// aa-server-methods.c: the byte methods of aa-server: echo TEXT, sleep MS,
// count N, spin MS and fail CODE (docs/demo.md, "Methods"), each a real
// aa_op on the server.
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
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aa-server.h"

#define MAX_SLEEP_MS (24u * 3600u * 1000u)
#define MAX_COUNT    1000000u
#define COUNT_STEP   10 // ms between two progress reports of "count"

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

int
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

int
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

int
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

int
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
void
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

int
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
