// svc_fixture.h: what the typed-service suites share (svc_fixture.c).
#ifndef AA_SVC_FIXTURE_H
#define AA_SVC_FIXTURE_H

#include <stdbool.h>

#include <aa/service.h>

#include "svc_test.pb-c.h"
#include "testutil.h"

#define SHOP           (&aa__test__shop__descriptor)
#define N_SHOP_METHODS 4

typedef struct server_side {
	atomic_int handler_calls; // every typed handler counts here
	gate started;             // a Hold op started
	aa_op *held;              // the last Hold op (the test's reference)
	uint32_t held_tag;
	atomic_int cancels;
	atomic_int compensated;
} server_side;

typedef struct env {
	char dir[64];
	char url[128];
	aa_server *srv;
	aa_service *svc;
	aa_client *cli;
} env;

typedef struct seen {
	atomic_int calls;
	aa_state state;
	gate done;
	gate settled;
} seen;

// A sample order with nested and repeated messages.
typedef struct order_buf {
	Aa__Test__Order o;
	Aa__Test__Item items[2];
	Aa__Test__Item *ptrs[2];
	char *tags[2];
	Aa__Test__Address addr;
} order_buf;

// The test's hold points: client.before_deliver and server.before_reply.
extern hold_point hp_deliver;
extern hold_point hp_reply;

// The server's side of a test: every typed handler counts its calls; a
// Hold op is kept in held.
extern server_side S;
extern env E;
extern aa_op_provider now_provider; // immediate, every cancellation type
extern const aa_service_method shop_methods[N_SHOP_METHODS];

// Handlers of aa.test.Shop: Place answers with a receipt, Echo and Tree
// with their input, Hold runs until the test finishes or cancels it.
int h_place(aa_op **opp, void *arg, const aa_call_info *call,
            const ProtobufCMessage *input, const aa_assoc *assoc);
int h_echo(aa_op **opp, void *arg, const aa_call_info *call,
           const ProtobufCMessage *input, const aa_assoc *assoc);
int h_hold(aa_op **opp, void *arg, const aa_call_info *call,
           const ProtobufCMessage *input, const aa_assoc *assoc);
int hold_cancel(aa_op *op, aa_cancel_type type, void *arg);
void compensate(void *arg, const aa_call_info *call, aa_op *op);

// Byte methods beside the service: plain completes, picky refuses odd
// lengths with its own text and a length of 2 without one.
int m_plain(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc);
int m_picky(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc);

// server_up serves the n methods ms of aa.test.Shop, plain and picky on
// kind ("inproc", "ipc" or "tcp"), its URL in E.url; env_up adds every
// method and a client in E.cli.
void server_up(const char *kind, const aa_service_method *ms, size_t n);
void env_up(const char *kind);

// The suites' .init and .fini: the fini frees what the test left and
// checks the live-object counters.
void setup(void);
void teardown(void);

void seen_init(seen *s);
void on_done(aa_op *op, void *arg);
void on_settle(aa_op *op, void *arg);

// call starts method with in, its handlers recording in s; call_hold
// calls Hold with tag.
aa_op *call(const char *method, const ProtobufCMessage *in, seen *s);
aa_op *call_hold(uint32_t tag, seen *s);

void sample_order(order_buf *b);
bool same_encoding(const ProtobufCMessage *a, const ProtobufCMessage *b);

#endif // AA_SVC_FIXTURE_H
