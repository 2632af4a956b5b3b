// aa-client-report.c: how aa-client prints what a call ended as: one
// readable line, or with --json one JSON object a line (docs/demo.md, "The
// JSON line": its fields and their meanings are a contract; add to them,
// never change one).
//
// Design notes.
//
// * Text. A line is built whole in a growing buffer (text) and written
//   with one fputs under out_mtx, so that the lines of concurrent calls
//   (--concurrency) never interleave. A buffer that cannot grow keeps what
//   it has: a line may be cut, never overrun.
// * JSON strings. Results and method names are bytes from elsewhere:
//   t_quoted escapes quotes, backslashes and control characters and writes
//   a byte that is not UTF-8 as \u00XX, so that any bytes make valid JSON.
// * Two error spaces. An application failure (AA_EAPP) is printed with
//   the application's own code ("application error 7") and the JSON field
//   app_code; its code is never given to aa_strerror, which explains
//   library codes only.
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>

#include "aa-client.h"

static pthread_mutex_t out_mtx = PTHREAD_MUTEX_INITIALIZER;

// ---- JSON text ----

typedef struct text {
	char *s;
	size_t n;
	size_t cap;
} text;

static void
t_raw(text *t, const char *s, size_t len)
{
	if (t->n + len + 1 > t->cap) {
		size_t cap = t->cap == 0 ? 256 : t->cap;
		while (cap < t->n + len + 1) {
			cap *= 2;
		}
		char *p = realloc(t->s, cap);
		if (p == NULL) {
			return; // out of memory: the line is cut short
		}
		t->s = p;
		t->cap = cap;
	}
	memcpy(t->s + t->n, s, len);
	t->n += len;
	t->s[t->n] = '\0';
}

static void
t_str(text *t, const char *s)
{
	t_raw(t, s, strlen(s));
}

static void
t_fmt(text *t, const char *fmt, unsigned long long v)
{
	char b[32];
	int n = snprintf(b, sizeof(b), fmt, v);
	t_raw(t, b, (size_t)n);
}

// utf8_len returns the length of the valid UTF-8 sequence at p (at most
// len bytes), or 0 when the bytes there are not one.
static size_t
utf8_len(const unsigned char *p, size_t len)
{
	size_t n;
	unsigned min;
	unsigned cp;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
		min = 0x80;
		cp = p[0] & 0x1fu;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		min = 0x800;
		cp = p[0] & 0x0fu;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		min = 0x10000;
		cp = p[0] & 0x07u;
	} else {
		return 0;
	}
	if (n > len) {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0u) != 0x80u) {
			return 0;
		}
		cp = (cp << 6) | (p[i] & 0x3fu);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
		return 0;
	}
	return n;
}

// t_quoted appends data as a JSON string: quotes, backslashes and control
// characters escaped, valid UTF-8 kept, any other byte as \u00XX.
static void
t_quoted(text *t, const void *data, size_t len)
{
	const unsigned char *p = data;
	t_raw(t, "\"", 1);
	for (size_t i = 0; i < len;) {
		unsigned char ch = p[i];
		size_t u;
		if (ch == '"' || ch == '\\') {
			char e[2] = {'\\', (char)ch};
			t_raw(t, e, 2);
			i++;
		} else if (ch >= 0x20 && ch < 0x7f) {
			t_raw(t, (const char *)&p[i], 1);
			i++;
		} else if (ch >= 0x80 && (u = utf8_len(p + i, len - i)) > 0) {
			t_raw(t, (const char *)&p[i], u);
			i += u;
		} else {
			t_fmt(t, "\\u%04llx", ch);
			i++;
		}
	}
	t_raw(t, "\"", 1);
}

static void
error_text(text *t, const outcome *oc)
{
	if (oc->error == AA_EAPP) {
		// The application's code, never read as a library code.
		char b[48];
		snprintf(b, sizeof(b), "application error %d",
		         (int)oc->app_code);
		t_str(t, b);
		if (oc->error_msg != NULL && oc->error_msg[0] != '\0') {
			t_str(t, ": ");
			t_str(t, oc->error_msg);
		}
		return;
	}
	t_str(t, aa_strerror(oc->error));
	if (oc->error_msg != NULL && oc->error_msg[0] != '\0' &&
	    strcmp(oc->error_msg, aa_strerror(oc->error)) != 0) {
		t_str(t, ": ");
		t_str(t, oc->error_msg);
	}
}

static void
t_duration(text *t, uint64_t ns)
{
	char b[32];
	if (ns < 10000u) {
		snprintf(b, sizeof(b), "%.1f us", (double)ns / 1000.0);
	} else if (ns < 10000000u) {
		snprintf(b, sizeof(b), "%llu us",
		         (unsigned long long)(ns / 1000u));
	} else {
		snprintf(b, sizeof(b), "%llu ms",
		         (unsigned long long)(ns / 1000000u));
	}
	t_str(t, b);
}

static const char *
timeline_words(aa_timeline tl)
{
	switch (tl) {
	case AA_TIMELINE_PRE_SUBMIT:
		return "pre-submit: nothing was sent";
	case AA_TIMELINE_IN_FLIGHT:
		return "in flight";
	case AA_TIMELINE_ALREADY_COMPLETE:
		return "already complete: the result was dropped";
	case AA_TIMELINE_NONE:
		break;
	}
	return "not cancelled";
}

void
report(const outcome *oc)
{
	text t = {0};
	if (O.json) {
		t_fmt(&t, "{\"op\":%llu", oc->op_id);
		t_fmt(&t, ",\"client\":%llu", conn_id);
		t_str(&t, ",\"method\":");
		t_quoted(&t, O.method, strlen(O.method));
		t_str(&t, ",\"status\":\"");
		t_str(&t, oc->status);
		t_str(&t, "\",\"cancel\":\"");
		t_str(&t, aa_timeline_name(oc->timeline));
		t_str(&t, "\",\"server_outcome\":\"");
		t_str(&t, aa_settlement_name(oc->settlement));
		t_str(&t, "\",\"result\":");
		t_quoted(&t, oc->result, oc->result_len);
		t_str(&t, ",\"error\":");
		if (oc->error != 0) {
			text e = {0};
			error_text(&e, oc);
			t_quoted(&t, e.s, e.n);
			free(e.s);
		} else {
			t_str(&t, "\"\"");
		}
		t_fmt(&t, ",\"error_code\":%llu", (unsigned)oc->error);
		if (oc->error == AA_EAPP) {
			char b[32];
			snprintf(b, sizeof(b), ",\"app_code\":%d",
			         (int)oc->app_code);
			t_str(&t, b);
		}
		if (oc->cancel_called) {
			char b[40];
			snprintf(b, sizeof(b), ",\"cancel_us\":%.3f",
			         (double)oc->cancel_ns / 1000.0);
			t_str(&t, b);
		} else {
			t_str(&t, ",\"cancel_us\":0");
		}
		t_fmt(&t, ",\"elapsed_us\":%llu}\n", oc->elapsed_ns / 1000u);
	} else {
		t_fmt(&t, "op %llu: ", oc->op_id);
		t_str(&t, oc->status);
		if (strcmp(oc->status, "completed") == 0) {
			t_str(&t, " after ");
			t_duration(&t, oc->elapsed_ns);
			t_str(&t, ": ");
			t_quoted(&t, oc->result, oc->result_len);
		} else if (strcmp(oc->status, "canceled") == 0) {
			t_str(&t, " (");
			t_str(&t, timeline_words(oc->timeline));
			t_str(&t, ")");
			if (oc->cancel_called) {
				t_str(&t, " in ");
				t_duration(&t, oc->cancel_ns);
			}
		} else if (oc->error == AA_EAPP) {
			t_str(&t, ": ");
			error_text(&t, oc);
			t_str(&t, " after ");
			t_duration(&t, oc->elapsed_ns);
		} else {
			t_fmt(&t, " %llu (", (unsigned)oc->error);
			error_text(&t, oc);
			t_str(&t, ") after ");
			t_duration(&t, oc->elapsed_ns);
		}
		t_str(&t, "; server: ");
		t_str(&t, aa_settlement_name(oc->settlement));
		if (oc->settlement == AA_SETTLE_PENDING) {
			t_str(&t, " (not known yet)");
		}
		t_str(&t, "\n");
	}
	pthread_mutex_lock(&out_mtx);
	if (t.s != NULL) {
		fputs(t.s, stdout);
	}
	fflush(stdout);
	pthread_mutex_unlock(&out_mtx);
	free(t.s);
}

// report_call_error reports a call that made no op (aa_client_call or
// aa_service_call failed); why (may be NULL) comes before "the call was
// refused locally".
void
report_call_error(int err, const char *why)
{
	char msg[256];
	snprintf(msg, sizeof(msg), "%s%sthe call was refused locally",
	         why != NULL ? why : "", why != NULL ? ": " : "");
	outcome oc = {.status = "error",
	              .settlement = AA_SETTLE_NEVER_STARTED,
	              .error = err,
	              .error_msg = msg};
	report(&oc);
}
