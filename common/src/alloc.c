// alloc.c: the default allocator and the recycling allocator.
//
// Design notes. A recycler keeps one free list per size class: steps of
// 32 B up to 1 KiB (where ops and their provider memory live: a 400-byte
// op takes 416 bytes, not 512 as with powers of two), then 2 and 4 KiB. A
// block carries no header: the caller gives the size back at free time (as
// aa_allocator requires), which names the class. One mutex per recycler guards
// the lists and the statistics; the critical sections are a pointer push or
// pop. Blocks larger than the largest class bypass the lists. Freed blocks
// beyond max_cached per class go back to malloc. No races beyond the list
// operations themselves: a block is owned either by a caller or by exactly one
// free list.
#include <stdlib.h>
#include <string.h>

#include "aai.h"

#define CLASS_STEP     32u // the fine classes: 32, 64, ... 1024
#define CLASS_FINE     32  // how many
#define CLASS_FINE_MAX 1024u
#define CLASS_COUNT    34 // then 2048 and 4096

typedef struct free_block {
	struct free_block *next;
} free_block;

struct aa_recycler {
	pthread_mutex_t mtx;
	aa_allocator view;
	size_t max_cached;
	free_block *lists[CLASS_COUNT];
	uint32_t counts[CLASS_COUNT];
	uint64_t hits;
	uint64_t misses;
	uint64_t in_use;
};

static void *
default_alloc(void *ctx, size_t size)
{
	(void)ctx;
	return aai_alloc(size);
}

static void
default_free(void *ctx, void *ptr, size_t size)
{
	(void)ctx;
	(void)size;
	aai_free(ptr);
}

static const aa_allocator default_allocator = {
    .alloc = default_alloc,
    .free = default_free,
    .ctx = NULL,
};

const aa_allocator *
aa_allocator_default(void)
{
	return &default_allocator;
}

// size_class returns the class index for size, or -1 when it is too big.
static int
size_class(size_t size)
{
	if (size <= CLASS_FINE_MAX) {
		return size == 0 ? 0 : (int)((size - 1) / CLASS_STEP);
	}
	if (size <= 2 * CLASS_FINE_MAX) {
		return CLASS_FINE;
	}
	if (size <= 4 * CLASS_FINE_MAX) {
		return CLASS_FINE + 1;
	}
	return -1;
}

// class_size returns the bytes of a block of class c.
static size_t
class_size(int c)
{
	if (c < CLASS_FINE) {
		return (size_t)(c + 1) * CLASS_STEP;
	}
	return (size_t)CLASS_FINE_MAX << (c - CLASS_FINE + 1);
}

static void *
recycler_alloc(void *ctx, size_t size)
{
	aa_recycler *r = ctx;
	int c = size_class(size);
	if (c < 0) {
		void *p = aai_alloc(size);
		if (p != NULL) {
			aai_mtx_lock(&r->mtx);
			r->misses++;
			r->in_use++;
			aai_mtx_unlock(&r->mtx);
		}
		return p;
	}
	aai_mtx_lock(&r->mtx);
	free_block *b = r->lists[c];
	if (b != NULL) {
		r->lists[c] = b->next;
		r->counts[c]--;
		r->hits++;
		r->in_use++;
		aai_mtx_unlock(&r->mtx);
		return b;
	}
	r->misses++;
	r->in_use++;
	aai_mtx_unlock(&r->mtx);
	void *p = aai_alloc(class_size(c));
	if (p == NULL) {
		aai_mtx_lock(&r->mtx);
		r->in_use--;
		aai_mtx_unlock(&r->mtx);
	}
	return p;
}

static void
recycler_free(void *ctx, void *ptr, size_t size)
{
	aa_recycler *r = ctx;
	int c = size_class(size);
	if (ptr == NULL) {
		return;
	}
	aai_mtx_lock(&r->mtx);
	r->in_use--;
	if (c >= 0 && r->counts[c] < r->max_cached) {
		free_block *b = ptr;
		b->next = r->lists[c];
		r->lists[c] = b;
		r->counts[c]++;
		ptr = NULL;
	}
	aai_mtx_unlock(&r->mtx);
	aai_free(ptr);
}

int
aa_recycler_alloc(aa_recycler **rp, size_t max_cached)
{
	aa_recycler *r;
	if (rp == NULL) {
		return AA_EINVAL;
	}
	if ((r = aai_zalloc(sizeof(*r))) == NULL) {
		return AA_ENOMEM;
	}
	aai_mtx_init(&r->mtx);
	r->max_cached = max_cached != 0 ? max_cached : 4096;
	r->view.alloc = recycler_alloc;
	r->view.free = recycler_free;
	r->view.ctx = r;
	aai_live_inc(AA_LIVE_RECYCLER);
	*rp = r;
	return 0;
}

void
aa_recycler_free(aa_recycler *r)
{
	if (r == NULL) {
		return;
	}
	for (int c = 0; c < CLASS_COUNT; c++) {
		free_block *b = r->lists[c];
		while (b != NULL) {
			free_block *next = b->next;
			aai_free(b);
			b = next;
		}
	}
	aai_mtx_fini(&r->mtx);
	aai_free(r);
	aai_live_dec(AA_LIVE_RECYCLER);
}

const aa_allocator *
aa_recycler_allocator(aa_recycler *r)
{
	return &r->view;
}

void
aa_recycler_stats_get(aa_recycler *r, aa_recycler_stats *st)
{
	aai_mtx_lock(&r->mtx);
	st->hits = r->hits;
	st->misses = r->misses;
	st->in_use = r->in_use;
	st->cached = 0;
	for (int c = 0; c < CLASS_COUNT; c++) {
		st->cached += r->counts[c];
	}
	aai_mtx_unlock(&r->mtx);
}
