// fingerprint.c: the type fingerprint of a typed method, the names of
// typed methods, and the bridge from aa_allocator to protobuf-c's
// allocator.
//
// The fingerprint is FNV-1a (64 bits) over a canonical token stream of the
// method's input and output message descriptors, so that two programs
// built from the same message definitions agree and a change that alters
// the binary encoding (a field's number, type or label, a nested type, a
// message's full name) changes it. Field names are left out: renaming a
// field keeps the encoding. docs/services.md gives the stream exactly, so
// that another implementation can compute it. FNV-1a is written here
// (ten lines) rather than taken from a library: protobuf-c has no hash and
// the project adds no dependency for one.
//
// Computing it walks the descriptors (a few microseconds for a message
// with nested types), so a client keeps each method's fingerprint in a
// small process-wide cache keyed by the method descriptor, filled lock
// free: a slot's key is claimed with a compare-and-swap, then its value
// is published; a reader that finds the key with no value yet (0: a
// fingerprint is never 0) computes it itself. Descriptors are static
// data of the program, so a key never dangles. A full cache computes.
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "aai.h"
#include "svc.h"

#define FNV_OFFSET  0xcbf29ce484222325ull
#define FNV_PRIME   0x100000001b3ull
#define SEEN_MAX    256 // distinct message types expanded per method
#define DEPTH_MAX   64  // nesting expanded; deeper types hash as refs
#define CACHE_SLOTS 256 // methods whose fingerprints are kept

typedef struct hasher {
	uint64_t h;
	const ProtobufCMessageDescriptor *seen[SEEN_MAX];
	size_t n_seen;
} hasher;

// token hashes s and its terminating NUL.
static void
token(hasher *x, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	do {
		x->h ^= *p;
		x->h *= FNV_PRIME;
	} while (*p++ != '\0');
}

static void
token_u(hasher *x, unsigned long v)
{
	char b[24];
	snprintf(b, sizeof(b), "%lu", v);
	token(x, b);
}

static const char *
label_name(ProtobufCLabel l)
{
	switch (l) {
	case PROTOBUF_C_LABEL_REQUIRED:
		return "required";
	case PROTOBUF_C_LABEL_OPTIONAL:
		return "optional";
	case PROTOBUF_C_LABEL_REPEATED:
		return "repeated";
	case PROTOBUF_C_LABEL_NONE:
		break;
	}
	return "none";
}

static const char *
type_name(ProtobufCType t)
{
	static const char *const names[] = {
	    "int32",  "sint32",  "sfixed32", "int64",   "sint64",  "sfixed64",
	    "uint32", "fixed32", "uint64",   "fixed64", "float",   "double",
	    "bool",   "enum",    "string",   "bytes",   "message",
	};
	if ((unsigned)t < sizeof(names) / sizeof(names[0])) {
		return names[t];
	}
	return "unknown";
}

static bool
seen(hasher *x, const ProtobufCMessageDescriptor *d)
{
	for (size_t i = 0; i < x->n_seen; i++) {
		if (x->seen[i] == d) {
			return true;
		}
	}
	if (x->n_seen < SEEN_MAX) {
		x->seen[x->n_seen++] = d;
	}
	return false;
}

// message hashes d: "msg", its full name, its field count, then each
// field in number order: number, label, type, and for a message field the
// nested type (expanded the first time, "ref" and its name after), for an
// enum field "enum" and the enum's full name.
static void
message(hasher *x, const ProtobufCMessageDescriptor *d, int depth)
{
	if (depth > DEPTH_MAX || seen(x, d)) {
		token(x, "ref");
		token(x, d->name);
		return;
	}
	token(x, "msg");
	token(x, d->name);
	token_u(x, d->n_fields);
	// protobuf-c keeps fields sorted by number.
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		token_u(x, f->id);
		token(x, label_name(f->label));
		token(x, type_name(f->type));
		if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
			message(x, f->descriptor, depth + 1);
		} else if (f->type == PROTOBUF_C_TYPE_ENUM) {
			const ProtobufCEnumDescriptor *e = f->descriptor;
			token(x, "enum");
			token(x, e->name);
		}
	}
}

uint64_t
aa_service_fingerprint(const ProtobufCMethodDescriptor *m)
{
	hasher x = {.h = FNV_OFFSET};
	token(&x, "in");
	message(&x, m->input, 0);
	token(&x, "out");
	message(&x, m->output, 0);
	// 0 means "untyped" on the wire.
	return x.h != 0 ? x.h : 1;
}

static _Atomic(const ProtobufCMethodDescriptor *) cache_keys[CACHE_SLOTS];
static _Atomic uint64_t cache_values[CACHE_SLOTS];

uint64_t
aai_svc_fingerprint_cached(const ProtobufCMethodDescriptor *m)
{
	size_t h = ((uintptr_t)m >> 4) * 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		size_t k = (h + i) % CACHE_SLOTS;
		const ProtobufCMethodDescriptor *key =
		    atomic_load(&cache_keys[k]);
		if (key == NULL) {
			const ProtobufCMethodDescriptor *none = NULL;
			if (!atomic_compare_exchange_strong(&cache_keys[k],
			                                    &none, m)) {
				key = none; // another thread took the slot
			} else {
				uint64_t fp = aa_service_fingerprint(m);
				atomic_store(&cache_values[k], fp);
				return fp;
			}
		}
		if (key == m) {
			uint64_t fp = atomic_load(&cache_values[k]);
			return fp != 0 ? fp : aa_service_fingerprint(m);
		}
	}
	return aa_service_fingerprint(m);
}

bool
aai_svc_service_ok(const ProtobufCServiceDescriptor *d)
{
	return d != NULL && d->magic == PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC &&
	       d->name != NULL && (d->n_methods == 0 || d->methods != NULL);
}

bool
aai_svc_message_ok(const ProtobufCMessageDescriptor *d)
{
	return d != NULL && d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC;
}

const ProtobufCMethodDescriptor *
aai_svc_find(const ProtobufCServiceDescriptor *d, const char *name)
{
	// A linear search: unlike protobuf-c's lookup it needs no sorted
	// index, so a hand-built descriptor works too.
	for (unsigned i = 0; i < d->n_methods; i++) {
		if (strcmp(d->methods[i].name, name) == 0) {
			return &d->methods[i];
		}
	}
	return NULL;
}

int
aa_service_method_name(char *buf, size_t cap,
                       const ProtobufCServiceDescriptor *desc,
                       const char *method)
{
	if (buf == NULL || method == NULL || !aai_svc_service_ok(desc)) {
		return AA_EINVAL;
	}
	if (aai_svc_find(desc, method) == NULL) {
		return AA_ENOENT;
	}
	int n = snprintf(buf, cap, "%s/%s", desc->name, method);
	// 255: the wire's longest method name (docs/protocol.md § 14).
	if (n < 0 || (size_t)n >= cap || n > 255) {
		return AA_EINVAL;
	}
	return 0;
}

// ---- protobuf-c allocator over an aa_allocator ----

#define HDR 16 // keeps the block aligned for any type

static void *
pb_alloc(void *ctx, size_t size)
{
	const aa_allocator *a = ctx;
	size_t total = size + HDR;
	if (total < size) {
		return NULL;
	}
	unsigned char *p = a->alloc(a->ctx, total);
	if (p == NULL) {
		return NULL;
	}
	memcpy(p, &total, sizeof(total));
	return p + HDR;
}

static void
pb_free(void *ctx, void *ptr)
{
	const aa_allocator *a = ctx;
	size_t total;
	if (ptr == NULL) {
		return;
	}
	unsigned char *p = (unsigned char *)ptr - HDR;
	memcpy(&total, p, sizeof(total));
	a->free(a->ctx, p, total);
}

void
aai_svc_allocator(ProtobufCAllocator *pa, const aa_allocator *a)
{
	pa->alloc = pb_alloc;
	pa->free = pb_free;
	pa->allocator_data = (void *)(a != NULL ? a : aa_allocator_default());
}
