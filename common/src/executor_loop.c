// executor_loop.c: executors whose work runs on the application's own
// thread, for programs that already have an event loop: the pollable
// executor (an eventfd says when work is ready; the loop drains it) and
// the user-defined executor (the application's post function decides
// where each piece of work runs).
//
// Design notes.
//
// Both are executor_ext.c's external executors (EX_EXTERN): the same queue,
// work items, abort, close, stop and free as a pool, but no library
// thread. Work runs only inside aai_ext_run, called by the application.
//
// Pollable. The eventfd's counter is 1 exactly while the queue is not
// empty: the `ready` hook writes 1 when the queue turns non-empty and
// reads it back to 0 when it turns empty, under the executor's lock, in
// the same locked step that changes the queue. So no interleaving of
// submit, drain, abort and close can leave the descriptor readable with
// nothing queued, or silent with work queued. Both calls are non-blocking
// and cannot fail on a counter that only holds 0 or 1.
//
// User-defined. Each successful submit calls post(ctx, run, ex) once,
// after the executor's lock is dropped (post may run `run` inline). The
// application must call run(ex) exactly once, on the thread it chooses;
// each call runs the item at the head of the queue, if any. Items
// therefore run in submission order whatever order the application runs
// its calls in, and an aborted or dropped item simply leaves one call
// with nothing to do. Every post holds a pin on the executor
// (executor_ext.c) so that a call arriving after close or free finds
// valid memory: it runs nothing, and the last one frees the executor.
//
// Races, and who wins.
// * submit vs drain vs abort vs close: each changes the queue in one
//   locked step of the executor, and the descriptor with it (above).
// * drain vs close: close drops what is queued (done callbacks with
//   AA_ECLOSED on the closing thread); a drain after that runs nothing
//   and returns AA_ECLOSED, one during it stops before its next item.
// * free vs a post in flight: the pin taken under the lock in submit
//   keeps the memory until that post's run call; free does not wait for
//   it (the application's loop may be the very thread that frees).
#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aai.h"

typedef struct pollex {
	int fd;
} pollex;

typedef struct userex {
	aa_post_fn post;
	void *ctx;
} userex;

static void
poll_ready(void *ctx, bool ready)
{
	pollex *p = ctx;
	uint64_t v = 1;
	ssize_t n;
	// Counter 0 <-> 1 only, so neither call can block or overflow.
	if (ready) {
		n = write(p->fd, &v, sizeof(v));
	} else {
		n = read(p->fd, &v, sizeof(v));
	}
	AAI_ASSERT(n == (ssize_t)sizeof(v));
}

static void
poll_fini(void *ctx)
{
	pollex *p = ctx;
	close(p->fd);
	aai_free(p);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_ext_hooks poll_hooks = {
    .ready = poll_ready,
    .fini = poll_fini,
};

int
aa_poll_executor_alloc(aa_executor **exp)
{
	pollex *p;
	int rv;
	if (exp == NULL) {
		return AA_EINVAL;
	}
	if ((p = aai_zalloc(sizeof(*p))) == NULL) {
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_OTHER);
	p->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->fd < 0) {
		rv = errno == ENOMEM ? AA_ENOMEM : AA_ESYSTEM;
		aai_free(p);
		aai_live_dec(AA_LIVE_OTHER);
		return rv;
	}
	if ((rv = aai_ext_alloc(exp, &poll_hooks, p)) != 0) {
		poll_fini(p);
	}
	return rv;
}

int
aa_poll_executor_fd(aa_executor *ex, int *fdp)
{
	pollex *p = aai_ext_ctx(ex, &poll_hooks);
	if (p == NULL || fdp == NULL) {
		return AA_EINVAL;
	}
	*fdp = p->fd;
	return 0;
}

int
aa_poll_executor_drain(aa_executor *ex, unsigned max, unsigned *ranp)
{
	if (ranp != NULL) {
		*ranp = 0;
	}
	if (aai_ext_ctx(ex, &poll_hooks) == NULL) {
		return AA_EINVAL;
	}
	// A drain nested in the executor's own work would run items inside
	// another item: refused, the loop's next turn runs them.
	if (aa_executor_in_thread(ex)) {
		return AA_ESTATE;
	}
	return aai_ext_run(ex, max, false, ranp);
}

static void
user_ready(void *ctx, bool ready)
{
	(void)ctx;
	(void)ready; // the post calls say it
}

static void
user_run(void *arg)
{
	(void)aai_ext_run(arg, 1, true, NULL);
}

static void
user_submitted(void *ctx, aa_executor *ex)
{
	userex *u = ctx;
	u->post(u->ctx, user_run, ex);
}

static void
user_fini(void *ctx)
{
	aai_free(ctx);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_ext_hooks user_hooks = {
    .ready = user_ready,
    .submitted = user_submitted,
    .fini = user_fini,
};

int
aa_user_executor_alloc(aa_executor **exp, aa_post_fn post, void *ctx)
{
	userex *u;
	int rv;
	if (exp == NULL || post == NULL) {
		return AA_EINVAL;
	}
	if ((u = aai_zalloc(sizeof(*u))) == NULL) {
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_OTHER);
	u->post = post;
	u->ctx = ctx;
	if ((rv = aai_ext_alloc(exp, &user_hooks, u)) != 0) {
		user_fini(u);
	}
	return rv;
}
