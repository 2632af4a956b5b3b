// bench_proxy.c: benchmarks of the client and server layers (aaproxy as a
// user sees it), each compared with a floor measured in the same run:
//
//   echo    an aaproxy "echo" call (aa_client_call + completion handler)
//           against raw nng req/rep (nng_req0/nng_rep0, contexts + aio)
//           on inproc, ipc and tcp: p50/p99 round trip with one call
//           outstanding, calls/s with 1, 16 and 256 outstanding, and 256
//           outstanding refilled in corked groups (aa_client_cork).
//   cancel  time inside aa_op_cancel and until the handler ran, for
//           pre-submit and in-flight cancels, with the server responsive
//           and stopped (SIGSTOP), against a direct call of a callback.
//   wire    messages on the wire per operation for each timeline, from
//           the client's and the server's counters.
//   memory  bytes per pending op on each side with 100,000 pending, heap
//           allocations per call in steady state, and the time of
//           aa_client_cancel_all over 100,000 pending ops.
//
// For ipc and tcp the server is a separate process: this program
// re-executed (fork, then exec at once: nng must not run in a forked copy
// of an initialised parent) with --server. For inproc it runs on threads
// of this process. The server's figures come back through a "stats"
// method whose result is the server's counters.
//
// Usage: bench_proxy [--smoke] [--reps N] [--secs S] [part...]
// parts: echo cancel wire memory (default: all). --smoke runs every part
// briefly, checks the functional results and never fails on a time.
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
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

#include <aa/client.h>
#include <aa/errors.h>
#include <aa/server.h>

#include "../nng_echo.h"

#define PAYLOAD     64
#define MAX_OUT     256
#define SRV_PENDING 250000
#define MAX_HELD    (1 << 17)

static bool smoke;
static int reps = 5;
static double run_secs = 0.3;
static int lat_count = 10000;
static int cancel_count = 10000;
static int mem_count = 100000;
static int steady_count = 100000;
static int wire_count = 1000;
static int failures;
static char self_path[512];
static const char *only_transport; // --transport: run just this one
static const char *only_stack;     // --stack aa|nng: echo of one stack

static bool
skip_transport(const char *t)
{
	return only_transport != NULL && strcmp(only_transport, t) != 0;
}

static uint8_t payload[PAYLOAD];

// ---- Small helpers ----

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	nanosleep(&ts, NULL);
}

static void
die(const char *what, int rv)
{
	fprintf(stderr, "bench_proxy: %s: %d (%s)\n", what, rv,
	        aa_strerror(rv));
	exit(1);
}

// check records a functional failure: the smoke test fails on these only.
static void
check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "bench_proxy: FAILED: %s\n", what);
		failures++;
	}
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

// pct returns the p-th percentile of v (sorted in place), in µs.
static double
pct(uint64_t *v, size_t n, int p)
{
	if (n == 0) {
		return 0;
	}
	qsort(v, n, sizeof(*v), cmp_u64);
	return (double)v[n * (size_t)p / 100] / 1000.0;
}

static double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return v[n / 2];
}

// heap_bytes returns the bytes malloc has handed out and not taken back.
static uint64_t
heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();
	return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
}

static uint64_t
rss_bytes(void)
{
	unsigned long size = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f != NULL) {
		if (fscanf(f, "%lu %lu", &size, &rss) != 2) {
			rss = 0;
		}
		fclose(f);
	}
	return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

// ---- The aaproxy server: methods ----

// What the "stats" method returns.
typedef struct srv_report {
	aa_server_stats st;
	uint64_t heap_allocs;
	uint64_t heap_bytes;
	uint64_t rss_bytes;
} srv_report;

static aa_server *stats_server; // the server the stats method reports on

static int
m_echo(aa_op **opp, void *arg, const aa_call_info *call, const void *data,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = len};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		if (len > 0) {
			memcpy(aa_op_extra(*opp), data, len);
		}
		aa_op_complete(*opp, aa_op_extra(*opp), len, NULL);
	}
	return rv;
}

static int
hold_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	aa_op_canceled(op);
	return 0;
}

// "hold": a real op that never completes by itself; a cancel ends it.
static int
m_hold(aa_op **opp, void *arg, const aa_call_info *call, const void *data,
       size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = hold_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	return aa_op_alloc(opp, &pv, assoc);
}

// "stubborn" ops ignore cancellation and complete when "release" runs.
static pthread_mutex_t held_mtx = PTHREAD_MUTEX_INITIALIZER;
static aa_op *held[MAX_HELD];
static size_t n_held;

static int
stubborn_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	return 0;
}

static int
m_stubborn(aa_op **opp, void *arg, const aa_call_info *call, const void *data,
           size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = stubborn_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	pthread_mutex_lock(&held_mtx);
	bool room = n_held < MAX_HELD;
	pthread_mutex_unlock(&held_mtx);
	if (!room) {
		return AA_ELIMIT;
	}
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_ref(*opp);
		pthread_mutex_lock(&held_mtx);
		held[n_held++] = *opp;
		pthread_mutex_unlock(&held_mtx);
	}
	return rv;
}

// "release" completes every stubborn op, then itself.
static int
m_release(aa_op **opp, void *arg, const aa_call_info *call, const void *data,
          size_t len, const aa_assoc *assoc)
{
	static aa_op *batch[MAX_HELD];
	pthread_mutex_lock(&held_mtx);
	size_t n = n_held;
	memcpy(batch, held, n * sizeof(batch[0]));
	n_held = 0;
	pthread_mutex_unlock(&held_mtx);
	for (size_t i = 0; i < n; i++) {
		aa_op_complete(batch[i], NULL, 0, NULL);
		aa_op_unref(batch[i]);
	}
	return m_echo(opp, arg, call, data, len, assoc);
}

static int
m_stats(aa_op **opp, void *arg, const aa_call_info *call, const void *data,
        size_t len, const aa_assoc *assoc)
{
	srv_report rep;
	memset(&rep, 0, sizeof(rep));
	aa_server_stats_get(stats_server, &rep.st);
	rep.heap_allocs = aa_heap_allocs();
	rep.heap_bytes = heap_bytes();
	rep.rss_bytes = rss_bytes();
	return m_echo(opp, arg, call, &rep, sizeof(rep), assoc);
}

static aa_server *
aa_server_up(const char *url, int *port)
{
	aa_server *s;
	aa_server_opts so = {.max_pending = SRV_PENDING};
	int rv;
	if ((rv = aa_server_alloc(&s, &so)) != 0) {
		die("aa_server_alloc", rv);
	}
	const aa_method_def defs[] = {
	    {.name = "echo", .start = m_echo},
	    {.name = "hold", .start = m_hold},
	    {.name = "stubborn", .start = m_stubborn},
	    {.name = "release", .start = m_release},
	    {.name = "stats", .start = m_stats},
	};
	for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
		aa_method_def d = defs[i];
		d.cancel_types = AA_CANCEL_ALL;
		if ((rv = aa_server_register(s, &d)) != 0) {
			die("aa_server_register", rv);
		}
	}
	if ((rv = aa_server_listen(s, url)) != 0) {
		die("aa_server_listen", rv);
	}
	stats_server = s;
	*port = aa_server_port(s);
	return s;
}

static void
aa_server_down(aa_server *s)
{
	aa_server_free(s);
	pthread_mutex_lock(&held_mtx);
	for (size_t i = 0; i < n_held; i++) {
		aa_op_unref(held[i]);
	}
	n_held = 0;
	pthread_mutex_unlock(&held_mtx);
}

// ---- Raw nng req/rep server (contexts + aio) ----

// nng_echo_up starts the raw nng echo server or exits.
static void
nng_echo_up(nng_echo_server *e, const char *url)
{
	int rv = nng_echo_start(e, url);
	if (rv != 0) {
		fprintf(stderr, "bench_proxy: nng rep listen: %s\n",
		        nng_strerror(rv));
		exit(1);
	}
}

// server_main is the server process: it prints "port N" when listening
// and waits to be killed.
static int
server_main(const char *stack, const char *url)
{
	static nng_echo_server echo;
	int port = 0;
	aa_server *s = NULL;
	// SIGTERM ends the process after a stat print; every thread the
	// servers start inherits the blocked mask, so sigwait gets it.
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, NULL);
	if (strcmp(stack, "aa") == 0) {
		s = aa_server_up(url, &port);
	} else {
		nng_echo_up(&echo, url);
		port = echo.port;
	}
	printf("port %d\n", port);
	fflush(stdout);
	int sig = 0;
	sigwait(&term, &sig);
	if (s != NULL) {
		aa_server_stats st;
		aa_server_stats_get(s, &st);
		fprintf(stderr,
		        "bench_proxy server %s: started %llu completed %llu "
		        "canceled %llu wasted %llu cancels %llu replies %llu "
		        "heap allocs %llu heap bytes %llu\n",
		        url, (unsigned long long)st.started,
		        (unsigned long long)st.completed,
		        (unsigned long long)st.canceled,
		        (unsigned long long)st.wasted,
		        (unsigned long long)st.cancels_received,
		        (unsigned long long)st.replies_sent,
		        (unsigned long long)aa_heap_allocs(),
		        (unsigned long long)heap_bytes());
	}
	exit(0); // no teardown: a benchmark's server just ends
}

// ---- Server processes ----

#define MAX_CHILDREN 8
static pid_t children[MAX_CHILDREN];

static void
kill_children(void)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (children[i] > 0) {
			kill(children[i], SIGKILL);
			kill(children[i], SIGCONT);
			waitpid(children[i], NULL, 0);
			children[i] = 0;
		}
	}
}

// spawn_server starts "--server stack url" and returns its pid; the url
// of a tcp listener on port 0 is rewritten with the port it bound.
static pid_t
spawn_server(const char *stack, char *url, size_t urlsz)
{
	int fds[2];
	if (pipe(fds) != 0) {
		die("pipe", AA_ESYSTEM);
	}
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(self_path, self_path, "--server", stack, url,
		      (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (children[i] == 0) {
			children[i] = pid;
			break;
		}
	}
	FILE *f = fdopen(fds[0], "r");
	int port = -1;
	if (f == NULL || fscanf(f, "port %d", &port) != 1) {
		die("server process did not start", AA_ESYSTEM);
	}
	fclose(f);
	if (strncmp(url, "tcp://", 6) == 0) {
		snprintf(url, urlsz, "tcp://127.0.0.1:%d", port);
	}
	return pid;
}

static void
stop_server(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (children[i] == pid) {
			children[i] = 0;
		}
	}
	kill(pid, SIGCONT);
	kill(pid, SIGTERM); // it prints its stats and exits
	for (int i = 0; i < 200; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			return;
		}
		sleep_us(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

// make_url sets url for transport t ("inproc", "ipc", "tcp").
static void
make_url(char *url, size_t sz, const char *t, const char *tag)
{
	if (strcmp(t, "inproc") == 0) {
		snprintf(url, sz, "inproc://bench-proxy-%d-%s", (int)getpid(),
		         tag);
	} else if (strcmp(t, "ipc") == 0) {
		snprintf(url, sz, "ipc:///tmp/aa-bench-proxy-%d-%s.sock",
		         (int)getpid(), tag);
	} else {
		snprintf(url, sz, "tcp://127.0.0.1:0");
	}
}

// A server of one stack on one transport: a process, or in this process.
typedef struct server_end {
	char url[160];
	pid_t pid;
	aa_server *aa;
	nng_echo_server *nng;
} server_end;

static void
server_start(server_end *e, const char *t, const char *stack)
{
	memset(e, 0, sizeof(*e));
	make_url(e->url, sizeof(e->url), t, stack);
	int port;
	if (strcmp(t, "inproc") != 0) {
		e->pid = spawn_server(stack, e->url, sizeof(e->url));
	} else if (strcmp(stack, "aa") == 0) {
		e->aa = aa_server_up(e->url, &port);
	} else {
		e->nng = calloc(1, sizeof(*e->nng));
		nng_echo_up(e->nng, e->url);
	}
}

static void
server_finish(server_end *e)
{
	if (e->pid > 0) {
		stop_server(e->pid);
		if (strncmp(e->url, "ipc://", 6) == 0) {
			unlink(e->url + 6);
		}
	} else if (e->aa != NULL) {
		aa_server_down(e->aa);
	} else if (e->nng != NULL) {
		nng_echo_stop(e->nng);
		free(e->nng);
	}
}

// ---- Client helpers ----

static aa_client *
client_open(const char *url)
{
	aa_client *c;
	// Long silence bound: a server stopped for a benchmark is not lost.
	aa_client_opts co = {.url = url, .dead_after_ms = 60000};
	int rv = aa_client_open(&c, &co);
	if (rv != 0) {
		die("aa_client_open", rv);
	}
	return c;
}

typedef struct waiter {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	bool done;
} waiter;

static void
waiter_init(waiter *w)
{
	pthread_mutex_init(&w->mtx, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->done = false;
}

static void
waiter_fini(waiter *w)
{
	pthread_mutex_destroy(&w->mtx);
	pthread_cond_destroy(&w->cv);
}

static void
waiter_signal(waiter *w)
{
	pthread_mutex_lock(&w->mtx);
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mtx);
}

// waiter_wait waits at most secs seconds; false on a timeout.
static bool
waiter_wait(waiter *w, int secs)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += secs;
	pthread_mutex_lock(&w->mtx);
	int rv = 0;
	while (!w->done && rv == 0) {
		rv = pthread_cond_timedwait(&w->cv, &w->mtx, &ts);
	}
	bool done = w->done;
	pthread_mutex_unlock(&w->mtx);
	return done;
}

typedef struct query {
	waiter w;
	srv_report rep;
	int err;
} query;

static void
query_done(aa_op *op, void *arg)
{
	query *q = arg;
	const void *data;
	size_t len;
	q->err = aa_op_result(op, &data, &len);
	if (q->err == 0 && len == sizeof(q->rep)) {
		memcpy(&q->rep, data, sizeof(q->rep));
	} else if (q->err == 0) {
		q->err = AA_EPROTO;
	}
	waiter_signal(&q->w);
}

// server_query returns the server's counters; its reply comes after
// every Start sent before it was handled (frames are handled in order).
static void
server_query(aa_client *c, srv_report *rep)
{
	query q;
	aa_op *op;
	waiter_init(&q.w);
	q.err = 0;
	int rv = aa_client_call(&op, c, "stats", NULL, 0, NULL, NULL);
	if (rv != 0) {
		die("stats call", rv);
	}
	aa_op_set_handler(op, query_done, &q);
	if (!waiter_wait(&q.w, 30)) {
		die("stats call timed out", AA_ETIMEDOUT);
	}
	if (q.err != 0) {
		die("stats call failed", q.err);
	}
	aa_op_unref(op);
	waiter_fini(&q.w);
	*rep = q.rep;
}

// ---- Echo: a pipeline of calls driven from the completion handlers ----

typedef struct pipeline {
	aa_client *c;
	waiter w;
	uint64_t deadline; // 0: none
	long limit;        // calls to issue; 0: none
	int group;         // > 0: refill in corked groups of this size
	atomic_long issued;
	atomic_long done;
	atomic_long outstanding;
	atomic_int refill;
	atomic_int errors;
	uint64_t *lat; // latency mode: one outstanding
	size_t nlat;
	size_t latmax;
	uint64_t t_sent;
	// raw nng
	nng_ctx *unused;
} pipeline;

static void
pl_init(pipeline *p, aa_client *c)
{
	memset(p, 0, sizeof(*p));
	p->c = c;
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
	if (aa_op_result(op, &data, &len) != 0 || len != PAYLOAD) {
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
	    aa_client_call(&op, p->c, "echo", payload, PAYLOAD, NULL, NULL);
	if (rv != 0) {
		die("aa_client_call echo", rv);
	}
	aa_op_set_handler(op, echo_done, p);
}

// pl_start issues window calls (corked when grouping); pl_wait waits
// until the pipeline drains.
static void
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

static void
pl_wait(pipeline *p)
{
	if (!waiter_wait(&p->w, 60)) {
		die("echo pipeline timed out", AA_ETIMEDOUT);
	}
	check(atomic_load(&p->errors) == 0, "echo results");
}

static void
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

static uint64_t
self_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// proc_cpu_ns returns the user + system time of process pid (clock
// ticks: coarse, enough over a run of tenths of a second).
static uint64_t
proc_cpu_ns(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return 0;
	}
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');
	unsigned long long ut = 0, st = 0;
	if (p == NULL || sscanf(p + 2,
	                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
	                        "%*u %llu %llu",
	                        &ut, &st) != 2) {
		return 0;
	}
	return (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

static pid_t echo_server_pid; // the aa server process of aa_echo, or 0

static const int outs[4] = {1, 16, 256, 256};

static void
aa_echo(const char *url, echo_result *res)
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
		uint64_t c0 = self_cpu_ns();
		uint64_t s0 =
		    echo_server_pid ? proc_cpu_ns(echo_server_pid) : 0;
		uint64_t t0 = now_ns();
		p.deadline = t0 + (uint64_t)(run_secs * 1e9);
		pl_run(&p, outs[k]);
		uint64_t t1 = now_ns();
		uint64_t c1 = self_cpu_ns();
		uint64_t s1 =
		    echo_server_pid ? proc_cpu_ns(echo_server_pid) : 0;
		double calls = (double)atomic_load(&p.done);
		res->ops[k] = calls / ((t1 - t0) / 1e9);
		res->cli_us[k] = (double)(c1 - c0) / 1000.0 / calls;
		res->srv_us[k] = (double)(s1 - s0) / 1000.0 / calls;
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

static void
req_send(req_ctx *x)
{
	nng_msg *m;
	atomic_fetch_add(&x->p->outstanding, 1);
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
	if (nng_msg_len(m) != PAYLOAD) {
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

static void
nng_echo(const char *url, echo_result *res)
{
	static uint64_t lat[100000];
	static req_ctx ctxs[MAX_OUT];
	nng_socket s;
	int rv;
	pipeline p;
	if ((rv = nng_req0_open(&s)) != 0 ||
	    (rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 4096)) != 0 ||
	    (rv = nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME,
	                            NNG_DURATION_INFINITE)) != 0 ||
	    (rv = nng_dial(s, url, NULL, 0)) != 0) {
		fprintf(stderr, "bench_proxy: nng req: %s\n",
		        nng_strerror(rv));
		exit(1);
	}
	for (int i = 0; i < MAX_OUT; i++) {
		nng_ctx_open(&ctxs[i].ctx, s);
		nng_aio_alloc(&ctxs[i].aio, req_cb, &ctxs[i]);
		ctxs[i].p = &p;
	}
	for (int k = -2; k < 3; k++) { // -2 warm-up, -1 latency
		pl_init(&p, NULL);
		int window = 16;
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
		atomic_store(&p.outstanding, 1);
		for (int i = 0; i < window && claim(&p); i++) {
			req_send(&ctxs[i]);
		}
		pl_release(&p);
		if (!waiter_wait(&p.w, 60)) {
			die("nng pipeline timed out", AA_ETIMEDOUT);
		}
		uint64_t t1 = now_ns();
		check(atomic_load(&p.errors) == 0, "nng echo results");
		if (k == -1) {
			res->p50 = pct(lat, p.nlat, 50);
			res->p99 = pct(lat, p.nlat, 99);
		} else if (k >= 0) {
			res->ops[k] =
			    (double)atomic_load(&p.done) / ((t1 - t0) / 1e9);
		}
		waiter_fini(&p.w);
	}
	res->ops[3] = 0;
	for (int i = 0; i < MAX_OUT; i++) {
		nng_aio_stop(ctxs[i].aio);
	}
	nng_close(s);
	for (int i = 0; i < MAX_OUT; i++) {
		nng_aio_free(ctxs[i].aio);
	}
}

static void
bench_echo(void)
{
	static const char *const transports[3] = {"inproc", "ipc", "tcp"};
	static echo_result res[3][2][16];
	echo_result med[3][2];
	int nt = smoke ? 2 : 3;

	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		server_end se[2];
		server_start(&se[0], transports[t], "aa");
		server_start(&se[1], transports[t], "nng");
		for (int r = 0; r < reps; r++) {
			int first = rand() % 2; // shuffled order per round
			for (int i = 0; i < 2; i++) {
				int k = (first + i) % 2;
				echo_result *x = &res[t][k][r];
				if (only_stack != NULL &&
				    strcmp(only_stack, k ? "nng" : "aa") !=
				        0) {
					memset(x, 0, sizeof(*x));
					continue;
				}
				if (k == 0) {
					echo_server_pid = se[0].pid;
					aa_echo(se[0].url, x);
				} else {
					nng_echo(se[1].url, x);
				}
				fprintf(
				    stderr,
				    "echo round %d %-6s %-3s: p50 %.1f p99 "
				    "%.1f ops %.0f %.0f %.0f %.0f %.0f\n",
				    r, transports[t], k ? "nng" : "aa", x->p50,
				    x->p99, x->ops[0], x->ops[1], x->ops[2],
				    x->ops[3], x->split);
			}
		}
		server_finish(&se[0]);
		server_finish(&se[1]);
		for (int k = 0; k < 2; k++) {
			double v[16];
			for (int r = 0; r < reps; r++) {
				v[r] = res[t][k][r].p50;
			}
			med[t][k].p50 = median(v, reps);
			for (int r = 0; r < reps; r++) {
				v[r] = res[t][k][r].p99;
			}
			med[t][k].p99 = median(v, reps);
			for (int r = 0; r < reps; r++) {
				v[r] = res[t][k][r].split;
			}
			med[t][k].split = median(v, reps);
			for (int j = 0; j < 4; j++) {
				for (int r = 0; r < reps; r++) {
					v[r] = res[t][k][r].ops[j];
				}
				med[t][k].ops[j] = median(v, reps);
				for (int r = 0; r < reps; r++) {
					v[r] = res[t][k][r].cli_us[j];
				}
				med[t][k].cli_us[j] = median(v, reps);
				for (int r = 0; r < reps; r++) {
					v[r] = res[t][k][r].srv_us[j];
				}
				med[t][k].srv_us[j] = median(v, reps);
			}
		}
	}

	printf("\n## Echo: aaproxy call vs raw nng req/rep\n\n64-byte "
	       "payload; round trip p50/p99 in us with one call outstanding "
	       "(%d calls); calls/s with N outstanding (%.2f s each); "
	       "\"corked\": 256 outstanding refilled in groups of 64 under "
	       "aa_client_cork; \"2x128\": two clients with 128 each; medians "
	       "of %d rounds, order shuffled.\n\n",
	       lat_count, run_secs, reps);
	printf("| transport | stack | p50 / p99 us | N=1 /s | N=16 /s | "
	       "N=256 /s | N=256 corked /s | N=2x128 /s |\n"
	       "| --- | --- | --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		const echo_result *a = &med[t][0], *b = &med[t][1];
		printf("| %s | aaproxy echo | %.1f / %.1f | %.0f | %.0f | "
		       "%.0f | %.0f | %.0f |\n",
		       transports[t], a->p50, a->p99, a->ops[0], a->ops[1],
		       a->ops[2], a->ops[3], a->split);
		printf("| %s | nng req/rep | %.1f / %.1f | %.0f | %.0f | "
		       "%.0f | - | - |\n",
		       transports[t], b->p50, b->p99, b->ops[0], b->ops[1],
		       b->ops[2]);
		printf("| %s | speed-up aa/nng | %.2fx | %.2fx | %.2fx | "
		       "%.2fx | %.2fx | %.2fx |\n",
		       transports[t], b->p50 / a->p50, a->ops[0] / b->ops[0],
		       a->ops[1] / b->ops[1], a->ops[2] / b->ops[2],
		       a->ops[3] / b->ops[2], a->split / b->ops[2]);
	}
	printf("\nCPU time per aaproxy call (us; client process, server "
	       "process; inproc: both in one process), medians:\n\n"
	       "| transport | N=1 | N=16 | N=256 | N=256 corked |\n"
	       "| --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		const echo_result *a = &med[t][0];
		printf("| %s | %.2f + %.2f | %.2f + %.2f | %.2f + %.2f | %.2f "
		       "+ %.2f |\n",
		       transports[t], a->cli_us[0], a->srv_us[0], a->cli_us[1],
		       a->srv_us[1], a->cli_us[2], a->srv_us[2], a->cli_us[3],
		       a->srv_us[3]);
	}
	fflush(stdout);
}

// ---- Cancel latency ----

typedef struct cslot {
	uint64_t t_handler;
	aa_state state;
} cslot;

static atomic_long settled;

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

// wait_settled waits until n settle handlers ran (at most 30 s).
static bool
wait_settled(long n)
{
	for (int i = 0; i < 300000 && atomic_load(&settled) < n; i++) {
		sleep_us(100);
	}
	return atomic_load(&settled) >= n;
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

static void
print_cancel(const char *t, const char *what, const cancel_result *r)
{
	printf("| %s | %s | %.0f | %.3f / %.3f | %.1f %% | %.3f / %.3f |\n", t,
	       what, r->n, r->in_p50, r->in_p99, r->share_1us, r->hd_p50,
	       r->hd_p99);
}

static void
bench_cancel(void)
{
	static const char *const transports[3] = {"inproc", "ipc", "tcp"};
	int nt = smoke ? 2 : 3;
	cancel_result r;

	printf("\n## Cancel latency\n\nTime inside aa_op_cancel (the "
	       "handler runs inline, so this is \"handler done\") and from "
	       "the call to the handler's first instruction, p50 / p99 in "
	       "us, over N cancels (batches of 1000 ops); each figure "
	       "includes one clock_gettime pair, as the direct call "
	       "does.\n\n");
	printf("| transport | case | N | inside cancel p50 / p99 us | "
	       "returned within 1 us | to handler p50 / p99 us |\n"
	       "| --- | --- | --- | --- | --- | --- |\n");
	direct_call(cancel_count, &r);
	print_cancel("-", "direct call of the callback (floor)", &r);
	for (int t = 0; t < nt; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		server_end se;
		server_start(&se, transports[t], "aa");
		aa_client *c = client_open(se.url);
		int nm = se.pid > 0 ? 3 : 2;
		for (int m = 0; m < nm; m++) {
			cancel_batches(c, se.pid, (cmode)m, cancel_count, &r);
			print_cancel(transports[t], cmode_names[m], &r);
			fflush(stdout);
		}
		aa_client_stats cs;
		aa_client_stats_get(c, &cs);
		check(cs.pending == 0, "no op left pending after cancels");
		aa_client_free(c);
		server_finish(&se);
	}
	fflush(stdout);
}

// ---- Messages on the wire per operation ----

typedef struct wire_delta {
	double start, cancel, complete, progress;
	double srv_started, srv_cancels, srv_replies, srv_wasted;
	long settled_completed; // settlements "completed"
} wire_delta;

static atomic_long settle_completed;

static void
ignore_done(aa_op *op, void *arg)
{
}

static void
settle_kind(aa_op *op, void *arg)
{
	if (aa_op_settlement(op) == AA_SETTLE_COMPLETED) {
		atomic_fetch_add(&settle_completed, 1);
	}
	atomic_fetch_add(&settled, 1);
}

typedef enum wcase {
	WC_NORMAL,
	WC_PRE_SUBMIT,
	WC_IN_FLIGHT,
	WC_ANYWAY,
} wcase;

static const char *const wcase_names[4] = {
    "normal (echo completes)",
    "pre-submit cancel",
    "in-flight cancel (server cancels)",
    "in-flight cancel, server completes anyway",
};

static void
wire_case(aa_client *c, wcase w, int k, wire_delta *d)
{
	aa_op **ops = calloc((size_t)k, sizeof(aa_op *));
	aa_client_stats c0, c1;
	srv_report s0, s1, sq0, sq1;
	// What two stats queries in a row add to the server's counters.
	server_query(c, &sq0);
	server_query(c, &sq1);
	server_query(c, &s0);
	aa_client_stats_get(c, &c0);
	atomic_store(&settled, 0);
	atomic_store(&settle_completed, 0);
	const char *method = w == WC_NORMAL   ? "echo"
	                     : w == WC_ANYWAY ? "stubborn"
	                                      : "hold";
	if (w == WC_PRE_SUBMIT) {
		aa_client_cork(c);
	}
	for (int i = 0; i < k; i++) {
		int rv = aa_client_call(&ops[i], c, method, payload, PAYLOAD,
		                        NULL, NULL);
		if (rv != 0) {
			die("aa_client_call", rv);
		}
		// The settle handler runs after the completion handler.
		aa_op_set_handler(ops[i], ignore_done, NULL);
		aa_op_set_settle_handler(ops[i], settle_kind, NULL);
		if (w != WC_NORMAL) {
			check(aa_op_cancel(ops[i], AA_CANCEL_TERMINAL) == 0,
			      "cancel");
		}
	}
	if (w == WC_PRE_SUBMIT) {
		aa_client_uncork(c);
	}
	if (w == WC_ANYWAY) {
		// "release" completes every stubborn op; its own messages
		// are taken out below.
		query q;
		aa_op *op;
		waiter_init(&q.w);
		if (aa_client_call(&op, c, "release", NULL, 0, NULL, NULL) !=
		    0) {
			die("release", AA_EINTERNAL);
		}
		aa_op_set_handler(op, query_done, &q);
		check(waiter_wait(&q.w, 30), "release returned");
		aa_op_unref(op);
		waiter_fini(&q.w);
	}
	check(wait_settled(k), "every op settled");
	aa_client_stats_get(c, &c1);
	server_query(c, &s1);
	if (w == WC_ANYWAY) { // the release call: one Start, one Complete
		c1.sent_start--;
		c1.recv_complete--;
		s1.st.started--;
		s1.st.replies_sent--;
	}
	// Take out the stats queries' own share.
	uint64_t q_started = sq1.st.started - sq0.st.started;
	uint64_t q_replies = sq1.st.replies_sent - sq0.st.replies_sent;
	d->start = (double)(c1.sent_start - c0.sent_start) / k;
	d->cancel = (double)(c1.sent_cancel - c0.sent_cancel) / k;
	d->complete = (double)(c1.recv_complete - c0.recv_complete) / k;
	d->progress = (double)(c1.recv_progress - c0.recv_progress) / k;
	d->srv_started =
	    (double)(s1.st.started - s0.st.started - q_started) / k;
	d->srv_cancels =
	    (double)(s1.st.cancels_received - s0.st.cancels_received) / k;
	d->srv_replies =
	    (double)(s1.st.replies_sent - s0.st.replies_sent - q_replies) / k;
	d->srv_wasted = (double)(s1.st.wasted - s0.st.wasted) / k;
	d->settled_completed = atomic_load(&settle_completed);
	for (int i = 0; i < k; i++) {
		aa_timeline tl = aa_client_timeline(ops[i]);
		aa_timeline want = w == WC_NORMAL ? AA_TIMELINE_NONE
		                   : w == WC_PRE_SUBMIT
		                       ? AA_TIMELINE_PRE_SUBMIT
		                       : AA_TIMELINE_IN_FLIGHT;
		check(tl == want, "wire: timeline");
		aa_op_unref(ops[i]);
	}
	free(ops);
}

static void
bench_wire(void)
{
	server_end se;
	server_start(&se, "ipc", "aa");
	aa_client *c = client_open(se.url);
	int k = wire_count;
	printf("\n## Messages on the wire per operation (ipc, %d ops per "
	       "case)\n\nFrom aa_client_stats (sent Start / Cancel, received "
	       "Complete / Progress) and aa_server_stats (real ops started, "
	       "Cancels received, Completes sent, wasted), per op.\n\n",
	       k);
	printf("| timeline | Start | Cancel | Complete | Progress | total | "
	       "srv started | srv cancels | srv replies | srv wasted | "
	       "settled completed |\n"
	       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
	       "| --- |\n");
	static const double want_total[4] = {2, 0, 3, 3};
	for (int w = 0; w < 4; w++) {
		wire_delta d;
		wire_case(c, (wcase)w, k, &d);
		double total = d.start + d.cancel + d.complete + d.progress;
		printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f "
		       "| %.2f | %.2f | %ld |\n",
		       wcase_names[w], d.start, d.cancel, d.complete,
		       d.progress, total, d.srv_started, d.srv_cancels,
		       d.srv_replies, d.srv_wasted, d.settled_completed);
		check(total == want_total[w], "wire: messages per op");
		if (w == WC_ANYWAY) {
			check(d.settled_completed == k, "settled completed");
			check(d.srv_wasted == 1.0, "server counted wasted");
		}
		fflush(stdout);
	}
	aa_client_free(c);
	server_finish(&se);
}

// ---- Memory ----

static void
bench_memory(void)
{
	server_end se;
	server_start(&se, "ipc", "aa");
	int n = mem_count;
	aa_op **ops = calloc((size_t)n, sizeof(aa_op *));
	srv_report s0, s1, s2, s3, s4;

	aa_client *c = client_open(se.url);
	server_query(c, &s0);
	server_query(c, &s0);
	uint64_t h0 = heap_bytes(), r0 = rss_bytes(), a0 = aa_heap_allocs();
	// Corked batches of 1000, each followed by a query, so that the
	// send buffers stay small.
	for (int i = 0; i < n; i++) {
		if (i % 1000 == 0) {
			aa_client_cork(c);
		}
		int rv = aa_client_call(&ops[i], c, "hold", payload, PAYLOAD,
		                        NULL, NULL);
		if (rv != 0) {
			die("aa_client_call hold (memory)", rv);
		}
		if (i % 1000 == 999 || i == n - 1) {
			aa_client_uncork(c);
			server_query(c, &s1);
		}
	}
	uint64_t h1 = heap_bytes(), r1 = rss_bytes(), a1 = aa_heap_allocs();
	server_query(c, &s1);
	aa_client_stats cs;
	aa_client_stats_get(c, &cs);
	check(cs.pending == (uint64_t)n, "client: all pending");
	// The stats op itself may or may not count as pending yet.
	check(s1.st.pending - (uint64_t)n <= 1, "server: all pending");

	uint64_t t0 = now_ns();
	int nc = aa_client_cancel_all(c, AA_CANCEL_TERMINAL);
	uint64_t t1 = now_ns();
	check(nc == n, "cancel_all cancelled every pending op");
	for (int i = 0; i < n; i++) {
		check(aa_op_status(ops[i]) == AA_CANCELED, "op CANCELED");
		aa_op_unref(ops[i]);
	}
	// The late Completes settle them.
	for (int i = 0; i < 300000; i++) {
		aa_client_stats_get(c, &cs);
		if (cs.pending == 0) {
			break;
		}
		sleep_us(100);
	}
	uint64_t t2 = now_ns();
	check(cs.pending == 0, "every late Complete arrived");
	server_query(c, &s2);
	check(s2.st.pending <= 1, "server: every real op ended");

	// Steady state: echo with 16 outstanding, after a warm-up.
	pipeline p;
	pl_init(&p, c);
	p.limit = 20000;
	pl_run(&p, 16);
	waiter_fini(&p.w);
	server_query(c, &s3);
	uint64_t e0 = aa_heap_allocs();
	pl_init(&p, c);
	p.limit = steady_count;
	pl_run(&p, 16);
	waiter_fini(&p.w);
	uint64_t e1 = aa_heap_allocs();
	server_query(c, &s4);
	aa_client_free(c);
	server_finish(&se);
	free(ops);

	printf("\n## Memory (ipc, server in its own process)\n\n");
	printf("| figure | client | server |\n| --- | --- | --- |\n");
	printf("| heap bytes per pending op (mallinfo2, %d pending) | %.0f | "
	       "%.0f |\n",
	       n, (double)(h1 - h0) / n,
	       (double)(s1.heap_bytes - s0.heap_bytes) / n);
	printf("| RSS bytes per pending op (/proc/self/statm) | %.0f | %.0f "
	       "|\n",
	       (double)(r1 - r0) / n,
	       (double)(s1.rss_bytes - s0.rss_bytes) / n);
	printf("| heap allocations while making them (aa_heap_allocs) | "
	       "%llu | %llu |\n",
	       (unsigned long long)(a1 - a0),
	       (unsigned long long)(s1.heap_allocs - s0.heap_allocs));
	printf("| heap allocations per call, steady state (%d echo calls, 16 "
	       "outstanding) | %.4f | %.4f |\n",
	       steady_count, (double)(e1 - e0) / steady_count,
	       (double)(s4.heap_allocs - s3.heap_allocs) / steady_count);
	printf("| aa_client_cancel_all of %d pending: time inside | %.1f ms "
	       "| - |\n",
	       n, (t1 - t0) / 1e6);
	printf("| ... until every late Complete arrived | %.1f ms | - |\n",
	       (t2 - t0) / 1e6);
	fflush(stdout);
}

// ---- main ----

static void
usage(void)
{
	fprintf(stderr, "usage: bench_proxy [--smoke] [--reps N] [--secs S] "
	                "[echo] [cancel] [wire] [memory]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--server") == 0) {
		return server_main(argv[2], argv[3]);
	}
	bool parts[4] = {false, false, false, false};
	bool any = false;
	static const char *const names[4] = {"echo", "cancel", "wire",
	                                     "memory"};
	for (int i = 1; i < argc; i++) {
		bool known = false;
		for (int k = 0; k < 4; k++) {
			if (strcmp(argv[i], names[k]) == 0) {
				parts[k] = any = known = true;
			}
		}
		if (known) {
			continue;
		}
		if (strcmp(argv[i], "--smoke") == 0) {
			smoke = true;
		} else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
			reps = atoi(argv[++i]);
		} else if (strcmp(argv[i], "--transport") == 0 &&
		           i + 1 < argc) {
			only_transport = argv[++i];
		} else if (strcmp(argv[i], "--stack") == 0 && i + 1 < argc) {
			only_stack = argv[++i];
		} else if (strcmp(argv[i], "--secs") == 0 && i + 1 < argc) {
			run_secs = atof(argv[++i]);
		} else {
			usage();
		}
	}
	if (!any) {
		parts[0] = parts[1] = parts[2] = parts[3] = true;
	}
	if (smoke) {
		reps = 1;
		run_secs = 0.05;
		lat_count = 500;
		cancel_count = 300;
		mem_count = 3000;
		steady_count = 3000;
		wire_count = 100;
	}
	if (reps < 1 || reps > 16) {
		usage();
	}
	ssize_t n =
	    readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (n <= 0) {
		die("readlink /proc/self/exe", AA_ESYSTEM);
	}
	self_path[n] = '\0';
	srand((unsigned)now_ns());
	memset(payload, 'x', sizeof(payload));
	atexit(kill_children);
	signal(SIGPIPE, SIG_IGN);

	uint64_t t0 = now_ns();
	if (parts[0]) {
		bench_echo();
	}
	if (parts[1]) {
		bench_cancel();
	}
	if (parts[2]) {
		bench_wire();
	}
	if (parts[3]) {
		bench_memory();
	}
	fprintf(stderr, "bench_proxy: %.1f s, %d functional failure(s)\n",
	        (now_ns() - t0) / 1e9, failures);
	return failures == 0 ? 0 : 1;
}
