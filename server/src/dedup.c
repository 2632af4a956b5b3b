// dedup.c: client instances, for deduplication across reconnects and for
// the pending limit (docs/protocol.md § 5.2, § 6).
//
// Design notes.
//
// An instance is every connection that said Hello with one client
// instance id. It keeps the highest op id the server accepted from any of
// them (`high`: a connection snapshots it at its Hello and refuses ids not
// above the snapshot, then raises it with a CAS per accepted Start, so
// that a reconnect never runs a real operation twice) and the number of
// its ops pending over all its connections (`pending`, checked and
// counted in one atomic add per Start: the limit holds per instance, not
// per connection).
//
// The map (s->instances, an aai_idmap) is guarded by s->mtx; `high` and
// `pending` are atomics used without it. An instance with no connection
// and no pending op is forgotten once it has had none for the grace period
// (INSTANCE_GRACE_US), checked when the map would grow, so the cost is
// amortised and the map stays within twice the instances seen in a grace
// period. Pending ops keep it: their entries still count on it.
#include "server_impl.h"

typedef struct trim_arg {
	uint64_t now;
} trim_arg;

static bool
forgotten(aai_idmap_node *n, void *arg)
{
	trim_arg *t = arg;
	instance *x = AAI_CONTAINER(n, instance, node);
	if (x->conns == 0 && atomic_load(&x->pending) == 0 &&
	    t->now - x->left_us > INSTANCE_GRACE_US) {
		aai_free(x);
		return true;
	}
	return false;
}

instance *
aai_instance_get(aa_server *s, uint64_t id)
{
	aai_idmap_node *n = aai_idmap_find(&s->instances, id);
	if (n != NULL) {
		instance *x = AAI_CONTAINER(n, instance, node);
		x->conns++;
		return x;
	}
	if (s->instances.nbuckets > 0 &&
	    s->instances.count >= s->instances.nbuckets) {
		trim_arg t = {aa_clock_us()};
		aai_idmap_walk(&s->instances, forgotten, &t);
	}
	instance *x = aai_zalloc(sizeof(*x));
	if (x == NULL) {
		return NULL;
	}
	x->node.id = id;
	x->conns = 1;
	atomic_init(&x->high, 0);
	atomic_init(&x->pending, 0);
	if (aai_idmap_add(&s->instances, &x->node) != 0) {
		aai_free(x);
		return NULL;
	}
	return x;
}

void
aai_instance_left(aa_server *s, instance *inst)
{
	inst->conns--;
	inst->left_us = aa_clock_us();
}

static bool
free_instance(aai_idmap_node *n, void *arg)
{
	aai_free(AAI_CONTAINER(n, instance, node));
	return true;
}

void
aai_instances_free(aa_server *s)
{
	aai_idmap_walk(&s->instances, free_instance, NULL);
	aai_idmap_fini(&s->instances);
}
