// testutil.h: helpers shared by the Criterion suites: gates to force
// interleavings without sleeps, threads, and the live-object check that
// every suite's .fini runs.
#ifndef AA_TESTUTIL_H
#define AA_TESTUTIL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include <criterion/criterion.h>

#include <aa/aa.h>

// A gate: a one-shot event. gate_open wakes every gate_wait, then and
// later. Used in pairs ("reached" / "release") to hold a thread at a point.
typedef struct gate {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	bool open;
} gate;

void gate_init(gate *g);
void gate_fini(gate *g);
void gate_open(gate *g);
void gate_wait(gate *g);
bool gate_is_open(gate *g);
// gate_wait_ms waits at most ms for g: whether it opened. Only for proving
// that something does NOT happen (a call that must stay blocked); never
// to wait for a result.
bool gate_wait_ms(gate *g, int ms);

// A hold point: a named checkpoint (docs/checkpoints.md) that stops the
// thread reaching it once, after hold_arm: it records the subject, opens
// `reached`, and waits for `release`.
typedef struct hold_point {
	const char *name;
	atomic_int armed;
	void *subject;
	gate reached;
	gate release;
} hold_point;

// hold_arm makes h stop the next thread that reaches its checkpoint.
void hold_arm(hold_point *h);

// hold_points_hit is called from a checkpoint function: it stops the
// thread at the armed point of pts[0..n) named name, if any.
void hold_points_hit(hold_point *const *pts, size_t n, const char *name,
                     void *subject);

// A thread running fn(arg), joined by thr_join.
typedef struct thr {
	pthread_t t;
} thr;

void thr_start(thr *t, void *(*fn)(void *), void *arg);
void thr_join(thr *t);

// make_test_certs writes into dir, with the openssl command: ca.pem (a
// test CA), server.pem + server.key (signed by it, for localhost and
// 127.0.0.1) and other-ca.pem (an unrelated CA, for verification failures).
void make_test_certs(const char *dir);

// test_note prints an informative line on stderr. Not cr_log_info:
// Criterion 2.4.1's runner leaks the log messages it collects, which
// LeakSanitizer then reports against the whole suite.
#define test_note(...)                                                        \
	do {                                                                  \
		fprintf(stderr, "[note] " __VA_ARGS__);                       \
		fputc('\n', stderr);                                          \
	} while (0)

// aa_test_check_live aborts (failing the binary under CTest) when any
// library object is still alive: every suite's .fini calls it.
void aa_test_check_live(void);

#endif // AA_TESTUTIL_H
