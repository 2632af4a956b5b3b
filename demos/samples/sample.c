// sample.c: the helpers the seed samples share (sample.h).
//
// Design notes.
//
// Tracker. One mutex guards the list, the count, the pass number and the
// closed flag. cancel-all visits the ops one at a time: under the lock it
// marks the next unvisited op with its pass number and takes a reference,
// then cancels it without the lock. So an op that finishes meanwhile
// answers AA_EALREADY and is freed only by the last reference, a handler
// that the cancel runs may start (and add) new ops or remove its own
// without deadlock, and ops added during the pass (numbered with it) are
// left alone. Two concurrent passes skip what the later one visited.
//
// Link. The parent's cancel function may run at any time until the
// parent op is freed (even after the op is final: a cooperative cancel
// calls the provider after dropping the op's lock), so the link lives in
// the op's extra memory and its signal is freed only when no cancel is
// emitting on it. Races, all decided under the link's spin lock:
// * cancel vs a child connecting: the request is recorded first, then
//   emitted; a child that connected after the emit found nothing gets it
//   from smp_link_started, which emits again (a second cancel of a final
//   op is harmless).
// * cancel vs close: whoever is last out of the lock frees the signal
//   (emitting counts the cancels inside emit).
// * cancel before the link is open (the parent's parent cancelled during
//   aa_op_alloc, on zeroed memory): only recorded; every module checks
//   smp_link_cancelled before starting a child.
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "sample.h"

void
smp_tracker_init(smp_tracker *t)
{
	pthread_mutex_init(&t->mtx, NULL);
	pthread_cond_init(&t->empty_cv, NULL);
	t->head.next = &t->head;
	t->head.prev = &t->head;
	t->count = 0;
	t->pass = 0;
	t->closed = false;
}

void
smp_tracker_fini(smp_tracker *t)
{
	pthread_cond_destroy(&t->empty_cv);
	pthread_mutex_destroy(&t->mtx);
}

int
smp_tracker_add(smp_tracker *t, smp_node *node, aa_op *op)
{
	pthread_mutex_lock(&t->mtx);
	if (t->closed) {
		pthread_mutex_unlock(&t->mtx);
		return AA_ECLOSED;
	}
	aa_op_ref(op);
	node->op = op;
	node->pass = t->pass;
	node->next = &t->head;
	node->prev = t->head.prev;
	t->head.prev->next = node;
	t->head.prev = node;
	t->count++;
	pthread_mutex_unlock(&t->mtx);
	return 0;
}

void
smp_tracker_remove(smp_tracker *t, smp_node *node)
{
	aa_op *op = node->op;
	pthread_mutex_lock(&t->mtx);
	node->prev->next = node->next;
	node->next->prev = node->prev;
	node->next = node->prev = NULL;
	pthread_mutex_unlock(&t->mtx);
	aa_op_unref(op); // may free the node's memory: touched no more
	// Counted out only now: once a destroy sees nothing tracked, no
	// thread of the module holds a reference on an op any more (the
	// calls' own threads, such as nng's, are not joined by destroy).
	pthread_mutex_lock(&t->mtx);
	if (--t->count == 0) {
		pthread_cond_broadcast(&t->empty_cv);
	}
	pthread_mutex_unlock(&t->mtx);
}

int
smp_tracker_cancel_all(smp_tracker *t, aa_cancel_type type)
{
	unsigned long pass;
	int cancelled = 0;
	pthread_mutex_lock(&t->mtx);
	pass = ++t->pass;
	for (;;) {
		// The first op this pass has not visited; ops added from now
		// on carry this pass's number and are skipped.
		smp_node *x = t->head.next;
		aa_op *op;
		while (x != &t->head && x->pass >= pass) {
			x = x->next;
		}
		if (x == &t->head) {
			break;
		}
		x->pass = pass;
		op = x->op;
		aa_op_ref(op);
		pthread_mutex_unlock(&t->mtx);
		if (aa_op_cancel(op, type) == 0) {
			cancelled++;
		}
		aa_op_unref(op);
		pthread_mutex_lock(&t->mtx);
	}
	pthread_mutex_unlock(&t->mtx);
	return cancelled;
}

void
smp_tracker_shutdown(smp_tracker *t, aa_cancel_type type)
{
	pthread_mutex_lock(&t->mtx);
	t->closed = true;
	pthread_mutex_unlock(&t->mtx);
	(void)smp_tracker_cancel_all(t, type);
	pthread_mutex_lock(&t->mtx);
	while (t->count > 0) {
		pthread_cond_wait(&t->empty_cv, &t->mtx);
	}
	pthread_mutex_unlock(&t->mtx);
}

int
smp_module_alloc(void **mp, size_t size, bool with_timers)
{
	smp_module *m = calloc(1, size);
	int rv;
	if (m == NULL) {
		return AA_ENOMEM;
	}
	if (with_timers && (rv = aa_timer_queue_alloc(&m->timers)) != 0) {
		free(m);
		return rv;
	}
	smp_tracker_init(&m->tracker);
	*mp = m;
	return 0;
}

void
smp_module_free(void *module, aa_cancel_type type)
{
	smp_module *m = module;
	if (m == NULL) {
		return;
	}
	smp_tracker_shutdown(&m->tracker, type);
	if (m->timers != NULL) {
		aa_timer_queue_free(m->timers);
	}
	smp_tracker_fini(&m->tracker);
	free(m);
}

void
smp_spin_lock(atomic_flag *busy)
{
	while (atomic_flag_test_and_set_explicit(busy, memory_order_acquire)) {
		sched_yield();
	}
}

void
smp_spin_unlock(atomic_flag *busy)
{
	atomic_flag_clear_explicit(busy, memory_order_release);
}

static void
link_lock(smp_link *l)
{
	smp_spin_lock(&l->busy);
}

static void
link_unlock(smp_link *l)
{
	smp_spin_unlock(&l->busy);
}

int
smp_link_open(smp_link *l)
{
	aa_cancel_signal *sig;
	int rv = aa_cancel_signal_alloc(&sig);
	if (rv != 0) {
		return rv;
	}
	link_lock(l);
	l->sig = sig;
	link_unlock(l);
	return 0;
}

void
smp_link_child_assoc(smp_link *l, const aa_assoc *parent, aa_assoc *a)
{
	a->executor = parent != NULL ? parent->executor : NULL;
	a->allocator = parent != NULL ? parent->allocator : NULL;
	a->slot = aa_cancel_signal_slot(l->sig);
}

// emit passes the recorded request to the connected child, if any.
static void
emit(smp_link *l)
{
	aa_cancel_signal *sig;
	aa_cancel_type type;
	bool do_free;
	link_lock(l);
	sig = l->sig;
	type = l->type;
	if (sig == NULL || !l->cancel_req || l->keep_child) {
		link_unlock(l);
		return;
	}
	l->emitting++;
	link_unlock(l);
	(void)aa_cancel_signal_emit(sig, type); // AA_ENOENT: no child now
	link_lock(l);
	do_free = --l->emitting == 0 && l->release_pending;
	if (do_free) {
		l->sig = NULL;
	}
	link_unlock(l);
	if (do_free) {
		aa_cancel_signal_free(sig);
	}
}

void
smp_link_cancel(aa_op *op, smp_link *l, aa_cancel_type type)
{
	aa_op_ref(op);
	link_lock(l);
	if (!l->cancel_req) {
		l->cancel_req = true;
		l->type = type;
	}
	link_unlock(l);
	emit(l);
	aa_op_unref(op);
}

void
smp_link_stop(smp_link *l, aa_cancel_type type)
{
	link_lock(l);
	if (!l->cancel_req) {
		l->cancel_req = true;
		l->keep_child = true;
		l->type = type;
	}
	link_unlock(l);
}

bool
smp_link_cancelled(smp_link *l, aa_cancel_type *type)
{
	bool c;
	link_lock(l);
	c = l->cancel_req;
	if (type != NULL) {
		*type = l->type;
	}
	link_unlock(l);
	return c;
}

void
smp_link_started(smp_link *l)
{
	emit(l);
}

void
smp_link_close(smp_link *l)
{
	aa_cancel_signal *sig;
	link_lock(l);
	sig = l->sig;
	if (l->emitting > 0) {
		l->release_pending = true; // the last emit frees it
		sig = NULL;
	} else {
		l->sig = NULL;
	}
	link_unlock(l);
	if (sig != NULL) {
		aa_cancel_signal_free(sig);
	}
}

int
smp_start_op(aa_op **opp, const aa_op_provider *prov, const aa_assoc *assoc)
{
	int rv = aa_op_alloc(opp, prov, assoc);
	if (rv == 0) {
		aa_op_ref(*opp); // the caller's
	}
	return rv;
}

bool
smp_bad_call(const void *handle, const void *in, size_t len, aa_op_cb cb,
             aa_op **opp)
{
	return handle == NULL || cb == NULL || opp == NULL ||
	       (len > 0 && in == NULL);
}

int
smp_start_with_input(aa_op **opp, aa_op_provider *prov, const aa_assoc *assoc,
                     size_t at, const void *in, size_t len)
{
	int rv;
	prov->extra = at + len;
	if ((rv = smp_start_op(opp, prov, assoc)) == 0 && len > 0) {
		memcpy((unsigned char *)aa_op_extra(*opp) + at, in, len);
	}
	return rv;
}

void
smp_hand_over(aa_op *op, aa_op_cb cb, void *arg, aa_op **opp)
{
	*opp = op;
	// On an op that is final already, this runs cb before returning.
	(void)aa_op_set_handler(op, cb, arg);
}

int
smp_abandon(aa_op *op, int err)
{
	(void)aa_op_fail(op, err, NULL);
	aa_op_unref(op);
	aa_op_unref(op);
	return err;
}

int
smp_track(aa_op *op, smp_tracker *t, smp_node *node)
{
	int rv = smp_tracker_add(t, node, op);
	if (rv != 0) {
		return smp_abandon(op, rv);
	}
	aa_op_unref(op); // the provider's: the tracker's is the module's
	return 0;
}

int
smp_track_composed(aa_op *op, smp_tracker *t, smp_node *node, smp_link *l)
{
	int rv = smp_link_open(l);
	if (rv != 0) {
		return smp_abandon(op, rv);
	}
	if ((rv = smp_track(op, t, node)) != 0) {
		smp_link_close(l);
	}
	return rv;
}

int
smp_untrack_abandon(aa_op *op, smp_tracker *t, smp_node *node, smp_link *l,
                    int err)
{
	aa_op_ref(op); // stands in for the provider's again
	if (l != NULL) {
		smp_link_close(l);
	}
	smp_tracker_remove(t, node);
	return smp_abandon(op, err);
}

void
smp_finish_like(aa_op *op, aa_op *child)
{
	const void *data;
	size_t len;
	void *copy = NULL;
	switch (aa_op_status(child)) {
	case AA_COMPLETED:
		(void)aa_op_result(child, &data, &len);
		if (len > 0 && (copy = malloc(len)) == NULL) {
			(void)aa_op_fail(op, AA_ENOMEM, "copying the result");
			return;
		}
		if (len > 0) {
			memcpy(copy, data, len);
		}
		(void)aa_op_complete(op, copy, len, free);
		break;
	case AA_CANCELED:
		(void)aa_op_canceled(op);
		break;
	default:
		(void)aa_op_fail(op, aa_op_error(child),
		                 aa_op_error_msg(child));
		break;
	}
}
