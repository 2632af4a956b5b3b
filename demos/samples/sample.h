// sample.h: what the seed samples share (docs/samples.md).
//
// Every sample is a module with an opaque handle, a create/destroy pair
// and asynchronous calls of one shape, smp_call_fn: the handle, input
// bytes, the caller's associated characteristics (executor, allocator,
// cancellation slot; may be NULL), a completion callback and its context.
// A call returns 0 and an aa_op (one reference for the caller), and then
// the callback runs exactly once, possibly before the call returns (work
// that finishes at once, or a parent that already cancelled through its
// slot); or it returns an error, and then the callback never runs. Since
// every call has this shape, a middle layer sits on any lower one.
//
// Three helpers make the samples short:
// * smp_tracker: the ops of a module whose real work has not ended, for
//   cancel-all and for destroy (cancel them all, then wait for them);
// * smp_link: a composed op's link to its current child, through its own
//   cancellation signal whose slot goes down in the child's aa_assoc;
// * smp_start_op / smp_hand_over / smp_abandon: the common start and
//   error paths of a call.
#ifndef AA_SAMPLE_H
#define AA_SAMPLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <aa/aa.h>

typedef int (*smp_call_fn)(void *handle, const void *in, size_t len,
                           const aa_assoc *assoc, aa_op_cb cb, void *arg,
                           aa_op **opp);

// A lower layer: a call function and the handle it takes.
typedef struct smp_layer {
	smp_call_fn call;
	void *handle;
} smp_layer;

// ---- Tracker ----

// A tracker node; a module embeds it first in the extra memory of its
// ops. The tracker holds one reference on the op while it is tracked.
typedef struct smp_node {
	struct smp_node *next;
	struct smp_node *prev;
	aa_op *op;
	unsigned long pass; // the last cancel-all pass that visited it
} smp_node;

typedef struct smp_tracker {
	pthread_mutex_t mtx;
	pthread_cond_t empty_cv;
	smp_node head; // circular list
	int count;
	unsigned long pass; // cancel-all passes so far
	bool closed;
} smp_tracker;

void smp_tracker_init(smp_tracker *t);
void smp_tracker_fini(smp_tracker *t);

// smp_tracker_add tracks op through node (taking a reference): 0, or
// AA_ECLOSED once the tracker is closed.
int smp_tracker_add(smp_tracker *t, smp_node *node, aa_op *op);

// smp_tracker_remove stops tracking and drops the tracker's reference.
void smp_tracker_remove(smp_tracker *t, smp_node *node);

// smp_tracker_cancel_all cancels every op tracked when it is called, with
// type, outside the tracker's lock; ops added meanwhile (also from the
// handlers it runs) are not touched. Returns how many cancels returned 0.
int smp_tracker_cancel_all(smp_tracker *t, aa_cancel_type type);

// smp_tracker_shutdown closes the tracker (adds fail), cancels what is
// tracked with type and waits until nothing is: a module's destroy. Must
// not run inside a callback of one of the tracked ops.
void smp_tracker_shutdown(smp_tracker *t, aa_cancel_type type);

// ---- Module base ----

// Every module's struct begins with an smp_module: the tracker of its
// calls and, for the modules that wait, a timer thread.
typedef struct smp_module {
	smp_tracker tracker;
	aa_timer_queue *timers; // NULL unless asked for
} smp_module;

// smp_module_alloc allocates a zeroed module of size bytes (its struct
// begins with an smp_module) into *mp, with a timer thread when
// with_timers. 0, AA_ENOMEM, or the timer queue's error.
int smp_module_alloc(void **mp, size_t size, bool with_timers);

// smp_module_free cancels every pending call with type, waits until each
// has ended, stops the timer thread and frees the module (may be NULL).
void smp_module_free(void *m, aa_cancel_type type);

// ---- A spin lock, for state in an op's extra memory ----

// Zeroed memory is an unlocked lock and nothing needs freeing, so it fits
// memory that ends with the op (no destructor runs). For critical
// sections of a few instructions only.
void smp_spin_lock(atomic_flag *busy);
void smp_spin_unlock(atomic_flag *busy);

// ---- Link to the current child ----

// Lives in the parent op's extra memory, so that it outlives any call of
// the parent's cancel function; zeroed memory is a valid empty link.
typedef struct smp_link {
	atomic_flag busy; // a spin lock: every critical section is tiny
	aa_cancel_signal *sig;
	int emitting; // cancels emitting on sig right now
	bool release_pending;
	bool cancel_req;
	bool keep_child; // the request stops what comes next only
	aa_cancel_type type;
} smp_link;

// smp_link_open allocates the link's signal; 0 or AA_ENOMEM.
int smp_link_open(smp_link *l);

// smp_link_child_assoc fills a child's associated characteristics: the
// parent's executor and allocator, and the link's own slot.
void smp_link_child_assoc(smp_link *l, const aa_assoc *parent, aa_assoc *a);

// smp_link_cancel records the cancel request and passes it to whichever
// child is connected (the parent's cancel function calls it with the
// parent op, which it holds meanwhile: a cancel that came through a slot
// has no reference of its own, and the child's end may end the parent).
void smp_link_cancel(aa_op *op, smp_link *l, aa_cancel_type type);

// smp_link_stop records a cancel request without passing it to any child
// (a partial cancel that lets the current child finish).
void smp_link_stop(smp_link *l, aa_cancel_type type);

// smp_link_cancelled says whether a cancel was requested (and its type).
bool smp_link_cancelled(smp_link *l, aa_cancel_type *type);

// smp_link_started is called after each child call returned: a cancel
// that came while the child was connecting reaches it now.
void smp_link_started(smp_link *l);

// smp_link_close frees the signal once no cancel is emitting on it (the
// last one out frees it). Call it when no child is connected any more.
void smp_link_close(smp_link *l);

// ---- Start and error paths ----

// smp_start_op allocates a started op with extra memory and takes the
// caller's reference. assoc may be NULL.
int smp_start_op(aa_op **opp, const aa_op_provider *prov,
                 const aa_assoc *assoc);

// smp_bad_call says whether a call's arguments are unusable (AA_EINVAL).
bool smp_bad_call(const void *handle, const void *in, size_t len, aa_op_cb cb,
                  aa_op **opp);

// smp_start_with_input is smp_start_op for a call that keeps a copy of
// its input in the op's extra memory, at offset `at` (the offset of the
// call struct's flexible array).
int smp_start_with_input(aa_op **opp, aa_op_provider *prov,
                         const aa_assoc *assoc, size_t at, const void *in,
                         size_t len);

// smp_hand_over sets the caller's handler and returns the op: the last
// step of a successful call.
void smp_hand_over(aa_op *op, aa_op_cb cb, void *arg, aa_op **opp);

// smp_abandon undoes smp_start_op after a setup error: the op is failed
// (leaving the caller's slot; no handler is set, so none runs) and both
// references are dropped. Returns err.
int smp_abandon(aa_op *op, int err);

// smp_track hands the op to the module: the tracker takes its reference
// and the provider's is dropped. On error (the module is closing) the op
// is abandoned and the error returned.
int smp_track(aa_op *op, smp_tracker *t, smp_node *node);

// smp_track_composed opens the link, then smp_track; abandons on error.
int smp_track_composed(aa_op *op, smp_tracker *t, smp_node *node, smp_link *l);

// smp_untrack_abandon undoes smp_track_composed (l may be NULL) after a
// later setup error, then abandons the op; returns err.
int smp_untrack_abandon(aa_op *op, smp_tracker *t, smp_node *node, smp_link *l,
                        int err);

// smp_finish_like finishes op as child ended: its result copied, its
// error and message, or cancelled.
void smp_finish_like(aa_op *op, aa_op *child);

#endif // AA_SAMPLE_H
