// wire_scan.c: what the codec reads of a frame's raw bytes before
// protobuf-c unpacks it (wire.c calls it from aai_wire_decode; wire.h
// declares it). Nothing here allocates or keeps state.
//
// Design notes.
//
// * Why raw bytes: protobuf-c keeps the last of two oneof members
//   silently, cuts a string at an embedded NUL without a word, lets
//   invalid UTF-8 through, and has no size limit and no dry run. So a
//   field walker (read_varint, next_field) reads the wire format, and:
//   - aai_wire_scan_envelope checks that the Envelope has exactly one
//     body of a known kind, and that every string of that body is
//     well-formed UTF-8 without NUL bytes (the protocol's rule, § 3);
//   - aai_wire_decode_cost walks the Envelope, its body and the body's
//     submessages, guided by the protobuf-c descriptors, and bounds what
//     the unpack will allocate, mirroring protobuf-c's allocations
//     (wire.c's design notes say how that bound is used).
// * The UTF-8 check (RFC 3629: no overlongs, no surrogates, nothing above
//   U+10FFFF) is also what the encoder uses to repair texts it passes on.
#include <string.h>

#include "aa.pb-c.h"
#include "wire.h"

// aai_wire_utf8_seq returns the length (1-4) of the well-formed UTF-8 sequence
// at p[0..n), or 0 when it is ill-formed or truncated (RFC 3629: no overlongs,
// no surrogates, nothing above U+10FFFF).
size_t
aai_wire_utf8_seq(const uint8_t *p, size_t n)
{
	uint8_t b = p[0];
	size_t len;
	uint8_t lo = 0x80, hi = 0xbf; // the second byte's range
	if (b < 0x80) {
		return 1;
	} else if (b >= 0xc2 && b <= 0xdf) {
		len = 2;
	} else if (b >= 0xe0 && b <= 0xef) {
		len = 3;
		lo = b == 0xe0 ? 0xa0 : 0x80;
		hi = b == 0xed ? 0x9f : 0xbf;
	} else if (b >= 0xf0 && b <= 0xf4) {
		len = 4;
		lo = b == 0xf0 ? 0x90 : 0x80;
		hi = b == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 0;
	}
	if (n < len || p[1] < lo || p[1] > hi) {
		return 0;
	}
	for (size_t i = 2; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80) {
			return 0;
		}
	}
	return len;
}

// aai_wire_utf8_ok says whether p[0..n) is well-formed UTF-8 without NUL
// bytes.
bool
aai_wire_utf8_ok(const uint8_t *p, size_t n)
{
	for (size_t i = 0, k; i < n; i += k) {
		if (p[i] == 0 || (k = aai_wire_utf8_seq(p + i, n - i)) == 0) {
			return false;
		}
	}
	return true;
}

// read_varint reads a base-128 varint of at most 10 bytes.
static bool
read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
	const uint8_t *p = *pp;
	uint64_t x = 0;

	for (unsigned shift = 0; shift < 70; shift += 7) {
		if (p == end) {
			return false;
		}
		uint8_t b = *p++;
		x |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*pp = p;
			*v = x;
			return true;
		}
	}
	return false;
}

// next_field reads one field's key and skips its value: *field, *wtype,
// and for a length-delimited one its bytes in *val / *vlen. false when
// the field is malformed or truncated (*why says which).
static bool
next_field(const char **why, const uint8_t **pp, const uint8_t *end,
           uint64_t *field, unsigned *wtype, const uint8_t **val, size_t *vlen)
{
	const uint8_t *p = *pp;
	uint64_t key;
	uint64_t n;
	if (!read_varint(&p, end, &key) || (key >> 3) == 0 ||
	    (key >> 3) > 0x1fffffff) {
		*why = "malformed frame: bad field key";
		return false;
	}
	*field = key >> 3;
	*wtype = (unsigned)(key & 7);
	switch (*wtype) {
	case 0:
		if (!read_varint(&p, end, &n)) {
			*why = "malformed frame: bad varint";
			return false;
		}
		break;
	case 1:
	case 5:
		n = *wtype == 1 ? 8 : 4;
		if ((size_t)(end - p) < n) {
			*why = "malformed frame: truncated field";
			return false;
		}
		p += n;
		break;
	case 2:
		if (!read_varint(&p, end, &n) || n > (uint64_t)(end - p)) {
			*why = "malformed frame: truncated field";
			return false;
		}
		*val = p;
		*vlen = (size_t)n;
		p += n;
		break;
	default:
		*why = "malformed frame: unsupported wire type";
		return false;
	}
	*pp = p;
	return true;
}

// The string fields of each body (docs/protocol.md § 3): they must be
// well-formed UTF-8 without NUL bytes. protobuf-c would hand a string with
// a NUL to C cut at it, and let invalid UTF-8 through: both are refused
// here, on the raw bytes, before unpacking.
#define KIND_METHOD_INFO 0x100 // a Hello's MethodInfo, for scan_strings

static bool
is_string_field(unsigned kind, uint64_t field)
{
	switch (kind) {
	case KIND_METHOD_INFO:
		return field == 1; // name
	case AAI_WIRE_START:
		return field == 2; // method
	case AAI_WIRE_COMPLETE:
		return field == 5; // message
	case AAI_WIRE_GOODBYE:
		return field == 2; // message
	default:
		return false;
	}
}

static int
scan_strings(const char **why, unsigned kind, const uint8_t *p, size_t len)
{
	const uint8_t *end = p + len;
	while (p < end) {
		uint64_t field;
		unsigned wtype;
		const uint8_t *v = NULL;
		size_t n = 0;
		if (!next_field(why, &p, end, &field, &wtype, &v, &n)) {
			return AA_EPROTO;
		}
		if (wtype != 2) {
			continue;
		}
		if (kind == AAI_WIRE_HELLO && field == 7) {
			// A MethodInfo: its name is field 1.
			int rv = scan_strings(why, KIND_METHOD_INFO, v, n);
			if (rv != 0) {
				return rv;
			}
		} else if (is_string_field(kind, field) &&
		           !aai_wire_utf8_ok(v, n)) {
			*why = "a string with a NUL byte or invalid UTF-8";
			return AA_EPROTO;
		}
	}
	return 0;
}

// aai_wire_scan_envelope walks the Envelope's top-level fields and checks that
// exactly one of them is a body (unknown fields are allowed and skipped),
// then the strings of that body.
int
aai_wire_scan_envelope(const char **why, const uint8_t *p, size_t len)
{
	const uint8_t *end = p + len;
	unsigned bodies = 0;
	unsigned unknown = 0;
	unsigned kind = 0;
	const uint8_t *body = NULL;
	size_t body_len = 0;

	while (p < end) {
		uint64_t field;
		unsigned wtype;
		const uint8_t *v = NULL;
		size_t n = 0;
		if (!next_field(why, &p, end, &field, &wtype, &v, &n)) {
			return AA_EPROTO;
		}
		if (field >= AAI_WIRE_START && field <= AAI_WIRE_GOODBYE) {
			if (wtype != 2) {
				*why =
				    "malformed frame: body of a bad wire type";
				return AA_EPROTO;
			}
			bodies++;
			kind = (unsigned)field;
			body = v;
			body_len = n;
		} else {
			unknown++;
		}
	}
	if (bodies > 1) {
		*why = "more than one message body";
		return AA_EPROTO;
	}
	if (bodies == 0) {
		*why =
		    unknown > 0 ? "unknown message kind" : "no message body";
		return AA_EPROTO;
	}
	return scan_strings(why, kind, body, body_len);
}

// ---------------------------------------------------------------------------
// The decoding cost, computed before anything is allocated.

// SCANNED_MEMBER_MAX bounds protobuf-c's private ScannedMember (its own
// BOUND_SIZEOF_SCANNED_MEMBER_LOG2 is 5); the first SCANNED_ON_STACK of a
// message live on its stack, the next in slabs that double each time.
#define SCANNED_MEMBER_MAX 32u
#define SCANNED_ON_STACK   16u
#define WALK_FIELDS_MAX    16u // fields of our largest message type
#define WALK_DEPTH_MAX     4u  // Envelope, body, submessage

// arena_size is what the arena takes for an allocation of n bytes.
static size_t
arena_size(size_t n)
{
	if (n > SIZE_MAX - AAI_WIRE_ARENA_ALIGN) {
		return SIZE_MAX;
	}
	n = (n + AAI_WIRE_ARENA_ALIGN - 1) &
	    ~(size_t)(AAI_WIRE_ARENA_ALIGN - 1);
	return n == 0 ? AAI_WIRE_ARENA_ALIGN : n;
}

// add_cost adds n to *cost, saturating.
static void
add_cost(size_t *cost, size_t n)
{
	*cost = n > SIZE_MAX - *cost ? SIZE_MAX : *cost + n;
}

// slabs_cost is what protobuf-c allocates to scan n fields of a message.
static size_t
slabs_cost(size_t n)
{
	size_t cost = 0, slab = SCANNED_ON_STACK, cap = SCANNED_ON_STACK;
	while (n > cap) {
		slab *= 2;
		cap += slab;
		add_cost(&cost, arena_size(slab * SCANNED_MEMBER_MAX));
	}
	return cost;
}

typedef struct walk {
	const char *why;
	size_t cost;
	size_t entries; // repeated submessages (each gets a view entry)
} walk;

// walk_message adds to w->cost an upper bound of what protobuf-c allocates
// to unpack a message of type desc from p[0..len), mirroring its unpack:
// the struct, scan slabs, a table entry and a copy per unknown field, a
// copy per string or bytes field, an array per repeated field, and the
// submessages, recursively.
static int
walk_message(walk *w, const ProtobufCMessageDescriptor *desc, const uint8_t *p,
             size_t len, unsigned depth)
{
	const uint8_t *end = p + len;
	size_t seen[WALK_FIELDS_MAX] = {0};
	size_t fields = 0, unknown = 0, extra = 0;

	if (depth >= WALK_DEPTH_MAX || desc->n_fields > WALK_FIELDS_MAX) {
		w->why = "malformed frame: nested too deep";
		return AA_EPROTO;
	}
	while (p < end) {
		const uint8_t *at = p;
		uint64_t tag;
		unsigned wtype;
		const uint8_t *d = NULL;
		size_t dlen = 0;
		if (!next_field(&w->why, &p, end, &tag, &wtype, &d, &dlen)) {
			return AA_EPROTO;
		}
		fields++;
		const ProtobufCFieldDescriptor *f =
		    protobuf_c_message_descriptor_get_field(desc,
		                                            (unsigned)tag);
		if (f == NULL) {
			// protobuf-c copies the field's bytes after its key;
			// the key's bytes are counted too (a bound).
			unknown++;
			extra++;
			add_cost(&w->cost, arena_size((size_t)(p - at)));
		} else {
			size_t i = (size_t)(f - desc->fields);
			bool repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
			seen[i]++;
			if (repeated && seen[i] > AAI_WIRE_METHODS_MAX) {
				w->why =
				    "too many entries in a repeated field";
				return AA_EPROTO;
			}
			if (!repeated && seen[i] > 1) {
				extra++;
			}
			if (f->type == PROTOBUF_C_TYPE_MESSAGE && wtype == 2) {
				int rv = walk_message(w, f->descriptor, d,
				                      dlen, depth + 1);
				if (rv != 0) {
					return rv;
				}
				w->entries += repeated ? 1 : 0;
			} else if (f->type == PROTOBUF_C_TYPE_STRING ||
			           f->type == PROTOBUF_C_TYPE_BYTES) {
				add_cost(&w->cost, arena_size(dlen + 1));
			}
		}
		if (extra > AAI_WIRE_EXTRA_FIELDS_MAX) {
			w->why = "too many unknown or repeated fields";
			return AA_EPROTO;
		}
	}
	add_cost(&w->cost, arena_size(desc->sizeof_message));
	add_cost(&w->cost, slabs_cost(fields));
	if (unknown > 0) {
		add_cost(&w->cost,
		         arena_size(unknown *
		                    sizeof(ProtobufCMessageUnknownField)));
	}
	for (size_t i = 0; i < desc->n_fields; i++) {
		if (desc->fields[i].label == PROTOBUF_C_LABEL_REPEATED &&
		    seen[i] > 0) {
			// An element is at most a ProtobufCBinaryData.
			add_cost(
			    &w->cost,
			    arena_size(seen[i] * sizeof(ProtobufCBinaryData)));
		}
	}
	return 0;
}

int
aai_wire_decode_cost(size_t *costp, const char **why, const void *frame,
                     size_t len)
{
	static const uint8_t empty[1];
	walk w = {0};
	const char *unused;
	int rv;

	if (why == NULL) {
		why = &unused;
	}
	rv = walk_message(&w, &aa__v1__envelope__descriptor,
	                  frame != NULL ? frame : empty, len, 0);
	if (rv != 0) {
		*why = w.why;
		return rv;
	}
	// view_hello's table: one aai_wire_method per entry.
	add_cost(&w.cost, arena_size(w.entries * sizeof(aai_wire_method)));
	*costp = w.cost;
	return 0;
}
