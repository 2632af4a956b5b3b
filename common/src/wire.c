// wire.c: encoding and decoding of aaproxy's wire messages with protobuf-c.
// The decode arena is in wire_arena.c, the protocol's rules in
// wire_rules.c, the raw-byte scans in wire_scan.c and the hand-written
// fast path in wire_fast.c.
//
// Design notes.
//
// * Nothing here is asynchronous and nothing keeps state: the callers (the
//   client and server layers) own the buffers and the arena, one thread at
//   a time. The protobuf-c types stay in this file; callers see the plain
//   aai_wire_msg view of wire.h.
//
// * Encoding fills protobuf-c structs on the stack from the view (no copy
//   of strings or payloads) and packs them straight into the caller's
//   buffer; the Envelope's key and length are written by hand, so the
//   body's size is computed once. The only allocation is for a Hello with
//   a big method table. aai_wire_size runs the same fill and asks
//   protobuf-c for the size, so a caller can reserve exactly that much
//   room in its send buffer.
//
// * Hostile input. protobuf-c has no size limit and may allocate far more
//   than the frame's size: 32 bytes of scan slab per field (slabs that
//   double, so up to 64), a table entry per unknown field and a copy of
//   it, a struct and a pointer per repeated submessage. A frame of 2-byte
//   unknown fields would cost ~30 times its size. So before unpacking,
//   a walk of the wire format (aai_wire_decode_cost in wire_scan.c: the
//   Envelope, its body and the body's submessages, guided by the
//   protobuf-c descriptors, allocating nothing) computes an upper bound of
//   what the unpack will allocate, mirroring protobuf-c's allocations, and
//   refuses the frame when it exceeds AAI_WIRE_DECODE_FACTOR times the frame
//   plus AAI_WIRE_DECODE_SLACK, or when a message has more than
//   AAI_WIRE_EXTRA_FIELDS_MAX unknown fields or repeats of a singular
//   field, or a repeated field more than AAI_WIRE_METHODS_MAX entries.
//   The arena keeps the same cap as a budget, as a backstop should a
//   newer protobuf-c allocate more than the walk assumes: an allocation
//   beyond it fails and protobuf-c gives up cleanly (its frees are
//   no-ops, the arena drops everything). We walk the bytes ourselves
//   because protobuf-c offers no limit and no dry run.
//   A scan of the Envelope's top level (wire_scan.c) also counts the body
//   fields, because protobuf-c keeps the last of two oneof members
//   silently and the protocol wants exactly one, and checks its strings. After
//   unpacking, aai_wire_check applies the protocol's rules. Every failure is
//   AA_EPROTO (or AA_EMSGSIZE for an oversized frame) with a static reason
//   string.
#include <string.h>

#include "aa.pb-c.h"
#include "wire.h"
#include "wire_impl.h"

// ---------------------------------------------------------------------------
// Encoding.

#define HELLO_STACK_METHODS 16

// A message being packed: every body it may be, and the method table of
// a Hello, all on the caller's stack.
typedef struct packer {
	aai_wire_kind kind; // the Envelope's body field number
	union {
		Aa__V1__Start start;
		Aa__V1__Complete complete;
		Aa__V1__Cancel cancel;
		Aa__V1__Progress progress;
		Aa__V1__Heartbeat heartbeat;
		Aa__V1__Hello hello;
		Aa__V1__Goodbye goodbye;
	} body;
	Aa__V1__MethodInfo stack_infos[HELLO_STACK_METHODS];
	Aa__V1__MethodInfo *stack_ptrs[HELLO_STACK_METHODS];
	Aa__V1__MethodInfo *heap_infos; // NULL unless the table is big
	Aa__V1__MethodInfo **heap_ptrs;
	char text[AAI_WIRE_TEXT_MAX + 1]; // a cut text
} packer;

static ProtobufCBinaryData
bin(const void *p, size_t len)
{
	ProtobufCBinaryData b = {.len = len, .data = (uint8_t *)p};
	if (len == 0) {
		b.data = NULL;
	}
	return b;
}

// str turns NULL into "" (protobuf-c skips empty proto3 strings).
static char *
str(const char *s)
{
	return (char *)(s != NULL ? s : "");
}

// text makes s a valid protocol text, copying only when it must: at most
// AAI_WIRE_TEXT_MAX bytes, cut at a character boundary, with every byte
// that is not well-formed UTF-8 replaced by '?' (an error message may come
// from anywhere; the peer refuses invalid UTF-8).
static char *
text(packer *pk, const char *s)
{
	size_t n = aai_wire_text_len(s, AAI_WIRE_TEXT_MAX);
	if (n <= AAI_WIRE_TEXT_MAX &&
	    aai_wire_utf8_ok((const uint8_t *)s, n)) {
		return str(s);
	}
	const uint8_t *p = (const uint8_t *)s;
	size_t in = 0, out = 0;
	while (p[in] != 0) {
		size_t k =
		    aai_wire_utf8_seq(p + in, aai_wire_text_len(s + in, 4));
		if (out + (k ? k : 1) > AAI_WIRE_TEXT_MAX) {
			break;
		}
		if (k == 0) {
			pk->text[out++] = '?';
			in++;
		} else {
			memcpy(pk->text + out, p + in, k);
			out += k;
			in += k;
		}
	}
	pk->text[out] = '\0';
	return pk->text;
}

static void
packer_fini(packer *pk)
{
	aai_free(pk->heap_infos);
	aai_free(pk->heap_ptrs);
}

static int
fill_hello(packer *pk, const aai_wire_hello *h)
{
	Aa__V1__Hello *ph = &pk->body.hello;
	Aa__V1__MethodInfo *infos = pk->stack_infos;
	Aa__V1__MethodInfo **ptrs = pk->stack_ptrs;
	const aai_wire_method *ms = h->methods;
	size_t n = 0;

	*ph = (Aa__V1__Hello)AA__V1__HELLO__INIT;
	ph->version = h->version;
	ph->role = (Aa__V1__Role)h->role;
	ph->max_message_size = h->max_msg_size;
	ph->heartbeat_interval_ms = h->heartbeat_ms;
	if (h->role == AAI_WIRE_ROLE_CLIENT) {
		ph->client_instance_id = h->instance_id;
		return 0;
	}
	ph->max_pending_ops = h->max_pending;
	ph->connection_id = h->conn_id;
	n = h->n_methods;
	if (n > HELLO_STACK_METHODS) {
		pk->heap_infos = aai_alloc(n * sizeof(*infos));
		pk->heap_ptrs = aai_alloc(n * sizeof(*ptrs));
		if (pk->heap_infos == NULL || pk->heap_ptrs == NULL) {
			return AA_ENOMEM;
		}
		infos = pk->heap_infos;
		ptrs = pk->heap_ptrs;
	}
	for (size_t i = 0; i < n; i++) {
		infos[i] = (Aa__V1__MethodInfo)AA__V1__METHOD_INFO__INIT;
		infos[i].name = str(ms[i].name);
		infos[i].cancel_types = ms[i].cancel_types;
		infos[i].type_fingerprint = ms[i].fingerprint;
		ptrs[i] = &infos[i];
	}
	ph->n_methods = n;
	ph->methods = n > 0 ? ptrs : NULL;
	return 0;
}

// fill validates m and builds its protobuf-c form in pk.
static int
fill(packer *pk, const aai_wire_msg *m)
{
	const char *why;

	pk->heap_infos = NULL;
	pk->heap_ptrs = NULL;
	if (aai_wire_rules(&why, m, true) != 0) {
		return AA_EINVAL;
	}
	pk->kind = m->kind;
	switch (m->kind) {
	case AAI_WIRE_START: {
		Aa__V1__Start *s = &pk->body.start;
		*s = (Aa__V1__Start)AA__V1__START__INIT;
		s->op_id = m->op_id;
		s->method = str(m->start.method);
		s->payload = bin(m->start.payload, m->start.payload_len);
		s->deadline_ms = m->start.deadline_ms;
		s->cancel_types = m->start.cancel_types;
		return 0;
	}
	case AAI_WIRE_COMPLETE: {
		Aa__V1__Complete *c = &pk->body.complete;
		*c = (Aa__V1__Complete)AA__V1__COMPLETE__INIT;
		c->op_id = m->op_id;
		c->status = (Aa__V1__Status)m->complete.status;
		c->payload = bin(m->complete.payload, m->complete.payload_len);
		c->error = m->complete.error;
		c->message = text(pk, m->complete.message);
		c->cancel_received = m->complete.cancel_received;
		c->app_code = m->complete.app_code;
		return 0;
	}
	case AAI_WIRE_CANCEL: {
		Aa__V1__Cancel *c = &pk->body.cancel;
		*c = (Aa__V1__Cancel)AA__V1__CANCEL__INIT;
		c->op_id = m->op_id;
		c->type = m->cancel.type;
		return 0;
	}
	case AAI_WIRE_PROGRESS: {
		Aa__V1__Progress *p = &pk->body.progress;
		*p = (Aa__V1__Progress)AA__V1__PROGRESS__INIT;
		p->op_id = m->op_id;
		p->payload = bin(m->progress.payload, m->progress.payload_len);
		return 0;
	}
	case AAI_WIRE_HEARTBEAT: {
		Aa__V1__Heartbeat *h = &pk->body.heartbeat;
		*h = (Aa__V1__Heartbeat)AA__V1__HEARTBEAT__INIT;
		h->time_us = m->heartbeat.time_us;
		return 0;
	}
	case AAI_WIRE_HELLO:
		return fill_hello(pk, &m->hello);
	case AAI_WIRE_GOODBYE: {
		Aa__V1__Goodbye *g = &pk->body.goodbye;
		*g = (Aa__V1__Goodbye)AA__V1__GOODBYE__INIT;
		g->reason = m->goodbye.reason;
		g->message = text(pk, m->goodbye.message);
		return 0;
	}
	default:
		return AA_EINVAL; // unreachable: the rules refused it
	}
}

// The Envelope is written by hand around its body: one key byte (body
// field numbers are below 16), the body's size as a varint, the body. The
// bytes are exactly what protobuf-c would pack for the Envelope, but the
// body's size is computed once instead of twice.

static ProtobufCMessage *
body_of(packer *pk)
{
	// Every member of the union starts with its ProtobufCMessage.
	return (ProtobufCMessage *)&pk->body;
}

static size_t
varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

int
aai_wire_size(size_t *sizep, const aai_wire_msg *m)
{
	packer pk;
	int rv;

	*sizep = 0;
	if ((rv = aai_wire_fast_size(sizep, m)) != AAI_WIRE_NOT_FAST) {
		return rv;
	}
	if ((rv = fill(&pk, m)) == 0) {
		size_t body = protobuf_c_message_get_packed_size(body_of(&pk));
		*sizep = 1 + varint_len(body) + body;
	}
	packer_fini(&pk);
	return rv;
}

int
aai_wire_encode(size_t *lenp, void *buf, size_t cap, const aai_wire_msg *m,
                size_t max_size)
{
	packer pk;
	size_t body, size;
	uint8_t *out = buf;
	int rv;

	*lenp = 0;
	if ((rv = aai_wire_fast_encode(lenp, buf, cap, m, max_size)) !=
	    AAI_WIRE_NOT_FAST) {
		return rv;
	}
	if ((rv = fill(&pk, m)) != 0) {
		packer_fini(&pk);
		return rv;
	}
	body = protobuf_c_message_get_packed_size(body_of(&pk));
	size = 1 + varint_len(body) + body;
	if (max_size != 0 && size > max_size) {
		rv = AA_EMSGSIZE;
	} else if (size > cap || buf == NULL) {
		*lenp = size;
		rv = AA_ENOMEM;
	} else {
		size_t n = 0;
		uint64_t v = body;
		out[n++] = (uint8_t)((unsigned)pk.kind << 3 | 2);
		while (v >= 0x80) {
			out[n++] = (uint8_t)(v | 0x80);
			v >>= 7;
		}
		out[n++] = (uint8_t)v;
		n += protobuf_c_message_pack(body_of(&pk), out + n);
		AAI_ASSERT(n == size);
		*lenp = n;
	}
	packer_fini(&pk);
	return rv;
}

// ---------------------------------------------------------------------------
// Decoding (the raw-byte scans before the unpack are in wire_scan.c).

static int
view_hello(const char **why, aai_wire_msg *m, aai_wire_arena *a,
           const Aa__V1__Hello *h)
{
	aai_wire_hello *v = &m->hello;

	v->version = h->version;
	v->role = (aai_wire_role)h->role;
	v->max_msg_size = h->max_message_size;
	v->max_pending = h->max_pending_ops;
	v->heartbeat_ms = h->heartbeat_interval_ms;
	v->instance_id = h->client_instance_id;
	v->conn_id = h->connection_id;
	v->methods = NULL;
	v->n_methods = 0;
	if (h->role != AA__V1__ROLE__SERVER || h->n_methods == 0) {
		return 0; // a client's table, if any, is ignored
	}
	if (h->n_methods > AAI_WIRE_METHODS_MAX) {
		*why = "server hello with too many methods";
		return AA_EPROTO;
	}
	aai_wire_method *ms =
	    aai_wire_arena_alloc(a, h->n_methods * sizeof(*ms));
	if (ms == NULL) {
		*why = "frame needs too much memory";
		return AA_EPROTO;
	}
	for (size_t i = 0; i < h->n_methods; i++) {
		ms[i].name = h->methods[i]->name;
		ms[i].cancel_types = h->methods[i]->cancel_types;
		ms[i].fingerprint = h->methods[i]->type_fingerprint;
	}
	v->methods = ms;
	v->n_methods = h->n_methods;
	return 0;
}

// view fills the aai_wire_msg view of an unpacked Envelope.
static int
view(const char **why, aai_wire_msg *m, aai_wire_arena *a,
     const Aa__V1__Envelope *env)
{
	m->kind = (aai_wire_kind)env->body_case;
	m->op_id = 0;
	switch (env->body_case) {
	case AA__V1__ENVELOPE__BODY_START: {
		const Aa__V1__Start *s = env->start;
		m->op_id = s->op_id;
		m->start.method = s->method;
		m->start.payload = s->payload.data;
		m->start.payload_len = s->payload.len;
		m->start.deadline_ms = s->deadline_ms;
		m->start.cancel_types = s->cancel_types;
		return 0;
	}
	case AA__V1__ENVELOPE__BODY_COMPLETE: {
		const Aa__V1__Complete *c = env->complete;
		m->op_id = c->op_id;
		m->complete.status = (aai_wire_status)c->status;
		m->complete.error = c->error;
		m->complete.message = c->message;
		m->complete.payload = c->payload.data;
		m->complete.payload_len = c->payload.len;
		m->complete.cancel_received = c->cancel_received;
		m->complete.app_code = c->app_code;
		return 0;
	}
	case AA__V1__ENVELOPE__BODY_CANCEL:
		m->op_id = env->cancel->op_id;
		m->cancel.type = env->cancel->type;
		return 0;
	case AA__V1__ENVELOPE__BODY_PROGRESS:
		m->op_id = env->progress->op_id;
		m->progress.payload = env->progress->payload.data;
		m->progress.payload_len = env->progress->payload.len;
		return 0;
	case AA__V1__ENVELOPE__BODY_HEARTBEAT:
		m->heartbeat.time_us = env->heartbeat->time_us;
		return 0;
	case AA__V1__ENVELOPE__BODY_HELLO:
		return view_hello(why, m, a, env->hello);
	case AA__V1__ENVELOPE__BODY_GOODBYE:
		m->goodbye.reason = env->goodbye->reason;
		m->goodbye.message = env->goodbye->message;
		return 0;
	default:
		*why = "no message body";
		return AA_EPROTO;
	}
}

int
aai_wire_decode(aai_wire_msg *m, const char **why, aai_wire_arena *a,
                const void *frame, size_t len, size_t max_size)
{
	static const uint8_t empty[1];
	const char *unused;
	Aa__V1__Envelope *env;
	int rv;

	if (why == NULL) {
		why = &unused;
	}
	*why = NULL;
	memset(m, 0, sizeof(*m));
	aai_wire_arena_reset(a);
	if (max_size != 0 && len > max_size) {
		*why = "frame larger than the message size limit";
		return AA_EMSGSIZE;
	}
	if (frame == NULL) {
		if (len != 0) {
			*why = "no frame";
			return AA_EPROTO;
		}
		frame = empty;
	}
	// Start, Complete, Cancel and Progress in their usual form, in one
	// pass (wire_fast.c); the rest, and whatever it refuses, here.
	if ((rv = aai_wire_fast_decode(m, why, a, frame, len)) !=
	    AAI_WIRE_NOT_FAST) {
		if (rv != 0) {
			memset(m, 0, sizeof(*m));
			aai_wire_arena_reset(a);
		}
		return rv;
	}
	if ((rv = aai_wire_scan_envelope(why, frame, len)) != 0) {
		return rv;
	}
	// Refuse a frame that would cost too much before allocating it; the
	// same cap is the arena's budget (see the design notes).
	size_t cost, cap = SIZE_MAX;
	if (len <
	    (SIZE_MAX - AAI_WIRE_DECODE_SLACK) / AAI_WIRE_DECODE_FACTOR) {
		cap = len * AAI_WIRE_DECODE_FACTOR + AAI_WIRE_DECODE_SLACK;
	}
	if ((rv = aai_wire_decode_cost(&cost, why, frame, len)) != 0) {
		return rv;
	}
	if (cost > cap) {
		*why = "frame needs too much memory";
		return AA_EPROTO;
	}

	aai_wire_arena_fit(a, cost);

	ProtobufCAllocator alloc = {.alloc = aai_wire_arena_pb_alloc,
	                            .free = aai_wire_arena_pb_free,
	                            .allocator_data = a};
	a->budget = cap;
	env = aa__v1__envelope__unpack(&alloc, len, frame);
	if (env == NULL) {
		*why = a->budget == 0 ? "frame needs too much memory"
		                      : "malformed frame";
		rv = AA_EPROTO;
	} else if ((rv = view(why, m, a, env)) == 0) {
		rv = aai_wire_rules(why, m, false);
	}
	if (rv != 0) {
		memset(m, 0, sizeof(*m));
		aai_wire_arena_reset(a);
	}
	return rv;
}
