// test_layer.c: the mechanisms the client and server layers share
// (common/src/layer.h), tested on their own: the op-id map, the pool that
// outlives its owner, and the "inside whose callback am I" marks.
#include <stdlib.h>
#include <string.h>

#include "../common/src/layer.h"
#include "testutil.h"

TestSuite(layer, .fini = aa_test_check_live, .timeout = 60);

typedef struct item {
	aai_idmap_node node;
	int value;
} item;

static item *
item_of(aai_idmap_node *n)
{
	return n == NULL ? NULL : AAI_CONTAINER(n, item, node);
}

// Many ids: the map grows by doubling and finds every one; removal and
// a missing id; a node not in the map is ignored by remove.
Test(layer, idmap_finds_every_id_across_growth)
{
	enum { N = 5000 };
	static item items[N];
	aai_idmap m;
	cr_assert_eq(aai_idmap_init(&m, 0), 0);
	cr_assert_eq(m.nbuckets, 0, "no buckets before the first add");
	for (int i = 0; i < N; i++) {
		items[i].node.id = (uint64_t)i * 7919 + 1;
		items[i].value = i;
		cr_assert_eq(aai_idmap_add(&m, &items[i].node), 0);
	}
	cr_assert_eq(m.count, N);
	cr_assert_geq(m.nbuckets, N / 2, "it grew: %zu buckets", m.nbuckets);
	for (int i = 0; i < N; i++) {
		item *it = item_of(aai_idmap_find(&m, (uint64_t)i * 7919 + 1));
		cr_assert_not_null(it);
		cr_assert_eq(it->value, i);
	}
	cr_assert_null(aai_idmap_find(&m, 2)); // never added
	for (int i = 0; i < N; i += 2) {
		aai_idmap_remove(&m, &items[i].node);
	}
	aai_idmap_remove(&m, &items[0].node); // not in the map: ignored
	cr_assert_eq(m.count, N / 2);
	for (int i = 0; i < N; i++) {
		aai_idmap_node *n = aai_idmap_find(&m, (uint64_t)i * 7919 + 1);
		cr_assert_eq(n != NULL, i % 2 == 1, "id of %d", i);
	}
	aai_idmap_fini(&m);
}

// The same id twice: find gives the latest; removing it shows the older.
Test(layer, idmap_duplicate_ids_find_the_latest)
{
	item a = {.node.id = 42, .value = 1}, b = {.node.id = 42, .value = 2};
	aai_idmap m;
	cr_assert_eq(aai_idmap_init(&m, 4), 0);
	cr_assert_eq(aai_idmap_add(&m, &a.node), 0);
	cr_assert_eq(aai_idmap_add(&m, &b.node), 0);
	cr_assert_eq(item_of(aai_idmap_find(&m, 42))->value, 2);
	aai_idmap_remove(&m, &b.node);
	cr_assert_eq(item_of(aai_idmap_find(&m, 42))->value, 1);
	aai_idmap_remove(&m, &a.node);
	cr_assert_null(aai_idmap_find(&m, 42));
	cr_assert_eq(m.count, 0);
	aai_idmap_fini(&m);
}

static bool
take_odd(aai_idmap_node *n, void *arg)
{
	int *seen = arg;
	(*seen)++;
	return item_of(n)->value % 2 == 1;
}

// walk visits every node once and takes out those its function says.
Test(layer, idmap_walk_visits_all_and_takes_out)
{
	enum { N = 300 };
	static item items[N];
	aai_idmap m;
	cr_assert_eq(aai_idmap_init(&m, 8), 0);
	for (int i = 0; i < N; i++) {
		items[i].node.id = (uint64_t)i + 1;
		items[i].value = i;
		cr_assert_eq(aai_idmap_add(&m, &items[i].node), 0);
	}
	int seen = 0;
	aai_idmap_walk(&m, take_odd, &seen);
	cr_assert_eq(seen, N);
	cr_assert_eq(m.count, N / 2);
	seen = 0;
	aai_idmap_walk(&m, take_odd, &seen);
	cr_assert_eq(seen, N / 2, "the taken nodes are gone");
	for (int i = 0; i < N; i++) {
		aai_idmap_node *n = aai_idmap_find(&m, (uint64_t)i + 1);
		cr_assert_eq(n != NULL, i % 2 == 0);
	}
	aai_idmap_fini(&m);
}

static atomic_int last_runs;

static void
on_last(void *arg)
{
	(void)arg;
	atomic_fetch_add(&last_runs, 1);
}

// The pool outlives its owner: blocks freed after the owner's release
// still go back to it, and on_last runs once, after the last of them.
Test(layer, pool_outlives_its_owner_until_the_last_block)
{
	atomic_store(&last_runs, 0);
	aai_pool *p;
	cr_assert_eq(aai_pool_new(&p, on_last, NULL), 0);
	const aa_allocator *al = aai_pool_allocator(p);
	void *a = al->alloc(al->ctx, 240);
	void *b = al->alloc(al->ctx, 4000);
	cr_assert_not_null(a);
	cr_assert_not_null(b);
	memset(a, 1, 240);
	memset(b, 2, 4000);
	aai_pool_release(p); // the owner goes
	cr_assert_eq(atomic_load(&last_runs), 0, "blocks are still out");
	al->free(al->ctx, a, 240);
	cr_assert_eq(atomic_load(&last_runs), 0);
	al->free(al->ctx, b, 4000); // the last block: the pool goes too
	cr_assert_eq(atomic_load(&last_runs), 1);

	cr_assert_eq(aai_pool_new(&p, on_last, NULL), 0);
	aai_pool_release(p); // no block out: at once
	cr_assert_eq(atomic_load(&last_runs), 2);
}

// The callback marks nest, one slot per kind: a client callback inside a
// server's hides neither, and leaving restores the outer mark.
static int client_a, client_b, server_a;

static void
inner_client_callback(void)
{
	AAI_CB_ENTER(AAI_CB_CLIENT, &client_b);
	cr_assert(aai_cb_inside(AAI_CB_CLIENT, &client_b));
	cr_assert(!aai_cb_inside(AAI_CB_CLIENT, &client_a));
	cr_assert(aai_cb_inside(AAI_CB_SERVER, &server_a));
	AAI_CB_LEAVE(AAI_CB_CLIENT);
}

static void
client_callback(void)
{
	AAI_CB_ENTER(AAI_CB_CLIENT, &client_a);
	cr_assert(aai_cb_inside(AAI_CB_SERVER, &server_a));
	cr_assert(aai_cb_inside(AAI_CB_CLIENT, &client_a));
	inner_client_callback();
	cr_assert(aai_cb_inside(AAI_CB_CLIENT, &client_a), "restored");
	AAI_CB_LEAVE(AAI_CB_CLIENT);
}

Test(layer, callback_marks_nest_per_kind)
{
	cr_assert(!aai_cb_inside(AAI_CB_CLIENT, &client_a));
	AAI_CB_ENTER(AAI_CB_SERVER, &server_a);
	client_callback();
	cr_assert(!aai_cb_inside(AAI_CB_CLIENT, &client_a));
	cr_assert(aai_cb_inside(AAI_CB_SERVER, &server_a));
	AAI_CB_LEAVE(AAI_CB_SERVER);
	cr_assert(!aai_cb_inside(AAI_CB_SERVER, &server_a));
}
