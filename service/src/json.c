// json.c: JSON to protobuf-c messages and back, driven by the message
// descriptors (aa/service.h: aa_service_from_json, aa_service_to_json).
//
// Why here: protobuf-c has neither a JSON nor a text-format parser (the
// C++ library's are not available to C programs), and a JSON library
// would be a new dependency for a few hundred lines. This converter covers
// what a command line needs: objects, arrays, strings with escapes,
// numbers, booleans and null, mapped onto scalars, strings, bytes
// (base64), enums (names or numbers), nested messages, repeated fields and
// oneofs. It is not a streaming parser: the input is one short text.
//
// Memory: a message from aa_service_from_json is built exactly as
// protobuf-c's unpack builds one with the default allocator (every string,
// byte array, repeated array and nested message malloc'd, defaults left
// in place), so protobuf_c_message_free_unpacked(msg, NULL) frees it,
// also after a parse error half-way. Nesting is limited to DEPTH_MAX, so
// hostile input cannot exhaust the stack. No state, no lock.
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc.h"

#define DEPTH_MAX 64
#define NUM_MAX   64 // characters in a number token

typedef struct jparser {
	const char *start;
	const char *p;
	const char *end;
	char *err;
	size_t errlen;
	int depth;
} jparser;

static int
fail(jparser *j, const char *fmt, ...)
{
	if (j->err != NULL && j->errlen > 0) {
		int n = snprintf(j->err, j->errlen,
		                 "at byte %zu: ", (size_t)(j->p - j->start));
		if (n >= 0 && (size_t)n < j->errlen) {
			va_list ap;
			va_start(ap, fmt);
			vsnprintf(j->err + n, j->errlen - (size_t)n, fmt, ap);
			va_end(ap);
		}
	}
	return AA_EINVAL;
}

static void
ws(jparser *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' ||
	                         *j->p == '\n' || *j->p == '\r')) {
		j->p++;
	}
}

// eat consumes c (after white space) if it comes next.
static bool
eat(jparser *j, char c)
{
	ws(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return true;
	}
	return false;
}

static bool
word(jparser *j, const char *w)
{
	size_t n = strlen(w);
	ws(j);
	if ((size_t)(j->end - j->p) >= n && memcmp(j->p, w, n) == 0) {
		j->p += n;
		return true;
	}
	return false;
}

static int
hex4(jparser *j, unsigned *v)
{
	*v = 0;
	if (j->end - j->p < 4) {
		return fail(j, "short \\u escape");
	}
	for (int i = 0; i < 4; i++) {
		char c = *j->p++;
		*v <<= 4;
		if (c >= '0' && c <= '9') {
			*v |= (unsigned)(c - '0');
		} else if (c >= 'a' && c <= 'f') {
			*v |= (unsigned)(c - 'a' + 10);
		} else if (c >= 'A' && c <= 'F') {
			*v |= (unsigned)(c - 'A' + 10);
		} else {
			return fail(j, "bad \\u escape");
		}
	}
	return 0;
}

static size_t
utf8_put(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

// string parses a JSON string into a new NUL-terminated buffer (*lenp:
// its length; it may hold NUL bytes from \u0000).
static int
string(jparser *j, char **out, size_t *lenp)
{
	if (!eat(j, '"')) {
		return fail(j, "expected a string");
	}
	// Decoded text is never longer than the source.
	const char *q = j->p;
	while (q < j->end && *q != '"') {
		q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
	}
	if (q >= j->end) {
		return fail(j, "unterminated string");
	}
	char *o = malloc((size_t)(q - j->p) + 1);
	size_t n = 0;
	if (o == NULL) {
		return AA_ENOMEM;
	}
	while (*j->p != '"') {
		unsigned char c = (unsigned char)*j->p++;
		if (c < 0x20) {
			free(o);
			return fail(j, "control character in a string");
		}
		if (c != '\\') {
			o[n++] = (char)c;
			continue;
		}
		c = (unsigned char)*j->p++;
		unsigned cp, lo;
		switch (c) {
		case '"':
		case '\\':
		case '/':
			o[n++] = (char)c;
			break;
		case 'b':
			o[n++] = '\b';
			break;
		case 'f':
			o[n++] = '\f';
			break;
		case 'n':
			o[n++] = '\n';
			break;
		case 'r':
			o[n++] = '\r';
			break;
		case 't':
			o[n++] = '\t';
			break;
		case 'u':
			if (hex4(j, &cp) != 0) {
				free(o);
				return AA_EINVAL;
			}
			if (cp >= 0xd800 && cp < 0xdc00) {
				// A surrogate pair: 12 source bytes, 4 out.
				if (j->end - j->p < 6 || j->p[0] != '\\' ||
				    j->p[1] != 'u') {
					free(o);
					return fail(j, "lone surrogate");
				}
				j->p += 2;
				if (hex4(j, &lo) != 0 || lo < 0xdc00 ||
				    lo > 0xdfff) {
					free(o);
					return fail(j, "bad surrogate pair");
				}
				cp = 0x10000 + ((cp - 0xd800) << 10) +
				     (lo - 0xdc00);
			} else if (cp >= 0xdc00 && cp < 0xe000) {
				free(o);
				return fail(j, "lone surrogate");
			}
			n += utf8_put(o + n, cp);
			break;
		default:
			free(o);
			return fail(j, "bad escape \\%c", c);
		}
	}
	j->p++; // the closing quote
	o[n] = '\0';
	*out = o;
	*lenp = n;
	return 0;
}

// number_token copies a number literal, or the text of a string, into
// buf: protobuf's JSON mapping allows integers as strings.
static int
number_token(jparser *j, char *buf, size_t cap)
{
	ws(j);
	if (j->p < j->end && *j->p == '"') {
		char *s;
		size_t n;
		int rv = string(j, &s, &n);
		if (rv != 0) {
			return rv;
		}
		if (n == 0 || n >= cap || strlen(s) != n) {
			free(s);
			return fail(j, "not a number");
		}
		memcpy(buf, s, n + 1);
		free(s);
		return 0;
	}
	size_t n = 0;
	while (j->p < j->end && strchr("+-0123456789.eE", *j->p) != NULL &&
	       n + 1 < cap) {
		buf[n++] = *j->p++;
	}
	buf[n] = '\0';
	if (n == 0) {
		return fail(j, "expected a number");
	}
	return 0;
}

static int
int_value(jparser *j, int64_t lo, int64_t hi, int64_t *v)
{
	char b[NUM_MAX];
	char *e;
	int rv = number_token(j, b, sizeof(b));
	if (rv != 0) {
		return rv;
	}
	errno = 0;
	long long x = strtoll(b, &e, 10);
	if (*e != '\0' || errno != 0 || x < lo || x > hi) {
		return fail(j, "\"%s\" is not an integer in range", b);
	}
	*v = x;
	return 0;
}

static int
uint_value(jparser *j, uint64_t hi, uint64_t *v)
{
	char b[NUM_MAX];
	char *e;
	int rv = number_token(j, b, sizeof(b));
	if (rv != 0) {
		return rv;
	}
	errno = 0;
	unsigned long long x = strtoull(b, &e, 10);
	if (*e != '\0' || errno != 0 || b[0] == '-' || x > hi) {
		return fail(j, "\"%s\" is not an unsigned integer in range",
		            b);
	}
	*v = x;
	return 0;
}

static int
float_value(jparser *j, double *v)
{
	char b[NUM_MAX];
	char *e;
	if (word(j, "\"NaN\"")) {
		*v = NAN;
		return 0;
	}
	if (word(j, "\"Infinity\"")) {
		*v = INFINITY;
		return 0;
	}
	if (word(j, "\"-Infinity\"")) {
		*v = -INFINITY;
		return 0;
	}
	int rv = number_token(j, b, sizeof(b));
	if (rv != 0) {
		return rv;
	}
	errno = 0;
	*v = strtod(b, &e);
	if (*e != '\0' || errno == ERANGE) {
		return fail(j, "\"%s\" is not a number", b);
	}
	return 0;
}

// ---- base64 ----

static int
b64_digit(char c)
{
	if (c >= 'A' && c <= 'Z') {
		return c - 'A';
	}
	if (c >= 'a' && c <= 'z') {
		return c - 'a' + 26;
	}
	if (c >= '0' && c <= '9') {
		return c - '0' + 52;
	}
	if (c == '+' || c == '-') {
		return 62;
	}
	if (c == '/' || c == '_') {
		return 63;
	}
	return -1;
}

// b64_decode decodes s[0..n) in place (standard or URL-safe alphabet,
// padding optional); the new length in *outn.
static bool
b64_decode(char *s, size_t n, size_t *outn)
{
	unsigned acc = 0;
	int bits = 0;
	size_t o = 0;
	while (n > 0 && s[n - 1] == '=') {
		n--;
	}
	for (size_t i = 0; i < n; i++) {
		int d = b64_digit(s[i]);
		if (d < 0) {
			return false;
		}
		acc = (acc << 6) | (unsigned)d;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			s[o++] = (char)((acc >> bits) & 0xff);
		}
	}
	*outn = o;
	return true;
}

// ---- JSON to message ----

static int message(jparser *j, ProtobufCMessage *m);

static size_t
value_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return 8;
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	default:
		return 4; // 32-bit integers, float, enum
	}
}

// value parses one value of field f into dst (the field's storage, or one
// element of a repeated field's array).
static int
value(jparser *j, const ProtobufCFieldDescriptor *f, void *dst)
{
	int64_t i;
	uint64_t u;
	double d;
	int rv = 0;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		if ((rv = int_value(j, INT32_MIN, INT32_MAX, &i)) == 0) {
			*(int32_t *)dst = (int32_t)i;
		}
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		if ((rv = uint_value(j, UINT32_MAX, &u)) == 0) {
			*(uint32_t *)dst = (uint32_t)u;
		}
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		if ((rv = int_value(j, INT64_MIN, INT64_MAX, &i)) == 0) {
			*(int64_t *)dst = i;
		}
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		if ((rv = uint_value(j, UINT64_MAX, &u)) == 0) {
			*(uint64_t *)dst = u;
		}
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		if ((rv = float_value(j, &d)) == 0) {
			*(float *)dst = (float)d;
		}
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		if ((rv = float_value(j, &d)) == 0) {
			*(double *)dst = d;
		}
		break;
	case PROTOBUF_C_TYPE_BOOL:
		if (word(j, "true")) {
			*(protobuf_c_boolean *)dst = 1;
		} else if (word(j, "false")) {
			*(protobuf_c_boolean *)dst = 0;
		} else {
			rv = fail(j, "%s: expected true or false", f->name);
		}
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumDescriptor *ed = f->descriptor;
		ws(j);
		if (j->p < j->end && *j->p == '"') {
			char *s;
			size_t n;
			if ((rv = string(j, &s, &n)) != 0) {
				break;
			}
			const ProtobufCEnumValue *ev =
			    protobuf_c_enum_descriptor_get_value_by_name(ed,
			                                                 s);
			if (ev == NULL) {
				rv = fail(j, "%s: %s has no value %s", f->name,
				          ed->name, s);
			} else {
				*(int *)dst = ev->value;
			}
			free(s);
		} else if ((rv = int_value(j, INT32_MIN, INT32_MAX, &i)) ==
		           0) {
			*(int *)dst = (int)i;
		}
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		char *s;
		size_t n;
		if ((rv = string(j, &s, &n)) == 0) {
			*(char **)dst = s;
		}
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		char *s;
		size_t n;
		ProtobufCBinaryData *b = dst;
		if ((rv = string(j, &s, &n)) != 0) {
			break;
		}
		if (!b64_decode(s, n, &n)) {
			free(s);
			rv = fail(j, "%s: bytes must be base64", f->name);
			break;
		}
		b->data = (uint8_t *)s;
		b->len = n;
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessageDescriptor *md = f->descriptor;
		ProtobufCMessage *sub = malloc(md->sizeof_message);
		if (sub == NULL) {
			return AA_ENOMEM;
		}
		protobuf_c_message_init(md, sub);
		// Stored first, so that a failure below frees it too.
		*(ProtobufCMessage **)dst = sub;
		rv = message(j, sub);
		break;
	}
	default:
		rv = fail(j, "%s: unsupported type", f->name);
		break;
	}
	return rv;
}

static int
repeated(jparser *j, const ProtobufCFieldDescriptor *f, ProtobufCMessage *m)
{
	size_t *np = (size_t *)((char *)m + f->quantifier_offset);
	void **arr = (void **)((char *)m + f->offset);
	size_t esz = value_size(f->type);
	size_t cap = 0;

	if (!eat(j, '[')) {
		return fail(j, "%s: expected an array", f->name);
	}
	if (eat(j, ']')) {
		return 0;
	}
	do {
		if (*np == cap) {
			size_t ncap = cap ? 2 * cap : 4;
			void *grown = realloc(*arr, ncap * esz);
			if (grown == NULL) {
				return AA_ENOMEM;
			}
			*arr = grown;
			cap = ncap;
		}
		char *slot = (char *)*arr + *np * esz;
		memset(slot, 0, esz);
		// Counted before parsing: a half-built element is freed too.
		(*np)++;
		int rv = value(j, f, slot);
		if (rv != 0) {
			return rv;
		}
	} while (eat(j, ','));
	if (!eat(j, ']')) {
		return fail(j, "%s: expected , or ]", f->name);
	}
	return 0;
}

// key_matches says whether a JSON key names field: its .proto name, or
// that name in lowerCamelCase (protobuf's JSON name).
static bool
key_matches(const char *field, const char *key)
{
	if (strcmp(field, key) == 0) {
		return true;
	}
	const char *f = field;
	const char *k = key;
	while (*f != '\0' && *k != '\0') {
		if (*f == '_' && f[1] >= 'a' && f[1] <= 'z') {
			if (*k != f[1] - 'a' + 'A') {
				return false;
			}
			f += 2;
		} else if (*f++ != *k) {
			return false;
		}
		k++;
	}
	return *f == '\0' && *k == '\0';
}

static const ProtobufCFieldDescriptor *
field_by_key(const ProtobufCMessageDescriptor *d, const char *key)
{
	for (unsigned i = 0; i < d->n_fields; i++) {
		if (key_matches(d->fields[i].name, key)) {
			return &d->fields[i];
		}
	}
	return NULL;
}

// mark records that f is set: its has_ flag or its oneof case. Two
// members of one oneof are refused.
static int
mark(jparser *j, const ProtobufCFieldDescriptor *f, ProtobufCMessage *m)
{
	void *q = (char *)m + f->quantifier_offset;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t *c = q;
		if (*c != 0 && *c != f->id) {
			return fail(j,
			            "%s: another member of its oneof is set",
			            f->name);
		}
		*c = f->id;
	} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
	           f->type != PROTOBUF_C_TYPE_STRING &&
	           f->type != PROTOBUF_C_TYPE_MESSAGE) {
		*(protobuf_c_boolean *)q = 1;
	}
	return 0;
}

static int
message(jparser *j, ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	int rv = 0;

	if (++j->depth > DEPTH_MAX) {
		return fail(j, "nested too deeply");
	}
	if (!eat(j, '{')) {
		return fail(j, "expected an object for %s", d->name);
	}
	bool *given = calloc(d->n_fields ? d->n_fields : 1, sizeof(bool));
	if (given == NULL) {
		return AA_ENOMEM;
	}
	if (!eat(j, '}')) {
		do {
			char *key;
			size_t klen;
			if ((rv = string(j, &key, &klen)) != 0) {
				break;
			}
			const ProtobufCFieldDescriptor *f =
			    field_by_key(d, key);
			if (f == NULL) {
				rv = fail(j, "%s has no field \"%s\"", d->name,
				          key);
			} else if (given[f - d->fields]) {
				rv = fail(j, "field \"%s\" given twice", key);
			} else if (!eat(j, ':')) {
				rv = fail(j, "expected : after \"%s\"", key);
			}
			free(key);
			if (rv != 0) {
				break;
			}
			given[f - d->fields] = true;
			if (word(j, "null")) {
				continue; // the default
			}
			if (f->label == PROTOBUF_C_LABEL_REPEATED) {
				rv = repeated(j, f, m);
			} else if ((rv = mark(j, f, m)) == 0) {
				rv = value(j, f, (char *)m + f->offset);
			}
			if (rv != 0) {
				break;
			}
		} while (eat(j, ','));
		if (rv == 0 && !eat(j, '}')) {
			rv = fail(j, "expected , or } in %s", d->name);
		}
	}
	free(given);
	j->depth--;
	return rv;
}

int
aa_service_from_json(ProtobufCMessage **outp,
                     const ProtobufCMessageDescriptor *type, const char *json,
                     size_t len, char *err, size_t errlen)
{
	jparser j = {.start = json,
	             .p = json,
	             .end = json + len,
	             .err = err,
	             .errlen = errlen};
	if (err != NULL && errlen > 0) {
		err[0] = '\0';
	}
	if (outp == NULL || json == NULL || !aai_svc_message_ok(type)) {
		return AA_EINVAL;
	}
	ProtobufCMessage *m = malloc(type->sizeof_message);
	if (m == NULL) {
		return AA_ENOMEM;
	}
	protobuf_c_message_init(type, m);
	int rv = message(&j, m);
	if (rv == 0) {
		ws(&j);
		if (j.p != j.end) {
			rv = fail(&j, "text after the object");
		}
	}
	if (rv == 0 && !protobuf_c_message_check(m)) {
		rv = fail(&j, "a required field of %s is missing", type->name);
	}
	if (rv != 0) {
		if (rv == AA_ENOMEM && err != NULL && errlen > 0) {
			snprintf(err, errlen, "out of memory");
		}
		protobuf_c_message_free_unpacked(m, NULL);
		return rv;
	}
	*outp = m;
	return 0;
}

void
aa_service_message_free(ProtobufCMessage *msg)
{
	if (msg != NULL) {
		protobuf_c_message_free_unpacked(msg, NULL);
	}
}

// ---- message to JSON ----

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
		return memcmp(v, zero, value_size(f->type)) == 0;
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
		size_t esz = value_size(f->type);
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
