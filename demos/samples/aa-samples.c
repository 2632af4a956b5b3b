// aa-samples: runs each seed sample's story once and prints what
// happened (docs/samples.md). Exits non-zero when a story does not
// behave, or when a library object is left alive at the end.
#include <ctype.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile.h"
#include "chain.h"
#include "high.h"
#include "lowaio.h"
#include "lowfake.h"
#include "lowreal.h"
#include "passthru.h"

static int failures;

#define EXPECT(cond)                                                          \
	do {                                                                  \
		if (!(cond)) {                                                \
			printf("  FAILED: %s (line %d)\n", #cond, __LINE__);  \
			failures++;                                           \
		}                                                             \
	} while (0)

// ---- A blocking call: upper-cases its input; can fail or be held ----

typedef struct upper {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	int fail_first;
	int calls;
	bool hold;
	bool held;
} upper;

static int
upper_blocking(void *ctx, const void *in, size_t len, void **out,
               size_t *outlen)
{
	upper *u = ctx;
	char *buf;
	pthread_mutex_lock(&u->mtx);
	u->calls++;
	u->held = u->hold;
	pthread_cond_broadcast(&u->cv);
	while (u->hold) {
		pthread_cond_wait(&u->cv, &u->mtx);
	}
	u->held = false;
	if (u->fail_first > 0) {
		u->fail_first--;
		pthread_mutex_unlock(&u->mtx);
		return AA_EAPP;
	}
	pthread_mutex_unlock(&u->mtx);
	if ((buf = malloc(len + 1)) == NULL) {
		return AA_ENOMEM;
	}
	for (size_t i = 0; i < len; i++) {
		buf[i] = (char)toupper(((const unsigned char *)in)[i]);
	}
	*out = buf;
	*outlen = len;
	return 0;
}

static void
upper_hold(upper *u, bool hold)
{
	pthread_mutex_lock(&u->mtx);
	u->hold = hold;
	pthread_cond_broadcast(&u->cv);
	pthread_mutex_unlock(&u->mtx);
}

// upper_fail makes the next n calls fail; returns the calls made so far.
static int
upper_fail(upper *u, int n)
{
	int calls;
	pthread_mutex_lock(&u->mtx);
	u->fail_first = n;
	calls = u->calls;
	pthread_mutex_unlock(&u->mtx);
	return calls;
}

// upper_wait waits until a call is held, or until n calls were made.
static void
upper_wait(upper *u, int n)
{
	pthread_mutex_lock(&u->mtx);
	while (n > 0 ? u->calls < n : !u->held) {
		pthread_cond_wait(&u->cv, &u->mtx);
	}
	pthread_mutex_unlock(&u->mtx);
}

// ---- A handler that prints and that the story can wait for ----

typedef struct outcome {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	const char *name;
	bool ran;
	aa_state state;
} outcome;

static void
outcome_cb(aa_op *op, void *arg)
{
	outcome *o = arg;
	const void *data;
	size_t len;
	printf("  %s: op %llu %s", o->name, (unsigned long long)aa_op_id(op),
	       aa_op_state_name(aa_op_status(op)));
	if (aa_op_result(op, &data, &len) == 0) {
		printf(" \"%.*s\"", (int)len, (const char *)data);
	} else if (aa_op_status(op) == AA_ERROR) {
		printf(" (%s)", aa_strerror(aa_op_error(op)));
	}
	printf("\n");
	pthread_mutex_lock(&o->mtx);
	o->ran = true;
	o->state = aa_op_status(op);
	pthread_cond_broadcast(&o->cv);
	pthread_mutex_unlock(&o->mtx);
	aa_op_unref(op);
}

static aa_state
outcome_wait(outcome *o)
{
	pthread_mutex_lock(&o->mtx);
	while (!o->ran) {
		pthread_cond_wait(&o->cv, &o->mtx);
	}
	pthread_mutex_unlock(&o->mtx);
	return o->state;
}

#define OUTCOME(n)                                                            \
	{                                                                     \
		.mtx = PTHREAD_MUTEX_INITIALIZER,                             \
		.cv = PTHREAD_COND_INITIALIZER, .name = n                     \
	}

// ---- The stories ----

static void
story_low_level(aa_executor *pool)
{
	upper u = {.mtx = PTHREAD_MUTEX_INITIALIZER,
	           .cv = PTHREAD_COND_INITIALIZER};
	outcome done = OUTCOME("fake cancel");
	outcome timed = OUTCOME("real cancel");
	lowfake *lf;
	lowreal *lr;
	aa_op *op;
	printf(
	    "low level: a blocking call that cannot stop, a timer that can\n");
	EXPECT(lowfake_alloc(&lf, pool, upper_blocking, &u) == 0);
	upper_hold(&u, true);
	EXPECT(lowfake_call(lf, "abc", 3, NULL, outcome_cb, &done, &op) == 0);
	aa_op_ref(op);
	upper_wait(&u, 0);
	EXPECT(aa_op_cancel(op, AA_CANCEL_TOTAL) == AA_ENOTSUP);
	printf("  a TOTAL cancel is refused: %s, no cancellation will "
	       "occur\n",
	       aa_strerror(AA_ENOTSUP));
	EXPECT(aa_op_status(op) == AA_STARTED);
	EXPECT(aa_op_cancel(op, AA_CANCEL_TERMINAL) == 0);
	EXPECT(done.ran && done.state == AA_CANCELED); // at once
	upper_hold(&u, false);
	lowfake_free(lf); // waits for the real call
	printf("  the blocking call finished anyway: settlement %s\n",
	       aa_settlement_name(aa_op_settlement(op)));
	EXPECT(aa_op_settlement(op) == AA_SETTLE_COMPLETED);
	aa_op_unref(op);

	EXPECT(lowreal_alloc(&lr, 3600 * 1000) == 0);
	EXPECT(lowreal_call(lr, "tick", 4, NULL, outcome_cb, &timed, &op) ==
	       0);
	aa_op_ref(op);
	EXPECT(aa_op_cancel(op, AA_CANCEL_TOTAL) == 0);
	EXPECT(timed.ran && timed.state == AA_CANCELED);
	printf("  the timer was disarmed: settlement %s\n",
	       aa_settlement_name(aa_op_settlement(op)));
	aa_op_unref(op);
	lowreal_free(lr);
}

// Real cancel on nng's own asynchronous I/O: an hour's nng_sleep_aio,
// aborted by nng_aio_cancel; nng's callback ends the op.
static void
story_low_level_aio(void)
{
	outcome slept = OUTCOME("real cancel, nng aio");
	lowaio *la;
	aa_op *op;
	printf("low level: an nng aio that can stop\n");
	EXPECT(lowaio_alloc(&la, 3600 * 1000) == 0);
	EXPECT(lowaio_call(la, "nap", 3, NULL, outcome_cb, &slept, &op) == 0);
	aa_op_ref(op);
	EXPECT(aa_op_cancel(op, AA_CANCEL_TOTAL) == 0);
	EXPECT(outcome_wait(&slept) == AA_CANCELED); // from nng's callback
	printf("  the aio was aborted: settlement %s\n",
	       aa_settlement_name(aa_op_settlement(op)));
	aa_op_unref(op);
	lowaio_free(la);
}

static void
story_middle_level(aa_executor *pool)
{
	upper u = {.mtx = PTHREAD_MUTEX_INITIALIZER,
	           .cv = PTHREAD_COND_INITIALIZER};
	outcome retried = OUTCOME("retries");
	outcome waiting = OUTCOME("cancelled in its wait");
	outcome chained = OUTCOME("chain");
	outcome passed = OUTCOME("pass-through");
	outcome partial = OUTCOME("partial cancel in an attempt");
	outcome terminal = OUTCOME("terminal cancel in an attempt");
	lowfake *lf;
	lowreal *lr;
	retry *rt;
	chain *ch;
	passthru *pt;
	aa_op *op;
	int n;
	printf("middle level: retries, a chain, partial vs terminal, a "
	       "pass-through\n");
	EXPECT(lowfake_alloc(&lf, pool, upper_blocking, &u) == 0);
	EXPECT(lowreal_alloc(&lr, 10) == 0);
	EXPECT(retry_alloc(&rt, (smp_layer){lowfake_call, lf},
	                   (retry_policy){4, 5}) == 0);
	(void)upper_fail(&u, 2);
	EXPECT(retry_call(rt, "again", 5, NULL, outcome_cb, &retried, &op) ==
	       0);
	EXPECT(outcome_wait(&retried) == AA_COMPLETED);
	retry_free(rt);

	EXPECT(retry_alloc(&rt, (smp_layer){lowfake_call, lf},
	                   (retry_policy){4, 3600 * 1000}) == 0);
	n = upper_fail(&u, 1);
	EXPECT(retry_call(rt, "wait", 4, NULL, outcome_cb, &waiting, &op) ==
	       0);
	upper_wait(&u, n + 1); // its attempt failed
	retry_free(rt);        // cancels it in its hour-long backoff
	EXPECT(waiting.ran && waiting.state == AA_CANCELED);

	EXPECT(chain_alloc(&ch, (smp_layer){lowreal_call, lr},
	                   (smp_layer){lowfake_call, lf}) == 0);
	EXPECT(chain_call(ch, "step", 4, NULL, outcome_cb, &chained, &op) ==
	       0);
	EXPECT(outcome_wait(&chained) == AA_COMPLETED);
	chain_free(ch);

	// Partial vs terminal on the same retrying call, held in its
	// attempt: PARTIAL stops what comes next and lets the attempt
	// finish (its success is reported); TERMINAL stops the attempt.
	EXPECT(retry_alloc(&rt, (smp_layer){lowfake_call, lf},
	                   (retry_policy){4, 5}) == 0);
	for (int k = 0; k < 2; k++) {
		aa_cancel_type type =
		    k == 0 ? AA_CANCEL_PARTIAL : AA_CANCEL_TERMINAL;
		outcome *o = k == 0 ? &partial : &terminal;
		upper_hold(&u, true);
		EXPECT(retry_call(rt, "kept", 4, NULL, outcome_cb, o, &op) ==
		       0);
		aa_op_ref(op);
		upper_wait(&u, 0);
		EXPECT(aa_op_cancel(op, type) == 0);
		EXPECT(o->ran == (type == AA_CANCEL_TERMINAL));
		upper_hold(&u, false);
		EXPECT(outcome_wait(o) ==
		       (k == 0 ? AA_COMPLETED : AA_CANCELED));
		aa_op_unref(op);
	}
	retry_free(rt);

	EXPECT(passthru_alloc(&pt, (smp_layer){lowfake_call, lf}) == 0);
	upper_hold(&u, true);
	EXPECT(passthru_call(pt, "down", 4, NULL, outcome_cb, &passed, &op) ==
	       0);
	aa_op_ref(op);
	upper_wait(&u, 0);
	EXPECT(aa_op_cancel(op, AA_CANCEL_TERMINAL) == 0);
	EXPECT(passed.ran && passed.state == AA_CANCELED);
	upper_hold(&u, false);
	aa_op_unref(op);
	passthru_free(pt);
	lowreal_free(lr);
	lowfake_free(lf);
}

// The high level, with every handler on this thread's poll loop.
static void
story_high_level(aa_executor *pool)
{
	upper u = {.mtx = PTHREAD_MUTEX_INITIALIZER,
	           .cv = PTHREAD_COND_INITIALIZER};
	outcome calls[4] = {OUTCOME("call 0"), OUTCOME("call 1"),
	                    OUTCOME("call 2"), OUTCOME("call 3")};
	aa_executor *loop;
	aa_assoc assoc = {0};
	lowfake *lf;
	high *h;
	aa_op *op;
	int n;
	int handled = 0;
	printf(
	    "high level: four calls, cancel-all, handlers on a poll loop\n");
	EXPECT(aa_poll_executor_alloc(&loop) == 0);
	assoc.executor = loop;
	EXPECT(lowfake_alloc(&lf, pool, upper_blocking, &u) == 0);
	EXPECT(high_alloc(&h, (smp_layer){lowfake_call, lf},
	                  (retry_policy){3, 5}) == 0);
	upper_hold(&u, true);
	for (int i = 0; i < 4; i++) {
		EXPECT(high_call(h, "x", 1, &assoc, outcome_cb, &calls[i],
		                 &op) == 0);
	}
	n = high_cancel_all(h, AA_CANCEL_TERMINAL);
	printf("  cancel-all cancelled %d calls\n", n);
	EXPECT(n == 4);
	upper_hold(&u, false);
	while (handled < 4) {
		struct pollfd p = {.events = POLLIN};
		unsigned ran;
		EXPECT(aa_poll_executor_fd(loop, &p.fd) == 0);
		EXPECT(poll(&p, 1, 5000) == 1);
		EXPECT(aa_poll_executor_drain(loop, 0, &ran) == 0);
		handled = 0;
		for (int i = 0; i < 4; i++) {
			handled += calls[i].ran;
		}
	}
	for (int i = 0; i < 4; i++) {
		EXPECT(calls[i].state == AA_CANCELED);
	}
	high_free(h);
	lowfake_free(lf);
	aa_executor_free(loop);
}

// The async file handle: write, read back and close, each action started
// from the previous one's handler, on the file's strand.
typedef struct file_story {
	outcome done;
	afile *f;
	int step;
	char back[8];
} file_story;

static void
file_step(aa_op *op, void *arg)
{
	file_story *fs = arg;
	const void *data;
	size_t len;
	aa_op *next;
	int rv = 0;
	if (aa_op_result(op, &data, &len) != 0) {
		printf("  file: step %d %s\n", fs->step,
		       aa_op_state_name(aa_op_status(op)));
		fs->step = 99;
	}
	switch (fs->step++) {
	case 0:
		fs->f = *(afile *const *)data;
		rv = afile_write(fs->f, "bytes", 5, 0, NULL, file_step, fs,
		                 &next);
		break;
	case 1:
		rv = afile_read(fs->f, 5, 0, NULL, file_step, fs, &next);
		break;
	case 2:
		memcpy(fs->back, data, len < 8 ? len : 7);
		printf("  file: wrote and read back \"%s\"\n", fs->back);
		rv = afile_close(fs->f, NULL, outcome_cb, &fs->done, &next);
		break;
	default:
		break;
	}
	EXPECT(rv == 0);
	aa_op_unref(op);
}

static void
story_file(aa_executor *pool)
{
	file_story fs = {.done = OUTCOME("close")};
	char dir[] = "/tmp/aa-samples-XXXXXX";
	char path[64];
	afile_mgr *m;
	aa_op *op;
	printf("async file handle: open, write, read, close, chained\n");
	EXPECT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/f", dir);
	EXPECT(afile_mgr_alloc(&m, pool) == 0);
	EXPECT(afile_open(m, path, O_RDWR | O_CREAT, NULL, file_step, &fs,
	                  &op) == 0);
	EXPECT(outcome_wait(&fs.done) == AA_COMPLETED);
	EXPECT(strcmp(fs.back, "bytes") == 0);
	afile_mgr_free(m);
	unlink(path);
	rmdir(dir);
}

int
main(void)
{
	aa_executor *pool;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (aa_pool_alloc(&pool, 2) != 0) {
		return 1;
	}
	story_low_level(pool);
	story_low_level_aio();
	story_middle_level(pool);
	story_high_level(pool);
	story_file(pool);
	aa_executor_free(pool);
	if (aa_live_total() != 0) {
		printf("FAILED: %lld library objects still alive\n",
		       (long long)aa_live_total());
		failures++;
	}
	printf("%s\n", failures == 0 ? "all samples behaved" : "FAILED");
	return failures == 0 ? 0 : 1;
}
