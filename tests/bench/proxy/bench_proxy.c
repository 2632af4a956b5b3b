// bench_proxy.c: benchmarks of the client and server layers (aaproxy as a
// user sees it), each compared with a floor measured in the same run:
//
//   echo      an aaproxy "echo" call (aa_client_call + completion
//             handler) against raw nng req/rep (nng_req0/nng_rep0,
//             contexts + aio) on inproc, ipc and tcp, and against a raw
//             socket ping-pong (AF_UNIX stream, TCP with TCP_NODELAY) on
//             ipc and tcp: p50/p99 round trip with one call outstanding,
//             calls/s with 1, 16 and 256 outstanding, 256 outstanding
//             refilled in corked groups (aa_client_cork), CPU per call.
//   cancel    time inside aa_op_cancel and until the handler ran, for
//             pre-submit and in-flight cancels, with the server responsive
//             and stopped (SIGSTOP), against a direct call of a callback.
//   wire      messages on the wire per operation for each timeline, from
//             the client's and the server's counters.
//   memory    bytes per pending op on each side with 100,000 pending, heap
//             allocations per call in steady state, and the time of
//             aa_client_cancel_all over 100,000 pending ops.
//   bandwidth echo of 64 KiB and 1 MiB payloads, 1 and 4 outstanding, for
//             aaproxy, nng req/rep and the raw socket: bytes/s.
//   conns     1 .. 1,000 clients on one server process: round trip and
//             calls/s with one call outstanding on each, memory per
//             connection on both sides.
//   grpc      the figures of tests/bench/grpc/bench_grpc, if built, next
//             to aaproxy's echo and cancel figures.
//
// For ipc and tcp the servers are separate processes: this program
// re-executed (fork, then exec at once: nng must not run in a forked copy
// of an initialised parent) with --server STACK URL. For inproc they run
// on threads of this process. The server's figures come back through a
// "stats" method whose result is the server's counters.
//
// Rounds: a timed figure is measured in --reps rounds (default 5); in each
// round the stacks run in a random order; tables give the median, and the
// spread (min / median / max) of the per-round p50.
//
// Output: Markdown tables on stdout; with --json, one JSON object with
// every figure on stdout and the tables on stderr (report.c).
//
// Threads: the measuring code runs on the main thread and on the
// completion handlers of the client (the library's threads); a part's
// shared counters are atomics, its end is signalled through a waiter.
// --smoke runs every part briefly, checks the functional results and
// never fails on a time.
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench_proxy.h"

bool smoke;
bool json_mode;
int reps = 5;
double run_secs = 0.3;
int lat_count = 10000;
int cancel_count = 10000;
int mem_count = 100000;
int steady_count = 100000;
int wire_count = 1000;
int failures;
char self_path[512];
const char *only_transport;
const char *only_stack;
uint8_t payload[PAYLOAD];

const char *const transports[3] = {"inproc", "ipc", "tcp"};

bool
skip_transport(const char *t)
{
	return only_transport != NULL && strcmp(only_transport, t) != 0;
}

bool
skip_stack(const char *stack)
{
	return only_stack != NULL && strcmp(only_stack, stack) != 0;
}

// ---- Small helpers ----

uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void
sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	nanosleep(&ts, NULL);
}

void
die(const char *what, int rv)
{
	fprintf(stderr, "bench_proxy: %s: %d (%s)\n", what, rv,
	        aa_strerror(rv));
	exit(1);
}

void
check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "bench_proxy: FAILED: %s\n", what);
		failures++;
	}
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double
pct(uint64_t *v, size_t n, int p)
{
	if (n == 0) {
		return 0;
	}
	qsort(v, n, sizeof(*v), cmp_u64);
	return (double)v[n * (size_t)p / 100] / 1000.0;
}

double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return v[n / 2];
}

spread
spread_of(const double *v, int n)
{
	double w[MAX_REPS];
	memcpy(w, v, (size_t)n * sizeof(w[0]));
	qsort(w, (size_t)n, sizeof(w[0]), cmp_double);
	spread s = {w[0], w[n / 2], w[n - 1]};
	return s;
}

void
shuffle(int *order, int n)
{
	for (int i = 0; i < n; i++) {
		order[i] = i;
	}
	for (int i = n - 1; i > 0; i--) {
		int j = rand() % (i + 1);
		int t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
}

uint64_t
heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();
	return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
}

uint64_t
rss_bytes(void)
{
	unsigned long size = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f != NULL) {
		if (fscanf(f, "%lu %lu", &size, &rss) != 2) {
			rss = 0;
		}
		fclose(f);
	}
	return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t
self_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t
proc_cpu_ns(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return 0;
	}
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');
	unsigned long long ut = 0, st = 0;
	if (p == NULL || sscanf(p + 2,
	                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
	                        "%*u %llu %llu",
	                        &ut, &st) != 2) {
		return 0;
	}
	return (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

// raise_nofile lifts the open-file limit to its hard maximum: the conns
// part holds 1,000 connections (an fd each on both sides, plus nng's).
static void
raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			fprintf(stderr, "bench_proxy: setrlimit: %s\n",
			        strerror(errno));
		}
	}
}

static double
load_average(void)
{
	double l = -1;
	return getloadavg(&l, 1) == 1 ? l : -1;
}

// ---- main ----

#define NPARTS 7
static const char *const part_names[NPARTS] = {
    "echo", "cancel", "wire", "memory", "bandwidth", "conns", "grpc"};
static void (*const part_fns[NPARTS])(void) = {
    bench_echo,      bench_cancel, bench_wire, bench_memory,
    bench_bandwidth, bench_conns,  bench_grpc};

static void
usage(void)
{
	fprintf(stderr,
	        "usage: bench_proxy [--smoke] [--json] [--reps N] [--secs S] "
	        "[--transport inproc|ipc|tcp] [--stack aa|nng|raw] [echo] "
	        "[cancel] [wire] [memory] [bandwidth] [conns] [grpc]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	raise_nofile();
	if (argc == 4 && strcmp(argv[1], "--server") == 0) {
		return server_main(argv[2], argv[3]);
	}
	bool parts[NPARTS] = {false};
	bool any = false;
	for (int i = 1; i < argc; i++) {
		bool known = false;
		for (int k = 0; k < NPARTS; k++) {
			if (strcmp(argv[i], part_names[k]) == 0) {
				parts[k] = any = known = true;
			}
		}
		if (known) {
			continue;
		}
		if (strcmp(argv[i], "--smoke") == 0) {
			smoke = true;
		} else if (strcmp(argv[i], "--json") == 0) {
			json_mode = true;
		} else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
			reps = atoi(argv[++i]);
		} else if (strcmp(argv[i], "--transport") == 0 &&
		           i + 1 < argc) {
			only_transport = argv[++i];
		} else if (strcmp(argv[i], "--stack") == 0 && i + 1 < argc) {
			only_stack = argv[++i];
		} else if (strcmp(argv[i], "--secs") == 0 && i + 1 < argc) {
			run_secs = atof(argv[++i]);
		} else {
			fprintf(stderr, "bench_proxy: unknown argument: %s\n",
			        argv[i]);
			usage();
		}
	}
	if (!any) {
		for (int k = 0; k < NPARTS; k++) {
			parts[k] = true;
		}
	}
	if (smoke) {
		reps = 1;
		run_secs = 0.05;
		lat_count = 500;
		cancel_count = 300;
		mem_count = 3000;
		steady_count = 3000;
		wire_count = 100;
	}
	if (reps < 1 || reps > MAX_REPS) {
		fprintf(stderr, "bench_proxy: --reps must be 1 .. %d\n",
		        MAX_REPS);
		usage();
	}
	if (!(run_secs > 0 && run_secs <= 60)) {
		fprintf(stderr, "bench_proxy: --secs must be in (0, 60]\n");
		usage();
	}
	if (only_transport != NULL && strcmp(only_transport, "inproc") != 0 &&
	    strcmp(only_transport, "ipc") != 0 &&
	    strcmp(only_transport, "tcp") != 0) {
		fprintf(stderr, "bench_proxy: --transport: inproc, ipc or "
		                "tcp\n");
		usage();
	}
	if (only_stack != NULL && strcmp(only_stack, "aa") != 0 &&
	    strcmp(only_stack, "nng") != 0 && strcmp(only_stack, "raw") != 0) {
		fprintf(stderr, "bench_proxy: --stack: aa, nng or raw\n");
		usage();
	}
	ssize_t n =
	    readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (n <= 0) {
		die("readlink /proc/self/exe", AA_ESYSTEM);
	}
	self_path[n] = '\0';
	srand((unsigned)now_ns());
	memset(payload, 'x', sizeof(payload));
	atexit(kill_children);
	signal(SIGPIPE, SIG_IGN);

	json_num(1, "format");
	json_num(smoke, "smoke");
	json_num(reps, "reps");
	json_num(run_secs, "secs");
	json_num(load_average(), "load_average.start");
	uint64_t t0 = now_ns();
	for (int k = 0; k < NPARTS; k++) {
		if (parts[k]) {
			part_fns[k]();
		}
	}
	// Every client and in-process server was freed: no library object
	// may be left (a last reference may drop on a library thread just
	// after a free returned, hence the short wait).
	for (int i = 0; i < 2000 && aa_live_total() != 0; i++) {
		sleep_us(1000);
	}
	check(aa_live_total() == 0, "no library object left alive");
	double secs = (double)(now_ns() - t0) / 1e9;
	json_num(load_average(), "load_average.end");
	json_num(secs, "seconds");
	json_num(failures, "functional_failures");
	if (json_mode) {
		json_print();
	}
	fprintf(stderr, "bench_proxy: %.1f s, %d functional failure(s)\n",
	        secs, failures);
	return failures == 0 ? 0 : 1;
}
