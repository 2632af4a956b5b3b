// aa-server-typed.c: aa-server's typed service aa.demo.Demo, the same
// methods as the byte ones, with protobuf messages (demos/demo.proto).
//
// Design notes.
//
// demos/demo.proto describes echo, sleep, count and fail as the typed
// service aa.demo.Demo (docs/services.md). Echo and Fail finish inside
// the method. Sleep and Count are pass-throughs over the byte methods: the
// typed op (the parent, the one the server sees) starts the byte method's
// real op (the child) with its input as text, forwards its own cancel
// and the child's progress, and finishes from the child's outcome: the
// child's text result becomes the typed reply, a cancelled or failed child
// ends the parent the same way.
//
// Race: the parent's cancel function (any thread) against the child's
// handler (the timer thread), which finishes the parent and drops the
// child. A spin flag guards the child pointer; the cancel takes its own
// reference under it, so a late cancel never touches a freed child.
#define _POSIX_C_SOURCE 200809L

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aa-server.h"
#include "demo.pb-c.h" // aa.demo.Demo, generated from demos/demo.proto

typedef struct typed_op {
	atomic_flag lock;
	aa_op *child; // NULL once the child's handler took it
	aa_op *self;
	bool count; // Count (else Sleep): which reply to build
} typed_op;

static aa_op *
typed_child(typed_op *t, bool take)
{
	while (atomic_flag_test_and_set(&t->lock)) {
	}
	aa_op *c = t->child;
	if (take) {
		t->child = NULL;
	} else if (c != NULL) {
		aa_op_ref(c);
	}
	atomic_flag_clear(&t->lock);
	return c;
}

static int
typed_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	aa_op *c = typed_child(aa_op_extra(op), false);
	(void)arg;
	if (c != NULL) {
		aa_op_cancel(c, type);
		aa_op_unref(c);
	}
	return 0;
}

static void
typed_progress(aa_op *child, void *arg, const void *data, size_t len)
{
	typed_op *t = arg;
	(void)child;
	aa_op_progress(t->self, data, len);
}

static void
typed_child_done(aa_op *child, void *arg)
{
	typed_op *t = arg;
	aa_op *self = t->self;
	const void *data;
	size_t len;
	char text[TEXT_MAX] = "";

	switch (aa_op_status(child)) {
	case AA_COMPLETED:
		aa_op_result(child, &data, &len);
		memcpy(text, data,
		       len < sizeof(text) ? len : sizeof(text) - 1);
		uint32_t v = (uint32_t)strtoul(text, NULL, 10);
		if (t->count) {
			Aa__Demo__CountReply r = AA__DEMO__COUNT_REPLY__INIT;
			r.counted = v;
			aa_service_complete(self, &r.base);
		} else {
			Aa__Demo__SleepReply r = AA__DEMO__SLEEP_REPLY__INIT;
			r.slept_ms = v;
			aa_service_complete(self, &r.base);
		}
		break;
	case AA_CANCELED:
		aa_op_canceled(self);
		break;
	default:
		if (aa_op_error(child) == AA_EAPP) {
			int32_t app = 0;
			aa_op_app_code(child, &app);
			aa_op_fail_app(self, app, aa_op_error_msg(child));
		} else {
			aa_op_fail(self, aa_op_error(child),
			           aa_op_error_msg(child));
		}
		break;
	}
	typed_child(t, true);
	aa_op_unref(child); // the child's only reference: ours
	aa_op_unref(self);  // this handler's reference (may free t)
}

// typed_pass_through starts byte method fn with the decimal text of v as
// its payload, under a typed parent op.
static int
typed_pass_through(aa_op **opp, aa_method_fn fn, bool count, uint32_t v,
                   const aa_call_info *call, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = typed_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = sizeof(typed_op)};
	char text[TEXT_MAX];
	aa_op *self;
	aa_op *child;
	int n = snprintf(text, sizeof(text), "%u", (unsigned)v);
	int rv = aa_op_alloc(&self, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	if ((rv = fn(&child, NULL, call, text, (size_t)n, assoc)) != 0) {
		aa_op_unref(self);
		return rv;
	}
	typed_op *t = aa_op_extra(self);
	atomic_flag_clear(&t->lock);
	t->child = child;
	t->self = self;
	t->count = count;
	aa_op_ref(self); // the child's handler's
	aa_op_set_progress_handler(child, typed_progress, t);
	// A child already final runs the handler now: self is then final
	// when the server gets it, as echo's op is.
	aa_op_set_handler(child, typed_child_done, t);
	*opp = self;
	return 0;
}

static int
t_echo(aa_op **opp, void *arg, const aa_call_info *call,
       const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Aa__Demo__EchoRequest *in = (const Aa__Demo__EchoRequest *)input;
	Aa__Demo__EchoReply r = AA__DEMO__ECHO_REPLY__INIT;
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		r.text = in->text;
		aa_service_complete(*opp, &r.base);
	}
	return rv;
}

static int
t_sleep(aa_op **opp, void *arg, const aa_call_info *call,
        const ProtobufCMessage *input, const aa_assoc *assoc)
{
	uint32_t ms = ((const Aa__Demo__SleepRequest *)input)->ms;
	return typed_pass_through(opp, m_sleep, false, ms, call, assoc);
}

static int
t_count(aa_op **opp, void *arg, const aa_call_info *call,
        const ProtobufCMessage *input, const aa_assoc *assoc)
{
	uint32_t n = ((const Aa__Demo__CountRequest *)input)->n;
	return typed_pass_through(opp, m_count, true, n, call, assoc);
}

static int
t_fail(aa_op **opp, void *arg, const aa_call_info *call,
       const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Aa__Demo__FailRequest *in = (const Aa__Demo__FailRequest *)input;
	char text[TEXT_MAX];
	if (in->message == NULL || in->message[0] == '\0') {
		// The byte method, with its default text.
		int n = snprintf(text, sizeof(text), "%d", (int)in->code);
		return m_fail(opp, arg, call, text, (size_t)n, assoc);
	}
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_fail_app(*opp, in->code, in->message);
	}
	return rv;
}

static const aa_service_method demo_methods[] = {
    {.name = "Echo", .start = t_echo, .cancel_types = AA_CANCEL_ALL},
    {.name = "Sleep", .start = t_sleep, .cancel_types = AA_CANCEL_ALL},
    {.name = "Count", .start = t_count, .cancel_types = AA_CANCEL_ALL},
    {.name = "Fail", .start = t_fail, .cancel_types = AA_CANCEL_ALL},
};

// register_demo_service registers aa.demo.Demo on srv.
int
register_demo_service(aa_service **svp, aa_server *srv)
{
	return aa_service_register(
	    svp, srv, &aa__demo__demo__descriptor, demo_methods,
	    sizeof(demo_methods) / sizeof(demo_methods[0]));
}
