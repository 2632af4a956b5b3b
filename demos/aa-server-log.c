// aa-server-log.c: aa-server's event log, one JSON object a line
// (docs/demo.md, "The server's log": its fields and events are a contract;
// add to them, never change one).
//
// Design notes.
//
// * Whole lines. A line is built in a fixed buffer large enough for the
//   longest one (DETAIL_MAX below) and written with one fputs under the
//   FILE's lock (flockfile), then flushed: lines of the server's threads
//   never mix, and a reader sees each event as it happens.
// * Any bytes, valid JSON. Method names and details may come from a peer:
//   quotes, backslashes and control characters are escaped and a byte that
//   is not UTF-8 is written as U+FFFD, so no byte a client sends can make
//   a line invalid JSON.
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "aa-server.h"

// ---- JSON log ----

// A line holds a 255-byte method name and a detail of at most
// DETAIL_MAX bytes even when every byte needs a 6-byte escape, so a line
// is never cut (a cut line would not be JSON).
#define DETAIL_MAX 1024

typedef struct jbuf {
	char s[8192];
	size_t n;
} jbuf;

static void
jb_raw(jbuf *b, const char *s, size_t len)
{
	size_t room = sizeof(b->s) - 1 - b->n;
	if (len > room) {
		len = room;
	}
	memcpy(b->s + b->n, s, len);
	b->n += len;
	b->s[b->n] = '\0';
}

static void
jb_str(jbuf *b, const char *s)
{
	jb_raw(b, s, strlen(s));
}

static void
jb_u64(jbuf *b, uint64_t v)
{
	char t[24];
	int n = snprintf(t, sizeof(t), "%llu", (unsigned long long)v);
	jb_raw(b, t, (size_t)n);
}

// utf8_len returns the length of the well-formed UTF-8 sequence at s,
// or 0 (ill-formed, truncated, overlong, a surrogate, above U+10FFFF).
static size_t
utf8_len(const unsigned char *s)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;
	if (s[0] < 0x80) {
		return 1;
	} else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		lo = s[0] == 0xe0 ? 0xa0 : 0x80;
		hi = s[0] == 0xed ? 0x9f : 0xbf;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		lo = s[0] == 0xf0 ? 0x90 : 0x80;
		hi = s[0] == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 0;
	}
	if (s[1] < lo || s[1] > hi) {
		return 0;
	}
	for (size_t i = 2; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			return 0;
		}
	}
	return n;
}

// jb_quoted appends at most max bytes of s as a JSON string: quotes,
// backslashes and control characters escaped, bytes that are not UTF-8
// written as U+FFFD, so that no byte a peer sent can make the line
// invalid JSON.
static void
jb_quoted_max(jbuf *b, const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t used = 0;
	jb_raw(b, "\"", 1);
	while (*p != '\0') {
		size_t k = utf8_len(p);
		char t[8];
		if (used + (k ? k : 1) > max) {
			break;
		}
		if (k == 0) {
			jb_str(b, "\\ufffd");
			k = 1;
		} else if (*p == '"' || *p == '\\') {
			t[0] = '\\';
			t[1] = (char)*p;
			jb_raw(b, t, 2);
		} else if (*p < 0x20 || *p == 0x7f) {
			int n = snprintf(t, sizeof(t), "\\u%04x", *p);
			jb_raw(b, t, (size_t)n);
		} else {
			jb_raw(b, (const char *)p, k);
		}
		p += k;
		used += k;
	}
	jb_raw(b, "\"", 1);
}

static void
jb_quoted(jbuf *b, const char *s)
{
	jb_quoted_max(b, s, DETAIL_MAX);
}

// log_line writes one JSON object per line, whole, and flushes it so that
// a reader of the file sees each event as it happens.
void
log_line_app(uint64_t op_id, uint64_t conn_id, const char *method,
             const char *event, uint64_t t_us, int error, int32_t app_code,
             const char *detail)
{
	jbuf b = {.n = 0};
	jb_str(&b, "{\"op\":");
	jb_u64(&b, op_id);
	jb_str(&b, ",\"client\":");
	jb_u64(&b, conn_id);
	jb_str(&b, ",\"method\":");
	jb_quoted(&b, method != NULL ? method : "");
	jb_str(&b, ",\"event\":");
	jb_quoted(&b, event);
	jb_str(&b, ",\"t_us\":");
	jb_u64(&b, t_us);
	if (error != 0) {
		jb_str(&b, ",\"error\":");
		jb_u64(&b, (uint64_t)error);
		jb_str(&b, ",\"error_text\":");
		jb_quoted(&b, aa_strerror(error));
	}
	if (error == AA_EAPP) {
		// The application's own code: its own field, never "error".
		char t[16];
		int n = snprintf(t, sizeof(t), "%d", (int)app_code);
		jb_str(&b, ",\"app_code\":");
		jb_raw(&b, t, (size_t)n);
	}
	if (detail != NULL && detail[0] != '\0') {
		jb_str(&b, ",\"detail\":");
		jb_quoted(&b, detail);
	}
	jb_str(&b, "}\n");
	flockfile(G.log);
	fputs(b.s, G.log);
	fflush(G.log);
	funlockfile(G.log);
}

void
log_line(uint64_t op_id, uint64_t conn_id, const char *method,
         const char *event, uint64_t t_us, int error, const char *detail)
{
	log_line_app(op_id, conn_id, method, event, t_us, error, 0, detail);
}

void
on_server_event(void *arg, const aa_server_log_rec *rec)
{
	(void)arg;
	log_line_app(rec->op_id, rec->conn_id, rec->method,
	             aa_server_event_name(rec->event), rec->t_us, rec->error,
	             rec->app_code, rec->detail);
}
