// embed-a: process A of the embedding demo (docs/samples.md, "Embedding
// demo"). Built twice: embed-a on plain epoll, and embed-a-uv on libuv
// (AA_EMBED_LIBUV, when libuv is installed): the same application whose
// loop is the application's own. Its high-level module
// (top-level ops with cancel-all, over retries) calls a low-level
// operation that runs in process B, through the proxy. Every completion
// handler runs on the loop's thread, through a pollable executor.
//
// Process B is the demo server (aa-server), and B's interface is a .proto
// service: A calls aa.demo.Demo/Sleep (demos/demo.proto), a low-level op
// with real cancel in B, with typed messages (aa_service_call), after
// checking at connect that B serves aa.demo.Demo with the same message
// types. A starts B (--server BIN) or connects to a running one (--url
// URL only). Each line A prints is a JSON object; "remote_op" is the op
// id B's log shows for the same call.
//
//   --url URL              B's address (default: aa_default_url())
//   --server BIN           start B: BIN --listen URL --log FILE
//   --server-log FILE      B's JSON log (with --server; default stderr)
//   --calls N              top-level calls, each Sleep{ms} (default 3)
//   --sleep-ms MS          (default 50)
//   --cancel-all-after-ms T   cancel every pending call after T ms
//   --kill-server-after-ms T  (with --server) SIGKILL B after T ms ...
//   --restart-after-ms T      ... and start it again T ms later
//                             (T counts from the moment the calls start,
//                             once B answered and passed the check)
//   --attempts N, --backoff-ms MS   the retry policy (default 5, 100)
//
// Exit 0 when every call ended, no handler (the top-level ones, nor the
// remote ops' below the retries) ran off the loop's thread and no library
// object is left alive; the "done" lines say how each ended.
//
// Design notes. The modules between the top-level call and B (high over
// retry) pass bytes, as every sample does; here those bytes are the
// encoding of the method's input, an aa.demo.SleepRequest, so that the
// retries keep a copy of a typed request. The lowest layer (remote_call)
// decodes it and makes the typed call; the top-level handler decodes the
// typed reply (an aa.demo.SleepReply) that the layers passed up.
//
// One thread (main) runs the loop: epoll (or a uv_poll) on
// the pollable executor's eventfd, and a timerfd (or a uv_timer) for the
// scripted moments (cancel-all, kill, restart). Library threads (the client's,
// the retry timers) only ever post handlers to the executor; the loop drains
// them. Races with B dying are the library's (a lost link ends every pending
// remote op in ERROR, found by the socket closing or by heartbeats) and the
// retry sample's (a failed attempt waits, then tries again, dialling B anew).
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <aa/aa.h>
#include <aa/client.h>
#include <aa/service.h>
#ifdef AA_EMBED_LIBUV
#include <uv.h>
#endif

#include "demo.pb-c.h" // aa.demo.Demo, generated from demos/demo.proto
#include "high.h"

typedef struct app {
	const char *url;
	const char *server_bin;
	const char *server_log;
	int calls;
	long sleep_ms;
	long cancel_all_after_ms;
	long kill_after_ms;
	long restart_after_ms;
	retry_policy policy;

	aa_client *client;
	aa_executor *loop_ex;
	pthread_t loop_thread;
	pid_t server;
	high *h;
	int ended;
	atomic_int off_thread; // handlers seen on another thread
	uint64_t t0;
} app;

static uint64_t
ms_since(app *a)
{
	return (aa_clock_us() - a->t0) / 1000;
}

// ---- Process B ----

static int
start_server(app *a)
{
	pid_t pid = fork();
	if (pid < 0) {
		return -1;
	}
	if (pid == 0) {
		const char *argv[] = {a->server_bin,
		                      "--listen",
		                      a->url,
		                      "--heartbeat-ms",
		                      "100",
		                      "--log",
		                      a->server_log != NULL ? a->server_log
		                                            : "/dev/stderr",
		                      NULL};
		execv(a->server_bin, (char *const *)argv);
		_exit(127);
	}
	a->server = pid;
	printf("{\"side\":\"A\",\"event\":\"server_started\",\"pid\":%d,"
	       "\"t_ms\":%llu}\n",
	       (int)pid, (unsigned long long)ms_since(a));
	return 0;
}

static void
stop_server(app *a, int sig)
{
	if (a->server > 0) {
		kill(a->server, sig);
		waitpid(a->server, NULL, 0);
		printf(
		    "{\"side\":\"A\",\"event\":\"server_%s\",\"t_ms\":%llu}\n",
		    sig == SIGKILL ? "killed" : "stopped",
		    (unsigned long long)ms_since(a));
		a->server = 0;
	}
}

// connect_client dials B until it answers (it may still be starting).
static int
connect_client(app *a)
{
	aa_client_opts o = {
	    .url = a->url,
	    .heartbeat_ms = 100,
	    .dead_after_ms = 300,
	    .connect_timeout_ms = 500,
	    .reconnect = true,
	};
	int rv = AA_ECONNREF;
	for (int i = 0; i < 50 && rv != 0; i++) {
		if ((rv = aa_client_open(&a->client, &o)) != 0) {
			usleep(20000); // B is starting: not a test, a program
		}
	}
	return rv;
}

// check_b says whether B serves every method of aa.demo.Demo with A's
// own message types (B's Hello carries their fingerprints): a B built
// from another demo.proto, or without the service, is refused here.
static int
check_b(app *a)
{
	const char *bad = NULL;
	int rv =
	    aa_service_check(a->client, &aa__demo__demo__descriptor, &bad);
	if (rv != 0) {
		fprintf(stderr,
		        "embed-a: %s does not serve aa.demo.Demo/%s as "
		        "demo.proto says: %s\n",
		        a->url, bad != NULL ? bad : "?", aa_strerror(rv));
	}
	return rv;
}

// ---- The low-level layer: aa.demo.Demo/Sleep in process B ----

typedef struct remote_cb {
	app *a;
	aa_op_cb cb;
	void *arg;
} remote_cb;

// remote_done logs the remote op's end with its id, then runs the retry
// module's handler.
static void
remote_done(aa_op *op, void *arg)
{
	remote_cb rc = *(remote_cb *)arg;
	free(arg);
	// The loop's executor went down to this op through the layers'
	// associated characteristics: its handler runs on the loop too.
	if (!pthread_equal(pthread_self(), rc.a->loop_thread)) {
		rc.a->off_thread++;
	}
	printf("{\"side\":\"A\",\"event\":\"remote_end\",\"remote_op\":%llu,"
	       "\"state\":\"%s\",\"error\":\"%s\",\"t_ms\":%llu}\n",
	       (unsigned long long)aa_client_op_id(op),
	       aa_op_state_name(aa_op_status(op)),
	       aa_op_error(op) != 0 ? aa_strerror(aa_op_error(op)) : "",
	       (unsigned long long)ms_since(rc.a));
	rc.cb(op, rc.arg);
}

static int
remote_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
            aa_op_cb cb, void *arg, aa_op **opp)
{
	app *a = handle;
	Aa__Demo__SleepRequest *req;
	remote_cb *rc;
	aa_op *op;
	int rv;
	// The layers above pass the request's encoding; a call whose bytes
	// are not a SleepRequest is refused here, before anything is sent.
	if ((req = aa__demo__sleep_request__unpack(NULL, len, in)) == NULL) {
		return AA_EINVAL;
	}
	if ((rc = malloc(sizeof(*rc))) == NULL) {
		aa__demo__sleep_request__free_unpacked(req, NULL);
		return AA_ENOMEM;
	}
	*rc = (remote_cb){a, cb, arg};
	rv = aa_service_call(&op, a->client, &aa__demo__demo__descriptor,
	                     "Sleep", &req->base, NULL, assoc);
	aa__demo__sleep_request__free_unpacked(req, NULL); // packed: done
	if (rv != 0) {
		free(rc);
		printf("{\"side\":\"A\",\"event\":\"remote_refused\","
		       "\"error\":\"%s\",\"t_ms\":%llu}\n",
		       aa_strerror(rv), (unsigned long long)ms_since(a));
		return rv;
	}
	printf("{\"side\":\"A\",\"event\":\"remote_start\",\"remote_op\":%llu,"
	       "\"t_ms\":%llu}\n",
	       (unsigned long long)aa_client_op_id(op),
	       (unsigned long long)ms_since(a));
	*opp = op;
	(void)aa_op_set_handler(op, remote_done, rc);
	return 0;
}

// ---- Top-level handlers, on the loop's thread ----

static app *the_app;

static void
call_done(aa_op *op, void *arg)
{
	app *a = the_app;
	int i = (int)(intptr_t)arg;
	ProtobufCMessage *out;
	long slept = -1; // -1: no reply (cancelled or failed)
	if (!pthread_equal(pthread_self(), a->loop_thread)) {
		a->off_thread++;
	}
	// A completed call's result is B's typed reply, passed up as bytes.
	if (aa_op_status(op) == AA_COMPLETED &&
	    aa_service_result(&out, op, &aa__demo__sleep_reply__descriptor) ==
	        0) {
		slept = ((Aa__Demo__SleepReply *)out)->slept_ms;
		aa_service_result_free(op, out);
	}
	printf("{\"side\":\"A\",\"event\":\"done\",\"call\":%d,\"op\":%llu,"
	       "\"state\":\"%s\",\"error\":\"%s\",\"message\":\"%s\","
	       "\"slept_ms\":%ld,\"t_ms\":%llu}\n",
	       i, (unsigned long long)aa_op_id(op),
	       aa_op_state_name(aa_op_status(op)),
	       aa_op_error(op) != 0 ? aa_strerror(aa_op_error(op)) : "",
	       aa_op_error_msg(op), slept, (unsigned long long)ms_since(a));
	a->ended++;
	aa_op_unref(op);
}

// ---- The loop ----

// The scripted moments, in order: cancel-all, kill B, restart B. Each is
// a delay from the start; -1 skips it.
static long moments[3];
static int next_moment;

// moment_delay returns the delay until the next moment, or -1.
static long
moment_delay(app *a)
{
	while (next_moment < 3 && moments[next_moment] < 0) {
		next_moment++;
	}
	if (next_moment == 3) {
		return -1;
	}
	long d = moments[next_moment] - (long)ms_since(a);
	return d > 0 ? d : 1;
}

// moment runs the next scripted moment; returns the delay to the next.
static long
moment(app *a)
{
	if (next_moment == 0) {
		int c = high_cancel_all(a->h, AA_CANCEL_TERMINAL);
		printf("{\"side\":\"A\",\"event\":\"cancel_all\","
		       "\"cancelled\":%d,\"t_ms\":%llu}\n",
		       c, (unsigned long long)ms_since(a));
	} else if (next_moment == 1) {
		stop_server(a, SIGKILL);
	} else {
		(void)start_server(a);
	}
	next_moment++;
	return moment_delay(a);
}

// start_calls starts every top-level call, its handler bound to the
// loop's executor, its input an encoded aa.demo.SleepRequest.
static int
start_calls(app *a)
{
	Aa__Demo__SleepRequest req = AA__DEMO__SLEEP_REQUEST__INIT;
	aa_assoc assoc = {0};
	uint8_t in[16]; // a uint32 field: at most 6 bytes
	size_t len;
	moments[0] = a->cancel_all_after_ms;
	moments[1] = a->kill_after_ms;
	moments[2] = a->kill_after_ms >= 0 && a->restart_after_ms >= 0
	                 ? a->kill_after_ms + a->restart_after_ms
	                 : -1;
	// Counted from now, when the calls start, not from A's start: B
	// may take a while to answer the first dial (a loaded machine, a
	// sanitizer build), and a kill "after 200 ms" must find the calls
	// in B.
	for (int k = 0; k < 3; k++) {
		if (moments[k] >= 0) {
			moments[k] += (long)ms_since(a);
		}
	}
	a->loop_thread = pthread_self();
	if (high_alloc(&a->h, (smp_layer){remote_call, a}, a->policy) != 0) {
		return 1;
	}
	assoc.executor = a->loop_ex; // every handler on this thread
	req.ms = (uint32_t)a->sleep_ms;
	len = aa__demo__sleep_request__pack(&req, in);
	for (int i = 0; i < a->calls; i++) {
		aa_op *op;
		int rv = high_call(a->h, in, len, &assoc, call_done,
		                   (void *)(intptr_t)i, &op);
		if (rv != 0) {
			printf("{\"side\":\"A\",\"event\":\"refused\","
			       "\"call\":%d,\"error\":\"%s\"}\n",
			       i, aa_strerror(rv));
			a->ended++;
		}
	}
	return 0;
}

#ifndef AA_EMBED_LIBUV

static void
arm(int tfd, long ms)
{
	struct itimerspec its = {0};
	if (ms < 0) {
		return;
	}
	its.it_value.tv_sec = ms / 1000;
	its.it_value.tv_nsec = (ms % 1000) * 1000000 + 1;
	timerfd_settime(tfd, 0, &its, NULL);
}

// run: plain epoll on the executor's descriptor and a timerfd.
static int
run(app *a)
{
	struct epoll_event ev = {.events = EPOLLIN};
	int efd;
	int tfd;
	int exfd;
	if (aa_poll_executor_fd(a->loop_ex, &exfd) != 0 || start_calls(a)) {
		return 1;
	}
	efd = epoll_create1(EPOLL_CLOEXEC);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	ev.data.fd = exfd;
	epoll_ctl(efd, EPOLL_CTL_ADD, exfd, &ev);
	ev.data.fd = tfd;
	epoll_ctl(efd, EPOLL_CTL_ADD, tfd, &ev);
	arm(tfd, moment_delay(a));
	while (a->ended < a->calls) {
		struct epoll_event got[2];
		int n = epoll_wait(efd, got, 2, -1);
		for (int k = 0; k < n; k++) {
			uint64_t x;
			if (got[k].data.fd == exfd) {
				(void)aa_poll_executor_drain(a->loop_ex, 0,
				                             NULL);
				continue;
			}
			(void)!read(tfd, &x, sizeof(x));
			arm(tfd, moment(a));
		}
	}
	high_free(a->h);
	close(tfd);
	close(efd);
	return 0;
}

#else

// run: libuv, with a uv_poll on the executor's descriptor.
static uv_poll_t ready_poll;
static uv_timer_t moment_timer;

static void
on_ready(uv_poll_t *p, int status, int events)
{
	app *a = p->data;
	(void)status;
	(void)events;
	(void)aa_poll_executor_drain(a->loop_ex, 0, NULL);
	if (a->ended == a->calls) {
		uv_poll_stop(&ready_poll);
		uv_timer_stop(&moment_timer);
	}
}

static void
on_moment(uv_timer_t *t)
{
	long d = moment(t->data);
	if (d >= 0) {
		uv_timer_start(t, on_moment, (uint64_t)d, 0);
	}
}

static int
run(app *a)
{
	uv_loop_t loop;
	int exfd;
	long d;
	if (aa_poll_executor_fd(a->loop_ex, &exfd) != 0 || start_calls(a) ||
	    uv_loop_init(&loop) != 0) {
		return 1;
	}
	uv_poll_init(&loop, &ready_poll, exfd);
	ready_poll.data = a;
	uv_poll_start(&ready_poll, UV_READABLE, on_ready);
	uv_timer_init(&loop, &moment_timer);
	moment_timer.data = a;
	if ((d = moment_delay(a)) >= 0) {
		uv_timer_start(&moment_timer, on_moment, (uint64_t)d, 0);
	}
	if (a->ended < a->calls) {
		uv_run(&loop, UV_RUN_DEFAULT);
	}
	uv_close((uv_handle_t *)&ready_poll, NULL);
	uv_close((uv_handle_t *)&moment_timer, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	high_free(a->h);
	return 0;
}

#endif

static long
num(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 0) {
		fprintf(stderr, "embed-a: not a number: %s\n", s);
		exit(2);
	}
	return v;
}

int
main(int argc, char **argv)
{
	app a = {
	    .url = aa_default_url(),
	    .calls = 3,
	    .sleep_ms = 50,
	    .cancel_all_after_ms = -1,
	    .kill_after_ms = -1,
	    .restart_after_ms = -1,
	    .policy = {5, 100},
	};
	int rv;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (v == NULL) {
			fprintf(stderr, "embed-a: %s needs a value\n", o);
			return 2;
		}
		i++;
		if (strcmp(o, "--url") == 0) {
			a.url = v;
		} else if (strcmp(o, "--server") == 0) {
			a.server_bin = v;
		} else if (strcmp(o, "--server-log") == 0) {
			a.server_log = v;
		} else if (strcmp(o, "--calls") == 0) {
			a.calls = (int)num(v);
		} else if (strcmp(o, "--sleep-ms") == 0) {
			a.sleep_ms = num(v);
		} else if (strcmp(o, "--cancel-all-after-ms") == 0) {
			a.cancel_all_after_ms = num(v);
		} else if (strcmp(o, "--kill-server-after-ms") == 0) {
			a.kill_after_ms = num(v);
		} else if (strcmp(o, "--restart-after-ms") == 0) {
			a.restart_after_ms = num(v);
		} else if (strcmp(o, "--attempts") == 0) {
			a.policy.max_attempts = (int)num(v);
		} else if (strcmp(o, "--backoff-ms") == 0) {
			a.policy.backoff_ms = (uint64_t)num(v);
		} else {
			fprintf(stderr, "embed-a: unknown option %s\n", o);
			return 2;
		}
	}
	if (a.url == NULL || a.policy.max_attempts < 1 ||
	    a.sleep_ms > 24L * 3600 * 1000 || // demo.proto: at most a day
	    (a.kill_after_ms >= 0 && a.server_bin == NULL)) {
		fprintf(stderr, "embed-a: bad options (see the source's "
		                "opening comment)\n");
		return 2;
	}
	the_app = &a;
	a.t0 = aa_clock_us();
	if (a.server_bin != NULL && start_server(&a) != 0) {
		return 1;
	}
	if ((rv = connect_client(&a)) != 0) {
		fprintf(stderr, "embed-a: cannot reach %s: %s\n", a.url,
		        aa_strerror(rv));
		stop_server(&a, SIGTERM);
		return 1;
	}
	if (check_b(&a) != 0) {
		aa_client_free(a.client);
		stop_server(&a, SIGTERM);
		return 1;
	}
	if (aa_poll_executor_alloc(&a.loop_ex) != 0) {
		return 1;
	}
	rv = run(&a);
	aa_client_free(a.client);
	aa_executor_free(a.loop_ex);
	stop_server(&a, SIGTERM);
	if (atomic_load(&a.off_thread) != 0) {
		fprintf(stderr, "embed-a: %d handlers off the loop thread\n",
		        atomic_load(&a.off_thread));
		rv = 1;
	}
	if (aa_live_total() != 0) {
		fprintf(stderr, "embed-a: %lld library objects alive\n",
		        (long long)aa_live_total());
		rv = 1;
	}
	return rv;
}
