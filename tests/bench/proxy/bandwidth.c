// bandwidth.c: the bandwidth part. Echo of 64 KiB and 1 MiB payloads with
// 1 and 4 calls outstanding, over inproc, ipc and tcp, for aaproxy (an
// "echo" call; client and server with max_msg_size BIG_MSG), raw nng
// req/rep (receive limit BIG_MSG on both sockets) and the raw socket
// (raw.c; ipc and tcp only). The figure is payload bytes echoed per
// second, which is the rate each way; the floor is the raw socket's.
//
// Each case runs for --secs after a warm-up of one window (smoke: a fixed
// count of calls, so that a slow sanitizer build still ends soon). In each
// of the --reps rounds the stacks run in a random order; the tables give
// medians. Servers live for the whole part (one per stack and transport);
// the aaproxy client is opened once per transport, the nng client and the
// raw connection once per case. Calls run from completion handlers as in
// echo.c (pipeline); the main thread only waits.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_proxy.h"

enum { BW_AA, BW_NNG, BW_RAW, BW_STACKS };
static const char *const bw_keys[BW_STACKS] = {"aa", "nng", "raw"};
static const char *const bw_servers[BW_STACKS] = {"aabig", "nngbig", "raw"};
static const char *const bw_names[BW_STACKS] = {"aaproxy echo", "nng req/rep",
                                                "raw socket"};

#define BW_SIZES   2
#define BW_WINDOWS 2
static const size_t bw_sizes[BW_SIZES] = {64 << 10, 1 << 20};
static const char *const bw_size_keys[BW_SIZES] = {"64k", "1m"};
static const int bw_windows[BW_WINDOWS] = {1, 4};

static long
bw_limit(int window)
{
	return smoke ? 2 * window : 0;
}

// aa_bulk_run echoes size-byte calls over c with window outstanding;
// messages per second.
static double
aa_bulk_run(aa_client *c, const uint8_t *data, size_t size, int window)
{
	pipeline p;
	pl_init(&p, c); // warm-up
	p.data = data;
	p.size = size;
	p.limit = window;
	pl_run(&p, window);
	waiter_fini(&p.w);
	pl_init(&p, c);
	p.data = data;
	p.size = size;
	uint64_t t0 = now_ns();
	if (bw_limit(window) > 0) {
		p.limit = bw_limit(window);
	} else {
		p.deadline = t0 + (uint64_t)(run_secs * 1e9);
	}
	pl_run(&p, window);
	uint64_t t1 = now_ns();
	waiter_fini(&p.w);
	return (double)atomic_load(&p.done) / ((t1 - t0) / 1e9);
}

static double
raw_bulk_run(const char *url, size_t size, int window)
{
	int fd = raw_dial(url);
	raw_bandwidth(fd, size, window, 0, window); // warm-up
	close(fd);
	fd = raw_dial(url);
	uint64_t t0 = now_ns();
	long n = raw_bandwidth(fd, size, window, run_secs, bw_limit(window));
	uint64_t t1 = now_ns();
	close(fd);
	return (double)n / ((t1 - t0) / 1e9);
}

static bool
bw_runs(int t, int k)
{
	return !skip_stack(bw_keys[k]) && !(k == BW_RAW && t == 0);
}

void
bench_bandwidth(void)
{
	// bytes/s per transport, stack, size, window and round
	static double bps[3][BW_STACKS][BW_SIZES][BW_WINDOWS][MAX_REPS];
	static double med[3][BW_STACKS][BW_SIZES][BW_WINDOWS];
	uint8_t *data = malloc(bw_sizes[BW_SIZES - 1]);
	if (data == NULL) {
		die("malloc", AA_ENOMEM);
	}
	memset(data, 'b', bw_sizes[BW_SIZES - 1]);

	for (int t = 0; t < 3; t++) {
		if (skip_transport(transports[t])) {
			continue;
		}
		server_end se[BW_STACKS];
		aa_client *c = NULL;
		for (int k = 0; k < BW_STACKS; k++) {
			if (bw_runs(t, k)) {
				server_start(&se[k], transports[t],
				             bw_servers[k]);
			}
		}
		if (bw_runs(t, BW_AA)) {
			c = client_open_max(se[BW_AA].url, BIG_MSG);
		}
		for (int r = 0; r < reps; r++) {
			int order[BW_STACKS];
			shuffle(order, BW_STACKS);
			for (int i = 0; i < BW_STACKS; i++) {
				int k = order[i];
				if (!bw_runs(t, k)) {
					continue;
				}
				for (int z = 0; z < BW_SIZES; z++) {
					for (int w = 0; w < BW_WINDOWS; w++) {
						size_t sz = bw_sizes[z];
						int win = bw_windows[w];
						double mps;
						if (k == BW_AA) {
							mps = aa_bulk_run(
							    c, data, sz, win);
						} else if (k == BW_NNG) {
							mps = nng_bulk_run(
							    se[k].url, data,
							    sz, win, run_secs,
							    bw_limit(win));
						} else {
							mps = raw_bulk_run(
							    se[k].url, sz,
							    win);
						}
						bps[t][k][z][w][r] =
						    mps * (double)sz;
					}
				}
				fprintf(stderr,
				        "bandwidth round %d %-6s %-3s: 64k "
				        "%.0f %.0f 1m %.0f %.0f MB/s\n",
				        r, transports[t], bw_keys[k],
				        bps[t][k][0][0][r] / 1e6,
				        bps[t][k][0][1][r] / 1e6,
				        bps[t][k][1][0][r] / 1e6,
				        bps[t][k][1][1][r] / 1e6);
			}
		}
		if (c != NULL) {
			aa_client_free(c);
		}
		for (int k = 0; k < BW_STACKS; k++) {
			if (!bw_runs(t, k)) {
				continue;
			}
			server_finish(&se[k]);
			for (int z = 0; z < BW_SIZES; z++) {
				for (int w = 0; w < BW_WINDOWS; w++) {
					med[t][k][z][w] =
					    median(bps[t][k][z][w], reps);
				}
			}
		}
	}
	free(data);

	md("\n## Bandwidth: echo of large payloads\n\nPayload bytes echoed "
	   "per second (the rate each way), MB/s (10^6 bytes), with 1 and 4 "
	   "calls outstanding; %s; medians of %d rounds, order shuffled in "
	   "each; \"of raw\": the share of the raw socket's rate on the same "
	   "transport, size and window (target >= 50%%).\n\n",
	   smoke ? "a few calls per case (smoke)" : "each case timed", reps);
	md("| transport | stack | 64 KiB x1 | 64 KiB x4 | 1 MiB x1 | 1 MiB x4 "
	   "|\n| --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < 3; t++) {
		for (int k = 0; k < BW_STACKS; k++) {
			if (skip_transport(transports[t]) || !bw_runs(t, k)) {
				continue;
			}
			md("| %s | %s", transports[t], bw_names[k]);
			for (int z = 0; z < BW_SIZES; z++) {
				for (int w = 0; w < BW_WINDOWS; w++) {
					double v = med[t][k][z][w];
					double raw = bw_runs(t, BW_RAW)
					                 ? med[t][BW_RAW][z][w]
					                 : NAN;
					json_num(v,
					         "bandwidth.%s.%s.%s.w%d."
					         "bytes_per_s",
					         transports[t], bw_keys[k],
					         bw_size_keys[z],
					         bw_windows[w]);
					if (k != BW_RAW && isfinite(raw)) {
						json_num(
						    v / raw,
						    "bandwidth.%s.%s.%s.w%d."
						    "of_raw",
						    transports[t], bw_keys[k],
						    bw_size_keys[z],
						    bw_windows[w]);
						md(" | %.0f (%.0f %% of raw)",
						   v / 1e6, 100 * v / raw);
					} else {
						md(" | %.0f", v / 1e6);
					}
				}
			}
			md(" |\n");
		}
	}
	md_flush();
}
