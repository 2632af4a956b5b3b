// grpc.c: the grpc part. Runs the gRPC peer program (AA_BENCH_GRPC_BIN,
// tests/bench/grpc/bench_grpc, built only where gRPC C++ is installed)
// with --json and this run's --reps / --smoke, reads the one JSON object
// it prints, embeds its "grpc" value under "grpc" in this program's JSON,
// and prints its echo and cancel figures next to aaproxy's (from the echo
// and cancel parts of this run, if they ran: "-" otherwise).
//
// The child is run with popen on the main thread and waited for; its
// stderr goes to ours. A missing program is not an error (the part says
// it was skipped); a program that fails or prints something that is not
// the expected object is a functional failure.
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_proxy.h"

#ifndef AA_BENCH_GRPC_BIN
#define AA_BENCH_GRPC_BIN ""
#endif

#define GRPC_SKIPPED                                                          \
	"gRPC C++ not installed; apt-get install libgrpc++-dev "              \
	"protobuf-compiler-grpc"

// json_value returns the end of the JSON value that starts at p (an
// object, array, string or scalar), or NULL if it is cut short.
static const char *
json_value(const char *p)
{
	if (*p == '{' || *p == '[') {
		int depth = 0;
		bool str = false;
		for (; *p != '\0'; p++) {
			if (str) {
				if (*p == '\\' && p[1] != '\0') {
					p++;
				} else if (*p == '"') {
					str = false;
				}
			} else if (*p == '"') {
				str = true;
			} else if (*p == '{' || *p == '[') {
				depth++;
			} else if ((*p == '}' || *p == ']') && --depth == 0) {
				return p + 1;
			}
		}
		return NULL;
	}
	if (*p == '"') {
		for (p++; *p != '\0' && *p != '"'; p++) {
			if (*p == '\\' && p[1] != '\0') {
				p++;
			}
		}
		return *p == '"' ? p + 1 : NULL;
	}
	while (*p != '\0' && *p != ',' && *p != '}' && *p != ']' &&
	       !isspace((unsigned char)*p)) {
		p++;
	}
	return p;
}

// json_find returns the value of key among the members of the object
// [obj, end), or NULL; *vend gets the value's end. Nested objects are
// skipped whole, so only direct members match.
static const char *
json_find(const char *obj, const char *end, const char *key, const char **vend)
{
	size_t kl = strlen(key);
	const char *p = obj + 1; // past '{'
	while (p < end) {
		while (p < end && (isspace((unsigned char)*p) || *p == ',')) {
			p++;
		}
		if (p >= end || *p != '"') {
			return NULL;
		}
		const char *kend = json_value(p);
		if (kend == NULL || kend > end) {
			return NULL;
		}
		bool match = (size_t)(kend - p) == kl + 2 &&
		             strncmp(p + 1, key, kl) == 0;
		p = kend;
		while (p < end && (isspace((unsigned char)*p) || *p == ':')) {
			p++;
		}
		const char *v = p;
		const char *ve = json_value(v);
		if (ve == NULL || ve > end) {
			return NULL;
		}
		if (match) {
			*vend = ve;
			return v;
		}
		p = ve;
	}
	return NULL;
}

// grpc_num returns obj.section.key as a number, or NAN.
static double
grpc_num(const char *obj, const char *end, const char *section,
         const char *key)
{
	const char *se, *ve;
	const char *s = json_find(obj, end, section, &se);
	if (s == NULL || *s != '{') {
		return NAN;
	}
	const char *v = json_find(s, se, key, &ve);
	if (v == NULL) {
		return NAN;
	}
	char *num_end;
	double d = strtod(v, &num_end);
	return num_end == v ? NAN : d;
}

// read_all reads f to its end into a new string.
static char *
read_all(FILE *f)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	size_t n;
	while (buf != NULL &&
	       (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 1024) {
			char *b = realloc(buf, cap * 2);
			if (b == NULL) {
				free(buf);
				return NULL;
			}
			buf = b;
			cap *= 2;
		}
	}
	if (buf != NULL) {
		buf[len] = '\0';
	}
	return buf;
}

static void
grpc_row(const char *stack, const char *t, double e50, double e99, double h50,
         double h99, double in50)
{
	md("| %s | %s | %.1f / %.1f | %.1f / %.1f | %.3f |\n", stack, t, e50,
	   e99, h50, h99, in50);
}

void
bench_grpc(void)
{
	const char *bin = AA_BENCH_GRPC_BIN;
	md("\n## gRPC peer figures (tests/bench/grpc/bench_grpc)\n\n");
	if (bin[0] == '\0' || access(bin, X_OK) != 0) {
		md("grpc: skipped (" GRPC_SKIPPED ")\n");
		json_raw("{\"skipped\": \"" GRPC_SKIPPED "\"}", "grpc");
		md_flush();
		return;
	}
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "'%s' --json --reps %d%s", bin, reps,
	         smoke ? " --smoke" : "");
	fflush(NULL);
	FILE *f = popen(cmd, "r");
	char *out = f != NULL ? read_all(f) : NULL;
	int status = f != NULL ? pclose(f) : -1;
	check(status == 0, "grpc: bench_grpc exited with status 0");
	const char *obj = out != NULL ? strchr(out, '{') : NULL;
	const char *end = obj != NULL ? json_value(obj) : NULL;
	const char *ge = NULL;
	const char *g = end != NULL ? json_find(obj, end, "grpc", &ge) : NULL;
	check(g != NULL && *g == '{',
	      "grpc: bench_grpc printed {\"grpc\": {}}");
	if (g == NULL || *g != '{') {
		json_raw("{\"error\": \"no grpc object in bench_grpc's "
		         "output\"}",
		         "grpc");
		md("grpc: bench_grpc gave no figures (status %d)\n", status);
		free(out);
		md_flush();
		return;
	}
	size_t glen = (size_t)(ge - g);
	char *gtext = malloc(glen + 1);
	if (gtext == NULL) {
		die("malloc", AA_ENOMEM);
	}
	memcpy(gtext, g, glen);
	gtext[glen] = '\0';
	json_raw(gtext, "grpc");

	const char *ve;
	const char *ver = json_find(g, ge, "version", &ve);
	if (ver != NULL && *ver == '"' && ve - ver >= 2) { // the string's text
		ver++;
		ve--;
	}
	md("gRPC %.*s. Round trip of a 64-byte unary echo with one call "
	   "outstanding, and an in-flight cancel until the caller sees it "
	   "(gRPC: TryCancel until the client's completion; aaproxy: "
	   "aa_op_cancel until the handler ran, server responsive), p50 / "
	   "p99 in us; aaproxy's from this run's echo and cancel parts (nan: "
	   "not run).\n\n",
	   ver != NULL ? (int)(ve - ver) : 1, ver != NULL ? ver : "?");
	md("| stack | transport | echo p50 / p99 us | cancel to handler p50 / "
	   "p99 us | inside cancel p50 us |\n| --- | --- | --- | --- | --- "
	   "|\n");
	static const char *const sections[2] = {"unix", "tcp"};
	for (int i = 0; i < 2; i++) {
		const char *s = sections[i];
		grpc_row("gRPC", s, grpc_num(g, ge, s, "echo_p50_us"),
		         grpc_num(g, ge, s, "echo_p99_us"),
		         grpc_num(g, ge, s, "cancel_to_handler_p50_us"),
		         grpc_num(g, ge, s, "cancel_to_handler_p99_us"),
		         grpc_num(g, ge, s, "inside_cancel_p50_us"));
		int t = i + 1; // ipc, tcp
		grpc_row("aaproxy", transports[t], aa_echo_p50[t],
		         aa_echo_p99[t], aa_cancel_hd_p50[t],
		         aa_cancel_hd_p99[t], aa_cancel_in_p50[t]);
	}
	free(gtext);
	free(out);
	md_flush();
}
