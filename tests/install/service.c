// The install check's typed service: an outside project that has only the
// installed aaproxy, protoc-c and greeter.proto. One program, two roles,
// run as two processes by .ci/aa:
//   aa-install-service serve URL   serves greet.Greeter until SIGTERM
//   aa-install-service call URL    checks a typed call and a typed cancel
// The caller exits non-zero on any failure.
#define _POSIX_C_SOURCE 200809L

#include <aa/service.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "greeter.pb-c.h"

// ---- serve ----

static int
greet(aa_op **opp, void *arg, const aa_call_info *call,
      const ProtobufCMessage *input, const aa_assoc *assoc)
{
	const Greet__Person *p = (const Greet__Person *)input;
	Greet__Greeting g = GREET__GREETING__INIT;
	char text[128];
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv != 0) {
		return rv;
	}
	snprintf(text, sizeof(text), "hello, %s%s%s",
	         p->n_titles > 0 ? p->titles[0] : "",
	         p->n_titles > 0 ? " " : "", p->name);
	g.to = (Greet__Person *)p;
	g.text = text;
	// The op is made: from here on it is finished, never refused.
	if ((rv = aa_service_complete(*opp, &g.base)) != 0) {
		aa_op_fail(*opp, rv, "cannot pack the reply");
	}
	return 0;
}

static int
wait_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	aa_op_canceled(op);
	return 0;
}

static int
wait_start(aa_op **opp, void *arg, const aa_call_info *call,
           const ProtobufCMessage *input, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = wait_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	return aa_op_alloc(opp, &pv, assoc);
}

static int
serve(const char *url)
{
	static const aa_service_method methods[] = {
	    {.name = "Greet", .start = greet, .cancel_types = AA_CANCEL_ALL},
	    {.name = "Wait",
	     .start = wait_start,
	     .cancel_types = AA_CANCEL_ALL},
	};
	sigset_t sigs;
	aa_server *s = NULL;
	aa_service *svc = NULL;
	int sig;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	aa_server_opts so = {0};
	int rv = aa_server_alloc(&s, &so);
	if (rv == 0) {
		rv = aa_service_register(&svc, s, &greet__greeter__descriptor,
		                         methods, 2);
	}
	if (rv == 0) {
		rv = aa_server_listen(s, url);
	}
	if (rv != 0) {
		fprintf(stderr, "serve: %s\n", aa_strerror(rv));
	} else {
		sigwait(&sigs, &sig);
	}
	if (s != NULL) {
		aa_server_free(s);
	}
	aa_service_free(svc);
	return rv == 0 ? 0 : 1;
}

// ---- call ----

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int events;

static void
on_event(aa_op *op, void *arg)
{
	pthread_mutex_lock(&mtx);
	events++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mtx);
}

static void
wait_events(int n)
{
	pthread_mutex_lock(&mtx);
	while (events < n) {
		pthread_cond_wait(&cv, &mtx);
	}
	pthread_mutex_unlock(&mtx);
}

static int
call(const char *url)
{
	const ProtobufCServiceDescriptor *svc = &greet__greeter__descriptor;
	aa_client *c;
	aa_op *wop = NULL;
	aa_op *gop = NULL;
	aa_client_opts co = {.url = url};
	int rv = aa_client_open(&c, &co);
	if (rv != 0) {
		printf("FAIL: open %s: %s\n", url, aa_strerror(rv));
		return 1;
	}
	check(aa_service_check(c, svc, NULL) == 0,
	      "the server has greet.Greeter with the same types");

	// Wait first, then Greet: when Greet's reply is in, the server has
	// Wait's Start (one ordered connection), so the cancel is in flight.
	Greet__WaitRequest wr = GREET__WAIT_REQUEST__INIT;
	wr.id = 1;
	check(aa_service_call(&wop, c, svc, "Wait", &wr.base, NULL, NULL) == 0,
	      "Wait is called");
	char *titles[] = {"Dr"};
	Greet__Person p = GREET__PERSON__INIT;
	p.name = "Ada";
	p.n_titles = 1;
	p.titles = titles;
	check(aa_service_call(&gop, c, svc, "Greet", &p.base, NULL, NULL) == 0,
	      "Greet is called");
	if (wop == NULL || gop == NULL) {
		aa_client_free(c);
		return 1;
	}
	aa_op_set_handler(gop, on_event, NULL);
	wait_events(1);
	ProtobufCMessage *out = NULL;
	check(aa_service_result(&out, gop, &greet__greeting__descriptor) == 0,
	      "Greet completed with a Greeting");
	if (out != NULL) {
		Greet__Greeting *g = (Greet__Greeting *)out;
		check(strcmp(g->text, "hello, Dr Ada") == 0 && g->to != NULL &&
		          strcmp(g->to->name, "Ada") == 0,
		      "the typed result is right");
		aa_service_result_free(gop, out);
	}

	// The settle handler runs after the completion handler, which runs
	// inside the cancel: events 2 and 3.
	aa_op_set_handler(wop, on_event, NULL);
	aa_op_set_settle_handler(wop, on_event, NULL);
	check(aa_op_cancel(wop, AA_CANCEL_TERMINAL) == 0 &&
	          aa_op_status(wop) == AA_CANCELED,
	      "cancel: CANCELED at once");
	check(aa_client_timeline(wop) == AA_TIMELINE_IN_FLIGHT,
	      "the in-flight timeline");
	wait_events(3);
	check(aa_op_settlement(wop) == AA_SETTLE_CANCELED,
	      "the server cancelled the real op");
	aa_op_unref(wop);
	aa_op_unref(gop);
	aa_client_free(c);
	check(aa_live_total() == 0, "no library object is left alive");
	printf("install service check: %s\n",
	       failures == 0 ? "passed" : "FAILED");
	return failures == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0) {
		return serve(argv[2]);
	}
	if (argc == 3 && strcmp(argv[1], "call") == 0) {
		return call(argv[2]);
	}
	fprintf(stderr, "usage: aa-install-service serve|call URL\n");
	return 2;
}
