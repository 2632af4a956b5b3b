// memory.c: the memory part. A fresh server process and client; 100,000
// "hold" calls in corked batches of 1,000 (each batch followed by a stats
// round trip so that the send buffers stay small); heap in use
// (mallinfo2) and RSS before and after on each side; then
// aa_client_cancel_all over them, timed, and the time until every late
// Complete arrived; then heap allocations per call in steady state.
// Everything runs on the main thread except the completion handlers.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bench_proxy.h"

void
bench_memory(void)
{
	server_end se;
	server_start(&se, "ipc", "aa");
	int n = mem_count;
	aa_op **ops = calloc((size_t)n, sizeof(aa_op *));
	srv_report s0, s1, s2, s3, s4;

	aa_client *c = client_open(se.url);
	server_query(c, &s0);
	server_query(c, &s0);
	uint64_t h0 = heap_bytes(), r0 = rss_bytes(), a0 = aa_heap_allocs();
	// Corked batches of 1000, each followed by a query, so that the
	// send buffers stay small.
	for (int i = 0; i < n; i++) {
		if (i % 1000 == 0) {
			aa_client_cork(c);
		}
		int rv = aa_client_call(&ops[i], c, "hold", payload, PAYLOAD,
		                        NULL, NULL);
		if (rv != 0) {
			die("aa_client_call hold (memory)", rv);
		}
		if (i % 1000 == 999 || i == n - 1) {
			aa_client_uncork(c);
			server_query(c, &s1);
		}
	}
	uint64_t h1 = heap_bytes(), r1 = rss_bytes(), a1 = aa_heap_allocs();
	server_query(c, &s1);
	aa_client_stats cs;
	check(client_pending(c, (uint64_t)n) == (uint64_t)n,
	      "client: all pending");
	// The stats op itself may or may not count as pending yet.
	check(s1.st.pending - (uint64_t)n <= 1, "server: all pending");

	uint64_t t0 = now_ns();
	int nc = aa_client_cancel_all(c, AA_CANCEL_TERMINAL);
	uint64_t t1 = now_ns();
	check(nc == n, "cancel_all cancelled every pending op");
	for (int i = 0; i < n; i++) {
		check(aa_op_status(ops[i]) == AA_CANCELED, "op CANCELED");
		aa_op_unref(ops[i]);
	}
	// The late Completes settle them.
	for (int i = 0; i < 300000; i++) {
		aa_client_stats_get(c, &cs);
		if (cs.pending == 0) {
			break;
		}
		sleep_us(100);
	}
	uint64_t t2 = now_ns();
	check(cs.pending == 0, "every late Complete arrived");
	server_query(c, &s2);
	check(s2.st.pending <= 1, "server: every real op ended");

	// Steady state: echo with 16 outstanding, after a warm-up.
	pipeline p;
	pl_init(&p, c);
	p.limit = 20000;
	pl_run(&p, 16);
	waiter_fini(&p.w);
	server_query(c, &s3);
	uint64_t e0 = aa_heap_allocs();
	pl_init(&p, c);
	p.limit = steady_count;
	pl_run(&p, 16);
	waiter_fini(&p.w);
	uint64_t e1 = aa_heap_allocs();
	server_query(c, &s4);
	aa_client_free(c);
	server_finish(&se);
	free(ops);

	json_num(n, "memory.pending_ops");
	json_num(((double)h1 - (double)h0) / n, "memory.client.heap_per_op");
	json_num(((double)s1.heap_bytes - (double)s0.heap_bytes) / n,
	         "memory.server.heap_per_op");
	json_num(((double)r1 - (double)r0) / n, "memory.client.rss_per_op");
	json_num(((double)s1.rss_bytes - (double)s0.rss_bytes) / n,
	         "memory.server.rss_per_op");
	json_num((double)(a1 - a0), "memory.client.allocs_making");
	json_num((double)(s1.heap_allocs - s0.heap_allocs),
	         "memory.server.allocs_making");
	json_num((double)(e1 - e0) / steady_count,
	         "memory.client.allocs_per_call_steady");
	json_num((double)(s4.heap_allocs - s3.heap_allocs) / steady_count,
	         "memory.server.allocs_per_call_steady");
	json_num((t1 - t0) / 1e6, "memory.cancel_all_ms");
	json_num((t2 - t0) / 1e6, "memory.cancel_all_settled_ms");
	md("\n## Memory (ipc, server in its own process)\n\n");
	md("| figure | client | server |\n| --- | --- | --- |\n");
	md("| heap bytes per pending op (mallinfo2, %d pending) | %.0f | "
	   "%.0f |\n",
	   n, (double)(h1 - h0) / n,
	   (double)(s1.heap_bytes - s0.heap_bytes) / n);
	md("| RSS bytes per pending op (/proc/self/statm) | %.0f | %.0f "
	   "|\n",
	   (double)(r1 - r0) / n, (double)(s1.rss_bytes - s0.rss_bytes) / n);
	md("| heap allocations while making them (aa_heap_allocs) | "
	   "%llu | %llu |\n",
	   (unsigned long long)(a1 - a0),
	   (unsigned long long)(s1.heap_allocs - s0.heap_allocs));
	md("| heap allocations per call, steady state (%d echo calls, 16 "
	   "outstanding) | %.4f | %.4f |\n",
	   steady_count, (double)(e1 - e0) / steady_count,
	   (double)(s4.heap_allocs - s3.heap_allocs) / steady_count);
	md("| aa_client_cancel_all of %d pending: time inside | %.1f ms "
	   "| - |\n",
	   n, (t1 - t0) / 1e6);
	md("| ... until every late Complete arrived | %.1f ms | - |\n",
	   (t2 - t0) / 1e6);
	md_flush();
}
