// aa/alloc.h: the allocator associated with an operation, and the recycling
// allocator that makes steady-state operations allocation free.
//
// An aa_allocator is a plain struct of two functions and a context: a
// caller may supply its own. aa_recycler keeps freed blocks in per-size
// free lists (size classes in steps of 32 bytes up to 1 KiB, then 2 and
// 4 KiB)
// and hands them out again, so that after warm-up a stream of operations
// calls malloc zero times. Larger blocks go straight to malloc and free.
#ifndef AA_ALLOC_H
#define AA_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aa_allocator {
	// alloc returns at least size bytes aligned for any type, or NULL.
	void *(*alloc)(void *ctx, size_t size);
	// free returns a block from alloc; size is the size asked for.
	void (*free)(void *ctx, void *ptr, size_t size);
	void *ctx;
} aa_allocator;

// aa_allocator_default returns the allocator that uses malloc and free.
const aa_allocator *aa_allocator_default(void);

typedef struct aa_recycler aa_recycler;

// aa_recycler_alloc creates a thread-safe recycling allocator that keeps at
// most max_cached free blocks per size class (0 picks 4096).
int aa_recycler_alloc(aa_recycler **rp, size_t max_cached);

// aa_recycler_free releases the recycler and every cached block; blocks
// still handed out must have been given back first.
void aa_recycler_free(aa_recycler *r);

// aa_recycler_allocator returns the aa_allocator view of the recycler,
// valid as long as the recycler lives.
const aa_allocator *aa_recycler_allocator(aa_recycler *r);

typedef struct aa_recycler_stats {
	uint64_t hits;   // allocations served from a free list
	uint64_t misses; // allocations that called malloc
	uint64_t cached; // blocks now kept in free lists
	uint64_t in_use; // blocks handed out and not yet freed
} aa_recycler_stats;

// aa_recycler_stats_get copies the recycler's statistics into *st.
void aa_recycler_stats_get(aa_recycler *r, aa_recycler_stats *st);

#ifdef __cplusplus
}
#endif
#endif // AA_ALLOC_H
