#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

void
gate_init(gate *g)
{
	pthread_mutex_init(&g->mtx, NULL);
	pthread_cond_init(&g->cv, NULL);
	g->open = false;
}

void
gate_fini(gate *g)
{
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mtx);
}

void
gate_open(gate *g)
{
	pthread_mutex_lock(&g->mtx);
	g->open = true;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mtx);
}

bool
gate_wait_ms(gate *g, int ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&g->mtx);
	while (!g->open) {
		if (pthread_cond_timedwait(&g->cv, &g->mtx, &ts) != 0) {
			break;
		}
	}
	bool open = g->open;
	pthread_mutex_unlock(&g->mtx);
	return open;
}

void
gate_wait(gate *g)
{
	pthread_mutex_lock(&g->mtx);
	while (!g->open) {
		pthread_cond_wait(&g->cv, &g->mtx);
	}
	pthread_mutex_unlock(&g->mtx);
}

bool
gate_is_open(gate *g)
{
	pthread_mutex_lock(&g->mtx);
	bool open = g->open;
	pthread_mutex_unlock(&g->mtx);
	return open;
}

void
thr_start(thr *t, void *(*fn)(void *), void *arg)
{
	cr_assert_eq(pthread_create(&t->t, NULL, fn, arg), 0);
}

void
thr_join(thr *t)
{
	cr_assert_eq(pthread_join(t->t, NULL), 0);
}

static void
sh(const char *dir, const char *cmd)
{
	char full[1024];
	snprintf(full, sizeof(full), "cd %s && %s >/dev/null 2>&1", dir, cmd);
	cr_assert_eq(system(full), 0, "failed: %s", cmd);
}

void
make_test_certs(const char *d)
{
	sh(d, "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key "
	      "-out ca.pem -days 2 -subj /CN=aa-test-ca");
	sh(d, "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key "
	      "-out other-ca.pem -days 2 -subj /CN=aa-other-ca");
	sh(d, "openssl req -newkey rsa:2048 -nodes -keyout server.key "
	      "-out server.csr -subj /CN=localhost");
	sh(d, "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > "
	      "ext.cnf");
	sh(d, "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
	      "-CAcreateserial -out server.pem -days 2 -extfile ext.cnf");
}

#if defined(__SANITIZE_ADDRESS__)
// LeakSanitizer stays on in the test processes, where aaproxy runs. It is
// off in Criterion's runner process, which runs none of our code and whose
// own allocations (libcriterion 2.4.1) sometimes outlive it: 96 bytes
// reported from libcriterion.so.3 after some runs. Criterion starts its
// test processes with argv[0] "boxfort-worker".
int __lsan_is_turned_off(void);
int
__lsan_is_turned_off(void)
{
	char argv0[64] = {0};
	FILE *f = fopen("/proc/self/cmdline", "r");
	if (f == NULL) {
		return 0;
	}
	size_t n = fread(argv0, 1, sizeof(argv0) - 1, f);
	fclose(f);
	argv0[n] = '\0';
	return strcmp(argv0, "boxfort-worker") != 0;
}
#endif

// Criterion 2.4 only prints a failed assertion made in .fini and still
// counts the test as passing; an abort there makes the binary exit 1,
// which CTest reports as a failure. So the leak check aborts.
void
aa_test_check_live(void)
{
	static const char *names[AA_LIVE_NKINDS] = {
	    "op",       "executor", "work",   "signal",
	    "recycler", "client",   "server", "other"};
	bool leaked = false;
	for (int k = 0; k < AA_LIVE_NKINDS; k++) {
		long long n = (long long)aa_live((aa_live_kind)k);
		if (n != 0) {
			fprintf(stderr, "LEAK: %lld live %s object(s)\n", n,
			        names[k]);
			leaked = true;
		}
	}
	if (leaked) {
		abort();
	}
}

void
hold_arm(hold_point *h)
{
	gate_init(&h->reached);
	gate_init(&h->release);
	atomic_store(&h->armed, 1);
}

void
hold_points_hit(hold_point *const *pts, size_t n, const char *name,
                void *subject)
{
	for (size_t i = 0; i < n; i++) {
		hold_point *h = pts[i];
		if (strcmp(name, h->name) == 0 &&
		    atomic_exchange(&h->armed, 0) == 1) {
			h->subject = subject;
			gate_open(&h->reached);
			gate_wait(&h->release);
		}
	}
}
