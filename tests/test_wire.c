// test_wire.c: the wire codec (common/src/wire.c, docs/protocol.md): round
// trips of every message kind, byte-exact conformance with hand-encoded
// protobuf, one test per validation rule, truncated frames, random and
// mutated garbage, size limits, and zero heap allocations per decode in
// steady state.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/src/wire.h"
#include "../common/src/wire_impl.h"
#include "testutil.h"

TestSuite(wire, .timeout = 300, .fini = aa_test_check_live);

// ---------------------------------------------------------------------------
// A tiny protobuf writer, independent of protoc-c, to craft frames.

typedef struct pb {
	uint8_t b[1 << 16];
	size_t n;
} pb;

static void
pb_byte(pb *p, uint8_t v)
{
	cr_assert_lt(p->n, sizeof(p->b));
	p->b[p->n++] = v;
}

static void
pb_varint(pb *p, uint64_t v)
{
	while (v >= 0x80) {
		pb_byte(p, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	pb_byte(p, (uint8_t)v);
}

static void
pb_key(pb *p, unsigned field, unsigned wtype)
{
	pb_varint(p, ((uint64_t)field << 3) | wtype);
}

static void
pb_uint(pb *p, unsigned field, uint64_t v)
{
	pb_key(p, field, 0);
	pb_varint(p, v);
}

static void
pb_bytes(pb *p, unsigned field, const void *data, size_t len)
{
	pb_key(p, field, 2);
	pb_varint(p, len);
	cr_assert_leq(p->n + len, sizeof(p->b));
	memcpy(p->b + p->n, data, len);
	p->n += len;
}

static void
pb_str(pb *p, unsigned field, const char *s)
{
	pb_bytes(p, field, s, strlen(s));
}

static void
pb_fixed64(pb *p, unsigned field, uint64_t v)
{
	pb_key(p, field, 1);
	for (int i = 0; i < 8; i++) {
		pb_byte(p, (uint8_t)(v >> (8 * i)));
	}
}

// pb_wrap makes an Envelope frame whose body `kind` is the message in m.
static void
pb_wrap(pb *frame, unsigned kind, const pb *m)
{
	frame->n = 0;
	pb_bytes(frame, kind, m->b, m->n);
}

// ---------------------------------------------------------------------------
// Helpers.

static uint8_t arena_buf[16384];
static aai_wire_arena arena;

static void
arena_setup(void)
{
	aai_wire_arena_init(&arena, arena_buf, sizeof(arena_buf));
}

// round_trip encodes m and decodes it into *out (in the global arena).
static size_t
round_trip(aai_wire_msg *out, const aai_wire_msg *m)
{
	static uint8_t buf[1 << 17];
	size_t len, size;
	const char *why = NULL;

	cr_assert_eq(aai_wire_size(&size, m), 0);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), m, 0), 0);
	cr_assert_eq(len, size);
	int rv = aai_wire_decode(out, &why, &arena, buf, len, 0);
	cr_assert_eq(rv, 0, "decode: %s", why ? why : "?");
	cr_assert_eq(out->kind, m->kind);
	cr_assert_eq(out->op_id, m->op_id);
	// The cost walk is an upper bound of what the decode really took.
	size_t cost;
	cr_assert_eq(aai_wire_decode_cost(&cost, NULL, buf, len), 0);
	cr_assert_leq(arena.taken, cost);
	return len;
}

static void
assert_bytes(const void *got, size_t got_len, const void *want, size_t len)
{
	cr_assert_eq(got_len, len);
	if (len > 0) {
		cr_assert_not_null(got);
		cr_assert_eq(memcmp(got, want, len), 0);
	}
}

static void
assert_str(const char *got, const char *want)
{
	cr_assert_not_null(got);
	cr_assert_str_eq(got, want);
}

// decode_err decodes frame and expects error err with a reason containing
// `reason` (when not NULL).
static void
decode_err(const pb *frame, int err, const char *reason)
{
	aai_wire_msg m;
	const char *why = NULL;
	int rv = aai_wire_decode(&m, &why, &arena, frame->b, frame->n, 0);
	cr_assert_eq(rv, err, "want %d got %d (%s)", err, rv, why ? why : "");
	cr_assert_not_null(why);
	if (reason != NULL) {
		cr_assert_not_null(strstr(why, reason),
		                   "reason '%s' lacks '%s'", why, reason);
	}
	cr_assert_eq(m.kind, AAI_WIRE_NONE);
}

// encode_err expects encoding m to fail with AA_EINVAL and checking it to
// fail with AA_EPROTO.
static void
encode_err(const aai_wire_msg *m)
{
	uint8_t buf[4096];
	size_t len = 99;
	const char *why = NULL;
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), m, 0), AA_EINVAL);
	cr_assert_eq(len, 0);
	cr_assert_eq(aai_wire_size(&len, m), AA_EINVAL);
	cr_assert_eq(aai_wire_check(&why, m), AA_EPROTO);
	cr_assert_not_null(why);
}

// ---------------------------------------------------------------------------
// Round trips.

Test(wire, round_trip_start, .init = arena_setup)
{
	aai_wire_msg m, d;
	uint8_t payload[64];
	for (size_t i = 0; i < sizeof(payload); i++) {
		payload[i] = (uint8_t)(i * 7);
	}
	aai_wire_start(&m, 0x0123456789abcdefULL, "calc.add", payload,
	               sizeof(payload), 2500,
	               AA_CANCEL_TERMINAL | AA_CANCEL_TOTAL);
	round_trip(&d, &m);
	assert_str(d.start.method, "calc.add");
	assert_bytes(d.start.payload, d.start.payload_len, payload,
	             sizeof(payload));
	cr_assert_eq(d.start.deadline_ms, 2500);
	cr_assert_eq(d.start.cancel_types, 5);

	// Zero and empty fields are omitted on the wire and read back as such.
	aai_wire_start(&m, 1, "m", NULL, 0, 0, 0);
	size_t len = round_trip(&d, &m);
	cr_assert_eq(len, 7); // 0a 05 08 01 12 01 6d
	cr_assert_eq(d.start.payload_len, 0);
	cr_assert_eq(d.start.deadline_ms, 0);
	cr_assert_eq(d.start.cancel_types, 0);

	// The largest values.
	char name[AAI_WIRE_METHOD_MAX + 1];
	memset(name, 'x', AAI_WIRE_METHOD_MAX);
	name[AAI_WIRE_METHOD_MAX] = '\0';
	aai_wire_start(&m, UINT64_MAX, name, "p", 1, UINT32_MAX, 7);
	round_trip(&d, &m);
	assert_str(d.start.method, name);
	cr_assert_eq(d.start.deadline_ms, UINT32_MAX);
}

Test(wire, round_trip_complete, .init = arena_setup)
{
	aai_wire_msg m, d;

	aai_wire_complete(&m, 42, AAI_WIRE_COMPLETED, 0, NULL, "result", 6);
	round_trip(&d, &m);
	cr_assert_eq(d.complete.status, AAI_WIRE_COMPLETED);
	cr_assert_eq(d.complete.error, 0);
	assert_str(d.complete.message, "");
	assert_bytes(d.complete.payload, d.complete.payload_len, "result", 6);

	aai_wire_complete(&m, 43, AAI_WIRE_CANCELED, AA_ECANCELED, NULL, NULL,
	                  0);
	round_trip(&d, &m);
	cr_assert_eq(d.complete.status, AAI_WIRE_CANCELED);
	cr_assert_eq(d.complete.error, AA_ECANCELED);

	aai_wire_complete(&m, 44, AAI_WIRE_CANCELED, 0, NULL, NULL, 0);
	round_trip(&d, &m);
	cr_assert_eq(d.complete.error, 0);

	aai_wire_complete(&m, 44, AAI_WIRE_CANCELED, AA_ETIMEDOUT,
	                  "deadline passed", NULL, 0);
	round_trip(&d, &m);
	cr_assert_eq(d.complete.error, AA_ETIMEDOUT);

	aai_wire_complete(&m, 45, AAI_WIRE_FAILED, AA_EAPP, "disk full",
	                  "diag", 4);
	round_trip(&d, &m);
	cr_assert_eq(d.complete.status, AAI_WIRE_FAILED);
	cr_assert_eq(d.complete.error, AA_EAPP);
	assert_str(d.complete.message, "disk full");
	assert_bytes(d.complete.payload, d.complete.payload_len, "diag", 4);

	int rejects[] = {AA_ENOENT, AA_ELIMIT, AA_EEXIST, AA_ENOTSUP,
	                 AA_EUNAVAIL};
	for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++) {
		aai_wire_complete(&m, 46 + i, AAI_WIRE_REJECTED,
		                  (uint32_t)rejects[i],
		                  aa_strerror(rejects[i]), NULL, 0);
		round_trip(&d, &m);
		cr_assert_eq(d.complete.status, AAI_WIRE_REJECTED);
		cr_assert_eq(d.complete.error, (uint32_t)rejects[i]);
		assert_str(d.complete.message, aa_strerror(rejects[i]));
	}
}

Test(wire, round_trip_cancel_progress_heartbeat_goodbye, .init = arena_setup)
{
	aai_wire_msg m, d;
	unsigned types[] = {AA_CANCEL_TERMINAL, AA_CANCEL_PARTIAL,
	                    AA_CANCEL_TOTAL};
	for (int i = 0; i < 3; i++) {
		aai_wire_cancel(&m, 7 + i, types[i]);
		round_trip(&d, &m);
		cr_assert_eq(d.cancel.type, types[i]);
	}

	aai_wire_progress(&m, 9, "50%", 3);
	round_trip(&d, &m);
	assert_bytes(d.progress.payload, d.progress.payload_len, "50%", 3);
	aai_wire_progress(&m, 9, NULL, 0);
	round_trip(&d, &m);
	cr_assert_eq(d.progress.payload_len, 0);

	aai_wire_heartbeat(&m, 123456789);
	round_trip(&d, &m);
	cr_assert_eq(d.heartbeat.time_us, 123456789);
	aai_wire_heartbeat(&m, 0);
	cr_assert_eq(round_trip(&d, &m), 2); // 2a 00: an empty Heartbeat
	cr_assert_eq(d.heartbeat.time_us, 0);

	aai_wire_goodbye(&m, AA_EUNAVAIL, "server shutting down");
	round_trip(&d, &m);
	cr_assert_eq(d.goodbye.reason, AA_EUNAVAIL);
	assert_str(d.goodbye.message, "server shutting down");
	aai_wire_goodbye(&m, 0, NULL);
	round_trip(&d, &m);
	cr_assert_eq(d.goodbye.reason, 0);
	assert_str(d.goodbye.message, "");
}

static void
hello_server_round_trip(size_t n)
{
	aai_wire_method *ms = calloc(n + 1, sizeof(*ms));
	char(*names)[16] = calloc(n + 1, sizeof(*names));
	aai_wire_msg m, d;

	for (size_t i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "method.%zu", i);
		ms[i].name = names[i];
		ms[i].cancel_types = (uint32_t)(i % 8);
	}
	aai_wire_hello_server(&m, 77, 1 << 20, 256, 1000, ms, n);
	round_trip(&d, &m);
	cr_assert_eq(d.hello.version, AAI_WIRE_VERSION);
	cr_assert_eq(d.hello.role, AAI_WIRE_ROLE_SERVER);
	cr_assert_eq(d.hello.max_msg_size, 1 << 20);
	cr_assert_eq(d.hello.max_pending, 256);
	cr_assert_eq(d.hello.heartbeat_ms, 1000);
	cr_assert_eq(d.hello.conn_id, 77);
	cr_assert_eq(d.hello.instance_id, 0);
	cr_assert_eq(d.hello.n_methods, n);
	for (size_t i = 0; i < n; i++) {
		assert_str(d.hello.methods[i].name, names[i]);
		cr_assert_eq(d.hello.methods[i].cancel_types, i % 8);
	}
	free(names);
	free(ms);
}

Test(wire, round_trip_hello, .init = arena_setup)
{
	aai_wire_msg m, d;

	aai_wire_hello_client(&m, 0xfeedfacecafebeefULL, 65536, 500);
	round_trip(&d, &m);
	cr_assert_eq(d.hello.version, AAI_WIRE_VERSION);
	cr_assert_eq(d.hello.role, AAI_WIRE_ROLE_CLIENT);
	cr_assert_eq(d.hello.instance_id, 0xfeedfacecafebeefULL);
	cr_assert_eq(d.hello.max_msg_size, 65536);
	cr_assert_eq(d.hello.heartbeat_ms, 500);
	cr_assert_eq(d.hello.max_pending, 0);
	cr_assert_eq(d.hello.conn_id, 0);
	cr_assert_eq(d.hello.n_methods, 0);

	hello_server_round_trip(0);
	hello_server_round_trip(3); // stack path of the encoder
	hello_server_round_trip(16);
	hello_server_round_trip(17);   // heap path
	hello_server_round_trip(5000); // spills the arena
}

// ---------------------------------------------------------------------------
// Conformance with the documented encoding, byte for byte.

Test(wire, bytes_match_the_documented_encoding, .init = arena_setup)
{
	uint8_t buf[256];
	size_t len;
	aai_wire_msg m;
	pb body = {.n = 0}, frame;

	aai_wire_start(&m, 300, "echo", "hi", 2, 1500, 1);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	pb_uint(&body, 1, 300);
	pb_str(&body, 2, "echo");
	pb_bytes(&body, 3, "hi", 2);
	pb_uint(&body, 4, 1500);
	pb_uint(&body, 5, 1);
	pb_wrap(&frame, 1, &body);
	assert_bytes(buf, len, frame.b, frame.n);

	aai_wire_complete(&m, 300, AAI_WIRE_FAILED, AA_EAPP, "no", NULL, 0);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	body.n = 0;
	pb_uint(&body, 1, 300);
	pb_uint(&body, 2, 3);
	pb_uint(&body, 4, 22);
	pb_str(&body, 5, "no");
	pb_wrap(&frame, 2, &body);
	assert_bytes(buf, len, frame.b, frame.n);

	aai_wire_cancel(&m, 300, AA_CANCEL_PARTIAL);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	static const uint8_t cancel[] = {0x1a, 0x05, 0x08, 0xac,
	                                 0x02, 0x10, 0x02};
	assert_bytes(buf, len, cancel, sizeof(cancel));

	aai_wire_progress(&m, 5, "x", 1);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	static const uint8_t progress[] = {0x22, 0x05, 0x08, 0x05,
	                                   0x12, 0x01, 'x'};
	assert_bytes(buf, len, progress, sizeof(progress));

	aai_wire_hello_client(&m, 0x0102030405060708ULL, 4096, 0);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, 1);
	pb_uint(&body, 3, 4096);
	pb_fixed64(&body, 6, 0x0102030405060708ULL);
	pb_wrap(&frame, 6, &body);
	assert_bytes(buf, len, frame.b, frame.n);

	aai_wire_goodbye(&m, AA_EUNAVAIL, NULL);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	static const uint8_t goodbye[] = {0x3a, 0x02, 0x08, 0x0b};
	assert_bytes(buf, len, goodbye, sizeof(goodbye));
}

Test(wire, unknown_fields_are_ignored, .init = arena_setup)
{
	pb body = {.n = 0}, frame = {.n = 0};
	aai_wire_msg m;
	const char *why = NULL;

	pb_uint(&body, 15, 99);         // unknown varint
	pb_uint(&body, 1, 8);           // op id
	pb_bytes(&body, 100, "abc", 3); // unknown bytes
	pb_str(&body, 2, "m");          // method
	pb_fixed64(&body, 2000, 1);     // unknown fixed64
	pb_key(&body, 30, 5);           // unknown fixed32
	for (uint8_t b = 1; b <= 4; b++) {
		pb_byte(&body, b);
	}
	pb_uint(&frame, 20, 5); // unknown top-level field
	pb_bytes(&frame, 1, body.b, body.n);
	pb_bytes(&frame, 99, "zz", 2); // another one
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, frame.b, frame.n, 0), 0,
	             "%s", why);
	cr_assert_eq(m.kind, AAI_WIRE_START);
	cr_assert_eq(m.op_id, 8);
	assert_str(m.start.method, "m");

	// A repeated scalar keeps the last value (standard protobuf).
	body.n = 0;
	pb_uint(&body, 1, 3);
	pb_uint(&body, 2, 1);
	pb_uint(&body, 1, 4);
	pb_uint(&body, 2, 4);
	pb_wrap(&frame, 3, &body);
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, frame.b, frame.n, 0),
	             0);
	cr_assert_eq(m.op_id, 4);
	cr_assert_eq(m.cancel.type, 4);
}

// ---------------------------------------------------------------------------
// Validation: one check per rule, both as hand-crafted bytes (decode gives
// AA_EPROTO) and, where the view can express it, on encode (AA_EINVAL).

Test(wire, envelope_rules, .init = arena_setup)
{
	pb frame = {.n = 0}, body = {.n = 0};

	decode_err(&frame, AA_EPROTO, "no message body"); // empty frame
	pb_uint(&frame, 9, 1);
	decode_err(&frame, AA_EPROTO, "unknown message kind");
	frame.n = 0;
	pb_bytes(&frame, 8, "", 0); // a kind from a future version
	decode_err(&frame, AA_EPROTO, "unknown message kind");

	// Two bodies, of the same or different kinds.
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, 1);
	frame.n = 0;
	pb_bytes(&frame, 3, body.b, body.n);
	pb_bytes(&frame, 3, body.b, body.n);
	decode_err(&frame, AA_EPROTO, "more than one");
	frame.n = 0;
	pb_bytes(&frame, 3, body.b, body.n);
	pb_bytes(&frame, 5, "", 0);
	decode_err(&frame, AA_EPROTO, "more than one");

	// A body with a wire type other than length-delimited.
	frame.n = 0;
	pb_uint(&frame, 3, 1);
	decode_err(&frame, AA_EPROTO, "wire type");

	// Malformed protobuf: a bad key, a group, an unterminated varint, a
	// length past the end, garbage inside a body.
	static const uint8_t bad[][12] = {
	    {0x00},             // field 0
	    {0x0b, 0x0c},       // start group
	    {0x48, 0xff, 0xff}, // varint cut
	    {0x0a, 0x05, 0x08}, // length past end
	    {0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	     0x01},                         // 11-byte varint
	    {0x1a, 0x02, 0x08, 0xff},       // body varint cut
	    {0x1a, 0x03, 0x12, 0x05, 0x00}, // body field cut
	    {0x1a, 0x02, 0x0b, 0x00},       // group in body
	};
	static const size_t bad_len[] = {1, 2, 3, 3, 12, 4, 5, 4};
	for (size_t i = 0; i < sizeof(bad_len) / sizeof(bad_len[0]); i++) {
		memcpy(frame.b, bad[i], bad_len[i]);
		frame.n = bad_len[i];
		decode_err(&frame, AA_EPROTO, "malformed");
	}

	// A NULL frame is an empty one.
	aai_wire_msg m;
	cr_assert_eq(aai_wire_decode(&m, NULL, &arena, NULL, 0, 0), AA_EPROTO);
	cr_assert_eq(aai_wire_decode(&m, NULL, &arena, NULL, 5, 0), AA_EPROTO);

	// A message with no kind cannot be encoded.
	memset(&m, 0, sizeof(m));
	encode_err(&m);
	m.kind = (aai_wire_kind)8;
	encode_err(&m);
}

Test(wire, start_rules, .init = arena_setup)
{
	pb body = {.n = 0}, frame;
	aai_wire_msg m;
	char longname[AAI_WIRE_METHOD_MAX + 2];

	// op id 0
	pb_str(&body, 2, "m");
	pb_wrap(&frame, 1, &body);
	decode_err(&frame, AA_EPROTO, "op id 0");
	aai_wire_start(&m, 0, "m", NULL, 0, 0, 0);
	encode_err(&m);

	// method missing, empty, too long, with control characters
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_wrap(&frame, 1, &body);
	decode_err(&frame, AA_EPROTO, "method");
	aai_wire_start(&m, 1, "", NULL, 0, 0, 0);
	encode_err(&m);
	aai_wire_start(&m, 1, NULL, NULL, 0, 0, 0);
	encode_err(&m);

	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_str(&body, 2, longname);
	pb_wrap(&frame, 1, &body);
	decode_err(&frame, AA_EPROTO, "method");
	aai_wire_start(&m, 1, longname, NULL, 0, 0, 0);
	encode_err(&m);

	const char *bad_names[] = {"a\nb", "tab\t", "\x7f", "\x01"};
	for (size_t i = 0; i < 4; i++) {
		body.n = 0;
		pb_uint(&body, 1, 1);
		pb_str(&body, 2, bad_names[i]);
		pb_wrap(&frame, 1, &body);
		decode_err(&frame, AA_EPROTO, "method");
		aai_wire_start(&m, 1, bad_names[i], NULL, 0, 0, 0);
		encode_err(&m);
	}

	// cancel types outside TERMINAL|PARTIAL|TOTAL
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_str(&body, 2, "m");
	pb_uint(&body, 5, 8);
	pb_wrap(&frame, 1, &body);
	decode_err(&frame, AA_EPROTO, "cancel types");
	aai_wire_start(&m, 1, "m", NULL, 0, 0, 15);
	encode_err(&m);

	// a NULL payload with a length
	aai_wire_start(&m, 1, "m", NULL, 3, 0, 0);
	encode_err(&m);
}

Test(wire, cancel_and_progress_rules, .init = arena_setup)
{
	pb body = {.n = 0}, frame;
	aai_wire_msg m;

	pb_uint(&body, 2, 1);
	pb_wrap(&frame, 3, &body);
	decode_err(&frame, AA_EPROTO, "op id 0");
	aai_wire_cancel(&m, 0, AA_CANCEL_TERMINAL);
	encode_err(&m);

	uint64_t bad_types[] = {0, 3, 5, 6, 7, 8, 1ULL << 32};
	for (size_t i = 0; i < sizeof(bad_types) / sizeof(bad_types[0]); i++) {
		body.n = 0;
		pb_uint(&body, 1, 1);
		if (bad_types[i] != 0) {
			pb_uint(&body, 2, bad_types[i]);
		}
		pb_wrap(&frame, 3, &body);
		decode_err(&frame, AA_EPROTO, "cancellation type");
		aai_wire_cancel(&m, 1, (uint32_t)bad_types[i]);
		encode_err(&m);
	}

	body.n = 0;
	pb_bytes(&body, 2, "x", 1);
	pb_wrap(&frame, 4, &body);
	decode_err(&frame, AA_EPROTO, "op id 0");
	aai_wire_progress(&m, 0, "x", 1);
	encode_err(&m);
	aai_wire_progress(&m, 1, NULL, 1);
	encode_err(&m);
}

Test(wire, complete_rules, .init = arena_setup)
{
	pb body = {.n = 0}, frame;
	aai_wire_msg m;

	// op id 0
	pb_uint(&body, 2, 1);
	pb_wrap(&frame, 2, &body);
	decode_err(&frame, AA_EPROTO, "op id 0");
	aai_wire_complete(&m, 0, AAI_WIRE_COMPLETED, 0, NULL, NULL, 0);
	encode_err(&m);

	// status unset or out of range
	uint64_t bad_status[] = {0, 5, 100, UINT32_MAX};
	for (size_t i = 0; i < 4; i++) {
		body.n = 0;
		pb_uint(&body, 1, 1);
		if (bad_status[i] != 0) {
			pb_uint(&body, 2, bad_status[i]);
		}
		pb_uint(&body, 4, 5);
		pb_wrap(&frame, 2, &body);
		decode_err(&frame, AA_EPROTO, "status");
		aai_wire_complete(&m, 1, (aai_wire_status)bad_status[i], 5,
		                  NULL, NULL, 0);
		encode_err(&m);
	}

	// error codes that do not fit the status
	struct {
		aai_wire_status st;
		uint32_t err;
	} bad[] = {
	    {AAI_WIRE_COMPLETED, AA_EAPP},
	    {AAI_WIRE_CANCELED, AA_EINVAL},
	    {AAI_WIRE_FAILED, 0},
	    {AAI_WIRE_REJECTED, 0},
	    {AAI_WIRE_FAILED, AAI_WIRE_ERROR_MAX + 1},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		body.n = 0;
		pb_uint(&body, 1, 1);
		pb_uint(&body, 2, bad[i].st);
		if (bad[i].err != 0) {
			pb_uint(&body, 4, bad[i].err);
		}
		pb_wrap(&frame, 2, &body);
		decode_err(&frame, AA_EPROTO, "error code");
		aai_wire_complete(&m, 1, bad[i].st, bad[i].err, NULL, NULL, 0);
		encode_err(&m);
	}

	// an over-long message: refused on decode, cut on encode
	char text[AAI_WIRE_TEXT_MAX + 100];
	memset(text, 'e', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, AAI_WIRE_FAILED);
	pb_uint(&body, 4, AA_EAPP);
	pb_str(&body, 5, text);
	pb_wrap(&frame, 2, &body);
	decode_err(&frame, AA_EPROTO, "over-long");
	aai_wire_complete(&m, 1, AAI_WIRE_FAILED, AA_EAPP, text, NULL, 0);
	aai_wire_msg d;
	round_trip(&d, &m);
	cr_assert_eq(strlen(d.complete.message), AAI_WIRE_TEXT_MAX);
	text[AAI_WIRE_TEXT_MAX] = '\0'; // exactly the limit passes
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, AAI_WIRE_FAILED);
	pb_uint(&body, 4, AA_EAPP);
	pb_str(&body, 5, text);
	pb_wrap(&frame, 2, &body);
	const char *why = NULL;
	cr_assert_eq(aai_wire_decode(&d, &why, &arena, frame.b, frame.n, 0),
	             0);

	aai_wire_complete(&m, 1, AAI_WIRE_COMPLETED, 0, NULL, NULL, 2);
	encode_err(&m);
}

Test(wire, hello_rules, .init = arena_setup)
{
	pb body, frame;
	aai_wire_msg m;

	struct {
		uint64_t version, role, max_size, max_pending, conn;
		uint64_t instance;
		const char *reason;
	} bad[] = {
	    {0, 1, 4096, 0, 0, 9, "version"},
	    {1, 0, 4096, 0, 0, 9, "role"},
	    {1, 3, 4096, 0, 0, 9, "role"},
	    {1, 1, 511, 0, 0, 9, "max message size"},
	    {1, 1, 0, 0, 0, 9, "max message size"},
	    {1, 1, 4096, 0, 0, 0, "instance id"},
	    {1, 2, 4096, 0, 5, 0, "max pending"},
	    {1, 2, 4096, 8, 0, 0, "connection id"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		body.n = 0;
		pb_uint(&body, 1, bad[i].version);
		pb_uint(&body, 2, bad[i].role);
		pb_uint(&body, 3, bad[i].max_size);
		pb_uint(&body, 4, bad[i].max_pending);
		pb_fixed64(&body, 6, bad[i].instance);
		pb_uint(&body, 8, bad[i].conn);
		pb_wrap(&frame, 6, &body);
		decode_err(&frame, AA_EPROTO, bad[i].reason);

		memset(&m, 0, sizeof(m));
		m.kind = AAI_WIRE_HELLO;
		m.hello.version = (uint32_t)bad[i].version;
		m.hello.role = (aai_wire_role)bad[i].role;
		m.hello.max_msg_size = (uint32_t)bad[i].max_size;
		m.hello.max_pending = (uint32_t)bad[i].max_pending;
		m.hello.conn_id = bad[i].conn;
		m.hello.instance_id = bad[i].instance;
		encode_err(&m);
	}

	// The method table: bad names, bad cancel types.
	const char *names[] = {"", "bad\x01name", "ok"};
	uint32_t types[] = {1, 1, 9};
	for (size_t i = 0; i < 3; i++) {
		pb mi = {.n = 0};
		pb_str(&mi, 1, names[i]);
		pb_uint(&mi, 2, types[i]);
		body.n = 0;
		pb_uint(&body, 1, 1);
		pb_uint(&body, 2, 2);
		pb_uint(&body, 3, 4096);
		pb_uint(&body, 4, 1);
		pb_bytes(&body, 7, mi.b, mi.n);
		pb_uint(&body, 8, 1);
		pb_wrap(&frame, 6, &body);
		decode_err(&frame, AA_EPROTO, "server hello with");

		aai_wire_method meth = {names[i], types[i], 0};
		aai_wire_hello_server(&m, 1, 4096, 1, 0, &meth, 1);
		encode_err(&m);
	}
	aai_wire_hello_server(&m, 1, 4096, 1, 0, NULL, 2);
	encode_err(&m);

	// A client's method table and server-only fields are ignored.
	pb mi = {.n = 0};
	pb_str(&mi, 1, "");
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, 1);
	pb_uint(&body, 3, 4096);
	pb_uint(&body, 4, 10);
	pb_fixed64(&body, 6, 3);
	pb_bytes(&body, 7, mi.b, mi.n);
	pb_wrap(&frame, 6, &body);
	const char *why = NULL;
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, frame.b, frame.n, 0), 0,
	             "%s", why);
	cr_assert_eq(m.hello.n_methods, 0);

	// A future version decodes: refusing it is the handshake's job.
	body.n = 0;
	pb_uint(&body, 1, 2);
	pb_uint(&body, 2, 1);
	pb_uint(&body, 3, 4096);
	pb_fixed64(&body, 6, 3);
	pb_wrap(&frame, 6, &body);
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, frame.b, frame.n, 0),
	             0);
	cr_assert_eq(m.hello.version, 2);
}

Test(wire, goodbye_rules, .init = arena_setup)
{
	pb body = {.n = 0}, frame;
	aai_wire_msg m;

	pb_uint(&body, 1, AAI_WIRE_ERROR_MAX + 1);
	pb_wrap(&frame, 7, &body);
	decode_err(&frame, AA_EPROTO, "reason");
	aai_wire_goodbye(&m, AAI_WIRE_ERROR_MAX + 1, NULL);
	encode_err(&m);

	char text[AAI_WIRE_TEXT_MAX + 2];
	memset(text, 'g', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	body.n = 0;
	pb_str(&body, 2, text);
	pb_wrap(&frame, 7, &body);
	decode_err(&frame, AA_EPROTO, "over-long");
	aai_wire_goodbye(&m, AA_EUNAVAIL, text);
	aai_wire_msg d;
	round_trip(&d, &m);
	cr_assert_eq(strlen(d.goodbye.message), AAI_WIRE_TEXT_MAX);
}

// ---------------------------------------------------------------------------
// Limits.

Test(wire, size_limits, .init = arena_setup)
{
	static uint8_t payload[70000];
	static uint8_t buf[80000];
	aai_wire_msg m, d;
	size_t len, need;
	const char *why = NULL;

	memset(payload, 0xab, sizeof(payload));
	aai_wire_start(&m, 1, "big", payload, sizeof(payload), 0, 0);
	cr_assert_eq(aai_wire_size(&need, &m), 0);
	cr_assert_gt(need, sizeof(payload));

	// Over the limit: refused, nothing written.
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 65536),
	             AA_EMSGSIZE);
	cr_assert_eq(len, 0);
	// Exactly at the limit: fine.
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, need), 0);
	cr_assert_eq(len, need);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, need - 1),
	             AA_EMSGSIZE);
	// Within the limit but not the buffer: AA_ENOMEM and the size needed.
	cr_assert_eq(aai_wire_encode(&len, buf, need - 1, &m, 0), AA_ENOMEM);
	cr_assert_eq(len, need);
	cr_assert_eq(aai_wire_encode(&len, NULL, 0, &m, 0), AA_ENOMEM);

	// The receiver refuses a frame over its limit before parsing it.
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	cr_assert_eq(aai_wire_decode(&d, &why, &arena, buf, len, len - 1),
	             AA_EMSGSIZE);
	cr_assert_not_null(why);
	cr_assert_eq(d.kind, AAI_WIRE_NONE);
	cr_assert_eq(aai_wire_decode(&d, &why, &arena, buf, len, len), 0);
	assert_bytes(d.start.payload, d.start.payload_len, payload,
	             sizeof(payload));
	// The payload is read where it is, in the frame: nothing of its 70 KB
	// is copied into the arena (16 KiB), so nothing spills.
	cr_assert_eq(arena.spills, 0);
	cr_assert(d.start.payload > (const void *)buf &&
	          d.start.payload < (const void *)(buf + len));
	aai_wire_fast_off = true; // the protobuf-c path copies it
	cr_assert_eq(aai_wire_decode(&d, &why, &arena, buf, len, len), 0);
	aai_wire_fast_off = false;
	assert_bytes(d.start.payload, d.start.payload_len, payload,
	             sizeof(payload));
	cr_assert_gt(arena.spills, 0); // 70 KB did not fit 16 KiB
	aai_wire_arena_fini(&arena);
}

Test(wire, memory_amplification_is_bounded, .init = arena_setup)
{
	static pb body, frame;
	aai_wire_msg m;
	const char *why = NULL;

	// 20,000 empty method entries: 2 bytes each on the wire, ~100 bytes
	// each in protobuf-c's memory. Refused for memory, not crashed.
	body.n = 0;
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, 2);
	pb_uint(&body, 3, 4096);
	pb_uint(&body, 4, 1);
	pb_uint(&body, 8, 1);
	for (int i = 0; i < 20000; i++) {
		pb_bytes(&body, 7, "", 0);
	}
	pb_wrap(&frame, 6, &body);
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, frame.b, frame.n, 0),
	             AA_EPROTO);
	cr_assert_not_null(strstr(why, "memory"), "%s", why);

	// A plain arena with no buffer at all still decodes, all on the heap.
	aai_wire_arena a;
	aai_wire_arena_init(&a, NULL, 0);
	aai_wire_start(&m, 1, "m", "p", 1, 0, 0);
	uint8_t buf[64];
	size_t len;
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	cr_assert_eq(aai_wire_decode(&m, &why, &a, buf, len, 0), 0);
	cr_assert_gt(a.spills, 0);
	aai_wire_arena_fini(&a);

	// An unaligned buffer is aligned by init.
	aai_wire_arena_init(&a, arena_buf + 3, 100);
	cr_assert_eq((uintptr_t)a.buf % 8, 0);
	cr_assert_leq(a.cap, 97);
	cr_assert_eq(aai_wire_decode(&m, &why, &a, buf, len, 0), 0);
	aai_wire_arena_fini(&a);
	aai_wire_arena_fini(&arena);
}

// ---------------------------------------------------------------------------
// Decoding cost: hostile frames are refused before anything is allocated;
// what is accepted costs at most the documented multiple.

// amp_frame builds, on the heap, an Envelope whose body `kind` is `head`
// followed by n copies of rep[0..rep_len).
static uint8_t *
amp_frame(size_t *lenp, unsigned kind, const pb *head, const void *rep,
          size_t rep_len, size_t n)
{
	size_t body = head->n + rep_len * n;
	pb *pre = calloc(1, sizeof(*pre));
	pb_key(pre, kind, 2);
	pb_varint(pre, body);
	uint8_t *f = malloc(pre->n + body);
	cr_assert_not_null(f);
	memcpy(f, pre->b, pre->n);
	memcpy(f + pre->n, head->b, head->n);
	for (size_t i = 0; i < n; i++) {
		memcpy(f + pre->n + head->n + i * rep_len, rep, rep_len);
	}
	*lenp = pre->n + body;
	free(pre);
	return f;
}

// refused_for_free decodes a hostile frame: AA_EPROTO with a reason
// containing `reason`, no arena byte taken and no heap allocation made.
static void
refused_for_free(const uint8_t *f, size_t len, const char *reason)
{
	aai_wire_msg m;
	const char *why = NULL;
	uint64_t allocs = aa_heap_allocs();
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, f, len, 0), AA_EPROTO);
	cr_assert_not_null(why);
	cr_assert_not_null(strstr(why, reason), "%s", why);
	cr_assert_eq(arena.taken, 0, "refused after taking %zu bytes",
	             arena.taken);
	cr_assert_eq(aa_heap_allocs(), allocs, "refused after allocating");
	test_note("%zu-byte frame refused at no cost: %s", len, why);
}

static void
server_hello_head(pb *h)
{
	h->n = 0;
	pb_uint(h, 1, 1);
	pb_uint(h, 2, 2);
	pb_uint(h, 3, 1 << 20);
	pb_uint(h, 4, 1);
	pb_uint(h, 8, 1);
}

Test(wire, amplification_frames_are_refused_before_allocating,
     .init = arena_setup)
{
	static pb head;
	static const uint8_t unknown_varint[] = {0x78, 0x00}; // field 15
	static const uint8_t empty_method[] = {0x3a, 0x00};   // field 7, ""
	static const uint8_t op_id_again[] = {0x08, 0x01};    // field 1
	size_t len;
	uint8_t *f;

	// ~1 MiB of 2-byte unknown fields in a Start (protobuf-c would take
	// ~30 times that).
	head.n = 0;
	pb_uint(&head, 1, 1);
	pb_str(&head, 2, "m");
	f = amp_frame(&len, 1, &head, unknown_varint, 2, 500000);
	cr_assert_gt(len, 1000000);
	refused_for_free(f, len, "unknown");
	free(f);

	// A Hello with 500,000 empty method entries.
	server_hello_head(&head);
	f = amp_frame(&len, 6, &head, empty_method, 2, 500000);
	refused_for_free(f, len, "repeated field");
	free(f);

	// As many empty entries as a table may have: within the count, but
	// each would cost ~100 bytes for 2 on the wire.
	f = amp_frame(&len, 6, &head, empty_method, 2, AAI_WIRE_METHODS_MAX);
	refused_for_free(f, len, "memory");
	free(f);

	// A singular field repeated 100,000 times (each would be scanned).
	head.n = 0;
	pb_str(&head, 2, "m");
	f = amp_frame(&len, 1, &head, op_id_again, 2, 100000);
	refused_for_free(f, len, "repeated fields");
	free(f);

	// Unknown fields at the Envelope's top level.
	head.n = 0;
	pb_uint(&head, 1, 1);
	pb_str(&head, 2, "m");
	size_t blen;
	uint8_t *body = amp_frame(&blen, 1, &head, NULL, 0, 0);
	len = blen + 2 * 100000;
	f = malloc(len);
	memcpy(f, body, blen);
	for (size_t i = 0; i < 100000; i++) {
		memcpy(f + blen + 2 * i, unknown_varint, 2);
	}
	refused_for_free(f, len, "unknown");
	free(f);
	free(body);
	aai_wire_arena_fini(&arena);
}

Test(wire, accepted_frames_cost_at_most_the_documented_multiple,
     .init = arena_setup)
{
	static pb head;
	static uint8_t unknown_kib[1030];
	aai_wire_msg m;
	const char *why = NULL;
	size_t len, cost, worst = 0;
	uint8_t *f;

	// The largest legal method table, with short distinct names: the
	// most decoded memory per frame byte a valid frame can ask for.
	aai_wire_method *ms = calloc(AAI_WIRE_METHODS_MAX, sizeof(*ms));
	char(*names)[8] = calloc(AAI_WIRE_METHODS_MAX, sizeof(*names));
	for (size_t i = 0; i < AAI_WIRE_METHODS_MAX; i++) {
		snprintf(names[i], sizeof(names[i]), "%zx", i);
		ms[i].name = names[i];
	}
	aai_wire_hello_server(&m, 1, 1 << 20, 1, 0, ms, AAI_WIRE_METHODS_MAX);
	cr_assert_eq(aai_wire_size(&len, &m), 0);
	f = malloc(len);
	cr_assert_eq(aai_wire_encode(&len, f, len, &m, 0), 0);
	cr_assert_eq(aai_wire_decode_cost(&cost, NULL, f, len), 0);
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, f, len, 0), 0, "%s",
	             why);
	cr_assert_eq(m.hello.n_methods, AAI_WIRE_METHODS_MAX);
	cr_assert_leq(arena.taken, cost);
	cr_assert_leq(cost,
	              len * AAI_WIRE_DECODE_FACTOR + AAI_WIRE_DECODE_SLACK);
	test_note("hello of %zu bytes: took %zu bytes (%.1fx), bound %zu", len,
	          arena.taken, (double)arena.taken / (double)len, cost);
	free(f);
	free(names);
	free(ms);

	// A Start with as many 1 KiB unknown fields as allowed: about 1x.
	head.n = 0;
	pb_uint(&head, 1, 1);
	pb_str(&head, 2, "m");
	pb *one = calloc(1, sizeof(*one));
	pb_bytes(one, 99, unknown_kib, 1024);
	f = amp_frame(&len, 1, &head, one->b, one->n,
	              AAI_WIRE_EXTRA_FIELDS_MAX);
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, f, len, 0), 0, "%s",
	             why);
	cr_assert_eq(aai_wire_decode_cost(&cost, NULL, f, len), 0);
	cr_assert_leq(arena.taken, cost);
	worst = arena.taken;
	cr_assert_leq(worst, 2 * len, "unknown bytes cost about their size");
	free(f);

	// One more is refused.
	f = amp_frame(&len, 1, &head, one->b, one->n,
	              AAI_WIRE_EXTRA_FIELDS_MAX + 1);
	cr_assert_eq(aai_wire_decode(&m, &why, &arena, f, len, 0), AA_EPROTO);
	cr_assert_eq(arena.taken, 0);
	free(f);
	free(one);
	aai_wire_arena_fini(&arena);
}

// ---------------------------------------------------------------------------
// Steady state: no heap allocation per encode or decode.

Test(wire, steady_state_allocates_nothing, .init = arena_setup)
{
	static uint8_t frames[8][512];
	size_t lens[8];
	aai_wire_msg m, d;
	uint8_t payload[64] = {1, 2, 3};
	aai_wire_method meths[2] = {{"a", 1, 0}, {"b", 7, 0}};
	int n = 0;

	aai_wire_start(&m, 1, "bench.echo.method", payload, 64, 100, 1);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_complete(&m, 1, AAI_WIRE_COMPLETED, 0, NULL, payload, 64);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_complete(&m, 1, AAI_WIRE_FAILED, AA_EAPP, "bad", NULL, 0);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_cancel(&m, 1, AA_CANCEL_TERMINAL);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_progress(&m, 1, payload, 10);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_heartbeat(&m, 5);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_hello_server(&m, 3, 4096, 10, 100, meths, 2);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_goodbye(&m, AA_EUNAVAIL, "bye");
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;

	uint64_t before = aa_heap_allocs();
	for (int i = 0; i < 20000; i++) {
		const char *why = NULL;
		int k = i % n;
		cr_assert_eq(aai_wire_decode(&d, &why, &arena, frames[k],
		                             lens[k], 4096),
		             0);
		uint8_t out[512];
		size_t len;
		cr_assert_eq(aai_wire_encode(&len, out, sizeof(out), &d, 4096),
		             0);
		cr_assert_eq(len, lens[k]);
		cr_assert_eq(memcmp(out, frames[k], len), 0);
	}
	cr_assert_eq(aa_heap_allocs(), before, "decode/encode called malloc");
	cr_assert_eq(arena.spills, 0);
	aai_wire_arena_fini(&arena);
}

Test(wire, growing_arena_keeps_what_the_frames_needed)
{
	static uint8_t frame[32768];
	static uint8_t big[20000];
	uint8_t payload[64] = {1, 2, 3};
	aai_wire_arena g;
	aai_wire_msg m, d;
	size_t len, big_len;
	const char *why = NULL;

	// The protobuf-c path: the fast one reads payloads in place and
	// needs the arena only for a string (fast_path_arena_* below).
	aai_wire_fast_off = true;
	aai_wire_arena_init_growing(&g, 8192);
	cr_assert_eq(g.cap, 0, "no buffer before the first frame");
	aai_wire_complete(&m, 1, AAI_WIRE_COMPLETED, 0, NULL, payload, 64);
	cr_assert_eq(aai_wire_encode(&len, frame, sizeof(frame), &m, 0), 0);
	cr_assert_eq(aai_wire_decode(&d, &why, &g, frame, len, 0), 0);
	size_t small = g.cap;
	cr_assert_geq(small, AAI_WIRE_ARENA_GROW_MIN);
	cr_assert_lt(small, 8192, "a small frame grew it to %zu", small);
	cr_assert_eq(g.spills, 0);

	// Steady state: the kept buffer fits, nothing is allocated.
	uint64_t before = aa_heap_allocs();
	for (int i = 0; i < 1000; i++) {
		cr_assert_eq(aai_wire_decode(&d, &why, &g, frame, len, 0), 0);
	}
	cr_assert_eq(aa_heap_allocs(), before, "decode called malloc");
	cr_assert_eq(g.cap, small);

	// A frame beyond grow_max: the buffer stops there, the rest spills.
	static uint8_t big_frame[32768];
	aai_wire_complete(&m, 2, AAI_WIRE_COMPLETED, 0, NULL, big,
	                  sizeof(big));
	cr_assert_eq(
	    aai_wire_encode(&big_len, big_frame, sizeof(big_frame), &m, 0), 0);
	cr_assert_eq(aai_wire_decode(&d, &why, &g, big_frame, big_len, 0), 0);
	cr_assert_eq(d.complete.payload_len, sizeof(big));
	cr_assert_eq(g.cap, 8192);
	cr_assert_gt(g.spills, 0);

	// Small frames again fit the buffer it kept.
	uint64_t spills = g.spills;
	before = aa_heap_allocs();
	cr_assert_eq(aai_wire_decode(&d, &why, &g, frame, len, 0), 0);
	cr_assert_eq(aa_heap_allocs(), before);
	cr_assert_eq(g.spills, spills);
	aai_wire_arena_fini(&g);
	cr_assert_eq(g.cap, 0);
	aai_wire_fast_off = false;
}

Test(wire, fast_path_arena_holds_only_the_string)
{
	static uint8_t frame[4096];
	static uint8_t payload[2000];
	aai_wire_arena g;
	aai_wire_msg m, d;
	size_t len;
	const char *why = NULL;

	aai_wire_arena_init_growing(&g, 8192);
	aai_wire_start(&m, 5, "svc.method", payload, sizeof(payload), 0, 1);
	cr_assert_eq(aai_wire_encode(&len, frame, sizeof(frame), &m, 0), 0);
	cr_assert_eq(aai_wire_decode(&d, &why, &g, frame, len, 0), 0);
	cr_assert_str_eq(d.start.method, "svc.method");
	cr_assert_eq(g.cap, AAI_WIRE_ARENA_GROW_MIN,
	             "grown for the name only");
	cr_assert_eq(g.spills, 0);
	uint64_t before = aa_heap_allocs();
	for (int i = 0; i < 1000; i++) {
		cr_assert_eq(aai_wire_decode(&d, &why, &g, frame, len, 0), 0);
	}
	cr_assert_eq(aa_heap_allocs(), before, "decode called malloc");
	aai_wire_arena_fini(&g);
}

// ---------------------------------------------------------------------------
// Hostile input.

static void
encode_all_kinds(uint8_t frames[][512], size_t *lens, int *np)
{
	aai_wire_msg m;
	aai_wire_method meths[3] = {{"x", 1, 0}, {"yy", 2, 0}, {"zzz", 7, 0}};
	int n = 0;

	aai_wire_start(&m, 1234567, "svc.method", "payload!", 8, 900, 5);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_complete(&m, 99, AAI_WIRE_FAILED, AA_EAPP, "oops", "d", 1);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_cancel(&m, 300, AA_CANCEL_TOTAL);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_progress(&m, 77, "abc", 3);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_heartbeat(&m, 1ULL << 40);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_hello_client(&m, 0x1122334455667788ULL, 8192, 250);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_hello_server(&m, 5, 8192, 64, 250, meths, 3);
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	aai_wire_goodbye(&m, AA_EUNAVAIL, "shutdown");
	cr_assert_eq(aai_wire_encode(&lens[n], frames[n], 512, &m, 0), 0);
	n++;
	*np = n;
}

Test(wire, truncated_frames_at_every_length, .init = arena_setup)
{
	static uint8_t frames[8][512];
	size_t lens[8];
	int n;
	aai_wire_msg m;

	encode_all_kinds(frames, lens, &n);
	for (int k = 0; k < n; k++) {
		for (size_t len = 0; len < lens[k]; len++) {
			// Copy so that ASan sees a read past the cut.
			uint8_t *cut = malloc(len + 1);
			const char *why = NULL;
			memcpy(cut, frames[k], len);
			int rv =
			    aai_wire_decode(&m, &why, &arena, cut, len, 0);
			cr_assert_eq(rv, AA_EPROTO, "kind %d len %zu", k, len);
			cr_assert_not_null(why);
			free(cut);
		}
		const char *why = NULL;
		cr_assert_eq(
		    aai_wire_decode(&m, &why, &arena, frames[k], lens[k], 0),
		    0, "%s", why);
	}
	aai_wire_arena_fini(&arena);
}

// xorshift64*: a fixed-seed PRNG so that every run sees the same inputs.
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t
rng(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

// check_decoded re-encodes a message that decoded: whatever passes the
// receiver's rules must pass the sender's too.
static void
check_decoded(const aai_wire_msg *m)
{
	static uint8_t out[1 << 12];
	size_t len;
	aai_wire_msg copy = *m;
	cr_assert_eq(aai_wire_check(NULL, m), 0);
	cr_assert_eq(aai_wire_encode(&len, out, sizeof(out), &copy, 0), 0);
}

Test(wire, random_garbage_never_crashes, .init = arena_setup)
{
	static uint8_t frames[8][512];
	size_t lens[8];
	int n, ok = 0;
	uint8_t small_buf[256];
	aai_wire_arena small;
	aai_wire_msg m;
	uint8_t in[600];

	encode_all_kinds(frames, lens, &n);
	// A small arena so that the spill path runs too.
	aai_wire_arena_init(&small, small_buf, sizeof(small_buf));
	for (int i = 0; i < 200000; i++) {
		size_t len;
		if (i % 2 == 0) {
			// Pure noise, biased towards short frames.
			len = (size_t)(rng() % (i % 10 == 0 ? 600 : 40));
			for (size_t j = 0; j < len; j++) {
				in[j] = (uint8_t)rng();
			}
		} else {
			// A valid frame with a few bytes mutated, cut or
			// extended.
			int k = (int)(rng() % (uint64_t)n);
			len = lens[k];
			memcpy(in, frames[k], len);
			int flips = 1 + (int)(rng() % 4);
			for (int f = 0; f < flips; f++) {
				size_t at = (size_t)(rng() % len);
				switch (rng() % 4) {
				case 0:
					in[at] ^= (uint8_t)(1u << (rng() % 8));
					break;
				case 1:
					in[at] = (uint8_t)rng();
					break;
				case 2:
					in[at] =
					    (uint8_t)(rng() % 2 ? 0xff : 0);
					break;
				default:
					len = at + 1;
					break;
				}
			}
			if (rng() % 8 == 0 && len + 8 < sizeof(in)) {
				for (int e = 0; e < 8; e++) {
					in[len++] = (uint8_t)rng();
				}
			}
		}
		// Decode from a heap copy of exactly len bytes: ASan catches
		// any read past the end.
		uint8_t *frame = malloc(len ? len : 1);
		memcpy(frame, in, len);
		const char *why = NULL;
		aai_wire_arena *a = i % 3 == 0 ? &small : &arena;
		int rv = aai_wire_decode(&m, &why, a, frame, len, 4096);
		if (rv == 0) {
			ok++;
			cr_assert_neq(m.kind, AAI_WIRE_NONE);
			check_decoded(&m);
		} else {
			cr_assert(rv == AA_EPROTO || rv == AA_EMSGSIZE,
			          "unexpected error %d", rv);
			cr_assert_not_null(why);
			cr_assert_eq(m.kind, AAI_WIRE_NONE);
		}
		free(frame);
	}
	test_note("%d of 200000 inputs decoded", ok);
	// Some mutants stay valid, most do not.
	cr_assert_gt(ok, 1000);
	cr_assert_lt(ok, 150000);
	aai_wire_arena_fini(&small);
	aai_wire_arena_fini(&arena);
}

// Complete's version-1 fields: whether the Cancel came first, and the
// application's own code (any int32, zigzag-encoded).
Test(wire, complete_cancel_received_and_app_code, .init = arena_setup)
{
	aai_wire_msg m, d;
	aai_wire_complete(&m, 7, AAI_WIRE_COMPLETED, 0, NULL, "r", 1);
	m.complete.cancel_received = true;
	round_trip(&d, &m);
	cr_assert(d.complete.cancel_received);
	cr_assert_eq(d.complete.app_code, 0);
	int32_t codes[] = {0,        1,         -1,       AA_ECANCELED,
	                   AA_ELAST, INT32_MIN, INT32_MAX};
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		aai_wire_complete(&m, 8, AAI_WIRE_FAILED, AA_EAPP, "app", NULL,
		                  0);
		m.complete.app_code = codes[i];
		round_trip(&d, &m);
		cr_assert_eq(d.complete.error, AA_EAPP);
		cr_assert_eq(d.complete.app_code, codes[i]);
		cr_assert(!d.complete.cancel_received);
	}
	// A server-side cancel has its own code.
	aai_wire_complete(&m, 9, AAI_WIRE_CANCELED, AA_ESRVCANCEL, NULL, NULL,
	                  0);
	round_trip(&d, &m);
	cr_assert_eq(d.complete.error, AA_ESRVCANCEL);
	// The documented bytes: cancel_received is field 6 (varint), app_code
	// field 7 (sint32: -3 is zigzag 5).
	pb body = {.n = 0}, frame;
	pb_uint(&body, 1, 3);
	pb_uint(&body, 2, AAI_WIRE_FAILED);
	pb_uint(&body, 4, AA_EAPP);
	pb_uint(&body, 6, 1);
	pb_uint(&body, 7, 5);
	pb_wrap(&frame, 2, &body);
	const char *why = NULL;
	cr_assert_eq(aai_wire_decode(&d, &why, &arena, frame.b, frame.n, 0),
	             0);
	cr_assert(d.complete.cancel_received);
	cr_assert_eq(d.complete.app_code, -3);
}

// Strings are their bytes: an embedded NUL or invalid UTF-8 is refused,
// never cut; texts we send are made valid (cut at a character boundary,
// bad bytes replaced).
Test(wire, strings_are_utf8_without_nul, .init = arena_setup)
{
	static const char *const bad[] = {
	    "ec\0ho",           // NUL
	    "\xff",             // not UTF-8
	    "\xc0\xaf",         // overlong
	    "\xed\xa0\x80",     // a surrogate
	    "\xf4\x90\x80\x80", // above U+10FFFF
	    "\xe2\x82",         // truncated
	};
	static const size_t bad_len[] = {5, 1, 2, 3, 4, 2};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		pb body = {.n = 0}, frame;
		pb_uint(&body, 1, 1);
		pb_bytes(&body, 2, bad[i], bad_len[i]);
		pb_wrap(&frame, 1, &body); // Start.method
		decode_err(&frame, AA_EPROTO, "UTF-8");
		body.n = 0;
		pb_uint(&body, 1, 1);
		pb_uint(&body, 2, AAI_WIRE_FAILED);
		pb_uint(&body, 4, AA_EAPP);
		pb_bytes(&body, 5, bad[i], bad_len[i]);
		pb_wrap(&frame, 2, &body); // Complete.message
		decode_err(&frame, AA_EPROTO, "UTF-8");
		body.n = 0;
		pb_uint(&body, 1, AA_EPROTO);
		pb_bytes(&body, 2, bad[i], bad_len[i]);
		pb_wrap(&frame, 7, &body); // Goodbye.message
		decode_err(&frame, AA_EPROTO, "UTF-8");
	}
	// A server Hello whose method name has a NUL.
	pb info = {.n = 0}, body = {.n = 0}, frame;
	pb_bytes(&info, 1, "a\0b", 3);
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, AAI_WIRE_ROLE_SERVER);
	pb_uint(&body, 3, 4096);
	pb_uint(&body, 4, 1);
	pb_uint(&body, 8, 1);
	pb_bytes(&body, 7, info.b, info.n);
	pb_wrap(&frame, 6, &body);
	decode_err(&frame, AA_EPROTO, "UTF-8");
	// Non-ASCII UTF-8 is fine, in a method name too.
	aai_wire_msg m, d;
	aai_wire_start(&m, 1, "caf\xc3\xa9.\xe2\x82\xac", NULL, 0, 0, 0);
	round_trip(&d, &m);
	assert_str(d.start.method, "caf\xc3\xa9.\xe2\x82\xac");
	// An error text with bad bytes is repaired on encode, and a long
	// one is cut before a character, not inside it.
	aai_wire_complete(&m, 2, AAI_WIRE_FAILED, AA_EAPP,
	                  "a\xff"
	                  "b",
	                  NULL, 0);
	round_trip(&d, &m);
	assert_str(d.complete.message, "a?b");
	static char longtext[AAI_WIRE_TEXT_MAX + 8];
	memset(longtext, 'x', AAI_WIRE_TEXT_MAX - 1);
	memcpy(longtext + AAI_WIRE_TEXT_MAX - 1, "\xe2\x82\xac", 4);
	aai_wire_complete(&m, 3, AAI_WIRE_FAILED, AA_EAPP, longtext, NULL, 0);
	round_trip(&d, &m);
	cr_assert_eq(strlen(d.complete.message), AAI_WIRE_TEXT_MAX - 1);
}

Test(wire, names)
{
	cr_assert_str_eq(aai_wire_kind_name(AAI_WIRE_START), "start");
	cr_assert_str_eq(aai_wire_kind_name(AAI_WIRE_GOODBYE), "goodbye");
	cr_assert_str_eq(aai_wire_kind_name((aai_wire_kind)42), "none");
	cr_assert_str_eq(aai_wire_status_name(AAI_WIRE_REJECTED), "rejected");
	cr_assert_str_eq(aai_wire_status_name((aai_wire_status)0), "invalid");
}

// Typed methods (docs/protocol.md, "Typed methods"): a server's MethodInfo
// may carry type_fingerprint, field 10, fixed64; absent reads as 0.
Test(wire, method_fingerprint_is_field_10, .init = arena_setup)
{
	uint8_t buf[256];
	size_t len;
	aai_wire_msg m, d;
	aai_wire_method ms[2] = {
	    {.name = "a.S/M",
	     .cancel_types = 1,
	     .fingerprint = 0x1122334455667788ULL},
	    {.name = "plain", .cancel_types = 7},
	};
	pb mi = {.n = 0}, mi2 = {.n = 0}, body = {.n = 0}, frame;

	aai_wire_hello_server(&m, 9, 4096, 4, 0, ms, 2);
	cr_assert_eq(aai_wire_encode(&len, buf, sizeof(buf), &m, 0), 0);
	pb_str(&mi, 1, "a.S/M");
	pb_uint(&mi, 2, 1);
	pb_fixed64(&mi, 10, 0x1122334455667788ULL);
	pb_str(&mi2, 1, "plain");
	pb_uint(&mi2, 2, 7);
	pb_uint(&body, 1, 1);
	pb_uint(&body, 2, 2);
	pb_uint(&body, 3, 4096);
	pb_uint(&body, 4, 4);
	pb_bytes(&body, 7, mi.b, mi.n);
	pb_bytes(&body, 7, mi2.b, mi2.n);
	pb_uint(&body, 8, 9);
	pb_wrap(&frame, 6, &body);
	assert_bytes(buf, len, frame.b, frame.n);

	round_trip(&d, &m);
	cr_assert_eq(d.hello.n_methods, 2);
	cr_assert_eq(d.hello.methods[0].fingerprint, 0x1122334455667788ULL);
	cr_assert_eq(d.hello.methods[1].fingerprint, 0, "untyped");
}

// ---------------------------------------------------------------------------
// The fast path (wire_fast.c) against the protobuf-c path: the same bytes
// on encode, the same verdict, reason and message on decode.

// random_msg fills m with a random Start, Complete, Cancel or Progress,
// zero fields and odd texts included; the strings live in text.
static void
random_msg(aai_wire_msg *m, char *text, size_t cap, const uint8_t *payload)
{
	static const char *const texts[] = {"", "boom", "caf\xc3\xa9",
	                                    "bad \xff byte", "m"};
	uint64_t ids[] = {1, 127, 128, 300, 1ull << 35, UINT64_MAX};
	uint64_t id = rng() % 8 == 0 ? 0 : ids[rng() % 6];
	size_t plen = rng() % 4 == 0 ? 0 : (size_t)(rng() % 300);
	uint32_t u32s[] = {0, 1, 5, 127, 128, 70000, UINT32_MAX};
	snprintf(text, cap, "%s", texts[rng() % 5]);
	if (rng() % 16 == 0) { // over-long: cut by encode
		memset(text, 'x', cap - 1);
		text[cap - 1] = '\0';
	}
	switch (rng() % 4) {
	case 0:
		aai_wire_start(m, id, text[0] ? text : "echo", payload, plen,
		               u32s[rng() % 7], (uint32_t)(rng() % 9));
		break;
	case 1: {
		aai_wire_status st = (aai_wire_status)(rng() % 5);
		uint32_t err = rng() % 2 ? 0 : (uint32_t)(rng() % 30);
		aai_wire_complete(m, id, st, err, text, payload, plen);
		m->complete.cancel_received = rng() % 2;
		int32_t apps[] = {0, 1, -1, 7, INT32_MIN, INT32_MAX};
		m->complete.app_code = apps[rng() % 6];
		break;
	}
	case 2:
		aai_wire_cancel(m, id, (uint32_t)(rng() % 6));
		break;
	default:
		aai_wire_progress(m, id, payload, plen);
		break;
	}
}

static void
assert_same_msg(const aai_wire_msg *a, const aai_wire_msg *b)
{
	cr_assert_eq(a->kind, b->kind);
	cr_assert_eq(a->op_id, b->op_id);
	switch (a->kind) {
	case AAI_WIRE_START:
		cr_assert_str_eq(a->start.method, b->start.method);
		assert_bytes(a->start.payload, a->start.payload_len,
		             b->start.payload, b->start.payload_len);
		cr_assert_eq(a->start.deadline_ms, b->start.deadline_ms);
		cr_assert_eq(a->start.cancel_types, b->start.cancel_types);
		break;
	case AAI_WIRE_COMPLETE:
		cr_assert_eq(a->complete.status, b->complete.status);
		cr_assert_eq(a->complete.error, b->complete.error);
		cr_assert_str_eq(a->complete.message, b->complete.message);
		assert_bytes(a->complete.payload, a->complete.payload_len,
		             b->complete.payload, b->complete.payload_len);
		cr_assert_eq(a->complete.cancel_received,
		             b->complete.cancel_received);
		cr_assert_eq(a->complete.app_code, b->complete.app_code);
		break;
	case AAI_WIRE_CANCEL:
		cr_assert_eq(a->cancel.type, b->cancel.type);
		break;
	case AAI_WIRE_PROGRESS:
		assert_bytes(a->progress.payload, a->progress.payload_len,
		             b->progress.payload, b->progress.payload_len);
		break;
	default:
		break;
	}
}

// Frames the fuzz target found where the two paths once disagreed.
Test(wire, fast_decode_agrees_on_odd_length_prefixes, .init = arena_setup)
{
	static const struct {
		const char *bytes;
		size_t len;
	} frames[] = {
	    // A Cancel whose Envelope length is a 10-byte zero: protobuf-c
	    // refuses a length prefix longer than 5 bytes.
	    {"\x1a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", 11},
	    // A 5-byte zero: accepted by both (an empty Cancel: op id 0).
	    {"\x1a\x80\x80\x80\x80\x00", 6},
	    // A Start whose method's length prefix is 6 bytes long.
	    {"\x0a\x0a\x08\x01\x12\x81\x80\x80\x80\x80\x00m", 12},
	};
	uint8_t buf2[1024];
	aai_wire_arena a2;
	aai_wire_arena_init(&a2, buf2, sizeof(buf2));
	for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++) {
		aai_wire_msg d1, d2;
		const char *w1 = NULL, *w2 = NULL;
		int r1 = aai_wire_decode(&d1, &w1, &arena, frames[i].bytes,
		                         frames[i].len, 0);
		aai_wire_fast_off = true;
		int r2 = aai_wire_decode(&d2, &w2, &a2, frames[i].bytes,
		                         frames[i].len, 0);
		aai_wire_fast_off = false;
		cr_assert_eq(r1, r2, "frame %zu: %s / %s", i, w1 ? w1 : "",
		             w2 ? w2 : "");
		if (r1 != 0) {
			cr_assert_str_eq(w1, w2, "frame %zu", i);
		}
	}
	aai_wire_arena_fini(&a2);
	aai_wire_arena_fini(&arena);
}

Test(wire, fast_encode_gives_the_protobuf_c_bytes)
{
	static uint8_t payload[300], fast[2048], slow[2048];
	char text[AAI_WIRE_TEXT_MAX + 8];
	for (size_t i = 0; i < sizeof(payload); i++) {
		payload[i] = (uint8_t)rng();
	}
	int encoded = 0;
	for (int i = 0; i < 100000; i++) {
		aai_wire_msg m;
		random_msg(&m, text, sizeof(text), payload);
		size_t n1 = 0, n2 = 0, s1 = 0, s2 = 0;
		int r1 = aai_wire_encode(&n1, fast, sizeof(fast), &m, 0);
		int z1 = aai_wire_size(&s1, &m);
		aai_wire_fast_off = true;
		int r2 = aai_wire_encode(&n2, slow, sizeof(slow), &m, 0);
		int z2 = aai_wire_size(&s2, &m);
		aai_wire_fast_off = false;
		cr_assert_eq(r1, r2, "kind %d", m.kind);
		cr_assert_eq(z1, z2);
		cr_assert_eq(s1, s2);
		if (r1 == 0) {
			encoded++;
			cr_assert_eq(n1, n2, "kind %d", m.kind);
			cr_assert_eq(memcmp(fast, slow, n1), 0, "kind %d",
			             m.kind);
			cr_assert_eq(n1, s1);
		}
	}
	test_note("%d of 100000 random messages encoded", encoded);
	cr_assert_gt(encoded, 30000);
}

Test(wire, fast_decode_agrees_with_protobuf_c, .init = arena_setup)
{
	static uint8_t payload[300], frame[2048];
	static uint8_t buf2[16384];
	char text[AAI_WIRE_TEXT_MAX + 8];
	aai_wire_arena a2;
	aai_wire_arena_init(&a2, buf2, sizeof(buf2));
	for (size_t i = 0; i < sizeof(payload); i++) {
		payload[i] = (uint8_t)rng();
	}
	int fast_ok = 0, agreed_err = 0;
	for (int i = 0; i < 200000; i++) {
		aai_wire_msg m, d1, d2;
		size_t len;
		random_msg(&m, text, sizeof(text), payload);
		if (aai_wire_encode(&len, frame, sizeof(frame), &m, 0) != 0) {
			continue;
		}
		// Mutate most frames: bytes flipped, cut, extended, or a
		// field appended (unknown, repeated, or of the wrong type).
		int how = (int)(rng() % 6);
		if (how == 1) {
			frame[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
		} else if (how == 2) {
			frame[rng() % len] = (uint8_t)rng();
		} else if (how == 3) {
			len = (size_t)(rng() % len);
		} else if (how >= 4 && len < 120) {
			// One more body field (the Envelope's length grows).
			uint8_t key = (uint8_t)(rng() % 80);
			frame[len++] = key;
			frame[len++] = (uint8_t)(rng() % 3);
			frame[len++] = 'a';
			frame[len++] = 'b';
			frame[1] = (uint8_t)(len - 2);
		}
		const char *w1 = NULL, *w2 = NULL;
		int r1 = aai_wire_decode(&d1, &w1, &arena, frame, len, 0);
		aai_wire_fast_off = true;
		int r2 = aai_wire_decode(&d2, &w2, &a2, frame, len, 0);
		aai_wire_fast_off = false;
		cr_assert_eq(r1, r2,
		             "frame %d: fast %d (%s), protobuf-c %d (%s)", i,
		             r1, w1 ? w1 : "", r2, w2 ? w2 : "");
		if (r1 == 0) {
			fast_ok++;
			assert_same_msg(&d1, &d2);
		} else {
			agreed_err++;
			cr_assert_str_eq(w1, w2);
			cr_assert_eq(d1.kind, AAI_WIRE_NONE);
		}
	}
	test_note("fast vs protobuf-c: %d decoded alike, %d refused alike",
	          fast_ok, agreed_err);
	cr_assert_gt(fast_ok, 10000);
	cr_assert_gt(agreed_err, 10000);
	aai_wire_arena_fini(&a2);
	aai_wire_arena_fini(&arena);
}
