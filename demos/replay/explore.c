// explore.c: runs many interleavings of a scenario's par blocks, checks the
// invariants in each, and turns the first failing one into the smallest
// scenario file that replays it.
//
// An interleaving is an order of the units of each par block that keeps
// every thread's own units in order; everything outside the blocks runs
// where it is written, expectations left out (they describe one order;
// the invariants hold in all). Every choice comes from one pseudo-random
// stream seeded by --seed, so a seed gives the same interleavings.
//
// Strategies. "random" picks, at each position, one of the threads that
// still have units, uniformly. "pct" is probabilistic concurrency testing
// (Burckhardt, Kothari, Musuvathi, Nagarakatte, ASPLOS 2010): the threads
// get random distinct priorities above d, d - 1 change points are drawn
// among the k positions, the highest-priority thread runs, and at the i-th
// change point the running thread drops to priority i. A bug that needs d
// ordering constraints among n threads is found with probability at least
// 1 / (n * k^(d-1)) per run.
//
// Shrinking, as QuickCheck and Hypothesis shrink inputs: first drop units
// (any unit whose removal keeps the same violated invariant), then remove
// preemptions (swap adjacent units of different threads when that lowers
// the count of switches away from a thread that still had units), each
// candidate run for real. Shrinking runs use a shorter step timeout, so
// that a candidate that now waits for something that never comes is
// rejected quickly.
#include <stdlib.h>
#include <string.h>

#include "replay.h"

typedef struct rng {
	uint64_t s;
} rng;

// splitmix64: small, fast, and the same sequence on every platform.
static uint64_t
rng_next(rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int
rng_below(rng *r, int n)
{
	return (int)(rng_next(r) % (uint64_t)n);
}

// A block: the span of units [first, first + n) and its threads.
typedef struct block {
	int first, n, threads;
} block;

static int
blocks_of(const rp_scenario *sc, block *b)
{
	int nb = 0;
	for (int i = 0; i < sc->n_units; i++) {
		const rp_unit *u = &sc->units[i];
		if (u->block < 0) {
			continue;
		}
		if (nb == 0 || b[nb - 1].first + b[nb - 1].n != i ||
		    sc->units[b[nb - 1].first].block != u->block) {
			b[nb++] = (block){.first = i};
		}
		b[nb - 1].n++;
		if (u->thread + 1 > b[nb - 1].threads) {
			b[nb - 1].threads = u->thread + 1;
		}
	}
	return nb;
}

// next_of returns the index of thread t's next unit in the block after
// taken[] were used, or -1.
static int
next_of(const rp_scenario *sc, const block *b, const bool *taken, int t)
{
	for (int i = b->first; i < b->first + b->n; i++) {
		if (!taken[i] && sc->units[i].thread == t) {
			return i;
		}
	}
	return -1;
}

// interleave fills order[pos..] with one order of block b's units.
static void
interleave(const rp_scenario *sc, const block *b, rng *r, rp_strategy st,
           int depth, bool *taken, int *order)
{
	int prio[8], change[16], nchange = depth - 1;
	int k = b->n;
	if (st == ST_PCT) {
		// Random distinct priorities depth .. depth + threads - 1.
		int perm[8];
		for (int t = 0; t < b->threads; t++) {
			perm[t] = t;
		}
		for (int t = b->threads - 1; t > 0; t--) {
			int j = rng_below(r, t + 1);
			int x = perm[t];
			perm[t] = perm[j];
			perm[j] = x;
		}
		for (int t = 0; t < b->threads; t++) {
			prio[perm[t]] = depth + t;
		}
		for (int i = 0; i < nchange && i < 16; i++) {
			change[i] = rng_below(r, k);
		}
	}
	for (int pos = 0; pos < k; pos++) {
		int cand[8], nc = 0;
		for (int t = 0; t < b->threads; t++) {
			if (next_of(sc, b, taken, t) >= 0) {
				cand[nc++] = t;
			}
		}
		int pick = cand[0];
		if (st == ST_RANDOM) {
			pick = cand[rng_below(r, nc)];
		} else {
			for (int again = 0; again < 2; again++) {
				pick = cand[0];
				for (int c = 1; c < nc; c++) {
					if (prio[cand[c]] > prio[pick]) {
						pick = cand[c];
					}
				}
				// A change point lowers the running thread
				// below every initial priority, then the
				// choice is made again.
				bool changed = false;
				for (int i = 0; i < nchange && i < 16; i++) {
					if (change[i] == pos && again == 0) {
						prio[pick] = i;
						changed = true;
					}
				}
				if (!changed) {
					break;
				}
			}
		}
		int u = next_of(sc, b, taken, pick);
		taken[u] = true;
		order[b->first + pos] = u;
	}
}

// make_order builds one interleaving of every block, as a full order of
// the scenario's units (expectations included; filtered later).
static void
make_order(const rp_scenario *sc, const block *bl, int nb, rng *r,
           rp_strategy st, int depth, int *order, bool *taken)
{
	for (int i = 0; i < sc->n_units; i++) {
		order[i] = i;
		taken[i] = false;
	}
	for (int b = 0; b < nb; b++) {
		interleave(sc, &bl[b], r, st, depth, taken, order);
	}
}

static bool
is_expect(const rp_scenario *sc, int u)
{
	return sc->units[u].block < 0 &&
	       sc->steps[sc->units[u].first].kind == K_EXPECT;
}

static int
without_expects(const rp_scenario *sc, const int *order, int n, int *out)
{
	int m = 0;
	for (int i = 0; i < n; i++) {
		if (!is_expect(sc, order[i])) {
			out[m++] = order[i];
		}
	}
	return m;
}

static uint64_t
hash_order(const int *order, int n)
{
	uint64_t h = 1469598103934665603ull;
	for (int i = 0; i < n; i++) {
		h = (h ^ (uint64_t)(unsigned)order[i]) * 1099511628211ull;
	}
	return h | 1; // 0 marks an empty slot
}

// A set of order hashes (open addressing), to count distinct ones.
typedef struct hset {
	uint64_t *v;
	size_t cap, n;
} hset;

static bool
hset_add(hset *s, uint64_t h)
{
	if (2 * (s->n + 1) > s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 1024;
		uint64_t *nv = calloc(nc, sizeof(*nv));
		if (nv == NULL) {
			return false;
		}
		for (size_t i = 0; i < s->cap; i++) {
			if (s->v[i] != 0) {
				size_t j = s->v[i] & (nc - 1);
				while (nv[j] != 0) {
					j = (j + 1) & (nc - 1);
				}
				nv[j] = s->v[i];
			}
		}
		free(s->v);
		s->v = nv;
		s->cap = nc;
	}
	size_t j = h & (s->cap - 1);
	while (s->v[j] != 0) {
		if (s->v[j] == h) {
			return false;
		}
		j = (j + 1) & (s->cap - 1);
	}
	s->v[j] = h;
	s->n++;
	return true;
}

// The failure a run shows: the first violated invariant, or its error.
static void
signature(const rp_result *res, char *sig, size_t n)
{
	sig[0] = '\0';
	for (int i = 0; i < res->n_checks; i++) {
		if (!res->checks[i].pass && res->checks[i].line == 0) {
			snprintf(sig, n, "%s", res->checks[i].what);
			return;
		}
	}
	if (res->setup_error) {
		// A hang or a lost event: the step that stopped.
		const char *s = strstr(res->error, ": step '");
		snprintf(sig, n, "%s", s ? s : res->error);
	}
}

static int
preemptions(const rp_scenario *sc, const int *order, int n)
{
	int p = 0;
	for (int i = 1; i < n; i++) {
		const rp_unit *a = &sc->units[order[i - 1]];
		const rp_unit *b = &sc->units[order[i]];
		if (a->block < 0 || b->block != a->block ||
		    a->thread == b->thread) {
			continue;
		}
		// A switch is a preemption when a's thread had units left.
		for (int j = i + 1; j < n; j++) {
			const rp_unit *c = &sc->units[order[j]];
			if (c->block == a->block && c->thread == a->thread) {
				p++;
				break;
			}
		}
	}
	return p;
}

// still_fails runs order and says whether it fails as sig does, every
// time of SHRINK_TRIES: a candidate that fails only by timing luck (it
// lost the hold that made the race deterministic) is not kept.
#define SHRINK_TRIES 3

static bool
still_fails(const rp_scenario *sc, const int *order, int n, const char *sig,
            long *runs)
{
	for (int i = 0; i < SHRINK_TRIES; i++) {
		rp_result res;
		int st = rp_run(sc, order, n, &res);
		(*runs)++;
		char s[2 * RP_TEXT];
		signature(&res, s, sizeof(s));
		rp_result_free(&res);
		if (st == RP_PASS || strcmp(s, sig) != 0) {
			return false;
		}
	}
	return true;
}

static bool
unit_syncs(const rp_scenario *sc, int u)
{
	const rp_unit *x = &sc->units[u];
	for (int k = 0; k < x->n; k++) {
		rp_kind kd = sc->steps[x->first + k].kind;
		if (kd == K_WAIT || kd == K_HOLD || kd == K_RELEASE) {
			return true;
		}
	}
	return false;
}

static bool
unit_names(const rp_scenario *sc, int u, const char *op)
{
	const rp_unit *x = &sc->units[u];
	for (int k = 0; k < x->n; k++) {
		if (strcmp(sc->steps[x->first + k].op, op) == 0) {
			return true;
		}
	}
	return false;
}

// drop writes to cand the order without unit order[i] (by_op: without
// every unit naming the op of its first step); returns its length, n when
// there is nothing to drop.
static int
drop(const rp_scenario *sc, const int *order, int n, int i, bool by_op,
     int *cand)
{
	const rp_step *st = &sc->steps[sc->units[order[i]].first];
	if (by_op ? st->op[0] == '\0' || st->kind == K_SIGNAL
	          : unit_syncs(sc, order[i])) {
		return n;
	}
	int m = 0;
	for (int j = 0; j < n; j++) {
		if (j == i || (by_op && unit_names(sc, order[j], st->op))) {
			continue;
		}
		cand[m++] = order[j];
	}
	return m;
}

static void
shrink(const rp_scenario *sc, int *order, int *n, const char *sig, long *runs)
{
	int *cand = malloc((size_t)(*n + 1) * sizeof(int));
	// 1. Fewer units, until none can go (one may become removable once
	// another went). A candidate drops every unit that names one op, or
	// one unit without a wait, hold or release: those make the race
	// deterministic, and dropping one alone would leave a scenario that
	// fails, if at all, by timing luck.
	bool smaller = true;
	while (smaller) {
		smaller = false;
		for (int i = *n - 1; i >= 0 && !smaller; i--) {
			for (int by_op = 1; by_op >= 0 && !smaller; by_op--) {
				int m = drop(sc, order, *n, i, by_op, cand);
				if (m < *n &&
				    still_fails(sc, cand, m, sig, runs)) {
					memcpy(order, cand,
					       (size_t)m * sizeof(int));
					*n = m;
					smaller = true;
				}
			}
		}
	}
	// 2. Fewer preemptions.
	bool better = true;
	while (better) {
		better = false;
		int p = preemptions(sc, order, *n);
		for (int i = 0; i + 1 < *n && !better; i++) {
			const rp_unit *a = &sc->units[order[i]];
			const rp_unit *b = &sc->units[order[i + 1]];
			if (a->block < 0 || a->block != b->block ||
			    a->thread == b->thread) {
				continue;
			}
			memcpy(cand, order, (size_t)*n * sizeof(int));
			cand[i] = order[i + 1];
			cand[i + 1] = order[i];
			if (preemptions(sc, cand, *n) < p &&
			    still_fails(sc, cand, *n, sig, runs)) {
				memcpy(order, cand, (size_t)*n * sizeof(int));
				better = true;
			}
		}
	}
	free(cand);
}

int
rp_write(const char *path, const rp_scenario *sc, const int *order,
         int n_order, const char *header)
{
	FILE *f = fopen(path, "w");
	if (f == NULL) {
		return -1;
	}
	fprintf(f, "%s", header);
	fprintf(f, "transport %s\ntimeout %d\n", sc->transport,
	        sc->timeout_ms);
	if (sc->heartbeat_ms != 0) {
		fprintf(f, "heartbeat %d\n", sc->heartbeat_ms);
	}
	fputc('\n', f);
	for (int i = 0; i < n_order; i++) {
		const rp_unit *u = &sc->units[order[i]];
		for (int k = 0; k < u->n; k++) {
			const rp_step *st = &sc->steps[u->first + k];
			if (u->block >= 0) {
				fprintf(f, "%-48s # %s, line %d\n", st->text,
				        u->tname, st->line);
			} else {
				fprintf(f, "%s\n", st->text);
			}
		}
	}
	return fclose(f) == 0 ? 0 : -1;
}

int
rp_explore(const rp_scenario *sc, const rp_explore_opts *o)
{
	block bl[64];
	int nb = blocks_of(sc, bl);
	int nu = sc->n_units;
	int *order = malloc((size_t)nu * sizeof(int));
	int *run_order = malloc((size_t)nu * sizeof(int));
	bool *taken = malloc((size_t)nu * sizeof(bool));
	hset seen = {0};
	rng r = {.s = o->seed};
	const char *sname = o->strategy == ST_PCT ? "pct" : "random";
	long fail_at = 0;
	int n = 0, status = RP_PASS;
	char sig[2 * RP_TEXT] = "";
	for (long run = 1; run <= o->runs; run++) {
		make_order(sc, bl, nb, &r, o->strategy, o->depth, order,
		           taken);
		n = without_expects(sc, order, nu, run_order);
		hset_add(&seen, hash_order(run_order, n));
		rp_result res;
		int st = rp_run(sc, run_order, n, &res);
		if (st != RP_PASS) {
			signature(&res, sig, sizeof(sig));
			fail_at = run;
			status = st;
			rp_result_free(&res);
			break;
		}
		rp_result_free(&res);
	}
	bool json = o->fmt == F_JSON;
	if (json) {
		// One JSON object for the whole exploration, at the end.
		fputs("{\"explore\":{\"scenario\":", stdout);
		rp_json_str(stdout, sc->file);
		printf(",\"transport\":\"%s\",\"strategy\":\"%s\",\"seed\":"
		       "%llu,\"depth\":%d,\"runs\":%ld,\"distinct\":%zu,"
		       "\"failure\":",
		       sc->transport, sname, (unsigned long long)o->seed,
		       o->depth, fail_at ? fail_at : o->runs, seen.n);
	} else {
		printf("explored %ld interleaving(s) of %s with strategy %s, "
		       "seed %llu (depth %d): %zu distinct, ",
		       fail_at ? fail_at : o->runs, sc->file, sname,
		       (unsigned long long)o->seed, o->depth, seen.n);
	}
	if (fail_at == 0) {
		fputs(json ? "null}}\n" : "no failure\n", stdout);
		free(seen.v);
		free(order);
		free(run_order);
		free(taken);
		return RP_PASS;
	}
	if (json) {
		printf("{\"run\":%ld,\"what\":", fail_at);
		rp_json_str(stdout, sig);
	} else {
		printf("first failure at run %ld: %s\n", fail_at, sig);
	}
	int units0 = n, pre0 = preemptions(sc, run_order, n);
	long shrink_runs = 0;
	if (o->shrink) {
		rp_scenario fast = *sc;
		if (fast.timeout_ms > 1000) {
			fast.timeout_ms = 1000;
		}
		shrink(&fast, run_order, &n, sig, &shrink_runs);
	}
	char path[512];
	if (o->out != NULL) {
		snprintf(path, sizeof(path), "%s", o->out);
	} else {
		const char *b = strrchr(sc->file, '/');
		b = b ? b + 1 : sc->file;
		snprintf(path, sizeof(path), "%.*s.failing-%s-%llu.aa",
		         (int)(strcspn(b, ".")), b, sname,
		         (unsigned long long)o->seed);
	}
	char header[1024];
	snprintf(header, sizeof(header),
	         "# Written by aa-replay --explore %ld --seed %llu "
	         "--strategy %s --depth %d %s\n"
	         "# Interleaving %ld failed: %s\n"
	         "# Shrunk from %d units and %d preemption(s) to %d units "
	         "and %d (%ld runs).\n"
	         "# Expectations are left out; the invariants are checked "
	         "in every run.\n",
	         o->runs, (unsigned long long)o->seed, sname, o->depth,
	         sc->file, fail_at, sig, units0, pre0, n,
	         preemptions(sc, run_order, n), shrink_runs);
	if (rp_write(path, sc, run_order, n, header) != 0) {
		fprintf(stderr, "aa-replay: cannot write %s\n", path);
		status = RP_BAD;
		if (json) {
			fputs(",\"written\":null}}}\n", stdout);
		}
	} else {
		if (json) {
			printf(",\"units_from\":%d,\"preemptions_from\":%d,"
			       "\"units_to\":%d,\"preemptions_to\":%d,"
			       "\"shrink_runs\":%ld,\"written\":",
			       units0, pre0, n, preemptions(sc, run_order, n),
			       shrink_runs);
			rp_json_str(stdout, path);
			fputs(",\"replay\":", stdout);
		} else {
			printf("shrunk from %d units / %d preemption(s) to %d "
			       "units / %d preemption(s) in %ld runs; wrote "
			       "%s\n",
			       units0, pre0, n, preemptions(sc, run_order, n),
			       shrink_runs, path);
		}
		// Replay the file just written, as a user would.
		rp_scenario again;
		if (rp_parse(&again, path, stderr) == 0) {
			rp_result res;
			status = rp_run(&again, NULL, 0, &res);
			if (json) {
				// Embedded in one line: without its newline.
				char *buf = NULL;
				size_t len = 0;
				FILE *m = open_memstream(&buf, &len);
				if (m != NULL) {
					rp_print(m, &again, &res, o->fmt,
					         status);
					fclose(m);
					while (len > 0 &&
					       buf[len - 1] == '\n') {
						len--;
					}
					fwrite(buf, 1, len, stdout);
					free(buf);
				}
			} else {
				rp_print(stdout, &again, &res, o->fmt, status);
			}
			rp_result_free(&res);
			rp_scenario_free(&again);
			if (status == RP_PASS) {
				// The failure did not come back: say so
				// rather than hand over a file that passes.
				fprintf(stderr,
				        "aa-replay: %s passed when replayed: "
				        "the failure depends on an order the "
				        "scenario does not hold\n",
				        path);
			}
		} else if (json) {
			fputs("null", stdout);
		}
		if (json) {
			fputs("}}}\n", stdout);
		}
	}
	free(seen.v);
	free(order);
	free(run_order);
	free(taken);
	return status == RP_PASS ? RP_FAIL : status;
}
