// bench_proxy.h: what the parts of bench_proxy share (internal to the
// program; see bench_proxy.c for the overview and each part's file for its
// notes).
//
// Files: bench_proxy.c (options, helpers, main), report.c (Markdown and
// --json output), servers.c (the servers, their processes and the client
// helpers), echo.c, cancel.c, wire.c, memory.c, raw.c (the raw socket
// floor), bandwidth.c, conns.c and grpc.c (one part each).
#ifndef AA_BENCH_PROXY_H
#define AA_BENCH_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <aa/client.h>
#include <aa/errors.h>
#include <aa/server.h>

#include "../nng_echo.h"

#define PAYLOAD     64
#define MAX_OUT     256
#define SRV_PENDING 250000
#define MAX_HELD    (1 << 17)
#define MAX_REPS    16
// Largest message of the bandwidth part: a 1 MiB payload and its framing.
#define BIG_MSG ((size_t)2 << 20)

// ---- Options (bench_proxy.c) ----

extern bool smoke;
extern bool json_mode;
extern int reps;
extern double run_secs;
extern int lat_count;
extern int cancel_count;
extern int mem_count;
extern int steady_count;
extern int wire_count;
extern int failures;
extern char self_path[512];
extern const char *only_transport; // --transport: run just this one
extern const char *only_stack;     // --stack aa|nng|raw: echo of one
extern uint8_t payload[PAYLOAD];

extern const char *const transports[3]; // inproc, ipc, tcp

// ---- Helpers (bench_proxy.c) ----

bool skip_transport(const char *t);
bool skip_stack(const char *stack);
uint64_t now_ns(void);
void sleep_us(long us);
void die(const char *what, int rv) __attribute__((noreturn));
// check records a functional failure: the smoke test fails on these only.
void check(bool ok, const char *what);
// pct returns the p-th percentile of v (sorted in place), in µs.
double pct(uint64_t *v, size_t n, int p);
double median(double *v, int n);
// spread: min, median and max of n per-round figures.
typedef struct spread {
	double min, med, max;
} spread;
spread spread_of(const double *v, int n);
// shuffle puts 0 .. n-1 in a random order (the stacks of a round).
void shuffle(int *order, int n);
// heap_bytes returns the bytes malloc has handed out and not taken back.
uint64_t heap_bytes(void);
uint64_t rss_bytes(void);
uint64_t self_cpu_ns(void);
// proc_cpu_ns returns the user + system time of process pid (clock
// ticks: coarse, enough over a run of tenths of a second).
uint64_t proc_cpu_ns(pid_t pid);

// ---- Output (report.c) ----

// md prints Markdown: to stdout, or to stderr with --json.
void md(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void md_flush(void);
// json_num records one figure under a key made from fmt ("echo.ipc.aa.
// p50_us"); json_str a string; json_raw a JSON value as text.
void json_num(double v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void json_str(const char *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void json_raw(const char *text, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
// json_print writes the one object to stdout.
void json_print(void);

// ---- Servers and client helpers (servers.c) ----

// What the "stats" method returns.
typedef struct srv_report {
	aa_server_stats st;
	uint64_t heap_allocs;
	uint64_t heap_bytes;
	uint64_t rss_bytes;
} srv_report;

aa_server *aa_server_up(const char *url, size_t max_msg, int *port);
void aa_server_down(aa_server *s);
// server_main is the server process (--server stack url).
int server_main(const char *stack, const char *url);
void kill_children(void);

// A server of one stack on one transport: a process, or in this process.
// Stacks: "aa", "nng", "raw" (a process only), and "aabig", "nngbig"
// that accept messages up to BIG_MSG.
typedef struct server_end {
	char url[160];
	pid_t pid;
	aa_server *aa;
	nng_echo_server *nng;
} server_end;

void server_start(server_end *e, const char *t, const char *stack);
void server_finish(server_end *e);

aa_client *client_open(const char *url);
aa_client *client_open_max(const char *url, size_t max_msg);

typedef struct waiter {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	bool done;
} waiter;

void waiter_init(waiter *w);
void waiter_fini(waiter *w);
void waiter_signal(waiter *w);
// waiter_wait waits at most secs seconds; false on a timeout.
bool waiter_wait(waiter *w, int secs);

typedef struct query {
	waiter w;
	srv_report rep;
	int err;
} query;

void query_done(aa_op *op, void *arg);
// server_query returns the server's counters; its reply comes after
// every Start sent before it was handled (frames are handled in order).
void server_query(aa_client *c, srv_report *rep);

// client_pending returns c's pending count once it is at most want, or
// whatever it is after 2 s: an op's handler runs before the client takes
// the op out of its table, so a count read right after the last handler
// returned may still include that op for a moment.
uint64_t client_pending(aa_client *c, uint64_t want);

// Settle handlers count here (cancel, wire).
extern atomic_long settled;
// wait_settled waits until n settle handlers ran (at most 30 s).
bool wait_settled(long n);

// ---- Echo pipelines (echo.c) ----

typedef struct pipeline {
	aa_client *c;
	waiter w;
	const uint8_t *data; // what each call sends (payload by default)
	size_t size;
	uint64_t deadline; // 0: none
	long limit;        // calls to issue; 0: none
	int group;         // > 0: refill in corked groups of this size
	atomic_long issued;
	atomic_long done;
	atomic_long outstanding;
	atomic_int refill;
	atomic_int errors;
	uint64_t *lat; // latency mode: one outstanding
	size_t nlat;
	size_t latmax;
	uint64_t t_sent;
} pipeline;

void pl_init(pipeline *p, aa_client *c);
void pl_start(pipeline *p, int window);
void pl_wait(pipeline *p);
void pl_run(pipeline *p, int window);

// nng_bulk_run echoes size-byte messages of data over raw nng req/rep on
// url with window outstanding, for secs (or limit messages if limit > 0),
// after a warm-up; returns the messages echoed per second.
double nng_bulk_run(const char *url, const uint8_t *data, size_t size,
                    int window, double secs, long limit);

// Figures kept for the grpc part's table (NAN: not measured in this run).
extern double aa_echo_p50[3], aa_echo_p99[3];
extern double aa_cancel_hd_p50[3], aa_cancel_hd_p99[3];
extern double aa_cancel_in_p50[3];

void bench_echo(void);
void bench_cancel(void);
void bench_wire(void);
void bench_memory(void);
void bench_bandwidth(void);
void bench_conns(void);
void bench_grpc(void);

// ---- Raw socket floor (raw.c) ----

// raw_server_main is the raw echo server process (--server raw url).
int raw_server_main(const char *url);
// raw_dial connects to a raw echo server (ipc:// or tcp:// url): an fd.
int raw_dial(const char *url);
// raw_call sends one frame of len bytes and reads the echo into buf.
int raw_call(int fd, const uint8_t *data, uint8_t *buf, size_t len);
// raw_bandwidth echoes size-byte frames with window outstanding for
// secs (or limit frames when limit > 0); returns the frames echoed.
long raw_bandwidth(int fd, size_t size, int window, double secs, long limit);

#endif // AA_BENCH_PROXY_H
