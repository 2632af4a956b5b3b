// cancel.c: the cancel part. Times aa_op_cancel(op, AA_CANCEL_TERMINAL)
// on "hold" ops (real ops that end only when cancelled): inside the call
// and until the handler's first instruction. The handler has no executor,
// so it runs inside cancel: the part checks that it had run when cancel
// returned (the one thing it can fail on). Cases: pre-submit (corked),
// in-flight with the server responsive (every Start confirmed by a stats
// round trip first) and in-flight with the server process stopped
// (SIGSTOP, then SIGCONT and every late Complete awaited). The floor is a
// call of the same handler through a function pointer, timed the same way.
// Handlers write only their own slot; the main thread reads the slots
// after cancel returned (the handler ran on this thread).
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bench_proxy.h"

typedef struct cslot {
	uint64_t t_handler;
	aa_state state;
} cslot;

static void
cancel_handler(aa_op *op, void *arg)
{
	cslot *s = arg;
	s->t_handler = now_ns();
	if (op != NULL) {
		s->state = aa_op_status(op);
	}
}

static void
count_settle(aa_op *op, void *arg)
{
	atomic_fetch_add(&settled, 1);
}

typedef enum cmode {
	CM_PRE_SUBMIT,
	CM_IN_FLIGHT,
	CM_IN_FLIGHT_STOPPED,
} cmode;

static const char *const cmode_names[3] = {
    "pre-submit (cork, call, cancel)",
    "in-flight, server responsive",
    "in-flight, server stopped (SIGSTOP)",
};

typedef struct cancel_result {
	double in_p50, in_p99; // time inside aa_op_cancel
	double hd_p50, hd_p99; // cancel called -> handler ran
	double n;
	double share_1us; // share of cancels that returned within 1 us
} cancel_result;

static double
share_within(const uint64_t *v, size_t n, uint64_t ns)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		k += v[i] <= ns;
	}
	return n == 0 ? 0 : 100.0 * (double)k / (double)n;
}

// cancel_batches cancels count "hold" ops in batches, timing each.
static void
cancel_batches(aa_client *c, pid_t pid, cmode m, int count, cancel_result *res)
{
	enum { BATCH = 1000 };
	static aa_op *ops[BATCH];
	static cslot slots[BATCH];
	uint64_t *inside = calloc((size_t)count, sizeof(uint64_t));
	uint64_t *handler = calloc((size_t)count, sizeof(uint64_t));
	int n = 0;
	aa_timeline want = m == CM_PRE_SUBMIT ? AA_TIMELINE_PRE_SUBMIT
	                                      : AA_TIMELINE_IN_FLIGHT;
	while (n < count) {
		int b = count - n < BATCH ? count - n : BATCH;
		atomic_store(&settled, 0);
		if (m == CM_PRE_SUBMIT) {
			aa_client_cork(c);
		}
		for (int i = 0; i < b; i++) {
			int rv = aa_client_call(&ops[i], c, "hold", payload,
			                        PAYLOAD, NULL, NULL);
			if (rv != 0) {
				die("aa_client_call hold", rv);
			}
			memset(&slots[i], 0, sizeof(slots[i]));
			aa_op_set_handler(ops[i], cancel_handler, &slots[i]);
			aa_op_set_settle_handler(ops[i], count_settle, NULL);
		}
		if (m != CM_PRE_SUBMIT) {
			srv_report rep; // every Start has reached the server
			server_query(c, &rep);
		}
		if (m == CM_IN_FLIGHT_STOPPED) {
			kill(pid, SIGSTOP);
			waitpid(pid, NULL, WUNTRACED);
		}
		for (int i = 0; i < b; i++) {
			uint64_t t0 = now_ns();
			int rv = aa_op_cancel(ops[i], AA_CANCEL_TERMINAL);
			uint64_t t1 = now_ns();
			check(rv == 0 && slots[i].t_handler != 0 &&
			          slots[i].t_handler <= t1,
			      "handler ran inside cancel");
			inside[n + i] = t1 - t0;
			handler[n + i] = slots[i].t_handler - t0;
		}
		if (m == CM_IN_FLIGHT_STOPPED) {
			kill(pid, SIGCONT);
			waitpid(pid, NULL, WCONTINUED);
		}
		if (m == CM_PRE_SUBMIT) {
			aa_client_uncork(c);
		}
		check(wait_settled(b), "every cancelled op settled");
		for (int i = 0; i < b; i++) {
			check(slots[i].state == AA_CANCELED, "op CANCELED");
			check(aa_client_timeline(ops[i]) == want, "timeline");
			aa_op_unref(ops[i]);
		}
		n += b;
	}
	res->n = n;
	res->share_1us = share_within(inside, (size_t)n, 1000);
	res->in_p50 = pct(inside, (size_t)n, 50);
	res->in_p99 = pct(inside, (size_t)n, 99);
	res->hd_p50 = pct(handler, (size_t)n, 50);
	res->hd_p99 = pct(handler, (size_t)n, 99);
	free(inside);
	free(handler);
}

static void
direct_call(int count, cancel_result *res)
{
	static void (*volatile fn)(aa_op *, void *) = cancel_handler;
	uint64_t *inside = calloc((size_t)count, sizeof(uint64_t));
	uint64_t *handler = calloc((size_t)count, sizeof(uint64_t));
	for (int i = 0; i < count; i++) {
		cslot s = {0};
		uint64_t t0 = now_ns();
		fn(NULL, &s);
		uint64_t t1 = now_ns();
		inside[i] = t1 - t0;
		handler[i] = s.t_handler - t0;
	}
	res->n = count;
	res->share_1us = share_within(inside, (size_t)count, 1000);
	res->in_p50 = pct(inside, (size_t)count, 50);
	res->in_p99 = pct(inside, (size_t)count, 99);
	res->hd_p50 = pct(handler, (size_t)count, 50);
	res->hd_p99 = pct(handler, (size_t)count, 99);
	free(inside);
	free(handler);
}

static const char *const cmode_keys[3] = {"pre_submit", "in_flight",
                                          "in_flight_stopped"};

// cancel_median folds the rounds into one result: N is their sum, every
// other figure the median over the rounds; *p50s gets the spread of the
// per-round "inside" p50.
static void
cancel_median(cancel_result *rounds, cancel_result *m, spread *p50s)
{
	double v[6][MAX_REPS];
	m->n = 0;
	for (int r = 0; r < reps; r++) {
		m->n += rounds[r].n;
		v[0][r] = rounds[r].in_p50;
		v[1][r] = rounds[r].in_p99;
		v[2][r] = rounds[r].hd_p50;
		v[3][r] = rounds[r].hd_p99;
		v[4][r] = rounds[r].share_1us;
	}
	*p50s = spread_of(v[0], reps);
	m->in_p50 = median(v[0], reps);
	m->in_p99 = median(v[1], reps);
	m->hd_p50 = median(v[2], reps);
	m->hd_p99 = median(v[3], reps);
	m->share_1us = median(v[4], reps);
}

// print_cancel prints one row and records it under cancel.<t>.<key>.
static void
print_cancel(const char *t, const char *what, const char *key,
             const cancel_result *r, spread s)
{
	json_num(r->n, "cancel.%s.%s.n", t, key);
	json_num(r->in_p50, "cancel.%s.%s.inside_p50_us", t, key);
	json_num(s.min, "cancel.%s.%s.inside_p50_us_min", t, key);
	json_num(s.max, "cancel.%s.%s.inside_p50_us_max", t, key);
	json_num(r->in_p99, "cancel.%s.%s.inside_p99_us", t, key);
	json_num(r->share_1us, "cancel.%s.%s.within_1us_pct", t, key);
	json_num(r->hd_p50, "cancel.%s.%s.to_handler_p50_us", t, key);
	json_num(r->hd_p99, "cancel.%s.%s.to_handler_p99_us", t, key);
	md("| %s | %s | %.0f | %.3f / %.3f | %.3f / %.3f | %.1f %% | %.3f / "
	   "%.3f |\n",
	   t, what, r->n, r->in_p50, r->in_p99, s.min, s.max, r->share_1us,
	   r->hd_p50, r->hd_p99);
}

double aa_cancel_hd_p50[3] = {NAN, NAN, NAN};
double aa_cancel_hd_p99[3] = {NAN, NAN, NAN};
double aa_cancel_in_p50[3] = {NAN, NAN, NAN};

void
bench_cancel(void)
{
	int nt = smoke ? 2 : 3;
	// Each round cancels an equal share of cancel_count (batches of at
	// most 1000), with the cases in a new random order.
	int per_round = cancel_count / reps > 0 ? cancel_count / reps : 1;
	cancel_result rounds[3][MAX_REPS], r;
	spread s;

	md("\n## Cancel latency\n\nTime inside aa_op_cancel (the "
	   "handler runs inline, so this is \"handler done\") and from "
	   "the call to the handler's first instruction, p50 / p99 in "
	   "us, over N cancels (%d rounds of %d, batches of at most 1000 "
	   "ops, the cases in a random order in each round; medians of the "
	   "rounds, and the min / max of the per-round p50 inside cancel); "
	   "each figure includes one clock_gettime pair, as the direct call "
	   "does.\n\n",
	   reps, per_round);
	md("| transport | case | N | inside cancel p50 / p99 us | inside p50 "
	   "min / max us | returned within 1 us | to handler p50 / p99 us "
	   "|\n| --- | --- | --- | --- | --- | --- | --- |\n");
	for (int i = 0; i < reps; i++) {
		direct_call(per_round, &rounds[0][i]);
	}
	cancel_median(rounds[0], &r, &s);
	print_cancel("-", "direct call of the callback (floor)", "floor", &r,
	             s);
	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		server_end se;
		server_start(&se, transports[t], "aa");
		aa_client *c = client_open(se.url);
		int nm = se.pid > 0 ? 3 : 2;
		for (int i = 0; i < reps; i++) {
			int order[3];
			shuffle(order, nm);
			for (int k = 0; k < nm; k++) {
				int m = order[k];
				cancel_batches(c, se.pid, (cmode)m, per_round,
				               &rounds[m][i]);
			}
		}
		for (int m = 0; m < nm; m++) {
			cancel_median(rounds[m], &r, &s);
			print_cancel(transports[t], cmode_names[m],
			             cmode_keys[m], &r, s);
			if (m == CM_IN_FLIGHT) {
				aa_cancel_hd_p50[t] = r.hd_p50;
				aa_cancel_hd_p99[t] = r.hd_p99;
				aa_cancel_in_p50[t] = r.in_p50;
			}
		}
		md_flush();
		check(client_pending(c, 0) == 0,
		      "no op left pending after cancels");
		aa_client_free(c);
		server_finish(&se);
	}
	md_flush();
}
