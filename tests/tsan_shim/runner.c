// runner.c: the TSan build's stand-in for Criterion's runner (see
// criterion/criterion.h beside this file for why). Runs every registered
// test in a forked child, in registration order, with its timeout.
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "criterion/criterion.h"

static struct crs_test *tests;
static struct crs_suite *suites;

void
crs_register_test(struct crs_test *t)
{
	// Keep registration (source) order.
	struct crs_test **pp = &tests;
	while (*pp != NULL) {
		pp = &(*pp)->next;
	}
	*pp = t;
}

void
crs_register_suite(struct crs_suite *s)
{
	s->next = suites;
	suites = s;
}

void
crs_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n[----]   ", file,
	        line, expr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	_exit(1);
}

void
crs_log(const char *fmt, ...)
{
	va_list ap;
	fputs("[----] ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static struct crs_suite *
suite_of(const struct crs_test *t)
{
	for (struct crs_suite *s = suites; s != NULL; s = s->next) {
		if (strcmp(s->name, t->suite) == 0) {
			return s;
		}
	}
	return NULL;
}

static void
run_child(struct crs_test *t, struct crs_suite *s)
{
	double timeout = t->params.timeout;
	if (timeout <= 0 && s != NULL) {
		timeout = s->params.timeout;
	}
	if (timeout > 0) {
		alarm((unsigned)timeout + 1);
	}
	if (s != NULL && s->params.init != NULL) {
		s->params.init();
	}
	if (t->params.init != NULL) {
		t->params.init();
	}
	t->fn();
	if (t->params.fini != NULL) {
		t->params.fini();
	}
	if (s != NULL && s->params.fini != NULL) {
		s->params.fini();
	}
	fflush(NULL);
	_exit(0);
}

int
main(int argc, char **argv)
{
	const char *filter = NULL;
	int tested = 0, passing = 0, failing = 0, crashing = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
			filter = argv[++i];
		}
	}
	for (struct crs_test *t = tests; t != NULL; t = t->next) {
		struct crs_suite *s = suite_of(t);
		char full[256];
		snprintf(full, sizeof(full), "%s::%s", t->suite, t->name);
		if (t->params.disabled || (s != NULL && s->params.disabled) ||
		    (filter != NULL && strstr(full, filter) == NULL)) {
			continue;
		}
		fflush(NULL);
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0) {
			run_child(t, s);
		}
		int status = 0;
		while (waitpid(pid, &status, 0) < 0) {
		}
		tested++;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			passing++;
		} else if (WIFEXITED(status)) {
			failing++;
			fprintf(stderr, "[FAIL] %s (exit %d)\n", full,
			        WEXITSTATUS(status));
		} else {
			crashing++;
			fprintf(stderr, "[FAIL] %s: %s\n", full,
			        WTERMSIG(status) == SIGALRM
			            ? "timed out"
			            : strsignal(WTERMSIG(status)));
		}
	}
	fprintf(stderr,
	        "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | "
	        "Crashing: %d \n",
	        tested, passing, failing, crashing);
	return (failing + crashing) == 0 ? 0 : 1;
}
