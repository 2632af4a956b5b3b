// aa-test-labels: concurrent
// test_service_calls.c: typed calls (aa/service.h) behave as byte calls:
// each cancellation timeline (pre-submit, in-flight over inproc, ipc and
// tcp, already-complete with the result in hand and crossing on the
// wire, with the typed method's compensation hook), forced with
// checkpoints and gates (never sleeps); a typed result after the real
// op completes later; a deadline; progress; an application error; the
// cancellation types given at registration; the op's allocator for
// results. The fixture is svc_fixture.c.
#include <stdlib.h>
#include <string.h>

#include "svc_fixture.h"

TestSuite(service_calls, .init = setup, .fini = teardown, .timeout = 60);

// ---- The cancellation timelines on typed calls ----

Test(service_calls, pre_submit)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_client_cork(E.cli);
	aa_op *op = call_hold(1, &s);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.calls), 1, "handler ran inside cancel");
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_PRE_SUBMIT);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_NEVER_STARTED);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__hold_reply__descriptor),
	    AA_ECANCELED);
	aa_client_uncork(E.cli);
	aa_client_stats cs;
	aa_client_stats_get(E.cli, &cs);
	cr_assert_eq(cs.sent_start, 0);
	cr_assert_eq(atomic_load(&S.handler_calls), 0);
	aa_op_unref(op);
}

static void
in_flight(const char *kind)
{
	static seen s;
	seen_init(&s);
	env_up(kind);
	aa_op *op = call_hold(3, &s);
	gate_wait(&S.started); // the real op runs on the server
	cr_assert_eq(S.held_tag, 3, "the handler got the typed input");
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), 0);
	cr_assert_eq(atomic_load(&s.calls), 1, "CANCELED at once");
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	cr_assert_eq(atomic_load(&S.cancels), 1);
	aa_client_stats cs;
	aa_client_stats_get(E.cli, &cs);
	cr_assert_eq(cs.sent_start, 1);
	cr_assert_eq(cs.sent_cancel, 1);
	cr_assert_eq(cs.late_dropped, 1);
	aa_op_unref(op);
}

Test(service_calls, in_flight_inproc)
{
	in_flight("inproc");
}
Test(service_calls, in_flight_ipc)
{
	in_flight("ipc");
}
Test(service_calls, in_flight_tcp)
{
	in_flight("tcp");
}

Test(service_calls, already_complete_result_in_hand)
{
	static seen s;
	order_buf b;
	seen_init(&s);
	sample_order(&b);
	env_up("ipc");
	hold_arm(&hp_deliver);
	aa_op *op = call("Place", &b.o.base, &s);
	gate_wait(&hp_deliver.reached); // the typed result is in the client
	cr_assert_eq(hp_deliver.subject, op);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_ALREADY_COMPLETE);
	gate_open(&hp_deliver.release);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__receipt__descriptor),
	    AA_ECANCELED, "the dropped result is never handed out");
	aa_client_stats cs;
	aa_client_stats_get(E.cli, &cs);
	cr_assert_eq(cs.sent_cancel, 0, "nothing more was sent");
	aa_op_unref(op);
}

typedef struct finisher {
	aa_op *op;
	Aa__Test__HoldReply reply;
} finisher;

static void *
finish_held(void *arg)
{
	finisher *f = arg;
	f->reply.base = (ProtobufCMessage)PROTOBUF_C_MESSAGE_INIT(
	    &aa__test__hold_reply__descriptor);
	cr_assert_eq(aa_service_complete(f->op, &f->reply.base), 0);
	return NULL;
}

Test(service_calls, already_complete_crossing)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_op *op = call_hold(4, &s);
	// A second call, answered on the same receive thread after the
	// first's Start was fully handled: the server has set the Hold op's
	// handler, so the finisher below (not the receive thread) runs it.
	static seen p;
	order_buf b;
	seen_init(&p);
	sample_order(&b);
	aa_op *probe = call("Place", &b.o.base, &p);
	gate_wait(&p.done);
	aa_op_unref(probe);
	hold_arm(&hp_reply);
	// A thread completes the real op with a typed reply and is held at
	// server.before_reply while the client cancels.
	finisher fin = {.op = S.held};
	fin.reply.tag = 4;
	thr t;
	thr_start(&t, finish_held, &fin);
	gate_wait(&hp_reply.reached);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.state, AA_CANCELED);
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_IN_FLIGHT,
	             "the client cannot know yet");
	// Let the Cancel reach the server before the reply goes out: the
	// Cancel left inside aa_op_cancel, so a call made now is behind it
	// on the connection, and its answer (from the receive thread, which
	// is free: the finisher is the held thread) means the server has
	// handled the Cancel. The op had finished, so the Cancel is late.
	static seen p2;
	seen_init(&p2);
	probe = call("Place", &b.o.base, &p2);
	gate_wait(&p2.done);
	aa_op_unref(probe);
	aa_server_stats ss;
	aa_server_stats_get(E.srv, &ss);
	cr_assert_eq(ss.cancels_late, 1, "the Cancel came after the finish");
	gate_open(&hp_reply.release);
	thr_join(&t);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_COMPLETED,
	             "the server completed anyway");
	cr_assert_eq(aa_client_timeline(op), AA_TIMELINE_ALREADY_COMPLETE,
	             "refined by the late Complete");
	aa_server_stats_get(E.srv, &ss);
	cr_assert_eq(ss.completed, 3);
	cr_assert_eq(ss.wasted, 1);
	cr_assert_eq(atomic_load(&S.compensated), 1,
	             "the typed method's compensation hook ran");
	aa_op_unref(op);
}

Test(service_calls, typed_result_after_completion)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	aa_op *op = call_hold(9, &s);
	gate_wait(&S.started);
	Aa__Test__HoldReply hr = AA__TEST__HOLD_REPLY__INIT;
	hr.tag = S.held_tag * 2;
	cr_assert_eq(aa_service_complete(S.held, &hr.base), 0);
	cr_assert_eq(aa_service_complete(S.held, &hr.base), AA_EALREADY);
	gate_wait(&s.done);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__hold_reply__descriptor), 0);
	cr_assert_eq(((Aa__Test__HoldReply *)out)->tag, 18);
	aa_service_result_free(op, out);
	aa_op_unref(op);
}

Test(service_calls, deadline)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	Aa__Test__HoldRequest hr = AA__TEST__HOLD_REQUEST__INIT;
	aa_call_opts co = {.deadline_ms = 20};
	aa_op *op = NULL;
	cr_assert_eq(
	    aa_service_call(&op, E.cli, SHOP, "Hold", &hr.base, &co, NULL), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_ETIMEDOUT);
	aa_op_unref(op);
}

// ---- Progress, application errors, cancellation types, allocator ----

typedef struct progress_seen {
	gate got;
	char data[16];
	size_t len;
} progress_seen;

static void
on_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	progress_seen *p = arg;
	if (!gate_is_open(&p->got)) {
		p->len = len < sizeof(p->data) ? len : sizeof(p->data);
		memcpy(p->data, data, p->len);
		gate_open(&p->got);
	}
}

// hold_served returns once the server has taken the Hold op over (set
// its handlers): a second call on the same connection is answered on the
// same receive thread, after the first Start was fully handled.
static void
hold_served(void)
{
	static seen p;
	order_buf b;
	seen_init(&p);
	sample_order(&b);
	aa_op *probe = call("Place", &b.o.base, &p);
	gate_wait(&p.done);
	aa_op_unref(probe);
}

Test(service_calls, progress_reaches_a_typed_call)
{
	static seen s;
	static progress_seen ps;
	seen_init(&s);
	memset(&ps, 0, sizeof(ps));
	gate_init(&ps.got);
	env_up("inproc");
	Aa__Test__HoldRequest hr = AA__TEST__HOLD_REQUEST__INIT;
	hr.tag = 5;
	aa_op *op = NULL;
	cr_assert_eq(
	    aa_service_call(&op, E.cli, SHOP, "Hold", &hr.base, NULL, NULL),
	    0);
	cr_assert_eq(aa_op_set_progress_handler(op, on_progress, &ps), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&S.started);
	hold_served();
	cr_assert_eq(aa_op_progress(S.held, "1/2", 3), 0);
	gate_wait(&ps.got);
	cr_assert_eq(ps.len, 3);
	cr_assert_eq(memcmp(ps.data, "1/2", 3), 0);
	cr_assert_eq(aa_op_status(op), AA_STARTED, "progress does not end it");
	Aa__Test__HoldReply rep = AA__TEST__HOLD_REPLY__INIT;
	rep.tag = 6;
	cr_assert_eq(aa_service_complete(S.held, &rep.base), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__hold_reply__descriptor), 0);
	cr_assert_eq(((Aa__Test__HoldReply *)out)->tag, 6);
	aa_service_result_free(op, out);
	aa_client_stats cs;
	aa_client_stats_get(E.cli, &cs);
	cr_assert_eq(cs.recv_progress, 1);
	aa_op_unref(op);
}

Test(service_calls, an_application_error_reaches_a_typed_call)
{
	static seen s;
	seen_init(&s);
	env_up("tcp");
	aa_op *op = call_hold(7, &s);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_fail_app(S.held, -42, "out of stock"), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_EAPP);
	int32_t code = 0;
	cr_assert_eq(aa_op_app_code(op, &code), 0);
	cr_assert_eq(code, -42, "the application's own code, unchanged");
	cr_assert_str_eq(aa_op_error_msg(op), "out of stock");
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__hold_reply__descriptor),
	    AA_EAPP);
	cr_assert_null(out);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_FAILED);
	aa_op_unref(op);
}

Test(service_calls, cancel_types_are_given_at_registration)
{
	static const aa_service_method limited[] = {
	    {.name = "Hold",
	     .start = h_hold,
	     .cancel_types = AA_CANCEL_TERMINAL},
	    {.name = "Place",
	     .start = h_place,
	     .cancel_types = AA_CANCEL_TERMINAL | AA_CANCEL_PARTIAL},
	};
	static seen s;
	seen_init(&s);
	server_up("inproc", limited, 2);
	cr_assert_eq(aa_client_open(&E.cli, &(aa_client_opts){.url = E.url}),
	             0);
	unsigned types = 0;
	cr_assert_eq(
	    aa_client_method_cancel_types(E.cli, "aa.test.Shop/Hold", &types),
	    0);
	cr_assert_eq(types, AA_CANCEL_TERMINAL);
	cr_assert_eq(
	    aa_client_method_cancel_types(E.cli, "aa.test.Shop/Place", &types),
	    0);
	cr_assert_eq(types, AA_CANCEL_TERMINAL | AA_CANCEL_PARTIAL);

	aa_op *op = call_hold(2, &s);
	gate_wait(&S.started);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TOTAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_PARTIAL), AA_ENOTSUP);
	cr_assert_eq(aa_op_status(op), AA_STARTED,
	             "a refused cancel is a no-op");
	cr_assert_eq(atomic_load(&s.calls), 0);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(s.state, AA_CANCELED);
	gate_wait(&s.settled);
	cr_assert_eq(aa_op_settlement(op), AA_SETTLE_CANCELED);
	cr_assert_eq(atomic_load(&S.cancels), 1);
	aa_op_unref(op);
}

// A counting allocator: blocks handed out and not yet given back.
typedef struct counting {
	atomic_long live;
	atomic_long allocs;
} counting;

static void *
counting_alloc(void *ctx, size_t size)
{
	counting *k = ctx;
	void *p = malloc(size);
	if (p != NULL) {
		atomic_fetch_add(&k->live, 1);
		atomic_fetch_add(&k->allocs, 1);
	}
	return p;
}

static void
counting_free(void *ctx, void *p, size_t size)
{
	counting *k = ctx;
	if (p != NULL) {
		atomic_fetch_sub(&k->live, 1);
	}
	free(p);
}

Test(service_calls, the_result_is_unpacked_with_the_ops_allocator)
{
	static seen s;
	static counting k;
	aa_allocator al = {
	    .alloc = counting_alloc, .free = counting_free, .ctx = &k};
	aa_assoc as = {.allocator = &al};
	order_buf b;
	seen_init(&s);
	sample_order(&b);
	env_up("inproc");
	aa_op *op = NULL;
	cr_assert_eq(
	    aa_service_call(&op, E.cli, SHOP, "Place", &b.o.base, NULL, &as),
	    0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED);
	long live = atomic_load(&k.live), allocs = atomic_load(&k.allocs);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__receipt__descriptor), 0);
	// The receipt, its items, their strings and its address.
	cr_assert_gt(atomic_load(&k.allocs), allocs + 4);
	cr_assert_gt(atomic_load(&k.live), live);
	cr_assert_str_eq(((Aa__Test__Receipt *)out)->ship_to->city,
	                 "Springfield");
	aa_service_result_free(op, out);
	cr_assert_eq(atomic_load(&k.live), live, "all given back");
	aa_op_unref(op);
	aa_client_free(E.cli);
	E.cli = NULL;
	cr_assert_eq(atomic_load(&k.live), 0, "the op's own memory too");
}
