// sample_util.h: what the seed samples' suites (test_sample_*.c) share:
// a blocking echo whose calls can be held, made to fail or lined up with
// a canceller on a barrier; a handler that records how it ran; a spy
// layer that forwards to a lower one and reports each child's end; and
// the cancel-vs-completion race loop.
#ifndef AA_SAMPLE_UTIL_H
#define AA_SAMPLE_UTIL_H

#include <pthread.h>

#include "sample.h"
#include "testutil.h"

// A count that threads can wait for.
typedef struct tally {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	int n;
} tally;

void tally_init(tally *t);
void tally_fini(tally *t);
void tally_add(tally *t);
int tally_get(tally *t);
void tally_wait(tally *t, int n); // until at least n

// The blocking call of a lowfake module: answers with the input and its
// suffix. Each call: counted in `calls` (and in `returned` at its end); if
// hold is set, opens `held` and waits for `release`; if fail_first > 0, fails
// (AA_EAPP) and decrements it; if race is set, waits on the barrier (lined up
// with the canceller) before returning.
typedef struct echo {
	const char *suffix;
	tally calls;
	tally returned; // calls that returned
	atomic_bool hold;
	gate *held;
	gate *release;
	atomic_int fail_first;
	pthread_barrier_t *race;
} echo;

void echo_init(echo *e, const char *suffix);
void echo_fini(echo *e);
int echo_blocking(void *ctx, const void *in, size_t len, void **out,
                  size_t *outlen);

// A lowfake module on its own pool, calling an echo (held at gates).
typedef struct lowfx {
	aa_executor *pool;
	echo e;
	gate held;
	gate release;
	struct lowfake *m;
	smp_layer layer;
} lowfx;

void lowfx_init(lowfx *f, int threads, const char *suffix);
// lowfx_stop frees the module and the pool (every call has ended): the
// counters can be read until lowfx_fini.
void lowfx_stop(lowfx *f);
void lowfx_fini(lowfx *f); // stops if not stopped, then frees the rest

// A completion handler's record.
typedef struct seen {
	atomic_int runs;
	atomic_int state;
	pthread_t thread;
	char result[64];
	int err;
	tally *done; // counted when the handler ran (may be NULL)
	bool keep;   // the test keeps the caller's reference and drops it
} seen;

void seen_init(seen *s, tally *done);
// seen_cb records, then drops the caller's reference unless keep is set
// (a test that uses the op after the call returned must set keep: the
// handler may run before the call returns).
void seen_cb(aa_op *op, void *arg);

// A spy layer: forwards each call to lower, counts the calls, runs
// before_cb(ctx, child) in the child's handler before the real handler,
// and counts the children that ended (after the real handler returned).
typedef struct spy {
	smp_layer lower;
	tally calls;
	tally returned; // calls that returned (the child's handler is set)
	tally ended;
	void (*before_cb)(void *ctx, aa_op *child);
	void *ctx;
	smp_layer as_layer; // {spy_call, this}
} spy;

void spy_init(spy *s, smp_layer lower);
void spy_fini(spy *s);

// round_outcome checks one race round's end, whoever won: the handler
// ran once, and the op is CANCELED (returns 0) or COMPLETED with want as
// result (returns 1: the work won). won[that]++ for the split's note.
int round_outcome(seen *s, const char *want, int round, int won[2]);

// cancel_at_slot_connect makes the op.slot_connected checkpoint emit sig
// (TERMINAL) the moment a child op connects to its slot, inside
// aa_op_alloc, before the module started any work; NULL stops it.
void cancel_at_slot_connect(aa_cancel_signal *sig);

// race_cancel_completion runs rounds of: start(ctx) starts an op whose
// work lines up on the echo's barrier; the helper thread, lined up on the
// same barrier, cancels the op with type; then the round's outcome is
// checked: the handler ran exactly once, and the op is CANCELED, or
// COMPLETED with want as result (the work won). Notes the split. With
// cancel set, the helper calls cancel(ctx, op, type) instead of
// aa_op_cancel (e.g. a cancel-all).
typedef int (*race_cancel_fn)(void *ctx, aa_op *op, aa_cancel_type type);
void race_cancel_completion(int rounds, echo *e, smp_layer layer,
                            aa_cancel_type type, const char *want,
                            race_cancel_fn cancel, void *ctx);

// refused_calls makes calls that layer must refuse (no handle, no
// callback, no op out-parameter, input bytes missing): each returns
// AA_EINVAL, leaves *opp alone and never runs the callback.
void refused_calls(smp_layer layer);

#endif // AA_SAMPLE_UTIL_H
