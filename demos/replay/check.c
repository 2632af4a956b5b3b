// check.c: what a run checks: the scenario's expectations, each against
// the value observed in the layers (an op's status, error, result,
// timeline, settlement and app code; the handlers' and progress counts the
// run recorded; the server's log for the op; the client's and the
// server's counters, the server's read from its process over ipc), and,
// after the last step, the invariants of DESIGN §10 for every op called.
//
// Design notes.
//
// Locks. Both are called by the driver with R.mtx held. The op getters
// (status, error, result, timeline, settlement) take only the op's own
// lock and are safe under it; the counters are read with R.mtx dropped
// (aa_client_stats_get takes the client's lock, and over ipc
// remote_stats takes R.mtx itself while it waits for the child's answer).
//
// Races. An expectation reads what is true when its step runs: a scenario
// that checks something a layer finishes on another thread orders it with
// a wait step first. The invariants run after teardown, when every hold
// was released, the client freed (its pending ops ended CANCELED) and no
// handler can run any more, so they see final values.
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "run.h"

// ---- Expectations ----

typedef struct counter {
	const char *name;
	size_t off;
	bool server;
} counter;

#define CC(f)                                                                 \
	{                                                                     \
		"client." #f, offsetof(aa_client_stats, f), false             \
	}
#define SC(f)                                                                 \
	{                                                                     \
		"server." #f, offsetof(aa_server_stats, f), true              \
	}
static const counter counters[] = {
    CC(calls),
    CC(completed),
    CC(canceled),
    CC(failed),
    CC(pre_submit),
    CC(in_flight),
    CC(already_complete),
    CC(late_dropped),
    CC(unknown_dropped),
    CC(sent_start),
    CC(sent_cancel),
    CC(recv_complete),
    CC(recv_progress),
    CC(pending),
    SC(started),
    SC(rejected),
    SC(cancels_received),
    SC(cancels_ignored),
    SC(completed),
    SC(canceled),
    SC(failed),
    SC(wasted),
    SC(orphaned),
    SC(replies_sent),
    SC(replies_dropped),
    SC(progress_sent),
    SC(pending),
    {"wire.start", offsetof(aa_client_stats, sent_start), false},
    {"wire.cancel", offsetof(aa_client_stats, sent_cancel), false},
    {"wire.complete", offsetof(aa_client_stats, recv_complete), false},
    {"wire.progress", offsetof(aa_client_stats, recv_progress), false},
};

static bool
counter_value(const char *name, uint64_t *v)
{
	aa_client_stats cs;
	aa_server_stats ss;
	aa_client_stats_get(R.cli, &cs);
	if (R.server_pid != 0) {
		if (!remote_stats(&ss)) {
			return false;
		}
	} else {
		aa_server_stats_get(R.srv, &ss);
	}
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		if (strcmp(counters[i].name, name) == 0) {
			const char *base = counters[i].server
			                       ? (const char *)&ss
			                       : (const char *)&cs;
			memcpy(v, base + counters[i].off, sizeof(*v));
			return true;
		}
	}
	return false;
}

static void
observe(const rp_step *st, opent *e, char *obs, size_t n)
{
	char b[16];
	aa_op *op = e->op;
	switch (st->expect) {
	case E_STATUS:
		snprintf(obs, n, "%s", aa_op_state_name(aa_op_status(op)));
		break;
	case E_ERROR:
		snprintf(obs, n, "%s",
		         err_name(aa_op_error(op), b, sizeof(b)));
		break;
	case E_TIMELINE:
		snprintf(obs, n, "%s",
		         aa_timeline_name(aa_client_timeline(op)));
		break;
	case E_SETTLEMENT:
		snprintf(obs, n, "%s",
		         aa_settlement_name(aa_op_settlement(op)));
		break;
	case E_HANDLER:
		snprintf(obs, n, "%d", e->handler_runs);
		break;
	case E_PROGRESS:
		snprintf(obs, n, "%d", e->progress);
		break;
	case E_CANCEL_RV:
		snprintf(obs, n, "%s",
		         e->cancel_rv < 0
		             ? "none"
		             : err_name(e->cancel_rv, b, sizeof(b)));
		break;
	case E_APP_CODE: {
		int32_t code;
		if (aa_op_app_code(op, &code) == 0) {
			snprintf(obs, n, "%d", (int)code);
		} else {
			snprintf(obs, n, "none");
		}
		break;
	}
	case E_INSIDE_RV:
		snprintf(obs, n, "%s",
		         e->inside_rv < 0
		             ? "none"
		             : err_name(e->inside_rv, b, sizeof(b)));
		break;
	case E_SERVER_LOG:
		snprintf(obs, n, "%s", e->slog[0] ? e->slog : "none");
		break;
	case E_RESULT: {
		const void *data;
		size_t len;
		int rv = aa_op_result(op, &data, &len);
		if (rv != 0) {
			snprintf(obs, n, "%s", err_name(rv, b, sizeof(b)));
		} else {
			snprintf(obs, n, "%.*s", (int)len, (const char *)data);
		}
		break;
	}
	default:
		obs[0] = '\0';
		break;
	}
}

void
do_expect(const rp_step *st)
{
	char obs[RP_TEXT];
	bool pass;
	if (st->expect == E_WIRE || st->expect == E_COUNTER) {
		char name[2 * RP_NAME];
		snprintf(name, sizeof(name), "%s%s",
		         st->expect == E_WIRE ? "wire." : "", st->what);
		uint64_t v;
		pthread_mutex_unlock(&R.mtx);
		bool known = counter_value(name, &v);
		pthread_mutex_lock(&R.mtx);
		if (!known) {
			setup_error(st,
			            "unknown counter '%s' (docs/replay.md "
			            "lists them)",
			            name);
			return;
		}
		snprintf(obs, sizeof(obs), "%llu", (unsigned long long)v);
		pass = v == (uint64_t)st->num;
	} else {
		opent *e = need_op(st, false);
		if (e == NULL) {
			return;
		}
		observe(st, e, obs, sizeof(obs));
		pass = strcmp(obs, st->data) == 0;
	}
	add_check(st->line, st->text, obs, pass);
}

void
check_invariants(void)
{
	char obs[RP_TEXT], what[RP_TEXT];
	for (int i = 0; i < R.n_ops; i++) {
		opent *e = &R.ops[i];
		if (e->op == NULL) {
			continue;
		}
		aa_state s = aa_op_status(e->op);
		snprintf(what, sizeof(what), "%s: exactly one final state",
		         e->name);
		add_check(0, what, aa_op_state_name(s), s != AA_STARTED);
		snprintf(what, sizeof(what),
		         "%s: the handler ran exactly once", e->name);
		snprintf(obs, sizeof(obs), "%d", e->handler_runs);
		add_check(0, what, obs, e->handler_runs == 1);
		if (e->cancelled_ok) {
			snprintf(what, sizeof(what),
			         "%s: cancelled before its result was handed "
			         "over, so CANCELED",
			         e->name);
			snprintf(obs, sizeof(obs), "%s (handler saw %s)",
			         aa_op_state_name(s),
			         aa_op_state_name(e->handler_saw));
			add_check(0, what, obs,
			          s == AA_CANCELED &&
			              e->handler_saw == AA_CANCELED);
		}
		// The settlement is the server's outcome for an op that the
		// client cancelled or that completed; an op that failed on its
		// own side (deadline, lost server) settles as it ended.
		aa_settlement st = aa_op_settlement(e->op);
		bool ok = true;
		switch (s == AA_ERROR ? AA_SETTLE_PENDING : st) {
		case AA_SETTLE_COMPLETED:
			ok = e->slog_mask & (1u << AA_SEV_COMPLETED);
			break;
		case AA_SETTLE_CANCELED:
			ok = e->slog_mask & (1u << AA_SEV_CANCELED);
			break;
		case AA_SETTLE_FAILED:
			ok = e->slog_mask & (1u << AA_SEV_FAILED);
			break;
		case AA_SETTLE_NEVER_STARTED:
			ok = !(e->slog_mask & (1u << AA_SEV_START));
			break;
		default:
			break;
		}
		snprintf(what, sizeof(what),
		         "%s: settlement agrees with the server's log",
		         e->name);
		snprintf(obs, sizeof(obs), "%s / %s", aa_settlement_name(st),
		         e->slog[0] ? e->slog : "nothing logged");
		add_check(0, what, obs, ok);
	}
}
