// bench_transport.c: the internal transport against raw nng req/rep on the
// same transport, in one run: echo round trip p50/p99 with one request
// outstanding, and round trips per second with 1, 16 and 256 outstanding.
// 64-byte payload. For ipc and tcp the echo server is a separate process
// (this program re-executed with --server); for inproc it runs on threads
// of this process.
//
// Each figure is the median of 3 rounds; the rounds alternate which stack
// runs first. Usage: bench_transport [seconds per throughput run, 0.4]
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include <aa/aa.h>

#include "../../common/src/transport.h"
#include "nng_echo.h"

#define PAYLOAD   64
#define LAT_COUNT 10000
#define MAX_OUT   256

static double run_secs = 0.4;

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = {0, (long)ms * 1000000L};
	nanosleep(&ts, NULL);
}

static void
die(const char *what, int rv)
{
	fprintf(stderr, "bench_transport: %s: %d\n", what, rv);
	exit(1);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

typedef struct result {
	double p50_us, p99_us;
	double ops[3]; // N = 1, 16, 256
} result;

static const int outs[3] = {1, 16, 256};

// ---- the client side, shared shape ----

typedef struct run {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	bool finished;
	// latency mode
	bool latency;
	uint64_t *lat;
	size_t nlat;
	uint64_t t_sent;
	// throughput mode
	uint64_t deadline;
	atomic_long done;
	atomic_int inflight;
} run;

static void
run_init(run *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->mtx, NULL);
	pthread_cond_init(&r->cv, NULL);
}

static void
run_finish(run *r)
{
	pthread_mutex_lock(&r->mtx);
	r->finished = true;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mtx);
}

static void
run_wait(run *r)
{
	pthread_mutex_lock(&r->mtx);
	while (!r->finished) {
		pthread_cond_wait(&r->cv, &r->mtx);
	}
	pthread_mutex_unlock(&r->mtx);
}

// on_reply returns true when another request should be sent.
static bool
on_reply(run *r)
{
	uint64_t now = now_ns();
	if (r->latency) {
		r->lat[r->nlat++] = now - r->t_sent;
		if (r->nlat == LAT_COUNT) {
			run_finish(r);
			return false;
		}
		r->t_sent = now;
		return true;
	}
	atomic_fetch_add_explicit(&r->done, 1, memory_order_relaxed);
	if (now < r->deadline) {
		return true;
	}
	if (atomic_fetch_sub(&r->inflight, 1) == 1) {
		run_finish(r);
	}
	return false;
}

static void
percentiles(run *r, result *res)
{
	qsort(r->lat, r->nlat, sizeof(uint64_t), cmp_u64);
	res->p50_us = (double)r->lat[r->nlat / 2] / 1000.0;
	res->p99_us = (double)r->lat[r->nlat * 99 / 100] / 1000.0;
}

// ---- aai transport: echo server and client ----

static void
aai_srv_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	(void)aai_conn_send(c, data, len);
}

static void
aai_srv_down(void *arg, aai_conn *c, int err)
{
	(void)aai_conn_free(c); // deferred: we are in c's callback
}

static const aai_conn_cbs aai_srv_cbs = {.frame = aai_srv_frame,
                                         .down = aai_srv_down};

static void
aai_srv_accept(void *arg, aai_conn *c)
{
	aai_conn_start(c, &aai_srv_cbs, NULL);
}

static aai_listener *
aai_server_start(const char *url)
{
	aai_listener *l;
	int rv = aai_listen(&l, url, NULL, aai_srv_accept, NULL);
	if (rv != 0) {
		die("aai_listen", rv);
	}
	return l;
}

static uint8_t payload[PAYLOAD];

static void
aai_cli_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	if (on_reply(arg)) {
		(void)aai_conn_send(c, payload, PAYLOAD);
	}
}

static void
aai_cli_down(void *arg, aai_conn *c, int err)
{
}

static const aai_conn_cbs aai_cli_cbs = {.frame = aai_cli_frame,
                                         .down = aai_cli_down};

static aai_conn *
aai_connect(const char *url)
{
	aai_conn *c = NULL;
	int rv = AA_ECONNREF;
	for (int i = 0; i < 500 && rv != 0; i++) {
		if ((rv = aai_dial(&c, url, NULL)) != 0) {
			sleep_ms(10); // the server process is starting
		}
	}
	if (rv != 0) {
		die("aai_dial", rv);
	}
	return c;
}

static void
aai_client(const char *url, result *res)
{
	static uint64_t lat[LAT_COUNT];
	run r;

	// Latency: one outstanding.
	run_init(&r);
	r.latency = true;
	r.lat = lat;
	aai_conn *c = aai_connect(url);
	aai_conn_start(c, &aai_cli_cbs, &r);
	r.t_sent = now_ns();
	aai_conn_send(c, payload, PAYLOAD);
	run_wait(&r);
	percentiles(&r, res);
	aai_conn_free(c);

	for (int k = 0; k < 3; k++) {
		run_init(&r);
		c = aai_connect(url);
		aai_conn_start(c, &aai_cli_cbs, &r);
		// Short warm-up, then the measured run.
		uint64_t t0 = now_ns();
		r.deadline = t0 + (uint64_t)(run_secs * 1e9);
		atomic_store(&r.inflight, outs[k]);
		for (int i = 0; i < outs[k]; i++) {
			aai_conn_send(c, payload, PAYLOAD);
		}
		run_wait(&r);
		uint64_t t1 = now_ns();
		res->ops[k] = (double)atomic_load(&r.done) / ((t1 - t0) / 1e9);
		aai_conn_free(c);
	}
}

// ---- raw nng req/rep: contexts + aio ----

typedef struct req_ctx {
	nng_ctx ctx;
	nng_aio *aio;
	bool receiving;
	run *r;
} req_ctx;

static void
req_send(req_ctx *x)
{
	nng_msg *m;
	nng_msg_alloc(&m, 0);
	nng_msg_append(m, payload, PAYLOAD);
	nng_aio_set_msg(x->aio, m);
	x->receiving = false;
	nng_ctx_send(x->ctx, x->aio);
}

static void
req_cb(void *arg)
{
	req_ctx *x = arg;
	int rv = nng_aio_result(x->aio);
	if (rv != 0) {
		if (!x->receiving) {
			nng_msg_free(nng_aio_get_msg(x->aio));
		}
		return;
	}
	if (!x->receiving) {
		// Start the receive from the send's completion (nng 1.5.2).
		x->receiving = true;
		nng_ctx_recv(x->ctx, x->aio);
		return;
	}
	nng_msg_free(nng_aio_get_msg(x->aio));
	if (on_reply(x->r)) {
		req_send(x);
	}
}

static nng_socket
nng_connect(const char *url)
{
	nng_socket s;
	int rv;
	if ((rv = nng_req0_open(&s)) != 0 ||
	    (rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 4096)) != 0 ||
	    (rv = nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME,
	                            NNG_DURATION_INFINITE)) != 0) {
		die("nng req open", rv);
	}
	rv = NNG_ECONNREFUSED;
	for (int i = 0; i < 500 && rv != 0; i++) {
		if ((rv = nng_dial(s, url, NULL, 0)) != 0) {
			sleep_ms(10);
		}
	}
	if (rv != 0) {
		die("nng_dial", rv);
	}
	return s;
}

static void
nng_client(const char *url, result *res)
{
	static uint64_t lat[LAT_COUNT];
	static req_ctx ctxs[MAX_OUT];
	run r;

	nng_socket s = nng_connect(url);
	for (int i = 0; i < MAX_OUT; i++) {
		nng_ctx_open(&ctxs[i].ctx, s);
		nng_aio_alloc(&ctxs[i].aio, req_cb, &ctxs[i]);
		ctxs[i].r = &r;
	}
	run_init(&r);
	r.latency = true;
	r.lat = lat;
	r.t_sent = now_ns();
	req_send(&ctxs[0]);
	run_wait(&r);
	percentiles(&r, res);

	for (int k = 0; k < 3; k++) {
		run_init(&r);
		uint64_t t0 = now_ns();
		r.deadline = t0 + (uint64_t)(run_secs * 1e9);
		atomic_store(&r.inflight, outs[k]);
		for (int i = 0; i < outs[k]; i++) {
			req_send(&ctxs[i]);
		}
		run_wait(&r);
		uint64_t t1 = now_ns();
		res->ops[k] = (double)atomic_load(&r.done) / ((t1 - t0) / 1e9);
	}
	for (int i = 0; i < MAX_OUT; i++) {
		nng_aio_stop(ctxs[i].aio);
	}
	nng_close(s);
	for (int i = 0; i < MAX_OUT; i++) {
		nng_aio_free(ctxs[i].aio);
	}
}

// ---- server processes ----

static int
server_main(const char *stack, const char *url)
{
	static nng_echo_server echo;
	int rv;
	if (strcmp(stack, "aai") == 0) {
		(void)aai_server_start(url);
	} else if ((rv = nng_echo_start(&echo, url)) != 0) {
		die("nng rep listen", rv);
	}
	for (;;) {
		pause(); // killed by the client when done
	}
	return 0;
}

static pid_t
spawn_server(const char *self, const char *stack, const char *url)
{
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); // no orphan if we die
		execl(self, self, "--server", stack, url, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void
stop_server(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

// ---- main ----

#define ROUNDS 3

static double
median3(double a, double b, double c)
{
	if ((a <= b && b <= c) || (c <= b && b <= a)) {
		return b;
	}
	if ((b <= a && a <= c) || (c <= a && a <= b)) {
		return a;
	}
	return c;
}

// median_of sets each figure of out to its median over the rounds.
static void
median_of(result *out, const result *r)
{
	out->p50_us = median3(r[0].p50_us, r[1].p50_us, r[2].p50_us);
	out->p99_us = median3(r[0].p99_us, r[1].p99_us, r[2].p99_us);
	for (int k = 0; k < 3; k++) {
		out->ops[k] = median3(r[0].ops[k], r[1].ops[k], r[2].ops[k]);
	}
}

typedef struct row {
	const char *transport;
	result aai, nng;
} row;

static void
print_row(const char *t, const char *stack, const result *r)
{
	printf("| %-6s | %-24s | %6.1f / %6.1f | %8.0f | %8.0f | %8.0f |\n", t,
	       stack, r->p50_us, r->p99_us, r->ops[0], r->ops[1], r->ops[2]);
}

int
main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--server") == 0) {
		return server_main(argv[2], argv[3]);
	}
	if (argc > 1) {
		run_secs = atof(argv[1]);
	}
	memset(payload, 'x', sizeof(payload));

	char self[512];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		die("readlink /proc/self/exe", errno);
	}
	self[n] = '\0';

	int port = 20000 + (int)(getpid() % 20000);
	char url[2][128];
	row rows[3];
	static result res[3][2][ROUNDS];
	static nng_echo_server echo;
	const char *stacks[2] = {"aai", "nng"};

	memset(rows, 0, sizeof(rows));
	rows[0].transport = "inproc";
	rows[1].transport = "ipc";
	rows[2].transport = "tcp";

	for (int t = 0; t < 3; t++) {
		aai_listener *l = NULL;
		pid_t pid[2] = {0, 0};
		for (int k = 0; k < 2; k++) {
			if (t == 0) {
				snprintf(url[k], sizeof(url[k]),
				         "inproc://bench-%s", stacks[k]);
			} else if (t == 1) {
				snprintf(url[k], sizeof(url[k]),
				         "ipc:///tmp/aa-bench-%d-%s.sock",
				         (int)getpid(), stacks[k]);
			} else {
				snprintf(url[k], sizeof(url[k]),
				         "tcp://127.0.0.1:%d", port + k);
			}
		}
		if (t == 0) { // inproc: servers on threads of this process
			l = aai_server_start(url[0]);
			int rv = nng_echo_start(&echo, url[1]);
			if (rv != 0) {
				die("nng rep listen", rv);
			}
		} else {
			for (int k = 0; k < 2; k++) {
				pid[k] = spawn_server(self, stacks[k], url[k]);
			}
		}
		// Rounds alternate which stack goes first; medians reported.
		for (int r = 0; r < ROUNDS; r++) {
			for (int i = 0; i < 2; i++) {
				int k = (r + i) % 2;
				if (k == 0) {
					aai_client(url[0], &res[t][0][r]);
				} else {
					nng_client(url[1], &res[t][1][r]);
				}
				const result *x = &res[t][k][r];
				fprintf(stderr,
				        "round %d %-6s %s: p50 %.1f p99 %.1f "
				        "ops %.0f %.0f %.0f\n",
				        r, rows[t].transport, stacks[k],
				        x->p50_us, x->p99_us, x->ops[0],
				        x->ops[1], x->ops[2]);
			}
		}
		if (t == 0) {
			aai_listener_free(l);
			nng_echo_stop(&echo);
		} else {
			for (int k = 0; k < 2; k++) {
				stop_server(pid[k]);
			}
			if (t == 1) {
				unlink(url[0] + 6);
				unlink(url[1] + 6);
			}
		}
		median_of(&rows[t].aai, res[t][0]);
		median_of(&rows[t].nng, res[t][1]);
	}

	printf(
	    "\n64-byte payload; p50/p99 round trip in us with one "
	    "outstanding (%d round trips); round trips/s with N outstanding "
	    "(%.1f s each); medians of %d rounds\n\n",
	    LAT_COUNT, run_secs, ROUNDS);
	printf("| transport | stack | p50 / p99 us | N=1 /s | N=16 /s | "
	       "N=256 /s |\n| --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < 3; t++) {
		print_row(rows[t].transport, "aai transport", &rows[t].aai);
		print_row(rows[t].transport, "nng req/rep (ctx + aio)",
		          &rows[t].nng);
		const result *a = &rows[t].aai, *b = &rows[t].nng;
		printf("| %-6s | %-24s | %6.2fx p50 | %7.2fx | %7.2fx | "
		       "%7.2fx |\n",
		       rows[t].transport, "ratio aai / nng (speed)",
		       b->p50_us / a->p50_us, a->ops[0] / b->ops[0],
		       a->ops[1] / b->ops[1], a->ops[2] / b->ops[2]);
	}
	return 0;
}
