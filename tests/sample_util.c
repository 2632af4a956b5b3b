// sample_util.c: helpers of the seed samples' suites (sample_util.h).
#include <stdlib.h>
#include <string.h>

#include "lowfake.h"
#include "sample_util.h"

void
tally_init(tally *t)
{
	pthread_mutex_init(&t->mtx, NULL);
	pthread_cond_init(&t->cv, NULL);
	t->n = 0;
}

void
tally_fini(tally *t)
{
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mtx);
}

void
tally_add(tally *t)
{
	pthread_mutex_lock(&t->mtx);
	t->n++;
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mtx);
}

int
tally_get(tally *t)
{
	pthread_mutex_lock(&t->mtx);
	int n = t->n;
	pthread_mutex_unlock(&t->mtx);
	return n;
}

void
tally_wait(tally *t, int n)
{
	pthread_mutex_lock(&t->mtx);
	while (t->n < n) {
		pthread_cond_wait(&t->cv, &t->mtx);
	}
	pthread_mutex_unlock(&t->mtx);
}

void
echo_init(echo *e, const char *suffix)
{
	memset(e, 0, sizeof(*e));
	e->suffix = suffix;
	tally_init(&e->calls);
	tally_init(&e->returned);
}

void
echo_fini(echo *e)
{
	tally_fini(&e->calls);
	tally_fini(&e->returned);
}

static int echo_call(echo *e, const void *in, size_t len, void **out,
                     size_t *outlen);

int
echo_blocking(void *ctx, const void *in, size_t len, void **out,
              size_t *outlen)
{
	echo *e = ctx;
	int rv = echo_call(e, in, len, out, outlen);
	tally_add(&e->returned);
	return rv;
}

static int
echo_call(echo *e, const void *in, size_t len, void **out, size_t *outlen)
{
	size_t sl = strlen(e->suffix);
	char *buf;
	tally_add(&e->calls);
	if (atomic_load(&e->hold)) {
		gate_open(e->held);
		gate_wait(e->release);
	}
	if (atomic_load(&e->fail_first) > 0) {
		atomic_fetch_sub(&e->fail_first, 1);
		return AA_EAPP;
	}
	if (e->race != NULL) {
		pthread_barrier_wait(e->race);
	}
	if ((buf = malloc(len + sl)) == NULL) {
		return AA_ENOMEM;
	}
	memcpy(buf, in, len);
	memcpy(buf + len, e->suffix, sl);
	*out = buf;
	*outlen = len + sl;
	return 0;
}

void
lowfx_init(lowfx *f, int threads, const char *suffix)
{
	cr_assert_eq(aa_pool_alloc(&f->pool, threads), 0);
	echo_init(&f->e, suffix);
	gate_init(&f->held);
	gate_init(&f->release);
	f->e.held = &f->held;
	f->e.release = &f->release;
	cr_assert_eq(lowfake_alloc(&f->m, f->pool, echo_blocking, &f->e), 0);
	f->layer = (smp_layer){lowfake_call, f->m};
}

void
lowfx_stop(lowfx *f)
{
	lowfake_free(f->m);
	aa_executor_free(f->pool);
	f->m = NULL;
	f->pool = NULL;
}

void
lowfx_fini(lowfx *f)
{
	if (f->m != NULL) {
		lowfx_stop(f);
	}
	gate_fini(&f->held);
	gate_fini(&f->release);
	echo_fini(&f->e);
}

void
seen_init(seen *s, tally *done)
{
	memset(s, 0, sizeof(*s));
	s->done = done;
	atomic_store(&s->state, -1);
}

void
seen_cb(aa_op *op, void *arg)
{
	seen *s = arg;
	const void *data;
	size_t len;
	s->thread = pthread_self();
	s->err = aa_op_error(op);
	if (aa_op_result(op, &data, &len) == 0 && len > 0 &&
	    len < sizeof(s->result)) {
		memcpy(s->result, data, len);
		s->result[len] = '\0';
	}
	atomic_store(&s->state, aa_op_status(op));
	atomic_fetch_add(&s->runs, 1);
	// Last: the waiter may reuse s as soon as the tally moves.
	if (!s->keep) {
		aa_op_unref(op);
	}
	if (s->done != NULL) {
		tally_add(s->done);
	}
}

typedef struct spy_child {
	spy *s;
	aa_op_cb cb;
	void *arg;
} spy_child;

static void
spy_child_done(aa_op *child, void *arg)
{
	spy_child *sc = arg;
	spy *s = sc->s;
	if (s->before_cb != NULL) {
		s->before_cb(s->ctx, child);
	}
	sc->cb(child, sc->arg);
	free(sc);
	tally_add(&s->ended);
}

static int
spy_call(void *handle, const void *in, size_t len, const aa_assoc *assoc,
         aa_op_cb cb, void *arg, aa_op **opp)
{
	spy *s = handle;
	spy_child *sc = malloc(sizeof(*sc));
	int rv;
	cr_assert_not_null(sc);
	*sc = (spy_child){s, cb, arg};
	tally_add(&s->calls);
	rv = s->lower.call(s->lower.handle, in, len, assoc, spy_child_done, sc,
	                   opp);
	if (rv != 0) {
		free(sc);
	}
	tally_add(&s->returned);
	return rv;
}

void
spy_init(spy *s, smp_layer lower)
{
	memset(s, 0, sizeof(*s));
	s->lower = lower;
	tally_init(&s->calls);
	tally_init(&s->returned);
	tally_init(&s->ended);
	s->as_layer = (smp_layer){spy_call, s};
}

void
spy_fini(spy *s)
{
	tally_fini(&s->calls);
	tally_fini(&s->returned);
	tally_fini(&s->ended);
}

int
round_outcome(seen *s, const char *want, int round, int won[2])
{
	int state = atomic_load(&s->state);
	int work_won = state == AA_COMPLETED;
	cr_assert_eq(atomic_load(&s->runs), 1, "round %d", round);
	if (work_won) {
		cr_assert_str_eq(s->result, want, "round %d", round);
	} else {
		cr_assert_eq(state, AA_CANCELED, "round %d: %s", round,
		             aa_op_state_name(state));
	}
	won[work_won]++;
	return work_won;
}

static aa_cancel_signal *_Atomic emit_on_connect;

static void
emit_at_connect(void *arg, const char *name, void *subject)
{
	aa_cancel_signal *sig = atomic_load(&emit_on_connect);
	(void)arg;
	(void)subject;
	if (strcmp(name, "op.slot_connected") == 0 && sig != NULL) {
		cr_assert_eq(aa_cancel_signal_emit(sig, AA_CANCEL_TERMINAL),
		             0);
	}
}

void
cancel_at_slot_connect(aa_cancel_signal *sig)
{
	atomic_store(&emit_on_connect, sig);
	aa_checkpoint_set(sig != NULL ? emit_at_connect : NULL, NULL);
}

typedef struct racer {
	pthread_barrier_t start;
	pthread_barrier_t *go;
	pthread_barrier_t round_end;
	aa_op *_Atomic op;
	aa_cancel_type type;
	race_cancel_fn cancel;
	void *ctx;
	atomic_bool stop;
	atomic_int cancel_rv;
} racer;

static void *
racer_main(void *arg)
{
	racer *r = arg;
	for (;;) {
		pthread_barrier_wait(&r->start);
		if (atomic_load(&r->stop)) {
			return NULL;
		}
		pthread_barrier_wait(r->go); // lined up with the work
		if (r->cancel != NULL) {
			(void)r->cancel(r->ctx, atomic_load(&r->op), r->type);
			atomic_store(&r->cancel_rv, 0);
		} else {
			atomic_store(
			    &r->cancel_rv,
			    aa_op_cancel(atomic_load(&r->op), r->type));
		}
		pthread_barrier_wait(&r->round_end);
	}
}

void
race_cancel_completion(int rounds, echo *e, smp_layer layer,
                       aa_cancel_type type, const char *want,
                       race_cancel_fn cancel, void *ctx)
{
	pthread_barrier_t go;
	racer r = {.go = &go, .type = type, .cancel = cancel, .ctx = ctx};
	thr t;
	int won[2] = {0, 0}; // cancel, work
	pthread_barrier_init(&r.start, NULL, 2);
	pthread_barrier_init(&go, NULL, 3); // work, racer, this thread
	pthread_barrier_init(&r.round_end, NULL, 2);
	e->race = &go;
	thr_start(&t, racer_main, &r);
	for (int i = 0; i < rounds; i++) {
		tally done;
		seen s;
		aa_op *op;
		aa_op *keep;
		tally_init(&done);
		seen_init(&s, &done);
		s.keep = true; // the work waits for `go`, but be safe
		cr_assert_eq(
		    layer.call(layer.handle, "r", 1, NULL, seen_cb, &s, &op),
		    0);
		cr_assert_eq(atomic_load(&s.runs), 0, "round %d: %s %s", i,
		             aa_op_state_name(aa_op_status(op)),
		             aa_strerror(aa_op_error(op)));
		keep = op;
		atomic_store(&r.op, keep);
		pthread_barrier_wait(&r.start);
		// The work waits on `go` with the racer: both go at once.
		pthread_barrier_wait(&go);
		pthread_barrier_wait(&r.round_end);
		tally_wait(&done, 1);
		if (round_outcome(&s, want, i, won) == 0) {
			cr_assert_eq(atomic_load(&r.cancel_rv), 0, "round %d",
			             i);
		}
		cr_assert_eq((int)aa_op_status(keep), atomic_load(&s.state));
		aa_op_unref(keep);
		tally_fini(&done);
	}
	atomic_store(&r.stop, true);
	pthread_barrier_wait(&r.start);
	thr_join(&t);
	// Every work has left the barrier before it goes away.
	tally_wait(&e->returned, tally_get(&e->calls));
	e->race = NULL;
	pthread_barrier_destroy(&go);
	pthread_barrier_destroy(&r.start);
	pthread_barrier_destroy(&r.round_end);
	test_note("%d rounds: cancel won %d, the work won %d", rounds, won[0],
	          won[1]);
}

void
refused_calls(smp_layer layer)
{
	seen s;
	aa_op *op = NULL;
	seen_init(&s, NULL);
	cr_assert_eq(layer.call(NULL, "x", 1, NULL, seen_cb, &s, &op),
	             AA_EINVAL, "no handle");
	cr_assert_eq(layer.call(layer.handle, "x", 1, NULL, NULL, &s, &op),
	             AA_EINVAL, "no callback");
	cr_assert_eq(layer.call(layer.handle, "x", 1, NULL, seen_cb, &s, NULL),
	             AA_EINVAL, "no out-parameter");
	cr_assert_eq(layer.call(layer.handle, NULL, 1, NULL, seen_cb, &s, &op),
	             AA_EINVAL, "input bytes missing");
	cr_assert_null(op, "no op handed out");
	cr_assert_eq(atomic_load(&s.runs), 0, "the callback never runs");
}
