// aa/executor.h: executors run posted work. Three are provided: the inline
// executor (runs work in the caller), a thread pool, and a strand (work of
// one strand never runs concurrently and runs in order).
//
// Work is an aa_work item, embedded by its owner so that posting allocates
// nothing (as libuv's uv_work_t and nng's internal task). It has a work
// function and an optional done callback that runs right after it on the
// same thread. aa_executor_post is the convenience form that allocates the
// item itself (counted as AA_LIVE_WORK, freed after it ran or was dropped)
// and cannot be aborted.
//
// Chaining (Envoy's AsyncFileManager): work that a callback submits to the
// strand it is running on runs next, on the same thread, before unrelated
// work queued on the pool.
//
// Abort: work not yet started is dropped and neither function runs; work
// already running finishes but its done callback does not run (abort does
// not wait for the work function: aa_work_wait does); a done callback
// already running is waited for, unless the abort is called from inside it.
//
// Lifecycle, as nng does it: close (idempotent, never blocks; new submits
// fail with AA_ECLOSED; queued work is dropped and its done callback runs
// with AA_ECLOSED), stop (waits until no work of the executor runs), free.
// Callbacks must be short and must not block: they share the threads.
// Free strands before the executor they run on. docs/executor.md has the
// details.
#ifndef AA_EXECUTOR_H
#define AA_EXECUTOR_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aa_executor aa_executor;

typedef void (*aa_work_fn)(void *arg);
// A done callback: rv is 0 after the work function ran, or AA_ECLOSED when
// the executor closed before the work started (the work function did not
// run).
typedef void (*aa_done_fn)(void *arg, int rv);

// An embeddable work item. Its fields are private to the library; the
// struct is public only so that owners can embed it without allocating.
// The executor does not touch the item once its done callback has begun,
// so the done callback may free or resubmit the memory the item lives in.
// Without a done callback the item must outlive its work function. After
// it ran, an item remembers its executor: abort or wait on it only while
// that executor is not freed. Submit an item from one thread at a time.
typedef struct aa_work {
	struct aa_work *next_;
	struct aa_work *prev_;
	aa_work_fn fn_;
	aa_done_fn done_;
	void *arg_;
	aa_executor *ex_;
	int state_;
	bool aborted_;
} aa_work;

// aa_work_init prepares an idle work item; fn may be NULL (only done
// runs), done may be NULL.
void aa_work_init(aa_work *w, aa_work_fn fn, aa_done_fn done, void *arg);

// aa_work_submit queues w on ex: 0, AA_EBUSY when w is already queued or
// running, AA_ECLOSED when ex is closed (then nothing of w ever runs).
int aa_work_submit(aa_work *w, aa_executor *ex);

// aa_work_abort prevents w's done callback: 0 when it dropped w before its
// work started or suppressed the done callback of running work; AA_EALREADY
// when the done callback already ran or is running (it waits for it unless
// called from inside it) or w was never submitted.
int aa_work_abort(aa_work *w);

// aa_work_wait waits until w is neither queued nor running; AA_EDEADLK when
// called from inside w's own functions.
int aa_work_wait(aa_work *w);

// aa_executor_inline returns the executor that runs work in the caller,
// inside aa_work_submit. It is never closed or freed.
aa_executor *aa_executor_inline(void);

// aa_pool_alloc creates a thread pool of nthreads workers (FIFO queue).
int aa_pool_alloc(aa_executor **exp, int nthreads);

// aa_strand_alloc creates a strand that runs its work, one item at a time
// and in order, on target (a pool or the inline executor).
int aa_strand_alloc(aa_executor **exp, aa_executor *target);

// aa_executor_post runs fn(arg) on ex; 0 or AA_ECLOSED / AA_ENOMEM.
int aa_executor_post(aa_executor *ex, aa_work_fn fn, void *arg);

// aa_executor_close stops ex accepting work and drops what is queued.
void aa_executor_close(aa_executor *ex);

// aa_executor_stop closes ex and waits until none of its work runs:
// 0, or AA_EDEADLK when called from a thread running ex's work (ex is
// closed all the same). On the inline executor it does nothing.
int aa_executor_stop(aa_executor *ex);

// aa_executor_free closes, stops and frees ex. Called from inside ex's own
// work, the free is deferred until that work has returned.
void aa_executor_free(aa_executor *ex);

// aa_executor_in_thread says whether the calling thread is running work of
// ex right now (for a strand: work of that strand).
bool aa_executor_in_thread(aa_executor *ex);

// ---- Executors run by the application's own loop ----
//
// For programs that already have an event loop: the library's handlers
// then run on the loop's thread. Both executors have a queue but no
// thread; abort, close, stop and free behave as for a pool. Close drops
// what is queued (done callbacks with AA_ECLOSED on the closing thread).

// A post function of a user-defined executor: it must arrange for
// run(run_arg) to be called exactly once, later or inside post, on the
// thread the application chooses, also after the executor was closed or
// freed (the call then runs nothing; the last one frees its memory).
typedef void (*aa_post_fn)(void *ctx, aa_work_fn run, void *run_arg);

// aa_user_executor_alloc creates an executor that calls post(ctx, ...)
// once per submitted item, outside any library lock, on the submitting
// thread; each run call runs the oldest queued item, so items run in
// submission order.
int aa_user_executor_alloc(aa_executor **exp, aa_post_fn post, void *ctx);

// aa_poll_executor_alloc creates a pollable executor: its work runs only
// inside aa_poll_executor_drain.
int aa_poll_executor_alloc(aa_executor **exp);

// aa_poll_executor_fd gives the executor's descriptor (an eventfd): it is
// readable exactly while work is queued. Watch it for reading (epoll,
// poll, uv_poll, a GLib source); do not read it. aa_executor_free closes
// it: take it out of the loop before. AA_EINVAL for another executor.
int aa_poll_executor_fd(aa_executor *ex, int *fdp);

// aa_poll_executor_drain runs up to max queued items (0: every item
// queued when it was called, not those their work queues meanwhile) on
// the calling thread, and stores how many ran in *ranp (may be NULL):
// 0; AA_ECLOSED when the executor is closed (nothing ran); AA_ESTATE when
// called from inside the executor's own work; AA_EINVAL for an executor
// that is not pollable.
int aa_poll_executor_drain(aa_executor *ex, unsigned max, unsigned *ranp);

#ifdef __cplusplus
}
#endif
#endif // AA_EXECUTOR_H
