// aa-test-labels: concurrent
// test_demo.c: the demo pair (demos/aa-server.c, demos/aa-client.c) as
// processes: each test starts aa-server on its own ipc:// address under a
// mkdtemp directory, runs aa-client with --json, and checks the client's
// JSON line, its exit status and the server's JSON log: echo, the three
// cancellation timelines, a failure, a deadline, a killed server, usage
// errors, repeat with concurrency, the ipc socket file's handling, and the
// typed service aa.demo.Demo (JSON input; a server whose types differ).
//
// No sleeps: the tests wait for a child's exit (waitpid) or for a line on
// a child's pipe. The server's log is read after the server exited on
// SIGTERM, when every event is written. The children are exec'ed right
// after fork (nng must not run in a forked copy of a process that used it;
// this one does not, but the rule is kept).
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#if defined(AA_SERVER_BIN) && defined(AA_CLIENT_BIN)

// ---- Processes ----

typedef struct child {
	pid_t pid;
	int out; // read end of its stdout (or -1)
	int err; // read end of its stderr (or -1)
} child;

// spawn runs argv[0] with argv; its stdout (and stderr, when pipe_err) go
// to pipes the parent reads.
static child
spawn(char *const argv[], bool pipe_err)
{
	int out[2];
	int err[2] = {-1, -1};
	child c = {.out = -1, .err = -1};
	cr_assert_eq(pipe(out), 0);
	if (pipe_err) {
		cr_assert_eq(pipe(err), 0);
	}
	c.pid = fork();
	cr_assert_geq(c.pid, 0);
	if (c.pid == 0) {
		dup2(out[1], STDOUT_FILENO);
		if (pipe_err) {
			dup2(err[1], STDERR_FILENO);
		}
		for (int i = 0; i < 2; i++) {
			close(out[i]);
			if (pipe_err) {
				close(err[i]);
			}
		}
		execv(argv[0], argv);
		_exit(127);
	}
	close(out[1]);
	c.out = out[0];
	if (pipe_err) {
		close(err[1]);
		c.err = err[0];
	}
	return c;
}

// read_line reads one line (without the newline) from fd into buf; false
// at end of file before any byte.
static bool
read_line(int fd, char *buf, size_t size)
{
	size_t n = 0;
	for (;;) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			buf[n] = '\0';
			return n > 0;
		}
		if (ch == '\n') {
			buf[n] = '\0';
			return true;
		}
		if (n + 1 < size) {
			buf[n++] = ch;
		}
	}
}

// read_all reads fd to its end into a new NUL-terminated string.
static char *
read_all(int fd)
{
	size_t n = 0;
	size_t cap = 4096;
	char *s = malloc(cap);
	cr_assert_not_null(s);
	for (;;) {
		if (n + 1 == cap) {
			cap *= 2;
			s = realloc(s, cap);
			cr_assert_not_null(s);
		}
		ssize_t r = read(fd, s + n, cap - n - 1);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			break;
		}
		n += (size_t)r;
	}
	s[n] = '\0';
	return s;
}

// wait_exit waits for the child and returns its exit status, or 128 plus
// the signal that ended it.
static int
wait_exit(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0) {
		cr_assert_eq(errno, EINTR);
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// ---- A server per test ----

typedef struct demo {
	char dir[64];
	char url[128];
	char log[128];
	child server;
} demo;

static demo D;

// Every child's output, freed by the teardown: a failed assertion ends a
// test at once, and memory still reachable from here is no leak.
static char *outputs[64];
static int n_outputs;

static char *
keep(char *s)
{
	cr_assert_lt(n_outputs, 64);
	outputs[n_outputs++] = s;
	return s;
}

static void
demo_dir(void)
{
	strcpy(D.dir, "/tmp/aa-demo-test-XXXXXX");
	cr_assert_not_null(mkdtemp(D.dir));
	snprintf(D.url, sizeof(D.url), "ipc://%s/s.sock", D.dir);
	snprintf(D.log, sizeof(D.log), "%s/server.log", D.dir);
}

// server_start starts aa-server with log (a file, or "-" for its stdout)
// and waits for its "listening" line on stderr.
static void
server_start_delay(const char *log, const char *reply_delay_ms)
{
	char *argv[] = {AA_SERVER_BIN,
	                "--listen",
	                D.url,
	                "--log",
	                (char *)log,
	                reply_delay_ms ? "--reply-delay-ms" : NULL,
	                (char *)reply_delay_ms,
	                NULL};
	char line[512];
	D.server = spawn(argv, true);
	cr_assert(read_line(D.server.err, line, sizeof(line)),
	          "aa-server did not start");
	cr_assert_not_null(strstr(line, "listening on"), "%s", line);
}

static void
server_start(const char *log)
{
	server_start_delay(log, NULL);
}

// server_stop sends SIGTERM and expects a clean exit.
static void
server_stop(void)
{
	kill(D.server.pid, SIGTERM);
	cr_assert_eq(wait_exit(D.server.pid), 0, "aa-server exit status");
	D.server.pid = 0;
}

static void
setup(void)
{
	memset(&D, 0, sizeof(D));
	n_outputs = 0;
	D.server.out = -1;
	D.server.err = -1;
	demo_dir();
}

static void
teardown(void)
{
	if (D.server.pid > 0) {
		kill(D.server.pid, SIGKILL);
		wait_exit(D.server.pid);
	}
	if (D.server.out >= 0) {
		close(D.server.out);
	}
	if (D.server.err >= 0) {
		close(D.server.err);
	}
	char path[192];
	snprintf(path, sizeof(path), "%s/s.sock", D.dir);
	unlink(path);
	unlink(D.log);
	rmdir(D.dir);
	for (int i = 0; i < n_outputs; i++) {
		free(outputs[i]);
	}
	n_outputs = 0;
	aa_test_check_live();
}

TestSuite(demo, .init = setup, .fini = teardown, .timeout = 60);

// run_client runs aa-client --dial D.url args...; returns its exit status
// and its whole stdout in *out (freed by the teardown).
static int
run_client(char **out, const char *const *args)
{
	char *argv[32] = {AA_CLIENT_BIN, "--dial", D.url};
	int n = 3;
	for (; *args != NULL && n < 31; args++) {
		argv[n++] = (char *)*args;
	}
	argv[n] = NULL;
	child c = spawn(argv, false);
	*out = keep(read_all(c.out));
	close(c.out);
	return wait_exit(c.pid);
}

#define CLIENT(out, ...)                                                      \
	run_client(out, (const char *const[]){__VA_ARGS__, NULL})

// ---- Reading JSON lines (our own, flat, one object a line) ----

// json_str copies the string value of "key" in line into buf ("" when
// absent); escapes are kept as they are.
static const char *
json_str(const char *line, const char *key, char *buf, size_t size)
{
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\":\"", key);
	const char *p = strstr(line, pat);
	size_t n = 0;
	buf[0] = '\0';
	if (p == NULL) {
		return buf;
	}
	for (p += strlen(pat); *p != '\0' && *p != '"' && n + 1 < size; p++) {
		if (*p == '\\' && p[1] != '\0') {
			buf[n++] = *p++;
		}
		buf[n++] = *p;
	}
	buf[n] = '\0';
	return buf;
}

// json_num returns the number value of "key" in line, or -1.
static double
json_num(const char *line, const char *key)
{
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	const char *p = strstr(line, pat);
	if (p == NULL) {
		return -1;
	}
	return strtod(p + strlen(pat), NULL);
}

static void
expect_str(const char *line, const char *key, const char *want)
{
	char buf[256];
	cr_assert_str_eq(json_str(line, key, buf, sizeof(buf)), want,
	                 "%s in %s", key, line);
}

// server_events collects, in order, the "event" of every log line of the
// op (op id, connection id) into buf, separated by spaces.
static const char *
server_events(const char *log, double op, double conn, char *buf, size_t size)
{
	char key[64];
	snprintf(key, sizeof(key), "\"op\":%.0f,\"client\":%.0f,", op, conn);
	buf[0] = '\0';
	for (const char *l = log; *l != '\0';) {
		const char *end = strchr(l, '\n');
		size_t len = end != NULL ? (size_t)(end - l) : strlen(l);
		char line[1024];
		if (len < sizeof(line)) {
			memcpy(line, l, len);
			line[len] = '\0';
			if (strstr(line, key) != NULL) {
				char ev[64];
				json_str(line, "event", ev, sizeof(ev));
				if (buf[0] != '\0') {
					strncat(buf, " ",
					        size - strlen(buf) - 1);
				}
				strncat(buf, ev, size - strlen(buf) - 1);
			}
		}
		l += len;
		if (*l == '\n') {
			l++;
		}
	}
	return buf;
}

static char *
read_log(void)
{
	int fd = open(D.log, O_RDONLY);
	cr_assert_geq(fd, 0, "no server log");
	char *s = keep(read_all(fd));
	close(fd);
	return s;
}

// ---- The tests ----

Test(demo, echo)
{
	char *out;
	char ev[256];
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "echo", "hello \"you\""),
	             0);
	expect_str(out, "status", "completed");
	expect_str(out, "cancel", "none");
	expect_str(out, "server_outcome", "completed");
	expect_str(out, "result", "hello \\\"you\\\"");
	cr_assert_eq(json_num(out, "cancel_us"), 0);
	cr_assert_gt(json_num(out, "op"), 0);
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(server_events(log, json_num(out, "op"),
	                               json_num(out, "client"), ev,
	                               sizeof(ev)),
	                 "start completed reply_sent");
}

Test(demo, options_may_follow_the_call_and_the_readable_form)
{
	char *out;
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "call", "echo", "hi"), 0);
	cr_assert_not_null(strstr(out, ": completed after "), "%s", out);
	cr_assert_not_null(strstr(out, "\"hi\"; server: completed"), "%s",
	                   out);
	cr_assert_eq(CLIENT(&out, "call", "echo", "hi", "--json"), 0);
	expect_str(out, "result", "hi");
	server_stop();
}

Test(demo, pre_submit_the_server_never_hears_of_it)
{
	char *out;
	char ev[256];
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "sleep", "1000",
	                    "--cancel-before-submit"),
	             0);
	expect_str(out, "status", "canceled");
	expect_str(out, "cancel", "pre_submit");
	expect_str(out, "server_outcome", "never_started");
	cr_assert_gt(json_num(out, "cancel_us"), 0);
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(server_events(log, json_num(out, "op"),
	                               json_num(out, "client"), ev,
	                               sizeof(ev)),
	                 "", "the server logged the op: %s", log);
	cr_assert_not_null(strstr(log, "\"event\":\"connected\""));
}

Test(demo, in_flight_the_server_cancels_the_real_op)
{
	char *out;
	char ev[256];
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "sleep", "1000",
	                    "--cancel-after-ms", "50"),
	             0);
	expect_str(out, "status", "canceled");
	expect_str(out, "cancel", "in_flight");
	expect_str(out, "server_outcome", "canceled");
	cr_assert_gt(json_num(out, "cancel_us"), 0);
	// The client did not wait for the sleep: the server's real op was
	// cancelled (its log below says canceled, not completed).
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(server_events(log, json_num(out, "op"),
	                               json_num(out, "client"), ev,
	                               sizeof(ev)),
	                 "start cancel_received canceled reply_sent");
}

Test(demo, spin_completes_anyway_and_is_compensated)
{
	char *out;
	char ev[256];
	server_start(D.log);
	// spin runs 1 s of wall time: the Cancel at 20 ms reaches it while it
	// runs (in flight) even on a loaded machine; with spin 100 a client
	// delayed 80 ms would see already_complete, rightly.
	cr_assert_eq(CLIENT(&out, "--json", "call", "spin", "1000",
	                    "--cancel-after-ms", "20", "--settle-ms", "5000"),
	             0);
	expect_str(out, "status", "canceled");
	expect_str(out, "cancel", "in_flight");
	expect_str(out, "server_outcome", "completed");
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(
	    server_events(log, json_num(out, "op"), json_num(out, "client"),
	                  ev, sizeof(ev)),
	    "start cancel_received completed reply_sent compensate_hook "
	    "compensated");
}

// The already-complete timeline from the command line: the server holds
// its Complete 1.5 s (a slow link); sleep 20 has finished when the client
// cancels at 300 ms, and the late Complete says so. (The README's demo
// uses 300 / 50 / 150; the margins here are wider for loaded machines.)
Test(demo, already_complete_with_a_slow_reply)
{
	char *out;
	char ev[256];
	server_start_delay(D.log, "1500");
	cr_assert_eq(CLIENT(&out, "--json", "call", "sleep", "20",
	                    "--cancel-after-ms", "300", "--settle-ms", "5000"),
	             0);
	expect_str(out, "status", "canceled");
	expect_str(out, "cancel", "already_complete");
	expect_str(out, "server_outcome", "completed");
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(
	    server_events(log, json_num(out, "op"), json_num(out, "client"),
	                  ev, sizeof(ev)),
	    "start completed cancel_received reply_sent", "%s", log);
	cr_assert_not_null(strstr(log, "after completion"));
}

Test(demo, count_completes_with_n)
{
	char *out;
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "count", "5"), 0);
	expect_str(out, "status", "completed");
	expect_str(out, "result", "5");
	cr_assert_eq(CLIENT(&out, "--json", "call", "count", "1000",
	                    "--cancel-after-ms", "30"),
	             0);
	expect_str(out, "cancel", "in_flight");
	expect_str(out, "server_outcome", "canceled");
	server_stop();
}

Test(demo, fail_is_an_error_and_exit_status_1)
{
	char *out;
	char ev[256];
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "fail", "7"), 1);
	expect_str(out, "status", "error");
	expect_str(out, "server_outcome", "failed");
	// 7 is the application's code, apart from the library's AA_EAPP.
	cr_assert_eq(json_num(out, "error_code"), AA_EAPP);
	cr_assert_eq(json_num(out, "app_code"), 7);
	cr_assert_not_null(
	    strstr(out, "application error 7: fail 7 requested"), "%s", out);
	// Any int32, negative ones too, with or without "--"; a code equal
	// to an AA_E* value is still the application's.
	cr_assert_eq(CLIENT(&out, "--json", "call", "fail", "-7"), 1);
	cr_assert_eq(json_num(out, "app_code"), -7, "%s", out);
	cr_assert_eq(json_num(out, "error_code"), AA_EAPP);
	cr_assert_eq(CLIENT(&out, "--json", "call", "fail", "2147483647"), 1);
	cr_assert_not_null(strstr(out, "\"app_code\":2147483647"), "%s", out);
	char eproto[16];
	snprintf(eproto, sizeof(eproto), "%d", AA_EPROTO);
	cr_assert_eq(CLIENT(&out, "--json", "call", "fail", eproto), 1);
	cr_assert_eq(json_num(out, "app_code"), AA_EPROTO);
	cr_assert_eq(json_num(out, "error_code"), AA_EAPP);
	// Beyond int32: the method refuses the payload (REJECTED EINVAL).
	cr_assert_eq(CLIENT(&out, "--json", "call", "fail", "2147483648"), 1);
	cr_assert_eq(json_num(out, "error_code"), AA_EINVAL, "%s", out);
	cr_assert_null(strstr(out, "app_code"), "%s", out);
	expect_str(out, "server_outcome", "never_started");
	cr_assert_eq(
	    CLIENT(&out, "--json", "call", "fail", "--", "-2147483648"), 1);
	cr_assert_not_null(strstr(out, "\"app_code\":-2147483648"), "%s", out);
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(server_events(log, json_num(out, "op"),
	                               json_num(out, "client"), ev,
	                               sizeof(ev)),
	                 "start failed reply_sent");
}

Test(demo, bad_argument_and_unknown_method_are_errors)
{
	char *out;
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "sleep", "soon"), 1);
	expect_str(out, "status", "error");
	cr_assert_eq(json_num(out, "error_code"), AA_EINVAL);
	cr_assert_eq(CLIENT(&out, "--json", "call", "nope"), 1);
	expect_str(out, "status", "error");
	cr_assert_eq(json_num(out, "error_code"), AA_ENOENT);
	server_stop();
}

Test(demo, deadline)
{
	char *out;
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "sleep", "1000",
	                    "--deadline-ms", "50", "--settle-ms", "30000"),
	             1);
	expect_str(out, "status", "error");
	expect_str(out, "cancel", "none");
	cr_assert_eq((int)json_num(out, "error_code"), AA_ETIMEDOUT, "%s",
	             out);
	cr_assert_not_null(strstr(out, "deadline"), "%s", out);
	// The sleep did not run its 1000 ms: the server's deadline cancelled
	// it, and the late Complete says so (no wall-clock bound needed).
	expect_str(out, "server_outcome", "canceled");
	server_stop();
}

Test(demo, killed_server_ends_the_call_in_error)
{
	char line[1024];
	server_start("-"); // the log on its stdout, read line by line
	char *argv[] = {AA_CLIENT_BIN,
	                "--dial",
	                D.url,
	                "--json",
	                "--heartbeat-ms",
	                "100",
	                "--dead-after-ms",
	                "300",
	                "call",
	                "sleep",
	                "5000",
	                NULL};
	child c = spawn(argv, false);
	// Wait until the server has started the real op.
	bool started = false;
	while (!started && read_line(D.server.out, line, sizeof(line))) {
		started = strstr(line, "\"event\":\"start\"") != NULL;
	}
	cr_assert(started, "the server never started the call");
	double conn = json_num(line, "client");
	uint64_t t0 = aa_clock_us();
	kill(D.server.pid, SIGKILL);
	cr_assert_eq(wait_exit(D.server.pid), 128 + SIGKILL);
	D.server.pid = 0;
	char *out = keep(read_all(c.out));
	close(c.out);
	cr_assert_eq(wait_exit(c.pid), 1, "%s", out);
	uint64_t waited_us = aa_clock_us() - t0;
	expect_str(out, "status", "error");
	expect_str(out, "server_outcome", "unknown");
	cr_assert_eq(json_num(out, "error_code"), AA_ECONNLOST, "%s", out);
	cr_assert_eq(json_num(out, "client"), conn, "same connection id");
	cr_assert_lt(waited_us, 3000000, "found within the heartbeat bound");
	test_note("client ended %llu us after the kill",
	          (unsigned long long)waited_us);
}

Test(demo, no_server_is_exit_status_1)
{
	char *out;
	cr_assert_eq(
	    CLIENT(&out, "--connect-timeout-ms", "500", "call", "echo", "x"),
	    1);
}

Test(demo, usage_errors_are_exit_status_2)
{
	char *out;
	cr_assert_eq(CLIENT(&out, "call"), 2);
	cr_assert_eq(CLIENT(&out, "--json"), 2);
	cr_assert_eq(CLIENT(&out, "--bogus", "call", "echo"), 2);
	cr_assert_eq(CLIENT(&out, "call", "echo", "--repeat", "zero"), 2);
	cr_assert_eq(CLIENT(&out, "call", "sleep", "1", "--cancel-after-ms",
	                    "1", "--cancel-before-submit"),
	             2);
	// A deadline beyond 32 bits of milliseconds is refused, not cut.
	cr_assert_eq(
	    CLIENT(&out, "call", "echo", "x", "--deadline-ms", "4294967296"),
	    2);
	cr_assert_eq(CLIENT(&out, "--help"), 0);
	cr_assert_not_null(strstr(out, "usage: aa-client"));
	char *argv[] = {AA_SERVER_BIN, "--bogus", "1", NULL};
	child s = spawn(argv, false);
	keep(read_all(s.out));
	close(s.out);
	cr_assert_eq(wait_exit(s.pid), 2);
}

Test(demo, repeat_with_concurrency)
{
	char *out;
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "echo", "x", "--repeat",
	                    "40", "--concurrency", "4"),
	             0);
	int lines = 0;
	bool seen[41] = {false};
	for (char *l = out; *l != '\0';) {
		char *end = strchr(l, '\n');
		cr_assert_not_null(end);
		*end = '\0';
		expect_str(l, "status", "completed");
		double op = json_num(l, "op");
		cr_assert(op >= 1 && op <= 40, "%s", l);
		cr_assert_not(seen[(int)op], "op %d twice", (int)op);
		seen[(int)op] = true;
		lines++;
		l = end + 1;
	}
	cr_assert_eq(lines, 40);
	server_stop();
}

// A socket file nobody listens on is removed and replaced; one a server
// answers on is left alone (the second server refuses to start); the
// socket is private (0600) while served.
Test(demo, ipc_socket_file)
{
	char path[192];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(path, sizeof(path), "%s/s.sock", D.dir);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd); // a stale socket file: nothing listens

	server_start(D.log);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);

	char *argv[] = {AA_SERVER_BIN, "--listen", D.url,
	                "--log",       D.log,      NULL};
	child second = spawn(argv, false);
	close(second.out);
	cr_assert_eq(wait_exit(second.pid), 1, "a second server started");

	char *out;
	cr_assert_eq(CLIENT(&out, "call", "echo", "still here"), 0);
	server_stop();
}

// read_frame reads one length-prefixed frame from fd into buf: its
// length, or -1.
static int
read_frame(int fd, uint8_t *buf, size_t size)
{
	uint8_t pre[4];
	size_t got = 0;
	while (got < 4) {
		ssize_t n = read(fd, pre + got, 4 - got);
		if (n <= 0) {
			return -1;
		}
		got += (size_t)n;
	}
	size_t len = (size_t)pre[0] << 24 | (size_t)pre[1] << 16 |
	             (size_t)pre[2] << 8 | pre[3];
	if (len > size) {
		return -1;
	}
	for (got = 0; got < len;) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n <= 0) {
			return -1;
		}
		got += (size_t)n;
	}
	return (int)len;
}

// No byte a client can put in a method name makes the server's JSON log
// invalid: a raw client (plain socket, frames by hand) asks for the
// method a"b\c€, which the server rejects (ENOENT) and logs escaped.
Test(demo, a_method_name_with_quotes_and_backslashes_is_logged_as_json)
{
	server_start(D.log);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s.sock", D.dir);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	// docs/protocol.md § 3: the client Hello of the example frames,
	// then Start{op 1, method a"b\c€}.
	static const uint8_t frames[] = {
	    0x00, 0x00, 0x00, 0x16, 0x32, 0x14, 0x08, 0x01, 0x10,
	    0x01, 0x18, 0x80, 0x80, 0x40, 0x28, 0xe8, 0x07, 0x31,
	    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, //
	    0x00, 0x00, 0x00, 0x0e, 0x0a, 0x0c, 0x08, 0x01, 0x12,
	    0x08, 'a',  '"',  'b',  '\\', 'c',  0xe2, 0x82, 0xac};
	cr_assert_eq(write(fd, frames, sizeof(frames)),
	             (ssize_t)sizeof(frames));
	uint8_t buf[4096];
	cr_assert_gt(read_frame(fd, buf, sizeof(buf)), 0, "no Hello");
	int n = read_frame(fd, buf, sizeof(buf));
	// Envelope{complete: {op_id 1, REJECTED, ENOENT, ...}}
	cr_assert_gt(n, 8, "no Complete");
	static const uint8_t want[] = {0x08, 0x01, 0x10, 0x04, 0x20, 0x0e};
	cr_assert_eq(buf[0], 0x12);
	cr_assert_eq(memcmp(buf + 2, want, sizeof(want)), 0,
	             "not Complete{1, REJECTED, ENOENT}");
	close(fd);
	server_stop();
	char *log = read_log();
	cr_assert_not_null(strstr(log,
	                          "\"method\":\"a\\\"b\\\\c\xe2\x82\xac\","
	                          "\"event\":\"rejected\""),
	                   "%s", log);
	for (const unsigned char *c = (const unsigned char *)log; *c; c++) {
		cr_assert(*c >= 0x20 || *c == '\n', "a raw control byte");
	}
}

// ---- The typed service aa.demo.Demo (demos/demo.proto) ----

Test(demo, typed_service_by_full_name_with_json)
{
	char *out;
	char ev[256];
	server_start(D.log);
	cr_assert_eq(CLIENT(&out, "--json", "call", "aa.demo.Demo/Echo",
	                    "{\"text\": \"hi\"}"),
	             0);
	expect_str(out, "status", "completed");
	expect_str(out, "result", "{\\\"text\\\":\\\"hi\\\"}");
	cr_assert_eq(
	    CLIENT(&out, "--json", "call", "aa.demo.Demo/Count", "{\"n\": 3}"),
	    0);
	expect_str(out, "result", "{\\\"counted\\\":3}");
	cr_assert_eq(CLIENT(&out, "--json", "call", "aa.demo.Demo/Fail",
	                    "{\"code\": -7, \"message\": \"out of stock\"}"),
	             1);
	expect_str(out, "status", "error");
	cr_assert_eq(json_num(out, "error_code"), AA_EAPP);
	cr_assert_eq(json_num(out, "app_code"), -7);
	cr_assert_not_null(strstr(out, "out of stock"), "%s", out);
	cr_assert_eq(CLIENT(&out, "--json", "call", "aa.demo.Demo/Sleep",
	                    "{\"ms\": 1000}", "--cancel-after-ms", "50"),
	             0);
	expect_str(out, "status", "canceled");
	expect_str(out, "cancel", "in_flight");
	expect_str(out, "server_outcome", "canceled");
	server_stop();
	char *log = read_log();
	cr_assert_str_eq(server_events(log, json_num(out, "op"),
	                               json_num(out, "client"), ev,
	                               sizeof(ev)),
	                 "start cancel_received canceled reply_sent");
}

// A server built from another demo.proto: here a byte method named
// aa.demo.Demo/Echo that declares another type fingerprint. aa-client
// refuses the call before sending it, with AA_ENOTSUP and a reason.
static atomic_int echo_starts;

static int
other_echo(aa_op **opp, void *arg, const aa_call_info *call,
           const void *payload, size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	atomic_fetch_add(&echo_starts, 1);
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_complete(*opp, NULL, 0, NULL);
	}
	return rv;
}

Test(demo, typed_call_to_a_server_with_other_types_is_refused)
{
	aa_server *srv = NULL;
	aa_method_def d = {.name = "aa.demo.Demo/Echo",
	                   .start = other_echo,
	                   .cancel_types = AA_CANCEL_ALL,
	                   .type_fingerprint = 1};
	char *out;
	atomic_store(&echo_starts, 0);
	cr_assert_eq(aa_server_alloc(&srv, &(aa_server_opts){0}), 0);
	cr_assert_eq(aa_server_register(srv, &d), 0);
	cr_assert_eq(aa_server_listen(srv, D.url), 0);
	cr_assert_eq(CLIENT(&out, "--json", "call", "aa.demo.Demo/Echo",
	                    "{\"text\": \"hi\"}"),
	             1);
	expect_str(out, "status", "error");
	cr_assert_eq(json_num(out, "error_code"), AA_ENOTSUP);
	cr_assert_eq(json_num(out, "op"), 0, "no op was made");
	cr_assert_not_null(strstr(out, "other message types"), "%s", out);
	test_note("%s", out);
	// Without ARG the input is {}: refused the same way (the readable
	// line this time).
	cr_assert_eq(CLIENT(&out, "call", "aa.demo.Demo/Echo"), 1);
	char want[64];
	snprintf(want, sizeof(want), "op 0: error %d (", AA_ENOTSUP);
	cr_assert_not_null(strstr(out, want), "%s", out);
	cr_assert_not_null(strstr(out, "other message types"), "%s", out);
	test_note("%s", out);
	aa_server_stats ss;
	aa_server_stats_get(srv, &ss);
	cr_assert_eq(ss.started + ss.rejected, 0,
	             "nothing reached the server");
	cr_assert_eq(atomic_load(&echo_starts), 0);
	aa_server_free(srv);
}

Test(demo, typed_input_errors_are_usage_errors)
{
	char *out;
	// Refused before connecting: no server is needed.
	cr_assert_eq(
	    CLIENT(&out, "call", "aa.demo.Demo/Sleep", "{\"msx\": 1}"), 2);
	cr_assert_eq(
	    CLIENT(&out, "call", "aa.demo.Demo/Sleep", "{\"ms\": -1}"), 2);
	cr_assert_eq(CLIENT(&out, "call", "aa.demo.Demo/Echo", "not json"), 2);
}

#else // the demo programs are not built

Test(demo, not_built)
{
	test_note("aa-server and aa-client are not built: nothing to test");
}

#endif
