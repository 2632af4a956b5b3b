// aa-replay: runs race scenarios against the real client and server
// layers, deterministically, and explores their interleavings.
// docs/replay.md is the manual.
#include <stdlib.h>
#include <string.h>

#include "run.h"

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: aa-replay [options] SCENARIO...\n"
	        "  --transport inproc|ipc  override the scenario's transport\n"
	        "  --mermaid | --json      output format (default Markdown)\n"
	        "  --explore N             run N interleavings of the par "
	        "blocks\n"
	        "  --seed S                exploration seed (default 1)\n"
	        "  --strategy random|pct   how interleavings are chosen "
	        "(default pct)\n"
	        "  --depth D               PCT bug depth (default 2)\n"
	        "  --out FILE              where a failing interleaving is "
	        "written\n"
	        "  --no-shrink             write the failing interleaving "
	        "as found\n"
	        "exit status: 0 all passed, 1 an expectation or invariant "
	        "failed, 2 a bad scenario or setup error\n");
}

static bool
num_arg(const char *s, long long max, long long *v)
{
	char *end;
	long long x = strtoll(s, &end, 10);
	if (s[0] == '\0' || *end != '\0' || x < 0 || x > max) {
		return false;
	}
	*v = x;
	return true;
}

int
main(int argc, char **argv)
{
	rp_explore_opts eo = {
	    .seed = 1, .strategy = ST_PCT, .depth = 2, .shrink = true};
	const char *transport = NULL;
	int first = argc;
	// The server's process of an ipc run (remote.c), started by the tool
	// itself.
	if (argc == 5 && strcmp(argv[1], "--serve") == 0) {
		return rp_serve(argv[2], strcmp(argv[3], "pool") == 0,
		                atoi(argv[4]));
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		long long x;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--mermaid") == 0) {
			eo.fmt = F_MERMAID;
		} else if (strcmp(a, "--json") == 0) {
			eo.fmt = F_JSON;
		} else if (strcmp(a, "--no-shrink") == 0) {
			eo.shrink = false;
		} else if (strcmp(a, "--transport") == 0 && v != NULL &&
		           (strcmp(v, "inproc") == 0 ||
		            strcmp(v, "ipc") == 0)) {
			transport = v;
			i++;
		} else if (strcmp(a, "--explore") == 0 && v != NULL &&
		           num_arg(v, 100000000, &x) && x > 0) {
			eo.runs = (long)x;
			i++;
		} else if (strcmp(a, "--seed") == 0 && v != NULL &&
		           num_arg(v, INT64_MAX, &x)) {
			eo.seed = (uint64_t)x;
			i++;
		} else if (strcmp(a, "--depth") == 0 && v != NULL &&
		           num_arg(v, 16, &x) && x > 0) {
			eo.depth = (int)x;
			i++;
		} else if (strcmp(a, "--strategy") == 0 && v != NULL &&
		           (strcmp(v, "random") == 0 ||
		            strcmp(v, "pct") == 0)) {
			eo.strategy = v[0] == 'r' ? ST_RANDOM : ST_PCT;
			i++;
		} else if (strcmp(a, "--out") == 0 && v != NULL) {
			eo.out = v;
			i++;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(stderr,
			        "aa-replay: bad option or value: %s%s%s\n", a,
			        v ? " " : "", v ? v : "");
			usage(stderr);
			return RP_BAD;
		} else {
			first = i;
			break;
		}
	}
	if (first == argc) {
		usage(stderr);
		return RP_BAD;
	}
	int worst = RP_PASS;
	for (int i = first; i < argc; i++) {
		rp_scenario sc;
		if (rp_parse(&sc, argv[i], stderr) != 0) {
			worst = RP_BAD;
			continue;
		}
		if (transport != NULL) {
			snprintf(sc.transport, sizeof(sc.transport), "%s",
			         transport);
		}
		int st;
		if (eo.runs > 0) {
			st = rp_explore(&sc, &eo);
		} else {
			rp_result res;
			st = rp_run(&sc, NULL, 0, &res);
			rp_print(stdout, &sc, &res, eo.fmt, st);
			if (res.setup_error) {
				fprintf(stderr, "%s\n", res.error);
			}
			rp_result_free(&res);
		}
		fflush(stdout);
		worst = st > worst ? st : worst;
		rp_scenario_free(&sc);
	}
	return worst;
}
