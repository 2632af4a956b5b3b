// wire_impl.h: what the codec's files share (wire.c, wire_arena.c,
// wire_rules.c, wire_fast.c). Not for the layers: they use wire.h.
#ifndef AA_WIRE_IMPL_H
#define AA_WIRE_IMPL_H

#include "wire.h"

// Returned by the fast path for a message or frame it leaves to the
// protobuf-c path.
#define AAI_WIRE_NOT_FAST (-1)

// Tests only: true turns the fast path off (wire_fast.c).
extern bool aai_wire_fast_off;

// aai_wire_rules applies the protocol's rules (wire_rules.c); encoding
// relaxes the text limit (encode cuts texts instead).
int aai_wire_rules(const char **why, const aai_wire_msg *m, bool encoding);

// aai_wire_arena_alloc takes size bytes from the arena within its budget,
// or NULL (wire_arena.c).
void *aai_wire_arena_alloc(aai_wire_arena *a, size_t size);

// aai_wire_arena_pb_alloc and aai_wire_arena_pb_free are the
// ProtobufCAllocator's functions over an arena (ctx) (wire_arena.c).
AAI_HIDDEN void *aai_wire_arena_pb_alloc(void *ctx, size_t size);
AAI_HIDDEN void aai_wire_arena_pb_free(void *ctx, void *ptr);

// aai_wire_arena_fit gives a growing arena a buffer of at least need bytes
// (up to its grow_max) unless it has one; only while it holds nothing.
void aai_wire_arena_fit(aai_wire_arena *a, size_t need);

// The fast path (wire_fast.c): each returns AAI_WIRE_NOT_FAST or what the
// generic function would return, with the same effects.
int aai_wire_fast_decode(aai_wire_msg *m, const char **why, aai_wire_arena *a,
                         const uint8_t *frame, size_t len);
int aai_wire_fast_size(size_t *sizep, const aai_wire_msg *m);
int aai_wire_fast_encode(size_t *lenp, uint8_t *out, size_t cap,
                         const aai_wire_msg *m, size_t max_size);

// aai_wire_text_len returns strlen(s) if it is at most max, else max + 1;
// NULL is "".
static inline size_t
aai_wire_text_len(const char *s, size_t max)
{
	size_t n = 0;
	if (s == NULL) {
		return 0;
	}
	while (n <= max && s[n] != '\0') {
		n++;
	}
	return n;
}

#endif // AA_WIRE_IMPL_H
