// aai.h: the private umbrella header shared by aaproxy's sources. Internal
// functions shared between files are named aai_; nothing here is public.
#ifndef AA_AAI_H
#define AA_AAI_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <aa/aa.h>

// Counted heap allocation: every malloc of the library goes through here,
// so that aa_heap_allocs() can prove steady state allocates nothing.
void *aai_alloc(size_t size);
void *aai_zalloc(size_t size);
void aai_free(void *p);
char *aai_strdup(const char *s);

// Live-object counters behind aa_live().
void aai_live_inc(aa_live_kind kind);
void aai_live_dec(aa_live_kind kind);

// Thin pthread wrappers that abort on the errors that mean a bug.
void aai_mtx_init(pthread_mutex_t *m);
void aai_mtx_fini(pthread_mutex_t *m);
void aai_mtx_lock(pthread_mutex_t *m);
void aai_mtx_unlock(pthread_mutex_t *m);
void aai_cv_init(pthread_cond_t *cv);
void aai_cv_fini(pthread_cond_t *cv);
void aai_cv_wait(pthread_cond_t *cv, pthread_mutex_t *m);
void aai_cv_broadcast(pthread_cond_t *cv);
void aai_cv_signal(pthread_cond_t *cv);

// Checkpoints (aa/checkpoint.h): AAI_CHECKPOINT costs a relaxed load and a
// predictable branch when no checkpoint function is installed.
extern _Atomic(aa_checkpoint_fn) aai_checkpoint_fn;
void aai_checkpoint_call(const char *name, void *subject);
#define AAI_CHECKPOINT(name, subject)                                         \
	do {                                                                  \
		if (__builtin_expect(                                         \
		        atomic_load_explicit(&aai_checkpoint_fn,              \
		                             memory_order_relaxed) != NULL,   \
		        0)) {                                                 \
			aai_checkpoint_call(name, subject);                   \
		}                                                             \
	} while (0)

// aai_op_cancel_fn returns the cancel function op was made with: a layer
// recognises its own ops by it before reading their extra memory.
aa_op_cancel_fn aai_op_cancel_fn(const aa_op *op);

// aai_op_fail_unsettled is aa_op_fail for a layer that fails an op before
// the real outcome is known (the client's own deadline while the server
// still runs it): the settlement stays pending, for the late answer (or
// an explicit aa_op_settle) to give.
int aai_op_fail_unsettled(aa_op *op, int err, const char *msg);

// aai_op_canceled_unsettled is aa_op_canceled leaving the settlement
// pending, for a provider that cancels at once what still runs elsewhere
// (the replay tool's test-only client build).
int aai_op_canceled_unsettled(aa_op *op);

// aai_panic reports a broken invariant and aborts.
_Noreturn void aai_panic(const char *fmt, ...);

#define AAI_ASSERT(x)                                                         \
	do {                                                                  \
		if (!(x)) {                                                   \
			aai_panic("%s:%d: assertion failed: %s", __FILE__,    \
			          __LINE__, #x);                              \
		}                                                             \
	} while (0)

// AAI_HIDDEN marks a function that only the library's own files share (a
// static one that a file split made shared): not exported from the shared
// library, so that calls stay direct and inlinable where it is defined.
#define AAI_HIDDEN __attribute__((visibility("hidden")))

// External executors (executor_loop.c builds the pollable and the
// user-defined executor on them): a queue that the application's thread
// runs with aai_ext_run. `ready` runs under the executor's lock when the
// queue turns non-empty (true) or empty (false); `submitted`, if set, runs
// after each successful submit without the lock, holding a pin that the
// matching aai_ext_run(unpin = true) releases (the executor's memory stays
// until then, even past aa_executor_free); `fini` runs when the executor
// is destroyed.
typedef struct aai_ext_hooks {
	void (*ready)(void *ctx, bool ready);
	void (*submitted)(void *ctx, aa_executor *ex);
	void (*fini)(void *ctx);
} aai_ext_hooks;

int aai_ext_alloc(aa_executor **exp, const aai_ext_hooks *hooks, void *ctx);
// aai_ext_ctx returns ex's context when ex was made with hooks, else NULL.
void *aai_ext_ctx(aa_executor *ex, const aai_ext_hooks *hooks);
// aai_ext_run runs up to max queued items (0: those queued now) on the
// calling thread; AA_ECLOSED (running nothing) once ex is closed.
int aai_ext_run(aa_executor *ex, unsigned max, bool unpin, unsigned *ranp);

#endif // AA_AAI_H
