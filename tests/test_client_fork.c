// test_client_fork.c: a client opened before fork(). The child's calls on
// the parent's client fail at once with AA_ESTATE, send nothing and run no
// handler of the parent's ops; the parent's connection is untouched and
// keeps working (docs/client-server.md, "fork"). Not labelled concurrent:
// fork() under ThreadSanitizer is not supported.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <aa/client.h>
#include <aa/server.h>

#include "methods.h"
#include "testutil.h"

TestSuite(client_fork, .timeout = 60);

typedef struct done {
	gate g;
	atomic_int calls;
	aa_state state;
} done;

static void
on_done(aa_op *op, void *arg)
{
	done *d = arg;
	d->state = aa_op_status(op);
	atomic_fetch_add(&d->calls, 1);
	gate_open(&d->g);
}

static void
echo_once(aa_client *c)
{
	done d = {0};
	aa_op *op;
	gate_init(&d.g);
	cr_assert_eq(aa_client_call(&op, c, "echo", "x", 1, NULL, NULL), 0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &d), 0);
	gate_wait(&d.g);
	cr_assert_eq(d.state, AA_COMPLETED);
	aa_op_unref(op);
}

static done parked;
static aa_op *parked_op;

// child_main runs in the child on the parent's client; its exit status
// names the first step that failed.
static int
child_main(aa_client *c)
{
	aa_client_stats st;
	aa_op *op = NULL;

	alarm(20); // a hang here is a failure, not a stuck suite
	if (aa_client_call(&op, c, "echo", "x", 1, NULL, NULL) != AA_ESTATE ||
	    op != NULL) {
		return 1;
	}
	aa_client_cork(c);
	aa_client_uncork(c);
	if (aa_client_cancel_all(c, AA_CANCEL_TERMINAL) != 0) {
		return 2;
	}
	if (aa_client_conn_id(c) != 0) {
		return 3;
	}
	aa_client_stats_get(c, &st);
	if (st.pending != 0 || st.sent_start != 0) {
		return 4;
	}
	if (aa_client_stop(c) != AA_ESTATE) {
		return 5;
	}
	// The method table is the parent's: typed calls (aa/service.h)
	// read it through these two.
	unsigned types = 0;
	uint64_t fp = 0;
	if (aa_client_method_cancel_types(c, "echo", &types) != AA_ESTATE ||
	    aa_client_method_fingerprint(c, "echo", &fp) != AA_ESTATE) {
		return 8;
	}
	aa_client_close(c);
	aa_client_free(c);
	if (atomic_load(&parked.calls) != 0) {
		return 6; // the parent's op must not finish in the child
	}
	// Cancelling a parent's op in the child ends it there (its handler
	// runs in the child) but sends nothing on the parent's connection.
	if (aa_op_cancel(parked_op, AA_CANCEL_TERMINAL) != 0 ||
	    atomic_load(&parked.calls) != 1 ||
	    aa_client_timeline(parked_op) != AA_TIMELINE_NONE) {
		return 7;
	}
	return 0;
}

Test(client_fork, child_calls_fail_and_the_parent_keeps_its_connection)
{
	char dir[] = "/tmp/aa-fork-XXXXXX";
	char url[128];
	aa_server *srv;
	aa_client *cli;
	aa_op *park;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(url, sizeof(url), "ipc://%s/s.sock", dir);
	cr_assert_eq(aa_server_alloc(&srv, NULL), 0);
	aa_method_def echo = {.name = "echo",
	                      .start = method_echo,
	                      .cancel_types = AA_CANCEL_ALL};
	aa_method_def hold = {.name = "hold",
	                      .start = method_hold,
	                      .cancel_types = AA_CANCEL_ALL};
	cr_assert_eq(aa_server_register(srv, &echo), 0);
	cr_assert_eq(aa_server_register(srv, &hold), 0);
	cr_assert_eq(aa_server_listen(srv, url), 0);
	aa_client_opts co = {.url = url};
	cr_assert_eq(aa_client_open(&cli, &co), 0);
	echo_once(cli);
	uint64_t conn = aa_client_conn_id(cli);
	cr_assert_neq(conn, 0);

	// An op pending across the fork.
	memset(&parked, 0, sizeof(parked));
	gate_init(&parked.g);
	cr_assert_eq(aa_client_call(&park, cli, "hold", NULL, 0, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(park, on_done, &parked), 0);
	parked_op = park;

	fflush(NULL);
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		_exit(child_main(cli)); // _exit: no atexit, no leak check
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child died of signal %d",
	          WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	cr_assert_eq(WEXITSTATUS(status), 0, "child step %d failed",
	             WEXITSTATUS(status));

	// The parent's client and connection were not disturbed.
	cr_assert_eq(aa_op_status(park), AA_STARTED);
	echo_once(cli);
	cr_assert_eq(aa_client_conn_id(cli), conn);
	aa_client_stats st;
	aa_client_stats_get(cli, &st);
	cr_assert_eq(st.connects, 1);
	cr_assert_eq(aa_op_cancel(park, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&parked.calls), 1);
	cr_assert_eq(parked.state, AA_CANCELED);
	aa_op_unref(park);
	aa_client_free(cli);
	aa_server_free(srv);
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
	aa_test_check_live();
}
