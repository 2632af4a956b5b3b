// aa-client.h: what the parts of aa-client share (demos/aa-client.c: the
// calls and main; aa-client-options.c: the command line; aa-client-report.c:
// the readable and JSON lines). Nothing here is a library API: the demo uses
// the library only through its public headers, as an outside user would.
#ifndef AA_DEMO_CLIENT_H
#define AA_DEMO_CLIENT_H

#include <aa/aa.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define SETTLE_MS_DEFAULT 200 // after a cancel or a deadline
#define MAX_CONCURRENCY   1024

typedef struct options {
	const char *url;
	const char *method;
	const char *arg; // NULL: empty payload
	bool json;
	bool cancel_before_submit;
	long cancel_after_ms; // < 0: none
	aa_cancel_type cancel_type;
	long deadline_ms;
	long settle_ms; // < 0: the default
	long repeat;
	long concurrency;
	aa_client_opts co;
} options;

// The command line, filled by parse_options (defaults set by main first).
extern options O;
// The server's id of our connection (its log names it).
extern uint64_t conn_id;

// What one call ended as, for the report.
typedef struct outcome {
	uint64_t op_id;
	const char *status; // completed, canceled, error
	aa_timeline timeline;
	aa_settlement settlement;
	const void *result;
	size_t result_len;
	int error;
	int32_t app_code; // with error AA_EAPP: the application's code
	const char *error_msg;
	bool cancel_called;
	uint64_t cancel_ns;
	uint64_t elapsed_ns;
} outcome;

// parse_options fills O: -1 to exit 0 (--help), 2 for a usage error, 0
// to go on.
int parse_options(int argc, char **argv);

// report prints what one call ended as: a readable line, or one JSON
// object with --json (docs/demo.md: its fields are a contract). Lines of
// concurrent calls never mix.
void report(const outcome *oc);

// report_call_error reports a call that made no op (aa_client_call or
// aa_service_call failed); why (may be NULL) comes before "the call was
// refused locally".
void report_call_error(int err, const char *why);

// now_ns reads the monotonic clock in nanoseconds.
static inline uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif // AA_DEMO_CLIENT_H
