// executor_ext.c: the queue side of the external executors (EX_EXTERN),
// whose work runs on the application's own thread.
//
// Design notes.
//
// External executors (EX_EXTERN, made by executor_loop.c, which has their
// own notes): a queue that no library thread runs; the application's
// thread runs it through aai_ext_run. Their `ready` hook runs under the
// lock whenever the queue turns non-empty or empty, so that what it
// signals (an eventfd) can never disagree with the queue. A submit may
// take a `pin`: the executor's memory then stays until the matching
// aai_ext_run(unpin) has come, even past aa_executor_free (the last unpin
// frees), because the application holds a function pointing at it.
#include <stdlib.h>

#include "aai.h"
#include "executor_impl.h"

int
aai_ext_alloc(aa_executor **exp, const aai_ext_hooks *hooks, void *ctx)
{
	aa_executor *ex = aai_ex_new(EX_EXTERN);
	if (ex == NULL) {
		return AA_ENOMEM;
	}
	ex->hooks = hooks;
	ex->hooks_ctx = ctx;
	*exp = ex;
	return 0;
}

void *
aai_ext_ctx(aa_executor *ex, const aai_ext_hooks *hooks)
{
	if (ex == NULL || ex->kind != EX_EXTERN || ex->hooks != hooks) {
		return NULL;
	}
	return ex->hooks_ctx;
}

int
aai_ext_submit(aa_work *w, aa_executor *ex)
{
	const aai_ext_hooks *h = ex->hooks;
	void *ctx = ex->hooks_ctx;
	aai_mtx_lock(&ex->mtx);
	if (!aai_ex_queue_item(ex, w)) {
		aai_mtx_unlock(&ex->mtx);
		return AA_ECLOSED;
	}
	if (h->submitted != NULL) {
		ex->pins++; // released by the run call submitted() asks for
	}
	aai_mtx_unlock(&ex->mtx);
	// The pin keeps ex alive here even if another thread closes and
	// frees it meanwhile.
	if (h->submitted != NULL) {
		h->submitted(ctx, ex);
	}
	return 0;
}

int
aai_ext_run(aa_executor *ex, unsigned max, bool unpin, unsigned *ranp)
{
	unsigned ran = 0;
	bool do_free;
	int rv = 0;
	aai_mtx_lock(&ex->mtx);
	if (unpin) {
		AAI_ASSERT(ex->pins > 0);
		ex->pins--;
	}
	if (max == 0) {
		// What is queued now, not what its own work queues meanwhile:
		// one call of the application's loop stays bounded.
		for (aa_work *w = ex->head; w != NULL; w = w->next_) {
			max++;
		}
	}
	if (ex->closed) {
		rv = AA_ECLOSED;
	}
	while (!ex->closed && ran < max && ex->head != NULL) {
		aai_ex_run_item(ex, aai_ex_q_pop(ex));
		ran++;
	}
	do_free = aai_ex_take_deferred_free(ex);
	aai_mtx_unlock(&ex->mtx);
	if (do_free) {
		aai_ex_destroy(ex);
	}
	if (ranp != NULL) {
		*ranp = ran;
	}
	return rv;
}
