// table.c: a run printed as the four-column table of the seed article
// (Client | Client layer | Server layer | Server), one row per observed
// event in the order it happened; as Markdown, a Mermaid sequence diagram
// or JSON; then the expectations and the invariants, pass or fail.
#include <string.h>

#include "replay.h"

static const char *const col_names[N_COLS] = {"Client", "Client layer",
                                              "Server layer", "Server"};
static const char *const col_keys[N_COLS] = {"client", "client_layer",
                                             "server_layer", "server"};

static const char *
base_name(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

static const char *
status_word(int status)
{
	return status == RP_PASS   ? "PASS"
	       : status == RP_FAIL ? "FAIL"
	                           : "ERROR";
}

// put writes s with the characters that fmt cannot hold replaced.
static void
put(FILE *f, const char *s, rp_format fmt)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (fmt == F_MARKDOWN && c == '|') {
			fputs("\\|", f);
		} else if (fmt == F_MERMAID && (c == ';' || c == '#')) {
			fputc(',', f);
		} else if (fmt == F_JSON && (c == '"' || c == '\\')) {
			fputc('\\', f);
			fputc(c, f);
		} else if (fmt == F_JSON && c < 0x20) {
			fprintf(f, "\\u%04x", c);
		} else {
			fputc(c, f);
		}
	}
}

void
rp_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	put(f, s, F_JSON);
	fputc('"', f);
}

static int
failed_invariants(const rp_result *res, int *total)
{
	int bad = 0;
	*total = 0;
	for (int i = 0; i < res->n_checks; i++) {
		if (res->checks[i].line == 0) {
			(*total)++;
			bad += !res->checks[i].pass;
		}
	}
	return bad;
}

static void
print_markdown(FILE *f, const rp_scenario *sc, const rp_result *res,
               int status)
{
	fprintf(f, "### %s (%s)\n\n", base_name(sc->file), sc->transport);
	fprintf(f, "| # | Client | Client layer | Server layer | Server |\n");
	fprintf(f, "| --- | --- | --- | --- | --- |\n");
	for (int i = 0; i < res->n_events; i++) {
		fprintf(f, "| %d |", i + 1);
		for (int c = 0; c < N_COLS; c++) {
			fputc(' ', f);
			if (res->events[i].col == c) {
				put(f, res->events[i].text, F_MARKDOWN);
				fputc(' ', f);
			}
			fputc('|', f);
		}
		fputc('\n', f);
	}
	bool any = false;
	for (int i = 0; i < res->n_checks; i++) {
		const rp_check *c = &res->checks[i];
		if (c->line == 0) {
			continue;
		}
		if (!any) {
			fprintf(f, "\n| line | expectation | observed | |\n");
			fprintf(f, "| --- | --- | --- | --- |\n");
			any = true;
		}
		fprintf(f, "| %d | ", c->line);
		put(f, c->what, F_MARKDOWN);
		fputs(" | ", f);
		put(f, c->observed, F_MARKDOWN);
		fprintf(f, " | %s |\n", c->pass ? "pass" : "**FAIL**");
	}
	int total, bad = failed_invariants(res, &total);
	fprintf(f, "\nInvariants (DESIGN §10): %d of %d hold.\n", total - bad,
	        total);
	for (int i = 0; i < res->n_checks; i++) {
		const rp_check *c = &res->checks[i];
		if (c->line == 0 && !c->pass) {
			fprintf(f, "- **violated**: %s (observed: %s)\n",
			        c->what, c->observed);
		}
	}
	if (res->setup_error) {
		fprintf(f, "\nError: %s\n", res->error);
	}
	fprintf(f, "\nResult: %s\n\n", status_word(status));
}

static void
print_mermaid(FILE *f, const rp_scenario *sc, const rp_result *res, int status)
{
	static const char *const ids[N_COLS] = {"C", "CL", "SL", "S"};
	fprintf(f, "%%%% %s (%s): %s\n", base_name(sc->file), sc->transport,
	        status_word(status));
	fprintf(f, "sequenceDiagram\n");
	for (int c = 0; c < N_COLS; c++) {
		fprintf(f, "    participant %s as %s\n", ids[c], col_names[c]);
	}
	for (int i = 0; i < res->n_events; i++) {
		fprintf(f, "    Note over %s: ", ids[res->events[i].col]);
		put(f, res->events[i].text, F_MERMAID);
		fputc('\n', f);
	}
	for (int i = 0; i < res->n_checks; i++) {
		const rp_check *c = &res->checks[i];
		if (!c->pass) {
			fprintf(f, "%%%% FAIL: %s (observed %s)\n", c->what,
			        c->observed);
		}
	}
	if (res->setup_error) {
		fprintf(f, "%%%% ERROR: %s\n", res->error);
	}
}

static void
print_json(FILE *f, const rp_scenario *sc, const rp_result *res, int status)
{
	fputs("{\"scenario\":\"", f);
	put(f, sc->file, F_JSON);
	fprintf(f, "\",\"transport\":\"%s\",\"result\":\"%s\",\"events\":[",
	        sc->transport,
	        status == RP_PASS   ? "pass"
	        : status == RP_FAIL ? "fail"
	                            : "error");
	for (int i = 0; i < res->n_events; i++) {
		fprintf(f, "%s{\"seq\":%d,\"column\":\"%s\",\"text\":\"",
		        i ? "," : "", i + 1, col_keys[res->events[i].col]);
		put(f, res->events[i].text, F_JSON);
		fputs("\"}", f);
	}
	fputs("],\"checks\":[", f);
	for (int i = 0; i < res->n_checks; i++) {
		const rp_check *c = &res->checks[i];
		fprintf(f, "%s{\"kind\":\"%s\",\"line\":%d,\"what\":\"",
		        i ? "," : "", c->line ? "expect" : "invariant",
		        c->line);
		put(f, c->what, F_JSON);
		fputs("\",\"observed\":\"", f);
		put(f, c->observed, F_JSON);
		fprintf(f, "\",\"pass\":%s}", c->pass ? "true" : "false");
	}
	fputs("],\"error\":", f);
	if (res->setup_error) {
		fputc('"', f);
		put(f, res->error, F_JSON);
		fputc('"', f);
	} else {
		fputs("null", f);
	}
	fputs("}\n", f);
}

void
rp_print(FILE *f, const rp_scenario *sc, const rp_result *res, rp_format fmt,
         int status)
{
	switch (fmt) {
	case F_MERMAID:
		print_mermaid(f, sc, res, status);
		break;
	case F_JSON:
		print_json(f, sc, res, status);
		break;
	default:
		print_markdown(f, sc, res, status);
		break;
	}
}
