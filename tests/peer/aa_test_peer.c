// aa_test_peer: the other process of the process-level tests.
//   aa_test_peer server URL HEARTBEAT_MS   serve "park" on URL
//   aa_test_peer client URL                call "park" once on URL
// It prints "ready" on stdout once it listens (server) or once its call
// is sent (client), then waits until it is killed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aa/client.h>
#include <aa/server.h>

static int
park_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	(void)type;
	(void)arg;
	aa_op_canceled(op);
	return 0;
}

static int
park(aa_op **opp, void *arg, const aa_call_info *call, const void *payload,
     size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = park_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	(void)arg;
	(void)call;
	(void)payload;
	(void)len;
	return aa_op_alloc(opp, &pv, assoc);
}

int
main(int argc, char **argv)
{
	if (argc >= 4 && strcmp(argv[1], "server") == 0) {
		aa_server *srv;
		aa_server_opts so = {.heartbeat_ms = atoi(argv[3])};
		aa_method_def d = {.name = "park",
		                   .start = park,
		                   .cancel_types = AA_CANCEL_ALL};
		if (aa_server_alloc(&srv, &so) != 0 ||
		    aa_server_register(srv, &d) != 0 ||
		    aa_server_listen(srv, argv[2]) != 0) {
			return 3;
		}
	} else if (argc >= 3 && strcmp(argv[1], "client") == 0) {
		aa_client *c;
		aa_client_opts co = {.url = argv[2]};
		aa_op *op;
		if (aa_client_open(&c, &co) != 0 ||
		    aa_client_call(&op, c, "park", NULL, 0, NULL, NULL) != 0) {
			return 3;
		}
	} else {
		fprintf(stderr, "usage: aa_test_peer server URL HB_MS | "
		                "client URL\n");
		return 2;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		pause();
	}
}
