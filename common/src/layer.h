// layer.h: what the client and server layers share, written once (they
// used to keep three op-id maps with three out-of-memory policies, two
// ways to let a recycler outlive its owner, and two "inside whose
// callback am I" markers). Internal.
//
// * aai_idmap: an intrusive chained hash map from a 64-bit id to a node
//   embedded in the caller's object, O(1). It grows (doubling) when it
//   holds as many nodes as buckets. The one out-of-memory policy: a map
//   that cannot grow keeps its buckets and goes on with longer chains
//   (still correct, slower); only a map with no buckets at all refuses an
//   add (AA_ENOMEM). No locking: the owner's lock guards it.
//
// * aai_pool: an allocator over an aa_recycler that outlives its owner.
//   Ops made with it may be released after the client or server that
//   made them is freed; the pool counts the blocks it handed out plus one
//   for the owner, and whoever drops the last count (the owner's
//   aai_pool_release, or the free of the last block) frees the recycler
//   and runs the owner's on_last function (e.g. to free the rest of the
//   owner's memory).
//
// * Callback marks: which client and which server this thread is running
//   a callback of, so that stop from inside one is AA_EDEADLK and free is
//   deferred, never a deadlock. One slot per kind, so that a client
//   callback nested in a server's (in one process) hides neither.
#ifndef AA_LAYER_H
#define AA_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aai.h"

// ---- aai_idmap ----

typedef struct aai_idmap_node {
	struct aai_idmap_node *next;
	uint64_t id;
} aai_idmap_node;

typedef struct aai_idmap {
	aai_idmap_node **buckets;
	size_t nbuckets; // a power of two, or 0
	size_t count;
} aai_idmap;

// aai_idmap_init makes an empty map with n0 buckets (a power of two; 0
// allocates on the first add). AA_ENOMEM leaves it empty and usable.
int aai_idmap_init(aai_idmap *m, size_t n0);

// aai_idmap_fini frees the buckets; the nodes belong to the caller.
void aai_idmap_fini(aai_idmap *m);

// aai_idmap_add inserts n (its id set; ids need not be unique, find gives
// the latest). 0, or AA_ENOMEM when the map has no buckets and cannot get
// any.
int aai_idmap_add(aai_idmap *m, aai_idmap_node *n);

// aai_idmap_find returns the node with id, or NULL.
aai_idmap_node *aai_idmap_find(const aai_idmap *m, uint64_t id);

// aai_idmap_remove takes n out; a node that is not in the map is ignored.
void aai_idmap_remove(aai_idmap *m, aai_idmap_node *n);

// aai_idmap_walk calls fn on every node, in no order; a node for which fn
// returns true is taken out (fn may then reuse its next field).
void aai_idmap_walk(aai_idmap *m, bool (*fn)(aai_idmap_node *n, void *arg),
                    void *arg);

// AAI_CONTAINER gives the object that holds member at ptr.
#define AAI_CONTAINER(ptr, type, member)                                      \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

// ---- aai_pool ----

typedef struct aai_pool aai_pool;

// aai_pool_new makes a pool; on_last(arg) runs once, after the owner's
// release and the free of the last block (may be NULL).
int aai_pool_new(aai_pool **pp, void (*on_last)(void *arg), void *arg);

// aai_pool_allocator returns the pool's counted allocator.
const aa_allocator *aai_pool_allocator(aai_pool *p);

// aai_pool_release drops the owner's count.
void aai_pool_release(aai_pool *p);

// ---- Callback marks ----

typedef enum aai_cb_kind {
	AAI_CB_CLIENT,
	AAI_CB_SERVER,
	AAI_CB_KINDS
} aai_cb_kind;

extern _Thread_local const void *aai_cb_owner[AAI_CB_KINDS];

// AAI_CB_ENTER(kind, obj) marks this thread as running a callback of obj
// until the matching AAI_CB_LEAVE(kind) in the same block (they nest).
#define AAI_CB_ENTER(kind, obj)                                               \
	const void *aai_cb_saved_##kind = aai_cb_owner[kind];                 \
	aai_cb_owner[kind] = (obj)
#define AAI_CB_LEAVE(kind) aai_cb_owner[kind] = aai_cb_saved_##kind

// aai_cb_inside says whether this thread runs a callback of obj.
static inline bool
aai_cb_inside(aai_cb_kind kind, const void *obj)
{
	return aai_cb_owner[kind] == obj;
}

#endif // AA_LAYER_H
