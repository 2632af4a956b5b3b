// servers.c: the servers bench_proxy measures against, their processes,
// and the client helpers every part uses.
//
// Server processes: spawn_server forks and at once execs this program
// with --server STACK URL (nng must not run in a forked copy of an
// initialised parent); the child prints "port N" on a pipe when it
// listens, and ends on SIGTERM after printing its figures to stderr. It
// blocks SIGTERM before any server thread starts, so that every thread
// inherits the mask and only sigwait in its main thread receives it.
// children[] holds the live ones for the atexit kill (main thread only).
//
// The aaproxy server's methods: "echo" (completes at once with a copy of
// its argument), "hold" (a real op that ends only when cancelled),
// "stubborn" (ignores cancellation; ends when "release" runs), "release",
// and "stats" (the server's counters, heap and RSS: srv_report). held[]
// is shared by the server's threads under held_mtx.
//
// Settle counting: settle handlers run on the client's threads and add to
// the atomic settled; the main thread polls it (wait_settled).
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nng/nng.h>

#include "bench_proxy.h"

// ---- The aaproxy server: methods ----

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

aa_server *
aa_server_up(const char *url, size_t max_msg, int *port)
{
	aa_server *s;
	aa_server_opts so = {.max_pending = SRV_PENDING,
	                     .max_msg_size = max_msg};
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

void
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

// nng_echo_up starts the raw nng echo server or exits; max_msg > 0
// raises its receive limit (the socket's option reaches its listener,
// hence the pipes accepted after it).
static void
nng_echo_up(nng_echo_server *e, const char *url, size_t max_msg)
{
	int rv = nng_echo_start(e, url);
	if (rv == 0 && max_msg > 0) {
		rv = nng_socket_set_size(e->sock, NNG_OPT_RECVMAXSZ, max_msg);
	}
	if (rv != 0) {
		fprintf(stderr, "bench_proxy: nng rep listen: %s\n",
		        nng_strerror(rv));
		exit(1);
	}
}

// server_main is the server process: it prints "port N" when listening
// and waits to be killed.
int
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
	if (strcmp(stack, "raw") == 0) {
		return raw_server_main(url);
	} else if (strcmp(stack, "aa") == 0) {
		s = aa_server_up(url, 0, &port);
	} else if (strcmp(stack, "aabig") == 0) {
		s = aa_server_up(url, BIG_MSG, &port);
	} else if (strcmp(stack, "nng") == 0) {
		nng_echo_up(&echo, url, 0);
		port = echo.port;
	} else if (strcmp(stack, "nngbig") == 0) {
		nng_echo_up(&echo, url, BIG_MSG);
		port = echo.port;
	} else {
		fprintf(stderr, "bench_proxy: --server: unknown stack %s\n",
		        stack);
		return 2;
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
		        "heap allocs %llu heap bytes %llu rss %llu\n",
		        url, (unsigned long long)st.started,
		        (unsigned long long)st.completed,
		        (unsigned long long)st.canceled,
		        (unsigned long long)st.wasted,
		        (unsigned long long)st.cancels_received,
		        (unsigned long long)st.replies_sent,
		        (unsigned long long)aa_heap_allocs(),
		        (unsigned long long)heap_bytes(),
		        (unsigned long long)rss_bytes());
	}
	exit(0); // no teardown: a benchmark's server just ends
}

// ---- Server processes ----

#define MAX_CHILDREN 8
static pid_t children[MAX_CHILDREN];

void
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

void
server_start(server_end *e, const char *t, const char *stack)
{
	memset(e, 0, sizeof(*e));
	make_url(e->url, sizeof(e->url), t, stack);
	int port;
	if (strcmp(t, "inproc") != 0) {
		e->pid = spawn_server(stack, e->url, sizeof(e->url));
	} else if (strncmp(stack, "aa", 2) == 0) {
		bool big = strcmp(stack, "aabig") == 0;
		e->aa = aa_server_up(e->url, big ? BIG_MSG : 0, &port);
	} else if (strncmp(stack, "nng", 3) == 0) {
		bool big = strcmp(stack, "nngbig") == 0;
		e->nng = calloc(1, sizeof(*e->nng));
		if (e->nng == NULL) {
			die("calloc", AA_ENOMEM);
		}
		nng_echo_up(e->nng, e->url, big ? BIG_MSG : 0);
	} else {
		die("no in-process server for this stack", AA_EINVAL);
	}
}

void
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

aa_client *
client_open(const char *url)
{
	return client_open_max(url, 0);
}

aa_client *
client_open_max(const char *url, size_t max_msg)
{
	aa_client *c;
	// Long silence bound: a server stopped for a benchmark is not lost.
	aa_client_opts co = {
	    .url = url, .dead_after_ms = 60000, .max_msg_size = max_msg};
	int rv = aa_client_open(&c, &co);
	if (rv != 0) {
		die("aa_client_open", rv);
	}
	return c;
}

void
waiter_init(waiter *w)
{
	pthread_mutex_init(&w->mtx, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->done = false;
}

void
waiter_fini(waiter *w)
{
	pthread_mutex_destroy(&w->mtx);
	pthread_cond_destroy(&w->cv);
}

void
waiter_signal(waiter *w)
{
	pthread_mutex_lock(&w->mtx);
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mtx);
}

// waiter_wait waits at most secs seconds; false on a timeout.
bool
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

void
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

uint64_t
client_pending(aa_client *c, uint64_t want)
{
	aa_client_stats cs;
	for (int i = 0; i < 20000; i++) {
		aa_client_stats_get(c, &cs);
		if (cs.pending <= want) {
			break;
		}
		sleep_us(100);
	}
	return cs.pending;
}

// server_query returns the server's counters; its reply comes after
// every Start sent before it was handled (frames are handled in order).
void
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

atomic_long settled;

bool
wait_settled(long n)
{
	for (int i = 0; i < 300000 && atomic_load(&settled) < n; i++) {
		sleep_us(100);
	}
	return atomic_load(&settled) >= n;
}
