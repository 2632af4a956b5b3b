// wire.c: the wire part. Messages on the wire per operation for each
// timeline (normal, pre-submit cancel, in-flight cancel, in-flight cancel
// that the server completes anyway), from the deltas of aa_client_stats
// and of the server's counters (the "stats" method; its own messages are
// measured and taken out). Settle handlers count on the client's threads
// into atomics; the main thread waits for them before reading.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bench_proxy.h"

typedef struct wire_delta {
	double start, cancel, complete, progress;
	double srv_started, srv_cancels, srv_replies, srv_wasted;
	long settled_completed; // settlements "completed"
} wire_delta;

static atomic_long settle_completed;

static void
ignore_done(aa_op *op, void *arg)
{
}

static void
settle_kind(aa_op *op, void *arg)
{
	if (aa_op_settlement(op) == AA_SETTLE_COMPLETED) {
		atomic_fetch_add(&settle_completed, 1);
	}
	atomic_fetch_add(&settled, 1);
}

typedef enum wcase {
	WC_NORMAL,
	WC_PRE_SUBMIT,
	WC_IN_FLIGHT,
	WC_ANYWAY,
} wcase;

static const char *const wcase_names[4] = {
    "normal (echo completes)",
    "pre-submit cancel",
    "in-flight cancel (server cancels)",
    "in-flight cancel, server completes anyway",
};

static void
wire_case(aa_client *c, wcase w, int k, wire_delta *d)
{
	aa_op **ops = calloc((size_t)k, sizeof(aa_op *));
	aa_client_stats c0, c1;
	srv_report s0, s1, sq0, sq1;
	// What two stats queries in a row add to the server's counters.
	server_query(c, &sq0);
	server_query(c, &sq1);
	server_query(c, &s0);
	aa_client_stats_get(c, &c0);
	atomic_store(&settled, 0);
	atomic_store(&settle_completed, 0);
	const char *method = w == WC_NORMAL   ? "echo"
	                     : w == WC_ANYWAY ? "stubborn"
	                                      : "hold";
	if (w == WC_PRE_SUBMIT) {
		aa_client_cork(c);
	}
	for (int i = 0; i < k; i++) {
		int rv = aa_client_call(&ops[i], c, method, payload, PAYLOAD,
		                        NULL, NULL);
		if (rv != 0) {
			die("aa_client_call", rv);
		}
		// The settle handler runs after the completion handler.
		aa_op_set_handler(ops[i], ignore_done, NULL);
		aa_op_set_settle_handler(ops[i], settle_kind, NULL);
		if (w != WC_NORMAL) {
			check(aa_op_cancel(ops[i], AA_CANCEL_TERMINAL) == 0,
			      "cancel");
		}
	}
	if (w == WC_PRE_SUBMIT) {
		aa_client_uncork(c);
	}
	if (w == WC_ANYWAY) {
		// "release" completes every stubborn op; its own messages
		// are taken out below.
		query q;
		aa_op *op;
		waiter_init(&q.w);
		if (aa_client_call(&op, c, "release", NULL, 0, NULL, NULL) !=
		    0) {
			die("release", AA_EINTERNAL);
		}
		aa_op_set_handler(op, query_done, &q);
		check(waiter_wait(&q.w, 30), "release returned");
		aa_op_unref(op);
		waiter_fini(&q.w);
	}
	check(wait_settled(k), "every op settled");
	aa_client_stats_get(c, &c1);
	server_query(c, &s1);
	if (w == WC_ANYWAY) { // the release call: one Start, one Complete
		c1.sent_start--;
		c1.recv_complete--;
		s1.st.started--;
		s1.st.replies_sent--;
	}
	// Take out the stats queries' own share.
	uint64_t q_started = sq1.st.started - sq0.st.started;
	uint64_t q_replies = sq1.st.replies_sent - sq0.st.replies_sent;
	d->start = (double)(c1.sent_start - c0.sent_start) / k;
	d->cancel = (double)(c1.sent_cancel - c0.sent_cancel) / k;
	d->complete = (double)(c1.recv_complete - c0.recv_complete) / k;
	d->progress = (double)(c1.recv_progress - c0.recv_progress) / k;
	d->srv_started =
	    (double)(s1.st.started - s0.st.started - q_started) / k;
	d->srv_cancels =
	    (double)(s1.st.cancels_received - s0.st.cancels_received) / k;
	d->srv_replies =
	    (double)(s1.st.replies_sent - s0.st.replies_sent - q_replies) / k;
	d->srv_wasted = (double)(s1.st.wasted - s0.st.wasted) / k;
	d->settled_completed = atomic_load(&settle_completed);
	for (int i = 0; i < k; i++) {
		aa_timeline tl = aa_client_timeline(ops[i]);
		aa_timeline want = w == WC_NORMAL ? AA_TIMELINE_NONE
		                   : w == WC_PRE_SUBMIT
		                       ? AA_TIMELINE_PRE_SUBMIT
		                       : AA_TIMELINE_IN_FLIGHT;
		check(tl == want, "wire: timeline");
		aa_op_unref(ops[i]);
	}
	free(ops);
}

void
bench_wire(void)
{
	server_end se;
	server_start(&se, "ipc", "aa");
	aa_client *c = client_open(se.url);
	int k = wire_count;
	md("\n## Messages on the wire per operation (ipc, %d ops per "
	   "case)\n\nFrom aa_client_stats (sent Start / Cancel, received "
	   "Complete / Progress) and aa_server_stats (real ops started, "
	   "Cancels received, Completes sent, wasted), per op.\n\n",
	   k);
	md("| timeline | Start | Cancel | Complete | Progress | total | "
	   "srv started | srv cancels | srv replies | srv wasted | "
	   "settled completed |\n"
	   "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
	   "| --- |\n");
	static const double want_total[4] = {2, 0, 3, 3};
	for (int w = 0; w < 4; w++) {
		wire_delta d;
		wire_case(c, (wcase)w, k, &d);
		double total = d.start + d.cancel + d.complete + d.progress;
		md("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f "
		   "| %.2f | %.2f | %ld |\n",
		   wcase_names[w], d.start, d.cancel, d.complete, d.progress,
		   total, d.srv_started, d.srv_cancels, d.srv_replies,
		   d.srv_wasted, d.settled_completed);
		static const char *const keys[4] = {
		    "normal", "pre_submit", "in_flight", "completes_anyway"};
		json_num(d.start, "wire.%s.start", keys[w]);
		json_num(d.cancel, "wire.%s.cancel", keys[w]);
		json_num(d.complete, "wire.%s.complete", keys[w]);
		json_num(d.progress, "wire.%s.progress", keys[w]);
		json_num(total, "wire.%s.total", keys[w]);
		json_num(d.srv_started, "wire.%s.server_started", keys[w]);
		json_num(d.srv_cancels, "wire.%s.server_cancels", keys[w]);
		json_num(d.srv_replies, "wire.%s.server_replies", keys[w]);
		json_num(d.srv_wasted, "wire.%s.server_wasted", keys[w]);
		json_num((double)d.settled_completed,
		         "wire.%s.settled_completed", keys[w]);
		check(total == want_total[w], "wire: messages per op");
		if (w == WC_ANYWAY) {
			check(d.settled_completed == k, "settled completed");
			check(d.srv_wasted == 1.0, "server counted wasted");
		}
		md_flush();
	}
	aa_client_free(c);
	server_finish(&se);
}
