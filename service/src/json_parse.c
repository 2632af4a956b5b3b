// json_parse.c: JSON text to a protobuf-c message, driven by the message
// descriptor (aa_service_from_json, aa_service_message_free). The tokens
// come from json_lex.c.
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
// also after a parse error half-way: each piece is stored in the message
// (and each repeated element counted) before it is parsed. Nesting is
// limited to DEPTH_MAX, so hostile input cannot exhaust the stack. No
// state, no lock.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

// ---- JSON to message ----

#define GIVEN_NULL  1
#define GIVEN_VALUE 2

static int message(jparser *j, ProtobufCMessage *m);

size_t
aai_json_value_size(ProtobufCType t)
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
		if ((rv = aai_json_int(j, INT32_MIN, INT32_MAX, &i)) == 0) {
			*(int32_t *)dst = (int32_t)i;
		}
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		if ((rv = aai_json_uint(j, UINT32_MAX, &u)) == 0) {
			*(uint32_t *)dst = (uint32_t)u;
		}
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		if ((rv = aai_json_int(j, INT64_MIN, INT64_MAX, &i)) == 0) {
			*(int64_t *)dst = i;
		}
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		if ((rv = aai_json_uint(j, UINT64_MAX, &u)) == 0) {
			*(uint64_t *)dst = u;
		}
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		if ((rv = aai_json_float(j, &d)) == 0) {
			*(float *)dst = (float)d;
		}
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		if ((rv = aai_json_float(j, &d)) == 0) {
			*(double *)dst = d;
		}
		break;
	case PROTOBUF_C_TYPE_BOOL:
		if (aai_json_word(j, "true")) {
			*(protobuf_c_boolean *)dst = 1;
		} else if (aai_json_word(j, "false")) {
			*(protobuf_c_boolean *)dst = 0;
		} else {
			rv = aai_json_fail(j, "%s: expected true or false",
			                   f->name);
		}
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumDescriptor *ed = f->descriptor;
		aai_json_ws(j);
		if (j->p < j->end && *j->p == '"') {
			char *s;
			size_t n;
			if ((rv = aai_json_string(j, &s, &n)) != 0) {
				break;
			}
			const ProtobufCEnumValue *ev =
			    protobuf_c_enum_descriptor_get_value_by_name(ed,
			                                                 s);
			if (ev == NULL) {
				rv = aai_json_fail(j, "%s: %s has no value %s",
				                   f->name, ed->name, s);
			} else {
				*(int *)dst = ev->value;
			}
			free(s);
		} else if ((rv = aai_json_int(j, INT32_MIN, INT32_MAX, &i)) ==
		           0) {
			*(int *)dst = (int)i;
		}
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		char *s;
		size_t n;
		if ((rv = aai_json_string(j, &s, &n)) == 0) {
			*(char **)dst = s;
		}
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		char *s;
		size_t n;
		ProtobufCBinaryData *b = dst;
		if ((rv = aai_json_string(j, &s, &n)) != 0) {
			break;
		}
		if (!aai_json_b64_decode(s, n, &n)) {
			free(s);
			rv = aai_json_fail(j, "%s: bytes must be base64",
			                   f->name);
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
		rv = aai_json_fail(j, "%s: unsupported type", f->name);
		break;
	}
	return rv;
}

static int
repeated(jparser *j, const ProtobufCFieldDescriptor *f, ProtobufCMessage *m)
{
	size_t *np = (size_t *)((char *)m + f->quantifier_offset);
	void **arr = (void **)((char *)m + f->offset);
	size_t esz = aai_json_value_size(f->type);
	size_t cap = 0;

	if (!aai_json_eat(j, '[')) {
		return aai_json_fail(j, "%s: expected an array", f->name);
	}
	if (aai_json_eat(j, ']')) {
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
	} while (aai_json_eat(j, ','));
	if (!aai_json_eat(j, ']')) {
		return aai_json_fail(j, "%s: expected , or ]", f->name);
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
			return aai_json_fail(
			    j, "%s: another member of its oneof is set",
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
		return aai_json_fail(j, "nested too deeply");
	}
	if (!aai_json_eat(j, '{')) {
		return aai_json_fail(j, "expected an object for %s", d->name);
	}
	// Per field: 0 not given, GIVEN_NULL, GIVEN_VALUE.
	unsigned char *given = calloc(d->n_fields ? d->n_fields : 1, 1);
	if (given == NULL) {
		return AA_ENOMEM;
	}
	if (!aai_json_eat(j, '}')) {
		do {
			char *key;
			size_t klen;
			if ((rv = aai_json_string(j, &key, &klen)) != 0) {
				break;
			}
			const ProtobufCFieldDescriptor *f =
			    field_by_key(d, key);
			if (f == NULL) {
				rv = aai_json_fail(j, "%s has no field \"%s\"",
				                   d->name, key);
			} else if (given[f - d->fields]) {
				rv = aai_json_fail(
				    j, "field \"%s\" given twice", key);
			} else if (!aai_json_eat(j, ':')) {
				rv = aai_json_fail(
				    j, "expected : after \"%s\"", key);
			}
			free(key);
			if (rv != 0) {
				break;
			}
			if (aai_json_word(j, "null")) {
				given[f - d->fields] = GIVEN_NULL;
				continue; // the default
			}
			given[f - d->fields] = GIVEN_VALUE;
			if (f->label == PROTOBUF_C_LABEL_REPEATED) {
				rv = repeated(j, f, m);
			} else if ((rv = mark(j, f, m)) == 0) {
				rv = value(j, f, (char *)m + f->offset);
			}
			if (rv != 0) {
				break;
			}
		} while (aai_json_eat(j, ','));
		if (rv == 0 && !aai_json_eat(j, '}')) {
			rv =
			    aai_json_fail(j, "expected , or } in %s", d->name);
		}
	}
	// protobuf_c_message_check cannot tell a required scalar that was
	// never set from one set to 0: the keys given can (null sets
	// nothing).
	for (unsigned i = 0; rv == 0 && i < d->n_fields; i++) {
		if (d->fields[i].label == PROTOBUF_C_LABEL_REQUIRED &&
		    given[i] != GIVEN_VALUE) {
			rv = aai_json_fail(
			    j, "%s: required field \"%s\" is missing", d->name,
			    d->fields[i].name);
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
		aai_json_ws(&j);
		if (j.p != j.end) {
			rv = aai_json_fail(&j, "text after the object");
		}
	}
	if (rv == 0 && !protobuf_c_message_check(m)) {
		rv = aai_json_fail(&j, "a required field of %s is missing",
		                   type->name);
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
