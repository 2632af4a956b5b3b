// aa-test-labels: concurrent
//
// test_embed.c: the embedding demo as two processes (demos/embed/embed-a.c
// as process A, aa-server as process B): calls across the boundary, typed
// (B's log names each op aa.demo.Demo/Sleep, A decodes B's typed reply),
// with logs that correlate by op id, cancel-all across the boundary, B
// killed mid-operation (A's remote ops end in ERROR, connection lost, and
// the retries stop with "connection refused"), B killed then restarted
// (A's retries recover), B started separately and reached by URL, and a B
// without the typed service (refused at connect). Each test runs A to its
// exit (waitpid, no sleeps) with its stdout and B's log in files under a
// mkdtemp directory; A starts and stops B itself (but in the test that
// starts B separately). Labelled concurrent: the TSan phase runs it too,
// with A and B built with ThreadSanitizer (a report in either makes it
// exit non-zero, and the test fails on A's exit status).
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#if defined(AA_SERVER_BIN) && defined(AA_EMBED_A_BIN)

TestSuite(embed, .timeout = 120, .fini = aa_test_check_live);

typedef struct run {
	char dir[64];
	char url[128];
	char a_out[128];
	char b_log[128];
	char *a; // A's stdout
	char *b; // B's log
	int status;
} run;

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *s;
	long n;
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	s = calloc(1, (size_t)n + 1);
	cr_assert_not_null(s);
	cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return s;
}

// run_bin runs A (bin) with the extra arguments (NULL-terminated) to its
// exit.
static void
run_bin(run *r, const char *bin, const char *const *extra)
{
	const char *argv[32] = {bin,        "--url",       r->url,
	                        "--server", AA_SERVER_BIN, "--server-log",
	                        r->b_log};
	int n = 7;
	pid_t pid;
	int st;
	snprintf(r->dir, sizeof(r->dir), "/tmp/aa-embed-XXXXXX");
	cr_assert_not_null(mkdtemp(r->dir));
	snprintf(r->url, sizeof(r->url), "ipc://%s/b.sock", r->dir);
	snprintf(r->a_out, sizeof(r->a_out), "%s/a.out", r->dir);
	snprintf(r->b_log, sizeof(r->b_log), "%s/b.log", r->dir);
	for (; *extra != NULL; extra++) {
		argv[n++] = *extra;
	}
	argv[n] = NULL;
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int fd = open(r->a_out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(fd, STDOUT_FILENO);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0) {
		cr_assert_eq(errno, EINTR);
	}
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	r->a = slurp(r->a_out);
	r->b = slurp(r->b_log);
}

static void
run_a(run *r, const char *const *extra)
{
	run_bin(r, AA_EMBED_A_BIN, extra);
}

static void
run_fini(run *r)
{
	unlink(r->a_out);
	unlink(r->b_log);
	rmdir(r->dir);
	free(r->a);
	free(r->b);
}

// count counts the lines of text that contain every one of the strings.
static int
count(const char *text, const char *s1, const char *s2)
{
	int n = 0;
	while (*text != '\0') {
		const char *end = strchr(text, '\n');
		size_t len = end != NULL ? (size_t)(end - text) : strlen(text);
		char line[512];
		if (len >= sizeof(line)) {
			len = sizeof(line) - 1;
		}
		memcpy(line, text, len);
		line[len] = '\0';
		if (strstr(line, s1) != NULL &&
		    (s2 == NULL || strstr(line, s2) != NULL)) {
			n++;
		}
		text += end != NULL ? len + 1 : len;
	}
	return n;
}

// remote_ids collects the remote op ids of A's remote_start lines.
static int
remote_ids(const char *a, unsigned long long *ids, int max)
{
	const char *key = "\"remote_start\",\"remote_op\":";
	int n = 0;
	for (const char *p = strstr(a, key); p != NULL && n < max;
	     p = strstr(p + 1, key)) {
		ids[n++] = strtoull(p + strlen(key), NULL, 10);
	}
	return n;
}

// line_with returns whether a line of text contains both strings.
static bool
line_with(const char *text, const char *s1, const char *s2)
{
	return count(text, s1, s2) > 0;
}

// a_remote_end says whether A logged the remote op id's end with state
// and error (an aa_strerror text, "" for none).
static bool
a_remote_end(const char *a, unsigned long long id, const char *state,
             const char *error)
{
	char key[64];
	char tail[160];
	snprintf(key, sizeof(key), "\"remote_end\",\"remote_op\":%llu,", id);
	snprintf(tail, sizeof(tail), "\"state\":\"%s\",\"error\":\"%s\"",
	         state, error);
	return line_with(a, key, tail);
}

// b_has says whether B's log has the event for op id.
static bool
b_has(const char *b, unsigned long long id, const char *event)
{
	char op[48];
	char ev[48];
	snprintf(op, sizeof(op), "{\"op\":%llu,", id);
	snprintf(ev, sizeof(ev), "\"event\":\"%s\"", event);
	return line_with(b, op, ev);
}

Test(embed, calls_cross_two_processes_with_correlated_logs)
{
	run r = {0};
	unsigned long long ids[16];
	int n;
	run_a(&r,
	      (const char *const[]){"--calls", "3", "--sleep-ms", "20", NULL});
	cr_assert_eq(r.status, 0, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"completed\""), 3, "%s", r.a);
	// Each top-level result is B's typed reply, decoded in A.
	cr_assert_eq(count(r.a, "\"done\"", "\"slept_ms\":20,"), 3, "%s", r.a);
	n = remote_ids(r.a, ids, 16);
	cr_assert_eq(n, 3);
	for (int i = 0; i < n; i++) {
		char op[48];
		snprintf(op, sizeof(op), "{\"op\":%llu,", ids[i]);
		cr_assert_eq(count(r.b, op, "\"start\""), 1, "%s", r.b);
		cr_assert_eq(count(r.b, op, "\"completed\""), 1, "%s", r.b);
		// Every line of B's for this op names the typed method,
		// not the byte method "sleep".
		cr_assert_eq(
		    count(r.b, op, NULL),
		    count(r.b, op, "\"method\":\"aa.demo.Demo/Sleep\""), "%s",
		    r.b);
	}
	run_fini(&r);
}

Test(embed, cancel_all_crosses_the_boundary)
{
	run r = {0};
	run_a(&r, (const char *const[]){"--calls", "3", "--sleep-ms", "60000",
	                                "--cancel-all-after-ms", "200", NULL});
	cr_assert_eq(r.status, 0, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"canceled\""), 3, "%s", r.a);
	// Every real op that B started was cancelled, none completed.
	cr_assert_eq(count(r.b, "\"completed\"", NULL), 0, "%s", r.b);
	cr_assert_eq(count(r.b, "\"start\"", NULL),
	             count(r.b, "\"canceled\"", NULL), "%s", r.b);
	cr_assert_eq(count(r.b, "\"start\"", NULL),
	             count(r.b, "\"start\"", "aa.demo.Demo/Sleep"), "%s", r.b);
	cr_assert_eq(count(r.a, "\"done\"", "\"slept_ms\":-1,"), 3, "%s", r.a);
	// Correlated by op id: each remote op A cancelled is one that B
	// started and cancelled.
	{
		unsigned long long ids[16];
		int n = remote_ids(r.a, ids, 16);
		cr_assert_eq(n, 3, "%s", r.a);
		for (int i = 0; i < n; i++) {
			cr_assert(a_remote_end(r.a, ids[i], "canceled",
			                       aa_strerror(AA_ECANCELED)),
			          "op %llu: %s", ids[i], r.a);
			cr_assert(b_has(r.b, ids[i], "start"), "%s", r.b);
			cr_assert(b_has(r.b, ids[i], "canceled"), "%s", r.b);
		}
	}
	run_fini(&r);
}

Test(embed, killing_b_ends_the_calls_in_error)
{
	run r = {0};
	run_a(&r, (const char *const[]){"--calls", "2", "--sleep-ms", "60000",
	                                "--kill-server-after-ms", "200",
	                                "--attempts", "2", "--backoff-ms",
	                                "50", NULL});
	unsigned long long ids[16];
	int n;
	int lost = 0;
	cr_assert_eq(r.status, 0, "%s", r.a);
	cr_assert_eq(count(r.a, "\"server_killed\"", NULL), 1, "%s", r.a);
	// Every remote op that B had started when it died ended in ERROR,
	// connection lost (correlated by op id with B's log)...
	n = remote_ids(r.a, ids, 16);
	for (int i = 0; i < n; i++) {
		if (b_has(r.b, ids[i], "start")) {
			cr_assert(a_remote_end(r.a, ids[i], "error",
			                       aa_strerror(AA_ECONNLOST)),
			          "op %llu: %s", ids[i], r.a);
			lost++;
		}
	}
	cr_assert_eq(lost, 2, "both calls were in B: %s\n%s", r.a, r.b);
	// ...and the retries stopped after --attempts with a clear error: the
	// second attempt found nobody listening.
	cr_assert_eq(count(r.a, "\"done\"", "\"state\":\"error\""), 2, "%s",
	             r.a);
	cr_assert_eq(
	    count(r.a, "\"done\"", "\"error\":\"connection refused\""), 2,
	    "%s", r.a);
	// Two attempts per call: an attempt is a remote op that ended, or a
	// call refused at once (the client dials inside it, and over ipc://
	// a refused dial returns at once), whichever the timing gave.
	cr_assert_eq(count(r.a, "\"remote_start\"", NULL) +
	                 count(r.a, "\"remote_refused\"", NULL),
	             4, "2 x 2 attempts: %s", r.a);
	run_fini(&r);
}

Test(embed, retries_recover_against_a_restarted_b)
{
	run r = {0};
	run_a(&r, (const char *const[]){
	              "--calls", "2", "--sleep-ms", "300",
	              "--kill-server-after-ms", "150", "--restart-after-ms",
	              "100", "--attempts", "8", "--backoff-ms", "100", NULL});
	cr_assert_eq(r.status, 0, "%s", r.a);
	cr_assert_eq(count(r.a, "\"server_killed\"", NULL), 1, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"completed\""), 2, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"slept_ms\":300,"), 2, "%s",
	             r.a);
	// The killed attempts ended connection lost; the restarted B
	// completed two ops (its log is appended to across the restart).
	cr_assert_geq(
	    count(r.a, "\"remote_end\"", "connection to the peer lost"), 2,
	    "%s", r.a);
	cr_assert_eq(count(r.b, "\"completed\"", "aa.demo.Demo/Sleep"), 2,
	             "%s", r.b);
	run_fini(&r);
}

// B started separately (not by A): A gets only its URL, as an
// application would that joins a running B.
Test(embed, a_b_started_separately_is_reached_by_url)
{
	char dir[64] = "/tmp/aa-embed-XXXXXX";
	char url[128];
	char b_log[128];
	char a_out[128];
	char line[256] = {0};
	int fds[2];
	pid_t b;
	pid_t a;
	int st;
	char *aout;
	char *blog;
	unsigned long long ids[16];
	int n;
	size_t got = 0;
	cr_assert_not_null(mkdtemp(dir));
	snprintf(url, sizeof(url), "ipc://%s/b.sock", dir);
	snprintf(b_log, sizeof(b_log), "%s/b.log", dir);
	snprintf(a_out, sizeof(a_out), "%s/a.out", dir);
	cr_assert_eq(pipe(fds), 0);
	b = fork();
	cr_assert_geq(b, 0);
	if (b == 0) {
		dup2(fds[1], STDERR_FILENO);
		execl(AA_SERVER_BIN, AA_SERVER_BIN, "--listen", url, "--log",
		      b_log, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	// B says "listening on URL" once it listens.
	while (got < sizeof(line) - 1 && read(fds[0], line + got, 1) == 1 &&
	       line[got] != '\n') {
		got++;
	}
	close(fds[0]);
	cr_assert_not_null(strstr(line, "listening on"), "%s", line);
	a = fork();
	cr_assert_geq(a, 0);
	if (a == 0) {
		int fd = open(a_out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(fd, STDOUT_FILENO);
		execl(AA_EMBED_A_BIN, AA_EMBED_A_BIN, "--url", url, "--calls",
		      "2", "--sleep-ms", "20", (char *)NULL);
		_exit(127);
	}
	while (waitpid(a, &st, 0) < 0) {
		cr_assert_eq(errno, EINTR);
	}
	aout = slurp(a_out);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", aout);
	// A did not start or stop B: B is still serving.
	cr_assert_eq(count(aout, "\"server_started\"", NULL), 0, "%s", aout);
	cr_assert_eq(waitpid(b, &st, WNOHANG), 0, "B still runs");
	kill(b, SIGTERM);
	while (waitpid(b, &st, 0) < 0) {
		cr_assert_eq(errno, EINTR);
	}
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "B's exit");
	blog = slurp(b_log);
	cr_assert_eq(count(aout, "\"done\"", "\"slept_ms\":20,"), 2, "%s",
	             aout);
	n = remote_ids(aout, ids, 16);
	cr_assert_eq(n, 2, "%s", aout);
	for (int i = 0; i < n; i++) {
		cr_assert(b_has(blog, ids[i], "start"), "%s", blog);
		cr_assert(b_has(blog, ids[i], "completed"), "%s", blog);
	}
	free(aout);
	free(blog);
	unlink(a_out);
	unlink(b_log);
	unlink(url + strlen("ipc://"));
	rmdir(dir);
}

#ifdef AA_TEST_PEER

// A process B that serves a byte method only (the test peer's "park"):
// A refuses it at connect, naming the method of aa.demo.Demo it misses,
// and exits 1 without starting a call.
Test(embed, a_b_without_the_typed_service_is_refused_at_connect)
{
	char dir[64] = "/tmp/aa-embed-XXXXXX";
	char url[128];
	char a_err[128];
	char buf[8] = {0};
	int fds[2];
	pid_t peer;
	pid_t a;
	int st;
	char *err;
	cr_assert_not_null(mkdtemp(dir));
	snprintf(url, sizeof(url), "ipc://%s/b.sock", dir);
	snprintf(a_err, sizeof(a_err), "%s/a.err", dir);
	cr_assert_eq(pipe(fds), 0);
	peer = fork();
	cr_assert_geq(peer, 0);
	if (peer == 0) {
		dup2(fds[1], STDOUT_FILENO);
		execl(AA_TEST_PEER, AA_TEST_PEER, "server", url, "100",
		      (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	cr_assert_eq(read(fds[0], buf, 6), 6); // "ready\n": it listens
	close(fds[0]);
	a = fork();
	cr_assert_geq(a, 0);
	if (a == 0) {
		int fd = open(a_err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(fd, STDERR_FILENO);
		execl(AA_EMBED_A_BIN, AA_EMBED_A_BIN, "--url", url, "--calls",
		      "1", (char *)NULL);
		_exit(127);
	}
	while (waitpid(a, &st, 0) < 0) {
		cr_assert_eq(errno, EINTR);
	}
	kill(peer, SIGKILL);
	waitpid(peer, NULL, 0);
	err = slurp(a_err);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s", err);
	cr_assert_not_null(strstr(err, "does not serve aa.demo.Demo/"), "%s",
	                   err);
	cr_assert_not_null(strstr(err, aa_strerror(AA_ENOENT)), "%s", err);
	free(err);
	unlink(a_err);
	rmdir(dir);
}

#endif

#ifdef AA_EMBED_A_UV_BIN

// The same application on libuv: cancel-all across the boundary, then a
// killed and restarted B.
Test(embed, the_libuv_variant_behaves_the_same)
{
	run r = {0};
	run_bin(&r, AA_EMBED_A_UV_BIN,
	        (const char *const[]){"--calls", "3", "--sleep-ms", "60000",
	                              "--cancel-all-after-ms", "200", NULL});
	cr_assert_eq(r.status, 0, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"canceled\""), 3, "%s", r.a);
	cr_assert_eq(count(r.b, "\"completed\"", NULL), 0, "%s", r.b);
	cr_assert_eq(count(r.b, "\"start\"", "aa.demo.Demo/Sleep"),
	             count(r.b, "\"canceled\"", NULL), "%s", r.b);
	run_fini(&r);
	run_bin(&r, AA_EMBED_A_UV_BIN,
	        (const char *const[]){
	            "--calls", "2", "--sleep-ms", "300",
	            "--kill-server-after-ms", "150", "--restart-after-ms",
	            "100", "--attempts", "8", "--backoff-ms", "100", NULL});
	cr_assert_eq(r.status, 0, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"completed\""), 2, "%s", r.a);
	cr_assert_eq(count(r.a, "\"done\"", "\"slept_ms\":300,"), 2, "%s",
	             r.a);
	run_fini(&r);
}

#endif

#else

Test(embed, not_built)
{
	test_note("the embedding demo is not built (AA_DEMOS off, or no "
	          "client/server layer)");
}

#endif
