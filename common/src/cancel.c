// cancel.c: cancellation types and the thread-safe cancellation signal.
//
// Design notes. A signal owns one slot, one mutex and one condition
// variable. The connected handler is a (fn, arg) pair. emit copies the pair
// under the lock, records itself in a list of running emits (a record on
// its own stack: thread, fn, arg), drops the lock, runs the handler, then
// removes its record and wakes waiters. disconnect clears the pair (so no
// new emit can start it) and then waits until no record for that pair from
// another thread remains; a disconnect from inside the handler (the record
// is its own thread's) does not wait. So after disconnect returns the
// handler is not running elsewhere and will not run again.
//
// Races: emit vs disconnect: whoever takes the lock first wins; an emit
// that took the pair first runs the handler and disconnect waits for it.
// emit vs connect: an emit that finds the slot empty returns AA_ENOENT.
// Several emits may run the handler concurrently (Asio allows only one
// producer; this is more forgiving) and disconnect waits for all of them.
#include "aai.h"

struct aa_cancel_slot {
	aa_cancel_signal *sig;
};

typedef struct emit_record {
	struct emit_record *next;
	pthread_t thread;
	aa_cancel_handler_fn fn;
	void *arg;
} emit_record;

struct aa_cancel_signal {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	aa_cancel_slot slot;
	aa_cancel_handler_fn fn;
	void *arg;
	emit_record *emits;
};

static bool
valid_type(unsigned t)
{
	return t != 0 && (t & ~(unsigned)AA_CANCEL_ALL) == 0;
}

bool
aa_cancel_supports(unsigned mask, aa_cancel_type t)
{
	// A stronger guarantee satisfies a weaker request: offering TOTAL
	// covers PARTIAL and TERMINAL, offering PARTIAL covers TERMINAL.
	unsigned effective = 0;
	if (mask & AA_CANCEL_TOTAL) {
		effective |=
		    AA_CANCEL_TOTAL | AA_CANCEL_PARTIAL | AA_CANCEL_TERMINAL;
	}
	if (mask & AA_CANCEL_PARTIAL) {
		effective |= AA_CANCEL_PARTIAL | AA_CANCEL_TERMINAL;
	}
	if (mask & AA_CANCEL_TERMINAL) {
		effective |= AA_CANCEL_TERMINAL;
	}
	return valid_type((unsigned)t) && ((unsigned)t & effective) != 0;
}

const char *
aa_cancel_type_name(aa_cancel_type t)
{
	switch (t) {
	case AA_CANCEL_TERMINAL:
		return "terminal";
	case AA_CANCEL_PARTIAL:
		return "partial";
	case AA_CANCEL_TOTAL:
		return "total";
	case AA_CANCEL_NONE:
		return "none";
	default:
		return "mixed";
	}
}

int
aa_cancel_signal_alloc(aa_cancel_signal **sigp)
{
	aa_cancel_signal *sig;
	if (sigp == NULL) {
		return AA_EINVAL;
	}
	if ((sig = aai_zalloc(sizeof(*sig))) == NULL) {
		return AA_ENOMEM;
	}
	aai_mtx_init(&sig->mtx);
	aai_cv_init(&sig->cv);
	sig->slot.sig = sig;
	aai_live_inc(AA_LIVE_SIGNAL);
	*sigp = sig;
	return 0;
}

void
aa_cancel_signal_free(aa_cancel_signal *sig)
{
	if (sig == NULL) {
		return;
	}
	aai_mtx_lock(&sig->mtx);
	AAI_ASSERT(sig->fn == NULL && sig->emits == NULL);
	aai_mtx_unlock(&sig->mtx);
	aai_cv_fini(&sig->cv);
	aai_mtx_fini(&sig->mtx);
	aai_free(sig);
	aai_live_dec(AA_LIVE_SIGNAL);
}

aa_cancel_slot *
aa_cancel_signal_slot(aa_cancel_signal *sig)
{
	return &sig->slot;
}

int
aa_cancel_signal_emit(aa_cancel_signal *sig, aa_cancel_type type)
{
	emit_record rec;
	if (!valid_type((unsigned)type)) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&sig->mtx);
	if (sig->fn == NULL) {
		aai_mtx_unlock(&sig->mtx);
		return AA_ENOENT;
	}
	rec.thread = pthread_self();
	rec.fn = sig->fn;
	rec.arg = sig->arg;
	rec.next = sig->emits;
	sig->emits = &rec;
	aai_mtx_unlock(&sig->mtx);

	rec.fn(rec.arg, type);

	aai_mtx_lock(&sig->mtx);
	for (emit_record **pp = &sig->emits; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == &rec) {
			*pp = rec.next;
			break;
		}
	}
	aai_cv_broadcast(&sig->cv);
	aai_mtx_unlock(&sig->mtx);
	return 0;
}

int
aa_cancel_slot_connect(aa_cancel_slot *slot, aa_cancel_handler_fn fn,
                       void *arg)
{
	aa_cancel_signal *sig = slot->sig;
	if (fn == NULL) {
		return AA_EINVAL;
	}
	aai_mtx_lock(&sig->mtx);
	if (sig->fn != NULL) {
		aai_mtx_unlock(&sig->mtx);
		return AA_EBUSY;
	}
	sig->fn = fn;
	sig->arg = arg;
	aai_mtx_unlock(&sig->mtx);
	return 0;
}

// running_elsewhere says whether another thread runs (fn, arg) in an emit.
// Expects the signal's lock.
static bool
running_elsewhere(aa_cancel_signal *sig, aa_cancel_handler_fn fn, void *arg)
{
	pthread_t self = pthread_self();
	for (emit_record *r = sig->emits; r != NULL; r = r->next) {
		if (r->fn == fn && r->arg == arg &&
		    !pthread_equal(r->thread, self)) {
			return true;
		}
	}
	return false;
}

int
aa_cancel_slot_disconnect(aa_cancel_slot *slot, aa_cancel_handler_fn fn,
                          void *arg)
{
	aa_cancel_signal *sig = slot->sig;
	aai_mtx_lock(&sig->mtx);
	if (sig->fn != fn || sig->arg != arg) {
		aai_mtx_unlock(&sig->mtx);
		return AA_ENOENT;
	}
	sig->fn = NULL;
	sig->arg = NULL;
	while (running_elsewhere(sig, fn, arg)) {
		AAI_CHECKPOINT("cancel.disconnect_wait",
		               sig); // under the lock
		aai_cv_wait(&sig->cv, &sig->mtx);
	}
	aai_mtx_unlock(&sig->mtx);
	return 0;
}

bool
aa_cancel_slot_is_connected(aa_cancel_slot *slot)
{
	aa_cancel_signal *sig = slot->sig;
	aai_mtx_lock(&sig->mtx);
	bool connected = sig->fn != NULL;
	aai_mtx_unlock(&sig->mtx);
	return connected;
}
