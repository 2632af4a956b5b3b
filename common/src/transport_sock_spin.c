// transport_sock_spin.c: how an idle socket loop waits for its next
// events (transport_sock.c runs the loops).
//
// Design notes.
//
// * Idle loops spin only where it pays (as the inproc ends do): a loop
//   remembers which of its last 16 idle gaps (from running out of events
//   to the next one) were short (under SPIN_MAX_US); while at least half
//   were, it polls epoll with a zero timeout for up to SPIN_MAX_US before
//   it sleeps, so a reply that comes within microseconds is taken without
//   a wake-up (a wake-up costs 20-50 us on these VMs: docs/PERFORMANCE.md,
//   "Socket backend"). A count, not an average: the heartbeats of a
//   thousand idle clients give a busy server loop a long gap now and then,
//   which must not switch its spinning off. A loop whose gaps are long
//   sleeps at once, but every
//   SPIN_PROBE-th sleep spins the full SPIN_MAX_US instead: two peers that
//   both sleep see long gaps (each other's wake-ups) and would never find
//   out that spinning pays. Spinning takes one of the process's spinner
//   slots (aai_tp_spin_take, shared with the inproc ends): at most online
//   CPUs - 1 spin at once, none on one CPU; a loop that finds none free
//   sleeps. A 1,000-connection client process thus has at most one
//   spinning loop on two CPUs.
// * Loop thread only: the gap history and the sleep count live in the
//   loop and only its thread touches them; the spin counters are atomics
//   (a test hook reads them).
#include <sched.h>
#include <sys/epoll.h>

#include "transport_sock.h"

#define SPIN_MAX_US 50u // the longest spin, and the gap it pays up to
#define SPIN_PROBE  16u // every SPIN_PROBE-th sleep is a full spin

static atomic_uint_fast64_t n_spins, n_spin_hits;

void
aai_sock_spins(uint64_t *spins, uint64_t *hits)
{
	*spins = atomic_load(&n_spins);
	*hits = atomic_load(&n_spin_hits);
}

// aai_sock_loop_wait waits for events as epoll_wait(timeout) does, spinning
// first where it pays (see the notes). Loop thread only.
int
aai_sock_loop_wait(sloop *lp, struct epoll_event *evs, int timeout)
{
	uint64_t t0 = aa_clock_us();
	uint64_t budget = 0;
	if (__builtin_popcount(lp->short_gaps) >= 8 ||
	    ++lp->sleeps % SPIN_PROBE == 0) {
		budget = SPIN_MAX_US;
	}
	int n = 0;
	if (budget > 0 && aai_tp_spin_take()) {
		do {
			n = epoll_wait(lp->epfd, evs, LOOP_EVENTS, 0);
			if (n == 0) {
				// A thread of this CPU that has work
				// (a caller woken by a handler) goes
				// first: spinning must not delay it.
				sched_yield();
			}
		} while (n == 0 && !atomic_load(&lp->quit) &&
		         aa_clock_us() - t0 < budget);
		aai_tp_spin_release();
		atomic_fetch_add(&n_spins, 1);
		if (n > 0) {
			atomic_fetch_add(&n_spin_hits, 1);
		}
	}
	if (n == 0 && !atomic_load(&lp->quit)) {
		n = epoll_wait(lp->epfd, evs, LOOP_EVENTS, timeout);
	}
	if (n > 0) {
		bool is_short = aa_clock_us() - t0 < SPIN_MAX_US;
		lp->short_gaps = (uint16_t)(lp->short_gaps << 1 | is_short);
	}
	return n;
}
