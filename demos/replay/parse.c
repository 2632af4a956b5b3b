// parse.c: the scenario language of aa-replay (docs/replay.md has the
// reference). Plain text, one step a line, `#` starts a comment. A par
// block lists units of named threads whose order exploration chooses:
//
//   par
//     user:  cancel a
//     layer: release client.before_deliver a ; wait handler a
//   end
//
// Every error names the file, the line and the column of the offending
// token; nothing half-parsed is kept.
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"

#define MAX_TOK 16

typedef struct tok {
	char s[RP_TEXT];
	int col;
} tok;

typedef struct perr {
	int col;
	char msg[RP_TEXT];
} perr;

static int
fail(perr *e, int col, const char *msg, const char *arg)
{
	e->col = col;
	snprintf(e->msg, sizeof(e->msg), "%s%s%s%s", msg, arg ? " '" : "",
	         arg ? arg : "", arg ? "'" : "");
	return -1;
}

// tokenize splits s[from, to) into words and "quoted strings".
static int
tokenize(const char *s, int from, int to, tok *t, int *n, perr *e)
{
	*n = 0;
	int i = from;
	while (i < to) {
		if (isspace((unsigned char)s[i])) {
			i++;
			continue;
		}
		if (*n == MAX_TOK) {
			return fail(e, i + 1, "too many words on one step",
			            NULL);
		}
		tok *k = &t[(*n)++];
		k->col = i + 1;
		size_t len = 0;
		if (s[i] == '"') {
			i++;
			while (i < to && s[i] != '"') {
				if (len + 1 < sizeof(k->s)) {
					k->s[len++] = s[i];
				}
				i++;
			}
			if (i >= to) {
				return fail(e, k->col, "unterminated string",
				            NULL);
			}
			i++;
		} else {
			while (i < to && !isspace((unsigned char)s[i])) {
				if (len + 1 < sizeof(k->s)) {
					k->s[len++] = s[i];
				}
				i++;
			}
		}
		k->s[len] = '\0';
	}
	return 0;
}

static const char *const checkpoints[] = {
    "client.before_submit", "client.before_deliver", "client.before_fail",
    "server.before_start", "server.before_reply"};
// Checkpoints that fire with a library lock held: a gate there would hold
// the lock and stall every thread that needs it, so the tool refuses them.
static const char *const locked_checkpoints[] = {
    "op.cancel_wait", "op.deliver_handoff", "cancel.disconnect_wait",
    "timer.cancel_wait"};

static int
checkpoint_arg(const tok *t, rp_step *st, perr *e)
{
	for (size_t i = 0; i < sizeof(locked_checkpoints) / sizeof(char *);
	     i++) {
		if (strcmp(t->s, locked_checkpoints[i]) == 0) {
			return fail(
			    e, t->col,
			    "cannot hold a checkpoint that fires with a "
			    "library lock held (a thread held there would "
			    "hold the lock)",
			    t->s);
		}
	}
	for (size_t i = 0; i < sizeof(checkpoints) / sizeof(char *); i++) {
		if (strcmp(t->s, checkpoints[i]) == 0) {
			snprintf(st->what, sizeof(st->what), "%s", t->s);
			return 0;
		}
	}
	return fail(e, t->col, "unknown checkpoint", t->s);
}

static int
name_arg(const tok *t, char *dst, perr *e)
{
	size_t n = strlen(t->s);
	if (n == 0 || n >= RP_NAME) {
		return fail(e, t->col, "bad name", t->s);
	}
	for (size_t i = 0; i < n; i++) {
		char c = t->s[i];
		if (!isalnum((unsigned char)c) && c != '_' && c != '-') {
			return fail(e, t->col,
			            "a name is letters, digits, _ and -",
			            t->s);
		}
	}
	memcpy(dst, t->s, n + 1);
	return 0;
}

static int
int_arg(const tok *t, int *v, perr *e)
{
	char *end;
	long x = strtol(t->s, &end, 10);
	if (t->s[0] == '\0' || *end != '\0' || x < 0 || x > 1000000000) {
		return fail(e, t->col, "expected a number", t->s);
	}
	*v = (int)x;
	return 0;
}

static int
ctype_arg(const tok *t, aa_cancel_type *ct, perr *e)
{
	if (strcmp(t->s, "terminal") == 0) {
		*ct = AA_CANCEL_TERMINAL;
	} else if (strcmp(t->s, "partial") == 0) {
		*ct = AA_CANCEL_PARTIAL;
	} else if (strcmp(t->s, "total") == 0) {
		*ct = AA_CANCEL_TOTAL;
	} else {
		return fail(e, t->col,
		            "cancel type is terminal, partial or total, not",
		            t->s);
	}
	return 0;
}

static int
argc_is(const tok *t, int n, int lo, int hi, perr *e)
{
	if (n < lo) {
		return fail(e, t[n - 1].col + (int)strlen(t[n - 1].s),
		            "missing argument after", t[n - 1].s);
	}
	if (n > hi) {
		return fail(e, t[hi].col, "unexpected", t[hi].s);
	}
	return 0;
}

static const struct {
	const char *word;
	rp_expect e;
} expects[] = {
    {"status", E_STATUS},       {"error", E_ERROR},
    {"timeline", E_TIMELINE},   {"settlement", E_SETTLEMENT},
    {"handler", E_HANDLER},     {"result", E_RESULT},
    {"progress", E_PROGRESS},   {"cancel-rv", E_CANCEL_RV},
    {"inside-rv", E_INSIDE_RV}, {"server-log", E_SERVER_LOG},
    {"app-code", E_APP_CODE},
};

// parse_expect: "expect OP WHAT VALUE", "expect wire KIND N" or
// "expect client.FIELD N" / "expect server.FIELD N" (counters; unknown
// names fail when the step runs, listing the names).
static int
parse_expect(const tok *t, int n, rp_step *st, perr *e)
{
	st->kind = K_EXPECT;
	if (n >= 2 && (strncmp(t[1].s, "client.", 7) == 0 ||
	               strncmp(t[1].s, "server.", 7) == 0)) {
		st->expect = E_COUNTER;
		if (argc_is(t, n, 3, 3, e) != 0) {
			return -1;
		}
		snprintf(st->what, sizeof(st->what), "%s", t[1].s);
		snprintf(st->data, sizeof(st->data), "%s", t[2].s);
		return int_arg(&t[2], &st->num, e);
	}
	if (argc_is(t, n, 4, 4, e) != 0) {
		return -1;
	}
	snprintf(st->data, sizeof(st->data), "%s", t[3].s);
	if (strcmp(t[1].s, "wire") == 0) {
		st->expect = E_WIRE;
		snprintf(st->what, sizeof(st->what), "%s", t[2].s);
		return int_arg(&t[3], &st->num, e);
	}
	if (name_arg(&t[1], st->op, e) != 0) {
		return -1;
	}
	for (size_t i = 0; i < sizeof(expects) / sizeof(expects[0]); i++) {
		if (strcmp(t[2].s, expects[i].word) == 0) {
			st->expect = expects[i].e;
			snprintf(st->what, sizeof(st->what), "%s", t[2].s);
			return 0;
		}
	}
	return fail(e, t[2].col, "unknown expectation", t[2].s);
}

static int
parse_wait(const tok *t, int n, rp_step *st, perr *e)
{
	st->kind = K_WAIT;
	if (n < 2) {
		return argc_is(t, n, 2, 2, e);
	}
	const char *w = t[1].s;
	if (strcmp(w, "idle") == 0) {
		st->wait = W_IDLE;
		return argc_is(t, n, 2, 2, e);
	}
	if (strcmp(w, "reached") == 0) {
		st->wait = W_REACHED;
		if (argc_is(t, n, 3, 4, e) != 0 ||
		    checkpoint_arg(&t[2], st, e) != 0) {
			return -1;
		}
		return n == 4 ? name_arg(&t[3], st->op, e) : 0;
	}
	if (strcmp(w, "server") == 0) {
		st->wait = W_SERVER;
		if (argc_is(t, n, 4, 4, e) != 0) {
			return -1;
		}
		snprintf(st->what, sizeof(st->what), "%s", t[2].s);
		return name_arg(&t[3], st->op, e);
	}
	if (strcmp(w, "handler") == 0) {
		st->wait = W_HANDLER;
	} else if (strcmp(w, "settled") == 0) {
		st->wait = W_SETTLED;
	} else if (strcmp(w, "progress") == 0) {
		st->wait = W_PROGRESS;
	} else {
		return fail(e, t[1].col,
		            "wait for reached, handler, settled, progress, "
		            "server or idle, not",
		            w);
	}
	if (argc_is(t, n, 3, 3, e) != 0) {
		return -1;
	}
	return name_arg(&t[2], st->op, e);
}

static int
parse_call(const tok *t, int n, rp_step *st, perr *e)
{
	st->kind = K_CALL;
	if (argc_is(t, n, 3, 7, e) != 0 || name_arg(&t[1], st->op, e) != 0 ||
	    name_arg(&t[2], st->what, e) != 0) {
		return -1;
	}
	bool have_payload = false;
	for (int i = 3; i < n; i++) {
		const char *a = t[i].s;
		if (strncmp(a, "deadline=", 9) == 0) {
			tok v = t[i];
			memmove(v.s, a + 9, strlen(a + 9) + 1);
			v.col += 9;
			if (int_arg(&v, &st->num, e) != 0) {
				return -1;
			}
		} else if (strncmp(a, "parent=", 7) == 0) {
			tok v = t[i];
			memmove(v.s, a + 7, strlen(a + 7) + 1);
			v.col += 7;
			if (name_arg(&v, st->parent, e) != 0) {
				return -1;
			}
		} else if (strcmp(a, "cancel-in-handler") == 0) {
			st->cancel_in_handler = true;
		} else if (!have_payload) {
			snprintf(st->data, sizeof(st->data), "%s", a);
			have_payload = true;
		} else {
			return fail(e, t[i].col, "unexpected", a);
		}
	}
	return 0;
}

static int
parse_server(const tok *t, int n, rp_step *st, perr *e)
{
	if (n < 2) {
		return argc_is(t, n, 2, 2, e);
	}
	const char *w = t[1].s;
	if (strcmp(w, "stop") == 0 || strcmp(w, "kill") == 0) {
		st->kind = w[0] == 's' ? K_SRV_STOP : K_SRV_KILL;
		return argc_is(t, n, 2, 2, e);
	}
	if (strcmp(w, "complete") == 0) {
		st->kind = K_SRV_COMPLETE;
		if (argc_is(t, n, 3, 4, e) != 0) {
			return -1;
		}
		if (n == 4) {
			snprintf(st->data, sizeof(st->data), "%s", t[3].s);
		}
	} else if (strcmp(w, "fail") == 0) {
		st->kind = K_SRV_FAIL;
		// An application's code: any int32 (its own error space).
		char *end;
		long long code = strtoll(t[3].s, &end, 10);
		if (argc_is(t, n, 4, 5, e) != 0) {
			return -1;
		}
		if (t[3].s[0] == '\0' || *end != '\0' || code < INT32_MIN ||
		    code > INT32_MAX) {
			return fail(e, t[3].col,
			            "an application code is an int32, not",
			            t[3].s);
		}
		st->num = (int)code;
		if (n == 5) {
			snprintf(st->data, sizeof(st->data), "%s", t[4].s);
		}
	} else if (strcmp(w, "progress") == 0) {
		st->kind = K_SRV_PROGRESS;
		if (argc_is(t, n, 4, 4, e) != 0) {
			return -1;
		}
		snprintf(st->data, sizeof(st->data), "%s", t[3].s);
	} else if (strcmp(w, "ignore-cancel") == 0) {
		st->kind = K_SRV_IGNORE;
		if (argc_is(t, n, 3, 3, e) != 0) {
			return -1;
		}
	} else {
		return fail(e, t[1].col,
		            "server does complete, fail, progress, "
		            "ignore-cancel, stop or kill, not",
		            w);
	}
	return name_arg(&t[2], st->op, e);
}

// parse_step fills st from the words of one step.
static int
parse_step(const tok *t, int n, rp_step *st, perr *e)
{
	const char *w = t[0].s;
	st->ctype = AA_CANCEL_TERMINAL;
	if (strcmp(w, "hold") == 0 || strcmp(w, "release") == 0) {
		st->kind = w[0] == 'h' ? K_HOLD : K_RELEASE;
		if (argc_is(t, n, 2, 3, e) != 0 ||
		    checkpoint_arg(&t[1], st, e) != 0) {
			return -1;
		}
		return n == 3 ? name_arg(&t[2], st->op, e) : 0;
	}
	if (strcmp(w, "wait") == 0) {
		return parse_wait(t, n, st, e);
	}
	if (strcmp(w, "call") == 0) {
		return parse_call(t, n, st, e);
	}
	if (strcmp(w, "cancel") == 0) {
		st->kind = K_CANCEL;
		if (argc_is(t, n, 2, 3, e) != 0 ||
		    name_arg(&t[1], st->op, e) != 0) {
			return -1;
		}
		return n == 3 ? ctype_arg(&t[2], &st->ctype, e) : 0;
	}
	if (strcmp(w, "cancel-all") == 0) {
		st->kind = K_CANCEL_ALL;
		if (argc_is(t, n, 1, 2, e) != 0) {
			return -1;
		}
		return n == 2 ? ctype_arg(&t[1], &st->ctype, e) : 0;
	}
	if (strcmp(w, "cork") == 0 || strcmp(w, "uncork") == 0) {
		st->kind = w[0] == 'c' ? K_CORK : K_UNCORK;
		return argc_is(t, n, 1, 1, e);
	}
	if (strcmp(w, "signal") == 0 || strcmp(w, "emit") == 0) {
		st->kind = w[0] == 's' ? K_SIGNAL : K_EMIT;
		if (argc_is(t, n, 2, st->kind == K_EMIT ? 3 : 2, e) != 0 ||
		    name_arg(&t[1], st->op, e) != 0) {
			return -1;
		}
		return n == 3 ? ctype_arg(&t[2], &st->ctype, e) : 0;
	}
	if (strcmp(w, "server") == 0) {
		return parse_server(t, n, st, e);
	}
	if (strcmp(w, "expect") == 0) {
		return parse_expect(t, n, st, e);
	}
	return fail(e, t[0].col, "unknown step", w);
}

int
rp_grow(void **arr, int *cap, int n, size_t elem)
{
	if (n < *cap) {
		return 0;
	}
	int nc = *cap ? *cap * 2 : 32;
	void *na = realloc(*arr, (size_t)nc * elem);
	if (na == NULL) {
		return -1;
	}
	*arr = na;
	*cap = nc;
	return 0;
}

static int
add_step(rp_scenario *sc, int *cap, const rp_step *st)
{
	if (rp_grow((void **)&sc->steps, cap, sc->n_steps, sizeof(*st)) != 0) {
		return -1;
	}
	sc->steps[sc->n_steps++] = *st;
	return 0;
}

static int
add_unit(rp_scenario *sc, int *cap, const rp_unit *u)
{
	if (rp_grow((void **)&sc->units, cap, sc->n_units, sizeof(*u)) != 0) {
		return -1;
	}
	sc->units[sc->n_units++] = *u;
	return 0;
}

// parse_steps parses s[from, to) as steps separated by ';' into one unit.
static int
parse_steps(rp_scenario *sc, int *scap, const char *s, int from, int to,
            int lineno, perr *e)
{
	int start = from;
	for (int i = from; i <= to; i++) {
		if (i < to && s[i] != ';') {
			continue;
		}
		tok t[MAX_TOK];
		int n;
		if (tokenize(s, start, i, t, &n, e) != 0) {
			return -1;
		}
		if (n == 0) {
			return fail(e, start + 1, "empty step", NULL);
		}
		rp_step st;
		memset(&st, 0, sizeof(st));
		st.line = lineno;
		st.col = t[0].col;
		int a = start, b = i;
		while (a < b && isspace((unsigned char)s[a])) {
			a++;
		}
		while (b > a && isspace((unsigned char)s[b - 1])) {
			b--;
		}
		snprintf(st.text, sizeof(st.text), "%.*s", b - a, s + a);
		if (parse_step(t, n, &st, e) != 0 || add_step(sc, scap, &st)) {
			return -1;
		}
		start = i + 1;
	}
	return 0;
}

static int
parse_line(rp_scenario *sc, int *scap, int *ucap, const char *s, int lineno,
           bool *in_par, char (*threads)[RP_NAME], int *n_threads, perr *e)
{
	int len = (int)strlen(s);
	const char *hash = strchr(s, '#');
	// A '#' inside a quoted string is text, not a comment.
	int q = 0;
	for (int i = 0; i < len; i++) {
		if (s[i] == '"') {
			q ^= 1;
		} else if (s[i] == '#' && !q) {
			hash = s + i;
			break;
		}
		hash = NULL;
	}
	int end = hash ? (int)(hash - s) : len;
	tok t[MAX_TOK];
	int n;
	// Directives and block words are single lines without ';'.
	if (tokenize(s, 0, end, t, &n, e) != 0) {
		return -1;
	}
	if (n == 0) {
		return 0;
	}
	if (strcmp(t[0].s, "par") == 0) {
		if (*in_par) {
			return fail(e, t[0].col, "par blocks do not nest",
			            NULL);
		}
		*in_par = true;
		*n_threads = 0;
		return argc_is(t, n, 1, 1, e);
	}
	if (strcmp(t[0].s, "end") == 0) {
		if (!*in_par) {
			return fail(e, t[0].col, "end without par", NULL);
		}
		*in_par = false;
		sc->n_blocks++;
		return argc_is(t, n, 1, 1, e);
	}
	if (strcmp(t[0].s, "transport") == 0) {
		if (argc_is(t, n, 2, 2, e) != 0) {
			return -1;
		}
		if (strcmp(t[1].s, "inproc") != 0 &&
		    strcmp(t[1].s, "ipc") != 0) {
			return fail(e, t[1].col,
			            "transport is inproc or ipc, not", t[1].s);
		}
		snprintf(sc->transport, sizeof(sc->transport), "%s", t[1].s);
		return 0;
	}
	if (strcmp(t[0].s, "heartbeat") == 0) {
		if (argc_is(t, n, 2, 2, e) != 0 ||
		    int_arg(&t[1], &sc->heartbeat_ms, e) != 0) {
			return -1;
		}
		if (sc->heartbeat_ms == 0) {
			return fail(e, t[1].col, "a heartbeat interval is > 0",
			            t[1].s);
		}
		return 0;
	}
	if (strcmp(t[0].s, "timeout") == 0) {
		if (argc_is(t, n, 2, 2, e) != 0 ||
		    int_arg(&t[1], &sc->timeout_ms, e) != 0) {
			return -1;
		}
		if (sc->timeout_ms == 0) {
			return fail(e, t[1].col, "a timeout is > 0", t[1].s);
		}
		return 0;
	}
	rp_unit u = {.first = sc->n_steps, .block = -1, .thread = -1};
	int from = 0;
	if (*in_par) {
		const char *colon = memchr(s, ':', (size_t)end);
		if (colon == NULL) {
			return fail(e, t[0].col,
			            "a par line is THREAD: step [; step]...",
			            NULL);
		}
		tok name = t[0];
		int nlen = (int)(colon - s) - (t[0].col - 1);
		snprintf(name.s, sizeof(name.s), "%.*s", nlen,
		         s + t[0].col - 1);
		if (name_arg(&name, u.tname, e) != 0) {
			return -1;
		}
		u.block = sc->n_blocks;
		for (u.thread = 0; u.thread < *n_threads; u.thread++) {
			if (strcmp(threads[u.thread], u.tname) == 0) {
				break;
			}
		}
		if (u.thread == *n_threads) {
			if (*n_threads == 8) {
				return fail(e, name.col,
				            "at most 8 threads in a par block",
				            NULL);
			}
			memcpy(threads[(*n_threads)++], u.tname, RP_NAME);
		}
		from = (int)(colon - s) + 1;
	}
	if (parse_steps(sc, scap, s, from, end, lineno, e) != 0) {
		return -1;
	}
	// Outside a par block each step is its own unit.
	for (int i = u.first; i < sc->n_steps; i++) {
		rp_unit one = u;
		if (!*in_par) {
			one.first = i;
			one.n = 1;
		} else {
			if (i != u.first) {
				break;
			}
			one.n = sc->n_steps - u.first;
		}
		if (sc->steps[i].kind == K_EXPECT && *in_par) {
			return fail(e, sc->steps[i].col,
			            "expectations go after the par block, not "
			            "in it",
			            NULL);
		}
		if (add_unit(sc, ucap, &one) != 0) {
			return -1;
		}
	}
	return 0;
}

int
rp_parse(rp_scenario *sc, const char *file, FILE *err)
{
	memset(sc, 0, sizeof(*sc));
	snprintf(sc->file, sizeof(sc->file), "%s", file);
	strcpy(sc->transport, "inproc");
	sc->timeout_ms = 5000;
	FILE *f = fopen(file, "r");
	if (f == NULL) {
		fprintf(err, "%s: cannot open the scenario\n", file);
		return RP_BAD;
	}
	char line[1024];
	int lineno = 0, scap = 0, ucap = 0, n_threads = 0;
	char threads[8][RP_NAME];
	bool in_par = false;
	perr e = {0};
	int rv = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		size_t len = strlen(line);
		if (len > 0 && line[len - 1] == '\n') {
			line[--len] = '\0';
		} else if (!feof(f)) {
			e.col = (int)len;
			snprintf(e.msg, sizeof(e.msg), "line too long");
			rv = -1;
			break;
		}
		if ((rv = parse_line(sc, &scap, &ucap, line, lineno, &in_par,
		                     threads, &n_threads, &e)) != 0) {
			break;
		}
	}
	fclose(f);
	if (rv == 0 && in_par) {
		snprintf(e.msg, sizeof(e.msg), "par block without end");
		e.col = 1;
		lineno++;
		rv = -1;
	}
	if (rv == 0 && sc->n_units == 0) {
		snprintf(e.msg, sizeof(e.msg), "no steps");
		e.col = 1;
		rv = -1;
	}
	if (rv != 0) {
		fprintf(err, "%s:%d:%d: %s\n", file, lineno, e.col, e.msg);
		rp_scenario_free(sc);
		return RP_BAD;
	}
	return 0;
}

void
rp_scenario_free(rp_scenario *sc)
{
	free(sc->steps);
	free(sc->units);
	sc->steps = NULL;
	sc->units = NULL;
	sc->n_steps = sc->n_units = 0;
}
