// svc_v2_client: a client of the test service built from a changed .proto
// (tests/CMakeLists.txt derives it from tests/proto/svc_test.proto:
// Item.quantity is a string there), run by
// tests/test_service.c as its own process, since the two generated files
// define the same C names. Usage: svc_v2_client URL. It checks that the
// server (built from tests/proto/svc_test.proto) refuses Place and Echo
// with AA_ENOTSUP before anything is sent, and still serves Tree, whose
// types did not change. Prints one line per check; exits 0 when all pass.
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <aa/service.h>

#include "check.h" // tests/install/check.h
#include "svc_test.pb-c.h"

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done;

static void
on_done(aa_op *op, void *arg)
{
	pthread_mutex_lock(&mtx);
	done = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mtx);
}

int
main(int argc, char **argv)
{
	const ProtobufCServiceDescriptor *svc = &aa__test__shop__descriptor;
	aa_client *c;
	aa_op *op = NULL;
	const char *bad = NULL;

	if (argc != 2) {
		fprintf(stderr, "usage: svc_v2_client URL\n");
		return 2;
	}
	aa_client_opts co = {.url = argv[1]};
	int rv = aa_client_open(&c, &co);
	if (rv != 0) {
		printf("FAIL: open: %s\n", aa_strerror(rv));
		return 1;
	}
	check(aa_service_check(c, svc, &bad) == AA_ENOTSUP && bad != NULL &&
	          strcmp(bad, "Place") == 0,
	      "aa_service_check names Place");

	Aa__Test__Item item = AA__TEST__ITEM__INIT;
	Aa__Test__Item *items[] = {&item};
	Aa__Test__Order order = AA__TEST__ORDER__INIT;
	item.sku = "x";
	item.quantity = "2";
	order.n_items = 1;
	order.items = items;
	check(aa_service_call(&op, c, svc, "Place", &order.base, NULL, NULL) ==
	          AA_ENOTSUP,
	      "Place is refused with AA_ENOTSUP");
	check(op == NULL, "no op was made");
	check(aa_service_call(&op, c, svc, "Echo", &order.base, NULL, NULL) ==
	          AA_ENOTSUP,
	      "Echo is refused with AA_ENOTSUP");

	aa_client_stats st;
	aa_client_stats_get(c, &st);
	check(st.sent_start == 0, "nothing was sent");

	// Tree's types are the same in both files: it is served.
	Aa__Test__Node node = AA__TEST__NODE__INIT;
	node.name = "v2";
	rv = aa_service_call(&op, c, svc, "Tree", &node.base, NULL, NULL);
	check(rv == 0, "Tree is called");
	if (rv == 0) {
		ProtobufCMessage *out = NULL;
		aa_op_set_handler(op, on_done, NULL);
		pthread_mutex_lock(&mtx);
		while (!done) {
			pthread_cond_wait(&cv, &mtx);
		}
		pthread_mutex_unlock(&mtx);
		check(aa_service_result(&out, op,
		                        &aa__test__node__descriptor) == 0 &&
		          strcmp(((Aa__Test__Node *)out)->name, "v2") == 0,
		      "and answers");
		aa_service_result_free(op, out);
		aa_op_unref(op);
	}
	aa_client_free(c);
	return failures == 0 ? 0 : 1;
}
