// wire_fast.c: the codec's fast path for the messages of every call
// (Start, Complete, Cancel, Progress): encoded and decoded in one pass over
// the bytes, by hand, giving exactly what the protobuf-c path gives.
//
// Design notes.
//
// * Why by hand. protobuf-c's generic, descriptor-driven pack and unpack,
//   with the raw-byte scans that must precede an unpack (wire_scan.c) and
//   the size computed twice per send, were a fifth of all CPU time at 256
//   outstanding echo calls over ipc (perf, docs/PERFORMANCE.md), and the
//   unpack copies every payload into the arena (a heap spill for a 1 MiB
//   payload). These four messages are flat: a few varints and at most two
//   length-delimited fields. One pass handles them; protobuf-c stays the
//   codec of everything else and the reference for these.
//
// * Decoding takes only the canonical subset and leaves the rest to the
//   protobuf-c path (aai_wire_decode calls it first; "not mine" costs a
//   few byte reads). Taken: an Envelope that is exactly one body of these
//   four kinds, whose fields are all known, each at most once, of the
//   right wire type, with varints that protobuf-c would read to the same
//   value (uint32 and enum fields in at most 5 bytes and 32 bits, op ids
//   in at most 64 bits, bools as 0 or 1, length prefixes in at most 5
//   bytes, as protobuf-c requires), and strings that are UTF-8
//   without NUL. Anything else (unknown or repeated fields, a second body,
//   odd varints, a bad string) goes the generic way, which then gives its
//   own verdict and reason: so whether a frame is accepted, and the
//   message it gives, never depends on the path. The message is then
//   checked by the same rules (aai_wire_rules).
//
// * Zero copy. A decoded payload points into the frame, not the arena;
//   only the strings are copied (they must end in NUL). The frame must
//   therefore stay valid as long as the message is used (wire.h); the
//   layers use a message only inside the frame callback that decoded it,
//   and copy what they keep.
//
// * Encoding writes fields in field-number order and leaves out zero
//   values, as protobuf-c does for proto3 fields, so the bytes are the
//   same (test_wire's differential tests, and the fuzz target, compare
//   the two paths). A Complete whose text needs cutting or repair goes
//   the generic way.
//
// * aai_wire_fast_off (tests only) turns both directions off, so that the
//   two paths can be compared on the same input.
#include <string.h>

#include "wire.h"
#include "wire_impl.h"

bool aai_wire_fast_off;

// ---- Reading ----

typedef struct rd {
	const uint8_t *p, *end;
} rd;

// varint reads a varint of at most max bytes whose value fits in bits
// bits; false for anything else (truncated, longer, larger).
static bool
varint(rd *r, unsigned max, unsigned bits, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned i = 0; i < max && r->p < r->end; i++) {
		uint64_t b = *r->p++;
		if (i * 7 + 7 > bits && (b & 0x7f) >> (bits - i * 7) != 0) {
			return false; // bits above the field's width
		}
		x |= (b & 0x7f) << (i * 7);
		if ((b & 0x80) == 0) {
			*v = x;
			return true;
		}
	}
	return false;
}

// length reads a length prefix as protobuf-c does: at most 5 bytes (a
// longer one is its "unterminated length"), at most 32 bits.
static bool
length(rd *r, uint64_t *n)
{
	return varint(r, 5, 32, n);
}

// bytes reads a length-delimited field's extent.
static bool
bytes(rd *r, const uint8_t **data, size_t *len)
{
	uint64_t n;
	if (!length(r, &n) || n > (uint64_t)(r->end - r->p)) {
		return false;
	}
	*data = r->p;
	*len = (size_t)n;
	r->p += n;
	return true;
}

// string copies a UTF-8 string without NUL into the arena, NUL-terminated.
static bool
string(rd *r, aai_wire_arena *a, const char **s)
{
	const uint8_t *d;
	size_t n;
	if (!bytes(r, &d, &n) || !aai_wire_utf8_ok(d, n)) {
		return false;
	}
	// The one string of its message: the arena holds nothing yet.
	aai_wire_arena_fit(a, n + 1);
	char *c = aai_wire_arena_alloc(a, n + 1);
	if (c == NULL) {
		return false;
	}
	memcpy(c, d, n);
	c[n] = '\0';
	*s = c;
	return true;
}

enum { VARINT = 0, LEN = 2 };

// body decodes the fields of one body of kind into m: true if every field
// was in the canonical subset (see the notes).
static bool
body(rd *r, aai_wire_kind kind, aai_wire_msg *m, aai_wire_arena *a)
{
	unsigned seen = 0;
	while (r->p < r->end) {
		uint8_t key = *r->p++;
		unsigned field = key >> 3, type = key & 7;
		uint64_t v = 0;
		if (key >= 0x80 || field == 0 || (seen & 1u << field)) {
			return false; // long key, unknown or repeated field
		}
		seen |= 1u << field;
		// Field 1 is the op id in all four.
		if (field == 1) {
			if (type != VARINT || !varint(r, 10, 64, &m->op_id)) {
				return false;
			}
			continue;
		}
		switch (kind * 16 + field) {
		case AAI_WIRE_START * 16 + 2:
			if (type != LEN || !string(r, a, &m->start.method)) {
				return false;
			}
			break;
		case AAI_WIRE_START * 16 + 3:
			if (type != LEN ||
			    !bytes(r, (const uint8_t **)&m->start.payload,
			           &m->start.payload_len)) {
				return false;
			}
			break;
		case AAI_WIRE_START * 16 + 4:
		case AAI_WIRE_START * 16 + 5:
		case AAI_WIRE_COMPLETE * 16 + 2:
		case AAI_WIRE_COMPLETE * 16 + 4:
		case AAI_WIRE_COMPLETE * 16 + 7:
		case AAI_WIRE_CANCEL * 16 + 2:
			// uint32, enum (>= 0) and sint32: at most 32 bits.
			if (type != VARINT ||
			    !varint(r, 5,
			            field == 2 && kind == AAI_WIRE_COMPLETE
			                ? 31
			                : 32,
			            &v)) {
				return false;
			}
			if (kind == AAI_WIRE_START) {
				*(field == 4 ? &m->start.deadline_ms
				             : &m->start.cancel_types) =
				    (uint32_t)v;
			} else if (kind == AAI_WIRE_CANCEL) {
				m->cancel.type = (uint32_t)v;
			} else if (field == 2) {
				m->complete.status = (aai_wire_status)v;
			} else if (field == 4) {
				m->complete.error = (uint32_t)v;
			} else { // zigzag
				uint32_t u = (uint32_t)v;
				m->complete.app_code =
				    (int32_t)(u >> 1) ^ -(int32_t)(u & 1);
			}
			break;
		case AAI_WIRE_COMPLETE * 16 + 3:
			if (type != LEN ||
			    !bytes(r, (const uint8_t **)&m->complete.payload,
			           &m->complete.payload_len)) {
				return false;
			}
			break;
		case AAI_WIRE_COMPLETE * 16 + 5:
			if (type != LEN ||
			    !string(r, a, &m->complete.message)) {
				return false;
			}
			break;
		case AAI_WIRE_COMPLETE * 16 + 6:
			if (type != VARINT || !varint(r, 1, 1, &v)) {
				return false;
			}
			m->complete.cancel_received = v != 0;
			break;
		case AAI_WIRE_PROGRESS * 16 + 2:
			if (type != LEN ||
			    !bytes(r, (const uint8_t **)&m->progress.payload,
			           &m->progress.payload_len)) {
				return false;
			}
			break;
		default:
			return false;
		}
	}
	return true;
}

int
aai_wire_fast_decode(aai_wire_msg *m, const char **why, aai_wire_arena *a,
                     const uint8_t *frame, size_t len)
{
	if (aai_wire_fast_off || len < 2) {
		return AAI_WIRE_NOT_FAST;
	}
	rd r = {frame + 1, frame + len};
	uint64_t blen;
	aai_wire_kind kind = (aai_wire_kind)(frame[0] >> 3);
	if ((frame[0] & 7) != LEN ||
	    (kind != AAI_WIRE_START && kind != AAI_WIRE_COMPLETE &&
	     kind != AAI_WIRE_CANCEL && kind != AAI_WIRE_PROGRESS) ||
	    !length(&r, &blen) || blen != (uint64_t)(r.end - r.p)) {
		return AAI_WIRE_NOT_FAST; // not exactly one such body
	}
	memset(m, 0, sizeof(*m));
	m->kind = kind;
	if (kind == AAI_WIRE_START) {
		m->start.method = "";
	} else if (kind == AAI_WIRE_COMPLETE) {
		m->complete.message = "";
	}
	// Strings take at most the frame's size plus alignment: far below
	// the decoding budget of any frame.
	a->budget = len * 2 + 64;
	if (!body(&r, kind, m, a)) {
		memset(m, 0, sizeof(*m));
		aai_wire_arena_reset(a);
		return AAI_WIRE_NOT_FAST;
	}
	return aai_wire_rules(why, m, false);
}

// ---- Writing ----

static size_t
vlen(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *
put_varint(uint8_t *o, uint64_t v)
{
	while (v >= 0x80) {
		*o++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*o++ = (uint8_t)v;
	return o;
}

// A field to write: varints with value, length-delimited with data/len.
typedef struct fld {
	uint8_t key;
	bool len_delim;
	uint64_t v;
	const void *data;
	size_t len;
} fld;

// fields lists m's non-zero fields in field-number order; 0 when m is not
// one of the four kinds or its text needs the generic path.
static int
fields(const aai_wire_msg *m, fld *f)
{
	int n = 0;
#define VAR(num, val)                                                         \
	do {                                                                  \
		if ((val) != 0) {                                             \
			f[n++] = (fld){.key = (num) << 3 | VARINT,            \
			               .v = (uint64_t)(val)};                 \
		}                                                             \
	} while (0)
#define BYTES(num, p, l)                                                      \
	do {                                                                  \
		if ((l) != 0) {                                               \
			f[n++] = (fld){.key = (num) << 3 | LEN,               \
			               .len_delim = true,                     \
			               .data = (p),                           \
			               .len = (l)};                           \
		}                                                             \
	} while (0)
	VAR(1, m->op_id);
	switch (m->kind) {
	case AAI_WIRE_START:
		BYTES(2, m->start.method, strlen(m->start.method));
		BYTES(3, m->start.payload, m->start.payload_len);
		VAR(4, m->start.deadline_ms);
		VAR(5, m->start.cancel_types);
		return n;
	case AAI_WIRE_COMPLETE: {
		const char *t = m->complete.message ? m->complete.message : "";
		size_t tl = strnlen(t, AAI_WIRE_TEXT_MAX + 1);
		if (tl > AAI_WIRE_TEXT_MAX ||
		    !aai_wire_utf8_ok((const uint8_t *)t, tl)) {
			return 0; // cut or repaired by the generic path
		}
		uint32_t app = (uint32_t)m->complete.app_code;
		VAR(2, m->complete.status);
		BYTES(3, m->complete.payload, m->complete.payload_len);
		VAR(4, m->complete.error);
		BYTES(5, t, tl);
		VAR(6, m->complete.cancel_received ? 1 : 0);
		VAR(7, (app << 1) ^ (uint32_t)(m->complete.app_code >> 31));
		return n;
	}
	case AAI_WIRE_CANCEL:
		VAR(2, m->cancel.type);
		return n;
	case AAI_WIRE_PROGRESS:
		BYTES(2, m->progress.payload, m->progress.payload_len);
		return n;
	default:
		return 0;
	}
#undef VAR
#undef BYTES
}

// prepare checks m and lists its fields: 0, AA_EINVAL (breaks a rule) or
// AAI_WIRE_NOT_FAST (for the generic path).
static int
prepare(const aai_wire_msg *m, fld *f, int *n)
{
	const char *why;
	if (aai_wire_fast_off ||
	    (m->kind != AAI_WIRE_START && m->kind != AAI_WIRE_COMPLETE &&
	     m->kind != AAI_WIRE_CANCEL && m->kind != AAI_WIRE_PROGRESS)) {
		return AAI_WIRE_NOT_FAST;
	}
	if (aai_wire_rules(&why, m, true) != 0) {
		return AA_EINVAL;
	}
	*n = fields(m, f);
	return *n > 0 ? 0 : AAI_WIRE_NOT_FAST;
}

static size_t
body_size(const fld *f, int n)
{
	size_t s = 0;
	for (int i = 0; i < n; i++) {
		s += 1 + (f[i].len_delim ? vlen(f[i].len) + f[i].len
		                         : vlen(f[i].v));
	}
	return s;
}

int
aai_wire_fast_size(size_t *sizep, const aai_wire_msg *m)
{
	fld f[8];
	int n, rv;
	if ((rv = prepare(m, f, &n)) != 0) {
		return rv;
	}
	size_t b = body_size(f, n);
	*sizep = 1 + vlen(b) + b;
	return 0;
}

int
aai_wire_fast_encode(size_t *lenp, uint8_t *out, size_t cap,
                     const aai_wire_msg *m, size_t max_size)
{
	fld f[8];
	int n, rv;
	if ((rv = prepare(m, f, &n)) != 0) {
		return rv;
	}
	size_t b = body_size(f, n);
	size_t size = 1 + vlen(b) + b;
	if (max_size != 0 && size > max_size) {
		return AA_EMSGSIZE;
	}
	if (size > cap || out == NULL) {
		*lenp = size;
		return AA_ENOMEM;
	}
	uint8_t *o = out;
	*o++ = (uint8_t)(m->kind << 3 | LEN);
	o = put_varint(o, b);
	for (int i = 0; i < n; i++) {
		*o++ = f[i].key;
		if (f[i].len_delim) {
			o = put_varint(o, f[i].len);
			memcpy(o, f[i].data, f[i].len);
			o += f[i].len;
		} else {
			o = put_varint(o, f[i].v);
		}
	}
	*lenp = (size_t)(o - out);
	AAI_ASSERT(*lenp == size);
	return 0;
}
