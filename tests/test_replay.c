// aa-test-labels: concurrent
// test_replay.c: aa-replay (demos/replay) as a process: output formats and
// exit statuses, the documented errors of malformed scenarios, exploration
// of at least 10,000 interleavings without a failure, and an injected
// client bug (aa-replay-bug) found by each strategy, shrunk (fewer units,
// no more preemptions), and replayed deterministically from the file it
// wrote, and the runs each strategy needed over ten seeds. The shipped
// scenarios run as their own CTest tests (replay-NAME-inproc,
// replay-NAME-ipc).
//
// No sleeps: each test runs the tool and waits for its exit.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#if defined(AA_REPLAY_BIN) && defined(AA_REPLAY_BUG_BIN) &&                   \
    defined(AA_SOURCE_DIR)

// Exploration sizes: 10,000 in the plain and the ASan builds (about 25
// and 35 s on the shared 2-core machine); a TSan run is about 3 times
// slower than an ASan one, so it runs 3,000 (docs/replay.md).
#if defined(AA_TSAN)
#define EXPLORE_RUNS "3000"
#else
#define EXPLORE_RUNS "10000"
#endif

#define SCENARIOS AA_SOURCE_DIR "/demos/scenarios/"

static char dir[64];

static void
setup(void)
{
	strcpy(dir, "/tmp/aa-replay-test-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void
teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
	aa_test_check_live();
}

TestSuite(replay, .init = setup, .fini = teardown, .timeout = 240);

typedef struct ran {
	int status; // exit status
	char *out;  // stdout
	char *err;  // stderr
} ran;

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	size_t cap = 4096, n = 0;
	char *s = malloc(cap);
	size_t k;
	while ((k = fread(s + n, 1, cap - n - 1, f)) > 0) {
		n += k;
		if (cap - n < 1024) {
			cap *= 2;
			s = realloc(s, cap);
		}
	}
	s[n] = '\0';
	fclose(f);
	return s;
}

// run executes argv (NULL-terminated) with stdout and stderr in files.
static ran
run(const char *const *argv)
{
	char out[128], err[128];
	snprintf(out, sizeof(out), "%s/stdout", dir);
	snprintf(err, sizeof(err), "%s/stderr", dir);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(o, STDOUT_FILENO);
		dup2(e, STDERR_FILENO);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFEXITED(ws), "%s did not exit (signal %d)", argv[0],
	          WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
	return (ran){
	    .status = WEXITSTATUS(ws), .out = slurp(out), .err = slurp(err)};
}

static void
ran_free(ran *r)
{
	free(r->out);
	free(r->err);
}

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
}

// ---- One run and its output ----

Test(replay, already_complete_prints_the_table_and_passes)
{
	const char *argv[] = {AA_REPLAY_BIN, SCENARIOS "already_complete.aa",
	                      NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	cr_assert_not_null(
	    strstr(r.out, "| # | Client | Client layer | Server layer | "
	                  "Server |"));
	cr_assert_not_null(strstr(r.out, "log cancel_received(a)"));
	cr_assert_not_null(strstr(r.out, "settled(a): completed"));
	cr_assert_null(strstr(r.out, "**FAIL**"));
	cr_assert_not_null(strstr(r.out, "Result: PASS"));
	ran_free(&r);
}

Test(replay, json_and_mermaid)
{
	const char *a1[] = {AA_REPLAY_BIN, "--json", SCENARIOS "in_flight.aa",
	                    NULL};
	ran r = run(a1);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	cr_assert_not_null(strstr(r.out, "\"result\":\"pass\""));
	cr_assert_not_null(strstr(r.out, "\"column\":\"client_layer\""));
	cr_assert_not_null(strstr(r.out, "\"kind\":\"invariant\""));
	ran_free(&r);
	const char *a2[] = {AA_REPLAY_BIN, "--mermaid",
	                    SCENARIOS "pre_submit.aa", NULL};
	r = run(a2);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	cr_assert_not_null(strstr(r.out, "sequenceDiagram"));
	cr_assert_not_null(strstr(r.out, "participant CL as Client layer"));
	ran_free(&r);
}

Test(replay, explore_with_json_prints_one_object)
{
	char found[128];
	snprintf(found, sizeof(found), "%s/found.aa", dir);
	const char *argv[] = {AA_REPLAY_BUG_BIN,
	                      "--json",
	                      "--explore",
	                      "1000",
	                      "--out",
	                      found,
	                      AA_SOURCE_DIR "/tests/replay/bug_window.aa",
	                      NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 1, "%s%s", r.out, r.err);
	// One line: the exploration, its failure, and the replay's run.
	char *nl = strchr(r.out, '\n');
	cr_assert_not_null(nl);
	cr_assert_eq(nl[1], '\0', "one line: %s", r.out);
	cr_assert_not_null(strstr(r.out, "{\"explore\":{\"scenario\":"));
	cr_assert_not_null(strstr(r.out, "\"failure\":{\"run\":"));
	cr_assert_not_null(strstr(r.out, "\"written\":\""), "%s", r.out);
	cr_assert_not_null(strstr(r.out, "\"replay\":{\"scenario\":"));
	cr_assert_not_null(strstr(r.out, "\"result\":\"fail\""));
	cr_assert_eq(strncmp(nl - 3, "}}}", 3), 0, "%s", r.out);
	ran_free(&r);
	const char *clean[] = {AA_REPLAY_BIN,
	                       "--json",
	                       "--explore",
	                       "20",
	                       SCENARIOS "explore_mix.aa",
	                       NULL};
	r = run(clean);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	cr_assert_not_null(strstr(r.out, "\"runs\":20,"), "%s", r.out);
	cr_assert_not_null(strstr(r.out, "\"failure\":null}}\n"), "%s", r.out);
	ran_free(&r);
}

Test(replay, a_failed_expectation_exits_1)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/wrong.aa", dir);
	write_file(path, "call a echo \"x\"\nwait handler a\n"
	                 "expect a status canceled\n");
	const char *argv[] = {AA_REPLAY_BIN, path, NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 1, "%s%s", r.out, r.err);
	cr_assert_not_null(
	    strstr(r.out, "| 3 | expect a status canceled | completed | "
	                  "**FAIL** |"),
	    "%s", r.out);
	ran_free(&r);
}

Test(replay, a_step_that_times_out_names_itself_and_exits_2)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/stuck.aa", dir);
	write_file(path, "timeout 100\ncall a work \"x\"\nwait handler a\n");
	const char *argv[] = {AA_REPLAY_BIN, path, NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 2, "%s%s", r.out, r.err);
	char want[256];
	snprintf(want, sizeof(want),
	         "%s:3:1: step 'wait handler a': not seen within 100 ms",
	         path);
	cr_assert_not_null(strstr(r.err, want), "%s", r.err);
	ran_free(&r);
}

// ---- Malformed scenarios: file:line:col and exit status 2 ----

static const struct {
	const char *text;
	const char *error; // after "FILE:"
} malformed[] = {
    {"call a echo \"x\"\nfrobnicate x\n", "2:1: unknown step 'frobnicate'"},
    // The four checkpoints that fire with a library lock held.
    {"hold op.cancel_wait\n",
     "1:6: cannot hold a checkpoint that fires with a library lock held "
     "(a thread held there would hold the lock) 'op.cancel_wait'"},
    {"call a work x\nhold op.deliver_handoff a\n",
     "2:6: cannot hold a checkpoint that fires with a library lock held "
     "(a thread held there would hold the lock) 'op.deliver_handoff'"},
    {"hold cancel.disconnect_wait\n",
     "1:6: cannot hold a checkpoint that fires with a library lock held "
     "(a thread held there would hold the lock) "
     "'cancel.disconnect_wait'"},
    {"wait reached timer.cancel_wait\n",
     "1:14: cannot hold a checkpoint that fires with a library lock held "
     "(a thread held there would hold the lock) 'timer.cancel_wait'"},
    {"hold client.nowhere a\n", "1:6: unknown checkpoint 'client.nowhere'"},
    {"call a echo \"x\n", "1:13: unterminated string"},
    {"par\n  u: cancel a\n", "3:1: par block without end"},
    {"par\n  u: cancel a\nend\nexpect a colour red\n",
     "4:10: unknown expectation 'colour'"},
    {"cancel a sideways\n",
     "1:10: cancel type is terminal, partial or total, not 'sideways'"},
    {"par\n  u: expect a status canceled\nend\n",
     "2:6: expectations go after the par block, not in it"},
    {"call a echo x deadline=soon\n", "1:24: expected a number 'soon'"},
    {"heartbeat 0\n", "1:11: a heartbeat interval is > 0 '0'"},
};

Test(replay, malformed_scenarios_name_file_line_and_column)
{
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		char path[128];
		snprintf(path, sizeof(path), "%s/bad%zu.aa", dir, i);
		write_file(path, malformed[i].text);
		const char *argv[] = {AA_REPLAY_BIN, path, NULL};
		ran r = run(argv);
		char want[256];
		snprintf(want, sizeof(want), "%s:%s\n", path,
		         malformed[i].error);
		cr_assert_eq(r.status, 2, "case %zu: %s", i, r.err);
		cr_assert_str_eq(r.err, want, "case %zu", i);
		cr_assert_str_eq(r.out, "", "nothing ran");
		ran_free(&r);
	}
}

Test(replay, bad_options_and_missing_files_exit_2)
{
	const char *a1[] = {AA_REPLAY_BIN, "--strategy", "sideways",
	                    SCENARIOS "pre_submit.aa", NULL};
	ran r = run(a1);
	cr_assert_eq(r.status, 2, "%s%s", r.out, r.err);
	cr_assert_not_null(strstr(r.err,
	                          "aa-replay: bad option or value: --strategy "
	                          "sideways\nusage: aa-replay"),
	                   "%s", r.err);
	cr_assert_str_eq(r.out, "");
	ran_free(&r);
	char path[128];
	snprintf(path, sizeof(path), "%s/missing.aa", dir);
	const char *a2[] = {AA_REPLAY_BIN, path, NULL};
	r = run(a2);
	cr_assert_eq(r.status, 2, "%s%s", r.out, r.err);
	char want[192];
	snprintf(want, sizeof(want), "%s: cannot open the scenario\n", path);
	cr_assert_str_eq(r.err, want);
	ran_free(&r);
}

// ---- Exploration ----

static long
number_after(const char *s, const char *key)
{
	const char *p = strstr(s, key);
	cr_assert_not_null(p, "no '%s' in: %s", key, s);
	return strtol(p + strlen(key), NULL, 10);
}

static void
explore_clean(const char *strategy, const char *runs)
{
	const char *argv[] = {
	    AA_REPLAY_BIN, "--explore",  runs,     "--seed",
	    "7",           "--strategy", strategy, SCENARIOS "explore_mix.aa",
	    NULL};
	uint64_t t0 = aa_clock_us();
	ran r = run(argv);
	uint64_t t1 = aa_clock_us();
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	cr_assert_not_null(strstr(r.out, "no failure"), "%s", r.out);
	long distinct = number_after(r.out, "): ");
	test_note("%s: %s interleavings, %ld distinct, %.1f s", strategy, runs,
	          distinct, (double)(t1 - t0) / 1e6);
	cr_assert_gt(distinct, 1);
	ran_free(&r);
}

Test(replay, explore_random_finds_no_failure)
{
	explore_clean("random", EXPLORE_RUNS);
}

Test(replay, explore_pct_finds_no_failure)
{
	explore_clean("pct", "300");
}

Test(replay, the_same_seed_gives_the_same_interleavings)
{
	const char *argv[] = {
	    AA_REPLAY_BIN, "--explore",  "60",     "--seed",
	    "42",          "--strategy", "random", SCENARIOS "explore_mix.aa",
	    NULL};
	ran a = run(argv);
	ran b = run(argv);
	cr_assert_eq(a.status, 0);
	cr_assert_str_eq(a.out, b.out);
	ran_free(&a);
	ran_free(&b);
}

// found_and_replayed: the bug build's exploration with strategy finds the
// bug, writes a shrunk scenario, and that file replays the failure every
// time with the bug and passes without it.
static void
found_and_replayed(const char *strategy, const char *transport)
{
	char found[128];
	snprintf(found, sizeof(found), "%s/found.aa", dir);
	const char *argv[] = {AA_REPLAY_BUG_BIN,
	                      "--transport",
	                      transport,
	                      "--explore",
	                      "1000",
	                      "--seed",
	                      "1",
	                      "--strategy",
	                      strategy,
	                      "--out",
	                      found,
	                      AA_SOURCE_DIR "/tests/replay/bug_window.aa",
	                      NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 1, "%s%s", r.out, r.err);
	long at = number_after(r.out, "first failure at run ");
	// Mostly on a (its Complete is held in hand), but d and e can meet
	// the window too when their Complete arrives as they are cancelled.
	cr_assert_not_null(strstr(r.out, "cancelled before its result was "
	                                 "handed over, so CANCELED"),
	                   "%s", r.out);
	long from, pfrom, to, pto;
	const char *sh = strstr(r.out, "shrunk from ");
	cr_assert_not_null(sh, "%s", r.out);
	cr_assert_eq(sscanf(sh,
	                    "shrunk from %ld units / %ld preemption(s) to "
	                    "%ld units / %ld preemption(s)",
	                    &from, &pfrom, &to, &pto),
	             4, "%s", sh);
	test_note("%s over %s found the bug at run %ld; shrunk from %ld "
	          "units / %ld preemption(s) to %ld / %ld",
	          strategy, transport, at, from, pfrom, to, pto);
	cr_assert_lt(to, from, "shrinking removed units");
	cr_assert_leq(pto, pfrom, "shrinking never adds preemptions");
	ran_free(&r);

	// The written scenario replays the failure deterministically.
	for (int i = 0; i < 5; i++) {
		const char *again[] = {AA_REPLAY_BUG_BIN, found, NULL};
		r = run(again);
		cr_assert_eq(r.status, 1, "replay %d: %s%s", i, r.out, r.err);
		cr_assert_not_null(strstr(r.out, ": cancelled before its "
		                                 "result was handed over"),
		                   "%s", r.out);
		ran_free(&r);
	}
	// Without the bug the same interleaving passes.
	const char *fixed[] = {AA_REPLAY_BIN, found, NULL};
	r = run(fixed);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	ran_free(&r);
}

Test(replay, injected_bug_found_by_random_shrunk_and_replayed)
{
	found_and_replayed("random", "inproc");
}

Test(replay, injected_bug_found_by_pct_shrunk_and_replayed)
{
	found_and_replayed("pct", "inproc");
}

Test(replay, injected_bug_found_over_ipc_with_the_server_in_a_process)
{
	found_and_replayed("pct", "ipc");
}

// Runs needed by each strategy to meet the injected bug, over ten seeds
// (no shrinking): each seed must find it; the counts are reported.
Test(replay, injected_bug_runs_needed_by_each_strategy)
{
	static const char *const strategies[] = {"random", "pct"};
	for (int k = 0; k < 2; k++) {
		long total = 0, worst = 0;
		char runs[128] = "";
		for (int seed = 1; seed <= 10; seed++) {
			char s[16], found[128];
			snprintf(s, sizeof(s), "%d", seed);
			snprintf(found, sizeof(found), "%s/found-%s-%d.aa",
			         dir, strategies[k], seed);
			const char *argv[] = {AA_REPLAY_BUG_BIN,
			                      "--explore",
			                      "1000",
			                      "--seed",
			                      s,
			                      "--strategy",
			                      strategies[k],
			                      "--no-shrink",
			                      "--out",
			                      found,
			                      AA_SOURCE_DIR
			                      "/tests/replay/bug_window.aa",
			                      NULL};
			ran r = run(argv);
			cr_assert_eq(r.status, 1, "seed %d: %s%s", seed, r.out,
			             r.err);
			long at = number_after(r.out, "first failure at run ");
			cr_assert_gt(at, 0);
			total += at;
			worst = at > worst ? at : worst;
			size_t n = strlen(runs);
			snprintf(runs + n, sizeof(runs) - n, "%s%ld",
			         seed > 1 ? "," : "", at);
			ran_free(&r);
		}
		test_note("%s: runs needed for seeds 1..10: %s (mean %.1f, "
		          "worst %ld)",
		          strategies[k], runs, (double)total / 10, worst);
	}
}

// Over inproc, "server kill" cuts the server's connections with no
// Goodbye (a test hook of the inproc transport): the scenario passes with
// the expectations it has over ipc, and the table says what was done.
Test(replay, a_server_kill_over_inproc_cuts_the_connections)
{
	const char *argv[] = {AA_REPLAY_BIN, "--transport", "inproc",
	                      SCENARIOS "cancel_vs_server_kill.aa", NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	cr_assert_not_null(strstr(r.out, "the server is killed: its "
	                                 "connections are cut, no Goodbye"),
	                   "%s", r.out);
	ran_free(&r);
}

// A server step after a kill cannot run, on either transport: a setup
// error naming the step.
Test(replay, a_server_step_after_a_kill_is_a_setup_error)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/after_kill.aa", dir);
	write_file(path, "call a work \"x\"\n"
	                 "wait server start a\n"
	                 "server kill\n"
	                 "wait handler a\n"
	                 "server complete a\n");
	const char *transports[] = {"inproc", "ipc"};
	for (int i = 0; i < 2; i++) {
		const char *argv[] = {AA_REPLAY_BIN, "--transport",
		                      transports[i], path, NULL};
		ran r = run(argv);
		char want[192];
		snprintf(want, sizeof(want),
		         "%s:5:1: step 'server complete a': the server", path);
		cr_assert_eq(r.status, 2, "%s: %s%s", transports[i], r.out,
		             r.err);
		cr_assert_not_null(strstr(r.err, want), "%s: %s",
		                   transports[i], r.err);
		ran_free(&r);
	}
}

Test(replay, the_bug_window_passes_every_order_without_the_bug)
{
	const char *argv[] = {
	    AA_REPLAY_BIN, "--explore",
	    "200",         "--strategy",
	    "random",      AA_SOURCE_DIR "/tests/replay/bug_window.aa",
	    NULL};
	ran r = run(argv);
	cr_assert_eq(r.status, 0, "%s%s", r.out, r.err);
	ran_free(&r);
}

#else

Test(replay, not_built)
{
	cr_skip_test("aa-replay is not built (AA_DEMOS off, or no client or "
	             "server layer)");
}

#endif
