// report.c: bench_proxy's output. Markdown tables go to stdout, or to
// stderr with --json; figures recorded with json_* are kept in one buffer
// and written at the end as one JSON object on stdout:
//
//   {"format": 1, "reps": 5, ..., "echo.ipc.aa.p50_us": 37.2, ...,
//    "grpc": {...}}
//
// Keys are flat, dotted paths (part.transport.stack.figure), stable from
// run to run, so that runs can be compared by a script; they are listed in
// docs/PERFORMANCE.md. A figure that is not a finite number is written as
// null. Only the main thread calls these functions (no lock).
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_proxy.h"

static char *json_buf;
static size_t json_len, json_cap;

void
md(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(json_mode ? stderr : stdout, fmt, ap);
	va_end(ap);
}

void
md_flush(void)
{
	fflush(json_mode ? stderr : stdout);
}

static void
json_append(const char *s, size_t n)
{
	if (json_len + n + 1 > json_cap) {
		size_t cap = json_cap == 0 ? 4096 : json_cap;
		while (json_len + n + 1 > cap) {
			cap *= 2;
		}
		char *b = realloc(json_buf, cap);
		if (b == NULL) {
			die("json buffer", AA_ENOMEM);
		}
		json_buf = b;
		json_cap = cap;
	}
	memcpy(json_buf + json_len, s, n);
	json_len += n;
	json_buf[json_len] = '\0';
}

static void
json_key(const char *fmt, va_list ap)
{
	char key[256];
	const char *sep = json_len == 0 ? "  \"" : ",\n  \"";
	vsnprintf(key, sizeof(key), fmt, ap);
	json_append(sep, strlen(sep));
	json_append(key, strlen(key));
	json_append("\": ", 3);
}

void
json_num(double v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	json_key(fmt, ap);
	va_end(ap);
	char num[64];
	int n = isfinite(v) ? snprintf(num, sizeof(num), "%.6g", v)
	                    : snprintf(num, sizeof(num), "null");
	json_append(num, (size_t)n);
}

void
json_str(const char *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	json_key(fmt, ap);
	va_end(ap);
	json_append("\"", 1);
	for (; *s != '\0'; s++) {
		char esc[8];
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			json_append(esc, 2);
		} else if (ch < 0x20) {
			int n = snprintf(esc, sizeof(esc), "\\u%04x", ch);
			json_append(esc, (size_t)n);
		} else {
			json_append((const char *)&ch, 1);
		}
	}
	json_append("\"", 1);
}

void
json_raw(const char *text, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	json_key(fmt, ap);
	va_end(ap);
	json_append(text, strlen(text));
}

void
json_print(void)
{
	printf("{\n%s\n}\n", json_buf != NULL ? json_buf : "");
	fflush(stdout);
	free(json_buf);
	json_buf = NULL;
	json_len = json_cap = 0;
}
