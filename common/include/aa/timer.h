// aa/timer.h: a timer queue: one thread that runs each armed timer's
// function when its delay has passed. Timers are embedded by their owners
// (no allocation per start), like aa_work. Deadlines of the client and
// server layers, heartbeats and timed operations (the demo's "sleep") use
// it.
//
// A timer function runs on the queue's thread, must be short and must not
// block. aa_timer_cancel is Envoy's abort rule again: afterwards the
// function is not running (unless cancel is called from inside it) and
// will not run.
#ifndef AA_TIMER_H
#define AA_TIMER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aa_timer_queue aa_timer_queue;
typedef void (*aa_timer_fn)(void *arg);

// An embeddable timer; its fields are private to the library.
typedef struct aa_timer {
	uint64_t when_us_;
	size_t index_;
	aa_timer_fn fn_;
	void *arg_;
	aa_timer_queue *q_;
	int state_;
} aa_timer;

// aa_clock_us returns a monotonic clock in microseconds.
uint64_t aa_clock_us(void);

// aa_timer_queue_alloc starts a timer queue and its thread.
int aa_timer_queue_alloc(aa_timer_queue **qp);

// aa_timer_queue_free stops the thread (waiting for a running timer
// function) and frees the queue; armed timers are dropped unrun. Must not
// be called from a timer function of this queue (AA_EDEADLK is reported by
// aborting, since free cannot fail).
void aa_timer_queue_free(aa_timer_queue *q);

// aa_timer_init prepares an idle timer.
void aa_timer_init(aa_timer *t, aa_timer_fn fn, void *arg);

// aa_timer_start arms t to run after delay_ms: 0, or AA_EBUSY when t is
// armed already, AA_ECLOSED when q is being freed, AA_ECANCELED when called
// from t's own function while a cancel of t waits for that function. A timer
// stays with the queue of its first start (re-init it with aa_timer_init to
// move it).
int aa_timer_start(aa_timer *t, aa_timer_queue *q, uint64_t delay_ms);

// aa_timer_cancel disarms t: 0 when it was armed (its function will not
// run again), AA_EALREADY when it was not. Either way, if its function is
// running on the queue's thread, cancel waits until it has returned
// (unless called from inside it).
int aa_timer_cancel(aa_timer *t);

#ifdef __cplusplus
}
#endif
#endif // AA_TIMER_H
