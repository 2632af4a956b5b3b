// The install check's imported .proto: prices.proto imports
// shared/money.proto through aa_add_proto_service(... IMPORT_DIRS). The
// program serves shop.Prices on inproc:// and calls it: the imported type
// is the method's output, registered, fingerprinted and unpacked like any.
#include <aa/service.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "prices.pb-c.h" // includes money.pb-c.h

static int
get(aa_op **opp, void *arg, const aa_call_info *call,
    const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Shop__PriceRequest *r = (const Shop__PriceRequest *)input;
	Shop__Common__Money m = SHOP__COMMON__MONEY__INIT;
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	m.cents = (int64_t)strlen(r->sku) * 100;
	m.currency = "EUR";
	// The op is made: from here on it is finished, never refused.
	if ((rv = aa_service_complete(*opp, &m.base)) != 0) {
		aa_op_fail(*opp, rv, "cannot pack the reply");
	}
	return 0;
}

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
main(void)
{
	static const aa_service_method methods[] = {
	    {.name = "Get", .start = get, .cancel_types = AA_CANCEL_ALL},
	};
	const ProtobufCServiceDescriptor *svc = &shop__prices__descriptor;
	aa_server *s = NULL;
	aa_service *sv = NULL;
	aa_client *c = NULL;
	aa_op *op = NULL;
	aa_server_opts so = {0};
	aa_client_opts co = {.url = "inproc://aa-install-imports"};

	check(aa_server_alloc(&s, &so) == 0 &&
	          aa_service_register(&sv, s, svc, methods, 1) == 0 &&
	          aa_server_listen(s, co.url) == 0,
	      "shop.Prices is served");
	check(aa_client_open(&c, &co) == 0, "the client connects");
	if (c != NULL) {
		check(aa_service_check(c, svc, NULL) == 0,
		      "same types on both sides");
		Shop__PriceRequest r = SHOP__PRICE_REQUEST__INIT;
		r.sku = "abc";
		check(aa_service_call(&op, c, svc, "Get", &r.base, NULL,
		                      NULL) == 0,
		      "Get is called");
	}
	if (op != NULL) {
		aa_op_set_handler(op, on_done, NULL);
		pthread_mutex_lock(&mtx);
		while (!done) {
			pthread_cond_wait(&cv, &mtx);
		}
		pthread_mutex_unlock(&mtx);
		ProtobufCMessage *out = NULL;
		check(aa_service_result(&out, op,
		                        &shop__common__money__descriptor) == 0,
		      "the result is a shop.common.Money");
		if (out != NULL) {
			Shop__Common__Money *m = (Shop__Common__Money *)out;
			check(m->cents == 300 &&
			          strcmp(m->currency, "EUR") == 0,
			      "with the right fields");
			aa_service_result_free(op, out);
		}
		aa_op_unref(op);
	}
	aa_client_free(c);
	aa_server_free(s);
	aa_service_free(sv);
	check(aa_live_total() == 0, "no library object is left alive");
	printf("install imports check: %s\n",
	       failures == 0 ? "passed" : "FAILED");
	return failures == 0 ? 0 : 1;
}
