// svc_fixture.c: what the typed-service suites share (test_service.c,
// test_service_calls.c): the server's handlers of aa.test.Shop
// (tests/proto/svc_test.proto), a fixture that serves it on inproc, ipc
// or tcp and opens a client, two hold points at the layers' checkpoints,
// a handler that records, and a sample order with nested and repeated
// messages. State is per test: Criterion runs each test in its own
// process, and setup clears it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "svc_fixture.h"

// ---- Hold points: a checkpoint that stops one thread once ----

hold_point hp_deliver = {.name = "client.before_deliver"};
hold_point hp_reply = {.name = "server.before_reply"};
static hold_point *const points[] = {&hp_deliver, &hp_reply};

static void
on_checkpoint(void *arg, const char *name, void *subject)
{
	(void)arg;
	hold_points_hit(points, sizeof(points) / sizeof(points[0]), name,
	                subject);
}

// ---- The server's handlers ----

server_side S;

aa_op_provider now_provider = {.policy = AA_POLICY_IMMEDIATE,
                               .cancel_types = AA_CANCEL_ALL};

// Place: a receipt built from the order, at once.
int
h_place(aa_op **opp, void *arg, const aa_call_info *call,
        const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Aa__Test__Order *o = (const Aa__Test__Order *)input;
	Aa__Test__Receipt r = AA__TEST__RECEIPT__INIT;
	char summary[128];
	atomic_fetch_add(&S.handler_calls, 1);
	int rv = aa_op_alloc(opp, &now_provider, assoc);
	if (rv != 0) {
		return rv;
	}
	r.order_id = o->id;
	for (size_t i = 0; i < o->n_items; i++) {
		r.total_items += o->items[i]->quantity;
	}
	// The input lives until the handler returns; the reply is packed
	// before that, so it may point into the input.
	r.n_items = o->n_items;
	r.items = o->items;
	r.ship_to = o->ship_to;
	snprintf(summary, sizeof(summary), "%s paid by %s", o->customer,
	         o->payment_case == AA__TEST__ORDER__PAYMENT_CARD ? o->card
	                                                          : "voucher");
	r.summary = summary;
	cr_assert_eq(aa_service_complete(*opp, &r.base), 0);
	return 0;
}

int
h_echo(aa_op **opp, void *arg, const aa_call_info *call,
       const ProtobufCMessage *input, const aa_assoc *assoc)
{
	atomic_fetch_add(&S.handler_calls, 1);
	int rv = aa_op_alloc(opp, &now_provider, assoc);
	if (rv == 0) {
		cr_assert_eq(aa_service_complete(*opp, input), 0);
	}
	return rv;
}

int
hold_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	atomic_fetch_add(&S.cancels, 1);
	aa_op_canceled(op);
	return 0;
}

// Hold: runs until the test completes it or it is cancelled.
int
h_hold(aa_op **opp, void *arg, const aa_call_info *call,
       const ProtobufCMessage *input, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = hold_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	atomic_fetch_add(&S.handler_calls, 1);
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_ref(*opp);
		if (S.held != NULL) {
			aa_op_unref(S.held);
		}
		S.held = *opp;
		S.held_tag = ((const Aa__Test__HoldRequest *)input)->tag;
		gate_open(&S.started);
	}
	return rv;
}

void
compensate(void *arg, const aa_call_info *call, aa_op *op)
{
	atomic_fetch_add(&S.compensated, 1);
}

// A byte method beside the service: untyped, fingerprint 0.
int
m_plain(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
        size_t len, const aa_assoc *assoc)
{
	int rv = aa_op_alloc(opp, &now_provider, assoc);
	if (rv == 0) {
		aa_op_complete(*opp, NULL, 0, NULL);
	}
	return rv;
}

// "picky": a byte method that refuses an odd length with its own text,
// and a length of 2 with none.
int
m_picky(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
        size_t len, const aa_assoc *assoc)
{
	if (len % 2 == 1) {
		aa_server_reject_reason("picky wants an even length");
		return AA_EINVAL;
	}
	if (len == 2) {
		return AA_EINVAL;
	}
	return m_plain(opp, arg, call, payload, len, assoc);
}

const aa_service_method shop_methods[N_SHOP_METHODS] = {
    {.name = "Place", .start = h_place, .cancel_types = AA_CANCEL_ALL},
    {.name = "Hold",
     .start = h_hold,
     .compensate = compensate,
     .cancel_types = AA_CANCEL_ALL},
    {.name = "Echo", .start = h_echo, .cancel_types = AA_CANCEL_ALL},
    {.name = "Tree", .start = h_echo, .cancel_types = AA_CANCEL_ALL},
};

// ---- Fixture ----

env E;

void
server_up(const char *kind, const aa_service_method *ms, size_t n)
{
	cr_assert_eq(aa_server_alloc(&E.srv, &(aa_server_opts){0}), 0);
	cr_assert_eq(aa_service_register(&E.svc, E.srv, SHOP, ms, n), 0);
	aa_method_def plain = {
	    .name = "plain", .start = m_plain, .cancel_types = AA_CANCEL_ALL};
	cr_assert_eq(aa_server_register(E.srv, &plain), 0);
	aa_method_def picky = {
	    .name = "picky", .start = m_picky, .cancel_types = AA_CANCEL_ALL};
	cr_assert_eq(aa_server_register(E.srv, &picky), 0);
	if (strcmp(kind, "inproc") == 0) {
		snprintf(E.url, sizeof(E.url), "inproc://aa-svc-%d",
		         (int)getpid());
	} else if (strcmp(kind, "ipc") == 0) {
		strcpy(E.dir, "/tmp/aa-svc-XXXXXX");
		cr_assert_not_null(mkdtemp(E.dir));
		snprintf(E.url, sizeof(E.url), "ipc://%s/s.sock", E.dir);
	} else {
		strcpy(E.url, "tcp://127.0.0.1:0");
	}
	cr_assert_eq(aa_server_listen(E.srv, E.url), 0);
	if (strcmp(kind, "tcp") == 0) {
		snprintf(E.url, sizeof(E.url), "tcp://127.0.0.1:%d",
		         aa_server_port(E.srv));
	}
}

void
env_up(const char *kind)
{
	server_up(kind, shop_methods,
	          sizeof(shop_methods) / sizeof(shop_methods[0]));
	cr_assert_eq(aa_client_open(&E.cli, &(aa_client_opts){.url = E.url}),
	             0);
}

void
setup(void)
{
	memset(&S, 0, sizeof(S));
	gate_init(&S.started);
	memset(&E, 0, sizeof(E));
	aa_checkpoint_set(on_checkpoint, NULL);
}

void
teardown(void)
{
	aa_checkpoint_set(NULL, NULL);
	if (E.cli != NULL) {
		aa_client_free(E.cli);
	}
	if (S.held != NULL) {
		if (aa_op_status(S.held) == AA_STARTED) {
			aa_op_canceled(S.held);
		}
		aa_op_unref(S.held);
	}
	if (E.srv != NULL) {
		aa_server_free(E.srv);
	}
	aa_service_free(E.svc);
	if (E.dir[0] != '\0') {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", E.dir);
		cr_assert_eq(system(cmd), 0);
	}
	aa_test_check_live();
}

// ---- A handler that records, and helpers ----

void
seen_init(seen *s)
{
	memset(s, 0, sizeof(*s));
	gate_init(&s->done);
	gate_init(&s->settled);
}

void
on_done(aa_op *op, void *arg)
{
	seen *s = arg;
	s->state = aa_op_status(op);
	atomic_fetch_add(&s->calls, 1);
	gate_open(&s->done);
}

void
on_settle(aa_op *op, void *arg)
{
	gate_open(&((seen *)arg)->settled);
}

aa_op *
call(const char *method, const ProtobufCMessage *in, seen *s)
{
	aa_op *op = NULL;
	cr_assert_eq(aa_service_call(&op, E.cli, SHOP, method, in, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, s), 0);
	cr_assert_eq(aa_op_set_settle_handler(op, on_settle, s), 0);
	return op;
}

aa_op *
call_hold(uint32_t tag, seen *s)
{
	Aa__Test__HoldRequest hr = AA__TEST__HOLD_REQUEST__INIT;
	hr.tag = tag;
	return call("Hold", &hr.base, s);
}

void
sample_order(order_buf *b)
{
	static uint8_t note[] = {0, 1, 2, 0xff};
	b->o = (Aa__Test__Order)AA__TEST__ORDER__INIT;
	for (int i = 0; i < 2; i++) {
		b->items[i] = (Aa__Test__Item)AA__TEST__ITEM__INIT;
		b->ptrs[i] = &b->items[i];
	}
	b->tags[0] = "red";
	b->tags[1] = "big";
	b->items[0].sku = "A-1";
	b->items[0].quantity = 2;
	b->items[0].n_tags = 2;
	b->items[0].tags = b->tags;
	b->items[1].sku = "B-2";
	b->items[1].quantity = 5;
	b->addr = (Aa__Test__Address)AA__TEST__ADDRESS__INIT;
	b->addr.street = "1 Main St";
	b->addr.city = "Springfield";
	b->o.id = 1ull << 40;
	b->o.customer = "ann";
	b->o.n_items = 2;
	b->o.items = b->ptrs;
	b->o.ship_to = &b->addr;
	b->o.priority = AA__TEST__ORDER__PRIORITY__EXPRESS;
	b->o.note = (ProtobufCBinaryData){.len = sizeof(note), .data = note};
	b->o.payment_case = AA__TEST__ORDER__PAYMENT_CARD;
	b->o.card = "4111";
	b->o.weight = 2.5;
	b->o.delta = -7;
	b->o.gift = 1;
}

// same_encoding compares two messages by their packed bytes.
bool
same_encoding(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
	size_t na = protobuf_c_message_get_packed_size(a);
	size_t nb = protobuf_c_message_get_packed_size(b);
	if (na != nb) {
		return false;
	}
	uint8_t *pa = malloc(na + 1), *pb = malloc(nb + 1);
	protobuf_c_message_pack(a, pa);
	protobuf_c_message_pack(b, pb);
	bool same = memcmp(pa, pb, na) == 0;
	free(pa);
	free(pb);
	return same;
}
