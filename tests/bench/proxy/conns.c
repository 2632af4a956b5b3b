// conns.c: the conns part. 1, 10, 100 and 1,000 clients (one aa_client,
// so one connection, each) on one aaproxy server process over ipc (smoke:
// 1 and 10), all running at once with one "echo" call outstanding on each.
//
// For each count: a control client (open for the whole part) queries the
// server's heap and RSS ("stats"), and this process measures its own;
// the clients are opened and each makes one call, so that every
// connection is up on both sides; then, idle, both sides are measured
// again: (after - before) / count is the memory per connection. Then
// --reps rounds of --secs each: every client issues its next call from
// its completion handler until the deadline; round trip p50/p99 and
// calls/s per round, medians over the rounds. Then the clients are freed.
//
// With every connection busy, latency is bounded by Little's law: N calls
// in flight at X calls/s take N / X each, so the p50 at 1,000 busy
// connections says how fast the server is, not how it copes with many
// connections. So a second measurement, "one op each outstanding": every
// client holds one pending "hold" op (a real op at the server) and echo
// calls go one at a time on the first client; its p50 at N connections
// over its p50 at one is the target's ratio (a server whose cost grows
// with its connections, pending ops, timers or heartbeats shows there).
// The same calls made on each client in turn are reported beside it: there
// every call also wakes a client loop that slept through the N - 1 calls
// before (each dialed connection has its loop thread, transport_sock.c),
// which is this benchmark's many clients in one process, not the
// server.
//
// Threads: handlers run on the clients' threads, many at once. A conn is
// touched by one handler at a time (one call outstanding on it); the run's
// counters are atomics, its latency slots are claimed with an atomic
// index; the handler that takes `outstanding` to zero signals the main
// thread, which reads the slots after that (the waiter's mutex orders
// them).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_proxy.h"

#define LAT_MAX (1 << 21)

typedef struct conns_run {
	waiter w;
	uint64_t deadline; // 0: one call on each conn, no more
	atomic_long outstanding;
	atomic_long done;
	atomic_size_t nlat;
	atomic_int errors;
	uint64_t *lat;
} conns_run;

typedef struct conn {
	aa_client *c;
	uint64_t t_sent;
	conns_run *run;
} conn;

static void conn_issue(conn *k);

static void
conn_release(conns_run *run)
{
	if (atomic_fetch_sub(&run->outstanding, 1) == 1) {
		waiter_signal(&run->w);
	}
}

static void
conn_done(aa_op *op, void *arg)
{
	conn *k = arg;
	conns_run *run = k->run;
	uint64_t now = now_ns();
	const void *data;
	size_t len;
	if (aa_op_result(op, &data, &len) != 0 || len != PAYLOAD) {
		atomic_fetch_add(&run->errors, 1);
	}
	aa_op_unref(op);
	atomic_fetch_add(&run->done, 1);
	size_t i = atomic_fetch_add(&run->nlat, 1);
	if (i < LAT_MAX) {
		run->lat[i] = now - k->t_sent;
	}
	if (now < run->deadline) {
		conn_issue(k);
	}
	conn_release(run);
}

static void
conn_issue(conn *k)
{
	aa_op *op;
	atomic_fetch_add(&k->run->outstanding, 1);
	k->t_sent = now_ns();
	int rv =
	    aa_client_call(&op, k->c, "echo", payload, PAYLOAD, NULL, NULL);
	if (rv != 0) {
		die("aa_client_call echo (conns)", rv);
	}
	aa_op_set_handler(op, conn_done, k);
}

// conns_go runs one call on each conn, or calls until secs passed.
static void
conns_go(conn *cs, int n, conns_run *run, double secs)
{
	atomic_store(&run->outstanding, 1); // a guard until all are issued
	atomic_store(&run->done, 0);
	atomic_store(&run->nlat, 0);
	run->deadline = secs > 0 ? now_ns() + (uint64_t)(secs * 1e9) : 0;
	for (int i = 0; i < n; i++) {
		cs[i].run = run;
		conn_issue(&cs[i]);
	}
	conn_release(run);
	if (!waiter_wait(&run->w, 120)) {
		die("conns run timed out", AA_ETIMEDOUT);
	}
	run->w.done = false; // every handler has finished with the waiter
	check(atomic_load(&run->errors) == 0, "conns: echo results");
}

// One call at a time, on each conn in turn (see the notes).
typedef struct seq_call {
	waiter w;
	uint64_t t_done;
} seq_call;

static void
seq_done(aa_op *op, void *arg)
{
	seq_call *q = arg;
	q->t_done = now_ns();
	const void *data;
	size_t len;
	check(aa_op_result(op, &data, &len) == 0 && len == PAYLOAD,
	      "conns: sequential echo result");
	waiter_signal(&q->w);
}

// conns_sequential: count echo calls, one at a time, rotating over cs;
// p50 and p99 in us.
static void
conns_sequential(conn *cs, int n, bool rotate, int count, uint64_t *lat,
                 double *p50, double *p99)
{
	seq_call q;
	waiter_init(&q.w);
	for (int i = 0; i < count; i++) {
		aa_op *op;
		uint64_t t0 = now_ns();
		int rv = aa_client_call(&op, cs[rotate ? i % n : 0].c, "echo",
		                        payload, PAYLOAD, NULL, NULL);
		if (rv != 0) {
			die("aa_client_call echo (conns, sequential)", rv);
		}
		aa_op_set_handler(op, seq_done, &q);
		if (!waiter_wait(&q.w, 30)) {
			die("conns: sequential call timed out", AA_ETIMEDOUT);
		}
		q.w.done = false;
		lat[i] = q.t_done - t0;
		aa_op_unref(op);
	}
	*p50 = pct(lat, (size_t)count, 50);
	*p99 = pct(lat, (size_t)count, 99);
	waiter_fini(&q.w);
}

typedef struct conns_result {
	int n;
	double p50, p99, ops;
	double seq_p50, seq_p99; // one call at a time, every conn holding one
	spread seq_p50s;
	double rot_p50, rot_p99; // the same, each call on the next conn
	spread rot_p50s;
	spread p50s;
	double srv_heap, srv_rss, cli_heap, cli_rss; // bytes per connection
} conns_result;

static void
conns_case(const char *url, aa_client *ctl, int n, conns_run *run,
           conns_result *res)
{
	conn *cs = calloc((size_t)n, sizeof(*cs));
	srv_report s0, s1;
	if (cs == NULL) {
		die("calloc", AA_ENOMEM);
	}
	res->n = n;
	server_query(ctl, &s0);
	double h0 = (double)heap_bytes(), r0 = (double)rss_bytes();
	for (int i = 0; i < n; i++) {
		cs[i].c = client_open(url);
	}
	conns_go(cs, n, run, 0); // every connection up on both sides
	server_query(ctl, &s1);
	double h1 = (double)heap_bytes(), r1 = (double)rss_bytes();
	res->srv_heap = ((double)s1.heap_bytes - (double)s0.heap_bytes) / n;
	res->srv_rss = ((double)s1.rss_bytes - (double)s0.rss_bytes) / n;
	res->cli_heap = (h1 - h0) / n;
	res->cli_rss = (r1 - r0) / n;

	double p50[MAX_REPS], p99[MAX_REPS], ops[MAX_REPS];
	for (int r = 0; r < reps; r++) {
		uint64_t t0 = now_ns();
		conns_go(cs, n, run, run_secs);
		uint64_t t1 = now_ns();
		size_t k = atomic_load(&run->nlat);
		k = k < LAT_MAX ? k : LAT_MAX;
		p50[r] = pct(run->lat, k, 50);
		p99[r] = pct(run->lat, k, 99);
		ops[r] = (double)atomic_load(&run->done) / ((t1 - t0) / 1e9);
		fprintf(
		    stderr,
		    "conns round %d n %d: p50 %.1f p99 %.1f calls/s %.0f\n", r,
		    n, p50[r], p99[r], ops[r]);
	}
	res->p50s = spread_of(p50, reps);
	res->p50 = res->p50s.med;
	res->p99 = median(p99, reps);
	res->ops = median(ops, reps);

	// One op each outstanding: a "hold" on every conn, then echo calls
	// one at a time in turn.
	aa_op **held = calloc((size_t)n, sizeof(*held));
	if (held == NULL) {
		die("calloc", AA_ENOMEM);
	}
	for (int i = 0; i < n; i++) {
		int rv = aa_client_call(&held[i], cs[i].c, "hold", NULL, 0,
		                        NULL, NULL);
		if (rv != 0) {
			die("aa_client_call hold (conns)", rv);
		}
	}
	int count = smoke ? 200 : n > 2000 ? n : 2000;
	if (count > LAT_MAX) {
		count = LAT_MAX;
	}
	double sp50[MAX_REPS], sp99[MAX_REPS], rp50[MAX_REPS], rp99[MAX_REPS];
	for (int r = 0; r < reps; r++) {
		conns_sequential(cs, n, false, count, run->lat, &sp50[r],
		                 &sp99[r]);
		conns_sequential(cs, n, true, count, run->lat, &rp50[r],
		                 &rp99[r]);
	}
	res->seq_p50s = spread_of(sp50, reps);
	res->seq_p50 = res->seq_p50s.med;
	res->seq_p99 = median(sp99, reps);
	res->rot_p50s = spread_of(rp50, reps);
	res->rot_p50 = res->rot_p50s.med;
	res->rot_p99 = median(rp99, reps);
	for (int i = 0; i < n; i++) {
		aa_op_cancel(held[i], AA_CANCEL_TERMINAL);
		aa_op_unref(held[i]);
	}
	free(held);
	for (int i = 0; i < n; i++) {
		aa_client_free(cs[i].c);
	}
	free(cs);
}

void
bench_conns(void)
{
	static const int counts[4] = {1, 10, 100, 1000};
	int ncounts = smoke ? 2 : 4;
	conns_result res[4];
	conns_run run;
	memset(&run, 0, sizeof(run));
	waiter_init(&run.w);
	run.lat = calloc(LAT_MAX, sizeof(uint64_t));
	if (run.lat == NULL) {
		die("calloc", AA_ENOMEM);
	}
	server_end se;
	server_start(&se, "ipc", "aa");
	aa_client *ctl = client_open(se.url);
	for (int i = 0; i < ncounts; i++) {
		conns_case(se.url, ctl, counts[i], &run, &res[i]);
	}
	check(client_pending(ctl, 0) == 0, "conns: no op left pending");
	aa_client_free(ctl);
	server_finish(&se);
	waiter_fini(&run.w);
	free(run.lat);

	md("\n## Connections: one server process, N clients (ipc)\n\n"
	   "One aa_client (one connection) per client, one echo call "
	   "outstanding on each, all at once for %.2f s per round; medians "
	   "of %d rounds. Memory per connection: after all N are up and "
	   "idle, minus before, divided by N (server: its stats method; "
	   "heap = mallinfo2 in use, RSS = /proc/self/statm). Targets: <= 64 "
	   "KiB per idle connection; p50 at 1,000 <= 2x p50 at 1.\n\n",
	   run_secs, reps);
	md("| connections | p50 / p99 us | p50 per round min / median / max | "
	   "calls/s | server heap / RSS per conn | client heap / RSS per "
	   "conn |\n| --- | --- | --- | --- | --- | --- |\n");
	for (int i = 0; i < ncounts; i++) {
		conns_result *r = &res[i];
		md("| %d | %.1f / %.1f | %.1f / %.1f / %.1f | %.0f | %.0f / "
		   "%.0f | %.0f / %.0f |\n",
		   r->n, r->p50, r->p99, r->p50s.min, r->p50s.med, r->p50s.max,
		   r->ops, r->srv_heap, r->srv_rss, r->cli_heap, r->cli_rss);
		json_num(r->p50, "conns.%d.p50_us", r->n);
		json_num(r->p99, "conns.%d.p99_us", r->n);
		json_num(r->p50s.min, "conns.%d.p50_us_min", r->n);
		json_num(r->p50s.max, "conns.%d.p50_us_max", r->n);
		json_num(r->ops, "conns.%d.calls_per_s", r->n);
		json_num(r->srv_heap, "conns.%d.server_heap_per_conn", r->n);
		json_num(r->srv_rss, "conns.%d.server_rss_per_conn", r->n);
		json_num(r->cli_heap, "conns.%d.client_heap_per_conn", r->n);
		json_num(r->cli_rss, "conns.%d.client_rss_per_conn", r->n);
	}
	conns_result *last = &res[ncounts - 1];
	md("\np50 at %d busy connections / p50 at 1: %.2fx (Little's law: "
	   "N in flight at X calls/s take N / X each)\n",
	   last->n, last->p50 / res[0].p50);
	json_num(last->p50 / res[0].p50, "conns.ratio_p50_most_to_1");

	md("\n### One op each outstanding\n\n"
	   "Every client holds one pending `hold` op at the server; echo "
	   "calls go one at a time on the first client (max(2000, N) calls "
	   "per round, medians of %d rounds). Target: p50 at 1,000 <= 2x p50 "
	   "at 1. \"In turn\": the same calls, each on the next client, so "
	   "that each also wakes a client loop that slept through the N - 1 "
	   "calls before it (one loop thread per dialed connection).\n\n"
	   "| connections | p50 / p99 us | p50 per round min / median / max "
	   "| in turn: p50 / p99 us |\n| --- | --- | --- | --- |\n",
	   reps);
	for (int i = 0; i < ncounts; i++) {
		conns_result *r = &res[i];
		md("| %d | %.1f / %.1f | %.1f / %.1f / %.1f | %.1f / %.1f |\n",
		   r->n, r->seq_p50, r->seq_p99, r->seq_p50s.min,
		   r->seq_p50s.med, r->seq_p50s.max, r->rot_p50, r->rot_p99);
		json_num(r->seq_p50, "conns.%d.one_each.p50_us", r->n);
		json_num(r->seq_p99, "conns.%d.one_each.p99_us", r->n);
		json_num(r->rot_p50, "conns.%d.one_each_in_turn.p50_us", r->n);
		json_num(r->rot_p99, "conns.%d.one_each_in_turn.p99_us", r->n);
	}
	md("\np50 at %d connections / p50 at 1, one op each outstanding: "
	   "%.2fx (in turn: %.2fx)\n",
	   last->n, last->seq_p50 / res[0].seq_p50,
	   last->rot_p50 / res[0].rot_p50);
	json_num(last->seq_p50 / res[0].seq_p50,
	         "conns.one_each.ratio_p50_most_to_1");
	json_num(last->rot_p50 / res[0].rot_p50,
	         "conns.one_each_in_turn.ratio_p50_most_to_1");
	md_flush();
}
