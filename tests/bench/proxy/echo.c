// echo.c: the echo part, and the call pipelines the other parts reuse.
//
// A pipeline keeps N calls outstanding: each completion handler issues
// the next call (or, with group > 0, every group-th completion refills a
// corked group). Handlers run on the client's threads; issued, done,
// outstanding and errors are atomics; outstanding starts with a guard of
// one that pl_start drops after issuing, and the handler that takes it
// to zero signals the waiter, so the main thread wakes exactly once, after
// the last handler. Latency mode (lat != NULL) has one call outstanding,
// so lat, nlat and t_sent are touched by one handler at a time.
//
// The raw nng client (nng_req0, contexts + aio) has the same shape:
// req_cb sends, then starts the receive from the send's completion
// (nng 1.5.2 can crash when a receive is cancelled while its send is
// pending).
//
// Stacks per transport: aaproxy ("aa"), raw nng req/rep ("nng"), and on
// ipc and tcp the raw socket ping-pong ("raw", raw.c). In each round the
// stacks run in a random order; tables show medians over the rounds and
// the min / median / max of the per-round p50.
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "bench_proxy.h"

void
pl_init(pipeline *p, aa_client *c)
{
	memset(p, 0, sizeof(*p));
	p->c = c;
	p->data = payload;
	p->size = PAYLOAD;
	waiter_init(&p->w);
}

// claim says whether one more call may be issued.
static bool
claim(pipeline *p)
{
	if (p->lat != NULL) {
		return p->nlat < p->latmax;
	}
	if (p->deadline != 0 && now_ns() >= p->deadline) {
		return false;
	}
	if (p->limit != 0 && atomic_fetch_add(&p->issued, 1) >= p->limit) {
		return false;
	}
	return true;
}

static void
pl_release(pipeline *p)
{
	if (atomic_fetch_sub(&p->outstanding, 1) == 1) {
		waiter_signal(&p->w);
	}
}

static void pl_issue(pipeline *p);

static void
echo_done(aa_op *op, void *arg)
{
	pipeline *p = arg;
	uint64_t now = now_ns();
	const void *data;
	size_t len;
	if (aa_op_result(op, &data, &len) != 0 || len != p->size) {
		atomic_fetch_add(&p->errors, 1);
	}
	aa_op_unref(op);
	atomic_fetch_add_explicit(&p->done, 1, memory_order_relaxed);
	if (p->lat != NULL) {
		p->lat[p->nlat++] = now - p->t_sent;
		p->t_sent = now;
	}
	if (p->group == 0) {
		if (claim(p)) {
			pl_issue(p);
		}
	} else if (p->deadline == 0 || now < p->deadline) {
		if (atomic_fetch_add(&p->refill, 1) + 1 == p->group) {
			atomic_store(&p->refill, 0);
			aa_client_cork(p->c);
			for (int i = 0; i < p->group; i++) {
				pl_issue(p);
			}
			aa_client_uncork(p->c);
		}
	}
	pl_release(p);
}

static void
pl_issue(pipeline *p)
{
	aa_op *op;
	atomic_fetch_add(&p->outstanding, 1);
	int rv =
	    aa_client_call(&op, p->c, "echo", p->data, p->size, NULL, NULL);
	if (rv != 0) {
		die("aa_client_call echo", rv);
	}
	aa_op_set_handler(op, echo_done, p);
}

// pl_start issues window calls (corked when grouping); pl_wait waits
// until the pipeline drains.
void
pl_start(pipeline *p, int window)
{
	atomic_store(&p->outstanding, 1); // a guard until all are issued
	if (p->group > 0) {
		aa_client_cork(p->c);
	}
	for (int i = 0; i < window && claim(p); i++) {
		pl_issue(p);
	}
	if (p->group > 0) {
		aa_client_uncork(p->c);
	}
	pl_release(p);
}

void
pl_wait(pipeline *p)
{
	if (!waiter_wait(&p->w, 60)) {
		die("echo pipeline timed out", AA_ETIMEDOUT);
	}
	check(atomic_load(&p->errors) == 0, "echo results");
}

void
pl_run(pipeline *p, int window)
{
	pl_start(p, window);
	pl_wait(p);
}

typedef struct echo_result {
	double p50, p99;
	double ops[4];    // N = 1, 16, 256, 256 corked groups
	double split;     // N = 256 as 128 on each of two clients
	double cli_us[4]; // CPU time per call: this process
	double srv_us[4]; // ... the server process (0 for inproc)
} echo_result;

static const int outs[4] = {1, 16, 256, 256};

// cpu_mark and cpu_per_call measure both processes' CPU over a run.
typedef struct cpu_mark {
	uint64_t self, server;
} cpu_mark;

static cpu_mark
cpu_now(pid_t server)
{
	cpu_mark m = {self_cpu_ns(), server > 0 ? proc_cpu_ns(server) : 0};
	return m;
}

static void
cpu_per_call(cpu_mark a, cpu_mark b, double calls, double *cli, double *srv)
{
	*cli = calls > 0 ? (double)(b.self - a.self) / 1000.0 / calls : 0;
	*srv = calls > 0 ? (double)(b.server - a.server) / 1000.0 / calls : 0;
}

static void
aa_echo(const char *url, pid_t server, echo_result *res)
{
	static uint64_t lat[100000];
	aa_client *c = client_open(url);
	pipeline p;

	pl_init(&p, c); // warm-up
	p.limit = 2000;
	pl_run(&p, 16);
	waiter_fini(&p.w);

	pl_init(&p, c);
	p.lat = lat;
	p.latmax = (size_t)lat_count;
	p.t_sent = now_ns();
	pl_run(&p, 1);
	waiter_fini(&p.w);
	res->p50 = pct(lat, p.nlat, 50);
	res->p99 = pct(lat, p.nlat, 99);

	for (int k = 0; k < 4; k++) {
		pl_init(&p, c);
		p.group = k == 3 ? 64 : 0;
		cpu_mark m0 = cpu_now(server);
		uint64_t t0 = now_ns();
		p.deadline = t0 + (uint64_t)(run_secs * 1e9);
		pl_run(&p, outs[k]);
		uint64_t t1 = now_ns();
		cpu_mark m1 = cpu_now(server);
		double calls = (double)atomic_load(&p.done);
		res->ops[k] = calls / ((t1 - t0) / 1e9);
		cpu_per_call(m0, m1, calls, &res->cli_us[k], &res->srv_us[k]);
		waiter_fini(&p.w);
	}
	// The same 256 outstanding over two clients (connections), so that
	// the two halves' batches need not travel together.
	aa_client *c2 = client_open(url);
	pipeline q;
	pl_init(&p, c);
	pl_init(&q, c2);
	uint64_t t0 = now_ns();
	p.deadline = q.deadline = t0 + (uint64_t)(run_secs * 1e9);
	pl_start(&p, 128);
	pl_start(&q, 128);
	pl_wait(&p);
	pl_wait(&q);
	uint64_t t1 = now_ns();
	res->split = (double)(atomic_load(&p.done) + atomic_load(&q.done)) /
	             ((t1 - t0) / 1e9);
	waiter_fini(&p.w);
	waiter_fini(&q.w);
	aa_client_free(c2);
	aa_client_free(c);
}

// ---- Raw nng req/rep client ----

typedef struct req_ctx {
	nng_ctx ctx;
	nng_aio *aio;
	bool receiving;
	pipeline *p;
} req_ctx;

typedef struct nng_client {
	nng_socket s;
	req_ctx ctxs[MAX_OUT];
} nng_client;

static void
req_send(req_ctx *x)
{
	nng_msg *m;
	pipeline *p = x->p;
	atomic_fetch_add(&p->outstanding, 1);
	if (nng_msg_alloc(&m, 0) != 0 ||
	    nng_msg_append(m, p->data, p->size) != 0) {
		die("nng_msg_alloc", AA_ENOMEM);
	}
	nng_aio_set_msg(x->aio, m);
	x->receiving = false;
	nng_ctx_send(x->ctx, x->aio);
}

static void
req_cb(void *arg)
{
	req_ctx *x = arg;
	pipeline *p = x->p;
	int rv = nng_aio_result(x->aio);
	if (rv != 0) {
		if (!x->receiving) {
			nng_msg_free(nng_aio_get_msg(x->aio));
		}
		atomic_fetch_add(&p->errors, 1);
		pl_release(p);
		return;
	}
	if (!x->receiving) {
		// Start the receive from the send's completion (nng 1.5.2).
		x->receiving = true;
		nng_ctx_recv(x->ctx, x->aio);
		return;
	}
	uint64_t now = now_ns();
	nng_msg *m = nng_aio_get_msg(x->aio);
	if (nng_msg_len(m) != p->size) {
		atomic_fetch_add(&p->errors, 1);
	}
	nng_msg_free(m);
	atomic_fetch_add_explicit(&p->done, 1, memory_order_relaxed);
	if (p->lat != NULL) {
		p->lat[p->nlat++] = now - p->t_sent;
		p->t_sent = now;
	}
	if (claim(p)) {
		req_send(x);
	}
	pl_release(p);
}

// nng_client_open dials url; max_msg is its receive limit.
static nng_client *
nng_client_open(const char *url, size_t max_msg)
{
	nng_client *n = calloc(1, sizeof(*n));
	int rv;
	if (n == NULL) {
		die("calloc", AA_ENOMEM);
	}
	if ((rv = nng_req0_open(&n->s)) != 0 ||
	    (rv = nng_socket_set_size(n->s, NNG_OPT_RECVMAXSZ, max_msg)) !=
	        0 ||
	    (rv = nng_socket_set_ms(n->s, NNG_OPT_REQ_RESENDTIME,
	                            NNG_DURATION_INFINITE)) != 0 ||
	    (rv = nng_dial(n->s, url, NULL, 0)) != 0) {
		fprintf(stderr, "bench_proxy: nng req: %s\n",
		        nng_strerror(rv));
		exit(1);
	}
	for (int i = 0; i < MAX_OUT; i++) {
		if (nng_ctx_open(&n->ctxs[i].ctx, n->s) != 0 ||
		    nng_aio_alloc(&n->ctxs[i].aio, req_cb, &n->ctxs[i]) != 0) {
			die("nng ctx", AA_ENOMEM);
		}
	}
	return n;
}

// nng_client_run runs pipeline p (deadline, limit or latency mode) with
// window requests outstanding.
static void
nng_client_run(nng_client *n, pipeline *p, int window)
{
	for (int i = 0; i < MAX_OUT; i++) {
		n->ctxs[i].p = p;
	}
	atomic_store(&p->outstanding, 1); // a guard until all are sent
	for (int i = 0; i < window && claim(p); i++) {
		req_send(&n->ctxs[i]);
	}
	pl_release(p);
	if (!waiter_wait(&p->w, 60)) {
		die("nng pipeline timed out", AA_ETIMEDOUT);
	}
	check(atomic_load(&p->errors) == 0, "nng echo results");
}

static void
nng_client_close(nng_client *n)
{
	for (int i = 0; i < MAX_OUT; i++) {
		nng_aio_stop(n->ctxs[i].aio);
	}
	nng_close(n->s);
	for (int i = 0; i < MAX_OUT; i++) {
		nng_aio_free(n->ctxs[i].aio);
	}
	free(n);
}

double
nng_bulk_run(const char *url, const uint8_t *data, size_t size, int window,
             double secs, long limit)
{
	nng_client *n = nng_client_open(url, BIG_MSG);
	pipeline p;
	pl_init(&p, NULL); // warm-up: the connection and its buffers
	p.data = data;
	p.size = size;
	p.limit = window;
	nng_client_run(n, &p, window);
	waiter_fini(&p.w);
	pl_init(&p, NULL);
	p.data = data;
	p.size = size;
	uint64_t t0 = now_ns();
	if (limit > 0) {
		p.limit = limit;
	} else {
		p.deadline = t0 + (uint64_t)(secs * 1e9);
	}
	nng_client_run(n, &p, window);
	uint64_t t1 = now_ns();
	waiter_fini(&p.w);
	nng_client_close(n);
	return (double)atomic_load(&p.done) / ((t1 - t0) / 1e9);
}

static void
nng_echo(const char *url, pid_t server, echo_result *res)
{
	static uint64_t lat[100000];
	nng_client *n = nng_client_open(url, 4096);
	pipeline p;
	for (int k = -2; k < 3; k++) { // -2 warm-up, -1 latency
		pl_init(&p, NULL);
		int window = 16;
		cpu_mark m0 = cpu_now(server);
		uint64_t t0 = now_ns();
		if (k == -2) {
			p.limit = 2000;
		} else if (k == -1) {
			p.lat = lat;
			p.latmax = (size_t)lat_count;
			p.t_sent = t0;
			window = 1;
		} else {
			window = outs[k];
			p.deadline = t0 + (uint64_t)(run_secs * 1e9);
		}
		nng_client_run(n, &p, window);
		uint64_t t1 = now_ns();
		cpu_mark m1 = cpu_now(server);
		if (k == -1) {
			res->p50 = pct(lat, p.nlat, 50);
			res->p99 = pct(lat, p.nlat, 99);
		} else if (k >= 0) {
			double calls = (double)atomic_load(&p.done);
			res->ops[k] = calls / ((t1 - t0) / 1e9);
			cpu_per_call(m0, m1, calls, &res->cli_us[k],
			             &res->srv_us[k]);
		}
		waiter_fini(&p.w);
	}
	res->ops[3] = 0;
	nng_client_close(n);
}

// ---- Raw socket ping-pong (the server is raw.c's) ----

static void
raw_echo(const char *url, pid_t server, echo_result *res)
{
	static uint64_t lat[100000];
	uint8_t buf[PAYLOAD];
	int fd = raw_dial(url);
	for (int i = 0; i < 2000; i++) { // warm-up
		if (raw_call(fd, payload, buf, PAYLOAD) != 0) {
			die("raw echo", AA_ESYSTEM);
		}
	}
	size_t n = 0;
	uint64_t t = now_ns();
	for (int i = 0; i < lat_count; i++) {
		if (raw_call(fd, payload, buf, PAYLOAD) != 0) {
			die("raw echo", AA_ESYSTEM);
		}
		uint64_t now = now_ns();
		lat[n++] = now - t;
		t = now;
	}
	check(memcmp(buf, payload, PAYLOAD) == 0, "raw echo results");
	res->p50 = pct(lat, n, 50);
	res->p99 = pct(lat, n, 99);
	cpu_mark m0 = cpu_now(server);
	uint64_t t0 = now_ns(), t1, deadline = t0 + (uint64_t)(run_secs * 1e9);
	double calls = 0;
	do {
		if (raw_call(fd, payload, buf, PAYLOAD) != 0) {
			die("raw echo", AA_ESYSTEM);
		}
		calls++;
		t1 = now_ns();
	} while (t1 < deadline);
	cpu_mark m1 = cpu_now(server);
	res->ops[0] = calls / ((t1 - t0) / 1e9);
	cpu_per_call(m0, m1, calls, &res->cli_us[0], &res->srv_us[0]);
	close(fd);
}

// ---- The part ----

double aa_echo_p50[3] = {NAN, NAN, NAN};
double aa_echo_p99[3] = {NAN, NAN, NAN};

enum { ST_AA, ST_NNG, ST_RAW, NSTACKS };
static const char *const stack_keys[NSTACKS] = {"aa", "nng", "raw"};
static const char *const stack_names[NSTACKS] = {"aaproxy echo", "nng req/rep",
                                                 "raw socket"};

static bool
stack_runs(int t, int k)
{
	return !skip_stack(stack_keys[k]) && !(k == ST_RAW && t == 0);
}

// med_of returns the median over the rounds of the figure at offset off
// of an echo_result.
static double
med_of(echo_result *rounds, size_t off)
{
	double v[MAX_REPS];
	for (int r = 0; r < reps; r++) {
		v[r] = *(double *)((char *)&rounds[r] + off);
	}
	return median(v, reps);
}

static void
echo_json(int t, int k, const echo_result *m, spread s)
{
	static const char *const nk[4] = {"n1", "n16", "n256", "n256_corked"};
	const char *tn = transports[t], *sk = stack_keys[k];
	json_num(m->p50, "echo.%s.%s.p50_us", tn, sk);
	json_num(m->p99, "echo.%s.%s.p99_us", tn, sk);
	json_num(s.min, "echo.%s.%s.p50_us_min", tn, sk);
	json_num(s.max, "echo.%s.%s.p50_us_max", tn, sk);
	int nops = k == ST_AA ? 4 : k == ST_NNG ? 3 : 1;
	for (int j = 0; j < nops; j++) {
		json_num(m->ops[j], "echo.%s.%s.calls_per_s_%s", tn, sk,
		         nk[j]);
		json_num(m->cli_us[j], "echo.%s.%s.cpu_client_us_%s", tn, sk,
		         nk[j]);
		json_num(m->srv_us[j], "echo.%s.%s.cpu_server_us_%s", tn, sk,
		         nk[j]);
	}
	if (k == ST_AA) {
		json_num(m->split, "echo.%s.aa.calls_per_s_2x128", tn);
	}
}

void
bench_echo(void)
{
	static echo_result res[3][NSTACKS][MAX_REPS];
	static echo_result med[3][NSTACKS];
	static spread p50s[3][NSTACKS];
	int nt = smoke ? 2 : 3;

	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		server_end se[NSTACKS];
		for (int k = 0; k < NSTACKS; k++) {
			if (stack_runs(t, k)) {
				server_start(&se[k], transports[t],
				             stack_keys[k]);
			}
		}
		for (int r = 0; r < reps; r++) {
			int order[NSTACKS];
			shuffle(order, NSTACKS); // a new order each round
			for (int i = 0; i < NSTACKS; i++) {
				int k = order[i];
				echo_result *x = &res[t][k][r];
				memset(x, 0, sizeof(*x));
				if (!stack_runs(t, k)) {
					continue;
				}
				if (k == ST_AA) {
					aa_echo(se[k].url, se[k].pid, x);
				} else if (k == ST_NNG) {
					nng_echo(se[k].url, se[k].pid, x);
				} else {
					raw_echo(se[k].url, se[k].pid, x);
				}
				fprintf(
				    stderr,
				    "echo round %d %-6s %-3s: p50 %.1f p99 "
				    "%.1f ops %.0f %.0f %.0f %.0f %.0f\n",
				    r, transports[t], stack_keys[k], x->p50,
				    x->p99, x->ops[0], x->ops[1], x->ops[2],
				    x->ops[3], x->split);
			}
		}
		for (int k = 0; k < NSTACKS; k++) {
			if (!stack_runs(t, k)) {
				continue;
			}
			server_finish(&se[k]);
			echo_result *rounds = res[t][k], *m = &med[t][k];
			m->p50 = med_of(rounds, offsetof(echo_result, p50));
			m->p99 = med_of(rounds, offsetof(echo_result, p99));
			m->split =
			    med_of(rounds, offsetof(echo_result, split));
			for (int j = 0; j < 4; j++) {
				m->ops[j] = med_of(
				    rounds, offsetof(echo_result, ops[j]));
				m->cli_us[j] = med_of(
				    rounds, offsetof(echo_result, cli_us[j]));
				m->srv_us[j] = med_of(
				    rounds, offsetof(echo_result, srv_us[j]));
			}
			double v[MAX_REPS];
			for (int r = 0; r < reps; r++) {
				v[r] = rounds[r].p50;
			}
			p50s[t][k] = spread_of(v, reps);
			echo_json(t, k, m, p50s[t][k]);
		}
		if (stack_runs(t, ST_AA)) {
			aa_echo_p50[t] = med[t][ST_AA].p50;
			aa_echo_p99[t] = med[t][ST_AA].p99;
		}
		if (stack_runs(t, ST_AA) && stack_runs(t, ST_NNG)) {
			json_num(med[t][ST_AA].p50 / med[t][ST_NNG].p50,
			         "echo.%s.ratio_aa_nng_p50", transports[t]);
		}
		if (stack_runs(t, ST_AA) && stack_runs(t, ST_RAW)) {
			json_num(med[t][ST_AA].p50 / med[t][ST_RAW].p50,
			         "echo.%s.ratio_aa_raw_p50", transports[t]);
		}
	}

	md("\n## Echo: aaproxy call vs raw nng req/rep vs raw socket\n\n"
	   "64-byte payload; round trip p50/p99 in us with one call "
	   "outstanding (%d calls); calls/s with N outstanding (%.2f s "
	   "each); \"corked\": 256 outstanding refilled in groups of 64 "
	   "under aa_client_cork; \"2x128\": two clients with 128 each; raw "
	   "socket: blocking ping-pong with a 4-byte length (AF_UNIX stream "
	   "for ipc, TCP_NODELAY for tcp), one outstanding; medians of %d "
	   "rounds, order shuffled in each.\n\n",
	   lat_count, run_secs, reps);
	md("| transport | stack | p50 / p99 us | N=1 /s | N=16 /s | "
	   "N=256 /s | N=256 corked /s | N=2x128 /s |\n"
	   "| --- | --- | --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		const echo_result *a = &med[t][ST_AA], *b = &med[t][ST_NNG],
		                  *w = &med[t][ST_RAW];
		if (stack_runs(t, ST_AA)) {
			md("| %s | aaproxy echo | %.1f / %.1f | %.0f | %.0f | "
			   "%.0f | %.0f | %.0f |\n",
			   transports[t], a->p50, a->p99, a->ops[0], a->ops[1],
			   a->ops[2], a->ops[3], a->split);
		}
		if (stack_runs(t, ST_NNG)) {
			md("| %s | nng req/rep | %.1f / %.1f | %.0f | %.0f | "
			   "%.0f | - | - |\n",
			   transports[t], b->p50, b->p99, b->ops[0], b->ops[1],
			   b->ops[2]);
		}
		if (stack_runs(t, ST_RAW)) {
			md("| %s | raw socket | %.1f / %.1f | %.0f | - | - | "
			   "- "
			   "| - |\n",
			   transports[t], w->p50, w->p99, w->ops[0]);
		}
		if (stack_runs(t, ST_AA) && stack_runs(t, ST_NNG)) {
			md("| %s | speed-up aa/nng | %.2fx | %.2fx | %.2fx | "
			   "%.2fx | %.2fx | %.2fx |\n",
			   transports[t], b->p50 / a->p50,
			   a->ops[0] / b->ops[0], a->ops[1] / b->ops[1],
			   a->ops[2] / b->ops[2], a->ops[3] / b->ops[2],
			   a->split / b->ops[2]);
		}
	}

	md("\nRound trip against the floors (p50, one outstanding; targets "
	   "on ipc and tcp: aa/raw <= 2.5x, aa/nng <= 0.45x):\n\n"
	   "| transport | aaproxy p50 us | nng p50 us | raw socket p50 us | "
	   "aa/raw | aa/nng |\n| --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t]) || !stack_runs(t, ST_AA)) {
			continue;
		}
		double a = med[t][ST_AA].p50;
		double b = stack_runs(t, ST_NNG) ? med[t][ST_NNG].p50 : NAN;
		double w = stack_runs(t, ST_RAW) ? med[t][ST_RAW].p50 : NAN;
		char ws[32] = "-", rw[32] = "-", rb[32] = "-";
		if (isfinite(w)) {
			snprintf(ws, sizeof(ws), "%.1f", w);
			snprintf(rw, sizeof(rw), "%.2fx", a / w);
		}
		if (isfinite(b)) {
			snprintf(rb, sizeof(rb), "%.2fx", a / b);
		}
		md("| %s | %.1f | %.1f | %s | %s | %s |\n", transports[t], a,
		   b, ws, rw, rb);
	}

	md("\nPer-round p50 (us) over %d rounds: min / median / max, and "
	   "the slowest round against the median:\n\n"
	   "| transport | stack | min / median / max | max/median |\n"
	   "| --- | --- | --- | --- |\n",
	   reps);
	for (int t = 0; t < nt; t++) {
		for (int k = 0; k < NSTACKS; k++) {
			if (skip_transport(transports[t]) ||
			    !stack_runs(t, k)) {
				continue;
			}
			spread s = p50s[t][k];
			md("| %s | %s | %.1f / %.1f / %.1f | %.2fx |\n",
			   transports[t], stack_names[k], s.min, s.med, s.max,
			   s.max / s.med);
		}
	}

	md("\nCPU time per call (us; this process + the server process; "
	   "inproc: both in one process), medians:\n\n"
	   "| transport | stack | N=1 | N=16 | N=256 | N=256 corked |\n"
	   "| --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < nt; t++) {
		for (int k = 0; k < NSTACKS; k++) {
			if (skip_transport(transports[t]) ||
			    !stack_runs(t, k)) {
				continue;
			}
			const echo_result *a = &med[t][k];
			int nops = k == ST_AA ? 4 : k == ST_NNG ? 3 : 1;
			md("| %s | %s", transports[t], stack_names[k]);
			for (int j = 0; j < 4; j++) {
				if (j < nops) {
					md(" | %.2f + %.2f", a->cli_us[j],
					   a->srv_us[j]);
				} else {
					md(" | -");
				}
			}
			md(" |\n");
		}
	}
	md_flush();
}
