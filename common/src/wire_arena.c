// wire_arena.c: the decode arena, protobuf-c's allocator while
// aai_wire_decode unpacks a frame (wire.c). No locks: an arena has one
// user at a time (wire.c's notes).
//
// Design notes.
//
// * Decoding hands protobuf-c an allocator over the caller's arena: a bump
//   pointer over a fixed buffer whose free is a no-op, reset as a whole
//   before each decode. In steady state (frames that fit the buffer) no
//   malloc happens at all. A frame that does not fit spills into heap
//   chunks taken with aai_alloc (so aa_heap_allocs() sees them) and freed
//   by the next reset. A growing arena (a connection's) owns its buffer:
//   it starts with none, and a decode whose worst-case cost (wire.c's
//   bound) does not fit first replaces it with one that does, rounded up
//   to a power of two and capped: an idle connection holds what its
//   frames needed (a few hundred bytes for a handshake), not the 8 or
//   16 KiB a fixed buffer sized for the largest frame cost, and steady
//   state still allocates nothing once the buffer reached the peak.
#include <string.h>

#include "wire.h"
#include "wire_impl.h"

#define SPILL_MIN 4096u // smallest heap chunk

struct aai_wire_chunk {
	struct aai_wire_chunk *next;
	size_t cap;
	size_t used;
	uint8_t data[];
};

_Static_assert(offsetof(struct aai_wire_chunk, data) % AAI_WIRE_ARENA_ALIGN ==
                   0,
               "chunk data must be aligned");

void
aai_wire_arena_init(aai_wire_arena *a, void *buf, size_t cap)
{
	uintptr_t p = (uintptr_t)buf;
	size_t pad = (size_t)(-p & (AAI_WIRE_ARENA_ALIGN - 1));

	memset(a, 0, sizeof(*a));
	if (buf != NULL && cap > pad) {
		a->buf = (uint8_t *)buf + pad;
		a->cap = (cap - pad) & ~(size_t)(AAI_WIRE_ARENA_ALIGN - 1);
	}
}

void
aai_wire_arena_init_growing(aai_wire_arena *a, size_t grow_max)
{
	memset(a, 0, sizeof(*a));
	a->grow_max = grow_max & ~(size_t)(AAI_WIRE_ARENA_ALIGN - 1);
}

// aai_wire_arena_fit gives a growing arena a buffer of at least need bytes (up
// to its grow_max) unless it has one. The arena holds nothing (just reset).
// Allocation failure keeps the old buffer: the decode then spills.
void
aai_wire_arena_fit(aai_wire_arena *a, size_t need)
{
	if (a->grow_max == 0 || need <= a->cap || a->cap >= a->grow_max) {
		return;
	}
	size_t cap = AAI_WIRE_ARENA_GROW_MIN;
	while (cap < need && cap < a->grow_max) {
		cap *= 2;
	}
	if (cap > a->grow_max) {
		cap = a->grow_max;
	}
	void *b = aai_alloc(cap); // malloc aligns it for any type
	if (b == NULL) {
		return;
	}
	aai_free(a->owned);
	a->owned = b;
	a->buf = b;
	a->cap = cap;
}

void
aai_wire_arena_reset(aai_wire_arena *a)
{
	struct aai_wire_chunk *c = a->chunks;
	while (c != NULL) {
		struct aai_wire_chunk *next = c->next;
		aai_free(c);
		c = next;
	}
	a->chunks = NULL;
	a->used = 0;
	a->budget = 0;
	a->taken = 0;
}

void
aai_wire_arena_fini(aai_wire_arena *a)
{
	aai_wire_arena_reset(a);
	aai_free(a->owned);
	a->owned = NULL;
	a->buf = NULL;
	a->cap = 0;
}

// aai_wire_arena_pb_alloc is the ProtobufCAllocator's alloc: bump from the
// buffer, then from the newest heap chunk, then from a new chunk.
void *
aai_wire_arena_pb_alloc(void *ctx, size_t size)
{
	aai_wire_arena *a = ctx;
	struct aai_wire_chunk *c;
	size_t need;

	// A refusal zeroes the budget: protobuf-c then gives up, and decode
	// can tell "too much memory" from "malformed".
	if (size > a->budget) {
		a->budget = 0;
		return NULL;
	}
	need = (size + AAI_WIRE_ARENA_ALIGN - 1) &
	       ~(size_t)(AAI_WIRE_ARENA_ALIGN - 1);
	if (need == 0) {
		need = AAI_WIRE_ARENA_ALIGN;
	}
	if (need > a->budget) {
		a->budget = 0;
		return NULL;
	}
	a->budget -= need;
	a->taken += need;
	if (a->cap - a->used >= need) {
		void *p = a->buf + a->used;
		a->used += need;
		return p;
	}
	c = a->chunks;
	if (c == NULL || c->cap - c->used < need) {
		size_t cap = SPILL_MIN;
		if (c != NULL && c->cap <= SIZE_MAX / 4) {
			cap = c->cap * 2;
		}
		if (cap < need) {
			cap = need;
		}
		c = aai_alloc(sizeof(*c) + cap);
		if (c == NULL) {
			a->budget = 0;
			a->taken -= need;
			return NULL;
		}
		c->next = a->chunks;
		c->cap = cap;
		c->used = 0;
		a->chunks = c;
		a->spills++;
	}
	void *p = c->data + c->used;
	c->used += need;
	return p;
}

void *
aai_wire_arena_alloc(aai_wire_arena *a, size_t size)
{
	return aai_wire_arena_pb_alloc(a, size);
}

// aai_wire_arena_pb_free is a no-op: the arena is released as a whole.
void
aai_wire_arena_pb_free(void *ctx, void *ptr)
{
	(void)ctx;
	(void)ptr;
}
