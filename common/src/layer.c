// layer.c: the op-id map, the pool that outlives its owner and the
// callback marks that the client and server layers share (layer.h has
// the design notes). Nothing here is asynchronous: the map is guarded by
// its owner's lock, the pool's count is atomic, the marks are per thread.
#include <string.h>

#include "layer.h"

// ---- aai_idmap ----

static size_t
bucket_of(uint64_t id, size_t n)
{
	return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & (n - 1);
}

int
aai_idmap_init(aai_idmap *m, size_t n0)
{
	memset(m, 0, sizeof(*m));
	if (n0 == 0) {
		return 0;
	}
	if ((m->buckets = aai_zalloc(n0 * sizeof(*m->buckets))) == NULL) {
		return AA_ENOMEM;
	}
	m->nbuckets = n0;
	return 0;
}

void
aai_idmap_fini(aai_idmap *m)
{
	aai_free(m->buckets);
	memset(m, 0, sizeof(*m));
}

// grow doubles the buckets (256 for an empty map); on ENOMEM the map keeps
// the ones it has.
static void
grow(aai_idmap *m)
{
	size_t n = m->nbuckets ? m->nbuckets * 2 : 256;
	aai_idmap_node **b = aai_zalloc(n * sizeof(*b));
	if (b == NULL) {
		return;
	}
	for (size_t i = 0; i < m->nbuckets; i++) {
		for (aai_idmap_node *x = m->buckets[i], *next; x != NULL;
		     x = next) {
			next = x->next;
			size_t k = bucket_of(x->id, n);
			x->next = b[k];
			b[k] = x;
		}
	}
	aai_free(m->buckets);
	m->buckets = b;
	m->nbuckets = n;
}

int
aai_idmap_add(aai_idmap *m, aai_idmap_node *n)
{
	if (m->count >= m->nbuckets) {
		grow(m);
		if (m->nbuckets == 0) {
			return AA_ENOMEM;
		}
	}
	size_t k = bucket_of(n->id, m->nbuckets);
	n->next = m->buckets[k];
	m->buckets[k] = n;
	m->count++;
	return 0;
}

aai_idmap_node *
aai_idmap_find(const aai_idmap *m, uint64_t id)
{
	if (m->nbuckets == 0) {
		return NULL;
	}
	aai_idmap_node *x = m->buckets[bucket_of(id, m->nbuckets)];
	while (x != NULL && x->id != id) {
		x = x->next;
	}
	return x;
}

void
aai_idmap_remove(aai_idmap *m, aai_idmap_node *n)
{
	if (m->nbuckets == 0) {
		return;
	}
	for (aai_idmap_node **pp = &m->buckets[bucket_of(n->id, m->nbuckets)];
	     *pp != NULL; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			m->count--;
			return;
		}
	}
}

void
aai_idmap_walk(aai_idmap *m, bool (*fn)(aai_idmap_node *n, void *arg),
               void *arg)
{
	for (size_t i = 0; i < m->nbuckets; i++) {
		aai_idmap_node **pp = &m->buckets[i];
		while (*pp != NULL) {
			aai_idmap_node *x = *pp;
			aai_idmap_node *next = x->next;
			if (fn(x, arg)) {
				*pp = next;
				m->count--;
			} else {
				pp = &x->next;
			}
		}
	}
}

// ---- aai_pool ----

struct aai_pool {
	aa_recycler *r;
	const aa_allocator *rv; // the recycler's own allocator
	aa_allocator view;      // counted: what the owner hands out
	atomic_size_t refs;     // blocks handed out, plus 1 for the owner
	void (*on_last)(void *arg);
	void *arg;
};

static void
pool_unref(aai_pool *p)
{
	if (atomic_fetch_sub(&p->refs, 1) == 1) {
		void (*on_last)(void *) = p->on_last;
		void *arg = p->arg;
		aa_recycler_free(p->r);
		aai_free(p);
		if (on_last != NULL) {
			on_last(arg);
		}
	}
}

static void *
pool_alloc(void *ctx, size_t size)
{
	aai_pool *p = ctx;
	void *b = p->rv->alloc(p->rv->ctx, size);
	if (b != NULL) {
		atomic_fetch_add(&p->refs, 1);
	}
	return b;
}

static void
pool_free(void *ctx, void *ptr, size_t size)
{
	aai_pool *p = ctx;
	p->rv->free(p->rv->ctx, ptr, size);
	pool_unref(p);
}

int
aai_pool_new(aai_pool **pp, void (*on_last)(void *arg), void *arg)
{
	aai_pool *p = aai_zalloc(sizeof(*p));
	if (p == NULL) {
		return AA_ENOMEM;
	}
	int rv = aa_recycler_alloc(&p->r, 0);
	if (rv != 0) {
		aai_free(p);
		return rv;
	}
	p->rv = aa_recycler_allocator(p->r);
	p->view =
	    (aa_allocator){.alloc = pool_alloc, .free = pool_free, .ctx = p};
	atomic_init(&p->refs, 1);
	p->on_last = on_last;
	p->arg = arg;
	*pp = p;
	return 0;
}

const aa_allocator *
aai_pool_allocator(aai_pool *p)
{
	return &p->view;
}

void
aai_pool_release(aai_pool *p)
{
	pool_unref(p);
}

// ---- Callback marks ----

_Thread_local const void *aai_cb_owner[AAI_CB_KINDS];
