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
//
// Files: this one makes the calls (main, one call, the typed calls);
// aa-client-options.c reads the command line, aa-client-report.c prints
// the lines; aa-client.h is what they share.
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

#include "aa-client.h"
#include "demo.pb-c.h" // aa.demo.Demo, generated from demos/demo.proto

options O;
uint64_t conn_id;
static aa_client *client;
static pthread_mutex_t wait_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_cv;
static atomic_long next_call;
static atomic_bool any_error;
static atomic_bool stop_calls; // the connection is gone: call no more
static bool progress_bar;

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
