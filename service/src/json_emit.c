// json_emit.c: a protobuf-c message to one line of JSON, driven by its
// descriptor (aa_service_to_json): .proto field names, 64-bit integers as
// plain numbers, enums by name, bytes as base64, floats with "NaN" and
// "Infinity" as strings, proto3 fields at their default left out.
//
// Design notes. The text grows in one malloc'd buffer (jout); an
// allocation failure is remembered and reported once at the end
// (AA_ENOMEM), so the writers below need no error paths. A message is
// only read. No state, no lock.
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

typedef struct jout {
	char *s;
	size_t n;
	size_t cap;
	bool oom;
} jout;

static void
put(jout *o, const char *s, size_t len)
{
	if (o->oom) {
		return;
	}
	if (o->n + len + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 128;
		while (cap < o->n + len + 1) {
			cap *= 2;
		}
		char *g = realloc(o->s, cap);
		if (g == NULL) {
			o->oom = true;
			return;
		}
		o->s = g;
		o->cap = cap;
	}
	memcpy(o->s + o->n, s, len);
	o->n += len;
	o->s[o->n] = '\0';
}

static void
puts_(jout *o, const char *s)
{
	put(o, s, strlen(s));
}

static void
putf(jout *o, const char *fmt, ...)
{
	char b[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	if (n > 0) {
		put(o, b, (size_t)n < sizeof(b) ? (size_t)n : sizeof(b) - 1);
	}
}

static void
quoted(jout *o, const char *s, size_t len)
{
	put(o, "\"", 1);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			put(o, e, 2);
		} else if (c < 0x20 || c == 0x7f) {
			putf(o, "\\u%04x", c);
		} else {
			put(o, (const char *)&c, 1);
		}
	}
	put(o, "\"", 1);
}

static void
b64(jout *o, const uint8_t *p, size_t len)
{
	static const char a[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789+/";
	put(o, "\"", 1);
	for (size_t i = 0; i < len; i += 3) {
		unsigned v = (unsigned)p[i] << 16;
		size_t k = len - i;
		if (k > 1) {
			v |= (unsigned)p[i + 1] << 8;
		}
		if (k > 2) {
			v |= p[i + 2];
		}
		char q[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63],
		             k > 1 ? a[(v >> 6) & 63] : '=',
		             k > 2 ? a[v & 63] : '='};
		put(o, q, 4);
	}
	put(o, "\"", 1);
}

static void
fp_number(jout *o, double v, bool is_float)
{
	if (isnan(v)) {
		puts_(o, "\"NaN\"");
	} else if (isinf(v)) {
		puts_(o, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	} else {
		putf(o, is_float ? "%.9g" : "%.17g", v);
	}
}

static void emit_message(jout *o, const ProtobufCMessage *m);

static void
emit_value(jout *o, const ProtobufCFieldDescriptor *f, const void *v)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		putf(o, "%" PRId32, *(const int32_t *)v);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		putf(o, "%" PRIu32, *(const uint32_t *)v);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		putf(o, "%" PRId64, *(const int64_t *)v);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		putf(o, "%" PRIu64, *(const uint64_t *)v);
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		fp_number(o, *(const float *)v, true);
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		fp_number(o, *(const double *)v, false);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		puts_(o, *(const protobuf_c_boolean *)v ? "true" : "false");
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		int e = *(const int *)v;
		const ProtobufCEnumValue *ev =
		    protobuf_c_enum_descriptor_get_value(f->descriptor, e);
		if (ev != NULL) {
			quoted(o, ev->name, strlen(ev->name));
		} else {
			putf(o, "%d", e);
		}
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)v;
		s = s != NULL ? s : "";
		quoted(o, s, strlen(s));
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = v;
		b64(o, b->data, b->len);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub = *(ProtobufCMessage *const *)v;
		if (sub != NULL) {
			emit_message(o, sub);
		} else {
			puts_(o, "null");
		}
		break;
	}
	default:
		puts_(o, "null");
		break;
	}
}

// is_default says whether a proto3 field (no presence) holds its zero.
static bool
is_default(const ProtobufCFieldDescriptor *f, const void *v)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *)v;
		return s == NULL || s[0] == '\0';
	}
	case PROTOBUF_C_TYPE_BYTES:
		return ((const ProtobufCBinaryData *)v)->len == 0;
	case PROTOBUF_C_TYPE_MESSAGE:
		return *(ProtobufCMessage *const *)v == NULL;
	case PROTOBUF_C_TYPE_FLOAT:
		return *(const float *)v == 0;
	case PROTOBUF_C_TYPE_DOUBLE:
		return *(const double *)v == 0;
	default: {
		static const uint8_t zero[8];
		return memcmp(v, zero, aai_json_value_size(f->type)) == 0;
	}
	}
}

static bool
present(const ProtobufCFieldDescriptor *f, const ProtobufCMessage *m)
{
	const char *base = (const char *)m;
	const void *v = base + f->offset;
	const void *q = base + f->quantifier_offset;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		return *(const uint32_t *)q == f->id;
	}
	switch (f->label) {
	case PROTOBUF_C_LABEL_REQUIRED:
		return true;
	case PROTOBUF_C_LABEL_OPTIONAL:
		if (f->type == PROTOBUF_C_TYPE_STRING ||
		    f->type == PROTOBUF_C_TYPE_MESSAGE) {
			return *(void *const *)v != NULL;
		}
		return *(const protobuf_c_boolean *)q != 0;
	case PROTOBUF_C_LABEL_REPEATED:
		return *(const size_t *)q > 0;
	case PROTOBUF_C_LABEL_NONE:
		break;
	}
	return !is_default(f, v);
}

static void
emit_message(jout *o, const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	bool first = true;
	put(o, "{", 1);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (!present(f, m)) {
			continue;
		}
		if (!first) {
			put(o, ",", 1);
		}
		first = false;
		quoted(o, f->name, strlen(f->name));
		put(o, ":", 1);
		const char *v = (const char *)m + f->offset;
		if (f->label != PROTOBUF_C_LABEL_REPEATED) {
			emit_value(o, f, v);
			continue;
		}
		size_t n =
		    *(const size_t *)((const char *)m + f->quantifier_offset);
		const char *arr = *(char *const *)v;
		size_t esz = aai_json_value_size(f->type);
		put(o, "[", 1);
		for (size_t k = 0; k < n; k++) {
			if (k > 0) {
				put(o, ",", 1);
			}
			emit_value(o, f, arr + k * esz);
		}
		put(o, "]", 1);
	}
	put(o, "}", 1);
}

int
aa_service_to_json(char **outp, size_t *lenp, const ProtobufCMessage *msg)
{
	jout o = {0};
	if (outp == NULL || msg == NULL ||
	    !aai_svc_message_ok(msg->descriptor)) {
		return AA_EINVAL;
	}
	emit_message(&o, msg);
	if (o.oom || o.s == NULL) {
		free(o.s);
		return AA_ENOMEM;
	}
	*outp = o.s;
	if (lenp != NULL) {
		*lenp = o.n;
	}
	return 0;
}
