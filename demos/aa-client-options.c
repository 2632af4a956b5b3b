// aa-client-options.c: aa-client's command line: the usage text, the
// options and their values, checked before anything connects (a bad one is
// exit status 2, docs/demo.md).
//
// Design notes.
//
// * Options may come before and after "call METHOD [ARG]"; "--" ends them.
//   A negative number is an ARG, never an option (fail -7).
// * Numbers are parsed whole, in range, or refused: nothing is cut (a
//   --deadline-ms beyond 32 bits is a usage error, not a shorter deadline).
// * It only fills O; main set the defaults before.
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "aa-client.h"

// ---- Options ----

static void
usage(FILE *f)
{
	const char *url = aa_default_url();
	fprintf(
	    f,
	    "usage: aa-client [options] call METHOD [ARG] [options]\n"
	    "Calls METHOD of aa-server with ARG as its payload (echo TEXT, "
	    "sleep MS,\n"
	    "spin MS, count N, fail CODE) and prints what happened.\n"
	    "METHOD aa.demo.Demo/Echo (/Sleep, /Count, /Fail) calls the typed "
	    "service\n"
	    "with ARG as JSON, e.g. '{\"ms\": 500}' (docs/services.md).\n"
	    "A negative number is an ARG (fail -7); \"--\" ends the options "
	    "for any\nother ARG that starts with '-'.\n"
	    "  --dial URL               server address (default "
	    "aa_default_url():\n"
	    "                           %s)\n"
	    "  --json                   one JSON object per operation\n"
	    "  --cancel-after-ms N      cancel N ms after the call, if not "
	    "done by then\n"
	    "  --cancel-before-submit   cancel before the Start is sent "
	    "(cork, call,\n"
	    "                           cancel, uncork): nothing is sent\n"
	    "  --cancel-type T          terminal (default), partial or "
	    "total\n"
	    "  --deadline-ms N          the call's deadline (default none)\n"
	    "  --settle-ms N            wait up to N ms for the server's "
	    "real outcome\n"
	    "                           (default 200 after a cancel, else "
	    "0)\n"
	    "  --repeat N               make N calls (default 1)\n"
	    "  --concurrency N          keep N calls outstanding (default "
	    "1)\n"
	    "  --heartbeat-ms N         heartbeat interval (default 1000)\n"
	    "  --dead-after-ms N        silence that means the server is "
	    "gone\n"
	    "                           (default 3 heartbeats)\n"
	    "  --connect-timeout-ms N   (default 5000)\n"
	    "  --max-msg BYTES          largest message (default 1 MiB)\n"
	    "  --tls-ca FILE            CA of the server (tls+tcp://); "
	    "verifies it\n"
	    "  --tls-server-name NAME   name the server certificate must "
	    "carry\n"
	    "  --tls-cert FILE, --tls-key FILE   a client certificate\n"
	    "  --help                   this text\n"
	    "Exit status: 0 when every call completed or was cancelled, 1 "
	    "when one\n"
	    "ended in error (or could not connect), 2 for a usage error.\n",
	    url != NULL ? url : "(none)");
}

static bool
parse_long(const char *s, long lo, long hi, long *v)
{
	char *end;
	errno = 0;
	long x = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || x < lo || x > hi) {
		return false;
	}
	*v = x;
	return true;
}

static const char *const value_options[] = {
    "--dial",
    "--cancel-after-ms",
    "--cancel-type",
    "--deadline-ms",
    "--settle-ms",
    "--repeat",
    "--concurrency",
    "--heartbeat-ms",
    "--dead-after-ms",
    "--connect-timeout-ms",
    "--max-msg",
    "--tls-ca",
    "--tls-server-name",
    "--tls-cert",
    "--tls-key",
};

// takes_value says whether name is an option that takes a value.
static bool
takes_value(const char *name)
{
	for (size_t i = 0;
	     i < sizeof(value_options) / sizeof(value_options[0]); i++) {
		if (strcmp(name, value_options[i]) == 0) {
			return true;
		}
	}
	return false;
}

// option_value handles one option that takes a value; false when it is
// not one of them or the value is bad.
static bool
option_value(const char *name, const char *val)
{
	long v;
	if (strcmp(name, "--dial") == 0) {
		O.url = val;
	} else if (strcmp(name, "--cancel-after-ms") == 0 &&
	           parse_long(val, 0, INT32_MAX, &v)) {
		O.cancel_after_ms = v;
	} else if (strcmp(name, "--cancel-type") == 0) {
		if (strcmp(val, "terminal") == 0) {
			O.cancel_type = AA_CANCEL_TERMINAL;
		} else if (strcmp(val, "partial") == 0) {
			O.cancel_type = AA_CANCEL_PARTIAL;
		} else if (strcmp(val, "total") == 0) {
			O.cancel_type = AA_CANCEL_TOTAL;
		} else {
			return false;
		}
	} else if (strcmp(name, "--deadline-ms") == 0 &&
	           parse_long(val, 0, UINT32_MAX, &v)) {
		O.deadline_ms = v;
	} else if (strcmp(name, "--settle-ms") == 0 &&
	           parse_long(val, 0, INT32_MAX, &v)) {
		O.settle_ms = v;
	} else if (strcmp(name, "--repeat") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.repeat = v;
	} else if (strcmp(name, "--concurrency") == 0 &&
	           parse_long(val, 1, MAX_CONCURRENCY, &v)) {
		O.concurrency = v;
	} else if (strcmp(name, "--heartbeat-ms") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.co.heartbeat_ms = (int)v;
	} else if (strcmp(name, "--dead-after-ms") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.co.dead_after_ms = (int)v;
	} else if (strcmp(name, "--connect-timeout-ms") == 0 &&
	           parse_long(val, 1, INT32_MAX, &v)) {
		O.co.connect_timeout_ms = (int)v;
	} else if (strcmp(name, "--max-msg") == 0 &&
	           parse_long(val, 512, INT32_MAX, &v)) {
		O.co.max_msg_size = (size_t)v;
	} else if (strcmp(name, "--tls-ca") == 0) {
		O.co.tls_ca_file = val;
		O.co.tls_verify = true;
	} else if (strcmp(name, "--tls-server-name") == 0) {
		O.co.tls_server_name = val;
	} else if (strcmp(name, "--tls-cert") == 0) {
		O.co.tls_cert_file = val;
	} else if (strcmp(name, "--tls-key") == 0) {
		O.co.tls_key_file = val;
	} else {
		return false;
	}
	return true;
}

// parse_options fills O: -1 to exit 0 (--help), 2 for a usage error, 0
// to go on. Options may come before and after "call METHOD [ARG]"; "--"
// ends them (for an ARG that starts with '-'). A negative number is an
// ARG, never an option, so that "fail -7" needs no "--".
int
parse_options(int argc, char **argv)
{
	const char *pos[3];
	int n_pos = 0;
	bool opts_done = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool negative_number =
		    a[0] == '-' && a[1] >= '0' && a[1] <= '9';
		if (!opts_done && a[0] == '-' && a[1] != '\0' &&
		    !negative_number) {
			if (strcmp(a, "--") == 0) {
				opts_done = true;
			} else if (strcmp(a, "--help") == 0 ||
			           strcmp(a, "-h") == 0) {
				usage(stdout);
				return -1;
			} else if (strcmp(a, "--json") == 0) {
				O.json = true;
			} else if (strcmp(a, "--cancel-before-submit") == 0) {
				O.cancel_before_submit = true;
			} else if (!takes_value(a)) {
				fprintf(stderr,
				        "aa-client: unknown option %s\n", a);
				return 2;
			} else if (i + 1 < argc &&
			           option_value(a, argv[i + 1])) {
				i++;
			} else {
				fprintf(stderr,
				        "aa-client: bad value for %s%s%s\n", a,
				        i + 1 < argc ? ": " : "",
				        i + 1 < argc ? argv[i + 1] : "");
				return 2;
			}
		} else if (n_pos < 3) {
			pos[n_pos++] = a;
		} else {
			fprintf(stderr, "aa-client: unexpected argument %s\n",
			        a);
			return 2;
		}
	}
	if (n_pos < 2 || strcmp(pos[0], "call") != 0) {
		fprintf(stderr, "aa-client: expected: call METHOD [ARG]; "
		                "try --help\n");
		return 2;
	}
	O.method = pos[1];
	O.arg = n_pos == 3 ? pos[2] : NULL;
	if (O.cancel_before_submit && O.cancel_after_ms >= 0) {
		fprintf(stderr, "aa-client: --cancel-after-ms and "
		                "--cancel-before-submit exclude each other\n");
		return 2;
	}
	if ((O.co.tls_cert_file == NULL) != (O.co.tls_key_file == NULL)) {
		fprintf(stderr, "aa-client: --tls-cert and --tls-key go "
		                "together\n");
		return 2;
	}
	if (O.concurrency > O.repeat) {
		O.concurrency = O.repeat;
	}
	return 0;
}
